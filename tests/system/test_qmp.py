"""The QMP engine (system/monitor/qmp.py) against the real qemu-system-x86_64 7.2.

The same bytes go to qemu's QMP socket and to our engine; the reply lines are compared
byte for byte (key order included). These inputs never reach the machine: framing,
JSON errors, message checks, capabilities negotiation, argument checks, unknown
commands, ``id`` echoing, human-monitor-command with machine-free HMP commands.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyqemu.system.monitor import hmp as H
from pyqemu.system.monitor import qmp as Q

from tests.servers import connect_unix
from tests.system.conftest import PYQEMU_SYSTEM, MonitorPeer, emulator_path

SYNC = b'{"execute": "query-version", "id": "sync"}\n'


class QmpPeer(MonitorPeer):
    """A qemu-system-x86_64 -S with -qmp on a unix socket."""

    def __init__(self, qemu: str, sock_path: Path, extra: list[str] | None = None) -> None:
        super().__init__(qemu, "-qmp", sock_path, extra)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def exchange(self, data: bytes) -> list[bytes]:
        """Send ``data`` then a sync command; the reply lines before the sync reply."""
        self.sock.sendall(data + SYNC)
        lines = []
        while True:
            line = self.file.readline()
            assert line, f"qemu closed QMP after {lines!r}"
            if b'"sync"' in line:
                return lines
            lines.append(line)


@pytest.fixture
def qemu_qmp(qemu_system: str, tmp_path: Path) -> Iterator[QmpPeer]:
    peer = QmpPeer(qemu_system, tmp_path / "qmp.sock")
    yield peer
    peer.close()


class OurQmp:
    """Our engine fed the same way (machine-free inputs only), with HMP's remembered
    /fmt defaults at qemu's start values (x, word), as a fresh qemu has them."""

    def __init__(self) -> None:
        H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4
        self.session = Q.QmpSession(Q.QmpCommands(machine=None))

    def exchange(self, data: bytes, *, bytewise: bool = False) -> list[bytes]:
        chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
        out = []
        for chunk in chunks + [SYNC]:
            for item in self.session.feed(chunk):
                reply = item["reply"] if "reply" in item else self.session.run(item["request"])
                out.append(Q.QmpSession.encode(reply))
        assert b'"sync"' in out[-1], out
        return out[:-1]


NEGOTIATION = [
    b'{"execute":"query-status"}\n',
    b'{"execute":"foo","id":1}\n',
    b'{"execute":"stop","id":"x"}\n',
    b'garbage\n',
    b'{"foo":1}\n',
    b'[1]\n',
    b'{}\n',
    b'{"id":1}\n',
    b'{"execute": }\n',
    b'{"a" 1}\n',
    b'{,}\n',
    b'}\n',
    b'"str"\n',
    b'1\n',
    b'true\n',
    b'null\n',
    b'{"execute":"a" "b"}\n',
    b'[1 2]\n',
    b'@\n',
    b'{1:2}\n',
    b'{"execute":1}\n',
    b'{"execute":"stop","arguments":[]}\n',
    b'{"exec-oob":"query-status"}\n',
    b'{"execute":"stop", "extra": 1}\n',
    b'{"execute":"qmp_capabilities","arguments":{"x":1}}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}\n',
    b'{"execute":"query-status","id":[1,{"a":null}]}{"execute":"stop","id":2.5}',
    b'\n\n   \t',
]

COMMAND_MODE = [
    b'{"execute":"qmp_capabilities"}\n',
    b'{"execute":"foo","id":1}\n',
    b'{"execute":"query-status","arguments":{"x":1}}\n',
    b'{"execute":"stop","arguments":{"a":1},"id":"s"}\n',
    b'{"execute":"human-monitor-command","arguments":{}}\n',
    b'{"execute":"human-monitor-command"}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":1}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p 1+2"},"id":7}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"help x"}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"foo"}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p /c 27"}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p 1 2"}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p 4",'
    b'"cpu-index":0}}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p 4",'
    b'"cpu-index":3}}\n',
    b'{"execute":"query-name","arguments":{"x":1}}\n',
    b"{'execute':'human-monitor-command','arguments':{'command-line':'p \\'\"\\''}}\n",
    b'{"execute":"query-version","arguments":{"a":1}}\n',
    b'{"execute":"system_reset","arguments":{"a":1}}\n',
    b'{"execute":"quit","arguments":{"a":1}}\n',
    b'{"execute":"cont","arguments":{"a":1}}\n',
    b'{"exec-oob":"query-status"}\n',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"f\\u001bo\\u00e9\\u007f"},'
    b'"id":"\\ud83d\\ude00\\t"}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}\n',
    b'{"execute":"qmp_capabilities","arguments":{"x":1}}\n',
    b'{"execute":1,"foo":2,"arguments":3}\n',
    b'{"arguments":3,"id":"z","control":1}\n',
]

