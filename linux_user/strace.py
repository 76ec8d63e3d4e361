"""``-strace`` (and ``-d strace``): qemu-user 7.2's system call log.

Each call is logged as ``<pid> name(args)`` before it runs and `` = result`` after,
in qemu's exact words: the per-call formats, the generic ``name(a,b,c,d,e,f)`` form
(six signed words, whatever the registers hold), ``Unknown syscall N`` for calls
qemu's table does not list, symbolic flags where qemu prints them, and
``-1 errno=N (text)`` for errors. What qemu's printers print, and where they are
quirky (``rmdir("d",)``, futex printing its fifth argument twice, ``%#x`` cutting
64-bit values to 32 bits), is kept as it is: the point is byte-identical logs.

The table below is qemu-user 7.2's ``strace.list`` as built into qemu-arm and
qemu-aarch64 (names and formats read from the Debian binaries): ``_FORMATS`` are
the printf-style entries, ``_CUSTOM`` the calls with their own printer (here a
method of :class:`Strace`), ``_GENERIC`` those printed as six raw words. A name in
none of them is "Unknown syscall". ARM's private calls (0xf0000 and up) are
handled by qemu's cpu loop, outside the log, and are not printed either.

Only :func:`traced_dispatch` is called from the run loop, and only when ``-strace``
is on (the loop then sends every call through it): the normal path pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..common.memory import GuestMemoryError
from .syscalls import dispatch

if TYPE_CHECKING:
    from .process import GuestProcess, GuestThread

# --- qemu-user 7.2's table (linux-user/strace.list as compiled for arm/aarch64) ------

_FORMATS: dict[str, str] = {
    "adjtimex": "%s(%p)", "alarm": "%s(%u)", "capget": "%s(%p,%p)", "capset": "%s(%p,%p)",
    "close": "%s(%d)", "close_range": "%s(%u,%u,%u)", "connect": "%s(%d,%#x,%d)",
    "dup": "%s(%d)", "dup2": "%s(%d,%d)", "dup3": "%s(%d,%d,%d)", "epoll_create": "%s(%d)",
    "epoll_create1": "%s(%d)", "eventfd": "%s(%d)", "eventfd2": "%s(%d,%d)",
    "exit": "%s(%d)\n", "exit_group": "%s(%d)\n", "fchdir": "%s(%d)", "fchmod": "%s(%d,%#o)",
    "fchown": "%s(%d,%d,%d)", "fdatasync": "%s(%d)", "fork": "%s()", "fstatfs": "%s(%d,%p)",
    "fstatfs64": "%s(%d,%p)", "fsync": "%s(%d)", "ftruncate": "%s(%d,%d)",
    "getcpu": "%s(%p,%d)", "getcwd": "%s(%p,%d)", "getdents": "%s(%d,%p,%u)",
    "getdents64": "%s(%d,%p,%u)", "getegid": "%s()", "geteuid": "%s()", "getgid": "%s()",
    "getpgid": "%s(%u)", "getpgrp": "%s()", "getpid": "%s()", "getppid": "%s()",
    "getpriority": "%s(%#x,%#x)", "getrandom": "%s(%p,%u,%u)", "getsid": "%s(%d)",
    "gettid": "%s()", "getuid": "%s()", "listen": "%s(%d,%d)", "mlock": "%s(%p,%u)",
    "mq_getsetattr": "%s(%d,%p,%p)", "mq_notify": "%s(%d,%p)",
    "mq_timedreceive": "%s(%d,%p,%d,%u,%p)", "mq_timedsend": "%s(%d,%p,%d,%u,%p)",
    "munlock": "%s(%p,%u)", "munlockall": "%s()", "read": "%s(%d,%#x,%d)",
    "recvmsg": "%s(%d,%p,%#x)", "setfsgid": "%s(%u)", "setfsgid32": "%s(%u)",
    "setfsuid": "%s(%u)", "setgid": "%s(%u)", "setgid32": "%s(%u)", "setpgid": "%s(%u,%u)",
    "setresgid": "%s(%u,%u,%u)", "setresuid": "%s(%u,%u,%u)", "setresuid32": "%s(%u,%u,%u)",
    "setreuid": "%s(%u,%u)", "setreuid32": "%s(%u,%u)", "setsid": "%s()",
    "sigaltstack": "%s(%p,%p)", "syncfs": "%s(%d)", "timer_settime": "%s(%d,%d,%p,%p)",
    "timer_settime64": "%s(%d,%d,%p,%p)", "umask": "%s(%#o)", "uname": "%s(%p)",
    "ustat": "%s(%#x,%p)", "waitid": "%s(%#x,%d,%p,%#x)", "write": "%s(%d,%#x,%d)",
    "writev": "%s(%d,%p,%#x)", "pidfd_open": "%s(%d,%u)", "pidfd_getfd": "%s(%d,%d,%u)",
    "copy_file_range": "%s(%d,%p,%d,%p,%u,%u)",
}
# TARGET_ABI_FMT_* differ on 64-bit guests
_FORMATS_64: dict[str, str] = {
    "ftruncate": "%s(%d,%ld)", "mlock": "%s(%p,%lu)", "munlock": "%s(%p,%lu)",
    "copy_file_range": "%s(%d,%p,%d,%p,%lu,%u)",
}

_GENERIC = frozenset("""
_sysctl accept4 add_key arm_fadvise64_64 bdflush bpf chown32 delete_module epoll_ctl
epoll_pwait epoll_wait execveat fadvise64 fanotify_init fanotify_mark fchown32
finit_module flock fsetxattr get_mempolicy get_robust_list getegid32 geteuid32 getgid32
getgroups getgroups32 getpeername getresgid getresgid32 getresuid getresuid32 getrlimit
getrusage getsockname getsockopt getuid32 init_module inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_setup io_submit
ioprio_get ioprio_set kcmp kexec_load keyctl lchown32 lookup_dcookie lsetxattr mbind
membarrier memfd_create migrate_pages mincore mlock2 move_pages mremap msgctl msgget msgrcv
msgsnd msync name_to_handle_at nanosleep nfsservctl nice pause pciconfig_iobase
pciconfig_read pciconfig_write perf_event_open personality pipe pipe2 pivot_root poll
ppoll prctl pread64 preadv prlimit64 process_vm_readv process_vm_writev pselect6 ptrace
pwrite64 pwritev quotactl readahead readdir readv reboot recv recvfrom recvmmsg
remap_file_pages renameat2 request_key restart_syscall rt_sigpending rt_sigreturn
rt_sigsuspend rt_sigtimedwait sched_get_priority_max sched_get_priority_min
sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_setaffinity sched_setparam sched_setscheduler sched_yield seccomp select semget
semop semtimedop send sendfile sendfile64 sendmmsg sendmsg sendto set_mempolicy
set_robust_list set_tid_address setdomainname setfsuid32 setgroups setgroups32
sethostname setns setpriority setregid setregid32 setresgid32 setrlimit setsockopt
setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaction signalfd signalfd4
sigpending sigprocmask sigreturn sigsuspend socketpair splice stime swapoff swapon sync
sync_file_range syscall sysfs sysinfo tee time timer_create timer_delete
timer_getoverrun timer_gettime timerfd_create timerfd_gettime timerfd_settime times
ugetrlimit uselib userfaultfd vfork vhangup vmsplice vserver wait4
""".split())

# qemu-user 7.2 has a printer of its own for these, pyqemu prints the generic form
# (arm's _newselect; the others are not in the arm EABI or aarch64 tables)
_NO_PRINTER = frozenset({"_newselect", "ipc", "socketcall"})

# calls whose result qemu prints as an address (print_syscall_ret_addr)
_RET_ADDR = frozenset({"brk", "mmap", "mmap2", "shmat"})

# --- flag and enum tables (qemu's order matters: first match wins) -----------------

Flags = tuple[tuple[int, str], ...]

_ACCESS: Flags = ((0, "F_OK"), (4, "R_OK"), (2, "W_OK"), (1, "X_OK"))
_AT_FILE: Flags = ((0x200, "AT_EACCESS"), (0x100, "AT_SYMLINK_NOFOLLOW"))
_UNLINKAT: Flags = ((0x200, "AT_REMOVEDIR"),)
_MODE: Flags = ((0o140000, "S_IFSOCK"), (0o120000, "S_IFLNK"), (0o100000, "S_IFREG"),
                (0o060000, "S_IFBLK"), (0o040000, "S_IFDIR"), (0o020000, "S_IFCHR"),
                (0o010000, "S_IFIFO"))
_OPEN_ACCESS: Flags = ((0, "O_RDONLY"), (1, "O_WRONLY"), (2, "O_RDWR"))
# arm and aarch64 share these O_* values (arch/arm*/include/uapi/asm/fcntl.h)
_OPEN: Flags = ((0o2000, "O_APPEND"), (0o100, "O_CREAT"), (0o40000, "O_DIRECTORY"),
                (0o200, "O_EXCL"), (0o400000, "O_LARGEFILE"), (0o400, "O_NOCTTY"),
                (0o100000, "O_NOFOLLOW"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"),
                (0o4000000, "__O_SYNC"), (0o1000, "O_TRUNC"), (0o200000, "O_DIRECT"),
                (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH"),
                (0o20040000, "O_TMPFILE"), (0o20000000, "__O_TMPFILE"))
_PROT: Flags = ((0, "PROT_NONE"), (4, "PROT_EXEC"), (1, "PROT_READ"), (2, "PROT_WRITE"),
                (8, "PROT_SEM"), (0x01000000, "PROT_GROWSDOWN"), (0x02000000, "PROT_GROWSUP"))
_MMAP: Flags = ((1, "MAP_SHARED"), (2, "MAP_PRIVATE"), (0x20, "MAP_ANONYMOUS"),
                (0x800, "MAP_DENYWRITE"), (0x10, "MAP_FIXED"), (0x100, "MAP_GROWSDOWN"),
                (0x1000, "MAP_EXECUTABLE"), (0x2000, "MAP_LOCKED"), (0x10000, "MAP_NONBLOCK"),
                (0x4000, "MAP_NORESERVE"), (0x8000, "MAP_POPULATE"))
_CLONE: Flags = ((0x100, "CLONE_VM"), (0x200, "CLONE_FS"), (0x400, "CLONE_FILES"),
                 (0x800, "CLONE_SIGHAND"), (0x1000, "CLONE_PIDFD"), (0x2000, "CLONE_PTRACE"),
                 (0x4000, "CLONE_VFORK"), (0x8000, "CLONE_PARENT"), (0x10000, "CLONE_THREAD"),
                 (0x20000, "CLONE_NEWNS"), (0x40000, "CLONE_SYSVSEM"),
                 (0x80000, "CLONE_SETTLS"), (0x100000, "CLONE_PARENT_SETTID"),
                 (0x200000, "CLONE_CHILD_CLEARTID"), (0x400000, "CLONE_DETACHED"),
                 (0x800000, "CLONE_UNTRACED"), (0x1000000, "CLONE_CHILD_SETTID"),
                 (0x4000000, "CLONE_NEWUTS"), (0x8000000, "CLONE_NEWIPC"),
                 (0x10000000, "CLONE_NEWUSER"), (0x20000000, "CLONE_NEWPID"),
                 (0x40000000, "CLONE_NEWNET"), (0x2000000, "CLONE_NEWCGROUP"),
                 (0x80, "CLONE_NEWTIME"), (0x80000000, "CLONE_IO"))
_STATX_FLAGS: Flags = ((0x1000, "AT_EMPTY_PATH"), (0x800, "AT_NO_AUTOMOUNT"),
                       (0x100, "AT_SYMLINK_NOFOLLOW"), (0, "AT_STATX_SYNC_AS_STAT"),
                       (0x2000, "AT_STATX_FORCE_SYNC"), (0x4000, "AT_STATX_DONT_SYNC"))
_STATX_MASK: Flags = ((0xFFF, "STATX_ALL"), (0x7FF, "STATX_BASIC_STATS"), (1, "STATX_TYPE"),
                      (2, "STATX_MODE"), (4, "STATX_NLINK"), (8, "STATX_UID"),
                      (0x10, "STATX_GID"), (0x20, "STATX_ATIME"), (0x40, "STATX_MTIME"),
                      (0x80, "STATX_CTIME"), (0x100, "STATX_INO"), (0x200, "STATX_SIZE"),
                      (0x400, "STATX_BLOCKS"), (0x800, "STATX_BTIME"))
_FALLOC: Flags = ((1, "FALLOC_FL_KEEP_SIZE"), (2, "FALLOC_FL_PUNCH_HOLE"),
                  (4, "FALLOC_FL_NO_HIDE_STALE"), (8, "FALLOC_FL_COLLAPSE_RANGE"),
                  (0x10, "FALLOC_FL_ZERO_RANGE"), (0x20, "FALLOC_FL_INSERT_RANGE"),
                  (0x40, "FALLOC_FL_UNSHARE_RANGE"))
_MLOCKALL: Flags = ((1, "MCL_CURRENT"), (2, "MCL_FUTURE"), (4, "MCL_ONFAULT"))
_UMOUNT2: Flags = ((1, "MNT_FORCE"), (2, "MNT_DETACH"), (4, "MNT_EXPIRE"))

_CLOCKS = ("CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID",
           "CLOCK_THREAD_CPUTIME_ID", "CLOCK_MONOTONIC_RAW", "CLOCK_REALTIME_COARSE",
           "CLOCK_MONOTONIC_COARSE", "CLOCK_BOOTTIME", "CLOCK_REALTIME_ALARM",
           "CLOCK_BOOTTIME_ALARM", "CLOCK_SGI_CYCLE", "CLOCK_TAI")
_ITIMERS = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
_MADVISE = {0: "MADV_NORMAL", 1: "MADV_RANDOM", 2: "MADV_SEQUENTIAL", 3: "MADV_WILLNEED",
            4: "MADV_DONTNEED", 8: "MADV_FREE", 9: "MADV_REMOVE", 10: "MADV_DONTFORK",
            11: "MADV_DOFORK", 12: "MADV_MERGEABLE", 13: "MADV_UNMERGEABLE",
            14: "MADV_HUGEPAGE", 15: "MADV_NOHUGEPAGE", 16: "MADV_DONTDUMP",
            17: "MADV_DODUMP", 18: "MADV_WIPEONFORK", 19: "MADV_KEEPONFORK",
            20: "MADV_COLD", 21: "MADV_PAGEOUT", 22: "MADV_POPULATE_READ",
            23: "MADV_POPULATE_WRITE"}
_SIGNALS = (None, "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
            "SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM",
            "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN",
            "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH",
            "SIGIO", "SIGPWR", "SIGSYS")
_SI_CODES = {0: "SI_USER", 0x80: "SI_KERNEL", -1: "SI_QUEUE", -2: "SI_TIMER",
             -3: "SI_MESGQ", -4: "SI_ASYNCIO", -5: "SI_SIGIO", -6: "SI_TKILL"}
# qemu's ioctl table entries for the terminal calls guests make most (cmd -> name,
# argument kind: "ptr" printed as a pointer, "int", None for no argument)
_IOCTLS: dict[int, tuple[str, str | None]] = {
    0x5401: ("TCGETS", "ptr"), 0x5402: ("TCSETS", "ptr"), 0x5403: ("TCSETSW", "ptr"),
    0x5404: ("TCSETSF", "ptr"), 0x5409: ("TCSBRK", "int"), 0x540A: ("TCXONC", "int"),
    0x540B: ("TCFLSH", "int"), 0x540E: ("TIOCSCTTY", "int"), 0x540F: ("TIOCGPGRP", "ptr"),
    0x5410: ("TIOCSPGRP", "ptr"), 0x5413: ("TIOCGWINSZ", "ptr"),
    0x5414: ("TIOCSWINSZ", "ptr"), 0x541B: ("FIONREAD", "ptr"), 0x5421: ("FIONBIO", "ptr"),
    0x5422: ("TIOCNOTTY", None), 0x5450: ("FIONCLEX", None), 0x5451: ("FIOCLEX", None),
    0x5452: ("FIOASYNC", "ptr"),
}
_FCNTL_ARG = {0: "F_DUPFD", 2: "F_SETFD", 1030: "F_DUPFD_CLOEXEC", 1024: "F_SETLEASE",
              1026: "F_NOTIFY", 1031: "F_SETPIPE_SZ"}
_FCNTL_NOARG = {1: "F_GETFD", 3: "F_GETFL", 9: "F_GETOWN", 11: "F_GETSIG",
                1025: "F_GETLEASE", 1032: "F_GETPIPE_SZ", 1034: "F_GET_SEALS"}
_FCNTL_PTR_32 = {5: "F_GETLK", 6: "F_SETLK", 7: "F_SETLKW", 12: "F_GETLK64",
                 13: "F_SETLK64", 14: "F_SETLKW64"}
_FCNTL_PTR_64 = {5: "F_GETLK", 6: "F_SETLK", 7: "F_SETLKW"}
_FCNTL_PTR = {36: "F_OFD_GETLK", 37: "F_OFD_SETLK", 38: "F_OFD_SETLKW",
              16: "F_GETOWN_EX", 15: "F_SETOWN_EX"}

ARM_PRIVATE_BASE = 0xF0000


def strerror(err: int) -> str:
    """qemu's target_strerror() for a guest errno."""
    if err == 512:
        return "To be restarted"
    if err == 513:
        return "Successful exit from sigreturn"
    return os.strerror(err)


