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
    _qemu(
        qemu_img,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
        "12M",
        cwd=folder,
    )
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


def test_read_skips_zero_ranges(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """Reads that fill status-zero ranges themselves equal plain reads."""
    from pyqemu.common.block import open_image
    from pyqemu.img_tool.rebase import CHUNK, _read

    _chain(tmp_path, qemu_img, qemu_io)
    top = open_image(str(tmp_path / "top.qcow2"))
    try:
        buf = bytearray(b"\xff" * CHUNK)  # stale content must not leak through
        for node in (top, top.backing):
            for offset in range(0, node.size, 1 << 20):
                n = min(CHUNK, node.size - offset)
                got = _read(node, offset, n, buf)
                assert bytes(memoryview(got)[:n]) == node.read(offset, n)
    finally:
        top.close()
