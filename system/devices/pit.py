"""Intel 8254 programmable interval timer (ports 0x40-0x43) and the port 0x61 bits.

Counting follows QEMU 7.2's hw/timer/i8254*.c: the counter is never stepped; a channel
remembers when its count was loaded and every read derives the count and the OUT pin from
the virtual clock at 1.193182 MHz. Channel 0's OUT drives IRQ0 through one clock timer
armed at the next instant the pin changes. In the periodic modes 2 and 3 only rising
edges are armed (one callback per period): the edge is delivered as low-then-high on the
line, which an edge-triggered 8259 input sees exactly as QEMU's two transitions.

Port 0x61 (QEMU's pcspk): bit 0 channel 2 gate, bit 1 speaker data, bit 4 a refresh
toggle that flips on every read, bit 5 channel 2 OUT.

Not modelled (as in QEMU): BCD counting (the flag is stored and reported), the null-count
status bit, gate-low stopping the count in modes 0, 2, 3 and 4.
"""

from __future__ import annotations

from typing import Any

from ..bus import IrqLine, PortBus
from ..clock import NS_PER_SEC, Timer, VirtualClock

PIT_FREQ = 1193182
STATE_VERSION = 1

RW_STATE_LSB = 1
RW_STATE_MSB = 2
RW_STATE_WORD0 = 3
RW_STATE_WORD1 = 4


def _ticks(delta_ns: int) -> int:
    """Whole PIT input clocks in ``delta_ns`` (QEMU's muldiv64, rounding down)."""
    return delta_ns * PIT_FREQ // NS_PER_SEC


