"""The image qemu-io works on: QEMU's ``BlockBackend`` over our block layer.

It adds what qemu-io sees of the generic block layer on top of a node:
request range checks (``-EIO``), copy-on-read (``-C``), the temporary qcow2
overlay of snapshot mode (``-s``), the block-0 guard of a probed raw image,
``bdrv_is_allocated`` and ``bdrv_get_info``. Errors are ``BlockError`` with an
``errno``; the commands print ``strerror`` of it as qemu-io does.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ..common.block import BlockDriver, BlockError, Status, node_status, open_image
from ..common.block.errors import CloseError

__all__ = ["CACHE_MODES", "Backend", "OpenError", "open_backend"]

PREALLOC_MODES = ("off", "metadata", "falloc", "full")
#: cache mode -> (writethrough, no_flush), as bdrv_parse_cache_mode
CACHE_MODES = {
    "none": (False, False),
    "off": (False, False),
    "writeback": (False, False),
    "writethrough": (True, False),
    "directsync": (True, False),
    "unsafe": (False, True),
}
#: pattern writes go out in requests of this size (a multiple of any cluster size)
PATTERN_CHUNK = 64 << 20


class OpenError(Exception):
    """An image that could not be opened; ``message`` is qemu-io's inner text."""

    def __init__(self, message: str, probed_raw: bool = False) -> None:
        super().__init__(message)
        self.message = message
        #: the raw probe warning comes first (raw_open printed it)
        self.probed_raw = probed_raw


def _fail(code: int) -> BlockError:
    return BlockError(os.strerror(code), code)


