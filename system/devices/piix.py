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
  0xB2/0xB3 (with SMM, ACPI enable 0xF1 / disable 0xF0 set or clear SCI_EN); the GPE0
  block at 0xAFE0 (status write-one-to-clear, enable), the PCI hotplug registers at
  0xAE00 (no events; slots 0-1 not removable) and the CPU hotplug bitmap at 0xAF00, so
  the tables SeaBIOS builds (FADT, DSDT) find what QEMU has there.

Not modelled: the SMBus host controller (its ports read all ones), hotplug itself
(ejecting a slot, adding CPUs), memory hotplug, SMI (there is no SMM: the PM function reports SMM as already
initialised, QEMU's ``smm=off`` state, so SeaBIOS skips its SMM setup), the PM timer
overflow interrupt (TMROF status is computed when read; SCI follows status & enable on
register accesses only), S3/S4 sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update(pirq_levels=list(self.pirq_levels), rcr=self.rcr)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.pirq_levels = list(state["pirq_levels"])
        self.rcr = state["rcr"]
        super().set_state(state)
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

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["ide"] = self.controller.get_state()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.controller.set_state(state["ide"])

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
_PM_REGIONS = ((0, 4, "evt"), (4, 2, "cnt"), (8, 4, "tmr"))
GPE0_BASE = 0xAFE0
GPE0_LEN = 4
PCIHP_BASE = 0xAE00
PCIHP_LEN = 0x18
PCIHP_REMOVABLE = 0xFFFFFFFC          # slots 0 and 1 hold built-in functions
CPUHP_BASE = 0xAF00
CPUHP_LEN = 32
ACPI_ENABLE = 0xF1
ACPI_DISABLE = 0xF0


class Piix4Pm(PciFunction):
    """01.3: PIIX4 ACPI power management (PM1 event/control blocks, PM timer, APM)."""

    name = "PIIX4_PM"

    def __init__(self, bus: PortBus, clock_ns: Callable[[], int], sci: IrqLine | None = None,
                 *, shutdown_request: Callable[[], None] | None = None,
                 com1: bool = False, com2: bool = False, smm_enabled: bool = False,
                 nb_cpus: int = 1):
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
        self.gpe_sts = 0
        self.gpe_en = 0
        self.pcihp_select = 0
        self.nb_cpus = nb_cpus
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
        bus.register(GPE0_BASE, GPE0_LEN, self._gpe_read, self._gpe_write, "acpi-gpe0")
        bus.register(PCIHP_BASE, PCIHP_LEN, self._pcihp_read, self._pcihp_write,
                     "acpi-pci-hotplug")
        bus.register(CPUHP_BASE, CPUHP_LEN, self._cpuhp_read, None, "acpi-cpu-hotplug")
        self.reset()

    def device_reset(self) -> None:
        # piix4_pm_reset: PMBA (0x40) keeps its value over a reset, as in QEMU 7.2
        for offset in (0x58, 0x59, 0x5A, 0x5B, PMREGMISC):
            self.config[offset] = 0
        if not self.smm_enabled:
            self.config[0x5B] = 0x02            # SMM already initialised: no SMI setup
        self.pm1_sts = self.pm1_en = 0
        self.gpe_sts = self.gpe_en = 0
        self.pcihp_select = 0
        # acpi_pm1_cnt_reset: without SMM the firmware cannot switch to ACPI mode, so
        # QEMU starts with SCI_EN set ("acpi_only")
        self.pm1_cnt = 0 if self.smm_enabled else ACPI_SCI_EN
        self.overflow_ticks = 0
        self._update_pm_io()

    _STATE = ("pm1_sts", "pm1_en", "pm1_cnt", "overflow_ticks", "apmc", "apms", "gpe_sts",
              "gpe_en", "pcihp_select")

    def get_state(self) -> dict[str, Any]:
        """Configuration space plus QEMU's vmstate "piix4_pm" registers."""
        state = super().get_state()
        state.update({f: getattr(self, f) for f in self._STATE})
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for f in self._STATE:
            setattr(self, f, state[f])
        super().set_state(state)
        self._update_pm_io()
        self._update_sci()

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
        """acpi_update_sci: PM1 status & enable, or any enabled GPE0 status bit."""
        if self.sci is not None:
            level = bool(self._status() & self.pm1_en & ACPI_SCI_MASK) or \
                bool(self.gpe_sts & self.gpe_en)
            self.sci.set(level)

    def _pm_pieces(self, offset: int, size: int) -> list[tuple[str | None, int, int, int]]:
        """Split an access into (register block, offset in it, byte position, length):
        QEMU decodes PM1 event (0-3), PM1 control (4-5) and the timer (8-11) as separate
        regions; the bytes in between read all ones."""
        pieces = []
        i = 0
        while i < size:
            off = offset + i
            for start, length, name in _PM_REGIONS:
                if start <= off < start + length:
                    n = min(size - i, start + length - off)
                    pieces.append((name, off - start, i, n))
                    break
            else:
                n = 1
                pieces.append((None, 0, i, 1))
            i += n
        return pieces

    def _pm_read(self, port: int, size: int) -> int:
        value = 0
        for name, addr, at, n in self._pm_pieces(port - self._pm_base, size):
            if name == "evt":                    # acpi_pm_evt_read: by offset, 16 bits
                reg = 0
                for sub in range(0, n, 2):
                    at_addr = addr + sub
                    word = self._status() if at_addr == 0 else \
                        self.pm1_en if at_addr == 2 else 0
                    reg |= word << (8 * sub)
            elif name == "cnt":                  # the register, whatever the offset
                reg = self.pm1_cnt
            elif name == "tmr":
                reg = self.pm_timer()
            else:
                reg = 0xFF
            value |= (reg & ((1 << (8 * n)) - 1)) << (8 * at)
        return value

    def _pm_write(self, port: int, size: int, value: int) -> None:
        for name, addr, at, n in self._pm_pieces(port - self._pm_base, size):
            piece = (value >> (8 * at)) & ((1 << (8 * n)) - 1)
            if name == "evt":
                if addr == 0 and n == 4:         # wider than the 16-bit registers
                    self._pm_write16(0, piece & 0xFFFF)
                    self._pm_write16(2, piece >> 16)
                elif addr in (0, 2):
                    self._pm_write16(addr, piece & 0xFFFF)
            elif name == "cnt":
                self._pm_write16(4, piece)

    def _pm_write16(self, offset: int, value: int) -> None:
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

    # -- GPE0 block, PCI and CPU hotplug registers -----------------------------------------

    def _gpe_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            offset = port - GPE0_BASE + i
            if offset < 2:
                byte = (self.gpe_sts >> (8 * offset)) & 0xFF
            elif offset < 4:
                byte = (self.gpe_en >> (8 * (offset - 2))) & 0xFF
            else:
                byte = 0xFF
            value |= byte << (8 * i)
        return value

    def _gpe_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            offset = port - GPE0_BASE + i
            byte = (value >> (8 * i)) & 0xFF
            if offset < 2:
                self.gpe_sts &= ~(byte << (8 * offset))       # write one to clear
            elif offset < 4:
                shift = 8 * (offset - 2)
                self.gpe_en = (self.gpe_en & ~(0xFF << shift)) | (byte << shift)
        self._update_sci()

    def _pcihp_read(self, port: int, size: int) -> int:
        """Hotplug status of bus 0: nothing came or went; slots 0 and 1 (host bridge,
        PIIX3) cannot be removed; the bus selector reads back. Only aligned dword
        accesses are valid (others read 0 inside the block, as in QEMU)."""
        offset = port - PCIHP_BASE
        if size != 4 or offset & 3:
            inside = min(size, PCIHP_LEN - offset)
            value = 0
            for i in range(inside, size):            # bytes past the block
                value |= self._bus.read(port + i, 1) << (8 * i)
            return value
        return {0x0C: PCIHP_REMOVABLE, 0x10: self.pcihp_select}.get(offset, 0)

    def _pcihp_write(self, port: int, size: int, value: int) -> None:
        if size == 4 and port - PCIHP_BASE == 0x10:
            self.pcihp_select = value & 0xFFFFFFFF

    def _cpuhp_read(self, port: int, size: int) -> int:
        bitmap = ((1 << self.nb_cpus) - 1).to_bytes(CPUHP_LEN, "little")
        offset = port - CPUHP_BASE
        return int.from_bytes(bitmap[offset:offset + size].ljust(size, b"\xff"), "little")

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
                 com1: bool = False, com2: bool = False, nb_cpus: int = 1):
        self.isa = Piix3Isa(bus, pic_irq, reset_request)
        self.ide_controller = IdeController(bus, pic_irq(14), pic_irq(15), dma_read, dma_write)
        self.ide = PiixIde(bus, self.ide_controller)
        self.pm = Piix4Pm(bus, clock_ns, pic_irq(9), shutdown_request=shutdown_request,
                          com1=com1, com2=com2, nb_cpus=nb_cpus)
        host.add(0x08, self.isa)
        host.add(0x09, self.ide)
        host.add(0x0B, self.pm)
        host.pirq_router = self.isa.set_pirq

    def pci_irq(self, pirq: int, level: bool) -> None:
        """Drive PCI interrupt line PIRQ A-D (0-3)."""
        self.isa.set_pirq(pirq, level)
