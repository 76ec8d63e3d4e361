"""System control port A (0x92): fast A20 gate (bit 1) and fast reset (bit 0).

As QEMU's hw/i386/port92.c: a write stores the byte, drives the A20 line from bit 1 and
requests a system reset when bit 0 goes from 0 to 1; a read returns the stored byte;
system reset clears bit 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import PortBus


class Port92:
    """Port 0x92."""

    VMSTATE_FIELDS = ("outport",)

    def __init__(self, bus: PortBus, a20_changed: Callable[[bool], None] | None,
                 reset: Callable[[], None] | None):
        self._a20_changed = a20_changed
        self._reset = reset
        self.outport = 0
        bus.register(0x92, 1, self._read, self._write, "port92", byte_only=True)

    def _read(self, port: int, size: int) -> int:
        return self.outport

    def _write(self, port: int, size: int, value: int) -> None:
        old = self.outport
        self.outport = value & 0xFF
        if self._a20_changed is not None:
            self._a20_changed(bool(value & 2))
        if value & 1 and not old & 1 and self._reset is not None:
            self._reset()

    def reset(self) -> None:
        """System reset: the reset bit reads 0 again (A20 is left alone)."""
        self.outport &= ~1

    def get_state(self) -> dict[str, Any]:
        return {"version": 1, "outport": self.outport}

    def set_state(self, state: dict[str, Any]) -> None:
        self.outport = state["outport"]
