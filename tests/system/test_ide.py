"""ATA disks and the ATAPI CD-ROM on the PIIX3 IDE, compared with qemu-system-x86_64.

The same port script runs on the paused QEMU (through qtest, its IRQ inputs of the
IOAPIC intercepted) and on our controller: every value read back (registers, IDENTIFY
words, sector data, BMDMA registers, guest RAM after DMA) and the levels of IRQ 14/15
after every step must be equal. QEMU completes disk I/O asynchronously, so after a
command (or a sector boundary) the script waits until BSY is clear in the alternate
status register, which only QEMU needs. Disk images are made by the real qemu-img;
after writes, ``qemu-img compare`` checks our image against QEMU's and ``qemu-img
check`` checks the qcow2 metadata.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pyqemu.common.block import open_image
from pyqemu.system.devices.ide import IdeError

from tests.system.conftest import PYQEMU_SYSTEM, VM_TIMEOUT, emulator_path, fnv1a32
from tests.system.pc_ports import QEMU_ARGS, OurPc
from tests.system.qtest_peer import QemuQtest

DISK_SIZE = 64 << 20
BM = 0xC000                     # where the scripts put the BMDMA BAR
PRD = 0x10000                   # PRD table in guest RAM
BUF = 0x20000                   # DMA buffers in guest RAM


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True,
                          text=True).stdout


def _qemu_io(image: Path, fmt: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(image)], check=True,
                   capture_output=True)


def _make_disk(tmp_path: Path, fmt: str) -> Path:
    """An image with recognisable data: a pattern per MiB, some zeroes, an MBR-less start."""
    image = tmp_path / f"disk.{fmt}"
    _qemu_img("create", "-f", fmt, str(image), str(DISK_SIZE))
    for i, pattern in enumerate((0x11, 0x5A, 0xC3)):
        _qemu_io(image, fmt, f"write -P {pattern:#x} {i << 20} 1M")
    _qemu_io(image, fmt, f"write -P 0x77 {(DISK_SIZE - 65536)} 64k")
    return image


def _make_cd(tmp_path: Path) -> Path:
    iso = tmp_path / "cd.iso"
    data = bytearray()
    for lba in range(40):                       # 40 sectors of 2048, each tagged
        data += (f"CD-SECTOR-{lba:04d}".encode() * 200)[:2048]
    iso.write_bytes(bytes(data))
    return iso


class Both:
    """Run one script on QEMU and on ours, collecting (command, reply, irq14, irq15)."""

    def __init__(self, q: QemuQtest, ours: OurPc):
        self.q = q
        self.ours = ours
        q.cmd("irq_intercept_in ioapic")
        self.log_q: list[tuple[str, str, bool, bool]] = []
        self.log_o: list[tuple[str, str, bool, bool]] = []

    def run(self, script: list[str]) -> None:
        """IRQ levels are compared after each wait and each read: right after a write
        QEMU's asynchronous completion may not have raised it yet."""
        pic = self.ours.pic
        for line in script:
            if line.startswith(("wait", "dwait")):
                # wait: BSY clear; dwait (DMA running): BSY and DRQ clear
                port = 0x3F6 if line.endswith("0") else 0x376
                busy = 0x88 if line.startswith("dwait") else 0x80
                for _ in range(10000):
                    if not int(self.q.cmd(f"inb {port:#x}"), 16) & busy:
                        break
                else:
                    raise AssertionError(f"QEMU's drive stayed busy after {self.log_q[-6:]}")
                if busy == 0x88:
                    # a plain wait may end while QEMU's DMA still runs (BSY clear, DRQ
                    # set): IRQ levels are compared after DMA waits and at reads only
                    self.log_q.append((line, "", self.q.irq_levels.get(14, False),
                                       self.q.irq_levels.get(15, False)))
                    self.log_o.append((line, "", pic.irq(14).level, pic.irq(15).level))
                continue
            reply_q = self.q.cmd(line)
            reply_o = self.ours.cmd(line)
            if line.startswith(("inw 0x1f0", "inl 0x1f0", "inw 0x170", "inl 0x170")):
                # the read ending a sector starts QEMU's next (asynchronous) sector read
                self.log_q.append((line, reply_q, None, None))
                self.log_o.append((line, reply_o, None, None))
            elif line.startswith(("in", "read")):
                self.log_q.append((line, reply_q, self.q.irq_levels.get(14, False),
                                   self.q.irq_levels.get(15, False)))
                self.log_o.append((line, reply_o, pic.irq(14).level, pic.irq(15).level))

    def assert_equal(self) -> None:
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(self.log_q, self.log_o, strict=True))
                 if a != b]
        if diffs:
            first = diffs[0][0]
            context = self.log_q[max(0, first - 12):first]
            raise AssertionError(f"{len(diffs)} differences; first {diffs[:12]} after "
                                 f"{[c[:2] for c in context]}")


