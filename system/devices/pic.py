"""The PC's two cascaded Intel 8259A programmable interrupt controllers.

Master at 0x20/0x21 (INTR to the CPU), slave at 0xA0/0xA1 wired to master input 2, and
the PIIX edge/level control registers (ELCR) at 0x4D0/0x4D1. Behaviour follows QEMU 7.2's
hw/intc/i8259.c: priority resolution with a rotating base (``priority_add``), special
fully nested mode, special mask mode, auto-EOI with optional rotation, poll mode,
spurious IRQ 7 / 15, and the ELCR masks of PIIX3 (0xF8 master, 0xDE slave: IRQ 0, 1, 2,
8 and 13 are always edge-triggered).

Not modelled (as in QEMU 7.2): ICW1's LTIM bit (chip-wide level triggering; QEMU 8.0
added it, the PIIX3 ignores it), buffered mode, 8080/8085 call-address mode (ICW1 bit 2
and ICW4 bit 0 are accepted and ignored), the slave-ID check of ICW3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import IrqLine, PortBus

STATE_VERSION = 1

# ICW1 / OCW2 / OCW3 bits
ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
ICW1_LTIM = 0x08
ICW1_INIT = 0x10
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20
OCW3_ESMM = 0x40
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

ELCR_MASK_MASTER = 0xF8
ELCR_MASK_SLAVE = 0xDE


class I8259:
    """One 8259A. ``output`` is called with the INT pin level after every change."""

    # guest-visible state, in QEMU's vmstate order ("i8259", version 1)
    VMSTATE_FIELDS = ("last_irr", "irr", "imr", "isr", "priority_add", "irq_base",
                      "read_reg_select", "poll", "special_mask", "init_state", "auto_eoi",
                      "rotate_on_auto_eoi", "special_fully_nested_mode", "init4",
                      "single_mode", "elcr")

    def __init__(self, master: bool, elcr_mask: int, output: Callable[[bool], None]):
        self.master = master
        self.elcr_mask = elcr_mask
        self._output = output
        self.elcr = 0
        self.irr = 0
        self._reset_common()          # every other register starts at its reset value
        self.int_level = False

    # -- reset -----------------------------------------------------------------------

    def _reset_common(self) -> None:
        # the ELCR survives, and so does a level-triggered request still asserted
        self.last_irr = 0
        self.irr &= self.elcr
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_reg_select = 0
        self.poll = 0
        self.special_mask = 0
        self.init_state = 0
        self.auto_eoi = 0
        self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = 0
        self.init4 = 0
        self.single_mode = 0

    def reset(self) -> None:
        """System reset."""
        self.elcr = 0
        self._reset_common()
        self.update()

    # -- priority --------------------------------------------------------------------

    def _priority(self, mask: int) -> int:
        """Highest priority (0 best) among the bits of mask, 8 if none."""
        if mask == 0:
            return 8
        add = self.priority_add
        priority = 0
        while not mask & (1 << ((priority + add) & 7)):
            priority += 1
        return priority

    def get_irq(self) -> int:
        """The input that should interrupt now, or -1."""
        priority = self._priority(self.irr & ~self.imr)
        if priority == 8:
            return -1
        mask = self.isr
        if self.special_mask:
            mask &= ~self.imr
        if self.special_fully_nested_mode and self.master:
            mask &= ~(1 << 2)
        if priority < self._priority(mask):
            return (priority + self.priority_add) & 7
        return -1

    def update(self) -> None:
        """Recompute the INT output; must follow every state change."""
        level = self.get_irq() >= 0
        self.int_level = level
        self._output(level)

    # -- inputs ----------------------------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input ``irq`` (0-7)."""
        mask = 1 << irq
        if self.elcr & mask:
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self.update()

    def intack(self, irq: int) -> None:
        """INTA for ``irq``: move it from IRR to ISR (or rotate on auto-EOI)."""
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):
            # a level-triggered request stays in IRR
            self.irr &= ~(1 << irq)
        self.update()

    # -- ports -----------------------------------------------------------------------

    def write(self, addr: int, val: int) -> None:
        """Byte write at offset ``addr`` (0: command, 1: data)."""
        if addr == 0:
            if val & ICW1_INIT:
                self._reset_common()
                self.update()
                self.init_state = 1
                self.init4 = val & ICW1_IC4
                self.single_mode = val & ICW1_SNGL
            elif val & 0x08:            # OCW3
                if val & OCW3_POLL:
                    self.poll = 1
                if val & OCW3_RR:
                    self.read_reg_select = val & OCW3_RIS
                if val & OCW3_ESMM:
                    self.special_mask = (val >> 5) & 1
            else:                       # OCW2
                cmd = val >> 5
                if cmd in (0, 4):       # clear / set rotate in auto-EOI mode
                    self.rotate_on_auto_eoi = cmd >> 2
                elif cmd in (1, 5):     # non-specific EOI, rotate on non-specific EOI
                    priority = self._priority(self.isr)
                    if priority != 8:
                        irq = (priority + self.priority_add) & 7
                        self.isr &= ~(1 << irq)
                        if cmd == 5:
                            self.priority_add = (irq + 1) & 7
                        self.update()
                elif cmd == 3:          # specific EOI
                    self.isr &= ~(1 << (val & 7))
                    self.update()
                elif cmd == 6:          # set priority
                    self.priority_add = (val + 1) & 7
                    self.update()
                elif cmd == 7:          # rotate on specific EOI
                    irq = val & 7
                    self.isr &= ~(1 << irq)
                    self.priority_add = (irq + 1) & 7
                    self.update()
                # cmd 2: no operation
            return
        state = self.init_state
        if state == 0:                  # OCW1
            self.imr = val
            self.update()
        elif state == 1:                # ICW2
            self.irq_base = val & 0xF8
            if self.single_mode:
                self.init_state = 3 if self.init4 else 0
            else:
                self.init_state = 2
        elif state == 2:                # ICW3 (cascade wiring is fixed on a PC)
            self.init_state = 3 if self.init4 else 0
        else:                           # ICW4
            self.special_fully_nested_mode = (val >> 4) & 1
            self.auto_eoi = (val >> 1) & 1
            self.init_state = 0

    def read(self, addr: int) -> int:
        """Byte read at offset ``addr``."""
        if self.poll:
            self.poll = 0
            irq = self.get_irq()
            if irq >= 0:
                self.intack(irq)
                return irq | 0x80
            return 0
        if addr == 0:
            return self.isr if self.read_reg_select else self.irr
        return self.imr

    def info(self, index: int) -> str:
        """One line of HMP ``info pic``."""
        return (f"pic{index}: irr={self.irr:02x} imr={self.imr:02x} isr={self.isr:02x} "
                f"hprio={self.priority_add} irq_base={self.irq_base:02x} "
                f"rr_sel={self.read_reg_select} elcr={self.elcr:02x} "
                f"fnm={self.special_fully_nested_mode}")

    def state(self) -> dict[str, int]:
        """Snapshot of the guest-visible registers (for migration/tests)."""
        return {name: int(getattr(self, name)) for name in self.VMSTATE_FIELDS}


