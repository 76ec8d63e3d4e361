"""read, readv, write, writev, aio_read, aio_write, aio_flush (qemu-io-cmds.c)."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..getopt import getopt
from ..report import (
    REQUEST_MAX_BYTES,
    NumberError,
    cvtnum,
    dump_buffer,
    err,
    out,
    parse_pattern,
    print_report,
    report_text,
)
from . import command, find_command

if TYPE_CHECKING:
    from ..session import Session

EINVAL = -errno.EINVAL


def error_code(exc: BaseException) -> int:
    """The positive errno of a failed request."""
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


def strerror(code: int) -> str:
    from ...common.errors import strerror as _strerror

    return _strerror(code)


def _run(func, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """Run a request; 0 or the positive errno it failed with."""
    from ...common.errors import QemuError

    try:
        func(*args, **kwargs)
    except (QemuError, OSError) as exc:
        return error_code(exc)
    except MemoryError:
        return errno.ENOMEM
    return 0


def _usage(name: str) -> int:
    ct = find_command(name)
    assert ct is not None
    out(ct.usage_line())
    return EINVAL


def _parse(argv: list[str], shortopts: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """getopt for a command (messages name the command as typed)."""
    return getopt(argv[0], argv[1:], shortopts)


def bad_option(name: str, message: str | None) -> int:
    """getopt's message on stderr, then the command's usage line."""
    err(f"{message}\n")
    return _usage(name)


class _Stop(Exception):
    """Ends a command early with ``code`` (any message already printed)."""

    def __init__(self, code: int) -> None:
        self.code = code


def _stops(func):  # type: ignore[no-untyped-def]
    """Let a handler end with :class:`_Stop` (its code is the return value)."""

    def handler(s: Session, argv: list[str]) -> int:
        try:
            return func(s, argv)
        except _Stop as stop:
            return stop.code

    return handler


def _options(
    name: str,
    argv: list[str],
    shortopts: str,
    values: dict[str, Callable[[str], Any]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A command's options, in order: {letter: True, or its converted argument}.

    ``values`` maps a letter to the converter of its argument; a bad number
    stops the command with its errno, any other ValueError with -EINVAL, and a
    bad option with getopt's message and the usage line.
    """
    opts, rest = _parse(argv, shortopts)
    found: dict[str, Any] = {}
    for o, v in opts:
        if o == "?":
            raise _Stop(bad_option(name, v))
        convert = values.get(o) if values else None
        if convert is None:
            found[o] = True
            continue
        try:
            found[o] = convert(v or "")
        except NumberError as exc:
            raise _Stop(-exc.errno) from None
        except ValueError:
            raise _Stop(EINVAL) from None
    return found, rest


def _invalid_request(kind: str) -> Callable[[str], Any]:
    """The ``-i`` of the aio commands: say so and end the command with 0."""

    def inject(_value: str) -> Any:
        out("injecting invalid %s request\n" % kind)
        raise _Stop(0)

    return inject


def _offset_count(rest: list[str]) -> tuple[int, int]:
    """``off len``."""
    try:
        return cvtnum(rest[0]), cvtnum(rest[1])
    except NumberError as exc:
        raise _Stop(-exc.errno) from None


def _offset_vector(rest: list[str]) -> tuple[int, int]:
    """``off len [len..]``: the offset and the total length."""
    try:
        offset = cvtnum(rest[0])
    except NumberError as exc:
        raise _Stop(-exc.errno) from None
    sizes = create_iovec(rest[1:])
    if sizes is None:
        raise _Stop(EINVAL)
    return offset, sum(sizes)


def _check_sectors(offset: int, count: int) -> None:
    """VM state and compressed requests: both must be sector-aligned."""
    if offset % 512:
        out("%d is not a sector-aligned value for 'offset'\n" % offset)
        raise _Stop(EINVAL)
    if count % 512:
        out("%d is not a sector-aligned value for 'count'\n" % count)
        raise _Stop(EINVAL)


def _pread(blk: Any, offset: int, count: int) -> tuple[int, bytearray]:
    """(0, data) or (positive errno, empty)."""
    try:
        return 0, blk.pread(offset, count)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an errno
        return error_code(exc), bytearray()


