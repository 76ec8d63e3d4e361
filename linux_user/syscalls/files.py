"""File and directory syscalls: guest fds are host fds, as in qemu-user.

Paths go through :func:`host_path` (``-L`` prefix, ``/proc/self/exe``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl as _fcntl
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...common.memory import PROT_READ, PROT_WRITE
from ..procfs import is_self_exe, open_special
from . import syscall
from .structs import (
    AT_EACCESS,
    AT_EMPTY_PATH,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    HOST_MACHINE,
    dirfd,
    open_flags_to_guest,
    open_flags_to_host,
    pack_stat,
    read_words,
    s32,
    s64,
    sword,
)

if TYPE_CHECKING:
    from ..process import GuestThread

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(HOST_MACHINE, 217)
_SYS_STATX = {"x86_64": 332, "aarch64": 291}.get(HOST_MACHINE, 332)


def guest_path(t: GuestThread, addr: int) -> bytes:
    """The path string at ``addr``, with the ``-L`` prefix applied (qemu's ``path()``)."""
    return host_path(t, t.mem.read_cstring(addr))


def host_path(t: GuestThread, path: bytes) -> bytes:
    """``path`` as the host should open it."""
    if path.startswith(b"/proc/") and is_self_exe(t, path):
        return t.process.exec_path.encode()
    prefix = t.process.ld_prefix
    if prefix and path.startswith(b"/"):
        candidate = prefix.encode() + path
        if os.path.lexists(candidate):
            return candidate
    return path


def _iovecs(t: GuestThread, iov: int, count: int, need: int) -> list[memoryview]:
    if count > 1024:
        raise OSError(errno.EINVAL, "iovcnt")
    words = read_words(t, iov, 2 * count) if count else ()
    bufs: list[memoryview] = []
    for i in range(count):
        base, length = words[2 * i], words[2 * i + 1]
        if length:
            bufs.extend(t.mem.views(base, length, need))
    return bufs


# ---- read / write -----------------------------------------------------------------------
#: host fd -> read handler, for fds whose reads are emulated (signalfd): tested by
#: truthiness first, so the read path costs nothing while it is empty
FD_READ_HOOKS: dict[int, Callable[..., int]] = {}


def _io(t: GuestThread, fn: Callable[..., int], *args: object) -> int:
    """Run a read/write that may block (pipe, socket, tty): with other guest threads
    alive, release the execution lock around it."""
    if len(t.process.threads) > 1:
        with t.blocking():
            return fn(*args)
    return fn(*args)


@syscall("read")
def sys_read(t: GuestThread, fd: int, buf: int, count: int) -> int:
    if FD_READ_HOOKS and fd in FD_READ_HOOKS:
        return FD_READ_HOOKS[fd](t, fd, buf, count)
    if not count:
        return os.read(s32(fd), 0) and 0
    views = t.mem.views(buf, count, PROT_WRITE)
    try:
        return os.preadv(s32(fd), views, -1, _RWF_NOWAIT)     # never blocks
    except OSError as e:
        if e.errno not in _NOWAIT_FALLBACK:
            raise
    return _read_blocking(t, s32(fd), views)


@syscall("write")
def sys_write(t: GuestThread, fd: int, buf: int, count: int) -> int:
    if not count:
        return os.write(s32(fd), b"")
    views = t.mem.views(buf, count, PROT_READ)
    try:
        if len(t.process.threads) > 1:
            with t.blocking():
                return os.writev(s32(fd), views)
        return os.writev(s32(fd), views)
    except BrokenPipeError:
        _sigpipe(t)
        raise


def _sigpipe(t: GuestThread) -> None:
    from .signals import send_sigpipe

    send_sigpipe(t)


@syscall("readv")
def sys_readv(t: GuestThread, fd: int, iov: int, iovcnt: int) -> int:
    views = _iovecs(t, iov, iovcnt, PROT_WRITE)
    if not views:
        return os.readv(s32(fd), views)
    try:
        return os.preadv(s32(fd), views, -1, _RWF_NOWAIT)
    except OSError as e:
        if e.errno not in _NOWAIT_FALLBACK:
            raise
    return _read_blocking(t, s32(fd), views)


#: RWF_NOWAIT reads that must wait (EAGAIN) or that the file does not support
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 8)
_NOWAIT_FALLBACK = {errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE}
_POLLIN = 1


def _read_blocking(t: GuestThread, fd: int, views: list[memoryview]) -> int:
    """A read that may have to wait: the wait is the host's poll together with the
    thread's wake fd, so that a guest signal interrupts it (-ERESTARTSYS: the signal
    family restarts the read after an SA_RESTART handler, else returns EINTR)."""
    if not _fcntl.fcntl(fd, _fcntl.F_GETFL) & os.O_NONBLOCK:
        from .poll import ERESTARTSYS, wait_fd

        if wait_fd(t, fd, _POLLIN) < 0:
            return -ERESTARTSYS
    if len(t.process.threads) > 1:
        with t.blocking():
            return os.readv(fd, views)
    return os.readv(fd, views)


