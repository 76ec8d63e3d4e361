"""pyqemu-system-x86_64's command line against qemu-system-x86_64 7.2's: the same bad
command lines give the same messages (program name swapped) and exit status; the help
listings are qemu's lines for what exists; what we do not support says so in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

QEMU = "qemu-system-x86_64"
OURS = "pyqemu-system-x86_64"


def _ours() -> str:
    return str(Path(sys.executable).parent / OURS)


def run(prog: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdin closed; a hang would be a failure of its own (timeout)."""
    return subprocess.run([prog, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def _stderr_lines(text: str) -> list[str]:
    # Debian's qemu reports its missing GUI modules before anything else: not ours
    return [line for line in text.splitlines() if " module ui-" not in line]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "disk.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "notakernel").write_bytes(b"hello, not a kernel\n" * 100)
    return tmp_path


# each case fails in qemu-system-x86_64 before a guest runs
SAME_ERRORS = [
    ["-foo"],
    ["--foo"],
    ["-m"],
    ["-m=512"],
    ["-m", "foo"],
    ["-m", "size=512Q"],
    ["-m", "512,foo=1"],
    ["-m", "100000G"],
    ["-boot", "order=z"],
    ["-boot", "once=cz,order=c"],
    ["-boot", "menu=maybe"],
    ["-boot", "foo=bar"],
    ["-boot", "splash-time=x"],
    ["-boot", "splash-time=70000"],
    ["-boot", "reboot-timeout=-2"],
    ["-machine", "foo"],
    ["-M", "pc,foo=bar"],
    ["-machine", "accel=foo"],
    ["-cpu", "foo"],
    ["-device", "foo"],
    ["-display", "foo"],
    ["-vga", "foo"],
    ["-drive", "file=disk.raw,if=foo"],
    ["-drive", "file=disk.raw,media=tape"],
    ["-drive", "file=disk.raw,index=x"],
    ["-drive", "file=disk.raw,format=raw,readonly=maybe"],
    ["-drive", "file=disk.raw,format=raw,index=0", "-drive", "file=disk.raw,format=raw,index=0"],
    ["-drive", "file=disk.raw,format=raw,foo=bar"],
    ["-drive", "file=disk.raw,format=raw,readonly=on"],
    ["-drive"],
    ["-drive", "file=nope.img"],
    ["-drive", "file=nope.img,format=raw,if=ide,index=1"],
    ["-hda", "nope.img"],
    ["-hdb", "nope.img"],
    ["nope.img"],
    ["-cdrom", "nope.iso"],
    ["-bios", "nope.bin"],
    ["-kernel", "nope"],
    ["-kernel", "notakernel"],
    ["-nographic", "-daemonize"],
    ["-append", "x"],
    ["-initrd", "x"],
    ["-chardev", "foo,id=x"],
    ["-chardev", "null"],
    ["-mon", "foo"],
    ["-mon", "chardev=zz"],
    ["-chardev", "null,id=a", "-serial", "chardev:b"],
    ["-serial", "foo:"],
    ["-serial", "stdio", "-serial", "stdio"],
    ["-daemonize", "-serial", "stdio"],
    ["-qmp", "stdio", "-monitor", "stdio"],
    ["-monitor", "foo:"],
    ["-D", "/nonexistent/dir/log"],
    ["-pidfile", "/nonexistent/dir/vm.pid"],
]


@pytest.mark.parametrize("args", SAME_ERRORS, ids=lambda a: " ".join(a))
def test_error_equals_qemu(files: Path, args: list[str]) -> None:
    full = ["-display", "none", *args]
    theirs = run(QEMU, full, files)
    ours = run(_ours(), full, files)
    assert theirs.returncode == 1, theirs.stderr
    expected = [line.replace(QEMU, OURS) for line in _stderr_lines(theirs.stderr)]
    assert _stderr_lines(ours.stderr) == expected
    assert ours.returncode == theirs.returncode
    assert ours.stdout == theirs.stdout == ""


# options qemu takes that pyqemu does not implement: one clear line naming the option
UNSUPPORTED = [
    (["-usb"], "-usb"),
    (["-netdev", "user,id=n"], "-netdev user,id=n"),
    (["-smp", "2"], "-smp 2"),
    (["-vga", "cirrus"], "-vga cirrus"),
    (["-display", "gtk"], "gtk"),
    (["-enable-kvm"], "-enable-kvm"),
    (["-accel", "kvm"], "kvm"),
    (["-drive", "file=disk.raw,if=virtio"], "if=virtio"),
    (["-cpu", "qemu64,+avx"], "-cpu qemu64,+avx"),
    (["-device", "isa-serial"], "-device isa-serial"),
]


@pytest.mark.parametrize("args,named", UNSUPPORTED, ids=lambda a: str(a))
def test_unsupported_is_one_clear_line(files: Path, args: list[str], named: str) -> None:
    ours = run(_ours(), ["-display", "none", *args], files)
    assert ours.returncode == 1
    lines = ours.stderr.splitlines()
    assert len(lines) == 1, ours.stderr
    assert lines[0].startswith(f"{OURS}: ")
    assert named in lines[0]
    assert "Traceback" not in ours.stderr


def _listing(prog: str, args: list[str], cwd: Path) -> tuple[int, list[str]]:
    proc = run(prog, args, cwd)
    return proc.returncode, proc.stdout.splitlines()


@pytest.mark.parametrize("args", [["-machine", "help"], ["-M", "help"], ["-cpu", "help"],
                                  ["-device", "help"]], ids=lambda a: " ".join(a))
def test_help_listings_are_qemus_lines(files: Path, args: list[str]) -> None:
    """Our listing: qemu's format and headings, only what pyqemu has, each line as qemu
    prints it (a subset of qemu's lines, in qemu's order)."""
    status, theirs = _listing(QEMU, args, files)
    our_status, ours = _listing(_ours(), args, files)
    assert status == our_status == 0
    assert ours[0] in theirs and ours[0].endswith(":")
    entries = [line for line in ours if line.strip()]
    assert len(entries) >= 2
    positions = [theirs.index(line) for line in entries]
    assert positions == sorted(positions)


def test_machine_help_names_pc(files: Path) -> None:
    _, ours = _listing(_ours(), ["-machine", "help"], files)
    assert any(line.startswith("pc ") and "alias of pc-i440fx-7.2" in line for line in ours)
    assert any("(default)" in line for line in ours)


def test_device_help_lists_the_pc_devices(files: Path) -> None:
    _, ours = _listing(_ours(), ["-device", "help"], files)
    text = "\n".join(ours)
    for name in ("ide-hd", "ide-cd", "piix3-ide", "isa-serial", "i8042", "VGA",
                 "isa-debugcon", "mc146818rtc"):
        assert f'name "{name}"' in text


def test_log_help_is_qemus_heading_and_status(files: Path) -> None:
    theirs = run(QEMU, ["-d", "help"], files)
    ours = run(_ours(), ["-d", "help"], files)
    assert ours.returncode == theirs.returncode == 1
    our_lines = ours.stdout.splitlines()
    assert our_lines[0] == theirs.stdout.splitlines()[0]
    their_lines = theirs.stdout.splitlines()
    for line in our_lines:
        assert line in their_lines


def test_version(files: Path) -> None:
    theirs = run(QEMU, ["-version"], files)
    ours = run(_ours(), ["-version"], files)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout.splitlines()[0].startswith("QEMU emulator version 7.2.")
    assert ours.stdout.splitlines()[1] == theirs.stdout.splitlines()[1]


def test_help_lists_the_options_we_take(files: Path) -> None:
    ours = run(_ours(), ["-h"], files)
    assert ours.returncode == 0
    for option in ("-machine", "-m ", "-bios", "-drive", "-hda", "-cdrom", "-boot",
                   "-kernel", "-append", "-initrd", "-nographic", "-display", "-serial",
                   "-monitor", "-qmp", "-S ", "-no-reboot", "-no-shutdown", "-snapshot",
                   "-daemonize", "-pidfile", "-d item", "-D logfile", "-L path"):
        assert option in ours.stdout


def test_option_forms_one_or_two_dashes(files: Path) -> None:
    """--version and -version are the same; both emulators agree."""
    for prog in (QEMU, _ours()):
        one = run(prog, ["-version"], files)
        two = run(prog, ["--version"], files)
        assert one.returncode == two.returncode == 0
        assert one.stdout == two.stdout


def test_bzimage_is_not_supported_yet(files: Path) -> None:
    image = bytearray(4096)
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    (files / "bzImage").write_bytes(bytes(image))
    ours = run(_ours(), ["-display", "none", "-kernel", "bzImage"], files)
    assert ours.returncode == 1
    assert ours.stderr.strip().endswith("not supported yet (Multiboot kernels only)")
    assert len(ours.stderr.splitlines()) == 1
