"""Guest-to-host mapping: the L1 table and cached L2 tables (QEMU's qcow2-cluster.c).

The L1 table is kept whole in memory (host byte order) with a set of dirty
indices; L2 tables live in a write-back :class:`TableCache` as ``array('Q')``
(two words per entry with extended L2). :meth:`ClusterMap.map` turns a guest
range into runs of one kind (data, zero, unallocated, compressed), merged
while the host offsets stay contiguous.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cache import TableCache, table_from_bytes, table_to_bytes
from .layout import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
)

if TYPE_CHECKING:
    from ..driver import BlockDriver

# cluster / subcluster kinds (QEMU's QCow2SubclusterType)
UNALLOC = 0  # falls through to the backing file
ZERO_PLAIN = 1  # reads as zero, no host cluster
NORMAL = 2  # data at a host offset
COMPRESSED = 3  # compressed data (run.host holds the L2 entry)
ZERO_ALLOC = 4  # reads as zero, host cluster kept
UNALLOC_ALLOC = 5  # extended L2: host cluster exists, subcluster unallocated

HOST_KINDS = (NORMAL, ZERO_ALLOC, UNALLOC_ALLOC)

#: extended L2 bitmap: all subclusters allocated / all reading as zero
BITMAP_ALL_ALLOC = 0xFFFFFFFF
BITMAP_ALL_ZERO = 0xFFFFFFFF << 32

L1E_SIZE = 8


class Run:
    """A guest range of one kind; ``host`` is the host offset of its first byte
    (host kinds) or the L2 entry (COMPRESSED)."""

    __slots__ = ("start", "length", "kind", "host")

    def __init__(self, start: int, length: int, kind: int, host: int) -> None:
        self.start = start
        self.length = length
        self.kind = kind
        self.host = host

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Run({self.start:#x}, {self.length:#x}, kind={self.kind}, host={self.host:#x})"


def entry_kind(entry: int) -> int:
    """The kind of a standard (non-extended) L2 entry."""
    if entry & OFLAG_COMPRESSED:
        return COMPRESSED
    if entry & OFLAG_ZERO:
        return ZERO_ALLOC if entry & L2E_OFFSET_MASK else ZERO_PLAIN
    if not entry & L2E_OFFSET_MASK:
        return UNALLOC
    return NORMAL


class ClusterMap:
    """The L1 table and the L2 table cache of one image."""

    def __init__(
        self,
        file: BlockDriver,
        cluster_bits: int,
        extended: bool,
        corrupt: Callable[[str], None],
        cache_tables: int,
    ) -> None:
        self.file = file
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.extended = extended
        #: words per L2 entry (2 with extended L2)
        self.words = 2 if extended else 1
        self.l2_bits = cluster_bits - 3 - (1 if extended else 0)
        self.l2_entries = 1 << self.l2_bits
        #: guest bytes one L2 table maps
        self.l1_shift = cluster_bits + self.l2_bits
        self.subcluster_bits = cluster_bits - 5 if extended else cluster_bits
        self.subcluster_size = 1 << self.subcluster_bits
        self.corrupt = corrupt
        self.l1 = array("Q")
        self.l1_offset = 0
        self.l1_dirty: set[int] = set()
        self.cache: TableCache[array] = TableCache(cache_tables, self._load, self._store)

    # --- L1 -------------------------------------------------------------------

    def load_l1(self, offset: int, size: int) -> None:
        self.l1_offset = offset
        self.l1 = table_from_bytes(self.file.read(offset, size * L1E_SIZE)) if size else array("Q")
        self.l1_dirty.clear()

    def write_l1(self) -> bool:
        """Write the dirty L1 entries (as contiguous ranges); True if any."""
        if not self.l1_dirty:
            return False
        indices = sorted(self.l1_dirty)
        start = prev = indices[0]
        for i in indices[1:] + [-2]:
            if i != prev + 1:
                chunk = table_to_bytes(self.l1[start : prev + 1])
                self.file.debug_event("l1_update")
                self.file.write(self.l1_offset + start * L1E_SIZE, chunk)
                start = i
            prev = i
        self.l1_dirty.clear()
        return True

    def l2_offset(self, l1_index: int) -> int:
        """Host offset of L2 table ``l1_index`` (0 if none), validated."""
        if l1_index >= len(self.l1):
            return 0
        offset = self.l1[l1_index] & L1E_OFFSET_MASK
        if offset & (self.cluster_size - 1):
            self.corrupt("L2 table offset %#x unaligned (L1 index: %#x)" % (offset, l1_index))
        return offset

    # --- L2 -------------------------------------------------------------------

    def _load(self, offset: int) -> array:
        self.file.debug_event("l2_load")
        return table_from_bytes(self.file.read(offset, self.cluster_size))

    def _store(self, offset: int, table: array) -> None:
        self.file.debug_event("l2_update")
        self.file.write(offset, table_to_bytes(table))

    def table(self, l1_index: int) -> array | None:
        offset = self.l2_offset(l1_index)
        if not offset:
            return None
        return self.cache.get(offset)

    # --- mapping --------------------------------------------------------------

    def _host(self, entry: int, l2_offset: int, index: int) -> int:
        host = entry & L2E_OFFSET_MASK
        if host & (self.cluster_size - 1):
            self.corrupt(
                "Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)"
                % (host, l2_offset, index)
            )
        return host

    def map(self, offset: int, length: int, first: bool = False) -> list[Run]:
        """Runs covering [offset, offset+length), all within one L2 table; with
        ``first``, only the first run (as long as it goes)."""
        cs = self.cluster_size
        table_end = ((offset >> self.l1_shift) + 1) << self.l1_shift
        end = min(offset + length, table_end)
        l1_index = offset >> self.l1_shift
        table = self.table(l1_index)
        if table is None:
            return [Run(offset, end - offset, UNALLOC, 0)]
        l2_offset = self.l1[l1_index] & L1E_OFFSET_MASK
        runs: list[Run] = []
        pos = offset
        mask = self.l2_entries - 1
        cb = self.cluster_bits
        if not self.extended:
            last_index = ((end - 1) >> cb) & mask
            while pos < end:
                if first and len(runs) > 1:
                    break
                index = (pos >> cb) & mask
                cstart = pos & ~(cs - 1)
                entry = table[index]
                kind = entry_kind(entry)
                if kind == COMPRESSED:
                    cend = min(cstart + cs, end)
                    runs.append(Run(pos, cend - pos, COMPRESSED, entry))
                    pos = cend
                    continue
                host = 0
                step = 0
                if kind == NORMAL or kind == ZERO_ALLOC:
                    host = self._host(entry, l2_offset, index) + (pos - cstart)
                    step = cs
                # the following entries that continue this one exactly (same
                # flags, next host cluster), found in C: one run, one append
                count = same_entries(table, index, last_index - index + 1, entry, step)
                cend = min(cstart + (count << cb), end)
                _append(runs, pos, cend - pos, kind, host)
                pos = cend
            return runs[:1] if first else runs
        while pos < end:
            if first and len(runs) > 1:
                break
            index = (pos >> cb) & mask
            cstart = pos & ~(cs - 1)
            cend = min(cstart + cs, end)
            entry = table[index * 2]
            bitmap = table[index * 2 + 1]
            pos = self._map_extended(runs, pos, cstart, cend, entry, bitmap, l2_offset, index)
        return runs[:1] if first else runs

    def _map_extended(
        self,
        runs: list[Run],
        pos: int,
        cstart: int,
        cend: int,
        entry: int,
        bitmap: int,
        l2_offset: int,
        index: int,
    ) -> int:
        if entry & OFLAG_COMPRESSED:
            if bitmap:
                self.corrupt(
                    "Invalid cluster entry found (L2 offset: %#x, L2 index: %#x)"
                    % (l2_offset, index)
                )
            runs.append(Run(pos, cend - pos, COMPRESSED, entry))
            return cend
        alloc = bitmap & BITMAP_ALL_ALLOC
        zero = bitmap >> 32
        if alloc & zero:
            self.corrupt(
                "Invalid cluster entry found (L2 offset: %#x, L2 index: %#x)" % (l2_offset, index)
            )
        host = entry & L2E_OFFSET_MASK
        if host:
            host = self._host(entry, l2_offset, index)
        elif alloc:
            self.corrupt(
                "Invalid cluster entry found (L2 offset: %#x, L2 index: %#x)" % (l2_offset, index)
            )
        sb = self.subcluster_bits
        ss = self.subcluster_size
        while pos < cend:
            sc = (pos - cstart) >> sb
            send = min(cstart + ((sc + 1) << sb), cend)
            bit = 1 << sc
            if alloc & bit:
                kind = NORMAL
            elif zero & bit:
                kind = ZERO_ALLOC if host else ZERO_PLAIN
            else:
                kind = UNALLOC_ALLOC if host else UNALLOC
            # extend over following subclusters of the same kind
            while send < cend:
                nbit = bit << 1
                same = (
                    (kind == NORMAL and alloc & nbit)
                    or (kind in (ZERO_ALLOC, ZERO_PLAIN) and zero & nbit)
                    or (kind in (UNALLOC, UNALLOC_ALLOC) and not (alloc | zero) & nbit)
                )
                if not same:
                    break
                bit = nbit
                send = min(send + ss, cend)
            h = host + (pos - cstart) if kind in HOST_KINDS else 0
            _append(runs, pos, send - pos, kind, h)
            pos = send
        return cend


def same_entries(table: array, index: int, count: int, entry: int, step: int) -> int:
    """How many of the ``count`` entries from ``table[index]`` (that one
    included, so at least 1) equal ``entry + k * step`` in order.

    Galloping slice comparisons, each done in C: the cost follows the length
    of the run found, not ``count``. The first mismatch in the last window is
    the lowest differing bit of the two windows read as little-endian integers.
    """
    done = 1
    while done < count:
        # a short window is checked whole at once; longer ones gallop, so a
        # run costs in proportion to its own length, not to ``count``
        probe = count if count <= 64 else min(max(done << 1, 32), count)
        if step:
            start = entry + done * step
            want = array("Q", range(start, start + (probe - done) * step, step))
        else:
            want = array("Q", (entry,)) * (probe - done)
        got = table[index + done : index + probe]
        if got != want:
            diff = int.from_bytes(got.tobytes(), "little")
            diff ^= int.from_bytes(want.tobytes(), "little")
            return done + ((diff & -diff).bit_length() - 1) // 64
        done = probe
    return done


def _append(runs: list[Run], start: int, length: int, kind: int, host: int) -> None:
    if runs:
        last = runs[-1]
        if (
            last.kind == kind
            and kind != COMPRESSED
            and last.start + last.length == start
            and (kind not in HOST_KINDS or last.host + last.length == host)
        ):
            last.length += length
            return
    runs.append(Run(start, length, kind, host))


def make_l2_entry(host: int) -> int:
    """A standard L2 entry for a data cluster we own alone."""
    return host | OFLAG_COPIED
