"""The block layer: open, create and query disk images.

The short API::

    from pyqemu.common.block import open_image, create_image

    create_image("disk.qcow2", "qcow2", 1 << 30)
    with open_image("disk.qcow2", read_only=False) as img:
        img.write(0, b"hello")
        img.read(0, 5)
        img.write_zeroes(65536, 65536, may_unmap=True)
        img.discard(1 << 20, 1 << 20)
        run = block_status_above(img, 0, img.size)   # data / zero / depth
        img.specific_info()

An image is a graph of nodes (:class:`BlockDriver`): a format node (raw, qcow2)
over a protocol node (file), with an optional backing node. Filenames follow
QEMU's syntax: plain paths, ``json:{...}``, and option dicts such as
``{"driver": "qcow2", "file.filename": "x"}`` (``--image-opts``).
"""

from __future__ import annotations

import os
from typing import Any

from .. import records as dataclasses
from ..options import parse_json_filename, sub_options
from .driver import (
    FIX_ERRORS,
    FIX_LEAKS,
    BlockDriver,
    CheckResult,
    CreateOption,
    Status,
    StatusRun,
)
from .errors import BlockError, ImageCorrupt, InvalidRequest, UnsupportedFeature
from .registry import format_names, get_format, get_protocol, probe_format, protocol_for_filename

__all__ = [
    "FIX_ERRORS",
    "FIX_LEAKS",
    "BlockDriver",
    "BlockError",
    "CheckResult",
    "CreateOption",
    "ImageCorrupt",
    "InvalidRequest",
    "MapRun",
    "Status",
    "StatusRun",
    "UnsupportedFeature",
    "block_status_above",
    "create_image",
    "format_names",
    "get_format",
    "open_image",
    "reopen_backing",
    "resolve_backing_filename",
]

PROBE_SIZE = 2048


def _is_protocol_name(name: str) -> bool:
    try:
        return get_format(name).is_protocol
    except BlockError:
        return False


def resolve_backing_filename(image_filename: str, backing: str) -> str:
    """Resolve a backing file name relative to the folder of ``image_filename``."""
    if not backing or backing.startswith("json:") or os.path.isabs(backing):
        return backing
    head, sep, _ = backing.partition(":")
    if sep and "/" not in head and protocol_for_filename(backing) != "file":
        return backing
    base = image_filename
    if base.startswith("json:") or protocol_for_filename(base) != "file":
        return backing
    folder = os.path.dirname(base)
    return os.path.join(folder, backing) if folder else backing


def open_protocol(options: dict[str, Any], *, read_only: bool) -> BlockDriver:
    """Open a protocol node from its options (``driver``, ``filename``, ...)."""
    driver = options.get("driver")
    if driver is None:
        filename = options.get("filename")
        if not filename:
            raise BlockError('A block device must be specified for "file"')
        driver = protocol_for_filename(str(filename))
    cls = get_protocol(str(driver))
    return cls.open(options, read_only=read_only)  # type: ignore[attr-defined]


def open_image(
    filename: str | None = None,
    fmt: str | None = None,
    *,
    options: dict[str, Any] | None = None,
    read_only: bool = True,
    backing: bool = True,
    _chain: tuple[str, ...] = (),
) -> BlockDriver:
    """Open an image and its backing chain; return the top node.

    ``filename`` may be a path or ``json:{...}``; ``options`` are flattened
    QEMU options (``file.filename=...``); ``fmt`` forces the format (else it
    is probed). ``backing=False`` opens the image alone (``qemu-img info``).
    """
    opts: dict[str, Any] = dict(options or {})
    if filename is not None and filename.startswith("json:"):
        opts = {**parse_json_filename(filename), **opts}
    elif filename is not None:
        opts.setdefault("filename", filename)
    if fmt is not None:
        opts["driver"] = fmt
    if "read-only" in opts:
        read_only = (
            str(opts["read-only"]) in ("on", "true", "True", "1") or opts["read-only"] is True
        )

    driver = opts.get("driver")
    if driver is not None and _is_protocol_name(str(driver)):
        return open_protocol(opts, read_only=read_only)

    file_opts = sub_options(opts, "file")
    if isinstance(opts.get("file"), str):
        file_opts.setdefault("filename", opts["file"])
    if "filename" in opts and "filename" not in file_opts:
        file_opts["filename"] = opts["filename"]
    if driver is not None:
        cls = get_format(str(driver))  # an unknown name fails before the file is opened
    file = open_protocol(file_opts, read_only=read_only)
    try:
        if driver is None:
            try:
                header = file.read(0, min(PROBE_SIZE, file.size)) if file.size else b""
            except BlockError as exc:
                raise exc.prefixed("Could not read image for determining its format") from None
            cls = probe_format(header, file.filename)
        fmt_opts = {
            k: v
            for k, v in opts.items()
            if not k.startswith("file.") and k not in ("file", "filename", "driver")
        }
        node: BlockDriver = cls.open(file, fmt_opts, read_only=read_only)  # type: ignore[attr-defined]
    except BaseException:
        file.close()
        raise
    try:
        _open_backing(node, opts, backing, read_only, _chain)
    except BaseException:
        node.close()
        raise
    return node


