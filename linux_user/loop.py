"""The run loop of one guest thread (qemu's cpu_loop).

Syscalls are handled inside unicorn's interrupt hook, without leaving the engine
(stopping and restarting it per syscall costs several microseconds): the hook reads
the number and arguments in one raw batch call, dispatches, and writes the result.
Exit, CPU faults and exceptions raised by handlers stop the engine; the loop then
decides: return the exit, or report the fatal guest signal. Hook exceptions are kept
on the thread and re-raised here, never swallowed.
"""

from __future__ import annotations

import ctypes
import errno
import signal
from typing import TYPE_CHECKING

from ..common.memory import GuestMemoryError
from .process import ExitInfo
from .syscalls import dispatch

if TYPE_CHECKING:
    from .process import GuestThread

UC_HOOK_INTR = 1
# qemu's exception numbers as unicorn passes them to the interrupt hook (target/arm)
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT = 1, 2, 3, 4, 7
UC_ERR_INSN_INVALID = 10

# Linux's ptrace breakpoints on arm raise SIGTRAP, not SIGILL (arch/arm/kernel/ptrace.c)
_ARM_BREAKPOINTS = {(4, 0xE7F001F0), (2, 0xDE01), (4, 0xF7F0A000)}

_HOOK_INTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


class GuestFault(Exception):
    """The guest died of a signal it does not handle (phase 1: every CPU fault)."""

    def __init__(self, signo: int, pc: int) -> None:
        super().__init__(f"guest signal {signo} at {pc:#x}")
        self.signo = signo
        self.pc = pc


def install_hooks(t: GuestThread) -> None:
    """Add the interrupt hook (syscalls and CPU faults) to ``t``'s engine."""
    from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

    arch = t.arch
    proc = t.process
    handlers = proc.table.handlers  # type: ignore[union-attr]
    call = dispatch
    if proc.strace:     # -strace: every syscall through strace's dispatch
        from .strace import traced_dispatch as call
        handlers = {}
    read_batch = t.regs.read_batch
    write = t.regs.write
    reg_ret, mask = arch.reg_ret, arch.mask

    def on_intr(_handle: int, intno: int, _data: int) -> None:
        try:
            if intno == EXCP_SWI:
                vals = read_batch()
                entry = handlers.get(vals[0])
                if entry is None:
                    res = call(t, vals[0], vals[1:])
                else:
                    # dispatch() inlined: this is the hot path
                    try:
                        res = entry[1](t, *vals[1:1 + entry[2]])
                    except OSError as e:
                        res = -(e.errno or errno.EIO)
                    except GuestMemoryError as e:
                        res = -e.errno
                if res is not None:
                    write(reg_ret, res & mask)
            else:
                t.fault = (intno, t.reg(arch.reg_pc))
                t.stop()
        except BaseException as e:  # noqa: BLE001 - re-raised by run_thread
            t.stop_reason = e
            t.stop()

    cb = _HOOK_INTR(on_intr)
    handle = uc_hook_h()
    err = uclib.uc_hook_add(t.uc._uch, ctypes.byref(handle), UC_HOOK_INTR,
                            ctypes.cast(cb, ctypes.c_void_p), None, ctypes.c_uint64(1),
                            ctypes.c_uint64(0))
    if err:
        from unicorn import UcError

        raise UcError(err)
    t.hook_handle = (handle, cb)      # keep the C callback alive


def _fault_signal(t: GuestThread, intno: int, pc: int) -> int:
    if intno == EXCP_BKPT:
        return signal.SIGTRAP
    if intno == EXCP_UDEF:
        if t.arch.name == "arm":
            thumb = bool(t.reg(t.arch.reg_flags) & 0x20)
            for size, insn in _ARM_BREAKPOINTS:
                if thumb == (size == 2 or insn == 0xF7F0A000):
                    try:
                        raw = t.mem.read(pc, size)
                    except Exception:  # noqa: BLE001 - unreadable: not a breakpoint
                        continue
                    if size == 4 and thumb:
                        word = int.from_bytes(raw[:2], "little") << 16 | \
                            int.from_bytes(raw[2:], "little")
                    else:
                        word = int.from_bytes(raw, "little")
                    if word == insn:
                        return signal.SIGTRAP
        return signal.SIGILL
    return signal.SIGSEGV


def run_thread(t: GuestThread) -> ExitInfo:
    """Run ``t`` until its process exits (or a fatal signal: :class:`GuestFault`)."""
    from unicorn import UcError

    proc = t.process
    if t.hook_handle is None:
        install_hooks(t)
    uc = t.uc
    lock = proc.exec_lock
    lock.acquire()
    try:
        while proc.exit is None and not t.exited:
            start = t.pc
            try:
                uc.emu_start(start, 0)
            except UcError as e:
                signo = signal.SIGILL if e.errno == UC_ERR_INSN_INVALID else signal.SIGSEGV
                raise GuestFault(signo, t.reg(t.arch.reg_pc)) from None
            if t.stop_reason is not None:
                reason, t.stop_reason = t.stop_reason, None
                raise reason
            if t.fault is not None:
                intno, pc = t.fault
                t.fault = None
                raise GuestFault(_fault_signal(t, intno, pc), pc)
    finally:
        lock.release()
    return proc.exit or ExitInfo(status=0)