OOB_MODE = [                              # a new session that enables oob
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}\n',
    b'{"exec-oob":"query-status"}\n',
    b'{"exec-oob":"query-status","id":1}\n',
    b'{"exec-oob":"foo","id":1}\n',
    b'{"exec-oob":"qmp_capabilities","id":1}\n',
    b'{"execute":"query-name","exec-oob":"query-status"}\n',
    b'{"exec-oob":1}\n',
    b'{"exec-oob":"stop","id":2,"arguments":{"a":1}}\n',
]


def test_negotiation_and_errors_match_qemu(qemu_qmp: QmpPeer) -> None:
    ours = OurQmp()
    assert json.loads(ours.session.greeting())["QMP"]["capabilities"] == ["oob"]
    theirs = json.loads(qemu_qmp.greeting)
    mine = json.loads(ours.session.greeting())
    assert list(mine["QMP"]) == list(theirs["QMP"])
    assert list(mine["QMP"]["version"]["qemu"]) == list(theirs["QMP"]["version"]["qemu"])
    assert ours.session.greeting().endswith(b"}\r\n") and qemu_qmp.greeting.endswith(b"}\r\n")
    for data in NEGOTIATION:
        assert ours.exchange(data) == qemu_qmp.exchange(data), data
    for data in COMMAND_MODE:
        assert ours.exchange(data) == qemu_qmp.exchange(data), data


def test_oob_capability_matches_qemu(qemu_qmp: QmpPeer) -> None:
    """With the oob capability: exec-oob is read, and refused for every command."""
    ours = OurQmp()
    for data in OOB_MODE:
        assert ours.exchange(data) == qemu_qmp.exchange(data), data
    # events, once negotiated: qemu's timestamp layout
    assert ours.session.event("STOP", None, when=1.5) == (
        b'{"timestamp": {"seconds": 1, "microseconds": 500000}, "event": "STOP"}\r\n')
    assert Q.QmpSession(Q.QmpCommands(machine=None)).event("STOP", None) is None


def test_framing_bytewise(qemu_qmp: QmpPeer) -> None:
    """Messages split at every byte, and several in one write, give the same replies."""
    ours = OurQmp()
    stream = b"".join(NEGOTIATION) + b"".join(COMMAND_MODE)
    assert ours.exchange(stream, bytewise=True) == qemu_qmp.exchange(stream)


def test_query_version_shape(qemu_qmp: QmpPeer) -> None:
    ours = OurQmp()
    ours.exchange(b'{"execute":"qmp_capabilities"}')
    qemu_qmp.exchange(b'{"execute":"qmp_capabilities"}')
    q = b'{"execute":"query-version","id":"v"}'
    (mine,) = ours.exchange(q)
    (theirs,) = qemu_qmp.exchange(q)
    m, t = json.loads(mine), json.loads(theirs)
    assert list(m) == list(t) == ["return", "id"]
    assert list(m["return"]) == list(t["return"])
    assert list(m["return"]["qemu"]) == list(t["return"]["qemu"])
    assert (m["return"]["qemu"]["major"], m["return"]["qemu"]["minor"]) == (
        t["return"]["qemu"]["major"], t["return"]["qemu"]["minor"])


