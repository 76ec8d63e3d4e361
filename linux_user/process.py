"""Guest processes and threads.

A :class:`GuestProcess` owns what Linux keeps per process: the address space
(:class:`~pyqemu.common.memory.GuestMemory`), the program break, signal dispositions,
the syscall table of its architecture, the options it was started with, and the
process-wide execution lock (only one engine runs guest code at a time; phase 2
releases it around blocking host calls). A :class:`GuestThread` owns one unicorn
engine (one CPU) and the per-thread kernel state; syscall handlers receive it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ..common.cpu import ArchInfo
from ..common.cpu.engine import FastRegs, new_engine
from ..common.memory import PROT_EXEC, PROT_READ, PROT_WRITE, GuestMemory

if TYPE_CHECKING:
    from .syscalls import SyscallTable

# ARM kuser helpers (Documentation/arm/kernel_user_helpers.rst), assembled from:
#  0xf60 __kuser_cmpxchg64: push {r4-r7}; ldrd r4,r5,[r0]; ldrd r6,r7,[r1];
#        1: ldrexd r0,r1,[r2]; eors r3,r0,r4; eorseq r3,r1,r5; strexdeq r3,r6,r7,[r2];
#        teqeq r3,#1; beq 1b; pop {r4-r7}; rsbs r0,r3,#0; bx lr
#  0xfa0 __kuser_memory_barrier: dmb ish; bx lr
#  0xfc0 __kuser_cmpxchg: 1: ldrex r3,[r2]; subs r3,r3,r0; strexeq r3,r1,[r2];
#        teqeq r3,#1; beq 1b; rsbs r0,r3,#0; bx lr
#  0xfe0 __kuser_get_tls: mrc p15,0,r0,c13,c0,3; bx lr
#  0xffc __kuser_helper_version: 5
KUSER_PAGE = 0xFFFF0000
KUSER_CODE = {
    0xF60: "f0002de9d040c0e1d060c1e19f0fb2e1043030e005303100963fa201"
           "01003303f9ffff0af000bde8000073e21eff2fe1",
    0xFA0: "5bf07ff51eff2fe1",
    0xFC0: "9f3f92e1003053e0913f820101003303faffff0a000073e21eff2fe1",
    0xFE0: "700f1dee1eff2fe1",
    0xFFC: "05000000",
}


def map_kuser_page(mem: GuestMemory) -> None:
    """Map the ARM kuser helper page at 0xffff0000 (read + execute)."""
    page = bytearray(4096)
    for off, code in KUSER_CODE.items():
        blob = bytes.fromhex(code)
        page[off:off + len(blob)] = blob
    mem.mmap(KUSER_PAGE, 4096, PROT_READ | PROT_WRITE, fixed=True, name="[vectors]")
    mem.write(KUSER_PAGE, page)
    mem.mprotect(KUSER_PAGE, 4096, PROT_READ | PROT_EXEC)



@dataclass
class ExitInfo:
    """How the process ended: an exit status, or a fatal signal."""

    status: int | None = None
    signal: int | None = None


@dataclass
class GuestProcess:
    """Per-process state shared by all guest threads."""

    arch: ArchInfo
    mem: GuestMemory
    exec_path: str                      # host path of the program (/proc/self/exe)
    argv0: str = ""
    brk_start: int = 0
    brk: int = 0
    uname_release: str | None = None
    ld_prefix: str | None = None
    log_items: set[str] = field(default_factory=set)
    log: TextIO = field(default_factory=lambda: sys.stderr)
    strace: bool = False
    pid: int = field(default_factory=os.getpid)
    sigactions: dict[int, bytes] = field(default_factory=dict)   # raw guest struct
    threads: dict[int, GuestThread] = field(default_factory=dict)
    exit: ExitInfo | None = None
    exec_lock: threading.Lock = field(default_factory=threading.Lock)
    table: SyscallTable | None = None
    unimp_logged: set[int] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)   # room for phase-2 families

    def __post_init__(self) -> None:
        if self.table is None:
            from .syscalls import table_for

            self.table = table_for(self.arch.name)

    def set_exit(self, status: int) -> None:
        """Record the process's exit status (first one wins)."""
        if self.exit is None:
            self.exit = ExitInfo(status=status)

    def new_thread(self, tid: int | None = None) -> GuestThread:
        """A thread with a fresh engine attached to this address space."""
        t = GuestThread(self, tid if tid is not None else self.pid)
        self.threads[t.tid] = t
        return t


class GuestThread:
    """One guest thread: its engine, its tid, its per-thread kernel state.

    Registers: ``reg(id)`` / ``set_reg(id, value)`` with unicorn register ids (the
    arch record names the common ones: ``arch.reg_pc``, ``arch.reg_sp``...).
    """

    def __init__(self, process: GuestProcess, tid: int) -> None:
        self.process = process
        self.arch = process.arch
        self.mem = process.mem
        self.tid = tid
        self.uc = new_engine(self.arch)
        self.mem.attach(self.uc)
        arch = self.arch
        self.regs = FastRegs(self.uc, (arch.reg_syscall_nr, *arch.reg_args))
        self.sigmask = 0
        self.clear_child_tid = 0
        self.robust_list = (0, 0)
        self.fault: tuple[int, int] | None = None      # (unicorn intno, pc) of a CPU fault
        self.stop_reason: BaseException | None = None   # exception raised inside a hook
        self.exited = False
        self.hook_handle: Any = None

    # ---- registers ------------------------------------------------------------------
    def reg(self, reg: int) -> int:
        return self.regs.read(reg)

    def set_reg(self, reg: int, value: int) -> None:
        self.regs.write(reg, value)

    @property
    def pc(self) -> int:
        """The address execution resumes at (bit 0 set in Thumb state on arm)."""
        pc = self.regs.read(self.arch.reg_pc)
        if self.arch.name == "arm" and self.regs.read(self.arch.reg_flags) & 0x20:
            pc |= 1
        return pc

    def set_tls(self, value: int) -> None:
        self.regs.write(self.arch.reg_tls, value)

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """Release the execution lock around a blocking host call."""
        lock = self.process.exec_lock
        held = lock.locked()
        if held:
            lock.release()
        try:
            yield
        finally:
            if held:
                lock.acquire()

    def stop(self) -> None:
        """Stop the engine after the current instruction (from inside a hook)."""
        self.uc.emu_stop()

    def close(self) -> None:
        self.mem.detach(self.uc)
        self.process.threads.pop(self.tid, None)
