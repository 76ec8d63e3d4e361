"""Helpers shared by the pyqemu-img subcommands.

Option parsing is a small getopt_long of our own rather than typer (which the
architecture note prescribes for binaries): qemu-img parses with getopt_long
(option permutation, bundled short options, unique prefixes of long options,
``--opt=value``) and reports errors in its own words ("unrecognized option
'-x'", "missing argument for option '-f'"), and the tool must start in well
under 100 ms, which typer's import alone would use up. This module imports
only ``os`` and ``sys``; the block layer is imported by the subcommands.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = [
    "Progress",
    "UsageError",
    "CliError",
    "getopt",
    "open_image_cli",
    "parse_output_format",
    "print_create_help",
    "prog",
    "qprint",
]


def prog() -> str:
    """The program name as the user ran it (``qemu-img`` for a copy named so)."""
    return os.path.basename(sys.argv[0]) or "pyqemu-img"


class CliError(Exception):
    """An error to report as ``prog: message`` and exit with ``code``.

    ``message`` may hold several lines; each line after the first is printed
    as-is unless ``prefix_lines`` asks for the program prefix on every line.
    """

    def __init__(
        self,
        message: str,
        code: int = 1,
        *,
        prefix_lines: bool = False,
        final_newline: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.prefix_lines = prefix_lines
        #: False where qemu-img prints an error hint without a final newline
        self.final_newline = final_newline


class UsageError(CliError):
    """Bad command line: the message is followed by "Try '... --help'"."""


def report(message: str, *, prefix_lines: bool = False, final_newline: bool = True) -> None:
    """``error_report``: ``prog: message`` on stderr."""
    name = prog()
    if prefix_lines:
        text = "".join(f"{name}: {line}\n" for line in message.split("\n"))
    else:
        text = f"{name}: {message}\n"
    sys.stderr.write(text if final_newline else text[:-1])


def warn(message: str) -> None:
    """``warn_report``: ``prog: warning: message`` on stderr."""
    sys.stderr.write(f"{prog()}: warning: {message}\n")


def qprint(quiet: bool, text: str) -> None:
    """``qprintf``: print ``text`` unless ``-q``."""
    if not quiet:
        sys.stdout.write(text)


# ----------------------------------------------------------------------
# getopt_long


def getopt(
    args: list[str],
    shortopts: str,
    longopts: dict[str, int] | None = None,
    *,
    stop_at_operand: bool = False,
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """GNU ``getopt_long`` with permutation, as qemu-img's subcommands use it.

    ``shortopts`` is getopt's string ("f:hq"); ``longopts`` maps a long name
    to 0 (no argument) or 1 (required argument). Returns (options, operands);
    options are ("-f", "raw") or ("--output", "json"). Errors raise
    :class:`UsageError` with qemu-img's wording. ``stop_at_operand`` is
    getopt's leading ``+``: the first operand ends the options.
    """
    from ..common.getopt import scan

    longs = {name: bool(has_arg) for name, has_arg in (longopts or {}).items()}
    opts, operands, error = scan(args, shortopts, longs, stop_at_operand=stop_at_operand)
    if error is not None:
        what = "missing argument for" if error.kind == "missing" else "unrecognized"
        raise UsageError(f"{what} option '{error.arg}'")
    return opts, operands


def parse_output_format(value: str) -> str:
    """``--output``: human or json."""
    if value in ("human", "json"):
        return value
    raise CliError("--output must be used with human or json as argument.")


def unsupported(what: str) -> CliError:
    """A clear refusal for an option pyqemu-img does not implement yet."""
    return CliError(f"{what} is not supported yet by pyqemu-img")


# ----------------------------------------------------------------------
# image opening


def parse_image_opts(text: str) -> dict[str, Any]:
    """``--image-opts`` string: QemuOpts with ``file`` as the implied key."""
    from ..common.options import parse_opts

    return dict(parse_opts(text, implied_key="file"))


def add_object_cli(value: str) -> None:
    """``--object``: define a user-creatable object (a ``secret``), or print
    ``--object help`` / ``--object secret,help`` and exit."""
    from ..common.errors import QemuError
    from ..common.objects import add_object, help_text

    try:
        text = help_text(value)
        if text is not None:
            sys.stdout.write(text)
            raise SystemExit(0)
        add_object(value)
    except QemuError as exc:
        raise CliError(exc.message) from None


def open_image_cli(
    filename: str,
    fmt: str | None = None,
    *,
    image_opts: bool = False,
    writable: bool = False,
    backing: bool = True,
    quiet: bool = False,
    options: dict[str, Any] | None = None,
) -> Any:
    """Open an image as qemu-img's ``img_open`` does, wrapping errors as
    ``Could not open 'x': <inner>`` (a :class:`CliError`)."""
    from ..common.block import BlockError, open_image
    from ..common.errors import QemuError

    try:
        if image_opts:
            if fmt:
                raise CliError("--image-opts and --format are mutually exclusive")
            opts = parse_image_opts(filename)
            node = open_image(None, None, options=opts, read_only=not writable, backing=backing)
        else:
            node = open_image(
                filename, fmt, options=options, read_only=not writable, backing=backing
            )
    except BlockError as exc:
        raise CliError(f"Could not open '{filename}': {exc.message}") from None
    except QemuError as exc:
        raise CliError(f"Could not open '{filename}': {exc.message}") from None
    if writable and fmt is None and not image_opts and node.format_name == "raw":
        sys.stderr.write(
            f"WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n"
            "         Automatically detecting the format is dangerous for raw images, "
            "write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the restrictions.\n"
        )
    return node


# ----------------------------------------------------------------------
# -o help

_KIND_NAMES = {"size": "size", "number": "num", "string": "str", "bool": "bool (on/off)"}


def _option_lines(options: Any) -> list[str]:
    lines = []
    for opt in sorted(options, key=lambda o: o.name):
        left = f"{opt.name}=<{_KIND_NAMES.get(opt.kind, opt.kind)}>"
        if opt.help:
            lines.append("  %-22s - %s\n" % (left, opt.help))
        else:
            lines.append(f"  {left}\n")
    return lines


def is_help_option(options: dict[str, str]) -> bool:
    """``-o help`` or ``-o ?`` anywhere in the option list."""
    return "help" in options or "?" in options


def print_create_help(fmt: str, with_filename: bool) -> None:
    """Print ``-o help`` as qemu-img does for format ``fmt``.

    Without a target filename only the format's own options are listed;
    with one, the protocol's options are merged in (sorted, deduplicated).
    """
    from ..common.block import get_format
    from ..common.block.file import FileProtocol

    cls = get_format(fmt)
    file_opts = {(o.name, o.help) for o in FileProtocol.create_options}
    if with_filename:
        merged = {o.name: o for o in FileProtocol.create_options}
        merged.update({o.name: o for o in cls.create_options})
        out = ["Supported options:\n", *_option_lines(merged.values())]
    else:
        # the format's own options: those not inherited verbatim from the protocol
        own = [
            o for o in cls.create_options if o.name == "size" or (o.name, o.help) not in file_opts
        ]
        out = [
            f"Supported {fmt} options:\n",
            *_option_lines(own),
            "\nThe protocol level may support further options.\n"
            "Specify the target filename to include those options.\n",
        ]
    sys.stdout.write("".join(out))


def parse_o_options(values: list[str]) -> dict[str, str]:
    """Merge every ``-o`` into one ordered dict (later wins)."""
    from ..common.options import parse_opts

    merged: dict[str, str] = {}
    for value in values:
        merged.update(parse_opts(value, implied_key="help" if value in ("help", "?") else None))
    return merged


# ----------------------------------------------------------------------
# progress (util/qemu-progress.c)


class Progress:
    """qemu-img's ``-p`` progress: ``    (12.34/100%)\\r`` on stdout."""

    def __init__(self, enabled: bool, min_skip: float = 1.0) -> None:
        self.enabled = enabled
        self.min_skip = min_skip
        self.current = 0.0
        self.last_print = 0.0

    def print(self, delta: float, maximum: int) -> None:
        """``qemu_progress_print(delta, max)``."""
        if not self.enabled:
            return
        if maximum == 0:
            current = delta
        else:
            current = self.current + delta / 100 * maximum
        if current > 100:
            current = 100.0
        self.current = current
        if current > self.last_print + self.min_skip or current == 100 or current == 0:
            self.last_print = current
            sys.stdout.write("    (%3.2f/100%%)\r" % current)
            sys.stdout.flush()

    def end(self) -> None:
        """``qemu_progress_end``."""
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()


# ----------------------------------------------------------------------
# numbers (qemu-img.c cvtnum)

INT64_MAX = (1 << 63) - 1


def cvtnum(name: str, value: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """qemu-img's ``cvtnum_full``: a size with suffix, or a two-line error."""
    from ..common.sizes import parse_size

    try:
        result = parse_size(value)
    except OverflowError:
        result = None
    except ValueError:
        raise CliError(
            f"Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\n"
            "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
            prefix_lines=True,
        ) from None
    if result is None or result > maximum or result < minimum:
        raise CliError(f"Invalid {name} specified. Must be between {minimum} and {maximum}.")
    return result