def test_qmp_sockets_match_qemu(qemu_system: str, tmp_path: Path) -> None:
    """Two -qmp unix sockets at once, each with its own negotiation; a client that
    comes back gets a new greeting and must negotiate again, as with qemu."""
    from pyqemu.system import chardev
    from pyqemu.system.monitor import server

    H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4
    qemu = subprocess.Popen(
        [qemu_system, "-S", "-display", "none", "-nodefaults",
         "-qmp", f"unix:{tmp_path / 'q1.sock'},server=on,wait=off",
         "-qmp", f"unix:{tmp_path / 'q2.sock'},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    chrs = [chardev.open_chardev(f"unix:{tmp_path / f'o{i}.sock'},server=on,wait=off",
                                 for_monitor=True, label=f"test_qmp_{i}") for i in (1, 2)]
    mons = [server.attach_monitor(c, None, kind="qmp") for c in chrs]

    def connect(name: str) -> tuple[socket.socket, object]:
        s = connect_unix(tmp_path / name, qemu)
        return s, s.makefile("rb")

    def greeting_shape(line: bytes) -> object:
        g = json.loads(line)
        return list(g["QMP"]), g["QMP"]["capabilities"]

    try:
        for _visit in range(2):
            clients = {n: connect(n) for n in ("q1.sock", "q2.sock", "o1.sock", "o2.sock")}
            greetings = {n: f.readline() for n, (s, f) in clients.items()}
            shapes = {greeting_shape(g) == greeting_shape(greetings["q1.sock"])
                      for g in greetings.values()}
            assert shapes == {True}, greetings
            script = [b'{"execute":"query-name","id":1}\n',
                      b'{"execute":"qmp_capabilities","id":2}\n',
                      b'{"execute":"human-monitor-command","arguments":'
                      b'{"command-line":"p 6*7"},"id":3}\n',
                      b'{"execute":"qmp_capabilities","id":4}\n']
            replies = {}
            for n, (s, f) in clients.items():
                # the second socket of each emulator gets its script one message
                # later: the two sessions are independent
                order = script if n.endswith("1.sock") else script[1:] + script[:1]
                got = []
                for msg in order:
                    s.sendall(msg)
                    got.append(f.readline())
                replies[n] = got
            assert replies["o1.sock"] == replies["q1.sock"]
            assert replies["o2.sock"] == replies["q2.sock"]
            assert replies["q1.sock"] != replies["q2.sock"]
            for s, f in clients.values():
                f.close()
                s.close()
    finally:
        for m in mons:
            m.close()
        for c in chrs:
            c.close()
        qemu.kill()
        qemu.wait()


