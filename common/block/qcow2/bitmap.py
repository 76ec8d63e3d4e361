"""Persistent dirty bitmaps in qcow2 (QEMU's block/qcow2-bitmap.c).

Spec: QEMU's docs/interop/qcow2.txt, "Bitmaps extension" and "Bitmaps", and
docs/interop/bitmaps.rst. On disk: the header extension (nb_bitmaps,
directory size and offset) points to the bitmap directory; each directory
entry points to a bitmap table whose entries are 0 (a cluster of zero bits),
1 (all ones) or the offset of a data cluster holding the serialized bits
(bit ``k`` of the bitmap is bit ``k % 8`` of byte ``k // 8``). Bitmaps are
valid only while the autoclear bit ``bitmaps`` is set.

Life cycle, as QEMU: a read-write open loads every bitmap into memory and
marks the consistent ones ``in_use`` on disk (directory rewritten in place
with the autoclear bit dropped around it); guest writes, write-zeroes and
discards set the bits of the enabled (``auto``) bitmaps; close stores each
bitmap into freshly allocated clusters, writes a new directory, points the
header at it and only then frees the old tables and directory. A bitmap found
``in_use`` on open is inconsistent: it is kept on disk as it is, can be
listed and removed, nothing else.

The driver calls in through :class:`BitmapSet` (``drv.bitmaps``): ``mark``
from its write paths and ``store`` from close.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ... import records as dataclasses
from ..errors import BlockError, ImageCorrupt
from .check_refs import (
    BITMAP_DIR_ENTRY,
    BITMAPS_EXT,
    BME_MAX_DIRECTORY_SIZE,
    BME_MAX_TABLE_SIZE,
    BME_TABLE_ENTRY_FLAG_ALL_ONES,
    BME_TABLE_ENTRY_OFFSET_MASK,
    bitmap_table_entry_ok,
)
from .layout import Autoclear, Ext

if TYPE_CHECKING:
    from .qcow2 import Qcow2

# directory entry flags (spec: "Bitmap directory", flags)
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
FLAGS_KNOWN = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE
#: the only bitmap type: dirty tracking
TYPE_DIRTY_TRACKING = 1
MIN_GRANULARITY_BITS = 9
MAX_GRANULARITY_BITS = 31
MAX_NAME_SIZE = 1023
MAX_BITMAPS = 65535
#: QEMU's BME_MAX_PHYS_SIZE: the serialized bits of one bitmap
MAX_PHYS_SIZE = 0x20000000


class BitmapError(BlockError):
    """A bitmap operation that QEMU refuses (the message is QEMU's)."""


@dataclasses.dataclass
class DirEntry:
    """One bitmap directory entry (spec: "Bitmap directory")."""

    table_offset: int
    table_size: int
    flags: int
    type: int
    granularity_bits: int
    name: str
    extra: bytes = b""

    def pack(self) -> bytes:
        name = self.name.encode()
        raw = (
            BITMAP_DIR_ENTRY.pack(
                self.table_offset,
                self.table_size,
                self.flags,
                self.type,
                self.granularity_bits,
                len(name),
                len(self.extra),
            )
            + self.extra
            + name
        )
        return raw + bytes(-len(raw) % 8)


def parse_directory(data: bytes, count: int) -> list[DirEntry]:
    """Decode ``count`` directory entries; ImageCorrupt if they overrun ``data``."""
    out: list[DirEntry] = []
    pos = 0
    for _ in range(count):
        if pos + BITMAP_DIR_ENTRY.size > len(data):
            raise ImageCorrupt("Failed to read bitmap directory")
        offset, tsize, flags, btype, gbits, name_size, extra_size = BITMAP_DIR_ENTRY.unpack_from(
            data, pos
        )
        start = pos + BITMAP_DIR_ENTRY.size
        end = start + extra_size + name_size
        if end > len(data):
            raise ImageCorrupt("Failed to read bitmap directory")
        extra = bytes(data[start : start + extra_size])
        name = bytes(data[start + extra_size : end]).decode("utf-8", "replace")
        out.append(DirEntry(offset, tsize, flags, btype, gbits, name, extra))
        pos = (end + 7) & ~7
    return out


def read_extension(drv: Qcow2) -> tuple[int, int, int] | None:
    """(nb_bitmaps, directory size, directory offset) if the bitmaps are valid."""
    hdr = drv.header
    ext = hdr.extension(Ext.BITMAPS)
    if ext is None or not hdr.autoclear_features & Autoclear.BITMAPS:
        return None
    if len(ext.data) < BITMAPS_EXT.size:
        raise ImageCorrupt("Invalid bitmaps extension")
    nb, _reserved, dir_size, dir_offset = BITMAPS_EXT.unpack_from(ext.data)
    return nb, dir_size, dir_offset


def read_directory(drv: Qcow2) -> list[DirEntry]:
    """The bitmap directory as stored on disk (empty if there are no valid bitmaps)."""
    ext = read_extension(drv)
    if ext is None or ext[0] == 0:
        return []
    nb, dir_size, dir_offset = ext
    if nb > MAX_BITMAPS:
        raise ImageCorrupt("File has too many bitmaps")
    if dir_size > BME_MAX_DIRECTORY_SIZE:
        raise ImageCorrupt("Bitmap directory is too large")
    if dir_offset & (drv.cs - 1):
        raise ImageCorrupt("Invalid bitmap directory offset")
    assert drv.file is not None
    data = drv.file.read(dir_offset, dir_size) if dir_offset + dir_size <= drv.file.size else b""
    if len(data) < dir_size:
        raise ImageCorrupt("Failed to read bitmap directory")
    return parse_directory(data, nb)


def granularity_info(drv: Qcow2) -> list[dict[str, Any]] | None:
    """``info``'s bitmaps list (flags, name, granularity), None without bitmaps."""
    entries = read_directory(drv)
    if not entries:
        return None
    out = []
    for e in entries:
        names = []
        if e.flags & FLAG_IN_USE:
            names.append("in-use")
        if e.flags & FLAG_AUTO:
            names.append("auto")
        out.append({"flags": names, "name": e.name, "granularity": 1 << e.granularity_bits})
    return out


# ----------------------------------------------------------------------
# in-memory bitmaps


class DirtyBitmap:
    """One dirty bitmap: a bit per ``granularity`` bytes of the virtual disk,
    held serialized (QEMU's on-disk bit order) in a bytearray."""

    def __init__(self, name: str, granularity: int, size: int, *, enabled: bool = True) -> None:
        self.name = name
        self.granularity = granularity
        self.gbits = granularity.bit_length() - 1
        self.size = size
        self.enabled = enabled
        #: found in_use on open: kept on disk untouched, unusable
        self.inconsistent = False
        #: the directory entry this bitmap was loaded from (its clusters to drop)
        self.entry: DirEntry | None = None
        self.bits = bytearray(self.byte_len)

    @property
    def nbits(self) -> int:
        return -(-self.size // self.granularity)

    @property
    def byte_len(self) -> int:
        return -(-self.nbits // 8)

    def set_bits(self, first: int, end: int) -> None:
        """Set bits [first, end)."""
        end = min(end, self.nbits)
        if first >= end:
            return
        bits = self.bits
        b0, b1 = first >> 3, (end - 1) >> 3
        lo = (0xFF << (first & 7)) & 0xFF
        hi = 0xFF >> (7 - ((end - 1) & 7))
        if b0 == b1:
            bits[b0] |= lo & hi
            return
        bits[b0] |= lo
        bits[b1] |= hi
        if b1 > b0 + 1:
            bits[b0 + 1 : b1] = b"\xff" * (b1 - b0 - 1)

    def mark(self, offset: int, length: int) -> None:
        """Set the bits of every granule that [offset, offset + length) touches."""
        if length > 0:
            self.set_bits(offset >> self.gbits, ((offset + length - 1) >> self.gbits) + 1)

    def runs(self) -> Iterator[tuple[int, int]]:
        """Byte ranges [start, end) of the guest disk whose bits are set."""
        value = int.from_bytes(self.bits, "little")
        pos = 0
        g = self.gbits
        while value:
            low = (value & -value).bit_length() - 1
            value >>= low
            pos += low
            inv = ~value
            ones = (inv & -inv).bit_length() - 1
            yield pos << g, min((pos + ones) << g, self.size)
            value >>= ones
            pos += ones

    def merge_from(self, other: DirtyBitmap) -> None:
        """OR ``other`` into this bitmap (any granularity; sizes must match)."""
        if other.granularity == self.granularity:
            merged = int.from_bytes(self.bits, "little") | int.from_bytes(other.bits, "little")
            self.bits = bytearray(merged.to_bytes(self.byte_len, "little"))
            return
        for start, end in other.runs():
            self.mark(start, end - start)

    def clear(self) -> None:
        self.bits = bytearray(self.byte_len)

    def count(self) -> int:
        """Dirty bytes (``count`` of query-block's dirty-bitmaps)."""
        return sum(end - start for start, end in self.runs())


def load_bits(drv: Qcow2, entry: DirEntry, bm: DirtyBitmap) -> None:
    """Read a bitmap's table and data clusters into ``bm.bits``."""
    cs = drv.cs
    assert drv.file is not None
    per_cluster = cs
    need = -(-bm.byte_len // per_cluster)
    if entry.table_size != need:
        raise ImageCorrupt(f"Bitmap '{entry.name}' doesn't satisfy the constraints")
    raw = drv.file.read(entry.table_offset, entry.table_size * 8)
    if len(raw) < entry.table_size * 8:
        raise ImageCorrupt(f"Could not read bitmap '{entry.name}' table")
    table = struct.unpack(f">{entry.table_size}Q", raw)
    out = bm.bits
    for i, e in enumerate(table):
        if not bitmap_table_entry_ok(e, cs):
            raise ImageCorrupt(f"Bitmap '{entry.name}' table entry {i} is corrupted")
        start = i * per_cluster
        n = min(per_cluster, bm.byte_len - start)
        off = e & BME_TABLE_ENTRY_OFFSET_MASK
        if off:
            out[start : start + n] = drv.file.read(off, n).ljust(n, b"\0")
        elif e & BME_TABLE_ENTRY_FLAG_ALL_ONES:
            out[start : start + n] = b"\xff" * n
    # bits past the end of the disk are meaningless: keep them clear
    tail = bm.nbits & 7
    if tail and out:
        out[-1] &= (1 << tail) - 1


def check_entry(drv: Qcow2, e: DirEntry) -> bool:
    """QEMU's check_constraints_on_bitmap plus the directory entry checks."""
    if e.type != TYPE_DIRTY_TRACKING or e.flags & ~FLAGS_KNOWN:
        return False
    if not MIN_GRANULARITY_BITS <= e.granularity_bits <= MAX_GRANULARITY_BITS:
        return False
    if e.table_size > BME_MAX_TABLE_SIZE:
        return False
    if e.table_offset & (drv.cs - 1) or not e.table_offset:
        return False
    return bool(e.name) and len(e.name.encode()) <= MAX_NAME_SIZE


class BitmapSet:
    """The bitmaps of one qcow2 image open read-write (or loaded for reading)."""

    def __init__(self, drv: Qcow2) -> None:
        self.drv = drv
        self.bitmaps: list[DirtyBitmap] = []
        #: bitmaps that must be written back on close
        self.modified = False
        #: loaded from an image open read-only: a merge source only
        self.readonly = drv.read_only

    # --- loading ---------------------------------------------------------

    @classmethod
    def load(cls, drv: Qcow2) -> BitmapSet:
        """Load every bitmap (qcow2_load_dirty_bitmaps); on a writable image mark the
        consistent ones in_use on disk."""
        bs = cls(drv)
        hdr = drv.header
        if hdr.extension(Ext.BITMAPS) is not None and not (
            hdr.autoclear_features & Autoclear.BITMAPS
        ):
            # a program without bitmap support wrote the image: they are stale
            if not drv.read_only:
                hdr.set_extension(Ext.BITMAPS, None)
                drv._write_header()
            return bs
        entries = read_directory(drv)
        for e in entries:
            if not check_entry(drv, e):
                raise ImageCorrupt(f"Bitmap '{e.name}' doesn't satisfy the constraints")
            if e.extra and not e.flags & FLAG_EXTRA_DATA_COMPATIBLE:
                raise ImageCorrupt(f"Bitmap '{e.name}' has unknown extra data")
            bm = DirtyBitmap(e.name, 1 << e.granularity_bits, drv.total_size)
            bm.entry = dataclasses.replace(e)
            bm.enabled = bool(e.flags & FLAG_AUTO)
            if e.flags & FLAG_IN_USE:
                bm.inconsistent = True
            else:
                load_bits(drv, e, bm)
            bs.bitmaps.append(bm)
        if entries and not drv.read_only:
            marked = [dataclasses.replace(e, flags=e.flags | FLAG_IN_USE) for e in entries]
            if any(m.flags != e.flags for m, e in zip(marked, entries, strict=True)):
                bs._write_dir_in_place(marked)
            bs.modified = True
        return bs

    def _write_dir_in_place(self, entries: list[DirEntry]) -> None:
        """update_ext_header_and_dir_in_place: drop the autoclear bit, rewrite the
        directory where it is, set the bit again."""
        drv = self.drv
        ext = read_extension(drv)
        assert ext is not None and drv.file is not None
        _, dir_size, dir_offset = ext
        data = b"".join(e.pack() for e in entries)
        if len(data) != dir_size:
            raise ImageCorrupt("Bitmap directory size changed")
        drv.header.autoclear_features &= ~int(Autoclear.BITMAPS)
        drv._write_header()
        drv.file.write(dir_offset, data)
        drv._sync()
        drv.header.autoclear_features |= Autoclear.BITMAPS
        drv._write_header()

    # --- lookups ---------------------------------------------------------

    def find(self, name: str) -> DirtyBitmap | None:
        for bm in self.bitmaps:
            if bm.name == name:
                return bm
        return None

    def lookup(self, name: str) -> DirtyBitmap:
        bm = self.find(name)
        if bm is None:
            raise BitmapError(f"Dirty bitmap '{name}' not found")
        return bm

    def usable(self, name: str) -> DirtyBitmap:
        """lookup + bdrv_dirty_bitmap_check(BDRV_BITMAP_DEFAULT)."""
        bm = self.lookup(name)
        if bm.inconsistent:
            raise BitmapError(
                f"Bitmap '{name}' is inconsistent and cannot be used\n"
                "Try block-dirty-bitmap-remove to delete this bitmap from disk"
            )
        if self.readonly:
            raise BitmapError(f"Bitmap '{name}' is readonly and cannot be modified")
        return bm

    # --- the write hook --------------------------------------------------

    def mark(self, offset: int, length: int) -> None:
        """A guest write/zero/discard of [offset, offset + length) (bdrv_set_dirty)."""
        for bm in self.bitmaps:
            if bm.enabled and not bm.inconsistent:
                bm.mark(offset, length)

    def resize(self, size: int) -> None:
        """The disk changed size (bdrv_dirty_bitmap_truncate): bits past the end are
        dropped, new bits are clear."""
        for bm in self.bitmaps:
            if bm.inconsistent:
                continue
            old = bm.bits
            bm.size = size
            new = bytearray(bm.byte_len)
            n = min(len(new), len(old))
            new[:n] = old[:n]
            tail = bm.nbits & 7
            if tail and new:
                new[-1] &= (1 << tail) - 1
            bm.bits = new
        self.modified = True

    # --- operations (QMP's block-dirty-bitmap-*) --------------------------

    def add(self, name: str, granularity: int | None = None, *, disabled: bool = False) -> None:
        """block-dirty-bitmap-add with persistent=true (checks in QEMU's order)."""
        drv = self.drv
        if not name:
            raise BitmapError("Bitmap name cannot be empty")
        if granularity is None:
            granularity = min(65536, max(4096, drv.cs))
        if granularity < 512 or granularity & (granularity - 1):
            raise BitmapError("Granularity must be power of 2 and at least 512")
        if self.readonly:
            raise BitmapError(f"Can't store persistent bitmaps to {node_name(drv)}: read-only")
        prefix = f"Can't make bitmap '{name}' persistent in '{node_name(drv)}': "
        if drv.header.version < 3:
            raise BitmapError(prefix + "Cannot store dirty bitmaps in qcow2 v2 files")
        if len(self.bitmaps) >= MAX_BITMAPS:
            raise BitmapError(prefix + "Maximum number of persistent bitmaps is already reached")
        gbits = granularity.bit_length() - 1
        if gbits > MAX_GRANULARITY_BITS:
            raise BitmapError(prefix + "Granularity exceeds maximum (2147483648 bytes)")
        size = drv.total_size
        if size > MAX_PHYS_SIZE << gbits or size > (BME_MAX_TABLE_SIZE * drv.cs) << gbits:
            raise BitmapError(
                prefix + "Too much space will be occupied by the bitmap. Use larger granularity"
            )
        if len(name.encode()) > MAX_NAME_SIZE:
            raise BitmapError(prefix + "Name length exceeds maximum (1023 characters)")
        if self.find(name) is not None:
            raise BitmapError(f"Bitmap already exists: {name}")
        self.bitmaps.append(DirtyBitmap(name, granularity, size, enabled=not disabled))
        self.modified = True

    def remove(self, name: str) -> None:
        """block-dirty-bitmap-remove: gone from disk at once, clusters freed."""
        bm = self.lookup(name)
        self.bitmaps.remove(bm)
        self.modified = True
        if bm.entry is None:
            return
        drv = self.drv
        on_disk = [e for e in read_directory(drv) if e.name != name]
        self._write_directory(on_disk)
        self._free_table(bm.entry)

    def clear(self, name: str) -> None:
        self.usable(name).clear()
        self.modified = True

    def enable(self, name: str) -> None:
        self.usable(name).enabled = True
        self.modified = True

    def disable(self, name: str) -> None:
        self.usable(name).enabled = False
        self.modified = True

    def merge(self, name: str, source: DirtyBitmap) -> None:
        """block-dirty-bitmap-merge of one source bitmap into ``name``."""
        dest = self.usable(name)
        if source.inconsistent:
            raise BitmapError(
                f"Bitmap '{source.name}' is inconsistent and cannot be used\n"
                "Try block-dirty-bitmap-remove to delete this bitmap from disk"
            )
        if source.size != dest.size:
            raise BitmapError(
                f"Bitmaps are of different sizes (destination size is {dest.size}, "
                f"source size is {source.size}) and can't be merged"
            )
        dest.merge_from(source)
        self.modified = True

    # --- storing -----------------------------------------------------------

    def _free_table(self, e: DirEntry) -> None:
        """free_bitmap_clusters: the data clusters and the table itself."""
        drv = self.drv
        assert drv.file is not None
        if not e.table_offset or not e.table_size:
            return
        raw = drv.file.read(e.table_offset, e.table_size * 8)
        for t in struct.unpack(f">{len(raw) // 8}Q", raw):
            off = t & BME_TABLE_ENTRY_OFFSET_MASK
            if off:
                drv.refs.free(off, drv.cs)
        drv.refs.free(e.table_offset, e.table_size * 8)

    def _store_bits(self, bm: DirtyBitmap) -> tuple[int, int]:
        """store_bitmap: data clusters (zero ones left out), then the table."""
        drv = self.drv
        cs = drv.cs
        assert drv.file is not None
        data = bm.bits
        tsize = max(1, -(-len(data) // cs))
        table = [0] * tsize
        for i in range(tsize):
            chunk = data[i * cs : (i + 1) * cs]
            if not chunk.strip(b"\0"):
                continue
            off = drv.refs.alloc_clusters(cs)
            drv._overlap_check(off, cs)
            drv.file.write(off, bytes(chunk).ljust(cs, b"\0"))
            table[i] = off
        tb = struct.pack(f">{tsize}Q", *table)
        toff = drv.refs.alloc_clusters(len(tb))
        drv._overlap_check(toff, len(tb))
        drv.file.write(toff, tb)
        return toff, tsize

    def _write_directory(self, entries: list[DirEntry]) -> None:
        """update_ext_header_and_dir: a new directory, the header, then the old
        directory freed."""
        drv = self.drv
        assert drv.file is not None
        old = read_extension(drv)
        if entries:
            data = b"".join(e.pack() for e in entries)
            if len(data) > BME_MAX_DIRECTORY_SIZE:
                raise BitmapError("Bitmap directory is too large")
            off = drv.refs.alloc_clusters(len(data))
            drv._overlap_check(off, len(data))
            drv.file.write(off, data)
            drv.header.set_extension(Ext.BITMAPS, BITMAPS_EXT.pack(len(entries), 0, len(data), off))
            drv.header.autoclear_features |= Autoclear.BITMAPS
        else:
            drv.header.set_extension(Ext.BITMAPS, None)
            drv.header.autoclear_features &= ~int(Autoclear.BITMAPS)
        # the clusters' refcounts reach the disk before the header points at them
        drv._write_metadata(sync=True)
        drv._sync()
        drv._write_header()
        if old is not None and old[1]:
            drv.refs.free(old[2], old[1])

    def store(self) -> None:
        """qcow2_store_persistent_dirty_bitmaps (on close of a writable image)."""
        if self.readonly or not self.modified:
            return
        on_disk = {e.name: e for e in read_directory(self.drv)}
        entries: list[DirEntry] = []
        drop: list[DirEntry] = []
        for bm in self.bitmaps:
            if bm.inconsistent:
                e = on_disk.get(bm.name)
                if e is not None:
                    entries.append(e)
                continue
            old = on_disk.get(bm.name)
            toff, tsize = self._store_bits(bm)
            if old is not None:
                drop.append(old)
            extra = old.extra if old is not None else b""
            flags = FLAG_AUTO if bm.enabled else 0
            if extra:
                flags |= FLAG_EXTRA_DATA_COMPATIBLE
            bm.entry = DirEntry(toff, tsize, flags, TYPE_DIRTY_TRACKING, bm.gbits, bm.name, extra)
            entries.append(bm.entry)
        self._write_directory(entries)
        for e in drop:
            self._free_table(e)
        self.modified = False


def node_name(drv: Any) -> str:
    """The auto-generated node name qemu-img 7.2's ``bitmap`` reports for the image
    it opened (its node counter at that point, as measured)."""
    if drv.format_name == "qcow2":
        return "#block196" if drv.header.version >= 3 else "#block145"
    return "#block116"


def open_bitmaps(drv: Qcow2) -> BitmapSet:
    """The image's bitmaps: loaded at open for a writable image, on demand otherwise."""
    if drv.bitmaps is None:
        drv.bitmaps = BitmapSet.load(drv)
    return drv.bitmaps
