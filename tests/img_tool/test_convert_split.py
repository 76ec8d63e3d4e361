"""convert's zero detection (``Converter._split``) against a per-granule model."""

from __future__ import annotations

import random

import pytest
from pyqemu.img_tool.convert import CHUNK, Converter


def model(buf: bytearray, n: int, start: int, g: int) -> list[tuple[int, int, bool]]:
    segs: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < n:
        end = min(n, (start + pos) // g * g + g - start)
        is_data = buf[pos:end] != bytes(end - pos)
        if segs and segs[-1][2] == is_data:
            segs[-1] = (segs[-1][0], end, is_data)
        else:
            segs.append((pos, end, is_data))
        pos = end
    return segs


@pytest.mark.parametrize("seed", range(8))
def test_split_matches_model(seed: int) -> None:
    rng = random.Random(seed)
    conv = Converter.__new__(Converter)
    conv.min_sparse = 512
    for _ in range(150):
        g = rng.choice([512, 4096, 65536, 1 << 20])
        n = rng.randrange(1, CHUNK + 1) if rng.random() < 0.3 else rng.randrange(1, 5 * g)
        n = min(n, CHUNK)
        start = rng.randrange(0, 1 << 30)
        if rng.random() < 0.7:
            start -= start % 512
        buf = bytearray(CHUNK)
        pos = 0
        while pos < n:
            length = rng.choice([1, g - 1, g, g + 1, 3 * g, rng.randrange(1, 5 * g)])
            if rng.random() < 0.5:
                step = (
                    rng.choice([1, 37, g - 1, g]) if length < 8192 else rng.choice([997, g - 1, g])
                )
                for i in range(pos, min(n, pos + length), step):
                    buf[i] = rng.randrange(1, 256)
            pos += length
        conv.granularity = g
        conv._zero_g = bytes(g)
        assert conv._split(buf, n, start) == model(buf, n, start, g)


def test_split_without_sparse_detection() -> None:
    conv = Converter.__new__(Converter)
    conv.min_sparse = 0
    assert conv._split(bytearray(4096), 4096, 0) == [(0, 4096, True)]
