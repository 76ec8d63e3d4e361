"""The pc machine (i440FX + PIIX3): memory map, firmware, wiring, reset and the run loop.

Physical memory (QEMU's pc_memory_init / i440fx_init for pc-i440fx-7.2):

- RAM: one anonymous mmap of ``-m`` bytes, split as QEMU does (``pc_ram_split``):
  up to 0xE0000000 below 4 GiB (3 GiB when the RAM reaches that size:
  gigabyte-aligned), the rest at 4 GiB. Mapped with ``mem_map_ptr``, so the monitor,
  the devices and DMA read and write guest RAM as host memory.
- 0xA0000-0xBFFFF: the legacy VGA window, here plain RAM (the text screen at 0xB8000 is
  read from it).
- 0xC0000-0xFFFFF: sixteen 16 KiB shadow segments (64 KiB at 0xF0000) whose writability
  follows the i440FX PAM registers: reads always come from the shadow RAM, which holds
  the BIOS's last 128 KiB at 0xE0000 after power-on and every reset (QEMU shows the
  isa-bios ROM there while PAM is 0, which reads the same); a segment is writable when
  its PAM nibble has the write-enable bit (2 or 3), otherwise stores are dropped.
- The BIOS ROM at 4 GiB - size (read-only: stores dropped).
- Everything else below 4 GiB: MMIO that reads all ones and ignores writes (unicorn's
  ``no_exit_request`` mode needs every address mapped).

The CPU thread runs ``X86Cpu.run``; HLT sleeps until the next timer deadline or until
work arrives; other threads (chardev readers, monitors) hand work over with
``run_on_cpu_thread`` / ``post``. A separate kicker thread stops the engine when a timer
deadline passes while the guest computes.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from pyqemu.common.errors import QemuError

from .config import MachineConfig
from .devices.rtc import pc_ram_split  # the CMOS sizes and the memory map split alike
from .options import PROG, UsageError

T = TypeVar("T")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FOUR_GIB = 1 << 32
SHADOW_BASE = 0xC0000
PAGE = 0x1000


class EventBus:
    """QMP events (STOP, RESUME, RESET, SHUTDOWN ...) to every subscriber."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[str, dict[str, Any]], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(name, dict(data or {}))
            except Exception:  # noqa: BLE001 - a broken client must not stop the machine
                pass


def pam_segments(index: int, value: int) -> list[tuple[int, int, int]]:
    """(base, size, mode) of the shadow segments PAM register ``index`` controls; mode is
    the 2-bit PAM field (0 off, 1 read-only, 2 write-only, 3 read/write)."""
    if index == 0:
        return [(0xF0000, 0x10000, (value >> 4) & 3)]
    base = 0xC0000 + (index - 1) * 0x8000
    return [(base, 0x4000, value & 3), (base + 0x4000, 0x4000, (value >> 4) & 3)]


class _Drive:
    """An opened -drive: its block node, where it sits, what it is."""

    def __init__(self, node: Any, cfg: Any, temp_overlay: str | None) -> None:
        self.node = node
        self.cfg = cfg
        self.temp_overlay = temp_overlay

    @property
    def device_name(self) -> str:
        c = self.cfg
        if c.media == "cdrom":
            return f"ide{c.bus}-cd{c.unit}"
        return f"ide{c.bus}-hd{c.unit}"


