"""``pyqemu-img resize``: grow or shrink an image (qemu-img.c img_resize).

As qemu-img, the size is always the last argument and is taken off the
command line before option parsing, so ``-1G`` is a size, not an option.
"""

from __future__ import annotations

from .cli import CliError, UsageError, getopt, open_image_cli, qprint, warn

PREALLOC_MODES = ("off", "metadata", "falloc", "full")


def run(args: list[str]) -> int:
    if len(args) < 2:
        raise UsageError("Not enough arguments")
    size_text = args[-1]
    opts, operands = getopt(
        args[:-1],
        "f:hq",
        {
            "help": 0,
            "format": 1,
            "object": 1,
            "image-opts": 0,
            "preallocation": 1,
            "shrink": 0,
        },
    )
    fmt: str | None = None
    quiet = False
    image_opts = False
    prealloc = "off"
    shrink = False
    for name, value in opts:
        if name in ("-f", "--format"):
            fmt = value
        elif name == "-q":
            quiet = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--preallocation":
            if value not in PREALLOC_MODES:
                raise CliError(f"Invalid preallocation mode '{value}'")
            prealloc = value
        elif name == "--shrink":
            shrink = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    if len(operands) != 1:
        raise UsageError("Expecting image file name")
    filename = operands[0]

    relative = 0
    text = size_text
    if text[:1] == "+":
        relative, text = 1, text[1:]
    elif text[:1] == "-":
        relative, text = -1, text[1:]
    from ..common.sizes import parse_size

    try:
        number = parse_size(text)
    except (ValueError, OverflowError):
        raise CliError(
            "Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        ) from None

    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=True, quiet=quiet)
    try:
        current = node.size
        total = current + number * relative if relative else number
        if total <= 0:
            raise CliError("New image size must be positive")
        if total < current and not shrink:
            from .cli import report

            report("Use the --shrink option to perform a shrink operation.")
            warn(
                "Shrinking an image will delete all data beyond the shrunken image's end. "
                "Before performing such an operation, make sure there is no important data "
                "there."
            )
            return 1
        if total < current and prealloc != "off":
            raise CliError("Preallocation can only be used for growing images")
        from ..common.errors import QemuError

        try:
            # qemu asks for a non-exact size, but file-posix resizes regular
            # files exactly anyway; raw is a window on the file
            exact = node.format_name == "raw"
            node.truncate(total, exact=exact, prealloc=prealloc, shrink=True)
        except QemuError as exc:
            raise CliError(exc.message) from None
    finally:
        node.close()
    qprint(quiet, "Image resized.\n")
    return 0
