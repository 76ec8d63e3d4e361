"""Persistent dirty bitmaps (common/block/qcow2/bitmap.py) against qemu-io/qemu-img 7.2.

QEMU has no command that dumps bitmap bits, so both images are decoded by our
module from their on-disk tables and data clusters and compared.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

from pyqemu.common.block import open_image
from pyqemu.common.block.qcow2.bitmap import BitmapSet, DirtyBitmap

IO_CMDS = [
    "write 0 1k",
    "write 70k 200k",
    "write -z 3M 1M",
    "write -z 7M 3k",
    "discard 5M 64k",
    "write -c 8M 64k",
    "write 10239k 1k",
]


def decoded(path: Path) -> dict[str, tuple[int, bool, bool, bytes]]:
    with open_image(str(path), "qcow2") as drv:
        bs = BitmapSet.load(drv)
        return {
            b.name: (b.granularity, b.enabled, b.inconsistent, bytes(b.bits)) for b in bs.bitmaps
        }


def make_base(qemu_img: str, path: Path) -> None:
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "10M"], check=True)
    for args in (["b0"], ["-g", "4k", "b1"], ["-g", "512", "b2"], ["-g", "1M", "off"]):
        subprocess.run([qemu_img, "bitmap", "--add", *args[:-1], str(path), args[-1]], check=True)
    subprocess.run([qemu_img, "bitmap", "--disable", str(path), "off"], check=True)


def test_writes_mark_the_bits_qemu_io_marks(qemu_img: str, qemu_io: str, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    make_base(qemu_img, base)
    ref, ours = tmp_path / "ref.qcow2", tmp_path / "ours.qcow2"
    shutil.copy(base, ref)
    shutil.copy(base, ours)
    args = [a for c in IO_CMDS for a in ("-c", c)]
    subprocess.run([qemu_io, *args, str(ref)], check=True, capture_output=True)
    subprocess.run(["pyqemu-io", *args, str(ours)], check=True, capture_output=True)
    want, got = decoded(ref), decoded(ours)
    assert got == want
    assert any(want["b1"][3]) and not any(want["off"][3])
    r = subprocess.run([qemu_img, "check", str(ours)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    # and qemu loads what we stored: its next write lands on top of our bits
    subprocess.run([qemu_io, "-c", "write 9M 4k", str(ours)], check=True, capture_output=True)
    subprocess.run([qemu_io, "-c", "write 9M 4k", str(ref)], check=True, capture_output=True)
    assert decoded(ours) == decoded(ref)


def test_driver_writes_and_in_use_while_open(qemu_img: str, qemu_io: str, tmp_path: Path) -> None:
    base = tmp_path / "b.qcow2"
    make_base(qemu_img, base)
    ref = tmp_path / "r.qcow2"
    shutil.copy(base, ref)
    rng = random.Random(7)
    ops = []
    for _ in range(40):
        off = rng.randrange(0, 10 << 20, 512)
        n = rng.randrange(512, 300 << 10, 512)
        n = min(n, (10 << 20) - off)
        ops.append((rng.choice(["write", "zero", "discard"]), off, n))
    drv = open_image(str(base), "qcow2", read_only=False)
    info = json.loads(
        subprocess.run(
            [qemu_img, "info", "-U", "--output=json", str(base)], capture_output=True, check=True
        ).stdout
    )
    flags = [b["flags"] for b in info["format-specific"]["data"]["bitmaps"]]
    assert all("in-use" in f for f in flags)
    for kind, off, n in ops:
        if kind == "write":
            drv.write(off, b"\x5a" * n)
        elif kind == "zero":
            drv.write_zeroes(off, n, may_unmap=True)
        else:
            drv.discard(off, n)
    drv.close()
    cmds = []
    for kind, off, n in ops:
        cmd = {"write": "write", "zero": "write -z -u", "discard": "discard"}[kind]
        cmds += ["-c", f"{cmd} {off} {n}"]
    subprocess.run([qemu_io, *cmds, str(ref)], check=True, capture_output=True)
    assert decoded(base) == decoded(ref)
    r = subprocess.run([qemu_img, "check", str(base)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_bit_ranges_model() -> None:
    rng = random.Random(3)
    for _ in range(200):
        size = rng.randrange(1, 1 << 22)
        g = 1 << rng.randrange(9, 17)
        bm = DirtyBitmap("x", g, size)
        model = [False] * bm.nbits
        for _ in range(5):
            off = rng.randrange(0, size)
            n = rng.randrange(1, size - off + 1)
            bm.mark(off, n)
            for k in range(off // g, (off + n - 1) // g + 1):
                model[k] = True
        bits = [bool(bm.bits[k >> 3] >> (k & 7) & 1) for k in range(bm.nbits)]
        assert bits == model
        # runs round-trip through a bitmap of another granularity and back
        other = DirtyBitmap("y", g * 2, size)
        other.merge_from(bm)
        back = DirtyBitmap("z", g, size)
        back.merge_from(other)
        assert all(
            b or not a
            for a, b in zip(
                bits, [bool(back.bits[k >> 3] >> (k & 7) & 1) for k in range(bm.nbits)], strict=True
            )
        )
