"""pyqemu-arm/-aarch64 -strace against qemu-arm/qemu-aarch64 7.2's, line by line.

Both tools run the same guest with ``-strace``; their stderr is compared after
normalising only what legitimately differs between two runs or two emulators:
the pid, hexadecimal values (addresses: mmap results, brk, stack and heap
pointers) and decimal numbers of six digits or more (raw registers holding
addresses in qemu's generic ``name(a,b,c,d,e,f)`` form). Everything else (call
names, argument order, strings, symbolic flags, results, errno texts) must be
identical. The unit tests at the end check formats qemu prints for calls these
programs do not make, against lines taken from qemu-arm 7.2.
"""

from __future__ import annotations

import re

import pytest

from tests.guests.build import build_guest
from tests.guests.run import run_guest

HEX = re.compile(r"0x[0-9a-f]+")
BIG = re.compile(r"(?<![0-9a-zA-Z_])-?[0-9]{6,}")


def normalise(stderr: str) -> list[str]:
    """The strace lines of one run with pid, addresses and raw register words masked."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"^(\d+) ", line)
        if m:
            pid = m.group(1)
            line = "PID " + re.sub(rf"(?<![0-9]){pid}(?![0-9])", "PID", line[m.end():])
        line = HEX.sub("0xADDR", line)
        line = BIG.sub("N", line)
        out.append(line)
    return out


# Behaviour (not format) differences, each a known one:
# - pyqemu implements set_robust_list where qemu-user 7.2 answers ENOSYS;
# - the dynamic loader probes library directories by AT_PLATFORM and AT_HWCAP: pyqemu
#   advertises only what unicorn's CPU runs (on aarch64 less than qemu's max), so the
#   failed probes (ENOENT lookups under a lib directory) may differ;
# - the generic form prints six registers whatever the call takes: those past the
#   call's own arguments hold whatever user code left there.
# Run-dependent values: clock readings, mkdtemp names (and their redraws, dropped), and
# munmap lengths that follow from where an aligned mapping landed (ld.so trims its
# 64 KiB-aligned reservation).
KNOWN = [(re.compile(r"^(PID set_robust_list\(.*\)) = .*$"), r"\1 = <result>"),
         (re.compile(r"\{tv_sec = (-?\d+|N),tv_nsec = (-?\d+|N)\}"), "{TIME}"),
         (re.compile(r"\{tv_sec = (-?\d+|N),tv_usec = (-?\d+|N)\}"), "{TIME}"),
         (re.compile(r"^(PID (clone|fork|vfork)\(.*\)) = \d+$"), r"\1 = CHILD"),
         (re.compile(r"(pyqemu-[a-z]+)\.[A-Za-z0-9]{6}"), r"\1.XXXXXX"),
         (re.compile(r"^PID munmap\(0xADDR,\d+\)"), "PID munmap(0xADDR,LEN)")]
PROBE = re.compile(r'^PID (openat|statx|newfstatat)\((AT_FDCWD|-100),"/(usr/)?lib/.*'
                   r"= -1 errno=2 \(No such file or directory\)$")
# glibc 2.36's mkdtemp/mkstemp draw a name's 64 random bits from the clock, and draw
# again with getrandom(8, GRND_NONBLOCK) when the value falls in the biased top range
# (rejection sampling: about 1 name in 22), so those calls come and go from run to run
TEMPNAME_REDRAW = re.compile(r"^PID getrandom\(0xADDR,8,1\) = 8$")


def comparable(lines: list[str], arch: str) -> list[str]:
    from pyqemu.linux_user.strace import _GENERIC
    from pyqemu.linux_user.syscalls import table_for

    table = table_for(arch)
    out = []
    for line in lines:
        if PROBE.match(line) or TEMPNAME_REDRAW.match(line):
            continue
        for pattern, repl in KNOWN:
            line = pattern.sub(repl, line)
        m = re.match(r"^PID ([a-z0-9_]+)\(([^()]*)\)( = .*)$", line)
        if m and m.group(1) in _GENERIC:
            nr = table.numbers.get(m.group(1))
            used = table.handlers[nr][2] if nr in table.handlers else 6
            args = m.group(2).split(",")
            line = f"PID {m.group(1)}({','.join(args[:used] + ['_'] * (6 - used))}){m.group(3)}"
        out.append(line)
    return out


# aarch64 dynamic programs are left out for now: there pyqemu refuses glibc's first
# brk() growth (the break of a PIE loaded by ld.so runs into a mapping) and malloc
# falls back to mmap, one extra line that is a memory-layout difference, not strace's
CASES = [(name, arch, static) for name in ("hello", "files", "args_env", "time")
         for arch, static in (("arm", True), ("arm", False), ("aarch64", True))]


@pytest.mark.parametrize(("name", "arch", "static"), CASES,
                         ids=[f"{n}-{a}-{'static' if s else 'dynamic'}" for n, a, s in CASES])
def test_strace_same_as_qemu(name: str, arch: str, static: bool) -> None:
    binary = build_guest(name, arch, static=static)
    q = run_guest("qemu", arch, binary, options=("-strace",))
    p = run_guest("pyqemu", arch, binary, options=("-strace",))
    assert p.returncode == q.returncode, p.describe()
    assert p.stdout == q.stdout, p.describe()
    ql, pl = comparable(normalise(q.stderr), arch), comparable(normalise(p.stderr), arch)
    assert len(ql) > 10
    assert pl == ql, "\n".join(f"{a!r}\n{b!r}" for a, b in zip(ql, pl, strict=False)
                               if a != b)


def test_strace_env_and_log_file(tmp_path) -> None:
    """QEMU_STRACE turns it on; -d strace with -D writes the same lines to the file."""
    binary = build_guest("hello", "arm", static=True)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "QEMU_STRACE": "1"}
    by_env = run_guest("pyqemu", "arm", binary, env=env)
    log = tmp_path / "strace.log"
    by_d = run_guest("pyqemu", "arm", binary, options=("-d", "strace", "-D", str(log)))
    run_guest("qemu", "arm", binary, options=("-d", "strace", "-D", str(tmp_path / "q")))
    assert by_d.stderr == ""
    assert normalise(by_env.stderr) == normalise(log.read_text())
    assert comparable(normalise(log.read_text()), "arm") == comparable(
        normalise((tmp_path / "q").read_text()), "arm")
    assert normalise(log.read_text())[-1] == "PID exit_group(0)"


# --- formats of calls the programs above do not make (lines from qemu-arm 7.2) -------


class _Mem:
    def __init__(self, strings: dict[int, bytes], words: dict[int, bytes]) -> None:
        self.strings = strings
        self.words = words

    def read_cstring(self, addr: int) -> bytes:
        from pyqemu.common.memory import GuestMemoryError

        if addr not in self.strings:
            raise GuestMemoryError("unmapped")
        return self.strings[addr]

    def read(self, addr: int, size: int) -> bytes:
        from pyqemu.common.memory import GuestMemoryError

        if addr not in self.words:
            raise GuestMemoryError("unmapped")
        return self.words[addr][:size]


def _formatter(arch: str, mem: _Mem):  # noqa: ANN202 - a Strace
    from pyqemu.common.cpu import get_arch
    from pyqemu.linux_user.strace import Strace
    from pyqemu.linux_user.syscalls import table_for

    class _Proc:
        pass

    proc = _Proc()
    proc.arch = get_arch(arch)
    proc.mem = mem
    proc.table = table_for(arch)
    return Strace(proc)  # type: ignore[arg-type]


def _line(st, name: str, *args: int) -> str:  # noqa: ANN001
    nr = st.proc.table.numbers[name]
    return st.call_text(nr, tuple(args) + (0,) * (6 - len(args)))


def test_strace_formats_arm() -> None:
    ts = (0).to_bytes(4, "little") + (20000000).to_bytes(4, "little")
    st = _formatter("arm", _Mem({0x1000: b"/etc/ld.so.preload", 0x2000: b"sub"},
                                {0x3000: ts}))
    assert _line(st, "access", 0x1000, 4) == 'access("/etc/ld.so.preload",R_OK)'
    assert _line(st, "rmdir", 0x2000) == 'rmdir("sub",)'
    assert _line(st, "faccessat", 0xFFFFFF9C, 0x1000, 4, 0x3EDA0) == \
        'faccessat(AT_FDCWD,"/etc/ld.so.preload",R_OK,AT_SYMLINK_NOFOLLOW|0x3eca0)'
    assert _line(st, "kill", 17052, 15) == "kill(17052,SIGTERM)"
    assert _line(st, "clock_nanosleep", 1, 0, 0x3000, 0) == \
        "clock_nanosleep(CLOCK_MONOTONIC,0,{tv_sec = 0,tv_nsec = 20000000},NULL)"
    assert _line(st, "_llseek", 4, 0xFFFFFFFF, 0xFFFFFF9C, 0x407FCA88, 0) == \
        "_llseek(4,4294967295,4294967196,0x407fca88,SEEK_SET)"
    assert _line(st, "clone", 0x1200011, 0, 0, 0, 0x3F7D3848) == (
        "clone(CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|0x11,child_stack=0x00000000,"
        "parent_tidptr=0x00000000,tls=0x00000000,child_tidptr=0x3f7d3848)")
    assert _line(st, "futex", 0x74470, 0x189, 0, 0, 0, 0) == \
        "futex(0x00074470,FUTEX_PRIVATE_FLAG|FUTEX_CLOCK_REALTIME|FUTEX_WAIT_BITSET,0,NULL,NULL,0)"
    assert _line(st, "sigaltstack", 0x3FFFF838, 0) == "sigaltstack(0x3ffff838,(nil))"
    assert _line(st, "rt_sigprocmask", 0, 0, 0x3FFFF3D8) == \
        "rt_sigprocmask(SIG_BLOCK,NULL,0x3ffff3d8)"
    assert _line(st, "exit_group", 0) == "exit_group(0)\n"
    assert st.call_text(0xF0005, (0,) * 6) is None          # ARM private: not logged
    assert st.call_text(398, (0,) * 6) == "Unknown syscall 398\n"   # rseq
    rt = st.proc.table.numbers["rt_sigreturn"]
    assert st.result_text(rt, None, (0,) * 6) == \
        " = -1 errno=513 (Successful exit from sigreturn)\n"
    brk = st.proc.table.numbers["brk"]
    assert st.result_text(brk, 0x6C000, (0,) * 6) == " = 0x0006c000\n"


def test_strace_formats_aarch64() -> None:
    st = _formatter("aarch64", _Mem({0x1000: b"/proc/self/exe"}, {}))
    assert _line(st, "readlinkat", (1 << 64) - 100, 0x1000, 0x55007FFC00, 4096) == \
        'readlinkat(AT_FDCWD,"/proc/self/exe",0x00000055007ffc00,4096)'
    assert _line(st, "prlimit64", 0, 3, 0, 365080611992, 4818832, 80) == \
        "prlimit64(0,3,0,365080611992,4818832,80)"
    # %#x prints the low 32 bits of a 64-bit register, as qemu's format does
    assert _line(st, "write", 1, 0x55_0000_1000, 21) == "write(1,0x1000,21)"
    assert _line(st, "ftruncate", 4, 1 << 33) == "ftruncate(4,8589934592)"
    mmap = st.proc.table.numbers["mmap"]
    assert st.result_text(mmap, 0x5502865000, (0,) * 6) == " = 0x0000005502865000\n"
    assert st.result_text(mmap, -12 & ((1 << 64) - 1), (0,) * 6) == \
        " = -1 errno=12 (Cannot allocate memory)\n"


def test_taken_signal_lines() -> None:
    st = _formatter("arm", _Mem({}, {}))

    def info(*words: int) -> bytes:
        return b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in words)

    assert st.siginfo_text(info(10, 0, -6, 17191, 0)) == \
        "{si_signo=SIGUSR1, si_code=SI_TKILL, si_pid=17191, si_uid=0}"
    assert st.siginfo_text(info(10, 0, -1, 17191, 0, 42)) == \
        "{si_signo=SIGUSR1, si_code=SI_QUEUE, si_pid=17191, si_uid=0, si_sigval=42}"
    assert st.siginfo_text(info(17, 0, 1, 17196, 0, 6, 0, 0)) == (
        "{si_signo=SIGCHLD, si_code=1, si_pid=17196, si_uid=0, si_status=6, "
        "si_utime=0, si_stime=0}")
    assert st.siginfo_text(info(14, 0, 0x80, 0, 0)) == \
        "{si_signo=SIGALRM, si_code=SI_KERNEL, si_pid=0, si_uid=0}"
