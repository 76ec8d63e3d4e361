"""qcow2 on-disk layout, declared once (QEMU's docs/interop/qcow2.txt).

Everything here is pure: parse and pack bytes, no I/O. Field names follow the
spec. All integers are big-endian.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

from ... import records as dataclasses
from ..errors import ImageCorrupt, UnsupportedFeature

MAGIC = b"QFI\xfb"

# --- "Header" (spec section "Header") ------------------------------------
# bytes 0-71: common to versions 2 and 3
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
HEADER_V2_FIELDS = (
    "magic",
    "version",
    "backing_file_offset",
    "backing_file_size",
    "cluster_bits",
    "size",
    "crypt_method",
    "l1_size",
    "l1_table_offset",
    "refcount_table_offset",
    "refcount_table_clusters",
    "nb_snapshots",
    "snapshots_offset",
)
# bytes 72-103: version 3 additions
HEADER_V3 = struct.Struct(">QQQII")
HEADER_V3_FIELDS = (
    "incompatible_features",
    "compatible_features",
    "autoclear_features",
    "refcount_order",
    "header_length",
)
V2_HEADER_LENGTH = HEADER_V2.size  # 72
V3_HEADER_LENGTH_MIN = V2_HEADER_LENGTH + HEADER_V3.size  # 104
#: header_length QEMU writes for v3 (104 + compression_type byte, padded to 8)
V3_HEADER_LENGTH = 112
COMPRESSION_TYPE_OFFSET = 104

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_REFCOUNT_ORDER = 6
#: QEMU's limits on table sizes (block/qcow2.h)
QCOW_MAX_L1_SIZE = 0x2000000  # 32 MiB of L1 entries' bytes
QCOW_MAX_REFTABLE_SIZE = 0x800000  # 8 MiB
QCOW_MAX_SNAPSHOTS = 65536
MAX_BACKING_FILE_NAME = 1023


class Incompat(IntFlag):
    """incompatible_features bits."""

    DIRTY = 1 << 0
    CORRUPT = 1 << 1
    DATA_FILE = 1 << 2
    COMPRESSION = 1 << 3
    EXTL2 = 1 << 4


class Compat(IntFlag):
    """compatible_features bits."""

    LAZY_REFCOUNTS = 1 << 0


class Autoclear(IntFlag):
    """autoclear_features bits."""

    BITMAPS = 1 << 0
    DATA_FILE_RAW = 1 << 1


class CompressionType(IntEnum):
    """compression_type field values."""

    ZLIB = 0
    ZSTD = 1


class CryptMethod(IntEnum):
    NONE = 0
    AES = 1
    LUKS = 2


# --- header extensions (spec section "Header extensions") -----------------
EXT_HEADER = struct.Struct(">II")


class Ext(IntEnum):
    """Header extension types."""

    END = 0x00000000
    BACKING_FORMAT = 0xE2792ACA
    FEATURE_TABLE = 0x6803F857
    BITMAPS = 0x23852875
    CRYPTO = 0x0537BE77
    DATA_FILE = 0x44415441


FEATURE_ENTRY = struct.Struct(">BB46s")  # type, bit number, name


class FeatureType(IntEnum):
    INCOMPATIBLE = 0
    COMPATIBLE = 1
    AUTOCLEAR = 2


#: the feature name table QEMU 7.2 writes, in its order
FEATURE_NAMES: tuple[tuple[FeatureType, int, str], ...] = (
    (FeatureType.INCOMPATIBLE, 0, "dirty bit"),
    (FeatureType.INCOMPATIBLE, 1, "corrupt bit"),
    (FeatureType.INCOMPATIBLE, 2, "external data file"),
    (FeatureType.INCOMPATIBLE, 3, "compression type"),
    (FeatureType.INCOMPATIBLE, 4, "extended L2 entries"),
    (FeatureType.COMPATIBLE, 0, "lazy refcounts"),
    (FeatureType.AUTOCLEAR, 0, "bitmaps"),
    (FeatureType.AUTOCLEAR, 1, "raw external data"),
)

# --- L1/L2 entries (spec section "Cluster mapping") ------------------------
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF
#: extended L2: the second 64 bits hold per-subcluster "allocated" (bits 0-31)
#: and "reads as zero" (bits 32-63) flags
SUBCLUSTERS_PER_CLUSTER = 32


def compressed_offset_bits(cluster_bits: int) -> int:
    """Bits of a compressed L2 entry that hold the host offset (x = 62 - (cluster_bits - 8))."""
    return 62 - (cluster_bits - 8)


def decode_compressed(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host offset, byte length upper bound) of a compressed L2 entry."""
    x = compressed_offset_bits(cluster_bits)
    offset = entry & ((1 << x) - 1)
    nb_sectors = ((entry >> x) & ((1 << (cluster_bits - 8)) - 1)) + 1
    # data spans from offset to the end of the last 512-byte sector
    length = nb_sectors * 512 - (offset & 511)
    return offset, length


