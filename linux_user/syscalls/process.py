"""Process and identity syscalls: exit, ids, uname, limits, TLS, getrandom; fork,
vfork and clone as a process, wait4/waitid, execve/execveat.

A guest process is a host process: fork is the host's ``fork()`` (the child keeps the
calling thread only, as Linux's does), so guest children are host children and wait4
and waitid are the host's with their structs translated. vfork runs as a fork whose
parent waits until the child has exec'd or ended (a close-on-exec pipe tells it).

execve of a guest ELF (arm or aarch64, whichever this emulator is) re-executes
pyqemu-<arch> on it with the same -L, -d, -strace, -r and -cpu options, ``-0`` for the
guest's argv[0] and exactly the guest's environment; anything else (a host ELF, a
script) is the host's execve, so a ``#!`` script's interpreter runs natively.

rseq is deliberately not registered: -ENOSYS with the "Unsupported syscall" line under
-d unimp, exactly as qemu-user 7.2 (glibc then goes on without it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import syscall
from .structs import HOST_MACHINE, s32
from .threads import (
    CLONE_CHILD_CLEARTID,
    CLONE_CHILD_SETTID,
    CLONE_PARENT_SETTID,
    CLONE_SETTLS,
    CLONE_THREAD,
    CLONE_VFORK,
    CLONE_VM,
    CSIGNAL,
)

if TYPE_CHECKING:
    from ..process import GuestThread

_RLIMIT_KEEP = {resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK}
_RLIM_INF = (1 << 64) - 1


@syscall("exit_group")
def sys_exit_group(t: GuestThread, status: int) -> None:
    t.exited = True
    t.process.set_exit(status & 0xFF)
    t.stop()
    return None


@syscall("getpid")
def sys_getpid(t: GuestThread) -> int:
    return t.process.pid


@syscall("getppid")
def sys_getppid(t: GuestThread) -> int:
    return os.getppid()


@syscall("getuid", "getuid32")
def sys_getuid(t: GuestThread) -> int:
    return os.getuid()


@syscall("geteuid", "geteuid32")
def sys_geteuid(t: GuestThread) -> int:
    return os.geteuid()


@syscall("getgid", "getgid32")
def sys_getgid(t: GuestThread) -> int:
    return os.getgid()


@syscall("getegid", "getegid32")
def sys_getegid(t: GuestThread) -> int:
    return os.getegid()


@syscall("set_tid_address")
def sys_set_tid_address(t: GuestThread, ptr: int) -> int:
    t.clear_child_tid = ptr
    return t.tid


@syscall("set_robust_list")
def sys_set_robust_list(t: GuestThread, head: int, length: int) -> int:
    if length != 3 * t.arch.word_size:
        return -errno.EINVAL
    t.robust_list = (head, length)
    return 0


@syscall("ARM_set_tls", arch="arm")
def sys_arm_set_tls(t: GuestThread, value: int) -> int:
    t.set_tls(value)
    return 0


@syscall("ARM_get_tls", arch="arm")
def sys_arm_get_tls(t: GuestThread) -> int:
    return t.reg(t.arch.reg_tls)


@syscall("ARM_cacheflush", arch="arm")
def sys_arm_cacheflush(t: GuestThread, start: int, end: int, flags: int) -> int:
    t.uc.ctl_remove_cache(start, end)
    return 0


@syscall("uname")
def sys_uname(t: GuestThread, buf: int) -> int:
    host = os.uname()
    release = t.process.uname_release or host.release
    fields = ("Linux", host.nodename, release, host.version, t.arch.uname_machine, "(none)")
    domain = "(none)"
    try:
        with open("/proc/sys/kernel/domainname") as f:
            domain = f.read().strip() or domain
    except OSError:
        pass
    fields = fields[:5] + (domain,)
    t.mem.write(buf, b"".join(f.encode()[:64].ljust(65, b"\0") for f in fields))
    return 0


@syscall("prlimit64")
def sys_prlimit64(t: GuestThread, pid: int, res: int, new: int, old: int) -> int:
    pid = s32(pid)
    if pid not in (0, t.process.pid):
        return -errno.EPERM
    cur = resource.getrlimit(res)
    if new:
        soft, hard = struct.unpack("<QQ", t.mem.read(new, 16))
        if res not in _RLIMIT_KEEP:
            conv = [-1 if v == _RLIM_INF else v for v in (soft, hard)]
            resource.setrlimit(res, (conv[0], conv[1]))
    if old:
        t.mem.write(old, struct.pack("<QQ", *(_RLIM_INF if v < 0 else v for v in cur)))
    return 0


@syscall("getrlimit", "ugetrlimit")
def sys_getrlimit(t: GuestThread, res: int, rlim: int) -> int:
    cur = resource.getrlimit(res)
    mask = t.arch.mask
    fmt = "<II" if t.arch.word_size == 4 else "<QQ"
    t.mem.write(rlim, struct.pack(fmt, *(mask if v < 0 or v > mask else v for v in cur)))
    return 0


@syscall("getrandom")
def sys_getrandom(t: GuestThread, buf: int, count: int, flags: int) -> int:
    data = os.getrandom(min(count, 1 << 25), flags & 0x3)
    t.mem.write(buf, data)
    return len(data)


@syscall("sched_yield")
def sys_sched_yield(t: GuestThread) -> int:
    return 0


@syscall("umask")
def sys_umask(t: GuestThread, mask: int) -> int:
    return os.umask(mask & 0o777)


@syscall("getpgid")
def sys_getpgid(t: GuestThread, pid: int) -> int:
    return os.getpgid(s32(pid))


@syscall("getpgrp")
def sys_getpgrp(t: GuestThread) -> int:
    return os.getpgrp()


@syscall("getsid")
def sys_getsid(t: GuestThread, pid: int) -> int:
    return os.getsid(s32(pid))


@syscall("setpgid")
def sys_setpgid(t: GuestThread, pid: int, pgid: int) -> int:
    os.setpgid(s32(pid), s32(pgid))
    return 0


@syscall("setsid")
def sys_setsid(t: GuestThread) -> int:
    return os.setsid()


class _HostSysinfo(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3),
                ("totalram", ctypes.c_ulong), ("freeram", ctypes.c_ulong),
                ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong),
                ("procs", ctypes.c_ushort), ("pad", ctypes.c_ushort),
                ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                ("mem_unit", ctypes.c_uint), ("_f", ctypes.c_char * 8)]


@syscall("sysinfo")
def sys_sysinfo(t: GuestThread, buf: int) -> int:
    info = _HostSysinfo()
    if ctypes.CDLL(None, use_errno=True).sysinfo(ctypes.byref(info)) != 0:
        return -ctypes.get_errno()
    sizes = [info.totalram, info.freeram, info.sharedram, info.bufferram, info.totalswap,
             info.freeswap, info.totalhigh, info.freehigh]
    unit = info.mem_unit
    if t.arch.word_size == 4:
        # as the kernel's compat sysinfo: a bigger mem_unit until the sizes fit 32 bits
        shift = 0
        while max(sizes) >> shift > 0xFFFFFFFF:
            shift += 1
        sizes = [v >> shift for v in sizes]
        unit <<= shift
        data = struct.pack("<iIIIIIIIIIHHIII8x", info.uptime, *info.loads, *sizes[:6],
                           info.procs, 0, sizes[6], sizes[7], unit)
    else:
        data = struct.pack("<qQQQQQQQQQHH4xQQI4x", info.uptime, *info.loads, *sizes[:6],
                           info.procs, 0, sizes[6], sizes[7], unit)
    t.mem.write(buf, data)
    return 0


@syscall("sched_getaffinity")
def sys_sched_getaffinity(t: GuestThread, pid: int, size: int, mask: int) -> int:
    cpus = os.sched_getaffinity(s32(pid))
    word = t.arch.word_size
    nbytes = max(word, -(-(max(cpus) + 1) // (8 * word)) * word)
    if size < nbytes or size % word:
        return -errno.EINVAL
    bits = sum(1 << c for c in cpus)
    t.mem.write(mask, bits.to_bytes(nbytes, "little"))
    return nbytes


# ---- fork, vfork, clone as a process ---------------------------------------------------
SIGCHLD = 17
_U32 = struct.Struct("<I")
_VFORK_FD = "vfork_fd"          # proc.extra key: the child's end of the vfork pipe


def _drop_vfork_fd(proc: object) -> None:
    fd = proc.extra.pop(_VFORK_FD, None)  # type: ignore[attr-defined]
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def fork_process(t: GuestThread, flags: int, child_stack: int, ptid: int, ctid: int,
                 tls: int) -> int:
    """clone without CLONE_THREAD (and fork, vfork): a host fork. Returns the child's
    pid in the parent, 0 in the child, or -errno. The child is this whole emulator
    with the calling thread only (Linux's semantics too); CLONE_VFORK makes the parent
    wait for the child's exec or exit. Exit signals: SIGCHLD or none (a host child
    always signals SIGCHLD; another signal is refused with EINVAL)."""
    if flags & CLONE_THREAD or flags & CSIGNAL not in (0, SIGCHLD):
        return -errno.EINVAL
    proc = t.process
    gate = None
    if flags & CLONE_VFORK:
        rd, wr = os.pipe2(os.O_CLOEXEC)
        # out of the guest's usual fd range (guest fds are host fds)
        gate = (os.dup2(rd, 1000 + rd) if rd < 1000 else rd,
                os.dup2(wr, 1000 + wr) if wr < 1000 else wr)
        for fd, keep in ((rd, gate[0]), (wr, gate[1])):
            if fd != keep:
                os.close(fd)
    with proc.sig_lock, proc.futex_lock:
        pid = os.fork()
    if pid:
        if gate is not None:
            os.close(gate[1])
            try:
                with t.blocking():
                    while os.read(gate[0], 1):
                        pass
            finally:
                os.close(gate[0])
        if flags & CLONE_PARENT_SETTID:
            t.mem.write(ptid, _U32.pack(pid))
        return pid
    # the child
    _drop_vfork_fd(proc)            # a vfork child forking again: not the grandchild's
    proc.after_fork(t)
    if gate is not None:
        os.close(gate[0])
        proc.extra[_VFORK_FD] = gate[1]
    if child_stack:
        t.set_reg(t.arch.reg_sp, child_stack)
    if flags & CLONE_SETTLS:
        t.set_tls(tls)
    if flags & CLONE_CHILD_SETTID:
        t.mem.write(ctid, _U32.pack(t.tid))
    if flags & CLONE_CHILD_CLEARTID:
        t.clear_child_tid = ctid
    return 0


def clone_process(t: GuestThread, flags: int, newsp: int, ptid: int, tls: int,
                  ctid: int) -> int:
    """The clone handler's entry (its argument order: flags, stack, ptid, tls, ctid)."""
    return fork_process(t, flags, newsp, ptid, ctid, tls)


