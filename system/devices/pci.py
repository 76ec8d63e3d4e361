"""PCI bus 0 of the pc machine: configuration mechanism #1 and the i440FX host bridge.

``PciHost`` decodes 0xCF8 (CONFIG_ADDRESS, dword writes only, as QEMU's
pci_host_config_write) and 0xCFC-0xCFF (CONFIG_DATA, 1/2/4-byte accesses at any offset).
``PciFunction`` is one function's 256-byte configuration space with QEMU's default
write masks (pci_init_wmask / pci_init_w1cmask): command bits IO, MEMORY, MASTER, SERR,
INTX_DISABLE; cache line size; interrupt line; everything from 0x40 up; status error bits
write-one-to-clear. BARs are sized by writing all ones (the write mask is ~(size-1)) and
mapped through a callback when the command register enables their space.

``I440fx`` is function 00.0 (8086:1237 rev 02, subsystem 1af4:1100). Writes that touch
PAM0-6 (0x59-0x5F) call ``on_pam(index, value)`` and writes to SMRAM (0x72) call
``on_smram(value)``: the machine remaps the BIOS shadow areas.

Not modelled: other buses (bus numbers other than 0 read all ones), PCI bridges, MSI,
expansion ROM BARs, 64-bit BARs, the i440FX's SMRAM lock (D_LCK) semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import PortBus

# configuration space offsets
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0A
CACHE_LINE_SIZE = 0x0C
HEADER_TYPE = 0x0E
BASE_ADDRESS_0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_MASTER = 0x0004
COMMAND_SERR = 0x0100
COMMAND_INTX_DISABLE = 0x0400

STATUS_INTERRUPT = 0x0008
STATUS_FAST_BACK = 0x0080
STATUS_DEVSEL_MEDIUM = 0x0200
STATUS_W1C = 0xF900           # parity, target/master aborts, SERR, detected parity

HEADER_MULTI_FUNCTION = 0x80

# QEMU's default subsystem for its devices (PCI_SUBVENDOR_ID_REDHAT_QUMRANET / 0x1100)
SUBSYSTEM_VENDOR_QEMU = 0x1AF4
SUBSYSTEM_QEMU = 0x1100

BAR_SPACE_IO = 0x01
UNMAPPED = -1

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
STATE_VERSION = 1


class Bar:
    """One base address register: size, space and the callback that (un)maps it."""

    __slots__ = ("index", "size", "io", "mapper", "address")

    def __init__(self, index: int, size: int, io: bool, mapper: Callable[[int], None]):
        self.index = index
        self.size = size
        self.io = io
        self.mapper = mapper          # mapper(address) with UNMAPPED for "not decoded"
        self.address = UNMAPPED


class PciFunction:
    """A PCI function: 256 bytes of configuration space with write masks."""

    name = "pci-function"

    def __init__(self, vendor: int, device: int, revision: int, class_code: int, *,
                 header_type: int = 0, interrupt_pin: int = 0,
                 subsystem: tuple[int, int] = (SUBSYSTEM_VENDOR_QEMU, SUBSYSTEM_QEMU)):
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.w1cmask = bytearray(256)
        self.bars: list[Bar | None] = [None] * 6
        self.host: PciHost | None = None
        self.devfn = 0
        self.irq_level = False        # INTx asserted by the device
        self._identity = (vendor, device, revision, class_code, header_type,
                          interrupt_pin, subsystem)
        self._init_config()

    def _init_config(self) -> None:
        vendor, device, revision, class_code, header_type, pin, subsystem = self._identity
        cfg = self.config
        cfg[:] = bytes(256)
        self.set_word(VENDOR_ID, vendor)
        self.set_word(DEVICE_ID, device)
        cfg[REVISION_ID] = revision
        cfg[CLASS_PROG] = class_code & 0xFF
        self.set_word(CLASS_DEVICE, class_code >> 8)
        cfg[HEADER_TYPE] = header_type
        if subsystem is not None:
            self.set_word(SUBSYSTEM_VENDOR_ID, subsystem[0])
            self.set_word(SUBSYSTEM_ID, subsystem[1])
        cfg[INTERRUPT_PIN] = pin
        wm = self.wmask
        wm[:] = bytes(256)
        wm[CACHE_LINE_SIZE] = 0xFF
        wm[INTERRUPT_LINE] = 0xFF
        command_mask = (COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR
                        | COMMAND_INTX_DISABLE)
        wm[COMMAND] = command_mask & 0xFF
        wm[COMMAND + 1] = command_mask >> 8
        wm[0x40:] = b"\xff" * 0xC0
        self.w1cmask[STATUS] = STATUS_W1C & 0xFF
        self.w1cmask[STATUS + 1] = STATUS_W1C >> 8
        for bar in self.bars:
            if bar is not None:
                self._init_bar(bar)

    # -- helpers -------------------------------------------------------------------------

    def get_word(self, offset: int) -> int:
        return self.config[offset] | self.config[offset + 1] << 8

    def set_word(self, offset: int, value: int) -> None:
        self.config[offset] = value & 0xFF
        self.config[offset + 1] = (value >> 8) & 0xFF

    def get_long(self, offset: int) -> int:
        return int.from_bytes(self.config[offset:offset + 4], "little")

    def set_long(self, offset: int, value: int) -> None:
        self.config[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def register_bar(self, index: int, size: int, *, io: bool,
                     mapper: Callable[[int], None]) -> Bar:
        """Declare BAR ``index`` of ``size`` bytes (a power of two)."""
        if size & (size - 1) or size < (4 if io else 16):
            raise ValueError(f"BAR size {size:#x} is not a power of two")
        bar = Bar(index, size, io, mapper)
        self.bars[index] = bar
        self._init_bar(bar)
        return bar

    def _init_bar(self, bar: Bar) -> None:
        offset = BASE_ADDRESS_0 + 4 * bar.index
        self.set_long(offset, BAR_SPACE_IO if bar.io else 0)
        self.wmask[offset:offset + 4] = ((~(bar.size - 1)) & 0xFFFFFFFF).to_bytes(4, "little")

    # -- configuration access (offset inside this function's space) -----------------------

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        cfg, wm, w1c = self.config, self.wmask, self.w1cmask
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            addr = offset + i
            mask = wm[addr]
            cfg[addr] = ((cfg[addr] & ~mask) | (byte & mask)) & ~(byte & w1c[addr]) & 0xFF
        end = offset + size
        if offset < BASE_ADDRESS_0 + 24 and end > BASE_ADDRESS_0 or \
                offset < COMMAND + 2 and end > COMMAND:
            self.update_mappings()
        if offset < COMMAND + 2 and end > COMMAND:
            self._update_irq()
        self.config_written(offset, size)

    def config_written(self, offset: int, size: int) -> None:
        """Hook for subclasses: called after every configuration write."""

    # -- BAR mapping ---------------------------------------------------------------------

    def bar_address(self, bar: Bar) -> int:
        command = self.get_word(COMMAND)
        value = self.get_long(BASE_ADDRESS_0 + 4 * bar.index)
        if bar.io:
            if not command & COMMAND_IO:
                return UNMAPPED
            address = value & ~(bar.size - 1) & 0xFFFFFFFC
            if address == 0 or address + bar.size > 0x10000:
                return UNMAPPED
            return address
        if not command & COMMAND_MEMORY:
            return UNMAPPED
        address = value & ~(bar.size - 1) & 0xFFFFFFF0
        if address == 0 or address + bar.size > 1 << 32:
            return UNMAPPED
        return address

    def update_mappings(self) -> None:
        for bar in self.bars:
            if bar is None:
                continue
            address = self.bar_address(bar)
            if address != bar.address:
                bar.address = address
                bar.mapper(address)

    # -- INTx ------------------------------------------------------------------------------

    def set_irq(self, level: bool) -> None:
        """Assert or deassert this function's INTx pin."""
        self.irq_level = bool(level)
        status = self.get_word(STATUS)
        self.set_word(STATUS, status | STATUS_INTERRUPT if level else status & ~STATUS_INTERRUPT)
        self._update_irq()

    def _update_irq(self) -> None:
        if self.host is None or not self.config[INTERRUPT_PIN]:
            return
        disabled = self.get_word(COMMAND) & COMMAND_INTX_DISABLE
        self.host.intx_changed(self, self.irq_level and not disabled)

    def reset(self) -> None:
        """System reset as QEMU's pci_device_reset: the function's own ``device_reset``,
        then command, status, cache line size, interrupt line and BARs cleared (registers
        from 0x40 up keep their values)."""
        self.irq_level = False
        self._update_irq()
        self.device_reset()
        command_bits = self.wmask[COMMAND] | self.wmask[COMMAND + 1] << 8
        self.set_word(COMMAND, self.get_word(COMMAND) & ~command_bits)
        self.set_word(STATUS, self.get_word(STATUS) & ~(STATUS_W1C | STATUS_INTERRUPT))
        self.config[CACHE_LINE_SIZE] = 0
        self.config[INTERRUPT_LINE] = 0
        for bar in self.bars:
            if bar is not None:
                self._init_bar(bar)
        self.update_mappings()

    # -- migration ---------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The configuration space and INTx level (QEMU's vmstate "PCIDevice")."""
        return {"config": bytes(self.config), "irq_level": self.irq_level}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load the configuration space, then remap BARs and re-drive INTx."""
        self.config[:] = state["config"]
        self.irq_level = state["irq_level"]
        self.update_mappings()
        self._update_irq()

    def device_reset(self) -> None:
        """Hook for subclasses: the device's own reset values."""


