"""Helpers for tests that start server processes (NBD servers on unix sockets)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
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


def connect_unix(path: Path | str, proc: subprocess.Popen, timeout: float = 60) -> socket.socket:
    """A socket connected to the unix socket ``path`` that ``proc`` is about to
    listen on: retried until it connects, failing if ``proc`` exits or ``timeout``
    seconds pass; reads then time out after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            break
        except OSError:
            s.close()
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    s.settimeout(timeout)
    return s


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
