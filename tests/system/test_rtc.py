"""MC146818 RTC and the pc CMOS layout: against qemu-system-x86_64, and over virtual time.

QEMU runs paused with ``-rtc base=<date>,clock=vm`` so its RTC stands still at a known
date; our Rtc starts at the same date on a stopped virtual clock. Every CMOS byte must
match, and so must every byte read back after random writes through ports 0x70/0x71.
"""

from __future__ import annotations

import calendar
import random
from pathlib import Path

import pytest
from pyqemu.system.bus import IrqLine, PortBus
from pyqemu.system.clock import NS_PER_SEC, VirtualClock
from pyqemu.system.devices.rtc import Rtc, cmos_init_pc, pc_ram_split, set_boot_order

from tests.system.conftest import edge_recorder
from tests.system.qtest_peer import QemuQtest

BASE = "2024-02-29T13:45:56"
BASE_TIME = calendar.timegm((2024, 2, 29, 13, 45, 56, 0, 0, 0))
GiB = 1 << 30
MiB = 1 << 20


def _rig(ram_size: int | None = 128 * MiB, boot: str = "cad",
         base_time: int = BASE_TIME) -> tuple[VirtualClock, PortBus, Rtc, list[int]]:
    clock = VirtualClock()
    bus = PortBus()
    irq8, rises = edge_recorder(clock)
    rtc = Rtc(bus, clock, irq8, ram_size, boot, base_time=base_time)
    return clock, bus, rtc, rises


def _cmos(bus: PortBus, index: int) -> int:
    bus.write(0x70, 1, index)
    return bus.read(0x71, 1)


def _qemu_dump(q: QemuQtest) -> list[int]:
    values = []
    for i in range(128):
        q.outb(0x70, i)
        values.append(q.inb(0x71))
    return values


