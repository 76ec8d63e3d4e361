"""qcow2 check/repair against qemu-img 7.2: the same report on the same image,
and a repair that qemu-img finds clean and that reads back as qemu's repair.

Images are made by the real qemu-img/qemu-io, then damaged in known ways by
small helpers here that poke the on-disk metadata.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from pyqemu.common.block.driver import FIX_ERRORS, FIX_LEAKS, CheckResult
from pyqemu.common.block.file import FileProtocol
from pyqemu.common.block.qcow2 import layout
from pyqemu.common.block.qcow2.check import check_image

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
    assert res.messages == stderr
    assert counts(res) == their_counts(info)
    return res


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
    fixed = ours(mine, fix)
    again = ours(mine) if (fixed.corruptions_fixed or fixed.leaks_fixed) else None
    info, stderr, _ = theirs(qemu_img, qemus, mode)
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
    cmp = run([qemu_img, "compare", "-f", "qcow2", "-F", "qcow2", str(mine), str(qemus)])
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
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
