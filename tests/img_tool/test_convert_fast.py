"""convert's fast paths against qemu-img.

* a fresh qcow2 target: workers reserve clusters in guest order and write the
  data outside the driver lock; the host layout (``qemu-img map``) must be
  qemu-img's own;
* data runs of host files are read through a memory mapping; zero detection
  (``-S``) on the mapping must leave the same holes as qemu-img.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from .conftest import Twins

MiB = 1 << 20


def make_mixed(folder: Path) -> None:
    """6 MiB raw: random data with zero granules inside, written zeroes, holes."""
    rng = random.Random(11)
    size = 6 * MiB
    with open(folder / "mixed.raw", "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = min(size - pos, rng.choice([512, 4096, 12288, 65536, 300_000, MiB]))
            kind = rng.random()
            f.seek(pos)
            if kind < 0.55:
                data = bytearray(rng.randbytes(n))
                for _ in range(rng.randrange(4)):  # zero blocks inside data
                    a = rng.randrange(0, n, 512)
                    data[a : a + rng.choice([512, 4096, 8192, 65536])] = bytes(
                        len(data[a : a + 65536])
                    )[: rng.choice([512, 4096, 8192, 65536])]
                f.write(bytes(data[:n]))
            elif kind < 0.75:
                f.write(bytes(n))
            pos += n
    with open(folder / "tail.raw", "wb") as f:
        f.write(rng.randbytes(3 * MiB + 4608))


@pytest.fixture
def mixed(twins: Twins) -> Twins:
    twins.setup(make_mixed)
    twins.shell(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "mixed.raw", "mixed.qcow2"],
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "mixed.raw",
            "mixed4k.qcow2",
        ],
    )
    return twins


def _ok(qemu_img: str, folder: Path, *args: str) -> str:
    out = subprocess.run([qemu_img, *args], cwd=folder, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


@pytest.mark.parametrize(
    "opts, src",
    [
        (["-f", "raw", "-O", "qcow2"], "mixed.raw"),
        (["-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k"], "mixed.raw"),
        (["-f", "raw", "-O", "qcow2", "-o", "cluster_size=512"], "mixed.raw"),
        (["-f", "raw", "-O", "qcow2", "-o", "extended_l2=on"], "mixed.raw"),
        (["-f", "raw", "-O", "qcow2", "-o", "compat=0.10"], "mixed.raw"),
        (["-f", "raw", "-O", "qcow2", "-S", "64k"], "mixed.raw"),
        (["-f", "qcow2", "-O", "qcow2"], "mixed4k.qcow2"),
        (["-f", "raw", "-O", "qcow2", "-m", "1"], "tail.raw"),
        (["-f", "raw", "-O", "qcow2", "-m", "16"], "mixed.raw"),
    ],
)
def test_qcow2_target_layout_is_qemu_img(
    mixed: Twins, qemu_img: str, opts: list[str], src: str
) -> None:
    a, b = mixed.run("convert", *opts, src, "out.qcow2")
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    folder = mixed.ours_dir
    assert "Images are identical." in _ok(qemu_img, folder, "compare", src, "out.qcow2")
    _ok(qemu_img, folder, "check", "out.qcow2")
    if "extended_l2=on" in opts:
        # qemu-img marks zero subclusters of the clusters it allocates; ours
        # (old path and new alike) leaves them data: content is compared above
        return
    mixed.same("map", "--output=json", "out.qcow2")


@pytest.mark.parametrize(
    "opts, src",
    [
        (["-f", "qcow2", "-O", "raw"], "mixed.qcow2"),
        (["-f", "qcow2", "-O", "raw"], "mixed4k.qcow2"),
        (["-f", "qcow2", "-O", "raw", "-S", "512"], "mixed4k.qcow2"),
        (["-f", "qcow2", "-O", "raw", "-S", "64k"], "mixed.qcow2"),
        (["-f", "raw", "-O", "raw"], "mixed.raw"),
        (["-f", "raw", "-O", "raw", "-S", "8k"], "mixed.raw"),
        (["-f", "raw", "-O", "raw"], "tail.raw"),
        (["-f", "qcow2", "-O", "raw", "-W"], "mixed.qcow2"),
    ],
)
def test_raw_target_holes_are_qemu_img(
    mixed: Twins, qemu_img: str, opts: list[str], src: str
) -> None:
    a, b = mixed.run("convert", *opts, src, "out.raw")
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    folder = mixed.ours_dir
    assert "Images are identical." in _ok(qemu_img, folder, "compare", src, "out.raw")
    assert _data_ranges(folder / "out.raw") == _data_ranges(mixed.ref_dir / "out.raw")


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """Allocated ranges of a host file past its first 4 KiB (qemu's file-posix
    allocates the first block of every image it creates, pyqemu does not)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 4096
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole))
            pos = hole
    finally:
        os.close(fd)
    return out


def test_concatenated_and_offset_sources(mixed: Twins, qemu_img: str) -> None:
    """Several sources (each at its own target offset) and a raw window at an
    odd file offset: the mapped reads must use the right host offsets."""
    mixed.same("convert", "-O", "raw", "tail.raw", "mixed.qcow2", "tail.raw", "cat.raw")
    mixed.same("compare", "-f", "raw", "-F", "raw", "cat.raw", "../ref/cat.raw")
    assert _data_ranges(mixed.ours_dir / "cat.raw") == _data_ranges(mixed.ref_dir / "cat.raw")
    mixed.same("convert", "-O", "qcow2", "tail.raw", "mixed.raw", "cat.qcow2")
    mixed.same("map", "--output=json", "cat.qcow2")
    spec = "driver=raw,offset=4608,size=2097152,file.driver=file,file.filename=tail.raw"
    mixed.same("convert", "--image-opts", "-O", "raw", spec, "win.raw")
    mixed.same("compare", "-f", "raw", "-F", "raw", "win.raw", "../ref/win.raw")
    mixed.same("convert", "--image-opts", "-O", "qcow2", spec, "win.qcow2")
    mixed.same("map", "--output=json", "win.qcow2")
