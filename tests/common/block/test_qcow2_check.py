"""qcow2 check/repair against qemu-img 7.2: the same report on the same image,
and a repair that qemu-img finds clean and that reads back as qemu's repair.

Images are made by the real qemu-img/qemu-io, then damaged in known ways by
small helpers here that poke the on-disk metadata.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import pytest
from pyqemu.common.block.driver import FIX_ERRORS, FIX_LEAKS, CheckResult
from pyqemu.common.block.errors import BlockError
from pyqemu.common.block.file import FileProtocol
from pyqemu.common.block.qcow2 import layout
from pyqemu.common.block.qcow2.check import CheckFailed, check_image

from tests.conftest import run

FIX_ALL = FIX_LEAKS | FIX_ERRORS

# --------------------------------------------------------------------------
# helpers: images, both checkers


def make_image(
    qemu_img: str,
    qemu_io: str,
    path: Path,
    size: str = "1M",
    *,
    opts: str = "cluster_size=4096",
    io: tuple[str, ...] = ("write -P 0x11 0 12k", "write -P 0x22 64k 8k"),
    snapshots: tuple[str, ...] = (),
) -> Path:
    run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, str(path), size], check=True)
    if io:
        cmd = [qemu_io, "-f", "qcow2"]
        for c in io:
            cmd += ["-c", c]
        run([*cmd, str(path)], check=True)
    for name in snapshots:
        run([qemu_img, "snapshot", "-c", name, str(path)], check=True)
        run([qemu_io, "-f", "qcow2", "-c", "write -P 0x33 0 4k", str(path)], check=True)
    return path


def header_of(path: Path) -> layout.Header:
    with open(path, "rb") as f:
        return layout.Header.parse(f.read(65536))


def ours(path: Path, fix: int = 0) -> CheckResult:
    file = FileProtocol.open({"filename": str(path)}, read_only=not fix)
    try:
        return check_image(file, layout.Header.parse(file.read(0, 65536)), fix)
    finally:
        file.close()


def theirs(qemu_img: str, path: Path, repair: str | None = None) -> tuple[dict, list[str], int]:
    cmd = [qemu_img, "check", "--output=json"]
    if repair:
        cmd += ["-r", repair]
    proc = run([*cmd, str(path)])
    info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return info, proc.stderr.splitlines(), proc.returncode


def counts(res: CheckResult) -> dict[str, int]:
    """Our result in qemu-img's JSON form (zero counts are left out, as qemu-img does)."""
    out = {"check-errors": res.check_errors}
    for key, value in (
        ("image-end-offset", res.image_end_offset),
        ("total-clusters", res.total_clusters),
        ("allocated-clusters", res.allocated_clusters),
        ("fragmented-clusters", res.fragmented_clusters),
        ("compressed-clusters", res.compressed_clusters),
        ("corruptions", res.corruptions),
        ("leaks", res.leaks),
        ("corruptions-fixed", res.corruptions_fixed),
        ("leaks-fixed", res.leaks_fixed),
    ):
        if value:
            out[key] = value
    return out


def their_counts(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in ("filename", "format")}


def assert_same_report(qemu_img: str, path: Path) -> CheckResult:
    """Our read-only check prints and counts what qemu-img check does."""
    before = path.read_bytes()
    res = ours(path)
    assert path.read_bytes() == before, "a check without -r must not write"
    info, stderr, _ = theirs(qemu_img, path)
    if res.check_errors:
        # qemu-img's own last word (the CLI's, not the driver's)
        assert stderr.pop() == "qemu-img: Check failed"
    assert res.messages == stderr
    assert counts(res) == their_counts(info)
    return res


def _data_extents(path: Path) -> list[tuple[int, int]]:
    extents = []
    with open(path, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, stop))
            pos = stop
    return extents


