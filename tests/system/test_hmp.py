"""The HMP monitor (system/monitor/hmp.py) against the real qemu-system-x86_64 7.2.

The reference is a qemu-system-x86_64 -S with its monitor on a unix socket: the same
keystrokes and commands go to it and to our code, and the bytes are compared. The pure
parts (the /fmt rules and their remembered defaults, memory dump layout, capstone
disassembly layout and its reading loop, expressions and their errors, help lines,
readline echo) are compared here on the BIOS bytes both see at the top of memory.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyqemu.system.monitor import hmp as H

from tests.system.conftest import PYQEMU_SYSTEM, MonitorPeer, emulator_path

BIOS = Path("/usr/share/seabios/bios-256k.bin")


class HmpPeer(MonitorPeer):
    """A qemu-system-x86_64 -S whose HMP monitor is on a unix socket."""

    def __init__(self, qemu: str, sock_path: Path, extra: list[str] | None = None) -> None:
        super().__init__(qemu, "-monitor", sock_path, extra)
        self.greeting = self._read_prompts(1)

    def _read_prompts(self, n: int) -> bytes:
        data = b""
        while data.count(b"(qemu) ") < n or not data.endswith(b"(qemu) "):
            chunk = self.sock.recv(65536)
            assert chunk, f"qemu closed the monitor; got {data!r}"
            data += chunk
        return data

    def send(self, keys: bytes) -> bytes:
        """Send keystrokes (each \\r or \\n is one command); the bytes qemu echoes and
        prints, up to its last prompt."""
        self.sock.sendall(keys)
        return self._read_prompts(keys.count(b"\r") + keys.count(b"\n"))

    def command(self, line: str) -> str:
        """One command's output text, without the echo and the prompt, \\n line ends."""
        raw = self.send(line.encode() + b"\n").decode("latin-1")
        body = raw[raw.index("\r\n") + 2:]
        assert body.endswith("(qemu) ")
        return body[:-len("(qemu) ")].replace("\r\n", "\n")


@pytest.fixture
def qemu_hmp(qemu_system: str, tmp_path: Path) -> Iterator[HmpPeer]:
    peer = HmpPeer(qemu_system, tmp_path / "mon.sock")
    yield peer
    peer.close()


@pytest.fixture
def fresh_defaults() -> Iterator[None]:
    """qemu starts with /x and word size; our process-wide defaults the same."""
    H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4
    yield
    H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4


def bios_read(addr: int, size: int) -> bytes:
    """Physical memory at the top of the 4 GiB space: the BIOS image (read-only)."""
    data = BIOS.read_bytes()
    base = (1 << 32) - len(data)
    if addr < base or addr + size > 1 << 32:
        raise ValueError("not the BIOS")
    return data[addr - base:addr - base + size]


# Each command reads only the BIOS at the top of memory (or runs past its end into
# "Cannot access memory"); the sequence also exercises the remembered format/size.
DUMPS = [
    "xp /16xb 0xfffffff0", "xp /8xh 0xfffffff0", "xp /4xw 0xfffffff0", "xp /2xg 0xfffffff0",
    "xp /10db 0xfffffff0", "xp /10ub 0xfffffff0", "xp /10ob 0xfffffff0", "xp /10cb 0xfffffff0",
    "xp /4dh 0xfffffff0", "xp /4uw 0xfffffff0", "xp /3og 0xfffffff0", "xp /4c 0xfffffff0",
    "xp /16c 0xfffe0000", "xp 0xfffffff0", "xp /x 0xfffffff0", "xp /2 0xfffffff0",
    "xp /2dg 0xfffffff0", "xp /2ow 0xfffffff0", "xp /2oh 0xfffffff0", "xp /2uL 0xfffffff0",
    "xp /3cw 0xfffffff0", "xp /0xb 0xfffe0000", "xp /40xw 0xfffe1230",
    "xp /2xw 0xfffffffc", "xp /100000xb 0xfffffff0", "xp/3dh 0xfffe0100",
]


def test_memory_dump_matches_qemu(qemu_hmp: HmpPeer, fresh_defaults: None) -> None:
    for line in DUMPS:
        expected = qemu_hmp.command(line)
        fmt, pos = H.parse_format(line, len("xp"))
        addr, _ = H.parse_expr(line, pos, lambda name: None)
        assert H.format_memory(bios_read, addr, fmt) == expected, line


