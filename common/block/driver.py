"""The driver interface: the Python form of QEMU's ``BlockDriver``.

A :class:`BlockDriver` instance is one node of the block graph (QEMU's
``BlockDriverState``). Format nodes (raw, qcow2) sit on a protocol node
(``file``) in ``self.file`` and may have a backing node in ``self.backing``.

Public methods (``read``, ``write``, ...) check the request once and call the
driver's hooks (``_pread``, ``_pwrite``, ...), which subclasses implement.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from enum import IntFlag
from typing import Any, ClassVar

from .. import records as dataclasses
from .errors import BlockError, CloseError, InvalidRequest, UnsupportedFeature

#: the largest offset + length of any request or image size (QEMU's BDRV_MAX_LENGTH:
#: INT64_MAX aligned down to BDRV_MAX_ALIGNMENT, 1 GiB)
MAX_LENGTH = ((1 << 63) - 1) & ~((1 << 30) - 1)


class Status(IntFlag):
    """Block status flags, as QEMU's ``BDRV_BLOCK_*``."""

    NONE = 0
    DATA = 0x01
    ZERO = 0x02
    OFFSET_VALID = 0x04
    ALLOCATED = 0x10
    EOF = 0x20
    RECURSE = 0x40


@dataclasses.dataclass(frozen=True)
class StatusRun:
    """The status of ``length`` bytes from the queried offset.

    ``offset`` is the host offset of the data in ``file`` when
    ``Status.OFFSET_VALID`` is set.
    """

    length: int
    flags: Status
    offset: int | None = None
    file: BlockDriver | None = None


@dataclasses.dataclass(frozen=True)
class CreateOption:
    """One ``-o`` option of ``create``/``amend``, as QEMU's ``QemuOptDesc``."""

    name: str
    kind: str  # "size", "number", "string" or "bool"
    help: str = ""
    default: str | None = None


