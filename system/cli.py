"""pyqemu-system-x86_64's command line: qemu-system-x86_64 7.2's options and messages.

``run(argv)`` scans the words (system/options.py), turns them into a
:class:`~pyqemu.system.config.MachineConfig`, answers the ``help`` queries
(-machine help, -cpu help, -device help, -d help, -L help), then builds the pc
machine and runs it until the guest or the monitor ends it. Every error is one of
qemu's messages with our program name, exit status 1.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pyqemu.common.errors import QemuError
from pyqemu.common.options import OptionError, parse_bool, parse_opts
from pyqemu.common.sizes import parse_size

from .config import (
    DEFAULT_RAM,
    ChardevConfig,
    DriveConfig,
    MachineConfig,
    MonitorConfig,
)
from .options import PROG, Opt, UsageError, scan

VERSION_TEXT = (
    "QEMU emulator version 7.2.22 (pyqemu)\n"
    "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
)

HELP_TEXT = f"""\
usage: {PROG} [options] [disk_image]

'disk_image' is a raw hard disk image for IDE hard disk 0

Standard options:
-h or -help     display this help and exit
-version        display version information and exit
-machine [type=]name[,prop[=value][,...]]
                selects emulated machine ('-machine help' for list)
                property accel=tcg selects the accelerator (tcg only)
-cpu cpu        select CPU ('-cpu help' for list)
-accel [accel=]accelerator
                select accelerator (tcg only)
-smp [cpus=]1   one CPU only
-boot [order=drives][,once=drives][,menu=on|off][,strict=on|off]
                'drives': floppy (a), hard disk (c), CD-ROM (d), network (n)
-m [size=]megs  configure guest RAM size
-L path         set the directory for the BIOS, VGA BIOS and keymaps
-name string1   set the name of the guest
-device help    list the devices that exist

Block device options:
-hda/-hdb file  use 'file' as hard disk 0/1 image
-hdc/-hdd file  use 'file' as hard disk 2/3 image
-cdrom file     use 'file' as CD-ROM image
-drive [file=file][,if=ide][,bus=n][,unit=m][,media=disk|cdrom][,index=i]
       [,snapshot=on|off][,readonly=on|off][,format=f][,cache=...][,aio=...]
                use 'file' as a drive image
-snapshot       write to temporary files instead of disk image files

Display options:
-display none|curses
                select display backend type (curses shows the VGA text screen)
-nographic      disable graphical output and redirect serial I/Os to console
-vga [std|none] select video card type (std: text mode only)

Boot Image or Kernel specific:
-bios file      set the filename for the BIOS
-kernel file    use 'file' as kernel image (Multiboot)
-append cmdline use 'cmdline' as kernel command line
-initrd file    use 'file' as initial ram disk (a Multiboot module)

Debug/Expert options:
-chardev backend,id=id[,...]
                configure a character device (null, stdio, file, pty, socket)
-serial dev     redirect the serial port to char device 'dev'
-monitor dev    redirect the monitor to char device 'dev'
-qmp dev        like -monitor but opens in 'control' mode
-qmp-pretty dev like -qmp but uses pretty JSON formatting
-mon [chardev=]name[,mode=readline|control][,pretty=on|off]
-debugcon dev   redirect the debug console (port 0x402) to char device 'dev'
-pidfile file   write PID to 'file'
-S              freeze CPU at startup (use 'c' to start execution)
-d item1,...    enable logging of specified items (use '-d help' for a list of log items)
-D logfile      output log to logfile (default stderr)
-no-reboot      exit instead of rebooting
-no-shutdown    stop before shutdown
-daemonize      daemonize QEMU after initializing

During emulation, the following keys are useful:
ctrl-alt-f      toggle full screen
ctrl-alt-n      switch to virtual console 'n'
ctrl-alt        toggle mouse and keyboard grab

