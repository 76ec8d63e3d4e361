"""The guest address space of a user-mode process, over unicorn's MMU.

Layout (see /work/shared/UNICORN.md for why): one big host buffer (anonymous,
``MAP_NORESERVE``: untouched pages cost nothing) is the guest's *physical* RAM and is
mapped once, with ``mem_map_ptr``, at physical address 0 of every engine (one engine
per guest thread). Guest *virtual* pages are mapped onto physical pages by our own page
tables, kept at the start of that RAM, and the engines run with their MMU on:

- arm: short-descriptor tables. The 4096 first-level entries are fixed and point to
  4096 coarse second-level tables laid out back to back, so the second level is one
  linear array: the entry of virtual page ``v`` sits at ``L2_BASE + (v >> 12) * 4``.
- aarch64: 4 KiB granule, T0SZ=25 (39-bit VA, three levels). Level 1 is fixed, each of
  its 512 entries owns a level-2 table; level-3 tables are taken from a pool on demand.
  SCR_EL3.RW must be set or unicorn walks the tables as AArch32 LPAE (32-bit VAs).
  The tables themselves stay in the first 64 MiB of RAM.

Data pages are never executable (their TLB entries then take qemu's fast store path),
and there are no memory hooks: guest faults come back as aborts from the engine.

Every virtual mapping (:class:`Vma`) is physically contiguous; freeing it gives its
physical pages back (``MAP_FIXED`` anonymous over the host range, so they read as zero
again). File mappings are host ``mmap`` of the file placed over the RAM buffer, so ld.so
loading libc copies nothing. ``read``/``write`` (and the buffer views syscalls use) go
straight to the host buffer, ignoring guest protections, as the AddressSpace protocol
says; :meth:`GuestMemory.views` checks them, for syscalls that must return EFAULT.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap as _mmap
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cpu import ArchInfo

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_NORESERVE = 0x4000
_HOST_ANON = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS | _MAP_NORESERVE
_MAP_FIXED = 0x10
_RW = _mmap.PROT_READ | _mmap.PROT_WRITE

# unicorn constants (unicorn_const.py)
_UC_PROT_ALL = 7
_UC_CTL_TLB_FLUSH = 11
_UC_CTL_IO_WRITE = 1


class GuestMemoryError(Exception):
    """A guest memory operation failed; ``errno`` is what the syscall returns."""

    def __init__(self, message: str, err: int = errno.EFAULT) -> None:
        super().__init__(message)
        self.errno = err


class AddressSpace(Protocol):
    """What the ELF loader and the stack builder need from a guest address space."""

    page_size: int

    def mmap(self, addr: int, length: int, prot: int, *, fixed: bool = False,
             name: str = "") -> int: ...
    def mprotect(self, addr: int, length: int, prot: int) -> None: ...
    def munmap(self, addr: int, length: int) -> None: ...
    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...
    def read(self, addr: int, size: int) -> bytes: ...


@dataclass(slots=True)
class Vma:
    """One virtual mapping: ``[start, end)`` onto physical ``pa`` (contiguous)."""

    start: int
    end: int
    prot: int
    pa: int
    name: str = ""
    shared: bool = False
    offset: int = 0           # file offset of ``start`` (file mappings)
    dev: int = 0
    inode: int = 0


def _host_mmap(addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno()
        raise GuestMemoryError(f"host mmap failed: {os.strerror(err)}", err or errno.ENOMEM)
    return got


def page_align(value: int) -> int:
    """``value`` rounded up to a page."""
    return (value + PAGE - 1) & ~(PAGE - 1)


class _PhysAllocator:
    """First-fit allocator of physical page runs in ``[lo, hi)``."""

    def __init__(self, lo: int, hi: int) -> None:
        self.runs: list[list[int]] = [[lo, hi]]   # sorted, disjoint, coalesced

    def alloc(self, size: int) -> int:
        for run in self.runs:
            if run[1] - run[0] >= size:
                pa = run[0]
                run[0] += size
                if run[0] == run[1]:
                    self.runs.remove(run)
                return pa
        raise GuestMemoryError("out of guest physical memory", errno.ENOMEM)

    def free(self, pa: int, size: int) -> None:
        runs = self.runs
        i = bisect.bisect_left(runs, [pa, pa])
        end = pa + size
        if i > 0 and runs[i - 1][1] == pa:
            runs[i - 1][1] = end
            if i < len(runs) and runs[i][0] == end:
                runs[i - 1][1] = runs[i][1]
                del runs[i]
        elif i < len(runs) and runs[i][0] == end:
            runs[i][0] = pa
        else:
            runs.insert(i, [pa, end])


class _PageTables:
    """What both table formats share: a page entry from a base descriptor plus the
    read-only and never-execute bits of the format (``_BASE``, ``_RO``, ``_NX``)."""

    _BASE = _RO = _NX = 0

    def entry(self, pa: int, prot: int) -> int:
        """The page descriptor mapping ``pa`` with ``prot`` (0: a fault entry)."""
        if not prot:
            return 0
        value = pa | self._BASE
        if not prot & PROT_WRITE:
            value |= self._RO
        if not prot & PROT_EXEC:
            value |= self._NX
        return value


class _ArmTables(_PageTables):
    """ARMv7 short-descriptor tables: fixed L1, linear coarse L2 (see module doc)."""

    L1 = 0
    L2_BASE = 0x4000
    DATA_START = 0x800000
    # small page: bit1 set; B, C and TEX=001: normal write-back memory; S; AP[1:0]=11
    _BASE = 0b10 | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 10) | (0b11 << 4)
    _RO = 1 << 9            # AP[2]: read-only at every level
    _NX = 1                 # XN

    def __init__(self, mem: GuestMemory) -> None:
        self.view = mem.ram
        l1 = memoryview(self.view)[self.L1:self.L1 + 0x4000].cast("I")
        for i in range(4096):
            l1[i] = (self.L2_BASE + i * 0x400) | 0b01   # coarse table, domain 0

    def set_range(self, va: int, npages: int, pa: int | None, prot: int) -> None:
        """Map ``npages`` from ``va`` onto ``pa`` (None or prot 0: fault entries)."""
        off = self.L2_BASE + (va >> 12) * 4
        if pa is None or not prot:
            self.view[off:off + 4 * npages] = bytes(4 * npages)
            return
        first = self.entry(pa, prot)
        import array

        self.view[off:off + 4 * npages] = array.array(
            "I", range(first, first + npages * PAGE, PAGE)).tobytes()

    def get(self, va: int) -> int:
        return struct.unpack_from("<I", self.view, self.L2_BASE + (va >> 12) * 4)[0]

    def put(self, va: int, value: int) -> None:
        struct.pack_into("<I", self.view, self.L2_BASE + (va >> 12) * 4, value)

    def setup_engine(self, uc: Any) -> None:
        # TTBR0 = L1, TTBCR = 0 (TTBR0 for all of 4 GiB), DACR: every domain "client"
        uc.cpr_write(15, 0, 2, 0, 0, 0, False, self.L1)
        uc.cpr_write(15, 0, 2, 0, 2, 0, False, 0)
        uc.cpr_write(15, 0, 3, 0, 0, 0, False, 0x55555555)
        sctlr = uc.cpr_read(15, 0, 1, 0, 0, 0, False)
        uc.cpr_write(15, 0, 1, 0, 0, 0, False, sctlr | 1)       # SCTLR.M


class _Arm64Tables(_PageTables):
    """AArch64 4 KiB-granule tables, T0SZ=25: fixed L1, one L2 per L1 entry, pooled L3."""

    L1 = 0
    L2_BASE = 0x1000                 # 512 tables
    L3_POOL = (0x201000, 0x3FFF000)
    STUB = 0x3FFF000                 # MSR stub page (identity-mapped while it runs)
    DATA_START = 0x4000000
    # page descriptor: valid+page, AttrIndx 0 (MAIR attr0: normal WB), SH inner, AF
    _BASE = 0b11 | (0b11 << 8) | (1 << 10)       # (UXN would stop EL1 fetches too)
    _RO = 0b10 << 6                  # AP[2:1]=10: EL1 read-only (EL1 RW otherwise)
    _NX = 1 << 53                    # PXN
    # the stub: msr mair_el1,x0; msr tcr_el1,x1; msr ttbr0_el1,x2; isb;
    #           mrs x3,sctlr_el1; orr x3,x3,#1; msr sctlr_el1,x3; isb
    STUB_CODE = bytes.fromhex("00a218d5412018d5022018d5df3f03d5"
                              "031038d5630040b2031018d5df3f03d5")
    MAIR = 0xFF
    SCR_EL3 = 1 << 10                # RW (secure state kept: NS would need HCR_EL2.RW too)
    # T0SZ=25, IRGN0/ORGN0 write-back, SH0 inner, TG0 4K, T1SZ=25, EPD1, TG1 4K (valid)
    TCR = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (25 << 16) | (1 << 23) | (2 << 30)

    def __init__(self, mem: GuestMemory) -> None:
        self.view = mem.ram
        self.mem = mem
        l1 = memoryview(self.view)[self.L1:self.L1 + PAGE].cast("Q")
        for i in range(512):
            l1[i] = (self.L2_BASE + i * PAGE) | 0b11
        self.l3: dict[int, int] = {}        # va >> 21 -> PA of its L3 table
        self.l3_next = self.L3_POOL[0]
        self.view[self.STUB:self.STUB + len(self.STUB_CODE)] = self.STUB_CODE

    def _l3(self, va: int, create: bool) -> int | None:
        key = va >> 21
        table = self.l3.get(key)
        if table is None and create:
            if self.l3_next >= self.L3_POOL[1]:
                raise GuestMemoryError("out of page-table memory", errno.ENOMEM)
            table = self.l3[key] = self.l3_next
            self.l3_next += PAGE
            struct.pack_into("<Q", self.view, self.L2_BASE + key * 8, table | 0b11)
        return table

    def set_range(self, va: int, npages: int, pa: int | None, prot: int) -> None:
        import array

        value = self.entry(pa, prot) if pa is not None else 0
        while npages:
            n = min(npages, 512 - ((va >> 12) & 511))
            table = self._l3(va, create=bool(value))
            if table is not None:
                off = table + ((va >> 12) & 511) * 8
                if value:
                    data = array.array("Q", range(value, value + n * PAGE, PAGE)).tobytes()
                else:
                    data = bytes(8 * n)
                self.view[off:off + 8 * n] = data
            if value:
                value += n * PAGE
            va += n * PAGE
            npages -= n

    def get(self, va: int) -> int:
        table = self._l3(va, create=False)
        if table is None:
            return 0
        return struct.unpack_from("<Q", self.view, table + ((va >> 12) & 511) * 8)[0]

    def put(self, va: int, value: int) -> None:
        table = self._l3(va, create=True)
        assert table is not None
        struct.pack_into("<Q", self.view, table + ((va >> 12) & 511) * 8, value)

    def setup_engine(self, uc: Any) -> None:
        from unicorn import arm64_const as c

        stub = self.STUB
        saved = self.get(stub)
        with self.mem.lock:
            self.put(stub, self.entry(stub, PROT_READ | PROT_EXEC))
            uc.reg_write(c.UC_ARM64_REG_X0, self.MAIR)
            uc.reg_write(c.UC_ARM64_REG_X1, self.TCR)
            uc.reg_write(c.UC_ARM64_REG_X2, self.L1)
            # SCR_EL3.RW: EL1 is AArch64. unicorn resets SCR_EL3 to 0, and with RW clear
            # the EL1 translation regime is walked as AArch32 LPAE: virtual addresses are
            # cut to 32 bits and everything at or above 2 GiB faults (measured)
            uc.reg_write(c.UC_ARM64_REG_CP_REG, (1, 1, 3, 6, 0, self.SCR_EL3))
            # FPEN: no trap of FP/SIMD at EL0/EL1
            uc.reg_write(c.UC_ARM64_REG_CPACR_EL1, 3 << 20)
            end = stub + len(self.STUB_CODE)
            uc.ctl_set_exits([end])          # the engine runs with exits enabled
            uc.emu_start(stub, end)
            uc.ctl_set_exits([])
            for reg in range(4):
                uc.reg_write(c.UC_ARM64_REG_X0 + reg, 0)
            self.put(stub, saved)
            self.mem.flush_tlbs()


class GuestMemory:
    """A guest process's address space (implements :class:`AddressSpace`)."""

    def __init__(self, arch: ArchInfo, *, ram_size: int | None = None) -> None:
        self.arch = arch
        self.page_size = PAGE
        if arch.name == "aarch64":
            # physical addresses above 4 GiB work too (measured with 6 GiB)
            self.ram_size = ram_size or 8 << 30
        else:
            self.ram_size = ram_size or 0xC0000000        # short descriptors: 32-bit PAs
        self.host = _host_mmap(0, self.ram_size, _RW, _HOST_ANON, -1, 0)
        self.ram = memoryview((ctypes.c_char * self.ram_size).from_address(self.host)).cast("B")
        self.lock = threading.RLock()
        self.engines: list[Any] = []
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        tables_cls = _Arm64Tables if arch.name == "aarch64" else _ArmTables
        self.tables: _ArmTables | _Arm64Tables = tables_cls(self)
        self.phys = _PhysAllocator(tables_cls.DATA_START, self.ram_size)
        self.mmap_base = arch.mmap_base
        self.mmap_next = arch.mmap_base          # qemu's mmap_next_start (bottom-up)
        self.va_limit = arch.va_limit
        self.reserved: list[tuple[int, int]] = []   # never chosen for non-fixed mmaps
        if arch.name == "aarch64":
            self.reserved.append((_Arm64Tables.STUB, _Arm64Tables.STUB + PAGE))

    # ---- engines -------------------------------------------------------------------------
    def attach(self, uc: Any) -> None:
        """Map the RAM into a new engine and turn its MMU on over our tables."""
        uc.mem_map_ptr(0, self.ram_size, _UC_PROT_ALL, self.host)
        self.tables.setup_engine(uc)
        self.engines.append(uc)

    def detach(self, uc: Any) -> None:
        """Forget an engine (its thread ended)."""
        if uc in self.engines:
            self.engines.remove(uc)

    def flush_tlbs(self) -> None:
        """Drop every engine's TLB (after entries were removed or reduced)."""
        for uc in self.engines:
            uc.ctl(_UC_CTL_TLB_FLUSH, _UC_CTL_IO_WRITE)

    def _flush_code(self) -> None:
        for uc in self.engines:
            uc.ctl_flush_tb()

    # ---- VMA bookkeeping ----------------------------------------------------------------
    def find_vma(self, addr: int) -> Vma | None:
        """The mapping holding ``addr``, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            vma = self.vmas[i]
            if addr < vma.end:
                return vma
        return None

    def _insert(self, vma: Vma) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def _overlapping(self, start: int, end: int) -> list[Vma]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            if self.vmas[i].end > start:
                out.append(self.vmas[i])
            i += 1
        return out

    def _split(self, vma: Vma, at: int) -> Vma:
        """Split ``vma`` at ``at`` (inside it); returns the upper half (inserted)."""
        delta = at - vma.start
        upper = Vma(at, vma.end, vma.prot, vma.pa + delta, vma.name, vma.shared,
                    vma.offset + delta if vma.inode else 0, vma.dev, vma.inode)
        vma.end = at
        self._insert(upper)
        return upper

    def _carve(self, start: int, end: int) -> list[Vma]:
        """Take ``[start, end)`` out of the mappings; return the removed pieces."""
        removed = []
        for vma in self._overlapping(start, end):
            if vma.start < start:
                vma = self._split(vma, start)
            if vma.end > end:
                self._split(vma, end)
            i = bisect.bisect_left(self._starts, vma.start)
            del self.vmas[i]
            del self._starts[i]
            removed.append(vma)
        return removed

    def _release(self, pieces: list[Vma]) -> None:
        """Clear the page-table entries of ``pieces`` and free their physical pages."""
        code = False
        for vma in pieces:
            size = vma.end - vma.start
            self.tables.set_range(vma.start, size // PAGE, None, 0)
            # a fresh anonymous mapping over the host range: pages read as zero again
            _host_mmap(self.host + vma.pa, size, _RW, _HOST_ANON | _MAP_FIXED, -1, 0)
            self.phys.free(vma.pa, size)
            code |= bool(vma.prot & PROT_EXEC)
        if pieces:
            self.flush_tlbs()
        if code:
            self._flush_code()

    def is_free(self, start: int, end: int) -> bool:
        """True when nothing is mapped in ``[start, end)``."""
        return not self._overlapping(start, end)

    def _busy(self) -> list[tuple[int, int]]:
        return sorted([(v.start, v.end) for v in self.vmas] + self.reserved)

    def find_free(self, length: int, hint: int = 0) -> int:
        """A free, page-aligned range of ``length`` bytes: at or above ``hint`` when one
        is given, else where qemu-user would look first (top-down below the mmap base
        on arm, bottom-up from it on aarch64), else anywhere."""
        low = PAGE * 16                                   # qemu's mmap_min_addr
        if not hint and self.arch.mmap_topdown:
            end = self.mmap_base
            for start, stop in reversed(self._busy()):
                if start >= end:
                    continue
                if stop <= end - length:
                    break
                end = start
            if end - length >= low:
                return end - length
        # bottom-up without a hint: from qemu 7.2's mmap_next_start, which each such
        # mapping moves past itself (so the brk room a program leaves after its bss,
        # once released, stays free for brk instead of taking the next small mmaps)
        for lo in (max(page_align(hint), low) if hint else self.mmap_next, low):
            addr = lo
            for start, stop in self._busy():
                if stop <= addr:
                    continue
                if start >= addr + length:
                    break
                addr = page_align(stop)
            if addr + length <= self.va_limit:
                if not hint and lo == self.mmap_next:
                    self.mmap_next = addr + length
                return addr
        raise GuestMemoryError("no free guest address range", errno.ENOMEM)

    # ---- the AddressSpace operations --------------------------------------------------
    def mmap(self, addr: int, length: int, prot: int, *, fixed: bool = False, name: str = "",
             fd: int | None = None, offset: int = 0, shared: bool = False,
             noreplace: bool = False) -> int:
        """Map ``length`` bytes (zero-filled, or from host ``fd`` at ``offset``).

        Non-fixed: ``addr`` is a hint (0: choose). ``noreplace``: fail with EEXIST rather
        than replace existing mappings (MAP_FIXED_NOREPLACE).
        """
        if length <= 0 or addr % PAGE or offset % PAGE:
            raise GuestMemoryError("invalid mmap arguments", errno.EINVAL)
        length = page_align(length)
        with self.lock:
            if fixed or noreplace:
                if addr + length > self.va_limit:
                    raise GuestMemoryError("mmap beyond the address space", errno.ENOMEM)
                if noreplace and not self.is_free(addr, addr + length):
                    raise GuestMemoryError("mapping exists", errno.EEXIST)
            elif not (addr and addr + length <= self.va_limit and self.is_free(addr, addr + length)):
                addr = self.find_free(length, addr)
            pa = self.phys.alloc(length)
            vma = Vma(addr, addr + length, prot, pa, name, shared)
            try:
                if fd is not None:
                    self._map_file(vma, fd, offset, length)
                elif shared:
                    # MAP_SHARED|MAP_ANONYMOUS: a host shared mapping over the RAM range,
                    # so forked children share it (_release makes it private again)
                    _host_mmap(self.host + pa, length, _RW, _mmap.MAP_SHARED
                               | _mmap.MAP_ANONYMOUS | _MAP_FIXED, -1, 0)
            except GuestMemoryError:
                self.phys.free(pa, length)
                raise
            self._release(self._carve(addr, addr + length))
            self._insert(vma)
            self.tables.set_range(addr, length // PAGE, pa, prot)
            if prot & PROT_EXEC:
                self._flush_code()
            return addr

    def _map_file(self, vma: Vma, fd: int, offset: int, length: int) -> None:
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise GuestMemoryError("bad file descriptor", e.errno or errno.EBADF) from None
        vma.dev, vma.inode, vma.offset = st.st_dev, st.st_ino, offset
        # only whole pages that hold file bytes come from the file (past EOF the host
        # would raise SIGBUS); the rest stays anonymous zero pages, as Linux reads them
        covered = min(length, max(0, page_align(st.st_size - offset)))
        if not covered:
            return
        flags = _mmap.MAP_SHARED if vma.shared and vma.prot & PROT_WRITE else _mmap.MAP_PRIVATE
        _host_mmap(self.host + vma.pa, covered, _RW, flags | _MAP_FIXED, fd, offset)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """Change protections; every page must be mapped (else ENOMEM)."""
        if addr % PAGE:
            raise GuestMemoryError("unaligned mprotect", errno.EINVAL)
        end = addr + page_align(length)
        with self.lock:
            covered = addr
            for vma in self._overlapping(addr, end):
                if vma.start > covered:
                    break
                covered = vma.end
            if covered < end:
                raise GuestMemoryError("mprotect of unmapped memory", errno.ENOMEM)
            code = False
            for vma in self._overlapping(addr, end):
                if vma.start < addr:
                    vma = self._split(vma, addr)
                if vma.end > end:
                    self._split(vma, end)
                code |= bool((vma.prot ^ prot) & PROT_EXEC)
                vma.prot = prot
                self.tables.set_range(vma.start, (vma.end - vma.start) // PAGE, vma.pa, prot)
            self.flush_tlbs()
            if code:
                self._flush_code()

    def munmap(self, addr: int, length: int) -> None:
        """Unmap ``[addr, addr+length)`` (unmapped parts are fine)."""
        if addr % PAGE or length <= 0:
            raise GuestMemoryError("invalid munmap arguments", errno.EINVAL)
        with self.lock:
            self._release(self._carve(addr, addr + page_align(length)))

    def mremap(self, old: int, old_len: int, new_len: int, *, may_move: bool,
               new_addr: int | None = None) -> int:
        """Linux mremap: grow in place if free, else move (page-table only, no copy)."""
        if old % PAGE or new_len <= 0:
            raise GuestMemoryError("invalid mremap arguments", errno.EINVAL)
        old_len, new_len = page_align(old_len), page_align(new_len)
        with self.lock:
            pieces = self._overlapping(old, old + old_len)
            if not pieces or pieces[0].start > old or any(
                    a.end != b.start for a, b in zip(pieces, pieces[1:], strict=False)) \
                    or pieces[-1].end < old + old_len:
                raise GuestMemoryError("mremap of unmapped memory", errno.EFAULT)
            if new_addr is None and new_len <= old_len:
                if new_len < old_len:
                    self._release(self._carve(old + new_len, old + old_len))
                return old
            last = pieces[-1]
            if new_addr is None and old + new_len <= self.va_limit and \
                    self.is_free(old + old_len, old + new_len):
                self.mmap(old + old_len, new_len - old_len, last.prot, fixed=True,
                          name=last.name)
                return old
            if not may_move:
                raise GuestMemoryError("mremap cannot grow in place", errno.ENOMEM)
            if new_addr is None:
                new_addr = self.find_free(new_len, self.mmap_base)
            else:
                self._release(self._carve(new_addr, new_addr + new_len))
            moved = self._carve(old, old + old_len)
            self.tables.set_range(old, old_len // PAGE, None, 0)
            keep = old + min(old_len, new_len)
            for vma in moved:
                if vma.start >= keep:
                    self._release([vma])
                    continue
                if vma.end > keep:
                    tail = Vma(keep, vma.end, vma.prot, vma.pa + keep - vma.start)
                    vma.end = keep
                    self._release([tail])
                size = vma.end - vma.start
                vma.start += new_addr - old
                vma.end = vma.start + size
                self._insert(vma)
                self.tables.set_range(vma.start, size // PAGE, vma.pa, vma.prot)
            if new_len > old_len:
                self.mmap(new_addr + old_len, new_len - old_len, pieces[-1].prot, fixed=True,
                          name=pieces[-1].name)
            self.flush_tlbs()
            if any(v.prot & PROT_EXEC for v in moved):
                self._flush_code()
            return new_addr

    # ---- data access (ignores guest protections) -------------------------------------
    def _pieces(self, addr: int, size: int, need: int = 0) -> list[tuple[int, int]]:
        """(physical address, length) runs covering ``[addr, addr+size)``; EFAULT if not
        mapped (or, with ``need``, lacking those protections)."""
        out = []
        while size > 0:
            vma = self.find_vma(addr)
            if vma is None or (need and (vma.prot & need) != need):
                raise GuestMemoryError(f"bad guest address {addr:#x}", errno.EFAULT)
            n = min(size, vma.end - addr)
            out.append((vma.pa + addr - vma.start, n))
            addr += n
            size -= n
        return out

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at guest ``addr``."""
        if size <= 0:
            return b""
        vma = self.find_vma(addr)
        if vma is not None and addr + size <= vma.end:
            pa = vma.pa + addr - vma.start
            return self.ram[pa:pa + size].tobytes()
        return b"".join(self.ram[pa:pa + n].tobytes() for pa, n in self._pieces(addr, size))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at guest ``addr``."""
        data = memoryview(data).cast("B")
        pos = 0
        for pa, n in self._pieces(addr, len(data)):
            self.ram[pa:pa + n] = data[pos:pos + n]
            pos += n

    def views(self, addr: int, size: int, need: int = 0) -> list[memoryview]:
        """Writable host views of ``[addr, addr+size)`` (for readv/writev-style host
        calls), checked against ``need`` protections: EFAULT as GuestMemoryError."""
        return [self.ram[pa:pa + n] for pa, n in self._pieces(addr, size, need)]

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """The NUL-terminated string at ``addr`` (without the NUL)."""
        out = b""
        while len(out) < limit:
            vma = self.find_vma(addr)
            if vma is None or not vma.prot & PROT_READ:
                raise GuestMemoryError(f"bad guest address {addr:#x}", errno.EFAULT)
            pa = vma.pa + addr - vma.start
            chunk = self.ram[pa:pa + min(vma.end - addr, 256)].tobytes()
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
            addr += len(chunk)
        raise GuestMemoryError("string too long", errno.ENAMETOOLONG)

    def discard(self, addr: int, length: int) -> None:
        """madvise(MADV_DONTNEED): private pages read as zero (or as the file) again."""
        with self.lock:
            end = addr + page_align(length)
            for vma in self._overlapping(addr, end):
                lo, hi = max(addr, vma.start), min(end, vma.end)
                _libc.madvise(ctypes.c_void_p(self.host + vma.pa + lo - vma.start),
                              ctypes.c_size_t(hi - lo), 4)

    def fill(self, addr: int, size: int, byte: int = 0) -> None:
        """Set ``size`` bytes at ``addr`` to ``byte``."""
        for pa, n in self._pieces(addr, size):
            ctypes.memset(self.host + pa, byte, n)

    # ---- /proc/self/maps ----------------------------------------------------------------
    def maps_lines(self) -> list[str]:
        """``/proc/self/maps`` lines, as Linux formats them."""
        lines = []
        for v in self.vmas:
            perms = ("r" if v.prot & PROT_READ else "-") + ("w" if v.prot & PROT_WRITE else "-") \
                + ("x" if v.prot & PROT_EXEC else "-") + ("s" if v.shared else "p")
            dev = f"{os.major(v.dev):02x}:{os.minor(v.dev):02x}"
            head = f"{v.start:08x}-{v.end:08x} {perms} {v.offset:08x} {dev} {v.inode}"
            lines.append(f"{head:<72} {v.name}".rstrip() if v.name else head)
        return lines

    def close(self) -> None:
        """Release the host RAM (engines must be gone)."""
        self.ram.release()
        _libc.munmap(self.host, self.ram_size)
