"""What each guest program is run with and what it must say (the reference being qemu-user).

``PROGRAMS`` maps a program's name to its ``Spec``: the arguments the tests
run it with, lines its standard output must contain, its exit status, and
lines its standard error must contain. A line is a string, or a dict by
architecture when the two differ. Every C program of tests/guests/linux/ and
Go program of tests/guests/go/ has an entry (a test checks that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Line = str | dict[str, str]


@dataclass(frozen=True)
class Spec:
    args: tuple[str, ...] = ()
    stdout: tuple[Line, ...] = ()
    exit: int = 0
    stderr: tuple[Line, ...] = ()
    go: bool = False
    # stderr must be equal under qemu and pyqemu too (programs whose stderr is
    # the emulator's own report, e.g. an uncaught signal)
    compare_stderr: bool = False
    notes: str = field(default="", compare=False)

    def expected_stdout(self, arch: str) -> list[str]:
        return [_pick(line, arch) for line in self.stdout]

    def expected_stderr(self, arch: str) -> list[str]:
        return [_pick(line, arch) for line in self.stderr]


def _pick(line: Line, arch: str) -> str:
    return line if isinstance(line, str) else line[arch]


# Guests run only by their own test (signals sent from outside, input fed on cue,
# time slicing ...): name -> that test. They have no Spec.
DRIVEN: dict[str, str] = {
    "sig_external": "tests/linux_user/test_signals_external.py",
    "exec_self": "tests/linux_user/test_guests_exec.py",
    "stack": "tests/linux_user/test_main.py",
    "threads_spin": "tests/linux_user/test_threads.py",
    "stop_exact": "tests/linux_user/test_stop_exact.py",
}

MACHINE = {"arm": "uname machine: armv7l", "aarch64": "uname machine: aarch64"}
DONE = "failures: 0"

PROGRAMS: dict[str, Spec] = {
    "hello": Spec(stdout=("hello from the guest",)),
    "args_env": Spec(
        args=("one", "two words", "", "exit", "3"),
        stdout=(
            "argc: 6",
            "argv[1]: [one]",
            "argv[2]: [two words]",
            "argv[3]: []",
            "ok: argv is NULL-terminated",
            "env: [LC_ALL=C]",
            "envc: 3",
            "getenv PATH: /usr/local/bin:/usr/bin:/bin",
            "exiting with 3",
        ),
        exit=3,
    ),
    "files": Spec(
        stdout=(
            "ok: pread at 0 gives 'hello'",
            "content: HELLO world",
            "fstat size=1001 mode=644 nlink=1 reg=1 blksize>0=1",
            "statx size=100 mode=644 type-reg=1 nlink=1 basic=1",
            "ok: readlinkat gives 'a'",
            "ok: nlink is 2 after link",
            "atime=1000000000 mtime=1234567890 mtime_nsec=500",
            "ok: rmdir of a non-empty directory: ENOTEMPTY",
            "entries: . .. a b link sub",
            "entries after rename: . .. a b g link",
            "statfs agrees with fstatfs: type=1 bsize=1 namelen=255",
            "size after fallocate: 8192",
            "sendfile sent: copy me,",
            "copy_file_range copied: please",
            "splice+tee: copycopy",
            "ok: renameat2 RENAME_EXCHANGE",
            "ok: truncate64 past 4 GiB",
            "umask: old=022 now=027",
            "entries at the end: . ..",
            DONE,
        ),
    ),
    "mem": Spec(
        stdout=(
            "page size: 4096",
            "malloc churn checksum: 76dd8e5b",
            "64 MiB touch sum: 2088960",
            "ok: mremap keeps the contents",
            "ok: MADV_DONTNEED zeroes exactly its range",
            "ok: shared write reaches the file",
            "ok: child's write to MAP_SHARED is seen by the parent",
            "ok: sbrk shrinks",
            DONE,
        ),
    ),
    "proc": Spec(
        stdout=(
            "wait4: exited=1 status=7",
            "waitid: pid-matches=1 signo=17 code=CLD_EXITED status=42",
            "killed child: signaled=1 termsig=15",
            "vfork: status=3",
            "host sh says arg0 arg1",
            "execve /bin/sh: status=9",
            "RLIMIT_NOFILE soft: 200",
            "uname sysname: Linux",
            MACHINE,
            "ok: getrandom 64 bytes",
            DONE,
        ),
    ),
    "time": Spec(
        stdout=(
            "ok: monotonic clock never goes back over 1000 reads",
            "ok: nanosleep slept at least 20 ms",
            "ok: woke up after the absolute deadline",
            "one-shot expirations: 1",
            "ok: periodic timer fired at least 3 times",
            DONE,
        ),
    ),
    "signals": Spec(
        stdout=(
            "after raise: count=1 code=SI_TKILL blocked-inside=1",
            "after kill: count=2 code=SI_USER pid-ok=1",
            "after sigqueue: count=3 code=SI_QUEUE value=42",
            "after tgkill: count=4 code=SI_TKILL",
            "while blocked: count=4",
            "after unblock: count=5",
            "handler not run for the waited signal: count=5",
            "nested: usr1=1 usr2-inside=1",
            "plain handler: sig=12 x=78.00 y=85",
            "after the signal() handler: ran=1 k=42 f=3.0 usr2-blocked=0",
            "SA_ONSTACK handler ran: 1 on the alternate stack: 1",
            "without the alternate stack: on it=0",
            "SIGALRM from setitimer: count=1 code=SI_KERNEL",
            "periodic SIGALRM reached 4: 1",
            "alarm(0) returns the remaining seconds: 5",
            "SIGCHLD: count=1 code=CLD_EXITED status=6",
            "child raising SIGTERM: signaled=1 sig=15",
            "SIGPIPE from write: count=1 code=SI_USER pid-ok=1",
            "after send with MSG_NOSIGNAL: count=1",
            "after send: count=2",
            "after write to the socket: count=3",
            "child writing to a broken pipe: signaled=1 sig=13",
            DONE,
        ),
    ),
    "segv_recover": Spec(
        stdout=(
            "read page 0: no fault",
            "write read-only page 1: SIGSEGV SEGV_ACCERR at base+4104",
            "read read-only page 1: no fault",
            "read PROT_NONE page 2: SIGSEGV SEGV_ACCERR at base+8208",
            "write PROT_NONE page 2: SIGSEGV SEGV_ACCERR at base+8216",
            "read unmapped page 3: SIGSEGV SEGV_MAPERR at base+12320",
            "write NULL+64: SIGSEGV SEGV_MAPERR at base+64",
            "write page 1 after mprotect: no fault",
            "loop of 100 faults, each at its own address: 100",
            "faults caught: 105",
            DONE,
        ),
    ),
    "segv_die": Spec(
        stdout=("ok: RLIMIT_CORE 0", "about to store to NULL"),
        exit=-11,
        stderr=("qemu: uncaught target signal 11 (Segmentation fault) - core dumped",),
        compare_stderr=True,
    ),
    "fpe_ill": Spec(
        stdout=(
            "udf: signal SIGILL",
            "unaligned exclusive load: SIGBUS BUS_ADRALN",
            {
                "arm": "integer division by zero: SIGFPE SI_TKILL",
                "aarch64": "integer division by zero: no signal, result 0",
            },
            "raise SIGFPE: caught SI_TKILL",
            "raise SIGTRAP: caught SIGTRAP",
            DONE,
        ),
    ),
    "threads": Spec(
        stdout=(
            "all 8 threads reached the start gate",
            "join values sum: 828",
            "mutex counter: 160000",
            "atomic counter: 160000",
            "main thread's TLS untouched: 99",
            "pthread_once ran 1 time(s); barrier serial threads: 1",
            "thread ids distinct and not the pid: 1",
            "detached thread ran: 1",
            DONE,
        ),
    ),
    "poll_io": Spec(
        stdout=(
            "ok: poll: POLLIN",
            "ok: select: readable and writable",
            "ok: dup3 to fd 100",
            "epoll event: events=1 data=1122334455667788",
            "ok: edge-triggered: no second event",
            "eventfd counter: 7",
            "ok: EFD_SEMAPHORE reads 1 twice",
            "ok: poll with a timeout on an empty pipe: 0",
            "ok: epoll_wait without a timeout: ready fd",
            "ok: select on fd 200",
            "ok: F_OFD_GETLK from another open file sees it (l_pid -1)",
            "ok: F_SETOWN / F_GETOWN",
            "ok: poll after the writers closed: POLLHUP",
            DONE,
        ),
    ),
    "io_threads": Spec(
        stdout=(
            "ok: kill(SIGUSR1) for the signalfd reader",
            "read: r-ok poll: p-ok epoll: e-ok accept+recv: a-ok signalfd: 10",
            DONE,
        ),
        notes="each blocked thread must release the CPU; the signalfd one needs the "
        "signal family to call poll.signalfd_notify() when it queues a blocked signal",
    ),
    "io_eintr": Spec(
        stdout=(
            "ok: read interrupted without SA_RESTART: EINTR",
            "ok: read restarted with SA_RESTART, gets the handler's byte",
            "ok: epoll_wait: EINTR",
            "ok: recv with SO_RCVTIMEO: EINTR despite SA_RESTART",
            "handler ran inside ppoll: 1, SIGALRM blocked again: 1",
            "handler calls: 9",
            DONE,
        ),
    ),
    "io_layouts": Spec(
        stdout=(
            "sizeof struct epoll_event 16",
            {"arm": "sizeof struct msghdr 28", "aarch64": "sizeof struct msghdr 56"},
            {"arm": "sizeof struct cmsghdr 12", "aarch64": "sizeof struct cmsghdr 16"},
            "sizeof struct flock64 32",
        ),
        notes="sizes and constants for tests/linux_user/test_io_layouts.py",
    ),
    "signalfd": Spec(
        stdout=(
            "signalfd: signo=12 pid-ok=1 code=-6",
            "ok: epoll sees the signalfd",
            "first: signo=12 code=-6 int=0; second: signo=10",
            "ok: SIGUSR2 no longer read",
            "SIGUSR2 still pending: 1",
            DONE,
        ),
        notes="raise() is thread-directed (read first), sigqueue() process-directed",
    ),
    "sockets": Spec(
        stdout=(
            "recvmsg iovecs: [two ] [parts]",
            "passed fd says: through the passed fd",
            "ok: datagram boundaries kept (2)",
            "SCM_CREDENTIALS: level-ok=1 pid-ok=1 uid-ok=1 len-ok=1",
            "small control buffer: one fd delivered: 1",
            "ok: SO_RCVTIMEO reads back",
            "ok: recv times out: EAGAIN",
            "recvmmsg lengths: 2 3 4",
            "unix getsockname: family-ok=1 name=s",
            "ok: SO_PEERCRED is us",
            "unix stream got: unix",
            "inet bound: family-ok=1 host=127.0.0.1 port-nonzero=1",
            "ok: inet getpeername is the server's address",
            "inet client read: pong then EOF",
            "inet6 bound: family-ok=1 host=::1 port-nonzero=1",
            "inet6 client read: pong then EOF",
            "ok: inet recvfrom reports the sender's address",
            "inet UDP got: datagram",
            "inet6 UDP got: datagram",
            DONE,
        ),
    ),
    "procself": Spec(
        args=("first", "second"),
        stdout=(
            "exe basename matches argv[0]: 1",
            "cmdline[1]: first",
            "cmdline[2]: second",
            "cmdline has argc entries: 1",
            "maps: program mapped=1 with an r-xp mapping=1 [stack]=1",
            "stat pid field is getpid: 1",
            "auxv: AT_PAGESZ=4096 ends with AT_NULL=1",
            {
                "arm": "getauxval AT_PAGESZ=4096 AT_PLATFORM=v8l",
                "aarch64": "getauxval AT_PAGESZ=4096 AT_PLATFORM=aarch64",
            },
            "AT_UID/EUID/GID/EGID are ours: 1",
            "cpuinfo non-empty: 1",
            DONE,
        ),
    ),
    "tty": Spec(
        stdout=(
            "ok: TCGETS on a pipe: ENOTTY",
            "FIONREAD: 5",
            "isatty: master=1 slave=1",
            "default: ICANON=1 ECHO=1 ISIG=1 ICRNL=1 OPOST=1",
            "raw: ICANON=0 ECHO=0 ISIG=0 OPOST=0 ospeed=1",
            "window size: 80x24",
            "slave read: to-slave",
            "master read: to-master",
            DONE,
        ),
    ),
    # guests of benchmarks/bench_user.py
    "bench_cpu": Spec(
        args=("5",),
        stdout=("f5a5df41920808ad66d4ca6d2b2387e5924cdf639ce949045ef5f86ad5079c08",),
    ),
    "bench_syscall": Spec(args=("1000",), stdout=("calls=1000 ret=ppid errno=0",)),
    "bench_malloc": Spec(args=("200",), stdout=("checksum 027ee8ae",)),
    "bench_int": Spec(args=("1",), stdout=("218c4412",)),
    "bench_dhry": Spec(args=("20000",), stdout=("4b764d09",)),
    "bench_fp": Spec(args=("2000",), stdout=("-0.166483986", "-0.166479716",
                                             "1.979235517e+03")),
    "bench_sysmix": Spec(args=("100",), stdout=("300 of 300",)),
    # Go
    "goroutines": Spec(
        go=True,
        stdout=(
            {"arm": "GOOS=linux GOARCH=arm", "aarch64": "GOOS=linux GOARCH=arm64"},
            "sum of squares 1..1000: 333833500",
            "mutex counter: 160000",
            "timers fired in order: 10ms 30ms",
            "time.Timer fired after at least 20ms: true",
            "ticker ticked 3 times",
            "echo: client 0 line 0",
            "echo: client 2 line 2",
            "done",
        ),
    ),
}
