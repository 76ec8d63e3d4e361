"""-kernel with a Multiboot (v1) kernel, as QEMU's hw/i386/multiboot.c loads it.

The header (magic 0x1BADB002 in the first 8 KiB, 4-byte aligned) says how to load:
with flag bit 16 (the "a.out kludge") the header's load/bss/entry addresses are used;
otherwise the file must be a 32-bit ELF whose PT_LOAD segments go to their physical
addresses. Modules come from -initrd (``file args,file2 args``), each page-aligned after
the kernel; the Multiboot information block, the memory map (the machine's e820 view),
the command line (kernel path then -append, as QEMU passes it) and the boot loader name
"qemu" follow.

Entry differs from QEMU on purpose: QEMU runs SeaBIOS, which runs QEMU's multiboot.bin
option ROM, which switches to protected mode. Here the CPU is put straight into that
state at reset: 32-bit flat protected mode (a GDT with code 0x08 and data 0x10 in the
information area), paging off, IF=0, A20 on, EAX=0x2BADB002, EBX=the information block.
So the PIC, the PIT and the rest are in their power-on state, not as SeaBIOS leaves them.

A Linux bzImage ("HdrS" at 0x202) is refused (not supported yet).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from .options import UsageError

MB_MAGIC = 0x1BADB002
MB_BOOTLOADER_MAGIC = 0x2BADB002
MB_AOUT_KLUDGE = 1 << 16
MB_VIDEO_MODE = 1 << 2
# info flags QEMU sets: memory, boot device, cmdline, modules, mmap, boot loader name
INFO_FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
INFO_SIZE = 0x58
PAGE = 0x1000


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _find_header(data: bytes) -> int | None:
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MB_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off
    return None


class Multiboot:
    """A loaded Multiboot kernel: what the CPU needs at every reset."""

    def __init__(self, entry: int, info_addr: int, gdt_addr: int) -> None:
        self.entry = entry
        self.info_addr = info_addr
        self.gdt_addr = gdt_addr

    def enter(self, machine: Any) -> None:
        """Put the CPU into the state QEMU's multiboot option ROM leaves it in."""
        from unicorn import x86_const as x

        from .x86.descriptors import (
            CS,
            DESC_A,
            DESC_B,
            DESC_CS,
            DESC_G,
            DESC_P,
            DESC_R,
            DESC_S,
            DESC_W,
            DS,
            ES,
            FS,
            GS,
            SS,
            Segment,
        )

        cpu = machine.cpu
        uc, env = cpu.uc, cpu.env
        uc.reg_write(x.UC_X86_REG_CR0, 0x60000011)
        uc.reg_write(x.UC_X86_REG_GDTR, (0, self.gdt_addr, 0x17, 0))
        code = DESC_P | DESC_S | DESC_CS | DESC_R | DESC_A | DESC_B | DESC_G
        data = DESC_P | DESC_S | DESC_W | DESC_A | DESC_B | DESC_G
        env.load_seg_cache(CS, Segment(0x08, 0, 0xFFFFFFFF, code))
        for n in (SS, DS, ES, FS, GS):
            env.load_seg_cache(n, Segment(0x10, 0, 0xFFFFFFFF, data))
        uc.reg_write(x.UC_X86_REG_RFLAGS, 2)
        env.set_gpr(0, MB_BOOTLOADER_MAGIC)       # EAX
        env.set_gpr(3, self.info_addr)            # EBX
        env.set_gpr(2, 0)
        env.rip = self.entry
        uc.ctl_flush_tb()


def _e820(machine: Any) -> list[tuple[int, int, int]]:
    """(base, length, type) as SeaBIOS reports the pc machine's memory (1 RAM, 2 reserved)."""
    below = machine.ram_below
    # SeaBIOS keeps the top 128 KiB below 4 GiB for its tables; QEMU's e820 reserves
    # the HyperTransport window below 1 TiB (fd00000000, 12 GiB)
    table = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
             (0x100000, below - 0x100000 - 0x20000, 1), (below - 0x20000, 0x20000, 2),
             (0xFFFC0000, 0x40000, 2)]
    if machine.ram_above:
        table.append((1 << 32, machine.ram_above, 1))
    table.append((0xFD00000000, 0x300000000, 2))
    return table


