"""qemu-system-x86_64 7.2's command-line scanner.

QEMU's own rules (softmmu/vl.c ``lookup_opt``): every option word starts with
one or two dashes (``-m`` and ``--m`` are the same), the name must match a
table entry exactly (no abbreviations, no ``-m=512``), an option with an
argument takes the next word whatever it looks like, and a word that does not
start with ``-`` is a disk image (``-hda``). Errors are located by the command
line words they came from: ``qemu-system-x86_64: -m foo: ...``.

The table lists every option qemu-system-x86_64 7.2 knows, so that an option
qemu knows but pyqemu does not implement gets a clear "not supported" error
instead of qemu's "invalid option" (or, worse, being ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyqemu.common.errors import QemuError

PROG = "pyqemu-system-x86_64"

# name -> takes an argument (qemu-options.hx for x86_64, 7.2)
QEMU_OPTIONS: dict[str, bool] = {
    # no argument
    **dict.fromkeys(
        "h help version S s snapshot nographic no-reboot no-shutdown daemonize "
        "enable-kvm usb portrait full-screen no-acpi no-hpet win2k-hack "
        "no-fd-bootchk singlestep preconfig xen-attach xen-domid-restrict "
        "only-migratable nodefaults no-user-config enable-sync-profile "
        "mem-prealloc audio-help async-teardown old-param".split(),
        False,
    ),
    # one argument
    **dict.fromkeys(
        "machine M cpu accel smp numa add-fd set global boot m mem-path k audio "
        "audiodev device name uuid fda fdb hda hdb hdc hdd cdrom blockdev drive "
        "mtdblock sd pflash fsdev virtfs virtfs_synth iscsi usbdevice display vga "
        "spice rotate vnc g acpitable smbios netdev nic net chardev tpmdev bios "
        "kernel append initrd dtb compat fw_cfg serial parallel monitor qmp "
        "qmp-pretty mon debugcon pidfile overcommit gdb d D dfilter seed L "
        "xen-domid action loadvm option-rom rtc icount watchdog-action echr "
        "incoming chroot runas sandbox readconfig trace plugin msg dump-vmstate "
        "object semihosting-config prom-env qtest qtest-log".split(),
        True,
    ),
}

# options qemu-system-x86_64 rejects with "Option not supported for this target"
OTHER_TARGET = frozenset("g prom-env old-param semihosting-config xen-domid-restrict".split())

# options pyqemu-system-x86_64 implements (the others get UNSUPPORTED)
SUPPORTED = frozenset(
    (
        "h help version S snapshot nographic no-reboot no-shutdown daemonize "
        "machine M cpu accel smp boot m name hda hdb hdc hdd cdrom drive display vga "
        "device chardev bios kernel append initrd serial monitor qmp qmp-pretty "
        "mon debugcon pidfile d D L nodefaults no-user-config enable-kvm net nic"
    ).split()
)


class UsageError(QemuError):
    """A bad command line: ``message`` is printed as ``prog: [where: ]message``."""

    def __init__(self, message: str, where: str | None = None, *, plain: bool = False) -> None:
        super().__init__(message)
        self.where = where
        self.plain = plain  # printed as is, without the program name

    def render(self) -> str:
        """The text qemu prints for this error (one or more lines, no newline at the end)."""
        if self.plain:
            return self.message
        if self.where:
            return f"{PROG}: {self.where}: {self.message}"
        return f"{PROG}: {self.message}"


@dataclass(frozen=True)
class Opt:
    """One option from the command line: name without dashes, its argument, and the
    words it came from (for error locations)."""

    name: str
    arg: str | None
    where: str


def scan(argv: list[str]) -> list[Opt]:
    """Split ``argv`` (without the program name) into options, in order.

    A word without a leading dash becomes ``Opt("hda", word, word)``, as in qemu.
    """
    result: list[Opt] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-":
            result.append(Opt("hda", word, word))
            continue
        name = word[2:] if word.startswith("--") else word[1:]
        if name not in QEMU_OPTIONS:
            raise UsageError("invalid option", word)
        if QEMU_OPTIONS[name]:
            if i >= len(argv):
                raise UsageError("requires an argument", word)
            arg = argv[i]
            i += 1
            where = f"{word} {arg}"
        else:
            arg = None
            where = word
        if name in OTHER_TARGET:
            raise UsageError("Option not supported for this target", where)
        if name not in SUPPORTED:
            raise UsageError(f"option '-{name}' is not supported by {PROG}", where)
        result.append(Opt(name, arg, where))
        if name in ("h", "help", "version"):
            break  # qemu acts on these as it reaches them: later words are not read
    return result
