"""qemu-user 7.2's command line for pyqemu-arm / pyqemu-aarch64.

Behaviour measured against qemu-arm/qemu-aarch64 7.2 (Debian 1:7.2+dfsg-7):

- The QEMU_* environment variables are handled first, in the option table's order and
  by the same handlers as the options (a variable that is set counts even when empty:
  ``QEMU_STRACE=`` turns strace on, ``QEMU_VERSION=`` prints the version), then the
  options. ``--opt`` is the same as ``-opt``; a lone ``--`` ends the options; the first
  word that does not start with ``-`` is the program and everything after it belongs to
  the guest.
- Errors: ``qemu: unknown option 'x'``, ``qemu: missing argument for option 'x'``,
  ``qemu: no user program specified`` on stderr, exit 1. A zero ``-s`` size, or an
  ``-E``/``-U`` word without/with ``=``, prints the help on stdout and exits 1, as qemu.
  ``-d`` with an unknown item prints the log item list on stdout and exits 1; ``-cpu
  help`` prints the CPU list on stdout and exits 1; ``-h``/``-help`` exit 0.
- The guest environment is qemu's envlist: the host environment with -E/-U (and
  QEMU_SET_ENV/QEMU_UNSET_ENV) applied and nothing added. Like qemu's envlist, the
  result comes out in reverse order, a variable set again moves to the front. One
  deliberate difference: qemu's ``-U NAME`` removes the first variable whose name
  merely *starts* with NAME (``-U B`` can remove ``BB=1``); here it removes NAME only.

Naming: the help and version texts name the binary ``pyqemu-arm`` where qemu prints
``qemu-arm`` (as pyqemu-img does for qemu-img), with qemu's layout otherwise, and
``-version`` reads ``pyqemu-arm version 7.2.0 (pyqemu 0.1.0)``. Messages qemu prints
with a literal ``qemu:`` keep it. The default ``-L`` prefix is Debian's
``/etc/qemu-binfmt/<arch>``.

Not supported yet (parsed, then refused with a clear message): ``-g`` (gdbstub) and
``-plugin``. ``-dfilter`` ranges are parsed and checked as qemu does
(:attr:`UserOptions.dfilter_ranges`); ``-trace`` and ``-d trace:PATTERN`` are checked as
qemu does and give its "trace event does not exist" warnings, since pyqemu has no trace
events; ``-p``, ``-B`` and ``-R`` are parsed and checked as qemu does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["UserOptions", "parse_command_line", "cpu_models", "LOG_ITEMS",
           "QEMU_VERSION", "PYQEMU_VERSION", "open_log", "host_environ"]

QEMU_VERSION = "7.2.0"
PYQEMU_VERSION = "0.1.0"
COPYRIGHT = "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers"
DEFAULT_STACK_SIZE = 8 << 20          # TARGET_DEFAULT_STACK_SIZE
ULONG_MASK = (1 << 64) - 1

#: -cpu models, in qemu-arm's ``-cpu help`` order, that unicorn 2.1.4 implements
#: (name -> unicorn's constant in unicorn.arm_const / unicorn.arm64_const)
CPU_MODELS: dict[str, dict[str, str]] = {
    "arm": {
        "arm1026": "UC_CPU_ARM_1026", "arm1136": "UC_CPU_ARM_1136",
        "arm1136-r2": "UC_CPU_ARM_1136_R2", "arm1176": "UC_CPU_ARM_1176",
        "arm11mpcore": "UC_CPU_ARM_11MPCORE", "arm926": "UC_CPU_ARM_926",
        "arm946": "UC_CPU_ARM_946", "cortex-a15": "UC_CPU_ARM_CORTEX_A15",
        "cortex-a7": "UC_CPU_ARM_CORTEX_A7", "cortex-a8": "UC_CPU_ARM_CORTEX_A8",
        "cortex-a9": "UC_CPU_ARM_CORTEX_A9", "cortex-m0": "UC_CPU_ARM_CORTEX_M0",
        "cortex-m3": "UC_CPU_ARM_CORTEX_M3", "cortex-m33": "UC_CPU_ARM_CORTEX_M33",
        "cortex-m4": "UC_CPU_ARM_CORTEX_M4", "cortex-m7": "UC_CPU_ARM_CORTEX_M7",
        "cortex-r5": "UC_CPU_ARM_CORTEX_R5", "cortex-r5f": "UC_CPU_ARM_CORTEX_R5F",
        "max": "UC_CPU_ARM_MAX", "pxa250": "UC_CPU_ARM_PXA250",
        "pxa255": "UC_CPU_ARM_PXA255", "pxa260": "UC_CPU_ARM_PXA260",
        "pxa261": "UC_CPU_ARM_PXA261", "pxa262": "UC_CPU_ARM_PXA262",
        "pxa270-a0": "UC_CPU_ARM_PXA270A0", "pxa270-a1": "UC_CPU_ARM_PXA270A1",
        "pxa270": "UC_CPU_ARM_PXA270", "pxa270-b0": "UC_CPU_ARM_PXA270B0",
        "pxa270-b1": "UC_CPU_ARM_PXA270B1", "pxa270-c0": "UC_CPU_ARM_PXA270C0",
        "pxa270-c5": "UC_CPU_ARM_PXA270C5", "sa1100": "UC_CPU_ARM_SA1100",
        "sa1110": "UC_CPU_ARM_SA1110", "ti925t": "UC_CPU_ARM_TI925T",
        "any": "UC_CPU_ARM_MAX",
    },
    "aarch64": {
        "cortex-a53": "UC_CPU_ARM64_A53", "cortex-a57": "UC_CPU_ARM64_A57",
        "cortex-a72": "UC_CPU_ARM64_A72", "max": "UC_CPU_ARM64_MAX",
    },
}

#: ``-d`` items and their help lines, as qemu-user 7.2 lists them
LOG_ITEMS: list[tuple[str, str]] = [
    ("out_asm", "show generated host assembly code for each compiled TB"),
    ("in_asm", "show target assembly code for each compiled TB"),
    ("op", "show micro ops for each compiled TB"),
    ("op_opt", "show micro ops after optimization"),
    ("op_ind", "show micro ops before indirect lowering"),
    ("int", "show interrupts/exceptions in short format"),
    ("exec", "show trace before each executed TB (lots of logs)"),
    ("cpu", "show CPU registers before entering a TB (lots of logs)"),
    ("fpu", "include FPU registers in the 'cpu' logging"),
    ("mmu", "log MMU-related activities"),
    ("pcall", "x86 only: show protected mode far calls/returns/exceptions"),
    ("cpu_reset", "show CPU state before CPU resets"),
    ("unimp", "log unimplemented functionality"),
    ("guest_errors", "log when the guest OS does something invalid (eg accessing a\n"
                     "non-existent register)"),
    ("page", "dump pages at beginning of user mode emulation"),
    ("nochain", "do not chain compiled TBs so that \"exec\" and \"cpu\" show\n"
                "complete traces"),
    ("plugin", "output from TCG plugins"),
    ("strace", "log every user-mode syscall, its input, and its result"),
    ("tid", "open a separate log file per thread; filename must contain '%d'"),
]
_LOG_NAMES = {name for name, _ in LOG_ITEMS}


def cpu_models(arch: str) -> list[str]:
    """The ``-cpu`` names pyqemu-``arch`` accepts, in ``-cpu help`` order."""
    return list(CPU_MODELS[arch])


def uc_cpu_model(arch: str, name: str) -> int:
    """unicorn's CPU model number for ``-cpu name`` (imports unicorn)."""
    if arch == "aarch64":
        from unicorn import arm64_const as consts
    else:
        from unicorn import arm_const as consts
    return int(getattr(consts, CPU_MODELS[arch][name]))


