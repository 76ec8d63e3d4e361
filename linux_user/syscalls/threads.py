"""Thread syscalls: clone with CLONE_THREAD, futex, exit of one thread, gettid.

A guest thread is a :class:`~pyqemu.linux_user.process.GuestThread` (its own unicorn
engine over the shared :class:`~pyqemu.common.memory.GuestMemory`) run by its own host
thread; its tid is that host thread's (so tids are unique on the host, as under
qemu-user). Only the holder of the process's execution lock runs guest code, so a
handler here is atomic with respect to every guest thread.

futex is implemented in Python over guest memory: one wait queue per guest address
(private and shared futexes alike: the key is the guest virtual address, which is
enough inside one process). A waiter checks the futex word under ``futex_lock``,
queues itself, then waits on its own event outside the execution lock; a wake takes
waiters off the queue in FIFO order and sets their events. A signal for the thread
ends the wait (``GuestThread.kick``) with EINTR.
"""

from __future__ import annotations

import errno
import struct
import threading
import time
from typing import TYPE_CHECKING

from . import syscall
from .structs import s32, timespec_struct

if TYPE_CHECKING:
    from ..process import GuestThread

# clone flags (include/uapi/linux/sched.h)
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_VFORK = 0x4000
CLONE_THREAD = 0x10000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_CHILD_SETTID = 0x1000000
CSIGNAL = 0xFF

# futex operations (include/uapi/linux/futex.h)
FUTEX_WAIT, FUTEX_WAKE, FUTEX_FD, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP = range(6)
FUTEX_LOCK_PI, FUTEX_UNLOCK_PI, FUTEX_TRYLOCK_PI = 6, 7, 8
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_PRIVATE_FLAG = 128
FUTEX_CLOCK_REALTIME = 256
FUTEX_BITSET_MATCH_ANY = 0xFFFFFFFF
_NS = 1_000_000_000
_U32 = struct.Struct("<I")
ERESTARTSYS = 512                       # the kernel's: never seen by the guest


class _Waiter:
    __slots__ = ("event", "bitset", "addr", "woken")

    def __init__(self, event: threading.Event, addr: int, bitset: int) -> None:
        self.event = event
        self.addr = addr
        self.bitset = bitset
        self.woken = False


# ---- clone -----------------------------------------------------------------------------
def _copy_cpu(parent: GuestThread, child: GuestThread) -> None:
    """The child's CPU starts as a copy of the parent's user registers."""
    src, dst = parent.uc, child.uc
    if parent.arch.name == "arm":
        from unicorn import arm_const as c

        regs = [c.UC_ARM_REG_R0 + i for i in range(13)] + [
            c.UC_ARM_REG_SP, c.UC_ARM_REG_LR, c.UC_ARM_REG_FPSCR, c.UC_ARM_REG_C13_C0_3,
            c.UC_ARM_REG_CPSR]
        regs += [c.UC_ARM_REG_D0 + i for i in range(32)]
    else:
        from unicorn import arm64_const as c

        regs = [c.UC_ARM64_REG_X0 + i for i in range(29)] + [
            c.UC_ARM64_REG_X29, c.UC_ARM64_REG_X30, c.UC_ARM64_REG_SP, c.UC_ARM64_REG_NZCV,
            c.UC_ARM64_REG_FPCR, c.UC_ARM64_REG_FPSR, c.UC_ARM64_REG_TPIDR_EL0]
        regs += [c.UC_ARM64_REG_Q0 + i for i in range(32)]
    for reg in regs:
        dst.reg_write(reg, src.reg_read(reg))


def _clone_thread(t: GuestThread, flags: int, newsp: int, ptid: int, tls: int,
                  ctid: int) -> int:
    from ..loop import start_thread
    from ..process import GuestThread as _Thread

    if flags & (CLONE_VM | CLONE_SIGHAND) != (CLONE_VM | CLONE_SIGHAND):
        return -errno.EINVAL
    proc = t.process
    child = _Thread(proc, 0)
    _copy_cpu(t, child)
    arch = t.arch
    child.set_reg(arch.reg_ret, 0)
    if newsp:
        child.set_reg(arch.reg_sp, newsp)
    if flags & CLONE_SETTLS:
        child.set_tls(tls)
    child.sigmask = t.sigmask
    child.set_reg(arch.reg_pc, t.pc)    # just past the svc (bit 0: Thumb)
    if flags & CLONE_CHILD_CLEARTID:
        child.clear_child_tid = ctid
    tid = start_thread(child)           # the host thread's id, known once it runs
    if flags & CLONE_PARENT_SETTID:
        t.mem.write(ptid, _U32.pack(tid))
    if flags & CLONE_CHILD_SETTID:
        t.mem.write(ctid, _U32.pack(tid))
    child.go.set()                      # now it may run guest code
    return tid


