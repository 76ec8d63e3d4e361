"""Our PCI host, PIIX3 and fw_cfg wired on a PortBus with a bytearray "RAM", driven by
the same qtest command lines (``outl 0xcf8 0x80000000``, ``inw 0x1f0``, ``read 0x1000
0x200`` ...) that tests/system/qtest_peer.QemuQtest sends to the real QEMU, so one script
runs on both and the replies are compared."""

from __future__ import annotations

from typing import Any

from pyqemu.system.bus import PortBus
from pyqemu.system.devices.pci import I440fx, PciHost
from pyqemu.system.devices.pic import PicPair
from pyqemu.system.devices.piix import Piix3

RAM_SIZE = 128 << 20

# the QEMU peer's machine options matching ours: no SMM (unicorn has none)
QEMU_ARGS = ("-machine", "smm=off")


class OurPc:
    """The devices under test, as the pc machine wires them."""

    def __init__(self, ram_size: int = 1 << 20, clock_ns: Any = None) -> None:
        self.bus = PortBus()
        self.ram = bytearray(ram_size)
        self.pic = PicPair(self.bus)
        self.pam_calls: list[tuple[int, int]] = []
        self.resets = 0
        self.shutdowns = 0
        self.host = PciHost(self.bus)
        self.i440fx = I440fx(RAM_SIZE, on_pam=lambda i, v: self.pam_calls.append((i, v)))
        self.host.add(0, self.i440fx)
        self.piix = Piix3(self.host, self.bus, self.pic.irq, clock_ns or (lambda: 0),
                          reset_request=self._reset, shutdown_request=self._shutdown,
                          dma_read=self.dma_read, dma_write=self.dma_write)
        self.ide = self.piix.ide_controller

    def close(self) -> None:
        """Close the drives' images (what the machine does when it quits)."""
        for channel in self.ide.channels:
            for drive in channel.drives:
                if drive.image is not None:
                    drive.image.close()

    def _reset(self) -> None:
        self.resets += 1

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def dma_read(self, addr: int, size: int) -> bytes:
        return bytes(self.ram[addr:addr + size])

    def dma_write(self, addr: int, data: bytes) -> None:
        if addr < len(self.ram):                 # what lies beyond RAM is dropped
            n = min(len(data), len(self.ram) - addr)
            self.ram[addr:addr + n] = data[:n]

    def cmd(self, line: str) -> str:
        """Execute one qtest command; return what QEMU's qtest puts after "OK"."""
        words = line.split()
        op = words[0]
        sizes = {"b": 1, "w": 2, "l": 4}
        if op[:2] == "in":
            size = sizes[op[2]]
            value = self.bus.read(int(words[1], 0), size)
            return f"0x{value:04x}"     # qtest prints every IN value as %04x
        if op[:3] == "out":
            self.bus.write(int(words[1], 0), sizes[op[3]], int(words[2], 0))
            return ""
        if op == "write":
            addr, size, data = int(words[1], 0), int(words[2], 0), words[3]
            raw = bytes.fromhex(data[2:]) if data.startswith("0x") else b""
            self.ram[addr:addr + size] = raw.ljust(size, b"\0")[:size]
            return ""
        if op == "read":
            addr, size = int(words[1], 0), int(words[2], 0)
            return "0x" + self.ram[addr:addr + size].hex()
        raise ValueError(f"unsupported qtest command {line!r}")


def run(target: Any, script: list[str]) -> list[str]:
    """Replies of ``target`` (ours or QemuQtest) to every command of ``script``."""
    return [f"{line} -> {target.cmd(line)}" for line in script]


def config_read_script(devfn: int, offsets: range = range(0, 256, 4)) -> list[str]:
    lines = []
    for off in offsets:
        lines.append(f"outl 0xcf8 {0x80000000 | devfn << 8 | off:#x}")
        lines.append("inl 0xcfc")
    return lines
