"""Memory syscalls: brk, mmap/mmap2, munmap, mprotect, mremap, madvise."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...common.memory import PAGE, GuestMemoryError, page_align
from . import syscall
from .structs import s32

if TYPE_CHECKING:
    from ..process import GuestThread

MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE = 0x01, 0x02, 0x03
MAP_FIXED, MAP_ANONYMOUS = 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MADV_DONTNEED = 4
_PROT_MASK = 7


@syscall("brk")
def sys_brk(t: GuestThread, addr: int) -> int:
    proc = t.process
    mem = t.mem
    if addr <= proc.brk_start:
        return proc.brk
    old_end, new_end = page_align(proc.brk), page_align(addr)
    with mem.lock:
        if new_end > old_end:
            if not mem.is_free(old_end, new_end):
                return proc.brk
            try:
                mem.mmap(old_end, new_end - old_end, 3, fixed=True, name="[heap]")
            except GuestMemoryError:
                return proc.brk
        elif new_end < old_end:
            mem.munmap(new_end, old_end - new_end)
        proc.brk = addr
    return addr


def do_mmap(t: GuestThread, addr: int, length: int, prot: int, flags: int, fd: int,
            offset: int) -> int:
    """Linux's mmap (byte offset), for mmap and mmap2."""
    kind = flags & 0x0F
    if kind not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE) or not length:
        return -errno.EINVAL
    if offset % PAGE or prot & ~_PROT_MASK & ~0x03000000:
        return -errno.EINVAL
    fixed = bool(flags & MAP_FIXED)
    noreplace = bool(flags & MAP_FIXED_NOREPLACE)
    if (fixed or noreplace) and addr % PAGE:
        return -errno.EINVAL
    anon = bool(flags & MAP_ANONYMOUS)
    host_fd = None if anon else s32(fd)
    return t.mem.mmap(addr, length, prot & _PROT_MASK, fixed=fixed, noreplace=noreplace,
                      fd=host_fd, offset=0 if anon else offset,
                      shared=kind != MAP_PRIVATE)


@syscall("mmap2", arch="arm")
def sys_mmap2(t: GuestThread, addr: int, length: int, prot: int, flags: int, fd: int,
              pgoff: int) -> int:
    return do_mmap(t, addr, length, prot, flags, fd, pgoff * 4096)


@syscall("mmap", arch="aarch64")
def sys_mmap(t: GuestThread, addr: int, length: int, prot: int, flags: int, fd: int,
             off: int) -> int:
    return do_mmap(t, addr, length, prot, flags, fd, off)


@syscall("munmap")
def sys_munmap(t: GuestThread, addr: int, length: int) -> int:
    t.mem.munmap(addr, length)
    return 0


@syscall("mprotect")
def sys_mprotect(t: GuestThread, addr: int, length: int, prot: int) -> int:
    if not length:
        return 0 if addr % PAGE == 0 else -errno.EINVAL
    t.mem.mprotect(addr, length, prot & _PROT_MASK)
    return 0


@syscall("mremap")
def sys_mremap(t: GuestThread, old: int, old_len: int, new_len: int, flags: int,
               new_addr: int) -> int:
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED) or (flags & MREMAP_FIXED and not
                                                    flags & MREMAP_MAYMOVE):
        return -errno.EINVAL
    return t.mem.mremap(old, old_len, new_len, may_move=bool(flags & MREMAP_MAYMOVE),
                        new_addr=new_addr if flags & MREMAP_FIXED else None)


@syscall("madvise")
def sys_madvise(t: GuestThread, addr: int, length: int, advice: int) -> int:
    if addr % PAGE:
        return -errno.EINVAL
    if advice == MADV_DONTNEED and length:
        # the host pages behind the guest's get the same advice: same semantics
        t.mem.discard(addr, length)
    return 0


@syscall("msync")
def sys_msync(t: GuestThread, addr: int, length: int, flags: int) -> int:
    # shared file mappings are host MAP_SHARED mappings: the host kernel writes them back
    if addr % PAGE:
        return -errno.EINVAL
    return 0
