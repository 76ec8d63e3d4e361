"""The qcow2 format driver (QEMU's block/qcow2.c): open, create, I/O, resize, info.

Metadata ordering (crash safety): data is written before the L2 entry that
points to it; refcount blocks are written before L2 tables and L1 entries that
reference newly allocated clusters (the L2 cache's ``before_write``); when
clusters are freed, the L2/L1 tables that dropped them are written before the
refcounts are decreased. A kill at any instant leaves at most leaked clusters.
"""

from __future__ import annotations

import errno
import struct
import sys
import threading
from array import array
from typing import Any

from ...errors import strerror
from ...options import parse_bool
from ...sizes import parse_size
from ..buffers import aligned_bytearray
from ..driver import (
    FIX_ERRORS,
    FIX_LEAKS,
    BlockDriver,
    CheckResult,
    CreateOption,
    ProgressFn,
    Status,
    StatusRun,
    read_backing,
)
from ..errors import BlockError, CloseError, ImageCorrupt, InvalidRequest, UnsupportedFeature
from . import compress as _compress
from .cache import table_to_bytes
from .cluster import (
    BITMAP_ALL_ALLOC,
    BITMAP_ALL_ZERO,
    COMPRESSED,
    NORMAL,
    UNALLOC,
    UNALLOC_ALLOC,
    ZERO_ALLOC,
    ZERO_PLAIN,
    ClusterMap,
    Run,
    same_entries,
)
from .layout import (
    FEATURE_ENTRY,
    L2E_OFFSET_MASK,
    MAGIC,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    QCOW_MAX_L1_SIZE,
    QCOW_MAX_REFTABLE_SIZE,
    QCOW_MAX_SNAPSHOTS,
    Autoclear,
    Compat,
    CompressionType,
    Ext,
    FeatureType,
    Header,
    Incompat,
    decode_compressed,
    encode_compressed,
    feature_table_bytes,
)
from .refcount import Refcounts

#: incompatible features this driver handles
SUPPORTED_INCOMPAT = int(Incompat.DIRTY | Incompat.CORRUPT | Incompat.COMPRESSION | Incompat.EXTL2)
#: autoclear features we keep valid (bitmaps: maintained by .bitmap)
SUPPORTED_AUTOCLEAR = int(Autoclear.BITMAPS)

#: QEMU's default L2 cache limit (32 MiB) and refcount cache share (1/4)
L2_CACHE_BYTES = 32 << 20
PREALLOC_MODES = ("off", "metadata", "falloc", "full")

# header field offsets (spec section "Header")
OFF_SIZE = 24
OFF_L1 = 36  # l1_size (4) + l1_table_offset (8)
OFF_INCOMPAT = 72

_ZERO_BUF = bytes(1 << 20)


