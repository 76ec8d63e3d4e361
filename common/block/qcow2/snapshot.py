"""Internal snapshots of a qcow2 image (QEMU's block/qcow2-snapshot.c).

The snapshot table (spec section "Snapshots") lists, per snapshot, a copy of
the L1 table taken when it was made. Taking a snapshot adds one reference to
every L2 table and data cluster reachable from the active L1 and clears
OFLAG_COPIED where a cluster becomes shared, so the driver's write path copies
it before writing (copy-on-write). Reverting copies a snapshot's L1 into the
active one; deleting drops the snapshot's references.

Crash-safe order, as QEMU: references are taken and on disk before a table or
header points at them; a new snapshot table is written and flushed before the
header switches to it, and the old one is freed after. A kill at any moment
leaves at most leaked clusters.
"""

from __future__ import annotations

import errno
import struct
from array import array
from typing import TYPE_CHECKING

from ... import records as dataclasses
from ..errors import BlockError, ImageCorrupt, InvalidRequest, UnsupportedFeature
from .cache import table_from_bytes, table_to_bytes
from .layout import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    QCOW_MAX_L1_SIZE,
    QCOW_MAX_SNAPSHOTS,
    SNAPSHOT_EXTRA,
    SNAPSHOT_HEADER,
    SNAPSHOT_HEADER_FIELDS,
    Incompat,
    decode_compressed,
)
from .refcount import Again, Refcounts

if TYPE_CHECKING:
    from .qcow2 import Qcow2

#: header offset of nb_snapshots (4 bytes) followed by snapshots_offset (8)
OFF_SNAPSHOTS = 60
#: QEMU's limits (block/qcow2.h)
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS
#: v3 images need vm_state_size_large and disk_size in the extra data
V3_EXTRA_MIN = 16


@dataclasses.dataclass
class Snapshot:
    """One snapshot as QEMU keeps it in memory (QCowSnapshot)."""

    id_str: str
    name: str
    l1_table_offset: int = 0
    l1_size: int = 0
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int = 0
    #: -1 when the entry has no icount (extra data shorter than 24 bytes)
    icount: int = -1
    #: extra data past the fields we know, preserved on rewrite
    unknown_extra: bytes = b""

    def pack(self) -> bytes:
        """The table entry as qcow2_write_snapshots lays it out (unpadded)."""
        id_b = self.id_str.encode()
        name_b = self.name.encode()
        extra = (
            SNAPSHOT_EXTRA.pack(
                self.vm_state_size, self.disk_size, self.icount & 0xFFFFFFFFFFFFFFFF
            )
            + self.unknown_extra
        )
        head = SNAPSHOT_HEADER.pack(
            self.l1_table_offset,
            self.l1_size,
            len(id_b),
            len(name_b),
            self.date_sec,
            self.date_nsec,
            self.vm_clock_nsec,
            self.vm_state_size & 0xFFFFFFFF,
            len(extra),
        )
        return head + extra + id_b + name_b


# ----------------------------------------------------------------------
# the table


