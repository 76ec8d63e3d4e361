"""Guest processes and threads.

A :class:`GuestProcess` owns what Linux keeps per process: the address space
(:class:`~pyqemu.common.memory.GuestMemory`), the program break, signal dispositions
and process-directed pending signals, the syscall table of its architecture, the
options it was started with, and the process-wide execution lock. A
:class:`GuestThread` owns one unicorn engine (one CPU), the host thread that runs it
and the per-thread kernel state (tid, signal mask and pending set, alternate signal
stack, clear_child_tid); syscall handlers receive it.

Threads: every guest thread runs on its own host thread, but only the holder of the
execution lock (:class:`ExecLock`, first come first served) runs guest code. That
keeps unicorn's per-engine exclusive monitors correct (ldrex/strex, ldxr/stxr and the
kuser cmpxchg only ever race with themselves) and makes a syscall handler atomic
with respect to guest code. Blocking host calls run under ``t.blocking()``, which
lets the others run meanwhile. A watchdog host thread, started with the second guest
thread, stops the running engine (``emu_stop``) once it has held the lock for a
time slice while others wait; the stopped thread then queues behind them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
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



class ExecLock:
    """A fair (FIFO) lock: a release hands the lock straight to the oldest waiter, so
    a thread that yields its time slice cannot take the lock right back."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()
        self.grants = 0          # counts hand-overs (the watchdog's clock)

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                self.grants += 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        gate.acquire()           # released by the releasing thread: we own the lock

    def release(self) -> None:
        with self._mutex:
            self.grants += 1
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def locked(self) -> bool:
        return self._held

    def after_fork(self) -> None:
        """In a forked child: the forking thread (the holder) is the only one left."""
        self._mutex = threading.Lock()
        self._waiters.clear()
        self._held = True

    def contended(self) -> bool:
        """True when some thread waits for the lock."""
        return bool(self._waiters)

    def __enter__(self) -> ExecLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


#: the time slice of a guest thread while others wait for the execution lock
TIME_SLICE = 0.01


#: slices a thread may keep the lock without reaching a syscall, once asked to yield,
#: before the watchdog stops its engine asynchronously (exact since engines exit only
#: at block starts, common/cpu/noexit.py; threads_spin: 20 -> 2 took arm 4.1 -> 1.4 s,
#: aarch64 5.4 -> 1.0 s)
ASYNC_AFTER = 2


