"""The initial stack of a new process, laid out as qemu-user 7.2 lays it out.

From the top of the stack mapping down (measured under qemu-arm and qemu-aarch64 by a
guest that prints its argv/envp/auxv addresses):

- one host pointer (8 bytes) left free: qemu's setup_arg_pages returns
  ``top - sizeof(void *)`` of the 64-bit host;
- the AT_EXECFN string, then the environment strings, then the argument strings, each
  block contiguous and in order (``envp[0]`` lowest);
- the AT_PLATFORM string, its length rounded up to the word size;
- down to a 16-byte boundary, then the 16 AT_RANDOM bytes;
- argc, argv[], NULL, envp[], NULL, the auxiliary vector, starting on a 16-byte
  boundary.

The auxiliary vector order is qemu's (not the kernel's): AT_PHDR, AT_PHENT, AT_PHNUM,
AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY, AT_UID, AT_EUID, AT_GID, AT_EGID, AT_HWCAP,
AT_CLKTCK, AT_RANDOM, AT_SECURE, AT_EXECFN, AT_HWCAP2, AT_PLATFORM, AT_NULL. qemu 7.2
emits AT_HWCAP2 for both arm and aarch64 and no AT_MINSIGSTKSZ (``minsigstksz`` adds
one before AT_NULL, as later kernels do for aarch64).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cpu import ArchInfo
    from ..memory import AddressSpace
    from .elf import LoadInfo

__all__ = ["AT", "InitialStack", "build_initial_stack", "page_summary", "read_initial_stack"]

#: auxiliary vector tags (include/uapi/linux/auxvec.h, elf.h)
AT = {
    "AT_NULL": 0, "AT_IGNORE": 1, "AT_EXECFD": 2, "AT_PHDR": 3, "AT_PHENT": 4,
    "AT_PHNUM": 5, "AT_PAGESZ": 6, "AT_BASE": 7, "AT_FLAGS": 8, "AT_ENTRY": 9,
    "AT_NOTELF": 10, "AT_UID": 11, "AT_EUID": 12, "AT_GID": 13, "AT_EGID": 14,
    "AT_PLATFORM": 15, "AT_HWCAP": 16, "AT_CLKTCK": 17, "AT_SECURE": 23,
    "AT_BASE_PLATFORM": 24, "AT_RANDOM": 25, "AT_HWCAP2": 26, "AT_EXECFN": 31,
    "AT_SYSINFO_EHDR": 33, "AT_MINSIGSTKSZ": 51,
}
#: what qemu-user (on a 64-bit host) leaves free at the very top
HOST_POINTER_SIZE = 8
STACK_ALIGNMENT = 16


@dataclass
class InitialStack:
    """An initial stack parsed back from guest memory."""

    sp: int
    argc: int
    argv: list[bytes]
    envp: list[bytes]
    argv_addrs: list[int]
    envp_addrs: list[int]
    auxv_addr: int
    auxv: list[tuple[int, int]] = field(default_factory=list)   # incl. AT_NULL

    def aux(self, tag: int) -> int | None:
        for key, value in self.auxv:
            if key == tag:
                return value
        return None


def _down(value: int, align: int) -> int:
    return value - value % align


def build_initial_stack(mem: AddressSpace, arch: ArchInfo, stack_top: int, argv: list[bytes],
                        envp: list[bytes], info: LoadInfo, *, hwcap: int, hwcap2: int,
                        platform: bytes, random16: bytes, execfn: bytes, uid: int, euid: int,
                        gid: int, egid: int, clktck: int = 100, secure: int = 0,
                        minsigstksz: int | None = None,
                        stack_limit: int | None = None) -> int:
    """Write argc/argv/envp/auxv and their strings below ``stack_top`` (the end of the
    stack mapping); return the initial stack pointer (which points at argc).

    ``stack_limit`` (the lowest usable stack address), when given, makes a stack that
    does not fit raise qemu's ``<execfn>: Argument list too long`` (an ElfError printed
    without the program prefix, exit status 255) before anything is written.
    """
    word = arch.word_size
    order = "<" if arch.byteorder == "little" else ">"
    wfmt = "I" if word == 4 else "Q"
    wmask = (1 << (8 * word)) - 1
    if len(random16) != 16:
        raise ValueError("AT_RANDOM needs 16 bytes")

    p = stack_top - HOST_POINTER_SIZE
    # strings: AT_EXECFN on top, then the environment, then the arguments
    p -= len(execfn) + 1
    execfn_addr = p
    env_block = b"".join(s + b"\0" for s in envp)
    p -= len(env_block)
    env_start = p
    arg_block = b"".join(s + b"\0" for s in argv)
    p -= len(arg_block)
    arg_start = p
    strings_start = p
    platform_addr = 0
    if platform:
        length = len(platform) + 1
        p -= (length + word - 1) & ~(word - 1)
        platform_addr = p
    p = _down(p, 16) - 16
    random_addr = p

    auxv = [
        (3, info.phdr), (4, info.phent), (5, info.phnum), (6, mem.page_size),
        (7, info.interp_base), (8, 0), (9, info.program_entry), (11, uid), (12, euid),
        (13, gid), (14, egid), (16, hwcap), (17, clktck), (25, random_addr), (23, secure),
        (31, execfn_addr), (26, hwcap2),
    ]
    if platform:
        auxv.append((15, platform_addr))
    if minsigstksz is not None:
        auxv.append((51, minsigstksz))
    auxv.append((0, 0))

    nwords = 1 + len(argv) + 1 + len(envp) + 1 + 2 * len(auxv)
    sp = _down(p - nwords * word, STACK_ALIGNMENT)
    if stack_limit is not None and sp < stack_limit:
        import errno
        import os

        from .elf import ElfError

        raise ElfError(f"{os.fsdecode(execfn)}: {os.strerror(errno.E2BIG)}", prefixed=False)

    ptrs: list[int] = [len(argv)]
    off = 0
    for s in argv:
        ptrs.append(arg_start + off)
        off += len(s) + 1
    ptrs.append(0)
    off = 0
    for s in envp:
        ptrs.append(env_start + off)
        off += len(s) + 1
    ptrs.append(0)
    for key, value in auxv:
        ptrs.append(key)
        ptrs.append(value & wmask)
    table = struct.pack(f"{order}{len(ptrs)}{wfmt}", *ptrs)

    # one write for the table (and the padding up to the random bytes), one for the rest
    mem.write(sp, table + bytes(random_addr - sp - len(table)))
    top = bytearray(random16)
    if platform:
        top += bytes(platform_addr - len(top) - random_addr)
        top += platform + b"\0"
    top += bytes(strings_start - random_addr - len(top))
    top += arg_block + env_block + execfn + b"\0"
    mem.write(random_addr, bytes(top))
    return sp


def _cstring(mem: AddressSpace, addr: int, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    while len(out) < limit:
        chunk = mem.read(addr + len(out), 256 - (addr + len(out)) % 256)
        nul = chunk.find(b"\0")
        if nul >= 0:
            out += chunk[:nul]
            return bytes(out)
        out += chunk
    return bytes(out)


def read_initial_stack(mem: AddressSpace, arch: ArchInfo, sp: int) -> InitialStack:
    """Parse argc/argv/envp/auxv (and the argv/envp strings) at ``sp``."""
    word = arch.word_size
    fmt = ("<" if arch.byteorder == "little" else ">") + ("I" if word == 4 else "Q")

    def get(addr: int) -> int:
        return struct.unpack(fmt, mem.read(addr, word))[0]

    argc = get(sp)
    addr = sp + word
    argv_addrs = [get(addr + i * word) for i in range(argc)]
    addr += (argc + 1) * word
    envp_addrs = []
    while True:
        value = get(addr)
        addr += word
        if not value:
            break
        envp_addrs.append(value)
    auxv_addr = addr
    auxv = []
    while True:
        key, value = get(addr), get(addr + word)
        addr += 2 * word
        auxv.append((key, value))
        if key == 0:
            break
    return InitialStack(sp, argc, [_cstring(mem, a) for a in argv_addrs],
                        [_cstring(mem, a) for a in envp_addrs], argv_addrs, envp_addrs,
                        auxv_addr, auxv)


def page_summary(info: LoadInfo, arch: ArchInfo, sp: int, argc: int, envc: int) -> list[str]:
    """The lines qemu-user's ``-d page`` prints after the page dump (start_brk ...
    auxv_start), in its format: 8 hex digits for a 32-bit guest, 16 for 64-bit.
    ``brk`` there is the unaligned end of the bss and ``entry`` where execution starts."""
    word = arch.word_size
    argv = sp + word
    envp = argv + (argc + 1) * word
    auxv = envp + (envc + 1) * word
    rows = [("start_brk", 0), ("end_code", info.end_code), ("start_code", info.start_code),
            ("start_data", info.start_data), ("end_data", info.end_data),
            ("start_stack", sp), ("brk", info.end_bss or info.brk), ("entry", info.entry),
            ("argv_start", argv), ("env_start", envp), ("auxv_start", auxv)]
    return [f"{name:<12}0x{value:0{2 * word}x}" for name, value in rows]