When using -nographic, press 'ctrl-a h' to get some help.
"""

MACHINE_HELP = """\
Supported machines are:
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
"""
MACHINE_NAMES = ("pc", "pc-i440fx-7.2")

CPU_HELP = """\
Available CPUs:
x86 qemu64                (alias configured by machine type)
x86 qemu64-v1             QEMU Virtual CPU version 2.5+
"""
CPU_NAMES = ("qemu64", "qemu64-v1")

# -device help: the devices the pc machine has, in qemu's categories and words
DEVICE_HELP = """\
Storage devices:
name "ide-cd", bus IDE, desc "virtual IDE CD-ROM"
name "ide-hd", bus IDE, desc "virtual IDE disk"
name "piix3-ide", bus PCI

Input devices:
name "i8042", bus ISA
name "isa-serial", bus ISA

Display devices:
name "VGA", bus PCI

Misc devices:
name "isa-debugcon", bus ISA
name "mc146818rtc", bus ISA

"""

LOG_HELP = """\
Log items (comma separated):
cpu_reset       show CPU state before CPU resets
unimp           log unimplemented functionality
guest_errors    log when the guest OS does something invalid (eg accessing a
non-existent register)
"""
LOG_ITEMS = ("cpu_reset", "unimp", "guest_errors")

SIZE_ERROR = (
    "Parameter 'size' expects a non-negative number below 2^64\n"
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)

BOOT_DEVICES = "abcdefghijklmnop"   # pc: a-b floppy, c-f disks, n-p network


class Exit(Exception):
    """Leave run() with this status after printing (help texts)."""

    def __init__(self, status: int, out: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.out = out


def _opts(opt: Opt, implied: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """Parse ``opt.arg`` as QemuOpts; unknown keys get qemu's 'Invalid parameter'."""
    try:
        values = parse_opts(opt.arg or "", implied)
    except OptionError as exc:
        raise UsageError(exc.message, opt.where) from None
    for key in values:
        if key not in allowed:
            raise UsageError(f"Invalid parameter '{key}'", opt.where)
    return values


def _bool(value: str, name: str, where: str | None) -> bool:
    try:
        return parse_bool(value, name)
    except OptionError as exc:
        raise UsageError(exc.message, where) from None


def _parse_memory(opt: Opt) -> int:
    values = _opts(opt, "size", ("size", "slots", "maxmem"))
    if "slots" in values or "maxmem" in values:
        raise UsageError("memory hotplug (slots, maxmem) is not supported", opt.where)
    text = values.get("size", "")
    try:
        size = parse_size(text, "m" if text[-1:].isdigit() else "b")
    except (ValueError, OverflowError):
        raise UsageError(SIZE_ERROR, opt.where) from None
    if size == 0:
        size = DEFAULT_RAM     # qemu: "-m 0" keeps the default
    size = (size + 8191) & ~8191
    return size


def _check_boot_devices(devices: str) -> None:
    for ch in devices:
        if ch not in BOOT_DEVICES:
            raise UsageError(f"Invalid boot device '{ch}'")
    for i, ch in enumerate(devices):
        if ch in devices[i + 1 :]:
            raise UsageError(f"Boot device '{ch}' was given twice")


def _parse_boot(opt: Opt, cfg: MachineConfig) -> None:
    try:
        values = parse_opts(opt.arg or "", "order")
    except OptionError as exc:
        raise UsageError(exc.message, opt.where) from None
    for key in values:
        if key not in ("order", "once", "menu", "strict", "splash", "splash-time",
                       "reboot-timeout"):
            raise UsageError(f"Parameter 'boot.{key}' is unexpected")
    if "order" in values:
        _check_boot_devices(values["order"])
        cfg.boot_order = values["order"]
    if "once" in values:
        _check_boot_devices(values["once"])
        cfg.boot_once = values["once"]
    if "menu" in values:
        cfg.boot_menu = _bool(values["menu"], "boot.menu", None)
    if "strict" in values:
        cfg.boot_strict = _bool(values["strict"], "boot.strict", None)
    for key in ("splash-time", "reboot-timeout"):
        if key in values:
            try:
                number = int(values[key], 0)
            except ValueError:
                raise UsageError(f"Parameter 'boot.{key}' expects integer") from None
            if key == "splash-time":
                if not 0 <= number <= 0xFFFF:
                    raise UsageError("splash-time is invalid,it should be a value "
                                     "between 0 and 65535")
                cfg.boot_splash_time = number
            else:
                if not -1 <= number <= 0xFFFF:
                    raise UsageError("reboot timeout is invalid,it should be a value "
                                     "between -1 and 65535")
                cfg.boot_reboot_timeout = number


