"""pyqemu-nbd against real clients, side by side with qemu-nbd."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import SYSTEM_PYTHON, env_clean, pyqemu_nbd, run, uri


def img(tmp_path: Path, name: str, *create: str) -> str:
    path = str(tmp_path / name)
    run("qemu-img", "create", "-q", *create[:-1], path, create[-1])
    return path


def io(path: str, fmt: str, *cmds: str) -> None:
    args = []
    for c in cmds:
        args += ["-c", c]
    run("qemu-io", "-f", fmt, *args, path)


def md5_nbd(sock: str, name: str = "") -> str:
    out = subprocess.run(
        ["nbdcopy", uri(sock, name), "-"], capture_output=True, check=True, timeout=120
    )
    return hashlib.md5(out.stdout).hexdigest()


def md5_convert(tmp_path: Path, path: str, *extra: str) -> str:
    out = str(tmp_path / "conv.raw")
    run("qemu-img", "convert", *extra, "-O", "raw", path, out)
    return hashlib.md5(Path(out).read_bytes()).hexdigest()


def nbdinfo(*args: str) -> str:
    return run("nbdinfo", *args).stdout


def test_json_same_as_qemu_raw(tmp_path, server) -> None:
    path = img(tmp_path, "r.img", "-f", "raw", "1000000")
    _, py = server("py", "-f", "raw", "-t", path)
    _, q = server("qemu", "-f", "raw", "-t", path)
    a = json.loads(nbdinfo("--json", uri(py)))
    b = json.loads(nbdinfo("--json", uri(q)))
    for d in (a, b):
        d["exports"][0].pop("uri")
    assert a == b
    assert a["exports"][0]["export-size"] == 1000448


@pytest.mark.parametrize("extra", [[], ["-r"], ["-e", "3", "-x", "foo", "-D", "a disk", "-A"]])
def test_json_list_and_L_same_as_qemu(tmp_path, server, extra) -> None:
    path = img(tmp_path, "q.qcow2", "-f", "qcow2", "64M")
    io(path, "qcow2", "write -P 1 0 64k", "write -z 1M 64k")
    _, py = server("py", "-f", "qcow2", "-t", *extra, path)
    _, q = (
        server("qemu", "-f", "qcow2", "-t", "-U" if False else "-t", *extra, path)
        if "-r" in extra
        else (None, None)
    )
    if q is None:
        # qemu-nbd cannot share a writable image: compare on a copy
        copy = str(tmp_path / "copy.qcow2")
        run("cp", path, copy)
        _, q = server("qemu", "-f", "qcow2", "-t", *extra, copy)
    a = json.loads(nbdinfo("--list", "--json", uri(py)))
    b = json.loads(nbdinfo("--list", "--json", uri(q)))
    for d in (a, b):
        for e in d["exports"]:
            e.pop("uri")
    assert a == b
    assert run("qemu-nbd", "-L", "-k", py).stdout == run("qemu-nbd", "-L", "-k", q).stdout
    assert run(*pyqemu_nbd(), "-L", "-k", q).stdout == run("qemu-nbd", "-L", "-k", q).stdout
    name = "foo" if "-x" in extra else ""
    assert nbdinfo("--map", uri(py, name)) == nbdinfo("--map", uri(q, name))


def _maps_equal(sock: str, path: str, depth: bool = False) -> None:
    nbd_map = nbdinfo("--map", uri(sock))
    rows = json.loads(run("qemu-img", "map", "--output=json", path).stdout)
    want = []
    for r in rows:
        flags = (0 if r["data"] else 1) | (2 if r["zero"] else 0)
        if want and want[-1][2] == flags:
            want[-1][1] += r["length"]
        else:
            want.append([r["start"], r["length"], flags])
    got = [[int(x) for x in line.split()[:3]] for line in nbd_map.splitlines()]
    assert got == want


def test_map_sparse_raw(tmp_path, server) -> None:
    path = img(tmp_path, "s.raw", "-f", "raw", "8M")
    io(path, "raw", "write -P 7 1M 64k", "write -P 9 5M 1M")
    _, py = server("py", "-t", "-f", "raw", "-r", path)
    _map_vs_qemu(tmp_path, server, py, path, "raw")


def _map_vs_qemu(tmp_path, server, py, path, fmt, *extra) -> None:
    _, q = server("qemu", "-t", "-f", fmt, "-r", *extra, path)
    assert nbdinfo("--map", uri(py)) == nbdinfo("--map", uri(q))
    if "-A" in extra:
        assert nbdinfo("--map=qemu:allocation-depth", uri(py)) == nbdinfo(
            "--map=qemu:allocation-depth", uri(q)
        )


def test_map_qcow2_zero_clusters(tmp_path, server) -> None:
    path = img(tmp_path, "z.qcow2", "-f", "qcow2", "16M")
    io(path, "qcow2", "write -P 1 0 128k", "write -z 1M 1M", "write -P 2 4M 64k", "write -z 4M 64k")
    _, py = server("py", "-t", "-f", "qcow2", "-r", path)
    _maps_equal(py, path)
    _map_vs_qemu(tmp_path, server, py, path, "qcow2")


def test_map_backing_chain_and_depth(tmp_path, server) -> None:
    base = img(tmp_path, "base.qcow2", "-f", "qcow2", "16M")
    io(base, "qcow2", "write -P 1 0 2M", "write -P 3 8M 1M")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    io(top, "qcow2", "write -P 2 1M 2M", "write -z 8M 64k")
    _, py = server("py", "-t", "-f", "qcow2", "-r", "-A", top)
    _maps_equal(py, top)
    _map_vs_qemu(tmp_path, server, py, top, "qcow2", "-A")
    assert md5_nbd(py) == md5_convert(tmp_path, top)


VARIANTS = {
    "raw": ("raw", []),
    "zlib": ("qcow2", ["-c"]),
    "zstd": ("qcow2", ["-c", "-o", "compression_type=zstd"]),
    "c4k": ("qcow2", ["-o", "cluster_size=4096"]),
    "c2m": ("qcow2", ["-o", "cluster_size=2M"]),
    "compat010": ("qcow2", ["-o", "compat=0.10"]),
    "subclusters": ("qcow2", ["-o", "extended_l2=on"]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nbdcopy_hash_equals_convert(tmp_path, server, variant) -> None:
    fmt, opts = VARIANTS[variant]
    src = img(tmp_path, "src.raw", "-f", "raw", "6M")
    io(src, "raw", "write -P 5 0 300k", "write -P 6 2M 1M", "write -P 8 5M 4k")
    path = str(tmp_path / f"v.{fmt}")
    run("qemu-img", "convert", "-O", fmt, *opts, src, path)
    _, py = server("py", "-t", "-f", fmt, "-r", path)
    assert md5_nbd(py) == md5_convert(tmp_path, path)


def test_internal_snapshot_l(tmp_path, server) -> None:
    path = img(tmp_path, "s.qcow2", "-f", "qcow2", "4M")
    io(path, "qcow2", "write -P 1 0 1M")
    run("qemu-img", "snapshot", "-c", "snap1", path)
    io(path, "qcow2", "write -P 2 0 2M")
    _, py = server("py", "-t", "-f", "qcow2", "-l", "snap1", path)
    assert md5_nbd(py) == md5_convert(tmp_path, path, "-l", "snap1")
    assert md5_nbd(py) != md5_convert(tmp_path, path)
    assert json.loads(nbdinfo("--json", uri(py)))["exports"][0]["is_read_only"]


def test_qemu_img_and_qemu_io_as_clients(tmp_path, server) -> None:
    path = img(tmp_path, "c.qcow2", "-f", "qcow2", "4M")
    _, py = server("py", "-f", "qcow2", "-t", path)
    info = run("qemu-img", "info", uri(py)).stdout
    assert "virtual size: 4 MiB (4194304 bytes)" in info
    out = run(
        "qemu-io", "-f", "raw", "-c", "write -P 0x5a 4k 8k", "-c", "read -P 0x5a 4k 8k",
        "-c", "write -z 64k 64k", "-c", "flush", uri(py),
    ).stdout  # fmt: skip
    assert "wrote 8192/8192" in out and "read 8192/8192" in out


CLIENT_SCRIPT = r"""
import sys, nbd
sock, idx = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.connect_unix(sock)
base = idx * (1 << 20)
for i in range(16):
    h.pwrite(bytes([idx + 1]) * 65536, base + i * 65536, nbd.CMD_FLAG_FUA if i % 2 else 0)
