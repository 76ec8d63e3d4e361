"""Changing an existing qcow2 image's options (``qemu-img amend``).

Done in QEMU's order: version upgrade, refcount width, lazy refcounts, size,
version downgrade last. Each step leaves an image that checks clean:

* upgrade v2 -> v3: the header is rewritten as v3 (with the feature table);
* refcount width: a complete new refcount table and blocks of the new width
  are written past the end of the file, then the header is switched to them
  in one write; the old structure's clusters become free;
* downgrade v3 -> v2: refused when a v3-only feature is in use (QEMU's
  words), or a snapshot's size differs from the image's (QEMU's words);
  zero clusters in snapshots' L2 tables get host clusters of zeros;
  zero clusters are expanded into clusters holding zeros (QEMU
  deallocates those of an image without backing file instead: same data);
* lazy refcounts: the compatible bit (the image was made clean on open);
* ``encrypt.*``: LUKS key slots added or erased (common/block/crypto/qcow2_luks.py).
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import BlockError, UnsupportedFeature
from .cluster import COMPRESSED, ZERO_ALLOC, ZERO_PLAIN
from .layout import Compat, Incompat, set_refcount

__all__ = ["AMEND_OPTIONS", "CREATE_ONLY", "qcow2_amend"]

#: (name, kind, help) as ``qemu-img amend -o help`` lists them for qcow2
AMEND_OPTIONS = (
    ("backing_file", "str", "File name of a base image"),
    ("backing_fmt", "str", "Image format of the base image"),
    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    ("data_file", "str", "File name of an external data file"),
    ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
    ("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    ("encrypt.keyslot", "num", "Select a single keyslot to modify explicitly"),
    (
        "encrypt.new-secret",
        "str",
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    ("encrypt.old-secret", "str", "Select all keyslots that match this password"),
    ("encrypt.state", "str", "Select new state of affected keyslots (active/inactive)"),
    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
    ("refcount_bits", "num", "Width of a reference count entry in bits"),
    ("size", "size", "Virtual disk size"),
)
#: creation options that amend refuses with "only supported for image creation"
CREATE_ONLY = (
    "cluster_size",
    "compression_type",
    "encrypt.cipher-alg",
    "encrypt.cipher-mode",
    "encrypt.format",
    "encrypt.hash-alg",
    "encrypt.ivgen-alg",
    "encrypt.ivgen-hash-alg",
    "encrypt.key-secret",
    "encryption",
    "extended_l2",
    "preallocation",
)

ProgressCb = Any  # callable(done, total) or None


def qcow2_amend(
    node: Any, options: dict[str, str], progress: ProgressCb = None, force: bool = False
) -> None:
    """Apply ``options`` (already checked to be amend options) to the open Qcow2
    ``node``; ``force`` is qemu-img amend's ``--force`` (LUKS key slots)."""
    from ...options import parse_bool
    from ...sizes import parse_size

    encrypt = any(k.startswith("encrypt.") for k in options)
    if encrypt:
        from ..crypto.qcow2_luks import check_amend_options

        check_amend_options(options)
    hdr = node.header
    version = hdr.version
    if "compat" in options:
        compat = options["compat"]
        if compat in ("", None):
            pass
        elif compat in ("0.10", "v2"):
            version = 2
        elif compat in ("1.1", "v3"):
            version = 3
        else:
            raise BlockError(f"Unknown compatibility level {compat}")
    refcount_bits = hdr.refcount_bits
    if options.get("refcount_bits") not in (None, ""):
        try:
            refcount_bits = int(options["refcount_bits"], 0)
        except ValueError:
            raise BlockError("Parameter 'refcount_bits' expects a number") from None
        if refcount_bits <= 0 or refcount_bits > 64 or refcount_bits & (refcount_bits - 1):
            raise BlockError("Refcount width must be a power of two and may not exceed 64 bits")
    lazy: bool | None = None
    if options.get("lazy_refcounts") not in (None, ""):
        lazy = parse_bool(options["lazy_refcounts"], "lazy_refcounts")
    new_size: int | None = None
    if options.get("size") not in (None, ""):
        new_size = parse_size(options["size"])
    if "backing_file" in options or "backing_fmt" in options:
        raise BlockError("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.")
    if "data_file" in options:
        raise BlockError("data-file can only be set for images that use an external data file")
    if "data_file_raw" in options:
        raise BlockError("data-file-raw cannot be set on existing images")
    if encrypt:
        from ..crypto.qcow2_luks import check_amend

        check_amend(node)

    if version < 3 and refcount_bits != hdr.refcount_bits and refcount_bits != 16:
        raise BlockError(
            "Refcount widths other than 16 bits require compatibility level 1.1 or above "
            "(use compat=1.1 or greater)"
        )
    current_lazy = bool(hdr.compatible_features & Compat.LAZY_REFCOUNTS)
    if version < 3 and lazy and not current_lazy:
        raise BlockError(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use compat=1.1 or greater)"
        )

    if version > hdr.version:
        hdr.version = 3
        hdr.refcount_order = hdr.refcount_order or 4
        node._write_header()
    if encrypt:  # LUKS key slots: after an upgrade, before the rest (as QEMU)
        from ..crypto.qcow2_luks import amend as amend_encryption

        amend_encryption(node, options, force)
    if refcount_bits != hdr.refcount_bits:
        change_refcount_order(node, refcount_bits.bit_length() - 1, progress)
        hdr = node.header  # re-read from disk
    if lazy is not None and lazy != bool(hdr.compatible_features & Compat.LAZY_REFCOUNTS):
        node.flush()
        if lazy:
            hdr.compatible_features |= Compat.LAZY_REFCOUNTS
        else:
            hdr.compatible_features &= ~int(Compat.LAZY_REFCOUNTS)
        node._write_header()
    if new_size is not None and new_size != node.size:
        node.truncate(new_size, exact=False, prealloc="off", shrink=True)
    if version < hdr.version:
        downgrade(node, progress)


