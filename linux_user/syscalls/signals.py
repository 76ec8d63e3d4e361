"""Signals: dispositions, masks, queues, delivery to guest handlers, and the syscalls.

Host side: the asynchronous signals (:data:`ASYNC`: SIGINT, SIGTERM, SIGALRM, SIGCHLD,
SIGUSR1 ...) are blocked in every host thread from the start, and one watcher host
thread takes them with ``sigwaitinfo`` (so the guest sees the real si_code, si_pid,
si_uid and, for SIGCHLD, si_status). A signal whose guest action is the default
"terminate" ends the process at once, as the kernel does for a fatal signal; an
ignored one is dropped; anything else is queued for the guest and the running engine
is asked to stop at its next syscall (or, failing that, by ``emu_stop``; see
``process._watchdog``). The host's SIGPIPE is ignored: a write or send that gets
EPIPE (without MSG_NOSIGNAL) queues the guest's SIGPIPE (:func:`send_sigpipe`), so
a guest handler runs, SIG_DFL kills, and a blocked one stays pending as on Linux.

Guest side: signals are queued per thread (tgkill, faults) or per process (kill,
host signals); standard signals coalesce, real-time ones queue. Delivery happens with
the execution lock held, right after a syscall (inside the interrupt hook; the hook
tests only ``proc.sig_flag``) or before the engine restarts; it builds the real frame
(:mod:`..sigframe`), blocks sa_mask (and the signal unless SA_NODEFER), honours
SA_RESETHAND and SA_ONSTACK, and restarts an interrupted syscall that returned
``-ERESTARTSYS`` when the handler has SA_RESTART (else -EINTR). CPU faults come as
synchronous signals with si_addr and si_code; when the guest does not catch them the
process dies with qemu's "uncaught target signal" line.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..sigframe import (
    SA_NODEFER,
    SA_RESETHAND,
    SA_RESTART,
    SS_DISABLE,
    SS_ONSTACK,
    BadFrame,
    SigAction,
    on_altstack,
    pack_siginfo,
    restore_frame,
    restore_rt_frame,
    setup_rt_frame,
)
from . import syscall
from .structs import s32, timespec_struct

if TYPE_CHECKING:
    from ..process import GuestProcess, GuestThread

SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
SIG_DFL, SIG_IGN = 0, 1
_NSIG = 64
_UNBLOCKABLE = (1 << (9 - 1)) | (1 << (19 - 1))     # SIGKILL, SIGSTOP
ERESTARTSYS = 512
# si_code values
SI_USER, SI_KERNEL, SI_QUEUE, SI_TKILL = 0, 0x80, -1, -6
SEGV_MAPERR, SEGV_ACCERR, BUS_ADRALN, ILL_ILLOPC, TRAP_BRKPT = 1, 2, 1, 1, 1

#: asynchronous host signals taken by the watcher thread (same numbers on arm, arm64
#: and the x86/arm hosts); the real-time ones glibc leaves to applications included
ASYNC = frozenset([signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD,
                   signal.SIGURG, signal.SIGVTALRM, signal.SIGPROF, signal.SIGWINCH,
                   signal.SIGIO, signal.SIGPWR, signal.SIGXCPU, signal.SIGXFSZ]
                  + list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)))
# default actions (signal(7)); everything else terminates
_IGNORED_BY_DEFAULT = {signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGCONT}
_STOPPING = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_SYNC = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGTRAP, signal.SIGFPE}

_PROCESS: list[GuestProcess] = []
_SIGNALFD: list = []          # poll.signalfd_notify, when that family is loaded
_WATCHER: list[threading.Thread] = []


def _bit(signo: int) -> int:
    return 1 << (signo - 1)


# ---- host signals ---------------------------------------------------------------------
def register_process(proc: GuestProcess) -> None:
    """Make ``proc`` the receiver of host signals (one guest process per host one)."""
    _PROCESS[:] = [proc]
    try:
        from .poll import signalfd_notify
    except ImportError:
        return
    _SIGNALFD[:] = [signalfd_notify]


def reset_host_signals() -> None:
    """SIGINT back to the default (Python catches it), SIGPIPE ignored (the guest's is
    synthesized on EPIPE), then block :data:`ASYNC` in this (the first) host thread
    and start the watcher."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC)
    start_watcher()


