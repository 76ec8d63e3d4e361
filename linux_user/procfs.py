"""/proc views that show the guest, not the emulator.

qemu-user 7.2 fakes a few files of ``/proc/self`` (and ``/proc/<its pid>``) when the
guest opens them (``do_guest_openat``): ``maps``, ``stat``, ``auxv`` and ``cmdline``;
``/proc/self/exe`` is the guest program. pyqemu does the same, and also describes the
guest CPU in ``/proc/cpuinfo`` (qemu-arm 7.2 passes the host's file through, which
for an x86-64 host describes the wrong CPU entirely): one block per host CPU the
guest may run on, in the layout a real ARMv7 or AArch64 Linux prints, with the
``Features`` named from the AT_HWCAP/AT_HWCAP2 bits pyqemu advertises (so a program
that reads its features from either source gets the same answer).

Each view is built when opened and served as a memfd (read, lseek, fstat and mmap work
as on a regular file); other files, ``/proc/self/fd/N`` included, are the host's.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .process import GuestProcess, GuestThread

O_ACCMODE = 3
O_CLOEXEC_GUEST = 0o2000000          # the same value on arm, arm64 and x86-64
_SELF = re.compile(rb"^/proc/(self|thread-self|[0-9]+)(?:/task/[0-9]+)?/([a-z]+)$")

# names of the HWCAP bits as Linux's /proc/cpuinfo prints them (arch/arm/kernel/setup.c
# hwcap_str / hwcap2_str, arch/arm64/kernel/cpuinfo.c hwcap_str)
ARM_FEATURES = ("swp", "half", "thumb", "26bit", "fastmult", "fpa", "vfp", "edsp", "java",
                "iwmmxt", "crunch", "thumbee", "neon", "vfpv3", "vfpv3d16", "tls", "vfpv4",
                "idiva", "idivt", "vfpd32", "lpae", "evtstrm")
ARM_FEATURES2 = ("aes", "pmull", "sha1", "sha2", "crc32")
AARCH64_FEATURES = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32",
                    "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma",
                    "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve",
                    "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca",
                    "pacg")
AARCH64_FEATURES2 = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3",
                     "svesm4", "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm",
                     "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte")
AT_NULL = 0


def _is_self(proc: GuestProcess, who: bytes) -> bool:
    return who in (b"self", b"thread-self") or (who.isdigit() and int(who) == proc.pid)


def is_self_exe(t: GuestThread, path: bytes) -> bool:
    """True for /proc/self/exe and its aliases (/proc/<our pid>/exe...): the guest
    program, not the emulator."""
    m = _SELF.match(path)
    return m is not None and m.group(2) == b"exe" and _is_self(t.process, m.group(1))


def open_special(t: GuestThread, path: bytes, flags: int) -> int | None:
    """A host fd serving the guest's view of ``path`` (opened read-only), or None when
    ``path`` is an ordinary file for the host to open."""
    if flags & O_ACCMODE:
        return None
    proc = t.process
    if path == b"/proc/cpuinfo":
        data = cpuinfo(proc)
    else:
        m = _SELF.match(path)
        if m is None or not _is_self(proc, m.group(1)):
            return None
        maker = _VIEWS.get(m.group(2))
        if maker is None:
            return None
        data = maker(t)
    fd = os.memfd_create(os.fsdecode(path.rsplit(b"/", 1)[-1]),
                         os.MFD_CLOEXEC if flags & O_CLOEXEC_GUEST else 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---- the views -------------------------------------------------------------------------
def guest_argv(t: GuestThread) -> list[bytes]:
    """The guest's argv as the program was started with it (qemu keeps its own copy:
    the guest may reuse its initial stack, arm's _start does)."""
    opts = t.process.extra.get("options")
    return [os.fsencode(a) for a in opts.argv] if opts is not None else []


