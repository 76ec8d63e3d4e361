"""ISA debug console (QEMU's isa-debugcon): bytes written to one port go to a chardev.

Every byte written to the port is passed to ``chardev.write``; a read returns the
readback byte (0xE9, Bochs' "port E9 hack" signature). SeaBIOS prints its log on port
0x402; QEMU's ``-debugcon`` uses 0xE9.
"""

from __future__ import annotations

from typing import Protocol

from ..bus import PortBus


class ByteSink(Protocol):
    def write(self, data: bytes) -> None: ...


class DebugCon:
    """One debug console port."""

    def __init__(self, bus: PortBus, chardev: ByteSink | None, iobase: int = 0x402,
                 readback: int = 0xE9):
        self.chardev = chardev
        self.iobase = iobase
        self.readback = readback & 0xFF
        bus.register(iobase, 1, self._read, self._write, "isa-debugcon", byte_only=True)

    def _read(self, port: int, size: int) -> int:
        return self.readback

    def _write(self, port: int, size: int, value: int) -> None:
        if self.chardev is not None:
            self.chardev.write(bytes((value & 0xFF,)))