def _load_elf(data: bytes, ram: memoryview, limit: int) -> tuple[int, int, int]:
    """Load PT_LOAD segments at their physical addresses: (entry, low, high)."""
    if data[4] != 1:
        raise UsageError("Cannot load x86-64 image, give a 32bit one.")
    (e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<IIIIHHH", data, 24)
    low, high = 1 << 32, 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 32 > len(data):
            raise UsageError("qemu: invalid kernel header", plain=True)
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIIIII", data, off)
        if p_type != 1 or p_memsz == 0:
            continue
        if p_paddr + p_memsz > limit or p_offset + p_filesz > len(data):
            raise UsageError("qemu: kernel does not fit in RAM", plain=True)
        ram[p_paddr:p_paddr + p_filesz] = data[p_offset:p_offset + p_filesz]
        ram[p_paddr + p_filesz:p_paddr + p_memsz] = bytes(p_memsz - p_filesz)
        low, high = min(low, p_paddr), max(high, p_paddr + p_memsz)
    if high == 0:
        raise UsageError("qemu: invalid kernel header", plain=True)
    return e_entry, low, high


def load_multiboot(machine: Any, data: bytes) -> Multiboot:
    """Load the -kernel file ``data`` into the machine's RAM; raise UsageError with
    qemu's message when it is not a kernel we can boot."""
    cfg = machine.config
    ram = machine.ram
    limit = machine.ram_below
    header = _find_header(data)
    if header is None:
        if len(data) > 0x206 and data[0x202:0x206] == b"HdrS":
            raise UsageError("-kernel: a Linux bzImage is not supported yet "
                             "(Multiboot kernels only)")
        if data[:4] == b"\x7fELF":
            raise UsageError("Error loading uncompressed kernel without PVH ELF Note")
        raise UsageError("qemu: invalid kernel header", plain=True)
    flags = struct.unpack_from("<I", data, header + 4)[0]
    if flags & MB_AOUT_KLUDGE:
        (header_addr, load_addr, load_end, bss_end, entry) = struct.unpack_from(
            "<IIIII", data, header + 12)
        file_off = header - (header_addr - load_addr)
        if file_off < 0:
            raise UsageError("qemu: invalid kernel header", plain=True)
        size = (load_end - load_addr) if load_end else len(data) - file_off
        mem_end = bss_end if bss_end else load_addr + size
        if mem_end > limit:
            raise UsageError("qemu: kernel does not fit in RAM", plain=True)
        ram[load_addr:load_addr + size] = data[file_off:file_off + size].ljust(size, b"\0")
        ram[load_addr + size:mem_end] = bytes(mem_end - load_addr - size)
        high = mem_end
    elif data[:4] == b"\x7fELF":
        entry, _low, high = _load_elf(data, ram, limit)
    else:
        raise UsageError("qemu: invalid kernel header", plain=True)

    # modules, then the information area (strings, mmap, GDT, the info block)
    at = _round_up(high, PAGE)
    modules: list[tuple[int, int, str]] = []
    if cfg.initrd:
        for spec in _split_modules(cfg.initrd):
            path = spec.split(" ", 1)[0]
            try:
                with open(path, "rb") as f:
                    blob = f.read()
            except OSError as exc:
                raise UsageError(f"qemu: could not load multiboot module '{path}': "
                                 f"{os.strerror(exc.errno or 5)}", plain=True) from None
            if at + len(blob) > limit:
                raise UsageError("qemu: multiboot modules do not fit in RAM", plain=True)
            ram[at:at + len(blob)] = blob
            modules.append((at, at + len(blob), spec))
            at = _round_up(at + len(blob), PAGE)
    area = bytearray()
    base = at

    def put(blob: bytes, align: int = 4) -> int:
        while len(area) % align:
            area.append(0)
        addr = base + len(area)
        area.extend(blob)
        return addr

    cmdline = cfg.kernel + (" " + cfg.append if cfg.append else "")
    cmdline_addr = put(cmdline.encode() + b"\0", 1)
    name_addr = put(b"qemu\0", 1)
    mods = b""
    for start, end, spec in modules:
        string_addr = put(spec.encode() + b"\0", 1)
        mods += struct.pack("<IIII", start, end, string_addr, 0)
    mods_addr = put(mods) if mods else 0
    mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in _e820(machine))
    mmap_addr = put(mmap)
    gdt_addr = put(struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF), 8)
    info = bytearray(INFO_SIZE)
    # as QEMU's option ROM computes them: INT 12h, and the e820 RAM run at 1 MiB
    mem_upper = (limit - 0x100000 - 0x20000) // 1024
    struct.pack_into("<IIIIIII", info, 0, INFO_FLAGS, 639, mem_upper, 0x8000FFFF,
                     cmdline_addr, len(modules), mods_addr)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, name_addr)
    info_addr = put(bytes(info), 8)
    if base + len(area) > limit:
        raise UsageError("qemu: kernel does not fit in RAM", plain=True)
    ram[base:base + len(area)] = area
    mb = Multiboot(entry, info_addr, gdt_addr)
    mb.enter(machine)
    return mb


def _split_modules(text: str) -> list[str]:
    """-initrd "a args,b": modules separated by commas (",," is a literal comma)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(text[i])
        i += 1
    parts.append("".join(cur))
    return [p for p in parts if p]
