"""The pc machine end to end, next to qemu-system-x86_64 on the same command lines:
reset from the guest (port 0xCF9, i8042 0xFE, port 0x92, triple fault) with and without
-no-reboot, the BIOS ROM and its shadow, guest RAM above 4 GiB, -snapshot, -S and the
SeaBIOS boot reaching its boot attempts.

The firmware of the reset tests is a 64 KiB ROM assembled with nasm here (-bios): it
writes a letter to an isa-debugcon and resets the machine one way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

QEMU = "qemu-system-x86_64"
OURS = "pyqemu-system-x86_64"
EMULATORS = (QEMU, OURS)
DEADLINE = 90.0   # only a hang reaches it; nothing about time is asserted
T = TypeVar("T")


def _prog(name: str) -> str:
    return str(Path(sys.executable).parent / OURS) if name == OURS else QEMU


ROM_ASM = r"""
        bits 16
        org 0
start:
        cli
        mov dx, 0x402
        mov al, LETTER
        out dx, al
%if METHOD == 1                 ; PIIX3 reset control register
        mov dx, 0xcf9
        mov al, 0x02
        out dx, al
        mov al, 0x06
        out dx, al
%elif METHOD == 2               ; keyboard controller: pulse the reset line
        mov al, 0xfe
        out 0x64, al
%elif METHOD == 3               ; port 0x92: fast reset
        in al, 0x92
        or al, 1
        out 0x92, al
%elif METHOD == 4               ; triple fault: an empty IVT, then an exception
        lidt [cs:empty_idt]
        int3
%elif METHOD == 5               ; read the ROM's signature through its shadow at 0xF0000
        xor ax, ax
        mov ds, ax
        mov ax, 0xf000
        mov es, ax
        mov al, [es:signature]
        out dx, al
        mov al, [es:signature + 1]
        out dx, al
        mov byte [es:signature], 'X'        ; ROM shadow, PAM off: dropped
        jmp read_back                      ; pyqemu drops it at the next block start
read_back:
        mov al, [es:signature]
        out dx, al
%endif
halt:
        hlt
        jmp halt
empty_idt:
        dw 0
        dd 0
signature:
        db "OK"
        times 0xfff0 - ($ - $$) db 0
        jmp 0xf000:start                   ; the reset vector (F000:FFF0)
        times 0x10000 - ($ - $$) db 0xff
"""


def build_rom(tmp_path: Path, method: int, letter: str = "R") -> Path:
    src = tmp_path / f"rom{method}.asm"
    out = tmp_path / f"rom{method}.bin"
    src.write_text(ROM_ASM)
    subprocess.run(["nasm", "-f", "bin", f"-DMETHOD={method}", f"-DLETTER='{letter}'",
                    "-o", str(out), str(src)], check=True)
    assert out.stat().st_size == 0x10000
    return out


def vm_args(rom: Path, log: Path) -> list[str]:
    return ["-display", "none", "-serial", "none", "-monitor", "none", "-net", "none",
            "-bios", str(rom), "-chardev", f"file,id=dbg,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]


@pytest.mark.parametrize("emulator", EMULATORS)
@pytest.mark.parametrize("method", [1, 2, 3, 4], ids=["cf9", "i8042", "port92", "triple"])
def test_guest_reset_with_no_reboot_exits(tmp_path: Path, emulator: str, method: int) -> None:
    """-no-reboot: the first reset ends the machine, exit status 0, the ROM ran once."""
    rom = build_rom(tmp_path, method)
    log = tmp_path / "debugcon.log"
    proc = subprocess.run([_prog(emulator), *vm_args(rom, log), "-no-reboot"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    assert log.read_bytes() == b"R"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("emulator", EMULATORS)
@pytest.mark.parametrize("method", [1, 4], ids=["cf9", "triple"])
def test_guest_reset_reboots(tmp_path: Path, emulator: str, method: int) -> None:
    """Without -no-reboot every reset starts the ROM again; SIGTERM ends it with 0."""
    rom = build_rom(tmp_path, method)
    log = tmp_path / "debugcon.log"
    proc = _start(emulator, vm_args(rom, log), text=True)
    try:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and (not log.exists() or len(log.read_bytes()) < 5):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = log.read_bytes()
    assert len(data) >= 5 and set(data) == {ord("R")}
    assert proc.returncode == 0
    assert err.splitlines()[-1].startswith(f"{emulator}: terminating on signal 15")


@pytest.mark.parametrize("emulator", EMULATORS)
def test_bios_shadow_reads_the_rom_and_drops_writes(tmp_path: Path, emulator: str) -> None:
    """At power-on 0xF0000 shows the BIOS's last 64 KiB; with PAM 0 a store there is lost."""
    rom = build_rom(tmp_path, 5, letter="S")
    log = tmp_path / "debugcon.log"
    proc = _start(emulator, vm_args(rom, log), text=True)
    try:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and (not log.exists() or len(log.read_bytes()) < 4):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DEADLINE)
    assert log.read_bytes() == b"SOKO"


