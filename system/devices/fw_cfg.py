"""QEMU's firmware configuration device (docs/specs/fw_cfg.txt), x86 I/O port flavour.

* 0x510: 16-bit selector (writes of other widths are ignored); bit 15 picks the
  architecture-local table, bit 14 (the old write channel) is ignored; a byte read here
  returns a data byte and wider reads return 0, as QEMU 7.2's combined region does.
* 0x511: data, one byte per read from the selected item, zeroes past its end; writes are
  ignored (QEMU 2.4+).
* 0x514-0x51B: the DMA interface. Reads give the big-endian signature "QEMU CFG"; a
  guest writes the big-endian physical address of an ``FWCfgDmaAccess`` (control, length,
  address, all big-endian) as two dwords, the low one at 0x518 starting the transfer, or
  as one qword at 0x514. Control bits: error 0x01, read 0x02, skip 0x04, select 0x08
  (key in bits 16-31), write 0x10 (refused: no item here is writable). On completion the
  control field is written back (0, or 0x01 on error).

Items: signature "QEMU", ID (bit 0 traditional, bit 1 DMA), UUID, RAM size, number of
CPUs, maximum CPUs, NOGRAPHIC, boot menu, the IRQ0 override and NUMA tables of the x86
machine, and files in a directory (key 0x19: a big-endian count, then 64-byte entries
{size, select, reserved, name[56]} sorted by name, selectors 0x20 + their rank, 32 slots
as in QEMU). ``bootorder``, ``bios-geometry`` (both empty) and ``etc/boot-fail-wait``
(-1) exist from the start, as in QEMU; the machine adds ``etc/e820`` (see
:func:`e820_table`) and the kernel/initrd/cmdline/setup items for ``-kernel``.

Not modelled: writable items, select/write callbacks, the legacy file order of old
machine types, the MMIO flavour.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..bus import PortBus

PORT_SELECTOR = 0x510
PORT_DATA = 0x511
PORT_DMA = 0x514
DMA_SIGNATURE = b"QEMU CFG"

# keys
SIGNATURE = 0x00
ID = 0x01
UUID = 0x02
RAM_SIZE = 0x03
NOGRAPHIC = 0x04
NB_CPUS = 0x05
MACHINE_ID = 0x06
KERNEL_ADDR = 0x07
KERNEL_SIZE = 0x08
KERNEL_CMDLINE = 0x09
INITRD_ADDR = 0x0A
INITRD_SIZE = 0x0B
BOOT_DEVICE = 0x0C
NUMA = 0x0D
BOOT_MENU = 0x0E
MAX_CPUS = 0x0F
KERNEL_ENTRY = 0x10
KERNEL_DATA = 0x11
INITRD_DATA = 0x12
CMDLINE_ADDR = 0x13
CMDLINE_SIZE = 0x14
CMDLINE_DATA = 0x15
SETUP_ADDR = 0x16
SETUP_SIZE = 0x17
SETUP_DATA = 0x18
FILE_DIR = 0x19
FILE_FIRST = 0x20
FILE_SLOTS = 0x20
WRITE_CHANNEL = 0x4000
ARCH_LOCAL = 0x8000
ENTRY_MASK = 0x3FFF
INVALID = 0xFFFF
# x86 architecture-local keys
ACPI_TABLES = ARCH_LOCAL + 0
SMBIOS_ENTRIES = ARCH_LOCAL + 1
IRQ0_OVERRIDE = ARCH_LOCAL + 2
E820_TABLE = ARCH_LOCAL + 3
HPET = ARCH_LOCAL + 4

VERSION_TRADITIONAL = 0x01
VERSION_DMA = 0x02

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10

FILE_NAME_SIZE = 56
_DIR_ENTRY = struct.Struct(">IHH56s")     # size, select, reserved, name
_DMA_ACCESS = struct.Struct(">IIQ")       # control, length, address
_ZERO_CHUNK = 1 << 20

E820_RAM = 1
E820_RESERVED = 2
_E820_ENTRY = struct.Struct("<QQI")


class FwCfgError(Exception):
    """Misuse by the machine (duplicate file, too many files)."""


def e820_table(entries: list[tuple[int, int, int]]) -> bytes:
    """The ``etc/e820`` file: packed little-endian {u64 address, u64 length, u32 type}."""
    return b"".join(_E820_ENTRY.pack(addr, length, kind) for addr, length, kind in entries)


class FwCfg:
    """fw_cfg on ports 0x510-0x51B with DMA through ``dma_read``/``dma_write``."""

    def __init__(self, bus: PortBus, *, ram_size: int = 128 << 20, nb_cpus: int = 1,
                 max_cpus: int = 1, nographic: bool = False, boot_menu: bool = False,
                 uuid: bytes = bytes(16), reboot_timeout: int = -1,
                 dma_read: Callable[[int, int], bytes] | None = None,
                 dma_write: Callable[[int, bytes], None] | None = None):
        self._bus = bus
        self.dma_read = dma_read
        self.dma_write = dma_write
        self.entries: dict[int, bytes] = {}
        self.files: list[tuple[str, bytes]] = []     # sorted by name
        self.cur_entry = SIGNATURE
        self.cur_offset = 0
        self.dma_addr = 0
        # fw_cfg core
        self.add_bytes(SIGNATURE, b"QEMU")
        # without a way into guest memory there is no DMA interface (QEMU's dma_enabled
        # off): the ID says so and ports 0x514-0x51B stay unassigned
        self.dma_enabled = dma_read is not None and dma_write is not None
        self.add_i32(ID, VERSION_TRADITIONAL | (VERSION_DMA if self.dma_enabled else 0))
        self.add_bytes(UUID, bytes(uuid))
        self.add_i16(NOGRAPHIC, int(nographic))
        self.add_i16(BOOT_MENU, int(boot_menu))
        self.add_file("etc/boot-fail-wait", struct.pack("<i", reboot_timeout))
        self.add_file("bootorder", b"")
        self.add_file("bios-geometry", b"")
        # x86 machine
        self.add_i16(NB_CPUS, nb_cpus)
        self.add_i16(MAX_CPUS, max_cpus)
        self.add_i64(RAM_SIZE, ram_size)
        self.add_i32(IRQ0_OVERRIDE, 1)
        self.add_bytes(NUMA, bytes(8 * (1 + max_cpus)))
        bus.register(PORT_SELECTOR, 2, self._read_ctl, self._write_ctl, "fwcfg")
        if self.dma_enabled:
            bus.register(PORT_DMA, 8, self._read_dma, self._write_dma, "fwcfg.dma")

    # -- items ------------------------------------------------------------------------

    def add_bytes(self, key: int, data: bytes) -> None:
        """Set item ``key`` (a FW_CFG_* number; ARCH_LOCAL for the x86 table)."""
        self.entries[key & (ARCH_LOCAL | ENTRY_MASK)] = bytes(data)

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value & 0xFFFF))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value & 0xFFFFFFFF))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def add_string(self, key: int, text: str) -> None:
        """A NUL-terminated string item (FW_CFG_CMDLINE_DATA ...)."""
        self.add_bytes(key, text.encode() + b"\0")

    def add_file(self, name: str, data: bytes) -> int:
        """Add a named file; returns its selector. Names are unique, at most 55 bytes."""
        if len(name.encode()) >= FILE_NAME_SIZE:
            raise FwCfgError(f"fw_cfg file name too long: {name}")
        if any(existing == name for existing, _ in self.files):
            raise FwCfgError(f"duplicate fw_cfg file name: {name}")
        if len(self.files) >= FILE_SLOTS:
            raise FwCfgError("fw_cfg: no more file slots")
        self.files.append((name, bytes(data)))
        self.files.sort(key=lambda f: f[0].encode())
        self._rebuild_files()
        return self.file_key(name)

    def modify_file(self, name: str, data: bytes) -> int:
        """Replace a file's contents (adding it if missing); returns its selector."""
        for i, (existing, _) in enumerate(self.files):
            if existing == name:
                self.files[i] = (name, bytes(data))
                self._rebuild_files()
                return self.file_key(name)
        return self.add_file(name, data)

    def file_key(self, name: str) -> int:
        for i, (existing, _) in enumerate(self.files):
            if existing == name:
                return FILE_FIRST + i
        raise KeyError(name)

    def _rebuild_files(self) -> None:
        for key in [k for k in self.entries if FILE_FIRST <= k < FILE_FIRST + FILE_SLOTS]:
            del self.entries[key]
        directory = bytearray(struct.pack(">I", len(self.files)))
        for i, (name, data) in enumerate(self.files):
            self.entries[FILE_FIRST + i] = data
            directory += _DIR_ENTRY.pack(len(data), FILE_FIRST + i, 0, name.encode())
        directory += bytes(4 + 64 * FILE_SLOTS - len(directory))
        self.entries[FILE_DIR] = bytes(directory)

    def set_bootorder(self, paths: list[str]) -> None:
        """The ``bootorder`` file: one OpenFirmware device path per line, NUL-ended."""
        self.modify_file("bootorder", ("\n".join(paths) + "\0").encode() if paths else b"")

    # -- selection and data ---------------------------------------------------------------

    def select(self, key: int) -> None:
        self.cur_offset = 0
        if key & ENTRY_MASK >= FILE_FIRST + FILE_SLOTS:
            self.cur_entry = INVALID
        else:
            self.cur_entry = key & (ARCH_LOCAL | ENTRY_MASK)

    def _item(self) -> bytes | None:
        if self.cur_entry == INVALID:
            return None
        return self.entries.get(self.cur_entry)

    def read_byte(self) -> int:
        data = self._item()
        if data is None or self.cur_offset >= len(data):
            return 0
        value = data[self.cur_offset]
        self.cur_offset += 1
        return value

    def reset(self) -> None:
        self.select(SIGNATURE)
        self.dma_addr = 0

    def get_state(self) -> dict[str, Any]:
        """QEMU's vmstate "fw_cfg": the selection, the read offset, the DMA address (the
        items themselves are rebuilt by the destination's command line)."""
        return {"version": 1, "cur_entry": self.cur_entry, "cur_offset": self.cur_offset,
                "dma_addr": self.dma_addr}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported fw_cfg state version {state.get('version')}")
        self.cur_entry = state["cur_entry"]
        self.cur_offset = state["cur_offset"]
        self.dma_addr = state["dma_addr"]

    def _read_ctl(self, port: int, size: int) -> int:
        if port == PORT_SELECTOR:
            return self.read_byte() if size == 1 else 0
        value = self.read_byte()
        for i in range(1, size):      # wider reads continue into the next ports
            value |= self._bus.read(port + i, 1) << (8 * i)
        return value

    def _write_ctl(self, port: int, size: int, value: int) -> None:
        if port == PORT_SELECTOR and size == 2:
            self.select(value)

    # -- DMA ------------------------------------------------------------------------------

    def _read_dma(self, port: int, size: int) -> int:
        offset = port - PORT_DMA
        chunk = DMA_SIGNATURE[offset:offset + size].ljust(size, b"\xff")
        return int.from_bytes(chunk, "little")

    def _write_dma(self, port: int, size: int, value: int) -> None:
        offset = port - PORT_DMA
        # the registers are big-endian: the guest's bytes in memory order
        value = int.from_bytes(value.to_bytes(size, "little"), "big")
        if size == 4:
            if offset == 0:
                self.dma_addr = value << 32
            elif offset == 4:
                self.dma_addr |= value
                self.dma(self.dma_addr)
        elif size == 8 and offset == 0:
            self.dma(value)

    def dma(self, access_addr: int) -> None:
        """Run the FWCfgDmaAccess at guest physical ``access_addr``."""
        self.dma_addr = 0
        if self.dma_read is None or self.dma_write is None:
            return
        raw = self.dma_read(access_addr, _DMA_ACCESS.size)
        if len(raw) < _DMA_ACCESS.size:
            self.dma_write(access_addr, struct.pack(">I", DMA_CTL_ERROR))
            return
        control, length, address = _DMA_ACCESS.unpack(raw)
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        read = write = False
        if control & DMA_CTL_READ:
            read = True
        elif control & DMA_CTL_WRITE:
            write = True
        elif not control & DMA_CTL_SKIP:
            length = 0
        status = 0
        data = self._item()
        while length > 0 and not status & DMA_CTL_ERROR:
            if data is None or self.cur_offset >= len(data):
                n = length
                if read:                          # zero fill, in bounded pieces
                    for at in range(0, n, _ZERO_CHUNK):
                        piece = min(_ZERO_CHUNK, n - at)
                        self.dma_write((address + at) & 0xFFFFFFFFFFFFFFFF, bytes(piece))
                if write:
                    status |= DMA_CTL_ERROR
            else:
                n = min(length, len(data) - self.cur_offset)
                if read:
                    self.dma_write(address, data[self.cur_offset:self.cur_offset + n])
                if write:
                    status |= DMA_CTL_ERROR       # nothing here is writable
                self.cur_offset += n
            address += n
            length -= n
        self.dma_write(access_addr, struct.pack(">I", status))
