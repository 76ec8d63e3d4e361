"""pyqemu-img check, map and resize against qemu-img."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from .conftest import Twins, digest

L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63


def _l2_table(data: bytes) -> int:
    (l1_offset,) = struct.unpack_from(">Q", data, 40)
    (l1_entry,) = struct.unpack_from(">Q", data, l1_offset)
    return l1_entry & L2_OFFSET_MASK


def make_leak(folder: Path) -> None:
    """Drop the first L2 entry: its cluster stays referenced by refcounts only."""
    path = folder / "leak.qcow2"
    data = bytearray(path.read_bytes())
    struct.pack_into(">Q", data, _l2_table(data), 0)
    path.write_bytes(data)


def make_corrupt(folder: Path) -> None:
    """Point the second L2 entry at a cluster whose refcount is 0."""
    path = folder / "bad.qcow2"
    data = bytearray(path.read_bytes())
    far = (len(data) // 65536 + 4) * 65536
    struct.pack_into(">Q", data, _l2_table(data) + 8, far | COPIED)
    path.write_bytes(data)


@pytest.fixture
def images(twins: Twins) -> Twins:
    cmds = [
        ["qemu-img", "create", "-q", "-f", "raw", "r.img", "1M"],
        ["qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", "r.img"],
        ["qemu-img", "create", "-q", "-f", "raw", "y", "512"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "y", "-F", "raw", "z.qcow2"],
    ]
    for name in ("c.qcow2", "leak.qcow2", "bad.qcow2"):
        cmds += [
            ["qemu-img", "create", "-q", "-f", "qcow2", name, "4M"],
            [
                "qemu-io",
                "-c",
                "write -P 1 0 128k",
                "-c",
                "write -z 1M 64k",
                "-c",
                "write -P 2 2M 128k",
                name,
            ],
        ]
    twins.shell(*cmds)
    twins.setup(make_leak)
    twins.setup(make_corrupt)
    return twins


@pytest.mark.parametrize(
    "args, code",
    [
        (["c.qcow2"], 0),
        (["--output=json", "c.qcow2"], 0),
        (["-q", "c.qcow2"], 0),
        (["-f", "qcow2", "c.qcow2"], 0),
        (["leak.qcow2"], 3),
        (["--output=json", "leak.qcow2"], 3),
        (["bad.qcow2"], 2),
        (["--output=json", "bad.qcow2"], 2),
        (["r.img"], 63),
        (["--output=json", "r.img"], 63),
        (["-r", "foo", "c.qcow2"], 1),
        (["nope"], 1),
        ([], 1),
    ],
)
def test_check_matches(images: Twins, args: list[str], code: int) -> None:
    before = digest(images.ours_dir / "leak.qcow2")
    out = images.same("check", *args)
    assert out.returncode == code
    assert digest(images.ours_dir / "leak.qcow2") == before  # no -r: never modified


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_check_repair_leaks(images: Twins, mode: str) -> None:
    out = images.same("check", "-r", mode, "leak.qcow2")
    assert out.returncode == 0
    assert b"The following inconsistencies were found and repaired" in out.stdout
    images.same("check", "leak.qcow2")
    images.same("compare", "leak.qcow2", "../ref/leak.qcow2")


@pytest.mark.parametrize(
    "args",
    [
        ["r.img"],
        ["c.qcow2"],
        ["z.qcow2"],
        ["--start-offset=64k", "c.qcow2"],
        ["--start-offset=64k", "--max-length=1M", "c.qcow2"],
        ["--start-offset=8M", "c.qcow2"],
        ["-f", "foo", "r.img"],
        ["nope"],
    ],
)
def test_map_matches(images: Twins, args: list[str]) -> None:
    images.same("map", *args)
    images.same("map", "--output=json", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "raw", "r.img", "+1M"],
        ["-f", "raw", "r.img", "--", "-512k"],
        ["-f", "raw", "r.img", "-512k"],
        ["--shrink", "-f", "raw", "r.img", "512k"],
        ["-q", "-f", "raw", "r.img", "3M"],
        ["--preallocation=full", "-f", "raw", "r.img", "4M"],
        ["--preallocation=foo", "r.img", "5M"],
        ["r.img", "1Q"],
        ["r.img", "+1M"],
        ["c.qcow2", "1M"],
        ["--shrink", "c.qcow2", "3M"],
        ["c.qcow2", "+1M"],
        ["-q", "c.qcow2", "+1M"],
        ["nope", "1M"],
        ["r.img"],
    ],
)
def test_resize_matches(images: Twins, args: list[str]) -> None:
    images.same("resize", *args)
    name = "c.qcow2" if "c.qcow2" in args else "r.img"
    if name == "c.qcow2":
        images.same("info", name)
        images.same("check", name)
    images.same("compare", name, f"../ref/{name}")