def _realpath(filename: str) -> str:
    """The canonical path of a host file name, for loop detection; other names
    (``json:``, a NUL byte that no host path can hold) stay as they are."""
    if filename.startswith("json:") or "\0" in filename:
        return filename
    return os.path.realpath(filename)


def _dirname_source(node: BlockDriver) -> str:
    """The filename whose folder relative backing names resolve against.

    Filters such as blkdebug pass this down to their image, as QEMU's
    ``bdrv_dirname`` does: ``blkdebug::sub/top.qcow2`` resolves ``base.qcow2``
    to ``sub/base.qcow2``.
    """
    current = node
    while current.file is not None and current.format_name != "file":
        current = current.file
    return current.filename if current.format_name == "file" else node.filename


def _open_backing(
    node: BlockDriver, opts: dict[str, Any], backing: bool, read_only: bool, chain: tuple[str, ...]
) -> None:
    if not node.supports_backing:
        return
    node.full_backing_filename = resolve_backing_filename(
        _dirname_source(node), node.backing_filename
    )
    if not backing or not node.backing_filename:
        return
    if "backing" in opts and opts["backing"] in (None, ""):
        return
    backing_opts = sub_options(opts, "backing")
    chain = chain + (_realpath(node.filename),)
    target = node.full_backing_filename
    if not backing_opts and not target.startswith("json:") and _realpath(target) in chain:
        raise BlockError(f"Backing file '{node.backing_filename}' creates an infinite loop.")
    if len(chain) > 1000:
        raise BlockError("Backing chain too long")
    try:
        node.backing = open_image(
            None if backing_opts else target,
            None if backing_opts else node.backing_format,
            options=backing_opts or None,
            read_only=True,
            _chain=chain,
        )
    except BlockError as exc:
        raise exc.prefixed("Could not open backing file") from None


def reopen_backing(node: BlockDriver, *, read_only: bool) -> BlockDriver:
    """Reopen ``node.backing`` read-only or read-write (QEMU's bdrv_reopen of a
    backing child, as the commit job does for its base) and return the new node.

    The backing node is reopened from its own file name and format; it keeps the
    backing chain below it. A backing node given by options (``backing.*``)
    is reopened from its file name too.
    """
    old = node.backing
    if old is None:
        raise InvalidRequest("Image does not have a backing file")
    if old.read_only == read_only:
        return old
    if not read_only:
        old.flush()
    new = open_image(old.filename, old.format_name, read_only=read_only, backing=False)
    new.backing, old.backing = old.backing, None
    old.close()
    node.backing = new
    return new


def create_image(
    filename: str,
    fmt: str,
    size: int,
    options: dict[str, Any] | None = None,
    *,
    progress: Any = None,
) -> None:
    """Create an image of format ``fmt`` (``-o`` options as strings)."""
    cls = get_format(fmt)
    cls.create(filename, size, dict(options or {}), progress=progress)


@dataclasses.dataclass(frozen=True)
class MapRun:
    """One run of ``qemu-img map``: status through the backing chain."""

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None
    file: BlockDriver | None


# the flags as plain ints: IntFlag arithmetic runs Python code per operation,
# and these two functions run once per extent of every bulk copy
_DATA = int(Status.DATA)
_ZERO = int(Status.ZERO)
_DATA_OR_ZERO = _DATA | _ZERO
_OFFSET_VALID = int(Status.OFFSET_VALID)
_ALLOCATED = int(Status.ALLOCATED)
_FLAGS: dict[int, Status] = {}


def _status_flags(value: int) -> Status:
    """``Status(value)``, looked up once per value."""
    flags = _FLAGS.get(value)
    if flags is None:
        flags = _FLAGS[value] = Status(value)
    return flags


def node_status(node: BlockDriver, offset: int, length: int) -> StatusRun:
    """One node's status with QEMU's generic rules applied (ALLOCATED, zero past backing)."""
    run = node.block_status(offset, length)
    flags = int(run.flags)
    if flags & _DATA_OR_ZERO:
        flags |= _ALLOCATED
    elif node.supports_backing:
        if node.backing is None or offset >= node.backing.size:
            flags |= _ZERO
    else:
        return run
    return StatusRun(run.length, _status_flags(flags), run.offset, run.file)


def block_status_above(node: BlockDriver, offset: int, length: int) -> MapRun:
    """Status of ``node`` from ``offset``, descending the backing chain to the
    first layer that allocates it (as ``qemu-img map`` reports)."""
    depth = 0
    current: BlockDriver | None = node
    run = StatusRun(length, Status.NONE)
    flags = 0
    while current is not None:
        run = node_status(current, offset, length)
        length = run.length
        flags = int(run.flags)
        if flags & _DATA_OR_ZERO:
            break
        if current.backing is None:
            break
        current = current.backing
        depth += 1
        if offset >= current.size:
            run = StatusRun(length, Status.ZERO)
            flags = _ZERO
            break
        length = min(length, current.size - offset)
    has_offset = bool(flags & _OFFSET_VALID)
    return MapRun(
        start=offset,
        length=run.length,
        depth=depth,
        present=bool(flags & _ALLOCATED),
        zero=bool(flags & _ZERO),
        data=bool(flags & _DATA),
        offset=run.offset if has_offset else None,
        file=run.file if has_offset else None,
    )