@syscall("writev")
def sys_writev(t: GuestThread, fd: int, iov: int, iovcnt: int) -> int:
    try:
        return _io(t, os.writev, s32(fd), _iovecs(t, iov, iovcnt, PROT_READ))
    except BrokenPipeError:
        _sigpipe(t)
        raise


@syscall("pread64", arch="arm")
def sys_pread64_arm(t: GuestThread, fd: int, buf: int, count: int, _pad: int, lo: int,
                    hi: int) -> int:
    return os.preadv(s32(fd), t.mem.views(buf, count, PROT_WRITE), s64(lo | hi << 32))


@syscall("pwrite64", arch="arm")
def sys_pwrite64_arm(t: GuestThread, fd: int, buf: int, count: int, _pad: int, lo: int,
                     hi: int) -> int:
    return os.pwritev(s32(fd), t.mem.views(buf, count, PROT_READ), s64(lo | hi << 32))


@syscall("pread64")
def sys_pread64(t: GuestThread, fd: int, buf: int, count: int, off: int) -> int:
    return os.preadv(s32(fd), t.mem.views(buf, count, PROT_WRITE), s64(off))


@syscall("pwrite64")
def sys_pwrite64(t: GuestThread, fd: int, buf: int, count: int, off: int) -> int:
    return os.pwritev(s32(fd), t.mem.views(buf, count, PROT_READ), s64(off))


@syscall("lseek")
def sys_lseek(t: GuestThread, fd: int, off: int, whence: int) -> int:
    return os.lseek(s32(fd), sword(t, off), whence)


@syscall("_llseek")
def sys_llseek(t: GuestThread, fd: int, hi: int, lo: int, result: int, whence: int) -> int:
    pos = os.lseek(s32(fd), s64(hi << 32 | lo), whence)
    t.mem.write(result, struct.pack("<q", pos))
    return 0


# ---- open / close / dup --------------------------------------------------------------------
@syscall("openat")
def sys_openat(t: GuestThread, dfd: int, path: int, flags: int, mode: int) -> int:
    name = t.mem.read_cstring(path)
    if name.startswith(b"/proc/"):          # the guest's /proc views (procfs.py)
        fd = open_special(t, name, flags)
        if fd is not None:
            return fd
    return os.open(host_path(t, name), open_flags_to_host(flags), mode & 0o7777,
                   dir_fd=dirfd(t, dfd))


@syscall("open")
def sys_open(t: GuestThread, path: int, flags: int, mode: int) -> int:
    return sys_openat(t, 0xFFFFFF9C, path, flags, mode)


@syscall("close")
def sys_close(t: GuestThread, fd: int) -> int:
    os.close(s32(fd))
    if FD_READ_HOOKS:
        FD_READ_HOOKS.pop(fd, None)
    return 0


def _dup_hook(old: int, new: int) -> int:
    """Carry an emulated fd's read hook over to its duplicate ``new``."""
    if FD_READ_HOOKS:
        FD_READ_HOOKS.pop(new, None)
        if old in FD_READ_HOOKS:
            FD_READ_HOOKS[new] = FD_READ_HOOKS[old]
    return new


@syscall("dup")
def sys_dup(t: GuestThread, fd: int) -> int:
    return _dup_hook(s32(fd), os.dup(s32(fd)))


@syscall("dup2")
def sys_dup2(t: GuestThread, fd: int, fd2: int) -> int:
    if s32(fd) == s32(fd2):
        os.fstat(s32(fd))
        return s32(fd2)
    return _dup_hook(s32(fd), os.dup2(s32(fd), s32(fd2)))


@syscall("dup3")
def sys_dup3(t: GuestThread, fd: int, fd2: int, flags: int) -> int:
    if flags & ~os.O_CLOEXEC or s32(fd) == s32(fd2):
        return -errno.EINVAL
    return _dup_hook(s32(fd), os.dup2(s32(fd), s32(fd2), inheritable=not flags & os.O_CLOEXEC))


@syscall("pipe2")
def sys_pipe2(t: GuestThread, fds: int, flags: int) -> int:
    r, w = os.pipe2(open_flags_to_host(flags))
    t.mem.write(fds, struct.pack("<ii", r, w))
    return 0


@syscall("pipe")
def sys_pipe(t: GuestThread, fds: int) -> int:
    return sys_pipe2(t, fds, 0)


