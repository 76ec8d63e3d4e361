"""qcow2 driver: deferred cluster freeing, make_empty, resize with snapshots,
bitmaps on the concurrent write path, zero subclusters with extended L2.

Each behaviour is checked against qemu-img / qemu-io 7.2: ``qemu-img check``
for the on-disk state (also after a write that fails halfway, made with a
blkdebug rule instead of a crash), ``qemu-img map`` for the layout.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from pyqemu.common.block import create_image, open_image

from tests.conftest import run

KiB = 1 << 10
MiB = 1 << 20


def qcheck(qemu_img: str, path: Path) -> dict:
    r = run([qemu_img, "check", "--output=json", str(path)])
    info = json.loads(r.stdout) if r.stdout.startswith("{") else {}
    info["_rc"] = r.returncode
    info["_out"] = r.stdout + r.stderr
    return info


def qio(qemu_io: str, path: Path, *cmds: str) -> str:
    args = [qemu_io, "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    r = run([*args, str(path)])
    assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
    return r.stdout


def qmap(qemu_img: str, path: Path) -> list[dict]:
    r = run([qemu_img, "map", "--output=json", str(path)])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def l1_and_l2(path: Path) -> tuple[int, list[int]]:
    """(L2 table offset of L1 entry 0, its first 32 entries) as on disk."""
    data = path.read_bytes()
    l1_offset = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1_offset)[0] & 0x00FFFFFFFFFFFE00
    return l2, list(struct.unpack_from(">32Q", data, l2))


def refcount(path: Path, cluster: int) -> int:
    """Refcount (16 bit) of host cluster ``cluster`` as on disk (first refblock)."""
    data = path.read_bytes()
    rt = struct.unpack_from(">Q", data, 48)[0]
    rb = struct.unpack_from(">Q", data, rt)[0]
    return struct.unpack_from(">H", data, rb + 2 * cluster)[0]


# --- 1. freeing clusters waits for the cache flush ------------------------------


def _data_image(qemu_img: str, qemu_io: str, tmp_path: Path) -> Path:
    img = tmp_path / "a.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "4M"], check=True)
    qio(qemu_io, img, "write -P 5 0 1M")
    return img


def test_discard_stays_in_cache_until_flush(qemu_img, qemu_io, tmp_path: Path) -> None:
    img = _data_image(qemu_img, qemu_io, tmp_path)
    _, before = l1_and_l2(img)
    host = before[0] & 0x00FFFFFFFFFFFE00
    assert host and refcount(img, host >> 16) == 1
    drv = open_image(str(img), fmt="qcow2", read_only=False)
    try:
        drv.discard(0, 256 * KiB)
        drv.write_zeroes(512 * KiB, 128 * KiB, may_unmap=True)
        # nothing written yet: the file as it is now (a crash here) is the old image
        assert l1_and_l2(img)[1] == before
        assert refcount(img, host >> 16) == 1
        snap = tmp_path / "crash.qcow2"
        shutil.copy(img, snap)
        info = qcheck(qemu_img, snap)
        assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
        drv.flush()
        after = l1_and_l2(img)[1]
        assert after[:4] == [1, 1, 1, 1]  # zero clusters (OFLAG_ZERO), no host offset
        assert after[8] == after[9] == 1
        assert refcount(img, host >> 16) == 0
        assert drv.read(0, 256 * KiB) == bytes(256 * KiB)
    finally:
        drv.close()
    info = qcheck(qemu_img, img)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")


def _blkdebug(tmp_path: Path, event: str) -> Path:
    cfg = tmp_path / f"{event}.cfg"
    cfg.write_text(f'[inject-error]\nevent = "{event}"\nerrno = "5"\n')
    return cfg


def _discard_then_fail(tmp_path: Path, img: Path, cfg: Path) -> None:
    drv = open_image(f"blkdebug:{cfg}:{img}", fmt="qcow2", read_only=False)
    drv.discard(0, 512 * KiB)
    failed = False
    try:
        drv.flush()
    except Exception:  # the injected EIO
        failed = True
    try:
        drv.close()
    except Exception:
        failed = True
    assert failed


def test_l2_written_before_refcounts_drop(qemu_img, qemu_io, tmp_path: Path) -> None:
    """A failing L2 write keeps the refcount blocks from being written: the
    image on disk is the old one, clean (refcounts first would corrupt it)."""
    img = _data_image(qemu_img, qemu_io, tmp_path)
    _, before = l1_and_l2(img)
    _discard_then_fail(tmp_path, img, _blkdebug(tmp_path, "l2_update"))
    assert l1_and_l2(img)[1] == before
    info = qcheck(qemu_img, img)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")


def test_failed_refcount_write_only_leaks(qemu_img, qemu_io, tmp_path: Path) -> None:
    """The L2 tables reached the disk, the refcount blocks did not: leaks only."""
    img = _data_image(qemu_img, qemu_io, tmp_path)
    _discard_then_fail(tmp_path, img, _blkdebug(tmp_path, "refblock_update_part"))
    assert l1_and_l2(img)[1][:8] == [1] * 8
    info = qcheck(qemu_img, img)
    assert not info.get("corruptions"), info["_out"]
    assert info.get("leaks") == 8, info["_out"]
    r = run([qemu_img, "check", "-r", "leaks", str(img)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_freed_cluster_reused_after_l2_reaches_disk(qemu_img, qemu_io, tmp_path: Path) -> None:
    """A freed cluster is reallocated only once the L2 table that dropped it is
    written (the free index moves back, the new data lands in the old cluster)."""
    img = _data_image(qemu_img, qemu_io, tmp_path)
    _, before = l1_and_l2(img)
    first_host = before[0] & 0x00FFFFFFFFFFFE00
    drv = open_image(str(img), fmt="qcow2", read_only=False)
    try:
        drv.discard(0, 64 * KiB)
        drv.write(2 * MiB, b"\x07" * (64 * KiB))
        # the allocation flushed the L2 table with the discard first
        assert l1_and_l2(img)[1][0] == 1
        run_ = drv.block_status(2 * MiB, 64 * KiB)
        assert run_.offset == first_host
    finally:
        drv.close()
    info = qcheck(qemu_img, img)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
    out = qio(qemu_io, img, "read -P 7 2M 64k", "read -P 0 0 64k")
    assert "Pattern verification failed" not in out


def test_many_discards_then_close_is_clean(qemu_img, qemu_io, tmp_path: Path) -> None:
    img = tmp_path / "m.qcow2"
    create_image(str(img), "qcow2", 8 * MiB, {"cluster_size": "4k"})
    drv = open_image(str(img), fmt="qcow2", read_only=False)
    try:
        drv.write(0, b"\x01" * (8 * MiB))
        drv.flush()
        for i in range(0, 8 * MiB, 64 * KiB):
            drv.discard(i, 16 * KiB)
            drv.write(i + 32 * KiB, b"\x02" * 4096)
            drv.write_zeroes(i + 40 * KiB, 8 * KiB, may_unmap=True)
    finally:
        drv.close()
    info = qcheck(qemu_img, img)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
    out = qio(qemu_io, img, "read -P 0 0 16k", "read -P 2 32k 4k", "read -P 0 40k 8k")
    assert "read 16384/16384" in out


# --- 2. make_empty: a fresh layout where qemu makes one -------------------------


def _overlay(qemu_img: str, qemu_io: str, folder: Path, *create: str) -> Path:
    folder.mkdir(exist_ok=True)
    base = folder / "base.qcow2"
    top = folder / "top.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "8M"], check=True)
    qio(qemu_io, base, "write -P 1 0 8M")
    run(
        [qemu_img, "create", "-q", "-f", "qcow2", *create]
        + ["-b", "base.qcow2", "-F", "qcow2", str(top)],
        check=True,
    )
    qio(qemu_io, top, "write -P 2 0 3M", "write -z 4M 1M", "write -c -P 3 6M 64k")
    return top


def _empty_with_ours(qemu_img: str, top: Path) -> None:
    # the same base as _empty_with_qemu leaves: qemu commits, we empty
    r = run([qemu_img, "commit", "-q", "-d", str(top)])
    assert r.returncode == 0, r.stderr
    drv = open_image(str(top), fmt="qcow2", read_only=False)
    try:
        drv.make_empty()
    finally:
        drv.close()


def _empty_with_qemu(qemu_img: str, top: Path) -> None:
    r = run([qemu_img, "commit", "-q", "-d", str(top)])
    assert r.returncode == 0, r.stderr
    r = run([qemu_img, "commit", "-q", str(top)])  # commit empties the overlay
    assert r.returncode == 0, r.stderr


def test_make_empty_resets_layout_like_qemu(qemu_img, qemu_io, tmp_path: Path) -> None:
    for opts in ([], ["-o", "cluster_size=4k,lazy_refcounts=on"], ["-o", "extended_l2=on"]):
        ours = _overlay(qemu_img, qemu_io, tmp_path / "ours", *opts)
        ref = _overlay(qemu_img, qemu_io, tmp_path / "ref", *opts)
        _empty_with_ours(qemu_img, ours)
        _empty_with_qemu(qemu_img, ref)
        assert ours.read_bytes() == ref.read_bytes()
        info = qcheck(qemu_img, ours)
        assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
        assert qmap(qemu_img, ours) == qmap(qemu_img, ref)


def test_make_empty_with_snapshot_discards(qemu_img, qemu_io, tmp_path: Path) -> None:
    """A snapshot (or a v2 image) keeps qemu's discard path: no new layout."""
    for opts, snap in ((["-o", "compat=0.10"], False), ([], True)):
        ours = _overlay(qemu_img, qemu_io, tmp_path / "ours", *opts)
        ref = _overlay(qemu_img, qemu_io, tmp_path / "ref", *opts)
        if snap:
            for img in (ours, ref):
                run([qemu_img, "snapshot", "-c", "s1", str(img)], check=True)
        _empty_with_ours(qemu_img, ours)
        _empty_with_qemu(qemu_img, ref)
        assert ours.stat().st_size == ref.stat().st_size
        assert qmap(qemu_img, ours) == qmap(qemu_img, ref)
        info = qcheck(qemu_img, ours)
        assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
        if snap:
            r = run([qemu_img, "snapshot", "-l", str(ours)])
            assert "s1" in r.stdout