def _read_text(
    buf: bytearray,
    offset: int,
    count: int,
    seconds: float,
    f: dict[str, Any],
    check: tuple[int, int] | None = None,
) -> tuple[str, int]:
    """What a read prints after its data came back, and its return value.

    With ``-P`` (``f["P"]``, the pattern) the ``check`` range (start, length
    in ``buf``; default all of it) is verified; ``-q``, ``-v``, ``-C`` as read.
    """
    text = []
    ret = 0
    if "P" in f:
        start, length = check or (0, count)
        if start or length != len(buf):
            checked: bytes | bytearray = buf[start : start + length]
        else:
            checked = buf
        if not matches_pattern(checked, f["P"]):
            text.append(
                "Pattern verification failed at offset %d, %d bytes\n" % (offset + start, length)
            )
            ret = EINVAL
    if "q" not in f:
        if "v" in f:
            text.append(dump_buffer(buf, offset))
        text.append(report_text("read", seconds, offset, count, count, 1, "C" in f))
    return "".join(text), ret


def pattern_buffer(pattern: int, length: int) -> bytes:
    """A buffer of ``length`` bytes of ``pattern`` (memset)."""
    return bytes((pattern,)) * length


def matches_pattern(buf: bytes | bytearray | memoryview, pattern: int) -> bool:
    """memcmp against a pattern buffer, chunk by chunk (``startswith`` is a memcmp
    without copies)."""
    data = buf if isinstance(buf, (bytes, bytearray)) else bytes(buf)
    step = 1 << 24
    chunk = pattern_buffer(pattern, min(step, len(data)))
    for pos in range(0, len(data), step):
        end = min(pos + step, len(data))
        part = chunk if end - pos == len(chunk) else chunk[: end - pos]
        if not data.startswith(part, pos, end):
            return False
    return True


# ----------------------------------------------------------------------
# read

READ_HELP = """
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 -b, -- read from the VM state rather than the virtual disk
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored for backwards compatibility
 -P, -- use a pattern to verify read data
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output

"""


@command(
    "read",
    altname="r",
    argmin=2,
    argmax=-1,
    args="[-abCqv] [-P pattern [-s off] [-l len]] off len",
    oneline="reads a number of bytes at a specified offset",
    help=READ_HELP,
)
@_stops
def read_f(s: Session, argv: list[str]) -> int:
    f, rest = _options("read", argv, "bCl:pP:qs:v", {"l": cvtnum, "P": parse_pattern, "s": cvtnum})
    if len(rest) != 2:
        return _usage("read")
    offset, count = _offset_count(rest)
    if count > REQUEST_MAX_BYTES:
        out("length cannot exceed %d, given %s\n" % (REQUEST_MAX_BYTES, rest[1]))
        return EINVAL
    if "P" not in f and ("l" in f or "s" in f):
        return _usage("read")
    pattern_offset = f.get("s", 0)
    pattern_count = f.get("l", count - pattern_offset)
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        out("pattern verification range exceeds end of read data\n")
        return EINVAL
    if "b" in f:
        _check_sectors(offset, count)
    assert s.blk is not None
    t1 = time.monotonic()
    if "b" in f:
        code, buf = errno.ENOTSUP, bytearray()  # no driver of ours stores VM state
    else:
        code, buf = _pread(s.blk, offset, count)
    t2 = time.monotonic()
    if code:
        out("read failed: %s\n" % strerror(code))
        return -code
    text, ret = _read_text(buf, offset, count, t2 - t1, f, (pattern_offset, pattern_count))
    out(text)
    return ret


# ----------------------------------------------------------------------
# vectors


def create_iovec(args: list[str]) -> list[int] | None:
    """Parse the lengths of a vectored request; None after the message."""
    sizes: list[int] = []
    total = 0
    for arg in args:
        try:
            length = cvtnum(arg)
        except NumberError:
            return None
        if length > REQUEST_MAX_BYTES:
            out("Argument '%s' exceeds maximum size %d\n" % (arg, REQUEST_MAX_BYTES))
            return None
        if total > REQUEST_MAX_BYTES - length:
            out("The total number of bytes exceed the maximum size %d\n" % REQUEST_MAX_BYTES)
            return None
        sizes.append(length)
        total += length
    return sizes


READV_HELP = """
 reads a range of bytes from the given offset into multiple buffers

 Example:
 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 Uses multiple iovec buffers if more than one byte range is specified.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

"""


