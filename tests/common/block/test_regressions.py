"""Regression tests for block-layer bugs found by the fuzz and model tests.

Each test rebuilds the reported image with qemu-img / qemu-io (the reference)
and checks that our block layer now behaves as QEMU 7.2 does.
"""

from __future__ import annotations

import errno
import json
import struct

import pytest
from pyqemu.common.block import BlockError, ImageCorrupt, InvalidRequest, open_image
from pyqemu.common.block.file import FileProtocol

from tests.conftest import run

KiB = 1 << 10
MiB = 1 << 20


def _patch(path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _peek(path, offset: int, fmt: str) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.raw"
    path.write_bytes(b"\x55" * MiB)
    return path


# --- 1. a NUL byte in the backing file name ------------------------------------------------


def test_backing_name_ends_at_nul_as_in_qemu(qemu_img, base, tmp_path) -> None:
    """QEMU keeps the name as a C string: bytes from the first NUL on are ignored."""
    path = tmp_path / "r1.qcow2"
    run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(path), "1M"],
        check=True,
    )
    _patch(path, 16, ">I", _peek(path, 16, ">I") + 3)  # backing_file_size: take 3 NULs too
    r = run([qemu_img, "info", "--output=json", str(path)])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backing-filename"] == str(base)
    with open_image(str(path)) as img:
        assert img.backing_filename == str(base)
        assert img.backing is not None
        assert img.read(0, 4) == b"\x55" * 4


def test_backing_name_cut_by_nul_fails_like_qemu(qemu_img, qemu_io, base, tmp_path) -> None:
    """A NUL inside the name cuts it short; opening the shortened name fails as in qemu-io."""
    path = tmp_path / "r2.qcow2"
    run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(path), "1M"],
        check=True,
    )
    with open(path, "r+b") as f:
        f.seek(_peek(path, 8, ">Q") + _peek(path, 16, ">I") - 4)  # ".../base\0raw"
        f.write(b"\0")
    r = run([qemu_io, "-c", "read 0 1", str(path)])
    assert r.returncode == 1
    with pytest.raises(BlockError) as exc:
        open_image(str(path))
    assert r.stderr.strip() == f"qemu-io: can't open device {path}: {exc.value}"
    assert str(exc.value).endswith(f"Could not open '{tmp_path}/base': No such file or directory")
    with open_image(str(path), backing=False) as img:
        assert img.backing_filename == f"{tmp_path}/base"


def test_file_protocol_nul_in_name_is_block_error(tmp_path) -> None:
    with pytest.raises(BlockError) as exc:
        FileProtocol.open({"filename": str(tmp_path / "a\0b")}, read_only=True)
    assert exc.value.errno == errno.ENOENT
    assert "No such file or directory" in str(exc.value)
    with pytest.raises(BlockError):
        open_image(None, "raw", options={"file.filename": str(tmp_path / "x\0y")})


# --- 2. offsets >= 2^63 -------------------------------------------------------------------


def test_file_protocol_refuses_offsets_beyond_int64(tmp_path) -> None:
    path = tmp_path / "f.raw"
    path.write_bytes(bytes(4096))
    node = FileProtocol.open({"filename": str(path)}, read_only=False)
    try:
        for offset, length in [(1 << 63, 512), ((1 << 63) - 512, 1024), (0, 1 << 63)]:
            with pytest.raises(InvalidRequest) as exc:
                node.read(offset, length)
            assert exc.value.errno == errno.EIO
        for offset in (1 << 63, (1 << 63) - 512, (1 << 64) + 4096):
            with pytest.raises(InvalidRequest):
                node.write(offset, bytes(1024))
        with pytest.raises(InvalidRequest):
            node.readinto(1 << 63, memoryview(bytearray(512)))
        with pytest.raises(InvalidRequest):
            node.truncate(1 << 64)
        assert node.read(0, 4) == bytes(4)
    finally:
        node.close()


