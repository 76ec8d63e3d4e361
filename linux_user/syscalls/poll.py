"""I/O multiplexing and event fds: poll, ppoll, select, pselect6, epoll, eventfd,
signalfd, timerfd.

Guest fds are host fds, so each call runs the host's own syscall on translated
arguments; only the layouts differ:

- ``struct pollfd`` (8 bytes) and the ``POLL*`` bits are the same on arm, arm64 and x86.
- ``fd_set`` is a bit array of unsigned longs: little-endian, so bit ``n`` is byte
  ``n // 8`` whatever the word size; the guest's ``ceil(nfds / bits-per-word)`` words are
  copied into a host buffer padded to 64-bit words.
- ``struct epoll_event`` (include/uapi/linux/eventpoll.h) is ``{u32 events; u64 data}``,
  packed (12 bytes) only on x86-64 (``EPOLL_PACKED``); on arm EABI and arm64 the u64 is
  8-aligned: 16 bytes with 4 bytes of padding after ``events``.
- ``struct signalfd_siginfo`` (128 bytes of fixed-size fields) and the eventfd/timerfd
  counters (u64) read the same everywhere: those fds need no read translation.
- ``struct itimerspec``: two guest timespecs (word-sized, or 64-bit for ``*_time64``).
- The ``*_CLOEXEC`` / ``*_NONBLOCK`` flags of these calls are ``O_CLOEXEC`` /
  ``O_NONBLOCK``, equal on arm, arm64 and x86.

Waits that can block run under ``t.blocking()`` so other guest threads keep running;
the remaining time is written back as Linux does (ppoll, select, pselect6). A sigmask
argument replaces the thread's guest mask for the duration of the wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl as _fcntl
import os
import select
import struct
import time
from typing import TYPE_CHECKING

from . import syscall
from .files import FD_READ_HOOKS
from .structs import HOST_MACHINE, s32, timespec_struct

if TYPE_CHECKING:
    from ..process import GuestProcess, GuestThread

_libc = ctypes.CDLL(None, use_errno=True)
_HOST = HOST_MACHINE
# host syscall numbers (x86-64 / arm64 hosts)
_NR = {
    "x86_64": {"pselect6": 270, "ppoll": 271, "epoll_pwait": 281, "signalfd4": 289,
               "timerfd_create": 283, "timerfd_settime": 286, "timerfd_gettime": 287,
               "epoll_ctl": 233, "epoll_create1": 291, "eventfd2": 290},
    "aarch64": {"pselect6": 72, "ppoll": 73, "epoll_pwait": 22, "signalfd4": 74,
                "timerfd_create": 85, "timerfd_settime": 86, "timerfd_gettime": 87,
                "epoll_ctl": 21, "epoll_create1": 20, "eventfd2": 19},
}.get(_HOST) or {}
_syscall = _libc.syscall
_epoll_wait_c = _libc.epoll_wait
_syscall.restype = ctypes.c_long
_L = ctypes.c_long
_NS = 1_000_000_000

# guest struct epoll_event (arm EABI and arm64: 16 bytes) and the host's
EPOLL_EVENT_GUEST = struct.Struct("<I4xQ")
EPOLL_EVENT_HOST = struct.Struct("<IQ" if _HOST in ("x86_64", "i686") else "<I4xQ")
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
_EPOLL_MAX_BATCH = 1024              # events fetched per wait (the rest stay ready)
_TS64 = struct.Struct("<qq")        # host struct timespec (x86-64 / arm64 hosts)
_ITIMERSPEC_HOST = struct.Struct("<qqqq")
SIGNALFD_SIGINFO_SIZE = 128


def _host(nr: int, *args: object) -> int:
    """A raw host syscall; returns the result or ``-errno``."""
    ret = _syscall(_L(nr), *args)
    if ret < 0:
        return -ctypes.get_errno()
    return ret


def _check(ret: int) -> int:
    """A ctypes libc result: -1 becomes ``-errno``."""
    return -ctypes.get_errno() if ret < 0 else ret


class _GuestMask:
    """Replace the thread's guest signal mask while waiting (ppoll/pselect6/epoll_pwait).

    Set ``result`` before leaving: when the wait was interrupted (-EINTR) the temporary
    mask stays for the signal's delivery and the thread's own comes back after the
    handler (``saved_mask``, as sigsuspend does)."""

    def __init__(self, t: GuestThread, addr: int, size: int) -> None:
        self.t = t
        self.mask: int | None = None
        self.result = 0
        if addr:
            if size != 8:
                raise OSError(errno.EINVAL, "sigsetsize")
            self.mask = int.from_bytes(t.mem.read(addr, 8), "little")

    def __enter__(self) -> _GuestMask:
        if self.mask is not None:
            self.saved = self.t.sigmask
            self.t.sigmask = self.mask & ~((1 << 8) | (1 << 18))     # SIGKILL, SIGSTOP
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mask is None:
            return
        if self.result == -errno.EINTR and hasattr(self.t, "saved_mask"):
            self.t.saved_mask = self.saved
        else:
            self.t.sigmask = self.saved


def _read_timeout(t: GuestThread, addr: int, time64: bool,
                  timeval: bool = False) -> bytes | None:
    """The guest timespec (or timeval) at ``addr`` as a host timespec; None if NULL."""
    if not addr:
        return None
    st = timespec_struct(t, time64)
    sec, frac = st.unpack(t.mem.read(addr, st.size))
    if timeval:
        if frac < 0 or frac >= 1_000_000 or sec < 0:
            raise OSError(errno.EINVAL, "timeval")
        frac *= 1000
    elif frac < 0 or frac >= _NS or sec < 0:
        raise OSError(errno.EINVAL, "timespec")
    return _TS64.pack(sec, frac)


def _write_timeout(t: GuestThread, addr: int, host_ts: ctypes.Array, time64: bool,
                   timeval: bool = False) -> None:
    sec, nsec = _TS64.unpack(host_ts.raw)
    st = timespec_struct(t, time64)
    t.mem.write(addr, st.pack(sec, nsec // 1000 if timeval else nsec))


def _may_block(ts: bytes | None) -> bool:
    return ts is None or ts != bytes(16)


# ---- interruptible host waits ------------------------------------------------------------
# A guest signal is queued by pyqemu, not by the host kernel, so it cannot interrupt a
# host syscall by itself. Every wait that may block for long therefore also polls a
# per-thread eventfd, which signalfd_notify() (called by the signal family whenever it
# queues a signal) writes when the signal can be delivered to a waiting thread.
ERESTARTSYS = 512              # the signal family restarts (SA_RESTART) or says EINTR
_WAKE: dict[int, int] = {}                     # tid -> its wake eventfd
_WAITING: dict[int, GuestThread] = {}          # tid -> thread in an interruptible wait
_POLLIN = 1


def _wake_fd(t: GuestThread) -> int:
    fd = _WAKE.get(t.tid)
    if fd is None:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        _WAKE[t.tid] = fd
    return fd


def _deliverable(t: GuestThread) -> bool:
    check = getattr(t, "deliverable", None)
    return bool(check and check())


def host_wait(t: GuestThread, pollfds: bytes, nfds: int,
              ts: bytes | None) -> tuple[int, bytes, bytes | None]:
    """Host ppoll over ``nfds`` raw pollfds, ended early by a deliverable guest signal.

    Returns (result, pollfds with revents, host timespec left): result -EINTR when a
    signal came first (the revents are then those seen at that moment)."""
    wfd = _wake_fd(t)
    buf = ctypes.create_string_buffer(pollfds + struct.pack("<ihh", wfd, _POLLIN, 0),
                                      len(pollfds) + 8)
    tsbuf = ctypes.create_string_buffer(ts, 16) if ts is not None else None
    while True:
        _WAITING[t.tid] = t
        try:
            if _deliverable(t):
                return -errno.EINTR, pollfds, ts
            with t.blocking():
                ret = _host(_NR["ppoll"], buf, _L(nfds + 1), tsbuf, None, _L(8))
        finally:
            _WAITING.pop(t.tid, None)
        raw = buf.raw
        if ret <= 0 or not struct.unpack_from("<h", raw, 8 * nfds + 6)[0]:
            break
        try:
            os.read(wfd, 8)
        except BlockingIOError:
            pass
        ret -= 1
        if ret:
            break
        if _deliverable(t):
            ret = -errno.EINTR
            break
        # a stale wake-up (the signal went to another thread meanwhile): wait again
        buf = ctypes.create_string_buffer(pollfds + struct.pack("<ihh", wfd, _POLLIN, 0),
                                          len(pollfds) + 8)
    return ret, raw[:8 * nfds], tsbuf.raw if tsbuf is not None else None


def _forget_waits() -> None:
    """In a fork()ed child: the parent's threads and wake fds are not ours."""
    _WAITING.clear()
    for fd in _WAKE.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _WAKE.clear()