def downgrade(node: Any, progress: ProgressCb = None) -> None:
    """v3 -> v2 (qcow2_downgrade): refuse v3-only features, expand zero clusters."""
    hdr = node.header
    if hdr.refcount_order != 4:
        raise BlockError("compat=0.10 requires refcount_bits=16")
    if hdr.data_file is not None:
        raise BlockError("Cannot downgrade an image with a data file")
    node.flush()
    if hdr.nb_snapshots:
        _check_snapshots_for_v2(node)
    incompat = hdr.incompatible_features & ~int(Incompat.DIRTY)
    if incompat & Incompat.COMPRESSION:
        if _has_compressed(node):
            raise BlockError(
                "Cannot downgrade an image with zstd compression type and existing "
                "compressed clusters"
            )
        # nothing is compressed with the non-zlib method: v2 can say zlib
        incompat &= ~int(Incompat.COMPRESSION)
        hdr.compression_type = 0
    if incompat:
        raise BlockError(f"Cannot downgrade an image with incompatible features {incompat:#x} set")
    _expand_zero_clusters(node, progress)
    node.flush()
    if hdr.nb_snapshots:
        _expand_snapshot_zero_clusters(node)
    hdr.compatible_features = 0
    hdr.autoclear_features = 0
    hdr.incompatible_features = 0
    hdr.version = 2
    node._write_header()


def _check_snapshots_for_v2(node: Any) -> None:
    """qcow2_downgrade's rule: every snapshot must have the image's size and a
    VM state that fits 32 bits."""
    from .snapshot import read_table

    snaps, _ = read_table(node)
    for sn in snaps:
        if sn.vm_state_size > 0xFFFFFFFF or sn.disk_size != node.size:
            raise UnsupportedFeature("Internal snapshots prevent downgrade of image")