@syscall("fork", arch="arm")
def sys_fork(t: GuestThread) -> int:
    return fork_process(t, SIGCHLD, 0, 0, 0, 0)


@syscall("vfork", arch="arm")
def sys_vfork(t: GuestThread) -> int:
    return fork_process(t, CLONE_VM | CLONE_VFORK | SIGCHLD, 0, 0, 0, 0)


# ---- wait4, waitid ---------------------------------------------------------------------
def rusage_bytes(t: GuestThread, ru: os.struct_rusage | None) -> bytes:
    """A guest ``struct rusage``: two timevals and 14 longs, all of the guest's word."""
    fmt = "<" + ("i" if t.arch.word_size == 4 else "q") * 18
    if ru is None:
        return bytes(struct.calcsize(fmt))
    ut, st = ru.ru_utime, ru.ru_stime
    return struct.pack(fmt, int(ut), int(ut % 1 * 1e6), int(st), int(st % 1 * 1e6),
                       ru.ru_maxrss, ru.ru_ixrss, ru.ru_idrss, ru.ru_isrss, ru.ru_minflt,
                       ru.ru_majflt, ru.ru_nswap, ru.ru_inblock, ru.ru_oublock,
                       ru.ru_msgsnd, ru.ru_msgrcv, ru.ru_nsignals, ru.ru_nvcsw,
                       ru.ru_nivcsw)


