"""VirtualClock and PortBus: the substrate every device is built on."""

from __future__ import annotations

import pytest
from pyqemu.system.bus import IrqLine, PortBus
from pyqemu.system.clock import VirtualClock


def test_clock_frozen_until_started() -> None:
    clock = VirtualClock()
    assert clock.now_ns() == 0
    assert not clock.running
    assert clock.now_ns() == 0


def test_clock_runs_and_freezes() -> None:
    clock = VirtualClock()
    clock.start()
    assert clock.running
    clock.stop()
    frozen = clock.now_ns()
    assert frozen >= 0
    assert clock.now_ns() == frozen
    clock.start()
    assert clock.now_ns() >= frozen
    clock.stop()


def test_step_fires_timers_in_order_at_their_deadlines() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, int]] = []
    clock.add_timer(300, lambda: fired.append(("c", clock.now_ns())))
    clock.add_timer(100, lambda: fired.append(("a", clock.now_ns())))
    t = clock.add_timer(200, lambda: fired.append(("x", clock.now_ns())))
    clock.add_timer(200, lambda: fired.append(("b", clock.now_ns())))
    t.cancel()
    assert clock.next_deadline() == 100
    assert clock.step(250) == 250
    assert fired == [("a", 100), ("b", 200)]
    assert clock.pending() == 1
    clock.step(50)
    assert fired[-1] == ("c", 300)
    assert clock.next_deadline() is None


def test_periodic_rearm_from_callback() -> None:
    clock = VirtualClock()
    times: list[int] = []

    def tick() -> None:
        times.append(clock.now_ns())
        clock.add_timer(clock.now_ns() + 1000, tick)

    clock.add_timer(1000, tick)
    clock.step(10_500)
    assert times == [1000 * i for i in range(1, 11)]


def test_on_new_deadline_only_for_earlier_timers() -> None:
    clock = VirtualClock()
    kicks: list[int] = []
    clock.on_new_deadline = lambda: kicks.append(1)
    clock.add_timer(500, lambda: None)
    clock.add_timer(900, lambda: None)
    clock.add_timer(100, lambda: None)
    assert len(kicks) == 2


def test_step_refuses_running_clock_and_negative() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError):
        clock.step(-1)
    clock.start()
    with pytest.raises(RuntimeError):
        clock.step(1)
    clock.stop()


def test_portbus_dispatch_unassigned_and_split() -> None:
    bus = PortBus()
    regs = {0x80: 0x11, 0x81: 0x22}
    writes: list[tuple[int, int, int]] = []
    bus.register(0x80, 2, lambda p, s: regs[p], lambda p, s, v: writes.append((p, s, v)),
                 "pair", byte_only=True)
    wide: list[tuple[int, int, int]] = []
    bus.register(0x100, 4, lambda p, s: 0x12345678 >> (8 * (p - 0x100)),
                 lambda p, s, v: wide.append((p, s, v)), "wide")
    assert bus.read(0x80, 1) == 0x11
    assert bus.read(0x80, 2) == 0x2211
    assert bus.read(0x81, 2) == 0xFF22          # second byte unassigned
    assert bus.read(0x300, 1) == 0xFF
    assert bus.read(0x300, 2) == 0xFFFF
    assert bus.read(0x300, 4) == 0xFFFFFFFF
    assert bus.read(0x100, 4) == 0x12345678
    assert bus.read(0x100, 2) == 0x5678
    bus.write(0x80, 2, 0xBEEF)
    assert writes == [(0x80, 1, 0xEF), (0x81, 1, 0xBE)]
    bus.write(0x100, 4, 0xCAFEBABE)
    assert wide == [(0x100, 4, 0xCAFEBABE)]
    bus.write(0x300, 1, 1)                       # ignored
    assert bus.describe() == [(0x80, 2, "pair"), (0x100, 4, "wide")]
    with pytest.raises(ValueError):
        bus.register(0x81, 1, None, None, "clash")
    bus.unregister(0x100, 4)
    assert bus.read(0x100, 4) == 0xFFFFFFFF
    assert bus.describe() == [(0x80, 2, "pair")]


def test_irq_line() -> None:
    seen: list[bool] = []
    line = IrqLine(seen.append)
    line.set(True)
    line.pulse()
    assert seen == [True, True, False]
    assert line.level is False
    IrqLine().pulse()                            # unconnected: no error


def test_run_expired_reads_the_clock_once() -> None:
    clock = VirtualClock()
    clock.step(1000)
    fired: list[str] = []

    def first() -> None:
        fired.append("first")
        clock.add_timer(1000, lambda: fired.append("due now"))
        clock.add_timer(1001, lambda: fired.append("later"))

    clock.add_timer(900, first)
    clock.run_expired()
    assert fired == ["first", "due now"]
    assert clock.next_deadline() == 1001
    assert clock.fired == 2


def test_set_ns_for_snapshot_restore() -> None:
    clock = VirtualClock()
    fired: list[int] = []
    clock.add_timer(5_000, lambda: fired.append(clock.now_ns()))
    clock.set_ns(10_000)
    assert clock.now_ns() == 10_000 and fired == []
    clock.run_expired()
    assert fired == [10_000]
    clock.start()
    with pytest.raises(RuntimeError):
        clock.set_ns(0)
    clock.stop()
    assert clock.now_ns() >= 10_000
