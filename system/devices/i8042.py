"""Intel 8042 keyboard controller with a PS/2 keyboard and mouse (ports 0x60, 0x64).

Behaviour follows QEMU 7.2's hw/input/pckbd.c (with its "extended state": controller
replies have their own one-byte slot, and data from a disabled port is held back) and
hw/input/ps2.c for the devices: command byte (0x20/0x60), self-test 0xAA -> 0x55,
interface tests 0xAB/0xA9 -> 0x00, port enable/disable (0xAD/0xAE, 0xA7/0xA8), output
port read/write (0xD0/0xD1: bit 1 A20, bit 0 low = reset), 0xDD/0xDF A20, 0xFE and
0xF0-0xFE even pulse reset, 0xD2/0xD3/0xD4 writes; keyboard: reset 0xFF -> FA AA, get ID,
echo, scan code set 0xF0, LEDs, typematic rate, enable/disable (replies jump the queue
and a new command drops unread ones, as QEMU's ps2.c); mouse: the command set with
wrap mode, IntelliMouse detection and empty poll packets. IRQ1 (IRQ12 for mouse data) while the output buffer is full and the
interrupt bit of the command byte is set.

``key_input(scancodes)`` feeds bytes as the guest will read them (set 1 when the
command byte's translate bit ``kbd.translate`` is on, else the active set); nothing is
sent while scanning is disabled.

Not modelled: the keyboard throttle timer (off by default in QEMU), mouse movement
and button events, key-event to scancode translation (the caller gives bytes),
typematic repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import IrqLine, PortBus

# status register
STAT_OBF = 0x01
STAT_IBF = 0x02
STAT_SELFTEST = 0x04
STAT_CMD = 0x08
STAT_UNLOCKED = 0x10
STAT_MOUSE_OBF = 0x20
STAT_GTO = 0x40
STAT_PERR = 0x80

# command byte ("mode")
MODE_KBD_INT = 0x01
MODE_MOUSE_INT = 0x02
MODE_SYS = 0x04
MODE_NO_KEYLOCK = 0x08
MODE_DISABLE_KBD = 0x10
MODE_DISABLE_MOUSE = 0x20
MODE_KCC = 0x40
MODE_RFU = 0x80

# output port
OUT_RESET = 0x01
OUT_A20 = 0x02
OUT_OBF = 0x10
OUT_MOUSE_OBF = 0x20
OUT_ONES = 0xCC

# controller commands
CCMD_READ_MODE = 0x20
CCMD_WRITE_MODE = 0x60
CCMD_GET_VERSION = 0xA1
CCMD_MOUSE_DISABLE = 0xA7
CCMD_MOUSE_ENABLE = 0xA8
CCMD_TEST_MOUSE = 0xA9
CCMD_SELF_TEST = 0xAA
CCMD_KBD_TEST = 0xAB
CCMD_KBD_DISABLE = 0xAD
CCMD_KBD_ENABLE = 0xAE
CCMD_READ_INPORT = 0xC0
CCMD_READ_OUTPORT = 0xD0
CCMD_WRITE_OUTPORT = 0xD1
CCMD_WRITE_OBUF = 0xD2
CCMD_WRITE_AUX_OBUF = 0xD3
CCMD_WRITE_MOUSE = 0xD4
CCMD_DISABLE_A20 = 0xDD
CCMD_ENABLE_A20 = 0xDF
CCMD_PULSE_BITS_3_0 = 0xF0
CCMD_RESET = 0xFE
CCMD_NO_OP = 0xFF

# which byte waits for the guest (QEMU's KBD_PENDING_*)
PENDING_CTRL_KBD = 0x04
PENDING_CTRL_AUX = 0x08
PENDING_KBD = MODE_DISABLE_KBD
PENDING_AUX = MODE_DISABLE_MOUSE
PENDING_DEVICES = PENDING_KBD | PENDING_AUX

OBSRC_KBD = 0x01
OBSRC_MOUSE = 0x02
OBSRC_CTRL = 0x04

# keyboard commands and replies
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANCODE = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_SET_RATE = 0xF3
KBD_CMD_ENABLE = 0xF4
KBD_CMD_RESET_DISABLE = 0xF5
KBD_CMD_RESET_ENABLE = 0xF6
KBD_CMD_SET_TYPEMATIC = 0xFA
KBD_CMD_SET_MAKE_BREAK = 0xFC
KBD_CMD_RESET = 0xFF
KBD_REPLY_POR = 0xAA
KBD_REPLY_ID = 0xAB
KBD_REPLY_ACK = 0xFA
KBD_REPLY_RESEND = 0xFE

STATE_VERSION = 1
PS2_QUEUE_SIZE = 16                 # bytes of device data the queue accepts
PS2_BUFFER_SIZE = 256
# what "get scan code set" answers while the controller translates to set 1
_TRANSLATED_SET_ID = (0xFF, 0x43, 0x41, 0x3F)

# mouse commands
AUX_SET_SCALE11 = 0xE6
AUX_SET_SCALE21 = 0xE7
AUX_SET_RES = 0xE8
AUX_GET_SCALE = 0xE9
AUX_SET_STREAM = 0xEA
AUX_POLL = 0xEB
AUX_RESET_WRAP = 0xEC
AUX_SET_WRAP = 0xEE
AUX_SET_REMOTE = 0xF0
AUX_GET_TYPE = 0xF2
AUX_SET_SAMPLE = 0xF3
AUX_ENABLE_DEV = 0xF4
AUX_DISABLE_DEV = 0xF5
AUX_SET_DEFAULT = 0xF6
AUX_RESET = 0xFF
AUX_ACK = 0xFA
MOUSE_STATUS_REMOTE = 0x40
MOUSE_STATUS_ENABLED = 0x20
MOUSE_STATUS_SCALE21 = 0x10


class Ps2Device:
    """QEMU's PS2Queue: a 256-byte ring where device data is appended (at most 16 bytes
    pending) and command replies are inserted in front of it, to be read first; a new
    keyboard command drops the unread replies of the previous one."""

    def __init__(self, update_irq: Callable[[bool], None]):
        self._update_irq = update_irq
        self.data = bytearray(PS2_BUFFER_SIZE)
        self.rptr = 0
        self.wptr = 0
        self.count = 0
        self.cwptr = -1
        self.write_cmd = -1

    QUEUE_FIELDS = ("rptr", "wptr", "count", "cwptr", "write_cmd")
    DEVICE_FIELDS: tuple[str, ...] = ()

    def get_state(self) -> dict[str, Any]:
        state = {f: getattr(self, f) for f in self.QUEUE_FIELDS + self.DEVICE_FIELDS}
        state["data"] = bytes(self.data)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for f in self.QUEUE_FIELDS + self.DEVICE_FIELDS:
            setattr(self, f, state[f])
        self.data = bytearray(state["data"])

    def reset_queue(self) -> None:
        self.rptr = self.wptr = self.count = 0
        self.cwptr = -1

    def pending(self) -> bytes:
        """The unread bytes, in the order the guest will read them."""
        return bytes(self.data[(self.rptr + i) & 0xFF] for i in range(self.count))

    def _queue_noirq(self, b: int) -> None:
        if self.count >= PS2_QUEUE_SIZE:
            return
        self.data[self.wptr] = b & 0xFF
        self.wptr = (self.wptr + 1) & 0xFF
        self.count += 1

    def push(self, *data: int) -> None:
        """Device data: all bytes or none, at the end of the queue."""
        if PS2_QUEUE_SIZE - self.count < len(data):
            return
        for b in data:
            self._queue_noirq(b)
        self._update_irq(True)

    def cpush(self, *data: int) -> None:
        """A command reply, read before any device data already queued."""
        self.rptr = (self.rptr - len(data)) & 0xFF
        self.cwptr = self.rptr
        for b in data:
            self.data[self.cwptr] = b & 0xFF
            self.cwptr = (self.cwptr + 1) & 0xFF
            self.count += 1
        self._update_irq(True)

    def cqueue_reset(self) -> None:
        if self.cwptr == -1:
            return
        self.count -= (self.cwptr - self.rptr) & 0xFF
        self.rptr = self.cwptr
        self.cwptr = -1

    def read_data(self) -> int:
        """Next byte; an empty queue repeats the byte before the read pointer."""
        if self.count == 0:
            return self.data[(self.rptr - 1) & 0xFF]
        val = self.data[self.rptr]
        self.rptr = (self.rptr + 1) & 0xFF
        self.count -= 1
        if self.rptr == self.cwptr:
            self.cwptr = -1             # command replies all read
        self._update_irq(False)
        if self.count:
            self._update_irq(True)
        return val


class Ps2Keyboard(Ps2Device):
    """An MF2 AT keyboard."""

    DEVICE_FIELDS = ("scan_enabled", "scancode_set", "translate", "ledstate")

    def __init__(self, update_irq: Callable[[bool], None]):
        super().__init__(update_irq)
        self.scan_enabled = 1
        self.scancode_set = 2
        self.translate = 0
        self.ledstate = 0

    def reset(self) -> None:
        """The keyboard's reset command (0xFF, 0xF5, 0xF6)."""
        self.scan_enabled = 1
        self.scancode_set = 2
        self.reset_queue()
        self.ledstate = 0

    def device_reset(self) -> None:
        """System reset of the keyboard device (QEMU's ps2_kbd_reset)."""
        self.reset()
        self.write_cmd = -1
        self.translate = 0

    def write(self, val: int) -> None:
        self.cqueue_reset()
        cmd = self.write_cmd
        if cmd == KBD_CMD_SCANCODE:
            if val == 0:
                self.cpush(KBD_REPLY_ACK, _TRANSLATED_SET_ID[self.scancode_set]
                           if self.translate else self.scancode_set)
            elif 1 <= val <= 3:
                self.scancode_set = val
                self.cpush(KBD_REPLY_ACK)
            else:
                self.cpush(KBD_REPLY_RESEND)
            self.write_cmd = -1
            return
        if cmd == KBD_CMD_SET_LEDS:
            self.ledstate = val
            self.cpush(KBD_REPLY_ACK)
            self.write_cmd = -1
            return
        if cmd in (KBD_CMD_SET_RATE, KBD_CMD_SET_MAKE_BREAK):
            self.cpush(KBD_REPLY_ACK)
            self.write_cmd = -1
            return
        if val == 0x00:
            self.cpush(KBD_REPLY_ACK)
        elif val == 0x05:
            self.cpush(KBD_REPLY_RESEND)
        elif val == KBD_CMD_GET_ID:
            self.cpush(KBD_REPLY_ACK, KBD_REPLY_ID, 0x41 if self.translate else 0x83)
        elif val == KBD_CMD_ECHO:
            self.cpush(KBD_CMD_ECHO)
        elif val == KBD_CMD_ENABLE:
            self.scan_enabled = 1
            self.cpush(KBD_REPLY_ACK)
        elif val in (KBD_CMD_SCANCODE, KBD_CMD_SET_LEDS, KBD_CMD_SET_RATE,
                     KBD_CMD_SET_MAKE_BREAK):
            self.write_cmd = val
            self.cpush(KBD_REPLY_ACK)
        elif val == KBD_CMD_RESET_DISABLE:
            self.reset()
            self.scan_enabled = 0
            self.cpush(KBD_REPLY_ACK)
        elif val == KBD_CMD_RESET_ENABLE:
            self.reset()
            self.scan_enabled = 1
            self.cpush(KBD_REPLY_ACK)
        elif val == KBD_CMD_RESET:
            self.reset()
            self.cpush(KBD_REPLY_ACK, KBD_REPLY_POR)
        elif val == KBD_CMD_SET_TYPEMATIC:
            self.cpush(KBD_REPLY_ACK)
        else:
            self.cpush(KBD_REPLY_RESEND)

    def key_input(self, scancodes: bytes) -> None:
        if self.scan_enabled:
            for b in scancodes:
                self.push(b)


