"""Motorola MC146818 real-time clock and the PC's CMOS RAM (ports 0x70/0x71, IRQ8).

Behaviour follows QEMU 7.2's hw/rtc/mc146818rtc.c with the PC's base year 2000 (the
year register holds year % 100, the century byte 0x32 year / 100): the time is kept as
"seconds at the last set + virtual time since", the registers are refreshed from it on
read; periodic interrupt rate from register A (PIE in register B), update-ended (UF) and
alarm (AF) interrupts from one timer armed at the next second or at the alarm; UIP reads
as set in the last 244 us of each second; reading register C clears it and lowers IRQ8.
Port 0x70 bit 7 is the NMI mask (kept in ``nmi_disabled``; the index uses bits 0-6).

The clock is the machine's virtual clock, so the guest's time stands still while the
machine is stopped (QEMU's ``-rtc clock=vm``; QEMU's default follows the host clock).
It starts from the host's UTC time (``-rtc base=utc``) unless ``base_time`` is given.

Not modelled: the lost-tick "slew" policy (QEMU's default is "discard", as here), the
square-wave output, the RTC_CHANGE event.

``cmos_init_pc`` fills the CMOS bytes that QEMU's hw/i386/pc.c writes for the BIOS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..bus import IrqLine, PortBus
from ..clock import NS_PER_SEC, Timer, VirtualClock

RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
RTC_CENTURY = 0x32
RTC_IBM_PS2_CENTURY_BYTE = 0x37

REG_A_UIP = 0x80
REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM = 0x04
REG_B_24H = 0x02
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
REG_C_MASK = 0x70

RTC_CLOCK_RATE = 32768
UIP_HOLD_LENGTH = 8 * NS_PER_SEC // 32768
REG_EQUIPMENT_BYTE = 0x14
STATE_VERSION = 1

_TIME_REGS = frozenset({RTC_CENTURY, RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK,
                        RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR})


def periodic_period_to_clock(period_code: int) -> int:
    """Rate selection bits of register A -> period in 32.768 kHz cycles (0: off)."""
    if not period_code:
        return 0
    if period_code <= 2:
        period_code += 7
    return 1 << (period_code - 1)


def periodic_clock_to_ns(clocks: int) -> int:
    return clocks * NS_PER_SEC // RTC_CLOCK_RATE


M64 = (1 << 64) - 1


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    """C remainder (takes the sign of the dividend)."""
    return a - _cdiv(a, b) * b


def _signed64(a: int) -> int:
    a &= M64
    return a - (1 << 64) if a >> 63 else a


def mktimegm(year: int, mon: int, mday: int, hour: int, minute: int, sec: int) -> int:
    """Seconds since the epoch of a UTC date (mon 1-12), QEMU's arithmetic."""
    y, m = year, mon
    if m < 3:
        m += 12
        y -= 1
    days = (mday + _cdiv(153 * m - 457, 5) + 365 * y + _cdiv(y, 4) - _cdiv(y, 100)
            + _cdiv(y, 400) - 719469)
    return 86400 * days + 3600 * hour + 60 * minute + sec