@syscall("wait4")
def sys_wait4(t: GuestThread, pid: int, status: int, options: int, rusage: int) -> int:
    """The host's wait4 (guest children are host children); a blocking wait lets the
    other guest threads run."""
    if options & os.WNOHANG:
        got, st, ru = os.wait4(s32(pid), s32(options))
    else:
        with t.blocking():
            got, st, ru = os.wait4(s32(pid), s32(options))
    if got and status:
        t.mem.write(status, _U32.pack(st & 0xFFFFFFFF))
    if got and rusage:
        t.mem.write(rusage, rusage_bytes(t, ru))
    return got


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_WAITID = {"x86_64": 247, "aarch64": 95}.get(HOST_MACHINE, 247)


class _HostRusage(ctypes.Structure):
    _fields_ = [("tv", ctypes.c_long * 4), ("rest", ctypes.c_long * 14)]


@syscall("waitid")
def sys_waitid(t: GuestThread, idtype: int, upid: int, infop: int, options: int,
               rusage: int) -> int:
    """The host's waitid (a 64-bit host siginfo: pid/uid/status at 16, utime/stime at
    32), translated to the guest's siginfo and rusage."""
    hinfo = ctypes.create_string_buffer(128)
    hru = _HostRusage()
    args = (ctypes.c_long(_SYS_WAITID), ctypes.c_long(s32(idtype)), ctypes.c_long(s32(upid)),
            hinfo, ctypes.c_long(s32(options)), ctypes.byref(hru))
    if options & os.WNOHANG:
        res = _libc.syscall(*args)
    else:
        with t.blocking():
            res = _libc.syscall(*args)
    if res < 0:
        return -ctypes.get_errno()
    raw = hinfo.raw
    signo, _err, code = struct.unpack_from("<iii", raw, 0)
    pid, uid, st = struct.unpack_from("<iIi", raw, 16)
    utime, stime = struct.unpack_from("<qq", raw, 32)
    if infop:
        from ..sigframe import pack_siginfo

        t.mem.write(infop, pack_siginfo(t.arch.word_size, signo, code, pid=pid, uid=uid,
                                        status=st, utime=utime, stime=stime))
    if rusage:
        tv = hru.tv
        word = t.arch.word_size
        fmt = "<" + ("i" if word == 4 else "q") * 18
        t.mem.write(rusage, struct.pack(fmt, tv[0], tv[1], tv[2], tv[3], *hru.rest))
    return res


