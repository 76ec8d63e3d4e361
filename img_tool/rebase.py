"""``pyqemu-img rebase``: change an image's backing file (qemu-img.c img_rebase).

Safe mode (the default) keeps what the image shows: in 2 MiB steps, every
range the image does not allocate itself is read from the old backing chain
and from the new backing file; the 512-byte sectors that differ are written
into the image (zero writes where the old chain ends), then the header gets the
new backing file name and format. When the new backing file is an image of the
old chain, only ranges allocated above it are compared. ``-b ""`` makes the
image standalone. ``-u`` (unsafe) only rewrites the header.

As qemu-img 7.2, a new backing file needs ``-F``: without it the data is still
copied (safe mode) but the header change fails ("backing format must be
specified"). ``-t``/``-T`` are validated; every cache mode acts as writeback.
"""

from __future__ import annotations

import errno
from typing import Any

from .cli import CliError, Progress, UsageError, getopt, open_image_cli
from .commit import check_cache_mode, find_backing_image, is_allocated_above

#: qemu-img's IO_BUF_SIZE: the step of the safe-mode loop
IO_BUF_SIZE = 2 << 20
SECTOR = 512
#: block size of the first comparison pass (sectors are compared only inside
#: blocks that differ)
BLOCK = 64 << 10


_ZERO_SECTOR = bytes(SECTOR)


def differing_runs(old: bytes | bytearray, new: bytes | bytearray) -> list[tuple[int, int]]:
    """Runs (start, length) of the 512-byte sectors where ``old`` and ``new``
    differ (qemu-img's compare_buffers); a short last sector counts as one.

    Equal 64 KiB blocks are skipped by one comparison; in a block that differs
    the XOR of both is searched for all-zero aligned sectors with ``bytes.find``,
    so no Python loop runs per sector unless the data alternates sector by sector.
    """
    n = len(old)
    runs: list[tuple[int, int]] = []
    mo = memoryview(old)
    mn = memoryview(new)

    def add(start: int, end: int) -> None:
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end - runs[-1][0])
        else:
            runs.append((start, end - start))

    if mo == mn:
        return runs
    # one side all zero (flatten, past the end of a backing file): the other
    # side is the XOR already, scanned in one piece
    if new.count(0) == n or old.count(0) == n:
        _scan(old if new.count(0) == n else new, 0, n, add)
        return runs
    for b in range(0, n, BLOCK):
        be = min(n, b + BLOCK)
        if mo[b:be] == mn[b:be]:
            continue
        xor = (int.from_bytes(mo[b:be], "little") ^ int.from_bytes(mn[b:be], "little")).to_bytes(
            be - b, "little"
        )
        _scan(xor, b, be - b, add)
    return runs


def _scan(xor: bytes | bytearray, base: int, length: int, add: Any) -> None:
    """Report to ``add`` the sector runs of ``xor`` (length ``length``, at
    ``base``) that are not all zero; all-zero aligned sectors are found with
    ``find``, a short last sector is checked on its own."""
    full = length & ~(SECTOR - 1)
    start = search = 0
    while search < full:
        p = xor.find(_ZERO_SECTOR, search, full)
        if p < 0:
            break
        a = (p + SECTOR - 1) & ~(SECTOR - 1)
        if a + SECTOR > full:
            break
        if xor.startswith(_ZERO_SECTOR, a):
            if a > start:
                add(base + start, base + a)
            start = search = a + SECTOR
        else:
            search = a
    if start < full:
        add(base + start, base + full)
    if full < length and xor.count(0, full, length) != length - full:
        add(base + full, base + length)


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hf:F:b:upt:T:qU",
        {"help": 0, "object": 1, "image-opts": 0, "force-share": 0},
    )
    fmt: str | None = None
    out_base: str | None = None
    out_fmt: str | None = None
    cache = src_cache = "writeback"
    unsafe = progress = quiet = image_opts = False
    for name, value in opts:
        if name == "-f":
            fmt = value
        elif name == "-F":
            out_fmt = value
        elif name == "-b":
            out_base = value
        elif name == "-u":
            unsafe = True
        elif name == "-p":
            progress = True
        elif name == "-t":
            cache = str(value)
        elif name == "-T":
            src_cache = str(value)
        elif name == "-q":
            quiet = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            raise CliError("--object is not supported yet by pyqemu-img")
        # -U / --force-share: accepted (pyqemu takes no image locks)
    if quiet:
        progress = False
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    if not unsafe and out_base is None:
        raise UsageError("Must specify backing file (-b) or use unsafe mode (-u)")
    filename = operands[0]

    prog = Progress(progress, 2.0)
    prog.print(0.0, 100)
    try:
        check_cache_mode(cache)
        check_cache_mode(src_cache, "source cache")
        top = open_image_cli(
            filename, fmt, image_opts=image_opts, writable=True, backing=not unsafe, quiet=quiet
        )
        new_backing = None
        try:
            if out_fmt is not None:
                from ..common.block import BlockError, get_format

                try:
                    get_format(out_fmt)
                except BlockError:
                    raise CliError(f"Invalid format name: '{out_fmt}'") from None
            if not unsafe:
                assert out_base is not None
                new_backing, prefix = _open_new_backing(top, out_base, out_fmt)
                _copy_differences(top, new_backing, prefix, prog)
            # qemu-img reports a failed header change, then still ends the progress
            failure = _change_backing(top, out_base, out_fmt)
            prog.print(100.0, 0)
            if failure:
                raise CliError(failure)
        finally:
            try:
                if new_backing is not None and new_backing[1]:
                    new_backing[0].close()
            finally:
                top.close()
    finally:
        prog.end()
    return 0


