"""pyqemu-img commit and rebase against qemu-img 7.2.

Each test builds the same backing chain in two folders with qemu-img/qemu-io,
runs the command with ours in one and with qemu-img in the other, and compares
the output, the resulting images (``qemu-img compare``), the overlay's
``qemu-img map`` and ``qemu-img info``, and ``qemu-img check``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import Twins

W = "qemu-io"


def chain_cmds(base_fmt: str = "qcow2", compat: str = "1.1") -> list[list[str]]:
    """base (4M) <- mid (4M) <- top (6M): data, zero clusters and partial overlaps."""
    base = "base." + base_fmt
    cmds = [
        ["qemu-img", "create", "-q", "-f", base_fmt, base, "4M"]
        + (["-o", f"compat={compat}"] if base_fmt == "qcow2" else []),
        [W, "-f", base_fmt, "-c", "write -P 1 0 256k", "-c", "write -P 7 3M 300k", base],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", base_fmt, "mid.qcow2"],
        [W, "-c", "write -P 2 128k 128k", "-c", "write -z 512k 64k", "-c", "write -z 3M 64k"]
        + ["mid.qcow2"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2"]
        + ["top.qcow2", "6M"],
        [W, "-c", "write -P 3 192k 100k", "-c", "write -z 0 64k", "-c", "write -P 4 5M 64k"]
        + ["-c", "write -P 5 1000k 3k", "top.qcow2"],
    ]
    return cmds


def tool(twins: Twins, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([twins.ref, *args], cwd=folder, capture_output=True, text=True)


def assert_same_images(twins: Twins, *names: str) -> None:
    for name in names:
        out = tool(twins, twins.ours_dir, "compare", name, str(twins.ref_dir / name))
        assert out.returncode == 0, (name, out.stdout, out.stderr)


def assert_same_map(twins: Twins, name: str) -> None:
    a = tool(twins, twins.ours_dir, "map", "--output=json", name)
    b = tool(twins, twins.ref_dir, "map", "--output=json", name)
    assert a.returncode == b.returncode == 0
    # host offsets may differ (allocation order), and with them where qemu-img
    # map splits runs; the guest layout must not
    assert _layout(a.stdout) == _layout(b.stdout), name


def _layout(text: str) -> list[list[object]]:
    runs: list[list[object]] = []
    for run in json.loads(text):
        key = [run["depth"], run["present"], run["zero"], run["data"]]
        if runs and runs[-1][2:] == key and runs[-1][0] + runs[-1][1] == run["start"]:
            runs[-1][1] += run["length"]
        else:
            runs.append([run["start"], run["length"], *key])
    return runs


def assert_clean(twins: Twins, *names: str) -> None:
    for name in names:
        out = tool(twins, twins.ours_dir, "check", name)
        assert out.returncode == 0, (name, out.stdout, out.stderr)


def build(twins: Twins, cmds: list[list[str]]) -> None:
    twins.shell(*cmds)


# ----------------------------------------------------------------------
# commit


@pytest.mark.parametrize(("base_fmt", "compat"), [("qcow2", "1.1"), ("qcow2", "0.10"), ("raw", "")])
def test_commit_into_backing_file(twins: Twins, base_fmt: str, compat: str) -> None:
    build(twins, chain_cmds(base_fmt, compat))
    out = twins.same("commit", "top.qcow2")
    assert out.stdout == b"Image committed.\n"
    assert_same_images(twins, "mid.qcow2", "top.qcow2", "base." + base_fmt)
    # the overlay was emptied as qemu's bdrv_make_empty does; mid grew to 6M
    assert_same_map(twins, "top.qcow2")
    assert_same_map(twins, "mid.qcow2")
    # a v3 overlay gets qemu's fresh empty layout (make_completely_empty), a v2
    # one has its clusters discarded: the file sizes match either way
    top_sizes = [(d / "top.qcow2").stat().st_size for d in (twins.ours_dir, twins.ref_dir)]
    assert top_sizes[0] == top_sizes[1]
    a = tool(twins, twins.ours_dir, "info", "mid.qcow2").stdout
    b = tool(twins, twins.ref_dir, "info", "mid.qcow2").stdout
    assert [ln for ln in a.splitlines() if "disk size" not in ln] == [
        ln for ln in b.splitlines() if "disk size" not in ln
    ]
    assert_clean(twins, "top.qcow2", "mid.qcow2")


@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
def test_commit_to_base_down_the_chain(twins: Twins, base_fmt: str) -> None:
    build(twins, chain_cmds(base_fmt))
    base = "base." + base_fmt
    twins.same("commit", "-q", "-b", base, "top.qcow2")
    assert_same_images(twins, base, "mid.qcow2", "top.qcow2")
    # -b implies -d: the overlay keeps its data
    assert_same_map(twins, "top.qcow2")
    a = tool(twins, twins.ours_dir, "info", base).stdout.splitlines()[2]
    assert a == "virtual size: 6 MiB (6291456 bytes)"
    if base_fmt == "qcow2":
        assert_clean(twins, base)


def test_commit_drop_keeps_overlay(twins: Twins) -> None:
    build(twins, chain_cmds())
    twins.same("commit", "-d", "top.qcow2")
    assert_same_images(twins, "mid.qcow2", "top.qcow2")
    assert_same_map(twins, "top.qcow2")
    top_map = tool(twins, twins.ours_dir, "map", "--output=json", "top.qcow2").stdout
    assert '"depth": 0' in top_map


def test_commit_progress(twins: Twins) -> None:
    build(twins, chain_cmds())
    a, b = twins.run("commit", "-p", "top.qcow2")
    assert a.returncode == b.returncode == 0
    # the number of progress lines follows the job's iterations; the ends agree
    for out in (a.stdout, b.stdout):
        assert out.startswith(b"    (0.00/100%)\r")
        assert out.endswith(b"    (100.00/100%)\r\nImage committed.\n")
    assert_same_images(twins, "mid.qcow2")


@pytest.mark.parametrize(
    "args",
    [
        ["commit", "base.qcow2"],
        ["commit", "-b", "nothere.qcow2", "top.qcow2"],
        ["commit", "-b", "top.qcow2", "top.qcow2"],
        ["commit"],
        ["commit", "a", "b"],
        ["commit", "-t", "bogus", "top.qcow2"],
        ["commit", "-r", "x", "top.qcow2"],
        ["commit", "missing.qcow2"],
        ["commit", "-f", "raw", "top.qcow2"],
    ],
)
def test_commit_errors(twins: Twins, args: list[str]) -> None:
    build(twins, chain_cmds())
    out = twins.same(*args)
    assert out.returncode == 1
    assert_same_images(twins, "base.qcow2", "mid.qcow2", "top.qcow2")


def test_commit_then_check_with_raw_top_backing(twins: Twins) -> None:
    build(
        twins,
        [
            ["qemu-img", "create", "-q", "-f", "raw", "b.raw", "1M"],
            [W, "-f", "raw", "-c", "write -P 5 0 1M", "b.raw"],
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw"]
            + ["t.qcow2", "3M"],
            [W, "-c", "write -z 0 128k", "-c", "write -P 6 2M 64k", "t.qcow2"],
        ],
    )
    twins.same("commit", "t.qcow2")
    assert (twins.ours_dir / "b.raw").stat().st_size == 3 << 20
    assert_same_images(twins, "b.raw", "t.qcow2")
    assert_same_map(twins, "t.qcow2")
    assert_clean(twins, "t.qcow2")


# ----------------------------------------------------------------------
# rebase


def test_rebase_onto_image_of_the_chain(twins: Twins) -> None:
    build(twins, chain_cmds())
    twins.same("rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    assert_same_images(twins, "top.qcow2")
    assert_same_map(twins, "top.qcow2")
    twins.same("info", "top.qcow2")
    assert_clean(twins, "top.qcow2")


def test_rebase_onto_unrelated_image(twins: Twins) -> None:
    cmds = chain_cmds() + [
        ["qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "5M"],
        [W, "-c", "write -P 1 0 128k", "-c", "write -P 9 1M 1M", "-c", "write -P 7 3M 4k"]
        + ["other.qcow2"],
    ]
    build(twins, cmds)
    twins.same("rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2")
    assert_same_images(twins, "top.qcow2")
    assert_same_map(twins, "top.qcow2")
    twins.same("info", "top.qcow2")
    assert_clean(twins, "top.qcow2")


def test_rebase_flatten(twins: Twins) -> None:
    build(twins, chain_cmds())
    a, b = twins.run("rebase", "-p", "-b", "", "top.qcow2")
    # safe mode's progress steps are qemu-img's own
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    assert_same_images(twins, "top.qcow2")
    assert_same_map(twins, "top.qcow2")
    twins.same("info", "top.qcow2")
    assert_clean(twins, "top.qcow2")


@pytest.mark.parametrize(
    "args",
    [
        ["rebase", "-u", "-b", "elsewhere.qcow2", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-u", "-b", "", "mid.qcow2"],
        ["rebase", "-u", "-b", "base.qcow2", "-F", "raw", "top.qcow2"],
    ],
)
def test_rebase_unsafe_header(twins: Twins, args: list[str]) -> None:
    build(twins, chain_cmds())
    twins.same(*args)
    name = args[-1]
    twins.same("info", "-U", "--backing-chain", name)
    twins.same("info", "-U", "--output=json", "-f", "qcow2", name)
    assert (twins.ours_dir / name).read_bytes()[:65536] == (twins.ref_dir / name).read_bytes()[
        :65536
    ]
    # checking opens the backing file: give the renamed one a body
    tool(twins, twins.ours_dir, "create", "-q", "-f", "qcow2", "elsewhere.qcow2", "6M")
    assert_clean(twins, name)


@pytest.mark.parametrize(
    "args",
    [
        ["rebase", "top.qcow2"],
        ["rebase"],
        ["rebase", "-b", "base.qcow2", "top.qcow2"],
        ["rebase", "-u", "-b", "base.qcow2", "top.qcow2"],
        ["rebase", "-b", "nothere", "top.qcow2"],
        ["rebase", "-u", "-b", "base.qcow2", "-F", "foo", "top.qcow2"],
        ["rebase", "-b", "x", "-t", "bad", "top.qcow2"],
        ["rebase", "-b", "x", "-T", "bad", "top.qcow2"],
        ["rebase", "-u", "-b", "a" * 1100, "-F", "raw", "top.qcow2"],
        ["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "r.raw"],
        ["rebase", "-f", "raw", "-b", "base.qcow2", "-F", "qcow2", "r.raw"],
        ["rebase", "-p", "-u", "-b", "", "-f", "raw", "r.raw"],
    ],
)
def test_rebase_errors(twins: Twins, args: list[str]) -> None:
    build(twins, chain_cmds() + [["qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M"]])
    out = twins.same(*args)
    assert out.returncode == 1
    assert_same_images(twins, "top.qcow2", "r.raw")
    twins.same("info", "top.qcow2")


def test_rebase_header_full(twins: Twins) -> None:
    """A backing name that does not fit in the first cluster (512-byte clusters)."""
    build(
        twins,
        [
            ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "s.qcow2"]
            + ["1M"],
        ],
    )
    out = twins.same("rebase", "-u", "-b", "n" * 600, "-F", "raw", "s.qcow2")
    assert b"No space left in the file header" in out.stderr
    assert (twins.ours_dir / "s.qcow2").read_bytes() == (twins.ref_dir / "s.qcow2").read_bytes()


def test_differing_runs_matches_sector_model() -> None:
    """rebase's fast comparison equals a plain sector-by-sector comparison."""
    import random

    from pyqemu.img_tool.rebase import differing_runs

    def model(old: bytes, new: bytes) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for s in range(0, len(old), 512):
            e = min(len(old), s + 512)
            if old[s:e] != new[s:e]:
                if runs and sum(runs[-1]) == s:
                    runs[-1] = (runs[-1][0], e - runs[-1][0])
                else:
                    runs.append((s, e - s))
        return runs

    rng = random.Random(5)
    for _ in range(400):
        size = rng.choice([512 * rng.randrange(1, 400), rng.randrange(1, 200000)])
        old = bytearray(rng.randbytes(size)) if rng.random() < 0.5 else bytearray(size)
        new = bytearray(old)
        for _ in range(rng.randrange(0, 20)):
            a = rng.randrange(size)
            b = min(size, a + rng.choice([1, 10, 512, 700, 5000, 70000]))
            new[a:b] = rng.randbytes(b - a) if rng.random() < 0.7 else bytes(b - a)
        assert differing_runs(bytes(old), bytes(new)) == model(bytes(old), bytes(new))
