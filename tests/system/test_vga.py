"""VGA text mode: the port registers compared access by access with qemu-system-x86_64's
VGA through qtest, and the text screen decoded from bytes written into guest RAM."""

from __future__ import annotations

import subprocess

from pyqemu.system.bus import PortBus
from pyqemu.system.devices.vga import TEXT_BASE, VgaText

QEMU = "qemu-system-x86_64"


def qemu_trace(script: list[tuple]) -> list[int]:
    """The script on qemu's VGA through qtest (CPU stopped), one command at a time."""
    proc = subprocess.Popen(
        [QEMU, "-nodefaults", "-vga", "std", "-display", "none", "-S", "-qtest", "stdio",
         "-qtest-log", "/dev/null"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, bufsize=1)
    assert proc.stdin is not None and proc.stdout is not None
    out = []
    try:
        for step in script:
            proc.stdin.write(f"outb {step[1]:#x} {step[2]:#x}\n" if step[0] == "w"
                             else f"inb {step[1]:#x}\n")
            reply = proc.stdout.readline().split()
            assert reply[0] == "OK", (step, reply)
            out.append(int(reply[1], 16) if len(reply) > 1 else -1)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    return out


def our_trace(script: list[tuple]) -> list[int]:
    bus = PortBus()
    VgaText(bytearray(0x100000), bus, bios_mode3=False)
    out = []
    for step in script:
        if step[0] == "w":
            bus.write(step[1], 1, step[2])
            out.append(-1)
        else:
            out.append(bus.read(step[1], 1))
    return out


def w(port: int, value: int) -> tuple:
    return ("w", port, value)


def r(port: int) -> tuple:
    return ("r", port)


def test_registers_match_qemu() -> None:
    script = [r(0x3CC), r(0x3DA), r(0x3D4), r(0x3B4), r(0x3BA), r(0x3BA), r(0x3C6)]
    # monochrome addressing at power-on: the CRTC answers at 0x3B4
    script += [w(0x3B4, 0x0E), w(0x3B5, 0x12), r(0x3B5), w(0x3D4, 0x0F), r(0x3D4)]
    script += [w(0x3C2, 0x67), r(0x3CC), r(0x3B4), r(0x3D4)]
    # CRTC: cursor and start address, index wrap, the CR0-7 write protection
    for index, value in ((0x0A, 0x0D), (0x0B, 0x0E), (0x0C, 0x01), (0x0D, 0x40),
                         (0x0E, 0x02), (0x0F, 0x34), (0x11, 0x8E), (0x03, 0x55),
                         (0x07, 0xFF), (0x11, 0x0E), (0x03, 0x55), (0x40, 0x99)):
        script += [w(0x3D4, index), w(0x3D5, value), r(0x3D5)]
    script += [w(0x3D4, 0x07), r(0x3D5), w(0x3D4, 0x03), r(0x3D5), r(0x3D4)]
    # input status 1 toggles; the attribute flip-flop is reset by reading it
    script += [r(0x3DA), r(0x3DA), r(0x3DA), w(0x3DA, 0xFF), r(0x3CA)]
    script += [w(0x3C0, 0x12), r(0x3C0), w(0x3C0, 0xFF), r(0x3C0), w(0x3C0, 0x31), r(0x3C0),
               r(0x3C1), w(0x3C0, 0x07), r(0x3DA), w(0x3C0, 0x10), w(0x3C0, 0xFF),
               w(0x3C0, 0x10), r(0x3C1), w(0x3C0, 0x13), w(0x3C0, 0xFF), w(0x3C0, 0x13),
               r(0x3C1), r(0x3DA), w(0x3C0, 0x15), r(0x3C1), r(0x3DA), w(0x3C0, 0x20)]
    # sequencer and graphics controller masks
    for i in range(8):
        script += [w(0x3C4, i), w(0x3C5, 0xFF), r(0x3C5)]
    script += [w(0x3C4, 0xFA), r(0x3C4)]
    for i in range(16):
        script += [w(0x3CE, i), w(0x3CF, 0xFF), r(0x3CF)]
    script += [w(0x3CE, 0xF5), r(0x3CE)]
    # DAC: write two entries, read them back
    script += [w(0x3C8, 0x05), r(0x3C8), r(0x3C7)]
    script += [w(0x3C9, v) for v in (0x3F, 0x20, 0x01, 0x02, 0x03, 0x04)]
    script += [r(0x3C8), w(0x3C7, 0x05), r(0x3C7)] + [r(0x3C9) for _ in range(7)]
    script += [r(0x3C2), r(0x3C3), r(0x3CD), w(0x3C2, 0x66), r(0x3DA), r(0x3BA), r(0x3CC)]
    assert our_trace(script) == qemu_trace(script)


def put_text(ram: bytearray, row: int, col: int, data: bytes, attr: int = 0x07,
             start: int = 0) -> None:
    for i, ch in enumerate(data):
        pos = TEXT_BASE + (start + row * 80 + col + i) * 2
        ram[pos] = ch
        ram[pos + 1] = attr


def test_text_screen_decodes_cp437() -> None:
    ram = bytearray(0x100000)
    vga = VgaText(memoryview(ram))
    put_text(ram, 0, 0, b"Hello, world!")
    put_text(ram, 1, 0, bytes([0xC9, 0xCD, 0xCD, 0xBB]), attr=0x1F)
    put_text(ram, 2, 0, bytes([0xBA, 0x01, 0x02, 0xBA]))
    put_text(ram, 3, 0, bytes([0xC8, 0xCD, 0xCD, 0xBC]))
    put_text(ram, 24, 76, bytes([0xDB, 0xB0, 0x7F, 0xE1]))
    put_text(ram, 10, 0, bytes([0x00, 0x41, 0x00]))
    screen = vga.text_screen()
    assert len(screen) == 25 and all(len(line) == 80 for line in screen)
    assert screen[0] == "Hello, world!".ljust(80)
    assert screen[1][:4] == "╔══╗"
    assert screen[2][:4] == "║☺☻║"
    assert screen[3][:4] == "╚══╝"
    assert screen[24][76:] == "█░⌂ß"
    assert screen[10][:3] == " A "
    assert screen[5] == " " * 80
    assert vga.cells()[1][0] == (0xC9, 0x1F)


def test_start_address_and_cursor_registers() -> None:
    ram = bytearray(0x100000)
    bus = PortBus()
    vga = VgaText(ram, bus)
    assert bus.read(0x3CC, 1) == 0x67          # colour addressing after mode 3
    put_text(ram, 0, 0, b"first page")
    put_text(ram, 0, 0, b"second page", start=80 * 25)
    bus.write(0x3D4, 2, 0x070C | 0x0000)       # outw: index 0x0C, value 0x07
    bus.write(0x3D4, 2, 0xD00D)                # start address 0x07D0 = 2000 cells
    assert vga.start_address() == 2000
    assert vga.text_screen()[0].startswith("second page")
    bus.write(0x3D4, 2, 0x000C)
    bus.write(0x3D4, 2, 0x000D)
    assert vga.text_screen()[0].startswith("first page")
    # cursor at row 12, column 40 = cell 1000 = 0x3E8
    bus.write(0x3D4, 1, 0x0E)
    bus.write(0x3D5, 1, 0x03)
    bus.write(0x3D4, 1, 0x0F)
    bus.write(0x3D5, 1, 0xE8)
    assert vga.cursor() == (12, 40, True)
    assert vga.cursor_shape() == (0x0D, 0x0E)
    bus.write(0x3D4, 1, 0x0A)
    bus.write(0x3D5, 1, 0x20)                  # cursor disable bit
    assert vga.cursor() == (12, 40, False)
    bus.write(0x3D5, 1, 0x06)
    bus.write(0x3D4, 1, 0x0D)
    bus.write(0x3D5, 1, 80)                    # scrolled by one line
    assert vga.cursor() == (11, 40, True)
    assert bus.read(0x3D5, 1) == 80
    # the state survives a save/load round trip
    other = VgaText(ram)
    other.set_state(vga.get_state())
    assert other.cursor() == vga.cursor() and other.text_screen() == vga.text_screen()
