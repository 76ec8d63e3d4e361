"""Garbage in, only engine errors or events out (hypothesis)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pyqemu.common.nbd import (
    NEED_DATA,
    ClientConnection,
    Closed,
    NBDError,
    ServerConnection,
    State,
)

VALID_CLIENT = (
    b"\0\0\0\3"
    + b"IHAVEOPT"
    + struct.pack(">II", 8, 0)
    + struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512)
)


def drain(conn, data: bytes, split: int) -> None:
    pos = 0
    for _ in range(10000):
        chunk = data[pos : pos + split]
        pos += len(chunk)
        conn.receive_data(chunk)
        try:
            ev = conn.next_event()
        except NBDError:
            assert conn.state is State.ERROR
            return
        if isinstance(ev, Closed):
            return
        if ev is not NEED_DATA:
            # answer options/requests minimally so the state machine moves on
            return
        if not chunk:
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_server_random_bytes(data: bytes, split: int) -> None:
    s = ServerConnection()
    s.send(s_greeting())
    drain(s, data, split)
    assert s.state in set(State)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_client_random_bytes(data: bytes, split: int) -> None:
    c = ClientConnection()
    drain(c, data, split)
    assert c.state in set(State)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID_CLIENT) - 1), st.integers(0, 255), st.integers(1, 40))
def test_server_mutated_stream(pos: int, byte: int, split: int) -> None:
    data = bytearray(VALID_CLIENT)
    data[pos] = byte
    s = ServerConnection()
    s.send(s_greeting())
    seen = 0
    stream = bytes(data)
    for _ in range(100):
        s.receive_data(stream[:split])
        stream = stream[split:]
        try:
            ev = s.next_event()
        except NBDError:
            assert s.state is State.ERROR
            return
        if ev is NEED_DATA:
            if not stream:
                break
            continue
        seen += 1
        from pyqemu.common.nbd import Option, OptionReply, Rep

        if isinstance(ev, Option):
            try:
                s.send(OptionReply(ev.opt, Rep.ERR_UNSUP, "x"))
            except NBDError:  # e.g. a mutated EXPORT_NAME wants an ExportNameReply
                assert s.state is State.ERROR
                return
    assert seen >= 0 and s.state is not None


def s_greeting():
    from pyqemu.common.nbd import Greeting

    return Greeting()
