"""qemu-io's command table: one :class:`Command` record per command.

Commands live in modules by family (``io``: read/write and their vector and
aio forms; ``image``: flush, truncate, length, info, discard, alloc, map;
``control``: open, close, reopen, quit, help, sleep, abort, sigraise;
``debug``: the blkdebug breakpoint commands) and register themselves with
:func:`command`. A handler takes ``(session, argv)`` (argv[0] is the command
name as typed) and returns 0 or a negative errno, as qemu-io's ``cfunc``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["CMD_FLAG_GLOBAL", "CMD_NOFILE_OK", "Command", "command", "find_command", "table"]

CMD_NOFILE_OK = 0x01
CMD_FLAG_GLOBAL = 0x02

Handler = Callable[["Session", list[str]], int]


class Command:
    """``cmdinfo_t`` (a plain class: dataclasses costs start-up time)."""

    __slots__ = ("name", "func", "altname", "argmin", "argmax", "args", "oneline", "help")
    __slots__ += ("flags", "write")

    def __init__(
        self,
        name: str,
        func: Handler,
        altname: str | None = None,
        argmin: int = 0,
        argmax: int = 0,
        args: str | None = None,
        oneline: str = "",
        help: str | None = None,
        flags: int = 0,
        write: bool = False,
    ) -> None:
        self.name = name
        self.func = func
        self.altname = altname
        self.argmin = argmin
        self.argmax = argmax
        self.args = args
        self.oneline = oneline
        self.help = help
        self.flags = flags
        #: needs write permission (BLK_PERM_WRITE)
        self.write = write

    def usage_line(self) -> str:
        """``qemuio_command_usage``."""
        return "%s %s -- %s\n" % (self.name, self.args, self.oneline)


_TABLE: dict[str, Command] = {}


def command(
    name: str,
    *,
    altname: str | None = None,
    argmin: int = 0,
    argmax: int = 0,
    args: str | None = None,
    oneline: str = "",
    help: str | None = None,
    flags: int = 0,
    write: bool = False,
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as a qemu-io command."""

    def register(func: Handler) -> Handler:
        _TABLE[name] = Command(
            name, func, altname, argmin, argmax, args, oneline, help, flags, write
        )
        return func

    return register


_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        from . import control, debug, image, io  # noqa: F401  (registration)

        _loaded = True


def table() -> list[Command]:
    """Every command, sorted by name as qemu-io's ``cmdtab``."""
    _load()
    return [_TABLE[name] for name in sorted(_TABLE)]


def find_command(name: str) -> Command | None:
    """``find_command``: by name or alternative name."""
    for ct in table():
        if ct.name == name or ct.altname == name:
            return ct
    return None