class Ps2Mouse(Ps2Device):
    """A PS/2 mouse (with QEMU's IntelliMouse detection); no movement reports yet."""

    DEVICE_FIELDS = ("status", "resolution", "sample_rate", "mouse_type", "detect_state",
                     "wrap")

    def __init__(self, update_irq: Callable[[bool], None]):
        super().__init__(update_irq)
        self.reset()

    def reset(self) -> None:
        """Device (power-on) reset: everything 0, as QEMU's ps2_mouse_reset."""
        self.reset_queue()
        self.write_cmd = -1
        self.status = 0
        self.resolution = 0
        self.sample_rate = 0
        self.mouse_type = 0
        self.detect_state = 0
        self.wrap = 0

    def _send_packet(self) -> None:
        """An empty movement packet (no motion, no buttons)."""
        self.push(*([0x08, 0, 0] + ([0] if self.mouse_type else [])))

    def write(self, val: int) -> None:
        cmd = self.write_cmd
        if cmd == AUX_SET_SAMPLE:
            self.sample_rate = val
            state = self.detect_state
            if state == 1:
                self.detect_state = 2 if val == 100 else 3 if val == 200 else 0
            elif state in (2, 3):
                if val == 80:
                    self.mouse_type = 3 if state == 2 else 4   # IMPS/2, IMEX
                self.detect_state = 0
            elif val == 200:
                self.detect_state = 1
            self.push(AUX_ACK)
            self.write_cmd = -1
            return
        if cmd == AUX_SET_RES:
            self.resolution = val
            self.push(AUX_ACK)
            self.write_cmd = -1
            return
        if self.wrap:
            if val == AUX_RESET_WRAP:
                self.wrap = 0
                self.push(AUX_ACK)
                return
            if val != AUX_RESET:
                self.push(val)
                return
        if val == AUX_SET_SCALE11:
            self.status &= ~MOUSE_STATUS_SCALE21
            self.push(AUX_ACK)
        elif val == AUX_SET_SCALE21:
            self.status |= MOUSE_STATUS_SCALE21
            self.push(AUX_ACK)
        elif val == AUX_SET_STREAM:
            self.status &= ~MOUSE_STATUS_REMOTE
            self.push(AUX_ACK)
        elif val == AUX_SET_WRAP:
            self.wrap = 1
            self.push(AUX_ACK)
        elif val == AUX_SET_REMOTE:
            self.status |= MOUSE_STATUS_REMOTE
            self.push(AUX_ACK)
        elif val == AUX_GET_TYPE:
            self.push(AUX_ACK, self.mouse_type)
        elif val in (AUX_SET_RES, AUX_SET_SAMPLE):
            self.write_cmd = val
            self.push(AUX_ACK)
        elif val == AUX_GET_SCALE:
            self.push(AUX_ACK, self.status, self.resolution, self.sample_rate)
        elif val == AUX_POLL:
            self.push(AUX_ACK)
            self._send_packet()
        elif val == AUX_ENABLE_DEV:
            self.status |= MOUSE_STATUS_ENABLED
            self.push(AUX_ACK)
        elif val == AUX_DISABLE_DEV:
            self.status &= ~MOUSE_STATUS_ENABLED
            self.push(AUX_ACK)
        elif val == AUX_SET_DEFAULT:
            self.sample_rate = 100
            self.resolution = 2
            self.status = 0
            self.push(AUX_ACK)
        elif val == AUX_RESET:
            self.sample_rate = 100
            self.resolution = 2
            self.status = 0
            self.mouse_type = 0
            self.reset_queue()
            self.push(AUX_ACK, 0xAA, self.mouse_type)
        # anything else: no answer