@syscall("clone")
def sys_clone(t: GuestThread, flags: int, newsp: int, ptid: int, tls: int, ctid: int) -> int:
    # arm and arm64 both use the CLONE_BACKWARDS order: flags, stack, ptid, tls, ctid
    if flags & CLONE_THREAD:
        return _clone_thread(t, flags, newsp, ptid, tls, ctid)
    from .process import clone_process

    return clone_process(t, flags, newsp, ptid, tls, ctid)   # fork, vfork, wait4: there


@syscall("gettid")
def sys_gettid(t: GuestThread) -> int:
    return t.tid


@syscall("exit")
def sys_exit(t: GuestThread, status: int) -> None:
    """End this thread only (the process ends with its last thread)."""
    t.exited = True
    t.exit_status = status & 0xFF
    t.stop()
    return None


def thread_exited(t: GuestThread) -> None:
    """Kernel work when a thread ends: clear_child_tid, futex wake, bookkeeping; the
    process ends with its last thread."""
    proc = t.process
    if t.robust_list[0] and proc.exit is None:
        try:
            _exit_robust_list(t)
        except Exception:  # noqa: BLE001 - a bad list is the guest's problem (as Linux)
            pass
    if t.clear_child_tid and proc.exit is None:
        try:
            t.mem.write(t.clear_child_tid, bytes(4))
            futex_wake(t, t.clear_child_tid, 1, FUTEX_BITSET_MATCH_ANY)
        except Exception:  # noqa: BLE001 - an unmapped address is the guest's problem
            pass
    proc.threads.pop(t.tid, None)
    if not proc.threads:
        proc.set_exit(t.exit_status)


FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK = 0x80000000, 0x40000000, 0x3FFFFFFF
_ROBUST_LIST_LIMIT = 2048


def _exit_robust_list(t: GuestThread) -> None:
    """Mark the robust futexes the exiting thread still holds OWNER_DIED and wake a
    waiter of each (the kernel's exit_robust_list)."""
    word = t.arch.word_size
    fmt = "<IiI" if word == 4 else "<QqQ"
    head = t.robust_list[0]
    nxt, offset, pending = struct.unpack(fmt, t.mem.read(head, struct.calcsize(fmt)))
    wf = "<I" if word == 4 else "<Q"

    def handle(entry: int) -> None:
        addr = (entry + offset) & t.arch.mask
        (val,) = _U32.unpack(t.mem.read(addr, 4))
        if val & FUTEX_TID_MASK == t.tid:
            t.mem.write(addr, _U32.pack((val & FUTEX_WAITERS) | FUTEX_OWNER_DIED))
            if val & FUTEX_WAITERS:
                futex_wake(t, addr, 1, FUTEX_BITSET_MATCH_ANY)

    entry, seen = nxt & ~1, 0
    while entry != head and entry and seen < _ROBUST_LIST_LIMIT:
        (following,) = struct.unpack(wf, t.mem.read(entry, word))
        if entry != pending:
            handle(entry)
        entry = following & ~1
        seen += 1
    if pending:
        handle(pending & ~1)


# ---- futex -----------------------------------------------------------------------------
def futex_wake(t: GuestThread, addr: int, count: int, bitset: int) -> int:
    proc = t.process
    woken = 0
    with proc.futex_lock:
        queue = proc.futex_queues.get(addr)
        if not queue:
            return 0
        keep = []
        for w in queue:
            if woken < count and w.bitset & bitset:
                w.woken = True
                w.event.set()
                woken += 1
            else:
                keep.append(w)
        if keep:
            proc.futex_queues[addr] = keep
        else:
            del proc.futex_queues[addr]
    return woken


def _timeout(t: GuestThread, op: int, timeout: int, time64: bool, clock_rt: bool) -> float | None:
    """Seconds to wait (None: forever). FUTEX_WAIT's timeout is relative; the
    bitset form's is absolute on CLOCK_MONOTONIC (or REALTIME)."""
    if not timeout:
        return None
    st = timespec_struct(t, time64)
    sec, nsec = st.unpack(t.mem.read(timeout, st.size))
    if sec < 0 or not 0 <= nsec < _NS:
        raise OSError(errno.EINVAL, "timeout")
    ns = sec * _NS + nsec
    if op == FUTEX_WAIT_BITSET:
        now = time.clock_gettime_ns(time.CLOCK_REALTIME if clock_rt else time.CLOCK_MONOTONIC)
        ns -= now
    return max(ns, 0) / _NS


