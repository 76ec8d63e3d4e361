"""Probe: can an io_uring write overlap the next read?

    python3 benchmarks/probe_uring_overlap.py [--size 2G] [--repeat 4]

Not a side-by-side benchmark, and not what pyqemu-nbd does: it measures, outside
the server, an idea for its sequential-write gap. Built into the server the
ring gained nothing there (the kernel worker's wake-ups cost what the copy
saved), and reading ahead of the write closed the gap instead; both are in
docs/benchmarks.md. A child process
sends ``--size`` bytes over a unix socket pair in 256 KiB pieces (as nbdcopy's
WRITE payloads); the parent receives each into a buffer and writes it into a
file that already holds data (page cache warm, ``sync`` before each run),
either

* ``sync``: ``os.pwrite``, then the next receive (as pyqemu-nbd's reader
  writes inline), or
* ``uring``: an ``IORING_OP_WRITE`` with ``IOSQE_ASYNC`` (a kernel worker
  does the copy into the page cache) and straight on to the next receive,
  with 8 buffers in turn; completions are collected without a syscall.

The two alternate, ``--repeat`` times each; prints MiB/s and the process's CPU
seconds (the kernel's io_uring workers count as its threads). The ring is set
up through ctypes (io_uring_setup / io_uring_enter and the mmapped rings),
x86-64 syscall numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import socket
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_size  # noqa: E402

SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
IORING_OP_WRITE = 23
IOSQE_ASYNC = 1 << 4
IORING_ENTER_GETEVENTS = 1
IORING_OFF_SQES = 0x10000000
PIECE = 256 << 10
BUFFERS = 8
_libc = ctypes.CDLL(None, use_errno=True)


class Ring:
    """A minimal io_uring: one submission at a time, completions polled."""

    def __init__(self, entries: int = 64) -> None:
        params = ctypes.create_string_buffer(120)
        fd = _libc.syscall(SYS_IO_URING_SETUP, entries, params)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
        self.fd = fd
        sq_entries, cq_entries = struct.unpack_from("<2I", params.raw, 0)
        # io_sqring_offsets: head tail ring_mask ring_entries flags dropped array
        self.sq = struct.unpack_from("<7I", params.raw, 40)
        # io_cqring_offsets: head tail ring_mask ring_entries overflow cqes
        self.cq = struct.unpack_from("<6I", params.raw, 80)
        size = max(self.sq[6] + sq_entries * 4, self.cq[5] + cq_entries * 16)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        self.ring = mmap.mmap(fd, size, flags, prot, offset=0)  # one mmap: FEAT_SINGLE_MMAP
        self.sqes = mmap.mmap(fd, sq_entries * 64, flags, prot, offset=IORING_OFF_SQES)
        self.sq_mask = struct.unpack_from("<I", self.ring, self.sq[2])[0]
        self.cq_mask = struct.unpack_from("<I", self.ring, self.cq[2])[0]
        self.pending = 0

    def write(self, fd: int, addr: int, length: int, offset: int, tag: int) -> None:
        """Queue a write of ``length`` bytes at ``addr`` to ``fd`` at ``offset``."""
        tail = struct.unpack_from("<I", self.ring, self.sq[1])[0]
        i = tail & self.sq_mask
        struct.pack_into(
            "<BBHiQQIIQ", self.sqes, i * 64,
            IORING_OP_WRITE, IOSQE_ASYNC, 0, fd, offset, addr, length, 0, tag,
        )  # fmt: skip
        struct.pack_into("<I", self.ring, self.sq[6] + i * 4, i)
        struct.pack_into("<I", self.ring, self.sq[1], tail + 1)  # x86: stores stay in order
        if _libc.syscall(SYS_IO_URING_ENTER, self.fd, 1, 0, 0, None, 0) < 0:
            raise OSError(ctypes.get_errno(), "io_uring_enter")
        self.pending += 1

    def reap(self, wait: bool) -> list[tuple[int, int]]:
        """(tag, result) of the writes completed; with ``wait``, at least one."""
        out: list[tuple[int, int]] = []
        while not out:
            head = struct.unpack_from("<I", self.ring, self.cq[0])[0]
            tail = struct.unpack_from("<I", self.ring, self.cq[1])[0]
            while head != tail:
                at = self.cq[5] + (head & self.cq_mask) * 16
                tag, res = struct.unpack_from("<Qi", self.ring, at)
                out.append((tag, res))
                head += 1
            struct.pack_into("<I", self.ring, self.cq[0], head)
            self.pending -= len(out)
            if out or not wait or not self.pending:
                break
            _libc.syscall(SYS_IO_URING_ENTER, self.fd, 0, 1, IORING_ENTER_GETEVENTS, None, 0)
        return out

    def close(self) -> None:
        self.sqes.close()
        self.ring.close()
        os.close(self.fd)


def run(mode: str, path: str, pieces: int) -> tuple[float, float]:
    """One run: (MiB/s, CPU seconds of this process)."""
    os.sync()
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the client
        a.close()
        data = os.urandom(PIECE)
        for _ in range(pieces):
            b.sendall(data)
        b.recv(1)
        os._exit(0)
    b.close()
    fd = os.open(path, os.O_WRONLY)
    ring = Ring() if mode == "uring" else None
    bufs = [bytearray(PIECE) for _ in range(BUFFERS)]
    addrs = [ctypes.addressof((ctypes.c_char * PIECE).from_buffer(x)) for x in bufs]
    free = list(range(BUFFERS))
    t0, c0 = time.perf_counter(), os.times()
    for i in range(pieces):
        k = 0
        if ring is not None:
            while not free:
                for tag, res in ring.reap(wait=True):
                    assert res == PIECE, res
                    free.append(tag)
            k = free.pop()
        view = memoryview(bufs[k])
        got = 0
        while got < PIECE:
            got += a.recv_into(view[got:], PIECE - got)
        if ring is None:
            os.pwrite(fd, view, i * PIECE)
        else:
            ring.write(fd, addrs[k], PIECE, i * PIECE, k)
            for tag, res in ring.reap(wait=False):
                assert res == PIECE, res
                free.append(tag)
    while ring is not None and ring.pending:
        for _, res in ring.reap(wait=True):
            assert res == PIECE, res
    dt, c1 = time.perf_counter() - t0, os.times()
    a.send(b"x")
    os.waitpid(pid, 0)
    os.close(fd)
    if ring is not None:
        ring.close()
    return pieces * PIECE / dt / (1 << 20), (c1.user + c1.system) - (c0.user + c0.system)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2G")
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    pieces = parse_size(args.size) // PIECE
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        path = os.path.join(tmp, "target.raw")
        with open(path, "wb") as f:
            for _ in range(pieces):
                f.write(os.urandom(PIECE))
        results: dict[str, list[tuple[float, float]]] = {"sync": [], "uring": []}
        for _ in range(args.repeat):
            for mode in results:
                results[mode].append(run(mode, path, pieces))
    for mode, rs in results.items():
        mib = [round(r[0]) for r in rs]
        cpu = statistics.median(r[1] for r in rs)
        print(f"{mode:5s} median {statistics.median(mib):.0f} MiB/s {mib} CPU {cpu:.2f} s")


if __name__ == "__main__":
    main()
