"""Fixtures for pyqemu-io: our binary under the name ``qemu-io``, and a golden runner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

#: the timing figures are the only thing allowed to differ
_TIMES = [
    (re.compile(r"[0-9:.]+ sec \([^)]*\)|[0-9]+:[0-9]{2}:[0-9.]+ \([^)]*\)"), "TIME"),
    (re.compile(r"^(\d+),(\d+),[0-9:.]+,[0-9.a-z]+,[0-9.a-z]+$", re.M), r"\1,\2,CTIME"),
]


def filter_times(text: str) -> str:
    for pattern, repl in _TIMES:
        text = pattern.sub(repl, text)
    return text


@pytest.fixture(scope="session")
def pyqemu_io() -> str:
    """Path of our pyqemu-io."""
    path = shutil.which("pyqemu-io", path=str(Path(sys.executable).parent)) or shutil.which(
        "pyqemu-io"
    )
    if path is None:
        pytest.fail("pyqemu-io is not installed (pip install -e .)")
    return path


@pytest.fixture(scope="session")
def our_qemu_io(pyqemu_io: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """pyqemu-io under the name qemu-io, so that messages carry the same prefix."""
    folder = tmp_path_factory.mktemp("bin")
    link = folder / "qemu-io"
    link.symlink_to(pyqemu_io)
    return str(link)


Golden = Callable[..., tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]]


@pytest.fixture
def golden(qemu_io: str, our_qemu_io: str, tmp_path: Path) -> Golden:
    """Run the same arguments through qemu-io and pyqemu-io on copies of ``files``
    (in folders ``ref`` and ``ours``) and assert equal stdout (timings filtered),
    stderr and exit code. Returns both results."""

    def run(
        files: list[Path], args: list[str], stdin: str | None = None, check_files: bool = True
    ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        results = []
        for name, binary in (("ref", qemu_io), ("ours", our_qemu_io)):
            folder = tmp_path / name
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            for f in files:
                shutil.copy(f, folder / f.name)
            # both run as plain "qemu-io" found on PATH: same argv[0], same messages
            path = os.path.dirname(binary) + os.pathsep + os.environ.get("PATH", "")
            env = dict(os.environ, TMPDIR=str(folder), PATH=path)
            results.append(
                subprocess.run(
                    ["qemu-io", *args],
                    cwd=folder,
                    input=stdin,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120,
                )
            )
        ref, ours = results
        assert filter_times(ours.stdout) == filter_times(ref.stdout)
        assert ours.stderr == ref.stderr
        assert ours.returncode == ref.returncode
        return ref, ours

    return run
