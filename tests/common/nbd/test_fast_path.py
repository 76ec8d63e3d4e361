"""The server engine's transmission fast paths (ServerConnection.next_event /
send_parts) against the generic path they shortcut (Connection.next_event /
send_parts): the same events, states, in-flight sets and errors for the same
bytes, including random request streams cut at random places, and the
unchecked message constructors equal to the checked ones."""

from __future__ import annotations

import random
import struct

import pytest
from pyqemu.common.nbd import (
    NEED_DATA,
    Chunk,
    Closed,
    Cmd,
    Connection,
    Errno,
    LocalProtocolError,
    NBDError,
    ReplyFlag,
    Request,
    SimpleReply,
    State,
    StructuredChunk,
)
from pyqemu.common.nbd.events import data_chunk, done_chunk, parsed_request

from .test_engine import handshake

REQ = struct.Struct(">IHHQQI")
MAGIC = 0x25609513


def request_bytes(cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0,
                  magic: int = MAGIC) -> bytes:  # fmt: skip
    head = REQ.pack(magic, flags, cmd, cookie, offset, length)
    return head + (bytes(range(256)) * (length // 256 + 1))[:length] if cmd == 1 else head


def drain(conn, generic: bool) -> list:
    """Every event the buffered bytes give, then NEED_DATA or the error's text."""
    out: list = []
    for _ in range(10000):
        try:
            ev = Connection.next_event(conn) if generic else conn.next_event()
        except NBDError as exc:
            out.append(("error", type(exc).__name__, str(exc)))
            return out
        if ev is NEED_DATA:
            return out
        if isinstance(ev, Request):
            data = None if ev.data is None else bytes(ev.data)
            out.append((ev, data, type(ev.cmd), type(ev.flags)))
        else:
            out.append(ev)
            if isinstance(ev, Closed):
                return out
    raise AssertionError("no end")


def state(conn) -> tuple:
    return conn.state, sorted(conn.in_flight), conn.buffered


def test_unchecked_constructors_equal_checked() -> None:
    for cmd, flags in ((0, 0), (0, 4), (1, 1), (3, 0), (2, 0), (99, 0x8000), (7, 8)):
        data = b"xyz" if cmd == 1 else None
        fast = parsed_request(cmd, 2**64 - 1, 2**64 - 1, 3, flags, data)
        slow = Request(cmd, 2**64 - 1, 2**64 - 1, 3, flags, data)
        assert fast == slow and repr(fast) == repr(slow)
        assert type(fast.cmd) is type(slow.cmd) and type(fast.flags) is type(slow.flags)
    for done in (True, False):
        flags = ReplyFlag.DONE if done else ReplyFlag.NONE
        slow = StructuredChunk(9, Chunk.OFFSET_DATA, flags, offset=4096, data=b"ab")
        assert data_chunk(9, 4096, b"ab", done) == slow
        assert repr(data_chunk(9, 4096, b"ab", done)) == repr(slow)
    assert done_chunk(7) == StructuredChunk(7, Chunk.NONE, ReplyFlag.DONE)
    with pytest.raises(NBDError):
        data_chunk(1, 0, b"", True)


@pytest.mark.parametrize("seed", range(6))
def test_random_request_streams(seed: int) -> None:
    """Random valid and invalid requests, fed in random pieces: the fast and
    the generic parser agree on every event and on the error that ends it."""
    rnd = random.Random(seed)
    wire = b""
    for i in range(300):
        r = rnd.random()
        # late in the stream, some cookies repeat (some still in flight: an error)
        cookie = rnd.randrange(1, 300) if i > 250 and rnd.random() < 0.1 else i + 1
        if r < 0.4:
            wire += request_bytes(0, cookie, rnd.randrange(1 << 20), rnd.choice((512, 4096)))
        elif r < 0.7:
            wire += request_bytes(1, cookie, rnd.randrange(1 << 20), rnd.choice((0, 7, 4096)),
                                  rnd.choice((0, 1)))  # fmt: skip
        elif r < 0.8:
            wire += request_bytes(rnd.choice((3, 4, 5, 6, 7, 99)), cookie, 0, 512,
                                  rnd.choice((0, 2, 0x8000)))  # fmt: skip
        elif r < 0.83 and i > 250:
            wire += REQ.pack(MAGIC, 0, 1, cookie, 0, 64 << 20)  # over the payload bound
        elif r < 0.85 and i > 250:
            wire += request_bytes(0, cookie, magic=0x12345678)
        elif r < 0.86 and i > 280:
            wire += request_bytes(2, cookie)  # DISC: nothing may follow
        else:
            wire += request_bytes(0, cookie, 0, 4096)
    fast, _ = handshake()
    slow, _ = handshake()
    pos = 0
    replied = 0
    while pos < len(wire):
        step = rnd.choice((1, 7, 28, 100, 4096, 10000))
        piece = wire[pos : pos + step]
        pos += step
        for conn in (fast, slow):
            if conn.state is not State.ERROR:
                conn.receive_data(piece)
        got_fast, got_slow = drain(fast, False), drain(slow, True)
        assert got_fast == got_slow
        assert state(fast) == state(slow)
        if fast.state is State.ERROR:
            break
        # answer some requests in flight so that cookies come back
        for cookie in sorted(fast.in_flight)[: rnd.randrange(4)]:
            req = fast.in_flight[cookie]
            msg = (
                done_chunk(cookie)
                if req.cmd != Cmd.READ
                else data_chunk(cookie, req.offset, bytes(req.length), True)
            )
            assert fast.send_parts(msg) == Connection.send_parts(slow, msg)
            replied += 1
        assert state(fast) == state(slow)
    assert replied > 10
    for conn in (fast, slow):
        if conn.state is not State.ERROR:
            conn.receive_data(b"")
    assert drain(fast, False) == drain(slow, True)
    assert fast.state is slow.state


def reply_outcome(conn, msg, generic: bool):
    try:
        parts = Connection.send_parts(conn, msg) if generic else conn.send_parts(msg)
    except LocalProtocolError as exc:
        return ("error", str(exc), conn.state)
    return (b"".join(bytes(p) for p in parts), conn.state, sorted(conn.in_flight))


@pytest.mark.parametrize("structured", [True, False])
def test_replies_agree(structured: bool) -> None:
    """Every reply kind the fast send path takes or declines, right and wrong:
    the same bytes, in-flight set and state as the generic path."""
    replies = [
        data_chunk(1, 0, b"ab", False),
        data_chunk(1, 2, b"cd", True),
        done_chunk(2),
        done_chunk(2),  # no longer in flight
        data_chunk(77, 0, b"x", True),  # never in flight
        SimpleReply(3, 0, b"abcd"),  # READ of 4: right
        SimpleReply(4, 0, b"abc"),  # READ of 4: wrong length
        SimpleReply(5),  # READ without data and no error: wrong
        SimpleReply(6, Errno.EIO),  # READ error: right
        SimpleReply(7, 0, b"abcd"),  # a FLUSH with data: wrong
        SimpleReply(8),
        StructuredChunk(9, Chunk.ERROR, ReplyFlag.DONE, error=Errno.EINVAL, message="no"),
    ]
    reqs = [request_bytes(0, 1, 0, 4), request_bytes(3, 2)]
    reqs += [request_bytes(0, c, 0, 4) for c in (3, 4, 5, 6)]
    reqs += [request_bytes(3, 7), request_bytes(3, 8), request_bytes(0, 9, 0, 4)]
    for i in range(len(replies)):
        fast, _ = handshake(structured)
        slow, _ = handshake(structured)
        for conn in (fast, slow):
            conn.receive_data(b"".join(reqs))
        assert drain(fast, False) == drain(slow, True)
        for msg in replies[: i + 1]:
            a, b = reply_outcome(fast, msg, False), reply_outcome(slow, msg, True)
            assert a == b, msg
            if a[0] == "error":
                break


def test_disc_and_eof_agree() -> None:
    """NBD_CMD_DISC moves both to DISCONNECTING (bytes after it are an error
    at EOF), a cut request at EOF is the same error."""
    for tail in (request_bytes(0, 3, 0, 4), b"", request_bytes(1, 4, 0, 9)[:20]):
        fast, _ = handshake()
        slow, _ = handshake()
        wire = request_bytes(1, 1, 0, 5) + request_bytes(2, 2) + tail
        for conn in (fast, slow):
            conn.receive_data(wire)
            conn.receive_data(b"")
        assert drain(fast, False) == drain(slow, True)
        assert fast.state is slow.state
        assert fast.state is (State.CLOSED if not tail else State.ERROR)
    fast, _ = handshake()
    slow, _ = handshake()
    for conn in (fast, slow):
        conn.receive_data(request_bytes(1, 4, 0, 9)[:30])
        conn.receive_data(b"")
    got = drain(fast, False)
    assert got == drain(slow, True) and got[0][0] == "error"
