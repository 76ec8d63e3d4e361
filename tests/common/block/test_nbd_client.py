"""The ``nbd`` block driver against pyqemu-nbd, qemu-nbd and nbdkit on unix
sockets in tmp_path (every server is stopped by the fixture)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyqemu.common.block import BlockError, open_image
from pyqemu.common.block.nbd import NBDProtocol, canonical_filename, resolve_options

from tests.servers import stop_all, unix_listening

PEERS = ("qemu-nbd", "qemu-img", "qemu-io", "nbdkit")

Start = Callable[..., str]


@pytest.fixture(scope="module", autouse=True)
def _peers() -> None:
    missing = [p for p in PEERS if shutil.which(p) is None]
    if missing:
        pytest.fail(f"missing peer tools: {missing}")


def _command(kind: str, sock: Path, args: tuple[str, ...]) -> list[str]:
    if kind == "py":
        return [sys.executable, "-m", "pyqemu.nbd_server.main", "-k", str(sock), *args]
    if kind == "qemu":
        return ["qemu-nbd", "-k", str(sock), *args]
    assert kind == "nbdkit"
    # nbdkit writes its pid file once it listens (the socket exists a little earlier)
    return ["nbdkit", "-f", "-P", f"{sock}.pid", "-U", str(sock), *args]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Start]:
    """server(kind, *args) -> socket path; kind is "py", "qemu" or "nbdkit"."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, *args: str) -> str:
        sock = tmp_path / f"s{len(procs)}.sock"
        proc = subprocess.Popen(
            _command(kind, sock, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(proc)
        for _ in range(400):  # bounded: 20 s
            ready = sock.parent / f"{sock.name}.pid" if kind == "nbdkit" else sock
            if ready.exists() and (kind == "nbdkit" or unix_listening(sock)):
                return str(sock)
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise RuntimeError("server socket never appeared")

    try:
        yield start
    finally:
        stop_all(procs)
        for p in procs:
            if p.stderr:
                p.stderr.close()


def qcow2(tmp_path: Path, name: str = "disk.qcow2", size: str = "64M") -> Path:
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), size], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x5a 1M 2M", "-c", "write -z 8M 1M", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def export(kind: str, server: Start, tmp_path: Path, *extra: str) -> str:
    """A writable 64 MiB export named "exp" ("" for nbdkit) of each server; its URI."""
    if kind == "nbdkit":
        return f"nbd+unix:///?socket={server('nbdkit', *extra, 'memory', '64M')}"
    image = qcow2(tmp_path, f"{kind}.qcow2")
    sock = server(kind, "-f", "qcow2", "-x", "exp", "-t", *extra, str(image))
    return f"nbd+unix:///exp?socket={sock}"


KINDS = ("py", "qemu", "nbdkit")


# ----------------------------------------------------------------------
# names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nbd+unix:///e?socket=/s", "nbd+unix:///e?socket=/s"),
        ("nbd+unix://?socket=/s", "nbd+unix://?socket=/s"),
        ("nbd://h/e", "nbd://h:10809/e"),
        ("nbd+tcp://h:99", "nbd://h:99"),
        ("nbd://[::1]:5/x", "nbd://::1:5/x"),
        ("nbd:unix:/s:exportname=e", "nbd+unix:///e?socket=/s"),
        ("nbd:unix:/s", "nbd+unix://?socket=/s"),
        ("nbd:h:7:exportname=e", "nbd://h:7/e"),
    ],
)
def test_filenames(name: str, expected: str) -> None:
    assert canonical_filename(resolve_options({"filename": name})) == expected