def read_table(drv: Qcow2) -> tuple[list[Snapshot], int]:
    """The snapshot table and its size in bytes (qcow2_read_snapshots)."""
    hdr = drv.header
    file = drv.file
    assert file is not None
    snaps: list[Snapshot] = []
    offset = hdr.snapshots_offset
    pos = offset
    file_size = file.size
    for i in range(hdr.nb_snapshots):
        pos = (pos + 7) & ~7
        if pos + SNAPSHOT_HEADER.size > file_size:
            raise ImageCorrupt("Failed to read snapshot table: Input/output error")
        f = dict(
            zip(
                SNAPSHOT_HEADER_FIELDS,
                SNAPSHOT_HEADER.unpack(file.read(pos, SNAPSHOT_HEADER.size)),
                strict=True,
            )
        )
        pos += SNAPSHOT_HEADER.size
        extra_len = f["extra_data_size"]
        if extra_len > QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise ImageCorrupt(f"Too much extra metadata in snapshot table entry {i}")
        body_len = extra_len + f["id_str_size"] + f["name_size"]
        if pos + body_len > file_size:
            raise ImageCorrupt("Failed to read snapshot table: Input/output error")
        body = file.read(pos, body_len)
        pos += body_len
        extra = body[:extra_len]
        if hdr.version >= 3 and extra_len < V3_EXTRA_MIN:
            raise ImageCorrupt(f"Too little extra metadata in snapshot table entry {i}")
        sn = Snapshot(
            id_str=body[extra_len : extra_len + f["id_str_size"]].decode("utf-8", "replace"),
            name=body[extra_len + f["id_str_size"] :].decode("utf-8", "replace"),
            l1_table_offset=f["l1_table_offset"],
            l1_size=f["l1_size"],
            date_sec=f["date_sec"],
            date_nsec=f["date_nsec"],
            vm_clock_nsec=f["vm_clock_nsec"],
            vm_state_size=f["vm_state_size"],
            disk_size=drv.total_size,
        )
        padded = extra + bytes(max(0, SNAPSHOT_EXTRA.size - len(extra)))
        large, disk, icount = SNAPSHOT_EXTRA.unpack_from(padded)
        if extra_len >= 8:
            sn.vm_state_size = large
        if extra_len >= 16:
            sn.disk_size = disk
        if extra_len >= 24:
            sn.icount = icount if icount < (1 << 63) else icount - (1 << 64)
        sn.unknown_extra = extra[SNAPSHOT_EXTRA.size :]
        snaps.append(sn)
        if pos - offset > QCOW_MAX_SNAPSHOTS_SIZE:
            raise ImageCorrupt("Snapshot table is too big")
    return snaps, pos - offset


def write_table(drv: Qcow2, snaps: list[Snapshot]) -> None:
    """Write ``snaps`` to new clusters and switch the header to them
    (qcow2_write_snapshots): new table flushed, header updated, old table freed."""
    file = drv.file
    assert file is not None
    _old, old_size = read_table(drv)
    old_offset = drv.header.snapshots_offset
    buf = bytearray()
    for sn in snaps:
        buf += bytes(-len(buf) % 8)
        buf += sn.pack()
    if len(buf) > QCOW_MAX_SNAPSHOTS_SIZE:
        raise BlockError("Snapshot table too large", errno.EFBIG)
    new_offset = 0
    if snaps:
        drv._mark_dirty()
        new_offset = drv.refs.alloc_clusters(len(buf))
        # the clusters must be ours on disk before anything points at them
        drv._write_metadata(sync=True)
        drv._sync()
        drv._overlap_check(new_offset, len(buf))
        file.write(new_offset, bytes(buf))
        drv._sync()
    file.write(OFF_SNAPSHOTS, struct.pack(">IQ", len(snaps), new_offset))
    drv._sync()
    drv.header.nb_snapshots = len(snaps)
    drv.header.snapshots_offset = new_offset
    if old_size and old_offset:
        drv.refs.free(old_offset, old_size)
        drv._write_metadata(sync=True)
        drv._discard_free(old_offset, _cluster_end(drv, old_offset + old_size))


def _cluster_end(drv: Qcow2, offset: int) -> int:
    return (offset + drv.cs - 1) & ~(drv.cs - 1)


def snapshot_list(drv: Qcow2) -> list[Snapshot]:
    """The snapshots in table order (qcow2_snapshot_list)."""
    with drv.lock:
        return read_table(drv)[0]


def find_by_id_and_name(snaps: list[Snapshot], id_str: str | None, name: str | None) -> int:
    """Index of the snapshot matching every given key, or -1."""
    for i, sn in enumerate(snaps):
        if id_str is not None and sn.id_str != id_str:
            continue
        if name is not None and sn.name != name:
            continue
        if id_str is None and name is None:
            return -1
        return i
    return -1


