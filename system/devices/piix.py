"""The PIIX3 south bridge at PCI device 1: ISA bridge, IDE and (PIIX4) power management.

* 01.0 ``Piix3Isa`` (8086:7000): PIRQ route registers 0x60-0x63 (0x80 = disabled,
  else the ISA IRQ in bits 0-3, values 16 and up disabled as in QEMU) steering the four
  PCI interrupt lines to the 8259s; the reset control register at port 0xCF9 (bit 2
  resets the machine, bit 1 kept); the other registers hold QEMU's reset values.
* 01.1 ``PiixIde`` (8086:7010, prog-if 0x80 legacy mode): the two legacy channels of
  ``ide.IdeController`` and its bus-master registers at BAR4 (16 I/O ports).
* 01.3 ``Piix4Pm`` (8086:7113 rev 03): configuration space as QEMU's PIIX4_PM (SMBus base
  0xB100, SCI on IRQ 9) and the ACPI PM I/O block at PMBA (0x40) when PMREGMISC (0x80)
  bit 0 is set: PM1a status/enable (0x00/0x02), PM1a control (0x04, SLP_EN with type 0
  powers off), the 24-bit PM timer at 3.579545 MHz (0x08); APM control/status at ports
  0xB2/0xB3 (with SMM, ACPI enable 0xF1 / disable 0xF0 set or clear SCI_EN).

Not modelled: the SMBus host controller (its ports read all ones), GPE0 blocks and PCI
hotplug ports, SMI (there is no SMM: the PM function reports SMM as already
initialised, QEMU's ``smm=off`` state, so SeaBIOS skips its SMM setup), the PM timer
overflow interrupt (TMROF status is computed when read; SCI follows status & enable on
register accesses only), S3/S4 sleep.
"""

from __future__ import annotations

from collections.abc import Callable

from ..bus import IrqLine, PortBus
from .ide import IdeController
from .pci import (
    COMMAND,
    HEADER_MULTI_FUNCTION,
    INTERRUPT_PIN,
    STATUS,
    STATUS_DEVSEL_MEDIUM,
    STATUS_FAST_BACK,
    UNMAPPED,
    PciFunction,
    PciHost,
)

PIIX_PIRQCA = 0x60
PIIX_NUM_PIRQS = 4
PIIX_NUM_PIC_IRQS = 16
RCR_PORT = 0xCF9

_PIIX3_RESET = {
    0x04: 0x07, 0x05: 0x00, 0x06: 0x00, 0x07: 0x02, 0x4C: 0x4D, 0x4E: 0x03, 0x4F: 0x00,
    0x60: 0x80, 0x61: 0x80, 0x62: 0x80, 0x63: 0x80, 0x69: 0x02, 0x70: 0x80, 0x76: 0x0C,
    0x77: 0x0C, 0x78: 0x02, 0x79: 0x00, 0x80: 0x00, 0x82: 0x00, 0xA0: 0x08, 0xA2: 0x00,
    0xA3: 0x00, 0xA4: 0x00, 0xA5: 0x00, 0xA6: 0x00, 0xA7: 0x00, 0xA8: 0x0F, 0xAA: 0x00,
    0xAB: 0x00, 0xAC: 0x00, 0xAE: 0x00,
}


