"""The NBD protocol engine: one state machine for both ends of a connection.

No I/O here: :meth:`Connection.receive_data` takes the bytes the transport
read (``b""`` for EOF), :meth:`Connection.next_event` returns the next parsed
message or :data:`NEED_DATA`, and :meth:`Connection.send` /
:meth:`Connection.send_parts` turn a message into the bytes to write. See the
package docstring for the API and an example of each side.

The state machine is the table :data:`TRANSITIONS`: (state, message kind) ->
next state, applied to every message in either direction. A message whose kind
has no entry for the current state is a protocol error: a received one raises
:class:`ProtocolError`, a sent one :class:`LocalProtocolError`, and both leave
the connection in :attr:`State.ERROR` for good.
"""

from __future__ import annotations

import collections
import enum

from .constants import (
    CLISERV_MAGIC,
    IHAVEOPT,
    MAX_OPTION_LENGTH,
    MAX_PAYLOAD,
    NBDMAGIC,
    REPLY_MAGIC,
    Chunk,
    ClientFlag,
    Cmd,
    HandshakeFlag,
    Info,
    Opt,
    Rep,
    ReplyFlag,
    TransmissionFlag,
)
from .errors import InvalidMessage, LocalProtocolError, ProtocolError
from .events import (
    Buffer,
    ClientFlags,
    Closed,
    Event,
    ExportNameReply,
    Extent,
    Greeting,
    Option,
    OptionReply,
    RepInfo,
    RepMetaContext,
    RepServer,
    Request,
    SimpleReply,
    StructuredChunk,
    _dec,
    _enc,
    parsed_request,
)
from .layout import (
    BLOCK_STATUS,
    CLIENT_FLAGS,
    ERROR,
    ERROR_OFFSET,
    EXPORT_NAME_REPLY,
    EXPORT_NAME_ZEROES,
    EXTENT,
    GREETING,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    OFFSET_DATA,
    OFFSET_HOLE,
    OPTION,
    OPTION_REPLY,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY,
    STRUCTURED_REPLY_MAGIC,
    U16,
    U32,
)

#: chunk types as plain ints (IntEnum operators cost more)
_OFFSET_DATA, _NONE = int(Chunk.OFFSET_DATA), int(Chunk.NONE)
_READ, _WRITE, _DISC = int(Cmd.READ), int(Cmd.WRITE), int(Cmd.DISC)
_DONE_INT = int(ReplyFlag.DONE)
_REQ_SIZE = REQUEST.size
_unpack_request = REQUEST.unpack_from


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    """Where the connection is (the same for both ends)."""

    GREETING = "greeting"  # the server's greeting is due
    CLIENT_FLAGS = "client-flags"  # the client's flags are due
    OPTIONS = "options"  # the client may send an option
    OPTION_REPLY = "option-reply"  # the server is answering an option
    EXPORT_NAME = "export-name"  # NBD_OPT_EXPORT_NAME sent: its reply (or a close) is due
    ABORTING = "aborting"  # NBD_OPT_ABORT sent: an ACK (or a close) is due
    TRANSMISSION = "transmission"  # requests and replies
    DISCONNECTING = "disconnecting"  # NBD_CMD_DISC sent: only replies may follow
    CLOSED = "closed"  # clean end
    ERROR = "error"  # a protocol error happened: terminal


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: returned by next_event when the buffered bytes do not hold a whole message
NEED_DATA = _NeedData.NEED_DATA
_TRANSMISSION = State.TRANSMISSION

S = State
#: the one state table: (state, message kind) -> next state; see _kind()
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.GREETING, "greeting"): S.CLIENT_FLAGS,
    (S.CLIENT_FLAGS, "client-flags"): S.OPTIONS,
    (S.OPTIONS, "option"): S.OPTION_REPLY,
    (S.OPTIONS, "option-export-name"): S.EXPORT_NAME,
    (S.OPTIONS, "option-abort"): S.ABORTING,
    (S.OPTION_REPLY, "reply-partial"): S.OPTION_REPLY,
    (S.OPTION_REPLY, "reply-final"): S.OPTIONS,
    (S.OPTION_REPLY, "reply-go-ack"): S.TRANSMISSION,
    (S.ABORTING, "reply-final"): S.CLOSED,
    (S.EXPORT_NAME, "export-name-reply"): S.TRANSMISSION,
    (S.TRANSMISSION, "request"): S.TRANSMISSION,
    (S.TRANSMISSION, "request-disc"): S.DISCONNECTING,
    (S.TRANSMISSION, "reply"): S.TRANSMISSION,
    (S.DISCONNECTING, "reply"): S.DISCONNECTING,
}
for _state in State:
    if _state is not S.ERROR:
        TRANSITIONS[(_state, "closed")] = S.CLOSED