F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_GETLK64, F_SETLK64, F_SETLKW64 = 12, 13, 14          # arm (32-bit) only
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG = 8, 9, 10, 11
F_SETLEASE, F_GETLEASE, F_NOTIFY = 1024, 1025, 1026
F_DUPFD_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ = 1030, 1031, 1032
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SETOWN_EX, F_GETOWN_EX = 15, 16          # struct f_owner_ex {int type; pid_t pid}
#: commands whose argument is a plain int, passed as is (numbers equal on arm/arm64/x86)
_FCNTL_INT = {F_GETFD, F_SETFD, F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG, F_SETLEASE,
              F_GETLEASE, F_NOTIFY, F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS}
# struct flock: arm's 32-bit one (longs) and the 64-bit one, which is arm's flock64
# (EABI: 8-aligned loff_t), arm64's flock and the x86-64 host's alike
FLOCK_ARM = struct.Struct("<hhiii")
FLOCK64 = struct.Struct("<hh4xqqi4x")


def _fcntl_lock(t: GuestThread, fd: int, cmd: int, arg: int, layout: struct.Struct) -> int:
    raw = t.mem.read(arg, layout.size)
    host = FLOCK64.pack(*layout.unpack(raw))
    hcmd = {F_GETLK64: F_GETLK, F_SETLK64: F_SETLK, F_SETLKW64: F_SETLKW}.get(cmd, cmd)
    if hcmd in (F_SETLKW, F_OFD_SETLKW):
        with t.blocking():
            out = _fcntl.fcntl(fd, hcmd, host)
    else:
        out = _fcntl.fcntl(fd, hcmd, host)
    if hcmd in (F_GETLK, F_OFD_GETLK):
        vals = FLOCK64.unpack(out)
        if layout is FLOCK_ARM and (vals[2] > 0x7FFFFFFF or vals[3] > 0x7FFFFFFF):
            return -errno.EOVERFLOW
        t.mem.write(arg, layout.pack(*vals))
    return 0


def _fcntl_any(t: GuestThread, fd: int, cmd: int, arg: int, wide: bool) -> int:
    fd = s32(fd)
    if cmd == F_GETFL:
        return open_flags_to_guest(_fcntl.fcntl(fd, cmd))
    if cmd == F_SETFL:
        return _fcntl.fcntl(fd, cmd, open_flags_to_host(arg))
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        return _dup_hook(fd, _fcntl.fcntl(fd, cmd, s32(arg)))
    if cmd in _FCNTL_INT:
        return _fcntl.fcntl(fd, cmd, s32(arg))
    if cmd == F_GETOWN_EX:
        t.mem.write(arg, _fcntl.fcntl(fd, cmd, bytes(8)))
        return 0
    if cmd == F_SETOWN_EX:
        _fcntl.fcntl(fd, cmd, t.mem.read(arg, 8))
        return 0
    arm = t.arch.word_size == 4
    if cmd in (F_GETLK, F_SETLK, F_SETLKW):
        return _fcntl_lock(t, fd, cmd, arg, FLOCK_ARM if arm else FLOCK64)
    if arm and cmd in (F_GETLK64, F_SETLK64, F_SETLKW64):
        return _fcntl_lock(t, fd, cmd, arg, FLOCK64)
    if cmd in (F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW):
        # fcntl64 (and every 64-bit fcntl) takes struct flock64, 32-bit fcntl struct flock
        return _fcntl_lock(t, fd, cmd, arg, FLOCK_ARM if arm and not wide else FLOCK64)
    return -errno.EINVAL


@syscall("fcntl")
def sys_fcntl(t: GuestThread, fd: int, cmd: int, arg: int) -> int:
    return _fcntl_any(t, fd, cmd, arg, False)


@syscall("fcntl64")
def sys_fcntl64(t: GuestThread, fd: int, cmd: int, arg: int) -> int:
    return _fcntl_any(t, fd, cmd, arg, True)


@syscall("flock")
def sys_flock(t: GuestThread, fd: int, op: int) -> int:
    if op & 4:                                          # LOCK_NB
        _fcntl.flock(s32(fd), op)
    else:
        with t.blocking():
            _fcntl.flock(s32(fd), op)
    return 0


