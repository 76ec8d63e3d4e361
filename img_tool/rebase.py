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
import re
from collections import deque
from typing import Any

from ..common.workers import Workers
from .cli import CliError, Progress, UsageError, getopt, open_image_cli
from .commit import check_cache_mode, find_backing_image, is_allocated_above

#: qemu-img's IO_BUF_SIZE: the step of the safe-mode loop
IO_BUF_SIZE = 2 << 20
SECTOR = 512
#: the most bytes one worker reads and compares at once (whole steps)
CHUNK = 4 << 20
#: reader threads, and chunks in flight (read ahead of the writes)
WORKERS = 2
DEPTH = 4

_ZEROS = bytes(CHUNK)
_ZEROS_VIEW = memoryview(_ZEROS)
_EQUAL_RUNS = re.compile(b"\\x00+")


def differing_runs(
    old: bytes | bytearray, new: bytes | bytearray, n: int | None = None
) -> list[tuple[int, int]]:
    """Runs (start, length) of the 512-byte sectors where the first ``n`` bytes
    (default: all) of ``old`` and ``new`` differ (qemu-img's compare_buffers);
    a short last sector counts as one.

    Coarse to fine, every comparison a ``memcmp``: the whole range first; then
    the first and the last byte of every sector are sampled (strided copies,
    XORed as integers): a sector whose samples differ differs. Only runs of
    sectors whose samples agree are compared, as a whole, then by halves down
    to single sectors where they differ.
    """
    if n is None:
        n = len(old)
    mn = memoryview(new)
    if old.startswith(mn[:n]):
        return []
    mo = memoryview(old)
    full = n - n % SECTOR
    runs: list[tuple[int, int]] = []
    if full:
        nsec = full // SECTOR
        first = int.from_bytes(mo[0:full:SECTOR].tobytes(), "big") ^ int.from_bytes(
            mn[0:full:SECTOR].tobytes(), "big"
        )
        last = int.from_bytes(mo[SECTOR - 1 : full : SECTOR].tobytes(), "big") ^ int.from_bytes(
            mn[SECTOR - 1 : full : SECTOR].tobytes(), "big"
        )
        samples = (first | last).to_bytes(nsec, "big")
        pos = 0  # sectors before ``pos`` are settled
        startswith = old.startswith
        for match in _EQUAL_RUNS.finditer(samples):
            stack = [match.span()]
            while stack:
                a, b = stack.pop()
                if startswith(mn[a * SECTOR : b * SECTOR], a * SECTOR):
                    if a > pos:
                        runs.append((pos * SECTOR, (a - pos) * SECTOR))
                    pos = b
                elif b - a > 1:
                    mid = (a + b) >> 1
                    stack.append((mid, b))
                    stack.append((a, mid))
        if pos < nsec:
            runs.append((pos * SECTOR, full - pos * SECTOR))
    if full < n and not old.startswith(mn[full:n], full):
        if runs and runs[-1][0] + runs[-1][1] == full:
            runs[-1] = (runs[-1][0], n - runs[-1][0])
        else:
            runs.append((full, n - full))
    return runs


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
            from .cli import add_object_cli

            add_object_cli(value or "")
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
    file would not, where ``top`` does not allocate it.

    The steps are qemu-img's (2 MiB, cut where the image's allocation or a
    backing file's end is); consecutive steps of the same kind form a chunk
    that a worker thread reads (old and new side, into reused buffers) and
    compares while the main thread writes the sectors of earlier chunks that
    differ, in order, as few large writes.
    """
    from ..common.errors import QemuError, strerror

    old = top.backing
    new = new_pair[0]
    pairs: list[tuple[bytearray, bytearray] | None] = [None] * DEPTH
    pending: deque[tuple[Any, tuple[int, int, bool, int]]] = deque()
    workers = Workers(WORKERS)
    plan_error: CliError | None = None
    plan = _plan_chunks(top, old, new, prefix)
    count = 0
    try:
        while True:
            while plan_error is None and len(pending) < DEPTH:
                try:
                    chunk = next(plan, None)
                except CliError as exc:  # reported once the chunks before it are written
                    plan_error = exc
                    break
                if chunk is None:
                    break
                pair = pairs[count % DEPTH]
                if pair is None:
                    pair = pairs[count % DEPTH] = (bytearray(CHUNK), bytearray(CHUNK))
                buf_old, buf_new = pair
                count += 1
                job = workers.submit(_compare_chunk, old, new, chunk, buf_old, buf_new)
                pending.append((job, chunk))
            if not pending:
                break
            job, (offset, n, old_is_zero, steps) = pending[0]
            buf_old, runs = job.result()
            pending.popleft()
            for start, length in runs:
                try:
                    if old_is_zero:
                        top.write_zeroes(offset + start, length)
                    else:
                        top.write(offset + start, memoryview(buf_old)[start : start + length])
                except QemuError as exc:
                    raise CliError(
                        f"Error while writing to COW image: {strerror(exc.errno or errno.EIO)}"
                    ) from None
            for step in steps:
                prog.print(step, 100)
        if plan_error is not None:
            raise plan_error
    finally:
        for job, _ in pending:  # nothing may still read when the images close
            job.wait()
        workers.shutdown()


def _plan_chunks(top: Any, old: Any, new: Any, prefix: Any) -> Any:
    """Yield the chunks to compare, as (offset, length, old side past its end,
    progress deltas of the qemu-img steps in it), in qemu-img's step order.

    A chunk joins consecutive steps that are contiguous and of one kind, up to
    CHUNK bytes; a step that is not whole sectors ends its chunk (sectors are
    counted from each step's start, as qemu-img does). Steps past the old
    backing file's end (zero writes) stay alone, as qemu-img issues them.
    """
    from ..common.block import Status, node_status
    from ..common.errors import QemuError, strerror

    size = top.size
    old_size = old.size if old is not None else 0
    new_size = new.size if new is not None else 0
    delta = (100.0 / (size // min(size, IO_BUF_SIZE))) if size else 0.0
    chunk: list[Any] | None = None  # [offset, length, old_is_zero, new_is_zero, steps]
    offset = 0
    while offset < size:
        # qemu-img's step: the status of (at most) IO_BUF_SIZE bytes from here
        try:
            run = node_status(top, offset, min(size - offset, IO_BUF_SIZE))
        except QemuError as exc:
            if chunk is not None:
                yield tuple(chunk[:3]) + (chunk[4],)
                chunk = None
            raise CliError(
                f"error while reading image metadata: {strerror(exc.errno or errno.EIO)}"
            ) from None
        n = run.length
        if run.flags & Status.ALLOCATED:
            offset += n
            continue
        if prefix is not None:
            allocated, n = is_allocated_above(old, prefix, offset, n)
            if not allocated:
                offset += n
                continue
        old_is_zero = offset >= old_size
        if not old_is_zero:
            n = min(n, old_size - offset)
        new_is_zero = new is None or offset >= new_size
        if not new_is_zero:
            n = min(n, new_size - offset)
        if (
            chunk is not None
            and chunk[0] + chunk[1] == offset
            and chunk[1] % SECTOR == 0
            and chunk[2] == old_is_zero
            and chunk[3] == new_is_zero
            and not old_is_zero
            and chunk[1] + n <= CHUNK
        ):
            chunk[1] += n
            chunk[4].append(delta)
        else:
            if chunk is not None:
                yield tuple(chunk[:3]) + (chunk[4],)
            chunk = [offset, n, old_is_zero, new_is_zero, [delta]]
        offset += n
    if chunk is not None:
        yield tuple(chunk[:3]) + (chunk[4],)


def _compare_chunk(
    old: Any,
    new: Any,
    chunk: tuple[int, int, bool, list[float]],
    buf_old: bytearray,
    buf_new: bytearray,
) -> tuple[bytes | bytearray, list[tuple[int, int]]]:
    """Worker: read both sides of a chunk and find the sectors that differ.
    Returns (the old side's buffer, differing runs)."""
    from ..common.errors import QemuError

    offset, n, old_is_zero, _ = chunk
    old_side: bytes | bytearray = _ZEROS
    new_side: bytes | bytearray = _ZEROS
    if not old_is_zero:
        try:
            old_side = _read(old, offset, n, buf_old)
        except QemuError:
            raise CliError("error while reading from old backing file") from None
    if new is not None and offset < new.size:
        try:
            new_side = _read(new, offset, n, buf_new)
        except QemuError:
            raise CliError("error while reading from new backing file") from None
    return old_side, differing_runs(old_side, new_side, n)


def _read(node: Any, offset: int, n: int, buf: bytearray) -> bytes | bytearray:
    """``n`` bytes of ``node`` (and its chain) at ``offset``, in ``buf`` where the
    driver can read into it. Ranges the chain's block status reports as zero
    are filled here, not read (or, all zero, give the shared zero buffer)."""
    from ..common.block import block_status_above

    readinto = getattr(node, "readinto", None)
    if readinto is None:
        return node.read(offset, n)
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < n:
        run = block_status_above(node, offset + pos, n - pos)
        zero = run.zero
        if runs and runs[-1][2] == zero:
            runs[-1] = (runs[-1][0], pos + run.length, zero)
        else:
            runs.append((pos, pos + run.length, zero))
        pos += run.length
    if len(runs) == 1 and runs[0][2]:
        return _ZEROS
    view = memoryview(buf)
    for start, end, zero in runs:
        if zero:
            view[start:end] = _ZEROS_VIEW[: end - start]
        else:
            readinto(offset + start, view[start:end])
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