@dataclass
class UserOptions:
    """What the command line and the QEMU_* variables ask for."""

    arch: str
    program: str
    argv: list[str]             # the guest's argv (argv[0] replaced by -0)
    env: list[str]              # the guest's environment, "K=V", qemu's envlist order
    ld_prefix: str | None       # absolute; None when "" or "/" (no prefix)
    stack_size: int
    cpu: str | None
    log_items: set[str]
    log_file: str | None
    strace: bool
    seed: int | None
    singlestep: bool
    uname_release: str | None
    reserved_va: int | None
    guest_base: int | None
    page_size: int | None
    # extensions
    argv0: str | None = None
    gdb: str | None = None
    dfilter: str | None = None
    dfilter_ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive
    trace: list[str] = field(default_factory=list)
    trace_patterns: list[str] = field(default_factory=list)   # -d trace:PATTERN

    @property
    def stack_mapping_size(self) -> int:
        """The stack to map: ``stack_size`` raised to qemu's minimum (STACK_LOWER_LIMIT,
        32 pages), page-aligned; ``-s`` itself is kept raw, as qemu prints it."""
        return max(-(-self.stack_size // 4096) * 4096, 32 * 4096)


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _emit(stream: TextIO, text: str) -> None:
    """Write ``text`` as the bytes it came from (arguments that are not UTF-8 come
    back as they were given, as qemu prints them)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(os.fsencode(text))
    buffer.flush()


def _strtoul(text: str) -> tuple[int, str]:
    """C's strtoul(text, &end, 0): the value (mod 2**64, ULONG_MAX on overflow) and
    the text after the number (all of ``text`` when nothing was converted)."""
    value, rest, _overflow = _strto(text)
    return value, rest


def _scan_number(text: str) -> tuple[bool, int, str]:
    """The number strtol/strtoul (base 0) would read: (negative, magnitude, rest);
    ``rest`` is all of ``text`` when there is no number."""
    i = 0
    while i < len(text) and text[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < len(text) and text[i] in "+-":
        neg = text[i] == "-"
        i += 1
    base = 10
    if text[i:i + 2] in ("0x", "0X") and text[i + 2:i + 3] and \
            text[i + 2] in "0123456789abcdefABCDEF":
        base, i = 16, i + 2
    elif text[i:i + 1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    j = i
    while j < len(text) and text[j].lower() in digits:
        j += 1
    if j == i:
        return False, 0, text
    return neg, int(text[i:j], base), text[j:]


def _strto(text: str) -> tuple[int, str, bool]:
    """strtoul: (value mod 2**64 or ULONG_MAX on overflow, rest, overflowed)."""
    neg, magnitude, rest = _scan_number(text)
    if magnitude > ULONG_MASK:
        return ULONG_MASK, rest, True
    return (-magnitude & ULONG_MASK if neg else magnitude), rest, False


def _strtol(text: str) -> int:
    """C's strtol(text, NULL, 0) on a 64-bit host (saturating)."""
    neg, magnitude, _rest = _scan_number(text)
    return max(-magnitude, -(1 << 63)) if neg else min(magnitude, (1 << 63) - 1)


def _atoi(text: str) -> int:
    """C's atoi: decimal, leading blanks and a sign, int-wrapped."""
    s = text.lstrip(" \t\n\v\f\r")
    j = 1 if s[:1] in ("+", "-") else 0
    while j < len(s) and s[j] in "0123456789":
        j += 1
    try:
        value = int(s[:j])
    except ValueError:
        return 0
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


def _parse_uint_full(text: str) -> int | None:
    """qemu's parse_uint_full(text, base 0) into 64 bits: None when invalid."""
    s = text.lstrip(" \t\n\v\f\r")
    if s.startswith("-"):
        return None
    value, rest, overflow = _strto(s)
    if rest == s or rest or overflow:
        return None
    return value


def _default_stack_size() -> int:
    import resource

    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    except (OSError, ValueError):
        return DEFAULT_STACK_SIZE
    if soft == resource.RLIM_INFINITY or soft < 0:
        return DEFAULT_STACK_SIZE
    return soft


class _Parser:
    """parse_args of linux-user/main.c, one handler per table row."""

    def __init__(self, arch: str, prog: str, entries: list[str]) -> None:
        self.arch = arch
        self.prog = prog            # for error_report-style messages
        self.out = sys.stdout
        self.err = sys.stderr
        self.ld_prefix = f"/etc/qemu-binfmt/{arch}"
        self.stack_size = _default_stack_size()
        self.cpu: str | None = None
        self.log_items: set[str] = set()
        self.trace_patterns: list[str] = []
        self.log_file: str | None = None
        self.strace = False
        self.seed_text: str | None = None
        self.singlestep = False
        self.uname: str | None = None
        self.reserved_va: int | None = None
        self.guest_base: int | None = None
        self.page_size: int | None = None
        self.argv0: str | None = None
        self.gdb: str | None = None
        self.dfilter: str | None = None
        self.dfilter_ranges: list[tuple[int, int]] = []
        self.trace: list[str] = []
        self.plugin: str | None = None
        # qemu's envlist: newest first
        self.env: list[str] = []
        for entry in entries:
            self._setenv(entry)
        # (name, env variable, has_arg, handler, example, help)
        self.table: list[tuple[str, str, bool, Callable[[str | None], None], str, str]] = [
            ("h", "", False, self.h_help, "", "print this help"),
            ("help", "", False, self.h_help, "", ""),
            ("g", "QEMU_GDB", True, self.h_gdb, "port", "wait gdb connection to 'port'"),
            ("L", "QEMU_LD_PREFIX", True, self.h_ld_prefix, "path",
             "set the elf interpreter prefix to 'path'"),
            ("s", "QEMU_STACK_SIZE", True, self.h_stack_size, "size",
             "set the stack size to 'size' bytes"),
            ("cpu", "QEMU_CPU", True, self.h_cpu, "model", "select CPU (-cpu help for list)"),
            ("E", "QEMU_SET_ENV", True, self.h_set_env, "var=value",
             "sets targets environment variable (see below)"),
            ("U", "QEMU_UNSET_ENV", True, self.h_unset_env, "var",
             "unsets targets environment variable (see below)"),
            ("0", "QEMU_ARGV0", True, self.h_argv0, "argv0",
             "forces target process argv[0] to be 'argv0'"),
            ("r", "QEMU_UNAME", True, self.h_uname, "uname",
             "set qemu uname release string to 'uname'"),
            ("B", "QEMU_GUEST_BASE", True, self.h_guest_base, "address",
             "set guest_base address to 'address'"),
            ("R", "QEMU_RESERVED_VA", True, self.h_reserved_va, "size",
             "reserve 'size' bytes for guest virtual address space"),
            ("d", "QEMU_LOG", True, self.h_log, "item[,...]",
             "enable logging of specified items (use '-d help' for a list of items)"),
            ("dfilter", "QEMU_DFILTER", True, self.h_dfilter, "range[,...]",
             "filter logging based on address range"),
            ("D", "QEMU_LOG_FILENAME", True, self.h_log_file, "logfile",
             "write logs to 'logfile' (default stderr)"),
            ("p", "QEMU_PAGESIZE", True, self.h_pagesize, "pagesize",
             "set the host page size to 'pagesize'"),
            ("singlestep", "QEMU_SINGLESTEP", False, self.h_singlestep, "",
             "run in singlestep mode"),
            ("strace", "QEMU_STRACE", False, self.h_strace, "", "log system calls"),
            ("seed", "QEMU_RAND_SEED", True, self.h_seed, "",
             "Seed for pseudo-random number generator"),
            ("trace", "QEMU_TRACE", True, self.h_trace, "",
             "[[enable=]<pattern>][,events=<file>][,file=<file>]"),
            ("plugin", "QEMU_PLUGIN", True, self.h_plugin, "",
             "[file=]<file>[,<argname>=<argvalue>]"),
            ("version", "QEMU_VERSION", False, self.h_version, "",
             "display version information and exit"),
        ]

    # --- output helpers ---------------------------------------------------------------
    def usage(self, status: int) -> None:
        _emit(self.out, self.usage_text())
        raise _Exit(status)

    def usage_text(self) -> str:
        name = f"pyqemu-{self.arch}"
        lines = [f"usage: {name} [options] program [arguments...]",
                 f"Linux CPU emulator (compiled for {self.arch} emulation)", "",
                 "Options and associated environment variables:", ""]
        maxarg = len("Argument")
        maxenv = len("Env-variable")
        for opt, env, has_arg, _h, example, _help in self.table:
            arglen = len(opt) + (len(example) + 1 if has_arg else 0)
            maxarg = max(maxarg, arglen)
            maxenv = max(maxenv, len(env))
        lines.append("%-*s %-*s Description" % (maxarg + 1, "Argument", maxenv, "Env-variable"))
        for opt, env, has_arg, _h, example, text in self.table:
            if has_arg:
                lines.append("-%s %-*s %-*s %s" % (opt, maxarg - len(opt) - 1, example,
                                                   maxenv, env, text))
            else:
                lines.append("-%-*s %-*s %s" % (maxarg, opt, maxenv, env, text))
        stack = self.stack_size
        if stack >= 1 << 63:
            stack -= 1 << 64      # qemu prints it with %ld
        lines += ["", "Defaults:", f"QEMU_LD_PREFIX  = {self.ld_prefix}",
                  f"QEMU_STACK_SIZE = {stack} byte", "",
                  "You can use -E and -U options or the QEMU_SET_ENV and",
                  "QEMU_UNSET_ENV environment variables to set and unset",
                  "environment variables for the target process.",
                  "It is possible to provide several variables by separating them",
                  "by commas in getsubopt(3) style. Additionally it is possible to",
                  "provide the -E and -U options multiple times.",
                  "The following lines are equivalent:",
                  "    -E var1=val2 -E var2=val2 -U LD_PRELOAD -U LD_DEBUG",
                  "    -E var1=val2,var2=val2 -U LD_PRELOAD,LD_DEBUG",
                  "    QEMU_SET_ENV=var1=val2,var2=val2 QEMU_UNSET_ENV=LD_PRELOAD,LD_DEBUG",
                  "Note that if you provide several changes to a single variable",
                  "the last change will stay in effect.", "",
                  "See <https://qemu.org/contribute/report-a-bug> for how to report bugs.",
                  "More information on the QEMU project at <https://qemu.org>."]
        return "\n".join(lines) + "\n"

    def fail(self, message: str) -> None:
        _emit(self.err, message + "\n")
        raise _Exit(1)

    # --- envlist ----------------------------------------------------------------------
    def _setenv(self, entry: str) -> bool:
        if "=" not in entry:
            return False
        prefix = entry[:entry.index("=") + 1]
        self.env = [e for e in self.env if not e.startswith(prefix)][:]
        self.env.insert(0, entry)
        return True

    def _unsetenv(self, name: str) -> bool:
        if "=" in name:
            return False
        prefix = name + "="
        for i, e in enumerate(self.env):
            if e.startswith(prefix):
                del self.env[i]
                break
        return True

    # --- handlers (linux-user/main.c's handle_arg_*) ----------------------------------
    def h_help(self, arg: str | None) -> None:
        self.usage(0)

    def h_version(self, arg: str | None) -> None:
        _emit(self.out, f"pyqemu-{self.arch} version {QEMU_VERSION} (pyqemu {PYQEMU_VERSION})"
                       f"\n{COPYRIGHT}\n")
        raise _Exit(0)

    def h_gdb(self, arg: str | None) -> None:
        self.gdb = arg

    def h_ld_prefix(self, arg: str | None) -> None:
        self.ld_prefix = arg or ""

    def h_stack_size(self, arg: str | None) -> None:
        value, rest = _strtoul(arg or "")
        self.stack_size = value
        if value == 0:
            self.usage(1)
        if rest[:1] == "M":
            self.stack_size = (value << 20) & ULONG_MASK
        elif rest[:1] in ("k", "K"):
            self.stack_size = (value << 10) & ULONG_MASK

    def h_cpu(self, arg: str | None) -> None:
        self.cpu = arg
        if arg in ("help", "?"):
            _emit(self.out, "Available CPUs:\n"
                           + "".join(f"  {m}\n" for m in CPU_MODELS[self.arch]))
            raise _Exit(1)

    def h_set_env(self, arg: str | None) -> None:
        for token in (arg or "").split(","):
            if not self._setenv(token):
                self.usage(1)

    def h_unset_env(self, arg: str | None) -> None:
        for token in (arg or "").split(","):
            if not self._unsetenv(token):
                self.usage(1)

    def h_argv0(self, arg: str | None) -> None:
        self.argv0 = arg

    def h_uname(self, arg: str | None) -> None:
        self.uname = arg

    def h_guest_base(self, arg: str | None) -> None:
        self.guest_base = _strtol(arg or "")

    def h_reserved_va(self, arg: str | None) -> None:
        value, rest = _strtoul(arg or "")
        shift = {"k": 10, "K": 10, "M": 20, "G": 30}.get(rest[:1], 0)
        if shift:
            rest = rest[1:]
            shifted = (value << shift) & ULONG_MASK
            if shifted >> shift != value:
                self.fail("Reserved virtual address too big")
            value = shifted
        if rest:
            self.fail(f"Unrecognised -R size suffix '{rest}'")
        self.reserved_va = value or None

    def h_log(self, arg: str | None) -> None:
        items: set[str] = set()
        patterns: list[str] = []
        words = (arg or "").split(",") if arg else []
        ok = bool(words)
        for word in words:
            if word == "all":
                items |= _LOG_NAMES
            elif word.startswith("trace:"):
                pattern = word[len("trace:"):]
                self.trace_event(pattern, f"{self.prog}: ")
                patterns.append(pattern)
            elif word in _LOG_NAMES:
                items.add(word)
            else:
                ok = False
                break
        if not ok:
            _emit(self.out, log_usage())
            raise _Exit(1)
        self.log_items = items
        self.trace_patterns = patterns

    def h_dfilter(self, arg: str | None) -> None:
        """qemu_set_dfilter_ranges: ``a+len``, ``a-len`` or ``a..b``, comma separated."""
        self.dfilter = arg
        ranges = []
        for spec in (arg or "").split(","):
            for op in ("-", "+", ".."):
                at = spec.find(op)
                if at >= 0:
                    break
            else:
                self.fail(f"{self.prog}: Bad range specifier")
            left, right = spec[:at], spec[at + len(op):]
            lo, rest, overflow = _strto(left)
            if rest == left or rest or overflow:
                self.fail(f"{self.prog}: Invalid number to the left of {op}")
            value, rest, overflow = _strto(right)
            if rest == right or rest or overflow:
                self.fail(f"{self.prog}: Invalid number to the right of {op}")
            if op == "+":
                lo, hi = lo, lo + value - 1
            elif op == "-":
                lo, hi = (lo - value) & ULONG_MASK, lo - 1
            else:
                hi = value
            if hi < lo:
                self.fail(f"{self.prog}: Invalid range")
            ranges.append((lo, hi))
        self.dfilter_ranges = ranges

    def h_log_file(self, arg: str | None) -> None:
        self.log_file = arg

    def h_pagesize(self, arg: str | None) -> None:
        value = _atoi(arg or "")
        if value <= 0 or value & (value - 1):
            self.fail("page size must be a power of two")
        self.page_size = value

    def h_singlestep(self, arg: str | None) -> None:
        self.singlestep = True

    def h_strace(self, arg: str | None) -> None:
        self.strace = True

    def h_seed(self, arg: str | None) -> None:
        self.seed_text = arg

    def h_trace(self, arg: str | None) -> None:
        """``[[enable=]<pattern>][,events=<file>][,file=<file>]``: pyqemu has no trace
        events, so a pattern without ``*`` gets qemu's "does not exist" warning."""
        self.trace.append(arg or "")
        enable = events = None
        for part in (arg or "").split(","):
            key, eq, value = part.partition("=")
            if not eq:
                key, value = "enable", part
            if key == "enable":
                enable = value
            elif key == "events":
                events = value
            elif key != "file":
                self.fail(f"{self.prog}: Invalid parameter '{key}'")
        if enable:
            self.trace_event(enable, f"{self.prog}: ")
        if events is not None:
            try:
                with open(events, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError as e:
                self.fail(f"{self.prog}:{events}: {os.strerror(e.errno or 2)}")
            for number, line in enumerate(lines, 1):
                name = line.strip()
                if name and not name.startswith("#"):
                    self.trace_event(name.lstrip("-"), f"{self.prog}:{events}:{number}: ")

    def trace_event(self, pattern: str, where: str) -> None:
        if pattern == "help":
            raise _Exit(0)              # the (empty) list of trace events
        if pattern and "*" not in pattern:
            _emit(self.err, f"{where}warning: trace event '{pattern}' does not exist\n")

    def h_plugin(self, arg: str | None) -> None:
        self.plugin = arg

    # --- parse_args -------------------------------------------------------------------
    def parse(self, args: list[str], environ: Mapping[str, str]) -> int:
        """Handle the variables and the options; return the index of the program."""
        for _opt, env, has_arg, handler, _ex, _help in self.table:
            if env and env in environ:
                handler(environ[env] if has_arg else None)
        i = 0
        while i < len(args):
            word = args[i]
            if not word.startswith("-"):
                break
            i += 1
            opt = word[1:]
            if opt == "-":
                break
            if opt.startswith("-"):
                opt = opt[1:]
            for name, _env, has_arg, handler, _ex, _help in self.table:
                if opt == name:
                    if has_arg:
                        if i >= len(args):
                            self.fail(f"qemu: missing argument for option '{opt}'")
                        handler(args[i])
                        i += 1
                    else:
                        handler(None)
                    break
            else:
                self.fail(f"qemu: unknown option '{opt}'")
        if i >= len(args):
            self.fail("qemu: no user program specified")
        return i


def log_usage() -> str:
    """``-d help``: qemu-user 7.2's log item list."""
    out = ["Log items (comma separated):"]
    for name, text in LOG_ITEMS:
        if name == "strace":
            out.append("")
        out.append("%-15s %s" % (name, text))
    out += ["trace:PATTERN   enable trace events", "",
            'Use "-d trace:help" to get a list of trace events.', "", ""]
    return "\n".join(out)


def parse_command_line(arch: str, argv: list[str], environ: Mapping[str, str], *,
                       prog: str | None = None) -> UserOptions:
    """Parse ``argv`` (the words after the binary's name) and the QEMU_* variables of
    ``environ``, as qemu-``arch`` 7.2 does.

    Prints -h/-version/-cpu help/-d help itself and raises SystemExit with qemu's
    status; bad options print qemu's message on stderr and raise SystemExit(1).
    ``prog`` names the binary in error_report-style messages (default
    ``pyqemu-<arch>``). When ``environ`` is ``os.environ`` itself, the environment
    the process started with is used (:func:`host_environ`).
    """
    if arch not in CPU_MODELS:
        raise ValueError(f"unknown user-mode architecture {arch!r}")
    prog = prog or f"pyqemu-{arch}"
    if environ is os.environ:
        entries = host_environ()
    else:
        entries = [f"{key}={value}" for key, value in environ.items()]
    lookup: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if sep and key not in lookup:     # getenv() finds the first one
            lookup[key] = value
    parser = _Parser(arch, prog, entries)
    try:
        index = parser.parse(list(argv), lookup)
        _check(parser, argv[index])
    except _Exit as e:
        _flush(parser)
        raise SystemExit(e.status) from None
    program = argv[index]
    guest_argv = list(argv[index:])
    if parser.argv0 is not None:
        guest_argv[0] = parser.argv0
    return UserOptions(
        arch=arch, program=program, argv=guest_argv, env=list(parser.env),
        # qemu's init_paths: made absolute at start-up, "" or "/" is no prefix
        ld_prefix=(os.path.abspath(parser.ld_prefix)
                   if parser.ld_prefix not in ("", "/") else None),
        stack_size=parser.stack_size, cpu=parser.cpu,
        # -strace and -d strace are the same thing in qemu 7.2 (LOG_STRACE)
        log_items=set(parser.log_items) | ({"strace"} if parser.strace else set()),
        log_file=parser.log_file, strace=parser.strace or "strace" in parser.log_items, seed=_seed(parser), singlestep=parser.singlestep,
        uname_release=parser.uname, reserved_va=parser.reserved_va,
        guest_base=parser.guest_base, page_size=parser.page_size, argv0=parser.argv0,
        gdb=parser.gdb, dfilter=parser.dfilter, dfilter_ranges=list(parser.dfilter_ranges),
        trace=list(parser.trace),
        trace_patterns=list(parser.trace_patterns))


def host_environ() -> list[str]:
    """The environment this process was started with, as "K=V" entries in order.

    Read from /proc/self/environ, because Python changes ``os.environ`` at start-up
    (PEP 538 adds LC_CTYPE=C.UTF-8 under the C locale) and a guest must get exactly
    the environment qemu-user would pass on. Falls back to ``os.environ``.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return [f"{key}={value}" for key, value in os.environ.items()]
    return [os.fsdecode(entry) for entry in raw.split(b"\0") if entry]


def _seed(parser: _Parser) -> int | None:
    if parser.seed_text is None:
        return None
    return _parse_uint_full(parser.seed_text)


def _check(parser: _Parser, program: str) -> None:
    """The checks qemu's main() makes after parse_args.

    qemu opens the log file, then the program, then looks up the CPU model and the
    seed: when the log file or the program cannot be opened, the CPU and seed errors
    are left alone here, so that the caller reports those first, as qemu does.
    """
    prog = parser.prog
    if "tid" in parser.log_items and "%d" not in (parser.log_file or ""):
        parser.fail(f"{prog}: Filename template with '%d' required for 'tid'")
    if _openable(program) and (not parser.log_file or _log_openable(parser.log_file)):
        if parser.cpu is not None and parser.cpu not in CPU_MODELS[parser.arch]:
            parser.fail(f"{prog}: unable to find CPU model '{parser.cpu}'")
        if parser.seed_text is not None and _parse_uint_full(parser.seed_text) is None:
            parser.fail(f"{prog}: cannot initialize crypto: Invalid seed number: "
                        f"{parser.seed_text}")
    if parser.reserved_va is not None and parser.arch == "arm" \
            and parser.reserved_va > 1 << 32:
        parser.fail("Reserved virtual address too big")
    if parser.guest_base is not None and parser.guest_base % 4096:
        parser.fail("Requested guest base 0x%x does not satisfy host minimum alignment "
                    "(0x1000)" % (parser.guest_base & ULONG_MASK))
    if parser.gdb is not None:
        parser.fail(f"{prog}: -g {parser.gdb}: the gdbstub is not supported yet")
    if parser.plugin is not None:
        parser.fail(f"{prog}: -plugin: TCG plugins are not supported")


def _openable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def _log_openable(name: str) -> bool:
    name = name.replace("%d", str(os.getpid()), 1)
    return os.access(name, os.W_OK) if os.path.exists(name) else \
        os.access(os.path.dirname(os.path.abspath(name)), os.W_OK | os.X_OK)


def _flush(parser: _Parser) -> None:
    for stream in (parser.out, parser.err):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def open_log(opts: UserOptions, prog: str | None = None):  # noqa: ANN201 - a text file
    """The log stream of ``-D`` (``%d`` replaced by the pid, as qemu) or sys.stderr.

    qemu opens the file even when no ``-d`` item is given; a file that cannot be
    opened is ``<prog>: Error opening logfile <name>: <strerror>``, exit 1.
    """
    if not opts.log_file:
        return sys.stderr
    name = opts.log_file.replace("%d", str(os.getpid()), 1) if "%d" in opts.log_file \
        else opts.log_file
    try:
        return open(name, "w", buffering=1)  # noqa: SIM115 - lives with the process
    except OSError as e:
        _emit(sys.stderr, f"{prog or 'pyqemu-' + opts.arch}: Error opening logfile "
                         f"{name}: {os.strerror(e.errno or 2)}\n")
        raise SystemExit(1) from None