# ---- ioctl ---------------------------------------------------------------------------------
# Terminal ioctls (include/uapi/asm-generic/ioctls.h, used by arm, arm64 and x86 alike);
# struct termios is 36 bytes of u32 flags, c_line and c_cc[19] everywhere, struct winsize
# four u16: passed as they are.
TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TCSBRK, TCXONC, TCFLSH = 0x5409, 0x540A, 0x540B
TIOCEXCL, TIOCNXCL, TIOCSCTTY, TIOCGPGRP, TIOCSPGRP = 0x540C, 0x540D, 0x540E, 0x540F, 0x5410
TIOCOUTQ, TIOCGWINSZ, TIOCSWINSZ, FIONREAD = 0x5411, 0x5413, 0x5414, 0x541B
FIONBIO, TIOCNOTTY, TIOCGSID, TIOCGPTPEER = 0x5421, 0x5422, 0x5429, 0x5441
FIONCLEX, FIOCLEX, FIOASYNC = 0x5450, 0x5451, 0x5452
TIOCGPTN, TIOCSPTLCK, TIOCGPTLCK = 0x80045430, 0x40045431, 0x80045439
_TERMIOS_SIZE = 36
#: cmd -> (how, size): "get" the host fills ``size`` bytes for the guest, "set" the
#: guest's ``size`` bytes go in, "int" the argument is a value, "none" it is unused
_IOCTLS: dict[int, tuple[str, int]] = {
    TCGETS: ("get", _TERMIOS_SIZE), TCSETS: ("set", _TERMIOS_SIZE),
    TCSETSW: ("set", _TERMIOS_SIZE), TCSETSF: ("set", _TERMIOS_SIZE),
    TIOCGWINSZ: ("get", 8), TIOCSWINSZ: ("set", 8),
    FIONREAD: ("get", 4), TIOCOUTQ: ("get", 4), TIOCGPGRP: ("get", 4),
    TIOCSPGRP: ("set", 4), TIOCGSID: ("get", 4), TIOCGPTN: ("get", 4),
    TIOCSPTLCK: ("set", 4), TIOCGPTLCK: ("get", 4), FIONBIO: ("set", 4),
    FIOASYNC: ("set", 4),
    TCSBRK: ("int", 0), TCXONC: ("int", 0), TCFLSH: ("int", 0), TIOCSCTTY: ("int", 0),
    TIOCGPTPEER: ("int", 0),
    TIOCEXCL: ("none", 0), TIOCNXCL: ("none", 0), TIOCNOTTY: ("none", 0),
    FIOCLEX: ("none", 0), FIONCLEX: ("none", 0),
}


@syscall("ioctl")
def sys_ioctl(t: GuestThread, fd: int, cmd: int, arg: int) -> int:
    fd = s32(fd)
    spec = _IOCTLS.get(cmd)
    if spec is None:
        proc = t.process
        if "unimp" in proc.log_items:
            proc.log.write(f"Unsupported ioctl: cmd=0x{cmd:04x}\n")
        return -errno.ENOTTY
    if fd < 0:
        return -errno.EBADF
    how, size = spec
    if how == "get":
        t.mem.write(arg, _fcntl.ioctl(fd, cmd, bytes(size)))
        return 0
    if how == "set":
        _fcntl.ioctl(fd, cmd, t.mem.read(arg, size))
        return 0
    if cmd == TCSBRK:                # tcdrain waits for the output to drain
        with t.blocking():
            return _fcntl.ioctl(fd, cmd, s32(arg))
    return _fcntl.ioctl(fd, cmd, s32(arg) if how == "int" else 0)


# ---- stat ---------------------------------------------------------------------------------
def _stat_at(t: GuestThread, dfd: int, path: int, flags: int) -> os.stat_result:
    name = t.mem.read_cstring(path)
    if not name and flags & AT_EMPTY_PATH:
        return os.stat(s32(dfd))
    return os.stat(host_path(t, name), dir_fd=dirfd(t, dfd),
                   follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)


@syscall("fstat64", arch="arm")
@syscall("fstat", arch="aarch64")
def sys_fstat(t: GuestThread, fd: int, buf: int) -> int:
    t.mem.write(buf, pack_stat(t, os.fstat(s32(fd))))
    return 0


@syscall("fstatat64", arch="arm")
@syscall("newfstatat", arch="aarch64")
def sys_fstatat(t: GuestThread, dfd: int, path: int, buf: int, flags: int) -> int:
    t.mem.write(buf, pack_stat(t, _stat_at(t, dfd, path, flags)))
    return 0


@syscall("stat64", arch="arm")
def sys_stat64(t: GuestThread, path: int, buf: int) -> int:
    t.mem.write(buf, pack_stat(t, os.stat(guest_path(t, path))))
    return 0


@syscall("lstat64", arch="arm")
def sys_lstat64(t: GuestThread, path: int, buf: int) -> int:
    t.mem.write(buf, pack_stat(t, os.lstat(guest_path(t, path))))
    return 0


@syscall("statx")
def sys_statx(t: GuestThread, dfd: int, path: int, flags: int, mask: int, buf: int) -> int:
    name = t.mem.read_cstring(path)
    if name:
        name = host_path(t, name)
    out = ctypes.create_string_buffer(256)
    ret = _libc.syscall(_SYS_STATX, ctypes.c_int(s32(dfd)), ctypes.c_char_p(name),
                        ctypes.c_int(flags), ctypes.c_uint(mask), out)
    if ret < 0:
        return -ctypes.get_errno()
    t.mem.write(buf, out.raw)
    return 0