del _state

#: who may send each message class
_SENDER: dict[type, Role] = {
    Greeting: Role.SERVER,
    OptionReply: Role.SERVER,
    ExportNameReply: Role.SERVER,
    SimpleReply: Role.SERVER,
    StructuredChunk: Role.SERVER,
    ClientFlags: Role.CLIENT,
    Option: Role.CLIENT,
    Request: Role.CLIENT,
}


class _Buffer:
    """Received bytes as a queue of chunks: taking a message that lies in one
    chunk is a zero-copy memoryview slice."""

    def __init__(self) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def feed(self, data: Buffer) -> None:
        if len(data):
            view = memoryview(data).cast("B")
            self._chunks.append(view)
            self._len += len(view)

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes (n <= len), copied (used for small headers)."""
        first = self._chunks[0]
        if len(first) >= n:
            return bytes(first[:n])
        out = bytearray()
        for chunk in self._chunks:
            out += chunk[: n - len(out)]
            if len(out) >= n:
                break
        return bytes(out)

    def drop(self, first: memoryview, n: int) -> None:
        """Remove the first ``n`` bytes, all in ``first``, the first chunk
        (the server's short path drops a request's header so, without the
        view :meth:`take` would return)."""
        self._len -= n
        if len(first) == n:
            self._chunks.popleft()
        else:
            self._chunks[0] = first[n:]

    def take(self, n: int) -> memoryview:
        """Remove and return the first ``n`` bytes (n <= len)."""
        if n == 0:  # an empty payload (a NONE chunk) may meet an empty buffer
            return memoryview(b"")
        first = self._chunks[0]
        if len(first) >= n:
            self.drop(first, n)
            return first[:n]
        self._len -= n
        out = bytearray(n)
        pos = 0
        while pos < n:
            chunk = self._chunks[0]
            k = min(len(chunk), n - pos)
            out[pos : pos + k] = chunk[:k]
            pos += k
            if k == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[k:]
        return memoryview(out)


class Connection:
    """One end of an NBD connection; use :class:`ServerConnection` or
    :class:`ClientConnection`."""

    role: Role

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        self.state = State.GREETING
        self.max_payload = max_payload
        #: True once NBD_OPT_STRUCTURED_REPLY was acknowledged
        self.structured = False
        #: True once both ends set NO_ZEROES
        self.no_zeroes = False
        self.handshake_flags = HandshakeFlag.NONE
        self.client_flags = ClientFlag.NONE
        #: the option being answered (OPTION_REPLY state)
        self.current_option: Option | None = None
        #: requests sent/received and not yet fully answered, by cookie
        self.in_flight: dict[int, Request] = {}
        self._buf = _Buffer()
        self._eof = False
        #: bytes still expected for the message being parsed (a hint for readinto)
        self._want = 0

    # --- the state table ---------------------------------------------------

    def _kind(self, msg: Event) -> str:
        cls = type(msg)  # the per-request messages first, by exact type
        if cls is Request:
            return "request-disc" if msg.cmd == Cmd.DISC else "request"  # type: ignore[union-attr]
        if cls is StructuredChunk or cls is SimpleReply:
            return "reply"
        if isinstance(msg, Greeting):
            return "greeting"
        if isinstance(msg, ClientFlags):
            return "client-flags"
        if isinstance(msg, Option):
            if msg.opt == Opt.EXPORT_NAME:
                return "option-export-name"
            if msg.opt == Opt.ABORT:
                return "option-abort"
            return "option"
        if isinstance(msg, OptionReply):
            if not msg.is_final:
                return "reply-partial"
            cur = self.current_option
            if msg.reply == Rep.ACK and cur is not None and cur.opt == Opt.GO:
                return "reply-go-ack"
            return "reply-final"
        if isinstance(msg, ExportNameReply):
            return "export-name-reply"
        if isinstance(msg, Request):
            return "request-disc" if msg.cmd == Cmd.DISC else "request"
        if isinstance(msg, SimpleReply | StructuredChunk):
            return "reply"
        if isinstance(msg, Closed):
            return "closed"
        raise LocalProtocolError(f"not an NBD message: {msg!r}")

    def _advance(self, msg: Event, *, sending: bool) -> None:
        """Apply ``msg`` to the state table and the negotiated facts."""
        error = LocalProtocolError if sending else ProtocolError
        if self.state is State.ERROR:
            raise error("the connection is in an error state")
        sender = _SENDER.get(type(msg))
        if sender is not None and (sender is self.role) != sending:
            self.state = State.ERROR
            raise error(
                f"{type(msg).__name__} cannot come from the {'client' if sending else 'server'}"
            )
        kind = self._kind(msg)
        nxt = TRANSITIONS.get((self.state, kind))
        if nxt is None:
            self.state = State.ERROR
            raise error(f"unexpected {type(msg).__name__} in state {self.state.value}")
        self._track(msg, error)
        self.state = nxt

    def _track(self, msg: Event, error: type[Exception]) -> None:
        cls = type(msg)
        if cls is Request or cls is StructuredChunk:  # the per-request path, first
            self._track_transmission(msg, error)  # type: ignore[arg-type]
        elif isinstance(msg, Greeting):
            self.handshake_flags = HandshakeFlag(msg.flags)
        elif isinstance(msg, ClientFlags):
            self.client_flags = ClientFlag(msg.flags)
            self.no_zeroes = bool(
                self.handshake_flags & HandshakeFlag.NO_ZEROES
                and self.client_flags & ClientFlag.NO_ZEROES
            )
        elif isinstance(msg, Option):
            self.current_option = msg
        elif isinstance(msg, OptionReply):
            cur = self.current_option
            if cur is None or msg.opt != cur.opt:
                self.state = State.ERROR
                raise error(f"reply to option {msg.opt!r} while answering {cur!r}")
            if msg.is_final:
                if msg.reply == Rep.ACK and cur.opt == Opt.STRUCTURED_REPLY:
                    self.structured = True
                self.current_option = None
        elif isinstance(msg, ExportNameReply):
            self.current_option = None
        elif isinstance(msg, Request | StructuredChunk):
            self._track_transmission(msg, error)
        elif isinstance(msg, SimpleReply):
            req = self.in_flight.get(msg.cookie)
            if req is None:
                self.state = State.ERROR
                raise error(f"reply to unknown cookie {msg.cookie:#x}")
            if msg.data is not None and (req.cmd != Cmd.READ or len(msg.data) != req.length):
                self.state = State.ERROR
                raise error("simple reply data does not match its READ")
            if req.cmd == Cmd.READ and not msg.error and msg.data is None:
                self.state = State.ERROR
                raise error("a successful READ reply needs its data")
            del self.in_flight[msg.cookie]

    def _track_transmission(self, msg: Request | StructuredChunk, error: type[Exception]) -> None:
        if isinstance(msg, Request):
            if msg.cmd != Cmd.DISC:
                if msg.cookie in self.in_flight:
                    self.state = State.ERROR
                    raise error(f"cookie {msg.cookie:#x} is already in flight")
                self.in_flight[msg.cookie] = msg
        else:
            if msg.cookie not in self.in_flight:
                self.state = State.ERROR
                raise error(f"reply to unknown cookie {msg.cookie:#x}")
            if not self.structured:
                self.state = State.ERROR
                raise error("structured reply without NBD_OPT_STRUCTURED_REPLY")
            if msg.done:
                del self.in_flight[msg.cookie]

    # --- receiving -----------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the peer; ``b""`` means EOF. The engine keeps a
        reference to ``data``: do not reuse the buffer until its events are out."""
        if self._eof and len(data):
            raise LocalProtocolError("data received after EOF")
        if not len(data):
            self._eof = True
        else:
            self._buf.feed(data)

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes finish the message being parsed (>= 1): a hint
        for reading a large WRITE/READ payload straight into one buffer."""
        return max(1, self._want - len(self._buf))

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet (a server checks this is 0 after
        acknowledging NBD_OPT_STARTTLS: nothing may be sent ahead of TLS)."""
        return len(self._buf)

    def next_event(self) -> Event | _NeedData:
        """The next message from the peer, :class:`Closed` at EOF, or NEED_DATA."""
        if self.state is State.ERROR:
            raise ProtocolError("the connection is in an error state")
        if self.state is State.CLOSED:
            return Closed()
        try:
            msg = self._parse()
        except (InvalidMessage, ValueError) as exc:
            self.state = State.ERROR
            raise ProtocolError(f"invalid message: {exc}") from None
        except ProtocolError:
            self.state = State.ERROR
            raise
        if msg is NEED_DATA:
            if self._eof:
                if len(self._buf):
                    self.state = State.ERROR
                    raise ProtocolError("connection closed in the middle of a message")
                msg = Closed()
            else:
                return NEED_DATA
        self._advance(msg, sending=False)
        self._want = 0
        return msg

    def _need(self, n: int) -> bool:
        """True if ``n`` bytes are buffered; else remember the want."""
        if len(self._buf) >= n:
            return True
        self._want = n
        return False

    def _parse(self) -> Event | _NeedData:
        raise NotImplementedError

    # --- sending ---------------------------------------------------------------

    def send(self, msg: Event) -> bytes:
        """The bytes of ``msg``, joined (see :meth:`send_parts`)."""
        return b"".join(self.send_parts(msg))

    def send_parts(self, msg: Event) -> list[Buffer]:
        """The buffers to write for ``msg`` in order, payloads not copied (for
        ``socket.sendmsg``). Raises :class:`LocalProtocolError` if ``msg`` is
        not allowed now."""
        if isinstance(msg, Closed):
            self._advance(msg, sending=True)
            return []
        parts = _encode(msg, self)
        self._advance(msg, sending=True)
        return parts


