"""The run loop of one guest thread (qemu's cpu_loop).

Syscalls are handled inside unicorn's interrupt hook, without leaving the engine
(stopping and restarting it per syscall costs several microseconds): the hook reads
the number and arguments in one raw batch call, dispatches, and writes the result.
Exit, CPU faults and exceptions raised by handlers stop the engine; the loop then
decides: return the exit, deliver a signal to a guest handler, or report the fatal
guest signal. Hook exceptions are kept on the thread and re-raised here, never
swallowed.

Threads: the loop runs while holding the process's execution lock; when the engine
stops (the watchdog's time slice, a signal) and others wait, the thread queues again
behind them. Signals are delivered at two places: right after a syscall, inside the
hook (one flag test on the hot path), and before each ``emu_start``. A process that
had more than one thread ends through :func:`end_process`, from whichever host thread
sees the end first (the main thread may be blocked in a host call).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from ..common.memory import GuestMemoryError
from .process import ExitInfo
from .syscalls import dispatch

if TYPE_CHECKING:
    from .process import GuestProcess, GuestThread

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
    set_ret = t.regs.setter(arch.reg_ret)      # C-level when r0/x0 is accessed directly
    mask = arch.mask
    from .syscalls.signals import after_syscall

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
                    set_ret(res & mask)
                if proc.sig_flag:
                    after_syscall(t, res, vals)
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


def _after_wait_hint(t: GuestThread) -> bool:
    """unicorn 2.1.4 ends emu_start with UC_ERR_INSN_INVALID after an arm YIELD, WFE or
    WFI hint (qemu's EXCP_YIELD/EXCP_HLT), the PC already past it (measured): True when
    the instruction just before the PC is one (Go's procyield spins on YIELD)."""
    if t.arch.name != "arm":
        return False
    pc = t.reg(t.arch.reg_pc)
    try:
        if t.reg(t.arch.reg_flags) & 0x20:                      # Thumb
            if int.from_bytes(t.mem.read(pc - 2, 2), "little") in (0xBF10, 0xBF20, 0xBF30):
                return True
            hi, lo = struct.unpack("<HH", t.mem.read(pc - 4, 4))
            return hi == 0xF3AF and lo in (0x8001, 0x8002, 0x8003)
        insn = int.from_bytes(t.mem.read(pc - 4, 4), "little")
    except Exception:  # noqa: BLE001 - unreadable: not a hint
        return False
    return insn & 0x0FFFFFFF in (0x0320F001, 0x0320F002, 0x0320F003)


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


def _handle_fault(t: GuestThread, signo: int, pc: int, intno: int | None) -> None:
    """A CPU fault: to the guest's handler, else :class:`GuestFault`."""
    from .syscalls.signals import deliver_fault

    if not deliver_fault(t, signo, pc, intno):
        raise GuestFault(t.fault_signal or signo, pc)


def run_thread(t: GuestThread) -> ExitInfo:
    """Run ``t`` until it or its process exits (or a fatal signal: :class:`GuestFault`)."""
    from unicorn import UcError

    from .syscalls.signals import deliver_pending

    proc = t.process
    if t.hook_handle is None:
        install_hooks(t)
    uc = t.uc
    lock = proc.exec_lock
    lock.acquire()
    proc.running = t
    try:
        while proc.exit is None and not t.exited:
            if proc.sig_flag:
                deliver_pending(t)
                if proc.exit is not None or t.exited:
                    break
            try:
                uc.emu_start(t.pc, 0)
            except UcError as e:
                if e.errno == UC_ERR_INSN_INVALID and _after_wait_hint(t):
                    pass        # arm YIELD/WFE/WFI: done, PC past it; a switch point
                else:
                    signo = signal.SIGILL if e.errno == UC_ERR_INSN_INVALID else signal.SIGSEGV
                    _handle_fault(t, signo, t.reg(t.arch.reg_pc), None)
                    continue
            if t.stop_reason is not None:
                reason, t.stop_reason = t.stop_reason, None
                raise reason
            if t.fault is not None:
                intno, pc = t.fault
                t.fault = None
                _handle_fault(t, _fault_signal(t, intno, pc), pc, intno)
                continue
            if lock.contended():
                proc.running = None
                lock.release()
                lock.acquire()
                proc.running = t
    finally:
        proc.running = None
        lock.release()
    if proc.exit is None and t.exited:
        from .syscalls.threads import thread_exited

        thread_exited(t)
        if proc.exit is None:
            # the main thread left, others go on: the process ends with the last one
            proc.done.wait()
    if proc.watchdog is not None:
        end_process(proc)
    return proc.exit or ExitInfo(status=0)


def start_thread(t: GuestThread) -> int:
    """Start the host thread of a new guest thread; returns its tid. The thread runs
    guest code once ``t.go`` is set (and it holds the execution lock)."""
    proc = t.process
    ready = threading.Event()

    def body() -> None:
        t.tid = threading.get_native_id()
        ready.set()
        t.go.wait()
        try:
            run_thread(t)
        except GuestFault as fault:
            proc.set_exit(signo=fault.signo)
        except BaseException as e:  # noqa: BLE001 - reported as qemu reports a crash
            sys.stderr.write(f"qemu: internal error in guest thread {t.tid}: {e!r}\n")
            proc.set_exit(signo=signal.SIGABRT)
        end_process(proc)

    host = threading.Thread(target=body, name="pyqemu-guest", daemon=True)
    t.host_thread = host
    host.start()
    ready.wait()
    proc.threads[t.tid] = t
    proc.start_watchdog()
    return t.tid


_ENDING = threading.Lock()
# signals for which qemu reports "core dumped" (as main._CORE_SIGNALS)
_CORE_SIGNALS = {3, 4, 5, 6, 7, 8, 11, 24, 25, 31}


def end_process(proc: GuestProcess) -> NoReturn:
    """End the host process as the guest process ended (from any host thread)."""
    _ENDING.acquire()                  # never released: one thread reports the end
    info = proc.exit or ExitInfo(status=0)
    try:
        proc.log.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    signo = info.signal
    if signo is None:
        os._exit(info.status or 0)
    if signo in _CORE_SIGNALS:
        import resource

        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
        except (OSError, ValueError):
            pass
        os.write(2, f"qemu: uncaught target signal {signo} "
                    f"({signal.strsignal(signo)}) - core dumped\n".encode())
    libc = ctypes.CDLL(None)
    libc.signal(signo, 0)                                    # SIG_DFL, from any thread
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signo])
    signal.pthread_kill(threading.get_ident(), signo)
    os.kill(os.getpid(), signo)
    os.abort()