def test_disassembly_matches_qemu(qemu_hmp: HmpPeer, fresh_defaults: None) -> None:
    """x /i at reset (16-bit code): capstone's AT&T text in qemu's layout, including
    the read past the end of memory; the BIOS entry code has long instructions."""
    entry = int(qemu_hmp.command("xp /xh 0xfffffff1").split()[1], 16)   # ljmp f000:entry
    for line in ["x /3i 0xfffffff0", "x /12i 0xfffe0000", "x /30i %#x" % (0xF0000 + entry),
                 "x /b 0xfffe0100", "x /4i 0xfffff000"]:
        expected = qemu_hmp.command(line)
        fmt, pos = H.parse_format(line, 1)
        addr, _ = H.parse_expr(line, pos, lambda name: None)
        read = bios_read
        if addr < 0x100000:             # real mode: the BIOS is also below 1 MiB
            def read(a: int, n: int) -> bytes:
                return bios_read(a + 0xFFF00000, n)
        assert fmt.format == "i"
        got = H.format_disassembly(read, addr, fmt.count, 16)
        assert got == expected, line


EXPRESSIONS = [
    "p 1+2*3", "p 8+6&3", "p 2*3&1", "p 1-2-3", "p 12/2/3", "p -7/2", "p 7%3", "p -7%3",
    "p 6|3", "p 6^3", "p ~0", "p (1+2)*3", "p ( 1 + 2 ) ", "p ((3))", "p - -3", "p ++1",
    "p 010", "p 0x10", "p 10", "p -1", "p 0xffffffffffffffff", "p 'a'", "p /d -1",
    "p /u -1", "p /o 8", "p /o 0", "p /x 0", "p /c 65", "p /c 300", "p /c 39", "p /c 92",
    "p /c 10", "p /c 13", "p /c 9", "p /c -1", "p /i 3", "p /4x 3", "p /xb 300",
    "p /dh 70000", "p /b 5", "p 5-7",
    # errors
    "p 1/0", "p 1%0", "p 1 +", "p (1", "p 1 2", "p /x 1<<4", "p 0x1ffffffffffffffff",
    "p", "p 1k", "p 0x", "p 09", "p 'ab'", "p /s 1", "p foo", "print 1 2",
    "x", "x /4zb 0", "x /-1xb 0", "x foo", "xp /2xb 0 2",
]


def test_expressions_match_qemu(qemu_hmp: HmpPeer, fresh_defaults: None) -> None:
    hmp = H.Hmp(machine=None)        # these commands never reach the machine
    for line in EXPRESSIONS:
        assert hmp.run(line) == qemu_hmp.command(line), line


def test_help_lines_match_qemu(qemu_hmp: HmpPeer) -> None:
    hmp = H.Hmp(machine=None)
    for cmd in H.COMMANDS:
        name = cmd.name.split("|")[-1]
        line = f"help {name}"
        if cmd.name == "info":
            continue
        assert hmp.run(line) == qemu_hmp.command(line), line
    for cmd in H.INFO_COMMANDS:
        line = f"help info {cmd.name}"
        assert hmp.run(line) == qemu_hmp.command(line), line
    # every line of ours is one of qemu's full lists
    qemu_all = set(qemu_hmp.command("help").splitlines())
    qemu_info = set(qemu_hmp.command("help info").splitlines())
    assert set(hmp.run("help").splitlines()) <= qemu_all
    assert set(hmp.run("help info").splitlines()) <= qemu_info
    assert hmp.run("help info") == hmp.run("info") != ""
    for line in ["help foo", "help info foo", "foo", "info foo", "  foo bar", "help  help",
                 "q 1", "stop 1", "c x", "system_reset 1", "info status 2",
                 "info registers -x", "  p 1 2", "info   status 2", " info  foo"]:
        assert hmp.run(line) == qemu_hmp.command(line), line


