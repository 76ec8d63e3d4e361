"""The human monitor (HMP) of qemu-system-x86_64 7.2: commands, their output, readline.

What lives here, and what is qemu's:

- :class:`Hmp` runs one command line and returns its text (``\\n`` line ends), as
  ``human-monitor-command`` does. Commands: ``help|?``, ``info`` (block, chardev,
  cpus, mtree, name, pci, pic (the 8259s; qemu's IOAPIC part is not there), qtree,
  registers, status, version), ``x``, ``xp``,
  ``print|p``, ``stop|s``, ``cont|c``, ``system_reset``, ``quit|q``; help lines and
  error messages are qemu's words (``unknown command: 'foo'``, ``Try "help x" for
  more information``, ``x: extraneous characters at the end of line``...).
- The ``/fmt`` rules (count, format o/x/d/u/c/i, size b/h/w/g/L) and the last used
  format and size that a later command without ``/fmt`` takes: qemu keeps them for
  the process, so does this module.
- Expressions as qemu's HMP parser reads them: numbers in C's bases, ``'c'``,
  ``$reg`` (eax..edi, esp|sp, ebp|fp, r8..r15, eflags, eip, cs/ds/es/ss/fs/gs with
  ``.base`` and ``.limit``, pc = cs.base + eip; 64-bit values as qemu-system-x86_64
  reads them), unary ``+ - ~``, and its three precedence levels: ``* / %`` bind
  tightest, then ``& | ^``, then ``+ -``. There is no shift operator in qemu either.
- ``x /i`` disassembles through capstone in AT&T syntax, as qemu does: the host's
  libcapstone 4 (what Debian's qemu-system links) when present, else the capstone
  Python package; the reading loop is qemu's (a 64-byte window that stops at a 1 KiB
  boundary, so a read past the end of memory prints ``unable to read memory``).
- :class:`Readline` is the monitor's line editor, byte for byte: each key redraws the
  line with ``ESC[D`` / ``ESC[K`` as qemu's readline does; left/right/home/end,
  backspace/delete, history, and Tab completion of command names and ``info``
  subcommands (not of arguments such as device names).
- ``x`` without paging reads physical memory as qemu's debug access does (A20
  applied, not cut to 32 bits); ``xp`` fails on unassigned space (the PCI hole,
  above RAM), as qemu's address_space_read, even where the machine reads all ones.
- Not implemented: ``info mtree`` options (refused), ``info block -n`` (there are no
  named nodes without -blockdev: empty), the other HMP commands (unknown command).
- :class:`HmpSession` is a monitor on a character device: banner, ``(qemu) ``
  prompt, readline echo, ``\\r\\n`` line ends. It does no I/O: feed it bytes, it
  returns the bytes to send back.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...common.capstone import CsInsn4, load_libcapstone4

QEMU_VERSION = (7, 2, 0)
QEMU_PACKAGE = "pyqemu 0.1.0"


def version_string() -> str:
    return "%d.%d.%d" % QEMU_VERSION


BANNER = "QEMU %s monitor - type 'help' for more information\n" % version_string()
PROMPT = "(qemu) "

_MASK64 = (1 << 64) - 1


class HmpError(Exception):
    """A command failed with qemu's message (printed as is, then ``Try "help ..."``)."""


# --- the format state qemu keeps for the process (monitor/hmp.c) -----------------------


class _FormatDefaults:
    def __init__(self) -> None:
        self.format = "x"
        self.size = 4
        self.lock = threading.Lock()


FORMAT_DEFAULTS = _FormatDefaults()


@dataclass(frozen=True)
class Format:
    count: int
    format: str
    size: int            # -1: 'i' without a size


def parse_format(text: str, pos: int) -> tuple[Format, int]:
    """Parse an optional ``/fmt`` at ``pos``; returns it and the position after it.

    Updates :data:`FORMAT_DEFAULTS` as qemu does."""
    d = FORMAT_DEFAULTS
    pos = _skip_spaces(text, pos)
    if pos < len(text) and text[pos] == "/":
        pos += 1
        count = 1
        m = re.match(r"[0-9]+", text[pos:])
        if m:
            count = int(m.group(0))
            pos += len(m.group(0))
        size = -1
        fmt = ""
        while pos < len(text):
            c = text[pos]
            if c in "oduxic":
                fmt = c
            elif c in "bhwgL":
                size = {"b": 1, "h": 2, "w": 4, "g": 8, "L": 8}[c]
            else:
                break
            pos += 1
        if pos < len(text) and not text[pos].isspace():
            raise HmpError("invalid char in format: '%s'" % text[pos])
        with d.lock:
            if not fmt:
                fmt = d.format
            if fmt != "i":
                if size < 0:
                    size = d.size
                d.size = size
            d.format = fmt
        return Format(count, fmt, size), pos
    with d.lock:
        fmt = d.format
        size = d.size if fmt != "i" else -1
    return Format(1, fmt, size), pos