def _watchdog(proc: GuestProcess) -> None:
    """Time-slice the guest threads of ``proc`` and get pending signals delivered (a
    daemon host thread).

    The running thread is first asked to yield at its next syscall (``proc.preempt``),
    the cheapest switch point. A thread that makes no syscall for ``ASYNC_AFTER``
    slices gets ``emu_stop``, which takes effect at the next translation-block start,
    where the PC is exact (common/cpu/noexit.py: no exit check after each memory
    access, where an exit re-ran the accessing instruction). Measured under a
    0-1 ms stop hammer (tests/linux_user/stop_hammer.py): stop_exact.c and the Go
    guest print qemu's output in every run on both arches (before: stop_exact on
    aarch64 wrong in 3 runs of 3).
    """
    lock = proc.exec_lock
    last = -1
    asked = 0
    while proc.exit is None:
        time.sleep(TIME_SLICE)
        grants = lock.grants
        if grants != last:
            last = grants
            asked = 0
            continue
        running = proc.running
        if running is None:
            continue
        contended = lock.contended()
        if not contended and not (proc.sig_flag and running.deliverable()):
            asked = 0
            continue
        if contended:
            proc.preempt = True
        proc.sig_flag = True
        asked += 1
        if asked >= ASYNC_AFTER:
            asked = 0
            running.uc.emu_stop()


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
    exec_lock: ExecLock = field(default_factory=ExecLock)
    running: GuestThread | None = None      # the thread holding exec_lock, if running
    watchdog: threading.Thread | None = None
    #: set when any signal may be deliverable: the syscall hook tests only this
    sig_flag: bool = False
    preempt: bool = False                   # aarch64: yield at the next syscall
    sig_lock: threading.Lock = field(default_factory=threading.Lock)
    #: process-directed pending signals: signo -> queued siginfo records (bytes)
    sig_pending: dict[int, list[bytes]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)   # exit is set
    futex_lock: threading.Lock = field(default_factory=threading.Lock)
    futex_queues: dict[int, list[Any]] = field(default_factory=dict)
    table: SyscallTable | None = None
    unimp_logged: set[int] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)   # room for phase-2 families

    def __post_init__(self) -> None:
        if self.table is None:
            from .syscalls import table_for

            self.table = table_for(self.arch.name)
        from .sigframe import trampoline
        from .syscalls.signals import register_process

        register_process(self)
        # qemu-user maps its signal trampoline page at load time: do it now too, before
        # the guest's own mappings can leave holes it would fill
        trampoline(self)

    def set_exit(self, status: int | None = None, signo: int | None = None) -> None:
        """Record how the process ends (first one wins): stop every thread."""
        if self.exit is None:
            self.exit = ExitInfo(status=status, signal=signo)
            self.stop_all()
            self.done.set()

    def new_thread(self, tid: int | None = None) -> GuestThread:
        """A thread with a fresh engine attached to this address space."""
        t = GuestThread(self, tid if tid is not None else self.pid)
        self.threads[t.tid] = t
        return t

    def start_watchdog(self) -> None:
        """Start time slicing (once there are two guest threads)."""
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=_watchdog, args=(self,),
                                             name="pyqemu-watchdog", daemon=True)
            self.watchdog.start()

    def after_fork(self, t: GuestThread) -> None:
        """In a forked child: ``t`` is the only thread; new pid, no pending signals,
        fresh locks, the signal watcher started again."""
        from .syscalls.signals import start_watcher

        self.pid = os.getpid()
        self.exec_lock.after_fork()
        self.futex_lock = threading.Lock()
        self.sig_lock = threading.Lock()
        self.futex_queues.clear()
        self.sig_pending.clear()
        self.sig_flag = False
        self.preempt = False
        self.watchdog = None
        self.running = t
        for other in list(self.threads.values()):
            if other is not t:
                self.mem.detach(other.uc)
        t.tid = self.pid
        t.sig_pending.clear()
        self.threads = {t.tid: t}
        start_watcher()

    def stop_all(self) -> None:
        """Stop every engine and wake every interruptible wait (process exit)."""
        for t in list(self.threads.values()):
            t.uc.emu_stop()
            t.kick()


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
        self.sig_pending: dict[int, list[bytes]] = {}   # thread-directed signals
        self.altstack = (0, 2, 0)                       # ss_sp, ss_flags (SS_DISABLE), ss_size
        self.saved_mask: int | None = None              # sigsuspend's mask to restore
        self.wait_event: threading.Event | None = None  # set by kick() to end a wait
        self.go = threading.Event()                     # a new thread waits for its tid
        self.exit_status = 0
        self.host_thread: threading.Thread | None = None
        self.clear_child_tid = 0
        self.robust_list = (0, 0)
        self.fault: tuple[int, int] | None = None      # (unicorn intno, pc) of a CPU fault
        self.fault_signal = 0                           # the signal a fault was mapped to
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
        """Release the execution lock around a blocking host call (other guest
        threads run meanwhile)."""
        proc = self.process
        if proc.running is not self:        # not inside the run loop (direct calls)
            yield
            return
        lock = proc.exec_lock
        proc.running = None
        lock.release()
        try:
            yield
        finally:
            lock.acquire()
            proc.running = self

    def kick(self) -> None:
        """End this thread's interruptible wait, if it is in one (a signal came)."""
        ev = self.wait_event
        if ev is not None:
            ev.set()

    def deliverable(self) -> bool:
        """True when a signal pending for this thread (or its process) is unblocked."""
        mask = self.sigmask
        for signo in self.sig_pending:
            if not mask >> (signo - 1) & 1:
                return True
        for signo in self.process.sig_pending:
            if not mask >> (signo - 1) & 1:
                return True
        return False

    def stop(self) -> None:
        """Stop the engine after the current instruction (from inside a hook)."""
        self.uc.emu_stop()

    def close(self) -> None:
        self.mem.detach(self.uc)
        self.process.threads.pop(self.tid, None)
