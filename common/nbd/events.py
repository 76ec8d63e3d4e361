"""The messages of the NBD protocol as frozen, validated dataclasses.

Each class is one message on the wire; the engine parses received bytes into
them and serialises the ones you send. Construction validates ranges, so an
invalid message can never be built, received or sent. The wire layouts are in
:mod:`.layout`, the numbers in :mod:`.constants`.

Handshake, server -> client: :class:`Greeting`, :class:`OptionReply` (and its
typed payloads :class:`RepServer`, :class:`RepInfo`, :class:`RepMetaContext`),
:class:`ExportNameReply`. Client -> server: :class:`ClientFlags`,
:class:`Option` (typed by ``opt``; ``parse_option`` gives the details).
Transmission: :class:`Request` (client -> server), :class:`SimpleReply` and
:class:`StructuredChunk` (server -> client). ``Closed`` is the peer's EOF.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .constants import (
    MAX_OPTION_LENGTH,
    MAX_STRING,
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
    TransmissionFlag,
)
from .errors import InvalidMessage
from .layout import U16, U32

Buffer = bytes | bytearray | memoryview

U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

# chunk types and the DONE flag as plain ints (IntEnum/IntFlag operators are slow)
_NONE, _OFFSET_DATA, _OFFSET_HOLE = int(Chunk.NONE), int(Chunk.OFFSET_DATA), int(Chunk.OFFSET_HOLE)
_BLOCK_STATUS, _ERROR = int(Chunk.BLOCK_STATUS), int(Chunk.ERROR)
_ERROR_OFFSET, _DONE = int(Chunk.ERROR_OFFSET), int(ReplyFlag.DONE)


def _check_int(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or value < 0 or value > maximum:
        raise InvalidMessage(f"{name} out of range: {value!r}")


def _check_str(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(f"{name} must be a string")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_STRING:
        raise InvalidMessage(f"{name} longer than {MAX_STRING} bytes")


def _enum(kind: type, value: int) -> int:
    """``kind(value)`` when it is a known member, else the plain int (a dict
    lookup: this runs for every request and reply)."""
    member = kind._value2member_map_.get(value)  # type: ignore[attr-defined]
    return value if member is None else member


def _flags(kind: type, value: int) -> Any:
    """``kind(value)`` for an IntFlag, from the enum's own cache when it can."""
    if value.__class__ is kind:
        return value
    member = kind._value2member_map_.get(value)  # type: ignore[attr-defined]
    return kind(value) if member is None else member


def _all_in_range(*pairs: int) -> bool:
    """True when each (value, maximum) pair holds a plain int in [0, maximum]:
    the fast check of the per-request messages (the slow path names the field)."""
    for i in range(0, len(pairs), 2):
        v = pairs[i]
        if v.__class__ is not int or v < 0 or v > pairs[i + 1]:
            return False
    return True


# ----------------------------------------------------------------------
# handshake


@dataclasses.dataclass(frozen=True)
class Greeting:
    """Server: NBDMAGIC, IHAVEOPT, handshake flags."""

    flags: HandshakeFlag = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES

    def __post_init__(self) -> None:
        _check_int("handshake flags", int(self.flags), U16_MAX)


@dataclasses.dataclass(frozen=True)
class ClientFlags:
    """Client: its flags (FIXED_NEWSTYLE, NO_ZEROES)."""

    flags: ClientFlag = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES

    def __post_init__(self) -> None:
        _check_int("client flags", int(self.flags), U32_MAX)


