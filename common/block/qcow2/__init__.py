"""qcow2 (placeholder until the driver lands: probing only)."""

from __future__ import annotations

from ..driver import BlockDriver
from ..errors import UnsupportedFeature
from .layout import MAGIC


class Qcow2(BlockDriver):
    format_name = "qcow2"
    supports_backing = True

    @classmethod
    def probe(cls, header: bytes, filename: str) -> int:
        return 100 if header[:4] == MAGIC else 0

    @classmethod
    def open(cls, file, options, *, read_only):  # type: ignore[no-untyped-def]
        raise UnsupportedFeature("qcow2 driver not implemented yet")
