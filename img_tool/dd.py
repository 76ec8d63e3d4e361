"""``pyqemu-img dd``: copy an image dd-style (qemu-img.c img_dd).

Operands are ``bs=``, ``count=``, ``skip=``, ``if=`` and ``of=``. The output
image is always created anew, of format ``-O`` (raw by default), with the
input's size less what ``skip`` drops (or ``count`` blocks), and every byte is
written, zeros included, as qemu-img does. Blocks are copied in runs of whole
``bs`` blocks (about 1 MiB at a time): the result is the same as block by
block, without a Python round trip per 512 bytes.
"""

from __future__ import annotations

from .cli import CliError, cvtnum, getopt, open_image_cli

INT64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1
CHUNK = 1 << 20

OPERANDS = ("bs", "count", "if", "of", "skip")


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args, "hf:O:U", {"help": 0, "image-opts": 0, "object": 1, "force-share": 0}
    )
    fmt: str | None = None
    out_fmt = "raw"
    image_opts = False
    for name, value in opts:
        if name == "-f":
            fmt = value
        elif name == "-O":
            out_fmt = value or ""
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        # -U: we take no image locks
    bs = 512
    count: int | None = None
    skip: int | None = None
    in_name: str | None = None
    out_name: str | None = None
    for operand in operands:
        key, eq, value = operand.partition("=")
        if not eq or key not in OPERANDS:
            raise CliError(f"unrecognized operand {key}")
        if key == "bs":
            bs = cvtnum("bs", value, 1, INT_MAX)
        elif key == "count":
            count = cvtnum("count", value)
        elif key == "skip":
            skip = cvtnum("skip", value)
        elif key == "if":
            in_name = value
        else:
            out_name = value
    if in_name is None or out_name is None:
        raise CliError("Must specify both input and output files")

    src = open_image_cli(in_name, fmt, image_opts=image_opts)
    try:
        _copy(src, in_name, out_name, out_fmt, bs, count, skip)
    finally:
        src.close()
    return 0


def _copy(
    src: object,
    in_name: str,
    out_name: str,
    out_fmt: str,
    bs: int,
    count: int | None,
    skip: int | None,
) -> None:
    from ..common.block import BlockError, get_format, open_image
    from ..common.errors import QemuError

    try:
        cls = get_format(out_fmt)
    except BlockError:
        raise CliError("Unknown file format") from None
    if cls.is_protocol and out_fmt != "file":
        raise CliError(f"Format driver '{out_fmt}' does not support image creation")
    size: int = src.size  # type: ignore[attr-defined]
    if count is not None and count <= INT64_MAX // bs and count * bs < size:
        size = count * bs
    beyond = skip is not None and (skip > INT64_MAX // bs or size < bs * skip)
    out_size = 0 if beyond else size - bs * (skip or 0)
    try:
        # the file protocol rounds a new image up to whole sectors
        cls.create(out_name, -(-out_size // 512) * 512, {})
    except QemuError as exc:
        raise CliError(f"{out_name}: error while creating output image: {exc.message}") from None
    try:
        dst = open_image(out_name, out_fmt, read_only=False)
    except QemuError as exc:
        raise CliError(f"Could not open '{out_name}': {exc.message}") from None
    try:
        if beyond:
            from .cli import report

            report(f"{in_name}: cannot skip to specified offset")
            in_pos = size
        else:
            in_pos = bs * (skip or 0)
        step = bs * max(1, CHUNK // bs)
        out_pos = 0
        while in_pos < size:
            n = min(step, size - in_pos)
            try:
                data = src.read(in_pos, n)  # type: ignore[attr-defined]
            except QemuError as exc:
                raise CliError(
                    f"error while reading from input image file: {exc.message}"
                ) from None
            try:
                dst.write(out_pos, data)
            except QemuError as exc:
                raise CliError(f"error while writing to output image file: {exc.message}") from None
            in_pos += n
            out_pos += n
    finally:
        dst.close()
