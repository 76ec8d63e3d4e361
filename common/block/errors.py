"""Errors of the block layer.

``BlockError`` is the base. ``ImageCorrupt`` means the image's own metadata is
inconsistent; ``UnsupportedFeature`` means a valid image or request that this
implementation does not handle; ``InvalidRequest`` is caller misuse (out of
range, read-only). Each carries an ``errno`` where QEMU would report one.
"""

from __future__ import annotations

import errno

from ..errors import QemuError


class BlockError(QemuError):
    """Base of every error raised by the block layer."""


class ImageCorrupt(BlockError):
    """The image's metadata is inconsistent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EIO)


class UnsupportedFeature(BlockError):
    """A valid image or option that this implementation does not support."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOTSUP)


class InvalidRequest(BlockError):
    """A request the caller should not have made (range, permissions)."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message, code)


class CloseError(BlockError):
    """Closing failed (a flush, or writing cached metadata). ``reports`` are the
    lines QEMU's ``error_report`` prints while closing, without the program name;
    QEMU itself does not fail the close."""

    def __init__(self, message: str, code: int | None = None, reports: list[str] | None = None):
        super().__init__(message, code)
        self.reports = list(reports or [])
