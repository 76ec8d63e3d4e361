"""``-d`` log items (with ``-D file`` / ``QEMU_LOG`` / ``QEMU_LOG_FILENAME``) and ``-seed``.

What each item writes, in qemu-user 7.2's words:

- ``in_asm``: each translated block once, ``----------------`` / ``IN: <symbol>`` /
  ``0x<addr>:  <units>  <mnemonic> <operands>`` / blank line. Disassembly through
  capstone, imported only when asked. Debian's qemu-user links libcapstone 4; when
  that library is on the host it is used (through ctypes) so the text is identical
  (capstone 5 writes ``mov x29, #0`` where 4 writes ``movz x29, #0``); else the
  capstone Python package.
- ``exec``: ``Trace N: <tb> [<cs_base>/<pc>/<flags>/<cflags>] <symbol>`` for every
  block executed (a ``UC_HOOK_BLOCK``, installed only for these items). The pc and
  symbol are qemu's; ``<tb>`` is our block number shown as a pointer and the
  cs_base/flags/cflags words are 0: they are qemu's TCG internals, not guest state.
  Unicorn reports every block, as qemu does with ``-d nochain``; qemu without
  ``nochain`` skips blocks entered through a chained jump and prints "Linking TBs".
- ``cpu``: the registers before each block, in qemu's layout (arm ``R00=... PSR=...
  ---- T usr32``, aarch64 `` PC=... X00=... PSTATE=... EL0t``). Unicorn runs the
  guest at a privileged level (its MMU is ours): the mode shown is the user mode the
  guest believes it is in, as qemu shows it.
- ``int``: accepted; qemu-user logs nothing for system calls, and guest faults are
  reported as signals, so there is nothing to write either.
- ``page``: ``host mmap_min_addr=...``, ``guest_base``, the page layout after the
  binary load (one line per mapping: qemu's page_dump also keeps a file-backed part
  and the anonymous bss after it apart) and the start_brk/end_code/... lines. qemu's pgb_* lines and the layout after each
  loader mmap describe its host reservation and are not printed; guest_base is 0
  (unicorn addresses guest memory directly).
- ``strace``: as ``-strace`` (:mod:`.strace`); ``unimp`` and ``guest_errors`` are
  written where they happen; ``nochain`` (and the TCG-only items) are accepted.
- ``-singlestep``: one instruction per block: with a block-level item on, the hook
  is per instruction (``UC_HOOK_CODE``), so every logged block is one instruction as
  under qemu; without one it changes nothing visible, and nothing is done.
- ``-seed N``: AT_RANDOM comes from glib's Mersenne twister seeded with the two
  32-bit halves of N, exactly as qemu's ``qemu_guest_random_seed_main`` seeds it, so
  the 16 bytes equal qemu's; getrandom() is the host's in qemu 7.2 and here too.
"""

from __future__ import annotations

import ctypes
import os
import struct
from bisect import bisect_right
from typing import TYPE_CHECKING, Any, TextIO

from ..common.capstone import CsInsn4, load_libcapstone4

if TYPE_CHECKING:
    from ..common.loader.elf import LoadInfo
    from .cli import UserOptions
    from .process import GuestProcess, GuestThread

BLOCK_ITEMS = frozenset({"in_asm", "exec", "cpu"})
UC_HOOK_CODE = 4
UC_HOOK_BLOCK = 8

# --- -seed: glib's GRand (MT19937, init_by_array) as qemu seeds it ---------------------


def mt19937_words(key: list[int], count: int) -> list[int]:
    """``count`` outputs of MT19937 seeded with ``init_by_array(key)`` (glib's
    ``g_rand_new_with_seed_array`` followed by ``g_rand_int``)."""
    import random

    n = 624
    mt = [0] * n
    mt[0] = 19650218
    for i in range(1, n):
        mt[i] = (1812433253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
    i, j = 1, 0
    for _ in range(max(n, len(key))):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525)) + key[j] + j) \
            & 0xFFFFFFFF
        i += 1
        j += 1
        if i >= n:
            mt[0] = mt[n - 1]
            i = 1
        if j >= len(key):
            j = 0
    for _ in range(n - 1):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941)) - i) & 0xFFFFFFFF
        i += 1
        if i >= n:
            mt[0] = mt[n - 1]
            i = 1
    mt[0] = 0x80000000
    gen = random.Random()
    gen.setstate((3, (*mt, n), None))
    return [gen.getrandbits(32) for _ in range(count)]