def _expand_snapshot_zero_clusters(node: Any) -> None:
    """Give every zero cluster in the snapshots' L2 tables a host cluster of zeros
    (qcow2_expand_zero_clusters' pass over the inactive L1 tables).

    An L2 table referenced by several L1 tables is changed once, in place: a new
    data cluster then takes as many references as the table has, so every image
    that shares the table also shares the cluster. The zeros and the refcounts are
    on disk before the L2 table that points at them is written."""
    from .cache import table_from_bytes, table_to_bytes
    from .layout import L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO
    from .snapshot import _read_l1, read_table

    snaps, _ = read_table(node)
    cs = node.cs
    bits = cs.bit_length() - 1
    refs = node.refs
    seen: set[int] = set()
    for sn in snaps:
        for l1e in _read_l1(node, sn.l1_table_offset, sn.l1_size):
            l2_offset = l1e & L1E_OFFSET_MASK
            if not l2_offset or l2_offset in seen:
                continue
            seen.add(l2_offset)
            l2 = table_from_bytes(node.file.read(l2_offset, cs))
            zero_at = [j for j, e in enumerate(l2) if e & OFLAG_ZERO]
            if not zero_at:
                continue
            l2_refcount = refs.get(l2_offset >> bits)
            drop: list[int] = []
            for j in zero_at:
                host = l2[j] & L2E_OFFSET_MASK
                if host and refs.get(host >> bits) > l2_refcount:
                    # the cluster is also referenced through another table, where it
                    # may hold data: this table's entries get a cluster of their own
                    drop.append(host)
                    host = 0
                if not host:
                    host = refs.alloc_clusters(cs)
                    if l2_refcount > 1:
                        refs.update(host, cs, l2_refcount - 1)
                node.file.write_zeroes(host, cs, may_unmap=False)
                copied = l2_refcount == 1 and refs.get(host >> bits) == 1
                l2[j] = host | (OFLAG_COPIED if copied else 0)
            node.flush()             # data and refcounts first, then the table
            node.file.write(l2_offset, table_to_bytes(l2))
            node.file.flush()
            for host in drop:        # the table no longer points there
                refs.update(host, cs, -l2_refcount)


def _has_compressed(node: Any) -> bool:
    return any(r.kind == COMPRESSED for r in node.map.map(0, node.size))


def _expand_zero_clusters(node: Any, progress: ProgressCb) -> None:
    """Replace every zero cluster of the active image by a cluster of zeros."""
    size = node.size
    cs = node.cs
    runs = [r for r in node.map.map(0, size) if r.kind in (ZERO_PLAIN, ZERO_ALLOC)]
    total = sum(r.length for r in runs) or 1
    done = 0
    zeros = bytes(min(cs * 16, 1 << 20))
    for run in runs:
        pos = run.start
        end = min(run.start + run.length, size)
        while pos < end:
            n = min(len(zeros), end - pos)
            node.write(pos, zeros[:n])
            pos += n
            done += n
            if progress is not None:
                progress(done, total)


def change_refcount_order(node: Any, order: int, progress: ProgressCb = None) -> None:
    """Rewrite the refcount structure with entries of ``1 << order`` bits."""
    node.flush()
    hdr = node.header
    cs = node.cs
    file = node.file
    refs = node.refs
    bits = 1 << order
    nb = -(-file.size // cs)
    old_meta = set(refs.block_offsets())
    table_start = hdr.refcount_table_offset
    old_meta.update(table_start + i * cs for i in range(hdr.refcount_table_clusters))
    counts = [0 if i * cs in old_meta else refs.get(i) for i in range(nb)]
    limit = (1 << bits) - 1
    for i, value in enumerate(counts):
        if value > limit:
            raise BlockError(
                f"Cannot decrease refcount entry width to {bits} bits: Cluster at offset "
                f"{i * cs:#x} has a refcount of {value}"
            )
    per_block = cs * 8 // bits
    blocks = table = 0
    while True:
        covered = nb + blocks + table
        new_blocks = -(-covered // per_block)
        new_table = -(-(new_blocks * 8) // cs)
        if (new_blocks, new_table) == (blocks, table):
            break
        blocks, table = new_blocks, new_table
    table_off = nb * cs
    blocks_off = table_off + table * cs
    counts.extend([1] * (table + blocks))
    reftable = bytearray(table * cs)
    for b in range(blocks):
        block = bytearray(cs)
        base = b * per_block
        for j, value in enumerate(counts[base : base + per_block]):
            if value:
                set_refcount(block, j, order, value)
        file.write(blocks_off + b * cs, bytes(block))
        struct.pack_into(">Q", reftable, b * 8, blocks_off + b * cs)
        if progress is not None:
            progress(b + 1, blocks)
    file.write(table_off, bytes(reftable))
    file.flush()
    hdr.refcount_order = order
    hdr.refcount_table_offset = table_off
    hdr.refcount_table_clusters = table
    node._write_header()
    _new_refcounts(node, order)
    node._reload()


def _new_refcounts(node: Any, order: int) -> None:
    """Give ``node`` a refcount layer of the new width (as Qcow2 sets one up on open)."""
    from .refcount import Refcounts

    old = node.refs
    refs = Refcounts(node.file, node.cluster_bits, order, node._corrupt, old.cache.capacity)
    refs.on_table_moved = old.on_table_moved  # type: ignore[method-assign]
    refs.sync = old.sync
    refs.flush_l2 = old.flush_l2
    node.refs = refs
    node._meta_sets = None