@pytest.fixture
def bad_reftable(qemu_img, qemu_io, tmp_path):
    """An image whose first refcount table entry has bit 63 set."""
    path = tmp_path / "rt.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    run([qemu_io, "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(path)], check=True)
    reftable = _peek(path, 48, ">Q")
    _patch(path, reftable, ">Q", _peek(path, reftable, ">Q") | 1 << 63)
    return path


def test_reftable_offset_beyond_int64_check_is_block_error(bad_reftable) -> None:
    with open_image(str(bad_reftable)) as img:
        try:
            img.check(0)  # counted or reported as the checker's author decides
        except BlockError:
            pass
        assert img.read(0, 4) == b"\x11" * 4


def test_reftable_offset_beyond_file_marks_image_corrupt(qemu_img, bad_reftable, capfd) -> None:
    img = open_image(str(bad_reftable), read_only=False)
    try:
        img.write(0, b"\x22" * 4096)  # in place: no refcount needed, as in QEMU
        with pytest.raises(ImageCorrupt) as exc:
            img.write(512 * KiB, b"\x33" * 4096)  # needs an allocation
        assert "Refblock offset 0x8000000000020000 beyond the end" in str(exc.value)
    finally:
        img.close()
    assert "qcow2: Marking image as corrupt: Refblock offset" in capfd.readouterr().err
    r = run([qemu_img, "info", "--output=json", str(bad_reftable)])
    assert json.loads(r.stdout)["format-specific"]["data"]["corrupt"] is True


def test_reftable_entry_from_l2_like_entry(qemu_img, qemu_io, tmp_path) -> None:
    """The fuzz case: the reftable moved onto a cluster holding 0xc000000000060000."""
    path = tmp_path / "l2.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    run([qemu_io, "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(path)], check=True)
    l2 = _peek(path, _peek(path, 40, ">Q"), ">Q") & 0x00FFFFFFFFFFFE00
    _patch(path, l2, ">Q", 0xC000000000060000)
    _patch(path, 48, ">Q", l2)  # refcount_table_offset
    for read_only in (True, False):
        with pytest.raises(BlockError):
            with open_image(str(path), read_only=read_only) as img:
                if read_only:
                    img.check(0)
                else:
                    img.write(512 * KiB, b"x" * 4096)


# --- 3. discard on a compat=0.10 overlay ------------------------------------------------------


def test_discard_on_v2_overlay_keeps_data(qemu_img, qemu_io, base, tmp_path) -> None:
    opts = f"compat=0.10,cluster_size=4k,backing_file={base},backing_fmt=raw"
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for path in (ours, theirs):
        run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(path), "1M"], check=True)
    run(
        [qemu_io, "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "discard 0 8k", str(theirs)],
        check=True,
    )
    with open_image(str(ours), read_only=False) as img:
        img.write(0, b"\x11" * 65536)
        img.discard(0, 8192)
        img.discard(0, MiB)
        assert img.read(0, 65536) == b"\x11" * 65536
        assert img.read(65536, 4) == b"\x55" * 4
    r = run([qemu_io, "-f", "qcow2", "-c", "read -P 0x11 0 64k", str(theirs)])
    assert "Pattern verification failed" not in r.stdout
    r = run([qemu_img, "compare", str(ours), str(theirs)])
    assert r.returncode == 0, r.stdout


def test_discard_on_v2_without_backing_still_zeroes(qemu_img, tmp_path) -> None:
    path = tmp_path / "v2.qcow2"
    run(
        [
            qemu_img,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,cluster_size=4k",
            str(path),
            "1M",
        ],
        check=True,
    )
    with open_image(str(path), read_only=False) as img:
        img.write(0, b"\x11" * 65536)
        img.discard(0, 8192)
        assert img.read(0, 8192) == bytes(8192)
        assert img.read(8192, 4) == b"\x11" * 4


# --- 4. growing an overlay over a larger backing file -----------------------------------------


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_grow_overlay_zeroes_area_backing_covers(qemu_img, qemu_io, base, tmp_path, compat):
    path = tmp_path / "ov.qcow2"
    opts = f"compat={compat},cluster_size=4k,backing_file={base},backing_fmt=raw"
    run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(path), "1M"], check=True)
    with open_image(str(path), read_only=False) as img:
        img.truncate(512 * KiB)
        img.truncate(MiB)
        assert img.read(0, 512 * KiB) == b"\x55" * (512 * KiB)
        assert img.read(512 * KiB, 512 * KiB) == bytes(512 * KiB)
    r = run(
        [
            qemu_io,
            "-f",
            "qcow2",
            "-c",
            "read -P 0 512k 512k",
            "-c",
            "read -P 0x55 0 512k",
            str(path),
        ]
    )
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout
    r = run([qemu_img, "check", str(path)])
    assert r.returncode == 0, r.stdout