# --- expressions (qemu's get_expr) --------------------------------------------------


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _s64(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


class _Expr:
    def __init__(self, text: str, pos: int, register: Callable[[str], int | None]) -> None:
        self.text = text
        self.pos = _skip_spaces(text, pos)
        self.register = register

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> None:
        self.pos = _skip_spaces(self.text, self.pos + 1)

    def sum(self) -> int:
        val = self.logic()
        while self.peek() in ("+", "-") and self.peek():
            op = self.peek()
            self.next()
            val2 = self.logic()
            val = _s64(val + val2 if op == "+" else val - val2)
        return val

    def logic(self) -> int:
        val = self.prod()
        while self.peek() in ("&", "|", "^") and self.peek():
            op = self.peek()
            self.next()
            val2 = self.prod()
            val = _s64(val & val2 if op == "&" else val | val2 if op == "|" else val ^ val2)
        return val

    def prod(self) -> int:
        val = self.unary()
        while self.peek() in ("*", "/", "%") and self.peek():
            op = self.peek()
            self.next()
            val2 = self.unary()
            if op == "*":
                val = _s64(val * val2)
            else:
                if val2 == 0:
                    raise HmpError("division by zero")
                q = abs(val) // abs(val2)                  # C: truncation toward zero
                if (val < 0) != (val2 < 0):
                    q = -q
                val = _s64(q) if op == "/" else _s64(val - q * val2)
        return val

    def unary(self) -> int:
        c = self.peek()
        if c == "+":
            self.next()
            return self.unary()
        if c == "-":
            self.next()
            return _s64(-self.unary())
        if c == "~":
            self.next()
            return _s64(~self.unary())
        if c == "(":
            self.next()
            val = self.sum()
            if self.peek() != ")":
                raise HmpError("')' expected")
            self.next()
            return val
        if c == "'":
            self.pos += 1
            if self.pos >= len(self.text):
                raise HmpError("character constant expected")
            val = ord(self.text[self.pos]) & 0xFF
            self.pos += 1
            if self.peek() != "'":
                raise HmpError("missing terminating ' character")
            self.next()
            return val
        if c == "$":
            self.pos += 1
            m = re.match(r"[A-Za-z0-9_.]*", self.text[self.pos:])
            name = m.group(0) if m else ""
            self.pos = _skip_spaces(self.text, self.pos + len(name))
            value = self.register(name[:127])
            if value is None:
                raise HmpError("unknown register")
            return _s64(value)
        if c == "":
            raise HmpError("unexpected end of expression")
        val, end = _strtoull(self.text, self.pos)
        if end == self.pos:
            raise HmpError("invalid char '%s' in expression" % c)
        self.pos = _skip_spaces(self.text, end)
        return _s64(val)


def _strtoull(text: str, pos: int) -> tuple[int, int]:
    """C's strtoull(text + pos, &end, 0) without the sign (qemu handles + and -)."""
    rest = text[pos:]
    m = re.match(r"0[xX]([0-9a-fA-F]+)", rest)
    if m:
        val, length = int(m.group(1), 16), len(m.group(0))
    else:
        m = re.match(r"0[0-7]*", rest)
        if m:
            val, length = int(m.group(0), 8), len(m.group(0))
        else:
            m = re.match(r"[0-9]+", rest)
            if not m:
                return 0, pos
            val, length = int(m.group(0)), len(m.group(0))
    if val > _MASK64:
        raise HmpError("number too large")
    return val, pos + length


def parse_expr(text: str, pos: int, register: Callable[[str], int | None]) -> tuple[int, int]:
    """One expression at ``pos``: (signed 64-bit value, position after it)."""
    e = _Expr(text, pos, register)
    val = e.sum()
    return val, e.pos


# --- printing values (monitor_printc, hmp_print, memory_dump) -----------------------


def format_char(c: int) -> str:
    """qemu's monitor_printc for the int ``c``."""
    c = c & 0xFFFFFFFF
    if c >= 1 << 31:
        c -= 1 << 32
    special = {39: "\\'", 92: "\\\\", 10: "\\n", 13: "\\r"}
    if c in special:
        body = special[c]
    elif 32 <= c <= 126:
        body = chr(c)
    else:
        body = "\\x%02x" % (c & 0xFFFFFFFF)
    return "'" + body + "'"


def format_print(value: int, fmt: str) -> str:
    """``print /fmt`` of a value (hwaddr, 64 bits)."""
    v = value & _MASK64
    if fmt == "o":
        return ("0%o" % v if v else "0") + "\n"
    if fmt == "x":
        return ("0x%x" % v if v else "0") + "\n"
    if fmt == "u":
        return "%d\n" % v
    if fmt == "c":
        return format_char(v) + "\n"
    return "%d\n" % _s64(v)


class ReadFailed(Exception):
    """A guest memory read failed (the monitor prints "Cannot access memory")."""


def format_memory(read: Callable[[int, int], bytes], addr: int, fmt: Format) -> str:
    """``x`` / ``xp`` (not /i): qemu's memory_dump, reading with ``read(addr, n)``.

    ``read`` raises (any exception) when the range cannot be read."""
    wsize = fmt.size if fmt.size > 0 else 4
    length = wsize * fmt.count
    line_size = 8 if wsize == 1 else 16
    if fmt.format == "o":
        digits = (wsize * 8 + 2) // 3
    elif fmt.format in ("u", "d"):
        digits = (wsize * 8 * 10 + 32) // 33
    else:
        digits = wsize * 8 // 4
    if fmt.format == "c":
        wsize = 1
    out = []
    while length > 0:
        line = "%016x:" % (addr & _MASK64)
        n = min(length, line_size)
        try:
            buf = bytes(read(addr, n))
            if len(buf) != n:
                raise ReadFailed
        except Exception:
            out.append(line + " Cannot access memory\n")
            break
        i = 0
        while i < n:
            v = int.from_bytes(buf[i:i + wsize].ljust(wsize, b"\0"), "little")
            if fmt.format == "o":
                line += " " + ("%*s" % (digits, "0%o" % v if v else "0"))
            elif fmt.format == "x":
                line += " 0x%0*x" % (digits, v)
            elif fmt.format == "u":
                line += " %*d" % (digits, v)
            elif fmt.format == "d":
                line += " %*d" % (digits, _s64(v) if wsize == 8 else v)
            elif fmt.format == "c":
                line += " " + format_char(v)
            i += wsize
        out.append(line + "\n")
        addr += n
        length -= n
    return "".join(out)


# --- disassembly (qemu's capstone use: disas/capstone.c) -------------------------------


class X86Disassembler:
    """One instruction at a time: (size, mnemonic, operands), AT&T syntax, skipdata."""

    _CS_ARCH_X86 = 3
    _MODES = {16: 1 << 1, 32: 1 << 2, 64: 1 << 3}

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}
        self._lib: Any = load_libcapstone4()

    def _handle(self, bits: int) -> Any:
        h = self._handles.get(bits)
        if h is not None:
            return h
        if self._lib is not None:
            handle = ctypes.c_size_t()
            if self._lib.cs_open(self._CS_ARCH_X86, self._MODES[bits], ctypes.byref(handle)) == 0:
                self._lib.cs_option(handle, 5, 3)          # CS_OPT_SKIPDATA, CS_OPT_ON
                self._lib.cs_option(handle, 1, 2)          # CS_OPT_SYNTAX, ATT
                h = ("lib", handle)
        if h is None:
            import capstone

            cs = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16,
                                                    32: capstone.CS_MODE_32,
                                                    64: capstone.CS_MODE_64}[bits])
            cs.syntax = capstone.CS_OPT_SYNTAX_ATT
            cs.skipdata = True
            h = ("py", cs)
        self._handles[bits] = h
        return h

    def one(self, code: bytes, addr: int, bits: int) -> tuple[int, str, str] | None:
        kind, h = self._handle(bits)
        if kind == "py":
            for i in h.disasm(code, addr, 1):
                return i.size, i.mnemonic, i.op_str
            return None
        insns = ctypes.POINTER(CsInsn4)()
        n = self._lib.cs_disasm(h, code, len(code), addr, 1, ctypes.byref(insns))
        if not n:
            return None
        out = (insns[0].size, insns[0].mnemonic.decode(), insns[0].op_str.decode())
        self._lib.cs_free(insns, n)
        return out


