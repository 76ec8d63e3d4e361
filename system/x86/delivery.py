"""Interrupt and exception delivery, done in Python for the engine.

unicorn hands every exception and INT n to the interrupt hook and never reads the
guest's IDT (UNICORN.md "x86 system mode"); :class:`Delivery` does what the CPU would:

- real mode (and big-real mode): the IVT, push FLAGS/CS/IP, clear IF/TF/AC/RF;
- protected mode: 16/32-bit interrupt and trap gates, privilege change with the stack
  from the TSS (16 or 32-bit TSS), virtual-8086 mode (data segments pushed and nulled),
  error codes for 8, 10-14, 17 and 21;
- long mode: 64-bit gates, IST stacks, RSP aligned to 16, SS:RSP always pushed, a null
  SS on a privilege change.

A fault raised while delivering (not-present gate, bad selector, stack page not mapped)
becomes a double fault per the Intel rules (contributory/contributory, #PF then
#PF/contributory); a fault while delivering a double fault is a triple fault
(:class:`TripleFault`). Task gates and task switches are not supported
(:class:`UnsupportedDelivery`, a clean error for the run loop).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from .descriptors import (
    AC,
    CS,
    DESC_B,
    DESC_C,
    DESC_CS,
    DESC_DPL_SHIFT,
    DESC_L,
    DESC_P,
    DESC_S,
    DESC_W,
    DS,
    ES,
    FS,
    GS,
    HF_LMA,
    IF,
    NT,
    RF,
    SS,
    TF,
    VM,
    GuestFault,
    Segment,
    parse_descriptor,
)

if TYPE_CHECKING:
    from .cpu import X86Cpu


class Kind(enum.Enum):
    EXCEPTION = "exception"    # raised by the CPU (fault or trap)
    SOFTWARE = "software"      # INT n, INT3, INTO: gate DPL checked, no error code
    EXTERNAL = "external"      # INTR from the interrupt controller


ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
_CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})


class TripleFault(Exception):
    """Delivery of a double fault faulted: the CPU shuts down."""


class UnsupportedDelivery(Exception):
    """The guest asked for something this CPU does not do (task gates)."""


def _double(first: int, second: int) -> bool:
    if first in _CONTRIBUTORY and second in _CONTRIBUTORY:
        return True
    return first == 14 and (second == 14 or second in _CONTRIBUTORY)


class Delivery:
    def __init__(self, cpu: X86Cpu) -> None:
        self.cpu = cpu
        self.env = cpu.env

    # -- entry point
    def deliver(self, vector: int, kind: Kind, error_code: int = 0,
                fault_ip: int | Callable[[], int] | None = None) -> None:
        """Enter the handler for ``vector``. RIP must hold the return address; for a
        software interrupt, ``fault_ip`` is (a function giving) the INT instruction
        itself, where a fault raised by the delivery points."""
        has_error = kind is Kind.EXCEPTION and vector in ERROR_CODE_VECTORS
        while True:
            try:
                self._deliver_one(vector, kind, error_code, has_error)
                return
            except GuestFault as f:
                if kind is Kind.SOFTWARE and fault_ip is not None:
                    self.env.rip = fault_ip() if callable(fault_ip) else fault_ip
                if kind is Kind.EXCEPTION and vector == 8:
                    raise TripleFault() from None
                if kind is Kind.EXCEPTION and _double(vector, f.vector):
                    vector, error_code = 8, 0
                else:
                    vector, error_code = f.vector, f.error_code
                kind = Kind.EXCEPTION
                has_error = vector in ERROR_CODE_VECTORS

    def _deliver_one(self, vector: int, kind: Kind, error_code: int, has_error: bool) -> None:
        env = self.env
        if not env.cr(0) & 1:
            self._real(vector)
        elif env.hflags & HF_LMA:
            self._long(vector, kind, error_code, has_error)
        else:
            self._protected(vector, kind, error_code, has_error)

    # -- helpers
    def _read(self, linear: int, size: int) -> bytes:
        return self.cpu.read_linear(linear, size)

    def _descriptor(self, selector: int, ext: int) -> tuple[int, int]:
        """(low, high) dwords of the GDT/LDT descriptor, #GP(selector) past the limit."""
        table = self.env.seg(6 if selector & 4 else 8)
        index = selector & 0xFFF8
        if index + 7 > table.limit:
            raise GuestFault(13, (selector & 0xFFFC) | ext)
        lo, hi = struct.unpack("<II", self._read(table.base + index, 8))
        return lo, hi

    def _gate(self, vector: int, size: int, ext: int) -> bytes:
        idt = self.env.seg(9)
        if vector * size + size - 1 > idt.limit:
            raise GuestFault(13, vector * 8 + 2 + ext)
        return self._read(idt.base + vector * size, size)

    def _push_frame(self, ssp: int, sp: int, sp_mask: int, values: list[int], width: int,
                    user: bool) -> int:
        """Push ``values`` (first pushed first) at ssp + sp; the new sp."""
        total = width * len(values)
        if sp >= total:                 # no wrap-around: one write
            mask = (1 << (8 * width)) - 1
            sp -= total
            self.cpu.write_linear(ssp + sp, b"".join(
                (v & mask).to_bytes(width, "little") for v in reversed(values)), user=user)
            return sp
        for v in values:
            sp = (sp - width) & sp_mask
            self.cpu.write_linear(ssp + sp, (v & ((1 << (8 * width)) - 1))
                                  .to_bytes(width, "little"), user=user)
        return sp

    def _set_sp(self, sp: int, sp_mask: int) -> None:
        rsp = self.env.gpr(4)
        if sp_mask == 0xFFFF:
            rsp = (rsp & ~0xFFFF) | (sp & 0xFFFF)
        elif sp_mask == 0xFFFFFFFF:
            rsp = sp & 0xFFFFFFFF
        else:
            rsp = sp
        self.env.set_gpr(4, rsp)

    def _enter_flags(self, clear: int) -> None:
        cpu = self.cpu
        cpu.set_eflags(cpu.eflags() & ~clear)

    # -- real mode
    def _real(self, vector: int) -> None:
        env = self.env
        off, sel = struct.unpack("<HH", self._gate(vector, 4, 0))
        ss = env.seg(SS)
        sp_mask = 0xFFFFFFFF if ss.flags & DESC_B else 0xFFFF
        cs = env.seg(CS)
        sp = self._push_frame(ss.base, env.gpr(4) & sp_mask, sp_mask,
                              [self.cpu.eflags(), cs.selector, env.rip], 2, False)
        self._set_sp(sp, sp_mask)
        env.write_seg_raw(CS, Segment(sel, sel << 4, cs.limit, cs.flags))
        env.rip = off
        self._enter_flags(IF | TF | AC | RF)

    # -- protected mode
    def _protected(self, vector: int, kind: Kind, error_code: int, has_error: bool) -> None:
        env, cpu = self.env, self.cpu
        ext = 0 if kind is Kind.SOFTWARE else 1
        lo, hi = struct.unpack("<II", self._gate(vector, 8, ext))
        gtype = (hi >> 8) & 0x1F
        if gtype == 5:
            raise UnsupportedDelivery(f"task gate for vector {vector:#x} is not supported")
        if gtype not in (6, 7, 14, 15):
            raise GuestFault(13, vector * 8 + 2 + ext)
        cpl = env.cpl
        if kind is Kind.SOFTWARE and (hi >> 13) & 3 < cpl:
            raise GuestFault(13, vector * 8 + 2)
        if not hi & DESC_P:
            raise GuestFault(11, vector * 8 + 2 + ext)
        selector = lo >> 16
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        width = 4 if gtype & 8 else 2
        if width == 2:
            offset &= 0xFFFF
        cs_seg, dpl = self._code_segment(selector, cpl, ext)
        eflags = cpu.eflags()
        vm86 = bool(eflags & VM)
        old_ss = env.seg(SS)
        values: list[int] = []
        if not cs_seg.flags & DESC_C and dpl < cpl:
            new_ss, esp = self._tss_stack_legacy(dpl, ext)
            if vm86:
                if dpl != 0:
                    raise GuestFault(13, (selector & 0xFFFC) | ext)
                values += [env.seg(GS).selector, env.seg(FS).selector,
                           env.seg(DS).selector, env.seg(ES).selector]
            values += [old_ss.selector, env.gpr(4)]
            ssp, sp_mask, new_cpl = new_ss.base, self._sp_mask(new_ss), dpl
        elif vm86:
            raise GuestFault(13, (selector & 0xFFFC) | ext)
        else:
            new_ss, esp = None, env.gpr(4)
            ssp, sp_mask, new_cpl = old_ss.base, self._sp_mask(old_ss), cpl
        values += [eflags, env.seg(CS).selector, env.rip]
        if has_error:
            values.append(error_code)
        sp = self._push_frame(ssp, esp & sp_mask, sp_mask, values, width, new_cpl == 3)
        # commit
        if new_ss is not None:
            env.load_seg_cache(SS, new_ss)
        if vm86:
            for n in (ES, DS, FS, GS):
                env.load_seg_cache(n, Segment(0, 0, 0, 0))
        self._set_sp(sp, sp_mask)
        cs_seg.selector = (selector & 0xFFFC) | new_cpl
        env.load_seg_cache(CS, cs_seg)
        env.rip = offset
        self._enter_flags(TF | VM | RF | NT | (0 if gtype & 1 else IF))

    @staticmethod
    def _sp_mask(ss: Segment) -> int:
        return 0xFFFFFFFF if ss.flags & DESC_B else 0xFFFF

    def _code_segment(self, selector: int, cpl: int, ext: int,
                      long_mode: bool = False) -> tuple[Segment, int]:
        if not selector & 0xFFFC:
            raise GuestFault(13, ext)
        lo, hi = self._descriptor(selector, ext)
        seg = parse_descriptor(lo, hi)
        err = (selector & 0xFFFC) | ext
        if not seg.flags & DESC_S or not seg.flags & DESC_CS:
            raise GuestFault(13, err)
        dpl = seg.dpl
        if dpl > cpl:
            raise GuestFault(13, err)
        if not seg.flags & DESC_P:
            raise GuestFault(11, err)
        if long_mode and (not seg.flags & DESC_L or seg.flags & DESC_B):
            raise GuestFault(13, err)
        if seg.flags & DESC_C:
            dpl = cpl
        return seg, dpl

    def _tss_stack_legacy(self, dpl: int, ext: int) -> tuple[Segment, int]:
        env = self.env
        tr = env.seg(7)
        if not tr.flags & DESC_P:
            raise UnsupportedDelivery("privilege change with no task register loaded")
        shift = ((tr.flags >> 8) & 0xF) >> 3        # 1: 32-bit TSS, 0: 16-bit TSS
        index = (dpl * 4 + 2) << shift
        if index + (4 << shift) - 1 > tr.limit:
            raise GuestFault(10, (tr.selector & 0xFFFC) | ext)
        if shift:
            esp, ss = struct.unpack("<IH", self._read(tr.base + index, 6))
        else:
            esp, ss = struct.unpack("<HH", self._read(tr.base + index, 4))
        err = (ss & 0xFFFC) | ext
        if not ss & 0xFFFC or ss & 3 != dpl:
            raise GuestFault(10, err)
        try:
            lo, hi = self._descriptor(ss, ext)
        except GuestFault:
            raise GuestFault(10, err) from None
        seg = parse_descriptor(lo, hi)
        if seg.dpl != dpl or not seg.flags & DESC_S or seg.flags & DESC_CS \
                or not seg.flags & DESC_W:
            raise GuestFault(10, err)
        if not seg.flags & DESC_P:
            raise GuestFault(12, err)
        seg.selector = ss
        return seg, esp

    # -- long mode
    def _long(self, vector: int, kind: Kind, error_code: int, has_error: bool) -> None:
        env, cpu = self.env, self.cpu
        ext = 0 if kind is Kind.SOFTWARE else 1
        lo, hi, lo2, _ = struct.unpack("<IIII", self._gate(vector, 16, ext))
        gtype = (hi >> 8) & 0x1F
        if gtype not in (14, 15):
            raise GuestFault(13, vector * 8 + 2 + ext)
        cpl = env.cpl
        if kind is Kind.SOFTWARE and (hi >> 13) & 3 < cpl:
            raise GuestFault(13, vector * 8 + 2)
        if not hi & DESC_P:
            raise GuestFault(11, vector * 8 + 2 + ext)
        selector = lo >> 16
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000) | (lo2 << 32)
        ist = hi & 7
        cs_seg, dpl = self._code_segment(selector, cpl, ext, long_mode=True)
        old_ss = env.seg(SS)
        rsp = env.gpr(4)
        changes = not cs_seg.flags & DESC_C and dpl < cpl
        if changes or ist:
            tr = env.seg(7)
            index = 8 * (ist + 3) + 4 if ist else 8 * dpl + 4
            if index + 7 > tr.limit:
                raise GuestFault(10, (tr.selector & 0xFFFC) | ext)
            new_rsp, = struct.unpack("<Q", self._read(tr.base + index, 8))
        else:
            new_rsp = rsp
        new_cpl = dpl if changes else cpl
        values = [old_ss.selector, rsp, cpu.eflags(), env.seg(CS).selector, env.rip]
        if has_error:
            values.append(error_code)
        sp = self._push_frame(0, new_rsp & ~0xF, (1 << 64) - 1, values, 8, new_cpl == 3)
        if changes or ist:              # as qemu: a null SS with any new stack
            env.load_seg_cache(SS, Segment(new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT))
        env.set_gpr(4, sp)
        cs_seg.selector = (selector & 0xFFFC) | new_cpl
        env.load_seg_cache(CS, cs_seg)
        env.rip = offset
        self._enter_flags(TF | VM | RF | NT | (0 if gtype & 1 else IF))