def test_grow_overlay_unaligned_matches_qemu_map(qemu_img, qemu_io, base, tmp_path) -> None:
    """Old end mid-cluster, new end past the backing file: data and map as qemu-img resize."""
    opts = f"cluster_size=4k,backing_file={base},backing_fmt=raw"
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for path in (ours, theirs):
        run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(path), "1M"], check=True)
        run([qemu_io, "-f", "qcow2", "-c", "write -P 0x11 0 1M", str(path)], check=True)
    run([qemu_img, "resize", "-q", "--shrink", str(theirs), "5632"], check=True)
    run([qemu_img, "resize", "-q", str(theirs), "2M"], check=True)
    with open_image(str(ours), read_only=False) as img:
        img.truncate(5632)
        img.truncate(2 * MiB)
        assert img.read(0, 5632) == b"\x11" * 5632
        assert img.read(5632, 2 * MiB - 5632) == bytes(2 * MiB - 5632)
    r = run([qemu_img, "compare", str(ours), str(theirs)])
    assert r.returncode == 0, r.stdout
    maps = [run([qemu_img, "map", "--output=json", str(p)]).stdout for p in (ours, theirs)]
    assert maps[0] == maps[1]


def test_grow_without_larger_backing_writes_nothing(qemu_img, base, tmp_path) -> None:
    """A backing file no larger than the old size needs no zeroing (nothing allocated)."""
    path = tmp_path / "ov.qcow2"
    opts = f"cluster_size=4k,backing_file={base},backing_fmt=raw"
    run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(path), "1M"], check=True)
    with open_image(str(path), read_only=False) as img:
        img.truncate(2 * MiB)
        assert img.read(MiB - 4, 8) == b"\x55" * 4 + bytes(4)
    r = run([qemu_img, "map", "--output=json", str(path)])
    assert not any(e["depth"] == 0 and e["present"] for e in json.loads(r.stdout))


def test_truncate_beyond_int64_is_block_error(tmp_path) -> None:
    path = tmp_path / "f.raw"
    path.write_bytes(bytes(512))
    with open_image(str(path), "raw", read_only=False) as img:
        with pytest.raises(InvalidRequest):
            img.truncate(1 << 64)
        assert img.size == 512


def test_backing_name_resolves_through_blkdebug(tmp_path, qemu_img) -> None:
    """A relative backing name resolves against the image's folder, not the
    ``blkdebug:`` filename (QEMU's bdrv_dirname goes through filters)."""
    import os
    import subprocess

    from pyqemu.common.block import open_image

    sub = tmp_path / "sub"
    sub.mkdir()
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", str(sub / "base.qcow2"), "1M"], check=True
    )
    subprocess.run(
        [
            qemu_img,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            str(sub / "top.qcow2"),
        ],
        check=True,
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with open_image("blkdebug::sub/top.qcow2") as img:
            assert img.full_backing_filename == os.path.join("sub", "base.qcow2")
            assert img.backing is not None and img.backing.size == 1 << 20
            assert img.read(0, 512) == bytes(512)
    finally:
        os.chdir(cwd)
