"""Process and identity syscalls: exit, ids, uname, limits, TLS, getrandom.

rseq is deliberately not registered: -ENOSYS with the "Unsupported syscall" line under
-d unimp, exactly as qemu-user 7.2 (glibc then goes on without it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
from typing import TYPE_CHECKING

from . import syscall
from .structs import s32

if TYPE_CHECKING:
    from ..process import GuestThread

_RLIMIT_KEEP = {resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK}
_RLIM_INF = (1 << 64) - 1


@syscall("exit")
def sys_exit(t: GuestThread, status: int) -> None:
    proc = t.process
    t.exited = True
    if len(proc.threads) <= 1:
        proc.set_exit(status & 0xFF)
    t.stop()
    return None


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


@syscall("gettid")
def sys_gettid(t: GuestThread) -> int:
    return t.tid


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
