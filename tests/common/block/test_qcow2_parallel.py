"""qcow2 writes split for threads: reserve_write / complete_write / cancel_write.

Clusters are reserved under the driver lock, the data is written with no lock
held, and the L2 entries are installed afterwards. Checked here: content
against a model after many threads write at once, ``qemu-img check`` finds
neither corruption nor leaks, requests that do not qualify are refused,
overlapping requests wait for each other, and a SIGKILL in the middle of
concurrent writes leaves at most leaked clusters.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pyqemu.common.block import create_image, open_image
from pyqemu.common.block.errors import InvalidRequest

MiB = 1 << 20


def _check(qemu_img: str, path: Path) -> dict:
    r = subprocess.run(
        [qemu_img, "check", "--output=json", str(path)], capture_output=True, text=True
    )
    info = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    return info


def _in_threads(work, count: int = 4) -> None:
    """Run ``work(k)`` for k in range(count), each in a thread, all at once;
    re-raise the first failure."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize(
    "options, size",
    [
        ({}, 8 * MiB),
        ({"cluster_size": "4k"}, 4 * MiB + 4096 * 3 + 512),
        ({"extended_l2": "on"}, 8 * MiB),
        ({"cluster_size": "512", "refcount_bits": "1"}, 2 * MiB),
        ({"compat": "0.10"}, 8 * MiB),
    ],
)
def test_threads_write_whole_clusters(
    tmp_path: Path, qemu_img: str, options: dict[str, str], size: int
) -> None:
    path = tmp_path / "t.qcow2"
    create_image(str(path), "qcow2", size, options)
    model = bytearray(size)
    img = open_image(str(path), fmt="qcow2", read_only=False)
    cs = img.cluster_size
    # disjoint cluster-aligned pieces, the last one ending at the image end
    rng = random.Random(size)
    pieces = []
    pos = 0
    while pos < size:
        n = min(size - pos, rng.choice([1, 2, 5, 17, 40]) * cs)
        if rng.random() < 0.8:
            pieces.append((pos, rng.randbytes(n)))
        pos += n
    rng.shuffle(pieces)
    for off, data in pieces:
        model[off : off + len(data)] = data

    def worker(k: int) -> None:
        for off, data in pieces[k::4]:
            extents = img.reserve_write(off, len(data))
            assert extents is not None
            img.complete_write(extents, data)

    _in_threads(worker)
    assert img.read(0, size) == bytes(model)
    img.close()
    info = _check(qemu_img, path)
    assert info.get("corruptions", 0) == 0 and info.get("leaks", 0) == 0
    img = open_image(str(path), fmt="qcow2")
    assert img.read(0, size) == bytes(model)
    img.close()


def test_refused_requests(tmp_path: Path) -> None:
    path = tmp_path / "t.qcow2"
    create_image(str(path), "qcow2", 4 * MiB, {})
    with open_image(str(path), fmt="qcow2", read_only=False) as img:
        cs = img.cluster_size
        assert img.reserve_write(512, cs) is None  # not cluster aligned
        assert img.reserve_write(0, cs + 512) is None  # does not end on a cluster
        img.write(cs, b"x" * cs)
        assert img.reserve_write(0, 3 * cs) is None  # cluster 1 is allocated
        img.write_compressed(4 * cs, bytes(cs))
        assert img.reserve_write(4 * cs, cs) is None  # compressed
        img.write_zeroes(8 * cs, cs)
        extents = img.reserve_write(8 * cs, cs)  # a zero cluster qualifies
        assert extents is not None
        img.complete_write(extents, b"z" * cs)
        assert img.read(8 * cs, cs) == b"z" * cs
        # write_concurrent falls back to a plain write when it must
        img.write_concurrent(512, b"y" * 100)
        assert img.read(512, 100) == b"y" * 100


