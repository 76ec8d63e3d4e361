"""ELF programs for the user-mode emulators, loaded as qemu-user 7.2 loads them.

Validation follows qemu-user's order and words (measured against qemu-arm and
qemu-aarch64 7.2):

- the program cannot be opened: ``Error while loading <path>: <strerror>``; it is not a
  regular file or has no execute bit: the same with EACCES; it is shorter than an ELF
  header or lacks the ELF magic: the same with ENOEXEC. qemu printf()s these on stdout
  and exits with status 1 (:attr:`ElfError.errno` is set for them);
- everything else is qemu's ``error_report``: ``<prog>: <image>: Invalid ELF image for
  this architecture`` (class, byte order, version, machine, e_ehsize, e_phentsize, or
  e_type not ET_EXEC/ET_DYN), ``Incomplete read of file header``, ``Multiple PT_INTERP
  entries``, ``Invalid PT_INTERP entry``, ``Error mapping file: <strerror>``, and for the
  interpreter ``Could not open '<name>': <strerror>``; exit status 255.

Loading: the whole image span is reserved (PROT_NONE) first, ET_EXEC at its own
addresses, ET_DYN (PIE) at the architecture's mmap base (qemu's TASK_UNMAPPED_BASE:
0x40000000 for arm, 0x5500000000 for aarch64) and the interpreter wherever the address
space chooses; the main program's reservation includes 16 MiB (32 MiB for 64-bit
guests) after its bss, kept while the stack and the interpreter are placed and released
at the end, as qemu 7.2 does. Each PT_LOAD maps the pages holding its file bytes from the
file (a host file mapping when the address space offers one, else bytes written into
anonymous pages), zeroes the rest of its last file page when it has a bss, and maps
the remaining bss pages anonymous.

The headers are parsed with ``struct`` layouts below rather than pyelftools: importing
pyelftools costs about 30 ms of the 0.15 s start-up budget, and qemu's checks need the
raw fields anyway (the tests compare our results with pyelftools).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cpu import ArchInfo
    from ..memory import AddressSpace

__all__ = [
    "ElfError", "LoadInfo", "load_program", "prefixed_path", "read_elf_header",
    "EM_ARM", "EM_AARCH64",
]

# --- layout: System V gABI, "ELF Header" and "Program Header" -------------------------
ELFMAG = b"\x7fELF"
EI_CLASS, EI_DATA, EI_VERSION = 4, 5, 6
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
ET_EXEC, ET_DYN = 2, 3
EM_ARM, EM_AARCH64 = 40, 183
PT_LOAD, PT_INTERP, PT_GNU_STACK = 1, 3, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4

#: qemu-user reads this much of the file first (BPRM_BUF_SIZE); headers inside it
#: come from that buffer, zero-padded past the end of a short file
BPRM_BUF_SIZE = 1024
#: room kept free after the main program's bss while the stack and the interpreter
#: are placed (qemu 7.2's reserve_brk: 16 MiB for 32-bit guests, 32 MiB for 64-bit)
BRK_RESERVE = {32: 16 << 20, 64: 32 << 20}
#: qemu's STACK_LOWER_LIMIT, in pages
STACK_MIN_PAGES = 32

# fields after e_ident: e_type e_machine e_version e_entry e_phoff e_shoff e_flags
# e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
_EHDR_FIELDS = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
# 32: p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
# 64: p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
_PHDR_FIELDS = {32: "IIIIIIII", 64: "IIQQQQQQ"}
EHDR_SIZE = {32: 52, 64: 64}
PHDR_SIZE = {32: 32, 64: 56}

_INVALID = "Invalid ELF image for this architecture"


class ElfError(Exception):
    """A program that cannot be loaded, in qemu-user's words.

    ``str(err)`` is the message without the ``<prog>: `` prefix. When :attr:`errno` is
    set, qemu reports ``Error while loading <path>: <strerror(errno)>`` on stdout (which
    is the message here) and exits with status 1; otherwise it prints
    ``<prog>: <message>`` on stderr and exits with status 255 (:attr:`exit_status`),
    except for the few messages qemu prints without the prefix (``prefixed`` False:
    ``<path>: Argument list too long``). :meth:`format` gives the line either way.
    """

    def __init__(self, message: str, errno: int | None = None, *,
                 prefixed: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno
        self.prefixed = prefixed    # False: qemu fprintf()s it without "<prog>: "

    @property
    def exit_status(self) -> int:
        return 1 if self.errno else 255

    def format(self, prog: str) -> str:
        """The line qemu prints (without the newline): see the class docstring."""
        if self.errno or not self.prefixed:
            return self.message
        return f"{prog}: {self.message}"

    def __str__(self) -> str:
        return self.message


@dataclass
class LoadInfo:
    """Where a program (and its interpreter) landed, for the stack and the process."""

    entry: int          # where to start: the interpreter's entry if any (bit 0 = Thumb)
    program_entry: int  # AT_ENTRY: the program's own entry
    phdr: int           # AT_PHDR
    phent: int          # AT_PHENT
    phnum: int          # AT_PHNUM
    load_bias: int
    interp_base: int    # AT_BASE (0 when static)
    interp_path: str | None   # PT_INTERP as written in the program
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    brk: int            # initial program break: page-aligned end of the program's bss
    exec_path: str      # host path of the program (symlinks resolved, as /proc/self/exe)
    # extensions
    load_addr: int = 0              # lowest address of the program's image
    end_bss: int = 0                # end of the program's bss (qemu's unaligned info->brk)
    elf_flags: int = 0              # e_flags (arm: EABI version, hard-float)
    interp_host_path: str | None = None   # the interpreter file opened (under -L or not)
    interp_bias: int = 0
    stack_flags: int | None = None  # p_flags of PT_GNU_STACK (None: no such header)
    stack_limit: int = 0            # load_program(stack_size=): lowest usable stack byte
    stack_top: int = 0              # ... and the end of the stack mapping

    @property
    def exec_stack(self) -> bool:
        """PT_GNU_STACK asks for an executable stack (qemu 7.2 maps it rw- anyway)."""
        return bool(self.stack_flags is not None and self.stack_flags & PF_X)


def prefixed_path(prefix: str | None, name: str) -> str:
    """qemu's ``path()``: an absolute ``name`` looked up under ``prefix`` first.

    Returns ``prefix + name`` when that exists, else ``name`` unchanged (also for a
    relative name, no prefix, or the prefix "/").
    """
    if not prefix or not name.startswith("/"):
        return name
    base = os.path.abspath(prefix)
    if base == "/":
        return name
    full = base + name
    return full if os.path.exists(full) else name


def read_elf_header(path: str) -> tuple[int, int]:
    """``(e_machine, 32 or 64)`` of the ELF file ``path``, so a caller can tell a
    program of another architecture; ElfError (with errno) if it is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as e:
        raise ElfError(f"Error while loading {path}: {os.strerror(e.errno or errno.EIO)}",
                       e.errno or errno.EIO) from None
    if len(head) < 20 or head[:4] != ELFMAG or head[EI_CLASS] not in (1, 2) \
            or head[EI_DATA] not in (1, 2):
        raise ElfError(f"Error while loading {path}: {os.strerror(errno.ENOEXEC)}",
                       errno.ENOEXEC)
    order = "<" if head[EI_DATA] == ELFDATA2LSB else ">"
    (machine,) = struct.unpack_from(order + "H", head, 18)
    return machine, 32 if head[EI_CLASS] == ELFCLASS32 else 64


