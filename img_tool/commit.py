"""``pyqemu-img commit``: merge an overlay into a backing file (qemu-img.c img_commit).

qemu-img runs QEMU's active-commit (mirror) job: every range that the images
above the base allocate is copied into the base, data as data and zero runs as
zero writes (unmapping allowed); a base smaller than the overlay is grown
first. Then, unless ``-d`` or ``-b`` is given (``-b`` implies ``-d``), the
overlay is emptied (bdrv_make_empty), so it reads everything from its backing
file again. The overlay keeps its backing file name.

``-r`` limits the data copied to that many bytes per second, as the commit
job's speed does (100 ms slices, zero writes not counted; see
:mod:`pyqemu.common.ratelimit`).

Differences from qemu-img: ``-t``
is validated but every cache mode behaves as ``writeback``; the progress
lines of ``-p`` follow the bytes copied, not the job's internal iterations.
"""

from __future__ import annotations

import gc
import os
from collections import deque
from typing import Any

from ..common.block.buffers import aligned_bytearray
from ..common.ratelimit import RateLimit
from ..common.workers import Job, Workers
from .cli import CliError, Progress, UsageError, cvtnum, getopt, open_image_cli, qprint

CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")
#: the largest single copy request (bytes)
CHUNK = 8 << 20
#: reader threads, and data pieces in flight (read ahead of the writes)
WORKERS = 2
DEPTH = 4
#: the write-back of the written image starts every this many bytes
#: (:func:`..common.block.file.set_write_behind`), so that the disk writes
#: overlap the copy instead of all waiting for the final flush
WRITE_BEHIND = 8 << 20


def check_cache_mode(mode: str, what: str = "cache") -> None:
    """``bdrv_parse_cache_mode``: one of QEMU's cache mode names."""
    if mode not in CACHE_MODES:
        raise CliError(f"Invalid {what} option: {mode}")


def find_backing_image(top: Any, name: str) -> Any:
    """The node below ``top`` named ``name`` (bdrv_find_backing_image): a plain
    path is resolved against each image's folder and compared canonically."""
    from ..common.block import resolve_backing_filename
    from ..common.block.registry import protocol_for_filename

    def is_protocol(text: str) -> bool:
        head, sep, _ = text.partition(":")
        return text.startswith("json:") or (
            bool(sep) and "/" not in head and protocol_for_filename(text) != "file"
        )

    node = top
    while node.backing is not None:
        below = node.backing
        if is_protocol(name) or is_protocol(node.backing_filename):
            if name in (node.backing_filename, node.full_backing_filename):
                return below
        else:
            wanted = resolve_backing_filename(node.filename, name)
            if os.path.realpath(wanted) == os.path.realpath(node.full_backing_filename):
                return below
        node = below
    return None


def is_allocated_above(top: Any, base: Any, offset: int, length: int) -> tuple[bool, int]:
    """bdrv_is_allocated_above: is [offset, offset+n) allocated in ``top`` or an
    image below it and above ``base``? Returns (allocated, n). Past the end of a
    shorter intermediate image counts as allocated (it reads as zeroes)."""
    from ..common.block import Status
    from ..common.block import node_status as _status

    node = top
    n = length
    while node is not None and node is not base:
        size = node.size
        if offset >= size:
            return True, n
        run = _status(node, offset, min(n, size - offset))
        if run.flags & Status.ALLOCATED:
            return True, run.length
        n = run.length
        node = node.backing
    return False, n


def allocated_runs(top: Any, base: Any, size: int) -> list[tuple[int, int]]:
    """The ranges of [0, size) that the images above ``base`` allocate, merged."""
    runs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        # bounded queries: a driver may map the whole queried range per call
        allocated, n = is_allocated_above(top, base, pos, min(CHUNK, size - pos))
        if allocated:
            if runs and runs[-1][0] + runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((pos, n))
        pos += n
    return runs


