"""Fixtures: pyqemu-nbd and qemu-nbd on unix sockets in tmp_path, always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import stop_all, unix_listening

PEERS = ("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "nbdsh")
SYSTEM_PYTHON = "/usr/bin/python3"


def pyqemu_nbd() -> list[str]:
    return [sys.executable, "-m", "pyqemu.nbd_server.main"]


@pytest.fixture(scope="session", autouse=True)
def _peers() -> None:
    missing = [p for p in PEERS if shutil.which(p) is None]
    if missing:
        pytest.fail(f"missing peer tools: {missing}")


def _wait_socket(proc: subprocess.Popen, path: Path) -> None:
    for _ in range(400):  # bounded: 20 s
        if path.exists() and unix_listening(path):
            return
        if proc.poll() is not None:
            out = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"server exited early ({proc.returncode}): {out}")
        time.sleep(0.05)
    raise RuntimeError("server socket never appeared")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """server(kind, *args) -> (process, socket path); kind is "py" or "qemu"."""
    procs: list[subprocess.Popen] = []
    count = [0]

    def start(kind: str, *args: str) -> tuple[subprocess.Popen, str]:
        count[0] += 1
        sock = tmp_path / f"{kind}{count[0]}.sock"
        cmd = pyqemu_nbd() if kind == "py" else ["qemu-nbd"]
        proc = subprocess.Popen([*cmd, "-k", str(sock), *args], stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        _wait_socket(proc, sock)
        return proc, str(sock)

    try:
        yield start
    finally:
        stop_all(procs)
        for p in procs:
            if p.stderr:
                p.stderr.close()


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=120, **kw)


def uri(sock: str, name: str = "") -> str:
    return f"nbd+unix:///{name}?socket={sock}"


def env_clean() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