# ----------------------------------------------------------------------
# encoding


def _string(text: str) -> bytes:
    raw = _enc(text)
    return U32.pack(len(raw)) + raw


def _rep_payload(msg: OptionReply) -> bytes:
    d = msg.data
    if msg.reply == Rep.ACK:
        return b""
    if isinstance(d, RepServer):
        return _string(d.name) + _enc(d.description)
    if isinstance(d, RepMetaContext):
        return U32.pack(d.context_id) + _enc(d.name)
    if isinstance(d, RepInfo):
        if d.info is Info.EXPORT:
            return INFO_EXPORT.pack(Info.EXPORT, d.size, int(d.flags))
        if d.info is Info.NAME:
            return U16.pack(Info.NAME) + _enc(d.name)
        if d.info is Info.DESCRIPTION:
            return U16.pack(Info.DESCRIPTION) + _enc(d.description)
        return INFO_BLOCK_SIZE.pack(Info.BLOCK_SIZE, d.minimum, d.preferred, d.maximum)
    if isinstance(d, str):
        return _enc(d)
    return msg.raw


def _encode(msg: Event, conn: Connection) -> list[Buffer]:
    # the per-request replies first: this runs once per request
    if isinstance(msg, StructuredChunk):
        t = int(msg.type)
        if t == _OFFSET_DATA:  # a READ reply: header and offset in one buffer
            assert msg.data is not None
            size = OFFSET_DATA.size + len(msg.data)
            head = STRUCTURED_REPLY.pack(
                STRUCTURED_REPLY_MAGIC, int(msg.flags), t, msg.cookie, size
            )
            return [head + OFFSET_DATA.pack(msg.offset), msg.data]
        if t == _NONE:
            return [STRUCTURED_REPLY.pack(STRUCTURED_REPLY_MAGIC, int(msg.flags), t, msg.cookie, 0)]
    elif isinstance(msg, SimpleReply):
        head = SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, int(msg.error), msg.cookie)
        return [head, msg.data] if msg.data is not None and len(msg.data) else [head]
    if isinstance(msg, Greeting):
        return [GREETING.pack(NBDMAGIC, IHAVEOPT, int(msg.flags))]
    if isinstance(msg, ClientFlags):
        return [CLIENT_FLAGS.pack(int(msg.flags))]
    if isinstance(msg, Option):
        return [OPTION.pack(IHAVEOPT, int(msg.opt), len(msg.data)), msg.data]
    if isinstance(msg, OptionReply):
        payload = _rep_payload(msg)
        return [OPTION_REPLY.pack(REPLY_MAGIC, int(msg.opt), int(msg.reply), len(payload)), payload]
    if isinstance(msg, ExportNameReply):
        out = EXPORT_NAME_REPLY.pack(msg.size, int(msg.flags))
        if not conn.no_zeroes:
            out += bytes(EXPORT_NAME_ZEROES)
        return [out]
    if isinstance(msg, Request):
        head = REQUEST.pack(
            REQUEST_MAGIC, int(msg.flags), int(msg.cmd), msg.cookie, msg.offset, msg.length
        )
        return [head, msg.data] if msg.data is not None and len(msg.data) else [head]
    if isinstance(msg, StructuredChunk):
        t = msg.type
        body: list[Buffer]
        if t == Chunk.OFFSET_DATA:
            assert msg.data is not None
            body = [OFFSET_DATA.pack(msg.offset), msg.data]
        elif t == Chunk.OFFSET_HOLE:
            body = [OFFSET_HOLE.pack(msg.offset, msg.length)]
        elif t == Chunk.BLOCK_STATUS:
            ext = b"".join(EXTENT.pack(e.length, e.flags) for e in msg.extents)
            body = [BLOCK_STATUS.pack(msg.context_id) + ext]
        elif t in (Chunk.ERROR, Chunk.ERROR_OFFSET):
            text = msg.message.encode()
            b = ERROR.pack(int(msg.error), len(text)) + text
            if t == Chunk.ERROR_OFFSET:
                b += ERROR_OFFSET.pack(msg.offset)
            body = [b]
        elif t == Chunk.NONE:
            body = []
        else:
            body = [msg.raw]
        length = sum(len(b) for b in body)
        if length > 0xFFFFFFFF:
            raise LocalProtocolError("chunk payload too long")
        head = STRUCTURED_REPLY.pack(
            STRUCTURED_REPLY_MAGIC, int(msg.flags), int(t), msg.cookie, length
        )
        return [head, *body]
    raise LocalProtocolError(f"cannot send {msg!r}")


