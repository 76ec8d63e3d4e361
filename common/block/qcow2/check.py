"""qcow2 metadata check and repair: QEMU's qcow2_co_check_locked and
qcow2_check_refcounts (block/qcow2-refcount.c, qcow2-snapshot.c).

:func:`check_image` walks every piece of metadata on the protocol node (header,
active and snapshot L1/L2 tables, data and compressed clusters, refcount table
and blocks, snapshot table, bitmap directory and tables, LUKS header), builds
the expected refcount of every cluster, compares it with the on-disk refcounts
and, with ``FIX_LEAKS``/``FIX_ERRORS``, repairs as QEMU 7.2 does: refcounts
set right, OFLAG_COPIED set right, misaligned preallocated zero clusters made
plain zero clusters, and a broken refcount structure rebuilt from scratch.

Each line QEMU prints on stderr while checking is appended, with the same
words, to ``CheckResult.messages``. When QEMU's check would fail outright (it
returns an error and qemu-img prints ``Check failed: <reason>``) we raise
:class:`CheckFailed`, which carries the result gathered so far.

Not done (QEMU does them): rewriting the snapshot table to complete snapshot
entries with short extra data (reported, not fixed), and marking the image
corrupt when a repair write would overlap other metadata (the write is refused
and counted as a check error, as QEMU does).
"""

from __future__ import annotations

import bisect
import errno
import struct
from enum import IntEnum

from ... import records as dataclasses
from ...errors import strerror
from ..driver import FIX_ERRORS, FIX_LEAKS, BlockDriver, CheckResult
from ..errors import BlockError, ImageCorrupt
from . import layout
from .check_refs import (
    BITMAPS_EXT,
    BME_MAX_DIRECTORY_SIZE,
    BME_MAX_TABLE_SIZE,
    BME_TABLE_ENTRY_OFFSET_MASK,
    CRYPTO_EXT,
    V3_SNAPSHOT_EXTRA_MIN,
    OnDiskRefcounts,
    RefblockUnaligned,
    SnapshotInfo,
    bitmap_table_entry_ok,
    encode_refblock,
    parse_bitmap_directory,
    read_snapshots,
    read_table,
    size_to_clusters,
)

#: check_refcounts_l1/l2 flag: count allocation statistics (active image only)
CHECK_FRAG_INFO = 0x2
INT_MAX = (1 << 31) - 1
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZEROES = 0xFFFFFFFF << 32
#: offset of refcount_table_offset (u64) + refcount_table_clusters (u32) in the header
HEADER_REFTABLE_FIELDS = struct.Struct(">QI")
HEADER_REFTABLE_OFFSET = 48
HEADER_INCOMPAT_OFFSET = 72
#: what QEMU's error_report puts before a line (the program's name)
ERROR_PREFIX = "qemu-img: "


class ClusterType(IntEnum):
    """QEMU's QCow2ClusterType."""

    UNALLOCATED = 0
    ZERO_PLAIN = 1
    ZERO_ALLOC = 2
    NORMAL = 3
    COMPRESSED = 4


class CheckFailed(BlockError):
    """QEMU's check returned an error: qemu-img prints ``Check failed: <message>``.

    ``result`` holds what was found (and its messages) up to the failure.
    """

    def __init__(self, code: int, result: CheckResult) -> None:
        super().__init__(strerror(code), code)
        self.result = result


class _Abort(Exception):
    """Stop the check with -errno (turned into CheckFailed by check_image)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def check_image(file: BlockDriver, header: layout.Header, fix: int) -> CheckResult:
    """Check (and with ``fix`` repair) the qcow2 image on ``file``.

    ``header`` is the parsed on-disk header; the caller has flushed its caches
    and reloads its metadata afterwards.
    """
    checker = _Checker(file, header, fix)
    try:
        result = checker.run()
    except _Abort as exc:
        checker.res.messages = checker.messages
        checker.flush_refcounts()
        raise CheckFailed(exc.code, checker.res) from None
    checker.flush_refcounts()
    if fix and result.check_errors == 0 and result.corruptions == 0:
        checker.mark_clean()
    return result


def _hash_x(value: int) -> str:
    """C's ``%#x``: no prefix for zero."""
    return "0x%x" % value if value else "0"