class Backend:
    """An open image: the top node plus the request semantics qemu-io relies on."""

    def __init__(
        self,
        node: BlockDriver,
        *,
        copy_on_read: bool = False,
        probed_raw: bool = False,
        reopen_args: dict[str, Any] | None = None,
        writethrough: bool = True,
        no_flush: bool = False,
    ) -> None:
        self.node = node
        self.copy_on_read = copy_on_read
        self.probed_raw = probed_raw
        #: how to open the image again (reopen)
        self.reopen_args = reopen_args or {}
        #: blk_enable_write_cache: off (qemu-io's default, writethrough) makes
        #: every write FUA, which the block layer emulates with a flush
        self.write_cache = True
        self.set_cache(writethrough, no_flush)
        #: the node was opened writable (reopen -r/-w just flips the flag)
        self.opened_writable = not node.read_only
        #: a write command has taken the write permission (BLK_PERM_WRITE)
        self.write_perm = False

    def set_cache(self, writethrough: bool, no_flush: bool) -> None:
        """The cache mode: the write cache switch, and ``BDRV_O_NO_FLUSH`` (unsafe)
        on every node of the graph."""
        self.write_cache = not writethrough
        nodes = [self.node]
        while nodes:
            node = nodes.pop()
            node.no_flush = no_flush
            nodes += [child for child in (node.file, node.backing) if child is not None]

    # ------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        return self.node.read_only

    @property
    def size(self) -> int:
        return self.node.size

    def check_request(self, offset: int, length: int) -> None:
        """``blk_check_byte_request``."""
        size = self.node.size
        if offset < 0 or length < 0 or offset > size or size - offset < length:
            raise _fail(errno.EIO)

    def check_writable(self) -> None:
        if self.node.read_only:
            raise BlockError("Block node is read-only", errno.EPERM)

    # ------------------------------------------------------------------
    # I/O

    def pread(self, offset: int, length: int) -> bytearray:
        """Read into a new buffer (copy-on-read first when enabled)."""
        self.check_request(offset, length)
        if length == 0:
            return bytearray()
        node = self.node
        if self.copy_on_read and node.backing is not None and not node.read_only:
            self._copy_on_read(offset, length)
        # qemu-io's buffer is memset(0xab) before the clock starts: fill (and so
        # fault in) ours the same way, rather than during the timed read
        buf = bytearray(b"\xab") * length
        readinto = getattr(node, "readinto", None)
        if readinto is not None:
            node._check_range(offset, length)
            readinto(offset, memoryview(buf))
        else:
            buf[:] = node.read(offset, length)
        return buf

    def _copy_on_read(self, offset: int, length: int) -> None:
        node = self.node
        cluster = node.cluster_size or 512
        start = offset - offset % cluster
        end = min(-(-(offset + length) // cluster) * cluster, node.size)
        pos = start
        while pos < end:
            run = node_status(node, pos, end - pos)
            if run.length <= 0:
                break
            if not run.flags & Status.ALLOCATED:
                data = node.read(pos, run.length)
                if data.count(0) == len(data):
                    node.write_zeroes(pos, run.length)
                else:
                    node.write(pos, data)
            pos += run.length

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        self.check_request(offset, len(data))
        self.check_writable()
        if self.probed_raw and offset < 512 and len(data):
            self._guard_block0(offset, data)
        self.node.write(offset, data, fua=fua or not self.write_cache)

    def pwrite_pattern(self, offset: int, pattern: int, length: int, fua: bool = False) -> None:
        """Write ``length`` bytes of ``pattern``: the same bytes as qemu-io's memset
        buffer, sent as consecutive requests from one reusable chunk, so that a
        1 GiB write neither allocates nor faults in 1 GiB."""
        self.check_request(offset, length)
        self.check_writable()
        chunk = bytes((pattern,)) * min(length, PATTERN_CHUNK)
        if self.probed_raw and offset < 512 and length:
            self._guard_block0(offset, chunk[: min(length, 512)])
        view = memoryview(chunk)
        fua = fua or not self.write_cache
        pos = 0
        while pos < length:
            n = min(PATTERN_CHUNK, length - pos)
            self.node.write(offset + pos, view[:n], fua=fua and pos + n == length)
            pos += n

    def _guard_block0(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """raw_check_write: a probed raw image must not start to look like another format."""
        from ..common.block.registry import probe_format

        head_len = min(512, self.node.size)
        head = bytearray(self.node.read(0, head_len))
        n = min(len(data), head_len - offset)
        head[offset : offset + n] = bytes(data[:n])
        if probe_format(bytes(head), self.node.filename).format_name != "raw":
            raise _fail(errno.EPERM)

    def pwrite_zeroes(self, offset: int, length: int, *, may_unmap: bool, fua: bool) -> None:
        self.check_request(offset, length)
        self.check_writable()
        self.node.write_zeroes(offset, length, may_unmap=may_unmap, fua=fua or not self.write_cache)

    def pwrite_compressed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.check_request(offset, len(data))
        self.check_writable()
        write = getattr(self.node, "write_compressed", None)
        cluster = self.node.cluster_size
        if write is None or not cluster:
            raise _fail(errno.ENOTSUP)
        if offset % cluster or (len(data) % cluster and offset + len(data) != self.node.size):
            raise _fail(errno.EINVAL)
        view = memoryview(data)
        node = self.node
        try:
            for pos in range(0, len(data), cluster):
                write(offset + pos, view[pos : pos + cluster])
            if not self.write_cache:
                node.flush()  # emulated FUA, before the request counts as a write
        finally:
            node.write_gen += 1

    def pdiscard(self, offset: int, length: int) -> None:
        self.check_request(offset, length)
        self.check_writable()
        self.node.discard(offset, length)

    def flush(self) -> None:
        self.node.flush()

    def truncate(self, size: int, prealloc: str) -> None:
        self.check_writable()
        self.node.truncate(size, exact=False, prealloc=prealloc)

    # ------------------------------------------------------------------
    # queries

    def is_allocated(self, offset: int, length: int) -> tuple[bool, int]:
        """``bdrv_is_allocated`` of the top node: (allocated, bytes in the run)."""
        size = self.node.size
        if offset >= size or length <= 0:
            return False, 0
        run = node_status(self.node, offset, min(length, size - offset))
        return bool(run.flags & Status.ALLOCATED), run.length

    def get_info(self) -> tuple[int, int]:
        """``bdrv_get_info``: (cluster size, vm state offset)."""
        node = self.node
        cluster = node.cluster_size or 0
        if not cluster or node.format_name != "qcow2":
            return cluster, 0
        bits = cluster.bit_length() - 1
        l2_bits = bits - (4 if getattr(node, "extended", False) else 3)
        span = 1 << (bits + l2_bits)
        index = -(-node.size // span)
        return cluster, index * span

    def set_read_only(self, read_only: bool) -> None:
        """``reopen -r`` / ``reopen -w``."""
        node = self.node
        if read_only == node.read_only:
            return
        if read_only:
            node.flush()
            node.read_only = True
            return
        if self.opened_writable:
            node.read_only = False
            return
        no_flush = node.no_flush
        args = self.reopen_args
        try:
            new = open_image(
                args.get("filename"),
                args.get("fmt"),
                options={
                    k: v
                    for k, v in (args.get("options") or {}).items()
                    if k not in ("driver", "read-only", "force-share")
                }
                or None,
                read_only=False,
            )
        except BlockError:
            raise
        close_node(node)
        self.node = new
        self.opened_writable = True
        self.set_cache(not self.write_cache, no_flush)

    def close(self) -> list[str]:
        """``blk_unref``: close the graph. As bdrv_close, a failure is no error;
        returns the lines QEMU reports while closing (``error_report``)."""
        return close_node(self.node)


def close_node(node: BlockDriver) -> list[str]:
    """Close ``node`` and its children as bdrv_close does: errors are ignored,
    but what QEMU reports on the way (qcow2's failed cache flushes) is returned."""
    try:
        node.close()
    except CloseError as exc:
        return exc.reports
    except BlockError:
        pass
    return []


def _read_only_opt(value: Any) -> bool:
    return value is True or str(value) in ("on", "true", "yes", "1")


def open_backend(
    filename: str | None,
    options: dict[str, Any],
    *,
    read_only: bool,
    snapshot: bool = False,
    copy_on_read: bool = False,
    writethrough: bool = True,
    no_flush: bool = False,
) -> Backend:
    """``blk_new_open`` as qemu-io calls it; OpenError carries the inner message."""
    opts = dict(options)
    fmt = opts.pop("driver", None)
    if "read-only" in opts:
        read_only = _read_only_opt(opts.pop("read-only"))
    force_share = opts.get("force-share") in ("on", True)
    if force_share and not (read_only or snapshot):
        raise OpenError("force-share=on can only be used with read-only images")
    for key in ("force-share", "cache.direct", "cache.no-flush", "discard", "aio"):
        opts.pop(key, None)
    if filename is None and not opts.get("filename") and not opts.get("file.filename"):
        if "file" not in opts and not any(k.startswith("file.") for k in opts):
            raise OpenError('A block device must be specified for "file"')
    reopen_args = {"filename": filename, "options": dict(options), "fmt": fmt}
    try:
        node = open_image(
            filename,
            fmt,
            options=opts or None,
            read_only=read_only or snapshot,
        )
    except BlockError as exc:
        raise OpenError(exc.message) from None
    probed = fmt is None and node.format_name == "raw" and not filename_is_json(filename)
    try:
        _check_options(node.format_name, opts)
    except OpenError as exc:
        close_node(node)
        raise OpenError(exc.message, probed and not read_only) from None
    if snapshot:
        node = _snapshot_overlay(node)
        probed = False
    return Backend(
        node,
        copy_on_read=copy_on_read,
        probed_raw=probed and not read_only,
        reopen_args=reopen_args,
        writethrough=writethrough,
        no_flush=no_flush,
    )


#: block-layer options each format takes at its own level (others: file.*, backing.*)
_FORMAT_OPTIONS = {
    "raw": {"offset", "size"},
    "qcow2": {
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "discard-no-unref",
        "overlap-check",
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "data-file",
        "backing",
    },
}
_GENERIC_OPTIONS = {"node-name", "detect-zeroes", "auto-read-only", "filename", "file"}


def _check_options(fmt: str, opts: dict[str, Any]) -> None:
    """QEMU refuses an option that no layer consumed."""
    known = _FORMAT_OPTIONS.get(fmt)
    if known is None:
        return
    for key in opts:
        head = key.split(".", 1)[0]
        if head in ("file", "backing", "encrypt", "cache", "overlap-check", "data-file"):
            continue
        if key not in known and key not in _GENERIC_OPTIONS:
            raise OpenError(f"Block format '{fmt}' does not support the option '{key}'")


def filename_is_json(filename: str | None) -> bool:
    return bool(filename) and filename.startswith("json:")  # type: ignore[union-attr]


def _snapshot_overlay(base: BlockDriver) -> BlockDriver:
    """``-s``: a temporary qcow2 over the image, which takes every write."""
    import tempfile

    from ..common.block import create_image

    fd, path = tempfile.mkstemp(prefix="vl.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.close(fd)
    try:
        create_image(path, "qcow2", base.size, {})
        overlay = open_image(path, "qcow2", read_only=False, backing=False)
    except BaseException:
        os.unlink(path)
        close_node(base)
        raise
    os.unlink(path)  # qemu unlinks the temporary file as well
    overlay.backing = base
    overlay.backing_filename = base.filename
    overlay.full_backing_filename = base.filename
    overlay.backing_format = base.format_name
    return overlay