# ----------------------------------------------------------------------
# the server end


class ServerConnection(Connection):
    """The server's end: receives ClientFlags, Option, Request; sends
    Greeting, OptionReply, ExportNameReply, SimpleReply, StructuredChunk."""

    role = Role.SERVER

    def next_event(self) -> Event | _NeedData:
        """As :meth:`Connection.next_event`; in the transmission phase a whole
        request at the front of the buffer is taken here first: the same checks
        and state change as the generic path (magic, WRITE payload bound,
        cookie not in flight; NBD_CMD_DISC -> DISCONNECTING), without its
        table lookups; so is NEED_DATA when every byte is taken. Anything
        else (a partial or bad request, EOF, other states) goes the generic
        way, which also raises the errors."""
        if self.state is _TRANSMISSION:
            buf = self._buf
            have = buf._len
            if not have and not self._eof:  # all taken: the next header, as _parse asks
                self._want = _REQ_SIZE
                return NEED_DATA
            if have >= _REQ_SIZE:
                first = buf._chunks[0]
                if len(first) >= _REQ_SIZE:
                    magic, flags, cmd, cookie, offset, length = _unpack_request(first)
                    if magic == REQUEST_MAGIC and cookie not in self.in_flight:
                        data = None
                        if cmd == _WRITE:
                            if length > self.max_payload or have < _REQ_SIZE + length:
                                return super().next_event()
                            end = _REQ_SIZE + length
                            if len(first) >= end:  # the payload in the same chunk
                                data = first[_REQ_SIZE:end]
                                buf.drop(first, end)
                            else:
                                buf.drop(first, _REQ_SIZE)
                                data = buf.take(length)
                        else:
                            buf.drop(first, _REQ_SIZE)
                        req = parsed_request(cmd, cookie, offset, length, flags, data)
                        if cmd == _DISC:
                            self.state = State.DISCONNECTING
                        else:
                            self.in_flight[cookie] = req
                        self._want = 0
                        return req
        return super().next_event()

    def send_parts(self, msg: Event) -> list[Buffer]:
        """As :meth:`Connection.send_parts`; the replies to requests in flight
        (OFFSET_DATA and NONE chunks, simple replies) are encoded here with
        the same checks as the generic path (the cookie is in flight, chunks
        need structured replies, a simple reply carries data exactly for a
        successful READ), without its table lookups."""
        cls = msg.__class__
        st = self.state
        if st is _TRANSMISSION or st is State.DISCONNECTING:
            if cls is StructuredChunk:
                t = msg.type  # type: ignore[union-attr]
                cookie = msg.cookie  # type: ignore[union-attr]
                if (
                    (t == _OFFSET_DATA or t == _NONE)
                    and self.structured
                    and cookie in self.in_flight
                ):
                    parts = _encode(msg, self)
                    if int(msg.flags) & _DONE_INT:  # type: ignore[union-attr]
                        del self.in_flight[cookie]
                    return parts
            elif cls is SimpleReply:
                req = self.in_flight.get(msg.cookie)  # type: ignore[union-attr]
                data = msg.data  # type: ignore[union-attr]
                if req is not None and (
                    (req.cmd != _READ or msg.error)  # type: ignore[union-attr]
                    if data is None
                    else (req.cmd == _READ and len(data) == req.length)
                ):
                    parts = _encode(msg, self)
                    del self.in_flight[msg.cookie]  # type: ignore[union-attr]
                    return parts
        return super().send_parts(msg)

    def _parse(self) -> Event | _NeedData:
        st = self.state
        if st in (State.GREETING, State.CLIENT_FLAGS):
            if st is State.GREETING and not len(self._buf) and not self._eof:
                return NEED_DATA
            if not self._need(CLIENT_FLAGS.size):
                return NEED_DATA
            (flags,) = CLIENT_FLAGS.unpack(self._buf.take(CLIENT_FLAGS.size))
            if flags & ~int(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES):
                raise ProtocolError(f"Unknown client flags 0x{flags:x} received")
            if st is State.GREETING:
                raise ProtocolError("client flags before the greeting")
            return ClientFlags(ClientFlag(flags))
        if st is State.OPTIONS:
            if not self._need(OPTION.size):
                return NEED_DATA
            magic, opt, length = OPTION.unpack(self._buf.peek(OPTION.size))
            if magic != IHAVEOPT:
                raise ProtocolError(f"Bad magic received 0x{magic:x}")
            if length > MAX_OPTION_LENGTH:
                raise ProtocolError(f"len ({length}) is larger than max len ({MAX_OPTION_LENGTH})")
            if not self._need(OPTION.size + length):
                return NEED_DATA
            self._buf.take(OPTION.size)
            return Option(opt, bytes(self._buf.take(length)) if length else b"")
        if st in (State.TRANSMISSION, State.DISCONNECTING):
            if st is State.DISCONNECTING:
                return NEED_DATA  # nothing may follow NBD_CMD_DISC; EOF closes
            if not self._need(REQUEST.size):
                return NEED_DATA
            magic, flags, cmd, cookie, offset, length = REQUEST.unpack(self._buf.peek(REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise ProtocolError(f"invalid magic (got 0x{magic:x})")
            data = None
            if cmd == Cmd.WRITE:
                if length > self.max_payload:
                    raise ProtocolError(
                        f"len ({length}) is larger than max len ({self.max_payload})"
                    )
                if not self._need(REQUEST.size + length):
                    return NEED_DATA
                self._buf.take(REQUEST.size)
                data = self._buf.take(length)
            else:
                self._buf.take(REQUEST.size)
            if cookie in self.in_flight:
                raise ProtocolError(f"cookie {cookie:#x} is already in flight")
            return Request(cmd, cookie, offset, length, flags, data)
        # OPTION_REPLY, EXPORT_NAME, ABORTING: our turn to speak, the client waits
        return NEED_DATA


# ----------------------------------------------------------------------
# the client end


class ClientConnection(Connection):
    """The client's end: receives Greeting, OptionReply, ExportNameReply,
    SimpleReply, StructuredChunk; sends ClientFlags, Option, Request."""

    role = Role.CLIENT

    def _parse(self) -> Event | _NeedData:
        st = self.state
        if st is State.GREETING:
            if not self._need(GREETING.size):
                if len(self._buf) >= 16:
                    magic, second = GREETING.unpack(self._buf.peek(16) + b"\0\0")[:2]
                    if magic == NBDMAGIC and second == CLISERV_MAGIC:
                        raise ProtocolError("Server uses the oldstyle protocol: not supported")
                return NEED_DATA
            magic, opt_magic, flags = GREETING.unpack(self._buf.take(GREETING.size))
            if magic != NBDMAGIC:
                raise ProtocolError(f"Bad initial magic received: 0x{magic:x}")
            if opt_magic == CLISERV_MAGIC:
                raise ProtocolError("Server uses the oldstyle protocol: not supported")
            if opt_magic != IHAVEOPT:
                raise ProtocolError(f"Bad server magic received: 0x{opt_magic:x}")
            return Greeting(HandshakeFlag(flags))
        if st in (State.OPTION_REPLY, State.ABORTING):
            if not self._need(OPTION_REPLY.size):
                return NEED_DATA
            magic, opt, rep, length = OPTION_REPLY.unpack(self._buf.peek(OPTION_REPLY.size))
            if magic != REPLY_MAGIC:
                raise ProtocolError(f"Unexpected option reply magic 0x{magic:x}")
            if length > MAX_OPTION_LENGTH:
                raise ProtocolError(f"option reply of {length} bytes is too long")
            if not self._need(OPTION_REPLY.size + length):
                return NEED_DATA
            self._buf.take(OPTION_REPLY.size)
            data = bytes(self._buf.take(length)) if length else b""
            return _decode_option_reply(opt, rep, data)
        if st is State.EXPORT_NAME:
            size = EXPORT_NAME_REPLY.size + (0 if self.no_zeroes else EXPORT_NAME_ZEROES)
            if not self._need(size):
                return NEED_DATA
            raw = self._buf.take(size)
            export_size, flags = EXPORT_NAME_REPLY.unpack_from(raw)
            return ExportNameReply(export_size, TransmissionFlag(flags))
        if st in (State.TRANSMISSION, State.DISCONNECTING):
            return self._parse_reply()
        # CLIENT_FLAGS, OPTIONS: our turn to speak
        return NEED_DATA

    def _parse_reply(self) -> Event | _NeedData:
        if not self._need(4):
            return NEED_DATA
        (magic,) = U32.unpack(self._buf.peek(4))
        if magic == SIMPLE_REPLY_MAGIC:
            if not self._need(SIMPLE_REPLY.size):
                return NEED_DATA
            _, error, cookie = SIMPLE_REPLY.unpack(self._buf.peek(SIMPLE_REPLY.size))
            req = self.in_flight.get(cookie)
            if req is None:
                raise ProtocolError(f"reply to unknown cookie {cookie:#x}")
            if req.cmd == Cmd.READ and not error:
                if not self._need(SIMPLE_REPLY.size + req.length):
                    return NEED_DATA
                self._buf.take(SIMPLE_REPLY.size)
                return SimpleReply(cookie, 0, self._buf.take(req.length))
            self._buf.take(SIMPLE_REPLY.size)
            return SimpleReply(cookie, error)
        if magic != STRUCTURED_REPLY_MAGIC:
            raise ProtocolError(f"invalid reply magic 0x{magic:x}")
        if not self._need(STRUCTURED_REPLY.size):
            return NEED_DATA
        _, flags, typ, cookie, length = STRUCTURED_REPLY.unpack(
            self._buf.peek(STRUCTURED_REPLY.size)
        )
        if length > self.max_payload + 1024:
            raise ProtocolError(f"structured reply chunk of {length} bytes is too long")
        if not self._need(STRUCTURED_REPLY.size + length):
            return NEED_DATA
        self._buf.take(STRUCTURED_REPLY.size)
        payload = self._buf.take(length)
        return _decode_chunk(cookie, flags, typ, payload)


def _decode_option_reply(opt: int, rep: int, data: bytes) -> OptionReply:
    def short() -> ProtocolError:
        return ProtocolError(f"option reply {rep:#x} has a bad length {len(data)}")

    if rep == Rep.ACK:
        if data:
            raise short()
        return OptionReply(opt, rep)
    if rep == Rep.SERVER:
        if len(data) < 4:
            raise short()
        (n,) = U32.unpack_from(data)
        if 4 + n > len(data):
            raise short()
        return OptionReply(opt, rep, RepServer(_dec(data[4 : 4 + n]), _dec(data[4 + n :])))
    if rep == Rep.META_CONTEXT:
        if len(data) < 4:
            raise short()
        (cid,) = U32.unpack_from(data)
        return OptionReply(opt, rep, RepMetaContext(cid, _dec(data[4:])))
    if rep == Rep.INFO:
        if len(data) < 2:
            raise short()
        (info,) = U16.unpack_from(data)
        if info == Info.EXPORT:
            if len(data) != INFO_EXPORT.size:
                raise short()
            _, size, flags = INFO_EXPORT.unpack(data)
            return OptionReply(
                opt, rep, RepInfo(Info.EXPORT, size=size, flags=TransmissionFlag(flags))
            )
        if info == Info.NAME:
            return OptionReply(opt, rep, RepInfo(Info.NAME, name=_dec(data[2:])))
        if info == Info.DESCRIPTION:
            return OptionReply(opt, rep, RepInfo(Info.DESCRIPTION, description=_dec(data[2:])))
        if info == Info.BLOCK_SIZE:
            if len(data) != INFO_BLOCK_SIZE.size:
                raise short()
            _, mn, pref, mx = INFO_BLOCK_SIZE.unpack(data)
            return OptionReply(
                opt, rep, RepInfo(Info.BLOCK_SIZE, minimum=mn, preferred=pref, maximum=mx)
            )
        raise ProtocolError(f"unknown info type {info}")
    if rep & (1 << 31):
        return OptionReply(opt, rep, _dec(data)[:4096])
    raise ProtocolError(f"unexpected option reply {rep:#x}")


def _decode_chunk(cookie: int, flags: int, typ: int, p: memoryview) -> StructuredChunk:
    def bad() -> ProtocolError:
        return ProtocolError(f"structured reply chunk type {typ} has a bad length {len(p)}")

    if typ == Chunk.NONE:
        if len(p):
            raise bad()
        return StructuredChunk(cookie, typ, flags)
    if typ == Chunk.OFFSET_DATA:
        if len(p) <= OFFSET_DATA.size:
            raise bad()
        (offset,) = OFFSET_DATA.unpack_from(p)
        return StructuredChunk(cookie, typ, flags, offset=offset, data=p[OFFSET_DATA.size :])
    if typ == Chunk.OFFSET_HOLE:
        if len(p) != OFFSET_HOLE.size:
            raise bad()
        offset, length = OFFSET_HOLE.unpack(p)
        return StructuredChunk(cookie, typ, flags, offset=offset, length=length)
    if typ == Chunk.BLOCK_STATUS:
        n = len(p) - BLOCK_STATUS.size
        if n <= 0 or n % EXTENT.size:
            raise bad()
        (cid,) = BLOCK_STATUS.unpack_from(p)
        ext = tuple(Extent(*e) for e in EXTENT.iter_unpack(p[BLOCK_STATUS.size :]))
        return StructuredChunk(cookie, typ, flags, context_id=cid, extents=ext)
    if typ in (Chunk.ERROR, Chunk.ERROR_OFFSET):
        if len(p) < ERROR.size:
            raise bad()
        error, mlen = ERROR.unpack_from(p)
        extra = ERROR_OFFSET.size if typ == Chunk.ERROR_OFFSET else 0
        if len(p) != ERROR.size + mlen + extra:
            raise bad()
        msg = bytes(p[ERROR.size : ERROR.size + mlen]).decode("utf-8", "replace")
        offset = ERROR_OFFSET.unpack_from(p, ERROR.size + mlen)[0] if extra else 0
        if error == 0:
            raise ProtocolError("error chunk with error 0")
        return StructuredChunk(cookie, typ, flags, error=error, message=msg, offset=offset)
    if typ & (1 << 15):
        # an unknown error type: the spec says treat it as an error
        if len(p) >= ERROR.size:
            error, _ = ERROR.unpack_from(p)
            if error:
                return StructuredChunk(cookie, Chunk.ERROR, flags, error=error, message="")
    raise ProtocolError(f"unknown structured reply chunk type {typ}")