class PciHost:
    """Configuration mechanism #1 on ports 0xCF8 and 0xCFC-0xCFF, bus 0."""

    def __init__(self, bus: PortBus):
        self.config_address = 0
        self.functions: dict[int, PciFunction] = {}
        self.pirq_router: Callable[[int, bool], None] | None = None
        self._intx_levels: dict[tuple[int, int], bool] = {}
        bus.register(0xCF8, 1, self._read_address, self._write_address, "pci-conf-idx")
        bus.register(0xCFA, 2, self._read_address, None, "pci-conf-idx")
        bus.register(0xCFC, 4, self._read_data, self._write_data, "pci-conf-data")

    def add(self, devfn: int, function: PciFunction) -> PciFunction:
        """Plug ``function`` in at ``devfn`` (device << 3 | function)."""
        if devfn in self.functions:
            raise ValueError(f"PCI devfn {devfn:#x} is already used")
        function.host = self
        function.devfn = devfn
        self.functions[devfn] = function
        return function

    def reset(self) -> None:
        self.config_address = 0
        for function in self.functions.values():
            function.reset()

    def get_state(self) -> dict[str, Any]:
        """CONFIG_ADDRESS and every function's state, by devfn."""
        return {"version": STATE_VERSION, "config_address": self.config_address,
                "functions": {devfn: fn.get_state() for devfn, fn in self.functions.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported PCI state version {state.get('version')}")
        if set(state["functions"]) != set(self.functions):
            raise ValueError("PCI functions differ from the saved machine's")
        self.config_address = state["config_address"]
        for devfn, fn_state in state["functions"].items():
            self.functions[devfn].set_state(fn_state)

    # -- INTx to PIRQ ----------------------------------------------------------------

    @staticmethod
    def pirq_of(devfn: int, pin: int) -> int:
        """PIRQ A-D (0-3) of INTx pin (1 = INTA) of a slot (i440FX's pci_slot_get_pirq)."""
        return ((pin - 1) + (devfn >> 3) - 1) & 3

    def intx_changed(self, function: PciFunction, level: bool) -> None:
        pirq = self.pirq_of(function.devfn, function.config[INTERRUPT_PIN])
        self._intx_levels[(function.devfn, pirq)] = level
        if self.pirq_router is not None:
            self.pirq_router(pirq, self.pirq_level(pirq))

    def pirq_level(self, pirq: int) -> bool:
        return any(level for (_, p), level in self._intx_levels.items() if p == pirq)

    # -- ports -----------------------------------------------------------------------

    def _read_address(self, port: int, size: int) -> int:
        # QEMU's pci_host_config_read returns the register unshifted for any access
        return self.config_address & _ONES[size]

    def _write_address(self, port: int, size: int, value: int) -> None:
        if size == 4:
            self.config_address = value & 0xFFFFFFFF

    def _target(self, port: int) -> tuple[PciFunction | None, int]:
        address = self.config_address
        if not address & 0x80000000 or (address >> 16) & 0xFF:
            return None, 0
        function = self.functions.get((address >> 8) & 0xFF)
        return function, (address & 0xFC) | (address & 3 | port & 3)

    def _read_data(self, port: int, size: int) -> int:
        function, offset = self._target(port)
        if function is None:
            return _ONES[size]
        size = min(size, 256 - offset)
        return function.config_read(offset, size)

    def _write_data(self, port: int, size: int, value: int) -> None:
        function, offset = self._target(port)
        if function is None:
            return
        function.config_write(offset, min(size, 256 - offset), value)

    def query_pci(self) -> list[dict[str, Any]]:
        """QMP ``query-pci``: bus 0 and its functions, as QEMU's PciInfo."""
        devices = []
        for devfn, fn in sorted(self.functions.items()):
            klass = fn.get_word(CLASS_DEVICE)
            class_info: dict[str, Any] = {"class": klass}
            if klass in CLASS_DESCRIPTIONS:
                class_info["desc"] = CLASS_DESCRIPTIONS[klass]
            device: dict[str, Any] = {
                "bus": 0, "slot": devfn >> 3, "function": devfn & 7,
                "class_info": class_info,
                "id": {"vendor": fn.get_word(VENDOR_ID), "device": fn.get_word(DEVICE_ID),
                       "subsystem-vendor": fn.get_word(SUBSYSTEM_VENDOR_ID),
                       "subsystem": fn.get_word(SUBSYSTEM_ID)},
                "irq_pin": fn.config[INTERRUPT_PIN], "qdev_id": "",
                "regions": _query_regions(fn),
            }
            if fn.config[INTERRUPT_PIN]:
                device["irq"] = fn.config[INTERRUPT_LINE]
            devices.append(device)
        return [{"bus": 0, "devices": devices}]

    def info_text(self) -> str:
        """HMP ``info pci``, in qemu's layout (hmp_info_pci_device)."""
        lines = []
        for devfn, fn in sorted(self.functions.items()):
            lines.append(f"  Bus  0, device {devfn >> 3:3d}, function {devfn & 7}:")
            klass = fn.get_word(CLASS_DEVICE)
            desc = CLASS_DESCRIPTIONS.get(klass, f"Class {klass:04x}")
            lines.append(f"    {desc}: PCI device {fn.get_word(VENDOR_ID):04x}:"
                         f"{fn.get_word(DEVICE_ID):04x}")
            lines.append(f"      PCI subsystem {fn.get_word(SUBSYSTEM_VENDOR_ID):04x}:"
                         f"{fn.get_word(SUBSYSTEM_ID):04x}")
            pin = fn.config[INTERRUPT_PIN]
            if pin:
                lines.append(f"      IRQ {fn.config[INTERRUPT_LINE]}, pin {chr(ord('A') + pin - 1)}")
            for bar in fn.bars:
                if bar is None:
                    continue
                addr = fn.bar_address(bar)
                addr = 0xFFFFFFFFFFFFFFFF if addr == UNMAPPED else addr
                end = (addr + bar.size - 1) & 0xFFFFFFFFFFFFFFFF
                if bar.io:
                    lines.append(f"      BAR{bar.index}: I/O at 0x{addr:04x} [0x{end:04x}].")
                else:
                    lines.append(f"      BAR{bar.index}: 32 bit memory at 0x{addr:08x} "
                                 f"[0x{end:08x}].")
            lines.append('      id ""')
        return "\n".join(lines) + "\n"


def _query_regions(fn: PciFunction) -> list[dict[str, Any]]:
    regions: list[dict[str, Any]] = []
    for bar in fn.bars:
        if bar is None:
            continue
        address = fn.bar_address(bar)           # UNMAPPED is -1, as QEMU's JSON shows it
        if bar.io:
            regions.append({"bar": bar.index, "type": "io", "address": address,
                            "size": bar.size})
        else:
            regions.append({"bar": bar.index, "type": "memory", "address": address,
                            "size": bar.size, "prefetch": False, "mem_type_64": False})
    return regions


# class code -> qemu's description (pci_class_descriptions, the classes a pc can show)
CLASS_DESCRIPTIONS = {
    0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0102: "Floppy controller",
    0x0104: "RAID controller", 0x0106: "SATA controller", 0x0108: "NVMe controller",
    0x0180: "Storage controller", 0x0200: "Ethernet controller", 0x0280: "Network controller",
    0x0300: "VGA controller", 0x0302: "3D controller", 0x0380: "Display controller",
    0x0401: "Audio controller", 0x0403: "Audio controller", 0x0600: "Host bridge",
    0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
    0x0c03: "USB controller", 0x0c05: "SMBus",
}


# -- i440FX host bridge (00.0) --------------------------------------------------------------

I440FX_PAM = 0x59
I440FX_PAM_SIZE = 7
I440FX_SMRAM = 0x72
I440FX_COREBOOT_RAM_SIZE = 0x57


class I440fx(PciFunction):
    """The i440FX PMC: PAM shadow-RAM control and SMRAM, the rest plain registers."""

    name = "i440FX"

    def __init__(self, ram_size: int = 128 << 20,
                 on_pam: Callable[[int, int], None] | None = None,
                 on_smram: Callable[[int], None] | None = None):
        self.on_pam = on_pam
        self.on_smram = on_smram
        super().__init__(0x8086, 0x1237, 0x02, 0x060000)
        self.config[I440FX_SMRAM] = 0x02
        # QEMU stores the RAM size in 8 MiB units (capped at 255) for coreboot
        self.config[I440FX_COREBOOT_RAM_SIZE] = min(ram_size // (8 << 20), 255)

    def _pam(self, index: int) -> None:
        if self.on_pam is not None:
            self.on_pam(index, self.config[I440FX_PAM + index])

    def pam(self, index: int) -> int:
        """Current value of PAM register ``index`` (0-6)."""
        return self.config[I440FX_PAM + index]

    def config_written(self, offset: int, size: int) -> None:
        for addr in range(offset, offset + size):
            if I440FX_PAM <= addr < I440FX_PAM + I440FX_PAM_SIZE:
                self._pam(addr - I440FX_PAM)
            elif addr == I440FX_SMRAM and self.on_smram is not None:
                self.on_smram(self.config[I440FX_SMRAM])