def test_options_forms() -> None:
    unix = {"driver": "nbd", "server.type": "unix", "server.path": "/s", "export": "e"}
    assert canonical_filename(resolve_options(unix)) == "nbd+unix:///e?socket=/s"
    inet = {"server.type": "inet", "server.host": "h", "server.port": 1}
    assert canonical_filename(resolve_options(inet)) == "nbd://h:1"
    assert canonical_filename(resolve_options({"path": "/p"})) == "nbd+unix://?socket=/p"
    assert canonical_filename(resolve_options({"host": "h"})) == "nbd://h:10809"


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"filename": "nbd://"}, "No valid URL specified"),
        ({"filename": "nbd+unix:///x?socket=a&b=c"}, "No valid URL specified"),
        ({"filename": "nbd://h/x?socket=a"}, "No valid URL specified"),
        ({"filename": "nbd:"}, "NBD server address missing"),
        ({"filename": "nbd:127.0.0.1"}, "error parsing address '127.0.0.1'"),
        ({"driver": "nbd"}, "NBD server address missing"),
        ({"path": "/a", "host": "h"}, "path and host may not be used at the same time"),
        ({"port": "1"}, "port may not be used without host"),
        ({"server.type": "unix"}, "Parameter 'path' is missing"),
        ({"server.type": "bogus"}, "Parameter 'type' does not accept value 'bogus'"),
        ({"path": "/a", "frob": "1"}, "Block protocol 'nbd' doesn't support the option 'frob'"),
        ({"filename": "nbd:unix:/a", "path": "/b"}, "host/port/path and a file name"),
    ],
)
def test_bad_options(opts: dict[str, str], message: str) -> None:
    with pytest.raises(BlockError) as info:
        NBDProtocol.open(opts, read_only=True)
    assert message in info.value.message