def test_cancel_and_failed_write_leak_nothing(tmp_path: Path, qemu_img: str) -> None:
    path = tmp_path / "t.qcow2"
    create_image(str(path), "qcow2", 4 * MiB, {})
    with open_image(str(path), fmt="qcow2", read_only=False) as img:
        cs = img.cluster_size
        extents = img.reserve_write(0, 4 * cs)
        assert extents is not None
        img.cancel_write(extents)
        extents = img.reserve_write(0, 4 * cs)
        assert extents is not None
        with pytest.raises(InvalidRequest):
            img.complete_write(extents, b"short")  # does not match: cancelled
        assert img.read(0, 4 * cs) == bytes(4 * cs)
        img.write_concurrent(0, b"a" * cs)
    info = _check(qemu_img, path)
    assert info.get("corruptions", 0) == 0 and info.get("leaks", 0) == 0


def test_overlapping_write_waits_for_reservation(tmp_path: Path, qemu_img: str) -> None:
    """A plain write over clusters whose reserved data is in flight runs after
    the reservation completes: its data wins and no cluster leaks."""
    path = tmp_path / "t.qcow2"
    create_image(str(path), "qcow2", 4 * MiB, {})
    with open_image(str(path), fmt="qcow2", read_only=False) as img:
        cs = img.cluster_size
        extents = img.reserve_write(0, 2 * cs)
        assert extents is not None
        results: list[BaseException | None] = []

        def later() -> None:
            try:
                img.write(cs // 2, b"w" * cs)
                img.write_zeroes(0, 512)
                results.append(None)
            except BaseException as exc:  # pragma: no cover
                results.append(exc)

        t = threading.Thread(target=later)
        t.start()
        img.complete_write(extents, b"r" * (2 * cs))
        t.join()
        assert results == [None]
        expect = bytearray(b"r" * (2 * cs))
        expect[cs // 2 : cs // 2 + cs] = b"w" * cs
        expect[:512] = bytes(512)
        assert img.read(0, 2 * cs) == bytes(expect)
    info = _check(qemu_img, path)
    assert info.get("corruptions", 0) == 0 and info.get("leaks", 0) == 0


CHILD = r"""
import random, sys, threading
from pyqemu.common.block import open_image
path, seed = sys.argv[1], int(sys.argv[2])
img = open_image(path, fmt="qcow2", read_only=False)
size, cs = img.size, img.cluster_size
lock = threading.Lock()
def worker(k):
    rng = random.Random(seed * 10 + k)
    while True:
        off = rng.randrange(size // cs) * cs
        n = min(size - off, rng.randrange(1, 20) * cs)
        r = rng.random()
        if r < 0.7:
            img.write_concurrent(off, rng.randbytes(n))
        elif r < 0.8:
            img.write(off + 100, rng.randbytes(n // 2))
        elif r < 0.9:
            img.write_zeroes(off, n, may_unmap=True)
        else:
            img.flush()
img.write(0, b"x" * cs)
ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(3)]
for t in ts:
    t.start()
print("ready", flush=True)
for t in ts:
    t.join()
"""


@pytest.mark.parametrize("seed", range(6))
def test_crash_during_concurrent_writes(tmp_path: Path, qemu_img: str, seed: int) -> None:
    path = tmp_path / "c.qcow2"
    opts = [{}, {"cluster_size": "4k"}, {"extended_l2": "on"}][seed % 3]
    create_image(str(path), "qcow2", 16 * MiB, opts)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    time.sleep(random.Random(seed).uniform(0.01, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(
        [qemu_img, "check", "--output=json", str(path)], capture_output=True, text=True
    )
    info = json.loads(r.stdout)
    assert info.get("corruptions", 0) == 0, r.stdout + r.stderr
    with open_image(str(path), fmt="qcow2") as img:
        img.read(0, img.size)


# --- writes to clusters the image owns: the data goes without the lock ------


@pytest.mark.parametrize("options", [{}, {"cluster_size": "4k"}, {"compat": "0.10"}])
def test_threads_rewrite_owned_clusters(tmp_path: Path, qemu_img: str, options: dict) -> None:
    """Four threads, each in a region of its own: unaligned rewrites of
    allocated clusters (the in-place path, data written without the lock)
    mixed with discards, zeroings and writes that free and allocate clusters
    anywhere in the file. Each region ends as its thread's model; the image
    checks clean; a persistent dirty bitmap holds every write (marked under
    the lock: no bit lost to a concurrent read-modify-write)."""
    path = tmp_path / "t.qcow2"
    size = 8 * MiB
    create_image(str(path), "qcow2", size, options)
    if options.get("compat") != "0.10":
        subprocess.run([qemu_img, "bitmap", "--add", "-g", "4k", str(path), "b0"], check=True)
    img = open_image(str(path), fmt="qcow2", read_only=False)
    fill = random.Random(1).randbytes(size)
    img.write(0, fill)
    model = bytearray(fill)
    region = size // 4
    touched: list[tuple[int, int]] = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        base = k * region
        for _ in range(300):
            off = base + rng.randrange(region - 1)
            n = min(base + region - off, rng.randrange(1, 3 * img.cluster_size))
            r = rng.random()
            if r < 0.8:
                data = rng.randbytes(n)
                img.write(off, data)
                model[off : off + n] = data
            elif r < 0.9:
                img.write_zeroes(off, n, may_unmap=True)
                model[off : off + n] = bytes(n)
            else:
                img.discard(off, n)  # whole clusters inside read as zero
                model[off : off + n] = img.read(off, n)  # its own region: stable
            touched.append((off, n))

    _in_threads(worker)
    assert img.read(0, size) == bytes(model)
    bitmaps = img.bitmaps.bitmaps if img.bitmaps is not None else []
    assert len(bitmaps) == (0 if options.get("compat") == "0.10" else 1)
    for bm in bitmaps:
        for off, n in touched:
            first, last = off >> 12, (off + n - 1) >> 12
            assert all(bm.bits[g >> 3] >> (g & 7) & 1 for g in range(first, last + 1))
    img.close()
    info = _check(qemu_img, path)
    assert info.get("corruptions", 0) == 0 and info.get("leaks", 0) == 0
    with open_image(str(path), fmt="qcow2") as again:
        assert again.read(0, size) == bytes(model)


def test_discard_waits_for_in_place_write(tmp_path: Path, qemu_img: str) -> None:
    """A rewrite of owned clusters holds its range in flight, not the lock:
    stopped at its data write (a blkdebug breakpoint), a write elsewhere
    still completes, while a discard of its clusters waits until it is done
    (else the freed cluster could be handed to another guest offset and
    receive this write's data)."""
    path = tmp_path / "t.qcow2"
    create_image(str(path), "qcow2", 4 * MiB, {})
    with open_image(str(path), fmt="qcow2", read_only=False) as img:
        cs = img.cluster_size
        img.write(0, b"a" * (4 * cs))
    img = open_image(f"blkdebug::{path}", fmt="qcow2", read_only=False)
    bd = img.file
    try:
        bd.debug_breakpoint("write_aio", "W")
        done: list[str] = []
        writer = threading.Thread(target=lambda: (img.write(100, b"w" * cs), done.append("w")))
        writer.start()
        deadline = time.monotonic() + 10
        while not bd.debug_is_suspended("W"):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        other = threading.Thread(target=lambda: img.write(3 * cs, b"o" * 512))
        other.start()
        other.join(10)
        assert not other.is_alive()  # another cluster: the lock is free
        discard = threading.Thread(target=lambda: (img.discard(0, 2 * cs), done.append("d")))
        discard.start()
        time.sleep(0.1)
        assert done == []  # the discard waits for the write in flight
        bd.debug_resume("W")
        writer.join(10)
        discard.join(10)
        assert done == ["w", "d"]
        assert img.read(0, 2 * cs) == bytes(2 * cs)
        assert img.read(2 * cs, cs) == b"a" * cs
        assert img.read(3 * cs, 512) == b"o" * 512
    finally:
        img.close()
    info = _check(qemu_img, path)
    assert info.get("corruptions", 0) == 0 and info.get("leaks", 0) == 0
