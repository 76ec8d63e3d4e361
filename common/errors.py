"""Base errors shared by every pyqemu subsystem.

Each subsystem derives its own base from :class:`QemuError`; the command-line
layer catches ``QemuError`` once and prints ``<prog>: <message>``.
"""

from __future__ import annotations

import errno as _errno
import os


class QemuError(Exception):
    """An error with a message in QEMU's words, ready for ``prog: message``."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message

    def prefixed(self, prefix: str) -> QemuError:
        """Return a copy of this error with ``prefix: `` put before its message."""
        err = type(self).__new__(type(self))
        QemuError.__init__(err, f"{prefix}: {self.message}", self.errno)
        return err


def strerror(code: int) -> str:
    """``strerror(3)`` as glibc words it (QEMU prints these)."""
    if code == _errno.ENOTSUP:
        return "Operation not supported"
    return os.strerror(code)