def regs(ch: int = 0) -> list[str]:
    base = 0x1F0 if ch == 0 else 0x170
    return [f"inb {base + r:#x}" for r in range(1, 7)] + [f"inb {base + 0x206:#x}",
                                                         f"inb {base + 7:#x}"]


def command(ch: int, cmd: int, *, count: int = 0, lba: int = 0, dev: int = 0xE0,
            feature: int = 0, lba48: bool = False) -> list[str]:
    base = 0x1F0 if ch == 0 else 0x170
    lines = [f"outb {base + 6:#x} {dev:#x}"]
    if lba48:
        lines += [f"outb {base + 1:#x} 0", f"outb {base + 2:#x} {(count >> 8) & 0xFF:#x}",
                  f"outb {base + 3:#x} {(lba >> 24) & 0xFF:#x}",
                  f"outb {base + 4:#x} {(lba >> 32) & 0xFF:#x}",
                  f"outb {base + 5:#x} {(lba >> 40) & 0xFF:#x}"]
    lines += [f"outb {base + 1:#x} {feature:#x}", f"outb {base + 2:#x} {count & 0xFF:#x}",
              f"outb {base + 3:#x} {lba & 0xFF:#x}", f"outb {base + 4:#x} {(lba >> 8) & 0xFF:#x}",
              f"outb {base + 5:#x} {(lba >> 16) & 0xFF:#x}",
              f"outb {base + 7:#x} {cmd:#x}", f"wait{ch}"]
    return lines


def read_words(ch: int, n: int, width: str = "w") -> list[str]:
    base = 0x1F0 if ch == 0 else 0x170
    return [f"in{width} {base:#x}"] * n + [f"wait{ch}"]


def write_words(ch: int, n: int, seed: int) -> list[str]:
    base = 0x1F0 if ch == 0 else 0x170
    return [f"outw {base:#x} {(seed * 7919 + i * 31) & 0xFFFF:#x}" for i in range(n)] \
        + [f"wait{ch}"]


def bmdma_setup() -> list[str]:
    return ["outl 0xcf8 0x80000920", f"outl 0xcfc {BM | 1:#x}",
            "outl 0xcf8 0x80000904", "outw 0xcfc 0x0005"]


def prd(entries: list[tuple[int, int, bool]]) -> list[str]:
    raw = b"".join(addr.to_bytes(4, "little") + (size & 0xFFFF).to_bytes(2, "little")
                   + (0x8000 if last else 0).to_bytes(2, "little")
                   for addr, size, last in entries)
    return [f"write {PRD:#x} {len(raw):#x} 0x{raw.hex()}"]


@pytest.fixture
def disks(tmp_path: Path) -> dict[str, Path]:
    return {"raw": _make_disk(tmp_path, "raw"), "qcow2": _make_disk(tmp_path, "qcow2"),
            "cd": _make_cd(tmp_path)}


