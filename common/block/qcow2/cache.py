"""Write-back caches of metadata tables (QEMU's block/qcow2-cache.c).

A cache maps a table's host offset to its in-memory form (an ``array`` in host
byte order, or a refcount block object). Dirty tables are written back on
flush or when evicted; the owner decides the order between caches (refcount
blocks before the L2 tables that reference new clusters) through
``before_write``, which runs before any dirty table of this cache is written.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

BIG_ENDIAN_HOST = sys.byteorder == "big"


def table_from_bytes(buf: bytes | bytearray | memoryview, typecode: str = "Q") -> array:
    """A big-endian table of unsigned integers as a native ``array``."""
    table = array(typecode)
    table.frombytes(buf)
    if not BIG_ENDIAN_HOST and table.itemsize > 1:
        table.byteswap()
    return table


def table_to_bytes(table: array) -> bytes:
    """The big-endian bytes of a native ``array``."""
    if BIG_ENDIAN_HOST or table.itemsize == 1:
        return table.tobytes()
    out = array(table.typecode, table)
    out.byteswap()
    return out.tobytes()


class TableCache(Generic[T]):
    """An LRU write-back cache of tables keyed by host offset."""

    def __init__(
        self,
        capacity: int,
        load: Callable[[int], T],
        store: Callable[[int, T], None],
    ) -> None:
        self.capacity = max(2, capacity)
        self._load = load
        self._store = store
        self.entries: OrderedDict[int, T] = OrderedDict()
        self.dirty: set[int] = set()
        #: called before writing any dirty entry (dependency flush)
        self.before_write: Callable[[], None] | None = None

    def get(self, offset: int) -> T:
        table = self.entries.get(offset)
        if table is not None:
            self.entries.move_to_end(offset)
            return table
        table = self._load(offset)
        self._insert(offset, table)
        return table

    def peek(self, offset: int) -> T | None:
        return self.entries.get(offset)

    def put_new(self, offset: int, table: T) -> None:
        """Add a table that is not on disk yet (marked dirty)."""
        self._insert(offset, table)
        self.dirty.add(offset)

    def _insert(self, offset: int, table: T) -> None:
        self.entries[offset] = table
        self.entries.move_to_end(offset)
        while len(self.entries) > self.capacity:
            self._evict_one()

    def _evict_one(self) -> None:
        for off in self.entries:
            if off not in self.dirty:
                del self.entries[off]
                return
        # everything is dirty: write the oldest back
        off = next(iter(self.entries))
        if self.before_write is not None:
            self.before_write()
        self._store(off, self.entries[off])
        self.dirty.discard(off)
        del self.entries[off]

    def mark_dirty(self, offset: int) -> None:
        self.dirty.add(offset)

    def write_dirty(self) -> bool:
        """Write every dirty table in offset order; True if anything was written."""
        if not self.dirty:
            return False
        if self.before_write is not None:
            self.before_write()
        for off in sorted(self.dirty):
            table = self.entries.get(off)
            if table is not None:
                self._store(off, table)
        self.dirty.clear()
        return True

    def discard(self, offset: int) -> None:
        """Forget a table (its cluster was freed); nothing is written."""
        self.entries.pop(offset, None)
        self.dirty.discard(offset)

    def clear(self) -> None:
        """Drop everything, dirty or not."""
        self.entries.clear()
        self.dirty.clear()
