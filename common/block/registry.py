"""Driver registry by format name, and format probing.

Drivers are imported lazily, on first use, so that a command that only needs
``raw`` does not pay for importing every format.
"""

from __future__ import annotations

import importlib

from .driver import BlockDriver
from .errors import BlockError

#: format name -> "module:Class" (relative to this package)
_FORMATS: dict[str, str] = {
    "raw": "raw:RawFormat",
    "qcow2": "qcow2:Qcow2",
}
#: protocol name -> "module:Class"
_PROTOCOLS: dict[str, str] = {
    "file": "file:FileProtocol",
    "blkdebug": "blkdebug:Blkdebug",
    "nbd": "nbd:NBDProtocol",
}
_loaded: dict[str, type[BlockDriver]] = {}


def _load(spec: str) -> type[BlockDriver]:
    cls = _loaded.get(spec)
    if cls is None:
        module_name, _, attr = spec.partition(":")
        module = importlib.import_module(f"{__package__}.{module_name}")
        cls = getattr(module, attr)
        _loaded[spec] = cls
    return cls


def register_format(name: str, spec: str) -> None:
    """Register a format driver as ``"package.module:Class"`` (absolute) or relative."""
    _FORMATS[name] = spec


def format_names() -> list[str]:
    """Every registered format and protocol name, as qemu-img --help lists them."""
    return sorted(set(_FORMATS) | set(_PROTOCOLS))


def get_format(name: str) -> type[BlockDriver]:
    """The driver class for format ``name``; BlockError if unknown."""
    spec = _FORMATS.get(name) or _PROTOCOLS.get(name)
    if spec is None:
        raise BlockError(f"Unknown driver '{name}'")
    return _load(spec)


def get_protocol(name: str) -> type[BlockDriver]:
    """The protocol driver class for ``name``."""
    spec = _PROTOCOLS.get(name)
    if spec is None:
        raise BlockError(f"Unknown protocol '{name}'")
    return _load(spec)


def protocol_for_filename(filename: str) -> str:
    """The protocol a plain filename names: ``file`` unless it has a known ``proto:`` prefix."""
    head, sep, _ = filename.partition(":")
    if sep and "/" not in head:
        for name in _PROTOCOLS:
            cls = _load(_PROTOCOLS[name])
            if head in cls.protocol_prefixes or head.split("+")[0] in cls.protocol_prefixes:
                return name
    return "file"


def probe_format(header: bytes, filename: str) -> type[BlockDriver]:
    """The format whose probe scores ``header`` highest (raw scores 1)."""
    best: type[BlockDriver] | None = None
    best_score = 0
    for spec in _FORMATS.values():
        cls = _load(spec)
        score = cls.probe(header, filename)
        if score > best_score:
            best, best_score = cls, score
    assert best is not None
    return best
