"""GNU ``getopt``/``getopt_long`` scanning, shared by the command-line tools.

Permutes as glibc does (options may follow operands, ``--`` ends the
options, a lone ``-`` is an operand), takes abbreviated long options, and
reports the first error as a :class:`GetoptError` naming what went wrong:
each tool words it as its C counterpart does (qemu-io prints glibc's own
messages, qemu-img its own ``unrecognized option``/``missing argument``).
"""

from __future__ import annotations

__all__ = ["GetoptError", "scan"]


class GetoptError(Exception):
    """A bad option; ``kind`` is one of:

    ``invalid`` (unknown short option ``option``), ``unrecognized`` (unknown
    long option), ``ambiguous`` (a long prefix of several: ``choices``),
    ``needless`` (``--option=value`` for a long option without argument),
    ``missing`` (no argument for ``option``; ``long`` says which form).
    ``arg`` is the whole command-line word that held the option.
    """

    def __init__(
        self,
        kind: str,
        arg: str,
        option: str = "",
        *,
        long: bool = False,
        choices: tuple[str, ...] = (),
    ) -> None:
        super().__init__(kind, arg)
        self.kind = kind
        self.arg = arg
        self.option = option
        self.long = long
        self.choices = choices


def scan(
    args: list[str],
    shortopts: str,
    longopts: dict[str, bool] | None = None,
    *,
    stop_at_operand: bool = False,
) -> tuple[list[tuple[str, str | None]], list[str], GetoptError | None]:
    """Parse ``args`` (without argv[0]).

    ``shortopts`` is getopt's string ("f:hq"); ``longopts`` maps a long name to
    whether it takes an argument, or is None for plain ``getopt`` (then
    ``--name`` is read as short options). ``stop_at_operand`` is getopt's
    leading ``+``. Returns (options, operands, error): options are ("-f",
    "raw") or ("--output", "json") up to the first error, which is None when
    there is none.
    """
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    try:
        _scan(args, shortopts, longopts, stop_at_operand, opts, operands)
    except GetoptError as exc:
        return opts, operands, exc
    return opts, operands, None


def _scan(
    args: list[str],
    shortopts: str,
    longopts: dict[str, bool] | None,
    stop_at_operand: bool,
    opts: list[tuple[str, str | None]],
    operands: list[str],
) -> None:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1 :])
            return
        if arg.startswith("--") and longopts is not None:
            name, eq, value = arg[2:].partition("=")
            matches = [name] if name in longopts else [n for n in longopts if n.startswith(name)]
            if len(matches) > 1:
                raise GetoptError("ambiguous", arg, long=True, choices=tuple(matches))
            if not matches:
                raise GetoptError("unrecognized", arg, long=True)
            full = matches[0]
            if not longopts[full]:
                if eq:
                    raise GetoptError("needless", arg, full, long=True)
                opts.append(("--" + full, None))
            else:
                if not eq:
                    if i + 1 >= len(args):
                        raise GetoptError("missing", arg, full, long=True)
                    i += 1
                    value = args[i]
                opts.append(("--" + full, value))
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                ch = arg[j]
                idx = shortopts.find(ch)
                if ch == ":" or idx < 0:
                    raise GetoptError("invalid", arg, ch)
                if shortopts[idx + 1 : idx + 2] == ":":
                    if j + 1 < len(arg):
                        value = arg[j + 1 :]
                    elif i + 1 < len(args):
                        i += 1
                        value = args[i]
                    else:
                        raise GetoptError("missing", arg, ch)
                    opts.append(("-" + ch, value))
                    break
                opts.append(("-" + ch, None))
                j += 1
        else:
            if stop_at_operand:
                operands.extend(args[i:])
                return
            operands.append(arg)
        i += 1