def encode_compressed(host_offset: int, length: int, cluster_bits: int) -> int:
    """Build a compressed L2 entry for ``length`` bytes at ``host_offset``."""
    x = compressed_offset_bits(cluster_bits)
    nb_sectors = ((host_offset + length - 1) >> 9) - (host_offset >> 9)
    return OFLAG_COMPRESSED | (nb_sectors << x) | host_offset


# --- the header as a record ----------------------------------------------


@dataclasses.dataclass
class Extension:
    """A header extension kept as raw bytes (unknown ones are preserved)."""

    type: int
    data: bytes


def _c_string(data: bytes) -> str:
    """A name QEMU reads into a C string: it ends at the first NUL byte."""
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclasses.dataclass
class Header:
    """The qcow2 header and its extensions."""

    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LENGTH
    compression_type: int = 0
    #: bytes between the fixed fields and header_length we don't know (kept)
    extra_header: bytes = b""
    extensions: list[Extension] = dataclasses.field(default_factory=list)
    backing_file: str = ""

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    def extension(self, ext_type: int) -> Extension | None:
        for ext in self.extensions:
            if ext.type == ext_type:
                return ext
        return None

    def set_extension(self, ext_type: int, data: bytes | None) -> None:
        """Set (or with None remove) an extension, keeping the others' order."""
        for i, ext in enumerate(self.extensions):
            if ext.type == ext_type:
                if data is None:
                    del self.extensions[i]
                else:
                    ext.data = data
                return
        if data is not None:
            self.extensions.append(Extension(ext_type, data))

    @property
    def backing_format(self) -> str | None:
        ext = self.extension(Ext.BACKING_FORMAT)
        return _c_string(ext.data) if ext else None

    @property
    def data_file(self) -> str | None:
        ext = self.extension(Ext.DATA_FILE)
        return _c_string(ext.data) if ext else None

    # --- parse ---------------------------------------------------------

    @classmethod
    def parse(cls, buf: bytes) -> Header:
        """Parse the header, its extensions and the backing file name.

        ``buf`` must hold at least the first cluster (or the whole file if
        shorter). Raises ImageCorrupt / UnsupportedFeature with QEMU's words.
        """
        if len(buf) < V3_HEADER_LENGTH + EXT_HEADER.size:
            # QEMU reads the header with zero fill past the end of the file
            buf = bytes(buf).ljust(V3_HEADER_LENGTH + EXT_HEADER.size, b"\0")
        fields = dict(zip(HEADER_V2_FIELDS, HEADER_V2.unpack_from(buf, 0), strict=True))
        if fields.pop("magic") != MAGIC:
            raise ImageCorrupt("Image is not in qcow2 format")
        version = fields["version"]
        if version < 2 or version > 3:
            raise UnsupportedFeature(f"Unsupported qcow2 version {version}")
        hdr = cls(**fields)
        if version == 2:
            hdr.incompatible_features = 0
            hdr.compatible_features = 0
            hdr.autoclear_features = 0
            hdr.refcount_order = 4
            hdr.header_length = V2_HEADER_LENGTH
        else:
            if len(buf) < V3_HEADER_LENGTH_MIN:
                raise ImageCorrupt("qcow2 header exceeds cluster size")
            v3 = dict(
                zip(HEADER_V3_FIELDS, HEADER_V3.unpack_from(buf, V2_HEADER_LENGTH), strict=True)
            )
            for key, value in v3.items():
                setattr(hdr, key, value)
            if hdr.header_length < V3_HEADER_LENGTH_MIN:
                raise ImageCorrupt("qcow2 header too short")
        if not MIN_CLUSTER_BITS <= hdr.cluster_bits <= MAX_CLUSTER_BITS:
            raise ImageCorrupt(f"Unsupported cluster size: 2^{hdr.cluster_bits}")
        cluster_size = hdr.cluster_size
        if hdr.header_length > cluster_size:
            raise ImageCorrupt("qcow2 header exceeds cluster size")
        if len(buf) < hdr.header_length:
            raise ImageCorrupt("Could not read qcow2 header: Input/output error")
        if hdr.header_length > V3_HEADER_LENGTH_MIN:
            hdr.compression_type = buf[COMPRESSION_TYPE_OFFSET]
            hdr.extra_header = bytes(buf[COMPRESSION_TYPE_OFFSET + 1 : hdr.header_length])
        if hdr.refcount_order > MAX_REFCOUNT_ORDER:
            raise ImageCorrupt("Reference count entry width too large; may not exceed 64 bits")
        hdr._parse_extensions(buf)
        if hdr.backing_file_offset:
            end = hdr.backing_file_offset + hdr.backing_file_size
            if hdr.backing_file_size > MAX_BACKING_FILE_NAME or end > cluster_size:
                raise ImageCorrupt("Backing file name too long")
            if end > len(buf):
                raise ImageCorrupt("Could not read backing file name: Input/output error")
            # QEMU keeps the name as a C string: it ends at the first NUL byte
            raw = bytes(buf[hdr.backing_file_offset : end]).split(b"\0", 1)[0]
            hdr.backing_file = raw.decode("utf-8", "surrogateescape")
        return hdr

    def _parse_extensions(self, buf: bytes) -> None:
        offset = self.header_length
        end = self.backing_file_offset if self.backing_file_offset else self.cluster_size
        end = min(end, self.cluster_size)
        while offset < end:
            if offset + EXT_HEADER.size > min(end, len(buf)):
                raise ImageCorrupt("Invalid header extension")
            ext_type, length = EXT_HEADER.unpack_from(buf, offset)
            offset += EXT_HEADER.size
            if ext_type == Ext.END:
                return
            if length > end - offset or offset + length > len(buf):
                raise ImageCorrupt("Invalid header extension")
            self.extensions.append(Extension(ext_type, bytes(buf[offset : offset + length])))
            offset += (length + 7) & ~7

    # --- pack ----------------------------------------------------------

    def pack(self) -> bytes:
        """The header, extensions and backing file name, as QEMU lays them out.

        Sets ``backing_file_offset``/``backing_file_size`` to where the name
        lands. Raises UnsupportedFeature if it does not fit in one cluster.
        """
        fixed_v2 = [getattr(self, name) for name in HEADER_V2_FIELDS[1:]]
        parts: list[bytes] = []
        if self.version >= 3:
            header_length = max(self.header_length, V3_HEADER_LENGTH)
            tail = bytes([self.compression_type]) + self.extra_header
            tail = tail[: header_length - V3_HEADER_LENGTH_MIN].ljust(
                header_length - V3_HEADER_LENGTH_MIN, b"\0"
            )
        else:
            header_length = V2_HEADER_LENGTH
            tail = b""
        ext_bytes = bytearray()
        for ext in self.extensions:
            ext_bytes += EXT_HEADER.pack(ext.type, len(ext.data)) + ext.data
            ext_bytes += b"\0" * (-len(ext.data) % 8)
        ext_bytes += EXT_HEADER.pack(Ext.END, 0)
        name = self.backing_file.encode("utf-8", "surrogateescape")
        if name:
            self.backing_file_offset = header_length + len(ext_bytes)
            self.backing_file_size = len(name)
        else:
            self.backing_file_offset = 0
            self.backing_file_size = 0
        fixed_v2 = [getattr(self, n) for n in HEADER_V2_FIELDS[1:]]
        parts.append(HEADER_V2.pack(MAGIC, *fixed_v2))
        if self.version >= 3:
            self.header_length = header_length
            parts.append(HEADER_V3.pack(*[getattr(self, n) for n in HEADER_V3_FIELDS]))
            parts.append(tail)
        parts.append(bytes(ext_bytes))
        parts.append(name)
        out = b"".join(parts)
        if len(out) > self.cluster_size:
            raise UnsupportedFeature(
                "Header extensions and backing file name do not fit in the first cluster"
            )
        return out


