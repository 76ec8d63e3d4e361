"""``pyqemu-img amend``: change options of an existing image (qemu-img.c img_amend).

The qcow2 work is in :mod:`pyqemu.common.block.qcow2.amend`; this module
parses the command line, checks the option names as QEMU's amend option list
does and prints ``-o help``.
"""

from __future__ import annotations

import sys

from .cli import CliError, Progress, UsageError, getopt, is_help_option, open_image_cli

CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")


def _print_help(fmt: str) -> None:
    from ..common.block.qcow2.amend import AMEND_OPTIONS

    out = [f"Amend options for '{fmt}':\n"]
    for name, kind, text in AMEND_OPTIONS:
        out.append("  %-22s - %s\n" % (f"{name}=<{kind}>", text))
    sys.stdout.write("".join(out))


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "ho:f:t:pq",
        {"help": 0, "object": 1, "image-opts": 0, "force": 0},
    )
    fmt: str | None = None
    o_values: list[str] = []
    progress = False
    quiet = False
    image_opts = False
    force = False
    for name, value in opts:
        if name == "-o":
            o_values.append(value or "")
        elif name == "-f":
            fmt = value
        elif name == "-t":
            if value not in CACHE_MODES:
                raise CliError(f"Invalid cache option: {value}")
        elif name == "-p":
            progress = True
        elif name == "-q":
            quiet = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        elif name == "--force":
            force = True
    if not o_values:
        raise UsageError("Must specify options (-o)")
    if quiet:
        progress = False
    from .cli import parse_o_options

    options = parse_o_options(o_values)
    filename = operands[-1] if operands else None
    if fmt and is_help_option(options):
        if fmt != "qcow2":
            raise CliError(f"Format driver '{fmt}' does not support option amendment")
        _print_help(fmt)
        return 0
    if len(operands) != 1 or filename is None:
        raise CliError("Expecting one image file name")

    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=True, quiet=quiet)
    try:
        if node.format_name != "qcow2":
            raise CliError(f"Format driver '{node.format_name}' does not support option amendment")
        if is_help_option(options):
            _print_help("qcow2")
            return 0
        _check_names(options)
        bar = Progress(progress)
        bar.print(0, 0)
        from ..common.block.qcow2.amend import qcow2_amend
        from ..common.errors import QemuError

        def cb(done: int, total: int) -> None:
            bar.print(100.0 * done / max(total, 1) - bar.current, 0)

        try:
            qcow2_amend(node, options, cb if progress else None, force)
        except QemuError as exc:
            raise CliError(exc.message) from None
        bar.print(100, 0)
        bar.end()
    finally:
        node.close()
    return 0


def _check_names(options: dict[str, str]) -> None:
    from ..common.block.qcow2.amend import AMEND_OPTIONS, CREATE_ONLY

    known = {name for name, _, _ in AMEND_OPTIONS}
    for key in options:
        if key in known:
            continue
        if key in CREATE_ONLY:
            raise CliError(
                f"Invalid parameter '{key}'\nThis option is only supported for image creation"
            )
        raise CliError(f"Invalid parameter '{key}'")