# ---- paths and directories ----------------------------------------------------------------
@syscall("readlinkat")
def sys_readlinkat(t: GuestThread, dfd: int, path: int, buf: int, size: int) -> int:
    name = t.mem.read_cstring(path)
    if name.startswith(b"/proc/") and is_self_exe(t, name):
        target = os.path.abspath(t.process.exec_path).encode()
    else:
        target = os.readlink(host_path(t, name), dir_fd=dirfd(t, dfd))
    if s32(size) <= 0:
        return -errno.EINVAL
    target = target[:size]
    t.mem.write(buf, target)
    return len(target)


@syscall("readlink")
def sys_readlink(t: GuestThread, path: int, buf: int, size: int) -> int:
    return sys_readlinkat(t, 0xFFFFFF9C, path, buf, size)


@syscall("faccessat")
def sys_faccessat(t: GuestThread, dfd: int, path: int, mode: int) -> int:
    return sys_faccessat2(t, dfd, path, mode, 0)


@syscall("faccessat2")
def sys_faccessat2(t: GuestThread, dfd: int, path: int, mode: int, flags: int) -> int:
    ok = os.access(guest_path(t, path), mode, dir_fd=dirfd(t, dfd),
                   effective_ids=bool(flags & AT_EACCESS),
                   follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)
    if ok:
        return 0
    # os.access hides the reason: ask again for the errno
    try:
        os.stat(guest_path(t, path), dir_fd=dirfd(t, dfd))
    except OSError as e:
        return -(e.errno or errno.EACCES)
    return -errno.EACCES


@syscall("access")
def sys_access(t: GuestThread, path: int, mode: int) -> int:
    return sys_faccessat2(t, 0xFFFFFF9C, path, mode, 0)


@syscall("getcwd")
def sys_getcwd(t: GuestThread, buf: int, size: int) -> int:
    cwd = os.getcwdb() + b"\0"
    if len(cwd) > size:
        return -errno.ERANGE
    t.mem.write(buf, cwd)
    return len(cwd)


@syscall("chdir")
def sys_chdir(t: GuestThread, path: int) -> int:
    os.chdir(guest_path(t, path))
    return 0


@syscall("fchdir")
def sys_fchdir(t: GuestThread, fd: int) -> int:
    os.fchdir(s32(fd))
    return 0


@syscall("unlinkat")
def sys_unlinkat(t: GuestThread, dfd: int, path: int, flags: int) -> int:
    if flags & ~AT_REMOVEDIR:
        return -errno.EINVAL
    name = guest_path(t, path)
    if flags & AT_REMOVEDIR:
        os.rmdir(name, dir_fd=dirfd(t, dfd))
    else:
        os.unlink(name, dir_fd=dirfd(t, dfd))
    return 0


@syscall("unlink")
def sys_unlink(t: GuestThread, path: int) -> int:
    os.unlink(guest_path(t, path))
    return 0


@syscall("mkdirat")
def sys_mkdirat(t: GuestThread, dfd: int, path: int, mode: int) -> int:
    os.mkdir(guest_path(t, path), mode & 0o7777, dir_fd=dirfd(t, dfd))
    return 0


@syscall("mkdir")
def sys_mkdir(t: GuestThread, path: int, mode: int) -> int:
    os.mkdir(guest_path(t, path), mode & 0o7777)
    return 0


@syscall("getdents64")
def sys_getdents64(t: GuestThread, fd: int, dirp: int, count: int) -> int:
    # struct linux_dirent64 has one layout everywhere: copy the host's records
    size = min(count, 1 << 20)
    out = ctypes.create_string_buffer(size)
    n = _libc.syscall(_SYS_GETDENTS64, ctypes.c_int(s32(fd)), out, ctypes.c_uint(size))
    if n < 0:
        return -ctypes.get_errno()
    if n:
        t.mem.write(dirp, out.raw[:n])
    return n



# ---- more file operations --------------------------------------------------------------
@syscall("ftruncate")
def sys_ftruncate(t: GuestThread, fd: int, length: int) -> int:
    os.ftruncate(s32(fd), sword(t, length))
    return 0


@syscall("ftruncate64", arch="arm")
def sys_ftruncate64_arm(t: GuestThread, fd: int, _pad: int, lo: int, hi: int) -> int:
    os.ftruncate(s32(fd), s64(hi << 32 | lo))
    return 0


@syscall("truncate")
def sys_truncate(t: GuestThread, path: int, length: int) -> int:
    os.truncate(guest_path(t, path), sword(t, length))
    return 0


@syscall("truncate64", arch="arm")
def sys_truncate64_arm(t: GuestThread, path: int, _pad: int, lo: int, hi: int) -> int:
    os.truncate(guest_path(t, path), s64(hi << 32 | lo))
    return 0


@syscall("fsync")
def sys_fsync(t: GuestThread, fd: int) -> int:
    os.fsync(s32(fd))
    return 0