def test_make_empty_failing_midway_leaves_a_repairable_dirty_image(
    qemu_img, qemu_io, tmp_path: Path
) -> None:
    for event in ("empty_image_prepare", "refblock_alloc"):
        top = _overlay(qemu_img, qemu_io, tmp_path / event)
        cfg = _blkdebug(tmp_path, event)
        drv = open_image(
            f"blkdebug:{cfg}:{top}", fmt="qcow2", options={"backing": None}, read_only=False
        )
        failed = False
        try:
            drv.make_empty()
        except Exception:  # the injected EIO
            failed = True
        try:
            drv.close()  # an ejected node writes nothing more; the rule fails the flush
        except Exception:
            pass
        assert failed
        incompat = struct.unpack_from(">Q", top.read_bytes(), 72)[0]
        assert incompat & 1  # dirty: refcounts are rebuilt on the next open
        copy = tmp_path / event / "copy.qcow2"
        shutil.copy(top, copy)
        r = run([qemu_img, "check", "-r", "all", str(copy)])
        assert r.returncode == 0, r.stdout + r.stderr
        # our read-write open repairs it as qemu's does
        drv = open_image(str(top), fmt="qcow2", read_only=False)
        drv.close()
        info = qcheck(qemu_img, top)
        assert info["_rc"] == 0 and not info.get("corruptions"), info["_out"]
        assert not struct.unpack_from(">Q", top.read_bytes(), 72)[0] & 1


