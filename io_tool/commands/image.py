"""flush, truncate, length, info, discard, alloc, map (qemu-io-cmds.c)."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

from ..report import REQUEST_MAX_BYTES, NumberError, cvtnum, cvtstr, out
from . import command
from .io import (
    _offset_count,
    _options,
    _parse,
    _request_done,
    _run,
    _stops,
    _usage,
    bad_option,
    error_code,
    strerror,
)

if TYPE_CHECKING:
    from ..session import Session

EINVAL = -errno.EINVAL
PREALLOC_MODES = ("off", "metadata", "falloc", "full")


@command("flush", altname="f", oneline="flush all in-core file state to disk")
def flush_f(s: Session, argv: list[str]) -> int:
    assert s.blk is not None
    return -_run(s.blk.flush)


@command(
    "truncate",
    altname="t",
    argmin=1,
    argmax=3,
    args="[-m prealloc_mode] off",
    oneline="truncates the current file at the given offset",
    write=True,
)
def truncate_f(s: Session, argv: list[str]) -> int:
    from ...common.errors import QemuError

    opts, rest = _parse(argv, "m:")
    prealloc = "off"
    for o, v in opts:
        if o == "?":
            return bad_option("truncate", v)
        if v not in PREALLOC_MODES:
            s.error_report("Invalid preallocation mode '%s'" % v)
            return EINVAL
        prealloc = v
    if not rest:
        # getopt left optind at argc: qemu-io reads argv[argc] (NULL)
        out("Parsing error: (null)\n")
        return EINVAL
    try:
        size = cvtnum(rest[0], argv[1])
    except NumberError as exc:
        return -exc.errno
    assert s.blk is not None
    try:
        s.blk.truncate(size, prealloc)
    except (QemuError, OSError) as exc:
        s.error_report(getattr(exc, "message", None) or strerror(error_code(exc)))
        return -error_code(exc)
    return 0


@command("length", altname="l", oneline="gets the length of the current file")
def length_f(s: Session, argv: list[str]) -> int:
    assert s.blk is not None
    out("%s\n" % cvtstr(float(s.blk.size)))
    return 0


@command("info", altname="i", oneline="prints information about the current file")
def info_f(s: Session, argv: list[str]) -> int:
    blk = s.blk
    assert blk is not None
    node = blk.node
    out("format name: %s\n" % node.format_name)
    cluster, vm_state = blk.get_info()
    out("cluster size: %s\n" % cvtstr(float(cluster)))
    out("vm state offset: %s\n" % cvtstr(float(vm_state)))
    specific = node.specific_info()
    if specific is not None:
        from ...img_tool.info import query_image_info
        from ...img_tool.qobject import dump_human

        data = query_image_info(node).get("format-specific", {}).get("data")
        if data is not None:
            out("Format specific information:\n" + dump_human(data, 1))
    return 0


DISCARD_HELP = """
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 Discards a segment of the currently open file.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

"""


@command(
    "discard",
    altname="d",
    argmin=2,
    argmax=-1,
    args="[-Cq] off len",
    oneline="discards a number of bytes at a specified offset",
    help=DISCARD_HELP,
    write=True,
)
@_stops
def discard_f(s: Session, argv: list[str]) -> int:
    f, rest = _options("discard", argv, "Cq")
    if len(rest) != 2:
        return _usage("discard")
    offset, length = _offset_count(rest)
    if length > REQUEST_MAX_BYTES:
        out("length cannot exceed %d, given %s\n" % (REQUEST_MAX_BYTES, rest[1]))
        return EINVAL
    assert s.blk is not None
    t1 = time.monotonic()
    code = _run(s.blk.pdiscard, offset, length)
    t2 = time.monotonic()
    return _request_done("discard", code, t2 - t1, offset, length, f, "discard")


@command(
    "alloc",
    altname="a",
    argmin=1,
    argmax=2,
    args="offset [count]",
    oneline="checks if offset is allocated in the file",
)
def alloc_f(s: Session, argv: list[str]) -> int:
    try:
        start = offset = cvtnum(argv[1])
        count = cvtnum(argv[2]) if len(argv) == 3 else 512
    except NumberError as exc:
        return -exc.errno
    blk = s.blk
    assert blk is not None
    remaining = count
    sum_alloc = 0
    while remaining:
        try:
            allocated, num = blk.is_allocated(offset, remaining)
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            out("is_allocated failed: %s\n" % strerror(code))
            return -code
        offset += num
        remaining -= num
        if allocated:
            sum_alloc += num
        if num == 0:
            count -= remaining
            remaining = 0
    out("%d/%d bytes allocated at offset %s\n" % (sum_alloc, count, cvtstr(float(start))))
    return 0


@command("map", argmin=0, argmax=0, args="", oneline="prints the allocated areas of a file")
def map_f(s: Session, argv: list[str]) -> int:
    blk = s.blk
    assert blk is not None
    offset = 0
    remaining = blk.size
    lines = []
    while remaining:
        try:
            first, num = blk.is_allocated(offset, remaining)
            pos, left = offset + num, remaining - num
            while left > 0 and num:
                allocated, more = blk.is_allocated(pos, left)
                if allocated != first or not more:
                    break
                num += more
                pos += more
                left -= more
        except Exception as exc:  # noqa: BLE001
            out("".join(lines))
            s.error_report("Failed to get allocation status: %s" % strerror(error_code(exc)))
            return -error_code(exc)
        if not num:
            out("".join(lines))
            s.error_report("Unexpected end of image")
            return -errno.EIO
        lines.append(
            "%s (0x%x) bytes %s at offset %s (0x%x)\n"
            % (
                cvtstr(float(num)),
                num,
                "    allocated" if first else "not allocated",
                cvtstr(float(offset)),
                offset,
            )
        )
        offset += num
        remaining -= num
    out("".join(lines))
    return 0
