"""The NBD engine in memory: byte-for-byte wire formats, both ends, the state table."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from pyqemu.common.nbd import (
    NEED_DATA,
    Chunk,
    ClientConnection,
    ClientFlag,
    ClientFlags,
    Closed,
    Cmd,
    CmdFlag,
    Errno,
    ExportNameOpt,
    ExportNameReply,
    Extent,
    Greeting,
    HandshakeFlag,
    Info,
    InfoOpt,
    InvalidMessage,
    LocalProtocolError,
    MetaContextOpt,
    Opt,
    Option,
    OptionReply,
    ProtocolError,
    Rep,
    RepInfo,
    ReplyFlag,
    RepMetaContext,
    RepServer,
    Request,
    ServerConnection,
    SimpleReply,
    State,
    StructuredChunk,
    TransmissionFlag,
)

FLAGS = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH


def events(conn, data: bytes) -> list:
    conn.receive_data(data)
    out = []
    for _ in range(1000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            break
        out.append(ev)
        if isinstance(ev, Closed):
            break
    return out


def one(conn, data: bytes):
    evs = events(conn, data)
    assert len(evs) == 1, evs
    return evs[0]


def handshake(structured: bool = True) -> tuple[ServerConnection, ClientConnection]:
    s, c = ServerConnection(), ClientConnection()
    assert one(c, s.send(Greeting())) == Greeting()
    assert one(s, c.send(ClientFlags())) == ClientFlags()
    if structured:
        assert one(s, c.send(Option(Opt.STRUCTURED_REPLY))).opt is Opt.STRUCTURED_REPLY
        one(c, s.send(OptionReply(Opt.STRUCTURED_REPLY, Rep.ACK)))
    go = one(s, c.send(Option.go("disk", (Info.BLOCK_SIZE,))))
    assert go.parsed() == InfoOpt("disk", (Info.BLOCK_SIZE,))
    for rep in (
        OptionReply(Opt.GO, Rep.INFO, RepInfo(Info.EXPORT, size=1 << 20, flags=FLAGS)),
        OptionReply(
            Opt.GO, Rep.INFO, RepInfo(Info.BLOCK_SIZE, minimum=1, preferred=4096, maximum=1 << 25)
        ),
        OptionReply(Opt.GO, Rep.ACK),
    ):
        assert one(c, s.send(rep)) == rep
    assert s.state is c.state is State.TRANSMISSION
    assert s.structured is c.structured is structured
    return s, c


def test_greeting_bytes() -> None:
    s = ServerConnection()
    assert s.send(Greeting()) == b"NBDMAGICIHAVEOPT\x00\x03"
    assert s.state is State.CLIENT_FLAGS
    c = ClientConnection()
    assert c.next_event() is NEED_DATA
    c.receive_data(b"NBDMAGIC")
    assert c.next_event() is NEED_DATA
    assert c.bytes_wanted == 10
    c.receive_data(b"IHAVEOPT\x00\x01")
    assert c.next_event() == Greeting(HandshakeFlag.FIXED_NEWSTYLE)
    assert c.send(ClientFlags(ClientFlag.FIXED_NEWSTYLE)) == b"\0\0\0\1"


def test_option_bytes() -> None:
    s, c = ServerConnection(), ClientConnection()
    one(c, s.send(Greeting()))
    one(s, c.send(ClientFlags()))
    wire = c.send(Option.go("ab", (Info.NAME, Info.BLOCK_SIZE)))
    assert wire == (b"IHAVEOPT" + struct.pack(">II", 7, 12) + b"\0\0\0\2ab" + b"\0\2\0\1\0\3")
    ev = one(s, wire)
    assert ev.parsed() == InfoOpt("ab", (Info.NAME, Info.BLOCK_SIZE))
    rep = s.send(OptionReply(Opt.GO, Rep.ERR_UNKNOWN, "no such export"))
    assert rep == struct.pack(">QIII", 0x3E889045565A9, 7, 0x80000006, 14) + b"no such export"
    assert one(c, rep).data == "no such export"
    assert s.state is c.state is State.OPTIONS
    # LIST
    one(s, c.send(Option(Opt.LIST)))
    r = s.send(OptionReply(Opt.LIST, Rep.SERVER, RepServer("a", "desc")))
    assert r.endswith(b"\0\0\0\1adesc")
    assert one(c, r).data == RepServer("a", "desc")
    one(c, s.send(OptionReply(Opt.LIST, Rep.ACK)))
    # meta contexts
    opt = Option.meta_context(Opt.LIST_META_CONTEXT, "", ("base:", "qemu:"))
    assert one(s, c.send(opt)).parsed() == MetaContextOpt("", ("base:", "qemu:"))
    r = s.send(OptionReply(opt.opt, Rep.META_CONTEXT, RepMetaContext(0, "base:allocation")))
    assert r[-19:] == b"\0\0\0\0base:allocation"
    assert one(c, r).data == RepMetaContext(0, "base:allocation")
    one(c, s.send(OptionReply(opt.opt, Rep.ACK)))


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name(no_zeroes: bool) -> None:
    s, c = ServerConnection(), ClientConnection()
    one(c, s.send(Greeting()))
    cf = ClientFlag.FIXED_NEWSTYLE | (ClientFlag.NO_ZEROES if no_zeroes else 0)
    one(s, c.send(ClientFlags(cf)))
    wire = c.send(Option.export_name("x"))
    assert wire == b"IHAVEOPT\0\0\0\1\0\0\0\1x"
    assert one(s, wire).parsed() == ExportNameOpt("x")
    assert s.state is State.EXPORT_NAME
    r = s.send(ExportNameReply(512, FLAGS))
    assert r == struct.pack(">QH", 512, int(FLAGS)) + (b"" if no_zeroes else bytes(124))
    assert one(c, r) == ExportNameReply(512, FLAGS)
    assert s.state is c.state is State.TRANSMISSION


def test_abort() -> None:
    s, c = ServerConnection(), ClientConnection()
    one(c, s.send(Greeting()))
    one(s, c.send(ClientFlags()))
    one(s, c.send(Option(Opt.ABORT)))
    assert events(c, s.send(OptionReply(Opt.ABORT, Rep.ACK))) == [
        OptionReply(Opt.ABORT, Rep.ACK),
        Closed(),
    ]
    assert s.state is c.state is State.CLOSED


def test_requests_and_simple_replies() -> None:
    s, c = handshake(structured=False)
    wire = c.send(Request(Cmd.WRITE, 7, 512, 3, CmdFlag.FUA, data=b"abc"))
    assert wire == struct.pack(">IHHQQI", 0x25609513, 1, 1, 7, 512, 3) + b"abc"
    ev = one(s, wire)
    assert (ev.cmd, ev.cookie, ev.offset, ev.length, ev.flags) == (
        Cmd.WRITE,
        7,
        512,
        3,
        CmdFlag.FUA,
    )
    assert bytes(ev.data) == b"abc"
    wire = s.send(SimpleReply(7))
    assert wire == struct.pack(">IIQ", 0x67446698, 0, 7)
    c.receive_data(wire)
    assert c.next_event() == SimpleReply(7)
    # a READ reply's length comes from the in-flight request, even split in pieces
    one(s, c.send(Request(Cmd.READ, 8, 0, 5)))
    r = s.send(SimpleReply(8, 0, b"hello"))
    for b in r[:-1]:
        c.receive_data(bytes([b]))
        assert c.next_event() is NEED_DATA
    c.receive_data(r[-1:])
    ev = c.next_event()
    assert bytes(ev.data) == b"hello" and not c.in_flight
    one(s, c.send(Request(Cmd.READ, 9, 0, 5)))
    assert one(c, s.send(SimpleReply(9, Errno.EINVAL))).error is Errno.EINVAL
    # structured chunks are refused without negotiation
    one(s, c.send(Request(Cmd.FLUSH, 10)))
    with pytest.raises(LocalProtocolError):
        s.send(StructuredChunk(10, Chunk.NONE, ReplyFlag.DONE))
    assert s.state is State.ERROR


def test_structured_replies() -> None:
    s, c = handshake()
    one(s, c.send(Request(Cmd.READ, 1, 0, 8, CmdFlag.DF)))
    chunks = [
        StructuredChunk(1, Chunk.OFFSET_DATA, offset=0, data=b"abcd"),
        StructuredChunk(1, Chunk.OFFSET_HOLE, ReplyFlag.DONE, offset=4, length=4),
    ]
    wire = b"".join(s.send(ch) for ch in chunks)
    assert wire[:20] == struct.pack(">IHHQI", 0x668E33EF, 0, 1, 1, 12)
    got = events(c, wire)
    assert got == chunks and bytes(got[0].data) == b"abcd" and not c.in_flight
    one(s, c.send(Request(Cmd.BLOCK_STATUS, 2, 0, 1 << 20, CmdFlag.REQ_ONE)))
    bs = StructuredChunk(
        2, Chunk.BLOCK_STATUS, ReplyFlag.DONE, context_id=1, extents=(Extent(4096, 3),)
    )
    wire = s.send(bs)
    assert wire[20:] == struct.pack(">III", 1, 4096, 3)
    assert one(c, wire) == bs
    one(s, c.send(Request(Cmd.WRITE_ZEROES, 3, 0, 10, CmdFlag.FAST_ZERO | CmdFlag.NO_HOLE)))
    err = StructuredChunk(
        3, Chunk.ERROR_OFFSET, ReplyFlag.DONE, error=Errno.ENOTSUP, message="no", offset=5
    )
    wire = s.send(err)
    assert wire[20:] == struct.pack(">IH", 95, 2) + b"no" + struct.pack(">Q", 5)
    assert one(c, wire) == err
    one(s, c.send(Request(Cmd.DISC, 4)))
    assert s.state is c.state is State.DISCONNECTING
    assert events(s, b"") == [Closed()]


def test_protocol_errors_are_terminal() -> None:
    s = ServerConnection()
    s.send(Greeting())
    s.receive_data(b"\0\0\0\x08")
    with pytest.raises(ProtocolError, match="Unknown client flags"):
        s.next_event()
    assert s.state is State.ERROR
    with pytest.raises(ProtocolError):
        s.next_event()
    with pytest.raises(LocalProtocolError):
        s.send(OptionReply(Opt.GO, Rep.ACK))


def test_bad_magic_and_lengths() -> None:
    s, c = handshake()
    s.receive_data(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 0))
    with pytest.raises(ProtocolError, match="magic"):
        s.next_event()
    s, c = handshake()
    s.receive_data(struct.pack(">IHHQQI", 0x25609513, 0, Cmd.WRITE, 1, 0, 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="larger than max"):
        s.next_event()
    s = ServerConnection()
    s.send(Greeting())
    one(s, ClientConnection().send(ClientFlags()) if False else b"\0\0\0\3")
    s.receive_data(b"IHAVEOPT" + struct.pack(">II", 7, 0xFFFFFFF0))
    with pytest.raises(ProtocolError, match="larger than max"):
        s.next_event()


def test_unknown_commands_and_flags_pass_through() -> None:
    s, c = handshake()
    s.receive_data(struct.pack(">IHHQQI", 0x25609513, 0x8000, 99, 5, 0, 0))
    ev = s.next_event()
    assert ev.cmd == 99 and int(ev.flags) == 0x8000
    s.send(SimpleReply(5, Errno.EINVAL))
    assert s.state is State.TRANSMISSION


def test_eof_mid_message() -> None:
    s, c = handshake()
    s.receive_data(b"\x25\x60")
    s.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle"):
        s.next_event()


def test_malformed_option_data() -> None:
    for data in (b"\0\0\0\5ab", b"\0\0\0\0\0\1", b"\xff\xff\xff\xff"):
        with pytest.raises(InvalidMessage):
            Option(Opt.GO, data).parsed()
    with pytest.raises(InvalidMessage):
        Option(Opt.LIST, b"x").parsed()
    with pytest.raises(InvalidMessage):
        Option(Opt.SET_META_CONTEXT, b"\0\0\0\0\0\0\0\2\0\0\0\1a").parsed()


def test_messages_validate() -> None:
    with pytest.raises(InvalidMessage):
        Request(Cmd.READ, -1)
    with pytest.raises(InvalidMessage):
        Request(Cmd.WRITE, 1, 0, 3, data=b"ab")
    with pytest.raises(InvalidMessage):
        StructuredChunk(1, Chunk.NONE)
    with pytest.raises(InvalidMessage):
        StructuredChunk(1, Chunk.ERROR, error=0)
    with pytest.raises(InvalidMessage):
        RepInfo(Info.BLOCK_SIZE, minimum=3, preferred=4096, maximum=4096)
    with pytest.raises(InvalidMessage):
        OptionReply(Opt.GO, Rep.ERR_UNKNOWN, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Request(Cmd.READ, 1).offset = 5  # type: ignore[misc]
