"""Boot tests: the same command lines under qemu-system-x86_64 and pyqemu-system-x86_64.

The guests are tests/guests/x86/bootsect.asm (booted by SeaBIOS from IDE, raw
and qcow2) and the Multiboot kernel of tests/guests/x86/mbkernel/ (-kernel).
Each test runs once per emulator; under qemu-system-x86_64 it checks what the
guest's design says it prints, under pyqemu-system-x86_64 it checks the same and
that the output equals qemu-system-x86_64's (run with the same options).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.system.conftest import (
    QEMU_SYSTEM,
    RunningVM,
    fnv1a32,
    qmp_connect,
    qmp_disconnect,
    qmp_wait_status,
    run_vm,
)

BIOS = Path("/usr/share/seabios/bios-256k.bin")
COMMON = ["-net", "none", "-m", "128"]

# qemu-system-x86_64's results, by command line (tmp paths replaced by names)
_reference: dict[tuple[str, ...], Any] = {}


def _reference_run(key: tuple[str, ...], run: Any) -> Any:
    if key not in _reference:
        _reference[key] = run()
    return _reference[key]


def seabios_banner() -> bytes:
    """The banner line SeaBIOS prints, with the version string of the BIOS image qemu uses."""
    image = BIOS.read_bytes()
    assert b"SeaBIOS (version %s)" in image
    versions = re.findall(rb"\0(\d+\.\d+\.\d+[^\0\s]*)\0", image)
    assert len(versions) == 1, versions
    return b"SeaBIOS (version " + versions[0] + b")"


def boot_lines(disk: Path) -> list[bytes]:
    """What the boot sector prints itself on COM1 for ``disk`` (it copies the
    second sector to the third and reads that back: the same hash)."""
    h = b"%08X" % fnv1a32(disk.read_bytes()[512:1024])
    return [b"BOOT serial", b"BOOT chs " + h, b"BOOT lba " + h, b"BOOT write " + h, b"BOOT OK"]


def _is_qemu(emulator: str) -> bool:
    return Path(emulator).name == QEMU_SYSTEM


def test_bootsector_nographic_raw(system_emulator: str, qemu_system: str, boot_disk: Path) -> None:
    """-nographic: SeaBIOS's banner and boot line, int 10h text and the sector's own
    lines; -snapshot keeps the sector's write out of the image."""
    before = boot_disk.read_bytes()
    args = ["-nographic", *COMMON, "-hda", str(boot_disk), "-snapshot"]
    res = run_vm([system_emulator, *args])
    assert boot_disk.read_bytes() == before
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    lines = res.stdout.split(b"\r\n")
    assert lines[0].endswith(seabios_banner()), lines[0]
    assert lines[1:] == [b"Booting from Hard Disk...", b"BOOT int10", *boot_lines(boot_disk), b""]
    if not _is_qemu(system_emulator):
        ref = _reference_run(("nographic-raw",), lambda: run_vm([qemu_system, *args]))
        assert res.stdout == ref.stdout
        assert res.stderr == ref.stderr


