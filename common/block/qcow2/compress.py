"""Cluster compression (QEMU's block/qcow2-threads.c): zlib raw deflate and zstd.

Pure functions, safe to call from worker threads: zlib and zstandard release
the GIL while they work, so ``convert -c`` can compress clusters in parallel.
"""

from __future__ import annotations

import io
import threading
import zlib
from typing import Any

from ..errors import ImageCorrupt, UnsupportedFeature
from .layout import CompressionType

#: raw deflate with a 4 KiB window, as QEMU's deflateInit2(..., -12, 9, ...)
ZLIB_WBITS = -12
ZLIB_MEMLEVEL = 9

_local = threading.local()


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - declared dependency
        raise UnsupportedFeature("zstd compression is not available") from None
    return zstandard


def compress(data: bytes | bytearray | memoryview, ctype: int, limit: int) -> bytes | None:
    """Compress ``data``; None if the result would not be shorter than ``limit``."""
    if ctype == CompressionType.ZLIB:
        obj = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL)
        out = obj.compress(data) + obj.flush()
    elif ctype == CompressionType.ZSTD:
        cctx = getattr(_local, "zstd_c", None)
        if cctx is None:
            cctx = _local.zstd_c = _zstd().ZstdCompressor(
                write_content_size=False, write_checksum=False
            )
        out = cctx.compress(bytes(data))
    else:
        raise UnsupportedFeature(f"Unknown compression type {ctype}")
    if len(out) >= limit:
        return None
    return out


def decompress(data: bytes, ctype: int, out_len: int) -> bytes:
    """Decompress one cluster's worth of ``data`` into exactly ``out_len`` bytes."""
    try:
        if ctype == CompressionType.ZLIB:
            obj = zlib.decompressobj(ZLIB_WBITS)
            out = obj.decompress(data, out_len)
        elif ctype == CompressionType.ZSTD:
            # bounded: a hostile frame must not expand past one cluster
            reader = _zstd().ZstdDecompressor().stream_reader(io.BytesIO(data))
            out = reader.read(out_len)
        else:
            raise UnsupportedFeature(f"Unknown compression type {ctype}")
    except (zlib.error, ValueError) as exc:
        raise ImageCorrupt(f"Could not decompress cluster: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError
        if type(exc).__name__ == "ZstdError":
            raise ImageCorrupt(f"Could not decompress cluster: {exc}") from None
        raise
    if len(out) < out_len:
        raise ImageCorrupt("Could not decompress cluster: short output")
    return out[:out_len]
