"""qcow2, QEMU's native image format (spec: QEMU's docs/interop/qcow2.txt).

What lives where, as in QEMU's block/qcow2*.c:

* ``layout``   -- the on-disk structures (header, extensions, entries), pure
* ``cache``    -- write-back caches for L2 tables and refcount blocks
* ``refcount`` -- refcount lookups/updates and cluster allocation
* ``cluster``  -- L1/L2 mapping of guest offsets to host clusters
* ``compress`` -- zlib / zstd cluster compression
* ``qcow2``    -- the driver: open, create, read/write/COW, zero, discard, resize
* ``check``    -- consistency check and repair
"""

from __future__ import annotations

from .qcow2 import Qcow2

__all__ = ["Qcow2"]