os.register_at_fork(after_in_child=_forget_waits)


def wait_fd(t: GuestThread, fd: int, events: int, timeout_ns: int | None = None) -> int:
    """Wait until ``fd`` has ``events`` (1), the timeout passed (0) or a guest signal
    can be delivered (-EINTR)."""
    ts = None if timeout_ns is None else _TS64.pack(timeout_ns // _NS, timeout_ns % _NS)
    return host_wait(t, struct.pack("<ihh", fd, events, 0), 1, ts)[0]


# ---- poll ----------------------------------------------------------------------------------
def _ppoll(t: GuestThread, fds: int, nfds: int, ts: bytes | None) -> tuple[int, object]:
    if nfds > 1 << 20:
        return -errno.EINVAL, None
    if FD_READ_HOOKS:
        _refresh_signalfds(t)
    size = 8 * nfds
    raw = t.mem.read(fds, size) if size else b""
    tsbuf = ctypes.create_string_buffer(ts, 16) if ts is not None else None
    if _may_block(ts):
        ret, raw, left = host_wait(t, raw, nfds, ts)
        if tsbuf is not None and left is not None:
            tsbuf.raw = left
    else:
        buf = ctypes.create_string_buffer(raw, size) if size else None
        ret = _host(_NR["ppoll"], buf, _L(nfds), tsbuf, None, _L(8))
        raw = buf.raw if buf is not None else b""
    if ret >= 0 and size:
        t.mem.write(fds, raw)
    return ret, tsbuf


@syscall("poll")
def sys_poll(t: GuestThread, fds: int, nfds: int, timeout: int) -> int:
    ms = s32(timeout)
    ts = None if ms < 0 else _TS64.pack(ms // 1000, ms % 1000 * 1_000_000)
    return _ppoll(t, fds, nfds, ts)[0]


def _ppoll_guest(t: GuestThread, fds: int, nfds: int, tsp: int, sigmask: int, size: int,
                 time64: bool) -> int:
    ts = _read_timeout(t, tsp, time64)
    with _GuestMask(t, sigmask, size) as gm:
        ret, tsbuf = _ppoll(t, fds, nfds, ts)
        gm.result = ret
    if tsp and ret != -errno.EFAULT:
        _write_timeout(t, tsp, tsbuf, time64)        # type: ignore[arg-type]
    return ret


@syscall("ppoll")
def sys_ppoll(t: GuestThread, fds: int, nfds: int, tsp: int, sigmask: int, size: int) -> int:
    return _ppoll_guest(t, fds, nfds, tsp, sigmask, size, False)


@syscall("ppoll_time64")
def sys_ppoll64(t: GuestThread, fds: int, nfds: int, tsp: int, sigmask: int,
                size: int) -> int:
    return _ppoll_guest(t, fds, nfds, tsp, sigmask, size, True)


# ---- select --------------------------------------------------------------------------------
def _select(t: GuestThread, nfds: int, sets: tuple[int, int, int], tsp: int, time64: bool,
            timeval: bool) -> int:
    n = s32(nfds)
    if n < 0:
        return -errno.EINVAL
    n = min(n, 1 << 20)
    bits = 8 * t.arch.word_size
    gsize = (n + bits - 1) // bits * t.arch.word_size
    ts = _read_timeout(t, tsp, time64, timeval)
    blocking = _may_block(ts)
    # a blocking select also watches the thread's wake eventfd (in the read set)
    wfd = _wake_fd(t) if blocking else -1
    hn = max(n, wfd + 1)
    hsize = (hn + 63) // 64 * 8
    bufs = []
    for i, addr in enumerate(sets):
        if addr and gsize:
            raw = t.mem.read(addr, gsize)
            bufs.append(ctypes.create_string_buffer(raw + bytes(hsize - gsize), hsize))
        elif i == 0 and blocking:
            bufs.append(ctypes.create_string_buffer(hsize))
        else:
            bufs.append(None)
    tsbuf = ctypes.create_string_buffer(ts, 16) if ts is not None else None
    if FD_READ_HOOKS:
        _refresh_signalfds(t)
    if blocking:
        rbuf = bufs[0]
        rbuf[wfd // 8] = rbuf.raw[wfd // 8] | 1 << (wfd % 8)       # type: ignore[index]
        _WAITING[t.tid] = t
        try:
            if _deliverable(t):
                ret = -errno.EINTR
            else:
                with t.blocking():
                    ret = _host(_NR["pselect6"], _L(hn), *bufs, tsbuf, None)
        finally:
            _WAITING.pop(t.tid, None)
        if ret > 0 and rbuf.raw[wfd // 8] >> (wfd % 8) & 1:       # type: ignore[union-attr]
            rbuf[wfd // 8] = rbuf.raw[wfd // 8] & ~(1 << (wfd % 8))  # type: ignore[index]
            try:
                os.read(wfd, 8)
            except BlockingIOError:
                pass
            ret = ret - 1 or -errno.EINTR
    else:
        ret = _host(_NR["pselect6"], _L(n), *bufs, tsbuf, None)
    if ret >= 0:
        for addr, buf in zip(sets, bufs, strict=True):
            if addr and buf is not None:
                t.mem.write(addr, buf.raw[:gsize])
    if tsp and ret != -errno.EFAULT:
        _write_timeout(t, tsp, tsbuf, time64, timeval)   # type: ignore[arg-type]
    return ret


@syscall("_newselect", "select")
def sys_select(t: GuestThread, nfds: int, rfds: int, wfds: int, efds: int, tvp: int) -> int:
    return _select(t, nfds, (rfds, wfds, efds), tvp, False, True)


def _pselect6(t: GuestThread, nfds: int, sets: tuple[int, int, int], tsp: int, sig: int,
              time64: bool) -> int:
    sigmask, size = 0, 0
    if sig:
        fmt = "<II" if t.arch.word_size == 4 else "<QQ"
        sigmask, size = struct.unpack(fmt, t.mem.read(sig, struct.calcsize(fmt)))
    with _GuestMask(t, sigmask, size) as gm:
        gm.result = _select(t, nfds, sets, tsp, time64, False)
        return gm.result


@syscall("pselect6")
def sys_pselect6(t: GuestThread, nfds: int, rfds: int, wfds: int, efds: int, tsp: int,
                 sig: int) -> int:
    return _pselect6(t, nfds, (rfds, wfds, efds), tsp, sig, False)


@syscall("pselect6_time64")
def sys_pselect6_64(t: GuestThread, nfds: int, rfds: int, wfds: int, efds: int, tsp: int,
                    sig: int) -> int:
    return _pselect6(t, nfds, (rfds, wfds, efds), tsp, sig, True)


# ---- epoll ---------------------------------------------------------------------------------
@syscall("epoll_create1")
def sys_epoll_create1(t: GuestThread, flags: int) -> int:
    return _host(_NR["epoll_create1"], _L(s32(flags)))


@syscall("epoll_create")
def sys_epoll_create(t: GuestThread, size: int) -> int:
    if s32(size) <= 0:
        return -errno.EINVAL
    return _host(_NR["epoll_create1"], _L(0))


@syscall("epoll_ctl")
def sys_epoll_ctl(t: GuestThread, epfd: int, op: int, fd: int, event: int) -> int:
    ev = None
    if op != EPOLL_CTL_DEL:
        events, data = EPOLL_EVENT_GUEST.unpack(t.mem.read(event, EPOLL_EVENT_GUEST.size))
        ev = ctypes.create_string_buffer(EPOLL_EVENT_HOST.pack(events, data),
                                         EPOLL_EVENT_HOST.size)
    return _host(_NR["epoll_ctl"], _L(s32(epfd)), _L(s32(op)), _L(s32(fd)), ev)


def _epoll_wait(t: GuestThread, epfd: int, events: int, maxevents: int,
                ts: bytes | None, sigmask: int, size: int) -> int:
    n = s32(maxevents)
    if n <= 0 or n > 0x7FFFFFFF // EPOLL_EVENT_GUEST.size:
        return -errno.EINVAL
    n = min(n, _EPOLL_MAX_BATCH)
    t.mem.views(events, n * EPOLL_EVENT_GUEST.size)        # EFAULT before waiting
    hsz = EPOLL_EVENT_HOST.size
    buf = ctypes.create_string_buffer(n * hsz)
    if FD_READ_HOOKS:
        _refresh_signalfds(t)
    deadline = None
    if ts is not None:
        sec, nsec = _TS64.unpack(ts)
        deadline = time.monotonic_ns() + sec * _NS + nsec
    # poll the epoll fd itself (readable while events are ready) together with the
    # thread's wake eventfd, then take the events without waiting
    with _GuestMask(t, sigmask, size) as gm:
        while True:
            ret = _check(_epoll_wait_c(s32(epfd), buf, n, 0))
            if ret != 0:
                break
            left = None if deadline is None else deadline - time.monotonic_ns()
            if left is not None and left <= 0:
                break
            woke = wait_fd(t, s32(epfd), _POLLIN, left)
            if woke < 0:
                ret = woke
                break
        gm.result = ret
    if ret > 0:
        raw = buf.raw
        t.mem.write(events, b"".join(
            EPOLL_EVENT_GUEST.pack(*EPOLL_EVENT_HOST.unpack_from(raw, i * hsz))
            for i in range(ret)))
    return ret


def _ms_timeout(timeout: int) -> bytes | None:
    ms = s32(timeout)
    return None if ms < 0 else _TS64.pack(ms // 1000, ms % 1000 * 1_000_000)


@syscall("epoll_wait")
def sys_epoll_wait(t: GuestThread, epfd: int, events: int, maxevents: int,
                   timeout: int) -> int:
    return _epoll_wait(t, epfd, events, maxevents, _ms_timeout(timeout), 0, 0)


@syscall("epoll_pwait")
def sys_epoll_pwait(t: GuestThread, epfd: int, events: int, maxevents: int, timeout: int,
                    sigmask: int, size: int) -> int:
    return _epoll_wait(t, epfd, events, maxevents, _ms_timeout(timeout), sigmask, size)


@syscall("epoll_pwait2")
def sys_epoll_pwait2(t: GuestThread, epfd: int, events: int, maxevents: int, tsp: int,
                     sigmask: int, size: int) -> int:
    # the timeout is a struct __kernel_timespec (64-bit) on every arch
    return _epoll_wait(t, epfd, events, maxevents, _read_timeout(t, tsp, True), sigmask,
                       size)


# ---- eventfd --------------------------------------------------------------------------------
@syscall("eventfd2")
def sys_eventfd2(t: GuestThread, initval: int, flags: int) -> int:
    return _host(_NR["eventfd2"], _L(initval & 0xFFFFFFFF), _L(s32(flags)))


@syscall("eventfd")
def sys_eventfd(t: GuestThread, initval: int) -> int:
    return _host(_NR["eventfd2"], _L(initval & 0xFFFFFFFF), _L(0))


# ---- signalfd -------------------------------------------------------------------------------
# Guest signals are queued by pyqemu itself (GuestThread.sig_pending and
# GuestProcess.sig_pending: signo -> guest siginfo_t records), never by the host kernel,
# so a signalfd is emulated: the guest gets a host eventfd, readable exactly while a
# signal of the fd's mask is pending (refreshed before every poll/select/epoll wait and
# by signalfd_notify()), and its reads dequeue pending signals as signalfd_siginfo.
SIGNALFD_SIGINFO = struct.Struct("<IiiIIiIIIIiiQQQQHHiQI28x")
_SFD_NONBLOCK = 0o4000
_SI_TIMER, _SI_SIGIO, _SI_KERNEL = -2, -5, 0x80
_FAULT_SIGNALS = {4, 5, 7, 8, 11}          # SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV
_SIGCHLD, _SIGPOLL = 17, 29


class _SignalFd:
    """The read hook of one signalfd (shared by its duplicates, as the open file is)."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __call__(self, t: GuestThread, fd: int, buf: int, count: int) -> int:
        return _signalfd_read(t, self, fd, buf, count)


def _signalfds() -> list[tuple[int, _SignalFd]]:
    return [(fd, h) for fd, h in FD_READ_HOOKS.items() if isinstance(h, _SignalFd)]


def _pending_sets(t: GuestThread) -> list[dict[int, list[bytes]]]:
    sets = [getattr(t, "sig_pending", None), getattr(t.process, "sig_pending", None)]
    return [s for s in sets if s is not None]


def _pending_mask(t: GuestThread) -> int:
    mask = 0
    for pend in _pending_sets(t):
        for signo, queue in pend.items():
            if queue:
                mask |= 1 << (signo - 1)
    return mask


def _set_ready(fd: int, ready: bool) -> None:
    if select.select([fd], [], [], 0)[0]:
        os.read(fd, 8)                               # drain (readable: does not block)
    if ready:
        os.write(fd, (1).to_bytes(8, "little"))


def _refresh_signalfds(t: GuestThread) -> None:
    pending = _pending_mask(t)
    for fd, sfd in _signalfds():
        _set_ready(fd, bool(pending & sfd.mask))


def signalfd_notify(proc: GuestProcess) -> None:
    """The signal family calls this after queueing a signal in ``proc``: it wakes the
    threads waiting in an interruptible host wait that can now take a signal, and marks
    readable the signalfds whose signals are pending (any thread's or the process's)."""
    for tid, th in list(_WAITING.items()):
        if th.process is proc and _deliverable(th):
            os.eventfd_write(_WAKE[tid], 1)
    if not FD_READ_HOOKS:
        return
    pending = 0
    for th in list(proc.threads.values()):
        pending |= _pending_mask(th)
    for fd, sfd in _signalfds():
        if pending & sfd.mask:
            _set_ready(fd, True)


def _siginfo_to_signalfd(t: GuestThread, signo: int, info: bytes) -> bytes:
    """A guest siginfo_t record as the kernel's signalfd_copyinfo() reports it."""
    word = t.arch.word_size
    union = 12 if word == 4 else 16
    info = info.ljust(128, b"\0")
    _, err, code = struct.unpack_from("<iii", info)
    u32 = [struct.unpack_from("<I", info, union + 4 * i)[0] for i in range(4)]
    ptr = struct.unpack_from("<I" if word == 4 else "<Q", info, union + 8)[0]
    f = dict(pid=0, uid=0, fd=0, tid=0, band=0, overrun=0, status=0, int_=0, ptr=0,
             utime=0, stime=0, addr=0)
    if 0 < code < _SI_KERNEL and signo in _FAULT_SIGNALS:
        f["addr"] = struct.unpack_from("<I" if word == 4 else "<Q", info, union)[0]
    elif 0 < code < _SI_KERNEL and signo == _SIGCHLD:
        f.update(pid=u32[0], uid=u32[1], status=s32(u32[2]))
        fmt = "<ii" if word == 4 else "<qq"
        f["utime"], f["stime"] = (v & 0xFFFFFFFFFFFFFFFF for v in
                                  struct.unpack_from(fmt, info, union + (12 if word == 4
                                                                         else 16)))
    elif (0 < code < _SI_KERNEL and signo == _SIGPOLL) or code == _SI_SIGIO:
        f["band"] = u32[0]
        f["fd"] = s32(struct.unpack_from("<I", info, union + word)[0])
    elif code == _SI_TIMER:
        f.update(tid=u32[0], overrun=u32[1], ptr=ptr, int_=s32(ptr))
    elif code < 0:
        f.update(pid=u32[0], uid=u32[1], ptr=ptr, int_=s32(ptr))
    else:
        f.update(pid=u32[0], uid=u32[1])
    return SIGNALFD_SIGINFO.pack(
        signo, err, code, f["pid"], f["uid"], f["fd"], f["tid"], f["band"], f["overrun"],
        0, f["status"], f["int_"], f["ptr"], f["utime"], f["stime"], f["addr"], 0, 0, 0, 0,
        0)


def _dequeue(t: GuestThread, mask: int) -> tuple[int, bytes] | None:
    """Take the lowest pending signal of ``mask``: the thread's own first, then the
    process's (as dequeue_signal), under the signal family's lock when it has one."""
    lock = getattr(t.process, "sig_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        for pend in _pending_sets(t):
            for signo in sorted(pend):
                if mask >> (signo - 1) & 1 and pend[signo]:
                    info = pend[signo].pop(0)
                    if not pend[signo]:
                        del pend[signo]
                    return signo, info
    return None


def _signalfd_read(t: GuestThread, sfd: _SignalFd, fd: int, buf: int, count: int) -> int:
    n = count // SIGNALFD_SIGINFO.size
    if n == 0:
        return -errno.EINVAL
    nonblock = _fcntl.fcntl(fd, _fcntl.F_GETFL) & os.O_NONBLOCK
    out = []
    while True:
        while len(out) < n:
            got = _dequeue(t, sfd.mask)
            if got is None:
                break
            out.append(_siginfo_to_signalfd(t, *got))
        if out or nonblock:
            break
        # the eventfd turns readable when a signal of the mask is queued
        if wait_fd(t, fd, _POLLIN) < 0:
            return -ERESTARTSYS
    _refresh_signalfds(t)
    if not out:
        return -errno.EAGAIN
    t.mem.write(buf, b"".join(out))
    return len(out) * SIGNALFD_SIGINFO.size


@syscall("signalfd4")
def sys_signalfd4(t: GuestThread, fd: int, mask: int, size: int, flags: int) -> int:
    if size != 8 or flags & ~(os.O_CLOEXEC | _SFD_NONBLOCK):
        return -errno.EINVAL
    # signal numbers are equal on arm, arm64 and x86; SIGKILL and SIGSTOP never read
    sigs = int.from_bytes(t.mem.read(mask, 8), "little") & ~((1 << 8) | (1 << 18))
    fd = s32(fd)
    if fd != -1:
        hook = FD_READ_HOOKS.get(fd)
        if not isinstance(hook, _SignalFd):
            os.fstat(fd)                              # EBADF first, as Linux
            return -errno.EINVAL
        hook.mask = sigs
    else:
        # the eventfd's own O_NONBLOCK is the guest's (F_GETFL/F_SETFL see it)
        fd = os.eventfd(0, flags & (os.O_CLOEXEC | _SFD_NONBLOCK))
        FD_READ_HOOKS[fd] = _SignalFd(sigs)
    _refresh_signalfds(t)
    return fd


@syscall("signalfd")
def sys_signalfd(t: GuestThread, fd: int, mask: int, size: int) -> int:
    return sys_signalfd4(t, fd, mask, size, 0)


# ---- timerfd --------------------------------------------------------------------------------
@syscall("timerfd_create")
def sys_timerfd_create(t: GuestThread, clock: int, flags: int) -> int:
    return _host(_NR["timerfd_create"], _L(s32(clock)), _L(s32(flags)))


def _itimerspec_in(t: GuestThread, addr: int, time64: bool) -> ctypes.Array:
    st = timespec_struct(t, time64)
    raw = t.mem.read(addr, 2 * st.size)
    vals = st.unpack_from(raw, 0) + st.unpack_from(raw, st.size)
    return ctypes.create_string_buffer(_ITIMERSPEC_HOST.pack(*vals), 32)


def _itimerspec_out(t: GuestThread, addr: int, buf: ctypes.Array, time64: bool) -> None:
    st = timespec_struct(t, time64)
    vals = _ITIMERSPEC_HOST.unpack(buf.raw)
    t.mem.write(addr, st.pack(*vals[:2]) + st.pack(*vals[2:]))


def _timerfd_settime(t: GuestThread, fd: int, flags: int, new: int, old: int,
                     time64: bool) -> int:
    nbuf = _itimerspec_in(t, new, time64)
    obuf = ctypes.create_string_buffer(32) if old else None
    ret = _host(_NR["timerfd_settime"], _L(s32(fd)), _L(s32(flags)), nbuf, obuf)
    if ret == 0 and old:
        _itimerspec_out(t, old, obuf, time64)        # type: ignore[arg-type]
    return ret


def _timerfd_gettime(t: GuestThread, fd: int, cur: int, time64: bool) -> int:
    buf = ctypes.create_string_buffer(32)
    ret = _host(_NR["timerfd_gettime"], _L(s32(fd)), buf)
    if ret == 0:
        _itimerspec_out(t, cur, buf, time64)
    return ret


@syscall("timerfd_settime")
def sys_timerfd_settime(t: GuestThread, fd: int, flags: int, new: int, old: int) -> int:
    return _timerfd_settime(t, fd, flags, new, old, False)


@syscall("timerfd_settime64")
def sys_timerfd_settime64(t: GuestThread, fd: int, flags: int, new: int, old: int) -> int:
    return _timerfd_settime(t, fd, flags, new, old, True)


@syscall("timerfd_gettime")
def sys_timerfd_gettime(t: GuestThread, fd: int, cur: int) -> int:
    return _timerfd_gettime(t, fd, cur, False)


@syscall("timerfd_gettime64")
def sys_timerfd_gettime64(t: GuestThread, fd: int, cur: int) -> int:
    return _timerfd_gettime(t, fd, cur, True)