class Strace:
    """The strace formatter of one process (``-strace``)."""

    def __init__(self, proc: GuestProcess) -> None:
        self.proc = proc
        self.mem = proc.mem
        self.bits = proc.arch.word_size * 8
        self.mask = (1 << self.bits) - 1
        self.lx = "%016x" if self.bits == 64 else "%08x"
        self.names: dict[int, str] = proc.table.names  # type: ignore[union-attr]
        self.arm = proc.arch.name == "arm"
        self.formats = dict(_FORMATS)
        if self.bits == 64:
            self.formats.update(_FORMATS_64)

    # --- C-like conversions of an abi_long -----------------------------------------

    def sword(self, v: int) -> int:
        v &= self.mask
        return v - (1 << self.bits) if v >> (self.bits - 1) else v

    @staticmethod
    def s32(v: int) -> int:
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v

    def conv(self, spec: str, v: int) -> str:
        """One printf conversion applied to an abi_long argument, as glibc prints it
        on the 64-bit host (an ``int`` argument read with ``%ld`` is its unsigned
        32-bit value: that is what qemu-arm prints)."""
        if spec == "d":
            return str(self.s32(v))
        if spec == "u":
            return str(v & 0xFFFFFFFF)
        if spec == "#x":
            v &= 0xFFFFFFFF
            return f"{v:#x}" if v else "0"
        if spec == "x":
            return f"{v & 0xFFFFFFFF:x}"
        if spec == "#o":
            v &= 0xFFFFFFFF
            return f"0{v:o}" if v else "0"
        if spec == "p":
            v &= self.mask
            return f"{v:#x}" if v else "(nil)"
        if spec == "ld":
            return str(self.sword(v)) if self.bits == 64 else str(v & 0xFFFFFFFF)
        if spec == "lu":
            return str(v & self.mask)
        raise ValueError(spec)

    def printf(self, fmt: str, name: str, args: tuple[int, ...]) -> str:
        out = []
        i = 0
        k = 0
        while i < len(fmt):
            c = fmt[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            j = i + 1
            while fmt[j] in "#l":
                j += 1
            spec = fmt[i + 1:j + 1]
            i = j + 1
            if spec == "s":
                out.append(name)
            else:
                out.append(self.conv(spec, args[k] if k < len(args) else 0))
                k += 1
        return "".join(out)

    # --- qemu's print_* helpers ----------------------------------------------------

    def ptr(self, v: int) -> str:
        v &= self.mask
        return "NULL" if v == 0 else "0x" + self.lx % v

    def string(self, addr: int) -> str:
        if addr & self.mask == 0:
            return "NULL"
        try:
            raw = self.mem.read_cstring(addr & self.mask)
        except (GuestMemoryError, OSError, ValueError):
            return self.ptr(addr)
        return '"' + os.fsdecode(raw) + '"'

    def flags(self, table: Flags, value: int) -> str:
        value = self.sword(value)
        if value == 0 and table[0][0] == 0:
            return table[0][1]
        parts = []
        for bit, name in table:
            if bit and value & bit == bit:
                parts.append(name)
                value &= ~bit
        if parts:
            if value:
                parts.append(f"{value & 0xFFFFFFFF:#x}")
            return "|".join(parts)
        return f"{value & 0xFFFFFFFF:#x}" if value & 0xFFFFFFFF else "0"

    @staticmethod
    def enum(names: tuple[str, ...] | dict[int, str], v: int) -> str:
        name = names.get(v) if isinstance(names, dict) else (
            names[v] if 0 <= v < len(names) else None)
        if name is None:
            v &= 0xFFFFFFFF
            return f"{v:#x}" if v else "0"
        return name

    def dirfd(self, v: int) -> str:
        v = self.s32(v)
        return "AT_FDCWD" if v == -100 else str(v)

    def mode(self, v: int) -> str:
        mode = v & 0xFFFFFFFF
        out = ""
        sep = ""
        for bit, name in _MODE:
            if bit & mode == bit:
                out += name
                sep = "|"
                mode &= ~bit
                break
        mode &= ~0o170000
        if mode:
            out += f"{sep}0{mode:o}"
        return out

    def open_flags(self, v: int) -> str:
        text = self.flags(_OPEN_ACCESS, v & 3)
        rest = v & ~3 & 0xFFFFFFFF
        if rest == 0:
            return text
        return text + "|" + self.flags(_OPEN, rest)

    @staticmethod
    def signal(v: int) -> str:
        if 0 <= v < len(_SIGNALS):
            return _SIGNALS[v] or "(null)"
        return str(v)

    def _words(self, addr: int, n: int) -> tuple[int, ...] | None:
        size = self.bits // 8
        try:
            raw = self.mem.read(addr & self.mask, size * n)
        except (GuestMemoryError, OSError, ValueError):
            return None
        return tuple(self.sword(int.from_bytes(raw[i:i + size], "little"))
                     for i in range(0, len(raw), size))

    def timespec(self, addr: int, usec: bool = False) -> str:
        if addr & self.mask == 0:
            return "NULL"
        w = self._words(addr, 2)
        if w is None:
            return self.ptr(addr)
        return f"{{tv_sec = {w[0]},tv_{'usec' if usec else 'nsec'} = {w[1]}}}"

    def timespec64(self, addr: int) -> str:
        if addr & self.mask == 0:
            return "NULL"
        try:
            raw = self.mem.read(addr & self.mask, 16)
        except (GuestMemoryError, OSError, ValueError):
            return self.ptr(addr)
        sec = int.from_bytes(raw[:8], "little", signed=True)
        nsec = int.from_bytes(raw[8:], "little", signed=True)
        return f"{{tv_sec = {sec},tv_nsec = {nsec}}}"

    def itimerval(self, addr: int) -> str:
        if addr & self.mask == 0:
            return "NULL"
        size = 2 * self.bits // 8
        return (f"{{it_interval={self.timespec(addr, True)},"
                f"it_value={self.timespec(addr + size, True)},}}")

    def siginfo(self, addr: int) -> str | None:
        """A guest siginfo at ``addr`` as qemu's print_siginfo (None: unreadable)."""
        try:
            raw = self.mem.read(addr & self.mask, 128)
        except (GuestMemoryError, OSError, ValueError):
            return None
        return self.siginfo_text(raw)

    def siginfo_text(self, raw: bytes, fault: bool = False) -> str:
        """qemu's print_siginfo for the guest siginfo bytes ``raw``; the union member
        shown is chosen as qemu does (faults: si_addr; SIGCHLD; kill/tkill/kernel;
        SIGIO; otherwise a queued value)."""
        def i32(off: int) -> int:
            return int.from_bytes(raw[off:off + 4], "little", signed=True)

        def word(off: int) -> int:
            return self.sword(int.from_bytes(raw[off:off + self.bits // 8], "little"))

        raw = bytes(raw) + bytes(128)
        signo, code = i32(0), i32(8)
        u = 16 if self.bits == 64 else 12
        text = f"{{si_signo={self.signal(signo)}, si_code={_SI_CODES.get(code, code)}"
        pid, uid = i32(u) & 0xFFFFFFFF, i32(u + 4) & 0xFFFFFFFF
        if fault:
            text += f", si_addr={self.ptr(word(u))}"
        elif signo == 17 and code > 0:
            w = self.bits // 8
            text += (f", si_pid={pid}, si_uid={uid}, si_status={i32(u + 8)}, "
                     f"si_utime={word(u + 8 + w)}, si_stime={word(u + 8 + 2 * w)}")
        elif code in (0, -6, 0x80):
            text += f", si_pid={pid}, si_uid={uid}"
        elif signo == 29:
            text += f", si_band={word(u)}, si_fd={i32(u + self.bits // 8)}"
        else:
            text += f", si_pid={pid}, si_uid={uid}, si_sigval={word(u + 8)}"
        return text + "}"

    # --- the line ------------------------------------------------------------------

    def call_text(self, nr: int, a: tuple[int, ...]) -> str | None:
        """What qemu prints before running syscall ``nr`` (None: nothing at all)."""
        if self.arm and nr >= ARM_PRIVATE_BASE:
            return None
        name = self.names.get(nr)
        if name is None:
            return f"Unknown syscall {nr}\n"
        printer = _CUSTOM.get(name)
        if printer is not None:
            return name + "(" + printer(self, a) + ")"
        fmt = self.formats.get(name)
        if fmt is not None:
            return self.printf(fmt, name, a)
        if name in _GENERIC or name in _NO_PRINTER:
            # (_NO_PRINTER: qemu has its own printer there, we print the generic form)
            return name + "(" + ",".join(str(self.sword(x)) for x in a[:6]) + ")"
        return f"Unknown syscall {nr}\n"

    def result_text(self, nr: int, ret: int | None, a: tuple[int, ...]) -> str:
        """What qemu prints once the call returned (``ret`` None: registers untouched,
        which is sigreturn's case: qemu reports its internal -QEMU_ESIGRETURN)."""
        name = self.names.get(nr, "")
        if ret is None:
            ret = -513
        ret = self.sword(ret)
        if -4096 <= ret < 0:
            return f" = -1 errno={-ret} ({strerror(-ret)})\n"
        if name in _RET_ADDR:
            return " = 0x" + self.lx % (ret & self.mask) + "\n"
        extra = _RESULTS.get(name)
        if extra is not None:
            return f" = {ret}{extra(self, a)}\n"
        return f" = {ret}\n"


# --- per-call printers (argument text inside the parentheses) ------------------------

def _p_llseek(s: Strace, a: tuple[int, ...]) -> str:
    whence = {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END"}.get(s.sword(a[4]), "UNKNOWN")
    return (f"{s.conv('d', a[0])},{s.conv('ld', a[1])},{s.conv('ld', a[2])},"
            f"{s.ptr(a[3])},{whence}")


def _p_lseek(s: Strace, a: tuple[int, ...]) -> str:
    whence = {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END", 3: "SEEK_DATA",
              4: "SEEK_HOLE"}.get(s.sword(a[2]))
    return f"{s.conv('d', a[0])},{s.sword(a[1])},{whence or s.conv('#x', a[2])}"


def _p_clone(s: Strace, a: tuple[int, ...]) -> str:
    # arm and aarch64: clone(flags, newsp, parent_tidptr, tls, child_tidptr)
    lx = s.lx
    return (f"{s.flags(_CLONE, a[0] & 0xFFFFFFFF)},child_stack=0x{lx % (a[1] & s.mask)},"
            f"parent_tidptr=0x{lx % (a[2] & s.mask)},tls=0x{lx % (a[3] & s.mask)},"
            f"child_tidptr=0x{lx % (a[4] & s.mask)}")


def _p_execve(s: Strace, a: tuple[int, ...]) -> str:
    parts = [s.string(a[0]), ",{"]
    addr = a[1] & s.mask
    size = s.bits // 8
    while True:
        w = s._words(addr, 1)
        if w is None:
            return "".join(parts)
        if w[0] == 0:
            break
        try:
            parts.append('"' + os.fsdecode(s.mem.read_cstring(w[0] & s.mask)) + '",')
        except (GuestMemoryError, OSError, ValueError):
            pass
        addr += size
    parts.append("NULL}")
    return "".join(parts)


def _p_fcntl(s: Strace, a: tuple[int, ...]) -> str:
    cmd = s.sword(a[1])
    head = s.conv("d", a[0]) + ","
    if cmd in _FCNTL_ARG:
        return head + _FCNTL_ARG[cmd] + "," + str(s.sword(a[2]))
    if cmd in _FCNTL_NOARG:
        return head + _FCNTL_NOARG[cmd]
    if cmd == 4:
        return head + "F_SETFL," + s.open_flags(a[2])
    ptrs = _FCNTL_PTR_64 if s.bits == 64 else _FCNTL_PTR_32
    if cmd in ptrs:
        return head + ptrs[cmd] + "," + s.ptr(a[2])
    if cmd in _FCNTL_PTR:
        return head + _FCNTL_PTR[cmd] + "," + s.ptr(a[2])
    if cmd in (8, 10):
        return head + ("F_SETOWN," if cmd == 8 else "F_SETSIG,") + str(s.sword(a[2])) + ","
    if cmd == 1033:
        return head + "F_ADD_SEALS,0x" + s.lx % (a[2] & s.mask)
    return head + str(s.sword(a[1])) + "," + s.ptr(a[2])


def _p_futex(s: Strace, a: tuple[int, ...]) -> str:
    names = ("FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_FD", "FUTEX_REQUEUE", "FUTEX_CMP_REQUEUE",
             "FUTEX_WAKE_OP", "FUTEX_LOCK_PI", "FUTEX_UNLOCK_PI", "FUTEX_TRYLOCK_PI",
             "FUTEX_WAIT_BITSET", "FUTEX_WAKE_BITSET", "FUTEX_WAIT_REQUEUE_PI",
             "FUTEX_CMP_REQUEUE_PI", "FUTEX_LOCK_PI2")
    cmd = a[1] & 0xFFFFFFFF
    base = cmd & ~(128 | 256)
    if base < len(names):
        op = (("FUTEX_PRIVATE_FLAG|" if cmd & 128 else "")
              + ("FUTEX_CLOCK_REALTIME|" if cmd & 256 else "") + names[base])
    else:
        op = f"0x{cmd:x}"
    timeout = s.timespec(a[3]) if base in (0, 9, 6, 13, 11) else s.ptr(a[3])
    return f"{s.ptr(a[0])},{op},{s.conv('d', a[2])},{timeout},{s.ptr(a[4])},{s.conv('d', a[4])}"


def _p_ioctl(s: Strace, a: tuple[int, ...]) -> str:
    entry = _IOCTLS.get(a[1] & 0xFFFFFFFF)
    if entry is None:
        return f"{s.conv('d', a[0])},{s.conv('#x', a[1])},{s.conv('#x', a[2])}"
    name, kind = entry
    if kind is None:
        return f"{s.conv('d', a[0])},{name}"
    return f"{s.conv('d', a[0])},{name},{s.ptr(a[2]) if kind == 'ptr' else s.conv('d', a[2])}"


def _p_mmap(s: Strace, a: tuple[int, ...]) -> str:
    return (f"{s.ptr(a[0])},{s.conv('d', a[1])},{s.flags(_PROT, a[2])},"
            f"{s.flags(_MMAP, a[3])},{s.conv('d', a[4])},{s.conv('#x', a[5])}")


def _p_open(s: Strace, a: tuple[int, ...]) -> str:
    text = f"{s.string(a[0])},{s.open_flags(a[1])}"
    return text + "," + s.mode(a[2]) if a[1] & 0o100 else text


def _p_openat(s: Strace, a: tuple[int, ...]) -> str:
    text = f"{s.dirfd(a[0])},{s.string(a[1])},{s.open_flags(a[2])}"
    return text + "," + s.mode(a[3]) if a[2] & 0o100 else text


def _p_sigprocmask(s: Strace, a: tuple[int, ...]) -> str:
    how = {0: "SIG_BLOCK", 1: "SIG_UNBLOCK", 2: "SIG_SETMASK"}.get(s.sword(a[0]), "UNKNOWN")
    return f"{how},{s.ptr(a[1])},{s.ptr(a[2])}"


def _p_sigqueueinfo(s: Strace, a: tuple[int, ...]) -> str:
    info = s.siginfo(a[2])
    return f"{s.conv('d', a[0])},{s.signal(s.sword(a[1]))},{info or s.ptr(a[2])}"


def _p_tgsigqueueinfo(s: Strace, a: tuple[int, ...]) -> str:
    info = s.siginfo(a[3])
    return (f"{s.conv('d', a[0])},{s.conv('d', a[1])},{s.signal(s.sword(a[2]))},"
            f"{info or s.ptr(a[3])}")


def _offset64(s: Strace, lo: int, hi: int) -> str:
    # qemu passes target_offset64() through an abi_long parameter: 32 bits survive
    return str((lo & 0xFFFFFFFF) if s.bits == 32 else lo & s.mask)


def _p_truncate64(s: Strace, a: tuple[int, ...]) -> str:
    # arm: regpairs aligned, the offset is in r2/r3
    return f"{s.string(a[0])},{_offset64(s, a[2], a[3])}"


def _p_ftruncate64(s: Strace, a: tuple[int, ...]) -> str:
    return f"{s.conv('d', a[0])},{_offset64(s, a[2], a[3])}"


def _p_fallocate(s: Strace, a: tuple[int, ...]) -> str:
    head = f"{s.conv('d', a[0])},{s.flags(_FALLOC, a[1])},"
    if s.bits == 32:
        return head + f"{_offset64(s, a[2], a[3])},{_offset64(s, a[4], a[5])}"
    return head + f"{s.sword(a[2])},{s.sword(a[3])}"


def _p_socket(s: Strace, a: tuple[int, ...]) -> str:
    domain = {1: "PF_UNIX", 2: "PF_INET", 16: "PF_NETLINK", 17: "PF_PACKET"}.get(
        a[0] & 0xFFFFFFFF, str(s.s32(a[0])))
    t = a[1] & 0xFFFFFFFF
    ttext = {2: "SOCK_DGRAM", 1: "SOCK_STREAM", 3: "SOCK_RAW", 4: "SOCK_RDM",
             5: "SOCK_SEQPACKET", 10: "SOCK_PACKET"}.get(t & 0xF, "")
    if t & 0o2000000:
        ttext += "|SOCK_CLOEXEC"
    if t & 0o4000:
        ttext += "|SOCK_NONBLOCK"
    proto = s.s32(a[2])
    ptext = None
    if a[0] in (2, 10):
        ptext = {0: "IPPROTO_IP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP",
                 255: "IPPROTO_RAW"}.get(proto)
    return f"{domain},{ttext},{ptext or proto}"


def _p_sockaddr(s: Strace, addr: int, length: int) -> str:
    length = s.sword(length)
    try:
        raw = s.mem.read(addr & s.mask, max(length, 2)) if addr & s.mask else None
    except (GuestMemoryError, OSError, ValueError):
        raw = None
    if raw is None:
        return s.ptr(addr) + "," + str(length)
    family = int.from_bytes(raw[:2], "little")
    if family == 1:
        path = raw[2:].split(b"\0", 1)[0]
        text = '{sun_family=AF_UNIX,sun_path="' + os.fsdecode(path) + '"},'
    elif family == 2 and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        text = (f"{{sin_family=AF_INET,sin_port=htons({port}),"
                f"sin_addr=inet_addr(\"{raw[4]}.{raw[5]}.{raw[6]}.{raw[7]}\")}},")
    else:
        data = (raw[2:] + bytes(14))[:14]
        text = (f"{{sa_family={family}, sa_data={{"
                + "".join(f"{b:02x}, " for b in data[:13]) + f"{data[13]:02x}}}}},")
    return text + str(length)


def _p_mq_open(s: Strace, a: tuple[int, ...]) -> str:
    text = f"{s.string(a[0])},{s.open_flags(a[1])}"
    return text + f",{s.mode(a[2])},{s.ptr(a[3])}" if a[1] & 0o100 else text


def _p_pidfd_send_signal(s: Strace, a: tuple[int, ...]) -> str:
    info = s.siginfo(a[2])
    return (f"{s.conv('d', a[0])},{s.signal(s.sword(a[1]))},{info or s.ptr(a[2])},"
            f"{s.conv('u', a[3])}")


def _p_semctl(s: Strace, a: tuple[int, ...]) -> str:
    # qemu's print_ipc_cmd: cmd & 0xff against the IPC/MSG/SHM/SEM command values
    cmd = a[2] & 0xFF
    names = {0: "IPC_RMID", 1: "IPC_SET", 2: "IPC_STAT", 3: "IPC_INFO", 11: "MSG_STAT",
             12: "MSG_INFO", 13: "SHM_STAT", 14: "SHM_INFO", 15: "GETZCNT", 16: "SETVAL",
             17: "SETALL", 18: "SEM_STAT", 19: "SEM_INFO"}
    return (f"{s.sword(a[0])},{s.sword(a[1])},{names.get(cmd, str(cmd))},"
            f"0x{s.lx % (a[3] & s.mask)}")


_SYSLOG = ("SYSLOG_ACTION_CLOSE", "SYSLOG_ACTION_OPEN", "SYSLOG_ACTION_READ",
           "SYSLOG_ACTION_READ_ALL", "SYSLOG_ACTION_READ_CLEAR", "SYSLOG_ACTION_CLEAR",
           "SYSLOG_ACTION_CONSOLE_OFF", "SYSLOG_ACTION_CONSOLE_ON",
           "SYSLOG_ACTION_CONSOLE_LEVEL", "SYSLOG_ACTION_SIZE_UNREAD",
           "SYSLOG_ACTION_SIZE_BUFFER")


def _p_syslog(s: Strace, a: tuple[int, ...]) -> str:
    v = a[0] & s.mask
    action = _SYSLOG[v] if v < len(_SYSLOG) else s.conv("ld", a[0])
    return f"{action},{s.ptr(a[1])},{s.conv('d', a[2])}"


_CUSTOM: dict[str, Callable[[Strace, tuple[int, ...]], str]] = {
    "_llseek": _p_llseek,
    "lseek": _p_lseek,
    "accept": lambda s, a: f"{s.conv('d', a[0])},{s.ptr(a[1])},"
                           + ("NULL" if not a[2] & s.mask else
                              f"[{(s._words(a[2], 1) or (0,))[0] & 0xFFFFFFFF}]"),
    "access": lambda s, a: f"{s.string(a[0])},{s.flags(_ACCESS, a[1])}",
    "acct": lambda s, a: s.string(a[0]),
    "bind": lambda s, a: f"{s.sword(a[0])},{_p_sockaddr(s, a[1], a[2])}",
    "brk": lambda s, a: s.ptr(a[0]),
    "chdir": lambda s, a: s.string(a[0]),
    "chroot": lambda s, a: s.string(a[0]),
    "chmod": lambda s, a: f"{s.string(a[0])},{s.mode(a[1])}",
    "creat": lambda s, a: f"{s.string(a[0])},{s.mode(a[1])}",
    "chown": lambda s, a: f"{s.string(a[0])},{s.conv('d', a[1])},{s.conv('d', a[2])}",
    "lchown": lambda s, a: f"{s.string(a[0])},{s.conv('d', a[1])},{s.conv('d', a[2])}",
    "clock_adjtime": lambda s, a: f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.ptr(a[1])}",
    "clock_gettime": lambda s, a: f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.ptr(a[1])}",
    "clock_getres": lambda s, a: f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.ptr(a[1])}",
    "clock_gettime64": lambda s, a: f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.ptr(a[1])}",
    "clock_settime": lambda s, a: f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.timespec(a[1])}",
    "clock_nanosleep": lambda s, a: (f"{s.enum(_CLOCKS, s.sword(a[0]))},{s.conv('d', a[1])},"
                                     f"{s.timespec(a[2])},{s.timespec(a[3])}"),
    "clone": _p_clone,
    "execve": _p_execve,
    "faccessat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.flags(_ACCESS, a[2])},"
                               f"{s.flags(_AT_FILE, a[3])}"),
    "faccessat2": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},"
                                f"{s.flags(_ACCESS, a[2])},{s.flags(_AT_FILE, a[3])}"),
    "fallocate": _p_fallocate,
    "fchmodat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.mode(a[2])},"
                              f"{s.flags(_AT_FILE, a[3])}"),
    "fchownat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.conv('d', a[2])},"
                              f"{s.conv('d', a[3])},{s.flags(_AT_FILE, a[4])}"),
    "fcntl": _p_fcntl,
    "fcntl64": _p_fcntl,
    "fgetxattr": lambda s, a: (f"{s.conv('d', a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                               f"{a[3] & s.mask}"),
    "flistxattr": lambda s, a: f"{s.conv('d', a[0])},{s.ptr(a[1])},{a[2] & s.mask}",
    "fremovexattr": lambda s, a: f"{s.conv('d', a[0])},{s.string(a[1])}",
    "fstat": lambda s, a: f"{s.conv('d', a[0])},{s.ptr(a[1])}",
    "fstat64": lambda s, a: f"{s.conv('d', a[0])},{s.ptr(a[1])}",
    "fstatat64": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                               f"{s.flags(_AT_FILE, a[3])}"),
    "newfstatat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                                f"{s.flags(_AT_FILE, a[3])}"),
    "ftruncate64": _p_ftruncate64,
    "futex": _p_futex,
    "futimesat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.timespec(a[2], True)},"
                               f"{s.timespec(a[2] + s.bits // 4, True)}"),
    "getitimer": lambda s, a: f"{s.enum(_ITIMERS, s.sword(a[0]))},{s.ptr(a[1])}",
    "setitimer": lambda s, a: (f"{s.enum(_ITIMERS, s.sword(a[0]))},{s.itimerval(a[1])},"
                               f"{s.ptr(a[2])}"),
    "gettimeofday": lambda s, a: f"{s.ptr(a[0])},{s.ptr(a[1])}",
    "settimeofday": lambda s, a: f"{s.timespec(a[0], True)},{s.ptr(a[1])}",
    "getxattr": lambda s, a: (f"{s.string(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                              f"{a[3] & s.mask}"),
    "lgetxattr": lambda s, a: (f"{s.string(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                               f"{a[3] & s.mask}"),
    "listxattr": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])},{a[2] & s.mask}",
    "llistxattr": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])},{a[2] & s.mask}",
    "removexattr": lambda s, a: f"{s.string(a[0])},{s.string(a[1])}",
    "lremovexattr": lambda s, a: f"{s.string(a[0])},{s.string(a[1])}",
    "ioctl": _p_ioctl,
    "kill": lambda s, a: f"{s.conv('d', a[0])},{s.signal(s.sword(a[1]))}",
    "tkill": lambda s, a: f"{s.conv('d', a[0])},{s.signal(s.sword(a[1]))}",
    "tgkill": lambda s, a: (f"{s.conv('d', a[0])},{s.conv('d', a[1])},"
                            f"{s.signal(s.sword(a[2]))}"),
    "link": lambda s, a: f"{s.string(a[0])},{s.string(a[1])}",
    "linkat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.dirfd(a[2])},"
                            f"{s.string(a[3])},{s.flags(_AT_FILE, a[4])}"),
    "stat": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "stat64": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "lstat": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "lstat64": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "madvise": lambda s, a: (f"{s.ptr(a[0])},{s.conv('d', a[1])},"
                             f"{s.enum(_MADVISE, s.sword(a[2]))}"),
    "mkdir": lambda s, a: f"{s.string(a[0])},{s.mode(a[1])}",
    "mkdirat": lambda s, a: f"{s.dirfd(a[0])},{s.string(a[1])},{s.mode(a[2])}",
    "rmdir": lambda s, a: f"{s.string(a[0])},",
    "mknod": lambda s, a: f"{s.string(a[0])},{s.mode(a[1])}",
    "mknodat": lambda s, a: f"{s.dirfd(a[0])},{s.string(a[1])},{s.mode(a[2])}",
    "mlockall": lambda s, a: s.flags(_MLOCKALL, a[0]),
    "mmap": _p_mmap,
    "mmap2": _p_mmap,
    "mount": lambda s, a: (f"{s.string(a[0])},{s.string(a[1])},{s.string(a[2])},"
                           f"{s.conv('#x', a[3])},{s.ptr(a[4])}"),
    "mprotect": lambda s, a: f"{s.ptr(a[0])},{s.conv('d', a[1])},{s.flags(_PROT, a[2])}",
    "munmap": lambda s, a: f"{s.ptr(a[0])},{s.conv('d', a[1])}",
    "mq_unlink": lambda s, a: s.string(a[0]),
    "mq_open": _p_mq_open,
    "pidfd_send_signal": _p_pidfd_send_signal,
    "semctl": _p_semctl,
    "syslog": _p_syslog,
    "open": _p_open,
    "openat": _p_openat,
    "readlink": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])},{s.conv('u', a[2])}",
    "readlinkat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                                f"{s.conv('u', a[3])}"),
    "rename": lambda s, a: f"{s.string(a[0])},{s.string(a[1])}",
    "renameat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.dirfd(a[2])},"
                              f"{s.string(a[3])}"),
    "rt_sigaction": lambda s, a: f"{s.signal(s.sword(a[0]))},{s.ptr(a[1])},{s.ptr(a[2])}",
    "rt_sigprocmask": _p_sigprocmask,
    "rt_sigqueueinfo": _p_sigqueueinfo,
    "rt_tgsigqueueinfo": _p_tgsigqueueinfo,
    "socket": _p_socket,
    "statfs": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    # qemu 7.2 prints statfs64's size argument as the buffer pointer
    "statfs64": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "statx": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.flags(_STATX_FLAGS, a[2])},"
                           f"{s.flags(_STATX_MASK, a[3])},{s.ptr(a[4])}"),
    "symlink": lambda s, a: f"{s.string(a[0])},{s.string(a[1])}",
    "symlinkat": lambda s, a: f"{s.string(a[0])},{s.dirfd(a[1])},{s.string(a[2])}",
    "truncate": lambda s, a: f"{s.string(a[0])},{s.sword(a[1])}",
    "truncate64": _p_truncate64,
    "umount": lambda s, a: s.string(a[0]),
    "umount2": lambda s, a: f"{s.string(a[0])},{s.flags(_UMOUNT2, a[1])}",
    "unlink": lambda s, a: s.string(a[0]),
    "unlinkat": lambda s, a: f"{s.dirfd(a[0])},{s.string(a[1])},{s.flags(_UNLINKAT, a[2])}",
    "unshare": lambda s, a: s.flags(_CLONE, a[0]),
    "utime": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "utimes": lambda s, a: f"{s.string(a[0])},{s.ptr(a[1])}",
    "utimensat": lambda s, a: (f"{s.dirfd(a[0])},{s.string(a[1])},{s.ptr(a[2])},"
                               f"{s.flags(_AT_FILE, a[3])}"),
}