class Rtc:
    """The MC146818 with 128 bytes of CMOS RAM."""

    VMSTATE_FIELDS = ("cmos_data", "cmos_index", "next_periodic_time", "period",
                      "base_rtc", "last_update", "offset", "next_alarm_time")

    def __init__(self, bus: PortBus, clock: VirtualClock, irq8: IrqLine,
                 ram_size: int | None = None, boot_order: str | None = None, *,
                 base_time: float | None = None, base_year: int = 0):
        self.clock = clock
        self.irq = irq8
        self.base_year = base_year
        self.cmos_data = bytearray(128)
        self.cmos_index = 0
        self.nmi_disabled = False
        self.period = 0
        self.next_periodic_time = 0
        self.next_alarm_time = 0
        self.base_rtc = 0
        self.last_update = 0
        self.offset = 0
        self._periodic_timer: Timer | None = None
        self._update_timer: Timer | None = None
        d = self.cmos_data
        d[RTC_REG_A] = 0x26
        d[RTC_REG_B] = 0x02
        d[RTC_REG_C] = 0x00
        d[RTC_REG_D] = 0x80
        self.set_date(time.time() if base_time is None else base_time)
        self._check_update_timer()
        bus.register(0x70, 2, self._read, self._write, "rtc", byte_only=True)
        if ram_size is not None:
            cmos_init_pc(self, ram_size, boot_order or "cad")

    # -- CMOS access for the board ---------------------------------------------------

    def set_cmos(self, addr: int, val: int) -> None:
        """Board code writes a CMOS byte (rtc_set_memory)."""
        if 0 <= addr < 128:
            self.cmos_data[addr] = val & 0xFF

    def get_cmos(self, addr: int) -> int:
        return self.cmos_data[addr]

    def set_date(self, seconds: float) -> None:
        """Set the clock to ``seconds`` since the epoch (UTC), as at machine creation."""
        sec = int(seconds)
        self.base_rtc = sec
        self.last_update = self.clock.now_ns()
        self.offset = 0
        self._set_cmos_time(time.gmtime(sec))

    def reset(self) -> None:
        """System reset: interrupts off, pending flags cleared, IRQ8 low."""
        d = self.cmos_data
        d[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE) & 0xFF
        d[RTC_REG_C] &= ~(REG_C_UF | REG_C_IRQF | REG_C_PF | REG_C_AF) & 0xFF
        self._check_update_timer()
        self.irq.set(False)

    # -- migration -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """CMOS bytes and the clock bookkeeping (QEMU's vmstate "mc146818rtc" v3)."""
        state = {f: getattr(self, f) for f in self.VMSTATE_FIELDS}
        state["cmos_data"] = bytes(self.cmos_data)
        state.update(version=STATE_VERSION, nmi_disabled=self.nmi_disabled,
                     irq_level=self.irq.level,
                     periodic_timer=_deadline(self._periodic_timer),
                     update_timer=_deadline(self._update_timer))
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned and re-arm the periodic and update
        timers (virtual-clock instants: restore the clock first)."""
        for f in self.VMSTATE_FIELDS:
            setattr(self, f, state[f])
        self.cmos_data = bytearray(state["cmos_data"])
        self.nmi_disabled = state["nmi_disabled"]
        self.irq.level = state["irq_level"]    # the 8259 keeps its own copy
        if self._periodic_timer is not None:
            self._periodic_timer.cancel()
            self._periodic_timer = None
        self._cancel_update_timer()
        # both timers migrate with their deadlines, as QEMU's VMSTATE_TIMER_PTR
        if state["periodic_timer"] is not None:
            self._periodic_timer = self.clock.add_timer(state["periodic_timer"],
                                                        self._periodic_timer_cb)
        if state["update_timer"] is not None:
            self._update_timer = self.clock.add_timer(state["update_timer"],
                                                      self._update_timer_cb)

    # -- time keeping ----------------------------------------------------------------

    def _running(self) -> bool:
        d = self.cmos_data
        return not d[RTC_REG_B] & REG_B_SET and (d[RTC_REG_A] & 0x70) <= 0x20

    def guest_rtc_ns(self) -> int:
        """Nanoseconds since the epoch on the RTC, as QEMU's uint64_t arithmetic gives
        them (a guest that sets a year before 1970 wraps around, as in QEMU)."""
        return (self.base_rtc * NS_PER_SEC + self.clock.now_ns() - self.last_update
                + self.offset) & M64

    def _to_bcd(self, a: int) -> int:
        if self.cmos_data[RTC_REG_B] & REG_B_DM:
            return a & 0xFF
        return (((a // 10) << 4) | (a % 10)) & 0xFF

    def _from_bcd(self, a: int) -> int:
        if (a & 0xC0) == 0xC0:
            return -1
        if self.cmos_data[RTC_REG_B] & REG_B_DM:
            return a
        return (a >> 4) * 10 + (a & 0x0F)

    def _set_cmos_time(self, tm: time.struct_time) -> None:
        d = self.cmos_data
        d[RTC_SECONDS] = self._to_bcd(tm.tm_sec)
        d[RTC_MINUTES] = self._to_bcd(tm.tm_min)
        if d[RTC_REG_B] & REG_B_24H:
            d[RTC_HOURS] = self._to_bcd(tm.tm_hour)
        else:
            h = tm.tm_hour % 12 or 12
            d[RTC_HOURS] = self._to_bcd(h) | (0x80 if tm.tm_hour >= 12 else 0)
        # struct_time counts weekdays from Monday = 0; the RTC from Sunday = 1
        d[RTC_DAY_OF_WEEK] = self._to_bcd((tm.tm_wday + 1) % 7 + 1)
        d[RTC_DAY_OF_MONTH] = self._to_bcd(tm.tm_mday)
        d[RTC_MONTH] = self._to_bcd(tm.tm_mon)
        year = tm.tm_year - self.base_year
        d[RTC_YEAR] = self._to_bcd(year % 100)
        d[RTC_CENTURY] = self._to_bcd(year // 100)

    def _convert_hour(self, hour: int) -> int:
        if not self.cmos_data[RTC_REG_B] & REG_B_24H:
            hour = _cmod(hour, 12)
            if self.cmos_data[RTC_HOURS] & 0x80:
                hour += 12
        return hour

    def _update_time(self) -> None:
        """Refresh the time registers from the running clock (unless SET)."""
        guest_sec = _cdiv(_signed64(self.guest_rtc_ns()), NS_PER_SEC)
        if not self.cmos_data[RTC_REG_B] & REG_B_SET:
            try:
                tm = time.gmtime(guest_sec)
            except (OverflowError, ValueError, OSError):
                return
            self._set_cmos_time(tm)

    def _set_time(self) -> None:
        """The guest wrote the time registers: restart the clock from them."""
        d = self.cmos_data
        hour = self._from_bcd(d[RTC_HOURS] & 0x7F)
        if not d[RTC_REG_B] & REG_B_24H:
            hour %= 12
            if d[RTC_HOURS] & 0x80:
                hour += 12
        year = (self._from_bcd(d[RTC_YEAR]) + self.base_year
                + self._from_bcd(d[RTC_CENTURY]) * 100)
        self.base_rtc = mktimegm(year, self._from_bcd(d[RTC_MONTH]),
                                 self._from_bcd(d[RTC_DAY_OF_MONTH]), hour,
                                 self._from_bcd(d[RTC_MINUTES]),
                                 self._from_bcd(d[RTC_SECONDS])) & M64
        self.last_update = self.clock.now_ns()

    def _update_in_progress(self) -> bool:
        if not self._running():
            return False
        timer = self._update_timer
        if timer is not None and timer.active:
            if self.clock.now_ns() >= timer.deadline_ns - UIP_HOLD_LENGTH:
                self.cmos_data[RTC_REG_A] |= REG_A_UIP     # latched until the timer fires
                return True
        remainder = _cmod(_signed64(self.guest_rtc_ns()), NS_PER_SEC)
        return remainder >= NS_PER_SEC - UIP_HOLD_LENGTH

    # -- periodic interrupt ----------------------------------------------------------

    def _periodic_ticks(self) -> int:
        if not self.cmos_data[RTC_REG_B] & REG_B_PIE:
            return 0
        return periodic_period_to_clock(self.cmos_data[RTC_REG_A] & 0x0F)

    def _periodic_update(self, current_ns: int, old_period: int, period_change: bool) -> None:
        period = self._periodic_ticks()
        self.period = period
        if self._periodic_timer is not None:
            self._periodic_timer.cancel()
            self._periodic_timer = None
        if not period:
            return
        cur_clock = current_ns * RTC_CLOCK_RATE // NS_PER_SEC
        lost_clock = 0
        if old_period and period_change:
            next_clock = self.next_periodic_time * RTC_CLOCK_RATE // NS_PER_SEC
            lost_clock = max(0, cur_clock - (next_clock - old_period))
        lost_clock = min(lost_clock, period)      # lost-tick policy "discard"
        next_irq_clock = cur_clock + period - lost_clock
        self.next_periodic_time = periodic_clock_to_ns(next_irq_clock) + 1
        self._periodic_timer = self.clock.add_timer(self.next_periodic_time,
                                                    self._periodic_timer_cb)

    def _periodic_timer_cb(self) -> None:
        self._periodic_timer = None
        self._periodic_update(self.next_periodic_time, self.period, False)
        d = self.cmos_data
        d[RTC_REG_C] |= REG_C_PF
        if d[RTC_REG_B] & REG_B_PIE:
            d[RTC_REG_C] |= REG_C_IRQF
            self.irq.set(True)

    # -- update-ended and alarm interrupts -------------------------------------------

    def _next_alarm(self) -> int:
        """Seconds from the current second to the next alarm match (QEMU's algorithm)."""
        self._update_time()
        d = self.cmos_data
        alarm_sec = self._from_bcd(d[RTC_SECONDS_ALARM])
        alarm_min = self._from_bcd(d[RTC_MINUTES_ALARM])
        alarm_hour = self._from_bcd(d[RTC_HOURS_ALARM])
        alarm_hour = -1 if alarm_hour == -1 else self._convert_hour(alarm_hour)
        cur_sec = self._from_bcd(d[RTC_SECONDS])
        cur_min = self._from_bcd(d[RTC_MINUTES])
        cur_hour = self._convert_hour(self._from_bcd(d[RTC_HOURS]))

        if alarm_hour == -1:
            alarm_hour = cur_hour
            if alarm_min == -1:
                alarm_min = cur_min
                if alarm_sec == -1:
                    alarm_sec = cur_sec + 1
                elif cur_sec > alarm_sec:
                    alarm_min += 1
            elif cur_min == alarm_min:
                if alarm_sec == -1:
                    alarm_sec = cur_sec + 1
                elif cur_sec > alarm_sec:
                    alarm_hour += 1
                if alarm_sec == 60:
                    alarm_sec = 0
                    alarm_hour += 1
            elif cur_min > alarm_min:
                alarm_hour += 1
        elif cur_hour == alarm_hour:
            if alarm_min == -1:
                alarm_min = cur_min
                if alarm_sec == -1:
                    alarm_sec = cur_sec + 1
                elif cur_sec > alarm_sec:
                    alarm_min += 1
                if alarm_sec == 60:
                    alarm_sec = 0
                    alarm_min += 1
                alarm_min = _cmod(alarm_min, 60)
            elif cur_min == alarm_min:
                if alarm_sec == -1:
                    alarm_sec = cur_sec + 1
                alarm_sec = _cmod(alarm_sec, 60)
        if alarm_min == -1:
            alarm_min = 0
        if alarm_sec == -1:
            alarm_sec = 0
        if alarm_sec == 60:
            alarm_sec = 0
            alarm_min += 1
        if alarm_min == 60:
            alarm_min = 0
            alarm_hour += 1
        alarm_hour = _cmod(alarm_hour, 24)
        sec = ((alarm_hour - cur_hour) * 60 + alarm_min - cur_min) * 60 + alarm_sec - cur_sec
        return sec + 86400 if sec <= 0 else sec

    def _cancel_update_timer(self) -> None:
        if self._update_timer is not None:
            self._update_timer.cancel()
            self._update_timer = None

    def _check_update_timer(self) -> None:
        d = self.cmos_data
        if (d[RTC_REG_A] & 0x60) == 0x60:     # dividers held in reset
            self._cancel_update_timer()
            return
        now = self.clock.now_ns()
        next_update = now + NS_PER_SEC - self.guest_rtc_ns() % NS_PER_SEC
        self.next_alarm_time = next_update + (self._next_alarm() - 1) * NS_PER_SEC
        if not d[RTC_REG_A] & REG_A_UIP and d[RTC_REG_C] & REG_C_UF:
            if d[RTC_REG_B] & REG_B_SET or d[RTC_REG_C] & REG_C_AF:
                self._cancel_update_timer()
                return
            next_update = self.next_alarm_time
        timer = self._update_timer
        if timer is not None and timer.active and timer.deadline_ns == next_update:
            return
        self._cancel_update_timer()
        self._update_timer = self.clock.add_timer(next_update, self._update_timer_cb)

    def _update_timer_cb(self) -> None:
        self._update_timer = None
        d = self.cmos_data
        irqs = REG_C_UF
        self._update_time()
        d[RTC_REG_A] &= ~REG_A_UIP & 0xFF
        if self.clock.now_ns() >= self.next_alarm_time:
            irqs |= REG_C_AF
        new_irqs = irqs & ~d[RTC_REG_C]
        d[RTC_REG_C] |= irqs
        if new_irqs & d[RTC_REG_B]:
            d[RTC_REG_C] |= REG_C_IRQF
            self.irq.set(True)
        self._check_update_timer()

    # -- ports -----------------------------------------------------------------------

    def _write(self, port: int, size: int, data: int) -> None:
        d = self.cmos_data
        if not port & 1:
            self.cmos_index = data & 0x7F
            self.nmi_disabled = bool(data & 0x80)
            return
        index = self.cmos_index
        if index in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            d[index] = data
            self._check_update_timer()
        elif index == RTC_IBM_PS2_CENTURY_BYTE or index in _TIME_REGS:
            if index == RTC_IBM_PS2_CENTURY_BYTE:
                self.cmos_index = index = RTC_CENTURY
            d[index] = data
            if self._running():
                self._set_time()
                self._check_update_timer()
        elif index == RTC_REG_A:
            update_periodic = (d[RTC_REG_A] ^ data) & 0x0F
            old_period = self._periodic_ticks()
            if (data & 0x60) == 0x60:
                if self._running():
                    self._update_time()
                d[RTC_REG_A] &= ~REG_A_UIP & 0xFF
            elif (d[RTC_REG_A] & 0x60) == 0x60 and (data & 0x70) <= 0x20:
                # leaving divider reset: the first update comes half a second later
                if not d[RTC_REG_B] & REG_B_SET:
                    self.offset = 500_000_000
                    self._set_time()
                d[RTC_REG_A] &= ~REG_A_UIP & 0xFF
            d[RTC_REG_A] = (data & ~REG_A_UIP & 0xFF) | (d[RTC_REG_A] & REG_A_UIP)
            if update_periodic:
                self._periodic_update(self.clock.now_ns(), old_period, True)
            self._check_update_timer()
        elif index == RTC_REG_B:
            update_periodic = (d[RTC_REG_B] ^ data) & REG_B_PIE
            old_period = self._periodic_ticks()
            if data & REG_B_SET:
                if self._running():
                    self._update_time()
                d[RTC_REG_A] &= ~REG_A_UIP & 0xFF
                data &= ~REG_B_UIE & 0xFF
            elif d[RTC_REG_B] & REG_B_SET and (d[RTC_REG_A] & 0x70) <= 0x20:
                self.offset = self.guest_rtc_ns() % NS_PER_SEC
                self._set_time()
            if data & d[RTC_REG_C] & REG_C_MASK:
                d[RTC_REG_C] |= REG_C_IRQF
                self.irq.set(True)
            else:
                d[RTC_REG_C] &= ~REG_C_IRQF & 0xFF
                self.irq.set(False)
            d[RTC_REG_B] = data
            if update_periodic:
                self._periodic_update(self.clock.now_ns(), old_period, True)
            self._check_update_timer()
        elif index in (RTC_REG_C, RTC_REG_D):
            pass                               # read-only
        else:
            d[index] = data

    def _read(self, port: int, size: int) -> int:
        if not port & 1:
            return 0xFF
        d = self.cmos_data
        index = self.cmos_index
        if index == RTC_IBM_PS2_CENTURY_BYTE or index in _TIME_REGS:
            if index == RTC_IBM_PS2_CENTURY_BYTE:
                self.cmos_index = index = RTC_CENTURY
            if self._running():
                self._update_time()
            return d[index]
        if index == RTC_REG_A:
            ret = d[RTC_REG_A]
            if self._update_in_progress():
                ret |= REG_A_UIP
            return ret
        if index == RTC_REG_C:
            ret = d[RTC_REG_C]
            self.irq.set(False)
            d[RTC_REG_C] = 0
            if ret & (REG_C_UF | REG_C_AF):
                self._check_update_timer()
            return ret
        return d[index]


def _deadline(timer: Timer | None) -> int | None:
    return timer.deadline_ns if timer is not None and timer.active else None


# -- the PC board's CMOS layout (QEMU 7.2 hw/i386/pc.c pc_cmos_init) ---------------------

MiB = 1 << 20
KiB = 1 << 10


def pc_ram_split(ram_size: int, max_ram_below_4g: int = 0xE0000000) -> tuple[int, int]:
    """(below_4g, above_4g) RAM of the i440FX pc machine (gigabyte-aligned split)."""
    lowmem = max_ram_below_4g
    if ram_size >= lowmem:
        lowmem = min(lowmem, 0xC0000000)
    if ram_size >= lowmem:
        return lowmem, ram_size - lowmem
    return ram_size, 0


def _boot_nibble(dev: str) -> int:
    return {"a": 1, "b": 1, "c": 2, "d": 3, "n": 4}.get(dev, 0)


def set_boot_order(rtc: Rtc, boot_order: str, fd_bootchk: bool = True) -> None:
    """CMOS 0x3D/0x38: up to three boot devices (a/b floppy, c disk, d CD, n network)."""
    if len(boot_order) > 3:
        raise ValueError("Too many boot devices for PC")
    bds = [0, 0, 0]
    for i, dev in enumerate(boot_order):
        bds[i] = _boot_nibble(dev)
        if not bds[i]:
            raise ValueError(f"Invalid boot device for PC: '{dev}'")
    rtc.set_cmos(0x3D, (bds[1] << 4) | bds[0])
    rtc.set_cmos(0x38, (bds[2] << 4) | (0 if fd_bootchk else 1))


HdGeometry = tuple[int, int, int, int]   # cylinders, heads, sectors, BIOS translation


def cmos_init_pc(rtc: Rtc, ram_size: int, boot_order: str = "cad",
                 hd_geometries: Sequence[HdGeometry | None] = (),
                 floppy_types: tuple[int, int] = (0, 0)) -> None:
    """Write what QEMU's pc_cmos_init / pc_cmos_init_late put in CMOS for the BIOS.

    ``hd_geometries``: for IDE units 0-3 (primary master, primary slave, secondary master,
    secondary slave) None (no hard disk there) or (cylinders, heads, sectors, trans) with
    trans the BIOS translation: 0 none, 1 LBA, 2 large, 3 rechs.
    ``floppy_types``: CMOS drive types of fd0/fd1 (0 none, 4 for 1.44 MB, 5 for 2.88 MB).
    """
    below, above = pc_ram_split(ram_size)
    val = min(below // KiB, 640)
    rtc.set_cmos(0x15, val)
    rtc.set_cmos(0x16, val >> 8)
    val = min((below - MiB) // KiB if below > MiB else 0, 65535)
    rtc.set_cmos(0x17, val)
    rtc.set_cmos(0x18, val >> 8)
    rtc.set_cmos(0x30, val)
    rtc.set_cmos(0x31, val >> 8)
    val = min((below - 16 * MiB) // (64 * KiB) if below > 16 * MiB else 0, 65535)
    rtc.set_cmos(0x34, val)
    rtc.set_cmos(0x35, val >> 8)
    val = above // 65536
    rtc.set_cmos(0x5B, val)
    rtc.set_cmos(0x5C, val >> 8)
    rtc.set_cmos(0x5D, val >> 16)
    set_boot_order(rtc, boot_order)
    equipment = 0x02 | 0x04            # FPU present, PS/2 mouse installed

    geoms = list(hd_geometries) + [None] * (4 - len(hd_geometries))
    val = 0
    if geoms[0] is not None:
        _cmos_init_hd(rtc, 0x19, 0x1B, geoms[0])
        val |= 0xF0
    if geoms[1] is not None:
        _cmos_init_hd(rtc, 0x1A, 0x24, geoms[1])
        val |= 0x0F
    rtc.set_cmos(0x12, val)
    val = 0
    for i, geom in enumerate(geoms[:4]):
        if geom is not None:
            val |= (geom[3] & 3) << (i * 2)
    rtc.set_cmos(0x39, val)

    rtc.set_cmos(0x10, (floppy_types[0] << 4) | floppy_types[1])
    drives = sum(1 for t in floppy_types if t)
    if drives == 1:
        equipment |= 0x01
    elif drives == 2:
        equipment |= 0x41
    rtc.set_cmos(REG_EQUIPMENT_BYTE, equipment)


def _cmos_init_hd(rtc: Rtc, type_ofs: int, info_ofs: int, geom: HdGeometry) -> None:
    cylinders, heads, sectors, _ = geom
    rtc.set_cmos(type_ofs, 47)
    rtc.set_cmos(info_ofs, cylinders)
    rtc.set_cmos(info_ofs + 1, cylinders >> 8)
    rtc.set_cmos(info_ofs + 2, heads)
    rtc.set_cmos(info_ofs + 3, 0xFF)
    rtc.set_cmos(info_ofs + 4, 0xFF)
    rtc.set_cmos(info_ofs + 5, 0xC0 | ((heads > 8) << 3))
    rtc.set_cmos(info_ofs + 6, cylinders)
    rtc.set_cmos(info_ofs + 7, cylinders >> 8)
    rtc.set_cmos(info_ofs + 8, sectors)