def test_readline_echo_matches_qemu(qemu_hmp: HmpPeer, fresh_defaults: None) -> None:
    """Keystrokes byte for byte: insertion, backspace, cursor keys, history, CR and LF,
    several lines in one write."""
    session = H.HmpSession(H.Hmp(machine=None))
    assert session.greeting().replace(b"7.2.0", b"") == qemu_hmp.greeting.replace(
        b"7.2.22", b"")
    for keys in [b"p 1\n", b"\n", b"p 2\r\n", b"ab\x7fc\n", b"p 2\rp 3\n", b"p 4\x1b[D5\n",
                 b"  p   6  \n", b"p 1\x1b[A\n", b"p 7\x1b[A\x1b[A\x1b[B\n",
                 b"p 12\x1b[D\x1b[D\x1b[C9\x08\n", b"p 3\x01\x05+1\n", b"p 5\x1b[D\x1b[3~\n",
                 b"help x\nhelp p\n", b"\x1b[A\x1b[A\n",
                 # Tab completion where qemu's command set and ours agree
                 b"info ver\t" + b"\x7f" * 13 + b"p 5\n", b"qu\t\x7f\x7f\x7f\x7f\x7fp 6\n",
                 b"info mt\t\x01\x0bp 7\n", b"he\t\x7fx\n", b"xp\t\x7f\x7f\x7f\n",
                 b"info cpu\t\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\n",
                 b"cont\t\x08\x08\x08\x08\x08\n"]:
        ours = b""
        for echo, line in session.feed(keys):
            ours += echo
            if line is not None:
                ours += session.after_command(session.hmp.run(line))
        assert ours == qemu_hmp.send(keys), keys


# --- the monitor as a chardev front end (system/monitor/server.py) ----------------------


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.settimeout(60)
    return s