_DRIVE_KEYS = (
    "file", "format", "if", "index", "bus", "unit", "media", "snapshot", "readonly",
    "read-only", "cache", "aio", "id", "werror", "rerror", "discard", "detect-zeroes",
    "cache.direct", "cache.no-flush",
)


def _parse_drive(opt: Opt, global_snapshot: bool) -> DriveConfig:
    try:
        values = parse_opts(opt.arg or "", "file")
    except OptionError as exc:
        raise UsageError(exc.message, opt.where) from None
    for key in values:
        if key not in _DRIVE_KEYS:
            fmt = values.get("format", "raw")
            raise UsageError(f"Block format '{fmt}' does not support the option '{key}'",
                             opt.where)
    drive = DriveConfig(file=values.get("file"), where=opt.where,
                        format=values.get("format"), snapshot=global_snapshot)
    iface = values.get("if", "ide")
    if iface not in ("ide", "none", "scsi", "floppy", "pflash", "mtd", "sd", "virtio",
                     "xen"):
        raise UsageError(f"unsupported bus type '{iface}'", opt.where)
    if iface not in ("ide", "none"):
        raise UsageError(f"if={iface} is not supported by {PROG} (ide only)", opt.where)
    drive.interface = iface
    media = values.get("media", "disk")
    if media not in ("disk", "cdrom"):
        raise UsageError(f"'{media}' invalid media", opt.where)
    drive.media = media
    for key in ("index", "bus", "unit"):
        if key in values:
            try:
                setattr(drive, key, int(values[key], 0))
            except ValueError:
                raise UsageError(f"Parameter '{key}' expects a number", opt.where) from None
    if "snapshot" in values:
        drive.snapshot = _bool(values["snapshot"], "snapshot", opt.where)
    for key in ("readonly", "read-only"):
        if key in values:
            drive.readonly = _bool(values[key], "read-only", opt.where)
    if media == "cdrom":
        drive.readonly = True
    return drive


def _assign_drive_slots(drives: list[DriveConfig]) -> None:
    """qemu's drive_new: index, or bus/unit, or the next free slot on the IDE buses."""
    used: set[tuple[int, int]] = set()
    for drive in drives:
        if drive.interface == "none":
            continue
        if drive.index is not None:
            if drive.bus is not None or drive.unit is not None:
                raise UsageError("index cannot be used with bus and unit", drive.where)
            bus, unit = divmod(drive.index, 2)
        else:
            bus = drive.bus if drive.bus is not None else 0
            if drive.unit is not None:
                unit = drive.unit
            else:
                unit = 0
                while (bus, unit) in used:
                    unit += 1
                    if unit == 2 and drive.bus is None:
                        bus, unit = bus + 1, 0
        if unit > 1:
            raise UsageError(f"unit {unit} too big (max is 1)", drive.where)
        if (bus, unit) in used:
            raise UsageError(
                f"drive with bus={bus}, unit={unit} (index={bus * 2 + unit}) exists",
                drive.where,
            )
        if bus > 1:
            raise UsageError(
                f"machine type does not support if=ide,bus={bus},unit={unit}", drive.where
            )
        used.add((bus, unit))
        drive.bus, drive.unit, drive.index = bus, unit, bus * 2 + unit


def _chardev_id(opt: Opt) -> str:
    """Check a -chardev option as qemu does at parse time; return its id."""
    from .chardev import ChardevError, parse_chardev_option

    try:
        values = parse_chardev_option(opt.arg or "")
    except ChardevError as exc:
        raise UsageError(exc.message, opt.where) from None
    ident = values.get("id")
    if not ident:
        raise UsageError("chardev: no id specified", opt.where)
    return ident


_NET_TYPES = ("none", "nic", "user", "tap", "l2tpv3", "socket", "stream", "dgram", "vde",
              "bridge", "hubport", "netmap", "vhost-user", "vhost-vdpa")