def start_watcher() -> None:
    """Start the host thread that takes :data:`ASYNC` signals (again after a fork)."""
    watcher = threading.Thread(target=_watch, name="pyqemu-signals", daemon=True)
    _WATCHER[:] = [watcher]
    watcher.start()


def host_exec_prepare() -> None:
    """Before exec'ing a host program: unblock what :func:`reset_host_signals` blocked."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ASYNC)


def _watch() -> None:
    while True:
        info = signal.sigwaitinfo(ASYNC)
        if _PROCESS:
            host_signal(_PROCESS[0], info)


def host_signal(proc: GuestProcess, info: signal.struct_siginfo) -> None:
    """A host signal for the guest process (called on the watcher thread)."""
    signo = info.si_signo
    word = proc.arch.word_size
    if signo == signal.SIGCHLD:
        raw = pack_siginfo(word, signo, info.si_code, pid=info.si_pid, uid=info.si_uid,
                           status=info.si_status)
    else:
        raw = pack_siginfo(word, signo, info.si_code, pid=info.si_pid, uid=info.si_uid)
    queue_signal(proc, signo, raw, from_host=True)


def action(proc: GuestProcess, signo: int) -> SigAction:
    raw = proc.sigactions.get(signo)
    if raw is None:
        return SigAction(SIG_DFL, 0, 0, 0)
    return SigAction.parse(raw, proc.arch.word_size)


def _ignored(act: SigAction, signo: int) -> bool:
    return act.handler == SIG_IGN or (act.handler == SIG_DFL and (
        signo in _IGNORED_BY_DEFAULT or signo in _STOPPING))


def queue_signal(proc: GuestProcess, signo: int, info: bytes,
                 thread: GuestThread | None = None, *, from_host: bool = False) -> None:
    """Queue ``signo`` for ``thread`` (or the process) and make it deliverable soon."""
    act = action(proc, signo)
    threads = [thread] if thread is not None else list(proc.threads.values())
    blocked_everywhere = bool(threads) and all(t.sigmask & _bit(signo) for t in threads)
    if _ignored(act, signo) and not blocked_everywhere:
        return
    if act.handler == SIG_DFL and not blocked_everywhere:
        # a fatal signal: the whole process ends now (complete_signal's group exit)
        proc.set_exit(signo=signo)
        if from_host:
            from ..loop import end_process

            end_process(proc)
        return
    with proc.sig_lock:
        pending = thread.sig_pending if thread is not None else proc.sig_pending
        queue = pending.setdefault(signo, [])
        if signo < 32 and queue:
            return                                  # standard signals coalesce
        queue.append(info)
        proc.sig_flag = True
    if _SIGNALFD:
        _SIGNALFD[0](proc)
    for t in threads:
        t.kick()            # blocked ones too: sigtimedwait waits for blocked signals
    if from_host:
        proc.start_watchdog()         # it gets the running thread to a delivery point


def _recompute_flag(proc: GuestProcess) -> None:
    proc.sig_flag = bool(proc.sig_pending) or any(t.sig_pending for t in
                                                   list(proc.threads.values()))


def _take(t: GuestThread, allowed: int) -> tuple[int, bytes] | None:
    """Dequeue the lowest pending signal in ``allowed`` (thread's queue first)."""
    proc = t.process
    with proc.sig_lock:
        for pending in (t.sig_pending, proc.sig_pending):
            best = None
            for signo in pending:
                if allowed & _bit(signo) and (best is None or signo < best):
                    best = signo
            if best is not None:
                queue = pending[best]
                info = queue.pop(0)
                if not queue:
                    del pending[best]
                return best, info
    return None


def _syscall_insn_size(t: GuestThread) -> int:
    if t.arch.name == "arm" and t.pc & 1:
        return 2
    return 4


def _rewind(t: GuestThread, arg0: int) -> None:
    """Restart the syscall just made: back over the svc, first argument restored."""
    t.set_reg(t.arch.reg_ret, arg0)
    pc = t.pc
    t.set_reg(t.arch.reg_pc, pc - _syscall_insn_size(t))
    t.stop()                    # restart at the written PC (see _run_handler)


def deliver_pending(t: GuestThread, restart: int | None = None) -> None:
    """Deliver every deliverable signal to ``t`` (nested frames, the last on top).
    ``restart``: the first argument of a syscall that returned -ERESTARTSYS."""
    proc = t.process
    while proc.exit is None:
        got = _take(t, ~t.sigmask & ((1 << _NSIG) - 1))
        if got is None:
            break
        signo, info = got
        act = action(proc, signo)
        if _ignored(act, signo):
            continue
        if act.handler == SIG_DFL:
            proc.set_exit(signo=signo)
            return
        if restart is not None:
            if act.flags & SA_RESTART:
                _rewind(t, restart)
            else:
                t.set_reg(t.arch.reg_ret, -errno.EINTR & t.arch.mask)
            restart = None
        _run_handler(t, signo, info, act)
    if restart is not None:
        _rewind(t, restart)
    if t.saved_mask is not None:
        t.sigmask, t.saved_mask = t.saved_mask, None
    with proc.sig_lock:
        _recompute_flag(proc)


def _run_handler(t: GuestThread, signo: int, info: bytes, act: SigAction, *,
                 pc: int | None = None, fault_addr: int = 0) -> None:
    saved = t.saved_mask if t.saved_mask is not None else t.sigmask
    t.saved_mask = None
    setup_rt_frame(t, signo, info, act, saved, pc=pc, fault_addr=fault_addr)
    # inside the syscall hook: stop, the run loop restarts at the handler. unicorn 2.1.4
    # runs on from a PC written in a hook, and with a watchdog emu_stop pending it can
    # stop after the handler's first block with the PC still at the handler's entry:
    # the handler's push then runs twice and its sigreturn reads a frame 8 bytes off
    # (measured on arm: Go's SIGURG preemption, a C handler under a 2 ms itimer)
    t.stop()
    t.sigmask |= act.mask | (0 if act.flags & SA_NODEFER else _bit(signo))
    t.sigmask &= ~_UNBLOCKABLE
    if act.flags & SA_RESETHAND:
        t.process.sigactions.pop(signo, None)


def after_syscall(t: GuestThread, res: int | None, vals: list[int]) -> None:
    """Called by the syscall hook when ``proc.sig_flag`` is set."""
    proc = t.process
    if proc.preempt:
        proc.preempt = False
        with t.blocking():                      # let the waiting threads run
            pass
    restart = vals[1] if res == -ERESTARTSYS else None
    if restart is not None or t.deliverable():
        deliver_pending(t, restart)
    else:
        with proc.sig_lock:
            _recompute_flag(proc)


def _fault_info(t: GuestThread, signo: int, pc: int, intno: int | None) -> tuple[int, bytes, int]:
    """(signal, siginfo, fault address) of a CPU fault."""
    word = t.arch.word_size
    if signo in (signal.SIGILL, signal.SIGTRAP):
        code = ILL_ILLOPC if signo == signal.SIGILL else TRAP_BRKPT
        return signo, pack_siginfo(word, signo, code, addr=pc & ~1), 0
    addr, fsr = _fault_address(t)
    vma = t.mem.find_vma(addr) if addr is not None else None
    if addr is None:
        addr = 0
    if fsr == "align" or (fsr is None and vma is not None and vma.prot & 3 == 3):
        return signal.SIGBUS, pack_siginfo(word, signal.SIGBUS, BUS_ADRALN, addr=addr), addr
    code = SEGV_MAPERR if vma is None else SEGV_ACCERR
    return signal.SIGSEGV, pack_siginfo(word, signal.SIGSEGV, code, addr=addr), addr


def deliver_fault(t: GuestThread, signo: int, pc: int, intno: int | None) -> bool:
    """A CPU fault of ``t``: run the guest's handler (True) or report it fatal (False,
    with ``signo`` possibly refined, e.g. SIGBUS for an alignment fault)."""
    signo, info, addr = _fault_info(t, signo, pc, intno)
    t.fault_signal = signo
    act = action(t.process, signo)
    if act.handler in (SIG_DFL, SIG_IGN) or t.sigmask & _bit(signo):
        return False
    if t.arch.name == "arm" and t.reg(t.arch.reg_flags) & 0x20:
        pc |= 1
    _run_handler(t, signo, info, act, pc=pc, fault_addr=addr)
    return True


# ---- syscalls -------------------------------------------------------------------------
def sigaction_size(t: GuestThread) -> int:
    """The kernel's struct sigaction: handler, flags, restorer (words) and a 64-bit mask."""
    return 3 * t.arch.word_size + 8


@syscall("rt_sigaction")
def sys_rt_sigaction(t: GuestThread, sig: int, act: int, oact: int, setsize: int) -> int:
    if setsize != 8 or not 1 <= sig <= _NSIG:
        return -errno.EINVAL
    size = sigaction_size(t)
    new = t.mem.read(act, size) if act else None
    if new is not None and sig in (9, 19):
        return -errno.EINVAL
    proc = t.process
    if oact:
        t.mem.write(oact, proc.sigactions.get(sig, bytes(size)))
    if new is not None:
        proc.sigactions[sig] = new
        handler = int.from_bytes(new[:t.arch.word_size], "little")
        if handler == SIG_IGN or (handler == SIG_DFL and sig in _IGNORED_BY_DEFAULT):
            with proc.sig_lock:                 # pending ones are discarded
                proc.sig_pending.pop(sig, None)
                for th in list(proc.threads.values()):
                    th.sig_pending.pop(sig, None)
        elif handler != SIG_DFL:
            proc.start_watchdog()
    return 0


@syscall("rt_sigprocmask")
def sys_rt_sigprocmask(t: GuestThread, how: int, nset: int, oset: int, setsize: int) -> int:
    if setsize != 8:
        return -errno.EINVAL
    old = t.sigmask
    if nset:
        (mask,) = struct.unpack("<Q", t.mem.read(nset, 8))
        if how == SIG_BLOCK:
            t.sigmask |= mask
        elif how == SIG_UNBLOCK:
            t.sigmask &= ~mask
        elif how == SIG_SETMASK:
            t.sigmask = mask
        else:
            return -errno.EINVAL
        t.sigmask &= ~_UNBLOCKABLE
        if t.sigmask != old and (t.sig_pending or t.process.sig_pending):
            t.process.sig_flag = True
    if oset:
        t.mem.write(oset, struct.pack("<Q", old))
    return 0


@syscall("rt_sigpending")
def sys_rt_sigpending(t: GuestThread, uset: int, setsize: int) -> int:
    if setsize != 8:
        return -errno.EINVAL
    bits = 0
    with t.process.sig_lock:
        for signo in (*t.sig_pending, *t.process.sig_pending):
            bits |= _bit(signo)
    t.mem.write(uset, struct.pack("<Q", bits & t.sigmask))
    return 0


def _wait(t: GuestThread, done: object, timeout: float | None) -> bool:
    """Wait (execution lock released) until ``done()`` or the timeout (False then)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = t.process
    while not done():                                       # type: ignore[operator]
        if proc.exit is not None:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        ev = threading.Event()
        t.wait_event = ev
        try:
            if done():                                      # type: ignore[operator]
                break
            with t.blocking():
                ev.wait(left)
        finally:
            t.wait_event = None
    return True


@syscall("rt_sigsuspend")
def sys_rt_sigsuspend(t: GuestThread, uset: int, setsize: int) -> int:
    if setsize != 8:
        return -errno.EINVAL
    (mask,) = struct.unpack("<Q", t.mem.read(uset, 8))
    t.saved_mask = t.sigmask
    t.sigmask = mask & ~_UNBLOCKABLE
    _wait(t, t.deliverable, None)
    t.process.sig_flag = True               # deliver, then put the old mask back
    return -errno.EINTR


@syscall("pause", arch="arm")
def sys_pause(t: GuestThread) -> int:
    _wait(t, t.deliverable, None)
    t.process.sig_flag = True
    return -errno.EINTR


def _sigtimedwait(t: GuestThread, uset: int, uinfo: int, uts: int, setsize: int,
                  time64: bool) -> int:
    if setsize != 8:
        return -errno.EINVAL
    (wanted,) = struct.unpack("<Q", t.mem.read(uset, 8))
    wanted &= ~_UNBLOCKABLE
    timeout = None
    if uts:
        st = timespec_struct(t, time64)
        sec, nsec = st.unpack(t.mem.read(uts, st.size))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            return -errno.EINVAL
        timeout = sec + nsec / 1e9
    got: list[tuple[int, bytes]] = []

    def ready() -> bool:
        hit = _take(t, wanted)
        if hit is not None:
            got.append(hit)
            return True
        return t.deliverable()

    _wait(t, ready, timeout)
    with t.process.sig_lock:
        _recompute_flag(t.process)
    if got:
        signo, info = got[0]
        if uinfo:
            t.mem.write(uinfo, info)
        return signo
    if t.deliverable():
        return -errno.EINTR
    return -errno.EAGAIN


@syscall("rt_sigtimedwait")
def sys_rt_sigtimedwait(t: GuestThread, uset: int, uinfo: int, uts: int, size: int) -> int:
    return _sigtimedwait(t, uset, uinfo, uts, size, False)


@syscall("rt_sigtimedwait_time64", arch="arm")
def sys_rt_sigtimedwait64(t: GuestThread, uset: int, uinfo: int, uts: int, size: int) -> int:
    return _sigtimedwait(t, uset, uinfo, uts, size, True)


@syscall("rt_sigreturn")
def sys_rt_sigreturn(t: GuestThread) -> None:
    return _sigreturn(t, restore_rt_frame)


@syscall("sigreturn", arch="arm")
def sys_sigreturn(t: GuestThread) -> None:
    """The non-rt frame of a handler installed without SA_SIGINFO (sigframe.py)."""
    return _sigreturn(t, restore_frame)


def _sigreturn(t: GuestThread, restore: Callable[[GuestThread], int]) -> None:
    try:
        mask = restore(t)
    except (BadFrame, Exception) as e:  # noqa: BLE001 - the kernel's badframe: SIGSEGV
        from ..loop import GuestFault

        raise GuestFault(signal.SIGSEGV, t.reg(t.arch.reg_pc)) from e
    t.sigmask = mask & ~_UNBLOCKABLE
    if t.deliverable():
        t.process.sig_flag = True
    t.stop()                    # restart at the restored PC (see _run_handler)
    return None


@syscall("sigaltstack")
def sys_sigaltstack(t: GuestThread, uss: int, uoss: int) -> int:
    word = t.arch.word_size
    fmt = "<IiI" if word == 4 else "<Qi4xQ"
    size = struct.calcsize(fmt)
    sp = t.reg(t.arch.reg_sp)
    ss_sp, flags, ss_size = t.altstack
    if uoss:
        cur = SS_DISABLE if flags & SS_DISABLE else (SS_ONSTACK if on_altstack(t, sp) else 0)
        t.mem.write(uoss, struct.pack(fmt, ss_sp, cur, ss_size))
    if uss:
        new_sp, new_flags, new_size = struct.unpack(fmt, t.mem.read(uss, size))
        if on_altstack(t, sp):
            return -errno.EPERM
        mode = new_flags & ~(1 << 31)                   # SS_AUTODISARM
        if mode not in (0, SS_DISABLE, SS_ONSTACK):
            return -errno.EINVAL
        if mode == SS_DISABLE:
            t.altstack = (0, SS_DISABLE, 0)
        else:
            if new_size < (2048 if word == 4 else 5120):     # MINSIGSTKSZ
                return -errno.ENOMEM
            t.altstack = (new_sp, 0, new_size)
    return 0


def _send_self(t: GuestThread, sig: int, code: int, target: GuestThread | None,
               value: int = 0, info: bytes | None = None) -> int:
    if sig == 0:
        return 0
    if not 1 <= sig <= _NSIG:
        return -errno.EINVAL
    if info is None:
        info = pack_siginfo(t.arch.word_size, sig, code, pid=t.process.pid,
                            uid=os.getuid(), value=value)
    queue_signal(t.process, sig, info, target)
    return 0


def send_sigpipe(t: GuestThread) -> None:
    """A write to a pipe or socket whose reader is gone (EPIPE): the kernel sends the
    writer SIGPIPE (send_sig: SI_USER from the process itself). pyqemu ignores the
    host's SIGPIPE, so the guest's is made here."""
    _send_self(t, signal.SIGPIPE, SI_USER, t)


@syscall("kill")
def sys_kill(t: GuestThread, pid: int, sig: int) -> int:
    target = s32(pid)
    if target == t.process.pid:
        return _send_self(t, sig, SI_USER, None)
    if not 0 <= sig <= _NSIG:
        return -errno.EINVAL
    os.kill(target, sig)
    return 0


def _thread(t: GuestThread, tid: int) -> GuestThread | None:
    return t.process.threads.get(s32(tid))


@syscall("tkill")
def sys_tkill(t: GuestThread, tid: int, sig: int) -> int:
    target = _thread(t, tid)
    if target is None:
        return -errno.ESRCH
    return _send_self(t, sig, SI_TKILL, target)


@syscall("tgkill")
def sys_tgkill(t: GuestThread, tgid: int, tid: int, sig: int) -> int:
    target = _thread(t, tid)
    if s32(tgid) != t.process.pid or target is None:
        return -errno.ESRCH
    return _send_self(t, sig, SI_TKILL, target)


def _queueinfo(t: GuestThread, target: GuestThread | None, sig: int, uinfo: int) -> int:
    raw = bytearray(t.mem.read(uinfo, 128))
    code = struct.unpack_from("<i", raw, 8)[0]
    if code >= 0 or code == SI_TKILL:
        return -errno.EPERM                       # only negative si_codes from user space
    struct.pack_into("<i", raw, 0, sig)
    return _send_self(t, sig, code, target, info=bytes(raw))


@syscall("rt_sigqueueinfo")
def sys_rt_sigqueueinfo(t: GuestThread, pid: int, sig: int, uinfo: int) -> int:
    if s32(pid) != t.process.pid:
        return -errno.EPERM
    return _queueinfo(t, None, sig, uinfo)


@syscall("rt_tgsigqueueinfo")
def sys_rt_tgsigqueueinfo(t: GuestThread, tgid: int, tid: int, sig: int, uinfo: int) -> int:
    target = _thread(t, tid)
    if s32(tgid) != t.process.pid or target is None:
        return -errno.ESRCH
    return _queueinfo(t, target, sig, uinfo)


# ---- interval timers (the host's: their SIGALRM/SIGVTALRM/SIGPROF come back through
# the watcher with the kernel's si_code) ----------------------------------------------
def _itimerval(t: GuestThread) -> struct.Struct:
    return struct.Struct("<4i" if t.arch.word_size == 4 else "<4q")


@syscall("setitimer")
def sys_setitimer(t: GuestThread, which: int, new: int, old: int) -> int:
    if which > 2:
        return -errno.EINVAL
    st = _itimerval(t)
    prev = signal.getitimer(which)
    if new:
        isec, iusec, vsec, vusec = st.unpack(t.mem.read(new, st.size))
        if not (0 <= iusec < 1_000_000 and 0 <= vusec < 1_000_000) or isec < 0 or vsec < 0:
            return -errno.EINVAL
        prev = signal.setitimer(which, vsec + vusec / 1e6, isec + iusec / 1e6)
    if old:
        _put_itimer(t, old, prev)
    return 0


def _put_itimer(t: GuestThread, addr: int, val: tuple[float, float]) -> None:
    value, interval = val
    usec = [round(x * 1e6) for x in (interval, value)]
    t.mem.write(addr, _itimerval(t).pack(usec[0] // 1_000_000, usec[0] % 1_000_000,
                                         usec[1] // 1_000_000, usec[1] % 1_000_000))


@syscall("getitimer")
def sys_getitimer(t: GuestThread, which: int, cur: int) -> int:
    if which > 2:
        return -errno.EINVAL
    _put_itimer(t, cur, signal.getitimer(which))
    return 0


@syscall("alarm")
def sys_alarm(t: GuestThread, seconds: int) -> int:
    value, _interval = signal.setitimer(signal.ITIMER_REAL, float(seconds))
    return int(value + 0.999999) if value else 0


# ---- fault addresses --------------------------------------------------------------------
# unicorn hands CPU exceptions to the interrupt hook instead of taking them, so DFAR/DFSR
# and FAR_EL1/ESR_EL1 stay empty; the address, status and syndrome only exist in the
# CPU state's `exception` record (syndrome, fsr, vaddress). Its offset inside the saved
# context is found once per architecture by faulting on a known address.
_EXC_OFFSET: dict[str, int] = {}
_PROBE = 0x678


def _context_bytes(uc: object) -> bytes:
    import ctypes

    ctx = uc.context_save()                                 # type: ignore[attr-defined]
    return ctypes.string_at(ctx.context, ctx.size)


def _calibrate(t: GuestThread) -> int:
    """Offset of ``exception.vaddress`` in the context blob (-1: not found)."""
    from ...common.cpu.engine import new_engine
    from ...common.memory import PROT_EXEC, PROT_READ, PROT_WRITE

    mem = t.mem
    arch = t.arch
    page = mem.page_size
    code = mem.mmap(0, page, PROT_READ | PROT_WRITE)
    target = mem.find_free(16 * page) + 8 * page + _PROBE
    uc = new_engine(arch)
    try:
        if arch.name == "arm":
            from unicorn import arm_const as c

            insn, r_base = 0xE5910008, c.UC_ARM_REG_R1        # ldr r0, [r1, #8]
        else:
            from unicorn import arm64_const as c

            insn, r_base = 0xF9400420, c.UC_ARM64_REG_X1      # ldr x0, [x1, #8]
        mem.write(code, struct.pack("<II", insn, insn))
        mem.mprotect(code, page, PROT_READ | PROT_EXEC)
        mem.attach(uc)
        from unicorn import UC_HOOK_INTR

        uc.hook_add(UC_HOOK_INTR, lambda u, _intno, _d: u.emu_stop())
        found = -1
        for probe in (target, target + 0x10):
            # the base register holds probe - 8: only the exception record holds probe
            uc.reg_write(r_base, probe - 8)
            try:
                uc.emu_start(code, 0)
            except Exception:  # noqa: BLE001 - the fault may come back as an error
                pass
            blob = _context_bytes(uc)
            at = blob.find(struct.pack("<Q", probe))
            if at < 0 or found not in (-1, at):
                return -1
            found = at
        return found
    finally:
        mem.detach(uc)
        mem.munmap(code, page)


def _fault_address(t: GuestThread) -> tuple[int | None, str | None]:
    """The faulting data address and whether it was an alignment fault."""
    name = t.arch.name
    off = _EXC_OFFSET.get(name)
    if off is None:
        off = _EXC_OFFSET[name] = _calibrate(t)
    if off < 0:
        return None, None
    blob = _context_bytes(t.uc)
    syndrome, fsr, vaddr = struct.unpack_from("<IIQ", blob, off - 8)
    if name == "arm":
        lpae = fsr & 0x200
        align = (fsr & 0x3F) == 0x21 if lpae else (fsr & 0x40F) == 1
    else:
        align = (syndrome & 0x3F) == 0x21
    return vaddr & t.arch.mask, "align" if align else "fault"
