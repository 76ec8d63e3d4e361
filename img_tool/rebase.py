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
import gc
import re
from collections import deque
from typing import Any

from ..common.block.buffers import aligned_bytearray
from ..common.workers import Workers
from .cli import CliError, Progress, UsageError, getopt, open_image_cli
from .commit import check_cache_mode, find_backing_image, is_allocated_above

#: qemu-img's IO_BUF_SIZE: the step of the safe-mode loop
IO_BUF_SIZE = 2 << 20
SECTOR = 512
#: the longest range one block status query of the image covers
STATUS_SPAN = 64 << 20
#: the most bytes one worker reads and compares at once (whole steps): one
#: qemu-img step; few, small buffers stay in the CPU caches between the read
#: into them, the comparison and the write from them
CHUNK = 2 << 20
#: reader threads, and chunks in flight (read ahead of the writes)
WORKERS = 2
DEPTH = 3
#: as commit's: the image's write-back starts every this many bytes written
WRITE_BEHIND = 8 << 20

_ZEROS = bytes(CHUNK)
_ZERO_SECTOR = bytes(SECTOR)
_EQUAL_RUNS = re.compile(b"\\x00+")


def differing_runs(
    old: bytes | bytearray, new: bytes | bytearray, n: int | None = None, start: int = 0
) -> list[tuple[int, int]]:
    """Runs (offset, length) of the 512-byte sectors where ``n`` bytes from
    ``start`` (default: all) of ``old`` and ``new`` differ (qemu-img's
    compare_buffers); sectors count from ``start``, a short last one counts
    as one; offsets are positions in the buffers.

    Coarse to fine, every comparison a ``memcmp``: the whole range first; then
    the first and the last byte of every sector are sampled (strided copies,
    XORed as integers): a sector whose samples differ differs. Only runs of
    sectors whose samples agree are compared, as a whole, then by halves down
    to single sectors where they differ.
    """
    if n is None:
        n = len(old) - start
    if new is _ZEROS and old is not _ZEROS:
        return nonzero_runs(old, n, start)
    if old is _ZEROS and new is not _ZEROS:
        return nonzero_runs(new, n, start)
    mn = memoryview(new)
    startswith = old.startswith
    if startswith(mn[start : start + n], start):
        return []
    mo = memoryview(old)
    full = n - n % SECTOR
    runs: list[tuple[int, int]] = []
    if full:
        nsec = full // SECTOR
        b0 = start + full
        samples = 0
        for a0 in (start, start + SECTOR - 1):  # first and last bytes
            for side in (mo, mn):
                if side.obj is not _ZEROS:  # the zero buffer's samples are 0
                    samples ^= int.from_bytes(side[a0:b0:SECTOR].tobytes(), "big") << (
                        0 if a0 == start else 8 * nsec
                    )
        # a sector differs where its first or its last sample differs
        mask = (1 << (8 * nsec)) - 1
        samples = ((samples & mask) | (samples >> (8 * nsec))).to_bytes(nsec, "big")
        pos = 0  # sectors before ``pos`` are settled
        for match in _EQUAL_RUNS.finditer(samples):
            stack = [match.span()]
            while stack:
                a, b = stack.pop()
                if startswith(mn[start + a * SECTOR : start + b * SECTOR], start + a * SECTOR):
                    if a > pos:
                        runs.append((start + pos * SECTOR, (a - pos) * SECTOR))
                    pos = b
                elif b - a > 1:
                    mid = (a + b) >> 1
                    stack.append((mid, b))
                    stack.append((a, mid))
        if pos < nsec:
            runs.append((start + pos * SECTOR, full - pos * SECTOR))
    end = start + n
    if full < n and not startswith(mn[start + full : end], start + full):
        if runs and runs[-1][0] + runs[-1][1] == start + full:
            runs[-1] = (runs[-1][0], end - runs[-1][0])
        else:
            runs.append((start + full, n - full))
    return runs


