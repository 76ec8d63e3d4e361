"""x86 architectural constants, the engine's state seen directly, descriptors, paging.

:class:`Env` reads and writes unicorn's ``CPUX86State`` in place (offsets from
:mod:`.calibrate`): the general registers, RIP, the segment caches with the hidden
``hflags`` that go with them (the same rules as QEMU's ``cpu_x86_load_seg_cache``),
EFER and the exception fields. EFLAGS and the control registers go through the API,
which keeps unicorn's lazy flags and TLB right.

:func:`translate` walks the guest page tables (32-bit, PAE, 4-level) for accesses made
in Python (interrupt delivery, the monitor's ``x``), setting accessed/dirty bits and
raising :class:`GuestFault` (#PF with the architectural error code) as the CPU would.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .calibrate import SEG_SIZE, EnvLayout

# ---- segment cache flags (QEMU's DESC_*: the descriptor's high dword) ------------------
DESC_G = 1 << 23
DESC_B = 1 << 22
DESC_L = 1 << 21
DESC_AVL = 1 << 20
DESC_P = 1 << 15
DESC_DPL_SHIFT = 13
DESC_S = 1 << 12
DESC_TYPE_SHIFT = 8
DESC_CS = 1 << 11              # code segment (type bit 3)
DESC_C = 1 << 10               # conforming (code)
DESC_E = 1 << 10               # expand-down (data)
DESC_R = 1 << 9                # readable (code)
DESC_W = 1 << 9                # writable (data)
DESC_A = 1 << 8

# ---- hflags (QEMU target/i386/cpu.h) ---------------------------------------------------
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3        # interrupt shadow after STI / MOV SS / POP SS
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_MP = 1 << 9
HF_EM = 1 << 10
HF_TS = 1 << 11
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_SMM = 1 << 19
HF_OSFXSR = 1 << 22

# ---- EFLAGS ----------------------------------------------------------------------------
CF, PF, AF, ZF, SF = 1, 1 << 2, 1 << 4, 1 << 6, 1 << 7
TF = 1 << 8
IF = 1 << 9
DF = 1 << 10
OF = 1 << 11
IOPL = 3 << 12
NT = 1 << 14
RF = 1 << 16
VM = 1 << 17
AC = 1 << 18

# ---- control registers / EFER ----------------------------------------------------------
CR0_PE = 1
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_SMEP = 1 << 20
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")


class GuestFault(Exception):
    """An exception the guest must see (raised while Python acts for the CPU)."""

    def __init__(self, vector: int, error_code: int = 0) -> None:
        super().__init__(f"vector {vector} error code {error_code:#x}")
        self.vector = vector
        self.error_code = error_code


@dataclass
class Segment:
    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        return (self.flags >> DESC_DPL_SHIFT) & 3


def parse_descriptor(lo: int, hi: int) -> Segment:
    """The segment cache a descriptor (two dwords) loads (selector not set)."""
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0x000F0000)
    if hi & DESC_G:
        limit = (limit << 12) | 0xFFF
    return Segment(0, base, limit, hi)          # as qemu: the whole high dword


class Env:
    """Direct access to one engine's ``CPUX86State`` (see the module doc)."""

    def __init__(self, uc: Any, lay: EnvLayout, env_addr: int, cpu_addr: int) -> None:
        self.uc = uc
        self.lay = lay
        raw = (ctypes.c_char * lay.context_size).from_address(env_addr)
        self.mem = memoryview(raw).cast("B")          # keeps ``raw`` (and uc) referenced
        self._q = self.mem.cast("Q")
        self._halted = ctypes.c_int32.from_address(cpu_addr + lay.halted)

    # -- plain fields
    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.mem, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.mem, off, value & 0xFFFFFFFF)

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.mem, off)[0]

    def set_u64(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, off, value & 0xFFFFFFFFFFFFFFFF)

    def gpr(self, i: int) -> int:
        """RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 by encoding number."""
        return self._q[i]

    def set_gpr(self, i: int, value: int) -> None:
        self._q[i] = value & 0xFFFFFFFFFFFFFFFF

    @property
    def rip(self) -> int:
        return self._q[self.lay.eip // 8]

    @rip.setter
    def rip(self, value: int) -> None:
        self._q[self.lay.eip // 8] = value & 0xFFFFFFFFFFFFFFFF

    @property
    def hflags(self) -> int:
        return self.u32(self.lay.hflags)

    @hflags.setter
    def hflags(self, value: int) -> None:
        self.set_u32(self.lay.hflags, value)

    @property
    def cpl(self) -> int:
        return self.hflags & HF_CPL_MASK

    @property
    def efer(self) -> int:
        return self.u64(self.lay.efer)

    @efer.setter
    def efer(self, value: int) -> None:
        self.set_u64(self.lay.efer, value)

    def cr(self, n: int) -> int:
        return self.u64(self.lay.cr + 8 * n)

    @property
    def a20_mask(self) -> int:
        return self.u32(self.lay.a20_mask)

    @a20_mask.setter
    def a20_mask(self, value: int) -> None:
        self.set_u32(self.lay.a20_mask, value)

    @property
    def cpu_halted(self) -> bool:
        return bool(self._halted.value)

    @cpu_halted.setter
    def cpu_halted(self, value: bool) -> None:
        self._halted.value = int(value)

    # -- the last exception (read in the interrupt hook)
    @property
    def error_code(self) -> int:
        return self.u32(self.lay.error_code)

    @property
    def exception_is_int(self) -> bool:
        return bool(self.u32(self.lay.exception_is_int))

    def clear_exception(self) -> None:
        """No exception in flight: unicorn never resets it, and would turn the next
        contributory exception or #PF into a double fault (see UNICORN.md)."""
        self.set_u32(self.lay.old_exception, 0xFFFFFFFF)

    # -- segment caches
    def _seg_off(self, n: int) -> int:
        return self.lay.segs + SEG_SIZE * n

    def seg(self, n: int) -> Segment:
        """Segment cache n: ES..GS = 0..5, LDT 6, TR 7, GDT 8, IDT 9."""
        sel, base, limit, flags = struct.unpack_from("<I4xQII", self.mem, self._seg_off(n))
        return Segment(sel & 0xFFFF, base, limit, flags)

    def write_seg_raw(self, n: int, seg: Segment) -> None:
        struct.pack_into("<I4xQII", self.mem, self._seg_off(n), seg.selector & 0xFFFF,
                         seg.base & 0xFFFFFFFFFFFFFFFF, seg.limit & 0xFFFFFFFF,
                         seg.flags & 0xFFFFFFFF)

    def load_seg_cache(self, n: int, seg: Segment) -> None:
        """Load segment register n's cache and update hflags as the CPU does (QEMU's
        cpu_x86_load_seg_cache)."""
        self.write_seg_raw(n, seg)
        hf = self.hflags
        if n == CS:
            if hf & HF_LMA and seg.flags & DESC_L:
                hf |= HF_CS32 | HF_SS32 | HF_CS64
            else:
                hf = (hf & ~(HF_CS32 | HF_CS64)) | (HF_CS32 if seg.flags & DESC_B else 0)
        if n == SS:
            hf = (hf & ~HF_CPL_MASK) | seg.dpl
        new = HF_SS32 if self.seg(SS).flags & DESC_B else 0
        if hf & HF_CS64:
            pass                       # zero bases assumed in 64-bit mode
        elif not (self.cr(0) & CR0_PE) or not (hf & HF_CS32) or self.eflags_raw() & VM:
            new |= HF_ADDSEG
        elif self.seg(DS).base | self.seg(ES).base | self.seg(SS).base:
            new |= HF_ADDSEG
        self.hflags = (hf & ~(HF_SS32 | HF_ADDSEG)) | new

    def eflags_raw(self) -> int:
        """env->eflags without the lazily computed arithmetic flags (VM, IF, ... exact)."""
        return self.u64(self.lay.eip + 8)


# ---- paging -------------------------------------------------------------------------------
PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16


def translate(env: Env, read_phys: Callable[[int, int], bytes],
              write_phys: Callable[[int, bytes], None], linear: int, *, write: bool = False,
              user: bool = False, fetch: bool = False, set_ad: bool = True) -> int:
    """Physical address of ``linear`` through the guest's paging, or GuestFault(#PF)
    (CR2 is the caller's business: see :meth:`X86Cpu._page_fault`)."""
    cr0 = env.cr(0)
    a20 = env.a20_mask | ~0xFFFFFFFF
    if not cr0 & CR0_PG:
        return linear & 0xFFFFFFFF & a20 if not env.hflags & HF_LMA else linear & a20
    cr3, cr4, efer = env.cr(3), env.cr(4), env.efer
    nxe = bool(efer & EFER_NXE)
    wp = bool(cr0 & CR0_WP)
    err_base = (PF_W if write else 0) | (PF_U if user else 0) | \
        (PF_I if fetch and (nxe or cr4 & CR4_SMEP) else 0)

    def fault(present: bool) -> GuestFault:
        return GuestFault(14, err_base | (PF_P if present else 0))

    entries: list[tuple[int, int, int]] = []     # (entry address, value, width)
    if cr4 & CR4_PAE:
        if env.hflags & HF_LMA:
            levels = [(cr3 & 0x000FFFFFFFFFF000, 39), (None, 30), (None, 21), (None, 12)]
        else:
            pdpt = (cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8
            pdpte, = struct.unpack("<Q", read_phys(pdpt & a20, 8))
            if not pdpte & 1:
                raise fault(False)
            levels = [(pdpte & 0x000FFFFFFFFFF000, 21), (None, 12)]
        table = levels[0][0]
        rw = us = True
        nx = False
        for i, (_t, shift) in enumerate(levels):
            addr = (table + ((linear >> shift) & 0x1FF) * 8) & a20
            ent, = struct.unpack("<Q", read_phys(addr, 8))
            if not ent & 1:
                raise fault(False)
            rw &= bool(ent & 2)
            us &= bool(ent & 4)
            nx |= nxe and bool(ent >> 63)
            entries.append((addr, ent, 8))
            last = i == len(levels) - 1
            if last or (shift in (21, 30) and ent & 0x80):
                mask = (1 << shift) - 1
                phys = (ent & 0x000FFFFFFFFFF000 & ~mask) | (linear & mask)
                break
            table = ent & 0x000FFFFFFFFFF000
    else:
        pde_addr = ((cr3 & 0xFFFFF000) + ((linear >> 22) & 0x3FF) * 4) & a20
        pde, = struct.unpack("<I", read_phys(pde_addr, 4))
        if not pde & 1:
            raise fault(False)
        entries.append((pde_addr, pde, 4))
        rw, us, nx = bool(pde & 2), bool(pde & 4), False
        if pde & 0x80 and cr4 & CR4_PSE:
            phys = (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        else:
            pte_addr = ((pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4) & a20
            pte, = struct.unpack("<I", read_phys(pte_addr, 4))
            if not pte & 1:
                raise fault(False)
            entries.append((pte_addr, pte, 4))
            rw &= bool(pte & 2)
            us &= bool(pte & 4)
            phys = (pte & 0xFFFFF000) | (linear & 0xFFF)
    if user and not us:
        raise fault(True)
    if write and not rw and (user or wp):
        raise fault(True)
    if fetch and nx:
        raise fault(True)
    if set_ad:
        for n, (addr, ent, width) in enumerate(entries):
            want = ent | 0x20
            if n == len(entries) - 1 and write:
                want |= 0x40                     # dirty, in the leaf
            if want != ent:
                write_phys(addr, want.to_bytes(width, "little")[:1])
    return phys & a20