# --- parsing --------------------------------------------------------------------------
@dataclass
class _Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int


@dataclass
class _Image:
    name: str           # as qemu names it in messages
    host_path: str
    fd: int
    type: int
    entry: int
    phoff: int
    phnum: int
    flags: int
    segments: list[_Segment]
    interp: str | None


def _fail(name: str, message: str) -> ElfError:
    return ElfError(f"{name}: {message}")


def _pread(fd: int, size: int, offset: int, name: str) -> bytes:
    try:
        if offset + size > os.fstat(fd).st_size:
            raise _fail(name, "Incomplete read of file header")
        data = os.pread(fd, size, offset)
    except (OSError, OverflowError) as e:
        err = getattr(e, "errno", None) or errno.EINVAL
        raise _fail(name, f"Error reading file header: {os.strerror(err)}") from None
    if len(data) != size:
        raise _fail(name, "Incomplete read of file header")
    return data


def _parse(name: str, host_path: str, fd: int, buf: bytes, arch: ArchInfo,
           want_interp: bool) -> _Image:
    """qemu's load_elf_image checks, then the program headers."""
    bits = arch.elf_class
    order = "<" if arch.byteorder == "little" else ">"
    buf = buf.ljust(BPRM_BUF_SIZE, b"\0")
    if (buf[:4] != ELFMAG or buf[EI_CLASS] != (ELFCLASS32 if bits == 32 else ELFCLASS64)
            or buf[EI_DATA] != (ELFDATA2LSB if order == "<" else ELFDATA2MSB)
            or buf[EI_VERSION] != EV_CURRENT):
        raise _fail(name, _INVALID)
    (e_type, e_machine, _version, e_entry, e_phoff, _shoff, e_flags, e_ehsize,
     e_phentsize, e_phnum, *_rest) = struct.unpack_from(order + _EHDR_FIELDS[bits], buf, 16)
    if (e_machine != arch.elf_machine or e_ehsize != EHDR_SIZE[bits]
            or e_phentsize != PHDR_SIZE[bits] or e_type not in (ET_EXEC, ET_DYN)):
        raise _fail(name, _INVALID)
    size = e_phnum * e_phentsize
    if e_phoff + size <= BPRM_BUF_SIZE:
        table = buf[e_phoff:e_phoff + size]
    else:
        table = _pread(fd, size, e_phoff, name)
    layout = struct.Struct(order + _PHDR_FIELDS[bits])
    segments = []
    for fields in layout.iter_unpack(table):
        if bits == 32:
            p_type, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_flags, p_align = fields
        else:
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_align = fields
        segments.append(_Segment(p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz,
                                 p_align))
    interp = None
    if want_interp:
        for seg in segments:
            if seg.type != PT_INTERP:
                continue
            if interp is not None:
                raise _fail(name, "Multiple PT_INTERP entries")
            if seg.offset + seg.filesz <= BPRM_BUF_SIZE:
                raw = buf[seg.offset:seg.offset + seg.filesz]
            else:
                raw = _pread(fd, seg.filesz, seg.offset, name)
            if not raw or raw[-1] != 0:
                raise _fail(name, "Invalid PT_INTERP entry")
            interp = os.fsdecode(raw[:-1].split(b"\0", 1)[0])
    return _Image(name, host_path, fd, e_type, e_entry, e_phoff, e_phnum, e_flags,
                  segments, interp)


