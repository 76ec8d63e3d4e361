"""glibc ``getopt``/``getopt_long`` as qemu-io uses them, with glibc's messages.

qemu-io parses its own command line with ``getopt_long`` and each command's
arguments with ``getopt`` (re-initialised with ``optind = 0``): both permute,
so options may follow operands, ``--`` ends the options, and a bad option is
reported as ``<argv[0]>: invalid option -- 'x'``. As getopt hands options
back one at a time, a bad option ends the list as ``("?", message)``, after
the good options before it, so that the caller acts on those first.
"""

from __future__ import annotations

__all__ = ["getopt"]


class _Bad(Exception):
    pass


def _error(text: str) -> _Bad:
    return _Bad(text)


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
    longopts = longopts or {}
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    try:
        _scan(name, args, shortopts, longopts, opts, operands)
    except _Bad as exc:
        opts.append(("?", str(exc)))
    return opts, operands


def _scan(
    name: str,
    args: list[str],
    shortopts: str,
    longopts: dict[str, tuple[int, str]],
    opts: list[tuple[str, str | None]],
    operands: list[str],
) -> None:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1 :])
            break
        if arg.startswith("--") and longopts:
            key, eq, value = arg[2:].partition("=")
            matches = [key] if key in longopts else [n for n in longopts if n.startswith(key)]
            if len(matches) > 1:
                choices = " ".join(f"'--{m}'" for m in matches)
                raise _error(f"{name}: option '{arg}' is ambiguous; possibilities: {choices}")
            if not matches:
                raise _error(f"{name}: unrecognized option '{arg}'")
            full = matches[0]
            has_arg, short = longopts[full]
            if not has_arg:
                if eq:
                    raise _error(f"{name}: option '--{full}' doesn't allow an argument")
                opts.append((short, None))
            else:
                if not eq:
                    if i + 1 >= len(args):
                        raise _error(f"{name}: option '--{full}' requires an argument")
                    i += 1
                    value = args[i]
                opts.append((short, value))
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                ch = arg[j]
                idx = shortopts.find(ch)
                if ch == ":" or idx < 0:
                    raise _error(f"{name}: invalid option -- '{ch}'")
                if shortopts[idx + 1 : idx + 2] == ":":
                    if j + 1 < len(arg):
                        value = arg[j + 1 :]
                    elif i + 1 < len(args):
                        i += 1
                        value = args[i]
                    else:
                        raise _error(f"{name}: option requires an argument -- '{ch}'")
                    opts.append((ch, value))
                    break
                opts.append((ch, None))
                j += 1
        else:
            operands.append(arg)
        i += 1
