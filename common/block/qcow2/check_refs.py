"""Helpers of the qcow2 checker: on-disk refcounts, the in-memory refcount table,
snapshot and bitmap directory reading (QEMU's block/qcow2-refcount.c,
qcow2-snapshot.c and qcow2-bitmap.c, the parts ``qemu-img check`` uses).

Everything works on the protocol node's bytes; :mod:`.check` drives it.
"""

from __future__ import annotations

import struct

from ... import records as dataclasses
from ..driver import BlockDriver
from ..errors import ImageCorrupt
from . import layout

REFTABLE_ENTRY = struct.Struct(">Q")
#: QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA
MAX_SNAPSHOT_EXTRA_DATA = 1024
#: the bytes of snapshot extra data every v3 entry must have (vm_state_size_large, disk_size)
V3_SNAPSHOT_EXTRA_MIN = 16

# --- bitmaps extension (spec section "Bitmaps extension") --------------------
BITMAPS_EXT = struct.Struct(">IIQQ")  # nb_bitmaps, reserved, directory size, offset
BITMAP_DIR_ENTRY = struct.Struct(">QIIBBHI")
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1
#: QEMU's BME_MAX_TABLE_SIZE and BME_MAX_DIRECTORY_SIZE... directory cap
BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_DIRECTORY_SIZE = 64 * 1024 * 1024

# --- crypto header extension ---------------------------------------------------
CRYPTO_EXT = struct.Struct(">QQ")  # offset, length


class RefblockUnaligned(Exception):
    """qcow2_get_refcount's -EIO for a refblock offset not on a cluster boundary."""


def size_to_clusters(size: int, cluster_bits: int) -> int:
    return (size + (1 << cluster_bits) - 1) >> cluster_bits


def decode_refblock(block: bytes, order: int, count: int) -> list[int]:
    """All ``count`` refcounts of a refcount block."""
    if order == 3:
        return list(block[:count])
    if order > 3:
        fmt = {4: "H", 5: "I", 6: "Q"}[order]
        return list(struct.unpack(">%d%s" % (count, fmt), block[: count << (order - 3)]))
    return [layout.get_refcount(block, i, order) for i in range(count)]


def encode_refblock(values: list[int], order: int, cluster_size: int) -> bytes:
    """The on-disk bytes of a refcount block holding ``values``."""
    if order == 3:
        return bytes(values).ljust(cluster_size, b"\0")
    if order > 3:
        fmt = {4: "H", 5: "I", 6: "Q"}[order]
        return struct.pack(">%d%s" % (len(values), fmt), *values).ljust(cluster_size, b"\0")
    out = bytearray(cluster_size)
    for i, value in enumerate(values):
        if value:
            layout.set_refcount(out, i, order, value)
    return bytes(out)