def test_connect_errors(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    with pytest.raises(BlockError) as info:
        open_image(f"nbd+unix:///x?socket={missing}")
    assert info.value.message == f"Failed to connect to '{missing}': No such file or directory"
    assert info.value.errno == errno.ENOENT
    with pytest.raises(BlockError) as info:
        open_image("nbd://127.0.0.1:1/x")
    assert info.value.message == "Failed to connect to '127.0.0.1:1': Connection refused"


@pytest.mark.parametrize("kind", ("py", "qemu"))
def test_unknown_export(kind: str, server: Start, tmp_path: Path) -> None:
    uri = export(kind, server, tmp_path)
    with pytest.raises(BlockError) as info:
        open_image(uri.replace("/exp?", "/nope?"))
    assert info.value.message.startswith("Requested export not available\nserver reported: ")


# ----------------------------------------------------------------------
# I/O


@pytest.mark.parametrize("kind", KINDS)
def test_every_syntax_opens(kind: str, server: Start, tmp_path: Path) -> None:
    uri = export(kind, server, tmp_path)
    sock = uri.partition("socket=")[2]
    name = uri.partition(":///")[2].partition("?")[0]
    legacy = f"nbd:unix:{sock}" + (f":exportname={name}" if name else "")
    tree: dict[str, object] = {"driver": "nbd", "server": {"type": "unix", "path": sock}}
    flat = {"driver": "nbd", "server.type": "unix", "server.path": sock}
    if name:  # an explicit "" export shows as nbd+unix:///?socket=, as in QEMU
        tree["export"] = flat["export"] = name
    openers = (
        lambda: open_image(uri),
        lambda: open_image(legacy),
        lambda: open_image("json:" + json.dumps(tree)),
        lambda: open_image(None, options=flat),
    )
    for opener in openers:  # one at a time: qemu-nbd serves one client by default
        with opener() as node:
            assert node.size == 64 << 20
            assert node.filename == (uri if name else f"nbd+unix://?socket={sock}")
            assert node.read(1 << 20, 4) == (b"\x5a" * 4 if kind != "nbdkit" else bytes(4))


@pytest.mark.parametrize("kind", KINDS)
def test_read_write_zero_trim(kind: str, server: Start, tmp_path: Path) -> None:
    uri = export(kind, server, tmp_path)
    with open_image(uri, "raw", read_only=False) as node:
        data = os.urandom(3 << 20)
        node.write(12345, data)
        assert node.read(12345, len(data)) == data
        node.write(100, b"fua", fua=True)
        assert node.read(100, 3) == b"fua"
        node.write_zeroes(1 << 20, 1 << 20, may_unmap=True)
        node.write_zeroes(5 << 20, 4096)
        assert node.read(1 << 20, 1 << 20) == bytes(1 << 20)
        node.discard(20 << 20, 1 << 20)
        node.flush()
        buf = bytearray(4096)
        node.file.readinto(12345, memoryview(buf))  # type: ignore[union-attr]
        assert bytes(buf) == data[:4096]
    # what we wrote is what another client reads
    with open_image(uri, "raw") as again:
        skip = (2 << 20) - 12345
        assert again.read(2 << 20, 4096) == data[skip : skip + 4096]
        assert again.read(1 << 20, 4096) == bytes(4096)


def test_requests_split_and_aligned(server: Start) -> None:
    """nbdkit advertises (and enforces) 4 KiB minimum and 64 KiB maximum blocks."""
    sock = server(
        "nbdkit", "--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=4096",
        "blocksize-maximum=65536", "blocksize-error-policy=error",
    )  # fmt: skip
    with open_image(f"nbd+unix:///?socket={sock}", "raw", read_only=False) as node:
        nbd = node.file
        assert isinstance(nbd, NBDProtocol)
        assert nbd.alignment == 4096 and nbd.max_transfer == 65536
        data = os.urandom(300000)
        node.write(100, data)
        assert node.read(100, len(data)) == data
        assert node.read(0, 100) == bytes(100)
        node.write_zeroes(4096, 8192)
        assert node.read(4000, 8400) == data[3900:3996] + bytes(8192) + data[12188:12300]


@pytest.mark.parametrize("extra", (("--no-sr",), ("--mask-handshake=0",)))
def test_old_servers(extra: tuple[str, ...], server: Start) -> None:
    """Simple replies only, and a server without fixed newstyle (NBD_OPT_EXPORT_NAME)."""
    sock = server("nbdkit", *extra, "memory", "16M")
    with open_image(f"nbd+unix:///?socket={sock}", "raw", read_only=False) as node:
        nbd = node.file
        assert isinstance(nbd, NBDProtocol)
        assert not nbd.client.conn.structured and nbd.client.context_id is None
        node.write(0, b"x" * 5000)
        assert node.read(0, 5001) == b"x" * 5000 + b"\0"
        run = nbd.block_status(0, 16 << 20)
        assert run.length == 16 << 20  # no meta context: everything is data


def test_server_errors_keep_errno(server: Start) -> None:
    sock = server("nbdkit", "--filter=error", "memory", "16M", "error=ENOSPC",
                  "error-pwrite-rate=100%")  # fmt: skip
    with open_image(f"nbd+unix:///?socket={sock}", "raw", read_only=False) as node:
        with pytest.raises(BlockError) as info:
            node.write(0, b"x" * 512)
        assert info.value.errno == errno.ENOSPC
        assert info.value.message == "No space left on device"
        assert node.read(0, 512) == bytes(512)  # the connection goes on


@pytest.mark.parametrize("kind", ("qemu", "nbdkit"))
def test_read_only_export(kind: str, server: Start, tmp_path: Path) -> None:
    uri = export(kind, server, tmp_path, "-r")
    with pytest.raises(BlockError) as info:
        open_image(uri, "raw", read_only=False)
    assert info.value.message == "Could not open image: Permission denied"
    assert info.value.errno == errno.EACCES
    with open_image(uri, "raw") as node:
        assert node.size == 64 << 20


@pytest.mark.parametrize("kind", KINDS)
def test_threads(kind: str, server: Start, tmp_path: Path) -> None:
    """Eight threads write and read back their own regions through one node."""
    uri = export(kind, server, tmp_path)
    failures: list[str] = []
    with open_image(uri, "raw", read_only=False) as node:

        def worker(i: int) -> None:
            for j in range(20):
                off = (i * 20 + j) * 65536
                data = bytes([i + 1]) * 65536
                node.write(off, data)
                if node.read(off, 65536) != data:
                    failures.append(f"{i}/{j}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        assert node.read(7 * 20 * 65536, 65536) == bytes([8]) * 65536


def test_writes_leave_qemu_nbd_image_clean(server: Start, tmp_path: Path) -> None:
    image = qcow2(tmp_path)
    sock = server("qemu", "-f", "qcow2", "-x", "exp", str(image))
    with open_image(f"nbd+unix:///exp?socket={sock}", "raw", read_only=False) as node:
        for i in range(64):
            node.write(i * 700001 % (60 << 20), os.urandom(70000))
        node.write_zeroes(1 << 20, 512 << 10, may_unmap=True)
        node.discard(30 << 20, 2 << 20)
        node.flush()
    # qemu-nbd without -t exits when its client leaves: wait for it to let go
    for _ in range(200):
        check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
        if "lock" not in check.stderr:
            break
        time.sleep(0.05)
    assert check.returncode == 0, check.stderr
    assert "No errors were found on the image." in check.stdout