def nonzero_runs(buf: bytes | bytearray, n: int, start: int = 0) -> list[tuple[int, int]]:
    """:func:`differing_runs` of ``buf`` against zeroes: runs (offset, length)
    of the 512-byte sectors of ``buf[start:start+n]`` that are not all zero.

    The zero sectors are found with ``find`` of a zero sector: in data
    without 512 zero bytes in a row, the search skips a sector's length per
    probe (half the time of sampling every sector, measured on random and
    pattern data; the buffer is touched about once per sector).
    A hit that does not start on a sector boundary is checked at the next
    boundary, and the search goes on past that boundary.
    """
    runs: list[tuple[int, int]] = []
    find = buf.find
    startswith = buf.startswith
    end = start + n
    full_end = end - n % SECTOR
    pos = start  # where the search for a zero sector goes on
    data_from = start  # the start of the sectors not yet known to be zero
    while True:
        hit = find(_ZERO_SECTOR, pos, full_end)
        if hit < 0:
            break
        sector = start + ((hit - start + SECTOR - 1) & ~(SECTOR - 1))
        if sector + SECTOR > full_end:
            break
        if not startswith(_ZERO_SECTOR, sector):
            pos = sector + 1  # a zero sector starts at a later boundary
            continue
        zero_end = sector + SECTOR
        while zero_end < full_end and startswith(_ZERO_SECTOR, zero_end):
            zero_end += SECTOR
        if sector > data_from:
            runs.append((data_from, sector - data_from))
        data_from = pos = zero_end
    if full_end > data_from:
        runs.append((data_from, full_end - data_from))
    if full_end < end and not _ZEROS.startswith(memoryview(buf)[full_end:end]):
        if runs and runs[-1][0] + runs[-1][1] == full_end:
            runs[-1] = (runs[-1][0], end - runs[-1][0])
        else:
            runs.append((full_end, end - full_end))
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
    that a worker thread reads (old and new side, into reused buffers, only
    where not both read as zero) and compares while the main thread writes
    the sectors of earlier chunks that differ, in order, as few large writes
    from the buffer the old side was read into (as qemu-img). Copying them
    file to file instead (copy_file_range) made the kernel read the old data a
    second time: on the 1 GiB benchmark chain, median CPU of 8-12 alternating
    runs, safe rebase 0.485 -> 0.436 s and 0.538 -> 0.513 s, flatten 0.420 ->
    0.307 s (wall 0.397 -> 0.288 s).
    """
    from ..common.block.file import set_write_behind
    from ..common.errors import QemuError, strerror

    old = top.backing
    set_write_behind(top, WRITE_BEHIND)
    new = new_pair[0]
    pairs: list[tuple[bytearray, bytearray] | None] = [None] * DEPTH
    pending: deque[tuple[Any, tuple[int, int, bool, int]]] = deque()
    workers = Workers(WORKERS)
    plan_error: CliError | None = None
    plan = _plan_chunks(top, old, new, prefix)
    count = 0
    # no cyclic garbage here: collections would only walk every object again
    gc_was_enabled = gc.isenabled()
    gc.disable()
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
                    # a flatten never reads a new side: no buffer (and no
                    # page faults) for it
                    pair = pairs[count % DEPTH] = (
                        aligned_bytearray(CHUNK),
                        aligned_bytearray(CHUNK) if new is not None else bytearray(),
                    )
                buf_old, buf_new = pair
                count += 1
                job = workers.submit(_compare_chunk, old, new, chunk, buf_old, buf_new)
                pending.append((job, chunk))
            if not pending:
                break
            job, (offset, n, old_is_zero, steps) = pending[0]
            buf_old, runs = job.result()
            pending.popleft()
            for start, length, old_reads_zero in runs:
                # as qemu-img: zero writes past the old chain's end, else data
                # (zeroes where the old chain reads as zero)
                source = _ZEROS if old_reads_zero else buf_old
                try:
                    if old_is_zero:
                        top.write_zeroes(offset + start, length)
                    else:
                        top.write(offset + start, memoryview(source)[start : start + length])
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
        if gc_was_enabled:
            gc.enable()


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
    free_end = 0  # the end of the last range found unallocated in ``top``
    while offset < size:
        # qemu-img's step: the status of (at most) IO_BUF_SIZE bytes from here;
        # one longer query answers every step of an unallocated range
        if offset < free_end:
            n = min(IO_BUF_SIZE, size - offset, free_end - offset)
        else:
            try:
                run = node_status(top, offset, min(size - offset, STATUS_SPAN))
            except QemuError as exc:
                if chunk is not None:
                    yield tuple(chunk[:3]) + (chunk[4],)
                    chunk = None
                raise CliError(
                    f"error while reading image metadata: {strerror(exc.errno or errno.EIO)}"
                ) from None
            if run.flags & Status.ALLOCATED:
                offset += run.length
                continue
            free_end = offset + run.length
            n = min(IO_BUF_SIZE, run.length)
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
) -> tuple[bytearray, list[tuple[int, int, bool]]]:
    """Worker: find the sectors of a chunk where the old chain and the new
    backing file differ. Returns (the buffer of the old side's data, runs
    (offset in the chunk, length, whether the old side reads as zero there)).

    Both sides are cut where their chains' block status changes between
    zero and data: ranges zero on both sides are neither read nor compared;
    a side that is zero is compared as the shared zero buffer, not read."""
    from ..common.errors import QemuError

    offset, n, old_is_zero, _ = chunk
    if old_is_zero:
        old_runs: list[tuple[int, int, bool, Any]] = [(0, n, True, None)]
    else:
        try:
            old_runs = _extents(old, offset, n)
        except QemuError:
            raise CliError("error while reading from old backing file") from None
    if new is None or offset >= new.size:
        new_runs: list[tuple[int, int, bool, Any]] = [(0, n, True, None)]
    else:
        try:
            new_runs = _extents(new, offset, n)
        except QemuError:
            raise CliError("error while reading from new backing file") from None
    out: list[tuple[int, int, bool]] = []
    i = j = 0
    pos = 0
    while pos < n:
        old_start, old_end, old_zero, old_at = old_runs[i]
        new_start, new_end, new_zero, new_at = new_runs[j]
        end = min(old_end, new_end)
        if not (old_zero and new_zero):
            side_old: bytes | bytearray = _ZEROS
            side_new: bytes | bytearray = _ZEROS
            if not old_zero:
                try:
                    _read_into(old, offset, pos, end, buf_old, old_at, pos - old_start)
                except QemuError:
                    raise CliError("error while reading from old backing file") from None
                side_old = buf_old
            if not new_zero:
                try:
                    _read_into(new, offset, pos, end, buf_new, new_at, pos - new_start)
                except QemuError:
                    raise CliError("error while reading from new backing file") from None
                side_new = buf_new
            for start, length in differing_runs(side_old, side_new, end - pos, pos):
                last = out[-1] if out else None
                if last is not None and last[2] == old_zero and last[0] + last[1] == start:
                    out[-1] = (last[0], last[1] + length, old_zero)
                else:
                    out.append((start, length, old_zero))
        pos = end
        if pos == old_end:
            i += 1
        if pos == new_end:
            j += 1
    return buf_old, out


def _extents(node: Any, offset: int, n: int) -> list[tuple[int, int, bool, Any]]:
    """The chain of ``node`` over [offset, offset+n) as (start, end, reads as
    zero, (protocol node, host offset) of data contiguous in a host file or
    None) relative to ``offset``, adjacent ones of one kind merged (data
    only while the host offsets stay contiguous in one file)."""
    from ..common.block import block_status_above

    runs: list[tuple[int, int, bool, Any]] = []
    pos = 0
    while pos < n:
        run = block_status_above(node, offset + pos, n - pos)
        zero = run.zero
        at = None
        if run.data and not zero and run.offset is not None and run.file is not None:
            at = (run.file, run.offset)
        if runs and runs[-1][2] == zero:
            last = runs[-1]
            if zero or (
                at is not None
                and last[3] is not None
                and last[3][0] is at[0]
                and last[3][1] + (pos - last[0]) == at[1]
            ):
                runs[-1] = (last[0], pos + run.length, zero, last[3])
                pos += run.length
                continue
            if at is None and last[3] is None:
                runs[-1] = (last[0], pos + run.length, zero, None)
                pos += run.length
                continue
        runs.append((pos, pos + run.length, zero, at))
        pos += run.length
    return runs


def _read_into(
    node: Any, offset: int, start: int, end: int, buf: bytearray, at: Any, skip: int
) -> None:
    """Read [offset+start, offset+end) of ``node``'s chain into ``buf[start:end]``;
    straight from the host file where ``at`` (protocol node, host offset, as
    :func:`_extents` found, ``skip`` bytes before ``start``) says it lies."""
    if at is not None:
        file_readinto = getattr(at[0], "readinto", None)
        if file_readinto is not None:
            file_readinto(at[1] + skip, memoryview(buf)[start:end])
            return
    readinto = getattr(node, "readinto", None)
    if readinto is not None:
        readinto(offset + start, memoryview(buf)[start:end])
    else:
        buf[start:end] = node.read(offset + start, end - start)


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