@syscall("fdatasync")
def sys_fdatasync(t: GuestThread, fd: int) -> int:
    os.fdatasync(s32(fd))
    return 0


@syscall("symlinkat")
def sys_symlinkat(t: GuestThread, target: int, dfd: int, path: int) -> int:
    os.symlink(t.mem.read_cstring(target), guest_path(t, path), dir_fd=dirfd(t, dfd))
    return 0


@syscall("symlink")
def sys_symlink(t: GuestThread, target: int, path: int) -> int:
    os.symlink(t.mem.read_cstring(target), guest_path(t, path))
    return 0


AT_SYMLINK_FOLLOW = 0x400


@syscall("linkat")
def sys_linkat(t: GuestThread, odfd: int, old: int, ndfd: int, new: int, flags: int) -> int:
    os.link(guest_path(t, old), guest_path(t, new), src_dir_fd=dirfd(t, odfd),
            dst_dir_fd=dirfd(t, ndfd), follow_symlinks=bool(flags & AT_SYMLINK_FOLLOW))
    return 0


@syscall("link")
def sys_link(t: GuestThread, old: int, new: int) -> int:
    os.link(guest_path(t, old), guest_path(t, new), follow_symlinks=False)
    return 0


def sys_renameat2(t: GuestThread, odfd: int, old: int, ndfd: int, new: int,
                  flags: int) -> int:
    if flags:
        return -errno.EINVAL
    os.rename(guest_path(t, old), guest_path(t, new), src_dir_fd=dirfd(t, odfd),
              dst_dir_fd=dirfd(t, ndfd))
    return 0


@syscall("renameat")
def sys_renameat(t: GuestThread, odfd: int, old: int, ndfd: int, new: int) -> int:
    return sys_renameat2(t, odfd, old, ndfd, new, 0)


@syscall("rename")
def sys_rename(t: GuestThread, old: int, new: int) -> int:
    os.rename(guest_path(t, old), guest_path(t, new))
    return 0


@syscall("rmdir")
def sys_rmdir(t: GuestThread, path: int) -> int:
    os.rmdir(guest_path(t, path))
    return 0


@syscall("fchmodat")
def sys_fchmodat(t: GuestThread, dfd: int, path: int, mode: int) -> int:
    os.chmod(guest_path(t, path), mode & 0o7777, dir_fd=dirfd(t, dfd))
    return 0


@syscall("chmod")
def sys_chmod(t: GuestThread, path: int, mode: int) -> int:
    os.chmod(guest_path(t, path), mode & 0o7777)
    return 0


@syscall("fchmod")
def sys_fchmod(t: GuestThread, fd: int, mode: int) -> int:
    os.fchmod(s32(fd), mode & 0o7777)
    return 0


