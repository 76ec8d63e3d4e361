"""fw_cfg against qemu-system-x86_64 -M pc (paused, through qtest): the selector and data
ports with QEMU's access-width quirks, the DMA signature, the items SeaBIOS reads, the
files both machines have (bootorder, bios-geometry, etc/boot-fail-wait, etc/e820) and DMA
transfers (select+read, reads past the end, skip, a refused write, an invalid key)
written into guest RAM exactly as QEMU writes them."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from pyqemu.system.bus import PortBus
from pyqemu.system.devices import fw_cfg
from pyqemu.system.devices.fw_cfg import E820_RAM, E820_RESERVED, FwCfg, FwCfgError, e820_table

from tests.system.pc_ports import QEMU_ARGS, run
from tests.system.qtest_peer import QemuQtest

RAM = 128 << 20
# QEMU 7.2's pc with the (AMD) qemu64 CPU reserves the HyperTransport hole first
E820 = [(0xFD00000000, 0x300000000, E820_RESERVED), (0, RAM, E820_RAM)]
ACCESS = 0x1000          # FWCfgDmaAccess in guest RAM
TARGET = 0x2000          # DMA destination


class OurFwCfg:
    """fw_cfg on a PortBus with a bytearray RAM, answering qtest command lines."""

    def __init__(self) -> None:
        self.bus = PortBus()
        self.ram = bytearray(1 << 20)
        self.writes: list[tuple[int, int]] = []
        self.fw = FwCfg(self.bus, ram_size=RAM, dma_read=self.dma_read, dma_write=self.dma_write)
        self.fw.add_file("etc/e820", e820_table(E820))

    def dma_read(self, addr: int, size: int) -> bytes:
        return bytes(self.ram[addr:addr + size])

    def dma_write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, len(data)))
        if addr < len(self.ram):                 # what lies beyond RAM is dropped
            n = min(len(data), len(self.ram) - addr)
            self.ram[addr:addr + n] = data[:n]

    def cmd(self, line: str) -> str:
        words = line.split()
        sizes = {"b": 1, "w": 2, "l": 4}
        if words[0].startswith("in"):
            return f"0x{self.bus.read(int(words[1], 0), sizes[words[0][2]]):04x}"
        if words[0].startswith("out"):
            self.bus.write(int(words[1], 0), sizes[words[0][3]], int(words[2], 0))
            return ""
        addr, size = int(words[1], 0), int(words[2], 0)
        if words[0] == "write":
            self.ram[addr:addr + size] = bytes.fromhex(words[3][2:]).ljust(size, b"\0")
            return ""
        return "0x" + self.ram[addr:addr + size].hex()


def _item(target: Any, key: int, size: int) -> bytes:
    target.cmd(f"outw 0x510 {key:#x}")
    return bytes(int(target.cmd("inb 0x511"), 16) for _ in range(size))


def _directory(target: Any) -> dict[str, tuple[int, int]]:
    count = struct.unpack(">I", _item(target, fw_cfg.FILE_DIR, 4))[0]
    raw = _item(target, fw_cfg.FILE_DIR, 4 + 64 * count)
    names = {}
    for i in range(count):
        size, select, _, name = struct.unpack_from(">IHH56s", raw, 4 + 64 * i)
        names[name.rstrip(b"\0").decode()] = (select, size)
    return names


def _dma(control: int, length: int, address: int) -> list[str]:
    access = struct.pack(">IIQ", control, length, address)
    hi = int.from_bytes((0).to_bytes(4, "big"), "little")
    lo = int.from_bytes(ACCESS.to_bytes(4, "big"), "little")
    return [f"write {TARGET:#x} 0x40 0x{'ee' * 0x40}",
            f"write {ACCESS:#x} {len(access):#x} 0x{access.hex()}",
            f"outl 0x514 {hi:#x}", f"outl 0x518 {lo:#x}",
            f"read {ACCESS:#x} 0x10", f"read {TARGET:#x} 0x40"]


@pytest.fixture
def qemu(tmp_path: Path) -> Any:
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        yield q


def test_ports_and_items_match_qemu(qemu: QemuQtest) -> None:
    ours = OurFwCfg()
    script = ["inb 0x511", "inb 0x511", "inb 0x510", "inw 0x510", "inw 0x511", "inl 0x510",
              "inb 0x511", "outb 0x510 1", "inb 0x511", "outw 0x510 0x4000", "inb 0x511",
              "outw 0x510 0x1", "inb 0x511", "outb 0x511 5", "inb 0x511", "inb 0x511",
              "inb 0x511", "inb 0x511", "inb 0x512", "inw 0x514", "inb 0x517", "inl 0x518",
              "inb 0x51b", "inw 0x516", "outw 0x510 0x7fff", "inb 0x511",
              "outw 0x510 0x3f", "inb 0x511"]
    assert run(qemu, script) == run(ours, script)
    for key, size in ((fw_cfg.SIGNATURE, 4), (fw_cfg.ID, 4), (fw_cfg.UUID, 16),
                      (fw_cfg.RAM_SIZE, 8), (fw_cfg.NOGRAPHIC, 2), (fw_cfg.NB_CPUS, 2),
                      (fw_cfg.MAX_CPUS, 2), (fw_cfg.BOOT_MENU, 2), (fw_cfg.MACHINE_ID, 4),
                      (fw_cfg.IRQ0_OVERRIDE, 4), (fw_cfg.NUMA, 24), (fw_cfg.KERNEL_SIZE, 4),
                      (fw_cfg.CMDLINE_SIZE, 4)):
        assert _item(qemu, key, size) == _item(ours, key, size), hex(key)
    assert _item(ours, fw_cfg.SIGNATURE, 4) == b"QEMU"
    assert _item(ours, fw_cfg.ID, 4) == b"\x03\0\0\0"


def test_files_match_qemu(qemu: QemuQtest) -> None:
    ours = OurFwCfg()
    theirs_dir, ours_dir = _directory(qemu), _directory(ours)
    assert sorted(ours_dir) == ["bios-geometry", "bootorder", "etc/boot-fail-wait", "etc/e820"]
    # the directory is sorted by name, selectors follow the rank from 0x20
    assert [key for key, _ in ours_dir.values()] == list(range(0x20, 0x24))
    assert list(theirs_dir) == sorted(theirs_dir)
    for name, (key, size) in ours_dir.items():
        assert theirs_dir[name][1] == size, name
        assert _item(qemu, theirs_dir[name][0], size) == _item(ours, key, size), name


def test_dma_matches_qemu(qemu: QemuQtest) -> None:
    ours = OurFwCfg()
    keys = {"qemu": _directory(qemu), "ours": _directory(ours)}
    scripts = {}
    for who, names in keys.items():
        wait_key = names["etc/boot-fail-wait"][0]
        e820_key = names["etc/e820"][0]
        s = _dma(fw_cfg.SIGNATURE << 16 | 0x08 | 0x02, 4, TARGET)          # select + read
        s += _dma(fw_cfg.RAM_SIZE << 16 | 0x08 | 0x02, 0x10, TARGET)       # past the end
        s += _dma(e820_key << 16 | 0x08 | 0x04, 8, TARGET)                 # skip 8
        s += _dma(0x02, 0x20, TARGET)                                      # read on
        s += _dma(wait_key << 16 | 0x08 | 0x10, 4, TARGET)                 # write: error
        s += _dma(0x3F << 16 | 0x08 | 0x02, 8, TARGET)                     # invalid key
        s += _dma(fw_cfg.ID << 16 | 0x08, 4, TARGET)                       # select only
        s += ["inb 0x511", "inb 0x511"]
        s += _dma(fw_cfg.UUID << 16 | 0x08 | 0x02, 0, TARGET)              # zero length
        scripts[who] = s
    # the keys of the files differ (QEMU has more files): compare the replies only
    replies = {who: [r.split(" -> ")[1] for r in run(target, scripts[who])]
               for who, target in (("qemu", qemu), ("ours", ours))}
    assert replies["qemu"] == replies["ours"]
    # what the first transfer produced: "QEMU" and a zero control word
    assert ours.ram[ACCESS:ACCESS + 4] == b"\0\0\0\0"


def test_qword_dma_write_and_file_rules() -> None:
    ours = OurFwCfg()
    ours.ram[ACCESS:ACCESS + 16] = struct.pack(">IIQ", fw_cfg.SIGNATURE << 16 | 0x0A, 4,
                                               TARGET)
    ours.bus.write(0x514, 4, 0)                      # a split write needs both halves
    assert ours.ram[TARGET:TARGET + 4] == bytes(4)
    ours.fw.dma(ACCESS)
    assert ours.ram[TARGET:TARGET + 4] == b"QEMU"
    with pytest.raises(FwCfgError, match="duplicate fw_cfg file name: bootorder"):
        ours.fw.add_file("bootorder", b"x")
    key = ours.fw.add_file("etc/a", b"123")          # sorts third: later keys move up
    assert key == 0x22 and ours.fw.file_key("etc/e820") == 0x24
    ours.fw.set_bootorder(["/pci@i0cf8/ide@1,1/drive@0/disk@0"])
    assert _item(ours, ours.fw.file_key("bootorder"), 34) == \
        b"/pci@i0cf8/ide@1,1/drive@0/disk@0\0"
    # without DMA functions: no DMA interface announced, its ports unassigned
    bus = PortBus()
    plain = FwCfg(bus)
    assert plain.entries[fw_cfg.ID] == b"\x01\0\0\0"
    assert bus.read(0x514, 4) == 0xFFFFFFFF
    assert plain.entries[fw_cfg.RAM_SIZE] == struct.pack("<Q", 128 << 20)


def test_state_round_trip() -> None:
    """The selection and read offset survive get_state/set_state into a fresh device."""
    src, dst = OurFwCfg(), OurFwCfg()
    src.cmd(f"outw 0x510 {src.fw.file_key('etc/e820'):#x}")
    first = [src.cmd("inb 0x511") for _ in range(7)]
    dst.fw.set_state(src.fw.get_state())
    rest = [[t.cmd("inb 0x511") for _ in range(40)] for t in (src, dst)]
    assert rest[0] == rest[1]
    data = bytes(int(x, 16) for x in first + rest[1])
    assert data[:40] == e820_table(E820)


def test_dma_past_the_end_is_zero_filled_in_pieces() -> None:
    """A read of 64 MiB past an item's end fills zeroes without one huge buffer."""
    ours = OurFwCfg()
    ours.ram[TARGET:TARGET + 16] = b"\xee" * 16
    ours.ram[ACCESS:ACCESS + 16] = struct.pack(">IIQ", 0x3F << 16 | 0x0A, 64 << 20, TARGET)
    ours.fw.dma(ACCESS)
    assert ours.ram[ACCESS:ACCESS + 4] == bytes(4)                  # done, no error
    assert ours.ram[TARGET:TARGET + 16] == bytes(16)
    sizes = [n for addr, n in ours.writes if addr != ACCESS]
    assert sum(sizes) == 64 << 20 and max(sizes) <= 1 << 20