def auxv_bytes(t: GuestThread) -> bytes:
    """The guest's auxiliary vector, AT_NULL pair included, read from where it was
    put on the initial stack (as qemu's open_self_auxv reads its saved_auxv)."""
    proc = t.process
    opts = proc.extra.get("options")
    sp = proc.extra.get("initial_sp", 0)
    if opts is None or not sp:
        return b""
    word = t.arch.word_size
    addr = sp + word * (1 + len(opts.argv) + 1 + len(opts.env) + 1)
    out = bytearray()
    while True:
        pair = t.mem.read(addr, 2 * word)
        out += pair
        addr += 2 * word
        if int.from_bytes(pair[:word], "little") == AT_NULL:
            return bytes(out)


def _cmdline(t: GuestThread) -> bytes:
    return b"".join(a + b"\0" for a in guest_argv(t))


def _maps(t: GuestThread) -> bytes:
    with t.mem.lock:
        lines = t.mem.maps_lines()
    return "".join(line + "\n" for line in lines).encode()


def _host_starttime() -> str:
    try:
        with open("/proc/self/stat", "rb") as f:
            raw = f.read()
        return raw[raw.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def _stat(t: GuestThread) -> bytes:
    """qemu 7.2's open_self_stat: pid, (comm), ppid, starttime and the start of the
    stack filled in, every other field 0."""
    proc = t.process
    argv = guest_argv(t)
    comm = os.path.basename(argv[0] if argv else os.fsencode(proc.exec_path))[:15]
    fields = ["0"] * 44
    fields[0] = str(proc.pid)
    fields[1] = f"({os.fsdecode(comm)})"
    fields[3] = str(os.getppid())
    fields[21] = _host_starttime()
    fields[27] = str(proc.extra.get("initial_sp", 0))
    return (" ".join(fields) + "\n").encode()


def _auxv(t: GuestThread) -> bytes:
    return auxv_bytes(t)


_VIEWS = {b"maps": _maps, b"stat": _stat, b"auxv": _auxv, b"cmdline": _cmdline}


def _features(bits: int, names: tuple[str, ...]) -> list[str]:
    return [name for i, name in enumerate(names) if bits >> i & 1]


def cpuinfo(proc: GuestProcess) -> bytes:
    """/proc/cpuinfo as a real ARMv7/ARMv8 or AArch64 Linux prints it for the CPU pyqemu
    emulates (the -cpu model's unicorn CPU, its MIDR and hwcaps), one block per CPU the
    guest sees."""
    arch = proc.arch
    ncpu = max(1, len(os.sched_getaffinity(0)))
    midr = arch.midr
    ident = (f"CPU implementer\t: 0x{midr >> 24 & 0xFF:02x}\n"
             f"CPU architecture: {{arch}}\n"
             f"CPU variant\t: 0x{midr >> 20 & 0xF:x}\n"
             f"CPU part\t: 0x{midr >> 4 & 0xFFF:03x}\n"
             f"CPU revision\t: {midr & 0xF}\n\n")
    out = []
    if arch.name == "arm":
        feats = _features(arch.hwcap, ARM_FEATURES) + _features(arch.hwcap2, ARM_FEATURES2)
        v8 = arch.platform.startswith(b"v8")
        for n in range(ncpu):
            out.append(f"processor\t: {n}\n"
                       f"model name\t: ARMv{8 if v8 else 7} Processor rev {midr & 0xF} "
                       f"({arch.platform.decode()})\n"
                       "BogoMIPS\t: 100.00\n"
                       f"Features\t: {' '.join(feats)}\n" + ident.format(arch=8 if v8 else 7))
        out.append("Hardware\t: pyqemu\nRevision\t: 0000\nSerial\t\t: 0000000000000000\n")
    else:
        feats = _features(arch.hwcap, AARCH64_FEATURES) + _features(arch.hwcap2,
                                                                    AARCH64_FEATURES2)
        for n in range(ncpu):
            out.append(f"processor\t: {n}\n"
                       "BogoMIPS\t: 100.00\n"
                       f"Features\t: {' '.join(feats)}\n" + ident.format(arch=8))
    return "".join(out).encode()