def _recv_until(s: socket.socket, end: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(end) < count or not data.endswith(end):
        chunk = s.recv(65536)
        assert chunk, f"monitor closed; got {data!r}"
        data += chunk
    return data


def _unversioned(data: bytes) -> bytes:
    return data.replace(b"7.2.22", b"VERSION").replace(H.version_string().encode(), b"VERSION")


def test_socket_monitor_matches_qemu(qemu_system: str, tmp_path: Path,
                                     fresh_defaults: None) -> None:
    """-monitor unix:PATH,server=on,wait=off: banner and prompt per client (a client that
    comes back gets them again), echo and output, next to qemu's."""
    from pyqemu.system import chardev
    from pyqemu.system.monitor import server

    qemu = subprocess.Popen([qemu_system, "-S", "-display", "none", "-nodefaults", "-monitor",
                             f"unix:{tmp_path / 'q.sock'},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    chr_ = chardev.open_chardev(f"unix:{tmp_path / 'o.sock'},server=on,wait=off",
                                for_monitor=True, label="test_hmp_socket")
    mon = server.attach_monitor(chr_, None, kind="hmp")
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "q.sock").exists():
            assert time.monotonic() < deadline and qemu.poll() is None
            time.sleep(0.05)
        for _visit in range(2):
            q, o = _connect(tmp_path / "q.sock"), _connect(tmp_path / "o.sock")
            assert _unversioned(_recv_until(o, b"(qemu) ")) == _unversioned(
                _recv_until(q, b"(qemu) "))
            for keys in [b"p 1+1\n", b"help xp\n", b"x /2\x1b[D\x1b[Dy\n", b"p 3\np 4\n"]:
                q.sendall(keys)
                o.sendall(keys)
                n = keys.count(b"\n")
                assert _recv_until(o, b"(qemu) ", n) == _recv_until(q, b"(qemu) ", n), keys
            q.close()            # the next client is served once this one is gone
            o.close()
    finally:
        mon.close()
        chr_.close()
        qemu.kill()
        qemu.wait()


def test_mux_monitor_matches_qemu(qemu_system: str, tmp_path: Path,
                                  fresh_defaults: None) -> None:
    """-serial mon:unix:...: the serial port has the focus; Ctrl-A c shows the monitor
    (its banner, held until then: qemu prints it for the chardev's open and again for
    the client's), Ctrl-A c again leaves it with a line break, and comes back to a
    bare prompt."""
    from pyqemu.system import chardev
    from pyqemu.system.monitor import server

    qemu = subprocess.Popen([qemu_system, "-S", "-display", "none", "-nodefaults", "-serial",
                             f"mon:unix:{tmp_path / 'q.sock'},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    mux = chardev.open_chardev(f"mon:unix:{tmp_path / 'o.sock'},server=on,wait=off",
                               label="test_hmp_mux")
    serial_in: list[bytes] = []
    mux.frontend().set_reader(serial_in.append)      # the serial port takes the focus,
    mon = server.attach_monitor(mux.frontend(), None, kind="hmp")   # the monitor joins
    server.monitors_ready()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "q.sock").exists():
            assert time.monotonic() < deadline and qemu.poll() is None
            time.sleep(0.05)
        q, o = _connect(tmp_path / "q.sock"), _connect(tmp_path / "o.sock")
        for keys, end in [(b"\x01c", b"(qemu) "), (b"p 1\n", b"(qemu) "), (b"\x01c", b"\r\n"),
                          (b"\x01c", b"(qemu) "), (b"p 2\n", b"(qemu) ")]:
            q.sendall(keys)
            o.sendall(keys)
            ours, theirs = _recv_until(o, end), _recv_until(q, end)
            assert _unversioned(ours) == _unversioned(theirs), keys
        q.sendall(b"\x01cabc")
        o.sendall(b"\x01cabc")
        assert _recv_until(o, b"\r\n") == _recv_until(q, b"\r\n") == b"\r\n"
        deadline = time.monotonic() + 60
        while b"".join(serial_in) != b"abc":
            assert time.monotonic() < deadline, serial_in
            time.sleep(0.02)
        q.close()
        o.close()
    finally:
        mon.close()
        mux.close()
        qemu.kill()
        qemu.wait()


# --- on the running machine: pyqemu-system-x86_64 next to qemu-system-x86_64 ----------

def _pair(qemu_system: str, tmp_path: Path, extra: list[str]) -> tuple[HmpPeer, HmpPeer]:
    theirs = HmpPeer(qemu_system, tmp_path / "q.sock", extra)
    try:
        ours = HmpPeer(emulator_path(PYQEMU_SYSTEM), tmp_path / "o.sock", extra)
    except BaseException:
        theirs.close()
        raise
    return ours, theirs


AT_RESET = [
    "info status", "p $pc", "p $eip", "p $cs", "p $cs.base", "p $cs.limit", "p /x $eflags",
    "p $eax+$esp", "p $sp", "p $fp", "p $ss.limit", "p $r15", "p $foo", "p $rax", "p /d $pc",
    "x /4i $pc", "x /16xb $pc", "xp /8xw 0xffff0", "xp /3i 0xfffffff0", "x /2i 0xffff0",
    "x /4xg 0xfffffff8", "xp /2xw 0xfffffffc", "xp /4xb 0x10000000", "xp /2xb 0x7fffffe",
    "info name", "info block", "info registers 1", "info qtree -x", "info pci",
    "stop", "info status",
]


def test_hmp_at_reset_matches_qemu(qemu_system: str, tmp_path: Path,
                                   fresh_defaults: None) -> None:
    """Both machines at reset with -S: registers through $names, the reset vector's code
    and the BIOS bytes through x, xp and x /i; status; an empty info block."""
    ours, theirs = _pair(qemu_system, tmp_path, [])
    try:
        assert _unversioned(ours.greeting) == _unversioned(theirs.greeting)
        for line in AT_RESET:
            assert ours.command(line) == theirs.command(line), line
        # info registers: qemu's layout line for line; the CPU models differ in EDX
        # (family/model/stepping) only
        mine = ours.command("info registers").splitlines()
        ref = theirs.command("info registers").splitlines()
        assert len(mine) == len(ref)
        for a, b in zip(mine, ref, strict=True):
            if a.startswith("EAX="):
                a, b = a.rsplit("EDX=", 1)[0], b.rsplit("EDX=", 1)[0]
            assert a == b
        assert re.fullmatch(r"\* CPU #0: thread_id=\d+\n", ours.command("info cpus"))
        # info pic: qemu's IOAPIC part first (not in this machine), then the 8259s
        pic = ours.command("info pic")
        assert pic.startswith("pic1: ") and theirs.command("info pic").endswith(pic)
        version = ours.command("info version")
        assert version == "%s%s\n" % (H.version_string(), H.QEMU_PACKAGE)
    finally:
        ours.close()
        theirs.close()


def test_hmp_run_states_match_qemu(qemu_system: str, tmp_path: Path) -> None:
    """stop/cont/c/s/system_reset and info status as qemu shows them; quit ends the
    process with status 0 after echoing the command."""
    ours, theirs = _pair(qemu_system, tmp_path, ["-name", "hmp-test"])
    try:
        for line in ["info status", "info name", "cont", "info status", "stop",
                     "info status", "c", "info status", "s", "info status", "system_reset",
                     "info status", "c", "info status", "stop", "system_reset",
                     "info status", "stop", "info status", "cont", "info status"]:
            assert ours.command(line) == theirs.command(line), line
        # while the guest runs, state reads go through the CPU thread
        ours.command("cont")
        for _ in range(3):
            # (a long instruction takes two lines; at the reset vector the window
            # runs past 4 GiB: "unable to read memory")
            lines = ours.command("x /3i $pc").splitlines()
            assert lines and all(re.match(r"0x[0-9a-f]{8}:(  ([0-9a-f]{2} )+| unable to "
                                          r"read memory$)", x) for x in lines), lines
            assert ours.command("info registers").startswith("\nCPU#0\nEAX=")
            assert re.fullmatch(r"0x[0-9a-f]+\n", ours.command("p /x $pc"))
        theirs.command("cont")
        for peer in (ours, theirs):
            peer.sock.sendall(b"quit\n")
            data = b""
            while True:
                chunk = peer.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data.endswith(b"quit\x1b[K\r\n"), data
            assert peer.proc.wait(timeout=60) == 0
    finally:
        ours.close()
        theirs.close()


def test_hmp_stdio_matches_qemu(qemu_system: str, tmp_path: Path) -> None:
    """-monitor stdio with commands piped in: the same bytes on stdout, exit status 0."""
    keys = b"info status\np 1+\x7f2\nstop\ncont\ninfo status\nquit\n"
    outs = []
    for exe in (qemu_system, emulator_path(PYQEMU_SYSTEM)):
        proc = subprocess.run([exe, "-S", "-display", "none", "-nodefaults", "-monitor",
                               "stdio"], input=keys, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(_unversioned(proc.stdout))
    assert outs[0] == outs[1]


def _symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return sym["st_value"]


def test_hmp_in_paged_protected_mode_matches_qemu(qemu_system: str, tmp_path: Path,
                                                  mbkernel: Path,
                                                  fresh_defaults: None) -> None:
    """The Multiboot kernel stopped in its spin loop (32-bit code, paging on: the first
    8 MiB identity-mapped, one page not present, nothing above): x /i in 32-bit mode,
    x through the page tables (a hole, the end of the mapping) next to xp, segment
    registers with qemu's sign-extended limits, and info registers' state lines."""
    spin = _symbol(mbkernel, "spin")
    peers = []
    try:
        for exe in (qemu_system, emulator_path(PYQEMU_SYSTEM)):
            serial = tmp_path / f"serial{len(peers)}.txt"
            peer = HmpPeer(exe, tmp_path / f"m{len(peers)}.sock",
                           ["-m", "128", "-serial", f"file:{serial}",
                            "-kernel", str(mbkernel), "-append", "spin"])
            peers.append(peer)
            peer.command("cont")
            deadline = time.monotonic() + 90
            while b"MBK spin\r\n" not in serial.read_bytes():
                assert time.monotonic() < deadline and peer.proc.poll() is None, \
                    serial.read_bytes()
                time.sleep(0.05)
            peer.command("stop")
        theirs, ours = peers
        for line in [f"x /12i {spin:#x}", f"x /8xw {spin:#x}", f"xp /8xw {spin:#x}",
                     "x /4xw 0x7fe000", "xp /4xw 0x7fe000", "x /2xw 0x7fdffc",
                     "x /4xw 0x7ff000", "x /4xw 0x800000", "x /3xb 0x7ffffe",
                     "p $cs", "p $cs.base", "p $cs.limit", "p $ds", "p $ss.limit",
                     "info status"]:
            assert ours.command(line) == theirs.command(line), line
        wanted = ("ES =", "CS =", "SS =", "DS =", "FS =", "GS =", "LDT=", "TR =", "GDT=",
                  "IDT=", "CR0=", "EFER=")
        regs = [[x for x in p.command("info registers").splitlines() if x.startswith(wanted)]
                for p in peers]
        assert len(regs[0]) == len(wanted) and regs[0] == regs[1]
    finally:
        for p in peers:
            p.close()