def _setup(tmp_path: Path, disk: Path, fmt: str, cd: Path | None = None
           ) -> tuple[QemuQtest, OurPc, Path]:
    """QEMU on ``disk``, ours on a copy (compared with qemu-img afterwards)."""
    ours_disk = disk.with_name("ours-" + disk.name)
    shutil.copyfile(disk, ours_disk)
    args = [*QEMU_ARGS, "-drive", f"file={disk},format={fmt},if=ide,index=0"]
    ours = OurPc()
    ours.ide.attach(0, 0, open_image(str(ours_disk), fmt, read_only=False))
    if cd is not None:
        args += ["-drive", f"file={cd},format=raw,if=ide,index=2,media=cdrom"]
        ours.ide.attach(1, 0, open_image(str(cd), "raw", read_only=True), cdrom=True)
    q = QemuQtest(tmp_path, *args)
    return q, ours, ours_disk


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_pio_commands_match_qemu(tmp_path: Path, disks: dict[str, Path], fmt: str) -> None:
    q, ours, ours_disk = _setup(tmp_path, disks[fmt], fmt)
    try:
        both = Both(q, ours)
        s: list[str] = regs(0) + regs(1)                           # signatures
        s += command(0, 0xEC) + regs() + read_words(0, 256) + regs()   # IDENTIFY
        s += command(0, 0xEC, dev=0xF0) + regs()                   # absent slave
        s += command(0, 0x20, count=3, lba=2047) + regs()           # READ SECTORS LBA28
        for _ in range(3):
            s += read_words(0, 256) + regs()
        s += command(0, 0x20, count=1, lba=0x0102, dev=0xA3) + read_words(0, 256) + regs()
        s += command(0, 0x24, count=2, lba=(1 << 20) // 512 - 1, lba48=True)  # READ EXT
        s += read_words(0, 128, "l") + regs() + read_words(0, 256) + regs()
        s += command(0, 0xC6, count=4) + regs()                    # SET MULTIPLE 4
        s += command(0, 0xC4, count=6, lba=4090) + regs()            # READ MULTIPLE
        s += read_words(0, 1024) + regs() + read_words(0, 512) + regs()
        s += command(0, 0xC6, count=3) + regs()                    # not a power of 2
        s += command(0, 0x30, count=2, lba=100) + regs()           # WRITE SECTORS
        s += write_words(0, 256, 1) + regs() + write_words(0, 256, 2) + regs()
        s += command(0, 0x34, count=1, lba=(3 << 20) // 512, lba48=True)   # WRITE EXT
        s += write_words(0, 256, 3) + regs()
        s += command(0, 0xC5, count=5, lba=300) + regs()           # WRITE MULTIPLE
        s += write_words(0, 1024, 4) + regs() + write_words(0, 256, 5) + regs()
        s += command(0, 0xE7) + regs() + command(0, 0xEA) + regs()   # FLUSH (EXT)
        s += command(0, 0x20, count=2, lba=100) + read_words(0, 256) + read_words(0, 256)
        s += command(0, 0x20, count=1, lba=DISK_SIZE // 512) + regs()   # out of range
        s += command(0, 0x91, count=63, dev=0xAF) + regs()         # INIT DEVICE PARAMS
        s += command(0, 0x10) + regs() + command(0, 0x70) + regs()   # RECALIBRATE, SEEK
        s += command(0, 0x40, count=8, lba=5) + regs()              # READ VERIFY
        s += command(0, 0xF8) + regs() + command(0, 0x27, lba48=True) + regs()
        s += command(0, 0xE5) + regs() + command(0, 0xE0) + regs()   # power mode
        s += command(0, 0x90) + regs()                             # DIAGNOSTIC
        s += command(0, 0xEF, feature=0x03, count=0x22) + regs()   # MDMA2
        s += command(0, 0xEF, feature=0x82) + regs()               # write cache off
        s += command(0, 0xEF, feature=0x77) + regs()               # unknown feature
        s += command(0, 0xEC) + read_words(0, 256)                 # words 62/63/85/88
        s += command(0, 0xB0, feature=0xDA, lba=0xC24F00) + regs()  # SMART STATUS
        s += command(0, 0xA0) + regs() + command(0, 0xA1) + regs()  # ATAPI cmds: abort
        s += command(0, 0x08) + regs() + command(0, 0xFF) + regs()  # not permitted
        s += ["outb 0x3f6 0x02"] + command(0, 0xEC) + regs() + read_words(0, 256)  # nIEN
        s += ["outb 0x3f6 0x00"] + command(0, 0x20, count=1, lba=7) + regs()
        s += ["inw 0x1f0", "outb 0x3f6 0x04", "wait0", "outb 0x3f6 0x00", "wait0"]  # SRST
        s += regs() + ["inw 0x1f0"] + regs(1)
        s += ["outb 0x1f6 0xb0", "inb 0x1f7", "inb 0x3f6", "outb 0x1f6 0xa0"]
        both.run(s)
        both.assert_equal()
    finally:
        q.close()
        ours.close()
    # the writes reached both images alike, and our qcow2 is consistent
    _qemu_img("compare", "-f", fmt, "-F", fmt, str(disks[fmt]), str(ours_disk))
    if fmt == "qcow2":
        _qemu_img("check", str(ours_disk))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_dma_matches_qemu(tmp_path: Path, disks: dict[str, Path], fmt: str) -> None:
    q, ours, ours_disk = _setup(tmp_path, disks[fmt], fmt)
    try:
        both = Both(q, ours)
        s = bmdma_setup() + [f"inb {BM + 2:#x}", f"outb {BM + 2:#x} 0x60"]
        # READ DMA of 8 sectors through three PRDs (a 0 count means 64 KiB)
        s += prd([(BUF, 1024, False), (BUF + 0x1000, 2048, False), (BUF + 0x3000, 1024, True)])
        s += [f"outl {BM + 4:#x} {PRD:#x}", f"inl {BM + 4:#x}"]
        s += command(0, 0xC8, count=8, lba=2040) + regs() + [f"inb {BM + 2:#x}"]
        s += [f"outb {BM:#x} 0x09", "dwait0", f"inb {BM + 2:#x}"] + regs()
        s += [f"read {BUF:#x} 0x4000", f"outb {BM:#x} 0x08", f"outb {BM + 2:#x} 0x64",
              f"inb {BM + 2:#x}"]
        # engine started first, command second; PRDs longer than the transfer
        s += prd([(BUF + 0x8000, 0, True)])
        s += [f"outb {BM:#x} 0x09", f"inb {BM + 2:#x}"]
        s += command(0, 0x25, count=3, lba=(2 << 20) // 512 - 1, lba48=True) + ["dwait0"]
        s += regs()
        s += [f"inb {BM + 2:#x}", f"read {BUF + 0x8000:#x} 0x800", f"outb {BM:#x} 0x08",
              f"outb {BM + 2:#x} 0x64", f"inb {BM + 2:#x}"]
        # WRITE DMA from RAM
        s += [f"write {BUF + 0x10000:#x} 0x600 0x{bytes(range(256)).hex() * 6}"]
        s += prd([(BUF + 0x10000, 0x600, True)])
        s += command(0, 0xCA, count=3, lba=777) + [f"outb {BM:#x} 0x01", "dwait0",
                                                    f"inb {BM + 2:#x}"] + regs()
        s += [f"outb {BM:#x} 0x00", f"outb {BM + 2:#x} 0x64"]
        s += command(0, 0x35, count=1, lba=(3 << 20) // 512 + 5, lba48=True)
        s += [f"outb {BM:#x} 0x01", "dwait0", f"inb {BM + 2:#x}", f"outb {BM:#x} 0x00"] + regs()
        # PRDs too short: no data moved, no interrupt, Active cleared
        s += [f"outb {BM + 2:#x} 0x64"] + prd([(BUF + 0x20000, 512, True)])
        s += command(0, 0xC8, count=4, lba=1) + [f"outb {BM:#x} 0x09", "dwait0",
                                                  f"inb {BM + 2:#x}"] + regs()
        s += [f"read {BUF + 0x20000:#x} 0x200", f"outb {BM:#x} 0x08"]
        # the PRD table address moved above the running engine's position: no PRDs
        s += [f"outb {BM + 2:#x} 0x64"] + prd([(BUF, 1024, True)])
        s += [f"outb {BM:#x} 0x09", f"outl {BM + 4:#x} {PRD + 0x100:#x}"]
        s += command(0, 0xC8, count=2, lba=5) + ["dwait0", f"inb {BM + 2:#x}"] + regs()
        s += [f"outb {BM:#x} 0x08", f"outl {BM + 4:#x} {PRD:#x}"]
        # out-of-range DMA
        s += [f"outb {BM + 2:#x} 0x64"] + prd([(BUF, 1024, True)])
        s += command(0, 0xC8, count=2, lba=DISK_SIZE // 512 - 1) + [f"outb {BM:#x} 0x09",
                                                                     "dwait0",
                                                                     f"inb {BM + 2:#x}"]
        s += regs() + [f"outb {BM:#x} 0x08"]
        both.run(s)
        both.assert_equal()
    finally:
        q.close()
        ours.close()
    _qemu_img("compare", "-f", fmt, "-F", fmt, str(disks[fmt]), str(ours_disk))
    if fmt == "qcow2":
        _qemu_img("check", str(ours_disk))


def _packet(cdb: bytes, bcl: int = 0x800, dma: bool = False) -> list[str]:
    cdb = cdb.ljust(12, b"\0")
    lines = ["outb 0x176 0xa0", f"outb 0x171 {int(dma)}", f"outb 0x174 {bcl & 0xFF:#x}",
             f"outb 0x175 {bcl >> 8:#x}", "outb 0x177 0xa0", "wait1", "inb 0x172", "inb 0x177"]
    lines += [f"outw 0x170 {cdb[i] | cdb[i + 1] << 8:#x}" for i in range(0, 12, 2)]
    return lines if dma else lines + ["wait1"]     # DMA waits (BSY) for the engine


def _reply(chunks: int, words: int) -> list[str]:
    lines = []
    for _ in range(chunks):
        lines += ["inb 0x172", "inb 0x174", "inb 0x175", "inb 0x376"]
        lines += ["inw 0x170"] * words + ["wait1"]
    return lines + regs(1)


def test_atapi_matches_qemu(tmp_path: Path, disks: dict[str, Path]) -> None:
    q, ours, _ = _setup(tmp_path, disks["raw"], "raw", cd=disks["cd"])
    try:
        both = Both(q, ours)
        s = regs(1) + command(1, 0xEC, dev=0xA0) + regs(1)        # IDENTIFY: abort + sig
        s += command(1, 0xA1, dev=0xA0) + regs(1) + read_words(1, 256) + regs(1)
        s += command(1, 0x20, count=1, dev=0xA0) + regs(1)          # READ on a CD
        s += command(1, 0x30, count=1, dev=0xA0) + regs(1)          # WRITE: refused
        s += command(1, 0xCA, count=1, dev=0xA0) + regs(1)          # WRITE DMA: refused
        s += _packet(b"\x00") + regs(1)                             # TEST UNIT READY
        s += _packet(b"\x12\x00\x00\x00\x24") + _reply(1, 18)       # INQUIRY
        s += _packet(b"\x12\x01\x00\x00\xff") + _reply(1, 3)        # VPD page list
        s += _packet(b"\x12\x01\x83\x00\xff") + _reply(1, 48)       # VPD 0x83
        s += _packet(b"\x25") + _reply(1, 4)                        # READ CAPACITY
        s += _packet(b"\x28\x00\x00\x00\x00\x05\x00\x00\x02") + _reply(2, 1024)  # READ(10)
        s += _packet(b"\x28\x00\x00\x00\x00\x07\x00\x00\x01", bcl=0x200) + _reply(4, 256)
        s += _packet(b"\xa8\x00\x00\x00\x00\x09\x00\x00\x00\x01") + _reply(1, 1024)
        s += _packet(b"\x28\x00\x00\x00\x00\x30\x00\x00\x01") + regs(1)   # beyond the end
        s += _packet(b"\x03\x00\x00\x00\x12") + _reply(1, 9)        # REQUEST SENSE
        s += _packet(b"\xee") + regs(1)                             # illegal opcode
        s += _packet(b"\x03\x00\x00\x00\x12") + _reply(1, 9)
        s += _packet(b"\x2b\x00\x00\x00\x00\x03") + regs(1)         # SEEK
        s += _packet(b"\x1e\x00\x00\x00\x01") + regs(1)             # PREVENT REMOVAL
        s += _packet(b"\x1b\x00\x00\x00\x02") + regs(1)             # eject: refused
        s += _packet(b"\x1e\x00\x00\x00\x00") + regs(1)
        s += _packet(b"\x5a\x00\x2a\x00\x00\x00\x00\x00\x1c") + _reply(1, 14)  # MODE SENSE
        s += _packet(b"\x5a\x00\x01\x00\x00\x00\x00\x00\x10") + _reply(1, 8)
        s += _packet(b"\x43\x00\x00\x00\x00\x00\x00\x00\x14") + _reply(1, 10)  # READ TOC
        s += _packet(b"\x43\x02\x00\x00\x00\x00\x00\x00\x14") + _reply(1, 10)  # MSF
        s += _packet(b"\x25", bcl=0) + regs(1)                       # byte count 0
        s += _packet(b"\x28\x00\x00\x00\x00\x05\x00\x00\x00", bcl=0) + regs(1)
        s += _packet(b"\x46\x00\x00\x00\x00\x00\x00\x00\x40") + _reply(1, 10)  # GET CONFIG
        s += _packet(b"\x46\x00\x00\x01\x00\x00\x00\x00\x40") + regs(1)      # feature 1
        s += _packet(b"\x4a\x01\x00\x00\x10\x00\x00\x00\x08") + _reply(1, 4)  # GESN
        s += _packet(b"\x4a\x01\x00\x00\x02\x00\x00\x00\x08") + _reply(1, 2)
        s += _packet(b"\x4a\x00\x00\x00\x10\x00\x00\x00\x08") + regs(1)      # async
        s += _packet(b"\x51\x00\x00\x00\x00\x00\x00\x00\x22") + _reply(1, 17)  # DISC INFO
        s += _packet(b"\xbd\x00\x00\x00\x00\x00\x00\x00\x00\x08") + _reply(1, 4)
        s += _packet(b"\xbb\x00\xff\xff") + regs(1)                # SET CD SPEED
        s += _packet(b"\xbe\x00\x00\x00\x00\x03\x00\x00\x01\x10") + _reply(1, 1024)
        s += _packet(b"\xbe\x00\x00\x00\x00\x03\x00\x00\x01\xf8", bcl=0x930)
        s += _reply(1, 1176)                                         # raw 2352 bytes
        s += _packet(b"\xbe\x00\x00\x00\x00\x03\x00\x00\x01\x00") + regs(1)
        s += _packet(b"\xbe\x00\x00\x00\x00\x03\x00\x00\x01\x20") + regs(1)
        s += _packet(b"\x43\x00\x00\x00\x00\x00\x00\x00\x0c\x40") + _reply(1, 6)
        s += _packet(b"\x43\x00\x00\x00\x00\x00\x00\x00\x30\x80") + _reply(1, 24)
        s += _packet(b"\x43\x02\x00\x00\x00\x00\x00\x00\x30\x80") + _reply(1, 24)
        s += _packet(b"\x43\x00\x00\x00\x00\x00\x00\x00\x30\xc0") + regs(1)
        s += _packet(b"\x43\x00\x00\x00\x00\x00\x05\x00\x30") + regs(1)
        # audio page: QEMU leaves bytes 10-16 as the buffer held them; read the header only
        s += _packet(b"\x5a\x00\x0e\x00\x00\x00\x00\x00\x0a") + _reply(1, 5)
        s += _packet(b"\x5a\x00\x6a\x00\x00\x00\x00\x00\x18") + regs(1)   # changeable
        s += _packet(b"\x5a\x00\xea\x00\x00\x00\x00\x00\x18") + regs(1)   # saved
        s += _packet(b"\xad\x00\x00\x00\x00\x00\x00\x00\x08\x00") + regs(1)  # DVD: CD
        s += _packet(b"\xad\x00\x00\x00\x00\x00\x00\xff\x00\x18") + _reply(1, 10)
        s += _packet(b"\x1b\x00\x00\x00\x02") + regs(1)           # eject
        s += _packet(b"\x00") + regs(1) + _packet(b"\x25") + regs(1)
        s += _packet(b"\x4a\x01\x00\x00\x10\x00\x00\x00\x08") + _reply(1, 4)
        s += _packet(b"\x1b\x00\x00\x00\x03") + regs(1)           # load
        s += _packet(b"\x00") + regs(1)
        s += _packet(b"\x1b\x00\x00\x00\x12") + regs(1)           # power condition
        # READ(10) by DMA
        s += bmdma_setup() + prd([(BUF, 4096, True)]) + [f"outl {BM + 12:#x} {PRD:#x}"]
        s += _packet(b"\x28\x00\x00\x00\x00\x02\x00\x00\x02", dma=True) + regs(1)
        s += [f"outb {BM + 8:#x} 0x09", "dwait1", f"inb {BM + 10:#x}"] + regs(1)
        s += [f"read {BUF:#x} 0x1000", f"outb {BM + 8:#x} 0x08"]
        s += command(1, 0x08, dev=0xA0) + regs(1)                  # DEVICE RESET
        s += ["outb 0x376 0x04", "wait1", "outb 0x376 0x00", "wait1"] + regs(1)
        both.run(s)
        both.assert_equal()
    finally:
        q.close()


def test_identify_geometry_from_partition_table(tmp_path: Path) -> None:
    """An MBR whose partition ends at head 254, sector 63 (a BIOS LBA translation) gives
    the size-based 16/63 geometry; one ending at head 7, sector 32 is taken as is."""
    results: list[list[str]] = []
    for end_head, end_sector in ((254, 63), (7, 32)):
        disk = tmp_path / f"mbr{end_head}.raw"
        _qemu_img("create", "-f", "raw", str(disk), "100M")
        mbr = bytearray(512)
        entry = bytes([0x80, 1, 1, 0, 0x83, end_head, end_sector, 0xFF]) + \
            (63).to_bytes(4, "little") + (200000).to_bytes(4, "little")
        mbr[0x1BE:0x1CE] = entry
        mbr[510:512] = b"\x55\xaa"
        with open(disk, "r+b") as f:
            f.write(mbr)
        q, ours, _ = _setup(tmp_path, disk, "raw")
        try:
            both = Both(q, ours)
            both.run(command(0, 0xEC) + read_words(0, 256))
            both.assert_equal()
            results.append([line[1] for line in both.log_o if line[0] == "inw 0x1f0"][:7])
        finally:
            q.close()
    chs = [[words[1], words[3], words[6]] for words in results]     # cyls, heads, secs
    assert chs[0] == ["0x00cb", "0x0010", "0x003f"]                 # 203, 16, 63
    assert chs[1] == ["0x0320", "0x0008", "0x0020"]                 # 800, 8, 32


def test_read_only_disk_is_refused(tmp_path: Path, disks: dict[str, Path]) -> None:
    """An IDE hard disk on a read-only drive is refused with QEMU's message."""
    ours = OurPc()
    with pytest.raises(IdeError) as info:
        ours.ide.attach(0, 0, open_image(str(disks["raw"]), "raw", read_only=True))
    proc = subprocess.run(["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display",
                           "none", "-S", "-drive",
                           f"file={disks['raw']},format=raw,if=ide,readonly=on"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"qemu-system-x86_64: {info.value}\n"
    # a CD-ROM is read-only by nature: attaching one is fine
    ours.ide.attach(1, 0, open_image(str(disks["cd"]), "raw", read_only=True), cdrom=True)


def test_rep_insw_block_equals_word_reads(tmp_path: Path, disks: dict[str, Path]) -> None:
    """read_data_block (the machine's fast path for rep insw) returns what 256 single
    reads return, and ends the sector the same way."""
    results: list[Any] = []
    for block in (False, True):
        ours = OurPc()
        ours.ide.attach(0, 0, open_image(str(disks["raw"]), "raw", read_only=False))
        for line in command(0, 0x20, count=2, lba=2047):
            if not line.startswith("wait"):
                ours.cmd(line)
        channel = ours.ide.channels[0]
        if block:
            data = channel.read_data_block(256, 2) + channel.read_data_block(128, 4)
        else:
            data = b"".join(ours.bus.read(0x1F0, 2).to_bytes(2, "little") for _ in range(256))
            data += b"".join(ours.bus.read(0x1F0, 4).to_bytes(4, "little") for _ in range(128))
        results.append((data, ours.bus.read(0x1F7, 1), ours.pic.irq(14).level))
    assert results[0] == results[1]
    assert results[0][0][:512] == b"\x11" * 512 and results[0][0][512:] == b"\x5a" * 512


def _el_torito_iso(path: Path, floppy: bytes) -> None:
    """A minimal bootable CD: volume descriptors, a boot catalog whose default entry
    emulates a 1.44 MB floppy (media type 2) holding ``floppy``."""
    sector = 2048
    iso = bytearray(20 * sector)
    for lba, kind in ((16, 1), (17, 0), (18, 255)):      # PVD, boot record, terminator
        iso[lba * sector:lba * sector + 7] = bytes([kind]) + b"CD001\x01"
    iso[17 * sector + 7:17 * sector + 30] = b"EL TORITO SPECIFICATION"
    struct.pack_into("<I", iso, 17 * sector + 0x47, 19)   # boot catalog at LBA 19
    validation = bytearray(32)
    validation[0] = 1
    validation[0x1E:0x20] = b"\x55\xaa"
    checksum = -sum(struct.unpack("<16H", bytes(validation))) & 0xFFFF
    struct.pack_into("<H", validation, 0x1C, checksum)
    entry = bytes([0x88, 2]) + struct.pack("<HBBHI", 0, 0, 0, 1, 20)
    iso[19 * sector:19 * sector + 32] = validation
    iso[19 * sector + 32:19 * sector + 32 + len(entry)] = entry
    iso += floppy.ljust(1474560, b"\0")
    path.write_bytes(bytes(iso))


def test_el_torito_boot_from_cdrom(tmp_path: Path, bootsector: Path, qemu_system: str) -> None:
    """SeaBIOS boots the boot sector from an El Torito CD (-cdrom, -boot d) through our
    ATAPI READ(10)s; with floppy emulation its CHS read works and its LBA read fails
    (SeaBIOS has no extended reads there), so it stops at "BOOT FAIL lba" - under both
    emulators, with the same console output."""
    floppy = bootsector.read_bytes() + os.urandom(512)
    iso = tmp_path / "boot.iso"
    _el_torito_iso(iso, floppy)
    outputs = []
    for emulator in (qemu_system, emulator_path(PYQEMU_SYSTEM)):
        out = tmp_path / f"{Path(emulator).name}.out"
        with open(out, "wb") as f:
            proc = subprocess.Popen([emulator, "-nographic", "-net", "none", "-m", "128",
                                     "-cdrom", str(iso), "-boot", "d"],
                                    stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + VM_TIMEOUT      # a hang guard only
            while b"BOOT FAIL lba" not in out.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{emulator}: no 'BOOT FAIL lba': {out.read_bytes()[-500:]!r}")
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    lines = outputs[1].split(b"\r\n")
    assert lines[1:6] == [b"Booting from DVD/CD...", b"BOOT int10", b"BOOT serial",
                          b"BOOT chs %08X" % fnv1a32(floppy[512:1024]), b"BOOT FAIL lba"]


def test_cd_media_change_matches_qemu(tmp_path: Path, disks: dict[str, Path]) -> None:
    """Eject and insert (QMP eject / blockdev-change-medium there, change_media here):
    not ready while the tray is open, then not ready once more, a unit attention, and a
    new-media event, as QEMU reports them."""
    q, ours, _ = _setup(tmp_path, disks["raw"], "raw", cd=disks["cd"])
    other = tmp_path / "other.iso"
    other.write_bytes(b"\x42" * 2048 * 8)
    drive = ours.ide.channels[1].drives[0]
    tur = _packet(b"\x00") + regs(1)
    gesn = _packet(b"\x4a\x01\x00\x00\x10\x00\x00\x00\x08") + _reply(1, 4)
    sense = _packet(b"\x03\x00\x00\x00\x12") + _reply(1, 9)
    try:
        both = Both(q, ours)
        both.run(tur + ["inb 0x177"])
        q.qmp(("eject", {"device": "ide1-cd0"}))
        drive.change_media(None)
        both.run(["inb 0x376"] + tur + sense + gesn + _packet(b"\x25") + regs(1))
        q.qmp(("blockdev-change-medium",
               {"device": "ide1-cd0", "filename": str(other), "format": "raw"}))
        drive.change_media(open_image(str(other), "raw", read_only=True))
        both.run(["inb 0x376"] + tur + tur + tur + sense + tur + gesn + gesn)
        both.run(_packet(b"\x25") + _reply(1, 4))
        both.assert_equal()
    finally:
        q.close()


def test_state_round_trip_mid_transfer(disks: dict[str, Path]) -> None:
    """get_state in the middle of a PIO read, with a DMA command waiting on the other
    channel's engine and the BMDMA BAR and PM block mapped; set_state into a fresh
    machine: every later read (data, registers, IRQ 14/15, guest RAM after DMA) is the
    same on both."""
    def machine() -> OurPc:
        pc = OurPc()
        pc.ide.attach(0, 0, open_image(str(disks["raw"]), "raw", read_only=False))
        pc.ide.attach(1, 0, open_image(str(disks["qcow2"]), "qcow2", read_only=False))
        return pc

    def replies(pc: OurPc, script: list[str]) -> list[tuple[str, str, bool, bool]]:
        out = []
        for line in script:
            if not line.startswith(("wait", "dwait")):
                out.append((line, pc.cmd(line), pc.pic.irq(14).level, pc.pic.irq(15).level))
        return out

    src = machine()
    setup = bmdma_setup() + ["outl 0xcf8 0x80000b40", "outl 0xcfc 0x601",
                             "outl 0xcf8 0x80000b80", "outb 0xcfc 1"]
    setup += prd([(BUF, 2048, True)])
    setup += [f"outl {BM + 12:#x} {PRD:#x}"] + command(1, 0xC8, count=4, lba=2046)
    setup += command(0, 0x20, count=3, lba=2047) + read_words(0, 100)
    replies(src, setup)
    dst = machine()
    dst.host.set_state(src.host.get_state())
    dst.ram[:] = src.ram
    rest = read_words(0, 156) + regs() + read_words(0, 512) + regs()
    rest += [f"inb {BM + 10:#x}", f"outb {BM + 8:#x} 0x09", f"inb {BM + 10:#x}"] + regs(1)
    rest += [f"read {BUF:#x} 0x800", "inw 0x604", "inb 0xc002"]
    after_src, after_dst = replies(src, rest), replies(dst, rest)
    assert after_src == after_dst
    assert after_src[-3][1] == "0x" + (b"\x11" * 1024 + b"\x5a" * 1024).hex()
    src.close()
    dst.close()


def test_empty_cdrom_matches_qemu(tmp_path: Path) -> None:
    """qemu's default empty CD-ROM (ide1-cd0): identification works, media commands
    report "not ready / medium not present", events report no medium."""
    ours = OurPc()
    ours.ide.attach(1, 0, None, cdrom=True)
    with QemuQtest(tmp_path, *QEMU_ARGS, "-drive", "if=ide,index=2,media=cdrom") as q:
        both = Both(q, ours)
        s = regs(1) + command(1, 0xA1, dev=0xA0) + read_words(1, 256) + regs(1)
        s += _packet(b"\x00") + regs(1) + _packet(b"\x03\x00\x00\x00\x12") + _reply(1, 9)
        s += _packet(b"\x12\x00\x00\x00\x24") + _reply(1, 18)
        s += _packet(b"\x25") + regs(1) + _packet(b"\x28\x00\x00\x00\x00\x00\x00\x00\x01")
        s += regs(1) + _packet(b"\x4a\x01\x00\x00\x10\x00\x00\x00\x08") + _reply(1, 4)
        s += _packet(b"\x46\x00\x00\x00\x00\x00\x00\x00\x20") + _reply(1, 10)
        s += _packet(b"\x5a\x00\x2a\x00\x00\x00\x00\x00\x1c") + _reply(1, 14)
        s += regs(0) + command(0, 0xEC) + regs(0)                 # no disk on channel 0
        both.run(s)
        both.assert_equal()


def test_random_port_traffic_never_breaks(disks: dict[str, Path]) -> None:
    """Random accesses of every width to every port of the IDE channels, BMDMA, PCI
    configuration and fw_cfg (with a disk, a CD and RAM behind them) raise nothing and
    leave the controller usable: a following IDENTIFY still works."""
    import random

    ours = OurPc()
    ours.ide.attach(0, 0, open_image(str(disks["raw"]), "raw", read_only=False))
    ours.ide.attach(1, 0, open_image(str(disks["cd"]), "raw", read_only=True), cdrom=True)
    for line in bmdma_setup():
        ours.cmd(line)
    ports = [*range(0x1F0, 0x1F8), 0x3F6, *range(0x170, 0x178), 0x376,
             *range(BM, BM + 16), *range(0xCF8, 0xD00)]
    commands = [0x20, 0x24, 0x30, 0xC4, 0xC5, 0xC6, 0xC8, 0xCA, 0x25, 0x35, 0xEC, 0xA1,
                0xA0, 0x08, 0x90, 0xEF, 0xE7, 0x91, 0xF8, 0x27, 0x40, 0xB0]
    rng = random.Random(11)
    for _ in range(20000):
        port = rng.choice(ports)
        size = rng.choice((1, 1, 1, 2, 4))
        if rng.random() < 0.5:
            ours.bus.read(port, size)
        elif port in (0x1F7, 0x177) and rng.random() < 0.7:
            ours.bus.write(port, 1, rng.choice(commands))
        elif port == 0xCF8:
            ours.bus.write(port, 4, 0x80000000 | rng.choice((0, 8, 9, 11)) << 8
                           | rng.randrange(0, 256, 4))
        else:
            ours.bus.write(port, size, rng.getrandbits(8 * size))
    ours.bus.write(0x3F6, 1, 0x04)                  # SRST, then a clean IDENTIFY
    ours.bus.write(0x3F6, 1, 0x00)
    for line in command(0, 0xEC):
        if not line.startswith("wait"):
            ours.cmd(line)
    words = [ours.bus.read(0x1F0, 2) for _ in range(256)]
    assert words[0] == 0x0040 and words[27] == 0x5145      # "QE" of QEMU HARDDISK
    assert len(ours.ram) == 1 << 20
    ours.close()
