"""Reference counts: lookup, updates and cluster allocation (QEMU's qcow2-refcount.c).

The refcount table lives in memory (host byte order); refcount blocks sit in a
write-back :class:`TableCache`. New refcount blocks describe themselves, and a
growing refcount table is built in a fresh area at the end of the image and
switched in with one header write, as QEMU does, so that a crash leaves at
worst leaked clusters.

Ordering rules kept here: a new refcount block is written before the table
entry that points to it; the caller writes refcount blocks before L2/L1
entries that reference newly allocated clusters.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import BlockError, ImageCorrupt
from .cache import TableCache, table_from_bytes, table_to_bytes
from .layout import REFT_OFFSET_MASK, get_refcount, set_refcount

if TYPE_CHECKING:
    from ..driver import BlockDriver

REFTABLE_ENTRY_SIZE = 8
QCOW_MAX_REFTABLE_SIZE = 0x800000  # bytes (block/qcow2.h: S_8MiB)

#: header offset of refcount_table_offset and refcount_table_clusters
REFTABLE_HEADER_OFFSET = 48

_TYPECODES = {3: "B", 4: "H", 5: "I", 6: "Q"}


class Again(Exception):
    """Metadata was allocated where the caller meant to put data: search again."""


class RefBlock:
    """One refcount block: entries of 2^order bits, big-endian on disk."""

    __slots__ = ("order", "arr", "raw")

    def __init__(self, order: int, data: bytes | bytearray) -> None:
        self.order = order
        if order >= 3:
            self.arr: array | None = table_from_bytes(data, _TYPECODES[order])
            self.raw: bytearray | None = None
        else:
            self.arr = None
            self.raw = bytearray(data)

    def get(self, i: int) -> int:
        if self.arr is not None:
            return self.arr[i]
        assert self.raw is not None
        return get_refcount(self.raw, i, self.order)

    def set(self, i: int, value: int) -> None:
        if self.arr is not None:
            self.arr[i] = value
        else:
            assert self.raw is not None
            set_refcount(self.raw, i, self.order, value)

    def last_used(self, start: int, end: int) -> int:
        """Index of the last nonzero entry in [start, end), or -1."""
        if self.arr is not None:
            # in C: the bytes up to the last nonzero one
            used = len(self.arr[start:end].tobytes().rstrip(b"\0"))
            return start + (used - 1) // self.arr.itemsize if used else -1
        for i in range(end - 1, start - 1, -1):
            if self.get(i):
                return i
        return -1

    def first_free(self, start: int, end: int) -> int:
        """Index of the first zero entry in [start, end), or -1."""
        if self.arr is not None:
            try:
                return self.arr.index(0, start, end)
            except ValueError:
                return -1
        for i in range(start, end):
            if not self.get(i):
                return i
        return -1

    def all_zero(self, start: int, end: int) -> bool:
        if self.arr is not None:
            return not any(self.arr[start:end])
        return self.last_used(start, end) < 0

    def fill(self, start: int, end: int, value: int) -> None:
        if self.arr is not None:
            self.arr[start:end] = array(self.arr.typecode, [value]) * (end - start)
        else:
            for i in range(start, end):
                self.set(i, value)

    def to_bytes(self) -> bytes:
        if self.arr is not None:
            return table_to_bytes(self.arr)
        assert self.raw is not None
        return bytes(self.raw)


def refcount_metadata_size(
    clusters: int, cluster_size: int, refcount_order: int, generous_increase: bool
) -> tuple[int, int]:
    """(bytes of refcount metadata, refcount blocks) to cover ``clusters`` and itself."""
    blocks_per_table_cluster = cluster_size // REFTABLE_ENTRY_SIZE
    refcounts_per_block = cluster_size * 8 // (1 << refcount_order)
    table = blocks = n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // refcounts_per_block)
        table = -(-blocks // blocks_per_table_cluster)
        n = clusters + blocks + table
        if n == last and generous_increase:
            clusters += -(-table // 2)
            n = 0
            generous_increase = False
            continue
        if n == last:
            break
    return (blocks + table) * cluster_size, blocks


class Refcounts:
    """Refcount table + cached refcount blocks of one image."""

    def __init__(
        self,
        file: BlockDriver,
        cluster_bits: int,
        refcount_order: int,
        corrupt: Callable[[str], None],
        cache_blocks: int = 64,
    ) -> None:
        self.file = file
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = refcount_order
        self.max = (1 << (1 << refcount_order)) - 1
        #: log2 of entries per refcount block
        self.block_bits = cluster_bits + 3 - refcount_order
        self.block_size = 1 << self.block_bits
        self.corrupt = corrupt
        self.table = array("Q")
        self.table_offset = 0
        self.max_table_index = 0
        #: bumped whenever the refcount table changes (overlap check caches)
        self.version = 0
        self.free_cluster_index = 0
        self.free_byte_offset = 0
        self.cache: TableCache[RefBlock] = TableCache(
            cache_blocks, self._load_block, self._store_block
        )
        #: the write barrier (fdatasync of the image file; a no-op with cache=unsafe)
        self.sync: Callable[[], None] = file.flush
        #: called before metadata that the refcount table depends on is changed
        self.flush_l2: Callable[[], None] = lambda: None
        #: called before any refcount is increased: the owner writes out L2 tables
        #: whose dropped references wait in the cache (QEMU's cache dependency)
        self.before_increase: Callable[[], None] = lambda: None

    # --- table ------------------------------------------------------------

    @property
    def table_size(self) -> int:
        return len(self.table)

    def load_table(self, offset: int, clusters: int) -> None:
        size = clusters * self.cluster_size // REFTABLE_ENTRY_SIZE
        self.table_offset = offset
        self.table = table_from_bytes(self.file.read(offset, size * REFTABLE_ENTRY_SIZE))
        self.version += 1
        self._update_max_index()
        self.cache.clear()
        self.free_cluster_index = 0
        self.free_byte_offset = 0

    def _update_max_index(self) -> None:
        # the last nonzero entry, found in C (a Python loop over a mostly empty
        # table costs a millisecond per open)
        used = len(self.table.tobytes().rstrip(b"\0"))
        self.max_table_index = (used - 1) // REFTABLE_ENTRY_SIZE if used else 0

    def block_offsets(self) -> set[int]:
        return {e & REFT_OFFSET_MASK for e in self.table if e & REFT_OFFSET_MASK}

    # --- blocks -----------------------------------------------------------

    def _load_block(self, offset: int) -> RefBlock:
        self.file.debug_event("refblock_load")
        return RefBlock(self.order, self.file.read(offset, self.cluster_size))

    def _store_block(self, offset: int, block: RefBlock) -> None:
        self.file.debug_event("refblock_update_part")
        self.file.write(offset, block.to_bytes())

    def _block_offset(self, table_index: int) -> int:
        """Host offset of refcount block ``table_index`` (0 if none)."""
        if table_index >= len(self.table):
            return 0
        offset = self.table[table_index] & REFT_OFFSET_MASK
        if offset:
            self._check_block_offset(offset, table_index)
        return offset

    def _check_block_offset(self, offset: int, table_index: int) -> None:
        """A refcount block must be cluster aligned and inside the image file (refcount
        blocks are written before the table entry that points to them)."""
        if offset & (self.cluster_size - 1):
            self.corrupt(
                "Refblock offset %#x unaligned (reftable index: %#x)" % (offset, table_index)
            )
        if offset >= self.file.size:
            self.corrupt(
                "Refblock offset %#x beyond the end of the image file (reftable index: %#x)"
                % (offset, table_index)
            )

    def _get_block(self, table_index: int) -> RefBlock | None:
        offset = self._block_offset(table_index)
        if not offset:
            return None
        return self.cache.get(offset)

    def get(self, cluster_index: int) -> int:
        """The refcount of host cluster ``cluster_index``."""
        block = self._get_block(cluster_index >> self.block_bits)
        if block is None:
            return 0
        return block.get(cluster_index & (self.block_size - 1))

    def write_blocks(self, sync: bool = False) -> bool:
        """Write dirty refcount blocks; with ``sync`` also fdatasync."""
        wrote = self.cache.write_dirty()
        if wrote and sync:
            self.sync()
        return wrote

    # --- allocation ---------------------------------------------------------

    def alloc_clusters_noref(self, nb_clusters: int) -> int:
        """First fit for ``nb_clusters`` free clusters from the free index (no refcount taken)."""
        idx = self.free_cluster_index
        while True:
            start = idx
            end = idx + nb_clusters
            last = self._last_used(start, end)
            if last < 0:
                self.free_cluster_index = end
                return start << self.cluster_bits
            idx = self._next_free(last + 1)

    def _next_free(self, idx: int) -> int:
        """The first cluster index from ``idx`` on with a zero refcount."""
        while True:
            ti = idx >> self.block_bits
            block = self._get_block(ti)
            if block is None:
                return idx
            base = ti << self.block_bits
            i = block.first_free(idx - base, self.block_size)
            if i >= 0:
                return base + i
            idx = base + self.block_size

    def _last_used(self, start: int, end: int) -> int:
        """The last cluster index in [start, end) with a nonzero refcount, or -1."""
        pos = end
        while pos > start:
            ti = (pos - 1) >> self.block_bits
            block_start = max(start, ti << self.block_bits)
            block = self._get_block(ti)
            if block is not None:
                base = ti << self.block_bits
                i = block.last_used(block_start - base, pos - base)
                if i >= 0:
                    return base + i
            pos = block_start
        return -1

    def alloc_clusters(self, size: int) -> int:
        """Allocate contiguous clusters for ``size`` bytes, taking a reference."""
        nb = -(-size // self.cluster_size)
        self.file.debug_event("cluster_alloc")
        while True:
            offset = self.alloc_clusters_noref(nb)
            try:
                self.update(offset, nb << self.cluster_bits, 1)
            except Again:
                continue
            return offset

    def alloc_bytes(self, size: int) -> int:
        """Allocate ``size`` bytes for compressed data, packing clusters (qcow2_alloc_bytes)."""
        cs = self.cluster_size
        offset = self.free_byte_offset
        if offset and self.get(offset >> self.cluster_bits) >= self.max:
            offset = 0
        free_in_cluster = cs - (offset & (cs - 1)) if offset else cs
        while True:
            if not offset or free_in_cluster < size:
                new_cluster = self.alloc_clusters_noref(max(1, -(-size // cs)))
                if not offset or ((offset + cs - 1) & ~(cs - 1)) != new_cluster:
                    offset = new_cluster
                    free_in_cluster = cs
                else:
                    free_in_cluster += cs
            try:
                self.update(offset, size, 1)
            except Again:
                continue
            break
        self.free_byte_offset = offset + size
        if not self.free_byte_offset & (cs - 1):
            self.free_byte_offset = 0
        return offset

    def free(self, offset: int, size: int) -> None:
        """Drop one reference from every cluster overlapping [offset, offset+size)."""
        try:
            self.update(offset, size, -1)
        except (BlockError, Again) as exc:
            sys.stderr.write(f"qcow2_free_clusters failed: {exc}\n")

    # --- updates ------------------------------------------------------------

    def update(self, offset: int, length: int, addend: int) -> None:
        """Add ``addend`` to the refcount of every cluster overlapping the range."""
        if length <= 0:
            return
        if addend > 0:
            self.before_increase()
        first = offset >> self.cluster_bits
        last = (offset + length - 1) >> self.cluster_bits
        done: list[tuple[int, int]] = []
        try:
            ci = first
            while ci <= last:
                ti = ci >> self.block_bits
                base = ti << self.block_bits
                end = min(last + 1, base + self.block_size)
                block_offset = self._block_offset(ti)
                if not block_offset:
                    if addend < 0:
                        raise BlockError("Invalid argument")
                    block_offset = self._alloc_block(ci)
                block = self.cache.get(block_offset)
                self._apply(block, ci - base, end - base, addend)
                self.cache.mark_dirty(block_offset)
                done.append((ci, end))
                if addend < 0 and ci < self.free_cluster_index:
                    self._lower_free_index(block, base, ci, end)
                ci = end
        except BaseException:
            for s, e in reversed(done):
                ti = s >> self.block_bits
                block = self.cache.get(self._block_offset(ti))
                base = ti << self.block_bits
                self._apply(block, s - base, e - base, -addend)
                if -addend < 0:
                    self._lower_free_index(block, base, s, e)
            raise

    def _lower_free_index(self, block: RefBlock, base: int, start: int, end: int) -> None:
        for ci in range(start, min(end, self.free_cluster_index)):
            if block.get(ci - base) == 0:
                self.free_cluster_index = ci
                return

    def _apply(self, block: RefBlock, start: int, end: int, addend: int) -> None:
        if addend == 1 and block.all_zero(start, end):
            block.fill(start, end, 1)
            return
        for i in range(start, end):
            value = block.get(i) + addend
            if value < 0:
                raise BlockError("Invalid argument")
            if value > self.max:
                raise BlockError("Numerical result out of range")
        for i in range(start, end):
            block.set(i, block.get(i) + addend)

    def _alloc_block(self, cluster_index: int) -> int:
        """Allocate the refcount block covering ``cluster_index``; always raises Again."""
        table_index = cluster_index >> self.block_bits
        # we write to the refcount table, which may depend on L2 tables
        self.flush_l2()
        new_block = self.alloc_clusters_noref(1)
        new_index = new_block >> self.cluster_bits
        if new_index >> self.block_bits == table_index:
            block = RefBlock(self.order, bytes(self.cluster_size))
            block.set(new_index & (self.block_size - 1), 1)
            self.cache.put_new(new_block, block)
        else:
            self.update(new_block, self.cluster_size, 1)
            self.write_blocks(sync=True)
            self.cache.put_new(new_block, RefBlock(self.order, bytes(self.cluster_size)))
        self.write_blocks(sync=True)
        if table_index < len(self.table):
            self.file.write(
                self.table_offset + table_index * REFTABLE_ENTRY_SIZE, struct.pack(">Q", new_block)
            )
            self.sync()
            self.table[table_index] = new_block
            self.version += 1
            self.max_table_index = max(self.max_table_index, table_index)
            raise Again
        blocks_used = -(-max(cluster_index + 1, new_index + 1) // self.block_size)
        meta_offset = blocks_used * self.block_size * self.cluster_size
        self.refcount_area(meta_offset, 0, False, table_index, new_block)
        raise Again

    def refcount_area(
        self,
        start_offset: int,
        additional_clusters: int,
        exact_size: bool,
        new_refblock_index: int,
        new_refblock_offset: int,
    ) -> int:
        """Build a new refcount table and the blocks it needs at ``start_offset``
        (empty space) and switch to it (qcow2_refcount_area). Returns the end offset."""
        cs = self.cluster_size
        _, total_blocks = refcount_metadata_size(
            start_offset // cs + additional_clusters, cs, self.order, not exact_size
        )
        if total_blocks > QCOW_MAX_REFTABLE_SIZE:
            raise BlockError("File too large")
        area_index = (start_offset // cs) // self.block_size
        table_size = total_blocks if exact_size else total_blocks + -(-total_blocks // 2)
        per_cluster = cs // REFTABLE_ENTRY_SIZE
        table_size = -(-table_size // per_cluster) * per_cluster
        table_clusters = table_size * REFTABLE_ENTRY_SIZE // cs
        if table_size > QCOW_MAX_REFTABLE_SIZE:
            raise BlockError("File too large")
        new_table = array("Q", bytes(8 * table_size))
        keep = min(table_size, self.max_table_index + 1, len(self.table))
        new_table[:keep] = self.table[:keep]
        if new_refblock_offset:
            new_table[new_refblock_index] = new_refblock_offset
        additional = sum(1 for i in range(area_index, total_blocks) if not new_table[i])
        table_offset = start_offset + additional * cs
        end_offset = table_offset + table_clusters * cs
        block_offset = start_offset
        for i in range(area_index, total_blocks):
            if new_table[i]:
                off = new_table[i] & REFT_OFFSET_MASK
                if i != new_refblock_index or not new_refblock_offset:
                    self._check_block_offset(off, i)
                block = self.cache.get(off)
            else:
                off = block_offset
                block = RefBlock(self.order, bytes(cs))
                self.cache.put_new(off, block)
                new_table[i] = off
                block_offset += cs
            first_covered = i * self.block_size * cs
            if first_covered < end_offset:
                j = (start_offset - first_covered) // cs if first_covered < start_offset else 0
                end_index = min((end_offset - first_covered) // cs, self.block_size)
                for k in range(j, end_index):
                    block.set(k, 1)
                self.cache.mark_dirty(off)
        self.write_blocks(sync=True)
        self.file.write(table_offset, table_to_bytes(new_table))
        self.sync()
        self.file.write(REFTABLE_HEADER_OFFSET, struct.pack(">QI", table_offset, table_clusters))
        self.sync()
        old_offset, old_size = self.table_offset, len(self.table)
        self.table = new_table
        self.table_offset = table_offset
        self.version += 1
        self._update_max_index()
        self.on_table_moved(table_offset, table_clusters)
        self.free(old_offset, old_size * REFTABLE_ENTRY_SIZE)
        return end_offset

    def shrink_table(self) -> None:
        """Drop refcount blocks that count nothing but themselves (qcow2_shrink_reftable)."""
        new_table = array("Q", self.table)
        for i in range(len(self.table)):
            offset = self._block_offset(i)
            if not offset:
                continue
            block = self.cache.get(offset)
            own = offset >> self.cluster_bits
            if own >> self.block_bits == i:
                j = own & (self.block_size - 1)
                unused = block.all_zero(0, j) and block.all_zero(j + 1, self.block_size)
            else:
                unused = block.all_zero(0, self.block_size)
            if unused:
                new_table[i] = 0
        if new_table == self.table:
            return
        self.write_blocks(sync=True)
        self.file.write(self.table_offset, table_to_bytes(new_table))
        self.sync()
        old = self.table
        self.table = new_table
        self.version += 1
        self._update_max_index()
        for i, entry in enumerate(old):
            offset = entry & REFT_OFFSET_MASK
            if offset and not new_table[i]:
                self.cache.discard(offset)
                own = offset >> self.cluster_bits
                if own >> self.block_bits != i:
                    self.free(offset, self.cluster_size)
                elif own < self.free_cluster_index:
                    self.free_cluster_index = own
                self.file.discard(offset, self.cluster_size)

    def on_table_moved(self, offset: int, clusters: int) -> None:
        """Hook: the driver keeps its header in sync."""

    def check_free(self, cluster_index: int) -> None:  # pragma: no cover - debugging aid
        if self.get(cluster_index):
            raise ImageCorrupt(f"cluster {cluster_index} is in use")