class PcMachine:
    """The pc machine built from a :class:`MachineConfig`."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.name = config.name
        self.events = EventBus()
        self.status = "prelaunch"
        self.exit_status = 0
        self.drives: list[_Drive] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._work: deque[tuple[Callable[[], Any], list[Any], threading.Event | None]] = deque()
        self._quit = False
        self._finished = threading.Event()
        self._reset_request: str | None = None      # "guest" | "host"
        self._shutdown_request: str | None = None   # a SHUTDOWN reason
        self._pause_request = False
        self._shutdown_pause = False
        self._cpu_thread: threading.Thread | None = None
        self._cpu_tid: int | None = None
        self._log = _open_log(config)
        self._chardevs: list[Any] = []
        try:
            self._build()
        except BaseException:
            self._close_drives()
            raise

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        cfg = self.config
        bios = self._load_bios()
        self._open_drives()
        kernel = self._load_kernel_file()

        from .bus import PortBus
        from .clock import VirtualClock
        from .x86.cpu import X86Cpu

        self.clock = VirtualClock()
        self.bus = PortBus()
        self.ram_below, self.ram_above = pc_ram_split(cfg.ram_size)
        try:
            self._ram_mmap = mmap.mmap(-1, max(cfg.ram_size, 0x100000),
                                       flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:
            raise UsageError("cannot set up guest memory 'pc.ram': "
                             f"{os.strerror(exc.errno or 12)}") from None
        self.ram = memoryview(self._ram_mmap)
        self._bios_data = bios
        self._rom_mmap = mmap.mmap(-1, len(bios), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._rom_mmap[:] = bios
        self._rom_view = memoryview(self._rom_mmap)
        self.cpu = X86Cpu(self._map_memory)
        self.cpu.set_port_bus(self.bus)
        self._build_devices()
        self._copy_bios_shadow()
        self.clock.on_new_deadline = self._on_new_deadline
        if kernel is not None:
            from .multiboot import load_multiboot

            self._multiboot = load_multiboot(self, kernel)
        else:
            self._multiboot = None

    def _load_bios(self) -> bytes:
        cfg = self.config
        path = cfg.find_file(cfg.bios)
        data = b""
        if path is not None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
        if not data or len(data) % 65536 or len(data) > 16 * MiB:
            raise UsageError(f"qemu: could not load PC BIOS '{cfg.bios}'", plain=True)
        return data

    def _load_kernel_file(self) -> bytes | None:
        cfg = self.config
        if cfg.kernel is None:
            return None
        try:
            with open(cfg.kernel, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(f"qemu: could not open kernel file '{cfg.kernel}': "
                             f"{exc.strerror}", plain=True) from None

    def _open_drives(self) -> None:
        from pyqemu.common.block import BlockError, create_image, open_image

        for dcfg in self.config.drives:
            if dcfg.file is None or dcfg.file == "":
                self.drives.append(_Drive(None, dcfg, None))
                continue
            read_only = dcfg.readonly
            overlay = None
            try:
                node = open_image(dcfg.file, dcfg.format, read_only=read_only or dcfg.snapshot)
                if dcfg.format is None and node.format_name == "raw" and not read_only \
                        and not dcfg.snapshot:
                    sys.stderr.write(
                        f"WARNING: Image format was not specified for '{dcfg.file}' and "
                        "probing guessed raw.\n"
                        "         Automatically detecting the format is dangerous for raw "
                        "images, write operations on block 0 will be restricted.\n"
                        "         Specify the 'raw' format explicitly to remove the "
                        "restrictions.\n")
                if dcfg.snapshot and not read_only:
                    # -snapshot: a temporary qcow2 over the image takes the writes
                    size = node.size
                    fmt = node.format_name
                    node.close()
                    fd, overlay = tempfile.mkstemp(prefix="vl.", dir=_tmpdir())
                    os.close(fd)
                    create_image(overlay, "qcow2", size,
                                 {"backing_file": os.path.abspath(dcfg.file),
                                  "backing_fmt": fmt})
                    node = open_image(overlay, "qcow2", read_only=False)
                    os.unlink(overlay)
                    overlay = None
            except (BlockError, QemuError) as exc:
                if overlay is not None:
                    _unlink(overlay)
                msg = exc.message
                if not msg.startswith("Could not open"):
                    msg = f"Could not open '{dcfg.file}': {msg}"
                raise UsageError(msg, dcfg.where) from None
            except OSError as exc:
                raise UsageError(f"Could not open '{dcfg.file}': {exc.strerror}",
                                 dcfg.where) from None
            self.drives.append(_Drive(node, dcfg, overlay))

    def _close_drives(self) -> None:
        for drive in self.drives:
            if drive.node is not None:
                try:
                    drive.node.close()
                except Exception:  # noqa: BLE001
                    pass
                drive.node = None

    # ------------------------------------------------------------------ memory
    def _map_memory(self, uc: Any) -> None:
        from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

        self._uc = uc
        ram_addr = _buffer_address(self._ram_mmap)
        below = self.ram_below
        low_end = min(below, SHADOW_BASE)
        uc.mem_map_ptr(0, low_end, UC_PROT_ALL, ram_addr)
        if low_end < SHADOW_BASE:       # less than 768 KiB of RAM: a hole up to 0xC0000
            uc.mmio_map(low_end, SHADOW_BASE - low_end, _mmio_read, None, _mmio_write,
                        None)
        # shadow segments: 16 KiB each, 64 KiB at 0xF0000 (one PAM field each); the RAM
        # buffer has at least 1 MiB so that they exist with any -m, as QEMU's BIOS alias
        self._segments: list[tuple[int, int]] = []
        for base in range(0xC0000, 0xF0000, 0x4000):
            self._segments.append((base, 0x4000))
        self._segments.append((0xF0000, 0x10000))
        for base, size in self._segments:
            uc.mem_map_ptr(base, size, UC_PROT_READ | UC_PROT_EXEC, ram_addr + base)
        if below > 0x100000:
            uc.mem_map_ptr(0x100000, below - 0x100000, UC_PROT_ALL, ram_addr + 0x100000)
        if self.ram_above:
            uc.mem_map_ptr(FOUR_GIB, self.ram_above, UC_PROT_ALL, ram_addr + below)
        bios_size = len(self._bios_data)
        self.bios_base = FOUR_GIB - bios_size
        uc.mem_map_ptr(self.bios_base, bios_size, UC_PROT_READ | UC_PROT_EXEC,
                       _buffer_address(self._rom_mmap))
        # the holes: all ones on read, writes ignored
        hole_start = max(below, 0x100000)
        if hole_start < self.bios_base:
            uc.mmio_map(hole_start, self.bios_base - hole_start, _mmio_read, None,
                        _mmio_write, None)
        self.mmio_start = hole_start
        # unicorn still performs a store whose WRITE_PROT hook returns True: the hook
        # saves the bytes it will overwrite and stops the engine; service() puts them back
        # before the guest goes on (at the next translation-block start)
        self._undo_writes: list[tuple[memoryview, int, bytes]] = []
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_protected)

    def _on_write_protected(self, uc: Any, _access: int, address: int, size: int,
                            _value: int, _data: Any) -> bool:
        if 0xC0000 <= address < 0x100000:
            view, offset = self.ram, address
        elif address >= self.bios_base and address < FOUR_GIB:
            view, offset = self._rom_view, address - self.bios_base
        else:
            return True
        end = min(offset + size, len(view))
        self._undo_writes.append((view, offset, bytes(view[offset:end])))
        uc.emu_stop()
        return True

    def _undo_protected_writes(self) -> None:
        undo = self._undo_writes
        while undo:
            view, offset, old = undo.pop()
            view[offset:offset + len(old)] = old

    def _copy_bios_shadow(self) -> None:
        """The BIOS's last 128 KiB into the shadow RAM at 0xE0000 (what the isa-bios ROM
        alias shows there after power-on)."""
        isa = min(len(self._bios_data), 128 * KiB)
        self.ram[0x100000 - isa:0x100000] = self._bios_data[-isa:]

    def _on_pam(self, index: int, value: int) -> None:
        from unicorn import UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

        for base, size, mode in pam_segments(index, value):
            writable = bool(mode & 2)
            prot = UC_PROT_ALL if writable else UC_PROT_READ | UC_PROT_EXEC
            self._uc.mem_protect(base, size, prot)

    def dma_read(self, addr: int, size: int) -> bytes:
        """Bus-master reads of guest physical memory (RAM directly, else all ones)."""
        if addr + size <= self.ram_below:
            return bytes(self.ram[addr:addr + size])
        return self.physical_read(addr, size)

    def dma_write(self, addr: int, data: bytes) -> None:
        """Bus-master writes: RAM only (elsewhere dropped, as on an unassigned bus)."""
        end = addr + len(data)
        if end <= self.ram_below:
            self.ram[addr:end] = data
        elif addr >= FOUR_GIB and end <= FOUR_GIB + self.ram_above:
            off = self.ram_below + addr - FOUR_GIB
            self.ram[off:off + len(data)] = data

    def physical_read(self, addr: int, size: int) -> bytes:
        """Guest physical memory (xp): RAM and ROM, all ones elsewhere."""
        out = bytearray()
        end = addr + size
        while addr < end:
            n = min(end - addr, PAGE - (addr & (PAGE - 1)))
            try:
                out += bytes(self.cpu.uc.mem_read(addr, n))
            except Exception:  # noqa: BLE001 - unicorn: not RAM (MMIO or unmapped)
                out += b"\xff" * n
            addr += n
        return bytes(out)

    # ------------------------------------------------------------------ devices
    def _build_devices(self) -> None:
        from .devices import debugcon, i8042, pic, pit, port92, rtc, serial

        cfg = self.config
        bus, clock = self.bus, self.clock
        self.pic = pic.PicPair(bus, self._on_intr_change)
        self.pit = pit.Pit(bus, clock, self.pic.irq(0))
        bus.register(0x61, 1, self.pit.speaker_port_read, self.pit.speaker_port_write,
                     "pcspk")
        self.rtc = rtc.Rtc(bus, clock, self.pic.irq(8), cfg.ram_size, None)
        self._set_cmos_boot_order(cfg.boot_once or cfg.boot_order)
        self.port92 = port92.Port92(bus, self.cpu.set_a20, self._guest_reset)
        self.i8042 = i8042.I8042(bus, self.pic.irq(1), self.pic.irq(12), self._guest_reset,
                                 self.cpu.set_a20)
        # 0x80: POST code port (ignored as by QEMU's ioport80)
        bus.register(0x80, 1, lambda p, s: 0xFF, lambda p, s, v: None, "ioport80")
        self._build_pci()
        self._build_chardevs()
        self.serials: list[Any] = []
        for n, chr_ in enumerate(self._serial_chardevs[:4]):
            base, irq = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))[n]
            self.serials.append(serial.Serial16550(bus, base, self.pic.irq(irq), chr_,
                                                   post=self.post, clock=clock,
                                                   name=f"serial{n}"))
        self.debugcons = [debugcon.DebugCon(bus, chr_, iobase=port)
                          for chr_, port in self._debugcon_chardevs]
        # the monitors join after the serial ports: on a mon: multiplexer the serial port
        # keeps the input focus (chardev's rule), the state qemu -nographic starts in
        self._start_monitors()
        self.vga = None
        if cfg.vga == "std":
            from .devices import vga

            self.vga = vga.VgaText(self.ram, bus)

    def _set_cmos_boot_order(self, order: str) -> None:
        from .devices.rtc import set_boot_order

        try:
            set_boot_order(self.rtc, order[:3])
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _build_pci(self) -> None:
        from .devices import pci

        self.pci = pci.PciHost(self.bus)
        self.i440fx = self.pci.add(0, pci.I440fx(ram_size=self.config.ram_size,
                                                 on_pam=self._on_pam))
        from .devices import ide, piix

        nserial = len(self.config.serials)
        self.piix3 = piix.Piix3(self.pci, self.bus, self.pic.irq, self.clock.now_ns,
                                reset_request=self._guest_reset,
                                shutdown_request=self._guest_shutdown,
                                dma_read=self.dma_read, dma_write=self.dma_write,
                                com1=nserial >= 1, com2=nserial >= 2)
        self.ide = self.piix3.ide_controller
        for drive in self.drives:
            if drive.cfg.interface == "ide":
                try:
                    self.ide.attach(drive.cfg.bus, drive.cfg.unit, drive.node,
                                    cdrom=drive.cfg.media == "cdrom")
                except ide.IdeError as exc:     # e.g. a read-only disk: qemu's words
                    raise UsageError(str(exc)) from None
        from .devices import fw_cfg

        cfg = self.config
        self.fw_cfg = fw_cfg.FwCfg(self.bus, ram_size=cfg.ram_size, nographic=cfg.nographic,
                                   boot_menu=cfg.boot_menu,
                                   reboot_timeout=cfg.boot_reboot_timeout,
                                   dma_read=self.dma_read,
                                   dma_write=self.dma_write)
        if cfg.boot_menu and cfg.boot_splash_time is not None:
            self.fw_cfg.add_file("etc/boot-menu-wait",
                                 struct.pack("<H", cfg.boot_splash_time))
        if cfg.boot_strict:
            self.fw_cfg.set_bootorder(["HALT"])
        e820 = [(0, self.ram_below, 1)]
        if self.ram_above:
            e820.append((FOUR_GIB, self.ram_above, 1))
        # the AMD HyperTransport window QEMU 7.2 reserves for qemu64 (40 physical bits)
        e820.append((0xFD00000000, 0x300000000, 2))
        self.fw_cfg.add_file("etc/e820", fw_cfg.e820_table(e820))
        # QEMU hands SeaBIOS its own ACPI tables (128 KiB, allocated at the top of RAM)
        # through etc/table-loader, whose presence also makes SeaBIOS put the PIIX4 PM
        # block at 0x600. We build no tables: the loader only allocates an empty block,
        # SeaBIOS then builds its own PIIX4 tables (FADT, DSDT with _S5; 8 KiB) at the
        # same ports. The block is 8 KiB short of QEMU's so that the top 128 KiB of RAM
        # is reserved, and the e820 map the guest sees is QEMU's.
        tables = bytes(120 * KiB)
        loader = struct.pack("<I56sIB", 1, b"etc/acpi/tables", 64, 1).ljust(128, b"\0")
        self.fw_cfg.add_file("etc/acpi/tables", tables)
        if self.config.vga == "std":
            vgabios = self.config.find_file("vgabios-stdvga.bin")
            if vgabios is not None:
                with open(vgabios, "rb") as f:
                    self.fw_cfg.add_file("vgaroms/vgabios-stdvga.bin", f.read())
        self.fw_cfg.add_file("etc/table-loader", loader.ljust(4096, b"\0"))

    def _build_chardevs(self) -> None:
        from . import chardev as chardev_mod

        cfg = self.config
        self._serial_chardevs = []
        self._mux_monitors: list[Any] = []
        for opt in cfg.chardev_opts:
            try:
                opts = chardev_mod.parse_chardev_option(opt.spec)
                self._chardevs.append(chardev_mod.open_from_opts(opts))
            except chardev_mod.ChardevError as exc:
                raise UsageError(exc.message, opt.where) from None
        for n, ser in enumerate(cfg.serials):
            try:
                chr_ = chardev_mod.open_chardev(ser.spec, label=f"serial{n}")
            except chardev_mod.ChardevError as exc:
                lines = chardev_mod.error_lines("serial", ser.spec, exc)
                raise UsageError("\n".join(f"{PROG}: {line}" for line in lines),
                                 plain=True) from None
            if isinstance(chr_, chardev_mod.MuxChardev):
                mux = chr_
                chr_ = mux.frontend()
                if ser.spec.startswith("mon:"):
                    self._mux_monitors.append(mux)
                mux.on_quit = self._mux_quit
            self._serial_chardevs.append(chr_)
        self._debugcon_chardevs = []
        for n, (dcfg, port) in enumerate(cfg.debugcons):
            try:
                chr_ = chardev_mod.open_chardev(dcfg.spec, label=f"debugcon{n}")
            except chardev_mod.ChardevError as exc:
                raise UsageError(exc.message, dcfg.where) from None
            self._debugcon_chardevs.append((chr_, port))

    def _start_monitors(self) -> None:
        from . import chardev as chardev_mod
        from .monitor import server

        for mux in self._mux_monitors:
            server.attach_monitor(mux.frontend(), self, kind="hmp")
        for mon in self.config.monitors:
            kind = "qmp" if mon.mode == "control" else "hmp"
            try:
                server.start_monitor(mon.chardev.spec, self, kind=kind, pretty=mon.pretty)
            except chardev_mod.ChardevError as exc:
                lines = chardev_mod.error_lines(
                    "monitor" if kind == "hmp" else "qmp", mon.chardev.spec, exc)
                raise UsageError("\n".join(f"{PROG}: {line}" for line in lines),
                                 plain=True) from None

    # ------------------------------------------------------------------ interrupts
    def _on_intr_change(self) -> None:
        if self.pic.intr_pending():
            self.cpu.kick()
            self._wake()

    def _on_new_deadline(self) -> None:
        self._wake()

    def _wake(self) -> None:
        """Wake the CPU thread's HLT sleep and the kicker (a new deadline or IRQ)."""
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ cross-thread work
    def run_on_cpu_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the CPU thread (between guest instructions) and return its
        result; runs it directly when called there or when the CPU thread is gone."""
        if threading.get_ident() == self._cpu_tid or self._cpu_thread is None \
                or self._finished.is_set():
            return fn()
        box: list[Any] = []
        done = threading.Event()
        with self._cond:
            self._work.append((fn, box, done))
            self._cond.notify_all()
        self.cpu.kick()
        while not done.wait(0.05):
            if self._finished.is_set():
                with self._cond:
                    pending = any(item[2] is done for item in self._work)
                if pending:
                    return fn()
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[1] if len(box) > 1 else box[0]

    def post(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` for the CPU thread without waiting (serial input ...)."""
        with self._cond:
            self._work.append((fn, [], None))
            self._cond.notify_all()
        self.cpu.kick()

    def _run_work(self) -> None:
        while True:
            with self._cond:
                if not self._work:
                    return
                fn, box, done = self._work.popleft()
            try:
                result = fn()
                box.extend([None, result])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box.append(exc)
            if done is not None:
                done.set()

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the CPU thread (running, or paused with -S); the monitors open."""
        from .monitor import server

        server.monitors_ready()
        self.display = None
        if self.config.display == "curses":
            self._start_curses()
        if not self.config.start_paused:
            self.status = "running"
            self.clock.start()
        self._cpu_thread = threading.Thread(target=self._cpu_main, name="CPU 0/TCG",
                                            daemon=True)
        self._cpu_thread.start()
        self._kicker = threading.Thread(target=self._kicker_main, name="timer kicker",
                                        daemon=True)
        self._kicker.start()

    def _start_curses(self) -> None:
        from . import chardev as chardev_mod
        from .display import CursesDisplay, DisplayError

        if self.vga is None:
            raise UsageError(f"-display curses needs the VGA (-vga std) in {PROG}")
        # text consoles in qemu's order: the monitors' first, then the serial ports'
        labels = [c.get("label") for c in chardev_mod.chardev_info()]
        consoles = [chardev_mod.find(label) for label in labels]
        vcs = [c for c in consoles if getattr(c, "backend", "") == "vc"]
        vcs.sort(key=lambda c: 0 if c.label.startswith("compat_monitor") else 1)
        self.display = CursesDisplay(self.vga, consoles=vcs, on_key=self._display_key)
        try:
            self.display.start()
        except DisplayError as exc:
            self.display = None
            raise UsageError(exc.message, plain=True) from None

    def _display_key(self, key: str) -> None:
        from .keymap import key_to_scancodes

        codes = key_to_scancodes(key)
        if codes:
            self.post(lambda: self.i8042.key_input(codes))

    def stop(self) -> None:
        """Pause the guest (monitor ``stop``): the clock freezes; STOP event."""
        with self._cond:
            if self.status not in ("running",):
                return      # qemu's vm_stop: only a running VM stops (prelaunch stays)
            self._pause_request = True
            self._cond.notify_all()
        self.cpu.kick()
        if threading.get_ident() != self._cpu_tid:
            with self._cond:
                while self._pause_request and not self._finished.is_set():
                    self._cond.wait(0.05)

    def cont(self) -> None:
        """Resume (monitor ``cont``): RESUME event."""
        with self._cond:
            if self.status == "shutdown":
                # qemu: a guest that powered off (-no-shutdown) must be reset first
                raise QemuError("Resetting the Virtual Machine is required")
            if self.status not in ("paused", "prelaunch") or self._quit:
                return
            self.status = "running"
            self.clock.start()
            self._cond.notify_all()
        self.events.emit("RESUME")

    def system_reset(self) -> None:
        """Reset from the monitor: RESET event (guest false)."""
        with self._cond:
            self._reset_request = "host"
            self._cond.notify_all()
        self.cpu.kick()

    def _guest_reset(self) -> None:
        """A reset asked for by the guest (0xCF9, i8042 0xFE, port 0x92, triple fault)."""
        with self._cond:
            self._reset_request = "guest"
            self._cond.notify_all()
        self.cpu.kick()

    def _guest_shutdown(self) -> None:
        """ACPI power off (S5) by the guest: quit, or stop with -no-shutdown."""
        if self.config.no_shutdown:
            self.events.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            with self._cond:
                self._pause_request = True
                self._shutdown_pause = True
                self._cond.notify_all()
            self.cpu.kick()
            return
        self._request_shutdown("guest-shutdown", guest=True)

    def quit(self) -> None:
        """End the machine (monitor quit): SHUTDOWN event, exit status 0."""
        self._request_shutdown("host-qmp-quit", guest=False)

    def request_shutdown_signal(self) -> None:
        """SIGINT/SIGTERM/SIGHUP: SHUTDOWN (host-signal), exit status 0."""
        self._request_shutdown("host-signal", guest=False)

    def _mux_quit(self) -> None:
        """Ctrl-A x on a mon: multiplexer (the mux printed "QEMU: Terminated")."""
        self._request_shutdown("host-signal", guest=False, event=False)

    def _request_shutdown(self, reason: str, *, guest: bool, event: bool = True) -> None:
        with self._cond:
            if self._quit:
                return
            self._quit = True
            self._shutdown_reason = reason
            self._cond.notify_all()
        if event:
            self.events.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        try:
            self.cpu.kick()
        except Exception:  # noqa: BLE001
            pass
        if self._cpu_thread is None:
            self._finished.set()

    def wait(self) -> int:
        """Block until the machine ends; the exit status."""
        while not self._finished.wait(0.2):
            pass
        self._teardown()
        return self.exit_status

    def cpu_thread_id(self) -> int:
        """The CPU thread's native id (info cpus)."""
        return self._cpu_native_id if getattr(self, "_cpu_native_id", None) else os.getpid()

    # ------------------------------------------------------------------ run loop
    def _service(self) -> None:
        if self._undo_writes:
            self._undo_protected_writes()
        self._run_work()
        self.clock.run_expired()
        with self._cond:
            if self._quit or self._reset_request or self._pause_request \
                    or self.status != "running":
                self.cpu.kick()

    def _kicker_main(self) -> None:
        clock = self.clock
        while not self._finished.is_set():
            if self.cpu.irq_blocked and not self.cpu.halted and clock.running:
                # An interrupt waits for the guest to set IF again (STI, POPF, IRET run
                # inside the engine, unseen): look again every millisecond, or a timer
                # edge that comes meanwhile merges with the waiting one (a lost tick).
                time.sleep(0.001)
                if self.cpu.irq_blocked and not self.cpu.halted:
                    self.cpu.kick()
                continue
            with self._cond:
                if self._quit:
                    return
                deadline = clock.next_deadline() if clock.running else None
                if deadline is None or self.cpu.halted:
                    self._cond.wait(0.5)
                    continue
                delay = deadline - clock.now_ns()
                if delay > 0:
                    self._cond.wait(min(delay / 1e9, 0.5))
                    continue
            self.cpu.kick()
            time.sleep(0.0005)

    def _cpu_main(self) -> None:
        from .x86.cpu import StopReason

        self._cpu_tid = threading.get_ident()
        self._cpu_native_id = threading.get_native_id()
        cpu, pic = self.cpu, self.pic
        try:
            while True:
                self._run_work()
                if self._handle_requests():
                    break
                if self.status != "running":
                    with self._cond:
                        if not self._work and not self._quit and self._reset_request is None \
                                and self.status != "running":
                            self._cond.wait(0.5)
                    continue
                reason = cpu.run(pic.intr_pending, pic.acknowledge, self._service)
                if reason is StopReason.HALT:
                    self._halt_wait()
                elif reason is StopReason.SHUTDOWN:
                    self._log_write("Triple fault\n")
                    self._reset_request = "guest"
                elif reason is StopReason.ERROR:
                    sys.stderr.write(f"{PROG}: {cpu.error}\n")
                    try:
                        sys.stderr.write(cpu.format_registers())
                    except Exception:  # noqa: BLE001
                        pass
                    self.exit_status = 1
                    self._request_shutdown("guest-panic", guest=True, event=False)
        except BaseException as exc:  # noqa: BLE001 - reported, the machine ends
            sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
            self.exit_status = 1
            self._quit = True
        finally:
            self.status = "shutdown" if self._quit else self.status
            self._finished.set()
            with self._cond:
                self._cond.notify_all()

    def _halt_wait(self) -> None:
        clock = self.clock
        with self._cond:
            if self._work or self._quit or self._reset_request or self._pause_request:
                return
            deadline = clock.next_deadline()
            if deadline is None:
                self._cond.wait(0.5)
                return
            delay = deadline - clock.now_ns()
            if delay > 0:
                self._cond.wait(delay / 1e9)

    def _handle_requests(self) -> bool:
        """Act on quit/reset/pause; True when the machine must end."""
        if self._quit:
            return True
        if self._pause_request:
            with self._cond:
                self._pause_request = False
                self.status = "shutdown" if self._shutdown_pause else "paused"
                self._shutdown_pause = False
                self.clock.stop()
                self._cond.notify_all()
            self.events.emit("STOP")
        request = self._reset_request
        if request is not None:
            self._reset_request = None
            if request == "guest" and self.config.no_reboot:
                self.events.emit("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
                self._quit = True
                return True
            self._reset_machine()
            with self._cond:         # qemu: a reset of a VM that is not running
                if self.status != "running":        # leaves it in prelaunch
                    self.status = "prelaunch"
            reason = "guest-reset" if request == "guest" else "host-qmp-system-reset"
            self.events.emit("RESET", {"guest": request == "guest", "reason": reason})
        return False

    def _reset_machine(self) -> None:
        """qemu_system_reset: every device and the CPU back to their power-on state."""
        if "cpu_reset" in self.config.log_items:
            self._log_write("CPU Reset (CPU 0)\n" + self.cpu.format_registers())
        for dev in (self.pic, self.pit, self.rtc, self.port92, self.i8042, *self.serials,
                    self.pci):
            reset = getattr(dev, "reset", None)
            if reset is not None:
                reset()
        for dev in (self.fw_cfg, self.vga):
            reset = getattr(dev, "reset", None) if dev is not None else None
            if reset is not None:
                reset()
        if self.config.boot_once:
            # -boot once: only the first boot; every reset after it uses the order
            self._set_cmos_boot_order(self.config.boot_order)
        self._copy_bios_shadow()
        self.cpu.set_a20(True)
        self.cpu.reset()
        if self._multiboot is not None:
            self._multiboot.enter(self)

    # ------------------------------------------------------------------ teardown
    def _teardown(self) -> None:
        from . import chardev as chardev_mod
        from .monitor import server

        if getattr(self, "display", None) is not None:
            self.display.stop()
        server.close_all()
        chardev_mod.close_all()
        self._close_drives()
        if self._log is not sys.stderr and self._log is not None:
            self._log.close()

    def _log_write(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text)
            self._log.flush()

    # ------------------------------------------------------------------ monitor views
    def block_info(self) -> list[dict[str, Any]]:
        from .monitor.qmp import block_device_info

        out = []
        for drive in self.drives:
            c = drive.cfg
            out.append(block_device_info(
                drive.device_name, None, drive.node, removable=c.media == "cdrom",
                node_name=f"#block{len(out) * 100 + 1:03d}",
                read_only=c.readonly or c.media == "cdrom"))
        return out

    def chardev_info(self) -> list[dict[str, Any]]:
        from . import chardev as chardev_mod

        return chardev_mod.chardev_info()

    def mtree_text(self) -> str:
        """``info mtree``: the memory address space in QEMU's layout (the pci container
        with the VGA window, pc.rom, the isa-bios alias and pc.bios; the PAM aliases as
        the i440FX registers set them), then the port table. Only regions pyqemu has
        are listed: no ioapic, hpet or apic-msi."""
        def span(base: int, size: int) -> str:
            return f"{base:016x}-{base + size - 1:016x}"

        below = self.ram_below
        bios = len(self._bios_data)
        isa = min(bios, 128 * KiB)
        lines = ["address-space: memory",
                 "  0000000000000000-ffffffffffffffff (prio 0, i/o): system",
                 f"    {span(0, below)} (prio 0, ram): alias ram-below-4g @pc.ram "
                 f"{span(0, below)}"]
        if self.ram_above:
            lines.append(f"    {span(FOUR_GIB, self.ram_above)} (prio 0, ram): alias "
                         f"ram-above-4g @pc.ram {span(below, self.ram_above)}")
        lines += [
            "    0000000000000000-ffffffffffffffff (prio -1, i/o): pci",
            f"      {span(0xA0000, 0x20000)} (prio 1, i/o): vga-lowmem",
            f"      {span(0xC0000, 0x20000)} (prio 1, rom): pc.rom",
            f"      {span(0x100000 - isa, isa)} (prio 1, rom): alias isa-bios @pc.bios "
            f"{span(bios - isa, isa)}",
            f"      {span(self.bios_base, bios)} (prio 0, rom): pc.bios",
            f"    {span(0xA0000, 0x20000)} (prio 1, i/o): alias smram-region @pci "
            f"{span(0xA0000, 0x20000)}",
        ]
        modes: dict[int, int] = {}
        for index in range(7):
            for base, _size, mode in pam_segments(index, self.i440fx.pam(index)):
                modes[base] = mode
        for base, size in self._segments:
            mode = modes.get(base, 0)
            kind, name, target = (("i/o", "pam-pci", "pci"), ("ram", "pam-rom", "pc.ram"),
                                  ("ram", "pam-pci", "pc.ram"),
                                  ("ram", "pam-ram", "pc.ram"))[mode]
            lines.append(f"    {span(base, size)} (prio 1, {kind}): alias {name} "
                         f"@{target} {span(base, size)}")
        lines.append("")
        lines.append("address-space: I/O")
        lines.append("  0000000000000000-000000000000ffff (prio 0, i/o): io")
        for base, count, name in sorted(self.bus.describe()):
            lines.append(f"    {base:016x}-{base + count - 1:016x} (prio 0, i/o): {name}")
        return "\n".join(lines) + "\n\n"

    def qtree_text(self) -> str:
        lines = ["bus: main-system-bus", "  type System",
                 "  dev: i440FX-pcihost, id \"\"", "    bus: pci.0", "      type PCI"]
        names = {0: "i440FX"}
        for devfn, fn in sorted(self.pci.functions.items()):
            name = getattr(fn, "name", names.get(devfn, type(fn).__name__))
            lines.append(f"      dev: {name}, id \"\"")
            lines.append(f"        addr = {devfn >> 3:02x}.{devfn & 7}")
        for n, _ser in enumerate(self.serials):
            lines.append("  dev: isa-serial, id \"\"")
            lines.append(f"    index = {n} (0x{n:x})")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- helpers
def _mmio_read(uc: Any, offset: int, size: int, user_data: Any) -> int:
    return (1 << (size * 8)) - 1


def _mmio_write(uc: Any, offset: int, size: int, value: int, user_data: Any) -> None:
    return None


def _buffer_address(buf: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _tmpdir() -> str:
    return os.environ.get("TMPDIR", "/var/tmp")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_log(cfg: MachineConfig) -> Any:
    if cfg.log_file is None:
        return sys.stderr if cfg.log_items else None
    try:
        return open(cfg.log_file, "w")
    except OSError as exc:
        raise UsageError(f"Error opening logfile {cfg.log_file}: {exc.strerror}") from None
