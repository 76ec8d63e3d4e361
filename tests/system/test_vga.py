"""VGA text mode: the port registers compared access by access with qemu-system-x86_64's
VGA through qtest, and the text screen decoded from bytes written into guest RAM."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pyte
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


# ---------------------------------------------------------------------------------------
# -display curses, run in a pseudo-terminal and read back through a terminal emulator

CURSES_CHILD = r"""
import sys, time
from pyqemu.system.chardev import VcChardev
from pyqemu.system.devices.vga import VgaText, TEXT_BASE
from pyqemu.system.display import CursesDisplay

ram = bytearray(0x100000)
def put(row, col, data, attr):
    for i, ch in enumerate(data):
        ram[TEXT_BASE + (row * 80 + col + i) * 2] = ch
        ram[TEXT_BASE + (row * 80 + col + i) * 2 + 1] = attr
put(0, 0, b"SeaBIOS (version pyqemu)", 0x07)
put(5, 10, bytes([0xC9, 0xCD, 0xBB]) + b" boxed \x01", 0x1F)
put(24, 70, b"bottom row", 0x4E)
vga = VgaText(ram)
vga.cr[0x0E], vga.cr[0x0F] = 0x01, 0x90          # cursor at row 5, col 0
vc = VcChardev("compat_monitor0")
vc.write(b"QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ")
vc.set_reader(vc.write)                           # echo what is typed, as readline does
keys = []
def on_key(key):
    keys.append(key)
    with open(sys.argv[1], "a") as f:
        f.write(repr(key) + "\n")
display = CursesDisplay(vga, consoles=[vc], on_key=on_key)
display.start()
while keys[-2:] != ["\x03", "q"]:
    time.sleep(0.01)
display.stop()
print("child done")
"""


def run_in_pty(tmp_path, script: str):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 80, 0, 0))
    keyfile = tmp_path / "keys"
    keyfile.write_text("")
    env = dict(os.environ, TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    # the size is the pty's (TIOCSWINSZ): curses would take LINES/COLUMNS over it,
    # and pytest-xdist's workers set them to 24 x 80
    env.pop("LINES", None)
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-c", script, str(keyfile)], stdin=slave,
                            stdout=slave, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    os.close(slave)
    return proc, master, keyfile


def test_curses_display_in_a_terminal(tmp_path) -> None:
    screen = pyte.Screen(80, 25)
    stream = pyte.ByteStream(screen)
    proc, master, keyfile = run_in_pty(tmp_path, CURSES_CHILD)

    def pump_until(predicate) -> None:
        while not predicate():
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, "no output from the display"
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            assert data, screen.display
            stream.feed(data)

    try:
        pump_until(lambda: screen.display[24].endswith("bottom row"))
        assert screen.display[0].startswith("SeaBIOS (version pyqemu)")
        assert screen.display[5][10:21] == "╔═╗ boxed ☺"
        assert (screen.cursor.y, screen.cursor.x) == (5, 0)
        cell = screen.buffer[5][10]
        assert (cell.fg, cell.bg, cell.bold) == ("white", "blue", True)
        cell = screen.buffer[24][70]
        assert (cell.fg, cell.bg, cell.bold) == ("brown", "red", True)
        # Esc 2: the monitor console; typed keys go to its chardev
        os.write(master, b"\x1b2")
        pump_until(lambda: screen.display[1].startswith("(qemu)"))
        assert screen.display[0].startswith("QEMU 7.2.22 monitor")
        os.write(master, b"info")
        pump_until(lambda: screen.display[1].startswith("(qemu) info"))
        # Esc 1: back to the VGA screen; Ctrl-C and q are keys for the guest
        os.write(master, b"\x1b1")
        pump_until(lambda: screen.display[0].startswith("SeaBIOS"))
        os.write(master, b"x\x03q")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        proc.stderr.close()
    assert keyfile.read_text().split() == ["'x'", "'\\x03'", "'q'"]


def test_curses_needs_a_terminal_like_qemu() -> None:
    theirs = subprocess.run([QEMU, "-nodefaults", "-display", "curses", "-S"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    code = ("import sys\nfrom pyqemu.system.devices.vga import VgaText\n"
            "from pyqemu.system.display import CursesDisplay, DisplayError\n"
            "try:\n    CursesDisplay(VgaText(bytearray(0x100000))).start()\n"
            "except DisplayError as e:\n    print(e, file=sys.stderr); sys.exit(1)\n")
    ours = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr) == (
        1, "We need a terminal output\n")