# --- mapping --------------------------------------------------------------------------
def _takes_fd(mem: Any) -> bool:
    """Does this address space map host files (GuestMemory.mmap's ``fd=``)?"""
    code = getattr(getattr(type(mem), "mmap", None), "__code__", None)
    return code is not None and "fd" in code.co_varnames[
        :code.co_argcount + code.co_kwonlyargcount]


def _prot(flags: int) -> int:
    return ((PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0)
            | (PROT_EXEC if flags & PF_X else 0))


@dataclass
class _Loaded:
    load_addr: int
    bias: int
    entry: int
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    end_bss: int
    reserve_end: int     # end of the PROT_NONE reservation (main program: incl. brk room)


def _map_image(mem: AddressSpace, img: _Image, arch: ArchInfo, *, hint: int,
               brk_room: bool) -> _Loaded:
    from ..memory import GuestMemoryError

    page = mem.page_size
    mask = (1 << arch.elf_class) - 1
    loads = [s for s in img.segments if s.type == PT_LOAD]
    if not loads:   # qemu then asks mmap for a span of -1 bytes
        raise _fail(img.name, f"Error mapping file: {os.strerror(errno.EINVAL)}")
    loaddr = min((s.vaddr - s.offset) & mask for s in loads)
    hiaddr = max((s.vaddr + s.memsz - 1) & mask for s in loads)
    if hiaddr < loaddr or loaddr % page:
        raise _fail(img.name, f"Error mapping file: {os.strerror(errno.EINVAL)}")
    span = -(-(hiaddr + 1 - loaddr) // page) * page
    if brk_room:
        span += BRK_RESERVE[arch.elf_class]
    name = os.path.realpath(img.host_path)
    file_maps = _takes_fd(mem)
    try:
        if img.type == ET_EXEC:
            load_addr = mem.mmap(loaddr, span, PROT_NONE, fixed=True)
        else:
            load_addr = mem.mmap(hint, span, PROT_NONE)
        reserve_end = load_addr + span
        bias = (load_addr - loaddr) & mask
        out = _Loaded(load_addr, bias, (img.entry + bias) & mask, mask, 0, mask, 0, 0,
                      reserve_end)
        for seg in loads:
            vaddr = (seg.vaddr + bias) & mask
            po = vaddr % page
            start = vaddr - po
            ef = vaddr + seg.filesz
            em = vaddr + max(seg.memsz, seg.filesz)
            prot = _prot(seg.flags)
            if (seg.offset - po) % page or em > mask + 1:
                raise GuestMemoryError("misaligned segment", errno.EINVAL)
            if seg.filesz:
                file_end = -(-ef // page) * page
                if file_maps:
                    mem.mmap(start, file_end - start, prot, fixed=True, name=name,
                             fd=img.fd, offset=seg.offset - po)  # type: ignore[call-arg]
                else:
                    mem.mmap(start, file_end - start, prot, fixed=True, name=name)
                    data = os.pread(img.fd, file_end - start, seg.offset - po)
                    if data:
                        mem.write(start, data)
                if ef < em:
                    mem.write(ef, bytes(file_end - ef))
                    if file_end < em:
                        mem.mmap(file_end, -(-em // page) * page - file_end, prot, fixed=True)
            elif em > start:
                mem.mmap(start, -(-em // page) * page - start, prot, fixed=True)
            if prot & PROT_EXEC:
                out.start_code = min(out.start_code, vaddr)
                out.end_code = max(out.end_code, ef)
            if prot & PROT_WRITE:
                out.start_data = min(out.start_data, vaddr)
                out.end_data = max(out.end_data, ef)
            out.end_bss = max(out.end_bss, em)
    except GuestMemoryError as e:
        raise _fail(img.name, f"Error mapping file: {os.strerror(e.errno)}") from None
    except OSError as e:
        raise _fail(img.name, f"Error mapping file: {os.strerror(e.errno or errno.EIO)}") \
            from None
    if out.start_code == mask:
        out.start_code = 0
    if out.end_data == 0:
        out.start_data = out.end_data = out.end_code
    return out


def _open_program(path: str, arch: ArchInfo) -> tuple[int, bytes]:
    """qemu-user's open + prepare_binprm + the magic check of loader_exec."""
    def fail(err: int) -> ElfError:
        return ElfError(f"Error while loading {path}: {os.strerror(err)}", err)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise fail(e.errno or errno.ENOENT) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            raise fail(errno.EACCES)
        buf = os.pread(fd, BPRM_BUF_SIZE, 0)
    except OSError as e:
        os.close(fd)
        raise fail(e.errno or errno.EIO) from None
    except ElfError:
        os.close(fd)
        raise
    if len(buf) < EHDR_SIZE[arch.elf_class] or buf[:4] != ELFMAG:
        os.close(fd)
        raise fail(errno.ENOEXEC)
    return fd, buf


def _pie_base(arch: ArchInfo) -> int:
    base = getattr(arch, "mmap_base", None)
    if base is not None:
        return int(base)
    return 0x40000000 if arch.elf_class == 32 else 0x5500000000


def load_program(mem: AddressSpace, path: str, arch: ArchInfo, *,
                 ld_prefix: str | None, stack_size: int | None = None) -> LoadInfo:
    """Map the program ``path`` (and its PT_INTERP, looked up under ``ld_prefix``
    first) into ``mem``; raise :class:`ElfError` in qemu-user's words.

    With ``stack_size``, the stack is mapped too, in qemu's order (after the program,
    before the interpreter, while the brk room is still held), so that the layout is
    qemu-user's: ``size`` raised to 32 pages, one PROT_NONE guard page below it;
    :attr:`LoadInfo.stack_limit`/:attr:`LoadInfo.stack_top` say where it is.
    """
    fd, buf = _open_program(path, arch)
    try:
        img = _parse(path, path, fd, buf, arch, want_interp=True)
        main = _map_image(mem, img, arch, hint=_pie_base(arch), brk_room=True)
        info = LoadInfo(
            entry=main.entry, program_entry=main.entry,
            phdr=(main.load_addr + img.phoff) & ((1 << arch.elf_class) - 1),
            phent=PHDR_SIZE[arch.elf_class], phnum=img.phnum, load_bias=main.bias,
            interp_base=0, interp_path=img.interp, start_code=main.start_code,
            end_code=main.end_code, start_data=main.start_data, end_data=main.end_data,
            brk=-(-main.end_bss // mem.page_size) * mem.page_size,
            exec_path=os.path.realpath(path), load_addr=main.load_addr,
            end_bss=main.end_bss, elf_flags=img.flags)
        for seg in img.segments:
            if seg.type == PT_GNU_STACK:
                info.stack_flags = seg.flags
        if stack_size is not None:
            _map_stack(mem, stack_size, info, arch)
        if img.interp is not None:
            _load_interp(mem, img.interp, arch, ld_prefix, info)
        # the brk room goes back to the address space
        brk_end = max(info.brk, main.load_addr)
        if main.reserve_end > brk_end:
            mem.munmap(brk_end, main.reserve_end - brk_end)
    finally:
        os.close(fd)
    return info


def _map_stack(mem: AddressSpace, size: int, info: LoadInfo, arch: ArchInfo) -> None:
    """qemu's setup_arg_pages: ``size + guard`` read-write, the lowest page PROT_NONE.

    The size is an abi_ulong in qemu (cut to 32 bits for a 32-bit guest, so ``-s``
    of 4 GiB is the 32-page minimum and a size whose guard page wraps to 0 is EINVAL)
    and is not rounded: the stack's top is ``stack_limit + size`` inside the last page.
    Where the guest address space is qemu's reserved_va (arm: :attr:`mmap_topdown`),
    the place is qemu's mmap_find_vma_reserved from TASK_UNMAPPED_BASE:
    ``[base, base + size)`` when free (a fixed-address program), else the highest free
    range below what is in the way, else the top of the address space.
    """
    from ..memory import GuestMemoryError

    page = mem.page_size
    mask = (1 << arch.elf_class) - 1
    size = max(size & mask, STACK_MIN_PAGES * page)
    length = (size + page) & mask     # mmap rounds it up; the stack's top is not
    try:
        if length == 0:
            raise GuestMemoryError("mmap of 0 bytes", errno.EINVAL)
        if length <= size:
            # the guard page wrapped the length to less than a page: qemu maps that
            # page and then crashes writing the stack; refused here instead
            raise GuestMemoryError("stack size wraps", errno.ENOMEM)
        length = -(-length // page) * page
        hint = _reserved_va_place(mem, arch, length)
        if hint is None and getattr(arch, "mmap_topdown", False) and hasattr(mem, "vmas"):
            raise GuestMemoryError("no room for the stack", errno.ENOMEM)
        base = mem.mmap(hint or 0, length, PROT_READ | PROT_WRITE, name="[stack]")
        mem.mprotect(base, page, PROT_NONE)
    except (GuestMemoryError, OverflowError) as e:
        err = getattr(e, "errno", None) or errno.ENOMEM
        raise ElfError(f"mmap stack: {os.strerror(err)}", prefixed=False) from None
    info.stack_limit = base + page
    info.stack_top = base + page + size


def _reserved_va_place(mem: AddressSpace, arch: ArchInfo, length: int) -> int | None:
    """qemu 7.2's mmap_find_vma_reserved(TASK_UNMAPPED_BASE, length) over ``mem``'s
    mappings, for arches whose guest space qemu reserves (None: not such an arch, or
    no room). The search goes down from ``start + length``: past anything in the way,
    and once from the top of the reserved space (4 GiB less a page) when it reaches 0.
    """
    vmas = getattr(mem, "vmas", None)
    if not getattr(arch, "mmap_topdown", False) or vmas is None:
        return None
    page = mem.page_size
    top = getattr(mem, "va_limit", 1 << 32) - page
    busy = sorted([(v.start, v.end) for v in vmas] + list(getattr(mem, "reserved", [])))
    start = arch.mmap_base
    if length > top:
        return None
    end, looped = start + length, False
    if start > top - length:
        end, looped = top, True
    while True:
        low = end - length
        if low < page:                  # qemu's page walk reached 0: wrap once
            if looped:
                return None
            end, looped = top, True
            continue
        blocking = [b for b, e in busy if b < end and e > low]
        if not blocking:
            return low
        end = max(blocking) // page * page


def _load_interp(mem: AddressSpace, name: str, arch: ArchInfo, ld_prefix: str | None,
                 info: LoadInfo) -> None:
    host = prefixed_path(ld_prefix, name)
    try:
        fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ElfError(f"Could not open '{name}': {os.strerror(e.errno or errno.ENOENT)}") \
            from None
    try:
        try:
            buf = os.pread(fd, BPRM_BUF_SIZE, 0)
        except OSError as e:
            raise _fail(name, f"Error reading file header: "
                              f"{os.strerror(e.errno or errno.EIO)}") from None
        img = _parse(name, host, fd, buf, arch, want_interp=False)
        loaded = _map_image(mem, img, arch, hint=0, brk_room=False)
    finally:
        os.close(fd)
    info.entry = loaded.entry
    info.interp_base = loaded.load_addr
    info.interp_bias = loaded.bias
    info.interp_host_path = host
