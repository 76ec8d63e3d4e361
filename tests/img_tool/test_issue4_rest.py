"""Issue 4, remaining bits: convert --salvage, -r rate limits, measure -l,
amend with internal snapshots and the full --help, each against qemu-img."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import Twins


def _lines_except_version_and_formats(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if " version " not in line and not line.startswith("Supported formats:")
    ]


def test_help_is_qemu_img_help(twins: Twins) -> None:
    a, b = twins.run("--help")
    assert a.returncode == b.returncode == 0
    ours = _lines_except_version_and_formats(a.stdout.decode())
    ref = _lines_except_version_and_formats(b.stdout.decode())
    assert ours == ref
    syntax = [line.split()[0] for line in ours if re.match(r"  [a-z]+ [\[(-]", line)]
    for command in ("amend", "bench", "bitmap", "commit", "dd", "measure", "rebase", "snapshot"):
        assert command in syntax


def _two_snapshots(folder: Path) -> None:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    sh("qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
    sh("qemu-io", "-c", "write -P 1 0 8M", "a.qcow2")
    sh("qemu-img", "snapshot", "-c", "s1", "a.qcow2")
    sh("qemu-io", "-c", "write -P 2 8M 16M", "-c", "write -z 0 4M", "a.qcow2")
    sh("qemu-img", "resize", "-q", "a.qcow2", "128M")
    sh("qemu-img", "snapshot", "-c", "s2", "a.qcow2")
    sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")


def test_measure_snapshot(twins: Twins) -> None:
    twins.setup(_two_snapshots)
    params = (
        "s1",
        "1",
        "s2",
        "snapshot.id=1",
        "snapshot.name=s2",
        "snapshot.id=1,snapshot.name=s1",
        "snapshot.id=2,snapshot.name=s1",
        "snapshot.id=",
        "nosuch",
        "snapshot.foo=1",
    )
    required = set()
    for param in params:
        for extra in (
            [],
            ["-O", "qcow2"],
            ["--output=json", "-O", "qcow2", "-o", "cluster_size=4k"],
        ):
            out = twins.same("measure", *extra, "-l", param, "a.qcow2")
            if extra and out.returncode == 0:
                required.add(out.stdout.split()[2 if not extra[0].startswith("--") else 4])
    assert len(required) >= 2  # the snapshots really differ
    twins.same("measure", "-l", "s1", "r.raw")
    twins.same("measure", "-l", "s1", "-O", "qcow2", "r.raw")
    twins.same("measure", "-l", "s1", "--size", "1M")