def same_bytes(a: Path, b: Path) -> bool:
    """Byte equality of two (possibly huge, sparse) files, reading only their data."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, stop in _data_extents(a) + _data_extents(b):
            for pos in range(start, stop, 1 << 20):
                n = min(1 << 20, stop - pos)
                fa.seek(pos)
                fb.seek(pos)
                if fa.read(n) != fb.read(n):
                    return False
    return True


def assert_same_repair(
    qemu_img: str, path: Path, tmp_path: Path, mode: str = "all"
) -> tuple[CheckResult, CheckResult]:
    """Repair one copy with us and one with qemu-img: same messages, same counts,
    both clean afterwards under qemu-img, same guest data."""
    fix = FIX_ALL if mode == "all" else FIX_LEAKS
    mine = tmp_path / "mine.qcow2"
    qemus = tmp_path / "qemus.qcow2"
    shutil.copyfile(path, mine)
    shutil.copyfile(path, qemus)
    info, stderr, rc = theirs(qemu_img, qemus, mode)
    try:
        fixed = ours(mine, fix)
    except CheckFailed as exc:
        # qemu's check fails the same way, and leaves the same bytes
        assert rc == 1
        assert exc.result.messages + [f"qemu-img: Check failed: {exc}"] == stderr
        assert same_bytes(mine, qemus)
        return exc.result, exc.result
    if fixed.check_errors:
        # qemu-img prints no result then, only that the check failed
        assert rc == 1
        assert fixed.messages + ["qemu-img: Check failed"] == stderr
        assert same_bytes(mine, qemus)
        return fixed, fixed
    try:
        again = ours(mine) if (fixed.corruptions_fixed or fixed.leaks_fixed) else None
    except CheckFailed as exc:
        # the double check fails in qemu-img too (e.g. the file grew too large)
        assert rc == 1
        assert fixed.messages + exc.result.messages + [f"qemu-img: Check failed: {exc}"] == stderr
        assert mine.stat().st_size == qemus.stat().st_size
        return fixed, exc.result
    expected_lines = fixed.messages + (again.messages if again else [])
    assert expected_lines == stderr
    final = again or fixed
    expected = counts(final)
    for key in ("corruptions-fixed", "leaks-fixed"):
        value = getattr(fixed, key.replace("-", "_"))
        if value:
            expected[key] = value
    assert expected == their_counts(info)
    # ours is clean under qemu-img (when qemu's is) and reads back the same data
    their_after, _, their_rc = theirs(qemu_img, qemus)
    my_after, my_stderr, my_rc = theirs(qemu_img, mine)
    assert my_rc == their_rc
    assert their_counts(my_after) == their_counts(their_after)
    if their_rc == 0:
        cmp = run([qemu_img, "compare", "-f", "qcow2", "-F", "qcow2", str(mine), str(qemus)])
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    else:
        # qemu could not make it clean either (it cannot be read): the same bytes then
        assert same_bytes(mine, qemus)
    return fixed, final


# --------------------------------------------------------------------------
# helpers: poking metadata


def refcount_entry(path: Path, cluster: int) -> tuple[int, int, int]:
    """(refblock offset, index in block, refcount order) of ``cluster``'s refcount."""
    hdr = header_of(path)
    data = path.read_bytes()
    block_bits = hdr.cluster_bits + 3 - hdr.refcount_order
    rt_index = cluster >> block_bits
    entry = struct.unpack_from(">Q", data, hdr.refcount_table_offset + 8 * rt_index)[0]
    block = entry & layout.REFT_OFFSET_MASK
    assert block, "cluster has no refcount block"
    return block, cluster & ((1 << block_bits) - 1), hdr.refcount_order


def get_refcount(path: Path, cluster: int) -> int:
    block, index, order = refcount_entry(path, cluster)
    data = path.read_bytes()
    cs = header_of(path).cluster_size
    return layout.get_refcount(data[block : block + cs], index, order)


def set_refcount(path: Path, cluster: int, value: int) -> None:
    block, index, order = refcount_entry(path, cluster)
    cs = header_of(path).cluster_size
    with open(path, "r+b") as f:
        f.seek(block)
        buf = bytearray(f.read(cs))
        layout.set_refcount(buf, index, order, value)
        f.seek(block)
        f.write(buf)


def l1_entry_offset(path: Path, index: int = 0) -> int:
    return header_of(path).l1_table_offset + 8 * index


def read_u64(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(">Q", f.read(8))[0]


def write_u64(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">Q", value))


def l2_entry_offset(path: Path, guest_offset: int) -> int:
    """File offset of the L2 entry mapping ``guest_offset`` (its L2 table must exist)."""
    hdr = header_of(path)
    entry_size = 16 if hdr.incompatible_features & layout.Incompat.EXTL2 else 8
    l2_bits = hdr.cluster_bits - (entry_size.bit_length() - 1)
    cluster = guest_offset >> hdr.cluster_bits
    l1 = read_u64(path, l1_entry_offset(path, cluster >> l2_bits))
    l2 = l1 & layout.L1E_OFFSET_MASK
    assert l2
    return l2 + entry_size * (cluster & ((1 << l2_bits) - 1))


def append_leaked_cluster(path: Path) -> int:
    """Grow the file by a cluster and give it refcount 1; returns its index."""
    cs = header_of(path).cluster_size
    size = path.stat().st_size
    end = -(-size // cs) * cs
    with open(path, "r+b") as f:
        f.truncate(end + cs)
    set_refcount(path, end // cs, 1)
    return end // cs


# --------------------------------------------------------------------------
# clean images: the same statistics as qemu-img

CLEAN_CASES = {
    "4k": dict(opts="cluster_size=4096"),
    "512-rc1": dict(opts="cluster_size=512,refcount_bits=1", size="256k"),
    "64k-rc64": dict(opts="cluster_size=65536,refcount_bits=64", size="4M"),
    "compat010": dict(opts="cluster_size=4096,compat=0.10"),
    "rc8-fragmented": dict(
        opts="cluster_size=4096,refcount_bits=8",
        io=("write 64k 4k", "write 0 4k", "write 128k 8k", "write 4k 4k"),
    ),
    "compressed": dict(
        io=("write -c -P 0x44 0 8k", "write -c -P 0x55 16k 4k", "write 32k 4k"),
    ),
    "zero": dict(io=("write 0 8k", "write -z 8k 8k", "write -z -u 32k 4k", "write -z 64k 4k")),
    "extl2": dict(
        opts="cluster_size=65536,extended_l2=on",
        size="4M",
        io=("write 0 4k", "write 100k 2k", "write -z 1M 64k", "write -c 2M 64k"),
    ),
    "snapshots": dict(snapshots=("s1", "s2")),
    "snapshots-compat010": dict(opts="cluster_size=4096,compat=0.10", snapshots=("s1",)),
    "empty": dict(io=()),
}


@pytest.mark.parametrize("case", sorted(CLEAN_CASES))
def test_clean_image_statistics(qemu_img, qemu_io, tmp_path, case):
    path = make_image(qemu_img, qemu_io, tmp_path / "a.qcow2", **CLEAN_CASES[case])
    res = assert_same_report(qemu_img, path)
    assert res.corruptions == res.leaks == res.check_errors == 0
    assert res.image_end_offset > 0


def test_compressed_clusters_sharing_a_host_cluster_count_each_reference(
    qemu_img, qemu_io, tmp_path
):
    # small compressed writes land in the same host cluster
    path = make_image(
        qemu_img,
        qemu_io,
        tmp_path / "a.qcow2",
        opts="cluster_size=65536",
        size="4M",
        io=tuple(f"write -c -P {i} {i * 64}k 64k" for i in range(1, 6)),
    )
    res = assert_same_report(qemu_img, path)
    assert res.compressed_clusters == 5
    hdr = header_of(path)
    coffset, _ = layout.decode_compressed(read_u64(path, l2_entry_offset(path, 64 << 10)), 16)
    assert get_refcount(path, coffset >> hdr.cluster_bits) > 1


def test_bitmaps_are_not_leaks(qemu_img, qemu_io, tmp_path):
    path = make_image(qemu_img, qemu_io, tmp_path / "a.qcow2")
    run([qemu_img, "bitmap", "--add", str(path), "b0"], check=True)
    run([qemu_img, "bitmap", "--add", str(path), "b1"], check=True)
    run(
        [qemu_io, "-f", "qcow2", "-c", "write 0 64k", str(path)],
        check=True,
    )
    hdr = header_of(path)
    assert hdr.autoclear_features & layout.Autoclear.BITMAPS
    res = assert_same_report(qemu_img, path)
    assert res.leaks == 0


# --------------------------------------------------------------------------
# damaged images: the same report, and a repair as good as qemu-img's


def damaged(qemu_img, qemu_io, tmp_path, **kw) -> Path:
    return make_image(qemu_img, qemu_io, tmp_path / "broken.qcow2", **kw)


@pytest.mark.parametrize(
    "opts",
    [
        "cluster_size=4096",
        "cluster_size=512,refcount_bits=1",
        "cluster_size=65536,refcount_bits=64",
    ],
)
def test_leaked_cluster(qemu_img, qemu_io, tmp_path, opts):
    path = damaged(qemu_img, qemu_io, tmp_path, opts=opts, size="4M")
    leaked = append_leaked_cluster(path)
    res = assert_same_report(qemu_img, path)
    assert res.leaks == 1
    assert res.messages == [f"Leaked cluster {leaked} refcount=1 reference=0"]
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "leaks")
    assert fixed.leaks_fixed == 1 and final.leaks == 0
    assert "Repairing cluster" in fixed.messages[-1]


def test_refcount_too_high_is_a_leak(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    hdr = header_of(path)
    cluster = read_u64(path, l2_entry_offset(path, 0)) & layout.L2E_OFFSET_MASK
    set_refcount(path, cluster >> hdr.cluster_bits, 2)
    res = assert_same_report(qemu_img, path)
    assert res.leaks == 1 and res.corruptions == 1  # and OFLAG_COPIED is now wrong
    assert_same_repair(qemu_img, path, tmp_path, "all")
    assert_same_repair(qemu_img, path, tmp_path, "leaks")


def test_refcount_too_low(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    # a cluster shared with the snapshot (refcount 2) loses one reference
    cluster = read_u64(path, l2_entry_offset(path, 64 << 10)) & layout.L2E_OFFSET_MASK
    assert get_refcount(path, cluster >> hdr.cluster_bits) == 2
    set_refcount(path, cluster >> hdr.cluster_bits, 1)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions >= 1
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert fixed.corruptions_fixed >= 1 and final.corruptions == 0


def test_refcount_zero_needs_rebuild(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    cluster = read_u64(path, l2_entry_offset(path, 0)) & layout.L2E_OFFSET_MASK
    set_refcount(path, cluster >> hdr.cluster_bits, 0)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions >= 1
    with pytest.raises(CheckFailed) as err:
        ours(tmp_path / "broken.qcow2", FIX_LEAKS) if False else _leaks_only(path, tmp_path)
    assert err.value.result.messages[-1] == "ERROR need to rebuild refcount structures"
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert "Rebuilding refcount structure" in fixed.messages
    assert final.corruptions == final.leaks == 0


def _leaks_only(path: Path, tmp_path: Path) -> CheckResult:
    copy = tmp_path / "leaks-only.qcow2"
    shutil.copyfile(path, copy)
    return ours(copy, FIX_LEAKS)


def test_bad_oflag_copied(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 64 << 10)
    write_u64(path, entry_at, read_u64(path, entry_at) & ~layout.OFLAG_COPIED)
    l1_at = l1_entry_offset(path)
    write_u64(path, l1_at, read_u64(path, l1_at) & ~layout.OFLAG_COPIED)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions == 2
    assert res.messages[0].startswith("ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=")
    assert res.messages[1].startswith("ERROR OFLAG_COPIED data cluster: l2_entry=")
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert fixed.corruptions_fixed == 2
    assert read_u64(tmp_path / "mine.qcow2", entry_at) & layout.OFLAG_COPIED


def test_l2_entry_past_the_end(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 4096)
    write_u64(path, entry_at, layout.OFLAG_COPIED | (64 << 20))
    res = assert_same_report(qemu_img, path)
    assert any("exceeding the end of the file" in m for m in res.messages)
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_misaligned_l2_offset_in_l1(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    l1_at = l1_entry_offset(path)
    write_u64(path, l1_at, read_u64(path, l1_at) + 512)
    res = assert_same_report(qemu_img, path)
    assert any("Table is not cluster aligned; L1 entry corrupted" in m for m in res.messages)
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_misaligned_data_cluster(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 0)
    write_u64(path, entry_at, read_u64(path, entry_at) + 512)
    res = assert_same_report(qemu_img, path)
    assert any(
        "Data cluster is not properly aligned; L2 entry corrupted." in m for m in res.messages
    )
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_misaligned_preallocated_zero_cluster_is_zeroed(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 4096)
    write_u64(path, entry_at, read_u64(path, entry_at) + 512 | layout.OFLAG_ZERO)
    res = assert_same_report(qemu_img, path)
    assert any("Preallocated cluster is not properly aligned" in m for m in res.messages)
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert read_u64(tmp_path / "mine.qcow2", entry_at) == layout.OFLAG_ZERO


def test_reserved_bits(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 0)
    write_u64(path, entry_at, read_u64(path, entry_at) | 1 << 56)
    l1_at = l1_entry_offset(path)
    write_u64(path, l1_at, read_u64(path, l1_at) | 1 << 60)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions >= 2


def test_refcount_block_damaged_triggers_rebuild(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    write_u64(path, hdr.refcount_table_offset, read_u64(path, hdr.refcount_table_offset) | 1)
    res = assert_same_report(qemu_img, path)
    assert "ERROR refcount table entry 0 has reserved bits set" in res.messages
    # qemu's rebuild puts the new refblock where the old one is, and its overlap
    # check refuses the write: the check fails, the image is marked corrupt
    fixed, _ = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert fixed.check_errors == 1
    assert header_of(tmp_path / "mine.qcow2").incompatible_features & layout.Incompat.CORRUPT


def test_data_cluster_on_a_refcount_block_rebuilds(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    hdr = header_of(path)
    refblock = read_u64(path, hdr.refcount_table_offset) & layout.REFT_OFFSET_MASK
    write_u64(path, l2_entry_offset(path, 128 << 10), layout.OFLAG_COPIED | refblock)
    res = assert_same_report(qemu_img, path)
    assert "ERROR refcount block 0 refcount=2" in res.messages
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert "Rebuilding refcount structure" in fixed.messages


def test_refcount_block_outside_image_is_grown(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    hdr = header_of(path)
    size = path.stat().st_size
    # a second refcount table entry pointing past the end
    write_u64(path, hdr.refcount_table_offset + 8, -(-size // 4096) * 4096 + 8192)
    res = assert_same_report(qemu_img, path)
    assert "ERROR refcount block 1 is outside image" in res.messages
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_dirty_lazy_refcounts_image(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, opts="cluster_size=4096,lazy_refcounts=on", io=())
    # qemu-io's abort leaves the image dirty with refcounts not yet written
    run([qemu_io, "-f", "qcow2", "-c", "write 0 64k", "-c", "abort", str(path)])
    assert header_of(path).incompatible_features & layout.Incompat.DIRTY
    assert_same_report(qemu_img, path)
    assert_same_repair(qemu_img, path, tmp_path, "all")
    assert not header_of(tmp_path / "mine.qcow2").incompatible_features & layout.Incompat.DIRTY


def test_snapshot_l1_misaligned(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    write_u64(path, hdr.snapshots_offset, read_u64(path, hdr.snapshots_offset) + 8)
    res = assert_same_report(qemu_img, path)
    assert any(
        "L1 table is not cluster aligned; snapshot table entry corrupted" in m for m in res.messages
    )


def test_extl2_damage(qemu_img, qemu_io, tmp_path):
    path = damaged(
        qemu_img,
        qemu_io,
        tmp_path,
        opts="cluster_size=65536,extended_l2=on",
        size="4M",
        io=("write 0 4k", "write -c 1M 64k"),
    )
    entry_at = l2_entry_offset(path, 0)
    # corrupt the subcluster bitmap: allocated and zero at once
    write_u64(path, entry_at + 8, read_u64(path, entry_at + 8) | 1 << 32)
    comp_at = l2_entry_offset(path, 1 << 20)
    write_u64(path, comp_at + 8, 5)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions == 2
    leaked = append_leaked_cluster(path)
    assert leaked
    assert_same_report(qemu_img, path)
    assert_same_repair(qemu_img, path, tmp_path, "all")


@pytest.mark.parametrize(
    "opts",
    [
        "cluster_size=512,refcount_bits=1",
        "cluster_size=512,refcount_bits=4",
        "cluster_size=4096,refcount_bits=64",
        "cluster_size=4096,compat=0.10",
    ],
)
def test_rebuild_across_refcount_widths(qemu_img, qemu_io, tmp_path, opts):
    # 512-byte clusters with 1-bit refcounts: 4096 clusters per refblock, so
    # 3 MiB of data needs several refblocks
    path = damaged(
        qemu_img,
        qemu_io,
        tmp_path,
        opts=opts,
        size="8M",
        io=("write -P 0x5a 0 3M", "write -P 0x6b 5M 64k"),
    )
    hdr = header_of(path)
    cluster = read_u64(path, l2_entry_offset(path, 2 << 20)) & layout.L2E_OFFSET_MASK
    set_refcount(path, cluster >> hdr.cluster_bits, 0)
    leaked = append_leaked_cluster(path)
    res = assert_same_report(qemu_img, path)
    # the cluster's refcount, and its OFLAG_COPIED (set, refcount 0)
    assert res.corruptions == 2 and res.leaks == 1 and leaked
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "all")
    assert "Rebuilding refcount structure" in fixed.messages
    assert final.corruptions == final.leaks == 0


def test_leaks_mode_fixes_oflag_once_leaks_are_gone(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 64 << 10)
    write_u64(path, entry_at, read_u64(path, entry_at) & ~layout.OFLAG_COPIED)
    append_leaked_cluster(path)
    assert_same_report(qemu_img, path)
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "leaks")
    assert fixed.leaks_fixed == 1 and fixed.corruptions_fixed == 1 and final.corruptions == 0


def test_leaks_mode_leaves_refcount_errors(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    cluster = read_u64(path, l2_entry_offset(path, 64 << 10)) & layout.L2E_OFFSET_MASK
    set_refcount(path, cluster >> hdr.cluster_bits, 1)
    append_leaked_cluster(path)
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "leaks")
    assert fixed.leaks_fixed == 1 and final.corruptions >= 1


def test_oflag_repaired_in_leaks_mode_when_otherwise_clean(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    entry_at = l2_entry_offset(path, 64 << 10)
    write_u64(path, entry_at, read_u64(path, entry_at) & ~layout.OFLAG_COPIED)
    fixed, final = assert_same_repair(qemu_img, path, tmp_path, "leaks")
    assert fixed.corruptions_fixed == 1 and final.corruptions == 0


def test_compressed_cluster_with_copied_flag(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, io=("write -c -P 0x44 0 8k",))
    entry_at = l2_entry_offset(path, 4096)
    write_u64(path, entry_at, read_u64(path, entry_at) | layout.OFLAG_COPIED)
    res = assert_same_report(qemu_img, path)
    assert any("copied flag must never be set for compressed clusters" in m for m in res.messages)
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_snapshot_l1_misaligned_repair(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path, snapshots=("s1",))
    hdr = header_of(path)
    write_u64(path, hdr.snapshots_offset, read_u64(path, hdr.snapshots_offset) + 8)
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_l2_table_past_the_end(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    l1_at = l1_entry_offset(path)
    write_u64(path, l1_at, layout.OFLAG_COPIED | 1 << 30)
    res = assert_same_report(qemu_img, path)
    assert res.corruptions >= 1
    assert_same_repair(qemu_img, path, tmp_path, "all")


def test_refcount_table_entry_misaligned(qemu_img, qemu_io, tmp_path):
    path = damaged(qemu_img, qemu_io, tmp_path)
    hdr = header_of(path)
    write_u64(path, hdr.refcount_table_offset, read_u64(path, hdr.refcount_table_offset) + 1024)
    res = assert_same_report(qemu_img, path)
    assert any("is not cluster aligned; refcount table entry corrupted" in m for m in res.messages)
    assert_same_repair(qemu_img, path, tmp_path, "all")


# --------------------------------------------------------------------------
# random damage: the same report as qemu-img, and only our errors out


def metadata_ranges(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the L1 table, L2 tables, refcount table and block, snapshot table."""
    data = path.read_bytes()
    hdr = header_of(path)
    cs = hdr.cluster_size
    ranges = [(hdr.l1_table_offset, hdr.l1_size * 8), (hdr.refcount_table_offset, 64)]
    for i in range(hdr.l1_size):
        l2 = struct.unpack_from(">Q", data, hdr.l1_table_offset + 8 * i)[0]
        if l2 & layout.L1E_OFFSET_MASK:
            ranges.append((l2 & layout.L1E_OFFSET_MASK, cs))
    refblock = struct.unpack_from(">Q", data, hdr.refcount_table_offset)[0]
    ranges.append((refblock & layout.REFT_OFFSET_MASK, cs))
    if hdr.snapshots_offset:
        ranges.append((hdr.snapshots_offset, 64))
    return ranges


def flip_bits(path: Path, seed: int, flips: int, ranges: list[tuple[int, int]]) -> None:
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        for _ in range(rnd.randint(1, flips)):
            offset, length = rnd.choice(ranges)
            pos = offset + rnd.randrange(length)
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 << rnd.randrange(8))]))


@pytest.mark.parametrize(
    "opts, snapshots",
    [("cluster_size=4096", ("s1",)), ("cluster_size=512,refcount_bits=1", ())],
)
def test_random_damage_same_report_as_qemu(qemu_img, qemu_io, tmp_path, opts, snapshots):
    base = make_image(
        qemu_img,
        qemu_io,
        tmp_path / "base.qcow2",
        opts=opts,
        size="2M",
        io=("write -P 1 0 20k", "write -c -P 2 64k 16k", "write -z 200k 8k"),
        snapshots=snapshots,
    )
    # not the refcount table: a flipped high bit there makes qemu grow the file
    # to terabytes (covered by test_refcount_block_outside_image_is_grown)
    ranges = [r for r in metadata_ranges(base) if r[0] != header_of(base).refcount_table_offset]
    compared = 0
    for seed in range(12):
        path = tmp_path / "broken.qcow2"
        shutil.copyfile(base, path)
        flip_bits(path, seed, 3, ranges)
        info, _, _ = theirs(qemu_img, path)
        if not info:
            continue  # qemu-img would not open it (header-level damage: the driver's job)
        res = assert_same_report(qemu_img, path)
        compared += 1
        if res.corruptions or res.leaks:
            assert_same_repair(qemu_img, path, tmp_path, "all")
    assert compared >= 6


def test_garbage_metadata_raises_only_block_errors(qemu_img, qemu_io, tmp_path):
    base = make_image(qemu_img, qemu_io, tmp_path / "base.qcow2", snapshots=("s1",))
    hdr = header_of(base)
    ranges = metadata_ranges(base)
    for seed in range(30):
        rnd = random.Random(seed)
        path = tmp_path / "junk.qcow2"
        shutil.copyfile(base, path)
        with open(path, "r+b") as f:
            for offset, length in ranges:
                f.seek(offset)
                f.write(rnd.randbytes(min(length, hdr.cluster_size)))
        for fix in (0, FIX_ALL):
            try:
                res = ours(path, fix)
            except BlockError:
                continue
            assert res.corruptions + res.leaks + res.check_errors + res.corruptions_fixed > 0
