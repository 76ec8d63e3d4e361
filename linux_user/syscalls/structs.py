"""Guest struct layouts and flag translations (Linux uapi; little-endian guests).

- arm ``struct stat64`` (arch/arm/include/uapi/asm/stat.h, EABI alignment): 104 bytes.
- arm64 ``struct stat`` (include/uapi/asm-generic/stat.h): 128 bytes.
- ``struct statx`` is the same everywhere; the host's is copied as is.
- ``timespec``/``timeval``: word-sized fields; ``*_time64`` calls use 64-bit ones.
- ``O_*``: arm and arm64 use the asm-generic values for O_DIRECTORY, O_NOFOLLOW,
  O_DIRECT and O_LARGEFILE, which differ from x86's; the rest are equal.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..process import GuestThread

STAT64_ARM = struct.Struct("<Q4xIIIIIQ4x4xqI4xQIIIIIIQ")
STAT_ARM64 = struct.Struct("<QQIIIIQQqiiqqQqQqQII")
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EMPTY_PATH = 0x1000
AT_EACCESS = 0x200

# guest (asm-generic) value -> host value, for the bits that differ on an x86 host
_GUEST_O = {0o40000: "O_DIRECTORY", 0o100000: "O_NOFOLLOW", 0o200000: "O_DIRECT",
            0o400000: "O_LARGEFILE"}
_O_DIFF = [(g, getattr(os, n, 0)) for g, n in _GUEST_O.items()]
_O_MASK_G = sum(_GUEST_O)
_O_MASK_H = sum(h for _, h in _O_DIFF)
#: the host CPU (for host syscall numbers and flag values that differ per host arch)
HOST_MACHINE = os.uname().machine
_HOST_LARGEFILE = 0o100000 if HOST_MACHINE in ("x86_64", "i686") else 0


def open_flags_to_host(flags: int) -> int:
    """Guest ``O_*`` bits to the host's."""
    out = flags & ~_O_MASK_G
    for g, h in _O_DIFF:
        if flags & g:
            out |= h
    return out


def open_flags_to_guest(flags: int) -> int:
    """Host ``O_*`` bits (fcntl F_GETFL) to the guest's."""
    out = flags & ~(_O_MASK_H | _HOST_LARGEFILE)
    for g, h in _O_DIFF:
        if h and flags & h:
            out |= g
    if flags & _HOST_LARGEFILE:
        out |= 0o400000
    return out


def s32(v: int) -> int:
    """A 32-bit register value as a signed int."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def s64(v: int) -> int:
    """A 64-bit register value as a signed int."""
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >> 63 else v


def sword(t: GuestThread, v: int) -> int:
    """A register value as a signed long of the guest."""
    return s32(v) if t.arch.word_size == 4 else s64(v)


def dirfd(t: GuestThread, v: int) -> int | None:
    """A dirfd argument for os.* (``None`` for AT_FDCWD)."""
    fd = s32(v)
    return None if fd == AT_FDCWD else fd


def pack_stat(t: GuestThread, st: os.stat_result) -> bytes:
    """``st`` in the guest's fstat layout (arm stat64, arm64 stat)."""
    ns = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
    secs = [n // 1_000_000_000 for n in ns]
    nsec = [n % 1_000_000_000 for n in ns]
    if t.arch.name == "arm":
        return STAT64_ARM.pack(
            st.st_dev, st.st_ino & 0xFFFFFFFF, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
            secs[0] & 0xFFFFFFFF, nsec[0], secs[1] & 0xFFFFFFFF, nsec[1],
            secs[2] & 0xFFFFFFFF, nsec[2], st.st_ino)
    return STAT_ARM64.pack(
        st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, 0,
        st.st_size, st.st_blksize, 0, st.st_blocks, secs[0], nsec[0], secs[1], nsec[1],
        secs[2], nsec[2], 0, 0)


def timespec_struct(t: GuestThread, time64: bool = False) -> struct.Struct:
    """``struct timespec`` (or ``timeval``) of the guest: two longs, or two 64-bit ints."""
    return struct.Struct("<qq" if time64 or t.arch.word_size == 8 else "<ii")


def read_words(t: GuestThread, addr: int, count: int) -> tuple[int, ...]:
    """``count`` unsigned guest words at ``addr``."""
    fmt = "<%d%s" % (count, "I" if t.arch.word_size == 4 else "Q")
    return struct.unpack(fmt, t.mem.read(addr, count * t.arch.word_size))


def write_struct(t: GuestThread, addr: int, st: struct.Struct, *values: int) -> None:
    t.mem.write(addr, st.pack(*values))
