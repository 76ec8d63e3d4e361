"""Block encryption (QEMU's crypto/block*.c).

* :mod:`.luks` -- the LUKS1 on-disk format as QEMU writes it (header, key
  slots, PBKDF2, anti-forensic splitter) and per-sector encryption, used by
  qcow2's ``encrypt.format=luks``.

The ciphers come from the ``cryptography`` package (the ``crypto`` extra),
imported only when an encrypted image is used.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

#: set while opening images for metadata only (qemu-img info's BDRV_O_NO_IO):
#: an encrypted image then opens without its key, and refuses I/O
METADATA_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pyqemu_crypto_metadata_only", default=False
)


@contextlib.contextmanager
def metadata_only() -> Iterator[None]:
    """Open encrypted images without their keys inside this block."""
    token = METADATA_ONLY.set(True)
    try:
        yield
    finally:
        METADATA_ONLY.reset(token)
