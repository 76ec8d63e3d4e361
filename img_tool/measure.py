"""``pyqemu-img measure``: the file size a new image needs (qemu-img.c img_measure).

The figures come from the target format's driver: qcow2's in
:mod:`pyqemu.common.block.qcow2.measure`; raw needs exactly the virtual
size (rounded up to a sector), allocated or not.
"""

from __future__ import annotations

import sys
from typing import Any

from .cli import (
    CliError,
    cvtnum,
    getopt,
    open_image_cli,
    parse_o_options,
    parse_output_format,
)

SECTOR = 512


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hf:O:o:l:U",
        {
            "help": 0,
            "image-opts": 0,
            "object": 1,
            "output": 1,
            "size": 1,
            "force-share": 0,
        },
    )
    fmt: str | None = None
    out_fmt = "raw"
    o_values: list[str] = []
    snapshot: tuple[str | None, str | None, bool] | None = None
    image_opts = False
    output = "human"
    size: int | None = None
    for name, value in opts:
        if name == "-f":
            fmt = value
        elif name == "-O":
            out_fmt = value or ""
        elif name == "-o":
            o_values.append(value or "")
        elif name == "-l":
            from .snapshot import parse_snapshot_param

            snapshot = parse_snapshot_param(value or "")
        elif name == "--image-opts":
            image_opts = True
        elif name == "--output":
            output = parse_output_format(value or "")
        elif name == "--size":
            size = cvtnum("image size", value or "")
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        # -U / --force-share: we take no locks, so sharing is always allowed
    if len(operands) > 1:
        raise CliError("At most one filename argument is allowed.")
    filename = operands[0] if operands else None
    if filename is None and (image_opts or fmt is not None or snapshot is not None):
        raise CliError("--image-opts, -f, and -l require a filename argument.")
    if filename is not None and size is not None:
        raise CliError("--size N cannot be used together with a filename.")
    if filename is None and size is None:
        raise CliError("Either --size N or one filename must be specified.")

    node = None
    if filename is not None:
        node = open_image_cli(filename, fmt, image_opts=image_opts)
    try:
        if node is not None and snapshot is not None:
            from .snapshot import load_snapshot_tmp

            load_snapshot_tmp([node], snapshot)
        if node is not None:
            size = node.size
        info = measure(out_fmt, o_values, node, size)
    finally:
        if node is not None:
            node.close()
    if output == "json":
        from .qobject import qdict, to_json_pretty

        sys.stdout.write(to_json_pretty(qdict(info)) + "\n")
    else:
        text = (
            f"required size: {info['required']}\nfully allocated size: {info['fully-allocated']}\n"
        )
        if "bitmaps" in info:
            text += f"bitmaps size: {info['bitmaps']}\n"
        sys.stdout.write(text)
    return 0


def measure(out_fmt: str, o_values: list[str], node: Any, size: int | None) -> dict[str, int]:
    """Validate the target's options and compute its figures (bdrv_measure)."""
    from ..common.block import BlockError, get_format
    from ..common.block.file import FileProtocol
    from ..common.errors import QemuError

    try:
        cls = get_format(out_fmt)
    except BlockError:
        raise CliError(f"Unknown file format '{out_fmt}'") from None
    if out_fmt not in ("raw", "qcow2"):
        raise CliError(f"Block driver '{out_fmt}' does not support size measurement")
    options = parse_o_options(o_values)
    known = {o.name for o in cls.create_options} | {o.name for o in FileProtocol.create_options}
    for key in options:
        if key not in known:
            raise CliError(
                f"Invalid parameter '{key}'\nInvalid options for file format '{out_fmt}'",
                prefix_lines=True,
            )
    try:
        if out_fmt == "raw":
            return _raw_measure(options, size)
        from ..common.block.qcow2.measure import qcow2_measure

        return qcow2_measure(options, node, size)
    except QemuError as exc:
        message, sep, last = exc.message.rpartition("\nInvalid options for file format")
        if sep:
            from .cli import report

            report(message)
            raise CliError("Invalid options for file format" + last) from None
        raise CliError(exc.message) from None


def _raw_measure(options: dict[str, str], size: int | None) -> dict[str, int]:
    """raw: unallocated sectors count too, so both figures are the rounded size."""
    required = -(-(size or 0) // SECTOR) * SECTOR
    return {"required": required, "fully-allocated": required}
