"""qcow2 against a ``bytearray`` model: random op sequences (hypothesis).

Each example creates a small qcow2 image, applies a random list of writes,
discards, write_zeroes, truncates and close/reopens to the image and to a
``bytearray``, and after every step reads back the touched range. At the end
the whole image must equal the model, ``qemu-img check`` must find no leak
and no corruption, and ``qemu-img compare`` against a raw file of the model
must say identical.

Semantics modelled (measured on qemu-io / qemu-img 7.2):

* write_zeroes: the range reads as zeroes (with or without ``may_unmap``).
* discard: only whole clusters are touched (the partial cluster at the end of
  an unaligned image counts as whole); they then read as zeroes, except on a
  compat=0.10 image with a backing file, where QEMU ignores the discard (v2
  has no zero clusters).
* truncate shrink: the tail is dropped. Grow: the new area reads as zeroes,
  except the rest of the cluster the old end was in, which keeps whatever that
  cluster held (QEMU does the same), so the model treats those bytes as
  "unknown" until they are written; the final compare then adopts our value
  and ``qemu-img compare`` checks that qemu reads the same bytes. Growing an
  overlay whose backing file is larger than the old size zeroes the new area
  (bdrv_co_truncate's BDRV_REQ_ZERO_WRITE): the whole of it on v3, the part
  the backing file covers on v2 (where QEMU itself fails the resize with
  ENOTSUP; we write explicit zeroes), so those bytes are never "unknown".
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyqemu.common.block import create_image, open_image

from tests.conftest import run

KiB = 1 << 10
MiB = 1 << 20
MAX_SIZE = 4 * MiB


@dataclass(frozen=True)
class Config:
    name: str
    options: dict[str, str]
    cluster: int
    size: int
    backing_size: int = 0  # 0: no backing file
    v2: bool = False


CONFIGS = [
    Config("c512-rc1", {"cluster_size": "512", "refcount_bits": "1"}, 512, 1 * MiB),
    Config("c4k-v2", {"cluster_size": "4k", "compat": "0.10"}, 4 * KiB, 2 * MiB, v2=True),
    Config("c64k-rc64", {"cluster_size": "64k", "refcount_bits": "64"}, 64 * KiB, 2 * MiB),
    Config("c64k-extl2", {"cluster_size": "64k", "extended_l2": "on"}, 64 * KiB, 2 * MiB),
    Config("c4k-backing", {"cluster_size": "4k"}, 4 * KiB, 2 * MiB, backing_size=1 * MiB),
    Config(
        "c4k-v2-backing",
        {"cluster_size": "4k", "compat": "0.10"},
        4 * KiB,
        2 * MiB,
        backing_size=1536 * KiB,
        v2=True,
    ),
]


# --- op strategy ------------------------------------------------------------------------
# Offsets and lengths are drawn independently of the image's current size and
# clamped when applied, so an op list stays valid while hypothesis shrinks it.

_offset = st.one_of(
    st.integers(0, MAX_SIZE - 1),
    st.integers(0, MAX_SIZE // 512 - 1).map(lambda n: n * 512),
    st.integers(0, MAX_SIZE // (64 * KiB) - 1).map(lambda n: n * 64 * KiB),
)
_length = st.one_of(
    st.integers(1, 3 * 64 * KiB),
    st.sampled_from([1, 511, 512, 4096, 4097, 65536, 65537, 3 * 65536]),
    st.integers(1, 8).map(lambda n: n * 64 * KiB),
)
_write = st.tuples(st.just("write"), _offset, _length, st.integers(0, 2**32))
_zero = st.tuples(st.just("zero"), _offset, _length, st.booleans())
_discard = st.tuples(st.just("discard"), _offset, _length, st.just(0))
_truncate = st.tuples(st.just("truncate"), st.integers(1, MAX_SIZE // 512), st.just(0), st.just(0))
_reopen = st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0))
OPS = st.lists(
    st.one_of(_write, _write, _zero, _discard, _truncate, _reopen), min_size=1, max_size=25
)


# --- the model --------------------------------------------------------------------------


class Model:
    """The guest-visible bytes, plus a mask of bytes whose value is not specified."""

    def __init__(self, cfg: Config, backing: bytes) -> None:
        self.cfg = cfg
        self.data = bytearray(backing[: cfg.size].ljust(cfg.size, b"\0"))
        self.unknown = bytearray(cfg.size)  # 1 = any value allowed

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, off: int, data: bytes) -> None:
        self.data[off : off + len(data)] = data
        self.unknown[off : off + len(data)] = bytes(len(data))

    def zero(self, off: int, n: int) -> None:
        self.write(off, bytes(n))

    def discard(self, off: int, n: int) -> None:
        cs = self.cfg.cluster
        if self.cfg.v2 and self.cfg.backing_size:
            return  # qemu ignores it: v2 cannot show zeroes over a backing file
        end = off + n
        a = -(-off // cs) * cs
        b = end if end == self.size else end // cs * cs
        if a < b:
            self.zero(a, b - a)

    def truncate(self, size: int) -> None:
        old = self.size
        if size <= old:
            del self.data[size:]
            del self.unknown[size:]
            return
        self.data += bytes(size - old)
        self.unknown += bytes(size - old)
        cs = self.cfg.cluster
        start = old  # the new area from here on may keep what the old end's cluster held
        if self.cfg.backing_size > old:  # explicitly zeroed, see the docstring
            start = min(size, self.cfg.backing_size) if self.cfg.v2 else size
        tail_end = min(-(-old // cs) * cs, size)
        if start < tail_end:
            self.unknown[start:tail_end] = b"\1" * (tail_end - start)

    def matches(self, off: int, got: bytes) -> bool:
        want = self.data[off : off + len(got)]
        if got == want:
            return True
        mask = self.unknown[off : off + len(got)]
        return all(m or g == w for g, w, m in zip(got, want, mask, strict=True))

    def adopt(self, got: bytes) -> None:
        """Take our value for the unknown bytes (qemu-img compare then checks qemu agrees)."""
        for i in (i for i, m in enumerate(self.unknown) if m):
            self.data[i] = got[i]


def _clamp(off: int, n: int, size: int) -> tuple[int, int]:
    off %= size
    return off, min(n, size - off)


def _check_range(img, model: Model, off: int, n: int) -> None:
    lo = max(0, off - 700)
    hi = min(model.size, off + n + 700)
    got = img.read(lo, hi - lo)
    assert model.matches(lo, got), f"data differs in [{lo:#x}, {hi:#x})"


_counter = itertools.count()


def run_ops(qemu_img: str, cfg: Config, ops, workdir: str) -> None:
    n = next(_counter)
    path = os.path.join(workdir, f"m{n}.qcow2")
    rng = random.Random(n)
    backing = b""
    opts = dict(cfg.options)
    if cfg.backing_size:
        backing = rng.randbytes(cfg.backing_size)
        bpath = os.path.join(workdir, f"b{n}.raw")
        with open(bpath, "wb") as f:
            f.write(backing)
        opts.update(backing_file=bpath, backing_fmt="raw")
    create_image(path, "qcow2", cfg.size, opts)
    model = Model(cfg, backing)
    img = open_image(path, read_only=False)
    try:
        for kind, a, b, c in ops:
            if kind == "write":
                off, ln = _clamp(a, b, model.size)
                data = random.Random(c).randbytes(ln)
                img.write(off, data)
                model.write(off, data)
            elif kind == "zero":
                off, ln = _clamp(a, b, model.size)
                img.write_zeroes(off, ln, may_unmap=c)
                model.zero(off, ln)
            elif kind == "discard":
                off, ln = _clamp(a, b, model.size)
                img.discard(off, ln)
                model.discard(off, ln)
            elif kind == "truncate":
                size = a * 512
                img.truncate(size)
                model.truncate(size)
                off = max(0, size - 4096)
                ln = min(8192, model.size - off)
            else:
                img.close()
                img = open_image(path, read_only=False)
                off, ln = 0, min(model.size, 4096)
            assert img.size == model.size
            _check_range(img, model, off, ln)
        whole = img.read(0, model.size)
        assert model.matches(0, whole), "whole-image read differs from the model"
        model.adopt(whole)
    finally:
        img.close()

    r = run([qemu_img, "check", "--output=json", path])
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info.get("leaks", 0) == 0 and info.get("corruptions", 0) == 0, r.stdout
    raw = os.path.join(workdir, f"m{n}.raw")
    with open(raw, "wb") as f:
        f.write(model.data)
    r = run([qemu_img, "compare", "-f", "qcow2", "-F", "raw", path, raw])
    assert r.returncode == 0, r.stdout + r.stderr
    for name in os.listdir(workdir):
        if name.startswith((f"m{n}.", f"b{n}.")):
            os.unlink(os.path.join(workdir, name))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_qcow2_matches_bytearray_model(qemu_img, cfg: Config, ops) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        run_ops(qemu_img, cfg, ops, workdir)


def test_model_covers_qemu_discard_semantics(qemu_img, qemu_io, tmp_path) -> None:
    """The model's discard rules, measured on qemu-io: v3 overlay zeroes whole clusters
    only; v2 without backing zeroes; v2 with backing ignores the discard."""
    base = tmp_path / "base.raw"
    base.write_bytes(b"U" * MiB)
    for compat, with_backing, expect_head in [
        ("1.1", True, 0),
        ("0.10", False, 0),
        ("0.10", True, 0x11),
    ]:
        path = str(tmp_path / f"o{compat}{with_backing}.qcow2")
        o = f"cluster_size=4k,compat={compat}"
        if with_backing:
            o += f",backing_file={base},backing_fmt=raw"
        run([qemu_img, "create", "-q", "-f", "qcow2", "-o", o, path, "1M"], check=True)
        r = run([qemu_io, "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "discard 0 10k", path])
        assert r.returncode == 0, r.stderr
        cfg = Config("x", {}, 4 * KiB, MiB, MiB if with_backing else 0, v2=compat == "0.10")
        model = Model(cfg, b"U" * MiB if with_backing else b"")
        model.write(0, b"\x11" * 65536)
        model.discard(0, 10 * KiB)
        assert model.data[0] == expect_head and model.data[9 * KiB] == 0x11
        raw = tmp_path / "model.raw"
        raw.write_bytes(model.data)
        r = subprocess.run(
            [qemu_img, "compare", "-f", "qcow2", "-F", "raw", path, str(raw)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, (compat, with_backing, r.stdout)
