"""The x86 I/O port space and interrupt wires.

``PortBus`` is a 64 KiB table of handlers: ``read(port, size) -> value`` and
``write(port, size, value)``, size 1, 2 or 4. A region registered with
``byte_only=True`` sees only single-byte accesses: wider ones are split into
consecutive byte accesses, low byte first, as QEMU's memory core does for devices whose
``impl`` size is 1 (the 8259, 8254, MC146818 ...). An unassigned port reads all ones
and ignores writes (QEMU's unassigned_io_ops).

``IrqLine`` is a wire from a device to an interrupt controller input.
"""

from __future__ import annotations

from collections.abc import Callable

PortRead = Callable[[int, int], int]
PortWrite = Callable[[int, int, int], None]

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class _Region:
    __slots__ = ("base", "count", "read", "write", "name", "byte_only")

    def __init__(self, base: int, count: int, read: PortRead | None,
                 write: PortWrite | None, name: str, byte_only: bool):
        self.base = base
        self.count = count
        self.read = read
        self.write = write
        self.name = name
        self.byte_only = byte_only


class PortBus:
    """Port I/O dispatch for IN/OUT instructions."""

    def __init__(self) -> None:
        self._table: list[_Region | None] = [None] * 0x10000
        self._regions: list[_Region] = []

    def register(self, base: int, count: int, read: PortRead | None,
                 write: PortWrite | None, name: str, *, byte_only: bool = False) -> None:
        """Claim ports [base, base+count) for a device. Overlaps are a wiring bug."""
        if count <= 0 or base < 0 or base + count > 0x10000:
            raise ValueError(f"bad port range {base:#x}+{count}")
        for port in range(base, base + count):
            other = self._table[port]
            if other is not None:
                raise ValueError(f"port {port:#x} of {name} already belongs to {other.name}")
        region = _Region(base, count, read, write, name, byte_only)
        for port in range(base, base + count):
            self._table[port] = region
        self._regions.append(region)

    def unregister(self, base: int, count: int) -> None:
        """Free ports [base, base+count) (used when a PCI BAR moves)."""
        for port in range(base, base + count):
            self._table[port] = None
        self._regions = [r for r in self._regions
                         if any(self._table[p] is r for p in range(r.base, r.base + r.count))]

    def read(self, port: int, size: int) -> int:
        """IN: the value the device returns; all ones for an unassigned port."""
        port &= 0xFFFF
        region = self._table[port]
        if region is None or region.read is None:
            if region is None and size > 1 and self._table[(port + size - 1) & 0xFFFF]:
                return self._read_split(port, size)
            return _ONES[size]
        if size > 1 and region.byte_only:
            return self._read_split(port, size)
        return region.read(port, size) & _ONES[size]

    def _read_split(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self.read((port + i) & 0xFFFF, 1) << (8 * i)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        """OUT: hand the value to the device; ignored for an unassigned port."""
        port &= 0xFFFF
        region = self._table[port]
        if region is None or region.write is None:
            if region is None and size > 1 and self._table[(port + size - 1) & 0xFFFF]:
                self._write_split(port, size, value)
            return
        if size > 1 and region.byte_only:
            self._write_split(port, size, value)
            return
        region.write(port, size, value & _ONES[size])

    def _write_split(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            self.write((port + i) & 0xFFFF, 1, (value >> (8 * i)) & 0xFF)

    def describe(self) -> list[tuple[int, int, str]]:
        """(base, count, name) of every region, by base port (for ``info mtree``)."""
        return sorted((r.base, r.count, r.name) for r in self._regions)


class IrqLine:
    """An interrupt wire: ``set(level)`` calls the receiver's handler with the level."""

    __slots__ = ("_handler", "level")

    def __init__(self, handler: Callable[[bool], None] | None = None):
        self._handler = handler
        self.level = False

    def connect(self, handler: Callable[[bool], None] | None) -> None:
        """Attach (or replace) the receiving end."""
        self._handler = handler

    def set(self, level: bool) -> None:
        """Drive the line to ``level``."""
        level = bool(level)
        self.level = level
        if self._handler is not None:
            self._handler(level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        """High then low (qemu_irq_pulse): one edge for an edge-triggered input."""
        self.set(True)
        self.set(False)
