"""Wire layouts of NBD, declared once (the NBD project's ``doc/proto.md``).

All integers are big-endian ("network byte order", proto.md "Conventions").
"""

from __future__ import annotations

import struct

# --- handshake (proto.md "Newstyle negotiation") ---------------------------
#: server greeting: NBDMAGIC u64, IHAVEOPT u64, handshake flags u16
GREETING = struct.Struct(">QQH")
#: client flags u32
CLIENT_FLAGS = struct.Struct(">I")
#: option request header: IHAVEOPT u64, option u32, data length u32
OPTION = struct.Struct(">QII")
#: option reply header: REPLY_MAGIC u64, option u32, reply type u32, data length u32
OPTION_REPLY = struct.Struct(">QIII")
#: NBD_OPT_EXPORT_NAME reply: size u64, transmission flags u16 (+ 124 zero bytes)
EXPORT_NAME_REPLY = struct.Struct(">QH")
EXPORT_NAME_ZEROES = 124
#: a u32 length prefix (strings in option data)
U32 = struct.Struct(">I")
#: a u16 (info request count and items)
U16 = struct.Struct(">H")
#: NBD_REP_SERVER / NBD_REP_META_CONTEXT data prefix (u32 length or u32 context id)
#: NBD_INFO_EXPORT: type u16, size u64, flags u16
INFO_EXPORT = struct.Struct(">HQH")
#: NBD_INFO_BLOCK_SIZE: type u16, minimum u32, preferred u32, maximum u32
INFO_BLOCK_SIZE = struct.Struct(">HIII")

# --- transmission (proto.md "Transmission phase") --------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
#: request: magic u32, flags u16, type u16, cookie u64, offset u64, length u32
REQUEST = struct.Struct(">IHHQQI")
#: simple reply: magic u32, error u32, cookie u64
SIMPLE_REPLY = struct.Struct(">IIQ")
#: structured reply chunk: magic u32, flags u16, type u16, cookie u64, length u32
STRUCTURED_REPLY = struct.Struct(">IHHQI")
#: NBD_REPLY_TYPE_OFFSET_DATA prefix: offset u64
OFFSET_DATA = struct.Struct(">Q")
#: NBD_REPLY_TYPE_OFFSET_HOLE: offset u64, length u32
OFFSET_HOLE = struct.Struct(">QI")
#: NBD_REPLY_TYPE_ERROR prefix: error u32, message length u16
ERROR = struct.Struct(">IH")
#: NBD_REPLY_TYPE_BLOCK_STATUS prefix: context id u32; then EXTENT pairs
BLOCK_STATUS = struct.Struct(">I")
#: one block descriptor: length u32, status flags u32
EXTENT = struct.Struct(">II")
#: the offset that ends NBD_REPLY_TYPE_ERROR_OFFSET
ERROR_OFFSET = struct.Struct(">Q")
