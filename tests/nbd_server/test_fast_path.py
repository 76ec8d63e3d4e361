"""pyqemu-nbd's short paths for READ and WRITE (the engine's and the
session's) under a real client: libnbd with many requests in flight mixing
reads (with and without DF), writes (with and without FUA), flushes, zeroes,
trims, odd sizes and offsets, and requests at and past the end (those leave
the short path). Every read is checked against a model of the image, and the
image's final bytes too (qcow2: qemu-img check)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from .conftest import SYSTEM_PYTHON, env_clean, run, uri
from .test_tls import make_pki, tls_uri

#: argv: uri, seed, operations, depth. Prints the final model's path.
MIXED_CLIENT = r"""
import random
import sys
import nbd

uri, seed, ops, depth, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(seed)
h = nbd.NBD()
h.set_strict_mode(0)  # send requests past the end: the server must refuse them
h.connect_uri(uri)
size = h.get_size()
# bytes past the image (the raw export's tail up to 512) read as zero, writes drop
backed = int(sys.argv[6]) or size
model = bytearray(size)


def put(off, data):
    n = max(0, min(len(data), backed - off))
    model[off : off + n] = data[:n]


# the image starts as a pattern written once, so that reads see data
for off in range(0, size, 1 << 20):
    n = min(1 << 20, size - off)
    chunk = bytes((off + i) * 7 % 251 for i in range(n))
    h.pwrite(chunk, off)
    put(off, chunk)
pending = {}  # cookie -> (kind, off, n, buffer)
busy = []  # (off, end) of the requests in flight
counts = {"read": 0, "error": 0, "write": 0}


def complete():
    h.poll(-1)
    for c, (kind, off, n, buf) in list(pending.items()):
        try:
            if not h.aio_command_completed(c):
                continue
        except nbd.Error:
            assert kind == "bad", (kind, off, n)
            counts["error"] += 1
        else:
            assert kind != "bad", (off, n, size)
            if kind == "read":
                assert buf.to_bytearray() == model[off : off + n], (off, n)
                counts["read"] += 1
        del pending[c]
        busy.remove((off, off + n))


for i in range(ops):
    while len(pending) >= depth:
        complete()
    r = rnd.random()
    n = rnd.choice((1, 511, 512, 4096, 4096, 4096, 12345, 65536, 300000))
    off = rnd.randrange(0, size - n + 1)
    if rnd.random() < 0.5:
        off &= ~4095
    kind = "read"
    if r < 0.03:  # past the end, or crossing it: EINVAL, nothing changes
        off = size - n + rnd.choice((1, 4096, n))
        kind = "bad"
    elif overlaps := any(off < e and s < off + n for s, e in busy):
        continue
    busy.append((off, off + n))
    buf = None
    if kind == "bad":
        buf = nbd.Buffer(n)
        c = h.aio_pread(buf, off) if rnd.random() < 0.5 else h.aio_pwrite(buf, off)
    elif r < 0.45:
        buf = nbd.Buffer(n)
        c = h.aio_pread(buf, off, flags=nbd.CMD_FLAG_DF if rnd.random() < 0.3 else 0)
    elif r < 0.85:
        kind = "write"
        data = bytes([rnd.randrange(1, 256)]) * n
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        c = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if rnd.random() < 0.2 else 0)
        put(off, data)
        counts["write"] += 1
    elif r < 0.92:
        kind = "zero"
        c = h.aio_zero(n, off)
        put(off, bytes(n))
    elif r < 0.96:
        kind = "flush"
        c = h.aio_flush()
    else:
        kind = "cache"
        c = h.aio_cache(n, off)
    pending[c] = (kind, off, n, buf)
while pending:
    complete()