def seeded_random(seed: int, size: int = 16) -> bytes:
    """The first ``size`` bytes qemu-user draws with ``-seed seed`` (AT_RANDOM)."""
    seed &= (1 << 64) - 1
    words = mt19937_words([seed & 0xFFFFFFFF, seed >> 32], (size + 3) // 4)
    return b"".join(w.to_bytes(4, "little") for w in words)[:size]


# --- symbols (qemu's lookup_symbol: STT_FUNC of the program and its interpreter) -------


class Symbols:
    """Function symbols of the loaded images, for ``IN: <name>`` and ``Trace`` lines."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.entries: list[tuple[int, int, str]] = []

    def add_file(self, path: str, bias: int, thumb_bit: bool) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return
        for start, size, name in _elf_functions(data):
            if thumb_bit:
                start &= ~1
            self.entries.append((start + bias, size, name))
        self.entries.sort()
        self.starts = [e[0] for e in self.entries]

    def lookup(self, addr: int) -> str:
        i = bisect_right(self.starts, addr) - 1
        while i >= 0:
            start, size, name = self.entries[i]
            if start <= addr < start + size:
                return name
            if start + max(size, 1) <= addr and i > 0 and self.entries[i - 1][0] < start:
                break
            i -= 1
        return ""


def _elf_functions(data: bytes) -> list[tuple[int, int, str]]:
    """(value, size, name) of the STT_FUNC symbols in .symtab (none if stripped)."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return []
    is64 = data[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    sections = []
    for k in range(shnum):
        off = shoff + k * shentsize
        if off + shentsize > len(data):
            return []
        if is64:
            _n, typ, _f, _a, sofs, ssize, link, _i, _al, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", data, off)
        else:
            _n, typ, _f, _a, sofs, ssize, link, _i, _al, entsize = struct.unpack_from(
                "<IIIIIIIIII", data, off)
        sections.append((typ, sofs, ssize, link, entsize))
    out = []
    for typ, sofs, ssize, link, entsize in sections:
        if typ != 2 or not entsize or link >= len(sections):   # SHT_SYMTAB
            continue
        stroff = sections[link][1]
        for off in range(sofs, min(sofs + ssize, len(data) - entsize + 1), entsize):
            if is64:
                name, info, _o, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
            else:
                name, value, size, info, _o, shndx = struct.unpack_from("<IIIBBH", data, off)
            if info & 0xF != 2 or shndx == 0 or shndx >= 0xFF00:     # STT_FUNC, defined
                continue
            end = data.find(b"\0", stroff + name)
            out.append((value, size, data[stroff + name:end].decode("latin-1")))
    return out


# --- disassembly --------------------------------------------------------------------


class Disassembler:
    """capstone for arm (ARM and Thumb) and aarch64: (address, size, mnemonic, operands)."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self._handles: dict[bool, Any] = {}
        self._lib: Any = load_libcapstone4()

    def _handle(self, thumb: bool) -> Any:
        h = self._handles.get(thumb)
        if h is not None:
            return h
        if self._lib is not None:
            arch = 0 if self.arch == "arm" else 1          # CS_ARCH_ARM, CS_ARCH_ARM64
            mode = 16 if thumb else 0                      # CS_MODE_THUMB
            handle = ctypes.c_size_t()
            if self._lib.cs_open(arch, mode, ctypes.byref(handle)) == 0:
                # qemu: unknown encodings become data (CS_OPT_SKIPDATA = 5, ON = 3)
                self._lib.cs_option(handle, 5, 3)
                h = ("lib", handle)
        if h is None:
            import capstone

            if self.arch == "arm":
                cs = capstone.Cs(capstone.CS_ARCH_ARM,
                                 capstone.CS_MODE_THUMB if thumb else capstone.CS_MODE_ARM)
            else:
                cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
            cs.skipdata = True
            h = ("py", cs)
        self._handles[thumb] = h
        return h

    def disasm(self, code: bytes, addr: int, thumb: bool) -> list[tuple[int, int, str, str]]:
        kind, h = self._handle(thumb)
        if kind == "py":
            return [(i.address, i.size, i.mnemonic, i.op_str) for i in h.disasm(code, addr)]
        insns = ctypes.POINTER(CsInsn4)()
        n = self._lib.cs_disasm(h, code, len(code), addr, 0, ctypes.byref(insns))
        out = [(insns[k].address, insns[k].size, insns[k].mnemonic.decode(),
                insns[k].op_str.decode()) for k in range(n)]
        if n:
            self._lib.cs_free(insns, n)
        return out


def format_block(dis: Disassembler, code: bytes, addr: int, thumb: bool) -> list[str]:
    """qemu's capstone lines for one block: ``0x%08x: `` + the instruction in units
    (2-byte units in Thumb, else 4), padded to two units in Thumb, + mnemonic."""
    unit = 2 if thumb else 4
    split = 2 if thumb else 1
    lines = []
    for a, size, mnem, ops in dis.disasm(code, addr, thumb):
        raw = code[a - addr:a - addr + size]
        units = [int.from_bytes(raw[k:k + unit], "little") for k in range(0, size, unit)]
        text = "".join(f" {u:0{unit * 2}x}" for u in units[:split])
        if len(units) < split:
            text += " " * ((split - len(units)) * (unit * 2 + 1))
        lines.append(f"0x{a:08x}: {text}  {mnem:<8s} {ops}\n")
    return lines


# --- CPU state dumps -------------------------------------------------------------------

_ARM_MODES = {0: "usr", 1: "fiq", 2: "irq", 3: "svc", 6: "mon", 7: "abt", 0xA: "hyp",
              0xB: "und", 0xF: "sys"}


def dump_cpu(t: GuestThread) -> str:
    """qemu's cpu_dump_state() text for ``t`` (no FPU part)."""
    from unicorn import arm64_const as a64
    from unicorn import arm_const as a32

    uc = t.uc
    if t.arch.name == "arm":
        regs = [uc.reg_read(a32.UC_ARM_REG_R0 + i) for i in range(13)]
        regs += [uc.reg_read(a32.UC_ARM_REG_SP), uc.reg_read(a32.UC_ARM_REG_LR),
                 uc.reg_read(a32.UC_ARM_REG_PC)]
        out = []
        for i, v in enumerate(regs):
            out.append(f"R{i:02d}={v:08x}" + ("\n" if i % 4 == 3 else " "))
        psr = uc.reg_read(a32.UC_ARM_REG_CPSR)
        psr = (psr & ~0x1DF) | 0x10            # the guest's user mode, no A/I/F masks
        flags = "".join(c if psr & bit else "-" for c, bit in
                        (("N", 1 << 31), ("Z", 1 << 30), ("C", 1 << 29), ("V", 1 << 28)))
        mode = _ARM_MODES.get(psr & 0xF, "???")
        out.append(f"PSR={psr:08x} {flags} {'T' if psr & 0x20 else 'A'} "
                   f"{mode}{32 if psr & 0x10 else 26}\n")
        return "".join(out)
    pc = uc.reg_read(a64.UC_ARM64_REG_PC)
    out = [f" PC={pc:016x} "]
    for i in range(31):
        v = uc.reg_read(a64.UC_ARM64_REG_X0 + i) if i < 29 else uc.reg_read(
            a64.UC_ARM64_REG_X29 if i == 29 else a64.UC_ARM64_REG_X30)
        out.append(f"X{i:02d}={v:016x}" + (" " if (i + 2) % 3 else "\n"))
    out.append(f" SP={uc.reg_read(a64.UC_ARM64_REG_SP):016x}\n")
    nzcv = uc.reg_read(a64.UC_ARM64_REG_NZCV) & 0xF0000000
    pstate = uc.reg_read(a64.UC_ARM64_REG_PSTATE) if hasattr(a64, "UC_ARM64_REG_PSTATE") \
        else 0
    pstate = nzcv | (pstate & 0xC00)          # EL0t: the guest's view
    flags = "".join(c if pstate & bit else "-" for c, bit in
                    (("N", 1 << 31), ("Z", 1 << 30), ("C", 1 << 29), ("V", 1 << 28)))
    out.append(f"PSTATE={pstate:08x} {flags} EL0t  SVCR=00000000 --  "
               f"BTYPE={(pstate >> 10) & 3}\n")
    return "".join(out)


# --- the block hook ----------------------------------------------------------------


class BlockLogger:
    """in_asm / exec / cpu for the engines of one process."""

    def __init__(self, proc: GuestProcess, items: set[str], symbols: Symbols,
                 singlestep: bool) -> None:
        self.proc = proc
        self.log: TextIO = proc.log
        self.in_asm = "in_asm" in items
        self.exec = "exec" in items
        self.cpu = "cpu" in items
        self.symbols = symbols
        self.singlestep = singlestep
        self.seen: set[tuple[int, int, bool]] = set()
        self.blocks: dict[tuple[int, int, bool], int] = {}
        self.dis = Disassembler(proc.arch.name) if self.in_asm else None
        self.cpu_index = 0

    def attach(self, t: GuestThread) -> None:
        index = self.cpu_index
        self.cpu_index += 1
        is_arm = t.arch.name == "arm"
        from unicorn import arm_const as a32

        def on_block(uc: Any, address: int, size: int, _data: Any) -> None:
            thumb = is_arm and bool(uc.reg_read(a32.UC_ARM_REG_CPSR) & 0x20)
            key = (address, size, thumb)
            lines = []
            if self.in_asm and key not in self.seen:
                self.seen.add(key)
                try:
                    code = t.mem.read(address, size)
                except Exception:  # noqa: BLE001 - unreadable: nothing to show
                    code = b""
                lines.append("----------------\n")
                lines.append(f"IN: {self.symbols.lookup(address)}\n")
                lines.extend(format_block(self.dis, code, address, thumb))  # type: ignore[arg-type]
                lines.append("\n")
            if self.exec:
                tb = self.blocks.setdefault(key, len(self.blocks) + 1)
                width = 16 if not is_arm else 8
                lines.append(f"Trace {index}: {0x7f0000000000 + tb * 0x40:#x} "
                             f"[{0:0{width}x}/{address:0{width}x}/{0:08x}/{0:08x}] "
                             f"{self.symbols.lookup(address)}\n")
            if self.cpu:
                lines.append(dump_cpu(t))
            if lines:
                self.log.write("".join(lines))

        t.uc.hook_add(UC_HOOK_CODE if self.singlestep else UC_HOOK_BLOCK, on_block)
        self.proc.extra.setdefault("log_hooks", []).append(on_block)   # kept alive


# --- page dump ---------------------------------------------------------------------


def page_dump(proc: GuestProcess, info: LoadInfo, sp: int) -> str:
    """qemu's ``-d page`` text after the binary load."""
    wide = proc.arch.word_size == 8
    w = 16 if wide else 8
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            min_addr = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        min_addr = 0
    out = [f"host mmap_min_addr={min_addr:#x}\n",
           "guest_base  (nil)\n" if wide else "guest_base  0x0\n",
           "page layout changed following binary load\n",
           f"{'start':<{w}} {'end':<{w}} {'size':<{w}} prot\n"]
    for v in proc.mem.vmas:
        start, end, prot = v.start, v.end, v.prot & 7
        text = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + \
            ("x" if prot & 4 else "-")
        out.append(f"{start:0{w}x}-{end:0{w}x} {end - start:0{w}x} {text}\n")
    word = proc.arch.word_size
    argc = int.from_bytes(proc.mem.read(sp, word), "little")
    env = sp + word * (argc + 2)
    aux = env
    while int.from_bytes(proc.mem.read(aux, word), "little"):
        aux += word
    aux += word
    for name, value in (("start_brk", 0), ("end_code", info.end_code),
                        ("start_code", info.start_code), ("start_data", info.start_data),
                        ("end_data", info.end_data), ("start_stack", sp),
                        ("brk", info.end_bss or info.brk), ("entry", info.entry),
                        ("argv_start", sp + word), ("env_start", env),
                        ("auxv_start", aux)):
        out.append(f"{name:<12}0x{value:0{w}x}\n")
    return "".join(out)


# --- set-up ------------------------------------------------------------------------


def setup_logging(proc: GuestProcess, t: GuestThread, opts: UserOptions, info: LoadInfo,
                  sp: int) -> None:
    """Apply ``-d`` items (and ``-singlestep``) to a process about to start."""
    items = set(opts.log_items)
    if "strace" in items:
        proc.strace = True
    if "page" in items:
        proc.log.write(page_dump(proc, info, sp))
    if items & BLOCK_ITEMS:
        symbols = Symbols()
        if items & {"in_asm", "exec"}:
            arm = proc.arch.name == "arm"
            symbols.add_file(info.exec_path, info.load_bias, arm)
            if info.interp_host_path:
                symbols.add_file(info.interp_host_path, info.interp_bias or info.interp_base,
                                 arm)
        logger = BlockLogger(proc, items, symbols, opts.singlestep)
        logger.attach(t)
        proc.extra["block_logger"] = logger
        # every engine made later (clone of a thread builds a GuestThread directly) gets
        # the hook too; one guest process per host process, so wrapping the class's
        # constructor here affects only this process's threads
        from .process import GuestThread as _Thread

        init = _Thread.__init__

        def init_logged(self: GuestThread, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            if self.process is proc:
                logger.attach(self)

        _Thread.__init__ = init_logged  # type: ignore[method-assign]


def guest_random(seed: int | None) -> bytes:
    """AT_RANDOM's 16 bytes: qemu's seeded sequence with ``-seed``, else random."""
    return os.urandom(16) if seed is None else seeded_random(seed)


__all__ = ["BlockLogger", "Disassembler", "Symbols", "dump_cpu", "format_block",
           "guest_random", "page_dump", "seeded_random", "setup_logging"]
