"""The fast paths of pyqemu-img rebase and commit.

Model tests: the coarse-to-fine sector comparison against a plain per-sector
loop; the chunk planner against qemu-img's own 2 MiB step loop; reads that
skip ranges the block status reports as zero against plain reads. And chains
of several chunks (backing files shorter and longer than the overlay) through
rebase and commit side by side with qemu-img.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from .conftest import Twins

SECTOR = 512


def model_runs(old: bytes, new: bytes, n: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for s in range(0, n, SECTOR):
        e = min(n, s + SECTOR)
        if old[s:e] != new[s:e]:
            if runs and sum(runs[-1]) == s:
                runs[-1] = (runs[-1][0], e - runs[-1][0])
            else:
                runs.append((s, e - s))
    return runs


def test_differing_runs_model_random_edits() -> None:
    from pyqemu.img_tool.rebase import differing_runs

    rng = random.Random(11)
    for _ in range(300):
        size = rng.choice([SECTOR * rng.randrange(1, 300), rng.randrange(1, 150000)])
        old = bytearray(rng.randbytes(size)) if rng.random() < 0.5 else bytearray(size)
        new = bytearray(old)
        for _ in range(rng.randrange(0, 25)):
            a = rng.randrange(size)
            b = min(size, a + rng.choice([1, 2, 510, 512, 513, 1500, 9000, 66000]))
            kind = rng.random()
            if kind < 0.5:
                new[a:b] = rng.randbytes(b - a)
            elif kind < 0.8:
                new[a:b] = bytes(b - a)
            else:  # one byte in the middle of a sector: the samples agree
                mid = (a & ~(SECTOR - 1)) + 200
                if mid < size:
                    new[mid] ^= 0x5A
        assert differing_runs(bytes(old), bytes(new)) == model_runs(old, new, size)
        assert differing_runs(old, new) == model_runs(old, new, size)


def test_differing_runs_samples_agree_but_sectors_differ() -> None:
    """Every sector's first and last byte equal on both sides: only the full
    comparison can tell them apart (alternating, sparse and all differing)."""
    from pyqemu.img_tool.rebase import differing_runs

    nsec = 257
    old = bytearray(b"\x07" * (nsec * SECTOR))
    for pattern in (
        lambda i: i % 2 == 0,
        lambda i: i % 3 == 1,
        lambda i: i in (0, 128, 256),
        lambda i: True,
        lambda i: False,
        lambda i: 100 <= i < 200,
    ):
        new = bytearray(old)
        for i in range(nsec):
            if pattern(i):
                new[i * SECTOR + 1 + i % 500] = 0
        assert differing_runs(old, new) == model_runs(old, new, len(old))


def test_differing_runs_prefix_of_larger_buffers() -> None:
    """``n`` compares a prefix (reused buffers are larger than the chunk)."""
    from pyqemu.img_tool.rebase import _ZEROS, differing_runs

    rng = random.Random(3)
    for _ in range(100):
        n = rng.randrange(1, 40000)
        old = bytearray(rng.randbytes(n + rng.randrange(0, 5000)))
        new = bytearray(old)
        for _ in range(rng.randrange(0, 6)):
            a = rng.randrange(len(new))
            new[a] ^= 1
        assert differing_runs(old, new, n) == model_runs(old, new, n)
        # one side the shared zero buffer (flatten, past a backing file's end)
        assert differing_runs(old, _ZEROS, n) == model_runs(old, _ZEROS, n)
        assert differing_runs(_ZEROS, new, n) == model_runs(_ZEROS, new, n)


def _qemu(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), cwd=cwd, check=True, capture_output=True)


def _overlay(folder: Path, qemu_img: str, name: str, backing: str, *size: str) -> None:
    """qemu-img create a qcow2 overlay ``name`` over the qcow2 ``backing``."""
    _qemu(qemu_img, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", name, *size,
          cwd=folder)  # fmt: skip


def _chain(folder: Path, qemu_img: str, qemu_io: str) -> None:
    """base (9M) <- top (12M, 512-byte-aligned writes and zero clusters); new (7M)."""
    rng = random.Random(7)
    _qemu(qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", "9M", cwd=folder)
    _qemu(qemu_img, "create", "-q", "-f", "qcow2", "new.qcow2", "7M", cwd=folder)
    cmds: dict[str, list[str]] = {"base.qcow2": [], "new.qcow2": [], "top.qcow2": []}
    for name, size in (("base.qcow2", 9 << 20), ("new.qcow2", 7 << 20)):
        for _ in range(30):
            off = rng.randrange(0, size // SECTOR) * SECTOR
            length = min(size - off, rng.choice([1, 8, 128, 1024, 3000]) * SECTOR)
            if rng.random() < 0.8:
                cmds[name].append(f"write -P {rng.randrange(256)} {off} {length}")
            else:
                cmds[name].append(f"write -z {off} {length}")
    # new shares some of base's content: equal sectors to skip
    cmds["new.qcow2"].append("write -P 0 2M 1M")
    cmds["base.qcow2"].append("write -P 0 2M 1M")
    for name in ("base.qcow2", "new.qcow2"):
        io = [qemu_io]
        for c in cmds[name]:
            io += ["-c", c]
        _qemu(*io, name, cwd=folder)
    _overlay(folder, qemu_img, "top.qcow2", "base.qcow2", "12M")
    io = [qemu_io]
    for _ in range(12):
        off = rng.randrange(0, (12 << 20) // 65536) * 65536
        if rng.random() < 0.7:
            io += ["-c", f"write -P {rng.randrange(256)} {off} 65536"]
        else:
            io += ["-c", f"write -z {off} 131072"]
    _qemu(*io, "top.qcow2", cwd=folder)


def _same_result(twins: Twins, name: str) -> None:
    for args in (["map", "--output=json", name], ["info", name]):
        a = subprocess.run([twins.ref, *args], cwd=twins.ours_dir, capture_output=True, text=True)
        b = subprocess.run([twins.ref, *args], cwd=twins.ref_dir, capture_output=True, text=True)
        assert a.returncode == b.returncode == 0
        if args[0] == "info":
            strip = [ln for ln in a.stdout.splitlines() if "disk size" not in ln]
            assert strip == [ln for ln in b.stdout.splitlines() if "disk size" not in ln]
        else:
            from .test_commit_rebase import _layout

            assert _layout(a.stdout) == _layout(b.stdout)
    cmp = subprocess.run(
        [twins.ref, "compare", name, str(twins.ref_dir / name)],
        cwd=twins.ours_dir,
        capture_output=True,
    )
    assert cmp.returncode == 0, cmp.stdout
    chk = subprocess.run([twins.ref, "check", name], cwd=twins.ours_dir, capture_output=True)
    assert chk.returncode == 0, chk.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["rebase", "-p", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-p", "-b", "", "top.qcow2"],
    ],
)
def test_rebase_many_chunks(twins: Twins, args: list[str]) -> None:
    twins.setup(lambda folder: _chain(folder, twins.ref, twins.qemu_io))
    out = twins.same(*args)
    assert out.returncode == 0
    _same_result(twins, "top.qcow2")


def test_commit_many_chunks(twins: Twins) -> None:
    twins.setup(lambda folder: _chain(folder, twins.ref, twins.qemu_io))
    twins.same("commit", "-q", "top.qcow2")
    _same_result(twins, "base.qcow2")
    _same_result(twins, "top.qcow2")


def test_plan_matches_qemu_step_loop(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """The chunks cover exactly the bytes qemu-img's 2 MiB step loop compares,
    with one progress delta per step, in order; steps are only joined at
    sector-aligned boundaries of one kind."""
    from pyqemu.common.block import Status, node_status, open_image
    from pyqemu.img_tool.rebase import CHUNK, IO_BUF_SIZE, _plan_chunks

    _chain(tmp_path, qemu_img, qemu_io)
    top = open_image(str(tmp_path / "top.qcow2"))
    new = open_image(str(tmp_path / "new.qcow2"))
    try:
        for other in (new, None):
            size = top.size
            old_size = top.backing.size
            new_size = other.size if other is not None else 0
            steps = []
            offset = 0
            while offset < size:
                n = min(IO_BUF_SIZE, size - offset)
                run = node_status(top, offset, n)
                if run.flags & Status.ALLOCATED:
                    offset += run.length
                    continue
                n = run.length
                old_zero = offset >= old_size
                if not old_zero:
                    n = min(n, old_size - offset)
                if other is not None and offset < new_size:
                    n = min(n, new_size - offset)
                steps.append((offset, n, old_zero))
                offset += n
            chunks = list(_plan_chunks(top, top.backing, other, None))
            covered = []
            for _off, n, old_zero, deltas in chunks:
                assert n <= CHUNK
                assert len(deltas) >= 1
                if old_zero:
                    assert len(deltas) == 1
                covered.extend([old_zero] * len(deltas))
            assert sum(len(c[3]) for c in chunks) == len(steps)
            assert covered == [s[2] for s in steps]
            # the same bytes, in the same order
            assert [(c[0], c[1]) for c in chunks] == _join(steps, chunks)
    finally:
        top.close()
        new.close()


def _join(steps: list[tuple[int, int, bool]], chunks: list) -> list[tuple[int, int]]:
    out = []
    i = 0
    for chunk in chunks:
        k = len(chunk[3])
        part = steps[i : i + k]
        for a, b in zip(part, part[1:], strict=False):
            assert a[0] + a[1] == b[0] and a[1] % SECTOR == 0
        out.append((part[0][0], sum(s[1] for s in part)))
        i += k
    return out


def test_compare_chunk_equals_plain_reads(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """The worker's comparison, which reads neither side where its chain's
    block status says zero, finds the sectors a comparison of plain reads
    finds; where the old side has data its buffer holds the old content;
    stale buffer content never leaks through."""
    from pyqemu.common.block import open_image
    from pyqemu.img_tool.rebase import CHUNK, _compare_chunk

    _chain(tmp_path, qemu_img, qemu_io)
    top = open_image(str(tmp_path / "top.qcow2"))
    new = open_image(str(tmp_path / "new.qcow2"))
    rng = random.Random(5)
    try:
        old = top.backing
        for other in (new, None):
            for _ in range(40):
                offset = rng.randrange(0, old.size // SECTOR) * SECTOR
                n = min(old.size - offset, rng.choice([SECTOR, 65536, 1 << 20, CHUNK]))
                if other is not None:
                    n = min(n, max(SECTOR, other.size - offset))
                buf_old = bytearray(b"\xff" * CHUNK)
                buf_new = bytearray(b"\xee" * CHUNK)
                got_buf, runs = _compare_chunk(old, other, (offset, n, False, []), buf_old, buf_new)
                want_old = old.read(offset, n)
                if other is None or offset >= other.size:
                    want_new = bytes(n)
                else:
                    want_new = other.read(offset, n)
                assert [(a, b) for a, b, _ in _merge(runs)] == model_runs(want_old, want_new, n)
                for start, length, old_zero in runs:
                    want = want_old[start : start + length]
                    if old_zero:
                        assert want == bytes(length)
                    else:
                        assert got_buf[start : start + length] == want
    finally:
        top.close()
        new.close()


def _merge(runs: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    """Adjacent runs joined whatever their kind (the model does not know it)."""
    out: list[tuple[int, int, bool]] = []
    for start, length, zero in runs:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, zero)
        else:
            out.append((start, length, zero))
    return out


# ----------------------------------------------------------------------
# every kind of cluster under multi-cluster writes (the run-wise write path
# of the qcow2 driver, file-to-file copies, and their fallbacks)

K64 = 65536


def _mixed_chain(folder: Path, qemu_img: str, qemu_io: str) -> None:
    """base (8M, 64 KiB clusters) holding data, compressed, allocated-zero,
    plain-zero and unallocated clusters <- mid (compressed and plain data
    spanning those) <- top (8M: long unaligned writes, compressed clusters,
    zero clusters); new.qcow2 (6M) for a safe rebase."""
    _qemu(qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", "8M", cwd=folder)
    _qemu(qemu_img, "create", "-q", "-f", "qcow2", "new.qcow2", "6M", cwd=folder)
    # (qemu-io writes compressed clusters only where nothing is allocated yet)
    base = ["write -c -P 12 1M 64k", "write -c -P 13 1152k 64k", "write -c -P 16 4160k 64k"]
    base += ["write -P 11 0 1M", "write -P 14 2M 512k", "write -z 2112k 128k"]
    base += ["write -z 3M 128k", "write -P 15 4M 64k", "write -P 15 4224k 960k"]
    base += ["write -P 0 6M 256k"]
    new = ["write -P 11 0 512k", "write -P 21 1M 2M", "write -z 4M 64k", "write -P 15 4M 1M"]
    for name, cmds in (("base.qcow2", base), ("new.qcow2", new)):
        io = [qemu_io]
        for c in cmds:
            io += ["-c", c]
        _qemu(*io, name, cwd=folder)
    for name, backing in (("mid.qcow2", "base.qcow2"), ("top.qcow2", "mid.qcow2")):
        _overlay(folder, qemu_img, name, backing)
    mid = ["write -c -P 32 3M 64k", "write -P 31 960k 320k", "write -P 33 5M 1M"]
    top = ["write -c -P 42 2560k 64k", "write -P 41 100k 2100k", "write -z 3200k 192k"]
    top += ["write -P 43 3900k 700k", "write -P 44 7M 1M"]
    for name, cmds in (("mid.qcow2", mid), ("top.qcow2", top)):
        io = [qemu_io]
        for c in cmds:
            io += ["-c", c]
        _qemu(*io, name, cwd=folder)


@pytest.mark.parametrize(
    ("args", "results"),
    [
        (["commit", "-q", "top.qcow2"], ["mid.qcow2", "top.qcow2"]),
        (["commit", "-q", "-b", "base.qcow2", "top.qcow2"], ["base.qcow2"]),
        (["rebase", "-q", "-b", "", "top.qcow2"], ["top.qcow2"]),
        (["rebase", "-q", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"]),
        (["rebase", "-q", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"]),
    ],
)
def test_every_cluster_kind(twins: Twins, args: list[str], results: list[str]) -> None:
    twins.setup(lambda folder: _mixed_chain(folder, twins.ref, twins.qemu_io))
    twins.same(*args)
    for name in results:
        _same_result(twins, name)


def test_write_from_equals_write(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """A guest write whose data come from a host file (copied file to file
    where whole clusters go to host clusters) leaves the image as a plain
    write of the same bytes does: same content, same layout, clean check."""
    from pyqemu.common.block import open_image

    rng = random.Random(9)
    src = tmp_path / "src.bin"
    src.write_bytes(rng.randbytes(3 << 20))
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        _mixed_chain(folder, qemu_img, qemu_io)
    # disjoint (guest offset, source offset, length): aligned and not, over
    # data, compressed, allocated-zero, plain-zero and unallocated clusters
    requests = [(0, 0, 1216 * 1024), (1300 * 1024, 4096, 5 * K64), (2 << 20, 100, 700000)]
    requests += [(3 << 20, 0, 1 << 20), (4 << 20, 1 << 20, 2 << 20)]
    requests += [(6 << 20, 512, K64 + 512), (7 << 20, 0, 1 << 20)]
    source = open_image(str(src), "raw", read_only=True)
    try:
        for name in ("a", "b"):
            image = open_image(str(tmp_path / name / "base.qcow2"), read_only=False)
            try:
                for offset, src_offset, length in requests:
                    if name == "a":
                        image.write_from(offset, source.file, src_offset, length)
                    else:
                        image.write(offset, source.read(src_offset, length))
                for offset, src_offset, length in requests:
                    assert image.read(offset, length) == source.read(src_offset, length)
            finally:
                image.close()
    finally:
        source.close()
    a, b = (str(tmp_path / n / "base.qcow2") for n in ("a", "b"))
    assert subprocess.run([qemu_img, "compare", a, b], capture_output=True).returncode == 0
    maps = []
    for path in (a, b):
        assert subprocess.run([qemu_img, "check", path], capture_output=True).returncode == 0
        out = subprocess.run(
            [qemu_img, "map", "--output=json", path], capture_output=True, text=True, check=True
        )
        from .test_commit_rebase import _layout

        maps.append(_layout(out.stdout))
    assert maps[0] == maps[1]


def test_nonzero_runs_model_zero_sectors() -> None:
    """Against the shared zero buffer (find of a zero sector): zero runs that
    start and end on and off sector boundaries, shorter and longer than a
    sector, single non-zero bytes in zero runs, odd starts and lengths."""
    from pyqemu.img_tool.rebase import _ZEROS, differing_runs, nonzero_runs

    rng = random.Random(21)
    for _ in range(400):
        size = rng.choice([SECTOR * rng.randrange(1, 200), rng.randrange(1, 120000)])
        buf = bytearray(rng.randbytes(size)) if rng.random() < 0.7 else bytearray(size)
        for _ in range(rng.randrange(0, 12)):
            a = rng.choice([rng.randrange(size), rng.randrange(size) & ~(SECTOR - 1)])
            length = rng.choice([1, 300, 511, 512, 513, 1024, 1100, 4096, 9000])
            buf[a : a + length] = bytes(len(buf[a : a + length]))
        for _ in range(rng.randrange(0, 4)):
            buf[rng.randrange(size)] = rng.randrange(1, 256)
        start = rng.choice([0, 0, SECTOR, 77]) if size > 1000 else 0
        n = size - start - rng.choice([0, 0, 5, SECTOR])
        if n <= 0:
            continue
        expected = [(start + a, b) for a, b in model_runs(buf[start:], bytes(n), n)]
        assert nonzero_runs(buf, n, start) == expected
        assert differing_runs(buf, _ZEROS, n, start) == expected
        assert differing_runs(_ZEROS, buf, n, start) == expected


def _zero_sector_chain(folder: Path, qemu_img: str, qemu_io: str) -> None:
    """base (6M): data clusters holding zero sectors at odd places (written
    as data: sector-sized and longer, on and off sector boundaries) <- top
    (6M, a few clusters); other (6M): data with zero sectors elsewhere."""
    rng = random.Random(31)
    for name in ("base.qcow2", "other.qcow2"):
        _qemu(qemu_img, "create", "-q", "-f", "qcow2", name, "6M", cwd=folder)
        io = [qemu_io, "-c", f"write -P {rng.randrange(1, 256)} 0 6M"]
        for _ in range(40):
            off = rng.randrange(0, (6 << 20) - 20000)
            length = rng.choice([300, 512, 700, 1024, 1536, 4096, 12000])
            if rng.random() < 0.5:
                off &= ~(SECTOR - 1)
            io += ["-c", f"write -P 0 {off} {length}"]
        # whole clusters of zero data: left unallocated in the overlay
        io += ["-c", "write -P 0 2M 128k" if name == "base.qcow2" else "write -P 0 4M 64k"]
        _qemu(*io, name, cwd=folder)
    _overlay(folder, qemu_img, "top.qcow2", "base.qcow2")
    _qemu(qemu_io, "-c", "write -P 9 1M 128k", "-c", "write -z 3M 64k", "top.qcow2", cwd=folder)


@pytest.mark.parametrize(
    "args",
    [
        ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-b", "", "top.qcow2"],
    ],
)
def test_rebase_zero_sectors_in_data(twins: Twins, args: list[str]) -> None:
    """Zero sectors inside data are left out as qemu-img leaves them out: the
    overlay's layout (map) and content are qemu-img's."""
    twins.setup(lambda folder: _zero_sector_chain(folder, twins.ref, twins.qemu_io))
    out = twins.same(*args)
    assert out.returncode == 0
    _same_result(twins, "top.qcow2")