def commit_ranges(
    top: Any,
    base: Any,
    runs: list[tuple[int, int]],
    progress: Progress,
    limit: RateLimit | None = None,
) -> None:
    """Copy the allocated ``runs`` of ``top``'s chain into ``base``: zero ranges as
    zero writes (unmapping allowed); data that block status locates in a host
    file copied file to file (``base.write_from``: copy_file_range, no Python
    buffer); other data (compressed clusters, drivers without host offsets)
    read by worker threads into reused buffers while the main thread writes
    earlier pieces, in order.

    The zero ranges go first: a zero write that frees clusters of ``base``
    makes its driver write metadata and flush (and punch holes), which is
    cheap while little data waits in the host cache. The ranges are disjoint,
    so the order does not change what ``base`` shows.
    """
    from ..common.block.file import set_write_behind

    total = sum(n for _, n in runs) or 1
    readinto = getattr(top, "readinto", None)
    set_write_behind(base, WRITE_BEHIND)
    write_from = getattr(base, "write_from", None)
    planned = list(_commit_pieces(top, runs))
    pieces = iter([p for p in planned if p[2]] + [p for p in planned if not p[2]])
    pending: deque[tuple[Job | None, int, int, Any]] = deque()
    buffers: list[bytearray | None] = [None] * DEPTH
    workers = Workers(WORKERS) if readinto is not None else None
    count = 0
    done = 0
    # no cyclic garbage here: collections would only walk every object again
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            while len(pending) < DEPTH:
                piece = next(pieces, None)
                if piece is None:
                    break
                pos, n, zero, where = piece
                if zero:
                    pending.append((None, pos, n, None))
                elif where is not None and write_from is not None:
                    pending.append((None, pos, n, where))  # copied file to file
                elif workers is None:
                    pending.append((None, pos, n, bytearray(top.read(pos, n))))
                else:
                    buf = buffers[count % DEPTH]
                    if buf is None:
                        buf = buffers[count % DEPTH] = aligned_bytearray(CHUNK)
                    count += 1
                    view = memoryview(buf)[:n]
                    pending.append((workers.submit(readinto, pos, view), pos, n, buf))
            if not pending:
                break
            job, pos, n, buf = pending[0]
            if buf is None:
                base.write_zeroes(pos, n, may_unmap=True)
            elif type(buf) is tuple:
                write_from(pos, buf[0], buf[1], n)
                if limit is not None:
                    limit.throttle(n)
            else:
                if job is not None:
                    job.result()
                base.write(pos, memoryview(buf)[:n])
                if limit is not None:
                    limit.throttle(n)
            pending.popleft()
            done += n
            progress.print(100.0 * done / total, 0)
    finally:
        for job, _, _, _ in pending:  # nothing may still read when the images close
            if job is not None:
                job.wait()
        if workers is not None:
            workers.shutdown()
        if gc_was_enabled:
            gc.enable()


def _commit_pieces(top: Any, runs: list[tuple[int, int]]) -> Any:
    """Yield (offset, length, zero, where) over ``runs`` by the chain's block
    status: adjacent zero ranges joined, data in pieces of at most CHUNK
    bytes; ``where`` is (protocol node, host offset) of data that lies
    contiguous in a host file (the base copies it file to file), else None."""
    from ..common.block import block_status_above

    zero_start = zero_end = -1
    for start, length in runs:
        pos = start
        end = start + length
        while pos < end:
            run = block_status_above(top, pos, min(CHUNK, end - pos))
            n = run.length
            if run.zero and not run.data:
                if zero_end != pos:
                    if zero_end > zero_start:
                        yield zero_start, zero_end - zero_start, True, None
                    zero_start = pos
                zero_end = pos + n
            else:
                if zero_end > zero_start:
                    yield zero_start, zero_end - zero_start, True, None
                    zero_start = zero_end = -1
                where = None
                if run.data and run.offset is not None and run.file is not None:
                    where = (run.file, run.offset)
                yield pos, n, False, where
            pos += n
    if zero_end > zero_start:
        yield zero_start, zero_end - zero_start, True, None


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "f:ht:b:dpqr:",
        {"help": 0, "object": 1, "image-opts": 0},
    )
    fmt: str | None = None
    cache = "writeback"
    base_name: str | None = None
    drop = progress = quiet = image_opts = False
    rate_limit = 0
    for name, value in opts:
        if name == "-f":
            fmt = value
        elif name == "-t":
            cache = str(value)
        elif name == "-b":
            base_name = value
            drop = True  # -b implies -d
        elif name == "-d":
            drop = True
        elif name == "-p":
            progress = True
        elif name == "-q":
            quiet = True
        elif name == "-r":
            rate_limit = cvtnum("rate limit", str(value))
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    if quiet:
        progress = False
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    filename = operands[0]
    check_cache_mode(cache)

    from ..common.block import BlockError, reopen_backing
    from ..common.errors import QemuError

    top = open_image_cli(filename, fmt, image_opts=image_opts, writable=True, quiet=quiet)
    prog = Progress(progress, 1.0)
    prog.print(0.0, 100)
    try:
        if base_name is not None:
            base = find_backing_image(top, base_name)
            if base is None:
                raise CliError(f"Did not find '{base_name}' in the backing chain of '{filename}'")
        else:
            base = top.backing
            if base is None:
                raise CliError("Image does not have a backing file")
        try:
            parent = top
            while parent.backing is not base:
                parent = parent.backing
            base = reopen_backing(parent, read_only=False)
            if top.size > base.size:
                base.truncate(top.size, exact=True)
            limit = RateLimit(rate_limit) if rate_limit else None
            commit_ranges(top, base, allocated_runs(top, base, top.size), prog, limit)
            base.flush()
            if not drop:
                make_empty = getattr(top, "make_empty", None)
                if make_empty is not None:  # others: -ENOTSUP, ignored as qemu-img does
                    make_empty()
            top.flush()
        except (BlockError, QemuError) as exc:
            raise CliError(exc.message) from None
        except OSError as exc:
            raise CliError(exc.strerror or str(exc)) from None
        prog.print(100.0, 0)
    finally:
        try:
            top.close()
        finally:
            prog.end()
    qprint(quiet, "Image committed.\n")
    return 0