def _open_new_backing(top: Any, out_base: str, out_fmt: str | None) -> tuple[tuple[Any, bool], Any]:
    """((new backing node, whether we opened it), the node of the old chain that
    it is or None). The node is None for ``-b ""``."""
    from ..common.block import BlockError, open_image, resolve_backing_filename

    if not out_base:
        return (None, False), None
    real = resolve_backing_filename(top.filename, out_base)
    prefix = find_backing_image(top, real)
    if prefix is not None:
        return (prefix, False), prefix
    try:
        node = open_image(real, out_fmt, read_only=True)
    except BlockError as exc:
        raise CliError(f"Could not open new backing file '{out_base}': {exc.message}") from None
    return (node, True), None


def _copy_differences(top: Any, new_pair: tuple[Any, bool], prefix: Any, prog: Progress) -> None:
    """Safe mode: write into ``top`` what the old chain shows and the new backing
    file would not, where ``top`` does not allocate it."""
    from ..common.block import Status, node_status
    from ..common.errors import QemuError, strerror

    new = new_pair[0]
    old = top.backing
    size = top.size
    old_size = old.size if old is not None else 0
    new_size = new.size if new is not None else 0
    step = (100.0 / (size // min(size, IO_BUF_SIZE))) if size else 0.0
    offset = 0
    while offset < size:
        n = min(IO_BUF_SIZE, size - offset)
        try:
            run = node_status(top, offset, n)
        except QemuError as exc:
            raise CliError(
                f"error while reading image metadata: {strerror(exc.errno or errno.EIO)}"
            ) from None
        if run.flags & Status.ALLOCATED:
            offset += run.length
            continue
        n = run.length
        if prefix is not None:
            allocated, n = is_allocated_above(old, prefix, offset, n)
            if not allocated:
                offset += n
                continue
        old_is_zero = offset >= old_size
        if old_is_zero:
            buf_old = bytes(n)
        else:
            n = min(n, old_size - offset)
            try:
                buf_old = _read(old, offset, n)
            except QemuError:
                raise CliError("error while reading from old backing file") from None
        if new is None or offset >= new_size:
            buf_new = bytes(n)
        else:
            n = min(n, new_size - offset)
            try:
                buf_new = _read(new, offset, n)
            except QemuError:
                raise CliError("error while reading from new backing file") from None
        if len(buf_old) != n:
            buf_old = buf_old[:n]
        for start, length in differing_runs(buf_old, buf_new):
            try:
                if old_is_zero:
                    top.write_zeroes(offset + start, length)
                else:
                    top.write(offset + start, memoryview(buf_old)[start : start + length])
            except QemuError as exc:
                raise CliError(
                    f"Error while writing to COW image: {strerror(exc.errno or errno.EIO)}"
                ) from None
        offset += n
        prog.print(step, 100)


def _read(node: Any, offset: int, n: int) -> bytes | bytearray:
    """Read into a new buffer (``readinto`` where the driver has it: one copy less)."""
    readinto = getattr(node, "readinto", None)
    if readinto is None:
        return node.read(offset, n)
    buf = bytearray(n)
    readinto(offset, memoryview(buf))
    return buf


def _change_backing(top: Any, out_base: str | None, out_fmt: str | None) -> str | None:
    """bdrv_change_backing_file; returns qemu-img rebase's error message or None."""
    from ..common.errors import QemuError, strerror

    name = out_base or ""
    fmt = out_fmt if name else None
    shown = "(null)" if out_base is None else out_base
    code = 0
    change = getattr(top, "change_backing_file", None)
    if name and not fmt:
        code = errno.EINVAL
    elif change is None:
        code = errno.ENOTSUP
    else:
        try:
            change(name, fmt)
        except QemuError as exc:
            code = exc.errno or errno.EIO
    if not code:
        return None
    prefix = f"Could not change the backing file to '{shown}': "
    if code == errno.ENOSPC:
        return prefix + "No space left in the file header"
    if code == errno.EINVAL and out_base and not out_fmt:
        return prefix + "backing format must be specified"
    return prefix + strerror(code)