@dataclasses.dataclass
class CheckResult:
    """What ``check`` found (and fixed), as QEMU's ``BdrvCheckResult``."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)


ProgressFn = Callable[[float], None]


class BlockDriver:
    """One node of the block graph; subclass per format or protocol."""

    #: format name as ``-f`` takes it ("raw", "qcow2", "file")
    format_name: ClassVar[str] = ""
    #: True for protocol drivers (they own storage: file, nbd, null...)
    is_protocol: ClassVar[bool] = False
    #: URI-style prefixes this protocol claims ("nbd", "nbd+unix")
    protocol_prefixes: ClassVar[tuple[str, ...]] = ()
    #: True for formats that can have a backing file
    supports_backing: ClassVar[bool] = False
    #: options for ``create``, in the order QEMU prints them
    create_options: ClassVar[tuple[CreateOption, ...]] = ()
    #: True if a newly created image reads as zeroes
    has_zero_init: ClassVar[bool] = True

    def __init__(self, filename: str, *, read_only: bool) -> None:
        self.filename = filename
        self.read_only = read_only
        self.file: BlockDriver | None = None
        self.backing: BlockDriver | None = None
        #: backing file name as stored in the image ("" when none)
        self.backing_filename = ""
        #: backing file name resolved against this image's folder
        self.full_backing_filename = ""
        self.backing_format: str | None = None
        self.total_size = 0
        #: request alignment in bytes
        self.alignment = 1
        self.lock = threading.RLock()
        self.closed = False
        #: writes started (bs->write_gen; counted when each ends, even failed) and the
        #: count the last successful flush covered (bs->flushed_gen)
        self.write_gen = 0
        self.flushed_gen = 0
        #: cache=unsafe (BDRV_O_NO_FLUSH): flushes never reach the disk
        self.no_flush = False

    # ------------------------------------------------------------------
    # class-level hooks

    @classmethod
    def probe(cls, header: bytes, filename: str) -> int:
        """Score how likely ``header`` (the first bytes) is this format; 0 = no."""
        return 0

    @classmethod
    def create(
        cls,
        filename: str,
        size: int,
        options: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
    ) -> None:
        """Create an image of ``size`` bytes with the ``-o`` ``options``."""
        raise UnsupportedFeature(f"Driver '{cls.format_name}' does not support image creation")

    @classmethod
    def create_summary(cls, size: int, options: dict[str, Any]) -> list[tuple[str, str]]:
        """The ``key=value`` pairs of qemu-img create's ``Formatting`` line."""
        return [("size", str(size))]

    # ------------------------------------------------------------------
    # public I/O

    @property
    def size(self) -> int:
        """The virtual size in bytes."""
        return self.total_size

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise InvalidRequest("Image is closed")
        if offset < 0 or length < 0 or offset + length > self.total_size:
            raise InvalidRequest(
                f"Request out of range: offset {offset}, length {length}, size {self.total_size}",
                errno.EIO,
            )

    def _check_writable(self) -> None:
        if self.read_only:
            raise InvalidRequest("Block node is read-only", errno.EACCES)

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``."""
        self._check_range(offset, length)
        if length == 0:
            return b""
        return self._pread(offset, length)

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        """Write ``data`` at ``offset``; with ``fua`` the data is durable on return."""
        self._check_range(offset, len(data))
        self._check_writable()
        if len(data):
            try:
                self._pwrite(offset, data)
                if fua:
                    self.flush()  # emulated FUA: before this write counts in write_gen
            finally:
                self.write_gen += 1

    def write_zeroes(
        self, offset: int, length: int, *, may_unmap: bool = False, fua: bool = False
    ) -> None:
        """Make ``length`` bytes at ``offset`` read as zero, unmapping if allowed."""
        self._check_range(offset, length)
        self._check_writable()
        if length:
            try:
                self._pwrite_zeroes(offset, length, may_unmap)
                if fua:
                    self.flush()
            finally:
                self.write_gen += 1

    def discard(self, offset: int, length: int) -> None:
        """Tell the image that ``length`` bytes at ``offset`` are no longer needed."""
        self._check_range(offset, length)
        self._check_writable()
        if length:
            try:
                self._pdiscard(offset, length)
            finally:
                self.write_gen += 1

    def flush(self) -> None:
        """Make every completed write durable (bdrv_co_flush): the ``flush_to_os``
        event and hook; then, only if something was written since the last
        successful flush, the ``flush_to_disk`` event and hook; then the file child.
        A read-only node has nothing to flush."""
        if self.read_only:
            return
        gen = self.write_gen
        file = self.file
        if file is not None:
            file.debug_event("flush_to_os")
        self._flush()
        if gen != self.flushed_gen and not self.no_flush:
            if file is not None:
                file.debug_event("flush_to_disk")
            self._flush_to_disk()
        if file is not None and not file.read_only:
            file.flush()
        self.flushed_gen = gen

    def truncate(
        self, size: int, *, exact: bool = True, prealloc: str = "off", shrink: bool = True
    ) -> None:
        """Change the virtual size to ``size`` (bdrv_co_truncate).

        Growing an image whose backing file is larger than the old size would
        expose the backing file's data in the new area; as QEMU's generic layer
        does (``BDRV_REQ_ZERO_WRITE``), that area is made to read as zeroes.
        """
        self._check_writable()
        if size < 0:
            raise InvalidRequest("Image size cannot be negative")
        if size > MAX_LENGTH:
            raise InvalidRequest(f"offset({size}) exceeds maximum({MAX_LENGTH})")
        if size < self.total_size and not shrink:
            raise InvalidRequest("Use the --shrink option to perform a shrink operation.")
        old = self.total_size
        try:
            self._truncate(size, exact, prealloc)
        finally:
            self.write_gen += 1
        backing = self.backing
        if backing is not None and self.total_size > old and backing.size > old:
            try:
                self._zero_new_area(old, self.total_size, backing.size)
            except BlockError as exc:
                raise exc.prefixed("Failed to zero out new clusters") from None

    def block_status(self, offset: int, length: int) -> StatusRun:
        """Status of this node only (no backing descent) from ``offset``."""
        self._check_range(offset, length)
        if length == 0:
            return StatusRun(0, Status.EOF)
        run = self._block_status(offset, length)
        return run

    def debug_event(self, event: str) -> None:
        """Signal a blkdebug event (``"l2_update"``, ...) on this node, as QEMU's
        ``bdrv_debug_event``: drivers call it on their file child; only the
        blkdebug filter acts on it, other nodes ignore it (no forwarding)."""

    def allocated_file_size(self) -> int | None:
        """Bytes the image occupies on the host (``disk size``), or None."""
        if self.file is not None:
            return self.file.allocated_file_size()
        return None

    def specific_info(self) -> dict[str, Any] | None:
        """Format-specific information for ``qemu-img info`` (JSON form)."""
        return None

    def check(self, fix: int = 0) -> CheckResult:
        """Check metadata; ``fix`` is a mask of FIX_LEAKS / FIX_ERRORS."""
        raise UnsupportedFeature("This image format does not support checks")

    @property
    def cluster_size(self) -> int | None:
        """Cluster size for ``info`` (None if the format has none)."""
        return None

    @property
    def dirty(self) -> bool:
        """True if the image was not closed cleanly (qcow2 lazy refcounts)."""
        return False

    def close(self) -> None:
        """Flush and close this node, then its children (bdrv_close).

        Every node is closed even when flushing fails. QEMU ignores those
        failures; here the first one is raised once all is closed, as a
        :class:`CloseError` whose ``reports`` hold the lines QEMU prints while
        closing (qcow2's failed cache flushes), from every node, in order."""
        if self.closed:
            return
        errors: list[BlockError] = []
        try:
            for step in (self.flush, self._close):
                try:
                    step()
                except BlockError as exc:
                    errors.append(exc)
        finally:
            self.closed = True
            for child in (self.backing, self.file):
                if child is not None:
                    try:
                        child.close()
                    except BlockError as exc:
                        errors.append(exc)
        if errors:
            first = errors[0]
            reports = [
                line for exc in errors if isinstance(exc, CloseError) for line in exc.reports
            ]
            raise CloseError(first.message, first.errno, reports) from first

    def __enter__(self) -> BlockDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------
    # hooks for drivers

    def _pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self._pwrite(offset, bytes(length))

    def _pdiscard(self, offset: int, length: int) -> None:
        pass

    def _flush(self) -> None:
        """Write what the driver caches to its file (bdrv_co_flush_to_os)."""

    def _flush_to_disk(self) -> None:
        """Make written data durable (bdrv_co_flush_to_disk); skipped when nothing
        was written since the last successful flush."""

    def _truncate(self, size: int, exact: bool, prealloc: str) -> None:
        raise UnsupportedFeature("Image format driver does not support resize")

    def _block_status(self, offset: int, length: int) -> StatusRun:
        return StatusRun(length, Status.DATA)

    def _zero_new_area(self, old: int, new: int, backing_size: int) -> None:
        """After growing from ``old`` to ``new`` over a backing file of ``backing_size``
        bytes (> ``old``), make the new area read as zeroes. Only the part the backing
        file covers could show other data; a driver may zero more (qcow2 does)."""
        self.write_zeroes(old, min(new, backing_size) - old)

    def _close(self) -> None:
        pass


FIX_LEAKS = 1
FIX_ERRORS = 2


def read_backing(node: BlockDriver, offset: int, length: int) -> bytes:
    """Read from ``node``'s backing file, zeroes past its end or with none."""
    backing = node.backing
    if backing is None:
        return bytes(length)
    end = backing.size
    if offset >= end:
        return bytes(length)
    if offset + length <= end:
        return backing.read(offset, length)
    return backing.read(offset, end - offset) + bytes(offset + length - end)


__all__ = [
    "BlockDriver",
    "BlockError",
    "CheckResult",
    "CreateOption",
    "FIX_ERRORS",
    "FIX_LEAKS",
    "Status",
    "StatusRun",
    "read_backing",
]
