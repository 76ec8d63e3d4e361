"""Size measurement for a qcow2 target (what ``qemu-img measure -O qcow2`` reports).

The figures follow from the on-disk layout (docs/interop/qcow2.txt):

* fully allocated: one header cluster, an L2 entry for every data cluster
  (L2 tables whole), an L1 entry per L2 table (L1 whole clusters), the refcount
  blocks and table covering all of that, plus every data cluster;
* required: the same metadata, but only the data clusters the input really
  holds (block status DATA and not ZERO, counted once per touched cluster;
  none for ``--size``), or every cluster when the target is preallocated (falloc/full) or gets a
  backing file (the new backing file may share nothing with the input);
* bitmaps: for every persistent bitmap of a qcow2 input, its data clusters,
  its bitmap table, and the bitmap directory (only when both ends are v3).
"""

from __future__ import annotations

import struct
from typing import Any

from ..driver import BlockDriver
from ..errors import BlockError
from .layout import QCOW_MAX_L1_SIZE, Autoclear, Ext
from .refcount import refcount_metadata_size

__all__ = ["prealloc_size", "qcow2_measure"]

#: bytes of a bitmap directory entry before its name (spec "Bitmap directory")
BITMAP_DIR_ENTRY_SIZE = 24
#: bytes of a bitmap table entry
BITMAP_TABLE_ENTRY_SIZE = 8


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def prealloc_size(size: int, cluster_size: int, refcount_order: int, extended_l2: bool) -> int:
    """File size of an image of ``size`` bytes with every cluster allocated."""
    total = _round_up(size, cluster_size)
    l2_entry = 16 if extended_l2 else 8
    meta = cluster_size  # header
    l2_entries = _round_up(total // cluster_size, cluster_size // l2_entry)
    meta += l2_entries * l2_entry
    l1_entries = _round_up(l2_entries * l2_entry // cluster_size, cluster_size // 8)
    meta += l1_entries * 8
    refcount_bytes, _ = refcount_metadata_size(
        (meta + total) // cluster_size, cluster_size, refcount_order, False
    )
    return meta + refcount_bytes + total


def _data_required(in_node: BlockDriver, cluster_size: int) -> int:
    """Bytes of target clusters the input's data (not zero) runs touch."""
    from .. import block_status_above

    size = in_node.size
    required = 0
    counted_end = 0  # end of the last counted cluster
    offset = 0
    while offset < size:
        run = block_status_above(in_node, offset, size - offset)
        length = max(run.length, 1)
        if run.data and not run.zero:
            start = max(offset - offset % cluster_size, counted_end)
            end = _round_up(offset + length, cluster_size)
            if end > start:
                required += end - start
                counted_end = end
        offset += length
    return required


def _bitmaps_size(in_node: BlockDriver, cluster_size: int) -> int:
    """Space the input's persistent bitmaps need in the target."""
    from .qcow2 import Qcow2

    node: Any = in_node
    if not isinstance(node, Qcow2):
        return 0
    hdr = node.header
    ext = hdr.extension(Ext.BITMAPS)
    if ext is None or not hdr.autoclear_features & Autoclear.BITMAPS or len(ext.data) < 24:
        return 0
    nb, _, dir_size, dir_offset = struct.unpack_from(">IIQQ", ext.data)
    if dir_size > (64 << 20):
        return 0
    buf = node.file.read(dir_offset, dir_size)
    total = 0
    directory = 0
    pos = 0
    for _ in range(nb):
        if pos + BITMAP_DIR_ENTRY_SIZE > len(buf):
            break
        _, _, _, _, gran_bits, name_size, extra = struct.unpack_from(">QIIBBHI", buf, pos)
        pos = _round_up(pos + BITMAP_DIR_ENTRY_SIZE + extra + name_size, 8)
        granularity = 1 << gran_bits
        bits = -(-in_node.size // granularity)
        bitmap_bytes = -(-bits // 8)
        clusters = -(-bitmap_bytes // cluster_size)
        total += clusters * cluster_size
        total += _round_up(clusters * BITMAP_TABLE_ENTRY_SIZE, cluster_size)
        directory += _round_up(BITMAP_DIR_ENTRY_SIZE + name_size, 8)
    return total + _round_up(directory, cluster_size)


def _parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """The target's ``-o`` options, checked in qcow2_measure's order and words."""
    from ...errors import QemuError
    from ...options import parse_bool
    from ...sizes import parse_size

    cs_text = options.get("cluster_size")
    if cs_text in (None, ""):
        cluster_size = 65536
    else:
        try:
            cluster_size = parse_size(str(cs_text))
        except (ValueError, OverflowError):
            raise BlockError(
                "Parameter 'cluster_size' expects a non-negative number below 2^64\n"
                "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                "and exabytes, respectively.\n"
                "Invalid options for file format 'qcow2'"
            ) from None
    if cluster_size < 512 or cluster_size > (2 << 20) or cluster_size & (cluster_size - 1):
        raise BlockError("Cluster size must be a power of two between 512 and 2048k")
    compat = options.get("compat")
    if compat in (None, "", "1.1", "v3"):
        version = 3
    elif compat in ("0.10", "v2"):
        version = 2
    else:
        raise BlockError(f"Invalid compatibility level: '{compat}'")
    rb = options.get("refcount_bits")
    if rb in (None, ""):
        refcount_bits = 16
    else:
        try:
            refcount_bits = int(str(rb), 0)
        except ValueError:
            raise BlockError(
                "Parameter 'refcount_bits' expects a number\n"
                "Invalid options for file format 'qcow2'"
            ) from None
    if refcount_bits > 64 or refcount_bits <= 0 or refcount_bits & (refcount_bits - 1):
        raise BlockError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and refcount_bits != 16:
        raise BlockError(
            "Different refcount widths than 16 bits require compatibility level 1.1 or "
            "above (use compat=1.1 or greater)"
        )
    extl2 = options.get("extended_l2")
    extended = False
    if extl2 not in (None, ""):
        try:
            extended = parse_bool(str(extl2), "extended_l2")
        except QemuError:
            raise BlockError(
                "Parameter 'extended_l2' expects 'on' or 'off'\n"
                "Invalid options for file format 'qcow2'"
            ) from None
    if extended and cluster_size < 16384:
        raise BlockError(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
        )
    prealloc = str(options.get("preallocation") or "off")
    if prealloc not in ("off", "metadata", "falloc", "full"):
        raise BlockError(f"invalid parameter value: {prealloc}")
    from ..crypto.qcow2_luks import measure_header_size

    luks_size = measure_header_size(options, cluster_size)
    return {
        "luks_size": luks_size,
        "cluster_size": cluster_size,
        "version": version,
        "refcount_order": refcount_bits.bit_length() - 1,
        "extended_l2": extended,
        "preallocation": prealloc,
        "backing_file": bool(options.get("backing_file")),
    }


def qcow2_measure(
    options: dict[str, Any], in_node: BlockDriver | None, size: int | None
) -> dict[str, int]:
    """``{"required", "fully-allocated"[, "bitmaps"]}`` for a qcow2 target.

    ``options`` are the target's ``-o`` options (strings); ``in_node`` the
    opened input image, or None with ``size`` (``--size``).
    """
    p = _parse_options(options)
    cluster_size = p["cluster_size"]
    l2_entry = 16 if p["extended_l2"] else 8
    virtual = _round_up(size or 0, cluster_size)
    l2_tables = -(-(virtual // cluster_size) // (cluster_size // l2_entry))
    if l2_tables * 8 > QCOW_MAX_L1_SIZE:
        raise BlockError("The image size is too large (try using a larger cluster size)")
    if in_node is not None:
        virtual = _round_up(in_node.size, cluster_size)
        if p["backing_file"]:
            required = virtual
        else:
            required = _data_required(in_node, cluster_size)
    else:
        required = 0  # a new empty image holds no data
    if p["preallocation"] in ("falloc", "full"):
        required = virtual
    full = prealloc_size(virtual, cluster_size, p["refcount_order"], p["extended_l2"])
    full += p["luks_size"]  # the LUKS header clusters
    info = {"required": full - virtual + required, "fully-allocated": full}
    if p["version"] >= 3 and in_node is not None and _supports_bitmaps(in_node):
        info["bitmaps"] = _bitmaps_size(in_node, cluster_size)
    return info


def _supports_bitmaps(node: BlockDriver) -> bool:
    """``bdrv_supports_persistent_dirty_bitmap``: a v3 qcow2 input."""
    from .qcow2 import Qcow2

    return isinstance(node, Qcow2) and node.header.version >= 3
