"""``pyqemu-img map``: the image's allocation map (qemu-img.c img_map)."""

from __future__ import annotations

import sys
from typing import Any

from .cli import CliError, UsageError, cvtnum, getopt, open_image_cli, parse_output_format

GiB = 1 << 30


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "f:s:l:hU",
        {
            "help": 0,
            "format": 1,
            "output": 1,
            "object": 1,
            "image-opts": 0,
            "force-share": 0,
            "start-offset": 1,
            "max-length": 1,
        },
    )
    fmt: str | None = None
    output = "human"
    image_opts = False
    start = 0
    max_length: int | None = None
    for name, value in opts:
        assert value is not None or name.lstrip("-") in (
            "U",
            "h",
            "help",
            "image-opts",
            "force-share",
        )
        if name in ("-f", "--format"):
            fmt = value
        elif name == "--output":
            output = value or ""
        elif name in ("-s", "--start-offset"):
            start = cvtnum("start offset", value or "")
        elif name in ("-l", "--max-length"):
            max_length = cvtnum("max length", value or "")
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    output = parse_output_format(output)
    node = open_image_cli(operands[0], fmt, image_opts=image_opts)
    try:
        return _map(node, start, max_length, output)
    finally:
        node.close()


def _mergeable(curr: Any, nxt: Any) -> bool:
    """``entry_mergeable``."""
    if curr.length == 0:
        return False
    if (curr.zero, curr.data, curr.depth, curr.present) != (
        nxt.zero,
        nxt.data,
        nxt.depth,
        nxt.present,
    ):
        return False
    if (curr.offset is None) != (nxt.offset is None):
        return False
    if curr.offset is not None and curr.offset + curr.length != nxt.offset:
        return False
    return True


class _Entry:
    __slots__ = ("start", "length", "depth", "present", "zero", "data", "offset", "filename")

    def __init__(self, run: Any = None, start: int = 0) -> None:
        if run is None:  # QEMU's initial ``MapEntry curr = { .length = 0 }``
            self.start, self.length, self.depth = start, 0, 0
            self.present = self.zero = self.data = False
            self.offset = self.filename = None
            return
        self.start = run.start
        self.length = run.length
        self.depth = run.depth
        self.present = run.present
        self.zero = run.zero
        self.data = run.data
        self.offset = run.offset
        self.filename = run.file.filename if run.file is not None else None


def _dump(entry: _Entry, output: str, first: bool) -> str:
    if output == "human":
        if entry.data and entry.offset is None:
            raise CliError("File contains external, encrypted or compressed clusters.")
        if entry.data and not entry.zero:
            return "%-16s%-16s%-16s%s\n" % (
                _hex(entry.start),
                _hex(entry.length),
                _hex(entry.offset or 0),
                entry.filename or "",
            )
        return ""
    text = '%s{ "start": %d, "length": %d, "depth": %d, "present": %s, "zero": %s, "data": %s' % (
        "" if first else ",\n",
        entry.start,
        entry.length,
        entry.depth,
        _bool(entry.present),
        _bool(entry.zero),
        _bool(entry.data),
    )
    if entry.offset is not None:
        text += ', "offset": %d' % entry.offset
    return text + "}"


def _hex(value: int) -> str:
    """printf's ``%#x``: no prefix for zero."""
    return "%#x" % value if value else "0"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _map(node: Any, start: int, max_length: int | None, output: str) -> int:
    from ..common.block import block_status_above

    length = node.size
    end = length if max_length is None else min(length, start + max_length)
    out = sys.stdout
    if output == "human":
        out.write("%-16s%-16s%-16s%s\n" % ("Offset", "Length", "Mapped to", "File"))
    else:
        out.write("[")
    curr = _Entry(start=start)
    first = True
    while curr.start + curr.length < end:
        offset = curr.start + curr.length
        run = block_status_above(node, offset, min(GiB, end - offset))
        nxt = _Entry(run)
        if _mergeable(curr, nxt):
            curr.length += nxt.length
            continue
        if curr.length > 0:
            out.write(_dump(curr, output, first))
            first = False
        curr = nxt
    out.write(_dump(curr, output, first))
    if output == "json":
        out.write("]\n")
    return 0
