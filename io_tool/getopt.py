"""glibc ``getopt``/``getopt_long`` as qemu-io uses them, with glibc's messages.

qemu-io parses its own command line with ``getopt_long`` and each command's
arguments with ``getopt`` (re-initialised with ``optind = 0``): both permute,
so options may follow operands, ``--`` ends the options, and a bad option is
reported as ``<argv[0]>: invalid option -- 'x'``. As getopt hands options
back one at a time, a bad option ends the list as ``("?", message)``, after
the good options before it, so that the caller acts on those first.
"""

from __future__ import annotations

from ..common.getopt import GetoptError, scan

__all__ = ["getopt"]


def glibc_message(name: str, exc: GetoptError) -> str:
    """glibc's wording of a getopt error, after ``name:``."""
    if exc.kind == "invalid":
        return f"{name}: invalid option -- '{exc.option}'"
    if exc.kind == "unrecognized":
        return f"{name}: unrecognized option '{exc.arg}'"
    if exc.kind == "ambiguous":
        choices = " ".join(f"'--{m}'" for m in exc.choices)
        return f"{name}: option '{exc.arg}' is ambiguous; possibilities: {choices}"
    if exc.kind == "needless":
        return f"{name}: option '--{exc.option}' doesn't allow an argument"
    if exc.long:
        return f"{name}: option '--{exc.option}' requires an argument"
    return f"{name}: option requires an argument -- '{exc.option}'"


def getopt(
    name: str,
    args: list[str],
    shortopts: str,
    longopts: dict[str, tuple[int, str]] | None = None,
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Parse ``args`` (without argv[0]); return ([(opt, value)], operands).

    ``longopts`` maps a long name to (has_arg, short letter or key); the
    option is reported under that letter/key. ``name`` is argv[0] for messages.
    """
    longs = {key: bool(has_arg) for key, (has_arg, _) in longopts.items()} if longopts else None
    found, operands, error = scan(args, shortopts, longs)
    opts: list[tuple[str, str | None]] = [
        (key[1:] if len(key) == 2 else longopts[key[2:]][1], value)  # type: ignore[index]
        for key, value in found
    ]
    if error is not None:
        opts.append(("?", glibc_message(name, error)))
    return opts, operands