def futex_wait(t: GuestThread, addr: int, val: int, bitset: int, wait: float | None) -> int:
    if addr & 3:
        return -errno.EINVAL
    if not bitset:
        return -errno.EINVAL
    proc = t.process
    event = threading.Event()
    w = _Waiter(event, addr, bitset)
    with proc.futex_lock:
        (cur,) = _U32.unpack(t.mem.read(addr, 4))
        if cur != val & 0xFFFFFFFF:
            return -errno.EAGAIN
        proc.futex_queues.setdefault(addr, []).append(w)
    if wait is not None and wait <= 0:
        ok = False
    else:
        t.wait_event = event
        try:
            if proc.sig_flag and t.deliverable():
                ok = False
            else:
                with t.blocking():
                    ok = event.wait(wait)
        finally:
            t.wait_event = None
    if w.woken:
        return 0
    with proc.futex_lock:
        queue = proc.futex_queues.get(w.addr)
        if queue is not None and w in queue:
            queue.remove(w)
            if not queue:
                del proc.futex_queues[w.addr]
    if w.woken:
        return 0
    if ok or event.is_set() or proc.exit is not None:
        # a signal (or the process's end) ended the wait: without a timeout the kernel
        # restarts the wait after an SA_RESTART handler (ERESTARTSYS), else EINTR
        if wait is None and proc.exit is None and t.deliverable():
            return -ERESTARTSYS
        return -errno.EINTR
    return -errno.ETIMEDOUT


def _requeue(t: GuestThread, addr: int, nwake: int, nreq: int, addr2: int,
             cmp: int | None) -> int:
    proc = t.process
    with proc.futex_lock:
        if cmp is not None:
            (cur,) = _U32.unpack(t.mem.read(addr, 4))
            if cur != cmp & 0xFFFFFFFF:
                return -errno.EAGAIN
        queue = proc.futex_queues.pop(addr, [])
        done = 0
        moved = []
        for w in queue:
            if done < nwake:
                w.woken = True
                w.event.set()
                done += 1
            elif len(moved) < nreq:
                w.addr = addr2
                moved.append(w)
            else:
                proc.futex_queues.setdefault(addr, []).append(w)
        if moved:
            proc.futex_queues.setdefault(addr2, []).extend(moved)
    return done + (len(moved) if cmp is not None else 0)


def _wake_op(t: GuestThread, addr: int, nwake: int, nwake2: int, addr2: int,
             encoded: int) -> int:
    op = (encoded >> 28) & 7
    cmp = (encoded >> 24) & 15
    oparg = (encoded >> 12) & 0xFFF
    cmparg = encoded & 0xFFF
    if encoded >> 31:                         # FUTEX_OP_OPARG_SHIFT
        oparg = 1 << (oparg & 31)
    if oparg & 0x800 and not encoded >> 31:
        oparg -= 0x1000
    if cmparg & 0x800:
        cmparg -= 0x1000
    proc = t.process
    with proc.futex_lock:
        (old,) = _U32.unpack(t.mem.read(addr2, 4))
        new = {0: oparg, 1: old + oparg, 2: old | oparg, 3: old & ~oparg,
               4: old ^ oparg}.get(op)
        if new is None:
            return -errno.ENOSYS
        t.mem.write(addr2, _U32.pack(new & 0xFFFFFFFF))
    old = s32(old)
    hit = {0: old == cmparg, 1: old != cmparg, 2: old < cmparg, 3: old <= cmparg,
           4: old > cmparg, 5: old >= cmparg}.get(cmp)
    if hit is None:
        return -errno.ENOSYS
    woken = futex_wake(t, addr, nwake, FUTEX_BITSET_MATCH_ANY)
    if hit:
        woken += futex_wake(t, addr2, nwake2, FUTEX_BITSET_MATCH_ANY)
    return woken


def _futex(t: GuestThread, addr: int, op: int, val: int, timeout: int, addr2: int,
           val3: int, time64: bool) -> int:
    clock_rt = bool(op & FUTEX_CLOCK_REALTIME)
    cmd = op & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    if cmd == FUTEX_WAIT:
        return futex_wait(t, addr, val, FUTEX_BITSET_MATCH_ANY,
                          _timeout(t, cmd, timeout, time64, clock_rt))
    if cmd == FUTEX_WAIT_BITSET:
        return futex_wait(t, addr, val, val3, _timeout(t, cmd, timeout, time64, clock_rt))
    if cmd == FUTEX_WAKE:
        return futex_wake(t, addr, s32(val), FUTEX_BITSET_MATCH_ANY)
    if cmd == FUTEX_WAKE_BITSET:
        if not val3:
            return -errno.EINVAL
        return futex_wake(t, addr, s32(val), val3)
    # for the requeue family, the "timeout" argument is val2 (a count)
    if cmd == FUTEX_REQUEUE:
        return _requeue(t, addr, s32(val), s32(timeout), addr2, None)
    if cmd == FUTEX_CMP_REQUEUE:
        return _requeue(t, addr, s32(val), s32(timeout), addr2, val3)
    if cmd == FUTEX_WAKE_OP:
        return _wake_op(t, addr, s32(val), s32(timeout), addr2, val3)
    return -errno.ENOSYS


@syscall("futex")
def sys_futex(t: GuestThread, addr: int, op: int, val: int, timeout: int, addr2: int,
              val3: int) -> int:
    return _futex(t, addr, op, val, timeout, addr2, val3, t.arch.word_size == 8)


@syscall("futex_time64", arch="arm")
def sys_futex_time64(t: GuestThread, addr: int, op: int, val: int, timeout: int,
                     addr2: int, val3: int) -> int:
    return _futex(t, addr, op, val, timeout, addr2, val3, True)
