"""Sizes as QEMU parses and prints them.

* :func:`parse_size` is ``qemu_strtosz``: a decimal number (fractions allowed)
  with an optional binary suffix ``b k m g t p e`` (any case).
* :func:`size_to_str` is ``size_to_str`` from util/cutils.c (``1 GiB``,
  ``196 KiB``), used by ``qemu-img info``.
* :func:`cvtstr` is qemu-io's ``cvtstr`` (``512 bytes``, ``1.500 KiB``).
"""

from __future__ import annotations

import math
import re

_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
# strtoull's leading blanks and "+"; nothing may follow the suffix
_SIZE_RE = re.compile(r"\s*\+?([0-9]+)(\.[0-9]*)?([a-zA-Z]?)")
_HEX_RE = re.compile(r"\s*\+?0[xX][0-9a-fA-F]+")

INT64_MAX = (1 << 63) - 1


def parse_size(text: str, default_suffix: str = "b") -> int:
    """Parse a size such as ``64k``, ``1.5G`` or ``0x1000``; raise ValueError."""
    if _HEX_RE.fullmatch(text):
        return int(text.strip(), 16)
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(text)
    whole, frac, suffix = m.group(1), m.group(2) or "", (m.group(3) or default_suffix).lower()
    if suffix not in _SUFFIXES:
        raise ValueError(text)
    shift = _SUFFIXES[suffix]
    fraction = float("0" + frac) if frac else 0.0
    if fraction and shift == 0:
        raise ValueError(text)  # a fraction of a byte, "1.5" or "1.5b"
    # exact integer part; the fraction is a double, as in qemu_strtosz
    result = (int(whole) << shift) + int(fraction * (1 << shift))
    if result >= 1 << 64:
        raise OverflowError(text)
    return result


_IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]


def size_to_str(value: int) -> str:
    """Format like QEMU's ``size_to_str``: three significant digits, IEC unit."""
    # frexp of value / (1000/1024) picks the unit so that the mantissa is < 1000
    _, exp = math.frexp(value / (1000.0 / 1024.0))
    index = max(0, (exp - 1) // 10)
    index = min(index, len(_IEC) - 1)
    return "%0.3g %s" % (value / (1 << (index * 10)), _IEC[index])


def cvtstr(value: float) -> str:
    """Format like qemu-io's ``cvtstr``: ``512 bytes``, ``1.500 KiB``, ``64 KiB``."""
    for shift, unit in (
        (60, " EiB"),
        (50, " PiB"),
        (40, " TiB"),
        (30, " GiB"),
        (20, " MiB"),
        (10, " KiB"),
    ):
        if value >= float(1 << shift):
            text, suffix = "%.3f" % (value / float(1 << shift)), unit
            break
    else:
        text, suffix = "%f" % value, " bytes"
    # C: strstr(str, ".000") is cut off and replaced by the unit
    trim = text.find(".000")
    return (text[:trim] if trim >= 0 else text) + suffix
