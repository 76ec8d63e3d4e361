"""Signal syscalls, phase 1: dispositions and masks are recorded, not yet delivered.

Until guest handlers are delivered (phase 2), the asynchronous signals whose default
action ends the process follow the guest's SIG_DFL / SIG_IGN choice on the host itself:
a guest killed by SIGINT or SIGPIPE then dies of it as the real program would, and
one that ignores SIGPIPE gets EPIPE.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
from typing import TYPE_CHECKING

from . import syscall
from .structs import s32

if TYPE_CHECKING:
    from ..process import GuestThread

SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
_NSIG = 64
_UNBLOCKABLE = (1 << (9 - 1)) | (1 << (19 - 1))     # SIGKILL, SIGSTOP
#: host signals whose disposition mirrors the guest's SIG_DFL/SIG_IGN (same numbers on
#: arm, arm64 and x86)
MIRRORED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGALRM,
            signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def reset_host_signals() -> None:
    """Start as a fresh process does: every mirrored signal at SIG_DFL (Python
    catches SIGINT and ignores SIGPIPE)."""
    for sig in MIRRORED:
        signal.signal(sig, signal.SIG_DFL)


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
    if oact:
        t.mem.write(oact, t.process.sigactions.get(sig, bytes(size)))
    if new is not None:
        t.process.sigactions[sig] = new
        if sig in MIRRORED:
            handler = int.from_bytes(new[:t.arch.word_size], "little")
            if handler in (0, 1):                      # SIG_DFL, SIG_IGN
                signal.signal(sig, signal.SIG_IGN if handler else signal.SIG_DFL)
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
    if oset:
        t.mem.write(oset, struct.pack("<Q", old))
    return 0


# default actions (signal(7)); everything else terminates (with a core for _CORE)
_IGNORED_BY_DEFAULT = {signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGCONT}
_STOPPING = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def _signal_self(t: GuestThread, sig: int) -> int:
    """A signal sent to this very process: phase 1 applies SIG_DFL and SIG_IGN itself
    (handlers are phase 2: the signal is dropped)."""
    if sig == 0:
        return 0
    if not 1 <= sig <= _NSIG:
        return -errno.EINVAL
    raw = t.process.sigactions.get(sig)
    handler = int.from_bytes(raw[:t.arch.word_size], "little") if raw else 0
    if handler == 1 or (handler == 0 and (sig in _IGNORED_BY_DEFAULT or sig in _STOPPING)):
        return 0
    if handler == 0 and (sig in (9, 19) or not t.sigmask >> (sig - 1) & 1):
        from ..loop import GuestFault

        t.stop_reason = GuestFault(sig, t.reg(t.arch.reg_pc))
        t.stop()
    return 0


@syscall("kill")
def sys_kill(t: GuestThread, pid: int, sig: int) -> int:
    target = s32(pid)
    if target == t.process.pid:
        return _signal_self(t, sig)
    os.kill(target, sig)
    return 0


@syscall("tkill")
def sys_tkill(t: GuestThread, tid: int, sig: int) -> int:
    if s32(tid) in t.process.threads:
        return _signal_self(t, sig)
    return -errno.ESRCH


@syscall("tgkill")
def sys_tgkill(t: GuestThread, tgid: int, tid: int, sig: int) -> int:
    if s32(tgid) == t.process.pid and s32(tid) in t.process.threads:
        return _signal_self(t, sig)
    return -errno.ESRCH