@dataclasses.dataclass(frozen=True)
class Option:
    """Client: one option request, its data raw; see :func:`parse_option`.

    ``opt`` is an :class:`Opt` member or, for an unknown option, a plain int.
    """

    opt: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_int("option", int(self.opt), U32_MAX)
        object.__setattr__(self, "opt", _enum(Opt, self.opt))
        object.__setattr__(self, "data", bytes(self.data))
        if len(self.data) > MAX_OPTION_LENGTH:
            raise InvalidMessage(f"option data longer than {MAX_OPTION_LENGTH} bytes")

    # --- building (client side) -----------------------------------------

    @classmethod
    def export_name(cls, name: str) -> Option:
        """NBD_OPT_EXPORT_NAME: the name is the whole data."""
        _check_str("export name", name)
        return cls(Opt.EXPORT_NAME, _enc(name))

    @classmethod
    def go(cls, name: str, requests: tuple[int, ...] = (), *, info: bool = False) -> Option:
        """NBD_OPT_GO (or NBD_OPT_INFO with ``info``)."""
        _check_str("export name", name)
        raw = _enc(name)
        data = U32.pack(len(raw)) + raw + U16.pack(len(requests))
        data += b"".join(U16.pack(int(r)) for r in requests)
        return cls(Opt.INFO if info else Opt.GO, data)

    @classmethod
    def meta_context(cls, opt: Opt, name: str, queries: tuple[str, ...]) -> Option:
        """NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT."""
        if opt not in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            raise InvalidMessage(f"{opt!r} is not a meta context option")
        _check_str("export name", name)
        raw = _enc(name)
        parts = [U32.pack(len(raw)), raw, U32.pack(len(queries))]
        for q in queries:
            _check_str("query", q)
            b = _enc(q)
            parts += [U32.pack(len(b)), b]
        return cls(opt, b"".join(parts))

    # --- parsing (server side) ------------------------------------------

    def parsed(self) -> ExportNameOpt | InfoOpt | MetaContextOpt | None:
        """The option's data as a typed record (None for options without data).

        Raises :class:`InvalidMessage` for malformed data: the server answers it
        with NBD_REP_ERR_INVALID and goes on.
        """
        data = self.data
        opt = self.opt
        if opt == Opt.EXPORT_NAME:
            if len(data) > MAX_STRING:
                raise InvalidMessage("export name too long")
            return ExportNameOpt(_dec(data))
        if opt in (Opt.GO, Opt.INFO):
            name, pos = _take_string(data, 0)
            if pos + 2 > len(data):
                raise InvalidMessage("request data too short")
            (count,) = U16.unpack_from(data, pos)
            pos += 2
            if len(data) != pos + 2 * count:
                raise InvalidMessage("request data has the wrong length")
            reqs = tuple(_enum(Info, U16.unpack_from(data, pos + 2 * i)[0]) for i in range(count))
            return InfoOpt(name, reqs)
        if opt in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            name, pos = _take_string(data, 0)
            if pos + 4 > len(data):
                raise InvalidMessage("request data too short")
            (count,) = U32.unpack_from(data, pos)
            pos += 4
            queries = []
            for _ in range(count):
                query, pos = _take_string(data, pos)
                queries.append(query)
            if pos != len(data):
                raise InvalidMessage("request data has the wrong length")
            return MetaContextOpt(name, tuple(queries))
        if data:
            raise InvalidMessage("option carries unexpected data")
        return None


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def _take_string(data: bytes, pos: int) -> tuple[str, int]:
    """A u32 length and that many bytes at ``pos``; returns (text, new pos)."""
    if pos + 4 > len(data):
        raise InvalidMessage("request data too short")
    (n,) = U32.unpack_from(data, pos)
    pos += 4
    if n > MAX_STRING:
        raise InvalidMessage(f"string of {n} bytes too long")
    if pos + n > len(data):
        raise InvalidMessage("request data too short")
    return _dec(data[pos : pos + n]), pos + n


@dataclasses.dataclass(frozen=True)
class ExportNameOpt:
    """Parsed NBD_OPT_EXPORT_NAME."""

    name: str


