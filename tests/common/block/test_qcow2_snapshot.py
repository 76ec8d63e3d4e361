"""qcow2 internal snapshots (common/block/qcow2/snapshot.py) against qemu-img and qemu-io."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyqemu.common.block import BlockError, open_image
from pyqemu.common.block.qcow2 import snapshot as snap

MiB = 1 << 20


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def _check_clean(qemu_img: str, path: Path) -> None:
    out = _run(qemu_img, "check", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No errors were found on the image." in out.stdout
    assert "leaked" not in out.stdout


def _write(qemu_io: str, path: Path, *cmds: str) -> None:
    args = [qemu_io, "-f", "qcow2"]
    for cmd in cmds:
        args += ["-c", cmd]
    out = _run(*args, str(path))
    assert out.returncode == 0 and "error" not in out.stdout.lower(), out.stdout + out.stderr


def _verify(qemu_io: str, path: Path, *patterns: tuple[int, int, int]) -> None:
    args = [qemu_io, "-r", "-f", "qcow2"]
    for pattern, offset, length in patterns:
        args += ["-c", f"read -P {pattern} {offset} {length}"]
    out = _run(*args, str(path))
    assert out.returncode == 0, out.stderr
    assert "Pattern verification failed" not in out.stdout, out.stdout


@pytest.fixture(
    params=["compat=1.1", "compat=0.10", "cluster_size=4096,lazy_refcounts=on", "extended_l2=on"]
)
def image(request: pytest.FixtureRequest, tmp_path: Path, qemu_img: str, qemu_io: str) -> Path:
    path = tmp_path / "a.qcow2"
    out = _run(qemu_img, "create", "-q", "-f", "qcow2", "-o", request.param, str(path), "64M")
    assert out.returncode == 0, out.stderr
    _write(qemu_io, path, "write -P 1 0 1M", "write -c -P 5 2M 64k", "write -z 4M 64k")
    return path


def test_create_write_apply_delete_checked_by_qemu(
    image: Path, qemu_img: str, qemu_io: str
) -> None:
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        s1 = node.snapshot_create("s1", date_sec=1000, date_nsec=5000)
        node.write(512 * 1024, b"\2" * MiB)
        node.write(2 * MiB, b"\6" * 4096)
        s2 = node.snapshot_create("s2", date_sec=2000, vm_clock_nsec=3_723_456_000_000)
        node.write(0, b"\3" * 4096)
    finally:
        node.close()
    assert (s1.id_str, s2.id_str) == ("1", "2")
    _check_clean(qemu_img, image)
    listing = _run(qemu_img, "snapshot", "-l", str(image)).stdout.splitlines()
    assert [line.split()[:2] for line in listing[2:]] == [["1", "s1"], ["2", "s2"]]
    assert "01:02:03.456" in listing[3]
    # the active image
    _verify(qemu_io, image, (3, 0, 4096), (1, 4096, 508 * 1024), (2, 512 * 1024, MiB))
    # qemu-img reverts to each of our snapshots
    assert _run(qemu_img, "snapshot", "-a", "s2", str(image)).returncode == 0
    _check_clean(qemu_img, image)
    _verify(qemu_io, image, (1, 0, 512 * 1024), (2, 512 * 1024, MiB), (6, 2 * MiB, 4096))
    assert _run(qemu_img, "snapshot", "-a", "1", str(image)).returncode == 0
    _check_clean(qemu_img, image)
    _verify(qemu_io, image, (1, 0, MiB), (0, MiB, MiB), (5, 2 * MiB, 64 * 1024), (0, 4 * MiB, 1))
    # we revert and delete; qemu-img agrees at each step
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        node.snapshot_goto("s2")
        assert node.read(2 * MiB, 4096) == b"\6" * 4096
        node.snapshot_delete("1", "s1")
    finally:
        node.close()
    _check_clean(qemu_img, image)
    _verify(qemu_io, image, (2, 512 * 1024, MiB), (6, 2 * MiB, 4096), (5, 2 * MiB + 4096, 4096))
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        assert [s.name for s in node.snapshot_list()] == ["s2"]
        node.snapshot_delete("2", None)
        assert node.snapshot_list() == []
        node.write(600 * 1024, b"\7" * 8192)
    finally:
        node.close()
    _check_clean(qemu_img, image)
    _verify(qemu_io, image, (7, 600 * 1024, 8192), (2, 608 * 1024, 100 * 1024))


def test_qemu_snapshots_applied_and_deleted_by_us(image: Path, qemu_img: str, qemu_io: str) -> None:
    assert _run(qemu_img, "snapshot", "-c", "base", str(image)).returncode == 0
    _write(qemu_io, image, "write -P 8 1M 2M", "discard 0 64k")
    assert _run(qemu_img, "snapshot", "-c", "second", str(image)).returncode == 0
    _write(qemu_io, image, "write -P 9 0 4M")
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        assert [(s.id_str, s.name) for s in node.snapshot_list()] == [
            ("1", "base"),
            ("2", "second"),
        ]
        node.snapshot_goto("base")
        assert node.read(0, MiB) == b"\1" * MiB
        node.snapshot_delete("1", "base")
    finally:
        node.close()
    _check_clean(qemu_img, image)
    _verify(qemu_io, image, (1, 0, MiB), (5, 2 * MiB, 64 * 1024))
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        node.snapshot_goto("2")
        assert node.read(0, 64 * 1024) == bytes(64 * 1024)
        assert node.read(MiB, 2 * MiB) == b"\x08" * (2 * MiB)
    finally:
        node.close()
    _check_clean(qemu_img, image)
    assert _run(qemu_img, "snapshot", "-d", "second", str(image)).returncode == 0
    _check_clean(qemu_img, image)


def test_load_tmp_reads_snapshot_read_only(image: Path, qemu_img: str, qemu_io: str) -> None:
    assert _run(qemu_img, "snapshot", "-c", "old", str(image)).returncode == 0
    _write(qemu_io, image, "write -P 4 0 3M")
    node = open_image(str(image), "qcow2", read_only=True)
    try:
        node.snapshot_load_tmp(None, "old")
        assert node.read(0, MiB) == b"\1" * MiB
        assert node.read(2 * MiB, 65536) == b"\5" * 65536
        with pytest.raises(BlockError, match="Can't find snapshot"):
            node.snapshot_load_tmp("7", None)
    finally:
        node.close()
    node = open_image(str(image), "qcow2", read_only=False)
    try:
        with pytest.raises(BlockError, match="Device is not readonly"):
            node.snapshot_load_tmp("1", None)
    finally:
        node.close()


def test_apply_restores_disk_size(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    path = tmp_path / "r.qcow2"
    assert _run(qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M").returncode == 0
    _write(qemu_io, path, "write -P 3 0 1M")
    assert _run(qemu_img, "snapshot", "-c", "small", str(path)).returncode == 0
    assert _run(qemu_img, "resize", "-q", str(path), "3G").returncode == 0
    _write(qemu_io, path, "write -P 4 2G 64k")
    node = open_image(str(path), "qcow2", read_only=False)
    try:
        node.snapshot_goto("small")
        assert node.size == MiB
        assert node.read(0, MiB) == b"\3" * MiB
        node.snapshot_create("again")
    finally:
        node.close()
    _check_clean(qemu_img, path)
    info = _run(qemu_img, "info", str(path)).stdout
    assert "virtual size: 1 MiB" in info


def test_snapshot_ids_and_lookup() -> None:
    snaps = [snap.Snapshot("1", "a"), snap.Snapshot("7", "1"), snap.Snapshot("x", "b")]
    assert snap.new_snapshot_id(snaps) == "8"
    assert snap.find_by_id_or_name(snaps, "1") == 0  # ID first
    assert snap.find_by_id_or_name(snaps, "b") == 2
    assert snap.find_by_id_and_name(snaps, "7", "a") == -1
    assert snap.find_by_id_and_name(snaps, None, None) == -1


def test_table_round_trip_keeps_unknown_extra(tmp_path: Path, qemu_img: str) -> None:
    path = tmp_path / "t.qcow2"
    assert _run(qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M").returncode == 0
    node = open_image(str(path), "qcow2", read_only=False)
    try:
        sn = node.snapshot_create(
            "n", id_str="long-id-0123456789", vm_state_size=3 << 30, icount=42
        )
        snaps, size = snap.read_table(node)
        snaps[0].unknown_extra = b"\xab" * 8
        snap.write_table(node, snaps)
        again, size2 = snap.read_table(node)
        with pytest.raises(BlockError):
            node.snapshot_create("dup", id_str="long-id-0123456789")
    finally:
        node.close()
    assert again[0].unknown_extra == b"\xab" * 8
    assert (again[0].vm_state_size, again[0].icount, again[0].id_str) == (3 << 30, 42, sn.id_str)
    assert size2 == size + 8
    # vm_state_size is only in the snapshot table (no vm state clusters): qemu-img
    # check counts exactly the clusters we reference
    out = _run(qemu_img, "check", str(path))
    assert out.returncode == 0, out.stdout