h.flush()
h.shutdown()
open(out, "wb").write(model)
print("ok", counts["read"], counts["error"], counts["write"])
"""


def mixed(tmp_path: Path, sock: str, seed: int, ops: int, depth: int,
          backed: int) -> tuple[bytes, list[int]]:  # fmt: skip
    script = tmp_path / "mixed_client.py"
    script.write_text(MIXED_CLIENT)
    model = tmp_path / f"model{seed}.bin"
    p = subprocess.run(
        [SYSTEM_PYTHON, str(script), uri(sock), str(seed), str(ops), str(depth), str(model),
         str(backed)],
        env=env_clean(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    word, *counts = p.stdout.split()
    assert word == "ok"
    return model.read_bytes(), [int(c) for c in counts]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_mixed_requests_in_flight(tmp_path, server, fmt) -> None:
    path = str(tmp_path / f"m.{fmt}")
    # a size that is not a multiple of 512: the raw export has a zero tail
    if fmt == "raw":
        with open(path, "wb") as fh:
            fh.truncate((6 << 20) + 1000)
    else:
        run("qemu-img", "create", "-q", "-f", fmt, path, str((6 << 20) + 1000))
    proc, sock = server("py", "-t", "-f", fmt, path)
    backed = (6 << 20) + 1000 if fmt == "raw" else 0
    model, (reads, errors, writes) = mixed(tmp_path, sock, 7, 3000, 32, backed)
    assert reads > 500 and writes > 500 and errors > 20
    raw = tmp_path / "out.raw"
    if fmt == "qcow2":
        check = json.loads(run("qemu-img", "check", "--output=json", path).stdout)
        assert check["check-errors"] == 0 and "leaks" not in check and "corruptions" not in check
    if fmt == "raw":
        assert Path(path).stat().st_size == backed  # never grown by the tail's writes
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, str(raw))
    image = raw.read_bytes()
    assert image == model[: len(image)]
    assert not any(model[len(image) :])  # the export's zero tail past the image


def _copy_out(uri_: str) -> bytes:
    return subprocess.run(["nbdcopy", uri_, "-"], capture_output=True, check=True,
                          timeout=120).stdout  # fmt: skip


@pytest.mark.parametrize("tls", [False, True])
def test_large_raw_reads(tmp_path, server, tls) -> None:
    """Large READs of a raw image (sent by os.sendfile from the host file on
    a plain socket, read into memory under TLS) with -o at an odd offset and
    a file size that is not a multiple of 512: nbdcopy's 256 KiB reads and
    libnbd's unaligned 300000-byte reads give the file's bytes, then zeroes."""
    data = random.Random(3).randbytes((5 << 20) + 777)
    path = tmp_path / "big.raw"
    path.write_bytes(data)
    skip = 4096 + 13
    want = data[skip:]
    want += bytes(-len(want) % 512)
    args = ["-t", "-r", "-o", str(skip), "-f", "raw", str(path)]
    if tls:
        pki = make_pki(tmp_path / "pki")
        args = ["--object", f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server",
                "--tls-creds", "tls0", *args]  # fmt: skip
    proc, sock = server("py", *args)
    u = tls_uri(sock, f"tls-certificates={pki['client']}") if tls else uri(sock)
    assert hashlib.sha256(_copy_out(u)).digest() == hashlib.sha256(want).digest()
    script = tmp_path / "reads.py"
    script.write_text(
        "import hashlib, sys, nbd\n"
        "h = nbd.NBD()\nh.set_uri_allow_local_file(True)\nh.connect_uri(sys.argv[1])\n"
        "out = [h.pread(300000, off) for off in range(1, h.get_size() - 300000, 299999)]\n"
        "out.append(h.pread(70000, h.get_size() - 70000))\n"
        "print(hashlib.sha256(b''.join(out)).hexdigest())\n"
    )
    got = subprocess.run([SYSTEM_PYTHON, str(script), u], env=env_clean(), capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    expect = [want[off : off + 300000] for off in range(1, len(want) - 300000, 299999)]
    expect.append(want[-70000:])
    assert got == hashlib.sha256(b"".join(expect)).hexdigest()
    proc.terminate()
    assert proc.wait(timeout=20) == 0


COW_CLIENT = r"""
import sys
import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
M = 1 << 20
assert h.pread(M, 0) == b"\x01" * M
h.pwrite(b"\x02" * M, M // 2)  # clusters shared with the snapshot move (COW)
got = h.pread(2 * M, 0)
assert got == b"\x01" * (M // 2) + b"\x02" * M + b"\x01" * (M // 2), "stale data"
assert h.pread(300000, M // 2 - 1000) == b"\x01" * 1000 + b"\x02" * 299000
h.shutdown()
print("ok")
"""


def test_large_qcow2_reads_follow_moved_clusters(tmp_path, server) -> None:
    """Large qcow2 READs (sent from the host file at the offset block status
    gives) after writes that move clusters shared with an internal snapshot:
    the new data, never the old clusters'; and a backing chain read whole
    equals qemu-img convert."""
    path = str(tmp_path / "s.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "4M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4M", path)
    run("qemu-img", "snapshot", "-c", "snap1", path)
    proc, sock = server("py", "-t", "-f", "qcow2", path)
    script = tmp_path / "cow.py"
    script.write_text(COW_CLIENT)
    out = subprocess.run([SYSTEM_PYTHON, str(script), uri(sock)], env=env_clean(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    check = json.loads(run("qemu-img", "check", "--output=json", path).stdout)
    assert check["check-errors"] == 0 and "leaks" not in check and "corruptions" not in check
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "6M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 3 0 6M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 4 1M 1M", "-c", "write -c -P 5 3M 64k", top)
    _, sock2 = server("py", "-t", "-r", "-f", "qcow2", top)
    raw = tmp_path / "top.raw"
    run("qemu-img", "convert", "-O", "raw", top, str(raw))
    assert (
        hashlib.sha256(_copy_out(uri(sock2))).digest() == hashlib.sha256(raw.read_bytes()).digest()
    )


def test_large_reads_go_through_blkdebug(tmp_path, server) -> None:
    """A raw image over blkdebug: block status reports the host file under
    blkdebug, but large READs must still go through blkdebug's rules (an
    injected EIO reaches the client), not be sent from that file."""
    path = tmp_path / "bd.raw"
    path.write_bytes(random.Random(4).randbytes(4 << 20))
    opts = ("driver=raw,file.driver=blkdebug,file.inject-error.0.event=read_aio,"
            f"file.inject-error.0.errno=5,file.image.filename={path}")  # fmt: skip
    _, sock = server("py", "-t", "-r", "--image-opts", opts)
    script = tmp_path / "bd.py"
    script.write_text(
        "import sys, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n"
        "for n in (4096, 300000, 1 << 20):\n"
        "    try:\n        h.pread(n, 0)\n        print('read', n)\n"
        "    except nbd.Error as exc:\n        print('EIO' if '(EIO)' in str(exc) else exc)\n"
    )
    out = subprocess.run([SYSTEM_PYTHON, str(script), uri(sock)], env=env_clean(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.split() == ["EIO", "EIO", "EIO"], (out.stdout, out.stderr)
