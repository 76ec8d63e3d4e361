"""Where unicorn 2.1.4 keeps the x86 state the API does not expose.

The system emulator needs a few fields of unicorn's ``uc_struct``, ``CPUState`` and
``CPUX86State`` (the env) that no API reaches: the segment caches (base, limit and flags:
the API writes only selectors), ``hflags`` (CPL, code size, interrupt shadow), EFER,
the A20 mask, the error code and "exception in flight" of the last exception, the HLT
flag, and the bool ``no_exit_request``. Their offsets are found here by calibration:
known values are written through the API (or a known exception is raised in a scratch
engine) and the memory is searched, never assumed; every engine checks the layout again
and :class:`CalibrationError` refuses to run on an engine that does not match (another
unicorn build). See /work/shared/UNICORN.md "x86 system mode".

Memory of this process is read through ``/proc/self/mem`` (an unmapped page is an error,
not a crash) and written with ctypes.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from typing import Any

from ...common.cpu.noexit import exits_at_block_starts, flag_address


class CalibrationError(Exception):
    """The unicorn library does not have the layout this module knows how to find."""


SEG_SIZE = 24                  # SegmentCache: u32 selector, pad, u64 base, u32 limit, u32 flags
_CPU_SEARCH = 0x20000          # bytes of the CPU object searched for the env
_HINT_CPU_PTR = 0x1B8          # uc_struct.cpu in 2.1.4 (tried first)
CPU_MODEL = 0                  # UC_CPU_X86_QEMU64: qemu's default model; no AVX promised


@dataclass(frozen=True)
class EnvLayout:
    """Offsets inside the env (``CPUX86State``) and the CPU object."""

    context_size: int          # bytes of env the context blob copies (blob = 40 + this)
    cpu_ptr: int               # uc_struct offset of the CPUState pointer
    env: int                   # CPUState offset of the env
    halted: int                # CPUState offset of ``halted`` (int)
    eip: int
    hflags: int
    hflags2: int
    segs: int                  # ES, CS, SS, DS, FS, GS, then LDT, TR, GDT, IDT
    cr: int                    # cr[0..]
    a20_mask: int
    efer: int
    error_code: int
    exception_is_int: int
    exception_next_eip: int
    old_exception: int         # "exception in flight" (-1: none)
    cpuid_version: int         # CPUID.1:EAX of the CPU model (EDX at reset)

    @property
    def ldt(self) -> int:
        return self.segs + 6 * SEG_SIZE

    @property
    def tr(self) -> int:
        return self.segs + 7 * SEG_SIZE

    @property
    def gdt(self) -> int:
        return self.segs + 8 * SEG_SIZE

    @property
    def idt(self) -> int:
        return self.segs + 9 * SEG_SIZE


def _peek(fd: int, addr: int, size: int) -> bytes:
    try:
        return os.pread(fd, size, addr)
    except (OSError, OverflowError):
        return b""


def _mem_fd() -> int:
    try:
        return os.open("/proc/self/mem", os.O_RDONLY)
    except OSError as e:
        raise CalibrationError(f"cannot read /proc/self/mem: {e.strerror}") from None


def uc_handle(uc: Any) -> int:
    return ctypes.cast(uc._uch, ctypes.c_void_p).value or 0


def set_no_exit_request(uc: Any) -> int:
    """Set uc_struct.no_exit_request (exits only at translation-block starts, where the
    state is exact; see sys_api.md and common/cpu/noexit.py) and return its address."""
    if exits_at_block_starts(uc) != "flag":
        raise CalibrationError("unicorn layout not recognised: no_exit_request not found "
                               "(pin unicorn==2.1.4)")
    addr = flag_address(uc)
    assert addr is not None
    return addr


def _find_env(uc: Any, fd: int, cpu_ptr_hint: int | None) -> tuple[int, int, int]:
    """(uc_struct offset of the CPU pointer, CPU address, env offset in the CPU)."""
    from unicorn.x86_const import (
        UC_X86_REG_R8,
        UC_X86_REG_R9,
        UC_X86_REG_R10,
        UC_X86_REG_R11,
        UC_X86_REG_R12,
        UC_X86_REG_R13,
        UC_X86_REG_R14,
        UC_X86_REG_R15,
        UC_X86_REG_RAX,
        UC_X86_REG_RBP,
        UC_X86_REG_RBX,
        UC_X86_REG_RCX,
        UC_X86_REG_RDI,
        UC_X86_REG_RDX,
        UC_X86_REG_RSI,
        UC_X86_REG_RSP,
    )
    gprs = (UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX,
            UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_RSI, UC_X86_REG_RDI,
            UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
            UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15)
    saved = [uc.reg_read(r) for r in gprs]
    marks = [0x5EC0_A500_0000_0000 + 0x1111 * i for i in range(16)]
    pattern = b"".join(v.to_bytes(8, "little") for v in marks)
    try:
        for r, v in zip(gprs, marks, strict=True):
            uc.reg_write(r, v)
        head = _peek(fd, uc_handle(uc), 0x800)
        tries = [cpu_ptr_hint] if cpu_ptr_hint is not None else []
        tries += [_HINT_CPU_PTR, *range(0, len(head) - 7, 8)]
        for off in tries:
            if off + 8 > len(head):
                continue
            cpu, = struct.unpack_from("<Q", head, off)
            if cpu < 0x10000 or cpu & 7:
                continue
            at = _peek(fd, cpu, _CPU_SEARCH).find(pattern)
            if at >= 0 and at % 8 == 0:
                blob = uc.context_save().__bytes__()[40:]
                here = _peek(fd, cpu + at, len(blob))
                same = sum(a == b for a, b in zip(blob, here, strict=False))
                if len(here) == len(blob) and same >= len(blob) - 16:
                    return off, cpu, at
    finally:
        for r, v in zip(gprs, saved, strict=True):
            uc.reg_write(r, v)
    raise CalibrationError("unicorn layout not recognised: x86 CPU state not found")


_LAYOUT: list[EnvLayout] = []


def layout() -> EnvLayout:
    """The env layout of this process's unicorn (calibrated once in a scratch engine)."""
    if not _LAYOUT:
        _LAYOUT.append(_calibrate())
    return _LAYOUT[0]


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def _calibrate() -> EnvLayout:
    from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
    from unicorn.x86_const import (
        UC_X86_REG_CR2,
        UC_X86_REG_CS,
        UC_X86_REG_GDTR,
        UC_X86_REG_MSR,
        UC_X86_REG_RAX,
        UC_X86_REG_RIP,
    )

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(CPU_MODEL)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    fd = _mem_fd()
    try:
        cpu_ptr, cpu, env_off = _find_env(uc, fd, None)
        env = cpu + env_off
        size = len(uc.context_save().__bytes__()) - 40

        def snap() -> bytes:
            return _peek(fd, env, size)

        # eip: right after the 16 general registers
        uc.reg_write(UC_X86_REG_RIP, 0x7E57_C0DE_1234)
        eip = snap().find((0x7E57_C0DE_1234).to_bytes(8, "little"))
        # the segment caches: GDTR base/limit land in gdt (segs[6], ldt, tr, then gdt)
        uc.reg_write(UC_X86_REG_GDTR, (0, 0x1234_5678_9ABC, 0xFEDC, 0))
        gdt = snap().find(struct.pack("<QI", 0x1234_5678_9ABC, 0xFEDC))
        if eip != 128 or gdt < 0 or (gdt - 8) % 8:
            raise CalibrationError("unicorn layout not recognised: eip/segment caches")
        segs = gdt - 8 - 8 * SEG_SIZE
        uc.reg_write(UC_X86_REG_CS, 0x4242)
        if _u32(snap(), segs + SEG_SIZE) != 0x4242:
            raise CalibrationError("unicorn layout not recognised: CS segment cache")
        # hflags: between eip and the segments; a fresh 64-bit engine has
        # CS32|SS32|PE|LMA|CS64 (0xC0B0) set and CPL 0
        hflags = segs - 8
        if _u32(snap(), hflags) & 0xC0B3 != 0xC0B0:
            raise CalibrationError("unicorn layout not recognised: hflags")
        # control registers: CR2 has no side effects
        uc.reg_write(UC_X86_REG_CR2, 0x0C2C_2C2C_2C2C)
        cr2 = snap().find((0x0C2C_2C2C_2C2C).to_bytes(8, "little"))
        if cr2 < 0:
            raise CalibrationError("unicorn layout not recognised: control registers")
        cr = cr2 - 16
        uc.reg_write(UC_X86_REG_CR2, 0)
        # EFER: LMA|LME in 64-bit mode; confirmed by writing NXE
        uc.reg_write(UC_X86_REG_MSR, (0xC0000080, 0xD00))
        b = snap()
        efer = next((i for i in range(cr, cr + 0x200, 8)
                     if struct.unpack_from("<Q", b, i)[0] == 0xD00), -1)
        uc.reg_write(UC_X86_REG_MSR, (0xC0000080, 0x500))
        a20 = next((i for i in range(cr + 40, efer, 4)
                    if struct.unpack_from("<i", b, i)[0] == -1), -1) if efer > 0 else -1
        if efer < 0 or a20 < 0:
            raise CalibrationError("unicorn layout not recognised: EFER/A20 mask")

        # exceptions: a #GP with a known error code, then INT 0x55
        uc.mem_map(0, 0x10000)
        # mov ax, 0x1234; mov ds, ax (GDT limit 0: #GP(0x1234)); hlt
        uc.mem_write(0x1000, bytes.fromhex("66b834128ed8f4"))
        uc.mem_write(0x2000, bytes.fromhex("9090cd55f4"))
        uc.reg_write(UC_X86_REG_GDTR, (0, 0, 0, 0))
        seen: list[int] = []

        def intr(uc_: Any, intno: int, _ud: Any) -> None:
            seen.append(intno)
            uc_.emu_stop()

        uc.hook_add(UC_HOOK_INTR, intr)
        before = snap()
        uc.emu_start(0x1000, 0)
        after_gp = snap()
        uc.emu_start(0x2000, 0)
        after_int = snap()
        if seen[:2] != [13, 0x55]:
            raise CalibrationError("unicorn layout not recognised: exceptions " f"{seen}")
        err = next((i for i in range(0, size - 4, 4) if _u32(after_gp, i) == 0x1234
                    and _u32(before, i) != 0x1234 and i > efer), -1)
        old = next((i for i in range(0, size - 4, 4)
                    if struct.unpack_from("<i", before, i)[0] == -1
                    and _u32(after_gp, i) == 13 and i > err), -1)
        if err < 0 or old < 0 or _u32(after_int, err + 4) != 1 \
                or struct.unpack_from("<Q", after_int, err + 8)[0] != 0x2004:
            raise CalibrationError("unicorn layout not recognised: error code fields")

        # CPUState.halted: 1 after HLT, 0 after a plain stop
        cpu_before = _peek(fd, cpu, env_off)
        uc.mem_write(0x3000, bytes.fromhex("f4"))
        uc.emu_start(0x3000, 0)
        cpu_halted = _peek(fd, cpu, env_off)
        uc.mem_write(0x3100, bytes.fromhex("90cd55"))      # nop; int 0x55 (stops)
        uc.emu_start(0x3100, 0)
        cpu_run = _peek(fd, cpu, env_off)
        halted = next((i for i in range(0, env_off - 4, 4)
                       if _u32(cpu_halted, i) == 1 and _u32(cpu_before, i) == 0
                       and _u32(cpu_run, i) == 0), -1)
        if halted < 0:
            raise CalibrationError("unicorn layout not recognised: halted flag")
        # mov eax, 1; cpuid; int 0x55
        uc.mem_write(0x3200, bytes.fromhex("b8010000000fa2cd55"))
        uc.emu_start(0x3200, 0)
        cpuid_version = uc.reg_read(UC_X86_REG_RAX) & 0xFFFFFFFF
    except UcError as e:
        raise CalibrationError(f"unicorn calibration failed: {e}") from None
    finally:
        os.close(fd)
    return EnvLayout(context_size=size, cpu_ptr=cpu_ptr, env=env_off, halted=halted,
                     eip=eip, hflags=hflags, hflags2=hflags + 4, segs=segs, cr=cr,
                     a20_mask=a20, efer=efer, error_code=err, exception_is_int=err + 4,
                     exception_next_eip=err + 8, old_exception=old,
                     cpuid_version=cpuid_version)


def attach(uc: Any) -> tuple[EnvLayout, int, int]:
    """(layout, env address, CPU address) of ``uc`` after checking the layout there."""
    lay = layout()
    fd = _mem_fd()
    try:
        cpu_ptr, cpu, env_off = _find_env(uc, fd, lay.cpu_ptr)
    finally:
        os.close(fd)
    if (cpu_ptr, env_off) != (lay.cpu_ptr, lay.env):
        raise CalibrationError("unicorn layout differs between engines")
    if len(uc.context_save().__bytes__()) - 40 != lay.context_size:
        raise CalibrationError("unicorn context size differs between engines")
    return lay, cpu + env_off, cpu
