"""``pyqemu-img convert --salvage``: read around bad sectors (convert_co_read).

When a chunk of the source fails to read, qemu-img reads that chunk again one
512-byte sector at a time; each sector that still fails is reported as a
warning (``error while reading offset N: <strerror>``, N relative to the
source image that failed) and copied as zeroes. The conversion then goes on
and ends with exit code 0.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from .cli import warn

SECTOR = 512

_report_lock = threading.Lock()


def salvage_read(sources: list[Any], start: int, out: memoryview, quiet: bool) -> None:
    """Fill ``out`` with target-space ``[start, start+len(out))`` of ``sources``
    (``Source`` objects: ``node``, ``base``, ``size``, ``length``) sector by
    sector, zeroing and reporting the sectors that cannot be read."""
    from ..common.errors import QemuError, strerror

    bases = [src.base for src in sources]
    pos = start
    end = start + len(out)
    while pos < end:
        src = sources[bisect.bisect_right(bases, pos) - 1]
        rel = pos - src.base
        n = min(SECTOR - rel % SECTOR, end - pos, src.base + src.length - pos)
        view = out[pos - start : pos - start + n]
        readable = max(0, min(n, src.size - rel))
        try:
            if readable:
                view[:readable] = src.node.read(rel, readable)
            if n > readable:
                view[readable:] = bytes(n - readable)
        except QemuError as exc:
            view[:] = bytes(n)
            if not quiet:
                reason = strerror(exc.errno) if exc.errno else exc.message
                with _report_lock:
                    warn(f"error while reading offset {rel}: {reason}")
        pos += n