# ---- execve, execveat ------------------------------------------------------------------
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
_GUEST_MACHINES = {(1, 40): "arm", (2, 183): "aarch64"}   # (ELF class, e_machine)


def _string_array(t: GuestThread, addr: int) -> list[bytes]:
    word = t.arch.word_size
    out: list[bytes] = []
    if not addr:
        return out
    while True:
        ptr = int.from_bytes(t.mem.read(addr, word), "little")
        if not ptr:
            return out
        out.append(t.mem.read_cstring(ptr))
        addr += word


def guest_elf_arch(head: bytes) -> str | None:
    """The guest architecture of an ELF header ("arm", "aarch64"), None otherwise."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:
        return None
    return _GUEST_MACHINES.get((head[4], int.from_bytes(head[18:20], "little")))


def _emulator_argv(t: GuestThread, arch: str, path: bytes, argv: list[bytes]) -> list[bytes]:
    """The command line that runs guest program ``path`` under pyqemu-<arch> with this
    emulator's options."""
    proc = t.process
    opts = proc.extra.get("options")
    cmd = [os.fsencode(sys.executable), b"-I", b"-c",
           b"import sys; sys.argv[0] = 'pyqemu-%s'; from pyqemu.linux_user.main import run; "
           b"run('%s', sys.argv[1:])" % (arch.encode(), arch.encode())]
    if proc.ld_prefix:
        cmd += [b"-L", os.fsencode(proc.ld_prefix)]
    if proc.uname_release:
        cmd += [b"-r", os.fsencode(proc.uname_release)]
    log_file = getattr(opts, "log_file", None)
    # -D: passed on when it names a file per process (%d) or a non-regular file; the
    # child would truncate a shared regular log file (qemu's -D truncates), so then
    # the exec'd program runs without logging
    same_log = not log_file or "%d" in log_file or not os.path.isfile(log_file)
    if same_log:
        if proc.strace:
            cmd.append(b"-strace")
        items = sorted(i for i in proc.log_items if i != "strace")
        if items:
            cmd += [b"-d", ",".join(items).encode()]
        if log_file:
            cmd += [b"-D", os.fsencode(log_file)]
    if opts is not None and getattr(opts, "cpu", None) and arch == proc.arch.name:
        cmd += [b"-cpu", os.fsencode(opts.cpu)]
    cmd += [b"-0", argv[0] if argv else path, b"--", path]
    return cmd + argv[1:]