def test_bootsector_qcow2_serial_file(
    system_emulator: str, boot_disk: Path, tmp_path: Path, qemu_img: str
) -> None:
    """A qcow2 image made by qemu-img on -drive if=ide, serial to a file; the sector's
    write lands in the image, which qemu-img then checks and reads."""
    image = tmp_path / "boot.qcow2"
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(boot_disk), str(image)], check=True
    )
    serial = tmp_path / "serial.txt"
    args = [
        "-display", "none", *COMMON,
        "-drive", f"file={image},format=qcow2,if=ide,index=0,media=disk",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    res = run_vm([system_emulator, *args])
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    # without -nographic SeaBIOS has no serial console: only the sector's own lines
    assert serial.read_bytes() == b"".join(line + b"\r\n" for line in boot_lines(boot_disk))
    check = subprocess.run([qemu_img, "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    after = tmp_path / "after.raw"
    subprocess.run(
        [qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(image), str(after)], check=True
    )
    old, new = boot_disk.read_bytes(), after.read_bytes()
    assert new == old[:1024] + old[512:1024] + old[1536:]


def test_bootsector_debugcon(system_emulator: str, boot_disk: Path, tmp_path: Path) -> None:
    """isa-debugcon at 0x402: SeaBIOS's debug log, ending with the sector's line."""
    log = tmp_path / "debugcon.log"
    args = [
        "-display", "none", "-serial", "none", *COMMON, "-hda", str(boot_disk), "-snapshot",
        "-chardev", f"file,id=dbg,path={log}",
        "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
    ]  # fmt: skip
    res = run_vm([system_emulator, *args])
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    text = log.read_bytes()
    assert seabios_banner() in text
    assert text.endswith(b"Booting from Hard Disk...\nBooting from 0000:7c00\nBOOT debugcon\n")


# ---- Multiboot kernel ----

# What the kernel's fault handlers must see: (vector, error code, CR2); the
# addresses are kernel.c's UNMAPPED_BIG + 0x123, HOLE_PAGE + 0x10, RO_PAGE + 8,
# the selector is the one past its GDT's limit. int3 resumes after itself with
# eax 3; int 0x80 returns 2 * 20 + 1.
FAULTS = {
    "pf-read": (14, 0, 0x40000123, 0xDEAD),
    "pf-write": (14, 2, 0x007FE010, 0xDEAD),
    "pf-readonly": (14, 3, 0x007FF008, 0xDEAD),
    "gp-selector": (13, 0x50, 0, 0xDEAD),
    "divide": (0, 0, 0, 0xDEAD),
    "ud2": (6, 0, 0, 0xDEAD),
    "int3": (3, 0, 0, 3),
    "int80": (128, 0, 0, 41),
}
FAULT_RE = re.compile(
    r"MBK fault (\S+) vec=(\d+) err=0x([0-9a-f]+) cr2=0x([0-9a-f]+) off=(\d+) ret=0x([0-9a-f]+)"
)


def parse_xp_halfwords(text: str) -> list[int]:
    """Values of an HMP ``xp /Nhx`` dump (``addr: 0x.... 0x....`` lines)."""
    values: list[int] = []
    for line in text.splitlines():
        if ":" in line:
            values += [int(v, 16) for v in line.split(":", 1)[1].split()]
    return values


async def _multiboot_session(vm: RunningVM, sock: Path) -> tuple[dict, list[str], str]:
    from qemu.qmp import EventListener

    client = await qmp_connect(sock, vm)
    listener = EventListener(("SHUTDOWN", "STOP"))
    client.register_listener(listener)
    try:
        status = await qmp_wait_status(client, vm, "shutdown")
        vga = await client.execute("human-monitor-command", {"command-line": "xp /2000hx 0xb8000"})
        events = [e["event"] for e in listener.history]
        shutdown = [e["data"] for e in listener.history if e["event"] == "SHUTDOWN"]
        await client.execute("quit")
    finally:
        await qmp_disconnect(client)
    assert shutdown == [{"guest": True, "reason": "guest-shutdown"}], listener.history
    return status, events, vga


def run_multiboot(emulator: str, kernel: Path, tmp_path: Path) -> tuple[list[str], list[str], dict]:
    """Boot the kernel with -no-shutdown; returns serial lines, VGA rows, final status."""
    tmp_path.mkdir(exist_ok=True)
    sock = tmp_path / "qmp.sock"
    vm = RunningVM(
        [
            emulator,
            "-display",
            "none",
            "-serial",
            "stdio",
            *COMMON,
            "-kernel",
            str(kernel),
            "-append",
            "hello bench=1",
            "-no-shutdown",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ]  # fmt: skip
    )
    try:
        status, events, vga = asyncio.run(_multiboot_session(vm, sock))
        rc, out, err = vm.wait()
    finally:
        vm.stop()
    assert rc == 0, err.decode(errors="replace")
    assert "SHUTDOWN" in events
    cells = parse_xp_halfwords(vga)
    assert len(cells) == 2000, vga
    rows = [
        bytes(c & 0xFF for c in cells[r * 80 : r * 80 + 80]).decode("latin-1").rstrip()
        for r in range(25)
    ]
    assert all(c >> 8 == 0x07 for c in cells), "attribute bytes other than 0x07"
    return out.decode("latin-1").split("\r\n"), rows, status


def test_multiboot_kernel(
    system_emulator: str, qemu_system: str, mbkernel: Path, tmp_path: Path
) -> None:
    """-kernel: Multiboot info, 100 Hz PIT ticks, fault handlers, VGA text, guest poweroff."""
    lines, rows, status = run_multiboot(system_emulator, mbkernel, tmp_path)
    assert status == {"status": "shutdown", "running": False, "singlestep": False}

    assert lines[0] == "MBK hello" and lines[-2:] == ["MBK DONE", ""], lines
    assert "MBK magic=0x2badb002" in lines[1]
    assert f"MBK cmdline={mbkernel} hello bench=1" in lines
    # VGA: the screen scrolled; it holds the last 24 serial lines (cut at 80
    # columns) and an empty row
    assert rows == [line[:80].rstrip() for line in lines[-25:-1]] + [""]

    ticks = [int(line.split()[2]) for line in lines if line.startswith("MBK ticks ")]
    # 100 Hz PIT interrupts counted between two RTC second changes. Both timers run on
    # host time, so a starved emulator merges edges the guest had no time to take (as
    # qemu's TCG PIT does): on an idle host 95-105, with 4 busy processes on 2 cores
    # pyqemu once counted 50. Asserting the rate exactly would be a timed assertion;
    # the interrupts must arrive, never faster than 100 Hz.
    assert len(ticks) == 1 and 20 <= ticks[0] <= 110, ticks
    seen = {}
    for line in lines:
        if m := FAULT_RE.fullmatch(line):
            seen[m[1]] = (int(m[2]), int(m[3], 16), int(m[4], 16), int(m[6], 16))
    assert seen == FAULTS
    assert any(line.startswith("MBK bench done iters=1000000 hash=") for line in lines)

    if not _is_qemu(system_emulator):
        ref_lines, ref_rows, _ = _reference_run(
            ("multiboot",), lambda: run_multiboot(qemu_system, mbkernel, tmp_path / "ref")
        )

        def no_ticks(ls: list[str]) -> list[str]:
            return [line for line in ls if not line.startswith("MBK ticks ")]

        assert no_ticks(lines) == no_ticks(ref_lines)
        assert no_ticks(rows) == no_ticks(ref_rows)
