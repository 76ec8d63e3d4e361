"""The NBD protocol engine (the NBD project's ``doc/proto.md``), with no I/O.

One engine serves both ends, after the h11 model: feed it bytes, get typed
messages; hand it a message, get bytes. No sockets, threads or TLS here: the
transport (``pyqemu.nbd_server`` for the server, the ``nbd`` block driver for
the client) owns those.

Modules: :mod:`.constants` (magics, IntEnum/IntFlag numbers), :mod:`.layout`
(``struct`` layouts of every wire format), :mod:`.events` (frozen, validated
message dataclasses), :mod:`.connection` (the state table and both ends),
:mod:`.errors`.

API common to both ends (:class:`ServerConnection`, :class:`ClientConnection`)
---------------------------------------------------------------------------
``conn.receive_data(data)``
    Feed bytes read from the socket; ``b""`` means EOF. The engine keeps a
    reference (no copy): do not reuse that buffer until its events are out.
``conn.next_event() -> message | NEED_DATA``
    The next complete message from the peer, :class:`Closed` at a clean EOF,
    or :data:`NEED_DATA`. Raises :class:`ProtocolError` on a framing error
    (bad magic, impossible length, a message not allowed now, EOF mid-message);
    the connection is then in ``State.ERROR`` for good: close the socket.
``conn.bytes_wanted``
    How many more bytes complete the message being parsed: read exactly that
    many into one buffer (``recv_into``) to get a large payload without copies.
``conn.send(msg) -> bytes`` / ``conn.send_parts(msg) -> list[buffer]``
    The bytes to write for ``msg``; ``send_parts`` leaves READ/WRITE payloads
    uncopied (for ``socket.sendmsg``). Raises :class:`LocalProtocolError` if
    ``msg`` is not allowed in the current state (the engine is then terminal).
``conn.state``, ``conn.structured``, ``conn.no_zeroes``, ``conn.in_flight``, ``conn.buffered``
    The :class:`State`; whether structured replies were negotiated; whether
    NBD_OPT_EXPORT_NAME's reply drops its 124 zero bytes; requests not yet fully
    answered, by cookie; bytes received and not parsed yet.

The client side, step by step
-----------------------------
::

    c = ClientConnection()
    c.receive_data(sock.recv(...))          # until next_event() gives:
    greeting = c.next_event()               # Greeting(flags)
    sock.sendall(c.send(ClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)))
    sock.sendall(c.send(Option(Opt.STRUCTURED_REPLY)))
    reply = ...next_event()                 # OptionReply(opt, Rep.ACK) -> c.structured
    sock.sendall(c.send(Option.meta_context(Opt.SET_META_CONTEXT, "", ("base:allocation",))))
    # OptionReply(.., Rep.META_CONTEXT, RepMetaContext(id, name))..., then ACK
    sock.sendall(c.send(Option.go("", (Info.BLOCK_SIZE,))))
    # OptionReply(.., Rep.INFO, RepInfo(Info.EXPORT, size=, flags=)), ..., then
    # OptionReply(Opt.GO, Rep.ACK): now c.state is State.TRANSMISSION
    # (an error reply, e.g. Rep.ERR_UNKNOWN with a message str, leaves you in
    #  State.OPTIONS to try again; Option(Opt.LIST) gives Rep.SERVER replies;
    #  Option.export_name(name) gives an ExportNameReply instead)
    sock.sendmsg(c.send_parts(Request(Cmd.WRITE, cookie=1, offset=0, length=n, data=buf)))
    sock.sendall(c.send(Request(Cmd.READ, cookie=2, offset=0, length=4096)))
    # replies, in any order: SimpleReply(cookie, error, data) (data for READ), or
    # with structured replies StructuredChunk(cookie, type, flags, ...) until
    # one has .done; READ data comes as OFFSET_DATA / OFFSET_HOLE chunks,
    # BLOCK_STATUS as .context_id and .extents, errors as ERROR chunks
    # (.error is an Errno). The engine knows each cookie's request, so a
    # simple READ reply is parsed with its payload length.
    sock.sendall(c.send(Request(Cmd.DISC, cookie=3)))   # no reply; then close

The server side
---------------
``ServerConnection`` mirrors it: send ``Greeting()`` first; receive
``ClientFlags`` then ``Option`` messages (``option.parsed()`` gives an
:class:`ExportNameOpt` / :class:`InfoOpt` / :class:`MetaContextOpt`, or raises
:class:`InvalidMessage`: answer ``Rep.ERR_INVALID``); answer each with
``OptionReply`` messages ending in an ACK or an error (``ExportNameReply`` for
NBD_OPT_EXPORT_NAME); then receive ``Request`` and answer each cookie with a
``SimpleReply`` or ``StructuredChunk`` messages, the last one with DONE.

In the transmission phase ``ServerConnection.next_event`` / ``send_parts`` take
short paths for whole requests and for the usual replies (OFFSET_DATA/NONE
chunks, simple replies): the same checks and state changes as the generic path,
without its table lookups (``tests/common/nbd/test_fast_path.py`` runs both on
the same bytes). ``events.parsed_request``, ``data_chunk`` and ``done_chunk``
build those messages without re-validating fields already bounded by the wire
layout (~0.4 us instead of ~3 us each); they equal the validated constructors'.
"""

from .connection import (
    NEED_DATA,
    TRANSITIONS,
    ClientConnection,
    Connection,
    Role,
    ServerConnection,
    State,
)
from .constants import (
    BASE_ALLOCATION,
    MAX_PAYLOAD,
    QEMU_ALLOCATION_DEPTH,
    QEMU_DIRTY_BITMAP,
    Chunk,
    ClientFlag,
    Cmd,
    CmdFlag,
    Errno,
    HandshakeFlag,
    Info,
    Opt,
    Rep,
    ReplyFlag,
    StateFlag,
    TransmissionFlag,
)
from .errors import InvalidMessage, LocalProtocolError, NBDError, ProtocolError
from .events import (
    ClientFlags,
    Closed,
    Event,
    ExportNameOpt,
    ExportNameReply,
    Extent,
    Greeting,
    InfoOpt,
    MetaContextOpt,
    Option,
    OptionReply,
    RepInfo,
    RepMetaContext,
    RepServer,
    Request,
    SimpleReply,
    StructuredChunk,
)

__all__ = [
    "BASE_ALLOCATION",
    "MAX_PAYLOAD",
    "NEED_DATA",
    "QEMU_ALLOCATION_DEPTH",
    "QEMU_DIRTY_BITMAP",
    "TRANSITIONS",
    "Chunk",
    "ClientConnection",
    "ClientFlag",
    "ClientFlags",
    "Closed",
    "Cmd",
    "CmdFlag",
    "Connection",
    "Errno",
    "Event",
    "ExportNameOpt",
    "ExportNameReply",
    "Extent",
    "Greeting",
    "HandshakeFlag",
    "Info",
    "InfoOpt",
    "InvalidMessage",
    "LocalProtocolError",
    "MetaContextOpt",
    "NBDError",
    "Opt",
    "Option",
    "OptionReply",
    "ProtocolError",
    "Rep",
    "RepInfo",
    "RepMetaContext",
    "RepServer",
    "ReplyFlag",
    "Request",
    "Role",
    "ServerConnection",
    "SimpleReply",
    "State",
    "StateFlag",
    "StructuredChunk",
    "TransmissionFlag",
]