def _prepare_host_exec(t: GuestThread) -> Callable[[], None]:
    """What the new program inherits from this process: the guest's signal mask, and
    SIG_IGN where the guest ignores a signal (default everywhere else). Returns the
    function that undoes it (when the exec fails)."""
    from .signals import SIG_IGN, action

    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    saved: dict[int, object] = {}
    for signo in range(1, 65):
        if signo in (signal.SIGKILL, signal.SIGSTOP) or 32 <= signo < signal.SIGRTMIN:
            continue
        try:
            saved[signo] = signal.getsignal(signo)
            ignore = action(t.process, signo).handler == SIG_IGN
            signal.signal(signo, signal.SIG_IGN if ignore else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    mask = {s for s in range(1, 65) if t.sigmask >> (s - 1) & 1
            and s not in (signal.SIGKILL, signal.SIGSTOP) and not 32 <= s < signal.SIGRTMIN}
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def undo() -> None:
        for signo, handler in saved.items():
            try:
                signal.signal(signo, handler)  # type: ignore[arg-type]
            except (OSError, ValueError, TypeError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)

    return undo


def _guest_interpreter(t: GuestThread, head: bytes, path: bytes,
                       argv: list[bytes]) -> list[bytes] | None:
    """A ``#!`` script whose interpreter is a guest ELF: the command that runs it under
    pyqemu with the argv the kernel would build (interpreter, its one optional
    argument, the script, the script's arguments). None for a host interpreter."""
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        return None
    parts = line.split(None, 1)
    interp = parts[0]
    try:
        with open(interp, "rb") as f:
            iarch = guest_elf_arch(f.read(64))
    except OSError:
        return None
    if iarch is None:
        return None
    extra = [parts[1].strip(b" \t")] if len(parts) > 1 else []
    return _emulator_argv(t, iarch, interp, [interp, *extra, path, *argv[1:]])


def _execve(t: GuestThread, dfd: int, path: bytes, argv: list[bytes], envp: list[bytes],
            flags: int) -> int:
    proc = t.process
    if path in (b"/proc/self/exe", b"/proc/%d/exe" % proc.pid):
        path = os.fsencode(proc.exec_path)
    if not path:
        if not flags & AT_EMPTY_PATH:
            return -errno.ENOENT
        fd = dfd
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (
            os.O_NOFOLLOW if flags & AT_SYMLINK_NOFOLLOW else 0),
            dir_fd=None if dfd == AT_FDCWD or path.startswith(b"/") else dfd)
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000) or not os.access(
                f"/proc/self/fd/{fd}", os.X_OK):
            return -errno.EACCES
        head = os.pread(fd, 256, 0)           # the kernel's BINPRM_BUF_SIZE
        if not path:
            path = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
        elif dfd != AT_FDCWD and not path.startswith(b"/"):
            path = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        if fd != dfd:
            os.close(fd)
    arch = guest_elf_arch(head)
    env = dict(e.split(b"=", 1) if b"=" in e else (e, b"") for e in envp)
    _drop_vfork_fd(proc)
    cmd = _emulator_argv(t, arch, path, argv) if arch is not None else None
    if arch is None and head.startswith(b"#!"):
        cmd = _guest_interpreter(t, head, path, argv)
    undo = _prepare_host_exec(t)
    try:
        if cmd is not None:
            os.execve(cmd[0], cmd, env)
        os.execve(path, argv or [path], env)
    finally:
        undo()             # only when the exec failed
    return -errno.ENOEXEC  # not reached


@syscall("execve")
def sys_execve(t: GuestThread, path: int, argv: int, envp: int) -> int:
    return _execve(t, AT_FDCWD, t.mem.read_cstring(path), _string_array(t, argv),
                   _string_array(t, envp), 0)


@syscall("execveat")
def sys_execveat(t: GuestThread, dfd: int, path: int, argv: int, envp: int,
                 flags: int) -> int:
    return _execve(t, s32(dfd), t.mem.read_cstring(path), _string_array(t, argv),
                   _string_array(t, envp), flags)
