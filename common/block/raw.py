"""The ``raw`` format driver: the guest sees the protocol node's bytes as they are.

Options ``offset`` and ``size`` expose a window of the file, as QEMU's raw-format.
"""

from __future__ import annotations

from typing import Any

from ..sizes import parse_size
from .driver import BlockDriver, CreateOption, ProgressFn, StatusRun
from .errors import BlockError
from .file import FileProtocol


class RawFormat(BlockDriver):
    """The raw format: no metadata, virtual size = file size (or a window)."""

    format_name = "raw"
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption(
            "preallocation", "string", "Preallocation mode (allowed values: off, falloc, full)"
        ),
        CreateOption("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)"),
        CreateOption(
            "extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"
        ),
    )

    def __init__(
        self, file: BlockDriver, *, read_only: bool, offset: int = 0, size: int | None = None
    ) -> None:
        super().__init__(file.filename, read_only=read_only)
        self.file = file
        self.offset = offset
        self.has_size = size is not None
        self.total_size = size if size is not None else max(0, file.size - offset)

    @classmethod
    def probe(cls, header: bytes, filename: str) -> int:
        return 1

    @classmethod
    def open(cls, file: BlockDriver, options: dict[str, Any], *, read_only: bool) -> RawFormat:
        """Open raw over the protocol node ``file``."""
        offset = _size_opt(options.get("offset", 0), "offset")
        size = options.get("size")
        size_val = _size_opt(size, "size") if size is not None else None
        if offset > file.size:
            raise BlockError(
                "The sum of offset (%d) and size (%d) has to be smaller or equal to the actual size of the containing file (%d)"
                % (offset, size_val or 0, file.size)
            )
        return cls(file, read_only=read_only, offset=offset, size=size_val)

    @classmethod
    def create(
        cls,
        filename: str,
        size: int,
        options: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
    ) -> None:
        FileProtocol.create(filename, size, options, progress=progress)

    @classmethod
    def create_summary(cls, size: int, options: dict[str, Any]) -> list[tuple[str, str]]:
        pairs = [("size", str(size))]
        if "preallocation" in options:
            pairs.append(("preallocation", str(options["preallocation"])))
        return pairs

    def _pread(self, offset: int, length: int) -> bytes:
        assert self.file is not None
        self.file.debug_event("read_aio")
        return self.file.read(offset + self.offset, length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Read straight into ``buf`` (used by bulk copies)."""
        file = self.file
        if isinstance(file, FileProtocol):
            file.readinto(offset + self.offset, buf)
        else:
            assert file is not None
            file.debug_event("read_aio")
            buf[:] = file.read(offset + self.offset, len(buf))

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert self.file is not None
        self.file.debug_event("write_aio")
        self.file.write(offset + self.offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        assert self.file is not None
        self.file.write_zeroes(offset + self.offset, length, may_unmap=may_unmap)

    def _pdiscard(self, offset: int, length: int) -> None:
        assert self.file is not None
        self.file.discard(offset + self.offset, length)

    def _truncate(self, size: int, exact: bool, prealloc: str) -> None:
        if self.has_size or self.offset:
            raise BlockError("Cannot resize fixed-size raw disks")
        assert self.file is not None
        self.file.truncate(size, exact=exact, prealloc=prealloc)
        self.total_size = size

    def _block_status(self, offset: int, length: int) -> StatusRun:
        assert self.file is not None
        run = self.file.block_status(offset + self.offset, length)
        flags = run.flags
        return StatusRun(run.length, flags, run.offset, run.file)

    @property
    def has_zero_init_now(self) -> bool:
        return True


def _size_opt(value: Any, name: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return parse_size(str(value))
    except (ValueError, OverflowError):
        raise BlockError(f"Parameter '{name}' expects a non-negative number below 2^64") from None