def feature_table_bytes() -> bytes:
    """The feature name table extension body QEMU writes."""
    return b"".join(
        FEATURE_ENTRY.pack(kind, bit, name.encode()) for kind, bit, name in FEATURE_NAMES
    )


# --- snapshot table (spec section "Snapshots") ----------------------------
SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")
SNAPSHOT_HEADER_FIELDS = (
    "l1_table_offset",
    "l1_size",
    "id_str_size",
    "name_size",
    "date_sec",
    "date_nsec",
    "vm_clock_nsec",
    "vm_state_size",
    "extra_data_size",
)
SNAPSHOT_EXTRA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount


# --- refcount blocks ----------------------------------------------------------


def get_refcount(block: bytes | bytearray, index: int, order: int) -> int:
    """Refcount ``index`` of a refcount block with entries of 2^order bits.

    Sub-byte entries are packed least significant bits first, as QEMU does.
    """
    if order >= 3:
        width = 1 << (order - 3)
        start = index * width
        return int.from_bytes(block[start : start + width], "big")
    bits = 1 << order
    per_byte = 8 // bits
    byte = block[index // per_byte]
    shift = (index % per_byte) * bits
    return (byte >> shift) & ((1 << bits) - 1)


def set_refcount(block: bytearray, index: int, order: int, value: int) -> None:
    """Set refcount ``index`` of a refcount block (see :func:`get_refcount`)."""
    if order >= 3:
        width = 1 << (order - 3)
        start = index * width
        block[start : start + width] = value.to_bytes(width, "big")
        return
    bits = 1 << order
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    i = index // per_byte
    block[i] = (block[i] & ~mask) | ((value << shift) & mask)
