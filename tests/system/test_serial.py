"""The 16550A driven through the port bus as a guest driver would, compared register read
by register read (and IRQ 4 level after every access) with qemu-system-x86_64's own UART
driven through qtest; receive and transmit through real sockets on both sides."""

from __future__ import annotations

import queue
import socket
import subprocess
from typing import Any

import pytest
from pyqemu.system import chardev as chardev_mod
from pyqemu.system.bus import IrqLine, PortBus
from pyqemu.system.chardev import open_chardev
from pyqemu.system.clock import VirtualClock
from pyqemu.system.devices.serial import Serial16550

COM1 = 0x3F8
QEMU = "qemu-system-x86_64"


@pytest.fixture(autouse=True)
def _close_chardevs():
    yield
    chardev_mod.close_all()


class QtestUart:
    """qemu-system-x86_64's COM1 through the qtest protocol (CPU stopped: -S)."""

    def __init__(self, serial: str = "null") -> None:
        self.proc = subprocess.Popen(
            [QEMU, "-nodefaults", "-display", "none", "-S", "-machine", "pc",
             "-qtest", "stdio", "-qtest-log", "/dev/null", "-serial", serial],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        self.irq = False
        self._cmd("irq_intercept_in ioapic")

    def _cmd(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        while True:
            reply = self.proc.stdout.readline()
            assert reply, f"qemu exited during {line!r}"
            reply = reply.strip()
            if reply.startswith("IRQ "):
                _, what, num = reply.split()
                if num == "4":
                    self.irq = what == "raise"
                continue
            assert reply.startswith("OK"), (line, reply)
            return reply

    def outb(self, port: int, value: int) -> None:
        self._cmd(f"outb {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        return int(self._cmd(f"inb {port:#x}").split()[1], 16)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class OurUart:
    """Our Serial16550 on a PortBus; posted chardev input runs on this (test) thread."""

    def __init__(self, serial: str = "null", clock: VirtualClock | None = None) -> None:
        self.bus = PortBus()
        self.irq = False
        self.posted: queue.Queue = queue.Queue()
        line = IrqLine(self._set_irq)
        self.chardev = open_chardev(serial)
        self.uart = Serial16550(self.bus, COM1, line, self.chardev, post=self.posted.put,
                                clock=clock)

    def _set_irq(self, level: bool) -> None:
        self.irq = level

    def service(self, block: bool = False) -> None:
        """Run what the chardev reader thread handed over (the CPU thread's job)."""
        try:
            fn = self.posted.get(timeout=30) if block else self.posted.get_nowait()
        except queue.Empty:
            return
        fn()
        while not self.posted.empty():
            self.posted.get_nowait()()

    def outb(self, port: int, value: int) -> None:
        self.service()
        self.bus.write(port, 1, value)

    def inb(self, port: int) -> int:
        self.service()
        return self.bus.read(port, 1)

    def close(self) -> None:
        self.chardev.close()


def run_script(dev, script: list[tuple]) -> list[tuple[str, int, bool]]:
    """Apply ('w', offset, value) / ('r', offset) steps; record each read and the IRQ."""
    trace = []
    for step in script:
        if step[0] == "w":
            dev.outb(COM1 + step[1], step[2])
            trace.append((f"w{step[1]}={step[2]:#x}", -1, dev.irq))
        else:
            trace.append((f"r{step[1]}", dev.inb(COM1 + step[1]), dev.irq))
    return trace


def w(off: int, val: int) -> tuple:
    return ("w", off, val)


def r(off: int) -> tuple:
    return ("r", off)


ALL_REGS = [r(i) for i in range(8)]

# a guest driver's init: divisor, line format, FIFO, modem control, scratch
INIT = [*ALL_REGS, w(3, 0x80), w(0, 0x01), w(1, 0x00), r(0), r(1), w(3, 0x03), *ALL_REGS,
        w(2, 0xC7), r(2), w(4, 0x0B), w(7, 0x5A), r(7), w(1, 0x0F), r(2), r(2), r(2),
        *ALL_REGS]

# loopback: echo, MSR from MCR, overrun without FIFO, interrupt priority order
LOOPBACK = [w(4, 0x10), w(1, 0x00), w(0, 0x41), r(5), r(0), r(5),
            w(4, 0x1F), r(6), w(4, 0x13), r(6), w(4, 0x1C), r(6),
            # no FIFO: two bytes unread -> overrun; all interrupts on
            w(0, 0x31), w(0, 0x32), w(1, 0x0F), r(2), r(5), r(2), r(0), r(2), r(2), r(5),
            # THRE interrupt raised by enabling it while THR is empty
            w(1, 0x00), r(2), w(1, 0x02), r(2), r(2), w(1, 0x00),
            *ALL_REGS]

# FIFO trigger levels 1, 4, 8, 14 and a FIFO overrun, in loopback
FIFO = [w(4, 0x10), w(2, 0x01), r(2), w(1, 0x01)]
for itl_bits, level in ((0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)):
    FIFO += [w(2, itl_bits | 0x07), r(2), r(5)]
    for i in range(level + 1):
        FIFO += [w(0, 0x61 + i), r(2)]
    FIFO += [r(0), r(2), r(5)]
    FIFO += [r(0) for _ in range(level + 1)] + [r(2), r(5)]
FIFO += [w(2, 0xC7)] + [w(0, 0x40 + i) for i in range(20)] + [r(5), r(5), r(2)]
FIFO += [r(0) for _ in range(17)] + [r(5), r(2), w(2, 0x00), r(2), *ALL_REGS]


@pytest.mark.parametrize("script", [INIT, LOOPBACK, FIFO], ids=["init", "loopback", "fifo"])
def test_registers_match_qemu(script) -> None:
    theirs_dev = QtestUart()
    try:
        theirs = run_script(theirs_dev, script)
    finally:
        theirs_dev.close()
    ours_dev = OurUart()
    ours = run_script(ours_dev, script)
    ours_dev.close()
    assert ours == theirs
    assert any(v >= 0 for _, v, _ in ours)


def test_dlab_word_access_and_reset() -> None:
    dev = OurUart()
    dev.bus.write(COM1 + 3, 1, 0x80)
    dev.bus.write(COM1, 2, 0x0180)          # outw: DLL then DLM
    assert dev.uart.divider == 0x0180
    assert dev.bus.read(COM1, 2) == 0x0180
    dev.uart.reset()
    assert dev.bus.read(COM1 + 5, 1) == 0x60
    assert dev.bus.read(COM1 + 2, 1) == 0x01
    assert dev.uart.divider == 0x0C


def test_character_timeout_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    dev = OurUart(clock=clock)
    bus = dev.bus
    bus.write(COM1 + 3, 1, 0x80)
    bus.write(COM1, 1, 0x01)               # 115200 baud
    bus.write(COM1 + 3, 1, 0x03)           # 8N1: 10 bits per character
    bus.write(COM1 + 2, 1, 0xC7)           # FIFO, trigger 14
    bus.write(COM1 + 1, 1, 0x01)
    bus.write(COM1 + 4, 1, 0x10)
    for ch in b"ab":
        bus.write(COM1, 1, ch)
    assert bus.read(COM1 + 2, 1) == 0xC1    # below the trigger level: nothing yet
    char_ns = dev.uart.char_transmit_time_ns()
    assert char_ns == 1_000_000_000 * 10 // 115200
    clock.step(4 * char_ns - 1)
    clock.run_expired()
    assert bus.read(COM1 + 2, 1) == 0xC1 and not dev.irq
    clock.step(1)
    clock.run_expired()
    assert bus.read(COM1 + 2, 1) == 0xCC and dev.irq    # character timeout
    assert bus.read(COM1, 1) == ord("a")
    assert bus.read(COM1 + 2, 1) == 0xC1                # reading clears it, re-armed
    clock.step(4 * char_ns)
    clock.run_expired()
    assert bus.read(COM1 + 2, 1) == 0xCC
    assert bus.read(COM1, 1) == ord("b")
    assert bus.read(COM1 + 2, 1) == 0xC1 and bus.read(COM1 + 5, 1) == 0x60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest_receive(dev, count: int) -> tuple[bytes, set[int]]:
    """Poll LSR and read RBR as a driver without interrupts would."""
    data = bytearray()
    lsr_seen: set[int] = set()
    while len(data) < count:
        lsr = dev.inb(COM1 + 5)
        lsr_seen.add(lsr)
        if lsr & 0x01:
            data.append(dev.inb(COM1))
        elif isinstance(dev, OurUart):
            dev.service(block=True)
    return bytes(data), lsr_seen


def _connected(dev_factory, kind: str) -> tuple[Any, socket.socket]:  # noqa: ANN001
    """A UART whose chardev is a ``kind`` (tcp/telnet) server, and a client connected."""
    port = free_port()
    dev = dev_factory(f"{kind}:127.0.0.1:{port},server=on,wait=off")
    client = None
    while client is None:
        try:
            client = socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
    return dev, client


def socket_session(dev_factory, message: bytes) -> tuple[bytes, set[int], bytes, int]:
    dev, client = _connected(dev_factory, "tcp")
    with client:
        client.settimeout(30)
        dev.outb(COM1 + 2, 0x87)            # FIFO on, trigger level 8
        dev.outb(COM1 + 1, 0x01)
        client.sendall(message)
        # wait for the first bytes, then check that host input stops at the trigger level
        while not dev.inb(COM1 + 5) & 0x01:
            if isinstance(dev, OurUart):
                dev.service(block=True)
        while dev.inb(COM1 + 2) != 0xC4:   # RDI: the FIFO filled up to the trigger level
            if isinstance(dev, OurUart):
                dev.service(block=True)
        iir = dev.inb(COM1 + 2)
        received, lsr_seen = guest_receive(dev, len(message))
        for ch in b"reply\n":
            dev.outb(COM1, ch)
        echoed = b""
        while not echoed.endswith(b"\n"):
            echoed += client.recv(100)
    dev.close()
    return received, lsr_seen, echoed, iir


def test_receive_and_transmit_through_sockets_like_qemu() -> None:
    message = bytes(range(0x20, 0x7F)) * 2      # more than the FIFO holds, many times
    theirs = socket_session(QtestUart, message)
    ours = socket_session(OurUart, message)
    assert theirs[0] == message and ours[0] == message
    assert ours[2] == theirs[2] == b"reply\n"
    assert ours[3] == theirs[3] == 0xC4
    # flow control: the host never overran the receiver
    assert not any(lsr & 0x02 for lsr in ours[1] | theirs[1])


def telnet_session(dev_factory, payload: bytes, expect: int) -> tuple[bytes, bytes, bytes]:
    dev, client = _connected(dev_factory, "telnet")
    with client:
        client.settimeout(30)
        greeting = b""
        while len(greeting) < 12:
            greeting += client.recv(12 - len(greeting))
        client.sendall(payload)
        received, _ = guest_receive(dev, expect)
        for ch in b"x\xffy\n":
            dev.outb(COM1, ch)
        echoed = b""
        while not echoed.endswith(b"\n"):
            echoed += client.recv(100)
    dev.close()
    return greeting, received, echoed


def test_telnet_serial_like_qemu() -> None:
    # IAC WILL ECHO, IAC IAC, CR NUL, IAC IP + one byte, IAC SB x y, IAC SE + one byte
    payload = b"a\xff\xfb\x01b\xff\xffc\r\0d\xff\xf4e\xff\xfa\x18\x01\xff\xf0fgZ"
    theirs = telnet_session(QtestUart, payload, 10)
    ours = telnet_session(OurUart, payload, 10)
    assert ours == theirs
    assert ours[1] == b"ab\xffc\r\0d\x01gZ"
