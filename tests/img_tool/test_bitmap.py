"""``pyqemu-img bitmap``, ``info``'s bitmaps and ``convert --bitmaps`` against qemu-img 7.2."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from pyqemu.common.block import open_image
from pyqemu.common.block.qcow2.bitmap import BitmapSet

from .conftest import Twins


def decoded(path: Path) -> dict[str, tuple[int, bool, bool, bytes]]:
    with open_image(str(path), "qcow2") as drv:
        bs = BitmapSet.load(drv)
        return {
            b.name: (b.granularity, b.enabled, b.inconsistent, bytes(b.bits)) for b in bs.bitmaps
        }


def mark_in_use(path: Path, index: int = 0) -> None:
    """Set the in_use flag of directory entry ``index`` (as a crashed qemu leaves it)."""
    with open(path, "r+b") as f:
        head = f.read(65536)
        pos = struct.unpack_from(">I", head, 100)[0]
        while True:
            kind, length = struct.unpack_from(">II", head, pos)
            assert kind
            if kind == 0x23852875:
                _, _, _, offset = struct.unpack_from(">IIQQ", head, pos + 8)
                f.seek(offset)
                directory = f.read(65536)
                p = 0
                for _ in range(index):
                    name_size, extra = struct.unpack_from(">HI", directory, p + 18)
                    p += (24 + name_size + extra + 7) & ~7
                f.seek(offset + p + 12)
                flags = struct.unpack(">I", f.read(4))[0]
                f.seek(offset + p + 12)
                f.write(struct.pack(">I", flags | 1))
                return
            pos += 8 + ((length + 7) & ~7)


def same(twins: Twins, *args: str) -> None:
    """twins.same, except for the host file's allocated size (``disk size`` /
    ``actual-size``): our store allocates the new bitmap clusters at other host
    offsets than qemu's, so the files' sizes differ (contents and checks do not)."""
    if args[0] != "info":
        twins.same(*args)
        return
    a, b = twins.run(*args)

    def strip(text: bytes) -> list[str]:
        return [
            line
            for line in text.decode().splitlines()
            if not line.startswith("disk size:") and '"actual-size"' not in line
        ]

    assert (a.returncode, strip(a.stdout), a.stderr) == (b.returncode, strip(b.stdout), b.stderr)


def prepare(twins: Twins) -> None:
    twins.shell(
        ["qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "10M"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "big.qcow2", "20M"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "small.qcow2", "10M"],
        ["qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "10M"],
        ["qemu-img", "bitmap", "--add", "-g", "8k", "src.qcow2", "s"],
        ["qemu-io", "-c", "write 1M 100k", "-c", "write 9M 1k", "src.qcow2"],
        ["qemu-img", "bitmap", "--add", "big.qcow2", "q"],
    )


SEQUENCE = [
    ("bitmap", "--add", "a.qcow2", "b0"),
    ("bitmap", "--add", "-g", "4k", "a.qcow2", "b1"),
    ("bitmap", "--add", "--granularity", "2G", "a.qcow2", "huge"),
    ("bitmap", "--add", "a.qcow2", "b0"),
    ("bitmap", "--add", "--add", "a.qcow2", "twice"),
    ("bitmap", "--add", "a.qcow2", "d", "--disable"),
    ("bitmap", "--add", "-g", "1000", "a.qcow2", "c"),
    ("bitmap", "--add", "-g", "4G", "a.qcow2", "c"),
    ("bitmap", "--add", "-g", "xx", "a.qcow2", "c"),
    ("bitmap", "--add", "a.qcow2", ""),
    ("bitmap", "--add", "small.qcow2", "dflt"),
    ("bitmap", "a.qcow2", "b0"),
    ("bitmap", "--remove", "a.qcow2"),
    ("bitmap", "-g", "4k", "--remove", "a.qcow2", "b0"),
    ("bitmap", "-F", "raw", "--remove", "a.qcow2", "b0"),
    ("bitmap", "-b", "x", "--remove", "a.qcow2", "b0"),
    ("bitmap", "--merge"),
    ("bitmap", "--bogus"),
    ("bitmap", "--remove", "a.qcow2", "zz"),
    ("bitmap", "--clear", "a.qcow2", "zz"),
    ("bitmap", "--merge", "s", "-b", "src.qcow2", "a.qcow2", "b1"),
    ("bitmap", "--merge", "s", "-b", "src.qcow2", "-F", "qcow2", "a.qcow2", "b0"),
    ("bitmap", "--merge", "b1", "a.qcow2", "d"),
    ("bitmap", "--merge", "zz", "a.qcow2", "b1"),
    ("bitmap", "--merge", "q", "-b", "big.qcow2", "a.qcow2", "b1"),
    ("bitmap", "--merge", "x", "-b", "r.raw", "-F", "raw", "a.qcow2", "b1"),
    ("bitmap", "--merge", "s", "-b", "src.qcow2", "a.qcow2", "twice"),
    ("bitmap", "--clear", "a.qcow2", "twice"),
    ("bitmap", "--disable", "a.qcow2", "b0"),
    ("bitmap", "--enable", "--enable", "a.qcow2", "d"),
    ("bitmap", "--remove", "a.qcow2", "huge"),
    ("bitmap", "--remove", "-f", "raw", "r.raw", "x"),
    ("bitmap", "--clear", "-f", "raw", "r.raw", "x"),
    ("bitmap", "--add", "nonexistent.qcow2", "x"),
    ("info", "a.qcow2"),
    ("info", "--output=json", "a.qcow2"),
    ("info", "small.qcow2"),
    ("check", "a.qcow2"),
]


def test_bitmap_commands_match_qemu_img(twins: Twins) -> None:
    prepare(twins)
    for args in SEQUENCE:
        same(twins, *args)
    assert decoded(twins.ours_dir / "a.qcow2") == decoded(twins.ref_dir / "a.qcow2")
    assert any(decoded(twins.ours_dir / "a.qcow2")["b1"][3])


def test_qemu_made_bitmaps_listed_the_same(twins: Twins) -> None:
    prepare(twins)
    twins.shell(
        ["qemu-img", "bitmap", "--add", "-g", "512", "a.qcow2", "fine"],
        ["qemu-img", "bitmap", "--add", "a.qcow2", "off", "--disable"],
    )
    for out in ("human", "json"):
        same(twins, "info", f"--output={out}", "a.qcow2")
        same(twins, "info", f"--output={out}", "src.qcow2")


def test_in_use_bitmaps(twins: Twins) -> None:
    prepare(twins)
    twins.shell(["qemu-img", "bitmap", "--add", "a.qcow2", "b"])
    twins.shell(["qemu-img", "bitmap", "--add", "a.qcow2", "c"])
    mark_in_use(twins.ours_dir / "a.qcow2")
    mark_in_use(twins.ref_dir / "a.qcow2")
    for args in (
        ("info", "a.qcow2"),
        ("bitmap", "--clear", "a.qcow2", "b"),
        ("bitmap", "--enable", "a.qcow2", "b"),
        ("bitmap", "--merge", "c", "a.qcow2", "b"),
        ("bitmap", "--merge", "b", "a.qcow2", "c"),
        ("bitmap", "--add", "a.qcow2", "b"),
        ("convert", "--bitmaps", "-O", "qcow2", "a.qcow2", "o1.qcow2"),
        ("convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "a.qcow2", "o2.qcow2"),
        ("info", "o2.qcow2"),
        ("info", "a.qcow2"),
        ("check", "a.qcow2"),
        ("bitmap", "--remove", "a.qcow2", "b"),
        ("info", "a.qcow2"),
        ("check", "a.qcow2"),
    ):
        same(twins, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("convert", "--bitmaps", "-O", "qcow2", "src.qcow2", "o.qcow2"),
        ("convert", "--skip-broken-bitmaps", "-O", "qcow2", "src.qcow2", "o.qcow2"),
        ("convert", "--bitmaps", "-O", "raw", "src.qcow2", "o.raw"),
        ("convert", "--bitmaps", "-O", "qcow2", "-o", "compat=0.10", "src.qcow2", "o.qcow2"),
        ("convert", "--bitmaps", "-O", "qcow2", "-f", "raw", "r.raw", "o.qcow2"),
        ("convert", "--bitmaps", "-O", "qcow2", "src.qcow2", "src.qcow2", "o.qcow2"),
    ],
)
def test_convert_bitmaps(twins: Twins, args: tuple[str, ...]) -> None:
    prepare(twins)
    twins.same(*args)
    out = twins.ours_dir / "o.qcow2"
    if out.exists() and "--bitmaps" in args and "compat=0.10" not in args and "r.raw" not in args:
        assert decoded(out) == decoded(twins.ref_dir / "o.qcow2")
        assert decoded(out)["s"] == decoded(twins.ours_dir / "src.qcow2")["s"]
        same(twins, "info", "o.qcow2")
        r = subprocess.run([twins.ref, "check", str(out)], capture_output=True)
        assert r.returncode == 0
