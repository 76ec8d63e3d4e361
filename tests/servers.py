"""Helpers for tests that start server processes (NBD servers on unix sockets)."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path


def unix_listening(path: Path | str) -> bool:
    """True once a connect to the unix socket ``path`` succeeds.

    qemu-nbd creates its socket file before it listens, so the file's existence
    proves nothing; a probe that connects and never negotiates does not count as a
    client for qemu-nbd or pyqemu-nbd."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def stop_all(procs: Iterable[subprocess.Popen]) -> None:
    """SIGTERM every live process, then reap each (SIGKILL after 10 s)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
