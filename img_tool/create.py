"""``pyqemu-img create``: create a new image (qemu-img.c img_create + bdrv_img_create)."""

from __future__ import annotations

import sys

from .cli import (
    CliError,
    UsageError,
    cvtnum,
    getopt,
    is_help_option,
    parse_o_options,
    print_create_help,
)


def run(args: list[str]) -> int:
    opts, operands = getopt(args, "F:b:f:ho:qu", {"help": 0, "object": 1})
    fmt = "raw"
    base_filename: str | None = None
    base_fmt: str | None = None
    o_values: list[str] = []
    quiet = False
    unsafe = False
    for name, value in opts:
        assert value is not None or name in ("-q", "-u", "-h", "--help")
        if name == "-f":
            fmt = value or ""
        elif name == "-b":
            base_filename = value
        elif name == "-F":
            base_fmt = value
        elif name == "-o":
            o_values.append(value or "")
        elif name == "-q":
            quiet = True
        elif name == "-u":
            unsafe = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    filename = operands[0] if operands else None
    options = parse_o_options(o_values)
    if is_help_option(options):
        return _help(fmt, filename)
    if filename is None:
        raise UsageError("Expecting image file name")
    img_size: int | None = None
    if len(operands) > 1:
        img_size = cvtnum("image size", operands[1])
    if len(operands) > 2:
        raise UsageError(f"Unexpected argument: {operands[2]}")
    try:
        img_create(filename, fmt, base_filename, base_fmt, options, img_size, unsafe, quiet)
    except CliError as exc:
        raise CliError(
            f"{filename}: {exc.message}", exc.code, final_newline=exc.final_newline
        ) from None
    return 0


def _help(fmt: str, filename: str | None) -> int:
    from ..common.block import BlockError

    try:
        print_create_help(fmt, filename is not None)
    except BlockError:
        raise CliError(f"Unknown file format '{fmt}'") from None
    return 0


def img_create(
    filename: str,
    fmt: str,
    base_filename: str | None,
    base_fmt: str | None,
    options: dict[str, str],
    img_size: int | None,
    unsafe: bool,
    quiet: bool,
) -> None:
    """``bdrv_img_create``: errors are CliError without the filename prefix."""
    from ..common.block import BlockError, get_format, open_image, resolve_backing_filename
    from ..common.block.file import FileProtocol
    from ..common.errors import QemuError
    from ..common.sizes import parse_size

    try:
        cls = get_format(fmt)
    except BlockError:
        raise CliError(f"Unknown file format '{fmt}'") from None
    if cls.is_protocol and fmt != "file":
        raise CliError(f"Unknown file format '{fmt}'")
    known = {o.name for o in cls.create_options} | {o.name for o in FileProtocol.create_options}
    for key in options:
        if key not in known:
            raise CliError(f"Invalid parameter '{key}'")
    opts = dict(options)
    if img_size is not None:
        opts["size"] = str(img_size)
    if base_filename is not None:
        if "backing_file" not in known:
            raise CliError(f"Backing file not supported for file format '{fmt}'")
        opts["backing_file"] = base_filename
    if base_fmt is not None:
        if "backing_fmt" not in known:
            raise CliError(f"Backing file format not supported for file format '{fmt}'")
        opts["backing_fmt"] = base_fmt
    backing_file = opts.get("backing_file")
    if backing_file is not None:
        if backing_file == filename:
            raise CliError(
                "Error: Trying to create an image with the same filename as the backing file"
            )
        if backing_file == "":
            raise CliError("Expected backing file name, got empty string")
    backing_fmt = opts.get("backing_fmt")

    size: int | None = None
    if "size" in opts:
        try:
            size = parse_size(opts["size"])
        except (ValueError, OverflowError):
            raise CliError(
                "Parameter 'size' expects a non-negative number below 2^64\n"
                "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                "and exabytes, respectively."
            ) from None
    if backing_file is not None and not unsafe:
        full = resolve_backing_filename(filename, backing_file)
        try:
            with open_image(full, backing_fmt, read_only=True, backing=False) as bs:
                detected = bs.format_name
                length = bs.size
        except QemuError as exc:
            raise CliError(f"{exc.message}\nCould not open backing image.") from None
        if backing_fmt is None:
            raise CliError(
                f"Backing file specified without backing format\nDetected format of {detected}.",
                final_newline=False,  # qemu prints this hint without one
            ) from None
        if size is None:
            size = length
            opts["size"] = str(size)
    elif backing_file is not None and backing_fmt is None:
        raise CliError("Backing file specified without backing format")
    if size is None:
        raise CliError("Image creation needs a size parameter")
    opts.pop("size", None)
    if not quiet:
        summary = cls.create_summary(size, opts)
        line = " ".join(f"{k}={v}" for k, v in summary)
        sys.stdout.write(f"Formatting '{filename}', fmt={fmt} {line}\n")
        sys.stdout.flush()
    try:
        cls.create(filename, size, opts)
    except QemuError as exc:
        raise CliError(exc.message) from None
