"""Chardevs against real peers: sockets (tcp and unix, server and client), files, pipes,
ptys, the mon: multiplexer compared byte for byte with qemu-system-x86_64's, and error
messages compared with qemu-system-x86_64 7.2's own."""

from __future__ import annotations

import os
import pty
import queue
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from pyqemu.system import chardev as chardev_mod
from pyqemu.system.chardev import (
    ChardevError,
    MuxChardev,
    SocketChardev,
    error_lines,
    open_chardev,
    open_from_opts,
    parse_chardev_option,
)

QEMU = "qemu-system-x86_64"


@pytest.fixture(autouse=True)
def _close_chardevs():
    yield
    chardev_mod.close_all()


class Collector:
    """A front end's on_bytes: a queue read until an expected length or marker."""

    def __init__(self) -> None:
        self.q: queue.Queue[bytes] = queue.Queue()
        self.data = bytearray()

    def __call__(self, data: bytes) -> None:
        self.q.put(data)

    def until(self, marker: bytes) -> bytes:
        while marker not in self.data:
            self.data += self.q.get(timeout=30)
        return bytes(self.data)


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(30)
    data = bytearray()
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# errors compared with qemu-system-x86_64

def qemu_errors(args: list[str]) -> tuple[int, list[str]]:
    proc = subprocess.run([QEMU, "-nodefaults", "-display", "none", "-S", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    prefix = f"{QEMU}: "
    return proc.returncode, [line.removeprefix(prefix) for line in proc.stderr.splitlines()]


def our_errors(option: str, spec: str) -> list[str]:
    try:
        if option == "chardev":
            open_from_opts(parse_chardev_option(spec))
        else:
            open_chardev(spec, for_monitor=option == "monitor")
    except ChardevError as err:
        if option == "chardev":
            return [f"-chardev {spec}: {err.message}"]
        return error_lines(option, spec, err)
    raise AssertionError(f"-{option} {spec} opened")


BAD_SPECS = [
    ("serial", "bogus:x"),
    ("serial", "tcp:localhost"),
    ("serial", "tcp:127.0.0.1:5,server=maybe"),
    ("serial", "file:/nonexistent/dir/x"),
    ("serial", "unix:"),
    ("serial", "unix:/nonexistent/dir/s,server=on,wait=off"),
    ("serial", "tcp:127.0.0.1:4444,server,nowait,bogus=1"),
    ("serial", "null,x=1"),
    ("monitor", "bogus:x"),
    ("monitor", "tcp:"),
    ("monitor", "file:/nonexistent/dir/x"),
    ("chardev", "bogus,id=a"),
    ("chardev", "file,id=a"),
    ("chardev", "socket,id=s,host=localhost"),
    ("chardev", "pty"),
    ("chardev", "stdio,id=x,foo=1"),
    ("chardev", "socket,id=s,host=127.0.0.1,port=5,wait=off"),
    ("serial", "tcp::1,reconnect=x"),
    ("serial", "chardev:zz"),
]


def test_error_messages_match_qemu() -> None:
    procs = []
    for option, spec in BAD_SPECS:
        extra = ["-monitor", "none"] if option != "monitor" else []
        procs.append((option, spec, [*extra, f"-{option}", spec]))
    results: dict[int, tuple[int, list[str]]] = {}

    def run(i: int, args: list[str]) -> None:
        results[i] = qemu_errors(args)

    threads = [threading.Thread(target=run, args=(i, a)) for i, (_, _, a) in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (option, spec, _) in enumerate(procs):
        rc, theirs = results[i]
        assert rc == 1, (option, spec, theirs)
        assert our_errors(option, spec) == theirs, (option, spec)


def test_duplicate_id_matches_qemu() -> None:
    rc, theirs = qemu_errors(["-chardev", "null,id=a", "-chardev", "null,id=a"])
    assert rc == 1
    open_from_opts(parse_chardev_option("null,id=a"))
    assert our_errors("chardev", "null,id=a") == theirs


def test_connection_refused_matches_qemu() -> None:
    port = free_port()
    spec = f"tcp:127.0.0.1:{port}"
    rc, theirs = qemu_errors(["-monitor", "none", "-serial", spec])
    assert rc == 1
    assert our_errors("serial", spec) == theirs


# ---------------------------------------------------------------------------------------
# sockets

def test_tcp_server_with_a_real_client() -> None:
    chr_ = open_chardev("tcp:127.0.0.1:0,server=on,wait=off,nodelay=on")
    assert isinstance(chr_, SocketChardev)
    port = int(chr_.port)
    assert port != 0
    assert chr_.filename == f"disconnected:tcp:127.0.0.1:{port},server=on"
    got = Collector()
    chr_.set_reader(got)
    chr_.write(b"dropped: nobody is connected")
    with socket.create_connection(("127.0.0.1", port)) as client:
        assert chr_.wait_connected(30)
        local = client.getsockname()
        assert chr_.filename == f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:{local[1]}"
        client.sendall(b"from the client\n")
        assert got.until(b"\n") == b"from the client\n"
        chr_.write(b"to the client\n")
        assert recv_until(client, b"\n") == b"to the client\n"
    # the server takes the next client after a disconnect
    with socket.create_connection(("127.0.0.1", port)) as client2:
        client2.sendall(b"second\n")
        assert got.until(b"second\n").endswith(b"second\n")
        chr_.write(b"again\n")
        assert recv_until(client2, b"\n") == b"again\n"


def _open_waiting_server(spec: str, port: int) -> tuple[Any, list[str], socket.socket]:
    """open_chardev(spec) of a wait=on tcp server, which blocks until a client connects:
    opened in a thread while we connect; (the chardev, its notices, our client)."""
    notices: list[str] = []
    opened: list[object] = []
    opener = threading.Thread(target=lambda: opened.append(
        open_chardev(spec, notice=notices.append)))
    opener.start()
    client = None
    while client is None:
        try:
            client = socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            opener.join(0.05)
    opener.join()
    return opened[0], notices, client


def test_tcp_server_legacy_spelling_and_wait() -> None:
    port = free_port()
    chr_, notices, client = _open_waiting_server(f"tcp:127.0.0.1:{port},server", port)
    with client:
        assert notices == ["info: QEMU waiting for connection on: "
                           f"disconnected:tcp:127.0.0.1:{port},server=on"]
        chr_.write(b"hello")
        assert recv_until(client, b"hello") == b"hello"
    nowait = open_chardev("tcp::0,server,nowait", label="serial1")
    assert nowait.filename.startswith("disconnected:tcp:0.0.0.0:")


def test_qemu_prints_the_same_waiting_notice(tmp_path) -> None:
    port = free_port()
    spec = f"tcp:127.0.0.1:{port},server=on"
    proc = subprocess.Popen([QEMU, "-nodefaults", "-display", "none", "-S", "-monitor",
                             "none", "-serial", spec], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline().rstrip("\n")
    proc.kill()
    proc.wait()
    proc.stderr.close()
    _, ours, client = _open_waiting_server(spec, port)
    client.close()
    assert line == f"{QEMU}: -serial {spec}: {ours[0]}"


def test_tcp_client_to_a_real_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        chr_ = open_chardev(f"tcp:127.0.0.1:{port}")
        conn, _ = server.accept()
        with conn:
            got = Collector()
            chr_.set_reader(got)
            conn.sendall(b"ping\n")
            assert got.until(b"\n") == b"ping\n"
            chr_.write(b"pong\n")
            assert recv_until(conn, b"\n") == b"pong\n"
            assert chr_.filename.startswith("tcp:127.0.0.1:")
            assert chr_.filename.endswith(f" <-> 127.0.0.1:{port}")


def test_unix_server_and_client(tmp_path) -> None:
    path = str(tmp_path / "s")
    server = open_chardev(f"unix:{path},server=on,wait=off")
    assert server.filename == f"disconnected:unix:{path},server=on"
    got = Collector()
    server.set_reader(got)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert server.wait_connected(30)
        assert server.filename == f"unix:{path},server=on"
        client.sendall(b"unix in\n")
        assert got.until(b"\n") == b"unix in\n"
        server.write(b"unix out\n")
        assert recv_until(client, b"\n") == b"unix out\n"
    # our client against our server through -chardev syntax
    path2 = str(tmp_path / "t")
    srv = open_from_opts(parse_chardev_option(f"socket,id=srv,path={path2},server=on,wait=off"))
    cli = open_from_opts(parse_chardev_option(f"socket,id=cli,path={path2}"))
    got2 = Collector()
    srv.set_reader(got2)
    cli.write(b"between us\n")
    assert got2.until(b"\n") == b"between us\n"
    assert {c["label"] for c in chardev_mod.chardev_info()} >= {"srv", "cli", "serial0"}


# ---------------------------------------------------------------------------------------
# files, pipes, ptys

def test_file_truncates_and_append(tmp_path) -> None:
    path = tmp_path / "out.txt"
    path.write_bytes(b"old content that must go away")
    chr_ = open_chardev(f"file:{path}")
    assert chr_.filename == "file"
    chr_.write(b"line 1\n")
    chr_.write(b"line 2\n")
    chr_.close()
    assert path.read_bytes() == b"line 1\nline 2\n"
    appended = open_from_opts(parse_chardev_option(f"file,id=f,path={path},append=on"))
    appended.write(b"line 3\n")
    appended.close()
    assert path.read_bytes() == b"line 1\nline 2\nline 3\n"


def test_pipe_both_ways(tmp_path) -> None:
    base = str(tmp_path / "p")
    os.mkfifo(base + ".in")
    os.mkfifo(base + ".out")
    chr_ = open_chardev(f"pipe:{base}")
    got = Collector()
    chr_.set_reader(got)
    with open(base + ".in", "wb", buffering=0) as to_guest:
        to_guest.write(b"into the pipe\n")
        assert got.until(b"\n") == b"into the pipe\n"
    with open(base + ".out", "rb", buffering=0) as from_guest:
        chr_.write(b"out of the pipe\n")
        assert from_guest.read(16) == b"out of the pipe\n"


def test_pty(capsys) -> None:
    chr_ = open_chardev("pty")
    err = capsys.readouterr().err
    assert err == f"char device redirected to {chr_.path} (label serial0)\n"
    assert chr_.path.startswith("/dev/pts/")
    chr_.write(b"dropped: the slave is not open\n")
    slave = os.open(chr_.path, os.O_RDWR | os.O_NOCTTY)
    try:
        got = Collector()
        chr_.set_reader(got)
        os.write(slave, b"typed\r")
        assert got.until(b"\r") == b"typed\r"   # raw: no CR->LF, no echo
        chr_.write(b"shown\n")
        data = b""
        while b"\n" not in data:
            data += os.read(slave, 100)
        assert data == b"shown\n"                 # raw: no LF->CRLF
    finally:
        os.close(slave)


# ---------------------------------------------------------------------------------------
# the mux, against qemu's

def qemu_mux_session(keys: list[tuple[bytes, bytes]]) -> tuple[list[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([QEMU, "-nodefaults", "-display", "none", "-S", "-serial",
                             f"mon:tcp:127.0.0.1:{port},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = None
    while client is None:
        try:
            client = socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            assert proc.poll() is None
            threading.Event().wait(0.05)
    answers = []
    with client:
        for send, marker in keys:
            client.sendall(send)
            answers.append(recv_until(client, marker))
    return answers, proc.wait(timeout=60)


def test_mux_escapes_match_qemu() -> None:
    keys = [(b"\x01h", b"sends C-a\n\r"), (b"\x01x", b"Terminated\n\r")]
    theirs, status = qemu_mux_session(keys)
    assert status == 0

    mux = open_chardev("mon:tcp:127.0.0.1:0,server=on,wait=off")
    assert isinstance(mux, MuxChardev)
    quit_called = threading.Event()
    mux.on_quit = quit_called.set
    serial = mux.frontend()
    monitor = mux.frontend()
    events: list[tuple[str, str]] = []
    serial.set_event_handler(lambda e: events.append(("serial", e)))
    monitor.set_event_handler(lambda e: events.append(("monitor", e)))
    to_serial, to_monitor = Collector(), Collector()
    serial.set_reader(to_serial)     # the machine wires the serial port first: it keeps
    monitor.set_reader(to_monitor)   # the focus when the monitor joins, as in qemu
    assert mux.focus == serial.index and serial.focused and not monitor.focused
    with socket.create_connection(("127.0.0.1", int(mux.base.port))) as client:
        ours = []
        for send, marker in keys:
            client.sendall(send)
            ours.append(recv_until(client, marker))
    assert ours == theirs
    assert quit_called.wait(30)   # set on the reader thread just after the reply
    assert ours[0].startswith(b"\n\rC-a h    print this help\n\r")


def test_mux_focus_switching() -> None:
    mux = open_chardev("mon:tcp:127.0.0.1:0,server=on,wait=off", label="m")
    serial = mux.frontend()
    monitor = mux.frontend()
    events: list[tuple[str, str]] = []
    serial.set_event_handler(lambda e: events.append(("serial", e)))
    monitor.set_event_handler(lambda e: events.append(("monitor", e)))
    to_serial, to_monitor = Collector(), Collector()
    serial.set_reader(to_serial)
    monitor.set_reader(to_monitor)
    with socket.create_connection(("127.0.0.1", int(mux.base.port))) as client:
        client.sendall(b"guest\n")
        assert to_serial.until(b"\n") == b"guest\n"
        client.sendall(b"\x01cinfo status\n")
        assert to_monitor.until(b"\n") == b"info status\n"
        client.sendall(b"\x01c\x01\x01z\n")
        assert to_serial.until(b"z\n") == b"guest\n\x01z\n"
        serial.write(b"serial out ")
        monitor.write(b"monitor out\n")
        assert recv_until(client, b"\n") == b"serial out monitor out\n"
    focus_events = [e for e in events if e[1].startswith("mux-")]
    assert focus_events == [("serial", "mux-in"),                           # first reader
                            ("serial", "mux-out"), ("monitor", "mux-in"),   # C-a c
                            ("monitor", "mux-out"), ("serial", "mux-in")]   # C-a c
    assert ("serial", "opened") in events and ("monitor", "opened") in events


# ---------------------------------------------------------------------------------------
# stdio on a terminal

STDIO_CHILD = r"""
import sys, termios
from pyqemu.system.chardev import open_chardev, _restore_tty
before = termios.tcgetattr(0)
mux = open_chardev(sys.argv[1])
fe = mux.frontend() if hasattr(mux, "frontend") else mux
raw = termios.tcgetattr(0)
got = bytearray()
done = __import__("threading").Event()
def on_bytes(data):
    got.extend(data)
    if b"." in got:
        done.set()
fe.set_reader(on_bytes)
fe.write(b"ready\n")
done.wait()
fe.write(("got %r lflag-echo=%d isig=%d\n" % (bytes(got), bool(raw[3] & termios.ECHO),
                                             bool(raw[3] & termios.ISIG))).encode())
_restore_tty()
print("restored", termios.tcgetattr(0) == before, flush=True)
"""


def run_stdio_child(spec: str, typed: bytes) -> bytes:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", STDIO_CHILD, spec], stdin=slave,
                            stdout=slave, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    out = bytearray()
    try:
        while b"ready" not in out:
            out += os.read(master, 1000)
        os.write(master, typed)
        while b"restored" not in out or not out.endswith(b"\n"):
            try:
                chunk = os.read(master, 1000)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        proc.stderr.close()
    return bytes(out)


def test_stdio_raw_terminal_restored_at_exit() -> None:
    # mon:stdio (as -nographic): no echo, no line editing, Ctrl-C is a byte for the guest
    out = run_stdio_child("mon:stdio", b"ab\x03\r.")
    assert b"ready\r\n" in out                          # output post-processing kept
    assert b"got b'ab\\x03\\r.' lflag-echo=0 isig=0\r\n" in out
    assert b"ab" not in out.split(b"got")[0]            # typed keys were not echoed
    assert b"restored True" in out
    # plain stdio: raw too, but Ctrl-C stays a signal (qemu's signal=on default)
    out = run_stdio_child("stdio", b"xy.")
    assert b"got b'xy.' lflag-echo=0 isig=1\r\n" in out
    assert b"restored True" in out
