"""read, readv, write, writev, aio_read, aio_write, aio_flush (qemu-io-cmds.c)."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

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
def read_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "bCl:pP:qs:v")
    flag = {"b": False, "C": False, "q": False, "v": False, "P": False, "s": False, "l": False}
    pattern = pattern_offset = pattern_count = 0
    try:
        for o, v in opts:
            if o == "?":
                return bad_option("read", v)
            if o == "l":
                flag["l"] = True
                pattern_count = cvtnum(v or "")
            elif o == "P":
                flag["P"] = True
                pattern = parse_pattern(v or "")
            elif o == "s":
                flag["s"] = True
                pattern_offset = cvtnum(v or "")
            elif o in flag:
                flag[o] = True
    except NumberError as exc:
        return -exc.errno
    except ValueError:
        return EINVAL
    if len(rest) != 2:
        return _usage("read")
    try:
        offset = cvtnum(rest[0])
        count = cvtnum(rest[1])
    except NumberError as exc:
        return -exc.errno
    if count > REQUEST_MAX_BYTES:
        out("length cannot exceed %d, given %s\n" % (REQUEST_MAX_BYTES, rest[1]))
        return EINVAL
    if not flag["P"] and (flag["l"] or flag["s"]):
        return _usage("read")
    if not flag["l"]:
        pattern_count = count - pattern_offset
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        out("pattern verification range exceeds end of read data\n")
        return EINVAL
    if flag["b"]:
        if offset % 512:
            out("%d is not a sector-aligned value for 'offset'\n" % offset)
            return EINVAL
        if count % 512:
            out("%d is not a sector-aligned value for 'count'\n" % count)
            return EINVAL
    assert s.blk is not None
    t1 = time.monotonic()
    buf = bytearray()
    if flag["b"]:
        code = errno.ENOTSUP  # no driver of ours stores VM state
    else:
        try:
            buf = s.blk.pread(offset, count)
            code = 0
        except Exception as exc:  # noqa: BLE001 - every failure becomes an errno
            code = error_code(exc)
    t2 = time.monotonic()
    if code:
        out("read failed: %s\n" % strerror(code))
        return -code
    ret = 0
    if flag["P"]:
        if pattern_offset or pattern_count != len(buf):
            checked: bytes | bytearray = buf[pattern_offset : pattern_offset + pattern_count]
        else:
            checked = buf
        if not matches_pattern(checked, pattern):
            out(
                "Pattern verification failed at offset %d, %d bytes\n"
                % (offset + pattern_offset, pattern_count)
            )
            ret = EINVAL
    if flag["q"]:
        return ret
    if flag["v"]:
        out(dump_buffer(buf, offset))
    print_report("read", t2 - t1, offset, count, count, 1, flag["C"])
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
def readv_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "CP:qv")
    cflag = qflag = vflag = pflag = False
    pattern = 0
    for o, v in opts:
        if o == "?":
            return bad_option("readv", v)
        if o == "C":
            cflag = True
        elif o == "P":
            pflag = True
            try:
                pattern = parse_pattern(v or "")
            except ValueError:
                return EINVAL
        elif o == "q":
            qflag = True
        elif o == "v":
            vflag = True
    if len(rest) < 2:
        return _usage("readv")
    try:
        offset = cvtnum(rest[0])
    except NumberError as exc:
        return -exc.errno
    sizes = create_iovec(rest[1:])
    if sizes is None:
        return EINVAL
    count = sum(sizes)
    assert s.blk is not None
    t1 = time.monotonic()
    try:
        buf = s.blk.pread(offset, count)
        code = 0
    except Exception as exc:  # noqa: BLE001
        code, buf = error_code(exc), bytearray()
    t2 = time.monotonic()
    if code:
        out("readv failed: %s\n" % strerror(code))
        return -code
    ret = 0
    if pflag and not matches_pattern(buf, pattern):
        out("Pattern verification failed at offset %d, %d bytes\n" % (offset, count))
        ret = EINVAL
    if qflag:
        return ret
    if vflag:
        out(dump_buffer(buf, offset))
    print_report("read", t2 - t1, offset, count, count, 1, cflag)
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
def write_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "bcCfnpP:qs:uz")
    f = dict.fromkeys("bcCfnPqsuz", False)
    pattern = 0xCD
    source = ""
    for o, v in opts:
        if o == "?":
            return bad_option("write", v)
        if o == "P":
            f["P"] = True
            try:
                pattern = parse_pattern(v or "")
            except ValueError:
                return EINVAL
        elif o == "s":
            f["s"] = True
            source = v or ""
        elif o in f:
            f[o] = True
    if len(rest) != 2:
        return _usage("write")
    if f["b"] and f["z"]:
        out("-b and -z cannot be specified at the same time\n")
        return EINVAL
    if f["f"] and (f["b"] or f["c"]):
        out("-f and -b or -c cannot be specified at the same time\n")
        return EINVAL
    if f["n"] and not f["z"]:
        out("-n requires -z to be specified\n")
        return EINVAL
    if f["u"] and not f["z"]:
        out("-u requires -z to be specified\n")
        return EINVAL
    if f["z"] + f["P"] + f["s"] > 1:
        out("Only one of -z, -P, and -s can be specified at the same time\n")
        return EINVAL
    try:
        offset = cvtnum(rest[0])
        count = cvtnum(rest[1])
    except NumberError as exc:
        return -exc.errno
    if count > REQUEST_MAX_BYTES and not f["n"]:
        out("length cannot exceed %d without -n, given %s\n" % (REQUEST_MAX_BYTES, rest[1]))
        return EINVAL
    if f["b"] or f["c"]:
        if offset % 512:
            out("%d is not a sector-aligned value for 'offset'\n" % offset)
            return EINVAL
        if count % 512:
            out("%d is not a sector-aligned value for 'count'\n" % count)
            return EINVAL
    buf: bytes | None = None
    if f["s"]:
        buf = _buffer_from_file(source, count)
        if buf is None:
            return EINVAL
    elif f["c"]:
        buf = pattern_buffer(pattern, count)
    blk = s.blk
    assert blk is not None
    t1 = time.monotonic()
    if f["b"]:
        code = errno.ENOTSUP  # no driver of ours stores VM state
    elif f["z"]:
        code = _run(blk.pwrite_zeroes, offset, count, may_unmap=f["u"], fua=f["f"])
    elif f["c"]:
        assert buf is not None
        code = _run(blk.pwrite_compressed, offset, buf)
    elif f["s"]:
        assert buf is not None
        code = _run(blk.pwrite, offset, buf, f["f"])
    else:
        code = _run(blk.pwrite_pattern, offset, pattern, count, f["f"])
    t2 = time.monotonic()
    if code:
        out("write failed: %s\n" % strerror(code))
        return -code
    if not f["q"]:
        print_report("wrote", t2 - t1, offset, count, count, 1, f["C"])
    return 0


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
def writev_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "CfqP:")
    cflag = qflag = fua = False
    pattern = 0xCD
    for o, v in opts:
        if o == "?":
            return bad_option("writev", v)
        if o == "C":
            cflag = True
        elif o == "f":
            fua = True
        elif o == "q":
            qflag = True
        elif o == "P":
            try:
                pattern = parse_pattern(v or "")
            except ValueError:
                return EINVAL
    if len(rest) < 2:
        return _usage("writev")
    try:
        offset = cvtnum(rest[0])
    except NumberError as exc:
        return -exc.errno
    sizes = create_iovec(rest[1:])
    if sizes is None:
        return EINVAL
    count = sum(sizes)
    assert s.blk is not None
    t1 = time.monotonic()
    code = _run(s.blk.pwrite, offset, pattern_buffer(pattern, count), fua)
    t2 = time.monotonic()
    if code:
        out("writev failed: %s\n" % strerror(code))
        return -code
    if not qflag:
        print_report("wrote", t2 - t1, offset, count, count, 1, cflag)
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
def aio_read_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "CiP:qv")
    cflag = qflag = vflag = pflag = False
    pattern = 0
    for o, v in opts:
        if o == "?":
            return bad_option("aio_read", v)
        if o == "C":
            cflag = True
        elif o == "P":
            pflag = True
            try:
                pattern = parse_pattern(v or "")
            except ValueError:
                return EINVAL
        elif o == "i":
            out("injecting invalid read request\n")
            return 0
        elif o == "q":
            qflag = True
        elif o == "v":
            vflag = True
    if len(rest) < 2:
        return _usage("aio_read")
    try:
        offset = cvtnum(rest[0])
    except NumberError as exc:
        return -exc.errno
    sizes = create_iovec(rest[1:])
    if sizes is None:
        return EINVAL
    count = sum(sizes)
    blk = s.blk
    assert blk is not None
    t1 = time.monotonic()

    def work() -> str:
        try:
            buf = blk.pread(offset, count)
            code = 0
        except Exception as exc:  # noqa: BLE001
            code, buf = error_code(exc), bytearray()
        t2 = time.monotonic()
        if code:
            return "readv failed: %s\n" % strerror(code)
        text = []
        if pflag and not matches_pattern(buf, pattern):
            text.append("Pattern verification failed at offset %d, %d bytes\n" % (offset, count))
        if not qflag:
            if vflag:
                text.append(dump_buffer(buf, offset))
            from ..report import report_text

            text.append(report_text("read", t2 - t1, offset, count, count, 1, cflag))
        return "".join(text)

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
def aio_write_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "CfiqP:uz")
    cflag = qflag = fua = unmap = zflag = False
    pattern = 0xCD
    for o, v in opts:
        if o == "?":
            return bad_option("aio_write", v)
        if o == "C":
            cflag = True
        elif o == "f":
            fua = True
        elif o == "q":
            qflag = True
        elif o == "u":
            unmap = True
        elif o == "P":
            try:
                pattern = parse_pattern(v or "")
            except ValueError:
                return EINVAL
        elif o == "i":
            out("injecting invalid write request\n")
            return 0
        elif o == "z":
            zflag = True
    if len(rest) < 2:
        return _usage("aio_write")
    if zflag and len(rest) != 2:
        out("-z supports only a single length parameter\n")
        return EINVAL
    if unmap and not zflag:
        out("-u requires -z to be specified\n")
        return EINVAL
    # (qemu-io 7.2 never sets Pflag here, so "-z and -P" is not checked)
    try:
        offset = cvtnum(rest[0])
    except NumberError as exc:
        return -exc.errno
    blk = s.blk
    assert blk is not None
    if zflag:
        try:
            count = cvtnum(rest[1])
        except NumberError as exc:
            return -exc.errno
        t1 = 0.0  # qemu-io 7.2 starts no clock for -z: the time is since boot

        def request() -> int:
            return _run(blk.pwrite_zeroes, offset, count, may_unmap=unmap, fua=fua)

    else:
        sizes = create_iovec(rest[1:])
        if sizes is None:
            return EINVAL
        count = sum(sizes)
        buf = pattern_buffer(pattern, count)
        t1 = time.monotonic()

        def request() -> int:
            return _run(blk.pwrite, offset, buf, fua)

    def work() -> str:
        from ..report import report_text

        code = request()
        t2 = time.monotonic()
        if code:
            return "aio_write failed: %s\n" % strerror(code)
        if qflag:
            return ""
        return report_text("wrote", t2 - t1, offset, count, count, 1, cflag)

    _start_aio(s, work)
    return 0


@command("aio_flush", oneline="completes all outstanding aio requests")
def aio_flush_f(s: Session, argv: list[str]) -> int:
    s.drain()
    return 0


__all__ = ["bad_option", "matches_pattern", "pattern_buffer"]
