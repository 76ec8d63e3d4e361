"""Shared fixtures: paths to the real QEMU tools (the reference) and to ours.

A missing reference tool is a failure, never a skip: the test command installs
them (see README), and CI must run against them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"required peer tool '{tool}' is not installed (run the README's test command)")
    return path


@pytest.fixture(scope="session")
def qemu_img() -> str:
    """Path of the real qemu-img."""
    return _require("qemu-img")


@pytest.fixture(scope="session")
def qemu_io() -> str:
    """Path of the real qemu-io."""
    return _require("qemu-io")


@pytest.fixture(scope="session")
def pyqemu_img() -> list[str]:
    """Command prefix that runs our pyqemu-img."""
    path = shutil.which("pyqemu-img", path=str(Path(sys.executable).parent)) or shutil.which(
        "pyqemu-img"
    )
    if path is None:
        pytest.fail("pyqemu-img is not installed (pip install -e .)")
    return [path]


def run(cmd: list[str], check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command and capture text output."""
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)  # type: ignore[call-overload]