# options that only store their argument, or only set a flag, in the SystemConfig
_CFG_STRINGS = {"bios": "bios", "kernel": "kernel", "append": "append", "initrd": "initrd",
                "pidfile": "pidfile", "D": "log_file"}
_CFG_FLAGS = {"S": "start_paused", "no-reboot": "no_reboot", "no-shutdown": "no_shutdown",
              "daemonize": "daemonize"}
_ACCELS = ("kvm", "xen", "hax", "hvf", "nvmm", "whpx", "tcg")


def _check_accels(accels: list[str], shown: str) -> None:
    """-accel / -machine accel=: every name known to qemu, and tcg among them."""
    for accel in accels:
        if accel not in _ACCELS:
            raise UsageError(f"invalid accelerator {accel}")
    if "tcg" not in accels:
        raise UsageError(f"accelerator '{shown}' is not supported by {PROG} (tcg only)")


def _debugcon_device(opt: Opt, chardevs: dict[str, str]) -> tuple[ChardevConfig, int]:
    """-device isa-debugcon[,iobase=N][,chardev=ID][,readback=N]."""
    try:
        values = parse_opts(opt.arg or "", "driver")
    except OptionError as exc:
        raise UsageError(exc.message, opt.where) from None
    values.pop("driver", None)
    iobase = 0xE9
    for key, value in values.items():
        if key in ("iobase", "readback"):
            try:
                number = int(value, 0)
            except ValueError:
                raise UsageError(f"Parameter '{key}' expects integer", opt.where) from None
            if key == "iobase":
                iobase = number
        elif key == "chardev":
            if value not in chardevs:
                raise UsageError(f"Property 'isa-debugcon.chardev' can't find value "
                                 f"'{value}'", opt.where)
        elif key != "id":
            raise UsageError(f"Property 'isa-debugcon.{key}' not found", opt.where)
    spec = f"chardev:{values['chardev']}" if "chardev" in values else "null"
    return ChardevConfig(spec, opt.where), iobase