class I8042:
    """The controller, its keyboard (IRQ1) and mouse (IRQ12)."""

    VMSTATE_FIELDS = ("write_cmd", "status", "mode", "outport", "pending", "obdata",
                      "cbdata", "obsrc")

    def __init__(self, bus: PortBus, irq1: IrqLine, irq12: IrqLine | None,
                 reset: Callable[[], None] | None,
                 a20_changed: Callable[[bool], None] | None = None):
        self.irq_kbd = irq1
        self.irq_mouse = irq12
        self._reset_request = reset
        self._a20_changed = a20_changed
        self.write_cmd = 0
        self.status = 0
        self.mode = 0
        self.outport = 0
        self.pending = 0
        self.obdata = 0
        self.cbdata = 0
        self.obsrc = 0
        self.kbd = Ps2Keyboard(self._kbd_irq)
        self.mouse = Ps2Mouse(self._mouse_irq)
        bus.register(0x60, 1, self._read_data, self._write_data, "i8042-data",
                     byte_only=True)
        bus.register(0x64, 1, self._read_status, self._write_command, "i8042-cmd",
                     byte_only=True)
        self.reset()

    def reset(self) -> None:
        """System reset of the controller and both PS/2 devices."""
        self.kbd.device_reset()
        self.mouse.reset()
        self.write_cmd = 0
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.pending = 0
        self._deassert_irq()

    # -- output buffer and interrupts ------------------------------------------------

    def _pending(self) -> int:
        # data from a disabled port waits in its device until the port is enabled
        return self.pending & (~self.mode & PENDING_DEVICES | PENDING_CTRL_KBD
                               | PENDING_CTRL_AUX)

    def _update_irq_lines(self) -> None:
        kbd = mouse = False
        if self.status & STAT_OBF:
            if self.status & STAT_MOUSE_OBF:
                mouse = bool(self.mode & MODE_MOUSE_INT)
            else:
                kbd = bool(self.mode & MODE_KBD_INT) and not self.mode & MODE_DISABLE_KBD
        self.irq_kbd.set(kbd)
        if self.irq_mouse is not None:
            self.irq_mouse.set(mouse)

    def _update_irq(self) -> None:
        pending = self._pending()
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF)
        if pending:
            self.status |= STAT_OBF
            self.outport |= OUT_OBF
            if pending & PENDING_CTRL_KBD:
                self.obsrc = OBSRC_CTRL
            elif pending & PENDING_CTRL_AUX:
                self.status |= STAT_MOUSE_OBF
                self.outport |= OUT_MOUSE_OBF
                self.obsrc = OBSRC_CTRL
            elif pending & PENDING_KBD:
                self.obsrc = OBSRC_KBD
            else:
                self.status |= STAT_MOUSE_OBF
                self.outport |= OUT_MOUSE_OBF
                self.obsrc = OBSRC_MOUSE
        self._update_irq_lines()

    def _safe_update_irq(self) -> None:
        if self.status & STAT_OBF:
            return                      # the next data read refills the buffer
        if self._pending():
            self._update_irq()

    def _deassert_irq(self) -> None:
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF)
        self._update_irq_lines()

    def _kbd_irq(self, level: bool) -> None:
        if level:
            self.pending |= PENDING_KBD
        else:
            self.pending &= ~PENDING_KBD
        self._safe_update_irq()

    def _mouse_irq(self, level: bool) -> None:
        if level:
            self.pending |= PENDING_AUX
        else:
            self.pending &= ~PENDING_AUX
        self._safe_update_irq()

    def _queue(self, b: int, aux: bool) -> None:
        """A byte from the controller itself."""
        self.cbdata = b & 0xFF
        self.pending &= ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)
        self.pending |= PENDING_CTRL_AUX if aux else PENDING_CTRL_KBD
        self._safe_update_irq()

    def _dequeue(self) -> int:
        self.pending &= ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)
        if self._pending():
            self._update_irq()
        return self.cbdata

    # -- migration -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Controller registers (QEMU's "pckbd" with its extended state) and both
        PS/2 devices with their queues."""
        state = {f: getattr(self, f) for f in self.VMSTATE_FIELDS}
        state.update(version=STATE_VERSION, kbd=self.kbd.get_state(),
                     mouse=self.mouse.get_state())
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned; IRQ1/IRQ12 follow the buffer."""
        for f in self.VMSTATE_FIELDS:
            setattr(self, f, state[f])
        self.kbd.set_state(state["kbd"])
        self.mouse.set_state(state["mouse"])
        self._update_irq_lines()

    # -- outside input ---------------------------------------------------------------

    def key_input(self, scancodes: bytes) -> None:
        """Bytes sent by the keyboard (call on the CPU thread)."""
        self.kbd.key_input(scancodes)

    # -- ports -----------------------------------------------------------------------

    def _read_status(self, port: int, size: int) -> int:
        return self.status

    def _outport_write(self, val: int) -> None:
        self.outport = val & 0xFF
        if self._a20_changed is not None:
            self._a20_changed(bool(val & OUT_A20))
        if not val & OUT_RESET and self._reset_request is not None:
            self._reset_request()

    def _write_command(self, port: int, size: int, val: int) -> None:
        if (val & CCMD_PULSE_BITS_3_0) == CCMD_PULSE_BITS_3_0:
            # pulse output port bits 3-0 low: only bit 0 (CPU reset) does anything
            val = CCMD_NO_OP if val & 1 else CCMD_RESET
        if val == CCMD_READ_MODE:
            self._queue(self.mode, False)
        elif val in (CCMD_WRITE_MODE, CCMD_WRITE_OBUF, CCMD_WRITE_AUX_OBUF, CCMD_WRITE_MOUSE,
                     CCMD_WRITE_OUTPORT):
            self.write_cmd = val
        elif val == CCMD_MOUSE_DISABLE:
            self.mode |= MODE_DISABLE_MOUSE
        elif val == CCMD_MOUSE_ENABLE:
            self.mode &= ~MODE_DISABLE_MOUSE
            self._safe_update_irq()
        elif val in (CCMD_TEST_MOUSE, CCMD_KBD_TEST):
            self._queue(0x00, False)
        elif val == CCMD_SELF_TEST:
            self.status |= STAT_SELFTEST
            self._queue(0x55, False)
        elif val == CCMD_KBD_DISABLE:
            self.mode |= MODE_DISABLE_KBD      # a byte already in the buffer stays
        elif val == CCMD_KBD_ENABLE:
            self.mode &= ~MODE_DISABLE_KBD
            self._safe_update_irq()
        elif val == CCMD_READ_INPORT:
            self._queue(0x80, False)
        elif val == CCMD_READ_OUTPORT:
            self._queue(self.outport, False)
        elif val == CCMD_ENABLE_A20:
            self.outport |= OUT_A20
            if self._a20_changed is not None:
                self._a20_changed(True)
        elif val == CCMD_DISABLE_A20:
            self.outport &= ~OUT_A20
            if self._a20_changed is not None:
                self._a20_changed(False)
        elif val == CCMD_RESET:
            if self._reset_request is not None:
                self._reset_request()
        # CCMD_NO_OP and unknown commands: nothing

    def _read_data(self, port: int, size: int) -> int:
        if self.status & STAT_OBF:
            self._deassert_irq()
            if self.obsrc & OBSRC_KBD:
                self.obdata = self.kbd.read_data()
            elif self.obsrc & OBSRC_MOUSE:
                self.obdata = self.mouse.read_data()
            elif self.obsrc & OBSRC_CTRL:
                self.obdata = self._dequeue()
        return self.obdata

    def _write_data(self, port: int, size: int, val: int) -> None:
        cmd = self.write_cmd
        self.write_cmd = 0
        if cmd == 0:
            self.kbd.write(val)
            self.mode &= ~MODE_DISABLE_KBD   # talking to the keyboard re-enables it
            self._safe_update_irq()
        elif cmd == CCMD_WRITE_MODE:
            self.mode = val
            self.kbd.translate = int(bool(val & MODE_KCC))
            self._update_irq_lines()           # the interrupt enables act at once
            self._safe_update_irq()            # and enabled ports may deliver data
        elif cmd == CCMD_WRITE_OBUF:
            self._queue(val, False)
        elif cmd == CCMD_WRITE_AUX_OBUF:
            self._queue(val, True)
        elif cmd == CCMD_WRITE_OUTPORT:
            self._outport_write(val)
        elif cmd == CCMD_WRITE_MOUSE:
            self.mouse.write(val)
            self.mode &= ~MODE_DISABLE_MOUSE
            self._safe_update_irq()
