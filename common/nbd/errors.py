"""NBD errors: one base, split by who is at fault."""

from __future__ import annotations

from ..errors import QemuError


class NBDError(QemuError):
    """Base of every NBD error."""


class ProtocolError(NBDError):
    """The peer broke the protocol; the connection is now terminal.

    ``errno`` is the NBD error to send back where the protocol still allows
    one (it never does after a framing error: the stream cannot be resynced).
    """


class LocalProtocolError(NBDError):
    """We were asked to send something the protocol does not allow now
    (caller misuse); the connection is terminal too."""


class InvalidMessage(NBDError, ValueError):
    """A message failed validation on construction."""
