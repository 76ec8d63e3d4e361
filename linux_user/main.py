"""pyqemu-arm / pyqemu-aarch64: run a Linux program of another architecture.

The command line is qemu-user 7.2's (:mod:`.cli`). Start-up matters (qemu-user is
about 10 ms), so unicorn and the syscall families are imported only once the options
are parsed. Exit status is the guest's; a guest killed by a fatal signal gets qemu's
"qemu: uncaught target signal N (...) - core dumped" line and this process then dies of
the same host signal, so a shell sees what it would see for the real program.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .cli import UserOptions
    from .process import ExitInfo

# signals for which qemu's dump_core_and_abort reports "core dumped" (core_dump_signal)
_CORE_SIGNALS = {4, 5, 6, 7, 8, 11, 24, 25, 3, 31}
# the guest space qemu-arm reserves (reserved_va); for aarch64, pyqemu's RAM buffer
_GUEST_SPACE = {"arm": 0xfffff000, "aarch64": 8 << 30}
_STDIO_BUFSIZ = 4096      # glibc's stdout buffer on a pipe or a file (st_blksize)


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pyqemu-user"


def _guest_random(seed: int | None) -> bytes:
    if seed is None:
        return os.urandom(16)
    from .log import seeded_random  # qemu's own sequence for -seed

    return seeded_random(seed)


def start(opts: UserOptions) -> ExitInfo:
    """Load and run the program of ``opts``; returns how it ended (or raises
    :class:`~.loop.GuestFault`)."""
    from ..common.cpu import get_arch
    from ..common.loader.elf import load_program
    from ..common.loader.stack import build_initial_stack
    from ..common.memory import GuestMemory, GuestMemoryError
    from .cli import open_log
    from .loop import run_thread
    from .process import GuestProcess, map_kuser_page
    from .syscalls.signals import reset_host_signals

    # qemu's order: the log file (-D) opens first, then the program
    log = open_log(opts, _prog())
    arch = get_arch(opts.arch, opts.cpu)
    try:
        mem = GuestMemory(arch)
    except GuestMemoryError as e:
        # the host refused the guest RAM (ulimit -v): qemu's words for its reservation
        size = _GUEST_SPACE.get(arch.name, 0)
        sys.stderr.write(
            f"{_prog()}: Unable to reserve 0x{size:x} bytes of virtual address space at "
            f"0x1000 ({os.strerror(e.errno)}) for use as guest address space (check "
            "your virtual memory ulimit setting, min_mmap_addr or reserve less using "
            "-R option)\n")
        sys.stderr.flush()
        os._exit(1)
    if arch.name == "arm":
        map_kuser_page(mem)
    # the stack is placed by the loader while the brk room is held (qemu's layout)
    info = load_program(mem, opts.program, arch, ld_prefix=opts.ld_prefix,
                        stack_size=opts.stack_size)
    argv = [os.fsencode(a) for a in opts.argv]
    sp = build_initial_stack(
        mem, arch, info.stack_top, argv, [os.fsencode(e) for e in opts.env], info,
        hwcap=arch.hwcap, hwcap2=arch.hwcap2, platform=arch.platform,
        random16=_guest_random(opts.seed), execfn=os.fsencode(opts.program),
        uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), egid=os.getegid(),
        stack_limit=info.stack_limit)
    proc = GuestProcess(
        arch, mem, exec_path=os.path.abspath(info.exec_path), argv0=opts.program,
        brk_start=info.brk, brk=info.brk, uname_release=opts.uname_release,
        ld_prefix=opts.ld_prefix, log_items=set(opts.log_items), log=log,
        strace=opts.strace)
    proc.extra["initial_sp"] = sp          # /proc/self/{auxv,cmdline,stat} (procfs.py)
    proc.extra["options"] = opts
    t = proc.new_thread()
    reset_host_signals()
    t.set_reg(arch.reg_sp, sp)
    t.set_reg(arch.reg_args[0], 0)
    t.set_reg(arch.reg_pc, info.entry)
    if arch.name == "arm":
        # qemu's init_thread: r1 and r2 from the stack, r10 = start_data, flags clear
        # (what a program sees at its entry point and -d cpu shows)
        from unicorn.arm_const import UC_ARM_REG_R10

        t.set_reg(arch.reg_args[1], int.from_bytes(mem.read(sp + 4, 4), "little"))
        t.set_reg(arch.reg_args[2], int.from_bytes(mem.read(sp + 8, 4), "little"))
        t.set_reg(UC_ARM_REG_R10, info.start_data)
        t.set_reg(arch.reg_flags, t.reg(arch.reg_flags) & 0x0FFFFFFF)
    if opts.log_items:
        from .log import setup_logging

        setup_logging(proc, t, opts, info, sp)
    return run_thread(t)


def die_of_signal(signo: int) -> NoReturn:
    """Report an uncaught guest signal as qemu does and die of it."""
    import resource
    import signal

    if signo in _CORE_SIGNALS:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
        except (OSError, ValueError):
            pass
        sys.stderr.write(f"qemu: uncaught target signal {signo} "
                         f"({signal.strsignal(signo)}) - core dumped\n")
    sys.stderr.flush()
    signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signo])
    os.kill(os.getpid(), signo)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.abort()


def run(arch: str, argv: list[str] | None = None) -> NoReturn:
    """Entry point for ``pyqemu-<arch>``: never returns."""
    from .cli import parse_command_line

    args = sys.argv[1:] if argv is None else argv
    opts = parse_command_line(arch, args, os.environ)
    try:
        from ..common.loader.elf import ElfError
        from .loop import GuestFault

        try:
            result = start(opts)
        except GuestFault as fault:
            die_of_signal(fault.signo)
        except ElfError as e:
            if e.errno:
                # qemu-user printf()s this one to stdout and _exit()s without flushing:
                # all of it shows when stdout is a terminal (line-buffered), otherwise
                # only the whole buffers (BUFSIZ) stdio wrote out (a very long path)
                line = os.fsencode(f"{e}\n")
                if not sys.stdout.isatty():
                    line = line[:len(line) // _STDIO_BUFSIZ * _STDIO_BUFSIZ]
                if line:
                    sys.stdout.flush()
                    os.write(sys.stdout.fileno(), line)
            else:
                sys.stderr.write(e.format(_prog()) + "\n")
                sys.stderr.flush()
            os._exit(e.exit_status)
    except KeyboardInterrupt:
        die_of_signal(2)
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line, not a traceback
        if os.environ.get("PYQEMU_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"{_prog()}: internal error: {type(e).__name__}: {e}\n")
        sys.stderr.flush()
        os._exit(1)
    if result.signal is not None:
        die_of_signal(result.signal)
    sys.stderr.flush()
    os._exit(result.status or 0)


def main_arm() -> NoReturn:
    """``pyqemu-arm``."""
    run("arm")


def main_aarch64() -> NoReturn:
    """``pyqemu-aarch64``."""
    run("aarch64")
