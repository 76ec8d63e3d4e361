"""NBD numbers: magics, options, replies, commands and flags.

Every value is from the NBD project's ``doc/proto.md`` (section named on each
class); QEMU's own extensions from QEMU's ``docs/interop/nbd.txt``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

#: "NBDMAGIC": the first 8 bytes a newstyle server sends (proto.md "Newstyle negotiation")
NBDMAGIC = 0x4E42444D41474943
#: "IHAVEOPT": second word of the greeting and the magic of every option request
IHAVEOPT = 0x49484156454F5054
#: magic of every option reply (proto.md "Option reply")
REPLY_MAGIC = 0x3E889045565A9
#: oldstyle negotiation magic (only recognised, to refuse it)
CLISERV_MAGIC = 0x00420281861253

#: the largest option payload we accept (QEMU's NBD_MAX_BUFFER_SIZE)
MAX_OPTION_LENGTH = 32 * 1024 * 1024
#: the largest string (export name, query, description) in the protocol
MAX_STRING = 4096
#: the largest READ/WRITE payload qemu-nbd serves (NBD_MAX_BUFFER_SIZE)
MAX_PAYLOAD = 32 * 1024 * 1024


class HandshakeFlag(IntFlag):
    """Server handshake flags, u16 (proto.md "Newstyle negotiation")."""

    NONE = 0
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    """Client flags, u32, sent after the greeting."""

    NONE = 0
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class TransmissionFlag(IntFlag):
    """Per-export transmission flags, u16 (proto.md "Transmission flags")."""

    NONE = 0
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Opt(IntEnum):
    """Option types (proto.md "Option types")."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10


class Rep(IntEnum):
    """Option reply types (proto.md "Option reply types"); errors have bit 31."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9

    @property
    def is_error(self) -> bool:
        return bool(self & (1 << 31))


class Info(IntEnum):
    """``NBD_INFO_*`` items of NBD_OPT_INFO / NBD_OPT_GO (proto.md "Request types")."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(IntEnum):
    """Request types (proto.md "Request types")."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlag(IntFlag):
    """Command flags, u16 (proto.md "Command flags")."""

    NONE = 0
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


class ReplyFlag(IntFlag):
    """Structured reply chunk flags, u16."""

    NONE = 0
    DONE = 1 << 0


class Chunk(IntEnum):
    """Structured reply chunk types (proto.md "Structured reply types")."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


class Errno(IntEnum):
    """Error values on the wire (proto.md "Error values"), not the host's errno."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


class StateFlag(IntFlag):
    """``base:allocation`` extent flags (proto.md "Metadata contexts")."""

    NONE = 0
    HOLE = 1 << 0
    ZERO = 1 << 1


#: meta context names (proto.md; qemu:* from QEMU's docs/interop/nbd.txt)
BASE_ALLOCATION = "base:allocation"
QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth"
QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:"