@syscall("fchownat")
def sys_fchownat(t: GuestThread, dfd: int, path: int, uid: int, gid: int, flags: int) -> int:
    os.chown(guest_path(t, path), s32(uid), s32(gid), dir_fd=dirfd(t, dfd),
             follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


@syscall("fchown", "fchown32")
def sys_fchown(t: GuestThread, fd: int, uid: int, gid: int) -> int:
    os.fchown(s32(fd), s32(uid), s32(gid))
    return 0


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _utimensat(t: GuestThread, dfd: int, path: int, times: int, flags: int,
               time64: bool) -> int:
    from .structs import timespec_struct

    st = timespec_struct(t, time64)
    tspec = None
    if times:
        raw = t.mem.read(times, 2 * st.size)
        tspec = [st.unpack_from(raw, i * st.size) for i in range(2)]
    name = t.mem.read_cstring(path) if path else b""
    target: bytes | int = host_path(t, name) if name else s32(dfd)
    cur = os.stat(target, dir_fd=dirfd(t, dfd) if name else None,
                  follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)
    now = __import__("time").time_ns()
    ns = []
    for i, old in enumerate((cur.st_atime_ns, cur.st_mtime_ns)):
        if tspec is None or tspec[i][1] == UTIME_NOW:
            ns.append(now)
        elif tspec[i][1] == UTIME_OMIT:
            ns.append(old)
        else:
            ns.append(tspec[i][0] * 1_000_000_000 + tspec[i][1])
    os.utime(target, ns=(ns[0], ns[1]), dir_fd=dirfd(t, dfd) if name else None,
             follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


@syscall("utimensat")
def sys_utimensat(t: GuestThread, dfd: int, path: int, times: int, flags: int) -> int:
    return _utimensat(t, dfd, path, times, flags, False)


@syscall("utimensat_time64")
def sys_utimensat64(t: GuestThread, dfd: int, path: int, times: int, flags: int) -> int:
    return _utimensat(t, dfd, path, times, flags, True)


# ---- renameat2 flags, file systems, space and copies -------------------------------------
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(HOST_MACHINE, 316)
_SYS_STATFS = {"x86_64": 137, "aarch64": 43}.get(HOST_MACHINE, 137)
_SYS_FSTATFS = {"x86_64": 138, "aarch64": 44}.get(HOST_MACHINE, 138)
_SYS_TEE = {"x86_64": 276, "aarch64": 77}.get(HOST_MACHINE, 276)
# struct statfs (include/uapi/asm-generic/statfs.h): the 64-bit one (arm64, x86-64 host),
# arm's with 32-bit words, and arm's statfs64 (packed, aligned 4: 84 bytes)
STATFS_64 = struct.Struct("<qqQQQQQiiqqq4q")
STATFS_ARM = struct.Struct("<IIIIIIIiiIII4I")
STATFS64_ARM = struct.Struct("<IIQQQQQiiIII4I")


def _host_statfs(nr: int, arg: object) -> tuple[int, ...]:
    buf = ctypes.create_string_buffer(STATFS_64.size)
    if _libc.syscall(ctypes.c_long(nr), arg, buf) < 0:
        raise OSError(ctypes.get_errno(), "statfs")
    return STATFS_64.unpack(buf.raw)


def _put_statfs(t: GuestThread, buf: int, vals: tuple[int, ...], layout: struct.Struct) -> int:
    if layout is STATFS_ARM and any(v > 0xFFFFFFFF for v in vals[2:7]):
        return -errno.EOVERFLOW
    if layout is not STATFS_64:
        vals = tuple(v & 0xFFFFFFFF if i not in (7, 8) and not 2 <= i < 7 else v
                     for i, v in enumerate(vals))
    t.mem.write(buf, layout.pack(*vals))
    return 0


def _statfs_layout(t: GuestThread) -> struct.Struct:
    return STATFS_ARM if t.arch.word_size == 4 else STATFS_64


@syscall("statfs")
def sys_statfs(t: GuestThread, path: int, buf: int) -> int:
    vals = _host_statfs(_SYS_STATFS, ctypes.c_char_p(guest_path(t, path)))
    return _put_statfs(t, buf, vals, _statfs_layout(t))


@syscall("fstatfs")
def sys_fstatfs(t: GuestThread, fd: int, buf: int) -> int:
    vals = _host_statfs(_SYS_FSTATFS, ctypes.c_long(s32(fd)))
    return _put_statfs(t, buf, vals, _statfs_layout(t))


@syscall("statfs64", arch="arm")
def sys_statfs64(t: GuestThread, path: int, size: int, buf: int) -> int:
    if size not in (84, 88):          # sys_arm_statfs64: EABI userspace says 88 for 84
        return -errno.EINVAL
    vals = _host_statfs(_SYS_STATFS, ctypes.c_char_p(guest_path(t, path)))
    return _put_statfs(t, buf, vals, STATFS64_ARM)


@syscall("fstatfs64", arch="arm")
def sys_fstatfs64(t: GuestThread, fd: int, size: int, buf: int) -> int:
    if size not in (84, 88):          # sys_arm_statfs64: EABI userspace says 88 for 84
        return -errno.EINVAL
    vals = _host_statfs(_SYS_FSTATFS, ctypes.c_long(s32(fd)))
    return _put_statfs(t, buf, vals, STATFS64_ARM)


@syscall("renameat2")
def sys_renameat2_flags(t: GuestThread, odfd: int, old: int, ndfd: int, new: int,
                        flags: int) -> int:
    if not flags:
        return sys_renameat2(t, odfd, old, ndfd, new, 0)
    # RENAME_NOREPLACE / EXCHANGE / WHITEOUT: equal values everywhere, the host decides
    ret = _libc.syscall(ctypes.c_long(_SYS_RENAMEAT2), ctypes.c_long(s32(odfd)),
                        ctypes.c_char_p(guest_path(t, old)), ctypes.c_long(s32(ndfd)),
                        ctypes.c_char_p(guest_path(t, new)), ctypes.c_long(flags))
    return -ctypes.get_errno() if ret < 0 else 0


@syscall("sync")
def sys_sync(t: GuestThread) -> int:
    os.sync()
    return 0


@syscall("syncfs")
def sys_syncfs(t: GuestThread, fd: int) -> int:
    return -ctypes.get_errno() if _libc.syncfs(s32(fd)) < 0 else 0


def _i64(lo: int, hi: int) -> int:
    return s64(hi << 32 | lo)


_fallocate = _libc.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


@syscall("fallocate", arch="arm")
def sys_fallocate_arm(t: GuestThread, fd: int, mode: int, olo: int, ohi: int, llo: int,
                      lhi: int) -> int:
    return _do_fallocate(t, fd, mode, _i64(olo, ohi), _i64(llo, lhi))


@syscall("fallocate")
def sys_fallocate(t: GuestThread, fd: int, mode: int, off: int, length: int) -> int:
    return _do_fallocate(t, fd, mode, s64(off), s64(length))


def _do_fallocate(t: GuestThread, fd: int, mode: int, off: int, length: int) -> int:
    return -ctypes.get_errno() if _fallocate(s32(fd), s32(mode), off, length) < 0 else 0


@syscall("sync_file_range2", arch="arm")
def sys_sync_file_range2(t: GuestThread, fd: int, flags: int, olo: int, ohi: int, nlo: int,
                         nhi: int) -> int:
    ret = _sync_file_range(s32(fd), _i64(olo, ohi), _i64(nlo, nhi), flags)
    return -ctypes.get_errno() if ret < 0 else 0


@syscall("sync_file_range")
def sys_sync_file_range(t: GuestThread, fd: int, off: int, nbytes: int, flags: int) -> int:
    ret = _sync_file_range(s32(fd), s64(off), s64(nbytes), flags)
    return -ctypes.get_errno() if ret < 0 else 0


@syscall("arm_fadvise64_64", arch="arm")
def sys_fadvise_arm(t: GuestThread, fd: int, advice: int, olo: int, ohi: int, llo: int,
                    lhi: int) -> int:
    os.posix_fadvise(s32(fd), _i64(olo, ohi), _i64(llo, lhi), s32(advice))
    return 0


@syscall("fadvise64")
def sys_fadvise64(t: GuestThread, fd: int, off: int, length: int, advice: int) -> int:
    os.posix_fadvise(s32(fd), s64(off), s64(length), s32(advice))
    return 0


def _off_in(t: GuestThread, ptr: int, fmt: str) -> int | None:
    return struct.unpack(fmt, t.mem.read(ptr, struct.calcsize(fmt)))[0] if ptr else None


def _sendfile(t: GuestThread, out_fd: int, in_fd: int, offp: int, count: int,
              fmt: str) -> int:
    off = _off_in(t, offp, fmt)
    if off is not None and off < 0:
        return -errno.EINVAL
    n = _io(t, os.sendfile, s32(out_fd), s32(in_fd), off, count)
    if offp:
        t.mem.write(offp, struct.pack(fmt, off + n))    # type: ignore[operator]
    return n


@syscall("sendfile")
def sys_sendfile(t: GuestThread, out_fd: int, in_fd: int, offp: int, count: int) -> int:
    return _sendfile(t, out_fd, in_fd, offp, count, "<i" if t.arch.word_size == 4 else "<q")


@syscall("sendfile64")
def sys_sendfile64(t: GuestThread, out_fd: int, in_fd: int, offp: int, count: int) -> int:
    return _sendfile(t, out_fd, in_fd, offp, count, "<q")


@syscall("copy_file_range")
def sys_copy_file_range(t: GuestThread, fd_in: int, off_in: int, fd_out: int, off_out: int,
                        length: int, flags: int) -> int:
    if flags:
        return -errno.EINVAL
    oi, oo = _off_in(t, off_in, "<q"), _off_in(t, off_out, "<q")
    n = _io(t, os.copy_file_range, s32(fd_in), s32(fd_out), length, oi, oo)
    if off_in:
        t.mem.write(off_in, struct.pack("<q", oi + n))       # type: ignore[operator]
    if off_out:
        t.mem.write(off_out, struct.pack("<q", oo + n))      # type: ignore[operator]
    return n


@syscall("splice")
def sys_splice(t: GuestThread, fd_in: int, off_in: int, fd_out: int, off_out: int,
               length: int, flags: int) -> int:
    oi, oo = _off_in(t, off_in, "<q"), _off_in(t, off_out, "<q")
    n = _io(t, os.splice, s32(fd_in), s32(fd_out), length, oi, oo, flags)
    if off_in:
        t.mem.write(off_in, struct.pack("<q", oi + n))       # type: ignore[operator]
    if off_out:
        t.mem.write(off_out, struct.pack("<q", oo + n))      # type: ignore[operator]
    return n


@syscall("tee")
def sys_tee(t: GuestThread, fd_in: int, fd_out: int, length: int, flags: int) -> int:
    def call() -> int:
        return _libc.syscall(ctypes.c_long(_SYS_TEE), ctypes.c_long(s32(fd_in)),
                             ctypes.c_long(s32(fd_out)), ctypes.c_size_t(length),
                             ctypes.c_uint(flags))
    ret = _io(t, call)
    return -ctypes.get_errno() if ret < 0 else ret


@syscall("chroot")
def sys_chroot(t: GuestThread, path: int) -> int:
    # the emulator itself lives in the host's root: a guest chroot is refused (EPERM),
    # except the no-op chroot to the current root
    target = os.path.realpath(guest_path(t, path))
    if not os.path.isdir(target):
        os.stat(target)
        return -errno.ENOTDIR
    return 0 if target == b"/" else -errno.EPERM
