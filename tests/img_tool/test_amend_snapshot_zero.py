"""amend -o compat=0.10 on images whose internal snapshots hold zero clusters:
the result must be v2 and check clean under qemu-img, every snapshot must read
back as before the downgrade, and the output must be qemu-img's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import Twins

SIZE = "8M"

# qemu-io command lists run between snapshots; each case builds its chain with qemu tools
CASES = {
    # zero clusters written before the snapshot, the active image rewrites some of them
    "unallocated-zero": [["write -z 0 1M", "write -P 1 1M 1M"], ["write -P 2 0 64k"]],
    # no change after the snapshot: the L2 table is shared by the snapshot and the image
    "shared-l2": [["write -z 0 512k", "write -P 3 2M 128k"], []],
    # two snapshots of the same state (L2 refcount 3), then a preallocated zero cluster
    "two-snapshots": [["write -z 64k 256k", "write -P 4 4M 64k"], [],
                      ["write -P 5 4M 64k", "write -z 4M 64k"]],
    # zero clusters that keep their host cluster (write -z over allocated data)
    "allocated-zero": [["write -P 6 0 1M", "write -z 0 512k"], ["write -P 7 128k 64k"]],
    # a data cluster of s0 that the image then zeroes without unmapping: s1's zero
    # entry shares it with s0's data, which must survive (qemu-img 7.2 zeroes it)
    "zeroed-shared-data": [["write -P 8 0 128k"], ["write -z 0 64k"],
                           ["write -P 9 1M 64k"]],
}


def _build(folder: Path, steps: list[list[str]]) -> list[str]:
    img = folder / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), SIZE], check=True)
    names = []
    for i, cmds in enumerate(steps):
        if cmds:
            args = [a for c in cmds for a in ("-c", c)]
            subprocess.run(["qemu-io", *args, str(img)], check=True, capture_output=True)
        if i < len(steps) - 1:
            names.append(f"s{i}")
            subprocess.run(["qemu-img", "snapshot", "-c", f"s{i}", str(img)], check=True)
    return names


def _raw(folder: Path, snapshot: str | None) -> bytes:
    out = folder / "out.raw"
    snap = ["-l", snapshot] if snapshot else []
    subprocess.run(["qemu-img", "convert", *snap, "-O", "raw", "a.qcow2", str(out)],
                   cwd=folder, check=True)  # fmt: skip
    return out.read_bytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_downgrade_with_snapshot_zero_clusters(twins: Twins, case: str) -> None:
    names: list[str] = []
    twins.setup(lambda folder: names.extend(_build(folder, CASES[case])))
    snaps = [None, *dict.fromkeys(names)]
    before = {snap: _raw(twins.ours_dir, snap) for snap in snaps}
    twins.same("amend", "-o", "compat=0.10", "a.qcow2")
    check = subprocess.run(["qemu-img", "check", "a.qcow2"], cwd=twins.ours_dir,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    info = subprocess.run(["qemu-img", "info", "a.qcow2"], cwd=twins.ours_dir,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "compat: 0.10" in info.stdout
    for snap in snaps:
        assert _raw(twins.ours_dir, snap) == before[snap], snap
    # applying each snapshot with qemu-img keeps the image clean and its data right
    for snap in snaps[1:]:
        subprocess.run(["qemu-img", "snapshot", "-a", snap, "a.qcow2"], cwd=twins.ours_dir,
                       check=True)  # fmt: skip
        assert _raw(twins.ours_dir, None) == before[snap], snap
        check = subprocess.run(["qemu-img", "check", "a.qcow2"], cwd=twins.ours_dir,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout
