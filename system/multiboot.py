"""-kernel with a Multiboot (v1) kernel, as QEMU's hw/i386/multiboot.c loads it.

The header (magic 0x1BADB002 in the first 8 KiB, 4-byte aligned) says how to load:
with flag bit 16 (the "a.out kludge") the header's load/bss/entry addresses are used;
otherwise the file must be a 32-bit ELF whose PT_LOAD segments go to their physical
addresses. Modules come from -initrd (``file args,file2 args``), each page-aligned after
the kernel; the command line is the kernel path then -append, as QEMU passes it, and the
boot loader name is "qemu".

Boot path, as QEMU's: the image (kernel, module list, strings, modules) and the
Multiboot information block go into fw_cfg (KERNEL_ADDR/SIZE/DATA/ENTRY, INITRD_ADDR/
SIZE/DATA with the block for 0x9500); QEMU's own option ROM ``multiboot_dma.bin`` (from
the firmware directories, as a ``genroms/`` file first in ``bootorder``) is run by
SeaBIOS, copies them into place, fills mem_lower/mem_upper and the e820 map at 0x9000,
enters 32-bit protected mode and jumps to the kernel. So the kernel finds the machine as
SeaBIOS leaves it (PIC, PIT, PCI, ACPI PM block), exactly as under qemu-system-x86_64.

Without that ROM the CPU is put straight into the state it leaves (flat 32-bit protected
mode, paging off, IF=0, EAX=0x2BADB002, EBX=the block; the e820 map the machine knows),
but the chipset is then in its power-on state: no BIOS ran.

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


OPTION_ROM = "multiboot_dma.bin"
MBI_ADDR = 0x9500            # QEMU's ADDR_MBI (the e820 map goes at 0x9000)
E820_ADDR = 0x9000


def load_multiboot(machine: Any, data: bytes) -> Multiboot | None:
    """Prepare the -kernel file ``data``: through fw_cfg and QEMU's option ROM (None is
    returned: SeaBIOS boots it), or loaded directly when the ROM is not installed (the
    Multiboot to enter at every reset). UsageError with qemu's message when it is not a
    kernel we can boot."""
    rom_path = machine.config.find_file(OPTION_ROM)
    if rom_path is not None and machine.fw_cfg is not None:
        with open(rom_path, "rb") as f:
            rom = f.read()
        _to_fw_cfg(machine, data, rom)
        return None
    return _load_direct(machine, data)


def _kernel_image(machine: Any, data: bytes) -> tuple[int, int, bytes]:
    """(load address, entry, image bytes from the load address to the bss end)."""
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
        if header_addr < load_addr:
            raise UsageError("invalid mh_load_addr address", plain=True)
        file_off = header - (header_addr - load_addr)
        size = (load_end - load_addr) if load_end else len(data) - file_off
        mem = (bss_end - load_addr) if bss_end else size
        if file_off < 0 or size < 0 or mem < size or load_addr + mem > limit:
            raise UsageError("qemu: kernel does not fit in RAM", plain=True)
        image = data[file_off:file_off + size].ljust(mem, b"\0")
        return load_addr, entry, image
    if data[:4] != b"\x7fELF":
        raise UsageError("qemu: invalid kernel header", plain=True)
    segments = _elf_segments(data, limit)
    low = min(p for p, _, _ in segments)
    high = max(p + m for p, m, _ in segments)
    image = bytearray(high - low)
    for paddr, _memsz, blob in segments:
        image[paddr - low:paddr - low + len(blob)] = blob
    entry = struct.unpack_from("<I", data, 24)[0]
    return low, entry, bytes(image)


def _elf_segments(data: bytes, limit: int) -> list[tuple[int, int, bytes]]:
    if len(data) < 52 or data[4] != 1:
        raise UsageError("Cannot load x86-64 image, give a 32bit one.", plain=True)
    e_phoff = struct.unpack_from("<I", data, 28)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    out = []
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 32 > len(data):
            raise UsageError("Error while loading elf kernel", plain=True)
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIIIII", data, off)
        if p_type != 1 or p_memsz == 0:
            continue
        if p_paddr + p_memsz > limit or p_offset + p_filesz > len(data):
            raise UsageError("qemu: kernel does not fit in RAM", plain=True)
        out.append((p_paddr, p_memsz, data[p_offset:p_offset + p_filesz]))
    if not out:
        raise UsageError("Error while loading elf kernel", plain=True)
    return out


def _to_fw_cfg(machine: Any, data: bytes, rom: bytes) -> None:
    """QEMU's load_multiboot: the buffer and the information block into fw_cfg."""
    from .devices import fw_cfg as fc

    cfg = machine.config
    load_addr, entry, image = _kernel_image(machine, data)
    modules = _split_modules(cfg.initrd) if cfg.initrd else []
    size = _round_up(len(image), PAGE)
    offset_mbinfo = size
    cmdline = cfg.kernel + " " + cfg.append
    cmdline_len = len(cfg.kernel) + 1 + len(cfg.append) + 1
    if cfg.initrd:
        cmdline_len += len(cfg.initrd) + 1
    size += cmdline_len + 16 * len(modules) + len(b"qemu") + 1
    size = _round_up(size, PAGE)
    buf = bytearray(image.ljust(size, b"\0"))
    offset_cmdlines = offset_mbinfo + 16 * len(modules)
    offset_loader = offset_cmdlines + cmdline_len
    at_cmdline = offset_cmdlines

    def add_cmdline(text: str) -> int:
        nonlocal at_cmdline
        raw = text.encode() + b"\0"
        buf[at_cmdline:at_cmdline + len(raw)] = raw
        addr = load_addr + at_cmdline
        at_cmdline += len(raw)
        return addr

    for n, spec in enumerate(modules):
        string_addr = add_cmdline(spec)
        path = spec.split(" ", 1)[0]
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            raise UsageError(f"Failed to open file '{path}'", plain=True) from None
        start = len(buf)
        buf += blob.ljust(_round_up(len(blob), PAGE), b"\0")
        struct.pack_into("<III", buf, offset_mbinfo + 16 * n, load_addr + start,
                         load_addr + start + len(blob), string_addr)
    if load_addr + len(buf) > machine.ram_below:
        raise UsageError("qemu: kernel does not fit in RAM", plain=True)
    info = bytearray(INFO_SIZE)
    struct.pack_into("<I", info, 16, add_cmdline(cmdline))
    buf[offset_loader:offset_loader + 5] = b"qemu\0"
    struct.pack_into("<I", info, 64, load_addr + offset_loader)
    struct.pack_into("<II", info, 20, len(modules), load_addr + offset_mbinfo)
    struct.pack_into("<I", info, 0, INFO_FLAGS)
    struct.pack_into("<I", info, 12, 0x8000FFFF)
    struct.pack_into("<I", info, 48, E820_ADDR)
    f = machine.fw_cfg
    f.add_i32(fc.KERNEL_ENTRY, entry)
    f.add_i32(fc.KERNEL_ADDR, load_addr)
    f.add_i32(fc.KERNEL_SIZE, len(buf))
    f.add_bytes(fc.KERNEL_DATA, bytes(buf))
    f.add_i32(fc.INITRD_ADDR, MBI_ADDR)
    f.add_i32(fc.INITRD_SIZE, len(info))
    f.add_bytes(fc.INITRD_DATA, bytes(info))
    f.add_file("genroms/" + OPTION_ROM, rom)
    f.set_bootorder([f"/rom@genroms/{OPTION_ROM}"]
                    + (["HALT"] if machine.config.boot_strict else []))


def _load_direct(machine: Any, data: bytes) -> Multiboot:
    """No option ROM: load into RAM and enter the kernel at reset."""
    cfg = machine.config
    ram = machine.ram
    limit = machine.ram_below
    load_addr, entry, image = _kernel_image(machine, data)
    ram[load_addr:load_addr + len(image)] = image
    high = load_addr + len(image)

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