def _start(emulator: str, args: list[str], **kw: Any) -> subprocess.Popen:
    """The emulator in the background, stdin /dev/null, its output piped."""
    return subprocess.Popen([_prog(emulator), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


async def _qmp_connect(sock: Path) -> Any:
    """A QMPClient on ``sock``, retried until the emulator listens there."""
    from qemu.qmp import QMPClient

    end = time.monotonic() + DEADLINE
    while True:
        client = QMPClient("test")
        try:
            await client.connect(str(sock))
            return client
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def _qmp_status(client: Any) -> str:
    return (await client.execute("query-status"))["status"]


async def _qmp_wait_status(client: Any, want: str) -> None:
    end = time.monotonic() + DEADLINE
    while await _qmp_status(client) != want:
        assert time.monotonic() < end
        await asyncio.sleep(0.1)


async def _hmp(client: Any, command: str) -> str:
    return await client.execute("human-monitor-command", {"command-line": command})


def _with_qmp(emulator: str, args: list[str], sock: Path,
              body: Callable[[Any], Awaitable[T]]) -> tuple[T, int]:
    """Start the emulator with ``args`` and -qmp on ``sock``, run ``body(client)``,
    then quit; ``body``'s result and the exit status (the process killed at worst)."""
    proc = _start(emulator, [*args, "-qmp", f"unix:{sock},server=on,wait=off"])

    async def main() -> T:
        client = await _qmp_connect(sock)
        result = await body(client)
        await client.execute("quit")
        try:
            await client.disconnect()
        except EOFError:
            pass   # the server closed first: normal after quit
        return result

    try:
        result = asyncio.run(main())
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result, proc.returncode


def _hmp_commands(commands: list[str]) -> Callable[[Any], Awaitable[list[str]]]:
    """A ``_with_qmp`` body: each HMP command's output, in order."""
    async def body(client: Any) -> list[str]:
        return [await _hmp(client, cmd) for cmd in commands]
    return body


@pytest.mark.parametrize("emulator", EMULATORS)
def test_ram_above_4g_and_rom_seen_by_xp(tmp_path: Path, emulator: str) -> None:
    """-m 3584: RAM splits at 3 GiB (gigabyte-aligned, as pc-i440fx-7.2), the top
    512 MiB at 4 GiB; xp reads the BIOS at the top of 4 GiB; -S: nothing ran."""
    rom = build_rom(tmp_path, 5, letter="S")
    sock = tmp_path / "qmp.sock"
    out, status = _with_qmp(emulator, ["-display", "none", "-serial", "none", "-net", "none",
                                       "-S", "-m", "3584", "-bios", str(rom)], sock,
                            _hmp_commands(["xp /1xb 0xffffffff", "xp /1xw 0xffff0000",
                                           "xp /1xw 0x100000000", "xp /1xw 0xbffffffc",
                                           "info status"]))
    assert status == 0
    rom_bytes = rom.read_bytes()
    assert out[0].split(":")[1].split() == ["0x%02x" % rom_bytes[-1]]
    first = int.from_bytes(rom_bytes[:4], "little")
    assert int(out[1].split(":")[1], 16) == first
    assert out[2].split(":")[1].split() == ["0x00000000"]   # RAM above 4 GiB: zeroes
    assert out[3].split(":")[1].split() == ["0x00000000"]   # top of RAM below
    assert out[4] == "VM status: paused (prelaunch)\r\n"


def test_xp_of_the_holes_matches_qemu(tmp_path: Path) -> None:
    """The monitor cannot read unassigned physical addresses in either emulator."""
    rom = build_rom(tmp_path, 5, letter="S")
    results = []
    for emulator in EMULATORS:
        sock = tmp_path / f"{emulator}.sock"
        out, _ = _with_qmp(emulator, ["-display", "none", "-serial", "none", "-net", "none",
                                      "-S", "-m", "128", "-bios", str(rom)], sock,
                           _hmp_commands(["xp /4xw 0x10000000", "xp /2xw 0x7fffff8"]))
        results.append(out)
    assert results[0] == results[1]
    assert "Cannot access memory" in results[0][0]


@pytest.mark.parametrize("emulator", EMULATORS)
def test_snapshot_leaves_the_image_alone(tmp_path: Path, emulator: str) -> None:
    """-snapshot: the guest's writes go to a temporary overlay; the image is unchanged."""
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(range(256)) * 4096)
    before = image.read_bytes()
    sock = tmp_path / "qmp.sock"
    out, status = _with_qmp(emulator, ["-display", "none", "-serial", "none", "-net", "none",
                                       "-S", "-snapshot", "-drive", f"file={image},format=raw"],
                            sock, _hmp_commands(["info block"]))
    assert status == 0
    assert image.read_bytes() == before
    assert out[0].startswith("ide0-hd0")


@pytest.fixture(scope="module")
def boot_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests/guests boot sector on a 1 MiB raw disk."""
    from tests.guests.build_x86 import build_bootsector

    path = tmp_path_factory.mktemp("bootdisk") / "boot.raw"
    data = build_bootsector().read_bytes()
    path.write_bytes(data + bytes((1 << 20) - len(data)))
    return path


def _boot_args(disk: Path, *extra: str) -> list[str]:
    """A headless boot from ``disk`` (snapshot), serial discarded."""
    return ["-display", "none", "-serial", "null", "-net", "none", "-hda", str(disk),
            "-snapshot", *extra]


def _curses_screen(emulator: str, disk: Path) -> list[str]:
    """Run -display curses in an 80x25 pty until the boot sector's int 10h line shows;
    the screen as a terminal (pyte) shows it."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    import pyte

    pid, fd = pty.fork()
    if pid == 0:   # pragma: no cover - the child
        os.environ["TERM"] = "xterm"
        os.execvp(_prog(emulator), [emulator, "-display", "curses", "-net", "none",
                                   "-hda", str(disk), "-snapshot", "-no-shutdown"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 80, 0, 0))
    screen = pyte.Screen(80, 25)
    stream = pyte.ByteStream(screen)
    try:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and "BOOT int10" not in screen.display[2]:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    stream.feed(os.read(fd, 65536))
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    return [line.rstrip() for line in screen.display]


def test_curses_shows_the_vga_text_as_qemu(boot_image: Path) -> None:
    """-display curses: SeaBIOS's and the boot sector's int 10h lines, as qemu's screen."""
    theirs = _curses_screen(QEMU, boot_image)
    ours = _curses_screen(OURS, boot_image)
    assert theirs[:3] == ["SeaBIOS (version 1.16.2-debian-1.16.2-1)",
                          "Booting from Hard Disk...", "BOOT int10"]
    assert ours[:3] == theirs[:3]


def _vga_text_after_poweroff(emulator: str, disk: Path, tmp_path: Path) -> list[str]:
    async def body(client: Any) -> str:
        await _qmp_wait_status(client, "shutdown")
        return await _hmp(client, "xp /2000xh 0xb8000")

    text, _ = _with_qmp(emulator, _boot_args(disk, "-no-shutdown"),
                        tmp_path / f"{emulator}.sock", body)
    cells = [int(v, 16) for line in text.splitlines() for v in line.split(":")[1].split()]
    assert len(cells) == 2000
    return [bytes(c & 0xFF for c in cells[r * 80:r * 80 + 80]).decode("latin-1").rstrip()
            for r in range(25)]


def test_vga_text_memory_after_boot_equals_qemu(boot_image: Path, tmp_path: Path) -> None:
    """The text screen at 0xB8000 once the boot sector powered off (-no-shutdown)."""
    theirs = _vga_text_after_poweroff(QEMU, boot_image, tmp_path)
    ours = _vga_text_after_poweroff(OURS, boot_image, tmp_path)
    assert theirs[2] == "BOOT int10"
    assert ours == theirs


@pytest.mark.parametrize("emulator", EMULATORS)
def test_daemonize_and_pidfile(tmp_path: Path, emulator: str) -> None:
    """-daemonize: the parent exits 0 once the machine runs; the pid file names the
    daemon, which a SIGTERM ends, and the pid file goes with it."""
    rom = build_rom(tmp_path, 5, letter="S")
    pidfile = tmp_path / "vm.pid"
    log = tmp_path / "debugcon.log"
    proc = subprocess.run([_prog(emulator), "-daemonize", "-pidfile", str(pidfile),
                           *vm_args(rom, log)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    pid = int(pidfile.read_text())
    try:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and (not log.exists() or len(log.read_bytes()) < 4):
            time.sleep(0.05)
        assert log.read_bytes() == b"SOKO"
    finally:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end and pidfile.exists():
        time.sleep(0.05)
    assert not pidfile.exists()


def _serial_until(emulator: str, args: list[str], marker: bytes) -> bytes:
    """-nographic output up to and including the line with ``marker``."""
    proc = subprocess.Popen([_prog(emulator), "-nographic", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    try:
        end = time.monotonic() + DEADLINE
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while marker not in out and time.monotonic() < end:
            chunk = proc.stdout.read(4096)
            if chunk:
                out += chunk
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DEADLINE)
    assert marker in out, out
    return out[:out.index(b"\n", out.index(marker)) + 1]


def test_unbootable_disk_message_equals_qemu(tmp_path: Path) -> None:
    """A disk without a boot signature: SeaBIOS's banner and its refusal, as under qemu."""
    disk = tmp_path / "zeros.raw"
    disk.write_bytes(bytes(1 << 20))
    args = ["-net", "none", "-drive", f"file={disk},format=raw", "-snapshot"]
    marker = b"Boot failed: not a bootable disk"
    theirs = _serial_until(QEMU, args, marker)
    ours = _serial_until(OURS, args, marker)
    assert b"SeaBIOS (version" in theirs
    assert ours == theirs


def test_multiboot_memory_map_above_4g_equals_qemu() -> None:
    """-m 4G -kernel: the Multiboot memory fields and e820 map (RAM split at 3 GiB, the
    rest above 4 GiB, SeaBIOS's and QEMU's reservations) as under qemu-system-x86_64."""
    from tests.guests.build_x86 import build_mbkernel

    kernel = build_mbkernel()
    lines = []
    for emulator in EMULATORS:
        proc = subprocess.run([_prog(emulator), "-display", "none", "-serial", "stdio",
                               "-net", "none", "-m", "4G", "-kernel", str(kernel)],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=DEADLINE)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.decode("latin-1").split("\r\n")
        lines.append([line for line in out if line.startswith(("MBK mem", "MBK mmap"))])
    assert any("base=0x0000000100000000 len=0x0000000040000000 type=1" in line
               for line in lines[0])
    assert lines[1] == lines[0]


def _states_after_poweroff(emulator: str, disk: Path, tmp_path: Path) -> list[str]:
    from qemu.qmp.qmp_client import ExecuteError

    async def body(client: Any) -> list[str]:
        await _qmp_wait_status(client, "shutdown")
        seen = []
        try:
            await client.execute("cont")
            seen.append("cont accepted")
        except ExecuteError as exc:
            seen.append(f"cont refused: {exc.error.error.desc}")
        for cmd in ("system_reset", "stop", "cont"):
            await client.execute(cmd)
            seen.append(f"{cmd}: {await _qmp_status(client)}")
        return seen

    seen, _ = _with_qmp(emulator, _boot_args(disk, "-no-shutdown"),
                        tmp_path / f"{emulator}-states.sock", body)
    return seen


def test_run_states_after_guest_poweroff_equal_qemu(boot_image: Path, tmp_path: Path) -> None:
    """-no-shutdown: cont is refused until a reset, which leaves the VM in prelaunch."""
    theirs = _states_after_poweroff(QEMU, boot_image, tmp_path)
    ours = _states_after_poweroff(OURS, boot_image, tmp_path)
    assert theirs[0] == "cont refused: Resetting the Virtual Machine is required"
    assert ours == theirs


def _mtree_memory(emulator: str, disk: Path, tmp_path: Path, boot: bool) -> list[str]:
    """The 'address-space: memory' section of info mtree, at -S or after the boot
    sector's power-off (the PAM registers as SeaBIOS left them)."""
    async def body(client: Any) -> str:
        await _qmp_wait_status(client, "shutdown" if boot else "prelaunch")
        return await _hmp(client, "info mtree")

    text, _ = _with_qmp(emulator, _boot_args(disk, "-no-shutdown" if boot else "-S"),
                        tmp_path / f"{emulator[0]}{int(boot)}.sock", body)
    section = text.split("address-space: memory\r\n", 1)[1].split("\r\n\r\n", 1)[0]
    # regions pyqemu does not have: IOAPIC, HPET, LAPIC/MSI, the PCI VGA's BARs and the
    # kvmvapic option ROM
    missing = ("ioapic", "hpet", "apic-msi", "vga.vram", "vga.mmio", "edid",
               "vga ioports remapped", "bochs dispi interface", "qemu extended regs",
               "kvmvapic-rom")
    return [line for line in section.splitlines()
            if line.strip() and not any(n in line for n in missing)]


@pytest.mark.parametrize("boot", [False, True], ids=["prelaunch", "after-boot"])
def test_mtree_memory_equals_qemu(boot_image: Path, tmp_path: Path, boot: bool) -> None:
    """info mtree: RAM, the pci container (VGA window, pc.rom, isa-bios, pc.bios) and
    each PAM segment's alias (pci / rom / ram), at power-on and as SeaBIOS leaves them."""
    theirs = _mtree_memory(QEMU, boot_image, tmp_path, boot)
    ours = _mtree_memory(OURS, boot_image, tmp_path, boot)
    assert any("pam-ram" in line for line in theirs) == boot
    assert ours == theirs