@dataclasses.dataclass(frozen=True)
class InfoOpt:
    """Parsed NBD_OPT_INFO / NBD_OPT_GO: export name and requested info items."""

    name: str
    requests: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class MetaContextOpt:
    """Parsed NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""

    name: str
    queries: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RepServer:
    """NBD_REP_SERVER data: one export of NBD_OPT_LIST."""

    name: str
    description: str = ""

    def __post_init__(self) -> None:
        _check_str("export name", self.name)
        _check_str("description", self.description)


@dataclasses.dataclass(frozen=True)
class RepInfo:
    """NBD_REP_INFO data: one info item.

    EXPORT uses ``size``/``flags``, NAME ``name``, DESCRIPTION ``description``,
    BLOCK_SIZE ``minimum``/``preferred``/``maximum``.
    """

    info: Info
    size: int = 0
    flags: TransmissionFlag = TransmissionFlag.NONE
    name: str = ""
    description: str = ""
    minimum: int = 0
    preferred: int = 0
    maximum: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.info, Info):
            raise InvalidMessage(f"unknown info type {self.info!r}")
        _check_int("export size", self.size, U64_MAX)
        _check_int("transmission flags", int(self.flags), U16_MAX)
        _check_str("export name", self.name)
        _check_str("description", self.description)
        for field in ("minimum", "preferred", "maximum"):
            _check_int(field, getattr(self, field), U32_MAX)
        if self.info is Info.BLOCK_SIZE:
            ok = (
                self.minimum >= 1
                and self.minimum & (self.minimum - 1) == 0
                and self.preferred >= max(self.minimum, 512)
                and self.preferred & (self.preferred - 1) == 0
                and self.maximum >= self.preferred
            )
            if not ok:
                raise InvalidMessage(
                    f"invalid block sizes {self.minimum}/{self.preferred}/{self.maximum}"
                )


@dataclasses.dataclass(frozen=True)
class RepMetaContext:
    """NBD_REP_META_CONTEXT data: a context id and its name."""

    context_id: int
    name: str

    def __post_init__(self) -> None:
        _check_int("context id", self.context_id, U32_MAX)
        _check_str("context name", self.name)


RepData = RepServer | RepInfo | RepMetaContext | str | None


@dataclasses.dataclass(frozen=True)
class OptionReply:
    """Server: one reply to option ``opt``.

    ``data``: a :class:`RepServer` for SERVER, :class:`RepInfo` for INFO,
    :class:`RepMetaContext` for META_CONTEXT, a message ``str`` for an error,
    None for ACK. ``raw`` holds the data of a reply type we do not know.
    """

    opt: int
    reply: int
    data: RepData = None
    raw: bytes = b""

    def __post_init__(self) -> None:
        _check_int("option", int(self.opt), U32_MAX)
        _check_int("reply type", int(self.reply), U32_MAX)
        object.__setattr__(self, "opt", _enum(Opt, self.opt))
        object.__setattr__(self, "reply", _enum(Rep, self.reply))
        expected = {
            Rep.ACK: type(None),
            Rep.SERVER: RepServer,
            Rep.INFO: RepInfo,
            Rep.META_CONTEXT: RepMetaContext,
        }.get(self.reply)  # type: ignore[call-overload]
        if expected is not None and not isinstance(self.data, expected):
            raise InvalidMessage(f"{Rep(self.reply).name} needs {expected.__name__} data")
        if self.is_error:
            if not isinstance(self.data, str):
                raise InvalidMessage("an error reply carries a message string")
            _check_str("error message", self.data)

    @property
    def is_error(self) -> bool:
        return bool(int(self.reply) & (1 << 31))

    @property
    def is_final(self) -> bool:
        """ACK and errors end the replies to one option."""
        return self.reply == Rep.ACK or self.is_error


@dataclasses.dataclass(frozen=True)
class ExportNameReply:
    """Server: the answer to NBD_OPT_EXPORT_NAME (124 zero bytes follow unless
    both sides set NO_ZEROES)."""

    size: int
    flags: TransmissionFlag

    def __post_init__(self) -> None:
        _check_int("export size", self.size, U64_MAX)
        _check_int("transmission flags", int(self.flags), U16_MAX)


# ----------------------------------------------------------------------
# transmission


@dataclasses.dataclass(frozen=True)
class Request:
    """Client: one command. ``data`` is the WRITE payload (a memoryview of the
    received bytes on the server side: consume or copy it before feeding more)."""

    cmd: int
    cookie: int
    offset: int = 0
    length: int = 0
    flags: CmdFlag = CmdFlag.NONE
    data: Buffer | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _all_in_range(self.cookie, U64_MAX, self.offset, U64_MAX, self.length, U32_MAX):
            _check_int("cookie", self.cookie, U64_MAX)
            _check_int("offset", self.offset, U64_MAX)
            _check_int("length", self.length, U32_MAX)
        _check_int("command", int(self.cmd), U16_MAX)
        _check_int("command flags", int(self.flags), U16_MAX)
        object.__setattr__(self, "cmd", _enum(Cmd, self.cmd))
        object.__setattr__(self, "flags", _flags(CmdFlag, self.flags))
        if self.cmd == Cmd.WRITE:
            if self.data is None or len(self.data) != self.length:
                raise InvalidMessage("WRITE needs data of exactly `length` bytes")
        elif self.data is not None:
            raise InvalidMessage("only WRITE carries data")


@dataclasses.dataclass(frozen=True)
class SimpleReply:
    """Server: a simple reply; ``data`` only for a successful READ."""

    cookie: int
    error: int = 0
    data: Buffer | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _all_in_range(self.cookie, U64_MAX, self.error, U32_MAX):
            _check_int("cookie", self.cookie, U64_MAX)
            _check_int("error", self.error, U32_MAX)
        object.__setattr__(self, "error", _enum(Errno, self.error))
        if self.error and self.data is not None:
            raise InvalidMessage("an error reply carries no data")


@dataclasses.dataclass(frozen=True)
class Extent:
    """One block descriptor of a BLOCK_STATUS chunk."""

    length: int
    flags: int

    def __post_init__(self) -> None:
        _check_int("extent length", self.length, U32_MAX)
        _check_int("extent flags", self.flags, U32_MAX)
        if self.length == 0:
            raise InvalidMessage("extent length must not be 0")


@dataclasses.dataclass(frozen=True)
class StructuredChunk:
    """Server: one structured reply chunk.

    By ``type``: OFFSET_DATA uses ``offset`` and ``data``; OFFSET_HOLE
    ``offset`` and ``length``; BLOCK_STATUS ``context_id`` and ``extents``;
    ERROR ``error`` and ``message``; ERROR_OFFSET those and ``offset``; NONE
    nothing (and must have DONE). ``raw`` is the payload of an unknown type.
    """

    cookie: int
    type: int
    flags: ReplyFlag = ReplyFlag.NONE
    offset: int = 0
    length: int = 0
    data: Buffer | None = dataclasses.field(default=None, compare=False, repr=False)
    context_id: int = 0
    extents: tuple[Extent, ...] = ()
    error: int = 0
    message: str = ""
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not _all_in_range(
            self.cookie, U64_MAX, self.offset, U64_MAX, self.length, U32_MAX,
            self.context_id, U32_MAX, self.error, U32_MAX,
        ):  # fmt: skip
            _check_int("cookie", self.cookie, U64_MAX)
            _check_int("offset", self.offset, U64_MAX)
            _check_int("length", self.length, U32_MAX)
            _check_int("context id", self.context_id, U32_MAX)
            _check_int("error", self.error, U32_MAX)
        _check_int("chunk type", int(self.type), U16_MAX)
        _check_int("chunk flags", int(self.flags), U16_MAX)
        object.__setattr__(self, "type", _enum(Chunk, self.type))
        object.__setattr__(self, "flags", _flags(ReplyFlag, self.flags))
        t = int(self.type)  # plain int compares: this runs for every reply
        if t == _OFFSET_DATA:
            if self.data is None or len(self.data) == 0:
                raise InvalidMessage("OFFSET_DATA needs data")
            return
        if self.data is not None:
            raise InvalidMessage("only OFFSET_DATA carries data")
        if t == _NONE and not int(self.flags) & _DONE:
            raise InvalidMessage("NBD_REPLY_TYPE_NONE needs the DONE flag")
        if t == _OFFSET_HOLE and self.length == 0:
            raise InvalidMessage("OFFSET_HOLE length must not be 0")
        if t == _BLOCK_STATUS and not self.extents:
            raise InvalidMessage("BLOCK_STATUS needs at least one extent")
        if t in (_ERROR, _ERROR_OFFSET):
            if self.error == 0:
                raise InvalidMessage("an error chunk needs a non-zero error")
            if len(self.message.encode()) > U16_MAX:
                raise InvalidMessage("error message too long")

    @property
    def done(self) -> bool:
        return bool(int(self.flags) & _DONE)


#: for the unchecked constructors of the per-request messages
_new = object.__new__
_set = object.__setattr__
_CMD_MEMBERS: dict[int, Any] = dict(Cmd._value2member_map_)  # type: ignore[attr-defined]
_REPLY_DONE, _REPLY_NONE = ReplyFlag.DONE, ReplyFlag.NONE


def parsed_request(cmd: int, cookie: int, offset: int, length: int, flags: int,
                   data: Buffer | None) -> Request:  # fmt: skip
    """A :class:`Request` from fields the engine just unpacked from the wire,
    without :meth:`Request.__post_init__`'s checks: the layout bounds every
    integer, and the parser only attaches ``data`` (of ``length`` bytes) to a
    WRITE, so each check would hold. Equal to ``Request(...)`` with the same
    fields (``cmd`` and ``flags`` become enum members as there); ~0.4 us
    instead of ~3 us per request."""
    req = _new(Request)
    member = CmdFlag._value2member_map_.get(flags)  # type: ignore[attr-defined]
    _set(req, "__dict__", {
        "cmd": _CMD_MEMBERS.get(cmd, cmd), "cookie": cookie, "offset": offset,
        "length": length, "flags": CmdFlag(flags) if member is None else member, "data": data,
    })  # fmt: skip
    return req


def data_chunk(cookie: int, offset: int, data: Buffer, done: bool) -> StructuredChunk:
    """``StructuredChunk(cookie, Chunk.OFFSET_DATA, DONE or NONE, offset=offset,
    data=data)`` for a server's READ reply, without the generic checks: the
    caller guarantees what they test (``data`` not empty; integers in range:
    ``cookie`` and ``offset`` come from a parsed request)."""
    if not len(data):
        raise InvalidMessage("OFFSET_DATA needs data")
    chunk = _new(StructuredChunk)
    _set(chunk, "__dict__", {
        "cookie": cookie, "type": Chunk.OFFSET_DATA, "flags": _REPLY_DONE if done else _REPLY_NONE,
        "offset": offset, "length": 0, "data": data, "context_id": 0, "extents": (),
        "error": 0, "message": "", "raw": b"",
    })  # fmt: skip
    return chunk


def done_chunk(cookie: int) -> StructuredChunk:
    """``StructuredChunk(cookie, Chunk.NONE, ReplyFlag.DONE)``: a successful
    command without data (``cookie`` from a parsed request)."""
    chunk = _new(StructuredChunk)
    _set(chunk, "__dict__", {
        "cookie": cookie, "type": Chunk.NONE, "flags": _REPLY_DONE, "offset": 0, "length": 0,
        "data": None, "context_id": 0, "extents": (), "error": 0, "message": "", "raw": b"",
    })  # fmt: skip
    return chunk


@dataclasses.dataclass(frozen=True)
class Closed:
    """The peer closed its side (``b""`` fed to the engine)."""


Event = (
    Greeting
    | ClientFlags
    | Option
    | OptionReply
    | ExportNameReply
    | Request
    | SimpleReply
    | StructuredChunk
    | Closed
)

__all__ = [
    "Buffer",
    "ClientFlags",
    "Closed",
    "Event",
    "ExportNameOpt",
    "ExportNameReply",
    "Extent",
    "Greeting",
    "InfoOpt",
    "MetaContextOpt",
    "Option",
    "OptionReply",
    "RepInfo",
    "RepMetaContext",
    "RepServer",
    "Request",
    "SimpleReply",
    "StructuredChunk",
    "Cmd",
    "CmdFlag",
    "Chunk",
    "ClientFlag",
    "HandshakeFlag",
    "Info",
    "Opt",
    "Rep",
    "ReplyFlag",
    "TransmissionFlag",
]
