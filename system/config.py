"""What the command line asks of the machine: plain data, no devices.

The CLI (system/cli.py) fills a :class:`MachineConfig`; the machine
(system/machine.py) builds the PC from it. Keeping the record here lets the
CLI, the monitor and the tests import it without importing unicorn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MiB = 1 << 20
DEFAULT_RAM = 128 * MiB
# Debian's qemu-system-x86 is built with this firmware path (qemu -L help lists it)
SYSTEM_DATA_DIRS = ["/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"]


@dataclass
class DriveConfig:
    """One -drive / -hda / -cdrom."""

    file: str | None
    where: str                      # the command-line words, for error messages
    format: str | None = None
    interface: str = "ide"
    index: int | None = None
    bus: int | None = None
    unit: int | None = None
    media: str = "disk"             # disk | cdrom
    snapshot: bool = False
    readonly: bool = False


@dataclass
class ChardevConfig:
    """A character backend in the spec form system/chardev.open_chardev takes."""

    spec: str
    where: str


@dataclass
class MonitorConfig:
    """A -monitor / -qmp / -mon: its chardev and mode."""

    chardev: ChardevConfig
    mode: str = "readline"          # readline (HMP) | control (QMP)
    pretty: bool = False


@dataclass
class MachineConfig:
    """Everything the pc machine needs from the command line."""

    ram_size: int = DEFAULT_RAM
    bios: str = "bios-256k.bin"
    data_dirs: list[str] = field(default_factory=list)   # -L, in order, before the system's
    drives: list[DriveConfig] = field(default_factory=list)
    boot_order: str = "cad"
    boot_once: str | None = None
    boot_menu: bool = False
    boot_strict: bool = False
    boot_splash_time: int | None = None   # ms: fw_cfg etc/boot-menu-wait
    boot_reboot_timeout: int = -1         # ms: fw_cfg etc/boot-fail-wait (-1: never)
    kernel: str | None = None
    append: str = ""
    initrd: str | None = None
    chardev_opts: list[ChardevConfig] = field(default_factory=list)   # -chardev, as given
    serials: list[ChardevConfig] = field(default_factory=list)
    monitors: list[MonitorConfig] = field(default_factory=list)
    debugcons: list[tuple[ChardevConfig, int]] = field(default_factory=list)  # (chardev, port)
    start_paused: bool = False
    no_reboot: bool = False
    no_shutdown: bool = False
    name: str | None = None
    display: str = "none"           # none | curses
    nographic: bool = False         # fw_cfg NOGRAPHIC: SeaBIOS then uses the serial console
    vga: str = "std"                # std | none
    cpu_model: str = "qemu64"
    log_items: list[str] = field(default_factory=list)
    log_file: str | None = None
    daemonize: bool = False
    pidfile: str | None = None

    def search_path(self) -> list[str]:
        """Directories searched for firmware: -L first, then the system's."""
        return [*self.data_dirs, *SYSTEM_DATA_DIRS]

    def find_file(self, name: str) -> str | None:
        """qemu_find_file: the name as a path if readable, else in the data dirs."""
        if os.access(name, os.R_OK):
            return name
        for directory in self.search_path():
            path = os.path.join(directory, name)
            if os.access(path, os.R_OK):
                return path
        return None