class _Checker:
    def __init__(self, file: BlockDriver, header: layout.Header, fix: int) -> None:
        self.file = file
        self.hdr = header
        self.fix = fix
        self.cb = header.cluster_bits
        self.cs = 1 << self.cb
        self.extl2 = bool(header.incompatible_features & layout.Incompat.EXTL2)
        self.l2_entry_size = 16 if self.extl2 else 8
        self.l2_size = self.cs // self.l2_entry_size
        self.data_file = bool(header.incompatible_features & layout.Incompat.DATA_FILE)
        self.refcount_max = (1 << header.refcount_bits) - 1
        self.cluster_offset_mask = (1 << layout.compressed_offset_bits(self.cb)) - 1
        self.zero_cluster = bytes(self.cs)
        self.res = CheckResult()
        self.messages: list[str] = []
        #: the in-memory refcount table: cluster index -> expected refcount
        self.imrt: dict[int, int] = {}
        self.nb_clusters = 0
        self.rebuild = False
        self.snapshots: list[SnapshotInfo] = []
        self.snapshots_size = 0
        self.signaled_corruption = False
        #: during a rebuild: the used clusters, sorted
        self.used: list[int] = []
        if header.l1_size > layout.QCOW_MAX_L1_SIZE // 8:
            raise ImageCorrupt("Active L1 table too large")
        if header.refcount_table_clusters > layout.QCOW_MAX_REFTABLE_SIZE >> self.cb:
            raise ImageCorrupt("Reference count table too large")
        self.l1 = read_table(file, header.l1_table_offset, header.l1_size)
        self.ondisk = OnDiskRefcounts(file, header)

    def msg(self, text: str) -> None:
        self.messages.append(text)

    # ------------------------------------------------------------------
    # qcow2_co_check_locked

    def run(self) -> CheckResult:
        snapshot_res = CheckResult()
        if not self.read_snapshot_table(snapshot_res):
            self._add(snapshot_res)
            raise _Abort(errno.EINVAL)
        try:
            self.check_refcounts()
        except _Abort:
            self._add(snapshot_res)
            raise
        # qcow2_check_fix_snapshot_table: rewriting the table is not done here
        self._add(snapshot_res)
        self.res.messages = self.messages
        return self.res

    def flush_refcounts(self) -> None:
        """Write the repaired refcounts, as closing the image flushes QEMU's cache.

        Not after a fatal corruption report: QEMU then drops the driver and
        its caches unwritten.
        """
        if self.fix and self.signaled_corruption:
            return
        self.ondisk.write_dirty()

    def _add(self, other: CheckResult) -> None:
        self.res.corruptions += other.corruptions
        self.res.leaks += other.leaks
        self.res.check_errors += other.check_errors
        self.res.corruptions_fixed += other.corruptions_fixed
        self.res.leaks_fixed += other.leaks_fixed

    def mark_clean(self) -> None:
        """qcow2_mark_clean + qcow2_mark_consistent."""
        if self.hdr.version < 3:
            return
        mask = layout.Incompat.DIRTY | layout.Incompat.CORRUPT
        raw = self.file.read(HEADER_INCOMPAT_OFFSET, 8)
        incompat = struct.unpack(">Q", raw)[0]
        if incompat & mask:
            self.file.flush()
            self.file.write(HEADER_INCOMPAT_OFFSET, struct.pack(">Q", incompat & ~mask))
            self.file.flush()

    def read_snapshot_table(self, sres: CheckResult) -> bool:
        """qcow2_check_read_snapshot_table (without its repairs)."""
        count = self.hdr.nb_snapshots
        offset = self.hdr.snapshots_offset
        if not count:
            return True
        if count > layout.QCOW_MAX_SNAPSHOTS:
            self.msg("ERROR snapshot table too large")
            sres.corruptions += 1
            count = layout.QCOW_MAX_SNAPSHOTS
        if offset & (self.cs - 1) or offset > (1 << 63) - 1:
            self.msg("ERROR snapshot table offset invalid")
            sres.check_errors += 1
            return False
        try:
            self.snapshots, self.snapshots_size = read_snapshots(self.file, offset, count)
        except ImageCorrupt as exc:
            self.msg(f"ERROR failed to read the snapshot table: {exc}")
            sres.check_errors += 1
            return False
        if self.hdr.version >= 3:
            for i, sn in enumerate(self.snapshots):
                if sn.extra_data_size < V3_SNAPSHOT_EXTRA_MIN:
                    sres.corruptions += 1
                    self.msg(
                        "%s snapshot table entry %d is incomplete"
                        % ("Repairing" if self.fix & FIX_ERRORS else "ERROR", i)
                    )
        return True

    # ------------------------------------------------------------------
    # qcow2_check_refcounts

    def check_refcounts(self) -> None:
        res = self.res
        size = self.file.size
        self.nb_clusters = size_to_clusters(size, self.cb)
        if self.nb_clusters > INT_MAX:
            res.check_errors += 1
            raise _Abort(errno.EFBIG)
        res.total_clusters = size_to_clusters(self.hdr.size // 512 * 512, self.cb)

        self.calculate_refcounts(self.fix)
        pre_compare = dataclasses.replace(res)
        highest = self.compare_refcounts(0)

        if self.rebuild and self.fix & FIX_ERRORS:
            old = dataclasses.replace(res)
            fresh_leaks = 0
            self.msg("Rebuilding refcount structure")
            self.rebuild_refcount_structure()
            res.corruptions = 0
            res.leaks = 0
            self.rebuild = False
            self.imrt.clear()
            self.calculate_refcounts(0)
            if self.fix & FIX_LEAKS:
                saved = dataclasses.replace(res)
                self.res = CheckResult()
                highest = self.compare_refcounts(FIX_LEAKS)
                if self.rebuild:
                    self.msg("ERROR rebuilt refcount structure is still broken")
                fresh_leaks = self.res.leaks
                self.res = res = saved
            if res.corruptions < old.corruptions:
                res.corruptions_fixed += old.corruptions - res.corruptions
            if res.leaks < old.leaks:
                res.leaks_fixed += old.leaks - res.leaks
            res.leaks += fresh_leaks
        elif self.fix:
            if self.rebuild:
                self.msg("ERROR need to rebuild refcount structures")
                res.check_errors += 1
                raise _Abort(errno.EIO)
            if res.leaks or res.corruptions:
                self.res = res = pre_compare
                highest = self.compare_refcounts(self.fix)

        self.check_oflag_copied(self.fix)
        self.res.image_end_offset = (highest + 1) * self.cs

    # ------------------------------------------------------------------
    # building the in-memory refcount table

    def inc_refcounts(self, offset: int, size: int) -> None:
        """qcow2_inc_refcounts_imrt."""
        if size <= 0:
            return
        if offset + size - self.file.size >= self.cs:
            self.msg(
                "ERROR: counting reference for region exceeding the end of the file by "
                "one cluster or more: offset 0x%x size 0x%x" % (offset, size)
            )
            self.res.corruptions += 1
            return
        first = offset >> self.cb
        last = (offset + size - 1) >> self.cb
        imrt = self.imrt
        for k in range(first, last + 1):
            if k >= self.nb_clusters:
                self.nb_clusters = k + 1
            value = imrt.get(k, 0)
            if value == self.refcount_max:
                self.msg("ERROR: overflow cluster offset=0x%x" % (k << self.cb))
                self.msg(
                    "Use qemu-img amend to increase the refcount entry width or qemu-img "
                    "convert to create a clean copy if the image cannot be opened for writing"
                )
                self.res.corruptions += 1
                continue
            imrt[k] = value + 1

    def calculate_refcounts(self, fix: int) -> None:
        hdr = self.hdr
        self.inc_refcounts(0, self.cs)
        self.check_refcounts_l1(hdr.l1_table_offset, hdr.l1_size, CHECK_FRAG_INFO, fix, active=True)
        if self.data_file and self.snapshots:
            self.msg("ERROR %d snapshots in image with data file" % len(self.snapshots))
            self.res.corruptions += 1
        for sn in self.snapshots:
            if sn.l1_table_offset & (self.cs - 1):
                self.msg(
                    "ERROR snapshot %s (%s) l1_offset=%s: L1 table is not cluster aligned; "
                    "snapshot table entry corrupted"
                    % (sn.id_str, sn.name, _hash_x(sn.l1_table_offset))
                )
                self.res.corruptions += 1
                continue
            if sn.l1_size > layout.QCOW_MAX_L1_SIZE // 8:
                self.msg(
                    "ERROR snapshot %s (%s) l1_size=%s: L1 table is too large; "
                    "snapshot table entry corrupted" % (sn.id_str, sn.name, _hash_x(sn.l1_size))
                )
                self.res.corruptions += 1
                continue
            self.check_refcounts_l1(sn.l1_table_offset, sn.l1_size, 0, fix, active=False)
        self.inc_refcounts(hdr.snapshots_offset, self.snapshots_size)
        self.inc_refcounts(self.ondisk.table_offset, self.ondisk.table_size * 8)
        if hdr.crypt_method == layout.CryptMethod.LUKS:
            ext = hdr.extension(layout.Ext.CRYPTO)
            if ext is not None and len(ext.data) >= CRYPTO_EXT.size:
                crypto_offset, crypto_length = CRYPTO_EXT.unpack_from(ext.data)
                self.inc_refcounts(crypto_offset, crypto_length)
        self.check_bitmaps()
        self.check_refblocks(fix)

    def check_refcounts_l1(
        self, l1_offset: int, l1_size: int, flags: int, fix: int, *, active: bool
    ) -> None:
        if not l1_size:
            return
        self.inc_refcounts(l1_offset, l1_size * 8)
        try:
            table = read_table(self.file, l1_offset, l1_size)
        except BlockError as exc:
            self.msg("ERROR: I/O error in check_refcounts_l1")
            self.res.check_errors += 1
            raise _Abort(exc.errno or errno.EIO) from None
        for entry in table:
            if not entry:
                continue
            if entry & layout.L1E_RESERVED_MASK:
                self.msg("ERROR found L1 entry with reserved bits set: %x" % entry)
                self.res.corruptions += 1
            l2_offset = entry & layout.L1E_OFFSET_MASK
            self.inc_refcounts(l2_offset, self.cs)
            if l2_offset & (self.cs - 1):
                self.msg(
                    "ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted"
                    % l2_offset
                )
                self.res.corruptions += 1
            self.check_refcounts_l2(l2_offset, flags, fix, active=active)

    def cluster_type(self, entry: int) -> ClusterType:
        """qcow2_get_cluster_type."""
        if entry & layout.OFLAG_COMPRESSED:
            return ClusterType.COMPRESSED
        if entry & layout.OFLAG_ZERO and not self.extl2:
            if entry & layout.L2E_OFFSET_MASK:
                return ClusterType.ZERO_ALLOC
            return ClusterType.ZERO_PLAIN
        if not entry & layout.L2E_OFFSET_MASK:
            if self.data_file and entry & layout.OFLAG_COPIED:
                return ClusterType.NORMAL
            return ClusterType.UNALLOCATED
        return ClusterType.NORMAL

    def read_l2(self, l2_offset: int) -> tuple[bytes, tuple[int, ...], tuple[int, ...] | None]:
        """The raw L2 table, its entries and (extended L2) its subcluster bitmaps."""
        raw = self.file.read(l2_offset, self.cs)
        words = struct.unpack(">%dQ" % (self.cs // 8), raw)
        if self.extl2:
            return raw, words[0::2], words[1::2]
        return raw, words, None

    def check_refcounts_l2(self, l2_offset: int, flags: int, fix: int, *, active: bool) -> None:
        res = self.res
        try:
            raw, entries, bitmaps = self.read_l2(l2_offset)
        except BlockError as exc:
            self.msg("ERROR: I/O error in check_refcounts_l2")
            res.check_errors += 1
            raise _Abort(exc.errno or errno.EIO) from None
        if raw == self.zero_cluster:
            return
        frag = flags & CHECK_FRAG_INFO
        next_contiguous = 0
        cs = self.cs
        for i, entry in enumerate(entries):
            bitmap = bitmaps[i] if bitmaps is not None else 0
            if not entry and not bitmap:
                continue
            ctype = self.cluster_type(entry)
            if ctype != ClusterType.COMPRESSED and entry & layout.L2E_STD_RESERVED_MASK:
                self.msg("ERROR found l2 entry with reserved bits set: %x" % entry)
                res.corruptions += 1
            if ctype == ClusterType.COMPRESSED:
                if entry & layout.OFLAG_COPIED:
                    self.msg(
                        "ERROR: coffset=0x%x: copied flag must never be set for compressed "
                        "clusters" % (entry & self.cluster_offset_mask)
                    )
                    entry &= ~layout.OFLAG_COPIED
                    res.corruptions += 1
                if self.data_file:
                    self.msg("ERROR compressed cluster %d with data file, entry=0x%x" % (i, entry))
                    res.corruptions += 1
                    continue
                if bitmap:
                    self.msg(
                        "ERROR compressed cluster %d with non-zero subcluster allocation "
                        "bitmap, entry=0x%x" % (i, entry)
                    )
                    res.corruptions += 1
                    continue
                coffset, csize = layout.decode_compressed(entry, self.cb)
                self.inc_refcounts(coffset, csize)
                if frag:
                    res.allocated_clusters += 1
                    res.compressed_clusters += 1
                    res.fragmented_clusters += 1
            elif ctype in (ClusterType.ZERO_ALLOC, ClusterType.NORMAL):
                offset = entry & layout.L2E_OFFSET_MASK
                if (bitmap >> 32) & bitmap:
                    res.corruptions += 1
                    self.msg(
                        "ERROR offset=%x: Allocated cluster has corrupted subcluster "
                        "allocation bitmap" % offset
                    )
                if offset & (cs - 1):
                    res.corruptions += 1
                    if self.extl2:
                        contains_data = bool(bitmap & L2_BITMAP_ALL_ALLOC)
                    else:
                        contains_data = not entry & layout.OFLAG_ZERO
                    if not contains_data:
                        self.msg(
                            "%s offset=%x: Preallocated cluster is not properly aligned; "
                            "L2 entry corrupted."
                            % ("Repairing" if fix & FIX_ERRORS else "ERROR", offset)
                        )
                        if fix & FIX_ERRORS and self.fix_l2_entry_by_zero(
                            l2_offset, i, bitmap, active
                        ):
                            continue
                    else:
                        self.msg(
                            "ERROR offset=%x: Data cluster is not properly aligned; "
                            "L2 entry corrupted." % offset
                        )
                if frag:
                    res.allocated_clusters += 1
                    if next_contiguous and offset != next_contiguous:
                        res.fragmented_clusters += 1
                    next_contiguous = offset + cs
                if not self.data_file:
                    self.inc_refcounts(offset, cs)
            elif ctype == ClusterType.UNALLOCATED:
                if bitmap & L2_BITMAP_ALL_ALLOC:
                    res.corruptions += 1
                    self.msg("ERROR: Unallocated cluster has non-zero subcluster allocation map")

    def fix_l2_entry_by_zero(self, l2_offset: int, index: int, bitmap: int, active: bool) -> bool:
        """Make a misaligned preallocated zero cluster a plain zero cluster."""
        if self.extl2:
            bitmap |= bitmap << 32
            bitmap &= L2_BITMAP_ALL_ZEROES
            data = struct.pack(">QQ", 0, bitmap)
        else:
            data = struct.pack(">Q", layout.OFLAG_ZERO)
        entry_offset = l2_offset + index * self.l2_entry_size
        overlap = self.metadata_overlap(entry_offset, len(data), ignore_active_l2=active)
        if overlap:
            self.signal_overlap(entry_offset, len(data), overlap)
            self.msg("ERROR: Overlap check failed")
            self.res.check_errors += 1
            raise _Abort(errno.EIO)
        self.file.write(entry_offset, data)
        self.file.flush()
        self.res.corruptions -= 1
        self.res.corruptions_fixed += 1
        return True

    def check_bitmaps(self) -> None:
        """qcow2_check_bitmaps_refcounts."""
        if not self.hdr.autoclear_features & layout.Autoclear.BITMAPS:
            return
        ext = self.hdr.extension(layout.Ext.BITMAPS)
        if ext is None or len(ext.data) < BITMAPS_EXT.size:
            return
        nb_bitmaps, _, dir_size, dir_offset = BITMAPS_EXT.unpack_from(ext.data)
        if nb_bitmaps == 0:
            return
        self.inc_refcounts(dir_offset, dir_size)
        if dir_size > BME_MAX_DIRECTORY_SIZE or dir_offset + dir_size > self.file.size:
            self.res.corruptions += 1
            raise _Abort(errno.EINVAL)
        try:
            bitmaps = parse_bitmap_directory(self.file.read(dir_offset, dir_size), nb_bitmaps)
        except ImageCorrupt:
            self.res.corruptions += 1
            raise _Abort(errno.EINVAL) from None
        for bm in bitmaps:
            self.inc_refcounts(bm.table_offset, bm.table_size * 8)
            if not 0 < bm.table_size <= BME_MAX_TABLE_SIZE:
                self.res.corruptions += 1
                raise _Abort(errno.EINVAL)
            table = read_table(self.file, bm.table_offset, bm.table_size)
            if not all(bitmap_table_entry_ok(e, self.cs) for e in table):
                self.res.corruptions += 1
                raise _Abort(errno.EINVAL)
            for entry in table:
                offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
                if offset:
                    self.inc_refcounts(offset, self.cs)

    def check_refblocks(self, fix: int) -> None:
        res = self.res
        for i, raw in enumerate(self.ondisk.table):
            offset = raw & layout.REFT_OFFSET_MASK
            cluster = offset >> self.cb
            if raw & layout.REFT_RESERVED_MASK:
                self.msg("ERROR refcount table entry %d has reserved bits set" % i)
                res.corruptions += 1
                self.rebuild = True
                continue
            if offset & (self.cs - 1):
                self.msg(
                    "ERROR refcount block %d is not cluster aligned; refcount table entry "
                    "corrupted" % i
                )
                res.corruptions += 1
                self.rebuild = True
                continue
            if cluster >= self.nb_clusters:
                res.corruptions += 1
                self.msg(
                    "%s refcount block %d is outside image"
                    % ("Repairing" if fix & FIX_ERRORS else "ERROR", i)
                )
                if fix & FIX_ERRORS:
                    code, resize_error = self.grow_file(offset + self.cs)
                    if code == 0 and cluster < self.nb_clusters:
                        res.corruptions -= 1
                        res.corruptions_fixed += 1
                        self.inc_refcounts(offset, self.cs)
                        continue
                    self.rebuild = True
                    if resize_error:
                        self.msg(f"{ERROR_PREFIX}Could not resize file: {strerror(code)}")
                    self.msg("ERROR could not resize image: %s" % strerror(code or errno.EINVAL))
                continue
            if offset:
                self.inc_refcounts(offset, self.cs)
                if self.imrt.get(cluster, 0) != 1:
                    self.msg("ERROR refcount block %d refcount=%d" % (i, self.imrt.get(cluster, 0)))
                    res.corruptions += 1
                    self.rebuild = True

    def grow_file(self, size: int) -> tuple[int, bool]:
        """Truncate the file up to ``size``: (0 or an errno, whether truncate failed)."""
        if size > (1 << 63) - 1:
            return errno.EINVAL, False
        try:
            self.file.truncate(size)
        except BlockError as exc:
            return exc.errno or errno.EIO, True
        new_nb = size_to_clusters(self.file.size, self.cb)
        self.nb_clusters = max(self.nb_clusters, new_nb)
        return 0, False

    # ------------------------------------------------------------------
    # comparing with the image's refcounts

    def compare_refcounts(self, fix: int) -> int:
        """Compare and (with fix) correct; returns the highest used cluster."""
        res = self.res
        ondisk = self.ondisk
        nb = self.nb_clusters
        candidates = {k for k, v in self.imrt.items() if v and k < nb}
        for index, raw in enumerate(ondisk.table):
            offset = raw & layout.REFT_OFFSET_MASK
            start = index << ondisk.block_bits
            if not offset or start >= nb:
                continue
            end = min(start + ondisk.block_size, nb)
            if offset & (self.cs - 1):
                candidates.update(range(start, end))
                continue
            block = ondisk.load(offset)
            candidates.update(start + j for j in range(end - start) if block[j])
        highest = 0
        discards: list[int] = []
        for i in sorted(candidates):
            try:
                refcount1 = ondisk.get(i)
            except RefblockUnaligned as exc:
                self.signal_corruption(
                    "Refblock offset %s unaligned (reftable index: %s)"
                    % (_hash_x(exc.args[0]), _hash_x(exc.args[1]))
                )
                self.msg("Can't get refcount for cluster %d: %s" % (i, strerror(errno.EIO)))
                res.check_errors += 1
                continue
            refcount2 = self.imrt.get(i, 0)
            if refcount1 or refcount2:
                highest = i
            if refcount1 == refcount2:
                continue
            fixed = None
            if refcount1 == 0:
                self.rebuild = True
            elif refcount1 > refcount2 and fix & FIX_LEAKS:
                fixed = "leaks_fixed"
            elif refcount1 < refcount2 and fix & FIX_ERRORS:
                fixed = "corruptions_fixed"
            if fixed is not None:
                kind = "Repairing"
            else:
                kind = "ERROR" if refcount1 < refcount2 else "Leaked"
            self.msg("%s cluster %d refcount=%d reference=%d" % (kind, i, refcount1, refcount2))
            if fixed is not None:
                ondisk.set(i, refcount2)
                if not refcount2:
                    discards.append(i)
                setattr(res, fixed, getattr(res, fixed) + 1)
                continue
            if refcount1 < refcount2:
                res.corruptions += 1
            else:
                res.leaks += 1
        # the refblocks are written at the end of the check, as QEMU's
        # refcount cache is; update_refcount discards what it frees
        # (QCOW2_DISCARD_ALWAYS) right away
        for i in discards:
            self.file.discard(i << self.cb, self.cs)
        return highest

    def signal_corruption(self, text: str) -> None:
        """qcow2_signal_corruption (fatal): printed once; a writable image is marked corrupt."""
        if self.signaled_corruption:
            return
        self.signaled_corruption = True
        if self.fix:
            self.msg(
                f"qcow2: Marking image as corrupt: {text}; further corruption events will "
                "be suppressed"
            )
            if self.hdr.version >= 3:
                raw = self.file.read(HEADER_INCOMPAT_OFFSET, 8)
                incompat = struct.unpack(">Q", raw)[0] | layout.Incompat.CORRUPT
                self.file.write(HEADER_INCOMPAT_OFFSET, struct.pack(">Q", incompat))
                self.file.flush()
        else:
            self.msg(
                f"qcow2: Image is corrupt: {text}; further non-fatal corruption events will "
                "be suppressed"
            )

    def signal_overlap(self, offset: int, size: int, name: str) -> None:
        self.signal_corruption(f"Preventing invalid write on metadata (overlaps with {name})")

    # ------------------------------------------------------------------
    # OFLAG_COPIED

    def check_oflag_copied(self, fix: int) -> None:
        res = self.res
        if fix & FIX_ERRORS:
            repair = True
        elif fix & FIX_LEAKS:
            repair = not (res.check_errors or res.corruptions or res.leaks)
        else:
            repair = False
        kind = "Repairing" if repair else "ERROR"
        for i, l1_entry in enumerate(self.l1):
            l2_offset = l1_entry & layout.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                refcount = self.ondisk.get(l2_offset >> self.cb)
            except RefblockUnaligned:
                continue
            if (refcount == 1) != bool(l1_entry & layout.OFLAG_COPIED):
                res.corruptions += 1
                self.msg(
                    "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d"
                    % (kind, i, l1_entry, refcount)
                )
                if repair:
                    if refcount == 1:
                        new_entry = l1_entry | layout.OFLAG_COPIED
                    else:
                        new_entry = l1_entry & ~layout.OFLAG_COPIED
                    self.l1[i] = new_entry
                    where = self.hdr.l1_table_offset + 8 * i
                    overlap = self.metadata_overlap(where, 8, ignore_active_l1=True)
                    if overlap:
                        self.signal_overlap(where, 8, overlap)
                        res.check_errors += 1
                        raise _Abort(errno.EIO)
                    self.file.write(where, struct.pack(">Q", new_entry))
                    self.file.flush()
                    res.corruptions -= 1
                    res.corruptions_fixed += 1
            if l2_offset >= self.file.size:
                continue  # reads as zeroes: no entry to check (and a garbage L1 may name many)
            raw, entries, _ = self.read_l2(l2_offset)
            table = bytearray(raw)
            dirty = 0
            for j, entry in enumerate(entries):
                if not entry:
                    continue
                ctype = self.cluster_type(entry)
                if ctype not in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                    continue
                if self.data_file:
                    refcount = 1
                else:
                    try:
                        refcount = self.ondisk.get((entry & layout.L2E_OFFSET_MASK) >> self.cb)
                    except RefblockUnaligned:
                        continue
                if (refcount == 1) != bool(entry & layout.OFLAG_COPIED):
                    res.corruptions += 1
                    self.msg(
                        "%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d"
                        % (kind, entry, refcount)
                    )
                    if repair:
                        if refcount == 1:
                            entry |= layout.OFLAG_COPIED
                        else:
                            entry &= ~layout.OFLAG_COPIED
                        struct.pack_into(">Q", table, j * self.l2_entry_size, entry)
                        dirty += 1
            if dirty:
                overlap = self.metadata_overlap(l2_offset, self.cs, ignore_active_l2=True)
                if overlap:
                    self.signal_overlap(l2_offset, self.cs, overlap)
                    self.msg(
                        "ERROR: Could not write L2 table; metadata overlap check failed: %s"
                        % strerror(errno.EIO)
                    )
                    res.check_errors += 1
                    raise _Abort(errno.EIO)
                self.file.write(l2_offset, bytes(table))
                self.file.flush()
                res.corruptions -= dirty
                res.corruptions_fixed += dirty

    def metadata_overlap(
        self,
        offset: int,
        size: int,
        *,
        ignore_active_l1: bool = False,
        ignore_active_l2: bool = False,
    ) -> str | None:
        """qcow2_check_metadata_overlap with QEMU's default "cached" checks."""
        cs = self.cs
        if offset < cs:
            return "qcow2_header"
        size = -(-((offset & (cs - 1)) + size) // cs) * cs
        offset &= ~(cs - 1)

        def hits(start: int, length: int) -> bool:
            return length > 0 and start < offset + size and offset < start + length

        hdr = self.hdr
        if not ignore_active_l1 and hdr.l1_size and hits(hdr.l1_table_offset, hdr.l1_size * 8):
            return "active L1 table"
        if hits(self.ondisk.table_offset, self.ondisk.table_size * 8):
            return "refcount table"
        if not ignore_active_l2:
            for entry in self.l1:
                l2 = entry & layout.L1E_OFFSET_MASK
                if l2 and hits(l2, cs):
                    return "active L2 table"
        for raw in self.ondisk.table:
            block = raw & layout.REFT_OFFSET_MASK
            if block and hits(block, cs):
                return "refcount block"
        if self.snapshots and hits(hdr.snapshots_offset, self.snapshots_size):
            return "snapshot table"
        for sn in self.snapshots:
            if sn.l1_size and hits(sn.l1_table_offset, sn.l1_size * 8):
                return "inactive L1 table"
        return None

    # ------------------------------------------------------------------
    # rebuild_refcount_structure

    def alloc_clusters_imrt(self, count: int, first_free: int) -> tuple[int, int]:
        """Allocate ``count`` contiguous clusters in the in-memory table.

        Returns (offset, updated first_free_cluster).
        """
        imrt = self.imrt
        cluster = first_free
        contiguous = 0
        first_gap = True
        while cluster < self.nb_clusters and contiguous < count:
            if not imrt.get(cluster, 0):
                contiguous += 1
                if first_gap:
                    first_free = cluster
                    first_gap = False
            else:
                contiguous = 0
            cluster += 1
        if contiguous < count:
            self.nb_clusters = cluster + count - contiguous
        cluster -= contiguous
        for i in range(count):
            imrt[cluster + i] = 1
            bisect.insort(self.used, cluster + i)
        return cluster << self.cb, first_free

    def write_refblocks(self, first: int, end: int, reftable: list[int]) -> bool:
        """rebuild_refcounts_write_refblocks; returns True if ``reftable`` grew.

        Walks the used clusters only (``self.used``, sorted), so a sparse
        table over a huge file costs what is used, not the file's size.
        """
        ondisk = self.ondisk
        block_bits = ondisk.block_bits
        block_size = ondisk.block_size
        first_free = 0
        grown = False
        imrt = self.imrt
        cluster = first
        while True:
            pos = bisect.bisect_left(self.used, cluster)
            if pos == len(self.used) or self.used[pos] >= end:
                break
            cluster = self.used[pos]
            index = cluster >> block_bits
            start = index << block_bits
            if index < len(reftable) and reftable[index]:
                block_offset = reftable[index]
            else:
                first_free = max(first_free, start)
                block_offset, first_free = self.alloc_clusters_imrt(1, first_free)
                if block_offset >> self.cb >= end:
                    end = (block_offset >> self.cb) + 1
                if len(reftable) <= index:
                    entries_per_cluster = self.cs // 8
                    new_len = -(-(index + 1) // entries_per_cluster) * entries_per_cluster
                    reftable.extend([0] * (new_len - len(reftable)))
                    grown = True
                reftable[index] = block_offset
            self.pre_write_check(block_offset, self.cs, "ERROR writing refblock")
            values = [imrt.get(k, 0) for k in range(start, start + block_size)]
            self.file.write(block_offset, encode_refblock(values, ondisk.order, self.cs))
            cluster = start + block_size
        return grown

    def pre_write_check(self, offset: int, size: int, what: str) -> None:
        """qcow2_pre_write_overlap_check for a rebuild write; failure ends the check."""
        overlap = self.metadata_overlap(offset, size)
        if overlap:
            self.signal_overlap(offset, size, overlap)
            self.msg(f"{ERROR_PREFIX}{what}: {strerror(errno.EIO)}")
            self.res.check_errors += 1
            raise _Abort(errno.EIO)

    def rebuild_refcount_structure(self) -> None:
        reftable: list[int] = []
        self.used = sorted(k for k, v in self.imrt.items() if v)
        self.write_refblocks(0, self.nb_clusters, reftable)
        while True:
            length = len(reftable) * 8
            clusters = size_to_clusters(length, self.cb)
            offset, _ = self.alloc_clusters_imrt(clusters, 0)
            start = offset >> self.cb
            if not self.write_refblocks(start, start + clusters, reftable):
                break
        self.pre_write_check(offset, length, "ERROR writing reftable")
        self.file.write(offset, struct.pack(">%dQ" % len(reftable), *reftable))
        self.file.flush()
        self.file.write(HEADER_REFTABLE_OFFSET, HEADER_REFTABLE_FIELDS.pack(offset, clusters))
        self.file.flush()
        self.ondisk.replace_table(offset, reftable)