def read_table(file: BlockDriver, offset: int, entries: int) -> list[int]:
    """Up to ``entries`` big-endian u64 at ``offset``.

    Entries past the end of the file read as 0 and are left off the list, so
    an absurd size cannot make us allocate more than the file holds.
    """
    end = file.size
    if entries <= 0 or offset >= end:
        return []
    inside = min(entries, (end - offset + 7) // 8)
    if inside <= 0:
        return []
    return list(struct.unpack(">%dQ" % inside, file.read(offset, inside * 8)))


class OnDiskRefcounts:
    """The image's refcount table and blocks, read (and written) lazily.

    Mirrors qcow2_get_refcount: clusters past the table or in an unallocated
    refblock have refcount 0, an unaligned refblock is an I/O error.
    """

    def __init__(self, file: BlockDriver, header: layout.Header) -> None:
        self.file = file
        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.order = header.refcount_order
        self.block_bits = header.cluster_bits + 3 - header.refcount_order
        self.block_size = 1 << self.block_bits
        self.table_offset = header.refcount_table_offset
        self.table_size = header.refcount_table_clusters << (header.cluster_bits - 3)
        self.table = read_table(file, self.table_offset, self.table_size)
        self._blocks: dict[int, list[int]] = {}
        self._dirty: set[int] = set()

    def block_offset(self, index: int) -> int:
        if index >= len(self.table):
            return 0
        return self.table[index] & layout.REFT_OFFSET_MASK

    def load(self, offset: int) -> list[int]:
        block = self._blocks.get(offset)
        if block is None:
            raw = self.file.read(offset, self.cluster_size)
            block = decode_refblock(raw, self.order, self.block_size)
            self._blocks[offset] = block
        return block

    def get(self, cluster: int) -> int:
        index = cluster >> self.block_bits
        if index >= self.table_size:
            return 0
        offset = self.block_offset(index)
        if not offset:
            return 0
        if offset & (self.cluster_size - 1):
            raise RefblockUnaligned(offset, index)
        return self.load(offset)[cluster & (self.block_size - 1)]

    def set(self, cluster: int, value: int) -> None:
        """Set an existing refblock's entry (the caller knows it is allocated)."""
        offset = self.block_offset(cluster >> self.block_bits)
        self.load(offset)[cluster & (self.block_size - 1)] = value
        self._dirty.add(offset)

    def write_dirty(self) -> None:
        for offset in sorted(self._dirty):
            data = encode_refblock(self._blocks[offset], self.order, self.cluster_size)
            self.file.write(offset, data)
        if self._dirty:
            self.file.flush()
        self._dirty.clear()

    def replace_table(self, offset: int, table: list[int]) -> None:
        """After a rebuild: the new table, and no cached blocks."""
        self.table_offset = offset
        self.table = list(table)
        self.table_size = len(table)
        self._blocks.clear()
        self._dirty.clear()


@dataclasses.dataclass
class SnapshotInfo:
    """What the checker needs of one snapshot table entry."""

    id_str: str
    name: str
    l1_table_offset: int
    l1_size: int
    extra_data_size: int


def read_snapshots(file: BlockDriver, offset: int, count: int) -> tuple[list[SnapshotInfo], int]:
    """The snapshot table's entries and its byte size, as qcow2_do_read_snapshots.

    Raises ImageCorrupt with QEMU's reason when the table cannot be read.
    """
    snapshots: list[SnapshotInfo] = []
    pos = offset
    head_size = layout.SNAPSHOT_HEADER.size
    for i in range(count):
        pos = (pos + 7) & ~7
        head = file.read(pos, head_size)
        if pos + head_size > file.size:
            raise ImageCorrupt("Failed to read snapshot table")
        fields = dict(
            zip(layout.SNAPSHOT_HEADER_FIELDS, layout.SNAPSHOT_HEADER.unpack(head), strict=True)
        )
        extra = fields["extra_data_size"]
        if extra > MAX_SNAPSHOT_EXTRA_DATA:
            raise ImageCorrupt(f"Too much extra metadata in snapshot table entry {i}")
        id_len = fields["id_str_size"]
        body_len = extra + id_len + fields["name_size"]
        if pos + head_size + body_len > file.size:
            raise ImageCorrupt("Failed to read snapshot table")
        body = file.read(pos + head_size, body_len)
        snapshots.append(
            SnapshotInfo(
                body[extra : extra + id_len].decode("utf-8", "replace"),
                body[extra + id_len :].decode("utf-8", "replace"),
                fields["l1_table_offset"],
                fields["l1_size"],
                extra,
            )
        )
        pos += head_size + body_len
    return snapshots, pos - offset


@dataclasses.dataclass
class BitmapInfo:
    table_offset: int
    table_size: int


def parse_bitmap_directory(data: bytes, count: int) -> list[BitmapInfo]:
    """The bitmap directory's entries; raises ImageCorrupt if it is malformed."""
    bitmaps: list[BitmapInfo] = []
    pos = 0
    for _ in range(count):
        if pos + BITMAP_DIR_ENTRY.size > len(data):
            raise ImageCorrupt("Failed to read bitmap directory")
        table_offset, table_size, _flags, _type, _gran, name_size, extra = (
            BITMAP_DIR_ENTRY.unpack_from(data, pos)
        )
        entry_len = (BITMAP_DIR_ENTRY.size + extra + name_size + 7) & ~7
        if pos + entry_len > len(data):
            raise ImageCorrupt("Failed to read bitmap directory")
        bitmaps.append(BitmapInfo(table_offset, table_size))
        pos += entry_len
    return bitmaps


def bitmap_table_entry_ok(entry: int, cluster_size: int) -> bool:
    """QEMU's check_table_entry."""
    offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
    if entry & BME_TABLE_ENTRY_RESERVED_MASK:
        return False
    if offset & (cluster_size - 1):
        return False
    return not (offset and entry & BME_TABLE_ENTRY_FLAG_ALL_ONES)