class Piix3Isa(PciFunction):
    """01.0: the PCI-to-ISA bridge with PIRQ routing and the reset control register."""

    name = "PIIX3"

    def __init__(self, bus: PortBus, pic_irq: Callable[[int], IrqLine],
                 reset_request: Callable[[], None] | None = None):
        super().__init__(0x8086, 0x7000, 0x00, 0x060100, header_type=HEADER_MULTI_FUNCTION)
        self._pic_irq = pic_irq
        self.reset_request = reset_request
        self.pirq_levels = [False] * PIIX_NUM_PIRQS
        self._driven: dict[int, bool] = {}   # PIC inputs this bridge drives, and levels
        self.rcr = 0
        bus.register(RCR_PORT, 1, self._rcr_read, self._rcr_write, "piix3-reset-control",
                     byte_only=True)
        self.reset()

    def device_reset(self) -> None:
        for offset, value in _PIIX3_RESET.items():
            self.config[offset] = value
        self.rcr = 0
        self.pirq_levels = [False] * PIIX_NUM_PIRQS
        self._update_pic()

    # -- PIRQ routing --------------------------------------------------------------------

    def pirq_route(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ A-D (0-3) is steered to, or None when disabled."""
        value = self.config[PIIX_PIRQCA + pirq]
        return value if value < PIIX_NUM_PIC_IRQS else None

    def set_pirq(self, pirq: int, level: bool) -> None:
        """A PCI interrupt line (PIRQ A-D) changed level."""
        self.pirq_levels[pirq] = bool(level)
        self._update_pic()

    def _update_pic(self) -> None:
        levels: dict[int, bool] = {}
        for pirq in range(PIIX_NUM_PIRQS):
            irq = self.pirq_route(pirq)
            if irq is not None:
                levels[irq] = levels.get(irq, False) or self.pirq_levels[pirq]
        # lower the inputs no longer routed, then drive the routed ones (only changes,
        # so a PIC input shared with an ISA device is not overridden needlessly)
        for irq, old in list(self._driven.items()):
            if irq not in levels:
                del self._driven[irq]
                if old:
                    self._pic_irq(irq).set(False)
        for irq, level in levels.items():
            if self._driven.get(irq) != level:
                self._driven[irq] = level
                self._pic_irq(irq).set(level)

    def config_written(self, offset: int, size: int) -> None:
        if offset < PIIX_PIRQCA + PIIX_NUM_PIRQS and offset + size > PIIX_PIRQCA:
            self._update_pic()

    # -- port 0xCF9 ----------------------------------------------------------------------

    def _rcr_read(self, port: int, size: int) -> int:
        return self.rcr

    def _rcr_write(self, port: int, size: int, value: int) -> None:
        if value & 4:
            if self.reset_request is not None:
                self.reset_request()
            return
        self.rcr = value & 2


class PiixIde(PciFunction):
    """01.1: PIIX3 IDE in legacy mode, BMDMA registers at BAR4."""

    name = "piix3-ide"

    def __init__(self, bus: PortBus, controller: IdeController):
        super().__init__(0x8086, 0x7010, 0x00, 0x010180)
        self._bus = bus
        self.controller = controller
        self._mapped = UNMAPPED
        self.register_bar(4, 16, io=True, mapper=self._map_bmdma)
        self.reset()

    def device_reset(self) -> None:
        self.set_word(COMMAND, 0)
        self.set_word(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK)
        self.controller.reset()

    def _map_bmdma(self, address: int) -> None:
        if self._mapped != UNMAPPED:
            self._bus.unregister(self._mapped, 16)
            self._mapped = UNMAPPED
        if address == UNMAPPED:
            return
        try:
            self._bus.register(address, 16,
                               lambda port, size: self.controller.bmdma_read(port - address, size),
                               lambda port, size, value: self.controller.bmdma_write(
                                   port - address, size, value), "piix-bmdma")
        except ValueError:
            return      # the ports belong to another device: not decoded (as hidden)
        self._mapped = address


# -- 01.3 PIIX4 power management --------------------------------------------------------

PM_TIMER_FREQUENCY = 3579545
PMBA = 0x40
PMREGMISC = 0x80
ACPI_TIMER_STATUS = 0x0001
ACPI_TIMER_ENABLE = 0x0001
ACPI_SCI_MASK = 0x0521        # RT clock, power button, global lock, timer enables
ACPI_SCI_EN = 0x0001
ACPI_SLEEP_ENABLE = 0x2000
APM_CNT_PORT = 0xB2
ACPI_ENABLE = 0xF1
ACPI_DISABLE = 0xF0


class Piix4Pm(PciFunction):
    """01.3: PIIX4 ACPI power management (PM1 event/control blocks, PM timer, APM)."""

    name = "PIIX4_PM"

    def __init__(self, bus: PortBus, clock_ns: Callable[[], int], sci: IrqLine | None = None,
                 *, shutdown_request: Callable[[], None] | None = None,
                 com1: bool = False, com2: bool = False, smm_enabled: bool = False):
        super().__init__(0x8086, 0x7113, 0x03, 0x068000, interrupt_pin=1)
        self._bus = bus
        self._clock_ns = clock_ns
        self.sci = sci
        self.shutdown_request = shutdown_request
        self.smm_enabled = smm_enabled
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.apmc = 0
        self.apms = 0
        self.overflow_ticks = 0
        self._pm_base = UNMAPPED
        self.set_word(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK)
        self.config[INTERRUPT_PIN] = 0x01
        self.config[0x5F] = 0x10
        self.config[0x63] = 0x60
        self.config[0x67] = (0x08 if com1 else 0) | (0x90 if com2 else 0)
        smb_io_base = 0xB100
        self.config[0x90] = (smb_io_base | 1) & 0xFF
        self.config[0x91] = smb_io_base >> 8
        self.config[0xD2] = 0x09
        self.config[PMBA] = 0x01                 # I/O space indicator
        bus.register(APM_CNT_PORT, 2, self._apm_read, self._apm_write, "apm-io",
                     byte_only=True)
        self.reset()

    def device_reset(self) -> None:
        # piix4_pm_reset: PMBA (0x40) keeps its value over a reset, as in QEMU 7.2
        for offset in (0x58, 0x59, 0x5A, 0x5B, PMREGMISC):
            self.config[offset] = 0
        if not self.smm_enabled:
            self.config[0x5B] = 0x02            # SMM already initialised: no SMI setup
        self.pm1_sts = self.pm1_en = 0
        # acpi_pm1_cnt_reset: without SMM the firmware cannot switch to ACPI mode, so
        # QEMU starts with SCI_EN set ("acpi_only")
        self.pm1_cnt = 0 if self.smm_enabled else ACPI_SCI_EN
        self.overflow_ticks = 0
        self._update_pm_io()

    def config_written(self, offset: int, size: int) -> None:
        if (offset < PMBA + 4 and offset + size > PMBA) or \
                (offset <= PMREGMISC < offset + size):
            self._update_pm_io()

    # -- PM I/O block ------------------------------------------------------------------

    def _update_pm_io(self) -> None:
        base = UNMAPPED
        if self.config[PMREGMISC] & 1:
            base = self.get_long(PMBA) & 0xFFC0
        if base == self._pm_base:
            return
        if self._pm_base != UNMAPPED:
            self._bus.unregister(self._pm_base, 64)
            self._pm_base = UNMAPPED
        if base == UNMAPPED:
            return
        try:
            self._bus.register(base, 64, self._pm_read, self._pm_write, "piix4-pm")
        except ValueError:
            return
        self._pm_base = base

    def _ticks(self) -> int:
        return self._clock_ns() * PM_TIMER_FREQUENCY // 1_000_000_000

    def pm_timer(self) -> int:
        """The 24-bit ACPI PM timer: virtual time at 3.579545 MHz."""
        return self._ticks() & 0xFFFFFF

    def _status(self) -> int:
        """PM1 status; TMROF is set once the timer passed the overflow point (bit 23
        toggling), as QEMU's acpi_pm1_evt_get_sts computes it."""
        if self._ticks() >= self.overflow_ticks:
            self.pm1_sts |= ACPI_TIMER_STATUS
        return self.pm1_sts

    def _update_sci(self) -> None:
        if self.sci is not None:
            self.sci.set(bool(self._status() & self.pm1_en & ACPI_SCI_MASK))

    def _pm_read(self, port: int, size: int) -> int:
        offset = port - self._pm_base
        if offset < 2:
            value = self._status()
            return (value >> (8 * offset)) & ((1 << (8 * size)) - 1)
        if offset < 4:
            return (self.pm1_en >> (8 * (offset - 2))) & ((1 << (8 * size)) - 1)
        if offset < 6:
            return (self.pm1_cnt >> (8 * (offset - 4))) & ((1 << (8 * size)) - 1)
        if 8 <= offset < 12:
            return (self.pm_timer() >> (8 * (offset - 8))) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def _pm_write(self, port: int, size: int, value: int) -> None:
        offset = port - self._pm_base
        if offset == 0:
            if value & ACPI_TIMER_STATUS and self._status() & ACPI_TIMER_STATUS:
                self.overflow_ticks = (self._ticks() + 0x800000) & ~0x7FFFFF
            self.pm1_sts &= ~value
            self._update_sci()
        elif offset == 2:
            self.pm1_en = value & 0xFFFF
            self._update_sci()
        elif offset == 4:
            self.pm1_cnt = value & ~ACPI_SLEEP_ENABLE & 0xFFFF
            if value & ACPI_SLEEP_ENABLE and (value >> 10) & 7 == 0:
                if self.shutdown_request is not None:
                    self.shutdown_request()

    # -- APM ports 0xB2/0xB3 -------------------------------------------------------------

    def _apm_read(self, port: int, size: int) -> int:
        return self.apmc if port == APM_CNT_PORT else self.apms

    def _apm_write(self, port: int, size: int, value: int) -> None:
        if port != APM_CNT_PORT:
            self.apms = value
            return
        self.apmc = value
        if not self.smm_enabled:
            return      # acpi_only: SCI_EN is fixed (acpi_pm1_cnt_update ignores APM)
        if value == ACPI_ENABLE:
            self.pm1_cnt |= ACPI_SCI_EN
        elif value == ACPI_DISABLE:
            self.pm1_cnt &= ~ACPI_SCI_EN


class Piix3:
    """The whole south bridge: 01.0 ISA bridge, 01.1 IDE, 01.3 PM, plugged into ``host``
    (whose PCI interrupts it routes to ``pic_irq(n)``, the 8259 inputs)."""

    def __init__(self, host: PciHost, bus: PortBus, pic_irq: Callable[[int], IrqLine],
                 clock_ns: Callable[[], int], *,
                 reset_request: Callable[[], None] | None = None,
                 shutdown_request: Callable[[], None] | None = None,
                 dma_read: Callable[[int, int], bytes] | None = None,
                 dma_write: Callable[[int, bytes], None] | None = None,
                 com1: bool = False, com2: bool = False):
        self.isa = Piix3Isa(bus, pic_irq, reset_request)
        self.ide_controller = IdeController(bus, pic_irq(14), pic_irq(15), dma_read, dma_write)
        self.ide = PiixIde(bus, self.ide_controller)
        self.pm = Piix4Pm(bus, clock_ns, pic_irq(9), shutdown_request=shutdown_request,
                          com1=com1, com2=com2)
        host.add(0x08, self.isa)
        host.add(0x09, self.ide)
        host.add(0x0B, self.pm)
        host.pirq_router = self.isa.set_pirq

    def pci_irq(self, pirq: int, level: bool) -> None:
        """Drive PCI interrupt line PIRQ A-D (0-3)."""
        self.isa.set_pirq(pirq, level)
