"""Socket syscalls: the host's own sockets, with guest layouts translated.

arm EABI and arm64 have direct socket syscalls (no ``socketcall``). What is equal on
arm, arm64 and x86 and so passed as is: ``AF_*``, ``SOCK_*`` (``SOCK_NONBLOCK`` and
``SOCK_CLOEXEC`` are ``O_NONBLOCK`` / ``O_CLOEXEC``), ``MSG_*``, ``SOL_SOCKET`` and
the ``SO_*`` numbers (all three use include/uapi/asm-generic/socket.h), the sockaddr
layouts of AF_UNIX, AF_INET, AF_INET6 (``sa_family`` is a little-endian u16, no
word-sized fields), ``struct ucred`` and ``struct linger``.

What is translated:

- ``struct msghdr`` and ``struct iovec`` (word-sized pointers and lengths; arm 28 bytes,
  arm64 56) and ``struct cmsghdr`` (``size_t cmsg_len`` then two ints: 12 bytes aligned to
  4 on arm, 16 aligned to 8 on arm64 and the x86-64 host); control messages are re-packed
  one by one: SCM_RIGHTS (fds are host fds), SCM_CREDENTIALS and the rest as they are,
  SO_TIMESTAMP/SO_TIMESTAMPNS (old, long-sized) shrunk to the arm guest's 32-bit longs.
- ``SO_RCVTIMEO_OLD`` / ``SO_SNDTIMEO_OLD`` (20/21): a ``struct timeval`` of longs.

Data buffers are never copied: the host iovecs point into guest memory. Calls that can
block (accept, connect, send*, recv*) run under ``t.blocking()``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl as _fcntl
import os
import struct
from typing import TYPE_CHECKING

from ...common.memory import PROT_READ, PROT_WRITE
from . import syscall
from .structs import s32

if TYPE_CHECKING:
    from ..process import GuestThread

_libc = ctypes.CDLL(None, use_errno=True)
_int, _vp, _sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
_ssize = ctypes.c_ssize_t


def _fn(name: str, restype: type, *argtypes: type) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = argtypes
    return f


_socket = _fn("socket", _int, _int, _int, _int)
_socketpair = _fn("socketpair", _int, _int, _int, _int, ctypes.POINTER(_int))
_bind = _fn("bind", _int, _int, ctypes.c_char_p, _int)
_connect = _fn("connect", _int, _int, ctypes.c_char_p, _int)
_listen = _fn("listen", _int, _int, _int)
_accept4 = _fn("accept4", _int, _int, _vp, _vp, _int)
_getsockname = _fn("getsockname", _int, _int, _vp, _vp)
_getpeername = _fn("getpeername", _int, _int, _vp, _vp)
_setsockopt = _fn("setsockopt", _int, _int, _int, _int, _vp, _int)
_getsockopt = _fn("getsockopt", _int, _int, _int, _int, _vp, _vp)
_shutdown = _fn("shutdown", _int, _int, _int)
_c_sendmsg = _fn("sendmsg", _ssize, _int, _vp, _int)
_c_recvmsg = _fn("recvmsg", _ssize, _int, _vp, _int)

SOCKADDR_MAX = 128                   # sizeof(struct sockaddr_storage)
SOL_SOCKET = 1
SCM_RIGHTS, SCM_CREDENTIALS = 1, 2
SO_RCVTIMEO_OLD, SO_SNDTIMEO_OLD = 20, 21
SO_TIMESTAMP_OLD, SO_TIMESTAMPNS_OLD = 29, 35
MSG_CTRUNC, MSG_DONTWAIT, MSG_WAITALL = 8, 0x40, 0x100
_POLLIN = 1
UIO_MAXIOV = 1024


class _IoVec(ctypes.Structure):
    _fields_ = [("base", _vp), ("len", _sz)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", _vp), ("namelen", ctypes.c_uint32), ("iov", _vp),
                ("iovlen", _sz), ("control", _vp), ("controllen", _sz),
                ("flags", _int)]


_HOST_CMSG = struct.Struct("<Qii")            # x86-64 / arm64 hosts
_HOST_CMSG_ALIGN = 8


MSG_NOSIGNAL = 0x4000


def _err() -> int:
    return -ctypes.get_errno()


def _addr_of(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class _Layout:
    """msghdr / iovec / cmsghdr of one guest word size."""

    def __init__(self, word: int) -> None:
        w = "I" if word == 4 else "Q"
        self.msghdr = struct.Struct("<IIIIIIi" if word == 4 else "<QI4xQQQQi4x")
        self.iovec = struct.Struct(f"<{w}{w}")
        self.cmsg = struct.Struct(f"<{w}ii")
        self.align = word
        self.word = word

    def cmsg_align(self, n: int) -> int:
        return (n + self.align - 1) & ~(self.align - 1)


_LAYOUTS = {4: _Layout(4), 8: _Layout(8)}


def _read_sockaddr(t: GuestThread, addr: int, length: int) -> bytes | None:
    length = s32(length)
    if length < 0 or length > SOCKADDR_MAX:
        raise OSError(errno.EINVAL, "addrlen")
    if not addr:
        return None
    return t.mem.read(addr, length)


class _AddrOut:
    """A host sockaddr buffer for a guest (addr, addrlen*) pair."""

    def __init__(self, t: GuestThread, addr: int, lenp: int) -> None:
        self.t, self.addr, self.lenp = t, addr, lenp
        self.buf = None
        self.glen = 0
        if addr and lenp:
            self.glen = s32(int.from_bytes(t.mem.read(lenp, 4), "little"))
            if self.glen < 0:
                raise OSError(errno.EINVAL, "addrlen")
            self.buf = ctypes.create_string_buffer(SOCKADDR_MAX)
        self.hlen = ctypes.c_uint32(SOCKADDR_MAX)

    def ptrs(self) -> tuple[object, object]:
        if self.buf is None:
            return None, None
        return self.buf, ctypes.byref(self.hlen)

    def store(self, actual: int | None = None) -> None:
        """Copy min(actual, given) bytes out and the actual length (as Linux does)."""
        if self.buf is None:
            return
        n = self.hlen.value if actual is None else actual
        if self.glen:
            self.t.mem.write(self.addr, self.buf.raw[:min(n, self.glen)])
        self.t.mem.write(self.lenp, struct.pack("<I", n))


# ---- sockets --------------------------------------------------------------------------------
@syscall("socket")
def sys_socket(t: GuestThread, domain: int, type_: int, proto: int) -> int:
    fd = _socket(s32(domain), s32(type_), s32(proto))
    return _err() if fd < 0 else fd


@syscall("socketpair")
def sys_socketpair(t: GuestThread, domain: int, type_: int, proto: int, sv: int) -> int:
    t.mem.views(sv, 8, PROT_WRITE)
    fds = (_int * 2)()
    if _socketpair(s32(domain), s32(type_), s32(proto), fds) < 0:
        return _err()
    t.mem.write(sv, struct.pack("<ii", fds[0], fds[1]))
    return 0


@syscall("bind")
def sys_bind(t: GuestThread, fd: int, addr: int, length: int) -> int:
    raw = _read_sockaddr(t, addr, length) or b""
    return _err() if _bind(s32(fd), raw, len(raw)) < 0 else 0


@syscall("connect")
def sys_connect(t: GuestThread, fd: int, addr: int, length: int) -> int:
    raw = _read_sockaddr(t, addr, length) or b""
    with t.blocking():
        ret = _connect(s32(fd), raw, len(raw))
    return _err() if ret < 0 else 0


@syscall("listen")
def sys_listen(t: GuestThread, fd: int, backlog: int) -> int:
    return _err() if _listen(s32(fd), s32(backlog)) < 0 else 0


@syscall("accept4")
def sys_accept4(t: GuestThread, fd: int, addr: int, lenp: int, flags: int) -> int:
    out = _AddrOut(t, addr, lenp)
    woke = _wait_readable(t, s32(fd))
    if woke <= 0:
        return woke
    with t.blocking():
        ret = _accept4(s32(fd), *out.ptrs(), s32(flags))
    if ret < 0:
        return _err()
    out.store()
    return ret


@syscall("accept")
def sys_accept(t: GuestThread, fd: int, addr: int, lenp: int) -> int:
    return sys_accept4(t, fd, addr, lenp, 0)


def _name(fn: ctypes._CFuncPtr, t: GuestThread, fd: int, addr: int,  # type: ignore[name-defined]
          lenp: int) -> int:
    out = _AddrOut(t, addr, lenp)
    if out.buf is None:
        return -errno.EFAULT
    if fn(s32(fd), *out.ptrs()) < 0:
        return _err()
    out.store()
    return 0


@syscall("getsockname")
def sys_getsockname(t: GuestThread, fd: int, addr: int, lenp: int) -> int:
    return _name(_getsockname, t, fd, addr, lenp)


@syscall("getpeername")
def sys_getpeername(t: GuestThread, fd: int, addr: int, lenp: int) -> int:
    return _name(_getpeername, t, fd, addr, lenp)


@syscall("shutdown")
def sys_shutdown(t: GuestThread, fd: int, how: int) -> int:
    return _err() if _shutdown(s32(fd), s32(how)) < 0 else 0


# ---- socket options -------------------------------------------------------------------------
def _timeval_opt(t: GuestThread, level: int, name: int) -> bool:
    return t.arch.word_size == 4 and level == SOL_SOCKET and name in (SO_RCVTIMEO_OLD,
                                                                      SO_SNDTIMEO_OLD)


@syscall("setsockopt")
def sys_setsockopt(t: GuestThread, fd: int, level: int, name: int, val: int,
                   length: int) -> int:
    n = s32(length)
    if n < 0:
        return -errno.EINVAL
    raw = t.mem.read(val, min(n, 1 << 16)) if val and n else b""
    level, name = s32(level), s32(name)
    if _timeval_opt(t, level, name):
        if n < 8:
            return -errno.EINVAL
        raw = struct.pack("<qq", *struct.unpack("<ii", raw[:8]))
    buf = ctypes.create_string_buffer(raw, len(raw)) if raw else None
    return _err() if _setsockopt(s32(fd), level, name, buf, len(raw)) < 0 else 0


@syscall("getsockopt")
def sys_getsockopt(t: GuestThread, fd: int, level: int, name: int, val: int,
                   lenp: int) -> int:
    glen = s32(int.from_bytes(t.mem.read(lenp, 4), "little"))
    if glen < 0:
        return -errno.EINVAL
    level, name = s32(level), s32(name)
    timeval = _timeval_opt(t, level, name)
    hlen = ctypes.c_uint32(16 if timeval else min(glen, 1 << 16))
    buf = ctypes.create_string_buffer(max(hlen.value, 1))
    if _getsockopt(s32(fd), level, name, buf, ctypes.byref(hlen)) < 0:
        return _err()
    raw = buf.raw[:hlen.value]
    if timeval:
        if glen < 8:
            return -errno.EINVAL
        raw = struct.pack("<ii", *struct.unpack("<qq", raw))
    raw = raw[:glen]
    if raw:
        t.mem.write(val, raw)
    t.mem.write(lenp, struct.pack("<I", len(raw)))
    return 0


# ---- data: sendmsg / recvmsg and the simple forms over them ----------------------------------
def _host_iovs(t: GuestThread, pairs: list[tuple[int, int]], need: int) -> tuple[object, int]:
    """Host iovecs pointing into guest memory for the guest (base, len) pairs."""
    views: list[memoryview] = []
    for base, length in pairs:
        if length:
            views.extend(t.mem.views(base, length, need))
    arr = (_IoVec * max(len(views), 1))()
    for i, v in enumerate(views):
        arr[i].base = _addr_of(v)
        arr[i].len = len(v)
    return arr, len(views)


def _guest_iovs(t: GuestThread, iov: int, count: int) -> list[tuple[int, int]]:
    if count > UIO_MAXIOV:
        raise OSError(errno.EMSGSIZE, "iovlen")
    lay = _LAYOUTS[t.arch.word_size]
    raw = t.mem.read(iov, count * lay.iovec.size) if count else b""
    return [lay.iovec.unpack_from(raw, i * lay.iovec.size) for i in range(count)]


def _cmsg_to_host(t: GuestThread, raw: bytes) -> bytes:
    lay = _LAYOUTS[t.arch.word_size]
    out = bytearray()
    off = 0
    while off + lay.cmsg.size <= len(raw):
        length, level, type_ = lay.cmsg.unpack_from(raw, off)
        if length < lay.cmsg.size or off + length > len(raw):
            raise OSError(errno.EINVAL, "cmsg_len")
        data = raw[off + lay.cmsg.size:off + length]
        hlen = _HOST_CMSG.size + len(data)
        out += _HOST_CMSG.pack(hlen, level, type_) + data
        out += bytes(-len(out) % _HOST_CMSG_ALIGN)
        off += lay.cmsg_align(length)
    return bytes(out)


def _cmsg_to_guest(t: GuestThread, raw: bytes, room: int) -> tuple[bytes, bool]:
    """Host control messages in the guest's layout, cut to ``room`` bytes (MSG_CTRUNC)."""
    lay = _LAYOUTS[t.arch.word_size]
    out = bytearray()
    off = 0
    truncated = False
    while off + _HOST_CMSG.size <= len(raw):
        length, level, type_ = _HOST_CMSG.unpack_from(raw, off)
        if length < _HOST_CMSG.size:
            break
        data = raw[off + _HOST_CMSG.size:off + length]
        off += (length + _HOST_CMSG_ALIGN - 1) & ~(_HOST_CMSG_ALIGN - 1)
        if (level == SOL_SOCKET and type_ in (SO_TIMESTAMP_OLD, SO_TIMESTAMPNS_OLD)
                and lay.word == 4 and len(data) == 16):
            data = struct.pack("<ii", *struct.unpack("<qq", data))
        space = room - len(out)
        if truncated or space < lay.cmsg.size:
            truncated = True
            if level == SOL_SOCKET and type_ == SCM_RIGHTS:
                _close_fds(data)
            continue
        keep = data
        if lay.cmsg.size + len(data) > space:
            truncated = True
            keep = data[:space - lay.cmsg.size]
            if level == SOL_SOCKET and type_ == SCM_RIGHTS:
                keep = keep[:len(keep) // 4 * 4]
                _close_fds(data[len(keep):])
        out += lay.cmsg.pack(lay.cmsg.size + len(keep), level, type_) + keep
        if len(out) < room:
            out += bytes(min(-len(out) % lay.align, room - len(out)))
    return bytes(out), truncated


def _close_fds(data: bytes) -> None:
    for (fd,) in struct.iter_unpack("<i", data[:len(data) // 4 * 4]):
        try:
            os.close(fd)
        except OSError:
            pass


def _wait_readable(t: GuestThread, fd: int) -> int:
    """Before a blocking accept/recv: 1 when ``fd`` is readable (or non-blocking: the
    call answers for itself), -EAGAIN when SO_RCVTIMEO passed, else the signal's
    -ERESTARTSYS (-EINTR with a receive timeout, as sock_intr_errno)."""
    from .poll import ERESTARTSYS, wait_fd

    if _fcntl.fcntl(fd, _fcntl.F_GETFL) & os.O_NONBLOCK:
        return 1
    tv = ctypes.create_string_buffer(16)
    tvlen = ctypes.c_uint32(16)
    timeout = None
    if _getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO_OLD, tv, ctypes.byref(tvlen)) == 0:
        sec, usec = struct.unpack("<qq", tv.raw)
        if sec or usec:
            timeout = sec * 1_000_000_000 + usec * 1000
    woke = wait_fd(t, fd, _POLLIN, timeout)
    if woke < 0:
        return -errno.EINTR if timeout is not None else -ERESTARTSYS
    return 1 if woke else -errno.EAGAIN


def _sendmsg(t: GuestThread, fd: int, pairs: list[tuple[int, int]], name: bytes | None,
             control: bytes, flags: int) -> int:
    iovs, n = _host_iovs(t, pairs, PROT_READ)
    msg = _MsgHdr()
    namebuf = ctypes.create_string_buffer(name, len(name)) if name else None
    if namebuf is not None:
        msg.name, msg.namelen = ctypes.addressof(namebuf), len(name)   # type: ignore[arg-type]
    msg.iov, msg.iovlen = ctypes.addressof(iovs), n                    # type: ignore[arg-type]
    ctl = ctypes.create_string_buffer(control, len(control)) if control else None
    if ctl is not None:
        msg.control, msg.controllen = ctypes.addressof(ctl), len(control)
    with t.blocking():
        ret = _c_sendmsg(s32(fd), ctypes.byref(msg), s32(flags))
    if ret >= 0:
        return ret
    ret = _err()
    if ret == -errno.EPIPE and not flags & MSG_NOSIGNAL:
        from .signals import send_sigpipe

        send_sigpipe(t)
    return ret


def _recvmsg(t: GuestThread, fd: int, pairs: list[tuple[int, int]], name: _AddrOut | None,
             control_room: int, flags: int) -> tuple[int, _MsgHdr, bytes]:
    iovs, n = _host_iovs(t, pairs, PROT_WRITE)
    msg = _MsgHdr()
    if name is not None and name.buf is not None:
        msg.name, msg.namelen = ctypes.addressof(name.buf), SOCKADDR_MAX
    msg.iov, msg.iovlen = ctypes.addressof(iovs), n                    # type: ignore[arg-type]
    ctl = None
    if control_room > 0:
        # host headers are larger than arm's: room for the same number of messages
        size = 2 * control_room + 64
        ctl = ctypes.create_string_buffer(size)
        msg.control, msg.controllen = ctypes.addressof(ctl), size
    sfd, fl = s32(fd), s32(flags)
    ret = -1
    if not fl & MSG_WAITALL:              # first without waiting (MSG_WAITALL wants all)
        ret = _c_recvmsg(sfd, ctypes.byref(msg), fl | MSG_DONTWAIT)
        if ret < 0 and (ctypes.get_errno() != errno.EAGAIN or fl & MSG_DONTWAIT):
            return _err(), msg, b""
    if ret < 0:
        woke = _wait_readable(t, sfd)
        if woke <= 0:
            return woke, msg, b""
        with t.blocking():
            ret = _c_recvmsg(sfd, ctypes.byref(msg), fl)
    if ret < 0:
        return _err(), msg, b""
    raw = ctl.raw[:msg.controllen] if ctl is not None else b""
    return ret, msg, raw


@syscall("sendmsg")
def sys_sendmsg(t: GuestThread, fd: int, msgp: int, flags: int) -> int:
    lay = _LAYOUTS[t.arch.word_size]
    name, namelen, iov, iovlen, control, controllen, _ = lay.msghdr.unpack(
        t.mem.read(msgp, lay.msghdr.size))
    pairs = _guest_iovs(t, iov, iovlen)
    sa = _read_sockaddr(t, name, namelen) if name else None
    ctl = b""
    if control and controllen:
        if controllen > 1 << 16:
            return -errno.ENOBUFS
        ctl = _cmsg_to_host(t, t.mem.read(control, controllen))
    return _sendmsg(t, fd, pairs, sa, ctl, flags)


@syscall("recvmsg")
def sys_recvmsg(t: GuestThread, fd: int, msgp: int, flags: int) -> int:
    lay = _LAYOUTS[t.arch.word_size]
    raw = t.mem.read(msgp, lay.msghdr.size)
    name, namelen, iov, iovlen, control, controllen, _ = lay.msghdr.unpack(raw)
    pairs = _guest_iovs(t, iov, iovlen)
    out = None
    if name:
        if s32(namelen) < 0:
            return -errno.EINVAL
        out = _AddrOut(t, 0, 0)
        out.buf = ctypes.create_string_buffer(SOCKADDR_MAX)
    room = min(controllen, 1 << 16) if control else 0
    ret, msg, ctl = _recvmsg(t, fd, pairs, out, room, flags)
    if ret < 0:
        return ret
    gflags = msg.flags
    gctl, truncated = _cmsg_to_guest(t, ctl, room)
    if truncated:
        gflags |= MSG_CTRUNC
    if gctl:
        t.mem.write(control, gctl)
    got_namelen = msg.namelen if out is not None else 0
    if out is not None and got_namelen:
        t.mem.write(name, out.buf.raw[:min(got_namelen, namelen)])  # type: ignore[union-attr]
    t.mem.write(msgp, lay.msghdr.pack(name, got_namelen, iov, iovlen, control,
                                      len(gctl) if control else 0, gflags))
    return ret


@syscall("sendto")
def sys_sendto(t: GuestThread, fd: int, buf: int, length: int, flags: int, addr: int,
               alen: int) -> int:
    sa = _read_sockaddr(t, addr, alen) if addr else None
    return _sendmsg(t, fd, [(buf, length)], sa, b"", flags)


@syscall("send")
def sys_send(t: GuestThread, fd: int, buf: int, length: int, flags: int) -> int:
    return _sendmsg(t, fd, [(buf, length)], None, b"", flags)


@syscall("recvfrom")
def sys_recvfrom(t: GuestThread, fd: int, buf: int, length: int, flags: int, addr: int,
                 lenp: int) -> int:
    out = _AddrOut(t, addr, lenp) if addr else None
    ret, msg, _ = _recvmsg(t, fd, [(buf, length)], out, 0, flags)
    if ret >= 0 and out is not None:
        out.store(msg.namelen)
    return ret


@syscall("recv")
def sys_recv(t: GuestThread, fd: int, buf: int, length: int, flags: int) -> int:
    return _recvmsg(t, fd, [(buf, length)], None, 0, flags)[0]


def _mmsg(t: GuestThread, fd: int, vec: int, vlen: int, flags: int, send: bool) -> int:
    lay = _LAYOUTS[t.arch.word_size]
    entry = lay.msghdr.size + 4 + (-(lay.msghdr.size + 4) % lay.word)
    done = 0
    for i in range(min(vlen, UIO_MAXIOV)):
        addr = vec + i * entry
        ret = (sys_sendmsg if send else sys_recvmsg)(t, fd, addr, flags)
        if ret < 0:
            return ret if done == 0 else done
        t.mem.write(addr + lay.msghdr.size, struct.pack("<I", ret))
        done += 1
        flags |= 0x40 if not send and flags & 0x10000 else 0       # MSG_WAITFORONE
    return done


@syscall("sendmmsg")
def sys_sendmmsg(t: GuestThread, fd: int, vec: int, vlen: int, flags: int) -> int:
    return _mmsg(t, fd, vec, vlen, flags, True)


@syscall("recvmmsg")
def sys_recvmmsg(t: GuestThread, fd: int, vec: int, vlen: int, flags: int,
                 timeout: int) -> int:
    return _mmsg(t, fd, vec, vlen, flags, False)


@syscall("recvmmsg_time64")
def sys_recvmmsg64(t: GuestThread, fd: int, vec: int, vlen: int, flags: int,
                   timeout: int) -> int:
    return _mmsg(t, fd, vec, vlen, flags, False)
