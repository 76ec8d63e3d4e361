"""Crash-test child: write to a qcow2 image at random until killed.

Usage: python3 crash_child.py IMAGE SEED

Opens IMAGE read-write through pyqemu's block layer, does one allocating
write, prints ``ready`` on stdout, then loops forever over allocating writes,
overwrites, write_zeroes (with and without unmap), discards and occasional
flushes at random offsets. The parent SIGKILLs it at a random instant.
An exception exits with status 2 and its traceback on stderr.
"""

from __future__ import annotations

import random
import sys


def main(argv: list[str]) -> int:
    from pyqemu.common.block import open_image

    path, seed = argv[1], int(argv[2])
    rng = random.Random(seed)
    img = open_image(path, fmt="qcow2", read_only=False)
    size = img.size
    cs = img.cluster_size or 65536
    written: list[tuple[int, int]] = []
    img.write(0, rng.randbytes(min(size, 3 * cs + 17)))
    print("ready", flush=True)
    while True:
        r = rng.random()
        if r < 0.35 or not written:  # allocating write, often unaligned
            off = rng.randrange(size)
            n = min(rng.randrange(1, 4 * cs + 2), size - off)
            img.write(off, rng.randbytes(n))
            written.append((off, n))
        elif r < 0.55:  # overwrite of something written earlier
            off, n = rng.choice(written)
            n = min(n, 8 * cs)
            img.write(off, rng.randbytes(n))
        elif r < 0.7:
            off = rng.randrange(size)
            n = min(rng.randrange(1, 8 * cs), size - off)
            img.write_zeroes(off, n, may_unmap=rng.random() < 0.5)
        elif r < 0.85:
            off = rng.randrange(size)
            n = min(rng.randrange(1, 8 * cs), size - off)
            img.discard(off, n)
        elif r < 0.9:
            img.flush()
        else:  # an overwrite spanning clusters of mixed state
            off = rng.randrange(size)
            n = min(2 * cs + rng.randrange(cs), size - off)
            img.write(off, bytes(n // 2) + rng.randbytes(n - n // 2))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(2)
