"""Fixtures for pyqemu-img tests: run our tool and qemu-img side by side.

Ours runs through a wrapper named ``qemu-img`` so that the program-name prefix
of every message is the same and outputs compare byte for byte. Commands that
write run in two twin folders (``ours/`` and ``ref/``) prepared identically,
so file names in the output are the same too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


class Twins:
    """Two folders with the same images; run a command in each with each tool."""

    def __init__(self, root: Path, ours: str, ref: str, qemu_io: str) -> None:
        self.ours_dir = root / "ours"
        self.ref_dir = root / "ref"
        self.ours_dir.mkdir()
        self.ref_dir.mkdir()
        self.ours = ours
        self.ref = ref
        self.qemu_io = qemu_io

    def setup(self, fn: Callable[[Path], None]) -> None:
        """Prepare both folders the same way (``fn(folder)``)."""
        fn(self.ours_dir)
        fn(self.ref_dir)

    def shell(self, *cmds: list[str]) -> None:
        """Run commands (with qemu-img / qemu-io, never ours) in both folders."""
        for folder in (self.ours_dir, self.ref_dir):
            for cmd in cmds:
                tool = {"qemu-img": self.ref, "qemu-io": self.qemu_io}.get(cmd[0], cmd[0])
                subprocess.run([tool, *cmd[1:]], cwd=folder, check=True, capture_output=True)

    def run(self, *args: str) -> tuple[subprocess.CompletedProcess[bytes], ...]:
        """Run ``args`` with ours in ``ours/`` and qemu-img in ``ref/``."""
        a = subprocess.run([self.ours, *args], cwd=self.ours_dir, capture_output=True)
        b = subprocess.run([self.ref, *args], cwd=self.ref_dir, capture_output=True)
        return a, b

    def same(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run with both and assert stdout, stderr and exit code are identical."""
        a, b = self.run(*args)
        assert (a.returncode, a.stdout.decode(), a.stderr.decode()) == (
            b.returncode,
            b.stdout.decode(),
            b.stderr.decode(),
        ), args
        assert b"Traceback" not in a.stderr
        return a


@pytest.fixture
def ours(tmp_path: Path, pyqemu_img: list[str]) -> str:
    """Our tool under the program name ``qemu-img``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    path = folder / "qemu-img"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nfrom pyqemu.img_tool.main import main\nmain()\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def twins(tmp_path: Path, ours: str, qemu_img: str, qemu_io: str) -> Twins:
    return Twins(tmp_path, ours, qemu_img, qemu_io)


def digest(path: Path) -> tuple[int, int, bytes]:
    """Size, mtime and content hash: proves a file was not modified."""
    import hashlib

    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).digest()