h.zero(65536, base + 65536)
h.trim(65536, base + 2 * 65536)
h.zero(65536, base + 2 * 65536)
h.flush()
h.shutdown()
"""


def test_concurrent_writers(tmp_path, server) -> None:
    path = img(tmp_path, "w.qcow2", "-f", "qcow2", "8M")
    proc, py = server("py", "-t", "-f", "qcow2", "-e", "4", "--discard=unmap", path)
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    clients = [
        subprocess.Popen([SYSTEM_PYTHON, str(script), py, str(i)], env=env_clean())
        for i in range(4)
    ]
    for c in clients:
        assert c.wait(timeout=120) == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not Path(py).exists()
    run("qemu-img", "check", path)
    expected = bytearray(8 << 20)
    for idx in range(4):
        base = idx << 20
        expected[base : base + (1 << 20)] = (
            bytes([idx + 1]) << 0 if False else bytes([idx + 1]) * (1 << 20)
        )
        expected[base + 65536 : base + 3 * 65536] = bytes(2 * 65536)
    raw = tmp_path / "out.raw"
    run("qemu-img", "convert", "-O", "raw", path, str(raw))
    assert raw.read_bytes() == bytes(expected)


def _handshake(sock: socket.socket) -> None:
    greet = sock.recv(18, socket.MSG_WAITALL)
    assert greet[:16] == b"NBDMAGICIHAVEOPT"
    sock.sendall(b"\0\0\0\3")
    sock.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 0))  # EXPORT_NAME ""
    reply = sock.recv(10, socket.MSG_WAITALL)
    assert len(reply) == 10


def _request(sock, cmd, offset, length, flags=0, cookie=1, data=b"") -> tuple[int, int]:
    sock.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, offset, length) + data)
    magic, err, handle = struct.unpack(">IIQ", sock.recv(16, socket.MSG_WAITALL))
    assert magic == 0x67446698 and handle == cookie
    return err, handle


def test_hostile_input(tmp_path, server) -> None:
    path = img(tmp_path, "h.raw", "-f", "raw", "1M")
    io(path, "raw", "write -P 3 0 1M")
    before = Path(path).read_bytes()
    proc, py = server("py", "-f", "raw", "-r", "-t", "-e", "0", path)

    def conn() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(py)
        return s

    # garbage instead of client flags / wrong option magic / absurd option length
    for junk in (b"\xff" * 64, b"\0\0\0\3" + b"XHAVEOPT" + bytes(8),
                 b"\0\0\0\3IHAVEOPT" + struct.pack(">II", 7, 0xFFFFFFFF), b"\0\0"):  # fmt: skip
        s = conn()
        s.recv(18, socket.MSG_WAITALL)
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
        s.close()
    s = conn()
    _handshake(s)
    assert _request(s, 0, 1 << 20, 1)[0] == 22  # past the end
    assert _request(s, 0, (1 << 64) - 1, 2)[0] == 22  # wrapping 2^64
    assert _request(s, 99, 0, 0)[0] == 22  # unknown command
    assert _request(s, 0, 0, 1, flags=0x4000)[0] == 22  # unknown flag
    assert _request(s, 1, 0, 3, data=b"abc")[0] == 22  # write to a read-only export
    assert _request(s, 0, 0, 64 << 20)[0] == 22  # read larger than the maximum
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 9, 0, 1 << 30))  # huge write: cut
    assert s.recv(100) == b""
    s.close()
    # a client vanishing with requests in flight
    s = conn()
    _handshake(s)
    for i in range(32):
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 0, 65536))
    s.close()
    # the server still serves
    assert proc.poll() is None
    assert md5_nbd(py) == hashlib.md5(before).hexdigest()
    assert Path(path).read_bytes() == before


def test_bulk_writer_cut_or_garbled_mid_stream(tmp_path, server) -> None:
    """After a large WRITE the reader reads the next request sized for one
    more like it (header and payload at once): a client that stops halfway
    through that payload, or sends a bad magic of the same size, is cut;
    only the complete WRITE reaches the image, and the server goes on."""
    path = img(tmp_path, "b.raw", "-f", "raw", "1M")
    proc, py = server("py", "-f", "raw", "-t", "-e", "0", path)
    big = 256 << 10

    def conn() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(py)
        _handshake(s)
        return s

    s = conn()
    assert _request(s, 1, 0, big, data=b"\1" * big)[0] == 0
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 2, big, big) + b"\2" * (big // 2))
    s.close()  # gone in the middle of the second payload
    s = conn()
    assert _request(s, 1, 2 * big, big, data=b"\3" * big)[0] == 0
    try:  # a bad magic where the next WRITE was expected: cut, maybe before all is sent
        s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 1, 2, 3 * big, big) + b"\4" * big)
        assert s.recv(100) == b""
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    s = conn()
    assert _request(s, 1, 3 * big, 100, data=b"\5" * 100)[0] == 0  # still serving
    s.close()
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    data = Path(path).read_bytes()
    assert data == b"\1" * big + bytes(big) + b"\3" * big + b"\5" * 100 + bytes(big - 100)


def test_bulk_writer_next_request_read_ahead(tmp_path, server) -> None:
    """Before the reader writes a large WRITE it takes what has come of the
    next request: a header cut short, the header of a WRITE of another size,
    a FLUSH, or the end of the stream; each is then read on as usual."""
    path = img(tmp_path, "r.raw", "-f", "raw", "2M")
    proc, py = server("py", "-f", "raw", "-t", "-e", "0", path)
    big, other = 256 << 10, 100_000

    def header(cmd: int, cookie: int, offset: int, length: int) -> bytes:
        return struct.pack(">IHHQQI", 0x25609513, 0, cmd, cookie, offset, length)

    def reply(s: socket.socket) -> tuple[int, int]:
        magic, err, cookie = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
        assert magic == 0x67446698
        return err, cookie

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(py)
    _handshake(s)
    second = header(1, 2, big, other)
    s.sendall(header(1, 1, 0, big) + b"\1" * big + second[:10])  # 10 bytes of the next
    assert reply(s) == (0, 1)  # written: the 10 bytes were read ahead by then
    s.sendall(second[10:] + b"\2" * other)
    assert reply(s) == (0, 2)
    s.sendall(header(1, 3, 1 << 20, big) + b"\3" * big + header(3, 4, 0, 0))  # then FLUSH
    assert sorted([reply(s), reply(s)]) == [(0, 3), (0, 4)]
    s.sendall(header(1, 5, 1 << 19, big) + b"\5" * big)
    s.shutdown(socket.SHUT_WR)  # the end of the stream right after a large WRITE
    assert reply(s) == (0, 5)
    assert s.recv(100) == b""
    s.close()
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    want = bytearray(2 << 20)
    want[0:big] = b"\1" * big
    want[big : big + other] = b"\2" * other
    want[1 << 20 : (1 << 20) + big] = b"\3" * big
    want[1 << 19 : (1 << 19) + big] = b"\5" * big
    assert Path(path).read_bytes() == want


def test_buffer_pool_reuses_only_free_buffers() -> None:
    """A payload buffer comes back only once nothing holds it (no view of it
    is left), with its payload on a page boundary; large ones are not kept."""
    from pyqemu.common.block.buffers import _addressof
    from pyqemu.nbd_server.transport import POOL_KEEP, POOL_MAX, BufferPool

    pool = BufferPool()
    n = 28 + 64 * 4096
    a = pool.get(n, 28)
    assert len(a) == n and (_addressof(a) + 28) % 4096 == 0
    a_id = id(a)
    payload = memoryview(a)[28:]  # a request's payload, still in use
    del a
    b = pool.get(n, 28)
    assert id(b) != a_id  # the first is held through the view
    c = pool.get(n, 28)  # so is b, by its name
    assert id(c) not in (a_id, id(b))
    c_id = id(c)
    del c
    assert id(pool.get(n, 28)) == c_id  # free again: the same buffer
    del payload
    assert id(pool.get(n, 28)) == a_id  # the view gone: the first is free
    other = pool.get(n, 0)  # another head: another buffer
    assert id(other) not in (a_id, c_id, id(b)) and _addressof(other) % 4096 == 0
    big = pool.get(POOL_MAX + 1)
    assert len(big) == POOL_MAX + 1
    assert all(e[0] is not big for e in pool.entries)
    assert len(pool.entries) == POOL_KEEP


def test_bulk_writer_buffers_reused(tmp_path, server) -> None:
    """A bulk writer's payload buffers are reused (the pool): each WRITE
    lands with its own bytes, never with a former payload's, including a
    shorter WRITE read ahead into a buffer that held a longer one."""
    path = img(tmp_path, "b.raw", "-f", "raw", "4M")
    proc, py = server("py", "-f", "raw", "-t", "-e", "0", path)
    big = 256 << 10
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(py)
    _handshake(s)
    want = bytearray(4 << 20)
    cookie = 0
    for rnd in range(2):
        # mostly full-size WRITEs, every fifth a shorter one; the first round
        # one at a time, the second all sent at once (read ahead into buffers
        # that held former payloads, while those are written)
        stream = b""
        for i in range(24):
            n = big if i % 5 else (big * 3) // 4 + 12345
            off = (i * big + rnd * 4096) % ((4 << 20) - big)
            data = bytes([(i * 37 + rnd * 11 + 1) % 256]) * n
            cookie += 1
            head = struct.pack(">IHHQQI", 0x25609513, 0, 1, cookie, off, n)
            if rnd == 0:
                assert _request(s, 1, off, n, cookie=cookie, data=data) == (0, cookie)
            else:
                stream += head + data
            want[off : off + n] = data
        s.sendall(stream)
        for _ in range(24 if rnd else 0):
            magic, err, _handle = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
            assert (magic, err) == (0x67446698, 0)
    cookie += 1
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, cookie, 0, 4 << 20))  # READ it all
    magic, err, handle = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
    assert (magic, err, handle) == (0x67446698, 0, cookie)
    got = bytearray()
    while len(got) < 4 << 20:
        chunk = s.recv((4 << 20) - len(got))
        assert chunk
        got += chunk
    assert got == want
    s.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert Path(path).read_bytes() == want


def test_sigterm_removes_socket(tmp_path, server) -> None:
    path = img(tmp_path, "t.raw", "-f", "raw", "1M")
    proc, py = server("py", "-f", "raw", "-t", path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not Path(py).exists()


def test_fork_and_pid_file(tmp_path) -> None:
    path = img(tmp_path, "f.raw", "-f", "raw", "1M")
    sock, pidf = tmp_path / "f.sock", tmp_path / "pid"
    run(*pyqemu_nbd(), "--fork", "--pid-file", str(pidf), "-k", str(sock), "-f", "raw", path)
    pid = int(pidf.read_text())
    try:
        assert sock.exists()
        assert "export-size" in nbdinfo("--json", uri(str(sock)))
    finally:
        import os

        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Invalid number of arguments"),
        (["-Z", "x"], "invalid option -- 'Z'"),
        (["--tls-creds=x", "f"], "Failed to get TLS creds: No TLS credentials with id 'x'"),
        (["/nonexistent/x"], "Failed to blk_new_open '/nonexistent/x': Could not open"),
    ],
)
def test_cli_errors(args, message) -> None:
    res = run(*pyqemu_nbd(), *args, check=False)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_exit_after_last_negotiated_client(tmp_path, server) -> None:
    path = img(tmp_path, "e.raw", "-f", "raw", "1M")
    proc, py = server("py", "-f", "raw", path)
    s = socket.socket(socket.AF_UNIX)
    s.connect(py)
    s.recv(18, socket.MSG_WAITALL)
    s.close()  # never negotiated: the server stays
    assert "export-size" in nbdinfo("--json", uri(py))
    assert proc.wait(timeout=30) == 0