def _size_opt(options: dict[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    try:
        return parse_size(str(value))
    except (ValueError, OverflowError):
        raise BlockError(
            f"Parameter '{name}' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        ) from None


def _is_pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


#: the status flags of data and of allocated zeroes with a host offset (the
#: IntFlag ``|`` runs Python code; block status is asked once per extent)
_DATA_AT = Status.DATA | Status.OFFSET_VALID
_ZERO_AT = Status.ZERO | Status.OFFSET_VALID
_LAZY_REFCOUNTS = int(Compat.LAZY_REFCOUNTS)


class _FileData:
    """The data of a guest write that lie in a host file (``write_from``):
    ``length`` bytes at ``offset`` of the protocol node ``node``. A slice is
    the sub-range (no I/O); :func:`_in_memory` reads it."""

    __slots__ = ("node", "offset", "length")

    def __init__(self, node: BlockDriver, offset: int, length: int) -> None:
        self.node = node
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> _FileData:
        start, stop, _ = key.indices(self.length)
        return _FileData(self.node, self.offset + start, max(0, stop - start))


def _in_memory(data: Any) -> memoryview:
    """``data`` as bytes in memory (a :class:`_FileData` is read)."""
    if type(data) is _FileData:
        return memoryview(data.node.read(data.offset, data.length))
    return data


def _put(file: BlockDriver, host: int, data: Any) -> None:
    """Write guest data at ``host`` of the image file: file to file for a
    :class:`_FileData`, else from memory."""
    file.debug_event("write_aio")
    if type(data) is _FileData:
        file.copy_from(host, data.node, data.offset, data.length)  # type: ignore[attr-defined]
    else:
        file.write(host, data)


class Qcow2(BlockDriver):
    """A qcow2 image over a protocol node."""

    format_name = "qcow2"
    supports_backing = True
    has_zero_init = True
    create_options = (
        CreateOption("backing_file", "string", "File name of a base image"),
        CreateOption("backing_fmt", "string", "Image format of the base image"),
        CreateOption("cluster_size", "size", "qcow2 cluster size", "65536"),
        CreateOption("compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])"),
        CreateOption(
            "compression_type",
            "string",
            "Compression method used for image cluster compression",
            "zlib",
        ),
        CreateOption("data_file", "string", "File name of an external data file"),
        CreateOption(
            "data_file_raw", "bool", "The external data file must stay valid as a raw image"
        ),
        CreateOption("encrypt.cipher-alg", "string", "Name of encryption cipher algorithm"),
        CreateOption("encrypt.cipher-mode", "string", "Name of encryption cipher mode"),
        CreateOption(
            "encrypt.format", "string", "Encrypt the image, format choices: 'aes', 'luks'"
        ),
        CreateOption("encrypt.hash-alg", "string", "Name of encryption hash algorithm"),
        CreateOption("encrypt.iter-time", "number", "Time to spend in PBKDF in milliseconds"),
        CreateOption("encrypt.ivgen-alg", "string", "Name of IV generator algorithm"),
        CreateOption("encrypt.ivgen-hash-alg", "string", "Name of IV generator hash algorithm"),
        CreateOption(
            "encrypt.key-secret", "string", "ID of secret providing qcow AES key or LUKS passphrase"
        ),
        CreateOption(
            "encryption",
            "bool",
            "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        ),
        CreateOption("extended_l2", "bool", "Extended L2 tables", "off"),
        CreateOption("lazy_refcounts", "bool", "Postpone refcount updates", "off"),
        CreateOption(
            "preallocation",
            "string",
            "Preallocation mode (allowed values: off, metadata, falloc, full)",
        ),
        CreateOption("refcount_bits", "number", "Width of a reference count entry in bits", "16"),
        CreateOption("size", "size", "Virtual disk size"),
    )

    def __init__(self, file: BlockDriver, header: Header, *, read_only: bool) -> None:
        super().__init__(file.filename, read_only=read_only)
        self.file = file
        self.header = header
        self.total_size = header.size
        self.cluster_bits = header.cluster_bits
        self.cs = 1 << header.cluster_bits
        self.extended = bool(header.incompatible_features & Incompat.EXTL2)
        self.compression_type = header.compression_type
        self._reported_corrupt = False
        self._broken = False
        self._dirty_on_disk = bool(header.incompatible_features & Incompat.DIRTY)
        self._meta_sets: tuple[set[int], set[int]] | None = None
        self._refs_version = -1
        #: cache=unsafe: no write barriers (qemu-img convert -t unsafe)
        self.no_flush = False
        self._last_compressed: tuple[int, bytes] | None = None
        #: persistent dirty bitmaps (.bitmap.BitmapSet), loaded on a read-write open
        self.bitmaps: Any = None
        #: guest ranges [start, end) of reserved writes whose data is in flight
        self._inflight: list[tuple[int, int]] = []
        self._inflight_done = threading.Condition(self.lock)
        #: threads waiting on _inflight_done (a write ending wakes none when 0)
        self._inflight_waiters = 0
        l2_tables = max(16, L2_CACHE_BYTES // self.cs)
        self.map = ClusterMap(file, self.cluster_bits, self.extended, self._corrupt, l2_tables)
        self.refs = Refcounts(
            file,
            self.cluster_bits,
            header.refcount_order,
            self._corrupt,
            max(16, L2_CACHE_BYTES // 4 // self.cs),
        )
        self.refs.on_table_moved = self._reftable_moved  # type: ignore[method-assign]
        self.map.cache.before_write = self._before_l2_write
        #: dropped references wait in the refcount cache: the L2/L1 tables that
        #: dropped them must reach the disk first (set by _release)
        self._l2_before_refs = False
        #: host ranges freed by a discard, punched once the L2 tables are on disk
        self._pending_discards: list[tuple[int, int]] = []
        self._wire_refs()
        self.backing_filename = header.backing_file
        self.backing_format = header.backing_format
        #: encryption (..crypto.qcow2_luks.Crypto) when the header sets crypt_method
        self.crypto: Any = None

    # ------------------------------------------------------------------
    # probe / open

    @classmethod
    def probe(cls, header: bytes, filename: str) -> int:
        return 100 if header[:4] == MAGIC else 0

    @classmethod
    def open(cls, file: BlockDriver, options: dict[str, Any], *, read_only: bool) -> Qcow2:
        """Open the qcow2 image on the protocol node ``file`` (qcow2_do_open)."""
        hdr = cls._read_header(file)
        drv = cls(file, hdr, read_only=read_only)
        if str(options.get("cache.no-flush", "off")) in ("on", "true", "True", "1"):
            drv.no_flush = True
            drv.refs.sync = lambda: None
        drv._validate_and_load()
        if hdr.crypt_method:
            from ..crypto.qcow2_luks import open_crypto

            drv.crypto = open_crypto(drv, options, read_only)
        if not read_only:
            drv._open_rw_fixups()
            from .bitmap import open_bitmaps

            open_bitmaps(drv)
        return drv

    @staticmethod
    def _read_header(file: BlockDriver) -> Header:
        size = file.size
        buf = file.read(0, min(size, 65536)) if size else b""
        if len(buf) >= 24 and buf[:4] == MAGIC:
            cluster_bits = struct.unpack_from(">I", buf, 20)[0]
            if MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
                want = 1 << cluster_bits
                if want > len(buf) and size > len(buf):
                    buf = file.read(0, min(size, want))
        try:
            return Header.parse(buf)
        except struct.error:
            raise ImageCorrupt("Image is not in qcow2 format") from None

    def _validate_and_load(self) -> None:
        hdr = self.header
        cs = self.cs
        unknown = hdr.incompatible_features & ~SUPPORTED_INCOMPAT
        if hdr.incompatible_features & Incompat.DATA_FILE and not unknown & ~int(
            Incompat.DATA_FILE
        ):
            raise UnsupportedFeature("qcow2 external data files are not supported yet")
        if unknown:
            raise UnsupportedFeature(
                "Unsupported qcow2 feature(s): " + self._feature_names(unknown)
            )
        if hdr.incompatible_features & Incompat.CORRUPT and not self.read_only:
            raise InvalidRequest(
                "qcow2: Image is corrupt; cannot be opened read/write", errno.EACCES
            )
        if hdr.version >= 3 and hdr.refcount_order > 6:
            raise ImageCorrupt("Reference count entry width too large; may not exceed 64 bits")
        if hdr.compression_type not in (CompressionType.ZLIB, CompressionType.ZSTD):
            raise UnsupportedFeature("qcow2: unknown compression type: %u" % hdr.compression_type)
        if hdr.compression_type != CompressionType.ZLIB and not (
            hdr.incompatible_features & Incompat.COMPRESSION
        ):
            raise ImageCorrupt(
                "qcow2: Compression type incompatible feature bit must be set if compression "
                "type is not zlib"
            )
        if hdr.crypt_method > 2:
            raise UnsupportedFeature("Unsupported encryption method: %d" % hdr.crypt_method)
        max_reftable_clusters = QCOW_MAX_REFTABLE_SIZE // cs
        if hdr.refcount_table_clusters > max_reftable_clusters:
            raise ImageCorrupt("Reference count table too large")
        if hdr.refcount_table_clusters == 0:
            raise ImageCorrupt("Image does not contain a reference count table")
        self._validate_table(
            hdr.refcount_table_offset, hdr.refcount_table_clusters, cs, "Reference count table"
        )
        if hdr.nb_snapshots > QCOW_MAX_SNAPSHOTS:
            raise ImageCorrupt("Too many snapshots")
        if hdr.nb_snapshots:
            self._validate_table(hdr.snapshots_offset, 1, 1, "Snapshot table")
        if hdr.l1_size > QCOW_MAX_L1_SIZE // 8:
            raise ImageCorrupt("Active L1 table too large")
        l1_needed = self._size_to_l1(hdr.size)
        if l1_needed > 0x7FFFFFFF:
            raise ImageCorrupt("Image is too big")
        if hdr.l1_size < l1_needed:
            raise ImageCorrupt("L1 table is too small")
        if hdr.l1_size:
            self._validate_table(hdr.l1_table_offset, hdr.l1_size, 8, "Active L1 table")
        self.refs.load_table(hdr.refcount_table_offset, hdr.refcount_table_clusters)
        self.map.load_l1(hdr.l1_table_offset, hdr.l1_size)

    def _validate_table(self, offset: int, entries: int, entry_len: int, name: str) -> None:
        size = entries * entry_len
        if offset & (self.cs - 1) or offset + size > (1 << 63) - 1:
            raise ImageCorrupt(f"{name} offset invalid")

    def _feature_names(self, mask: int) -> str:
        names: list[str] = []
        table = self.header.extension(Ext.FEATURE_TABLE)
        if table is not None:
            data = table.data
            for pos in range(0, len(data) - FEATURE_ENTRY.size + 1, FEATURE_ENTRY.size):
                kind, bit, raw = FEATURE_ENTRY.unpack_from(data, pos)
                if kind == FeatureType.INCOMPATIBLE and bit < 64 and mask & (1 << bit):
                    names.append(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
                    mask &= ~(1 << bit)
        if mask:
            names.append("Unknown incompatible feature: %x" % mask)
        return ", ".join(names)

    def _size_to_l1(self, size: int) -> int:
        shift = self.map.l1_shift if hasattr(self, "map") else 0
        return -(-size // (1 << shift))

    def _open_rw_fixups(self) -> None:
        hdr = self.header
        if hdr.incompatible_features & Incompat.DIRTY:
            self._repair_dirty()
        if hdr.autoclear_features & ~SUPPORTED_AUTOCLEAR:
            hdr.autoclear_features &= SUPPORTED_AUTOCLEAR
            self._write_header()

    def _repair_dirty(self) -> None:
        """Rebuild refcounts of an image left dirty with lazy refcounts, then clear the bit."""
        try:
            from .check import check_image
        except ImportError:
            check_image = None
        if check_image is not None:
            result = check_image(self.file, self.header, FIX_LEAKS | FIX_ERRORS)
            if result.corruptions and result.corruptions > result.corruptions_fixed:
                raise ImageCorrupt("Could not repair dirty image: metadata still corrupt")
            self._reload()
        self.header.incompatible_features &= ~int(Incompat.DIRTY)
        self._write_incompat()
        self._dirty_on_disk = False

    # ------------------------------------------------------------------
    # header

    def _ordered_extensions(self) -> None:
        """Put the extensions in the order qcow2_update_header writes them."""
        hdr = self.header
        order = [Ext.BACKING_FORMAT, Ext.DATA_FILE, Ext.CRYPTO, Ext.FEATURE_TABLE, Ext.BITMAPS]
        known = {int(t): hdr.extension(t) for t in order}
        if hdr.version >= 3 and self.cs >= 8192:  # as qemu-img 7.2 does
            if known[Ext.FEATURE_TABLE] is None:
                hdr.set_extension(Ext.FEATURE_TABLE, feature_table_bytes())
                known[Ext.FEATURE_TABLE] = hdr.extension(Ext.FEATURE_TABLE)
        else:
            known[Ext.FEATURE_TABLE] = None
        rest = [e for e in hdr.extensions if e.type not in known]
        hdr.extensions = [known[int(t)] for t in order if known[int(t)] is not None] + rest  # type: ignore[misc]

    def _write_header(self) -> None:
        """Rewrite the whole first cluster (qcow2_update_header) and sync."""
        self._ordered_extensions()
        hdr = self.header
        data = hdr.pack()
        if len(data) >= self.cs and hdr.extension(Ext.FEATURE_TABLE) is not None:
            # QEMU leaves the feature table out when it does not fit
            hdr.set_extension(Ext.FEATURE_TABLE, None)
            data = hdr.pack()
        assert self.file is not None
        self.file.write(0, data + bytes(self.cs - len(data)))
        self._sync()

    def _write_incompat(self) -> None:
        if self.header.version < 3:
            return
        assert self.file is not None
        self.file.write(OFF_INCOMPAT, struct.pack(">Q", self.header.incompatible_features))
        self._sync()

    def _reftable_moved(self, offset: int, clusters: int) -> None:
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters
        self._meta_sets = None

    def _reload(self) -> None:
        """Drop all caches and re-read header, L1 and refcount table from disk."""
        assert self.file is not None
        hdr = self._read_header(self.file)
        self.header = hdr
        self.total_size = hdr.size
        self.refs.load_table(hdr.refcount_table_offset, hdr.refcount_table_clusters)
        self.map.cache.clear()
        self.map.load_l1(hdr.l1_table_offset, hdr.l1_size)
        self._meta_sets = None
        self._last_compressed = None
        self._l2_before_refs = False
        self._pending_discards = []

    # ------------------------------------------------------------------
    # corruption

    def _corrupt(self, message: str) -> None:
        """Report corruption as qcow2_signal_corruption does and raise ImageCorrupt."""
        fatal = not self.read_only
        if not self._reported_corrupt:
            if fatal:
                sys.stderr.write(
                    f"qcow2: Marking image as corrupt: {message}; "
                    "further corruption events will be suppressed\n"
                )
            else:
                sys.stderr.write(
                    f"qcow2: Image is corrupt: {message}; "
                    "further non-fatal corruption events will be suppressed\n"
                )
            self._reported_corrupt = True
        if fatal and not self._broken:
            self._broken = True
            self.header.incompatible_features |= Incompat.CORRUPT
            try:
                self._write_incompat()
            except BlockError:
                pass
        raise ImageCorrupt(message)

    def _check_usable(self) -> None:
        if self._broken:
            raise ImageCorrupt("Image is corrupt")
        if self.header.crypt_method and (self.crypto is None or self.crypto.missing):
            raise UnsupportedFeature(
                self.crypto.missing if self.crypto else "qcow2 encryption is not set up"
            )

    def _metadata_sets(self) -> tuple[set[int], set[int]]:
        """Host offsets of the L2 tables and refcount blocks, kept up to date cheaply."""
        if self._meta_sets is None:
            self._meta_sets = (
                {e & L2E_OFFSET_MASK for e in self.map.l1 if e & L2E_OFFSET_MASK},
                set(),
            )
            self._refs_version = -1
        if self._refs_version != self.refs.version:
            self._meta_sets = (self._meta_sets[0], self.refs.block_offsets())
            self._refs_version = self.refs.version
        return self._meta_sets

    def _overlap_check(self, offset: int, length: int) -> None:
        """Refuse to write guest data over metadata (qcow2_pre_write_overlap_check)."""
        cs = self.cs
        end = offset + length
        if offset < cs:
            self._corrupt("Preventing invalid write on metadata (overlaps with qcow2_header)")
        l1_start = self.map.l1_offset
        if len(self.map.l1) and offset < l1_start + 8 * len(self.map.l1) and l1_start < end:
            self._corrupt("Preventing invalid write on metadata (overlaps with active L1 table)")
        rt = self.refs.table_offset
        if offset < rt + 8 * self.refs.table_size and rt < end:
            self._corrupt("Preventing invalid write on metadata (overlaps with refcount table)")
        l2s, rbs = self._metadata_sets()
        for host in range(offset & ~(cs - 1), end, cs):
            if host in l2s:
                self._corrupt(
                    "Preventing invalid write on metadata (overlaps with active L2 table)"
                )
            if host in rbs:
                self._corrupt("Preventing invalid write on metadata (overlaps with refcount block)")

    # ------------------------------------------------------------------
    # properties / info

    @property
    def cluster_size(self) -> int:
        return self.cs

    @property
    def dirty(self) -> bool:
        return bool(self.header.incompatible_features & Incompat.DIRTY)

    @property
    def lazy_refcounts(self) -> bool:
        # int arithmetic: IntFlag's ``&`` runs Python code (asked per write)
        return bool(int(self.header.compatible_features) & _LAZY_REFCOUNTS)

    @property
    def encrypted(self) -> bool:
        return bool(self.header.crypt_method)

    def specific_info(self) -> dict[str, Any]:
        hdr = self.header
        ctype = "zstd" if hdr.compression_type == CompressionType.ZSTD else "zlib"
        if hdr.version < 3:
            v2 = {"compat": "0.10", "compression-type": ctype, "refcount-bits": hdr.refcount_bits}
            if self.crypto is not None:
                from ..crypto.qcow2_luks import info as crypto_info

                v2["encrypt"] = crypto_info(self.crypto)
            return v2
        info: dict[str, Any] = {
            "compat": "1.1",
            "compression-type": ctype,
            "lazy-refcounts": self.lazy_refcounts,
        }
        bitmaps = self._bitmap_info()
        if bitmaps is not None:
            info["bitmaps"] = bitmaps
        info["refcount-bits"] = hdr.refcount_bits
        if hdr.data_file is not None:
            info["data-file"] = hdr.data_file
            info["data-file-raw"] = bool(hdr.autoclear_features & Autoclear.DATA_FILE_RAW)
        if self.crypto is not None:
            from ..crypto.qcow2_luks import info as crypto_info

            info["encrypt"] = crypto_info(self.crypto)
        info["corrupt"] = bool(hdr.incompatible_features & Incompat.CORRUPT)
        info["extended-l2"] = self.extended
        return info

    def _bitmap_info(self) -> list[dict[str, Any]] | None:
        ext = self.header.extension(Ext.BITMAPS)
        if ext is None or not self.header.autoclear_features & Autoclear.BITMAPS:
            return None
        if len(ext.data) < 24:
            return None
        nb, _, dir_size, dir_offset = struct.unpack_from(">IIQQ", ext.data)
        if dir_size > (64 << 20):
            return None
        assert self.file is not None
        buf = self.file.read(dir_offset, dir_size)
        out: list[dict[str, Any]] = []
        pos = 0
        for _ in range(nb):
            if pos + 24 > len(buf):
                break
            _, _, flags, _, gran_bits, name_size, extra = struct.unpack_from(">QIIBBHI", buf, pos)
            pos += 24 + extra
            name = buf[pos : pos + name_size].decode("utf-8", "replace")
            pos = (pos + name_size + 7) & ~7
            names = []
            if flags & 1:
                names.append("in-use")
            if flags & 2:
                names.append("auto")
            out.append({"flags": names, "name": name, "granularity": 1 << gran_bits})
        return out

    def allocated_file_size(self) -> int | None:
        assert self.file is not None
        return self.file.allocated_file_size()

    # ------------------------------------------------------------------
    # cache flushing and ordering

    def _before_l2_write(self) -> None:
        if not self.lazy_refcounts and not self._l2_before_refs:
            if self.refs.write_blocks():
                self._sync()

    def _wire_refs(self) -> None:
        """Hook the refcount layer into the cache ordering (again after amend
        gave the image a new one)."""
        refs = self.refs
        if refs.before_increase != self._flush_l2_dependency:
            refs.before_increase = self._flush_l2_dependency  # type: ignore[method-assign]
            refs.cache.before_write = self._flush_l2_dependency

    def _flush_l2_dependency(self) -> None:
        """Before refcount blocks holding dropped references are written, or before
        any refcount grows again (a freed cluster may be reused): write the L2
        tables and L1 entries that dropped the references, with a barrier
        (QEMU's qcow2_cache_flush_dependency). Then punch the queued holes."""
        if not self._l2_before_refs:
            return
        # the flag stays set while the L2 tables go out, so that their own
        # dependency hook does not write the refcount blocks first
        self.map.cache.write_dirty()
        self._sync()
        if self.map.write_l1():
            self._sync()
        self._l2_before_refs = False
        pending, self._pending_discards = self._pending_discards, []
        for start, end in pending:
            self._discard_free(start, end)

    def _sync(self) -> None:
        """Write barrier between metadata groups (skipped with cache.no-flush)."""
        if not self.no_flush:
            assert self.file is not None
            self.file.flush()

    def _mark_dirty(self) -> None:
        """With lazy refcounts, set the dirty bit on disk before the first metadata update."""
        if self.lazy_refcounts and not self._dirty_on_disk:
            self.header.incompatible_features |= Incompat.DIRTY
            self._write_incompat()
            self._dirty_on_disk = True

    def _write_metadata(self, sync: bool, trailing: bool = True) -> None:
        """Write dirty metadata: refcount blocks, then L2 tables, then L1 entries,
        with barriers in between when ``sync``; ``trailing=False`` leaves out the
        barrier after the last group written (the caller flushes the file next)."""
        assert self.file is not None
        m = self.map
        wrote = self.refs.write_blocks()
        if wrote and sync and (trailing or m.cache.dirty or m.l1_dirty):
            self._sync()
        wrote = m.cache.write_dirty()
        if wrote and sync and (trailing or m.l1_dirty):
            self._sync()
        m.write_l1()

    def _flush(self) -> None:
        # qcow2_co_flush_to_os: write the caches; the flush of the file that
        # makes them durable follows in BlockDriver.flush
        with self.lock:
            if self.closed or self._broken:
                return
            self._write_metadata(sync=True, trailing=False)

    def _close(self) -> None:
        """qcow2_inactivate: flush the L2 and refcount caches, each reported when it
        fails (CloseError), and mark the image clean only if both succeeded."""
        with self.lock:
            if not self.read_only and not self._broken:
                if self.bitmaps is not None:
                    self.bitmaps.store()
                reports: list[str] = []
                first: BlockError | None = None
                for name, flush_cache in (
                    ("L2 table", self._flush_l2_cache),
                    ("refcount block", self._flush_refcount_cache),
                ):
                    try:
                        flush_cache()
                    except BlockError as exc:
                        first = first or exc
                        code = exc.errno or errno.EIO
                        reports.append(f"Failed to flush the {name} cache: {strerror(code)}")
                if first is not None:
                    raise CloseError(first.message, first.errno, reports)
                if self._dirty_on_disk:
                    self.header.incompatible_features &= ~int(Incompat.DIRTY)
                    self._write_incompat()
                    self._dirty_on_disk = False

    def _flush_l2_cache(self) -> None:
        """qcow2_cache_flush(l2_table_cache): the refcount blocks it depends on, the
        L2 tables (and L1 entries), then a flush of the file."""
        if self.refs.write_blocks():
            self._sync()
        self.map.cache.write_dirty()
        self.map.write_l1()
        self._sync()

    def _flush_refcount_cache(self) -> None:
        self.refs.write_blocks()
        self._sync()

    def _release(self, entries: list[int], discard: bool = False) -> None:
        """Drop the references held by old L2 entries (or bare host offsets) in the
        refcount cache; the tables that dropped them are written before the
        refcount blocks (see _flush_l2_dependency), so a crash leaks at most."""
        if not entries:
            return
        assert self.file is not None
        # QEMU's update_refcount with a decrease: the refcount cache comes to depend
        # on the L2 cache; increases the L2 tables depend on go out first
        # (qcow2_cache_set_dependency flushes the opposite dependency)
        deferred = not self.lazy_refcounts
        if deferred:
            self._wire_refs()
            if not self._l2_before_refs:
                if self.refs.write_blocks():
                    self._sync()
                self._l2_before_refs = True
        cs = self.cs
        ranges: list[list[int]] = []
        for entry in entries:
            if entry & OFLAG_COMPRESSED:
                offset, length = decode_compressed(entry, self.cluster_bits)
                self.refs.free(offset, length)
                continue
            host = entry & L2E_OFFSET_MASK
            if not host:
                continue
            if ranges and ranges[-1][1] == host:
                ranges[-1][1] = host + cs
            else:
                ranges.append([host, host + cs])
        for start, end in ranges:
            self.refs.free(start, end - start)
            if discard:
                if deferred:
                    self._pending_discards.append((start, end))
                else:
                    self._discard_free(start, end)
        self._last_compressed = None

    def _discard_free(self, start: int, end: int) -> None:
        """Punch holes in the host file for clusters whose refcount dropped to zero."""
        assert self.file is not None
        cs = self.cs
        run_start = None
        for host in range(start, end + cs, cs):
            free = host < end and self.refs.get(host >> self.cluster_bits) == 0
            if free and run_start is None:
                run_start = host
            elif not free and run_start is not None:
                self.file.discard(run_start, host - run_start)
                run_start = None

    # ------------------------------------------------------------------
    # reading

    def _pread(self, offset: int, length: int) -> bytes:
        out = aligned_bytearray(length)
        self._read_into(offset, memoryview(out))
        return bytes(out)

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Read ``len(buf)`` bytes at ``offset`` straight into ``buf``."""
        self._check_range(offset, len(buf))
        self._read_into(offset, buf)

    def _read_into(self, offset: int, out: memoryview, aligned: bool = False) -> None:
        """Guest read of ``len(out)`` bytes at ``offset``; ``out`` must start zeroed
        or be fully overwritten (unallocated and zero runs are filled here)."""
        if self.crypto is not None and not aligned and (offset | len(out)) & 511:
            # encrypted data is read in whole 512-byte sectors
            a = offset & ~511
            b = min((offset + len(out) + 511) & ~511, max(self.total_size, offset + len(out)))
            whole = bytearray(b - a)
            self._read_into(a, memoryview(whole), True)
            out[:] = whole[offset - a : offset - a + len(out)]
            return
        length = len(out)
        pos = 0
        file = self.file
        assert file is not None
        if length <= self.cs:
            # a short read of data clusters: straight there (a 4K random read
            # costs ~3 us less than through a list of runs)
            with self.lock:
                self._check_usable()
                host = self._host_run(offset, length, False)
            if host >= 0:
                self._read_host(host, out)
                return
        while pos < length:
            with self.lock:
                self._check_usable()
                runs = self.map.map(offset + pos, length - pos)
            for run in runs:
                view = out[run.start - offset : run.start - offset + run.length]
                kind = run.kind
                if kind == NORMAL:
                    self._read_host(run.host, view)
                    if self.crypto is not None:
                        self.crypto.decrypt_into(run.host, view, run.start)
                elif kind in (UNALLOC, UNALLOC_ALLOC):
                    if self.backing is None:
                        view[:] = _zeros(run.length)
                    else:
                        file.debug_event("read_backing_aio")
                        view[:] = read_backing(self, run.start, run.length)
                elif kind == COMPRESSED:
                    data = self._read_compressed(run.host)
                    coff = run.start & (self.cs - 1)
                    view[:] = data[coff : coff + run.length]
                else:
                    view[:] = _zeros(run.length)
                pos += run.length

    def _read_host(self, host: int, view: memoryview) -> None:
        """Fill ``view`` with the data file's bytes at ``host`` (no copy where
        the file node reads into a buffer)."""
        file = self.file
        assert file is not None
        file.debug_event("read_aio")
        readinto = getattr(file, "readinto", None)
        if readinto is not None:
            readinto(host, view)
        else:
            view[:] = file.read(host, len(view))

    def _read_compressed(self, entry: int) -> bytes:
        cached = self._last_compressed
        if cached is not None and cached[0] == entry:
            return cached[1]
        offset, length = decode_compressed(entry, self.cluster_bits)
        assert self.file is not None
        self.file.debug_event("read_compressed")
        raw = self.file.read(offset, length)
        data = _compress.decompress(raw, self.compression_type, self.cs)
        self._last_compressed = (entry, data)
        return data

    def _read_guest(self, offset: int, length: int) -> bytes:
        """Read guest data for copy-on-write; zeroes past the virtual size."""
        if length <= 0:
            return b""
        avail = max(0, min(length, self.total_size - offset))
        out = bytearray(length)
        if avail:
            self._read_into(offset, memoryview(out)[:avail])
        return bytes(out)

    # ------------------------------------------------------------------
    # writing

    def _l2_for_write(self, l1_index: int) -> tuple[array, int]:
        """The L2 table for ``l1_index``, allocated (or copied if shared) as needed."""
        m = self.map
        entry = m.l1[l1_index]
        old = m.l2_offset(l1_index)
        if old and entry & OFLAG_COPIED:
            if old < self.cs:
                self._corrupt("Preventing invalid write on metadata (overlaps with qcow2_header)")
            return m.cache.get(old), old
        self._mark_dirty()
        new = self.refs.alloc_clusters(self.cs)
        self._overlap_check(new, self.cs)
        table = array("Q", m.cache.get(old)) if old else array("Q", bytes(self.cs))
        m.cache.put_new(new, table)
        m.l1[l1_index] = new | OFLAG_COPIED
        m.l1_dirty.add(l1_index)
        if self._meta_sets is not None:
            self._meta_sets[0].discard(old)
            self._meta_sets[0].add(new)
        if old:
            self._release([old])
        return table, new

    def write_from(self, offset: int, src: BlockDriver, src_offset: int, length: int) -> None:
        """Guest write of ``length`` bytes at ``offset`` whose data are the bytes
        at ``src_offset`` of the protocol node ``src`` (a host file): whole
        clusters that go to host clusters are copied file to file by the
        kernel (the file node's ``copy_from``), without passing through
        Python buffers; the rest is read and written as by :meth:`write`."""
        if (
            self.crypto is not None
            or self.extended
            or getattr(self.file, "copy_from", None) is None
        ):
            self.write(offset, src.read(src_offset, length))
            return
        self.write(offset, _FileData(src, src_offset, length))  # type: ignore[arg-type]

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        mv: Any = data if type(data) is _FileData else memoryview(data).cast("B")
        length = len(mv)
        with self.lock:
            self._check_usable()
            # under the lock: marking is a read-modify-write of the bitmap bytes
            if self.bitmaps is not None:
                self.bitmaps.mark(offset, length)
            if self._inflight:
                self._wait_inflight(offset, length)
            host = self._host_run(offset, length, True) if type(mv) is memoryview else -1
            if host >= 0:
                # clusters this image owns, one run on the host: the data goes
                # to them without the lock (as QEMU's in-place writes), so
                # writes from several threads overlap; the range counts as in
                # flight until then, so a discard or zeroing of it waits
                self._inflight.append((offset, offset + length))
            else:
                self._write_locked(offset, mv, length)
                return
        file = self.file
        assert file is not None
        try:
            file.debug_event("write_aio")
            file.write(host, mv)
        finally:
            with self.lock:
                self._end_inflight(offset)

    def _write_locked(self, offset: int, mv: Any, length: int) -> None:
        """The general guest write (lock held): allocation, copy-on-write,
        encryption, one L2 table at a time."""
        shift = self.map.l1_shift
        if self.crypto is not None and (offset | length) & 511:
            # read-modify-write of the partial 512-byte sectors
            a = offset & ~511
            b = min((offset + length + 511) & ~511, max(self.total_size, offset + length))
            mv = memoryview(
                self._read_guest(a, offset - a)
                + bytes(mv)
                + self._read_guest(offset + length, b - offset - length)
            )
            offset, length = a, b - a
        pos = 0
        while pos < length:
            start = offset + pos
            n = min(length - pos, (((start >> shift) + 1) << shift) - start)
            self._write_chunk(start, mv[pos : pos + n])
            pos += n

    def _host_run(self, offset: int, length: int, owned: bool) -> int:
        """Where [offset, offset + length) is on the host if the bytes can be
        read or written there as they are (lock held): no encryption,
        standard L2 entries, inside one L2 table, every cluster allocated
        with data (not compressed, not zero; with ``owned``, for a write in
        place, also COPIED: this image's alone) and the clusters one
        contiguous host run; else -1 (the general path decides, and reports
        corruption)."""
        m = self.map
        if self.crypto is not None or self.extended or not length:
            return -1
        l1_index = offset >> m.l1_shift
        if (offset + length - 1) >> m.l1_shift != l1_index:
            return -1
        l2_offset = m.l2_offset(l1_index)
        cs = self.cs
        if l2_offset < cs or (owned and not m.l1[l1_index] & OFLAG_COPIED):
            return -1
        table = m.cache.get(l2_offset)
        cb = self.cluster_bits
        index = (offset >> cb) & (m.l2_entries - 1)
        entry = table[index]
        host = entry & L2E_OFFSET_MASK
        if (
            (owned and not entry & OFLAG_COPIED)
            or entry & (OFLAG_COMPRESSED | OFLAG_ZERO)
            or not host
            or host & (cs - 1)
        ):
            return -1
        count = ((offset + length - 1) >> cb) - (offset >> cb) + 1
        if count > 1 and same_entries(table, index, count, entry, cs) < count:
            return -1
        return host + (offset & (cs - 1))

    def _write_chunk(self, offset: int, data: memoryview) -> None:
        """Write within one L2 table: in place where we own the cluster, else allocate.

        With standard L2 entries and no encryption, the whole clusters of a
        request go by runs of entries (see :meth:`_write_whole_clusters`);
        the partial clusters at its ends take the general path."""
        cs = self.cs
        table, l2_offset = self._l2_for_write(offset >> self.map.l1_shift)
        end = offset + len(data)
        if self.extended or self.crypto is not None or len(data) < 2 * cs:
            self._write_clusters(table, l2_offset, offset, _in_memory(data))
            return
        a = (offset + cs - 1) & ~(cs - 1)
        b = end if end >= self.total_size else end & ~(cs - 1)
        if b - a < cs:
            self._write_clusters(table, l2_offset, offset, _in_memory(data))
            return
        if a > offset:
            self._write_clusters(table, l2_offset, offset, _in_memory(data[: a - offset]))
        self._write_whole_clusters(table, l2_offset, a, data[a - offset : b - offset])
        if b < end:
            self._write_clusters(table, l2_offset, b, _in_memory(data[b - offset :]))

    def _write_clusters(self, table: array, l2_offset: int, offset: int, data: memoryview) -> None:
        """The general write within one L2 table: per cluster, in place or
        allocated (copy-on-write of partial clusters and subclusters)."""
        cs = self.cs
        cb = self.cluster_bits
        m = self.map
        ext = self.extended
        words = m.words
        mask = m.l2_entries - 1
        end = offset + len(data)
        first = offset >> cb
        last = (end - 1) >> cb
        size = self.total_size
        ss = m.subcluster_size
        sb = m.subcluster_bits
        # per cluster: [index, s, e, ws, we, reuse_host, full_cow]
        plan: list[list[int]] = []
        for ci in range(first, last + 1):
            cstart = ci << cb
            s = max(offset, cstart) - cstart
            e = min(end, cstart + cs) - cstart
            idx = (ci & mask) * words
            entry = table[idx]
            host = entry & L2E_OFFSET_MASK
            reuse = host if host and entry & OFLAG_COPIED and not entry & OFLAG_COMPRESSED else 0
            if reuse and reuse & (cs - 1):
                self._corrupt(
                    "Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)"
                    % (reuse, l2_offset, idx // words)
                )
            full = 0
            limit = min(cs, size - cstart)
            if not ext:
                if reuse and not entry & OFLAG_ZERO:
                    ws, we = s, e
                else:
                    ws, we = 0, max(e, limit)
            else:
                alloc = table[idx + 1] & BITMAP_ALL_ALLOC
                if reuse:
                    ws = s if not s & (ss - 1) or alloc >> (s >> sb) & 1 else s & ~(ss - 1)
                    we = (
                        e
                        if not e & (ss - 1) or alloc >> ((e - 1) >> sb) & 1
                        else min((e + ss - 1) & ~(ss - 1), max(e, limit))
                    )
                elif host:  # compressed or shared: copy the whole cluster
                    ws, we, full = 0, max(e, limit), 1
                else:
                    ws = s & ~(ss - 1)
                    we = min((e + ss - 1) & ~(ss - 1), max(e, limit))
            plan.append([idx, s, e, ws, we, reuse, full])
        # copy-on-write fill, read before any metadata changes
        fills: dict[tuple[int, int], bytes] = {}
        if plan[0][3] < plan[0][1] or plan[-1][4] > plan[-1][2]:
            self.file.debug_event("cow_read")
        for p in (plan[0], plan[-1]):
            idx, s, e, ws, we = p[0], p[1], p[2], p[3], p[4]
            cstart = (first + (idx // words - (first & mask))) << cb
            if ws < s and (ws, idx) not in fills:
                fills[(0, idx)] = self._read_guest(cstart + ws, s - ws)
            if we > e:
                fills[(1, idx)] = self._read_guest(cstart + e, we - e)
        # allocate new host clusters, contiguous per group
        i = 0
        news: list[int] = [0] * len(plan)
        while i < len(plan):
            if plan[i][5]:
                i += 1
                continue
            j = i
            while j < len(plan) and not plan[j][5]:
                j += 1
            self._mark_dirty()
            host = self.refs.alloc_clusters((j - i) * cs)
            self._overlap_check(host, (j - i) * cs)
            for k in range(i, j):
                news[k] = host + (k - i) * cs
            i = j
        # data, coalesced into as few writes as possible
        segments: list[tuple[int, list[Any], int]] = []
        seg_end = -1
        for k, p in enumerate(plan):
            idx, s, e, ws, we, reuse = p[0], p[1], p[2], p[3], p[4], p[5]
            host = (reuse or news[k]) + ws
            cstart = (first + k) << cb
            parts: list[Any] = []
            head = fills.get((0, idx))
            if head is not None:
                parts.append(head)
            # guest data as (start, end) into ``data``: adjacent ranges merge
            # below, so a plain multi-cluster write is one slice, not a join
            parts.append((cstart + s - offset, cstart + e - offset))
            tail = fills.get((1, idx))
            if tail is not None:
                parts.append(tail)
            if host == seg_end and segments:
                prev = segments[-1][1]
                first_part = parts[0]
                if (
                    type(prev[-1]) is tuple
                    and type(first_part) is tuple
                    and prev[-1][1] == first_part[0]
                ):
                    prev[-1] = (prev[-1][0], first_part[1])
                    parts = parts[1:]
                prev.extend(parts)
            else:
                segments.append((host, parts, cstart + ws))
            seg_end = host + (we - ws)
        assert self.file is not None
        for host, parts, guest in segments:
            self.file.debug_event("write_aio")
            bufs = [data[p[0] : p[1]] if type(p) is tuple else p for p in parts]
            buf = bufs[0] if len(bufs) == 1 else b"".join(bufs)
            if self.crypto is not None:
                buf = self.crypto.encrypt(host, buf, guest)
            self.file.write(host, buf)
        # L2 updates; a cluster rewritten in place leaves its table clean, as in
        # QEMU (no L2 write at the next flush)
        changed = False
        freed: list[int] = []
        for k, p in enumerate(plan):
            idx, s, e, ws, we, reuse, full = p
            old = table[idx]
            if reuse:
                new_entry = reuse | OFLAG_COPIED
            else:
                new_entry = news[k] | OFLAG_COPIED
                if old & L2E_OFFSET_MASK:
                    freed.append(old)
            bitmap = 0
            if ext:
                bitmap = table[idx + 1]
                if full:
                    bitmap = BITMAP_ALL_ALLOC
                else:
                    first_sc = ws >> sb
                    last_sc = (we - 1) >> sb
                    bits = ((1 << (last_sc + 1)) - 1) & ~((1 << first_sc) - 1)
                    bitmap = (bitmap | bits) & ~(bits << 32)
            if new_entry == old and (not ext or bitmap == table[idx + 1]):
                continue
            if not changed:
                self._mark_dirty()
                changed = True
            table[idx] = new_entry
            if ext:
                table[idx + 1] = bitmap
        if changed:
            m.cache.mark_dirty(l2_offset)
        self._last_compressed = None
        if freed:
            self._release(freed)

    def _write_whole_clusters(self, table: array, l2_offset: int, offset: int, data: Any) -> None:
        """Write whole clusters (the last one may end at the image's end) with
        standard L2 entries, by runs of entries rather than per cluster: a run
        of clusters we own, contiguous on the host, is rewritten in place by
        one write (its table stays clean); consecutive clusters without a host
        cluster (unallocated or plain zero) get one new contiguous host range,
        one write and their entries set by one slice assignment; any other
        cluster takes the general path. Metadata order as there: data first,
        then the L2 entries in the cache (written after the refcount blocks at
        the next flush)."""
        cs = self.cs
        cb = self.cluster_bits
        i0 = (offset >> cb) & (self.map.l2_entries - 1)
        n = (len(data) + cs - 1) >> cb
        entries = table[i0 : i0 + n]
        file = self.file
        assert file is not None
        new_from = -1  # first cluster of a pending group without host clusters
        k = 0
        while k <= n:
            entry = entries[k] if k < n else -1
            if entry == 0 or entry == OFLAG_ZERO:
                if new_from < 0:
                    new_from = k
                k += same_entries(entries, k, n - k, entry, 0)
                continue
            if new_from >= 0:
                count = k - new_from
                self._mark_dirty()
                host = self.refs.alloc_clusters(count * cs)
                self._overlap_check(host, count * cs)
                _put(file, host, data[new_from * cs : k * cs])
                new = host | OFLAG_COPIED
                table[i0 + new_from : i0 + k] = array("Q", range(new, new + count * cs, cs))
                self.map.cache.mark_dirty(l2_offset)
                new_from = -1
            if k == n:
                break
            host = entry & L2E_OFFSET_MASK
            if (
                entry & OFLAG_COPIED
                and not entry & (OFLAG_COMPRESSED | OFLAG_ZERO)
                and host
                and not host & (cs - 1)
            ):
                count = same_entries(entries, k, n - k, entry, cs)
                _put(file, host, data[k * cs : (k + count) * cs])
            else:
                count = 1
                piece = _in_memory(data[k * cs : (k + 1) * cs])
                self._write_clusters(table, l2_offset, offset + k * cs, piece)
            k += count
        self._last_compressed = None

    # --- concurrent allocating writes ----------------------------------------
    #
    # QEMU allocates clusters under its lock and writes the data outside it
    # (qcow2_co_pwritev_part: qcow2_alloc_host_offset, then the data request,
    # then qcow2_handle_l2meta). The same split, for callers with many threads
    # (``convert``): reserve_write() takes fresh host clusters (refcounts in the
    # cache) under the lock; complete_write() writes the data with no lock held,
    # then installs the L2 entries under it. Crash safety is unchanged: the L2
    # entries exist (even in memory) only once the data is written, and refcount
    # blocks reach the disk before any L2 table that references new clusters.

    def reserve_write(self, offset: int, length: int) -> list[tuple[int, int, int]] | None:
        """Reserve host clusters for a write of ``length`` bytes at ``offset``.

        Only writes of whole clusters (the last one may end at the image end)
        over clusters with no host cluster (unallocated or zero, not
        compressed) qualify; for anything else this returns None and the
        caller uses :meth:`write`. Returns the extents ``(guest_offset,
        host_offset, length)`` to pass to :meth:`complete_write` (or
        :meth:`cancel_write`). Overlapping requests wait for each other.
        """
        cs = self.cs
        end = offset + length
        if length <= 0 or offset & (cs - 1) or (end & (cs - 1) and end != self.total_size):
            return None
        self._check_range(offset, length)
        self._check_writable()
        m = self.map
        shift = m.l1_shift
        cb = self.cluster_bits
        words = m.words
        mask = m.l2_entries - 1
        busy = L2E_OFFSET_MASK | OFLAG_COMPRESSED
        with self.lock:
            self._check_usable()
            if self._inflight:
                self._wait_inflight(offset, length)
            # eligibility first, so that nothing is allocated for a refusal
            pos = offset
            while pos < end:
                tend = min(end, ((pos >> shift) + 1) << shift)
                table = m.table(pos >> shift)
                if table is not None:
                    first = ((pos >> cb) & mask) * words
                    last = (((tend - 1) >> cb) & mask) * words
                    for idx in range(first, last + 1, words):
                        if table[idx] & busy:
                            return None
                pos = tend
            extents: list[tuple[int, int, int]] = []
            pos = offset
            try:
                while pos < end:
                    tend = min(end, ((pos >> shift) + 1) << shift)
                    self._l2_for_write(pos >> shift)
                    n = tend - pos
                    self._mark_dirty()
                    host = self.refs.alloc_clusters(n)
                    extents.append((pos, host, n))
                    self._overlap_check(host, n)
                    pos = tend
            except BaseException:
                for _, host, n in extents:
                    self.refs.free(host, n)
                raise
            self._inflight.append((offset, end))
            return extents

    def complete_write(
        self, extents: list[tuple[int, int, int]], data: bytes | bytearray | memoryview
    ) -> None:
        """Write ``data`` to clusters from :meth:`reserve_write` and map them.

        The data is written without the driver lock (call this from any
        thread); the L2 entries are installed afterwards under it.
        """
        mv = memoryview(data).cast("B")
        offset = extents[0][0]
        file = self.file
        assert file is not None
        try:
            if len(mv) != extents[-1][0] + extents[-1][2] - offset:
                raise InvalidRequest("complete_write: data does not match the reservation")
            for pos, host, n in extents:
                file.debug_event("write_aio")
                chunk = mv[pos - offset : pos - offset + n]
                if self.crypto is not None:
                    chunk = memoryview(self.crypto.encrypt(host, chunk, pos))
                file.write(host, chunk)
        except BaseException:
            self.cancel_write(extents)
            raise
        m = self.map
        shift = m.l1_shift
        cb = self.cluster_bits
        words = m.words
        mask = m.l2_entries - 1
        cs = self.cs
        ext = self.extended
        with self.lock:
            try:
                self._check_usable()
                # bdrv_set_dirty at the end of the request (under the lock: the
                # bitmaps' read-modify-write of bytes is not atomic)
                if self.bitmaps is not None:
                    self.bitmaps.mark(offset, len(mv))
                self._mark_dirty()
                for pos, host, n in extents:
                    table, l2_offset = self._l2_for_write(pos >> shift)
                    idx = ((pos >> cb) & mask) * words
                    for h in range(host, host + n, cs):
                        table[idx] = h | OFLAG_COPIED
                        if ext:
                            table[idx + 1] = BITMAP_ALL_ALLOC
                        idx += words
                    m.cache.mark_dirty(l2_offset)
            finally:
                self._end_inflight(offset)

    def cancel_write(self, extents: list[tuple[int, int, int]]) -> None:
        """Give back the clusters of a reservation that will not be completed."""
        with self.lock:
            try:
                for _, host, n in extents:
                    self.refs.free(host, n)
            finally:
                self._end_inflight(extents[0][0])

    def write_concurrent(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """:meth:`write` that keeps the data transfer out of the driver lock when
        it allocates whole clusters, so that writes from several threads overlap."""
        extents = self.reserve_write(offset, len(data))
        if extents is None:
            self.write(offset, data)
        else:
            self.complete_write(extents, data)

    def _end_inflight(self, offset: int) -> None:
        for i, (start, _) in enumerate(self._inflight):
            if start == offset:
                del self._inflight[i]
                break
        if self._inflight_waiters:
            self._inflight_done.notify_all()

    def _wait_inflight(self, offset: int, length: int) -> None:
        """Wait (lock held) until no reserved write overlaps [offset, offset+length)."""
        cs = self.cs
        a = offset & ~(cs - 1)
        b = offset + length
        while any(s < b and a < e for s, e in self._inflight):
            self._inflight_waiters += 1
            try:
                self._inflight_done.wait()
            finally:
                self._inflight_waiters -= 1

    # --- compressed writes -------------------------------------------------

    def compress_cluster(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Compress one cluster (zero-padded if short); None if it does not shrink.
        Pure and thread-safe."""
        if len(data) < self.cs:
            data = bytes(data) + bytes(self.cs - len(data))
        return _compress.compress(data, self.compression_type, self.cs)

    def write_compressed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write one whole cluster (or the final partial one) compressed."""
        self._check_compressed_request(offset, len(data))
        packed = self.compress_cluster(data)
        if packed is None:
            self.write(offset, data)
            return
        self.write_compressed_raw(offset, packed)

    def _check_compressed_request(self, offset: int, length: int) -> None:
        self._check_range(offset, length)
        self._check_writable()
        if offset & (self.cs - 1):
            raise InvalidRequest("Compressed writes must be cluster aligned")
        if self.crypto is not None:  # QEMU has no encrypted compressed clusters
            raise BlockError("Input/output error", errno.EIO)
        if length != self.cs and offset + length != self.total_size:
            raise InvalidRequest("Compressed writes must cover a whole cluster")

    def write_compressed_raw(self, offset: int, compressed: bytes) -> None:
        """Store already compressed bytes (from :meth:`compress_cluster`) for the
        cluster at guest ``offset``."""
        self._check_range(offset, min(self.cs, self.total_size - offset))
        self._check_writable()
        if offset & (self.cs - 1):
            raise InvalidRequest("Compressed writes must be cluster aligned")
        if self.crypto is not None:
            raise BlockError("Input/output error", errno.EIO)
        m = self.map
        with self.lock:
            if self.bitmaps is not None:  # under the lock: a read-modify-write
                self.bitmaps.mark(offset, min(self.cs, self.total_size - offset))
            self._check_usable()
            if self._inflight:
                self._wait_inflight(offset, self.cs)
            table, l2_offset = self._l2_for_write(offset >> m.l1_shift)
            idx = ((offset >> self.cluster_bits) & (m.l2_entries - 1)) * m.words
            if table[idx] & L2E_OFFSET_MASK:
                raise BlockError("Input/output error", errno.EIO)
            self._mark_dirty()
            host = self.refs.alloc_bytes(len(compressed))
            self._overlap_check(host, len(compressed))
            assert self.file is not None
            self.file.debug_event("write_compressed")
            self.file.write(host, compressed)
            table[idx] = encode_compressed(host, len(compressed), self.cluster_bits)
            if self.extended:
                table[idx + 1] = 0
            m.cache.mark_dirty(l2_offset)

    # --- zeroes and discard -------------------------------------------------

    def _reads_as_zero(self, offset: int, length: int) -> bool:
        pos = offset
        end = offset + length
        while pos < end:
            for run in self.map.map(pos, end - pos):
                if run.kind in (ZERO_PLAIN, ZERO_ALLOC):
                    pass
                elif run.kind in (UNALLOC, UNALLOC_ALLOC) and (
                    self.backing is None or run.start >= self.backing.size
                ):
                    pass
                else:
                    return False
                pos = run.start + run.length
        return True

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        cs = self.cs
        end = offset + length
        with self.lock:
            if self.bitmaps is not None:  # under the lock: a read-modify-write
                self.bitmaps.mark(offset, length)
            self._check_usable()
            if self._inflight:
                self._wait_inflight(offset, length)
            if self.header.version < 3:
                if self.backing is None and may_unmap:
                    a = (offset + cs - 1) & ~(cs - 1)
                    b = end & ~(cs - 1) if end < self.total_size else end
                    if a < b:
                        self._write_zeros_explicit(offset, a - offset)
                        self._set_clusters(a, b - a, "deallocate")
                        self._write_zeros_explicit(b, end - b)
                        return
                self._write_zeros_explicit(offset, length)
                return
            a = (offset + cs - 1) & ~(cs - 1)
            b = end & ~(cs - 1)
            if end == self.total_size:
                b = end
            if a >= b:
                mid = min(a, end)
                self._zero_partial(offset, mid - offset)
                self._zero_partial(mid, end - mid)
                return
            self._zero_partial(offset, a - offset)
            self._set_clusters(a, b - a, "zero-unmap" if may_unmap else "zero")
            self._zero_partial(b, end - b)

    def _zero_partial(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        if self.extended:
            self._zero_partial_extended(offset, length)
            return
        cstart = offset & ~(self.cs - 1)
        cend = min(cstart + self.cs, self.total_size)
        if self._reads_as_zero(offset, length):
            return
        if (
            self.header.version >= 3
            and self._reads_as_zero(cstart, offset - cstart)
            and (self._reads_as_zero(offset + length, cend - offset - length))
        ):
            self._set_clusters(cstart, cend - cstart, "zero")
            return
        self._write_zeros_explicit(offset, length)

    def _zero_partial_extended(self, offset: int, length: int) -> None:
        """Zeroes inside one cluster of an extended-L2 image, as QEMU aligns them
        (pwrite_zeroes_alignment = subcluster size): whole subclusters get the
        zero bit (qcow2_subcluster_zeroize); a partial subcluster does too if the
        rest of it reads as zero and it holds no data, else gets written zeroes."""
        ss = self.map.subcluster_size
        end = offset + length
        a = min(end, (offset + ss - 1) & ~(ss - 1))
        b = end if end == self.total_size else max(a, end & ~(ss - 1))
        for s, e in ((offset, a), (b, end)):
            if e <= s:
                continue
            sub = s & ~(ss - 1)
            sub_end = min(sub + ss, self.total_size)
            run = self.map.map(sub, 1)[0]
            if (
                run.kind in (UNALLOC, UNALLOC_ALLOC, ZERO_PLAIN, ZERO_ALLOC)
                and self._reads_as_zero(sub, s - sub)
                and self._reads_as_zero(e, sub_end - e)
            ):
                self._zero_subclusters(sub, sub_end)
            else:
                self._write_zeros_explicit(s, e - s)
        if b > a:
            self._zero_subclusters(a, b)

    def _zero_subclusters(self, start: int, end: int) -> None:
        """Set the zero bits of the subclusters of [start, end) (one cluster;
        zero_l2_subclusters); a compressed cluster gets written zeroes instead."""
        m = self.map
        cb = self.cluster_bits
        table, l2_offset = self._l2_for_write(start >> m.l1_shift)
        idx = ((start >> cb) & (m.l2_entries - 1)) * 2
        if table[idx] & OFLAG_COMPRESSED:
            self._write_zeros_explicit(start, end - start)
            return
        cstart = start & ~(self.cs - 1)
        sb = m.subcluster_bits
        first = (start - cstart) >> sb
        last = (end - 1 - cstart) >> sb
        bits = ((1 << (last + 1)) - 1) & ~((1 << first) - 1)
        bitmap = (table[idx + 1] | (bits << 32)) & ~bits
        if bitmap != table[idx + 1]:
            self._mark_dirty()
            table[idx + 1] = bitmap
            m.cache.mark_dirty(l2_offset)

    def _write_zeros_explicit(self, offset: int, length: int) -> None:
        pos = 0
        while pos < length:
            n = min(length - pos, len(_ZERO_BUF))
            self._pwrite(offset + pos, memoryview(_ZERO_BUF)[:n])
            pos += n

    def _pdiscard(self, offset: int, length: int) -> None:
        if self.bitmaps is not None:
            with self.lock:  # a read-modify-write of the bitmap bytes
                self.bitmaps.mark(offset, length)
        if self.header.version < 3 and self.backing is not None:
            # v2 has no zero clusters: a discarded cluster would show the backing
            # file's data, so QEMU refuses (-ENOTSUP, which discard ignores)
            return
        cs = self.cs
        end = offset + length
        a = (offset + cs - 1) & ~(cs - 1)
        b = end & ~(cs - 1)
        if end == self.total_size:
            b = end
        if a >= b:
            return
        with self.lock:
            self._check_usable()
            if self._inflight:
                self._wait_inflight(a, b - a)
            self._set_clusters(a, b - a, "discard")

    def _set_clusters(self, offset: int, length: int, mode: str) -> None:
        """Change the L2 entries of whole clusters: ``zero``, ``zero-unmap``,
        ``discard`` (reads as zero; never used on v2 with a backing file), ``full-discard``
        (falls through to the backing file) or ``deallocate``."""
        cb = self.cluster_bits
        m = self.map
        words = m.words
        mask = m.l2_entries - 1
        end = offset + length
        pos = offset
        v3 = self.header.version >= 3
        while pos < end:
            tend = min(end, (((pos >> m.l1_shift) + 1) << m.l1_shift))
            l1_index = pos >> m.l1_shift
            existing = m.table(l1_index)
            if existing is None and mode in ("discard", "full-discard", "deallocate"):
                if mode != "discard" or self.backing is None or not v3:
                    pos = tend
                    continue
            table, l2_offset = self._l2_for_write(l1_index)
            freed: list[int] = []
            changed = False
            for ci in range(pos >> cb, ((tend - 1) >> cb) + 1):
                idx = (ci & mask) * words
                old = table[idx]
                old_bitmap = table[idx + 1] if self.extended else 0
                host = old & L2E_OFFSET_MASK
                compressed = bool(old & OFLAG_COMPRESSED)
                allocated = bool(host) or compressed
                if mode in ("zero", "zero-unmap"):
                    unmap = compressed or (mode == "zero-unmap" and allocated)
                    if self.extended:
                        new, new_bitmap = (0 if unmap else old), BITMAP_ALL_ZERO
                    else:
                        new, new_bitmap = (0 if unmap else old) | OFLAG_ZERO, 0
                elif mode == "discard":
                    unmap = allocated
                    if self.backing is not None or allocated:
                        if self.extended:
                            new, new_bitmap = 0, BITMAP_ALL_ZERO
                        else:
                            new, new_bitmap = (OFLAG_ZERO if v3 else 0), 0
                    else:
                        new, new_bitmap = old, old_bitmap
                else:
                    unmap = allocated
                    new, new_bitmap = 0, 0
                if new == old and new_bitmap == old_bitmap:
                    continue
                self._mark_dirty()
                table[idx] = new
                if self.extended:
                    table[idx + 1] = new_bitmap
                changed = True
                if unmap:
                    freed.append(old)
            if changed:
                m.cache.mark_dirty(l2_offset)
            self._last_compressed = None
            if freed:
                self._release(freed, discard=mode != "zero")
            pos = tend

    # ------------------------------------------------------------------
    # block status

    def _block_status(self, offset: int, length: int) -> StatusRun:
        with self.lock:
            self._check_usable()
            run: Run = self.map.map(offset, length, first=True)[0]
        kind = run.kind
        n = run.length
        if self.crypto is not None and kind in (NORMAL, ZERO_ALLOC, UNALLOC_ALLOC):
            # encrypted data has no usable host offset (qcow2_co_block_status)
            flags = {NORMAL: Status.DATA, ZERO_ALLOC: Status.ZERO}.get(kind, Status.NONE)
            return StatusRun(n, flags)
        if kind == NORMAL:
            return StatusRun(n, _DATA_AT, run.host, self.file)
        if kind == ZERO_ALLOC:
            return StatusRun(n, _ZERO_AT, run.host, self.file)
        if kind == ZERO_PLAIN:
            return StatusRun(n, Status.ZERO)
        if kind == COMPRESSED:
            return StatusRun(n, Status.DATA)
        if kind == UNALLOC_ALLOC:
            return StatusRun(n, Status.OFFSET_VALID, run.host, self.file)
        return StatusRun(n, Status.NONE)

    # ------------------------------------------------------------------
    # resize

    def _grow_l1(self, min_size: int) -> None:
        """Grow the L1 table to ``min_size`` entries (qcow2_grow_l1_table, exact)."""
        m = self.map
        old_size = len(m.l1)
        if min_size <= old_size:
            return
        if min_size > QCOW_MAX_L1_SIZE // 8:
            raise BlockError("File too large", errno.EFBIG)
        assert self.file is not None
        new_table = array("Q", m.l1)
        new_table.extend(array("Q", bytes(8 * (min_size - old_size))))
        new_bytes = min_size * 8
        self._mark_dirty()
        new_offset = self.refs.alloc_clusters(new_bytes)
        self._write_metadata(sync=True)
        self._sync()
        self._meta_sets = None
        self._overlap_check(new_offset, new_bytes)
        self.file.write(new_offset, table_to_bytes(new_table))
        self._sync()
        self.file.write(OFF_L1, struct.pack(">IQ", min_size, new_offset))
        self._sync()
        old_offset = m.l1_offset
        m.l1 = new_table
        m.l1_offset = new_offset
        m.l1_dirty.clear()
        self.header.l1_size = min_size
        self.header.l1_table_offset = new_offset
        self._meta_sets = None
        if old_size:
            self.refs.free(old_offset, old_size * 8)

    def _truncate(self, size: int, exact: bool, prealloc: str) -> None:
        if prealloc not in PREALLOC_MODES:
            raise BlockError(f"Unsupported preallocation mode '{prealloc}'")
        if size % 512:
            raise BlockError("The new size must be a multiple of 512")
        with self.lock:
            self._check_usable()
            if self._inflight:
                self._wait_inflight(0, 1 << 63)
            # qemu 7.2: v3 snapshot entries record their own disk size (snapshot
            # apply resizes back to it); v2 ones may not
            if self.header.nb_snapshots and self.header.version < 3:
                raise UnsupportedFeature("Can't resize a v2 image which has snapshots")
            old = self.total_size
            if size < old:
                if prealloc != "off":
                    raise BlockError("Preallocation can't be used for shrinking an image")
                self._shrink(size)
            elif size > old:
                self._grow_l1(self._size_to_l1(size))
                if prealloc != "off":
                    self._preallocate(old, size, prealloc)
            self._write_metadata(sync=True)
            assert self.file is not None
            self.file.write(OFF_SIZE, struct.pack(">Q", size))
            self._sync()
            self.header.size = size
            self.total_size = size
            if self.bitmaps is not None:
                self.bitmaps.resize(size)

    def _zero_new_area(self, old: int, new: int, backing_size: int) -> None:
        # qcow2_co_truncate (BDRV_REQ_ZERO_WRITE) zeroes the whole new area with zero
        # clusters, which `qemu-img map` shows; v2 has none, so there only the part
        # the backing file covers gets (explicit) zeroes
        end = new if self.header.version >= 3 else min(new, backing_size)
        self.write_zeroes(old, end - old)

    def _shrink(self, size: int) -> None:
        cs = self.cs
        start = (size + cs - 1) & ~(cs - 1)
        if start < self.total_size:
            self._set_clusters(start, self.total_size - start, "full-discard")
        m = self.map
        new_l1 = self._size_to_l1(size)
        freed: list[int] = []
        for i in range(new_l1, len(m.l1)):
            off = m.l1[i] & L2E_OFFSET_MASK
            if off:
                m.cache.discard(off)
                m.l1[i] = 0
                m.l1_dirty.add(i)
                freed.append(off)
        self._meta_sets = None
        self._release(freed)
        self._write_metadata(sync=True)
        self.refs.shrink_table()
        self._meta_sets = None
        # cut the host file after the last used cluster
        assert self.file is not None
        file_size = self.file.size
        last = (file_size + cs - 1) // cs - 1
        while last > 0 and self.refs.get(last) == 0:
            last -= 1
        if (last + 1) * cs < file_size:
            self.file.truncate((last + 1) * cs)

    def _preallocate(self, start: int, end: int, mode: str) -> None:
        """Allocate clusters for [start, end) (preallocation=metadata/falloc/full)."""
        cs = self.cs
        cb = self.cluster_bits
        m = self.map
        words = m.words
        mask = m.l2_entries - 1
        pos = start & ~(cs - 1)
        host_end = 0
        while pos < end:
            tend = min(end, (((pos >> m.l1_shift) + 1) << m.l1_shift))
            table, l2_offset = self._l2_for_write(pos >> m.l1_shift)
            todo = [
                ci
                for ci in range(pos >> cb, ((tend - 1) >> cb) + 1)
                if not table[(ci & mask) * words] & L2E_OFFSET_MASK
                and not table[(ci & mask) * words] & OFLAG_COMPRESSED
            ]
            if todo:
                self._mark_dirty()
                host = self.refs.alloc_clusters(len(todo) * cs)
                self._overlap_check(host, len(todo) * cs)
                for k, ci in enumerate(todo):
                    idx = (ci & mask) * words
                    table[idx] = (host + k * cs) | OFLAG_COPIED
                    if self.extended:
                        table[idx + 1] = BITMAP_ALL_ALLOC
                host_end = max(host_end, host + len(todo) * cs)
                m.cache.mark_dirty(l2_offset)
            pos = tend
        assert self.file is not None
        if host_end > self.file.size:
            self.file.truncate(host_end, prealloc="off" if mode == "metadata" else mode)

    # ------------------------------------------------------------------
    # backing file name and emptying (qemu-img rebase / commit)

    def change_backing_file(self, name: str, fmt: str | None) -> None:
        """Store a new backing file name and format in the header
        (qcow2_change_backing_file); ``name=""`` removes both."""
        self._check_writable()
        if len(name.encode("utf-8", "surrogateescape")) > 1023 or (fmt and not name):
            raise InvalidRequest("Invalid argument", errno.EINVAL)
        with self.lock:
            self._check_usable()
            hdr = self.header
            saved = (hdr.backing_file, [type(e)(e.type, e.data) for e in hdr.extensions])
            hdr.backing_file = name
            hdr.set_extension(Ext.BACKING_FORMAT, fmt.encode() if fmt else None)
            try:
                self._ordered_extensions()
                hdr.pack()
            except UnsupportedFeature:
                hdr.backing_file, hdr.extensions = saved
                hdr.pack()
                raise BlockError("No space left in the file header", errno.ENOSPC) from None
            self._write_metadata(sync=True)
            self._write_header()
        self.backing_filename = name
        self.backing_format = fmt or None

    def make_empty(self) -> None:
        """Drop every cluster of the active image, so that all of it reads from
        the backing file again (qcow2_make_empty): a v3 image with nothing but
        guest data gets a fresh empty layout (make_completely_empty); any other
        image has every cluster discarded."""
        self._check_writable()
        with self.lock:
            self._check_usable()
            if self._can_reset_layout():
                self._make_completely_empty()
                return
            if self.total_size:
                self._set_clusters(0, self.total_size, "full-discard")
            self._write_metadata(sync=True)
            self._sync()

    def _can_reset_layout(self) -> bool:
        hdr = self.header
        l1_clusters = -(-len(self.map.l1) * 8 // self.cs)
        bitmaps = hdr.extension(Ext.BITMAPS)
        has_bitmaps = bool(
            bitmaps is not None
            and hdr.autoclear_features & Autoclear.BITMAPS
            and len(bitmaps.data) >= 4
            and struct.unpack_from(">I", bitmaps.data)[0]
        )
        return (
            hdr.version >= 3
            and not hdr.nb_snapshots
            and not has_bitmaps
            and 3 + l1_clusters <= self.refs.block_size
            and not hdr.crypt_method
            and hdr.data_file is None
        )

    def _make_completely_empty(self) -> None:
        """Reset the file to header, refcount table (cluster 1), refcount block
        (cluster 2) and a zeroed L1 table (cluster 3 on), then truncate it.

        Crash safety as in QEMU: the caches are written out, then the dirty bit
        goes to disk before anything is overwritten; every later step may leave
        refcounts that describe nothing, which the dirty bit makes the next
        read-write open (or ``qemu-img check -r``) rebuild. The bit is cleared
        only once the new refcounts are on disk. If a step fails, the node is
        unusable (nothing more is written to it) and the image stays dirty."""
        file = self.file
        assert file is not None
        cs = self.cs
        m = self.map
        refs = self.refs
        l1_size = len(m.l1)
        l1_clusters = -(-l1_size * 8 // cs)
        # qcow2_cache_empty: write out, then drop both caches
        self._write_metadata(sync=True)
        m.cache.clear()
        refs.cache.clear()
        self._l2_before_refs = False
        self._pending_discards = []
        self._last_compressed = None
        if self.header.version >= 3 and not self.header.incompatible_features & Incompat.DIRTY:
            self.header.incompatible_features |= Incompat.DIRTY
            self._write_incompat()
        self._dirty_on_disk = True
        try:
            file.debug_event("l1_update")
            if l1_clusters:
                file.write_zeroes(m.l1_offset, l1_clusters * cs)
            m.l1 = array("Q", bytes(l1_size * 8))
            m.l1_dirty.clear()
            file.debug_event("empty_image_prepare")
            file.write_zeroes(cs, (2 + l1_clusters) * cs)
            file.debug_event("l1_update")
            file.debug_event("reftable_update")
            # l1_table_offset, refcount_table_offset, refcount_table_clusters
            file.write(OFF_L1 + 4, struct.pack(">QQI", 3 * cs, cs, 1))
            self._sync()
            m.l1_offset = 3 * cs
            self.header.l1_table_offset = 3 * cs
            refs.table = array("Q", bytes(cs))
            refs.table_offset = cs
            refs.version += 1
            refs.max_table_index = 0
            self._reftable_moved(cs, 1)
            file.debug_event("refblock_alloc")
            file.write(cs, struct.pack(">Q", 2 * cs))
            self._sync()
            refs.table[0] = 2 * cs
            refs.version += 1
            refs.free_cluster_index = 0
            refs.free_byte_offset = 0
            if refs.alloc_clusters(3 * cs + l1_size * 8) != 0:
                raise ImageCorrupt("First cluster in emptied image is in use")
            # qcow2_mark_clean: caches, then the header without the dirty bit
            self.header.incompatible_features &= ~int(Incompat.DIRTY)
            self._write_metadata(sync=True)
            self._write_header()
            self._dirty_on_disk = False
            file.truncate((3 + l1_clusters) * cs)
        except BaseException:
            # QEMU ejects the node (bs->drv = NULL): nothing more may be written
            self._broken = True
            raise
        self._meta_sets = None

    # ------------------------------------------------------------------
    # check

    def check(self, fix: int = 0) -> CheckResult:
        """Flush, run the on-disk checker, and reload state if it repaired anything."""
        from .check import check_image

        with self.lock:
            if not self.read_only and not self._broken:
                self._write_metadata(sync=True)
                self._sync()
            result = check_image(self.file, self.header, fix)
            if fix:
                self._reload()
            return result

    # ------------------------------------------------------------------
    # internal snapshots (the work is in snapshot.py)

    def snapshot_list(self) -> list[Any]:
        from . import snapshot

        return snapshot.snapshot_list(self)

    def snapshot_create(self, name: str, **fields: Any) -> Any:
        from . import snapshot

        return snapshot.snapshot_create(self, name, **fields)

    def snapshot_goto(self, id_or_name: str) -> None:
        from . import snapshot

        snapshot.snapshot_goto(self, id_or_name)

    def snapshot_delete(self, id_str: str | None, name: str | None) -> None:
        from . import snapshot

        snapshot.snapshot_delete(self, id_str, name)

    def snapshot_load_tmp(self, id_str: str | None, name: str | None) -> None:
        from . import snapshot

        snapshot.snapshot_load_tmp(self, id_str, name)

    # ------------------------------------------------------------------
    # create

    @classmethod
    def create_summary(cls, size: int, options: dict[str, Any]) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []

        def opt(name: str, default: str | None = None) -> None:
            value = options.get(name)
            if value is None:
                value = default
            if value is not None:
                pairs.append((name, str(value)))

        opt("encryption")
        for name in (
            "format",
            "key-secret",
            "cipher-alg",
            "cipher-mode",
            "ivgen-alg",
            "ivgen-hash-alg",
            "hash-alg",
            "iter-time",
        ):
            opt("encrypt." + name)
        try:
            cluster = _size_opt(options, "cluster_size")
        except BlockError:
            cluster = None
        if cluster is not None:
            pairs.append(("cluster_size", str(cluster)))
        elif options.get("cluster_size") not in (None, ""):
            pairs.append(("cluster_size", str(options["cluster_size"])))
        else:
            pairs.append(("cluster_size", "65536"))
        opt("extended_l2", "off")
        opt("preallocation")
        opt("compression_type", "zlib")
        pairs.append(("size", str(size)))
        for name in ("compat", "backing_file", "backing_fmt", "data_file", "data_file_raw"):
            opt(name)
        opt("lazy_refcounts", "off")
        opt("refcount_bits", "16")
        return pairs

    @classmethod
    def create(
        cls,
        filename: str,
        size: int,
        options: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
    ) -> None:
        """Create a qcow2 image with qemu-img's ``-o`` options (qcow2_co_create)."""
        p = _parse_create_options(size, options)
        size = (size + 511) & ~511
        from .. import open_protocol
        from ..registry import get_protocol, protocol_for_filename

        proto = get_protocol(protocol_for_filename(filename))
        proto.create(filename, 0, {})
        file = open_protocol({"filename": filename}, read_only=False)
        try:
            cs = p["cluster_size"]
            hdr = Header(
                version=p["version"],
                cluster_bits=cs.bit_length() - 1,
                size=0,
                refcount_table_offset=cs,
                refcount_table_clusters=1,
                refcount_order=p["refcount_order"],
                compression_type=p["compression_type"],
            )
            if p["lazy_refcounts"]:
                hdr.compatible_features |= Compat.LAZY_REFCOUNTS
            if p["compression_type"] != CompressionType.ZLIB:
                hdr.incompatible_features |= Incompat.COMPRESSION
            if p["extended_l2"]:
                hdr.incompatible_features |= Incompat.EXTL2
            head = hdr.pack()
            file.write(0, head + bytes(cs - len(head)))
            reftable = bytearray(2 * cs)
            struct.pack_into(">Q", reftable, 0, 2 * cs)
            rb = bytearray(cs)
            from .layout import set_refcount

            for i in range(3):
                set_refcount(rb, i, hdr.refcount_order, 1)
            reftable[cs:] = rb
            file.write(cs, bytes(reftable))
            drv = cls(file, hdr, read_only=False)
            drv._validate_and_load()
        except BaseException:
            file.close()
            raise
        try:
            drv._write_header()
            drv._truncate(size, True, p["preallocation"])
            if p["backing_file"]:
                drv.header.backing_file = p["backing_file"]
                if p["backing_fmt"]:
                    drv.header.set_extension(Ext.BACKING_FORMAT, p["backing_fmt"].encode())
                drv._write_header()
            if p["encrypt"] is not None:
                from ..crypto.qcow2_luks import set_up_encryption

                set_up_encryption(drv, p["encrypt"])
        finally:
            drv.close()


def _zeros(n: int) -> bytes | memoryview:
    if n <= len(_ZERO_BUF):
        return memoryview(_ZERO_BUF)[:n]
    return bytes(n)


def _parse_create_options(size: int, options: dict[str, Any]) -> dict[str, Any]:
    """Validate qemu-img's -o options for qcow2 with QEMU's messages."""
    from ..crypto.qcow2_luks import parse_create_options as parse_encrypt

    encrypt = parse_encrypt(options)
    if options.get("data_file") or (
        options.get("data_file_raw") not in (None, "")
        and parse_bool(options["data_file_raw"], "data_file_raw")
    ):
        raise UnsupportedFeature("qcow2 external data files are not supported yet")
    compat = options.get("compat")
    if compat in (None, "", "1.1", "v3"):
        version = 3
    elif compat in ("0.10", "v2"):
        version = 2
    else:
        raise BlockError(f"Parameter 'version' does not accept value '{compat}'")
    prealloc = str(options.get("preallocation") or "off")
    if prealloc not in PREALLOC_MODES:
        raise BlockError(f"Parameter 'preallocation' does not accept value '{prealloc}'")
    ctype_name = str(options.get("compression_type") or "zlib")
    if ctype_name not in ("zlib", "zstd"):
        raise BlockError(f"Parameter 'compression-type' does not accept value '{ctype_name}'")
    ctype = CompressionType.ZSTD if ctype_name == "zstd" else CompressionType.ZLIB
    lazy = options.get("lazy_refcounts")
    lazy_on = lazy not in (None, "") and parse_bool(lazy, "lazy_refcounts")
    extl2 = options.get("extended_l2")
    extl2_on = extl2 not in (None, "") and parse_bool(extl2, "extended_l2")
    cluster_size = _size_opt(options, "cluster_size") or 65536
    rb = options.get("refcount_bits")
    try:
        refcount_bits = int(str(rb), 0) if rb not in (None, "") else 16
    except ValueError:
        raise BlockError("Parameter 'refcount_bits' expects a number") from None
    backing_file = str(options.get("backing_file") or "")
    backing_fmt = str(options.get("backing_fmt") or "")
    if not _is_pow2(cluster_size) or not (1 << MIN_CLUSTER_BITS) <= cluster_size <= (
        1 << MAX_CLUSTER_BITS
    ):
        raise BlockError("Cluster size must be a power of two between 512 and 2048k")
    if extl2_on and cluster_size < 16384:
        raise BlockError(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
        )
    if backing_fmt and not backing_file:
        raise BlockError("Backing format cannot be used without backing file")
    if backing_file and prealloc != "off" and not extl2_on:
        raise BlockError(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if version < 3 and lazy_on:
        raise BlockError(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    if version < 3 and extl2_on:
        raise BlockError(
            "Extended L2 entries are only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    if refcount_bits > 64 or not _is_pow2(refcount_bits):
        raise BlockError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and refcount_bits != 16:
        raise BlockError(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above "
            "(use version=v3 or greater)"
        )
    if version < 3 and ctype != CompressionType.ZLIB:
        raise BlockError(
            "Non-zlib compression type is only supported with compatibility level 1.1 and "
            "above (use version=v3 or greater)"
        )
    return {
        "version": version,
        "cluster_size": cluster_size,
        "refcount_order": refcount_bits.bit_length() - 1,
        "compression_type": int(ctype),
        "lazy_refcounts": lazy_on,
        "extended_l2": extl2_on,
        "preallocation": prealloc,
        "backing_file": backing_file,
        "backing_fmt": backing_fmt,
        "encrypt": encrypt,
    }
