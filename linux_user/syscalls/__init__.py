"""Syscall registry and dispatch.

Handlers live in modules by family (``files``, ``memory``, ``process``, ``time``,
``signals``...) and register with the :func:`syscall` decorator under the kernel's
names (the per-arch numbers come from ``numbers_<arch>.py``, generated from the
kernel's tables). A handler takes the :class:`~pyqemu.linux_user.process.GuestThread`
and the raw argument registers it needs (unsigned, word-sized), and returns the
result (an int; a negative value is ``-errno``) or ``None`` when the registers must
not be touched (exit, sigreturn). Host ``OSError`` and ``GuestMemoryError`` become
``-errno`` here, at one boundary::

    @syscall("getpid")
    def sys_getpid(t):
        return os.getpid()

    @syscall("pread64", arch="arm")          # an arch-specific argument layout
    def sys_pread64_arm(t, fd, buf, count, _pad, lo, hi): ...

An unknown number returns ``-ENOSYS`` and, under ``-d unimp``, logs qemu's
"Unsupported syscall: N" line.
"""

from __future__ import annotations

import errno
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...common.memory import GuestMemoryError

if TYPE_CHECKING:
    from ..process import GuestThread

Handler = Callable[..., "int | None"]

#: family modules imported by :func:`table_for` (phase-2 families add themselves here)
FAMILIES = ["files", "memory", "process", "time", "signals", "poll", "net", "threads"]

_REGISTRY: dict[tuple[str, str | None], Handler] = {}


def syscall(*names: str, arch: str | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated handler for ``names`` (on every arch, or only ``arch``)."""

    def register(fn: Handler) -> Handler:
        for name in names:
            _REGISTRY[(name, arch)] = fn
        return fn

    return register


@dataclass
class SyscallTable:
    """One architecture's dispatch table: number -> (name, handler, argument count)."""

    arch: str
    numbers: dict[str, int]
    names: dict[int, str]
    handlers: dict[int, tuple[str, Handler, int]] = field(default_factory=dict)

    def number(self, name: str) -> int:
        return self.numbers[name]


_TABLES: dict[str, SyscallTable] = {}


def table_for(arch: str) -> SyscallTable:
    """The dispatch table of ``arch`` ("arm", "aarch64"), built once."""
    table = _TABLES.get(arch)
    if table is not None:
        return table
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
    numbers = importlib.import_module(f"{__name__}.numbers_{arch}").NUMBERS
    table = SyscallTable(arch, numbers, {v: k for k, v in numbers.items()})
    for (name, only), fn in _REGISTRY.items():
        if only not in (None, arch) or name not in numbers:
            continue
        if only is None and (name, arch) in _REGISTRY:
            continue
        table.handlers[numbers[name]] = (name, fn, fn.__code__.co_argcount - 1)
    _TABLES[arch] = table
    return table


def dispatch(t: GuestThread, nr: int, args: list[int]) -> int | None:
    """Run syscall ``nr`` for thread ``t``; returns the value for the result register."""
    entry = t.process.table.handlers.get(nr)  # type: ignore[union-attr]
    if entry is None:
        proc = t.process
        if "unimp" in proc.log_items:
            proc.log.write(f"Unsupported syscall: {nr}\n")
            proc.log.flush()
        return -errno.ENOSYS
    try:
        return entry[1](t, *args[:entry[2]])
    except OSError as e:
        return -(e.errno or errno.EIO)
    except GuestMemoryError as e:
        return -e.errno
