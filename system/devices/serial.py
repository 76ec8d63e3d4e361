"""16550A UART with QEMU's hw/char/serial.c semantics (COM1 0x3F8 IRQ4, COM2 0x2F8 IRQ3).

Registers (offset from the base; DLAB is LCR bit 7):
  0 RBR (read) / THR (write); with DLAB the divisor latch low byte
  1 IER; with DLAB the divisor latch high byte
  2 IIR (read) / FCR (write): 16-byte FIFOs, receive trigger level 1/4/8/14
  3 LCR, 4 MCR (bit 4: loopback), 5 LSR, 6 MSR, 7 SCR

Interrupt priority (IIR): line status (OE/PE/FE/BI) > character timeout > received data
at the trigger level > THR empty > modem status. The THR-empty interrupt is cleared by
reading IIR while it is the one shown, or by writing THR; enabling it in IER while THR is
empty raises it at once.

Transmit is instantaneous (no baud-rate pacing): a byte written to THR goes straight to
the chardev (or, in loopback, to the receiver). Receive: the chardev's reader thread hands
bytes to ``post(fn)`` (the machine's run_on_cpu_thread), and they are fed to the receiver
only as fast as the guest makes room (QEMU's serial_can_receive: up to the trigger level
with the FIFO on, one byte without), so host input never overruns the guest. A
character-timeout interrupt is raised 4 character times after the last received byte
while the FIFO holds data (on the virtual clock; without a clock it never comes).

Not modelled: the modem status lines of a host serial port (MSR reads DCD|DSR|CTS; in
loopback the MCR outputs), parity/framing errors, break sent by the guest (LCR bit 6).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from pyqemu.system.bus import IrqLine, PortBus

COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))

FIFO_LENGTH = 16

# IER
IER_MSI = 0x08
IER_RLSI = 0x04
IER_THRI = 0x02
IER_RDI = 0x01
# IIR
IIR_NO_INT = 0x01
IIR_ID = 0x06
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C
IIR_FE = 0xC0
# FCR
FCR_FE = 0x01
FCR_RFR = 0x02
FCR_XFR = 0x04
FCR_ITL_MASK = 0xC0
# LCR
LCR_DLAB = 0x80
# MCR
MCR_LOOP = 0x10
MCR_OUT2 = 0x08
MCR_OUT1 = 0x04
MCR_RTS = 0x02
MCR_DTR = 0x01
# LSR
LSR_TEMT = 0x40
LSR_THRE = 0x20
LSR_BI = 0x10
LSR_FE = 0x08
LSR_PE = 0x04
LSR_OE = 0x02
LSR_DR = 0x01
LSR_INT_ANY = 0x1E
# MSR
MSR_DCD = 0x80
MSR_RI = 0x40
MSR_DSR = 0x20
MSR_CTS = 0x10
MSR_ANY_DELTA = 0x0F

_ITL = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

# fields saved by migration (QEMU's vmstate_serial, version 3, plus the FIFO contents)
STATE_VERSION = 1
STATE_FIELDS = ("divider", "rbr", "ier", "iir", "lcr", "mcr", "lsr", "msr", "scr", "fcr",
                "thr", "tsr", "thr_ipending", "timeout_ipending")


class Serial16550:
    """One 16550A on the port bus."""

    def __init__(self, bus: PortBus, base: int, irq: IrqLine, chardev: Any, *,
                 post: Callable[[Callable[[], None]], object] | None = None,
                 clock: Any = None, name: str = "serial") -> None:
        self.base = base
        self.irq = irq
        self.chardev = chardev
        self.clock = clock
        self._post = post
        self._host_input: deque[int] = deque()
        self._timeout_timer: Any = None
        self.reset()
        bus.register(base, 8, self._io_read, self._io_write, name, byte_only=True)
        if chardev is not None:
            if hasattr(chardev, "set_event_handler"):
                chardev.set_event_handler(self._chardev_event)
            chardev.set_reader(self._from_chardev)

    # ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on state (QEMU's serial_reset)."""
        self.rbr = 0
        self.thr = 0
        self.tsr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.lcr = 0
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.divider = 0x0C      # 9600 baud
        self.mcr = MCR_OUT2
        self.scr = 0
        self.fcr = 0
        self.recv_itl = 1
        self.thr_ipending = 0
        self.timeout_ipending = 0
        self.recv_fifo: deque[int] = deque()
        self.xmit_fifo: deque[int] = deque()
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None
        self._update_irq()

    def char_transmit_time_ns(self) -> int:
        """Time of one character frame at the programmed speed and format."""
        speed = 115200 / (self.divider or 1)
        data_bits = (self.lcr & 0x03) + 5
        parity = 1 if self.lcr & 0x08 else 0
        stop_bits = 2 if self.lcr & 0x04 else 1
        frame = 1 + data_bits + parity + stop_bits
        return int(1_000_000_000 / speed * frame)

    # interrupts --------------------------------------------------------------------------
    def _update_irq(self) -> None:
        iir = IIR_NO_INT
        if self.ier & IER_RLSI and self.lsr & LSR_INT_ANY:
            iir = IIR_RLSI
        elif self.ier & IER_RDI and self.timeout_ipending:
            iir = IIR_CTI
        elif (self.ier & IER_RDI and self.lsr & LSR_DR
              and (not self.fcr & FCR_FE or len(self.recv_fifo) >= self.recv_itl)):
            iir = IIR_RDI
        elif self.ier & IER_THRI and self.thr_ipending:
            iir = IIR_THRI
        elif self.ier & IER_MSI and self.msr & MSR_ANY_DELTA:
            iir = IIR_MSI
        self.iir = iir | (self.iir & 0xF0)
        self.irq.set(iir != IIR_NO_INT)

    # transmit ----------------------------------------------------------------------------
    def _xmit(self) -> None:
        while True:
            if self.fcr & FCR_FE:
                self.tsr = self.xmit_fifo.popleft()
                if not self.xmit_fifo:
                    self.lsr |= LSR_THRE
            else:
                self.tsr = self.thr
                self.lsr |= LSR_THRE
            if self.lsr & LSR_THRE and not self.thr_ipending:
                self.thr_ipending = 1
                self._update_irq()
            if self.mcr & MCR_LOOP:
                self._receive(bytes((self.tsr,)))
            elif self.chardev is not None:
                self.chardev.write(bytes((self.tsr,)))
            if self.lsr & LSR_THRE:
                break
        self.lsr |= LSR_TEMT

    # receive -----------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        """Bytes arriving on the line (serial_receive1)."""
        if self.fcr & FCR_FE:
            for byte in data:
                if len(self.recv_fifo) >= FIFO_LENGTH:
                    self.lsr |= LSR_OE
                else:
                    self.recv_fifo.append(byte)
            self.lsr |= LSR_DR
            self._arm_timeout()
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = data[-1]
            self.lsr |= LSR_DR
        self._update_irq()

    def can_receive(self) -> int:
        """How many bytes the receiver takes now (serial_can_receive)."""
        if self.fcr & FCR_FE:
            count = len(self.recv_fifo)
            if count < FIFO_LENGTH:
                return self.recv_itl - count if count <= self.recv_itl else 1
            return 0
        return 0 if self.lsr & LSR_DR else 1

    def _accept_input(self) -> None:
        """Move waiting host input into the receiver as far as it has room."""
        while self._host_input and not self.mcr & MCR_LOOP:
            room = self.can_receive()
            if room <= 0:
                break
            take = bytes(self._host_input.popleft()
                         for _ in range(min(room, len(self._host_input))))
            self._receive(take)

    def host_input(self, data: bytes) -> None:
        """Bytes from the chardev, on the CPU thread."""
        self._host_input.extend(data)
        self._accept_input()

    def _from_chardev(self, data: bytes) -> None:
        # reader thread: hand over to the CPU thread
        if self._post is None:
            self.host_input(data)
        else:
            self._post(lambda: self.host_input(data))

    def _chardev_event(self, event: str) -> None:
        if event == "break":
            if self._post is None:
                self.receive_break()
            else:
                self._post(self.receive_break)

    def receive_break(self) -> None:
        """A break condition on the line (CHR_EVENT_BREAK)."""
        self.lsr |= LSR_BI | LSR_DR
        self._update_irq()

    def _arm_timeout(self) -> None:
        if self.clock is None:
            return   # no clock: time stands still (as in qemu -S); no timeout ever
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
        deadline = self.clock.now_ns() + 4 * self.char_transmit_time_ns()
        self._timeout_timer = self.clock.add_timer(deadline, self._timeout_fired)

    def _timeout_fired(self) -> None:
        self._timeout_timer = None
        if self.recv_fifo:
            self.timeout_ipending = 1
            self._update_irq()

    # registers ---------------------------------------------------------------------------
    def _io_write(self, port: int, size: int, value: int) -> None:
        self.write_reg(port - self.base, value & 0xFF)

    def _io_read(self, port: int, size: int) -> int:
        return self.read_reg(port - self.base)

    def write_reg(self, offset: int, value: int) -> None:
        """Guest write to register ``offset`` (0..7)."""
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
                return
            self.thr = value
            if self.fcr & FCR_FE:
                if len(self.xmit_fifo) >= FIFO_LENGTH:
                    self.xmit_fifo.popleft()
                self.xmit_fifo.append(value)
            self.thr_ipending = 0
            self.lsr &= ~(LSR_THRE | LSR_TEMT)
            self._update_irq()
            self._xmit()
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
                return
            changed = (self.ier ^ value) & 0x0F
            self.ier = value & 0x0F
            if changed & IER_THRI:
                self.thr_ipending = 1 if self.ier & IER_THRI and self.lsr & LSR_THRE else 0
            if changed:
                self._update_irq()
        elif offset == 2:
            if self.fcr == value:
                return
            if (value ^ self.fcr) & FCR_FE:
                value |= FCR_XFR | FCR_RFR
            if value & FCR_RFR:
                self.lsr &= ~(LSR_DR | LSR_BI)
                if self._timeout_timer is not None:
                    self._timeout_timer.cancel()
                    self._timeout_timer = None
                self.timeout_ipending = 0
                self.recv_fifo.clear()
            if value & FCR_XFR:
                self.lsr |= LSR_THRE
                self.thr_ipending = 1
                self.xmit_fifo.clear()
            self.fcr = value & 0xC9
            if self.fcr & FCR_FE:
                self.iir |= IIR_FE
                self.recv_itl = _ITL[self.fcr & FCR_ITL_MASK]
            else:
                self.iir &= ~IIR_FE
            self._update_irq()
            self._accept_input()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            was_loop = self.mcr & MCR_LOOP
            self.mcr = value & 0x1F
            if was_loop and not self.mcr & MCR_LOOP:
                self._accept_input()
        elif offset == 7:
            self.scr = value
        # 5 (LSR) and 6 (MSR) are read-only

    def read_reg(self, offset: int) -> int:
        """Guest read of register ``offset`` (0..7)."""
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            if self.fcr & FCR_FE:
                ret = self.recv_fifo.popleft() if self.recv_fifo else 0
                self.timeout_ipending = 0
                if not self.recv_fifo:
                    self.lsr &= ~(LSR_DR | LSR_BI)
                else:
                    self._arm_timeout()
            else:
                ret = self.rbr
                self.lsr &= ~(LSR_DR | LSR_BI)
            self._update_irq()
            self._accept_input()
            return ret
        if offset == 1:
            if self.lcr & LCR_DLAB:
                return self.divider >> 8
            return self.ier
        if offset == 2:
            ret = self.iir
            if ret & IIR_ID == IIR_THRI:
                self.thr_ipending = 0
                self._update_irq()
            return ret
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            ret = self.lsr
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return ret
        if offset == 6:
            if self.mcr & MCR_LOOP:
                # loopback: the modem outputs come back on the inputs
                return (((self.mcr & 0x0C) << 4) | ((self.mcr & MCR_RTS) << 3)
                        | ((self.mcr & MCR_DTR) << 5))
            ret = self.msr
            if self.msr & MSR_ANY_DELTA:
                self.msr &= 0xF0
                self._update_irq()
            return ret
        return self.scr

    # migration ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The guest-visible state (STATE_FIELDS plus the FIFO contents)."""
        state = {f: getattr(self, f) for f in STATE_FIELDS}
        state["recv_fifo"] = bytes(self.recv_fifo)
        state["xmit_fifo"] = bytes(self.xmit_fifo)
        state["version"] = STATE_VERSION
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned."""
        for f in STATE_FIELDS:
            setattr(self, f, state[f])
        self.recv_fifo = deque(state["recv_fifo"])
        self.xmit_fifo = deque(state["xmit_fifo"])
        self.recv_itl = _ITL[self.fcr & FCR_ITL_MASK] if self.fcr & FCR_FE else 1
        self._update_irq()
