"""Issue 4, remaining bits: convert --salvage, -r rate limits, measure -l,
amend with internal snapshots and the full --help, each against qemu-img."""

from __future__ import annotations

import re

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
