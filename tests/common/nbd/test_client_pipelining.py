"""The nbd block driver keeps several callers' requests in flight on one
connection: one waiting caller reads the socket and hands each reply to its
caller. Against qemu-nbd and pyqemu-nbd: mixed reads (larger and smaller than
the receive size), writes, zero writes and block status from several threads
at once end with the image holding exactly what was written."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyqemu.common.block import open_image

from tests.servers import stop_all, unix_listening

SIZE = 16 << 20


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        stop_all(procs)


def start(kind: str, procs: list, tmp_path: Path, image: Path) -> str:
    sock = tmp_path / f"{kind}.sock"
    cmd = ["qemu-nbd"] if kind == "qemu" else [sys.executable, "-m", "pyqemu.nbd_server.main"]
    proc = subprocess.Popen([*cmd, "-k", str(sock), "-t", "-f", "raw", str(image)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    procs.append(proc)
    for _ in range(400):  # bounded: 20 s
        if sock.exists() and unix_listening(sock):
            return f"nbd+unix:///?socket={sock}"
        assert proc.poll() is None, f"{kind} exited"
        time.sleep(0.05)
    raise AssertionError("server socket never appeared")


@pytest.mark.parametrize("kind", ["qemu", "py"])
def test_threads_share_one_connection(tmp_path: Path, served: list, kind: str) -> None:
    image = tmp_path / f"{kind}.raw"
    initial = bytearray(os.urandom(SIZE))
    initial[12 << 20 : 14 << 20] = bytes(2 << 20)  # a zero stretch no one writes
    image.write_bytes(initial)
    uri = start(kind, served, tmp_path, image)
    expected = bytearray(initial)
    errors: list[str] = []
    node = open_image(uri, "raw", read_only=False)
    try:
        client = node.file.client  # raw over the nbd protocol node

        def worker(i: int) -> None:
            rng = random.Random(i)
            region = (i * 2) << 20  # each thread writes its own 2 MiB, below 12 MiB
            try:
                for j in range(12):
                    kind_ = j % 4
                    if kind_ == 0:  # a large read of the shared, never written stretch
                        off = 14 << 20
                        got = node.read(off, 1 << 20)
                        if got != bytes(initial[off : off + (1 << 20)]):
                            errors.append(f"{i}/{j} large read")
                    elif kind_ == 1:  # a write of its own region
                        n = rng.choice([4096, 65536, 700000])
                        off = region + rng.randrange(0, (2 << 20) - n)
                        data = os.urandom(n)
                        node.write(off, data)
                        expected[off : off + n] = data
                        if node.read(off, n) != data:
                            errors.append(f"{i}/{j} read back")
                    elif kind_ == 2:  # zeroes in its own region
                        off = region + rng.randrange(0, 1 << 20) // 512 * 512
                        node.write_zeroes(off, 8192)
                        expected[off : off + 8192] = bytes(8192)
                    else:  # small reads of the zero stretch, and its block status
                        if node.read((13 << 20) + 512 * j, 512) != bytes(512):
                            errors.append(f"{i}/{j} small read")
                        node.block_status(12 << 20, 2 << 20)
            except Exception as exc:  # reported below, with the thread
                errors.append(f"{i}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        node.flush()
        # requests of several callers were on the wire at once
        assert client.peak_in_flight >= 2
        assert hashlib.md5(node.read(0, SIZE)).hexdigest() == hashlib.md5(expected).hexdigest()
    finally:
        node.close()
    assert hashlib.md5(image.read_bytes()).hexdigest() == hashlib.md5(expected).hexdigest()