def parse_command_line(argv: list[str]) -> MachineConfig:
    """Turn qemu-system-x86_64's command line into a MachineConfig (or raise
    UsageError / Exit)."""
    opts = scan(argv)
    cfg = MachineConfig()
    nographic = False
    display: str | None = None
    chardevs: dict[str, str] = {}
    serial_specs: list[tuple[str, str]] = []
    monitor_specs: list[tuple[str, str, str, bool]] = []   # (spec, where, mode, pretty)
    mon_refs: list[tuple[Opt, str, str, bool]] = []
    debugcon: tuple[str, str] | None = None
    debugcon_devices: list[Opt] = []
    global_snapshot = any(o.name == "snapshot" for o in opts)
    drive_opts: list[DriveConfig] = []
    nodefaults = False
    want_help: list[str] = []
    device_help = False

    for opt in opts:
        name, arg = opt.name, opt.arg or ""
        if name in ("h", "help"):
            raise Exit(0, VERSION_TEXT + HELP_TEXT)
        if name == "version":
            raise Exit(0, VERSION_TEXT)
        if name in ("machine", "M"):
            values = parse_opts(arg, "type")
            mtype = values.pop("type", None)
            if mtype == "help":
                want_help.append("machine")
                continue
            if mtype is not None and mtype not in MACHINE_NAMES:
                raise UsageError("unsupported machine type\nUse -machine help to list "
                                 "supported machines")
            for key, value in values.items():
                if key == "accel":
                    _check_accels(value.split(":"), value)
                elif key in ("vmport", "dump-guest-core", "mem-merge", "usb", "graphics",
                             "kernel-irqchip", "smm", "hpet", "pit", "sata", "acpi"):
                    pass   # accepted; the pc machine has one configuration
                else:
                    raise UsageError(f"Property 'pc-i440fx-7.2-machine.{key}' not found")
        elif name == "accel":
            values = parse_opts(arg, "accel")
            accel = values.get("accel", "")
            if accel == "help":
                raise Exit(0, "Accelerators supported in QEMU binary:\ntcg\n")
            _check_accels([accel], accel)
        elif name == "enable-kvm":
            raise UsageError(f"KVM is not supported by {PROG} (tcg only)", opt.where)
        elif name in _CFG_STRINGS:
            setattr(cfg, _CFG_STRINGS[name], arg)
        elif name in _CFG_FLAGS:
            setattr(cfg, _CFG_FLAGS[name], True)
        elif name == "cpu":
            model = arg.split(",")[0]
            if model == "help":
                want_help.append("cpu")
                continue
            if model not in CPU_NAMES:
                raise UsageError(f"unable to find CPU model '{model}'")
            if "," in arg:
                raise UsageError(f"CPU features are not supported by {PROG}", opt.where)
            cfg.cpu_model = model
        elif name == "smp":
            values = _opts(opt, "cpus", ("cpus", "maxcpus", "sockets", "dies", "clusters",
                                         "cores", "threads"))
            for key, value in values.items():
                if value != "1":
                    raise UsageError(f"{PROG} emulates one CPU: {key}={value} is not "
                                     "supported", opt.where)
        elif name == "m":
            cfg.ram_size = _parse_memory(opt)
        elif name == "boot":
            _parse_boot(opt, cfg)
        elif name == "L":
            if arg == "help":
                raise Exit(0, "".join(d + "\n" for d in cfg.search_path()))
            cfg.data_dirs.append(arg)
        elif name == "name":
            values = _opts(opt, "guest", ("guest", "process", "debug-threads"))
            cfg.name = values.get("guest")
        elif name in ("hda", "hdb", "hdc", "hdd"):
            drive_opts.append(DriveConfig(file=arg, where=opt.where,
                                          index="abcd".index(name[2]),
                                          snapshot=global_snapshot))
        elif name == "cdrom":
            drive_opts.append(DriveConfig(file=arg, where=opt.where, index=2,
                                          media="cdrom", readonly=True,
                                          snapshot=global_snapshot))
        elif name == "drive":
            drive_opts.append(_parse_drive(opt, global_snapshot))
        elif name == "snapshot":
            pass
        elif name == "nographic":
            nographic = True
        elif name == "display":
            values = parse_opts(arg, "type")
            dtype = values.get("type", "")
            if dtype == "help":
                raise Exit(0, "Available display backend types:\nnone\ncurses\n")
            if dtype not in ("none", "curses", "gtk", "sdl", "vnc", "egl-headless",
                             "spice-app", "dbus", "default"):
                raise UsageError(f"Parameter 'type' does not accept value '{dtype}'",
                                 opt.where)
            if dtype not in ("none", "curses"):
                raise UsageError(f"Display '{dtype}' is not available.")
            display = dtype
        elif name == "vga":
            if arg not in ("std", "cirrus", "vmware", "qxl", "xenfb", "tcx", "cg3",
                           "virtio", "none"):
                raise UsageError(f"unknown vga type: {arg}")
            if arg not in ("std", "none"):
                raise UsageError(f"-vga {arg} is not supported by {PROG} (std, none)")
            cfg.vga = arg
        elif name == "device":
            driver = arg.split(",")[0]
            if driver.startswith("driver="):
                driver = driver[len("driver="):]
            if driver == "help":
                device_help = True
                continue
            if driver == "isa-debugcon":
                debugcon_devices.append(opt)
                continue
            if f'name "{driver}"' in DEVICE_HELP:
                raise UsageError(f"the pc machine has its own {driver}; adding devices "
                                 f"with -device is not supported by {PROG}", opt.where)
            raise UsageError(f"'{driver}' is not a valid device model name", opt.where)
        elif name == "chardev":
            if arg == "help":
                raise Exit(0, "Available chardev backend types: \n  null\n  stdio\n"
                              "  file\n  pty\n  socket\n")
            ident = _chardev_id(opt)
            if ident in chardevs:
                raise UsageError(f"Duplicate ID '{ident}' for chardev", opt.where)
            chardevs[ident] = opt.arg or ""
            cfg.chardev_opts.append(ChardevConfig(opt.arg or "", opt.where))
        elif name == "serial":
            serial_specs.append((arg, opt.where))
        elif name in ("monitor", "qmp", "qmp-pretty"):
            mode = "readline" if name == "monitor" else "control"
            monitor_specs.append((arg, opt.where, mode, name == "qmp-pretty"))
        elif name == "mon":
            values = _opts(opt, "chardev", ("chardev", "mode", "pretty", "id"))
            mode = values.get("mode", "readline")
            if mode not in ("readline", "control"):
                raise UsageError(f"unknown monitor mode '{mode}'", opt.where)
            pretty = _bool(values.get("pretty", "off"), "pretty", opt.where)
            mon_refs.append((opt, values.get("chardev", ""), mode, pretty))
        elif name == "debugcon":
            debugcon = (arg, opt.where)
        elif name in ("net", "nic"):
            ntype = parse_opts(arg, "type").get("type", "")
            if ntype not in _NET_TYPES:
                raise UsageError(f"Parameter 'type' does not accept value '{ntype}'",
                                 opt.where)
            if ntype != "none":
                raise UsageError(f"networking is not supported by {PROG} (-{name} none "
                                 "only)", opt.where)
        elif name == "d":
            items = [i for i in arg.split(",") if i]
            if any(i not in LOG_ITEMS for i in items) or not items:
                raise Exit(1, LOG_HELP)
            cfg.log_items = items
        elif name == "nodefaults":
            nodefaults = True
        elif name == "no-user-config":
            pass
        else:  # pragma: no cover - options.SUPPORTED and this chain are kept in step
            raise UsageError(f"option '-{name}' is not supported by {PROG}", opt.where)

    if "machine" in want_help:
        raise Exit(0, MACHINE_HELP)
    if "cpu" in want_help:
        raise Exit(0, CPU_HELP)
    if device_help:
        raise Exit(0, DEVICE_HELP)
    if nographic and cfg.daemonize:
        raise UsageError("-nographic cannot be used with -daemonize")
    if display == "curses" and nographic:
        raise UsageError("-nographic and -display curses cannot be used together")
    cfg.display = display or "none"
    cfg.nographic = nographic
    if cfg.kernel is None:
        if cfg.append:
            raise UsageError("-append only allowed with -kernel option")
        if cfg.initrd is not None:
            raise UsageError("-initrd only allowed with -kernel option")

    # chardevs: -serial / -monitor / -qmp take a spec or chardev:ID
    def resolve(spec: str, where: str) -> ChardevConfig | None:
        if spec == "none":
            return None
        if spec.startswith("chardev:"):
            ident = spec[len("chardev:"):]
            if ident not in chardevs:
                raise UsageError(f"could not connect serial device to character backend "
                                 f"'{spec}'", where)
        return ChardevConfig(spec, where)

    default_serial = not serial_specs and not nodefaults
    default_monitor = not monitor_specs and not mon_refs and not nodefaults
    for spec, where in serial_specs:
        chardev = resolve(spec, where)
        if chardev is not None:
            cfg.serials.append(chardev)
    for spec, where, mode, pretty in monitor_specs:
        chardev = resolve(spec, where)
        if chardev is not None:
            cfg.monitors.append(MonitorConfig(chardev, mode, pretty))
    for opt, ident, mode, pretty in mon_refs:
        if ident not in chardevs:
            raise UsageError(f'chardev "{ident}" not found', opt.where)
        cfg.monitors.append(MonitorConfig(ChardevConfig("chardev:" + ident, opt.where),
                                          mode, pretty))
    if nographic:
        if default_serial and default_monitor:
            cfg.serials.append(ChardevConfig("mon:stdio", "-nographic"))
        elif default_serial:
            cfg.serials.append(ChardevConfig("stdio", "-nographic"))
        elif default_monitor:
            cfg.monitors.append(MonitorConfig(ChardevConfig("stdio", "-nographic")))
    else:
        # qemu's defaults without -nographic: serial and monitor on text consoles (shown
        # by -display curses: Esc-2 the monitor, Esc-3 the serial port)
        if default_serial:
            cfg.serials.append(ChardevConfig("vc:80Cx24C", "-serial vc:80Cx24C"))
        if default_monitor:
            cfg.monitors.append(MonitorConfig(ChardevConfig("vc:80Cx24C",
                                                            "-monitor vc:80Cx24C")))
    if debugcon is not None:
        chardev = resolve(*debugcon)
        if chardev is not None:
            cfg.debugcons.append((chardev, 0xE9))     # qemu's -debugcon: port 0xe9
    for opt in debugcon_devices:
        cfg.debugcons.append(_debugcon_device(opt, chardevs))
    # qemu opens the monitors first, then the serial ports: the second user of stdio
    # fails, with the serial port's extra line
    users = [(m.chardev, "monitor") for m in cfg.monitors] + \
        [(c, "serial") for c in cfg.serials]
    stdio_seen = False
    for chardev, kind in users:
        if chardev.spec not in ("stdio", "mon:stdio"):
            continue
        where = chardev.where if chardev.where != "-nographic" else "-serial mon:stdio"
        problem = None
        if cfg.daemonize:
            problem = "cannot use stdio with -daemonize"
        elif stdio_seen:
            problem = "cannot use stdio by multiple character devices"
        stdio_seen = True
        if problem is not None:
            lines = [f"{PROG}: {where}: {problem}"]
            if kind == "serial":
                lines.append(f"{PROG}: {where}: could not connect serial device to "
                             f"character backend '{chardev.spec}'")
            raise UsageError("\n".join(lines), plain=True)

    _assign_drive_slots(drive_opts)
    if not nodefaults and not any(d.index == 2 for d in drive_opts):
        # qemu's default_cdrom: an empty IDE CD-ROM drive at index 2 (ide1-cd0)
        drive_opts.append(DriveConfig(file=None, where="", index=2, bus=1, unit=0,
                                      media="cdrom", readonly=True))
    cfg.drives = drive_opts
    return cfg


