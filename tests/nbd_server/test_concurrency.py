"""pyqemu-nbd's per-connection worker pool: many requests in flight on one
connection (libnbd aio under the system python), several connections at once,
FLUSH ordering, and the same over TLS. Every test checks the image's bytes."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import SYSTEM_PYTHON, env_clean, run
from .test_tls import make_pki, tls_uri

MiB = 1 << 20

#: argv: uri, client index, clients, block size, depth, rounds[, seed: blocks in
#: a random order, a new one each round]
AIO_CLIENT = r"""
import random
import sys
import nbd

uri, idx, clients, bs, depth, rounds = sys.argv[1], *map(int, sys.argv[2:7])
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(uri)
size = h.get_size()
region = size // clients
base = idx * region
blocks = region // bs
order = []
shuffle = random.Random(int(sys.argv[7])) if len(sys.argv) > 7 else None


def pattern(block, rnd):
    return bytes([(idx * 37 + block * 7 + rnd) % 251 + 1]) * bs


def wait_all(pending):
    for _ in range(1000000):
        if not pending:
            return
        h.poll(-1)
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.remove(c)
    raise SystemExit("requests never completed")


def throttle(pending, depth):
    for _ in range(1000000):
        if len(pending) < depth:
            return
        h.poll(-1)
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.remove(c)
    raise SystemExit("requests never completed")


def tag_cb(tag):
    def cb(err):
        order.append(tag)
        return 0
    return cb


bufs = []
for rnd in range(rounds):
    pending = []
    # every block of the region, `depth` requests in flight, last round wins
    visit = list(range(blocks))
    if shuffle is not None:
        shuffle.shuffle(visit)
    for b in visit:
        throttle(pending, depth)
        buf = nbd.Buffer.from_bytearray(bytearray(pattern(b, rnd)))
        bufs.append(buf)
        pending.append(h.aio_pwrite(buf, base + b * bs, completion=tag_cb(("w", rnd, b))))
    # a FLUSH while writes are in flight: it is answered after them
    pending.append(h.aio_flush(completion=tag_cb(("f", rnd))))
    wait_all(pending)
    flush_at = order.index(("f", rnd))
    writes = [t for t in order[:flush_at] if t[0] == "w" and t[1] == rnd]
    assert len(writes) == blocks, (len(writes), blocks)
    bufs.clear()

# read everything back, many reads in flight, check each
reads = []
pending = []
for b in range(blocks):
    throttle(pending, depth)
    buf = nbd.Buffer(bs)
    reads.append((b, buf))
    pending.append(h.aio_pread(buf, base + b * bs))
wait_all(pending)
for b, buf in reads:
    assert buf.to_bytearray() == pattern(b, rounds - 1), b