def find_by_id_or_name(snaps: list[Snapshot], key: str) -> int:
    """By ID first, then by name (QEMU's find_snapshot_by_id_or_name)."""
    i = find_by_id_and_name(snaps, key, None)
    return i if i >= 0 else find_by_id_and_name(snaps, None, key)


def new_snapshot_id(snaps: list[Snapshot]) -> str:
    """The largest numeric ID plus one (find_new_snapshot_id)."""
    top = 0
    for sn in snaps:
        try:
            value = int(sn.id_str, 10)
        except ValueError:
            value = 0
        top = max(top, value)
    return str(top + 1)


# ----------------------------------------------------------------------
# reference counting of an L1 tree


def _read_l1(drv: Qcow2, offset: int, size: int) -> array:
    assert drv.file is not None
    if size > QCOW_MAX_L1_SIZE // 8 or offset & (drv.cs - 1):
        raise ImageCorrupt("Snapshot L1 table offset invalid")
    if not size:
        return array("Q")
    return table_from_bytes(drv.file.read(offset, size * 8))


def update_refcounts(drv: Qcow2, l1: array, addend: int) -> bool:
    """Add ``addend`` (1, -1 or 0) to every L2 table and cluster reachable from
    ``l1`` and recompute OFLAG_COPIED in the L2 tables walked and in ``l1``
    (qcow2_update_snapshot_refcount). Returns whether ``l1`` changed; the
    caller writes it. Metadata is flushed on return."""
    cs = drv.cs
    cb = drv.cluster_bits
    refs = drv.refs
    cache = drv.map.cache
    words = drv.map.words
    freed: list[int] = []
    modified = False
    if addend:
        drv._mark_dirty()
    for i, l1e in enumerate(l1):
        l2_offset = l1e & L1E_OFFSET_MASK
        if not l2_offset:
            continue
        if l2_offset & (cs - 1):
            drv._corrupt("L2 table offset %#x unaligned (L1 index: %#x)" % (l2_offset, i))
        table = cache.get(l2_offset)
        # pass 1: references, one update per run of contiguous clusters
        hosts: list[int] = []
        for j in range(0, len(table), words):
            entry = table[j]
            if entry & OFLAG_COMPRESSED:
                if addend:
                    coff, clen = decode_compressed(entry, cb)
                    _update(refs, coff, clen, addend)
                    freed.append(coff)
                continue
            host = entry & L2E_OFFSET_MASK
            if host:
                if host & (cs - 1):
                    drv._corrupt(
                        "Cluster allocation offset %#x unaligned (L2 offset: %#x, "
                        "L2 index: %#x)" % (host, l2_offset, j // words)
                    )
                hosts.append(host)
        if addend and hosts:
            ordered = sorted(hosts)
            start = prev = ordered[0]
            for host in ordered[1:] + [-1]:
                if host != prev + cs:
                    _update(refs, start, prev + cs - start, addend)
                    start = host
                prev = host
            if addend < 0:
                freed.extend(hosts)
        # pass 2: OFLAG_COPIED where a cluster has exactly one reference
        dirty = False
        for j in range(0, len(table), words):
            old = table[j]
            entry = old & ~OFLAG_COPIED
            host = entry & L2E_OFFSET_MASK
            if host and not entry & OFLAG_COMPRESSED and refs.get(host >> cb) == 1:
                entry |= OFLAG_COPIED
            if entry != old:
                table[j] = entry
                dirty = True
        if dirty:
            cache.mark_dirty(l2_offset)
        if addend:
            _update(refs, l2_offset, cs, addend)
        l2_refcount = refs.get(l2_offset >> cb)
        if addend < 0 and l2_refcount == 0:
            cache.discard(l2_offset)
            freed.append(l2_offset)
        new_l1e = l2_offset | (OFLAG_COPIED if l2_refcount == 1 else 0)
        if new_l1e != l1e:
            l1[i] = new_l1e
            modified = True
    drv._meta_sets = None
    drv._last_compressed = None
    drv._write_metadata(sync=True)
    drv._sync()
    if addend < 0 and freed:
        # QCOW2_DISCARD_SNAPSHOT: clusters that became free go back to the host
        _discard_freed(drv, freed)
    return modified


def _update(refs: Refcounts, offset: int, length: int, addend: int) -> None:
    while True:
        try:
            refs.update(offset, length, addend)
            return
        except Again:
            continue
        except BlockError as exc:
            # update_refcount: an out-of-range refcount is -EINVAL in QEMU
            if exc.errno is None:
                raise BlockError(exc.message, errno.EINVAL) from None
            raise


def _discard_freed(drv: Qcow2, hosts: list[int]) -> None:
    cs = drv.cs
    ordered = sorted({h & ~(cs - 1) for h in hosts})
    start = prev = ordered[0]
    for host in ordered[1:] + [-1]:
        if host != prev + cs:
            drv._discard_free(start, prev + cs)
            start = host
        prev = host


def _write_active_l1(drv: Qcow2, table: array) -> None:
    """Overwrite the active L1 table on disk (same size) and sync."""
    assert drv.file is not None
    m = drv.map
    if not len(table):
        return
    drv.file.write(m.l1_offset, table_to_bytes(table))
    drv._sync()


# ----------------------------------------------------------------------
# operations


def _check_writable(drv: Qcow2) -> None:
    drv._check_writable()
    drv._check_usable()
    if drv.header.incompatible_features & Incompat.DATA_FILE:
        raise UnsupportedFeature("Operation not supported")


def snapshot_create(
    drv: Qcow2,
    name: str,
    *,
    id_str: str = "",
    date_sec: int = 0,
    date_nsec: int = 0,
    vm_clock_nsec: int = 0,
    vm_state_size: int = 0,
    icount: int = 0,
) -> Snapshot:
    """Take a snapshot of the active image (qcow2_snapshot_create)."""
    with drv.lock:
        _check_writable(drv)
        snaps, _ = read_table(drv)
        if len(snaps) >= QCOW_MAX_SNAPSHOTS:
            raise BlockError("File too large", errno.EFBIG)
        if not id_str:
            id_str = new_snapshot_id(snaps)
        elif find_by_id_and_name(snaps, id_str, None) >= 0:
            raise BlockError("File exists", errno.EEXIST)
        m = drv.map
        drv._write_metadata(sync=True)
        sn = Snapshot(
            id_str=id_str,
            name=name,
            l1_size=len(m.l1),
            date_sec=date_sec,
            date_nsec=date_nsec,
            vm_clock_nsec=vm_clock_nsec,
            vm_state_size=vm_state_size,
            disk_size=drv.total_size,
            icount=icount,
        )
        assert drv.file is not None
        if sn.l1_size:
            drv._mark_dirty()
            sn.l1_table_offset = drv.refs.alloc_clusters(sn.l1_size * 8)
            drv._overlap_check(sn.l1_table_offset, sn.l1_size * 8)
            drv.file.write(sn.l1_table_offset, table_to_bytes(m.l1))
        # take the references and have them on disk before the table names the L1
        if update_refcounts(drv, m.l1, 1):
            _write_active_l1(drv, m.l1)
        write_table(drv, snaps + [sn])
        return sn


def snapshot_goto(drv: Qcow2, key: str) -> None:
    """Revert the active image to the snapshot with ID or name ``key``
    (qcow2_snapshot_goto)."""
    with drv.lock:
        _check_writable(drv)
        snaps, _ = read_table(drv)
        index = find_by_id_or_name(snaps, key)
        if index < 0:
            raise BlockError("No such file or directory", errno.ENOENT)
        sn = snaps[index]
        if sn.l1_size > QCOW_MAX_L1_SIZE // 8 or sn.l1_table_offset & (drv.cs - 1):
            raise ImageCorrupt("Snapshot L1 table offset invalid")
        drv._write_metadata(sync=True)
        m = drv.map
        need = max(sn.l1_size, drv._size_to_l1(sn.disk_size))
        if need > len(m.l1):
            drv._grow_l1(need)
        sn_l1 = _read_l1(drv, sn.l1_table_offset, sn.l1_size)
        new_l1 = array("Q", sn_l1)
        new_l1.extend(array("Q", bytes(8 * (len(m.l1) - len(sn_l1)))))
        # references for the snapshot's tree first, then the active L1 switches
        update_refcounts(drv, array("Q", sn_l1), 1)
        _write_active_l1(drv, new_l1)
        old_l1 = m.l1
        m.l1 = new_l1
        m.l1_dirty.clear()
        drv._meta_sets = None
        update_refcounts(drv, old_l1, -1)
        if update_refcounts(drv, m.l1, 0):
            _write_active_l1(drv, m.l1)
        if sn.disk_size != drv.total_size:
            assert drv.file is not None
            drv.file.write(24, struct.pack(">Q", sn.disk_size))
            drv._sync()
            drv.header.size = sn.disk_size
            drv.total_size = sn.disk_size


def snapshot_delete(drv: Qcow2, id_str: str | None, name: str | None) -> None:
    """Delete the snapshot matching ``id_str`` and ``name`` (qcow2_snapshot_delete)."""
    with drv.lock:
        _check_writable(drv)
        snaps, _ = read_table(drv)
        index = find_by_id_and_name(snaps, id_str, name)
        if index < 0:
            raise BlockError("Can't find the snapshot", errno.ENOENT)
        sn = snaps[index]
        if sn.l1_size > QCOW_MAX_L1_SIZE // 8 or sn.l1_table_offset & (drv.cs - 1):
            raise ImageCorrupt("Snapshot L1 table offset invalid")
        drv._write_metadata(sync=True)
        sn_l1 = _read_l1(drv, sn.l1_table_offset, sn.l1_size)
        # the table stops naming the snapshot before its references go
        write_table(drv, snaps[:index] + snaps[index + 1 :])
        update_refcounts(drv, sn_l1, -1)
        if sn.l1_size:
            drv.refs.free(sn.l1_table_offset, sn.l1_size * 8)
            drv._discard_free(
                sn.l1_table_offset, _cluster_end(drv, sn.l1_table_offset + sn.l1_size * 8)
            )
        # refcounts that dropped to one give the active tables OFLAG_COPIED back
        if update_refcounts(drv, drv.map.l1, 0):
            _write_active_l1(drv, drv.map.l1)
        drv._write_metadata(sync=True)


def snapshot_load_tmp(drv: Qcow2, id_str: str | None, name: str | None) -> None:
    """Make a read-only node show a snapshot: its L1 replaces the active one in
    memory only (qcow2_snapshot_load_tmp)."""
    with drv.lock:
        if not drv.read_only:
            raise InvalidRequest("Device is not readonly")
        snaps, _ = read_table(drv)
        index = find_by_id_and_name(snaps, id_str, name)
        if index < 0:
            raise BlockError("Can't find snapshot", errno.ENOENT)
        sn = snaps[index]
        if sn.l1_size > QCOW_MAX_L1_SIZE // 8 or sn.l1_table_offset & (drv.cs - 1):
            raise ImageCorrupt("Snapshot L1 table offset invalid")
        try:
            l1 = _read_l1(drv, sn.l1_table_offset, sn.l1_size)
        except BlockError:
            raise BlockError("Failed to read l1 table for snapshot", errno.EIO) from None
        m = drv.map
        m.l1 = l1
        m.l1_offset = sn.l1_table_offset
        m.l1_dirty.clear()
        drv._meta_sets = None
        drv._last_compressed = None