def _three_drive_peer(qemu_system: str, tmp_path: Path) -> QmpPeer:
    """qemu with a qcow2 over a qcow2 backing file (ide0-hd0), a raw CD-ROM (ide0-cd1)
    and an empty CD-ROM drive, its images made by qemu-img in ``tmp_path``."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"),
                    "2M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                    "qcow2", str(tmp_path / "top.qcow2")], check=True)
    (tmp_path / "r.raw").write_bytes(bytes(65536))
    return QmpPeer(qemu_system, tmp_path / "qmp.sock", extra=[
        "-drive", f"file={tmp_path / 'top.qcow2'},if=ide,index=0",
        "-drive", f"file={tmp_path / 'r.raw'},format=raw,if=ide,index=1,media=cdrom",
        "-drive", "if=ide,index=2,media=cdrom"])


def test_info_block_text_from_query_block(qemu_system: str, tmp_path: Path) -> None:
    """HMP's info block is made from query-block's data: qemu's own query-block reply,
    formatted by us, equals qemu's info block text (backing chain, read-only CD-ROM,
    empty drive; -v with the image details; one device by name)."""
    peer = _three_drive_peer(qemu_system, tmp_path)
    try:
        peer.exchange(b'{"execute":"qmp_capabilities"}')

        def call(msg: dict) -> object:
            (line,) = peer.exchange(json.dumps(msg).encode())
            return json.loads(line)["return"]

        blocks = call({"execute": "query-block"})
        assert len(blocks) == 3
        for args, device, verbose in [("", None, False), ("-v", None, True),
                                      ("ide0-hd0", "ide0-hd0", False),
                                      ("-v ide0-cd1", "ide0-cd1", True), ("foo", "foo", False)]:
            text = call({"execute": "human-monitor-command",
                         "arguments": {"command-line": f"info block {args}"}})
            ours = H.format_block_info(blocks, device, verbose).replace("\n", "\r\n")
            assert ours == text, args
    finally:
        peer.close()


def test_block_device_info_matches_qemu(qemu_system: str, tmp_path: Path) -> None:
    """block_device_info() over pyqemu's own block nodes gives qemu's query-block entries
    (same image files; node names and qdev paths are qemu's internal names, taken over)."""
    from pyqemu.common.block import open_image

    peer = _three_drive_peer(qemu_system, tmp_path)
    nodes = [open_image(str(tmp_path / "top.qcow2"), "qcow2", read_only=True),
             open_image(str(tmp_path / "r.raw"), "raw", read_only=True), None]
    try:
        peer.exchange(b'{"execute":"qmp_capabilities"}')
        (line,) = peer.exchange(b'{"execute":"query-block"}')
        theirs = json.loads(line)["return"]
        ours = []
        for entry, node in zip(theirs, nodes, strict=True):
            ins = entry.get("inserted", {})
            ours.append(Q.block_device_info(
                entry["device"], entry["qdev"], node, removable=entry["removable"],
                node_name=ins.get("node-name", ""), read_only=ins.get("ro", False)))
        assert Q.QmpSession.encode({"return": ours}) == line
    finally:
        for n in nodes:
            if n is not None:
                n.close()
        peer.close()


# --- on the running machine: pyqemu-system-x86_64 next to qemu-system-x86_64 ----------


def _strip_times(lines: list[bytes]) -> list[dict]:
    out = []
    for line in lines:
        msg = json.loads(line)
        if "timestamp" in msg:
            ts = msg.pop("timestamp")
            assert list(ts) == ["seconds", "microseconds"]
            assert isinstance(ts["seconds"], int) and 0 <= ts["microseconds"] < 1_000_000
        out.append(msg)
    return out


RUN_STATE_SCRIPT = [
    b'{"execute":"qmp_capabilities"}',
    b'{"execute":"query-status","id":1}',
    b'{"execute":"query-pci","id":"pci"}',
    b'{"execute":"stop","id":2}',                   # prelaunch: stays, no STOP event
    b'{"execute":"query-status","id":3}',
    b'{"execute":"cont","id":4}',                   # RESUME, then the reply
    b'{"execute":"query-status","id":5}',
    b'{"execute":"stop","id":6}',                   # STOP, then the reply
    b'{"execute":"query-status","id":7}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}',
    b'{"execute":"system_reset","id":8}',           # paused: the host's RESET only,
    b'{"execute":"query-status","id":9}',           # and the VM is in prelaunch again
    b'{"execute":"query-name","id":10}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"p $cs.base"}}',
    b'{"execute":"query-chardev","id":11}',
]


def test_qmp_run_states_match_qemu(qemu_system: str, tmp_path: Path) -> None:
    """The same QMP script on both machines: replies, and events in the same order
    with qemu's data; quit sends SHUTDOWN, its reply, then closes; exit status 0."""
    results = []
    for exe in (qemu_system, emulator_path(PYQEMU_SYSTEM)):     # one after the other,
        peer = QmpPeer(exe, tmp_path / "qmp.sock", extra=["-name", "qmp-test"])  # one path
        try:
            lines = []
            for msg in RUN_STATE_SCRIPT:
                lines += peer.exchange(msg)
            peer.sock.sendall(b'{"execute":"quit","id":"bye"}\n')
            while True:
                try:
                    line = peer.file.readline()
                except ConnectionResetError:    # qemu may reset rather than close
                    break
                if not line:
                    break
                lines.append(line)
            assert peer.proc.wait(timeout=60) == 0
            results.append(_strip_times(lines))
        finally:
            peer.close()
    ours, theirs = results[1], results[0]
    chardev = [m for m in theirs if m.get("id") == 11]
    assert chardev and [c["label"] for c in chardev[0]["return"]] == ["compat_monitor0"]
    assert ours == theirs


async def _two_clients(sock_a: Path, sock_b: str, vm: object) -> list[list[str]]:
    import asyncio

    from qemu.qmp import ConnectError, EventListener, QMPClient

    from tests.system.conftest import qmp_connect, qmp_disconnect, qmp_wait_status

    a = await qmp_connect(sock_a, vm)
    host, port = sock_b.rsplit(":", 1)
    deadline = time.monotonic() + 60
    while True:                          # the tcp socket may be opened a little later
        b = QMPClient("second")
        try:
            await b.connect((host, int(port)))
            break
        except ConnectError:
            assert time.monotonic() < deadline, "no QMP on tcp"
            await asyncio.sleep(0.05)
    listeners = [EventListener(("STOP", "RESUME", "RESET", "SHUTDOWN")) for _ in (a, b)]
    for client, listener in zip((a, b), listeners, strict=True):
        client.register_listener(listener)
    try:
        assert (await a.execute("query-status"))["status"] == "prelaunch"
        await b.execute("cont")
        await qmp_wait_status(a, vm, "running")
        await a.execute("stop")
        assert await b.execute("human-monitor-command",
                               {"command-line": "info status"}) == "VM status: paused\r\n"
        await b.execute("system_reset")
        await a.execute("quit")
        # both clients get SHUTDOWN before the server closes; wait until it arrived
        deadline = time.monotonic() + 60
        while not all(any(e["event"] == "SHUTDOWN" for e in lst.history)
                      for lst in listeners):
            assert time.monotonic() < deadline, [lst.history for lst in listeners]
            await asyncio.sleep(0.05)
    finally:
        await qmp_disconnect(a)
        await qmp_disconnect(b)
    return [[e["event"] + repr(e.get("data", {})) for e in lst.history] for lst in listeners]


def test_two_qmp_clients_with_qemu_qmp(system_emulator: str, tmp_path: Path,
                                       vm_runner: object) -> None:
    """-qmp on a unix socket and on tcp at once, each driven by qemu.qmp's QMPClient:
    both clients see the same events (those they were connected for)."""
    import asyncio

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = tmp_path / "a.sock"
    vm = vm_runner([system_emulator, "-S", "-display", "none", "-nodefaults",
                    "-qmp", f"unix:{sock},server=on,wait=off",
                    "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"])
    seen = asyncio.run(_two_clients(sock, f"127.0.0.1:{port}", vm))
    assert seen[0] == seen[1]
    assert seen[0][:2] == ["RESUME{}", "STOP{}"]
    assert "RESET{'guest': False, 'reason': 'host-qmp-system-reset'}" in seen[0]
    assert seen[0][-1] == "SHUTDOWN{'guest': False, 'reason': 'host-qmp-quit'}"
    status, _out, _err = vm.wait()
    assert status == 0


def test_qmp_pretty_matches_qemu(qemu_system: str, tmp_path: Path) -> None:
    """-qmp-pretty: qemu's indented JSON (empty dicts as '{' newline '}'), CR LF line
    ends, for the greeting, replies and errors."""
    from pyqemu.system import chardev
    from pyqemu.system.monitor import server

    H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4
    qemu = subprocess.Popen([qemu_system, "-S", "-display", "none", "-nodefaults",
                             "-qmp-pretty", f"unix:{tmp_path / 'q.sock'},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    chr_ = chardev.open_chardev(f"unix:{tmp_path / 'o.sock'},server=on,wait=off",
                                for_monitor=True, label="test_qmp_pretty")
    mon = server.attach_monitor(chr_, None, kind="qmp", pretty=True)

    def connect(name: str) -> socket.socket:
        return connect_unix(tmp_path / name, qemu)

    def message(s: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"\r\n}\r\n"):     # a pretty message ends with "}" alone
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        return data

    try:
        q, o = connect("q.sock"), connect("o.sock")
        g_q, g_o = message(q), message(o)
        # the same lines, indents and keys; the version numbers and package differ
        assert [x.split(b":")[0] for x in g_o.split(b"\r\n")] == \
            [x.split(b":")[0] for x in g_q.split(b"\r\n")]
        for msg in [b'{"execute":"query-status"}', b'{"execute":"qmp_capabilities"}',
                    b'{"execute":"foo","id":[1,{},[]]}', b'garbage\n',
                    b'{"execute":"human-monitor-command","arguments":{"command-line":"p 1"}}']:
            q.sendall(msg)
            o.sendall(msg)
            assert message(o) == message(q), msg
        q.close()
        o.close()
    finally:
        mon.close()
        chr_.close()
        qemu.kill()
        qemu.wait()


# Malformed JSON as qemu's lexer, streamer and parser see it: stray bytes (and what is
# skipped after them), number and keyword tokens, string escapes, surrogates and
# (modified) UTF-8, nesting that never closes (0xFF resynchronises).
JSON_EDGES = [
    b'{"a":"\x01"}', b'{"execute":"x\\q"}', b'{"a":-}', b'{"a":01}', b'{"execute":"\\u00"}',
    b'{"execute":"\\ud800"}', b'{"execute":"\\ud800\\u0041"}', b'{"execute":"\\udc00"}',
    b'{"execute":"\\u0000"}', b'{"execute":"a\tb"}', b'{"execute": nul}', b'{"execute": NaN}',
    b'\xff', b'{"execute":"\xc3\xa9"}', b'{"execute":"\xc3"}', b'{"execute":"\xed\xa0\x80"}',
    b'{"execute":"\xc0\x80"}', b'{"a":1.}', b'{"a":1e}', b'{"a":1e+}', b'{"a":.5}',
    b'{"a":1.5e3x}', b'{"a":123abc}', b'{"a":-0}', b'{"a":00}',
    b'@@@ {"execute":"query-version"}', b'{"a" "b"}', b'{"a":1 "b":2}', b'[1 2]',
    b'{"a":1}}', b'{"a":[1}', b']', b'{]', b'[}', b'{"a"}', b'{"a":}', b'{:1}',
    b'{"a":1,"a":2}', b"'abc", b"{'execute':\"x\"}", b'{"execute":"x\\\'y"}',
    b"{'execute':'x\\\"y'}", b'{"execute":"\\/"}', b'{"id":99999999999999999999999}',
    b'{"id":-99999999999999999999999}', b'{"id":18446744073709551615}', b'{"id":-0.0}',
    b'{"id":1e400}', b'{"execute":true}', b'%', b'{"a":%d}', b'Ab', b'{"a":1}garbage',
    b'{"execute":"\\uD83D\\uDE00x"}', b'{"execute":"\xf0\x9f\x98\x80"}',
    b'{"execute":"\\u00e9"}', b'{"execute":"\xfe"}', b'tru e', b'{{}:1}', b'[[[]]]',
    b'{"execute":"query-name"} {"execute":"query-name"}', b'{"id":[1,2,{"a":[]}]}',
]


def test_json_edges_match_qemu(qemu_qmp: QmpPeer) -> None:
    ours = OurQmp()
    for data in JSON_EDGES:
        msg = data + b"\n\xff\n"
        assert ours.exchange(msg) == qemu_qmp.exchange(msg), data


_JSON_ALPHABET = b'{}[]:,"\'\\ \n\t\r-+.0123456789eEaflnrstuxNA@%/\x00\x01\xc0\x80\xc3\xa9\xfe\xff'


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([bytes([b]) for b in _JSON_ALPHABET]
                                + [b'"execute"', b'"id"', b'"arguments"', b"true", b"null",
                                   b'"qmp_capabilities"', b"\\u00e9", b"\\ud83d"]),
                max_size=40))