h.shutdown()
print("ok", idx)
"""


def expected_image(size: int, clients: int, bs: int, rounds: int) -> bytes:
    out = bytearray(size)
    region = size // clients
    for idx in range(clients):
        for b in range(region // bs):
            off = idx * region + b * bs
            out[off : off + bs] = bytes([(idx * 37 + b * 7 + rounds - 1) % 251 + 1]) * bs
    return bytes(out)


def run_clients(tmp_path: Path, uri: str, clients: int, bs: int, depth: int, rounds: int,
                seed: int | None = None) -> None:  # fmt: skip
    extra = [] if seed is None else [str(seed)]
    script = tmp_path / "aio_client.py"
    script.write_text(AIO_CLIENT)
    procs = [
        subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(script),
                uri,
                str(i),
                str(clients),
                str(bs),
                str(depth),
                str(rounds),
                *extra,
            ],
            env=env_clean(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(clients)
    ]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == f"ok {i}"


def image_bytes(tmp_path: Path, path: str, fmt: str) -> bytes:
    if fmt == "raw":
        return Path(path).read_bytes()
    run("qemu-img", "check", path)
    raw = tmp_path / "out.raw"
    run("qemu-img", "convert", "-O", "raw", path, str(raw))
    return raw.read_bytes()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_many_in_flight_one_connection(tmp_path, server, fmt) -> None:
    path = str(tmp_path / f"d.{fmt}")
    run("qemu-img", "create", "-q", "-f", fmt, path, "8M")
    proc, sock = server("py", "-t", "-f", fmt, path)
    run_clients(tmp_path, f"nbd+unix:///?socket={sock}", 1, 64 * 1024, 64, 3)
    stop(proc)
    assert image_bytes(tmp_path, path, fmt) == expected_image(8 * MiB, 1, 64 * 1024, 3)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_several_connections_many_in_flight(tmp_path, server, fmt) -> None:
    path = str(tmp_path / f"d.{fmt}")
    run("qemu-img", "create", "-q", "-f", fmt, path, "16M")
    proc, sock = server("py", "-t", "-e", "4", "-f", fmt, path)
    run_clients(tmp_path, f"nbd+unix:///?socket={sock}", 4, 4096, 32, 2)
    stop(proc)
    assert image_bytes(tmp_path, path, fmt) == expected_image(16 * MiB, 4, 4096, 2)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_random_4k_writes_from_many_clients(tmp_path, server, fmt) -> None:
    """fio's randwrite pattern: 4K writes in a random order at queue depth 32
    from 4 connections (each its own blocks, every block twice): the image holds
    exactly the last round, qcow2 passes qemu-img check."""
    path = str(tmp_path / f"r.{fmt}")
    run("qemu-img", "create", "-q", "-f", fmt, path, "8M")
    proc, sock = server("py", "-t", "-e", "4", "-f", fmt, path)
    run_clients(tmp_path, f"nbd+unix:///?socket={sock}", 4, 4096, 32, 2, seed=5)
    stop(proc)
    if fmt == "qcow2":
        check = json.loads(run("qemu-img", "check", "--output=json", path).stdout)
        assert check["check-errors"] == 0 and "leaks" not in check and "corruptions" not in check
    assert image_bytes(tmp_path, path, fmt) == expected_image(8 * MiB, 4, 4096, 2)


def test_large_reads_and_writes_do_not_interleave(tmp_path, server) -> None:
    """Big payloads both ways at once: a reply's bytes are never split by another's."""
    path = str(tmp_path / "big.raw")
    run("qemu-img", "create", "-q", "-f", "raw", path, "32M")
    proc, sock = server("py", "-t", "-e", "2", "-f", "raw", path)
    run_clients(tmp_path, f"nbd+unix:///?socket={sock}", 2, 2 * MiB, 8, 2)
    out = subprocess.run(
        ["nbdcopy", f"nbd+unix:///?socket={sock}", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    stop(proc)
    want = expected_image(32 * MiB, 2, 2 * MiB, 2)
    assert hashlib.sha256(out).digest() == hashlib.sha256(want).digest()
    assert Path(path).read_bytes() == want


def test_in_flight_over_tls(tmp_path, server) -> None:
    pki = make_pki(tmp_path / "pki")
    path = str(tmp_path / "t.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
    proc, sock = server("py", "-t", "-e", "2", "-f", "qcow2",
                        "--object", f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server",
                        "--tls-creds", "tls0", path)  # fmt: skip
    uri = tls_uri(sock, f"tls-certificates={pki['client']}")
    run_clients(tmp_path, uri, 2, 64 * 1024, 32, 2)
    stop(proc)
    assert image_bytes(tmp_path, path, "qcow2") == expected_image(8 * MiB, 2, 64 * 1024, 2)


#: argv: uri, seed, requests. A bulk writer's stream broken by everything
#: else: WRITEs of 256 KiB in a row (the reader then reads the next request
#: sized for one more), mixed with WRITEs of other sizes, down to 1 byte,
#: zeroes, trims, reads and flushes, up to 8 in flight, each in a 1 MiB slot
#: of its own (requests in flight never overlap, so the model is exact)
MIXED_CLIENT = r"""
import random
import sys
import nbd

uri, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
model = bytearray(h.pread(size, 0))
slots = size >> 20
busy = {}  # cookie -> (slot, check)
sizes = [262144] * 6 + [65536, 100003, 4096, 1, 262144 + 512]


def reap(block):
    while busy:
        if block:
            h.poll(-1)
        done = [c for c in busy if h.aio_command_completed(c)]
        for c in done:
            check = busy.pop(c)[1]
            if check is not None:
                check()
        if done or not block:
            return


for i in range(count):
    while len(busy) >= 8:
        reap(True)
    free = [s for s in range(slots) if s not in {v[0] for v in busy.values()}]
    slot = rng.choice(free)
    r = rng.random()
    n = rng.choice(sizes) if r < 0.8 else rng.randrange(1, 300000)
    n = min(n, 1 << 20)
    off = (slot << 20) + rng.randrange((1 << 20) - n + 1)
    if r < 0.8:
        data = rng.randbytes(n)
        model[off : off + n] = data
        c = h.aio_pwrite(data, off)
        check = None
    elif r < 0.85:
        model[off : off + n] = bytes(n)
        c = h.aio_zero(n, off)
        check = None
    elif r < 0.9:
        buf = nbd.Buffer(n)
        want = bytes(model[off : off + n])
        def check(buf=buf, want=want, off=off):
            assert buf.to_bytearray() == want, off
        c = h.aio_pread(buf, off)
    elif r < 0.95:
        c = h.aio_flush()
        check = None
    else:
        c = h.aio_cache(n, off)
        check = None
    busy[c] = (slot, check)
reap(True)
assert h.pread(size, 0) == model
sys.stdout.buffer.write(bytes(model))
h.shutdown()
"""


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bulk_writes_mixed_with_other_requests(tmp_path, server, fmt) -> None:
    path = str(tmp_path / f"d.{fmt}")
    run("qemu-img", "create", "-q", "-f", fmt, path, "16M")
    proc, sock = server("py", "-t", "-f", fmt, path)
    script = tmp_path / "mixed.py"
    script.write_text(MIXED_CLIENT)
    res = subprocess.run(
        [SYSTEM_PYTHON, str(script), f"nbd+unix:///?socket={sock}", "7", "1500"],
        env=env_clean(), capture_output=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    stop(proc)
    assert len(res.stdout) == 16 * MiB
    assert image_bytes(tmp_path, path, fmt) == res.stdout