@command(
    "readv",
    argmin=2,
    argmax=-1,
    args="[-Cqv] [-P pattern] off len [len..]",
    oneline="reads a number of bytes at a specified offset",
    help=READV_HELP,
)
@_stops
def readv_f(s: Session, argv: list[str]) -> int:
    f, rest = _options("readv", argv, "CP:qv", {"P": parse_pattern})
    if len(rest) < 2:
        return _usage("readv")
    offset, count = _offset_vector(rest)
    assert s.blk is not None
    t1 = time.monotonic()
    code, buf = _pread(s.blk, offset, count)
    t2 = time.monotonic()
    if code:
        out("readv failed: %s\n" % strerror(code))
        return -code
    text, ret = _read_text(buf, offset, count, t2 - t1, f)
    out(text)
    return ret


# ----------------------------------------------------------------------
# write

WRITE_HELP = """
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -b, -- write to the VM state rather than the virtual disk
 -c, -- write compressed data with blk_write_compressed
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback
 -p, -- ignored for backwards compatibility
 -P, -- use different pattern to fill file
 -s, -- use a pattern file to fill the write buffer
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_co_pwrite_zeroes

"""


def _buffer_from_file(name: str, length: int) -> bytes | None:
    """``qemu_io_alloc_from_file``: the file's bytes repeated to ``length``."""
    try:
        with open(name, "rb") as f:
            head = f.read(length)
    except OSError as exc:
        err("%s: %s\n" % (name, strerror(exc.errno or errno.EIO)))
        return None
    if not head:
        err("%s: file is empty\n" % name)
        return None
    reps = -(-length // len(head))
    return (head * reps)[:length]


@command(
    "write",
    altname="w",
    argmin=2,
    argmax=-1,
    args="[-bcCfnquz] [-P pattern | -s source_file] off len",
    oneline="writes a number of bytes at a specified offset",
    help=WRITE_HELP,
    write=True,
)
@_stops
def write_f(s: Session, argv: list[str]) -> int:
    f, rest = _options("write", argv, "bcCfnpP:qs:uz", {"P": parse_pattern, "s": str})
    if len(rest) != 2:
        return _usage("write")
    if "b" in f and "z" in f:
        out("-b and -z cannot be specified at the same time\n")
        return EINVAL
    if "f" in f and ("b" in f or "c" in f):
        out("-f and -b or -c cannot be specified at the same time\n")
        return EINVAL
    if "n" in f and "z" not in f:
        out("-n requires -z to be specified\n")
        return EINVAL
    if "u" in f and "z" not in f:
        out("-u requires -z to be specified\n")
        return EINVAL
    if ("z" in f) + ("P" in f) + ("s" in f) > 1:
        out("Only one of -z, -P, and -s can be specified at the same time\n")
        return EINVAL
    offset, count = _offset_count(rest)
    if count > REQUEST_MAX_BYTES and "n" not in f:
        out("length cannot exceed %d without -n, given %s\n" % (REQUEST_MAX_BYTES, rest[1]))
        return EINVAL
    if "b" in f or "c" in f:
        _check_sectors(offset, count)
    pattern = f.get("P", 0xCD)
    fua = "f" in f
    buf: bytes | None = None
    if "s" in f:
        buf = _buffer_from_file(f["s"], count)
        if buf is None:
            return EINVAL
    elif "c" in f:
        buf = pattern_buffer(pattern, count)
    blk = s.blk
    assert blk is not None
    t1 = time.monotonic()
    if "b" in f:
        code = errno.ENOTSUP  # no driver of ours stores VM state
    elif "z" in f:
        code = _run(blk.pwrite_zeroes, offset, count, may_unmap="u" in f, fua=fua)
    elif "c" in f:
        assert buf is not None
        code = _run(blk.pwrite_compressed, offset, buf)
    elif "s" in f:
        assert buf is not None
        code = _run(blk.pwrite, offset, buf, fua)
    else:
        code = _run(blk.pwrite_pattern, offset, pattern, count, fua)
    t2 = time.monotonic()
    return _request_done("write", code, t2 - t1, offset, count, f)


WRITEV_HELP = """
 writes a range of bytes from the given offset source from multiple buffers

 Example:
 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -q, -- quiet mode, do not show I/O statistics

"""


@command(
    "writev",
    argmin=2,
    argmax=-1,
    args="[-Cfq] [-P pattern] off len [len..]",
    oneline="writes a number of bytes at a specified offset",
    help=WRITEV_HELP,
    write=True,
)
@_stops
def writev_f(s: Session, argv: list[str]) -> int:
    f, rest = _options("writev", argv, "CfqP:", {"P": parse_pattern})
    if len(rest) < 2:
        return _usage("writev")
    offset, count = _offset_vector(rest)
    assert s.blk is not None
    t1 = time.monotonic()
    code = _run(s.blk.pwrite, offset, pattern_buffer(f.get("P", 0xCD), count), "f" in f)
    t2 = time.monotonic()
    return _request_done("writev", code, t2 - t1, offset, count, f)


def _request_done(
    name: str,
    code: int,
    seconds: float,
    offset: int,
    count: int,
    f: dict[str, Any],
    op: str = "wrote",
) -> int:
    """Print a finished request's failure, or its report unless ``-q``."""
    if code:
        out("%s failed: %s\n" % (name, strerror(code)))
        return -code
    if "q" not in f:
        print_report(op, seconds, offset, count, count, 1, "C" in f)
    return 0


# ----------------------------------------------------------------------
# aio


def _start_aio(s: Session, work) -> None:  # type: ignore[no-untyped-def]
    """Run ``work`` in the background; aio_flush (or exit) waits for it."""
    s.submit(work)


AIO_READ_HELP = """
 asynchronously reads a range of bytes from the given offset

 Example:
 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 The read is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -i, -- treat request as invalid, for exercising stats
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

"""


@command(
    "aio_read",
    argmin=2,
    argmax=-1,
    args="[-Ciqv] [-P pattern] off len [len..]",
    oneline="asynchronously reads a number of bytes",
    help=AIO_READ_HELP,
)
@_stops
def aio_read_f(s: Session, argv: list[str]) -> int:
    values = {"P": parse_pattern, "i": _invalid_request("read")}
    f, rest = _options("aio_read", argv, "CiP:qv", values)
    if len(rest) < 2:
        return _usage("aio_read")
    offset, count = _offset_vector(rest)
    blk = s.blk
    assert blk is not None
    t1 = time.monotonic()

    def work() -> str:
        code, buf = _pread(blk, offset, count)
        t2 = time.monotonic()
        if code:
            return "readv failed: %s\n" % strerror(code)
        return _read_text(buf, offset, count, t2 - t1, f)[0]

    _start_aio(s, work)
    return 0


AIO_WRITE_HELP = """
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 The write is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- treat request as invalid, for exercising stats
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_aio_pwrite_zeroes

"""


@command(
    "aio_write",
    argmin=2,
    argmax=-1,
    args="[-Cfiquz] [-P pattern] off len [len..]",
    oneline="asynchronously writes a number of bytes",
    help=AIO_WRITE_HELP,
    write=True,
)
@_stops
def aio_write_f(s: Session, argv: list[str]) -> int:
    values = {"P": parse_pattern, "i": _invalid_request("write")}
    f, rest = _options("aio_write", argv, "CfiqP:uz", values)
    if len(rest) < 2:
        return _usage("aio_write")
    zflag, fua = "z" in f, "f" in f
    if zflag and len(rest) != 2:
        out("-z supports only a single length parameter\n")
        return EINVAL
    if "u" in f and not zflag:
        out("-u requires -z to be specified\n")
        return EINVAL
    # (qemu-io 7.2 never sets Pflag here, so "-z and -P" is not checked)
    blk = s.blk
    assert blk is not None
    if zflag:
        offset, count = _offset_count(rest)
        t1 = 0.0  # qemu-io 7.2 starts no clock for -z: the time is since boot

        def request() -> int:
            return _run(blk.pwrite_zeroes, offset, count, may_unmap="u" in f, fua=fua)

    else:
        offset, count = _offset_vector(rest)
        buf = pattern_buffer(f.get("P", 0xCD), count)
        t1 = time.monotonic()

        def request() -> int:
            return _run(blk.pwrite, offset, buf, fua)

    def work() -> str:
        code = request()
        t2 = time.monotonic()
        if code:
            return "aio_write failed: %s\n" % strerror(code)
        if "q" in f:
            return ""
        return report_text("wrote", t2 - t1, offset, count, count, 1, "C" in f)

    _start_aio(s, work)
    return 0


@command("aio_flush", oneline="completes all outstanding aio requests")
def aio_flush_f(s: Session, argv: list[str]) -> int:
    s.drain()
    return 0


__all__ = ["bad_option", "matches_pattern", "pattern_buffer"]