class PicPair:
    """Master + slave 8259 as wired on the PC, seen by the CPU as one INTR pin."""

    def __init__(self, bus: PortBus, on_change: Callable[[], None] | None = None):
        self._on_change = on_change
        self.master = I8259(True, ELCR_MASK_MASTER, self._master_output)
        self.slave = I8259(False, ELCR_MASK_SLAVE, self._slave_output)
        self._lines = [IrqLine(self._input_handler(n)) for n in range(16)]
        self._intr = False
        bus.register(0x20, 2, self._read_master, self._write_master, "pic", byte_only=True)
        bus.register(0xA0, 2, self._read_slave, self._write_slave, "pic", byte_only=True)
        bus.register(0x4D0, 2, self._read_elcr, self._write_elcr, "elcr", byte_only=True)

    def _input_handler(self, n: int) -> Callable[[bool], None]:
        chip = self.master if n < 8 else self.slave
        pin = n & 7
        return lambda level: chip.set_irq(pin, level)

    def _master_output(self, level: bool) -> None:
        changed = level != self._intr
        self._intr = level
        if changed and self._on_change is not None:
            self._on_change()

    def _slave_output(self, level: bool) -> None:
        self.master.set_irq(2, level)

    # -- interface for devices and the CPU -------------------------------------------

    def irq(self, n: int) -> IrqLine:
        """The wire for ISA IRQ ``n`` (0-15)."""
        return self._lines[n]

    def set_irq(self, n: int, level: bool) -> None:
        """Drive ISA IRQ ``n`` directly."""
        self._lines[n].set(level)

    def intr_pending(self) -> bool:
        """Level of the master's INT output (the CPU's INTR pin)."""
        return self._intr

    def acknowledge(self) -> int:
        """The INTA cycle: resolve, acknowledge and return the 8-bit vector."""
        master, slave = self.master, self.slave
        irq = master.get_irq()
        if irq < 0:
            return master.irq_base + 7          # spurious IRQ 7
        if irq == 2:
            irq2 = slave.get_irq()
            if irq2 >= 0:
                slave.intack(irq2)
            else:
                irq2 = 7                        # spurious IRQ 15
            vector = slave.irq_base + irq2
        else:
            vector = master.irq_base + irq
        master.intack(irq)
        return vector & 0xFF

    def reset(self) -> None:
        """System reset of both chips (ELCR cleared)."""
        self.master.reset()
        self.slave.reset()

    def info_text(self) -> str:
        """The 8259 lines of HMP ``info pic``, in QEMU 7.2's order (slave first; QEMU
        prints its IOAPIC before them)."""
        return f"{self.slave.info(1)}\n{self.master.info(0)}\n"

    # -- migration -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Both chips' registers (QEMU's vmstate "i8259" fields)."""
        return {"version": STATE_VERSION, "master": self.master.state(),
                "slave": self.slave.state(),
                "lines": [line.level for line in self._lines]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned; the INTR output follows."""
        for chip, regs in ((self.master, state["master"]), (self.slave, state["slave"])):
            for name in I8259.VMSTATE_FIELDS:
                setattr(chip, name, regs[name])
            chip.int_level = chip.get_irq() >= 0
        for line, level in zip(self._lines, state["lines"], strict=True):
            line.level = level
        self._master_output(self.master.int_level)

    # -- ports -----------------------------------------------------------------------

    def _read_master(self, port: int, size: int) -> int:
        return self.master.read(port & 1)

    def _write_master(self, port: int, size: int, value: int) -> None:
        self.master.write(port & 1, value)

    def _read_slave(self, port: int, size: int) -> int:
        return self.slave.read(port & 1)

    def _write_slave(self, port: int, size: int, value: int) -> None:
        self.slave.write(port & 1, value)

    def _read_elcr(self, port: int, size: int) -> int:
        return (self.master if port == 0x4D0 else self.slave).elcr

    def _write_elcr(self, port: int, size: int, value: int) -> None:
        chip = self.master if port == 0x4D0 else self.slave
        chip.elcr = value & chip.elcr_mask