# --- 3. resize with internal snapshots -------------------------------------------


def _snap_image(qemu_img: str, qemu_io: str, path: Path, compat: str = "1.1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run([qemu_img, "create", "-q", "-f", "qcow2", "-o", f"compat={compat}", str(path), "4M"])
    qio(qemu_io, path, "write -P 1 0 4M")
    run([qemu_img, "snapshot", "-c", "s1", str(path)], check=True)
    qio(qemu_io, path, "write -P 2 1M 1M")
    return path


def test_resize_v3_with_snapshots_like_qemu(qemu_img, qemu_io, pyqemu_img, tmp_path: Path) -> None:
    for args in (["8M"], ["--shrink", "2M"], ["--shrink", "3M"]):
        folder = tmp_path / "_".join(args)
        ours = _snap_image(qemu_img, qemu_io, folder / "ours" / "s.qcow2")
        ref = _snap_image(qemu_img, qemu_io, folder / "ref" / "s.qcow2")
        a = run([*pyqemu_img, "resize", str(ours), *args])
        b = run([qemu_img, "resize", str(ref), *args])
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout) == (0, "Image resized.\n")
        assert qmap(qemu_img, ours) == qmap(qemu_img, ref)
        assert ours.stat().st_size == ref.stat().st_size
        info = qcheck(qemu_img, ours)
        assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
        # the snapshot keeps its size and data: applying it resizes back
        r = run([*pyqemu_img, "snapshot", "-a", "s1", str(ours)])
        assert r.returncode == 0, r.stderr
        info = json.loads(run([qemu_img, "info", "--output=json", str(ours)]).stdout)
        assert info["virtual-size"] == 4 * MiB
        qio(qemu_io, ours, "read -P 1 0 4M")
        info = qcheck(qemu_img, ours)
        assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")