@pytest.mark.parametrize("memory,size,boot", [
    ("128M", 128 * MiB, None),
    ("4G", 4 * GiB, "dc"),
    ("3584M", 3584 * MiB, "n"),
    ("3G", 3 * GiB, "cda"),
    ("6G", 6 * GiB, "d"),
    ("640K", 640 * 1024, "a"),
    ("17M", 17 * MiB, "cd"),
])
def test_cmos_matches_qemu(tmp_path: Path, memory: str, size: int, boot: str | None) -> None:
    args = ["-rtc", f"base={BASE},clock=vm"]
    if boot is not None:
        args += ["-boot", f"order={boot}"]
    with QemuQtest(tmp_path, *args, memory=memory) as q:
        theirs = _qemu_dump(q)
    _, bus, _, _ = _rig(size, boot or "cad")
    ours = [_cmos(bus, i) for i in range(128)]
    diffs = [f"{i:#04x}: ours {a:#04x} qemu {b:#04x}"
             for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not diffs, diffs
    # and the bytes the BIOS sizes memory from
    below, above = pc_ram_split(size)
    assert ours[0x34] | ours[0x35] << 8 == max(0, min(65535, (below - 16 * MiB) // 65536))
    assert ours[0x5B] | ours[0x5C] << 8 | ours[0x5D] << 16 == above // 65536


def test_cmos_hard_disks_match_qemu(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    args = ["-rtc", f"base={BASE},clock=vm"]
    geoms = [(100, 16, 63, 0), (1000, 9, 20, 1), None, (500, 4, 17, 2)]
    units = [("ide.0", 0, "none"), ("ide.0", 1, "lba"), None, ("ide.1", 1, "large")]
    for n, (geom, unit) in enumerate(zip(geoms, units, strict=True)):
        if geom is None or unit is None:
            continue
        args += ["-drive", f"if=none,id=d{n},file={disk},format=raw,file.locking=off",
                 "-device", f"ide-hd,drive=d{n},bus={unit[0]},unit={unit[1]},cyls={geom[0]},"
                            f"heads={geom[1]},secs={geom[2]},bios-chs-trans={unit[2]}"]
    with QemuQtest(tmp_path, *args) as q:
        theirs = _qemu_dump(q)
    clock = VirtualClock()
    bus = PortBus()
    rtc = Rtc(bus, clock, IrqLine(), base_time=BASE_TIME)
    cmos_init_pc(rtc, 128 * MiB, "cad", geoms)
    ours = [_cmos(bus, i) for i in range(128)]
    assert ours == theirs
    assert ours[0x12] == 0xFF and ours[0x19] == 47 and ours[0x1A] == 47
    assert ours[0x39] == (0 | 1 << 2 | 2 << 6)


def test_boot_order_errors() -> None:
    _, _, rtc, _ = _rig()
    with pytest.raises(ValueError, match="Too many boot devices for PC"):
        set_boot_order(rtc, "cdna")
    with pytest.raises(ValueError, match="Invalid boot device for PC: 'x'"):
        set_boot_order(rtc, "cx")


_TIME_INDEXES = (0, 2, 4, 6, 7, 8, 9, 0x32, 0x37)


def _random_rtc_write(rng: random.Random) -> tuple[int, int]:
    kind = rng.randrange(6)
    if kind == 0:
        return 0x70, rng.choice(_TIME_INDEXES + (1, 3, 5)) | rng.choice((0, 0x80))
    if kind == 1:
        return 0x70, rng.choice((0x0A, 0x0B, 0x0C, 0x0D, rng.randrange(0x80)))
    if kind == 2:                            # a valid BCD value
        return 0x71, (rng.randrange(6) << 4) | rng.randrange(10)
    if kind == 3:                            # register B modes: SET, DM, 24h, enables
        return 0x71, rng.choice((0x02, 0x06, 0x00, 0x04, 0x82, 0x86, 0x12, 0x22, 0x42))
    if kind == 4:                            # register A: dividers and rate
        return 0x71, rng.choice((0x26, 0x20, 0x70, 0x60, 0x2F, 0x23))
    return 0x71, rng.randrange(256)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_rtc_registers_match_qemu(tmp_path: Path, seed: int) -> None:
    """Random index/data writes and reads with time frozen: BCD/binary, 12/24-hour,
    SET mode, divider reset, alarm and flag registers, the century aliases."""
    rng = random.Random(seed)
    with QemuQtest(tmp_path, "-rtc", f"base={BASE},clock=vm") as q:
        q.irq_intercept_out(q.device_paths("mc146818rtc")[0])
        _, bus, rtc, _ = _rig()
        for step in range(2500):
            if rng.random() < 0.5:
                port, val = _random_rtc_write(rng)
                q.outb(port, val)
                bus.write(port, 1, val)
            else:
                port = 0x71 if rng.random() < 0.9 else 0x70
                theirs = q.inb(port)
                ours = bus.read(port, 1)
                assert ours == theirs, f"step {step}: in {port:#x}: ours {ours:#x} qemu {theirs:#x}"
            assert rtc.irq.level == q.irq_levels.get(0, False), f"step {step}: IRQ8"


@pytest.mark.parametrize("rate", [3, 6, 10, 15, 1])
def test_periodic_interrupt_rate(rate: int) -> None:
    clock, bus, rtc, rises = _rig()
    bus.write(0x70, 1, 0x0A)
    bus.write(0x71, 1, 0x20 | rate)
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x42)                 # PIE, 24-hour, BCD
    period = 1 << ((rate + 7 if rate <= 2 else rate) - 1)   # in 32768 Hz clocks
    span = NS_PER_SEC // 4 + 1 if period < 64 else 2 * NS_PER_SEC + 1
    pf = 0
    end = clock.now_ns() + span
    while (deadline := clock.next_deadline()) is not None and deadline <= end:
        clock.step(deadline - clock.now_ns())
        if rtc.irq.level:
            bus.write(0x70, 1, 0x0C)
            flags = bus.read(0x71, 1)
            assert flags & 0xC0 == 0xC0      # IRQF | PF
            pf += 1
    clock.step(end - clock.now_ns())
    # as QEMU: 1 ns after each end of a period of the 32768 Hz clock
    expected = []
    k = 1
    while (t := k * period * NS_PER_SEC // 32768 + 1) <= span:
        expected.append(t)
        k += 1
    assert rises == expected
    hz = 32768 // period                     # the rate register A selects
    assert pf == len(expected) == hz * span // NS_PER_SEC


def test_update_and_alarm_interrupts() -> None:
    clock, bus, rtc, rises = _rig()
    assert _cmos(bus, 0x00) == 0x56 and _cmos(bus, 0x04) == 0x13
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x12)                 # UIE
    for second in range(1, 6):
        clock.step(NS_PER_SEC)
        assert len(rises) == second
        assert _cmos(bus, 0x0C) == 0x90      # IRQF | UF
    assert rises == [i * NS_PER_SEC for i in range(1, 6)]
    assert _cmos(bus, 0x00) == 0x01 and _cmos(bus, 0x02) == 0x46   # 13:46:01
    # alarm at 13:46:04 with AIE only
    for index, val in ((0x01, 0x04), (0x03, 0x46), (0x05, 0x13), (0x0B, 0x22)):
        bus.write(0x70, 1, index)
        bus.write(0x71, 1, val)
    rises.clear()
    clock.step(2 * NS_PER_SEC + NS_PER_SEC // 2)
    assert rises == []
    clock.step(NS_PER_SEC // 2)
    assert rises == [8 * NS_PER_SEC]
    assert _cmos(bus, 0x0C) & 0xA0 == 0xA0   # IRQF | AF
    # "don't care" hours/minutes (0xC0+): every minute at :10
    for index, val in ((0x01, 0x10), (0x03, 0xC0), (0x05, 0xC0)):
        bus.write(0x70, 1, index)
        bus.write(0x71, 1, val)
    rises.clear()
    alarms = []
    for _ in range(130):
        clock.step(NS_PER_SEC)
        if rtc.irq.level:
            assert _cmos(bus, 0x0C) & 0xA0 == 0xA0
            alarms.append(clock.now_ns())
    assert rises == alarms == [t * NS_PER_SEC for t in (14, 74, 134)]


def test_uip_binary_12h_and_nmi_bit() -> None:
    clock, bus, rtc, _ = _rig()
    clock.step(NS_PER_SEC - 300_000)
    assert _cmos(bus, 0x0A) == 0x26
    clock.step(100_000)                      # inside the last 244 us of the second
    assert _cmos(bus, 0x0A) == 0xA6
    clock.step(200_000)
    assert _cmos(bus, 0x0A) == 0x26
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x04)                 # binary, 12-hour
    assert _cmos(bus, 0x04) == 0x81          # 1 PM
    assert _cmos(bus, 0x00) == 57
    assert _cmos(bus, 0x09) == 24 and _cmos(bus, 0x32) == 20
    bus.write(0x70, 1, 0x8F)
    assert rtc.nmi_disabled and rtc.cmos_index == 0x0F
    bus.write(0x70, 1, 0x0F)
    assert not rtc.nmi_disabled
    assert bus.read(0x70, 1) == 0xFF


def test_set_mode_freezes_and_restarts_time() -> None:
    clock, bus, rtc, _ = _rig()
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x82)                 # SET
    for index, val in ((0x00, 0x30), (0x02, 0x59), (0x04, 0x23), (0x07, 0x31),
                       (0x08, 0x12), (0x09, 0x99), (0x32, 0x19)):
        bus.write(0x70, 1, index)
        bus.write(0x71, 1, val)
    clock.step(5 * NS_PER_SEC)
    assert _cmos(bus, 0x00) == 0x30          # frozen while SET
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x02)
    clock.step(31 * NS_PER_SEC)
    assert [_cmos(bus, i) for i in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == \
        [0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]   # 2000-01-01 00:00:01
    assert _cmos(bus, 0x06) == 0x07          # a Saturday


def test_rtc_state_round_trip() -> None:
    """Another RTC loaded from get_state() reads and interrupts identically."""
    rng = random.Random(7)
    clock = VirtualClock()
    rigs: list[tuple[PortBus, Rtc, list[int]]] = []

    def make() -> tuple[PortBus, Rtc, list[int]]:
        bus = PortBus()
        rises: list[int] = []
        line = IrqLine(lambda level: rises.append(clock.now_ns()) if level else None)
        return bus, Rtc(bus, clock, line, 128 * MiB, "cad", base_time=BASE_TIME), rises

    def traffic(steps: int) -> None:
        for _ in range(steps):
            r = rng.random()
            if r < 0.15:
                clock.step(rng.randrange(300_000_000))
            elif r < 0.5:
                port, val = _random_rtc_write(rng)
                if port == 0x71 and rng.random() < 0.3:
                    val = rng.choice((0x12, 0x22, 0x42, 0x72, 0x02))   # interrupt enables
                for bus, _, _ in rigs:
                    bus.write(port, 1, val)
            else:
                assert len({bus.read(0x71, 1) for bus, _, _ in rigs}) == 1
            assert len({rtc.irq.level for _, rtc, _ in rigs}) == 1

    rigs.append(make())
    traffic(300)
    rigs.append(make())
    rigs[1][1].set_state(rigs[0][1].get_state())
    rigs[0][2].clear()
    traffic(1500)
    assert rigs[0][2] == rigs[1][2] and rigs[0][2]
