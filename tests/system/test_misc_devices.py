"""i8042, port 0x92 and the ISA debug console, against qemu-system-x86_64 through qtest."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pyqemu.system.bus import IrqLine, PortBus
from pyqemu.system.devices.debugcon import DebugCon
from pyqemu.system.devices.i8042 import I8042
from pyqemu.system.devices.port92 import Port92

from tests.system.qtest_peer import QemuQtest

# controller commands that do not reset the machine (0xFE and the even 0xF0-0xFE pulse it)
SAFE_COMMANDS = (0x20, 0x60, 0xA1, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAD, 0xAE, 0xC0, 0xD0,
                 0xD1, 0xD2, 0xD3, 0xD4, 0xDD, 0xDF, 0xF1, 0xFF, 0x00, 0x42, 0xC5)
WRITE_COMMANDS = (0x60, 0xD1, 0xD2, 0xD3, 0xD4)
KBD_BYTES = (0xFF, 0xF2, 0xEE, 0xF4, 0xF5, 0xF6, 0xF0, 0x00, 0x01, 0x02, 0x03, 0xED, 0x07,
             0xF3, 0x20, 0xFA, 0xFC, 0x05, 0x99)
MOUSE_BYTES = (0xFF, 0xF2, 0xF4, 0xF5, 0xF6, 0xE9, 0xE8, 0xF3, 0x03, 0xE6, 0xEA, 0x12)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()

    def reset(self) -> None:
        self.events.append("reset")

    def a20(self, on: bool) -> None:
        self.events.append(f"a20={int(on)}")

    def write(self, data: bytes) -> None:
        self.data += data


def _i8042_rig() -> tuple[PortBus, I8042, IrqLine, IrqLine, Recorder]:
    bus = PortBus()
    rec = Recorder()
    irq1, irq12 = IrqLine(), IrqLine()
    kbc = I8042(bus, irq1, irq12, rec.reset, rec.a20)
    return bus, kbc, irq1, irq12, rec


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_i8042_matches_qemu(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with QemuQtest(tmp_path) as q:
        q.irq_intercept_out(q.device_paths("i8042")[0])
        bus, _, irq1, irq12, rec = _i8042_rig()
        write_cmd = 0
        for step in range(2500):
            r = rng.random()
            if r < 0.25:
                val = rng.choice(SAFE_COMMANDS)
                port = 0x64
                if val in WRITE_COMMANDS:
                    write_cmd = val
            elif r < 0.5:
                port = 0x60
                if write_cmd == 0xD1:
                    val = rng.randrange(256) | 0x01     # keep the CPU out of reset
                elif write_cmd == 0xD4:
                    val = rng.choice(MOUSE_BYTES)
                elif write_cmd == 0:
                    val = rng.choice(KBD_BYTES)
                else:
                    val = rng.randrange(256)
                write_cmd = 0
            else:
                port = rng.choice((0x60, 0x64))
                theirs = q.inb(port)
                ours = bus.read(port, 1)
                assert ours == theirs, f"step {step}: in {port:#x}: ours {ours:#x} qemu {theirs:#x}"
                port = 0
            if port:
                q.outb(port, val)
                bus.write(port, 1, val)
            assert irq1.level == q.irq_levels.get(0, False), f"step {step}: IRQ1"
            assert irq12.level == q.irq_levels.get(1, False), f"step {step}: IRQ12"
        assert "reset" not in rec.events


def _drain(bus: PortBus) -> list[int]:
    out = []
    while bus.read(0x64, 1) & 0x01:
        out.append(bus.read(0x60, 1))
    return out


def test_i8042_self_test_keyboard_reset_and_input() -> None:
    bus, kbc, irq1, irq12, rec = _i8042_rig()
    assert bus.read(0x64, 1) == 0x18
    bus.write(0x64, 1, 0xAA)
    assert irq1.level and bus.read(0x64, 1) == 0x1D
    assert bus.read(0x60, 1) == 0x55 and not irq1.level
    bus.write(0x60, 1, 0xFF)                   # keyboard reset
    assert _drain(bus) == [0xFA, 0xAA]
    bus.write(0x60, 1, 0xF2)                   # identify: MF2 keyboard
    assert _drain(bus) == [0xFA, 0xAB, 0x83]
    kbc.key_input(b"\x1c\xf0\x1c")             # 'a' press and release, set 2
    assert irq1.level
    assert _drain(bus) == [0x1C, 0xF0, 0x1C]
    assert bus.read(0x60, 1) == 0x1C           # empty: the last byte again
    bus.write(0x64, 1, 0xAD)                   # keyboard port disabled: held back
    kbc.key_input(b"\x32")
    assert not irq1.level and _drain(bus) == []
    bus.write(0x64, 1, 0xAE)
    assert irq1.level and _drain(bus) == [0x32]
    bus.write(0x60, 1, 0xF5)                   # scanning off: keys are dropped
    assert _drain(bus) == [0xFA]
    kbc.key_input(b"\x1c")
    assert _drain(bus) == []
    bus.write(0x60, 1, 0xF0)                   # scan code set query ...
    bus.write(0x60, 1, 0x00)                   # ... its unread ACK is dropped
    assert _drain(bus) == [0xFA, 0x02]
    bus.write(0x64, 1, 0xD4)                   # mouse reset through the controller
    bus.write(0x60, 1, 0xFF)
    assert irq12.level and bus.read(0x64, 1) & 0x20
    assert _drain(bus) == [0xFA, 0xAA, 0x00]
    assert rec.events == []


def test_i8042_reset_and_a20() -> None:
    bus, kbc, _, _, rec = _i8042_rig()
    bus.write(0x64, 1, 0xD0)
    assert bus.read(0x60, 1) == 0xCF           # reset line high, A20 on, ones
    bus.write(0x64, 1, 0xDD)
    bus.write(0x64, 1, 0xDF)
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0xDD)                   # A20 off, reset high
    assert rec.events == ["a20=0", "a20=1", "a20=0"]
    bus.write(0x64, 1, 0xFF)                   # pulse nothing
    bus.write(0x64, 1, 0xF1)
    assert rec.events[-1] == "a20=0"
    bus.write(0x64, 1, 0xFE)
    bus.write(0x64, 1, 0xF0)                   # pulse bit 0: reset
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x02)                   # output port bit 0 low: reset
    assert rec.events[3:] == ["reset", "reset", "a20=1", "reset"]


def test_port92_matches_qemu(tmp_path: Path) -> None:
    rng = random.Random(41)
    bus = PortBus()
    rec = Recorder()
    port92 = Port92(bus, rec.a20, rec.reset)
    expected = []
    with QemuQtest(tmp_path) as q:
        assert bus.read(0x92, 1) == q.inb(0x92)
        for _ in range(50):
            val = rng.randrange(256) & ~1      # bit 0 would reset the machine
            q.outb(0x92, val)
            bus.write(0x92, 1, val)
            expected.append(f"a20={(val >> 1) & 1}")
            assert bus.read(0x92, 1) == q.inb(0x92)
    assert rec.events == expected
    bus.write(0x92, 1, 0x03)                   # bit 0 rising: fast reset
    bus.write(0x92, 1, 0x03)                   # still set: nothing new
    assert rec.events[-3:] == ["a20=1", "reset", "a20=1"]
    port92.reset()
    assert bus.read(0x92, 1) == 0x02


def test_debugcon_matches_qemu(tmp_path: Path) -> None:
    out = tmp_path / "debugcon.txt"
    text = b"SeaBIOS (version 1.16)\nbooting\x00\xff\n"
    with QemuQtest(tmp_path, "-chardev", f"file,id=dc,path={out}",
                   "-device", "isa-debugcon,iobase=0x402,chardev=dc") as q:
        for b in text:
            q.outb(0x402, b)
        q.cmd("outw 0x402 0x4241")             # a word write: only the low byte lands
        q.cmd("outl 0x402 0x44434241")
        theirs_read = q.inb(0x402)
    bus = PortBus()
    rec = Recorder()
    DebugCon(bus, rec)
    for b in text:
        bus.write(0x402, 1, b)
    bus.write(0x402, 2, 0x4241)
    bus.write(0x402, 4, 0x44434241)
    assert bytes(rec.data) == out.read_bytes() == text + b"AA"
    assert bus.read(0x402, 1) == theirs_read == 0xE9


def test_i8042_and_port92_state_round_trip() -> None:
    rng = random.Random(8)
    rigs = [_i8042_rig()]
    port92s = [Port92(rigs[0][0], None, None)]

    def traffic(steps: int) -> None:
        write_cmd = 0
        for _ in range(steps):
            r = rng.random()
            if r < 0.25:
                port, val = 0x64, rng.choice(SAFE_COMMANDS)
                write_cmd = val if val in WRITE_COMMANDS else write_cmd
            elif r < 0.5:
                port = 0x60
                val = (rng.randrange(256) | 1 if write_cmd == 0xD1 else
                       rng.choice(MOUSE_BYTES) if write_cmd == 0xD4 else
                       rng.choice(KBD_BYTES) if write_cmd == 0 else rng.randrange(256))
                write_cmd = 0
            elif r < 0.55:
                port, val = 0x92, rng.randrange(256) & ~1
            elif r < 0.6:
                data = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 4)))
                for rig in rigs:
                    rig[1].key_input(data)
                continue
            else:
                port = rng.choice((0x60, 0x64, 0x92))
                assert len({rig[0].read(port, 1) for rig in rigs}) == 1
                continue
            for rig in rigs:
                rig[0].write(port, 1, val)
            assert len({(rig[2].level, rig[3].level) for rig in rigs}) == 1

    traffic(400)
    rigs.append(_i8042_rig())
    port92s.append(Port92(rigs[1][0], None, None))
    rigs[1][1].set_state(rigs[0][1].get_state())
    port92s[1].set_state(port92s[0].get_state())
    assert rigs[1][1].get_state() == rigs[0][1].get_state()
    traffic(2000)
    assert all("reset" not in rig[4].events for rig in rigs)
