"""qemu-io's output helpers: numbers in, QEMU's exact text out.

``cvtnum`` (qemu_strtosz with qemu-io's error texts), ``timestr``, ``print_report``
(the ``wrote 512/512 bytes at offset 0`` pair of lines), ``dump_buffer`` (``read -v``)
and the pattern byte parser, as qemu-io-cmds.c words them.
"""

from __future__ import annotations

import errno
import re
import sys
import threading

from ..common.sizes import cvtstr

__all__ = [
    "NumberError",
    "cvtnum",
    "cvtstr",
    "dump_buffer",
    "out",
    "parse_pattern",
    "print_report",
    "timestr",
]

INT64_MAX = (1 << 63) - 1
#: BDRV_REQUEST_MAX_BYTES: MIN(SIZE_MAX, INT_MAX) aligned down to 512
REQUEST_MAX_BYTES = 2147483136

#: serialises output from command threads and aio completions
output_lock = threading.RLock()


def out(text: str) -> None:
    """printf to stdout (buffered as C stdio is)."""
    with output_lock:
        sys.stdout.write(text)


def err(text: str) -> None:
    """fprintf to stderr; stdout is flushed first so that a terminal reads in order."""
    with output_lock:
        sys.stderr.write(text)
        sys.stderr.flush()


class NumberError(Exception):
    """A number argument that does not parse; its message was printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


def cvtnum(text: str, shown: str | None = None) -> int:
    """qemu-io's ``cvtnum`` + ``print_cvtnum_err``: a size, or NumberError after the
    message (which names ``shown``, default ``text``)."""
    shown = text if shown is None else shown
    from ..common.sizes import parse_size

    try:
        value = parse_size(text)
    except OverflowError:
        value = INT64_MAX + 1
    except ValueError:
        out(
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n" % shown
        )
        raise NumberError(errno.EINVAL) from None
    if value > INT64_MAX:
        out("Parsing error: argument too large -- %s\n" % shown)
        raise NumberError(errno.ERANGE)
    return value


_STRTOL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def strtol(text: str) -> int | None:
    """C ``strtol(text, &end, 0)`` requiring the whole string to parse; None if not."""
    m = _STRTOL_RE.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


def parse_pattern(text: str) -> int:
    """``parse_pattern``: a byte value (0..255), else the message and ValueError."""
    value = strtol(text)
    if value is None or value < 0 or value > 255:
        out("%s is not a valid pattern byte\n" % text)
        raise ValueError(text)
    return value


def timestr(seconds: float, verbose: bool) -> str:
    """``timestr`` with DEFAULT_TIME or VERBOSE_FIXED_TIME."""
    whole = int(seconds)
    frac = seconds - whole
    if verbose or whole:
        return "%u:%02u:%05.2f" % (whole // 3600, (whole % 3600) // 60, whole % 60 + frac)
    return "%05.2f sec" % frac


def _tdiv(value: float, seconds: float) -> float:
    if seconds == 0:
        return float("inf") if value else float("nan")
    return value / seconds


def report_text(
    op: str, seconds: float, offset: int, count: int, total: int, cnt: int, cflag: bool
) -> str:
    """``print_report`` as a string."""
    ts = timestr(seconds, cflag)
    if not cflag:
        return "%s %d/%d bytes at offset %d\n%s, %d ops; %s (%s/sec and %.4f ops/sec)\n" % (
            op,
            total,
            count,
            offset,
            cvtstr(float(total)),
            cnt,
            ts,
            cvtstr(_tdiv(float(total), seconds)),
            _tdiv(float(cnt), seconds),
        )
    return "%d,%d,%s,%.3f,%.3f\n" % (
        total,
        cnt,
        ts,
        _tdiv(float(total), seconds),
        _tdiv(float(cnt), seconds),
    )


def print_report(
    op: str, seconds: float, offset: int, count: int, total: int, cnt: int, cflag: bool
) -> None:
    out(report_text(op, seconds, offset, count, total, cnt, cflag))


_PRINTABLE = bytes(
    c if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 46 for c in range(256)
)


def dump_buffer(buf: bytes | bytearray | memoryview, offset: int) -> str:
    """``dump_buffer``: 16 bytes a line, hex then isalnum() characters."""
    lines = []
    data = bytes(buf)
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexpart = "".join("%02x " % b for b in chunk)
        lines.append(
            "%08x:  %s %s\n" % (offset + i, hexpart, chunk.translate(_PRINTABLE).decode("ascii"))
        )
    return "".join(lines)