def test_resize_v2_with_snapshots_refused_like_qemu(
    qemu_img, qemu_io, pyqemu_img, tmp_path: Path
) -> None:
    ours = _snap_image(qemu_img, qemu_io, tmp_path / "ours" / "s.qcow2", "0.10")
    ref = _snap_image(qemu_img, qemu_io, tmp_path / "ref" / "s.qcow2", "0.10")
    before = ours.read_bytes()
    a = run([*pyqemu_img, "resize", str(ours), "8M"])
    b = run([qemu_img, "resize", str(ref), "8M"])
    assert b.stderr == "qemu-img: Can't resize a v2 image which has snapshots\n"
    assert a.stderr == "pyqemu-img" + b.stderr[len("qemu-img") :]
    assert a.returncode == b.returncode == 1
    assert ours.read_bytes() == before


def test_amend_size_with_snapshots(qemu_img, qemu_io, pyqemu_img, tmp_path: Path) -> None:
    ours = _snap_image(qemu_img, qemu_io, tmp_path / "ours" / "s.qcow2")
    ref = _snap_image(qemu_img, qemu_io, tmp_path / "ref" / "s.qcow2")
    a = run([*pyqemu_img, "amend", "-o", "size=16M", str(ours)])
    b = run([qemu_img, "amend", "-o", "size=16M", str(ref)])
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, "")
    assert qmap(qemu_img, ours) == qmap(qemu_img, ref)
    info = qcheck(qemu_img, ours)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")


# --- 4. persistent bitmaps on the concurrent write path --------------------------


def test_write_concurrent_marks_bitmaps(qemu_img, tmp_path: Path) -> None:
    img = tmp_path / "b.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "8M"], check=True)
    run([qemu_img, "bitmap", "--add", "-g", "64k", str(img), "b0"], check=True)
    drv = open_image(str(img), fmt="qcow2", read_only=False)
    try:
        extents = drv.reserve_write(1 * MiB, 256 * KiB)
        assert extents is not None  # the concurrent path, not the fallback
        drv.complete_write(extents, b"\x05" * (256 * KiB))
        drv.write_concurrent(4 * MiB, b"\x06" * (128 * KiB))
        (bm,) = drv.bitmaps.bitmaps
        assert list(bm.runs()) == [(1 * MiB, 1 * MiB + 256 * KiB), (4 * MiB, 4 * MiB + 128 * KiB)]
    finally:
        drv.close()
    info = qcheck(qemu_img, img)
    assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
    drv = open_image(str(img), fmt="qcow2", read_only=True)
    try:
        from pyqemu.common.block.qcow2.bitmap import BitmapSet

        (bm,) = BitmapSet.load(drv).bitmaps
        assert list(bm.runs()) == [(1 * MiB, 1 * MiB + 256 * KiB), (4 * MiB, 4 * MiB + 128 * KiB)]
    finally:
        drv.close()


# --- 5. extended L2: zero subclusters ------------------------------------------

EXTL2_SCRIPTS = [
    # zeroes over data: whole subclusters get the zero bit, partial ones data
    ["write -P 1 0 128k", "write -z 4k 8k", "write -z 66k 1k", "write -z 96k 31k"],
    # zeroes over unallocated clusters and past a whole cluster
    ["write -z 200k 8k", "write -z 256k 68k", "write -z 330k 3k", "write -z -u 400k 100k"],
    # compressed clusters get written zeroes; zero clusters stay as they are
    ["write -c -P 3 0 64k", "write -z 8k 8k", "write -z 64k 64k", "write -z 72k 4k"],
]


def test_extended_l2_zero_subclusters_like_qemu_io(
    qemu_img, qemu_io, pyqemu_img, tmp_path: Path
) -> None:
    pyqemu_io = str(Path(pyqemu_img[0]).with_name("pyqemu-io"))
    for n, script in enumerate(EXTL2_SCRIPTS):
        for backing in (False, True):
            maps = []
            for tool in (qemu_io, pyqemu_io):
                folder = tmp_path / f"{n}-{backing}-{Path(tool).name}"
                folder.mkdir()
                img = folder / "e.qcow2"
                opts = ["-o", "extended_l2=on"]
                if backing:
                    base = folder / "b.qcow2"
                    run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
                    qio(qemu_io, base, "write -P 9 0 1M")
                    opts += ["-b", "b.qcow2", "-F", "qcow2"]
                run([qemu_img, "create", "-q", "-f", "qcow2", *opts, str(img), "1M"], check=True)
                args = [tool, "-f", "qcow2"]
                for c in script:
                    args += ["-c", c]
                r = run([*args, str(img)])
                assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
                info = qcheck(qemu_img, img)
                assert info["_rc"] == 0 and not info.get("leaks") and not info.get("corruptions")
                maps.append(qmap(qemu_img, img))
            assert maps[0] == maps[1], (script, backing)