def run(argv: list[str]) -> int:
    """Run pyqemu-system-x86_64; return the exit status."""
    try:
        cfg = parse_command_line(argv)
    except Exit as done:
        sys.stdout.write(done.out)
        sys.stdout.flush()
        return done.status
    except UsageError as exc:
        sys.stderr.write(exc.render() + "\n")
        return 1
    except QemuError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        return 1
    from .machine import PcMachine

    if cfg.pidfile is not None:
        cfg.pidfile = os.path.abspath(cfg.pidfile)
    ready_fd = _daemonize() if cfg.daemonize else None
    try:
        machine = PcMachine(cfg)
    except UsageError as exc:
        sys.stderr.write(exc.render() + "\n")
        return 1
    except QemuError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, never a traceback
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        return 1

    def on_signal(signum: int, _frame: Any) -> None:
        # qemu: "terminating on signal N", then a normal shutdown (exit status 0)
        sys.stderr.write(f"{PROG}: terminating on signal {signum}\n")
        machine.request_shutdown_signal()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        if cfg.pidfile is not None:
            _write_pidfile(cfg.pidfile)
        machine.start()
        if ready_fd is not None:
            _daemon_ready(ready_fd)
            ready_fd = None
        return machine.wait()
    except UsageError as exc:
        sys.stderr.write(exc.render() + "\n")
        machine.quit()
        return 1
    except QemuError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        machine.quit()
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, never a traceback
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        machine.quit()
        return 1
    finally:
        if ready_fd is not None:
            os.write(ready_fd, b"\1")    # start-up failed: the parent exits with 1
        if cfg.pidfile is not None:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass


def _daemonize() -> int:
    """qemu's os_daemonize: the parent waits for the child's start-up verdict (one byte
    on a pipe) and exits with it; the child goes on in a new session. Runs before any
    thread exists."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        verdict = os.read(read_fd, 1)
        os._exit(0 if verdict == b"\0" else 1)
    os.close(read_fd)
    os.setsid()
    return write_fd


def _daemon_ready(write_fd: int) -> None:
    """Start-up done: tell the parent, detach from the terminal (stdio to /dev/null)."""
    os.write(write_fd, b"\0")
    os.close(write_fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")


def _write_pidfile(path: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise UsageError(f"cannot create PID file: Could not create '{path}': "
                         f"{exc.strerror}") from None