def _ns_ceil(ticks: int) -> int:
    """The first nanosecond at which ``ticks`` clocks have elapsed."""
    return -(-ticks * NS_PER_SEC // PIT_FREQ)


class PitChannel:
    """One counter. ``count`` is the reload value (1..0x10000)."""

    VMSTATE_FIELDS = ("count", "latched_count", "count_latched", "status_latched", "status",
                      "read_state", "write_state", "write_latch", "rw_mode", "mode", "bcd",
                      "gate", "count_load_time")

    def __init__(self, clock: VirtualClock, index: int):
        self.clock = clock
        self.index = index
        self.count = 0x10000
        self.latched_count = 0
        self.count_latched = 0
        self.status_latched = 0
        self.status = 0
        self.read_state = 0
        self.write_state = 0
        self.write_latch = 0
        self.rw_mode = 0
        self.mode = 3
        self.bcd = 0
        self.gate = 1 if index != 2 else 0
        self.count_load_time = 0

    def elapsed(self, now_ns: int) -> int:
        return _ticks(now_ns - self.count_load_time)

    def get_count(self, now_ns: int) -> int:
        """The value the counting element holds now."""
        d = self.elapsed(now_ns)
        mode = self.mode
        if mode in (0, 1, 4, 5):
            return (self.count - d) & 0xFFFF
        if mode == 3:
            return self.count - ((2 * d) % self.count)
        return self.count - (d % self.count)

    def get_out(self, now_ns: int) -> int:
        """The OUT pin now (QEMU's pit_get_out)."""
        d = self.elapsed(now_ns)
        mode, count = self.mode, self.count
        if mode == 1:
            return int(d < count)
        if mode == 2:
            return int(d % count == 0 and d != 0)
        if mode == 3:
            return int(d % count < (count + 1) >> 1)
        if mode in (4, 5):
            return int(d == count)
        return int(d >= count)          # mode 0 and the undefined 6, 7

    def next_event(self, now_ns: int) -> int | None:
        """Tick (from the load time) of the next OUT change worth a callback, or None.

        Periodic modes report only rising edges (every multiple of the count)."""
        d = self.elapsed(now_ns)
        mode, count = self.mode, self.count
        if mode in (2, 3):
            if count == 1:              # OUT stays high: no edges (mode 2: after tick 1)
                return 1 if mode == 2 and d < 1 else None
            return (d // count + 1) * count
        if mode in (4, 5):
            if d < count:
                return count
            if d == count:
                return count + 1
            return None
        if d < count:                   # modes 0, 1: one edge at terminal count
            return count
        return None

    def latch_count(self, now_ns: int) -> None:
        if not self.count_latched:
            self.latched_count = self.get_count(now_ns) & 0xFFFF
            self.count_latched = self.rw_mode


class Pit:
    """The three channels; channel 0 wired to ``irq0``, channel 2 to the speaker."""

    def __init__(self, bus: PortBus, clock: VirtualClock, irq0: IrqLine):
        self.clock = clock
        self.irq0 = irq0
        self.channels = [PitChannel(clock, i) for i in range(3)]
        self.speaker_data_on = 0
        self._refresh_clock = 0
        self._timer: Timer | None = None
        self.irq_disabled = False
        bus.register(0x40, 4, self._read, self._write, "pit", byte_only=True)
        self.reset()

    # -- reset and channel 0's interrupt ---------------------------------------------

    def reset(self) -> None:
        """All channels to mode 3, count 0x10000, loaded now; gates 1, 1, 0."""
        now = self.clock.now_ns()
        for ch in self.channels:
            ch.mode = 3
            ch.gate = 1 if ch.index != 2 else 0
            ch.count_load_time = now
            ch.count = 0x10000
        self._arm(now)                  # QEMU re-arms channel 0 without touching the line

    def _arm(self, now_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.irq_disabled:
            return
        ch = self.channels[0]
        tick = ch.next_event(now_ns)
        if tick is not None:
            when = ch.count_load_time + _ns_ceil(tick)
            if when <= now_ns:
                when = now_ns + 1
            self._timer = self.clock.add_timer(when, self._irq_timer)

    def _irq_update(self, now_ns: int) -> None:
        """Channel 0 was (re)loaded or re-gated: drive IRQ0 to OUT and arm the timer."""
        if self.irq_disabled:
            return
        self.irq0.set(bool(self.channels[0].get_out(now_ns)))
        self._arm(now_ns)

    def _irq_timer(self) -> None:
        self._timer = None
        ch = self.channels[0]
        deadline_now = self.clock.now_ns()
        if ch.mode in (2, 3):
            # a rising edge: make sure the 8259 sees low -> high
            if self.irq0.level:
                self.irq0.set(False)
            self.irq0.set(True)
        else:
            self.irq0.set(bool(ch.get_out(deadline_now)))
        self._arm(deadline_now)

    def set_irq_enabled(self, enabled: bool) -> None:
        """HPET legacy mode switches the PIT's interrupt off and on."""
        self.irq_disabled = not enabled
        if enabled:
            self._irq_update(self.clock.now_ns())
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- gate (channel 2 from port 0x61) ---------------------------------------------

    def set_gate(self, index: int, val: int) -> None:
        ch = self.channels[index]
        if ch.mode in (1, 2, 3, 5) and ch.gate < val:
            now = self.clock.now_ns()
            ch.count_load_time = now    # restart counting on a rising gate
            if index == 0:
                self._irq_update(now)
        ch.gate = val

    def speaker_port_read(self, port: int = 0x61, size: int = 1) -> int:
        """Port 0x61 read: gate2 | data<<1 | refresh toggle<<4 | OUT2<<5."""
        ch = self.channels[2]
        self._refresh_clock ^= 1 << 4
        return (ch.gate | (self.speaker_data_on << 1) | self._refresh_clock
                | (ch.get_out(self.clock.now_ns()) << 5))

    def speaker_port_write(self, port: int, size: int, value: int) -> None:
        """Port 0x61 write: bit 0 gate of channel 2, bit 1 speaker data."""
        self.speaker_data_on = (value >> 1) & 1
        self.set_gate(2, value & 1)

    # -- ports 0x40-0x43 -------------------------------------------------------------

    def _load_count(self, index: int, val: int) -> None:
        ch = self.channels[index]
        now = self.clock.now_ns()
        ch.count = val or 0x10000
        ch.count_load_time = now
        if index == 0:
            self._irq_update(now)

    def _write(self, port: int, size: int, val: int) -> None:
        addr = port & 3
        if addr == 3:
            index = val >> 6
            if index == 3:              # read-back command
                now = self.clock.now_ns()
                for i, ch in enumerate(self.channels):
                    if not val & (2 << i):
                        continue
                    if not val & 0x20:
                        ch.latch_count(now)
                    if not val & 0x10 and not ch.status_latched:
                        ch.status = ((ch.get_out(now) << 7) | (ch.rw_mode << 4)
                                     | (ch.mode << 1) | ch.bcd)
                        ch.status_latched = 1
                return
            ch = self.channels[index]
            access = (val >> 4) & 3
            if access == 0:
                ch.latch_count(self.clock.now_ns())
            else:
                ch.rw_mode = ch.read_state = ch.write_state = access
                ch.mode = (val >> 1) & 7
                ch.bcd = val & 1
            return
        ch = self.channels[addr]
        state = ch.write_state
        if state == RW_STATE_MSB:
            self._load_count(addr, val << 8)
        elif state == RW_STATE_WORD0:
            ch.write_latch = val
            ch.write_state = RW_STATE_WORD1
        elif state == RW_STATE_WORD1:
            ch.write_state = RW_STATE_WORD0
            self._load_count(addr, ch.write_latch | (val << 8))
        else:
            self._load_count(addr, val)

    def _read(self, port: int, size: int) -> int:
        addr = port & 3
        if addr == 3:
            return 0                    # the control word register is write-only
        ch = self.channels[addr]
        if ch.status_latched:
            ch.status_latched = 0
            return ch.status
        if ch.count_latched:
            latched = ch.count_latched
            if latched == RW_STATE_MSB:
                ch.count_latched = 0
                return ch.latched_count >> 8
            if latched == RW_STATE_WORD0:
                ch.count_latched = RW_STATE_MSB
                return ch.latched_count & 0xFF
            ch.count_latched = 0
            return ch.latched_count & 0xFF
        state = ch.read_state
        count = ch.get_count(self.clock.now_ns())
        if state == RW_STATE_MSB:
            return (count >> 8) & 0xFF
        if state == RW_STATE_WORD0:
            ch.read_state = RW_STATE_WORD1
            return count & 0xFF
        if state == RW_STATE_WORD1:
            ch.read_state = RW_STATE_WORD0
            return (count >> 8) & 0xFF
        return count & 0xFF

    # -- migration -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Channel registers (QEMU's vmstate "i8254" fields), port 0x61 bits and the
        IRQ0 level. Load times are virtual-clock instants: restore the clock first."""
        return {"version": STATE_VERSION,
                "channels": [{f: getattr(ch, f) for f in PitChannel.VMSTATE_FIELDS}
                             for ch in self.channels],
                "irq_disabled": self.irq_disabled, "speaker_data_on": self.speaker_data_on,
                "refresh_clock": self._refresh_clock, "irq0_level": self.irq0.level}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned and re-arm channel 0's timer."""
        for ch, regs in zip(self.channels, state["channels"], strict=True):
            for f in PitChannel.VMSTATE_FIELDS:
                setattr(ch, f, regs[f])
        self.irq_disabled = state["irq_disabled"]
        self.speaker_data_on = state["speaker_data_on"]
        self._refresh_clock = state["refresh_clock"]
        self.irq0.level = state["irq0_level"]   # the 8259 keeps its own copy
        self._arm(self.clock.now_ns())

    def channel_info(self, index: int) -> dict[str, int]:
        """gate, mode, initial count and OUT of a channel (QEMU's PITChannelInfo)."""
        ch = self.channels[index]
        return {"gate": ch.gate, "mode": ch.mode, "initial_count": ch.count,
                "out": ch.get_out(self.clock.now_ns())}