_DISASSEMBLER: X86Disassembler | None = None


def _disassembler() -> X86Disassembler:
    global _DISASSEMBLER
    if _DISASSEMBLER is None:
        _DISASSEMBLER = X86Disassembler()
    return _DISASSEMBLER


def format_insn(addr: int, raw: bytes, mnemonic: str, ops: str) -> str:
    """qemu's cap_dump_insn for x86 (bytes split after 8, padded to 8)."""
    split = 8
    head = "".join("%02x " % b for b in raw[:split])
    head += " " * (max(0, split - len(raw)) * 3)
    lines = ["0x%08x:  %s %-8s %s\n" % (addr, head, mnemonic, ops)]
    for i in range(split, len(raw), split):
        lines.append("0x%08x:  %s\n" % (addr + i, "".join("%02x " % b for b in raw[i:i + split])))
    return "".join(lines)


def format_disassembly(read: Callable[[int, int], bytes], addr: int, count: int,
                       bits: int) -> str:
    """``x /Ni``: qemu's cap_disas_monitor reading loop over ``read(addr, n)``."""
    dis = _disassembler()
    out = []
    buf = b""
    pc = addr & _MASK64
    while count > 0:
        end = ((pc + len(buf) + 1 + 1023) // 1024) * 1024
        want = min(64 - len(buf), end - pc)
        try:
            got = bytes(read((pc + len(buf)) & _MASK64, want))
            if len(got) != want:
                raise ReadFailed
        except Exception:
            out.append("0x%08x: unable to read memory\n" % pc)
            break
        buf += got
        insn = dis.one(buf, pc, bits)
        if insn is None:                       # no skipdata: cannot happen, but stop
            break
        size, mnem, ops = insn
        out.append(format_insn(pc, buf[:size], mnem, ops))
        buf = buf[size:]
        pc = (pc + size) & _MASK64
        count -= 1
    return "".join(out)


# --- CPU state for $reg and x /i --------------------------------------------------------

_SEGS = ("es", "cs", "ss", "ds", "fs", "gs")
_GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
_HF_CS32 = 1 << 4          # qemu's hflags bits (system/x86/descriptors.py)
_HF_CS64 = 1 << 15


def cpu_state(cpu: Any) -> dict[str, int]:
    """The values ``$name`` and ``x /i`` need, from an X86Cpu (on the CPU thread).

    Keys: eax..edi (full 64-bit registers, as qemu-system-x86_64 reads them), r8..r15,
    eip, eflags, cr0, efer, hflags, and per segment ``cs``, ``cs.base``, ``cs.limit``,
    ``cs.flags``."""
    regs = cpu.registers()
    out: dict[str, int] = {}
    for r32, r64 in zip(_GPRS, _GPR64, strict=True):
        out[r32] = regs[r64]
    for i in range(8, 16):
        out["r%d" % i] = regs["r%d" % i]
    out["eip"] = regs["rip"]
    out["eflags"] = regs["rflags"]
    out["cr0"] = regs.get("cr0", 0)
    out["efer"] = regs.get("efer", 0)
    env = getattr(cpu, "env", None)
    for n, seg in enumerate(_SEGS):
        out[seg] = regs[seg]
        out[seg + ".base"] = regs[seg + "_base"]
        if env is not None:
            desc = env.seg(n)
            out[seg + ".limit"] = desc.limit
            out[seg + ".flags"] = desc.flags
    if env is not None:
        out["hflags"] = env.hflags
    return out


_REG_ALIASES = {"sp": "esp", "fp": "ebp"}


def register_value(regs: dict[str, int], name: str) -> int | None:
    """qemu-system-x86_64's ``$name`` (monitor_defs of target/i386/monitor.c)."""
    name = _REG_ALIASES.get(name, name)
    if name == "pc":
        if "eip" not in regs or "cs.base" not in regs:
            return None
        return (regs["cs.base"] + regs["eip"]) & _MASK64
    allowed = set(_GPRS) | {"r%d" % i for i in range(8, 16)} | {"eflags", "eip"}
    for seg in _SEGS:
        allowed |= {seg, seg + ".base", seg + ".limit"}
    if name not in allowed or name not in regs:
        return None
    value = regs[name]
    if name in _SEGS or name.endswith(".limit"):      # MD_I32: sign-extended int32
        value &= 0xFFFFFFFF
        if value >> 31:
            value -= 1 << 32
    return value


def code_bits(regs: dict[str, int]) -> int:
    """16, 32 or 64: the code size the CPU runs at (qemu's HF_CS64/HF_CS32)."""
    if "hflags" in regs:
        hf = regs["hflags"]
        return 64 if hf & _HF_CS64 else 32 if hf & _HF_CS32 else 16
    if not regs.get("cr0", 0) & 1:
        return 16
    flags = regs.get("cs.flags", 0)
    if regs.get("efer", 0) & 0x400 and flags & (1 << 21):
        return 64
    return 32 if flags & (1 << 22) else 16


# --- commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str            # "print|p"
    params: str          # shown by help
    help: str
    handler: str         # method of Hmp


COMMANDS = [
    Command("cont|c", "", "resume emulation", "do_cont"),
    Command("help|?", "[cmd]", "show the help", "do_help"),
    Command("info", "[subcommand]", "show various information about the system state",
            "do_info"),
    Command("print|p", "/fmt expr",
            "print expression value (use $reg for CPU register access)", "do_print"),
    Command("quit|q", "", "quit the emulator", "do_quit"),
    Command("stop|s", "", "stop emulation", "do_stop"),
    Command("system_reset", "", "reset the system", "do_system_reset"),
    Command("x", "/fmt addr", "virtual memory dump starting at 'addr'", "do_x"),
    Command("xp", "/fmt addr", "physical memory dump starting at 'addr'", "do_xp"),
]

INFO_COMMANDS = [
    Command("block", "[-n] [-v] [device]",
            "show info of one block device or all block devices (-n: show named nodes; "
            "-v: show details)", "info_block"),
    Command("chardev", "", "show the character devices", "info_chardev"),
    Command("cpus", "", "show infos for each CPU", "info_cpus"),
    Command("mtree", "[-f][-d][-o][-D]",     # the options are refused (not implemented)
            "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch "
            "tree, valid with -f only);-o: dump region owners/parents;-D: dump disabled "
            "regions", "info_mtree"),
    Command("name", "", "show the current VM name", "info_name"),
    Command("pci", "", "show PCI info", "info_pci"),
    Command("pic", "", "show PIC state", "info_pic"),
    Command("qtree", "", "show device tree", "info_qtree"),
    Command("registers", "[-a|vcpu]",
            "show the cpu registers (-a: show register info for all cpus; vcpu: specific "
            "vCPU to query; show the current CPU's registers if no argument is specified)",
            "info_registers"),
    Command("status", "", "show the current VM status (running|paused)", "info_status"),
    Command("version", "", "show the version of QEMU", "info_version"),
]


def _matches(typed: str, name: str) -> bool:
    return typed in name.split("|")


def _find(table: list[Command], typed: str) -> Command | None:
    for cmd in table:
        if _matches(typed, cmd.name):
            return cmd
    return None


def _command_word(line: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(line) and line[pos] != "/" and not line[pos].isspace():
        pos += 1
    return line[start:pos], pos


def _flags(line: str, pos: int, allowed: str, name: str) -> tuple[set[str], int]:
    """Leading ``-X`` options (qemu's '-' argument type)."""
    found: set[str] = set()
    while True:
        p = _skip_spaces(line, pos)
        if p < len(line) and line[p] == "-" and p + 1 < len(line):
            c = line[p + 1]
            if c not in allowed:
                raise HmpError("%s: unsupported option -%s" % (name, c))
            found.add(c)
            pos = p + 2
        else:
            return found, pos


def _word(line: str, pos: int) -> tuple[str | None, int]:
    """An optional string argument (qemu's get_str, unquoted or "quoted")."""
    p = _skip_spaces(line, pos)
    if p >= len(line):
        return None, p
    if line[p] == '"':
        end = line.find('"', p + 1)
        if end < 0:
            raise HmpError("unterminated string")
        return line[p + 1:end], end + 1
    end = p
    while end < len(line) and not line[end].isspace():
        end += 1
    return line[p:end], end


class Hmp:
    """HMP commands over one machine (a :class:`pyqemu.system.machine.PcMachine`)."""

    def __init__(self, machine: Any, *, on_quit: Callable[[], None] | None = None) -> None:
        self.machine = machine
        self.on_quit = on_quit
        self.suspended = False      # after quit: no prompt, no more input (as qemu)

    # -- helpers over the machine -----------------------------------------------------

    def _on_cpu(self, fn: Callable[[], Any]) -> Any:
        run = getattr(self.machine, "run_on_cpu_thread", None)
        return run(fn) if run is not None else fn()

    def _register_text(self) -> str:
        cpu = self.machine.cpu
        return self._on_cpu(cpu.format_registers)

    def _registers(self) -> dict[str, int]:
        cpu = self.machine.cpu
        return self._on_cpu(lambda: cpu_state(cpu))

    # -- running one command line -----------------------------------------------------

    def run(self, line: str) -> str:
        """Execute one command line; returns its output (``\\n`` line ends)."""
        out: list[str] = []
        self._dispatch(line, out)
        return "".join(out)

    def _dispatch(self, line: str, out: list[str]) -> None:
        pos = _skip_spaces(line, 0)
        if pos >= len(line):
            return
        start = 0          # qemu quotes the line from its very start
        typed, pos = _command_word(line, pos)
        cmd = _find(COMMANDS, typed)
        if cmd is None:
            out.append("unknown command: '%s'\n" % line[start:pos])
            return
        table_cmd = cmd
        if cmd.name == "info":
            p = _skip_spaces(line, pos)
            if p >= len(line):
                out.append(self._help_text(INFO_COMMANDS, ["info"]))
                return
            sub, pos = _command_word(line, p)
            table_cmd = _find(INFO_COMMANDS, sub)
            if table_cmd is None:
                out.append("unknown command: '%s'\n" % line[start:pos])
                return
        typed_name = line[start:pos]
        try:
            getattr(self, table_cmd.handler)(line, pos, table_cmd, out)
        except HmpError as e:
            out.append("%s\n" % e)
            out.append('Try "help %s" for more information\n' % typed_name)
        except Exception as e:                 # a failure in the machine: say it, go on
            out.append("Error: %s\n" % (str(e) or type(e).__name__))

    def _end(self, line: str, pos: int, cmd: Command) -> None:
        if _skip_spaces(line, pos) < len(line):
            raise HmpError("%s: extraneous characters at the end of line" % cmd.name)

    # -- help ---------------------------------------------------------------------------

    @staticmethod
    def _help_text(table: list[Command], prefix: list[str]) -> str:
        pre = "".join(p + " " for p in prefix)
        return "".join("%s%s %s -- %s\n" % (pre, c.name, c.params, c.help) for c in table)

    def do_help(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        args = line[pos:].split()
        table = COMMANDS
        for i, arg in enumerate(args):
            found = _find(table, arg)
            if found is None:
                out.append("unknown command: '%s'\n" % " ".join(args[:i + 1]))
                return
            if found.name == "info" and table is COMMANDS:
                table = INFO_COMMANDS
                if i + 1 == len(args):
                    out.append(self._help_text(INFO_COMMANDS, args[:i + 1]))
                    return
                continue
            out.append(self._help_text([found], args[:i]))
            return
        out.append(self._help_text(COMMANDS, []))

    # -- run state ----------------------------------------------------------------------

    def do_stop(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        self.machine.stop()

    def do_cont(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        try:
            self.machine.cont()
        except Exception as e:       # qemu: "Resetting the Virtual Machine is required"
            out.append("Error: %s\n" % e)

    def do_system_reset(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        system_reset_and_wait(self.machine)

    def do_quit(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        self.suspended = True
        if self.on_quit is not None:
            self.on_quit()
        self.machine.quit()

    # -- memory and expressions ---------------------------------------------------------

    def _snapshot(self) -> Callable[[], dict[str, int]]:
        """The CPU state for one command, read once on first use (lazily: commands
        that use no register never touch the CPU)."""
        cache: dict[str, int] = {}

        def get() -> dict[str, int]:
            if not cache:
                cache.update(cpu_state(self.machine.cpu))
            return cache

        return get

    def do_print(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        fmt, pos = parse_format(line, pos)

        def work() -> str:
            regs = self._snapshot()
            val, end = parse_expr(line, pos, lambda name: register_value(regs(), name))
            self._end(line, end, cmd)
            return format_print(val, fmt.format)

        out.append(self._on_cpu(work))

    def _dump(self, line: str, pos: int, cmd: Command, out: list[str], physical: bool) -> None:
        fmt, pos = parse_format(line, pos)

        def work() -> str:
            # one CPU-thread visit: the registers, the mode and the memory read agree
            # even while the guest runs
            regs = self._snapshot()
            addr, end = parse_expr(line, pos, lambda name: register_value(regs(), name))
            self._end(line, end, cmd)
            addr &= _MASK64
            read = self._physical_reader() if physical else self._virtual_reader(regs())
            if fmt.format == "i":
                return format_disassembly(read, addr, fmt.count, code_bits(regs()))
            return format_memory(read, addr, fmt)

        out.append(self._on_cpu(work))

    def _physical_reader(self) -> Callable[[int, int], bytes]:
        """``xp``'s reads: RAM and ROM; like qemu's address_space_read, a range that
        touches unassigned space (the PCI hole, beyond RAM above 4 GiB) fails."""
        m = self.machine
        below = getattr(m, "ram_below", None)
        ranges: list[tuple[int, int]] = []
        if below is not None:
            four = 1 << 32
            ranges.append((0, below))
            if getattr(m, "ram_above", 0):
                ranges.append((four, four + m.ram_above))
            if getattr(m, "bios_base", None) is not None:
                ranges.append((m.bios_base, four))

        def read(addr: int, size: int) -> bytes:
            if ranges:
                at, end = addr, addr + size
                while at < end:
                    hit = [r for r in ranges if r[0] <= at < r[1]]
                    if not hit:
                        raise ValueError("unassigned physical address %#x" % at)
                    at = hit[0][1]
            return m.physical_read(addr, size)

        return read

    def _virtual_reader(self, regs: dict[str, int]) -> Callable[[int, int], bytes]:
        """``x``'s reads as qemu's debug translation does them: without paging the
        address is physical (A20 applied, not cut to 32 bits: above 4 GiB there is
        nothing to read), with paging through the guest's page tables."""
        cpu = self.machine.cpu
        if regs.get("cr0", 0) & (1 << 31):
            return cpu.read_virt
        a20 = getattr(getattr(cpu, "env", None), "a20_mask", _MASK64) | ~0xFFFFFFFF
        phys = self._physical_reader()

        def read(addr: int, size: int) -> bytes:
            if (addr & a20) != addr and (addr ^ (addr + size - 1)) >> 20:
                # the range crosses a 1 MiB boundary with A20 masked: byte by byte
                return b"".join(phys(a & a20, 1) for a in range(addr, addr + size))
            return phys(addr & a20, size)

        return read

    def do_x(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._dump(line, pos, cmd, out, physical=False)

    def do_xp(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._dump(line, pos, cmd, out, physical=True)

    # -- info -----------------------------------------------------------------------------

    def info_status(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        out.append(format_status(self.machine.status))

    def info_name(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        name = getattr(self.machine, "name", None)
        if name:
            out.append("%s\n" % name)

    def info_version(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        out.append("%s%s\n" % (version_string(), QEMU_PACKAGE))

    def info_cpus(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        out.append("* CPU #0: thread_id=%d\n" % cpu_thread_id(self.machine))

    def info_registers(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        flags, pos = _flags(line, pos, "a", cmd.name)
        vcpu = None
        if "a" not in flags and _skip_spaces(line, pos) < len(line):
            regs = self._snapshot()
            vcpu, pos = parse_expr(line, pos, lambda name: register_value(
                self._on_cpu(regs), name))
        self._end(line, pos, cmd)
        if vcpu is not None and vcpu != 0:
            out.append("CPU#%d not available\n" % vcpu)
            return
        out.append("\nCPU#0\n" + self._register_text())

    def info_block(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        flags, pos = _flags(line, pos, "nv", cmd.name)
        device, pos = _word(line, pos)
        self._end(line, pos, cmd)
        if "n" in flags:
            return              # named block nodes (-blockdev) do not exist here
        out.append(format_block_info(self.machine.block_info(), device, "v" in flags))

    def info_chardev(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        for c in self.machine.chardev_info():
            out.append("%s: filename=%s\n" % (c["label"], c["filename"]))

    def info_mtree(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        # qemu's -f (flat views), -d, -o, -D: not implemented, refused as unknown
        _flags_found, pos = _flags(line, pos, "", cmd.name)
        self._end(line, pos, cmd)
        out.append(self.machine.mtree_text())

    def info_pci(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        pci = self.machine.pci
        out.append(self._on_cpu(pci.info_text))

    def info_pic(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        # the 8259 pair; qemu prints its IOAPIC first, which this machine does not have
        self._end(line, pos, cmd)
        out.append(self._on_cpu(self.machine.pic.info_text))

    def info_qtree(self, line: str, pos: int, cmd: Command, out: list[str]) -> None:
        self._end(line, pos, cmd)
        out.append(self.machine.qtree_text())


def system_reset_and_wait(machine: Any, timeout: float = 10.0) -> None:
    """Reset the machine and return once its RESET event went out: qemu's QMP client
    sees the RESET event before the command's reply."""
    events = getattr(machine, "events", None)
    if events is None or not hasattr(events, "unsubscribe"):
        machine.system_reset()
        return
    done = threading.Event()

    def on_event(name: str, data: Any) -> None:
        if name == "RESET":
            done.set()

    events.subscribe(on_event)
    try:
        machine.system_reset()
        done.wait(timeout)
    finally:
        events.unsubscribe(on_event)


def format_status(status: str) -> str:
    """``info status`` for a run state name (qemu's RunState words)."""
    text = "VM status: %s" % ("running" if status == "running" else "paused")
    if status not in ("running", "paused"):
        text += " (%s)" % status
    return text + "\n"


def cpu_thread_id(machine: Any) -> int:
    """The host thread id of the CPU thread (``info cpus``, query-cpus-fast)."""
    tid = getattr(machine, "cpu_thread_id", None)
    if callable(tid):
        tid = tid()
    if isinstance(tid, int):
        return tid
    import os

    return os.getpid()


def format_block_info(blocks: list[dict[str, Any]], device: str | None, verbose: bool) -> str:
    """``info block`` from query-block's list (qemu's print_block_info)."""
    out = []
    for index, info in enumerate(blocks):
        if device is not None and device != info.get("device"):
            continue
        if index:                   # qemu: before every entry but the list's first
            out.append("\n")
        inserted = info.get("inserted")
        head = info.get("device") or ""
        if head:
            if inserted and inserted.get("node-name"):
                head += " (%s)" % inserted["node-name"]
        else:
            head = (inserted or {}).get("node-name") or info.get("qdev") or "<anonymous>"
        if inserted:
            head += ": %s (%s%s%s)" % (inserted["file"], inserted["drv"],
                                       ", read-only" if inserted.get("ro") else "",
                                       ", encrypted" if inserted.get("encrypted") else "")
        else:
            head += ": [not inserted]"
        out.append(head + "\n")
        if info.get("qdev"):
            out.append("    Attached to:      %s\n" % info["qdev"])
        if info.get("io-status", "ok") != "ok":
            out.append("    I/O status:       %s\n" % info["io-status"])
        if info.get("removable"):
            out.append("    Removable device: %slocked, tray %s\n"
                       % ("" if info.get("locked") else "not ",
                          "open" if info.get("tray_open") else "closed"))
        if not inserted:
            continue
        cache = inserted.get("cache", {"writeback": True})
        out.append("    Cache mode:       %s%s%s\n"
                   % ("writeback" if cache.get("writeback") else "writethrough",
                      ", direct" if cache.get("direct") else "",
                      ", ignore flushes" if cache.get("no-flush") else ""))
        if inserted.get("backing_file"):
            out.append("    Backing file:     %s (chain depth: %d)\n"
                       % (inserted["backing_file"], inserted.get("backing_file_depth", 1)))
        if inserted.get("detect_zeroes", "off") != "off":
            out.append("    Detect zeroes:    %s\n" % inserted["detect_zeroes"])
        if verbose and inserted.get("image"):
            from pyqemu.img_tool.info import dump_human  # qemu-img info's text

            out.append("\nImages:\n")
            image: dict[str, Any] | None = inserted["image"]
            while image:
                out.append(dump_human(image))
                image = image.get("backing-image")
    return "".join(out)


# --- the line editor (util/readline.c's behaviour) --------------------------------------


class Readline:
    """qemu's monitor line editor: feed bytes, get the echo and the finished lines."""

    def __init__(self) -> None:
        self.buf = ""
        self.index = 0
        self.last_buf = ""
        self.last_index = 0
        self.history: list[str] = []
        self.hist_pos = -1
        self._esc = ""            # pending escape sequence
        self._side_output = ""    # text a key printed besides the redraw (completions)
        # Tab: (text before the cursor) -> (candidates, where the completed word starts)
        self.completer: Callable[[str], tuple[list[str], int]] | None = None
        self._pending = b""       # an incomplete UTF-8 character

    def start_line(self) -> None:
        """After a prompt was shown: the echo starts at column 0 of the input."""
        self.buf = ""
        self.index = 0
        self.last_buf = ""
        self.last_index = 0
        self.hist_pos = -1

    def _update(self) -> str:
        out = ""
        if self.buf != self.last_buf:
            out += "\x1b[D" * self.last_index + self.buf + "\x1b[K"
            self.last_buf = self.buf
            self.last_index = len(self.buf)
        if self.index != self.last_index:
            delta = self.index - self.last_index
            out += ("\x1b[C" * delta) if delta > 0 else ("\x1b[D" * -delta)
            self.last_index = self.index
        return out

    def _history_add(self, line: str) -> None:
        if not line:
            return
        if line in self.history:
            self.history.remove(line)
        self.history.append(line)
        del self.history[:-64]

    def _key(self, key: str) -> str | None:
        """Apply one key; returns the finished line on Enter."""
        if key in ("\r", "\n"):
            line = self.buf
            self._history_add(line)
            self.start_line()
            return line
        if key in ("\x7f", "\x08"):
            if self.index > 0:
                self.buf = self.buf[:self.index - 1] + self.buf[self.index:]
                self.index -= 1
        elif key in ("\x04", "ESC[3~"):
            if self.index < len(self.buf):
                self.buf = self.buf[:self.index] + self.buf[self.index + 1:]
        elif key in ("\x01", "ESC[1~", "ESC[H", "ESCOH"):
            self.index = 0
        elif key in ("\x05", "ESC[4~", "ESC[F", "ESCOF"):
            self.index = len(self.buf)
        elif key in ("ESC[D", "ESCOD"):
            self.index = max(0, self.index - 1)
        elif key in ("ESC[C", "ESCOC"):
            self.index = min(len(self.buf), self.index + 1)
        elif key in ("ESC[A", "ESCOA"):
            if self.history:
                if self.hist_pos < 0:
                    self.hist_pos = len(self.history) - 1
                elif self.hist_pos > 0:
                    self.hist_pos -= 1
                self.buf = self.history[self.hist_pos]
                self.index = len(self.buf)
        elif key in ("ESC[B", "ESCOB"):
            if self.hist_pos >= 0:
                self.hist_pos += 1
                if self.hist_pos >= len(self.history):
                    self.hist_pos = -1
                    self.buf = ""
                else:
                    self.buf = self.history[self.hist_pos]
                self.index = len(self.buf)
        elif key == "\t":
            self._complete()
        elif len(key) == 1 and ord(key) >= 32:
            self._insert(key)
        return None

    def _insert(self, text: str) -> None:
        self.buf = self.buf[:self.index] + text + self.buf[self.index:]
        self.index += len(text)

    def _complete(self) -> None:
        """Tab: qemu's readline_completion over :attr:`completer`'s candidates."""
        if self.completer is None:
            return
        before = self.buf[:self.index]
        found, start = self.completer(before)
        if not found:
            return
        typed = len(before) - start               # qemu's completion_index
        if len(found) == 1:
            word = found[0]
            self._insert(word[typed:])
            if word and not word.endswith("/"):
                self._insert(" ")
            return
        found = sorted(found)
        prefix = found[0]
        for w in found[1:]:
            while not w.startswith(prefix):
                prefix = prefix[:-1]
        if len(prefix) > typed:
            self._insert(prefix[typed:])
        width = min(max(max(len(w) for w in found) + 2, 10), 80)
        cols = 80 // width
        text = "\r\n"
        for i, w in enumerate(found):
            text += "%-*s" % (width, w)
            if (i + 1) % cols == 0 or i == len(found) - 1:
                text += "\r\n"
        self._side_output += text + PROMPT
        self.last_buf = ""
        self.last_index = 0

    def feed(self, data: bytes) -> tuple[str, list[tuple[str, str]]]:
        """Process input bytes. Returns (echo text for the input before the first
        finished line or all of it, [(line, echo after that line)...])."""
        text = (self._pending + data).decode("utf-8", errors="replace") if data else ""
        self._pending = b""
        echo = ""
        lines: list[tuple[str, str]] = []
        current = echo
        for ch in text:
            if self._esc:
                self._esc += ch
                if self._esc in ("\x1b[", "\x1bO") or (self._esc.startswith("\x1b[")
                                                       and ch.isdigit()):
                    continue
                key = "ESC" + self._esc[1:]
                self._esc = ""
            elif ch == "\x1b":
                self._esc = ch
                continue
            else:
                key = ch
            line = self._key(key)
            if line is not None:
                current += "\r\n"
                if lines:
                    lines[-1] = (lines[-1][0], lines[-1][1] + current)
                else:
                    echo = current
                lines.append((line, ""))
                current = ""
            else:
                current += self._side_output + self._update()
                self._side_output = ""
        if lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + current)
        else:
            echo = current
        return echo, lines


def complete(text: str) -> tuple[list[str], int]:
    """qemu's monitor_find_completion for command names and ``info`` subcommands:
    (candidates, start of the word being completed in ``text``)."""
    words = text.split()
    if not words or text[-1:].isspace():
        words.append("")
    start = len(text) - len(words[-1])
    if len(words) == 1:
        table = COMMANDS
    elif len(words) == 2 and _find(COMMANDS, words[0]) is _find(COMMANDS, "info"):
        table = INFO_COMMANDS
    else:
        return [], start
    found = []
    for cmd in table:
        for name in cmd.name.split("|"):
            if name.startswith(words[-1]):
                found.append(name)
    return found, start


class HmpSession:
    """One monitor on a character device: no I/O, bytes in -> bytes out.

    ``execute(line)`` runs a command (the owner may run it on any thread); the
    session adds the prompt and converts line ends."""

    def __init__(self, hmp: Hmp, *, echo: bool = True) -> None:
        self.hmp = hmp
        self.readline = Readline()
        self.readline.completer = complete
        self.echo = echo

    @staticmethod
    def crlf(text: str) -> bytes:
        return text.replace("\n", "\r\n").encode("utf-8", errors="replace")

    def greeting(self) -> bytes:
        self.readline.start_line()
        return self.crlf(BANNER) + PROMPT.encode()

    def feed(self, data: bytes) -> list[tuple[bytes, str | None]]:
        """Returns a list of (bytes to send now, command line to run next or None).
        After running a line, send :meth:`after_command` with its output."""
        if self.hmp.suspended:
            return []
        echo, lines = self.readline.feed(data)
        result: list[tuple[bytes, str | None]] = []
        if not lines:
            return [(echo.encode() if self.echo else b"", None)]
        result.append((echo.encode() if self.echo else b"", lines[0][0]))
        for i in range(1, len(lines)):
            result.append((lines[i - 1][1].encode() if self.echo else b"", lines[i][0]))
        result.append((lines[-1][1].encode() if self.echo else b"", None))
        return result

    def after_command(self, output: str) -> bytes:
        if self.hmp.suspended:
            return self.crlf(output)
        return self.crlf(output) + PROMPT.encode()