def test_random_json_matches_qemu(qemu_qmp: QmpPeer, pieces: list[bytes]) -> None:
    """Byte soup from JSON's alphabet: our replies equal qemu's, message for message."""
    H.FORMAT_DEFAULTS.format, H.FORMAT_DEFAULTS.size = "x", 4
    if not hasattr(qemu_qmp, "ours"):
        qemu_qmp.ours = OurQmp()          # one session each, living as long as qemu's
    msg = b"".join(pieces) + b"\n\xff\n"
    assert qemu_qmp.ours.exchange(msg) == qemu_qmp.exchange(msg), msg


def test_qmp_pretty_on_the_machine(qemu_system: str, tmp_path: Path) -> None:
    """pyqemu-system-x86_64 -qmp-pretty: the layout of qemu's replies and events."""
    layouts = []
    for exe in (qemu_system, emulator_path(PYQEMU_SYSTEM)):
        sock = tmp_path / "pretty.sock"
        proc = subprocess.Popen([exe, "-S", "-display", "none", "-nodefaults",
                                 "-qmp-pretty", f"unix:{sock},server=on,wait=off"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            s = connect_unix(sock, proc)
            s.sendall(b'{"execute":"qmp_capabilities"}{"execute":"query-status"}'
                      b'{"execute":"cont"}{"execute":"quit"}')
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            s.close()
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # each line's indent and key; numbers (version, timestamps) and package aside
        layouts.append([line.split(b":")[0] for line in data.split(b"\r\n")])
    assert layouts[0] == layouts[1]