# result decorations after " = N" (qemu's print_syscall_ret_* for successful calls)
_RESULTS: dict[str, Callable[[Strace, tuple[int, ...]], str]] = {
    "clock_gettime": lambda s, a: f" ({s.timespec(a[1])})",
    "clock_getres": lambda s, a: f" ({s.timespec(a[1])})",
    "clock_gettime64": lambda s, a: f" ({s.timespec64(a[1])})",
    "gettimeofday": lambda s, a: (f" ({s.timespec(a[0], True)},"
                                  f"{_timezone(s, a[1])})"),
    "getitimer": lambda s, a: f" ({s.itimerval(a[1])})",
    "setitimer": lambda s, a: f" (old_value = {s.itimerval(a[2])})",
}


def _timezone(s: Strace, addr: int) -> str:
    if addr & s.mask == 0:
        return "NULL"
    try:
        raw = s.mem.read(addr & s.mask, 8)
    except (GuestMemoryError, OSError, ValueError):
        return s.ptr(addr)
    return (f"{{{int.from_bytes(raw[:4], 'little', signed=True)},"
            f"{int.from_bytes(raw[4:], 'little', signed=True)}}}")


def log_taken_signal(proc: GuestProcess, signo: int, info: bytes, *,
                     fault: bool = False) -> None:
    """qemu's ``--- SIGxxx {si_signo=...} ---`` line for a signal about to be delivered
    to a guest handler (for the signal code to call when ``proc.strace`` is on)."""
    st = get_strace(proc)
    proc.log.write(f"--- {st.signal(signo)} {st.siginfo_text(info, fault)} ---\n")
    proc.log.flush()


def get_strace(proc: GuestProcess) -> Strace:
    """The process's formatter (made on first use)."""
    st = proc.extra.get("strace")
    if st is None:
        st = proc.extra["strace"] = Strace(proc)
    return st


def traced_dispatch(t: GuestThread, nr: int, args: list[int]) -> int | None:
    """:func:`~.syscalls.dispatch` with qemu's strace lines around it."""
    proc = t.process
    st = get_strace(proc)
    a = tuple(args[:6]) + (0,) * (6 - len(args[:6]))
    try:
        head = st.call_text(nr, a)
    except Exception as e:  # noqa: BLE001 - a log line never kills the guest
        head = f"{st.names.get(nr, nr)}(<{type(e).__name__}>)"
    log = proc.log
    if head is not None:
        log.write(f"{os.getpid()} {head}")
        log.flush()
    res = dispatch(t, nr, args)
    if head is not None and not head.endswith("\n"):
        try:
            tail = st.result_text(nr, res, a)
        except Exception as e:  # noqa: BLE001
            tail = f" = {res} <{type(e).__name__}>\n"
        log.write(tail)
        log.flush()
    return res


__all__ = ["Strace", "get_strace", "log_taken_signal", "strerror", "traced_dispatch"]
