"""Unicorn engines for user-mode guests, and lean register access.

``new_engine`` makes one CPU (one per guest thread) in the state Linux user space
expects, except for the MMU, which :meth:`common.memory.GuestMemory.attach` turns on.

:class:`FastRegs` gives the syscall path cheap register access. The general registers
(r0-r12 on arm, x0-x30 on aarch64) are read and written straight in the engine's CPU
state through a memoryview (about 0.03 us an access): their address inside unicorn's
``ARMCPU`` is found once per process by calibration (known values written through the
API, then searched for; every later engine checks the layout again). Other registers,
and every register if the calibration ever fails (another unicorn build), go through
raw ctypes calls into the library (about 0.5 us a call, against 1.8 us through
``Uc.reg_read``; see UNICORN.md).
"""

from __future__ import annotations

import ctypes
import functools
import operator
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from . import ArchInfo
from .noexit import exits_at_block_starts, raw_lib

FPEXC_EN = 0x40000000
CPACR_FULL_VFP = 0xF << 20        # cp10/cp11 full access


def new_engine(arch: ArchInfo) -> Any:
    """A fresh unicorn engine for ``arch`` (FP/SIMD enabled; MMU still off)."""
    from unicorn import Uc

    uc = Uc(arch.uc_arch, arch.uc_mode)
    if arch.uc_cpu is not None:       # the -cpu model (before anything initialises the CPU)
        uc.ctl_set_cpu_model(arch.uc_cpu)
    # before anything initialises the engine: unicorn's arm targets default to 1 KiB
    # pages (ARMv5 tiny pages), which cuts translation blocks at every 1 KiB and sends
    # every jump across such a boundary through helper_lookup_tb_ptr instead of a
    # chained jump; 4 KiB is what qemu picks for a v7/v8 CPU (and our page tables' size).
    # Measured: aarch64 sha256 loop 2.05 -> 1.47 s of CPU (bench_cpu 4000)
    uc.ctl_set_page_size(arch.page_size)
    if arch.name == "arm":
        from unicorn import arm_const as c

        uc.reg_write(c.UC_ARM_REG_C1_C0_2, CPACR_FULL_VFP)
        uc.reg_write(c.UC_ARM_REG_FPEXC, FPEXC_EN)
    # no `until` address: unicorn then does not walk it through the page tables
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    # no exit-request helper call after every guest memory access: emu_stop() then
    # stops at block starts only, where the PC is exact (see noexit.py). Measured:
    # bench_cpu 2000 (sha256) 0.95 -> 0.6-0.7 s of CPU on arm, 0.69 -> 0.56 s on aarch64
    exits_at_block_starts(uc)
    return uc


# ---- the general registers inside unicorn's CPU state ---------------------------------
# unicorn 2.1.4 (x86-64 host): uc_struct.cpu at 0x1b8, the register file at cpu+0xa2f0
# (arm regs[16]) / cpu+0xa390 (aarch64 xregs[32]); tried first, searched for otherwise
_HINT_CPU_PTR = 0x1B8
_SEARCH_HEAD = 0x800           # bytes of uc_struct searched for the CPU pointer
_SEARCH_CPU = 0x20000          # bytes of the CPU object searched for the registers
# (gpr ids, slots in the view, bytes per register) per arch; the ids are unicorn's
# arm_const/arm64_const values (R0-R12 = 66-78; X0-X28 = 199-227, X29 = 1, X30 = 2)
_GPRS = {
    "arm": (tuple(range(66, 79)), 16, 4),
    "aarch64": ((*range(199, 228), 1, 2), 32, 8),
}
_LAYOUT: dict[str, tuple[int, int]] = {}    # arch -> (cpu pointer offset, regs offset)
_ARCH_NAMES = {1: "arm", 2: "aarch64"}         # UC_ARCH_ARM, UC_ARCH_ARM64


def _arch_of(uc: Any) -> ArchInfo | None:
    from . import get_arch

    name = _ARCH_NAMES.get(getattr(uc, "_arch", None))    # type: ignore[arg-type]
    return get_arch(name) if name else None


def _peek(fd: int, addr: int, size: int) -> bytes:
    """Memory of this process without the risk of a crash (EIO where unmapped)."""
    try:
        return os.pread(fd, size, addr)
    except (OSError, OverflowError):
        return b""


def _find_gprs(uc: Any, arch: ArchInfo) -> int | None:
    """Address of ``uc``'s general register file, or None (layout not recognised).

    The registers are set to marker values through the API, found in memory, and
    restored; the offsets found are kept for the next engines, which only check them."""
    spec = _GPRS.get(arch.name)
    if spec is None:
        return None
    ids, _slots, width = spec
    uch = uc._uch.value
    saved = [uc.reg_read(r) for r in ids]
    marks = [(0x5EC0_0000 + 0x1111 * i) | ((0xA5 << 40) if width == 8 else 0)
             for i in range(len(ids))]
    pattern = b"".join(v.to_bytes(width, "little") for v in marks)
    found = None
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:                     # no /proc: the C API it is
        return None
    try:
        for r, v in zip(ids, marks, strict=True):
            uc.reg_write(r, v)
        try:
            head = _peek(fd, uch, _SEARCH_HEAD)
            known = _LAYOUT.get(arch.name)
            tries = [known] if known else []
            tries += [(off, None) for off in
                      [_HINT_CPU_PTR, *range(0, len(head) - 7, 8)]]
            for cpu_off, regs_off in tries:
                if cpu_off + 8 > len(head):
                    continue
                cpu = struct.unpack_from("<Q", head, cpu_off)[0]
                if cpu < 0x10000 or cpu & 7:
                    continue
                if regs_off is not None:
                    if _peek(fd, cpu + regs_off, len(pattern)) == pattern:
                        found = cpu + regs_off
                        break
                    continue
                at = _peek(fd, cpu, _SEARCH_CPU).find(pattern)
                if at >= 0 and at % 4 == 0:
                    _LAYOUT[arch.name] = (cpu_off, at)
                    found = cpu + at
                    break
            if found is not None:
                # the registers live there, not a copy: a change through the API shows
                probe = marks[0] ^ ((1 << (8 * width)) - 1)
                uc.reg_write(ids[0], probe)
                if _peek(fd, found, width) != probe.to_bytes(width, "little"):
                    found = None
        finally:
            os.close(fd)
    finally:
        for r, v in zip(ids, saved, strict=True):
            uc.reg_write(r, v)
    return found


class FastRegs:
    """Register access for one engine: a batch read of a fixed register list and
    single reads/writes; the general registers straight in the CPU state (see the
    module doc), the others through the library's C API."""

    def __init__(self, uc: Any, batch: tuple[int, ...], arch: ArchInfo | None = None) -> None:
        lib = raw_lib()
        self._uch = ctypes.c_void_p(uc._uch.value)
        n = len(batch)
        self._vals = (ctypes.c_uint64 * n)()
        self._ids = (ctypes.c_int * n)(*batch)
        self._ptrs = (ctypes.c_void_p * n)(
            *(ctypes.addressof(self._vals) + 8 * i for i in range(n)))
        self._n = ctypes.c_int(n)
        self._one = ctypes.c_uint64()
        self._one_ref = ctypes.byref(self._one)
        # functions without argtypes: arguments already are ctypes objects, which halves
        # the cost of a call (0.9 against 1.7 us for the batch read, measured)
        self._read_batch = lib.uc_reg_read_batch
        self._read = lib.uc_reg_read
        self._write = lib.uc_reg_write
        self._slot: dict[int, int] = {}
        self._gpr: memoryview | None = None
        self._mask = 0
        #: values of the batch registers, in order (a sequence: tuple or list)
        self.read_batch: Callable[[], Sequence[int]] = self._read_batch_raw
        if arch is None:
            arch = _arch_of(uc)
        addr = _find_gprs(uc, arch) if arch is not None else None
        if addr is not None:
            ids, slots, width = _GPRS[arch.name]      # type: ignore[union-attr]
            raw = (ctypes.c_char * (slots * width)).from_address(addr)
            self._uc = uc                  # the CPU state lives as long as the engine
            self._gpr = memoryview(raw).cast("B").cast("I" if width == 4 else "Q")
            self._slot = {r: i for i, r in enumerate(ids)}
            self._mask = (1 << (8 * width)) - 1
            if n > 1 and all(r in self._slot for r in batch):
                # a C-level getter over the view: no Python frame per call
                get = operator.itemgetter(*(self._slot[r] for r in batch))
                self.read_batch = functools.partial(get, self._gpr)

    @property
    def direct(self) -> bool:
        """True when the general registers are accessed in the CPU state directly."""
        return self._gpr is not None

    def _read_batch_raw(self) -> Sequence[int]:
        self._read_batch(self._uch, self._ids, self._ptrs, self._n)
        return self._vals[:]

    def read(self, reg: int) -> int:
        """One register."""
        i = self._slot.get(reg)
        if i is not None:
            return self._gpr[i]            # type: ignore[index]
        self._one.value = 0
        self._read(self._uch, reg, self._one_ref)
        return self._one.value

    def setter(self, reg: int) -> Callable[[int], None]:
        """A one-argument function setting ``reg`` to a value already cut to the word
        size (for the syscall result: a C-level call, no Python frame, when ``reg`` is
        a general register accessed directly; about 450 host instructions less per
        call than :meth:`write`, measured with callgrind)."""
        i = self._slot.get(reg)
        if i is not None:
            return functools.partial(self._gpr.__setitem__, i)     # type: ignore[union-attr]
        return functools.partial(self.write, reg)

    def write(self, reg: int, value: int) -> None:
        """Set one register."""
        i = self._slot.get(reg)
        if i is not None:
            self._gpr[i] = value & self._mask      # type: ignore[index]
            return
        self._one.value = value
        self._write(self._uch, reg, self._one_ref)
