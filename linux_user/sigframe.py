"""Signal frames on the guest stack, as Linux lays them out (ARM and AArch64).

ARM (arch/arm/kernel/signal.c, arch/arm/include/asm/ucontext.h)::

    struct rt_sigframe { siginfo_t info;            /*   0, 128 bytes */
                         struct ucontext uc;        /* 128, 744 bytes */
                         unsigned long retcode[4]; }/* 872: 888 bytes, 8-aligned */
    ucontext: uc_flags, uc_link, uc_stack{ss_sp, ss_flags, ss_size},
              sigcontext{trap_no, error_code, oldmask, r0-r10, fp, ip, sp, lr, pc,
                         cpsr, fault_address},  uc_sigmask (padded to 128 bytes),
              uc_regspace[128] (8-aligned): vfp_sigframe{magic 0x56465001, size 288,
                         d0-d31, fpscr, fpexc, fpinst, fpinst2} then a 0 end magic

AArch64 (arch/arm64/kernel/signal.c, arch/arm64/include/uapi/asm/sigcontext.h)::

    struct rt_sigframe { siginfo_t info;            /*   0 */
                         struct ucontext uc; }      /* 128: 4688 bytes, 16-aligned */
    ucontext: uc_flags, uc_link, uc_stack{ss_sp, ss_flags, ss_size},
              uc_sigmask (padded to 128 bytes), sigcontext (16-aligned) {fault_address,
              regs[31], sp, pc, pstate, __reserved[4096]: fpsimd_context{magic
              0x46508001, size 528, fpsr, fpcr, vregs[32]} then a {0, 0} end record}
    struct frame_record { fp, lr } just above the frame (x29 points at it)

The handler is entered with r0/x0 = signal, r1/x1 = &info, r2/x2 = &uc, sp = the
frame, lr/x30 = the restorer (SA_RESTORER's, else the trampoline page that
:func:`trampoline` maps, as qemu-user's sigtramp page does).

ARM handlers installed without SA_SIGINFO get the non-rt frame instead (the kernel's
and qemu's setup_frame), which ``sigreturn`` (119) restores::

    struct sigframe { struct ucontext uc;           /*   0, uc_flags 0x5ac3c35a */
                      unsigned long retcode[4]; }   /* 744: 760 bytes, 8-aligned */

and only r0 = signal is set for the handler.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .process import GuestProcess, GuestThread

SIGINFO_SIZE = 128
SA_SIGINFO = 0x4
SA_ONSTACK = 0x08000000
SA_RESTORER = 0x04000000
SA_RESTART = 0x10000000
SA_NODEFER = 0x40000000
SA_RESETHAND = 0x80000000
SS_ONSTACK, SS_DISABLE = 1, 2

# trampoline page: arm `mov r7, #119; svc 0` (sigreturn) and `mov r7, #173; svc 0`
# (rt_sigreturn); aarch64 `mov x8, #139; svc #0` (rt_sigreturn)
_TRAMP = {"arm": struct.pack("<4I", 0xE3A07077, 0xEF000000, 0xE3A070AD, 0xEF000000),
          "aarch64": struct.pack("<2I", 0xD2801168, 0xD4000001)}
_TRAMP_RT_OFFSET = {"arm": 8, "aarch64": 0}

_ARM_FRAME = 888
_ARM_FRAME_NONRT = 760
_ARM_UC = 128
_ARM_SC = 20                    # the offsets in the ucontext
_ARM_MASK = 104
_ARM_REGSPACE = 232
_ARM_NONRT_UC_FLAGS = 0x5AC3C35A  # "a value which sc.trap_no would never have"
_ARM_VFP_MAGIC, _ARM_VFP_SIZE = 0x56465001, 288
_A64_FRAME = 4688
_A64_UC = 128
_A64_MASK = _A64_UC + 40
_A64_SC = _A64_UC + 176
_A64_RESERVED = _A64_SC + 288
_A64_FPSIMD_MAGIC, _A64_FPSIMD_SIZE = 0x46508001, 528


class BadFrame(Exception):
    """rt_sigreturn found no valid frame (the kernel then forces SIGSEGV)."""


@dataclass
class SigAction:
    """A guest ``struct sigaction`` (kernel layout: handler, flags, restorer, mask)."""

    handler: int
    flags: int
    restorer: int
    mask: int

    @classmethod
    def parse(cls, raw: bytes, word: int) -> SigAction:
        fmt = "<IIIQ" if word == 4 else "<QQQQ"
        return cls(*struct.unpack(fmt, raw[:struct.calcsize(fmt)]))


def pack_siginfo(word: int, signo: int, code: int, *, errno: int = 0, pid: int = 0,
                 uid: int = 0, value: int = 0, addr: int | None = None,
                 status: int | None = None, utime: int = 0, stime: int = 0,
                 timer: tuple[int, int] | None = None) -> bytes:
    """A guest ``siginfo_t`` (128 bytes; the union starts at 12 on arm, 16 on arm64)."""
    buf = bytearray(SIGINFO_SIZE)
    struct.pack_into("<iii", buf, 0, signo, errno, code)
    u = 12 if word == 4 else 16
    wf = "I" if word == 4 else "Q"
    mask = (1 << (8 * word)) - 1
    if addr is not None:                                  # _sigfault
        struct.pack_into("<" + wf, buf, u, addr & mask)
    elif timer is not None:                               # _timer: tid, overrun, sigval
        struct.pack_into("<ii" + wf, buf, u, timer[0], timer[1], value & mask)
    elif status is not None:                              # _sigchld
        struct.pack_into("<iIi", buf, u, pid, uid, status)
        off = u + 12 if word == 4 else u + 16
        struct.pack_into("<" + wf * 2, buf, off, utime & mask, stime & mask)
    else:                                                 # _kill / _rt
        struct.pack_into("<iI" + wf, buf, u, pid, uid, value & mask)
    return bytes(buf)


def siginfo_signo(info: bytes) -> int:
    return struct.unpack_from("<i", info, 0)[0]


def trampoline(proc: GuestProcess, *, rt: bool = True) -> int:
    """Address of the rt_sigreturn trampoline (one read+exec page, mapped once); with
    ``rt=False`` the arm sigreturn one."""
    addr = proc.extra.get("sigtramp")
    if addr is None:
        from ..common.memory import PROT_EXEC, PROT_READ, PROT_WRITE

        mem = proc.mem
        base = mem.mmap(0, mem.page_size, PROT_READ | PROT_WRITE)
        mem.write(base, _TRAMP[proc.arch.name])
        mem.mprotect(base, mem.page_size, PROT_READ | PROT_EXEC)
        addr = proc.extra["sigtramp"] = base + _TRAMP_RT_OFFSET[proc.arch.name]
    return addr if rt else addr - _TRAMP_RT_OFFSET[proc.arch.name]


def on_altstack(t: GuestThread, sp: int) -> bool:
    ss_sp, flags, size = t.altstack
    return not flags & SS_DISABLE and ss_sp < sp <= ss_sp + size


def _stack_top(t: GuestThread, act: SigAction) -> int:
    sp = t.reg(t.arch.reg_sp)
    ss_sp, flags, size = t.altstack
    if act.flags & SA_ONSTACK and not flags & SS_DISABLE and size and not on_altstack(t, sp):
        return ss_sp + size
    return sp


def _uc_stack(t: GuestThread, sp: int) -> tuple[int, int, int]:
    ss_sp, flags, size = t.altstack
    if flags & SS_DISABLE:
        return ss_sp, SS_DISABLE, size
    return ss_sp, SS_ONSTACK if on_altstack(t, sp) else 0, size


def setup_rt_frame(t: GuestThread, signo: int, info: bytes, act: SigAction, mask: int,
                   *, pc: int | None = None, fault_addr: int = 0) -> None:
    """Build the frame for ``signo`` and point the CPU at the handler. ``mask`` is the
    signal mask to restore at rt_sigreturn; ``pc`` the resume address (default: the
    current one, bit 0 set in Thumb state)."""
    if t.arch.name == "arm":
        _setup_arm(t, signo, info, act, mask, pc, fault_addr)
    else:
        _setup_a64(t, signo, info, act, mask, pc, fault_addr)


def restore_rt_frame(t: GuestThread) -> int:
    """rt_sigreturn: restore the CPU from the frame at sp; returns the saved mask."""
    if t.arch.name == "arm":
        return _restore_arm(t, _ARM_UC, _ARM_FRAME)
    return _restore_a64(t)


def restore_frame(t: GuestThread) -> int:
    """arm sigreturn: restore the CPU from the non-rt frame at sp; returns the mask."""
    return _restore_arm(t, 0, _ARM_FRAME_NONRT)


# ---- ARM ------------------------------------------------------------------------------
def _arm_regs() -> tuple[list[int], int, int, int, int, int, int]:
    from unicorn import arm_const as c

    return ([c.UC_ARM_REG_R0 + i for i in range(13)], c.UC_ARM_REG_SP, c.UC_ARM_REG_LR,
            c.UC_ARM_REG_PC, c.UC_ARM_REG_CPSR, c.UC_ARM_REG_D0, c.UC_ARM_REG_FPSCR)


def _setup_arm(t: GuestThread, signo: int, info: bytes, act: SigAction, mask: int,
               pc: int | None, fault_addr: int) -> None:
    from unicorn import arm_const as c

    uc = t.uc
    gprs, r_sp, r_lr, r_pc, r_cpsr, r_d0, r_fpscr = _arm_regs()
    sp = uc.reg_read(r_sp)
    cpsr = uc.reg_read(r_cpsr)
    if pc is None:
        pc = t.pc
    rt = bool(act.flags & SA_SIGINFO)
    size, base = (_ARM_FRAME, _ARM_UC) if rt else (_ARM_FRAME_NONRT, 0)
    frame = (_stack_top(t, act) - size) & ~7
    buf = bytearray(size)
    if rt:
        buf[0:SIGINFO_SIZE] = info
        struct.pack_into("<II3I", buf, base, 0, 0, *_uc_stack(t, sp))
    else:
        struct.pack_into("<I", buf, base, _ARM_NONRT_UC_FLAGS)
    user_cpsr = (cpsr & ~0x1F) | 0x10
    if pc & 1:
        user_cpsr |= 0x20
    sc = [0, 0, mask & 0xFFFFFFFF] + [uc.reg_read(r) for r in gprs] + [
        sp, uc.reg_read(r_lr), pc & ~1, user_cpsr, fault_addr]
    struct.pack_into("<21I", buf, base + _ARM_SC, *(v & 0xFFFFFFFF for v in sc))
    struct.pack_into("<Q", buf, base + _ARM_MASK, mask)
    vfp = base + _ARM_REGSPACE
    struct.pack_into("<II", buf, vfp, _ARM_VFP_MAGIC, _ARM_VFP_SIZE)
    struct.pack_into("<32Q", buf, vfp + 8, *(uc.reg_read(r_d0 + i) for i in range(32)))
    struct.pack_into("<I", buf, vfp + 264, uc.reg_read(r_fpscr))
    struct.pack_into("<3I", buf, vfp + 272, uc.reg_read(c.UC_ARM_REG_FPEXC), 0, 0)
    t.mem.write(frame, buf)
    restorer = act.restorer if act.flags & SA_RESTORER else trampoline(t.process, rt=rt)
    uc.reg_write(c.UC_ARM_REG_R0, signo)
    if rt:
        uc.reg_write(c.UC_ARM_REG_R1, frame)
        uc.reg_write(c.UC_ARM_REG_R2, frame + _ARM_UC)
    uc.reg_write(r_sp, frame)
    uc.reg_write(r_lr, restorer)
    # as setup_return: flags and the IT state cleared, Thumb from the handler's bit 0
    new = cpsr & ~(0xF8000000 | 0x0600FC00 | 0x200 | 0x20)
    if act.handler & 1:
        new |= 0x20
    uc.reg_write(r_cpsr, new)
    uc.reg_write(r_pc, act.handler)


def _restore_arm(t: GuestThread, base: int, size: int) -> int:

    uc = t.uc
    gprs, r_sp, r_lr, r_pc, r_cpsr, r_d0, r_fpscr = _arm_regs()
    frame = uc.reg_read(r_sp)
    if frame & 7:
        raise BadFrame(f"unaligned frame {frame:#x}")
    buf = t.mem.read(frame, size)
    sc = struct.unpack_from("<21I", buf, base + _ARM_SC)
    (mask,) = struct.unpack_from("<Q", buf, base + _ARM_MASK)
    for reg, v in zip(gprs, sc[3:16], strict=True):
        uc.reg_write(reg, v)
    sp, lr, pc, cpsr = sc[16:20]
    cur = uc.reg_read(r_cpsr)
    uc.reg_write(r_cpsr, (cpsr & ~0x1DF) | (cur & 0x1DF) | (cpsr & 0x20))
    uc.reg_write(r_sp, sp)
    uc.reg_write(r_lr, lr)
    vfp = base + _ARM_REGSPACE
    magic, vfp_size = struct.unpack_from("<II", buf, vfp)
    if magic == _ARM_VFP_MAGIC and vfp_size == _ARM_VFP_SIZE:
        for i, v in enumerate(struct.unpack_from("<32Q", buf, vfp + 8)):
            uc.reg_write(r_d0 + i, v)
        uc.reg_write(r_fpscr, struct.unpack_from("<I", buf, vfp + 264)[0])
    uc.reg_write(r_pc, pc | (1 if cpsr & 0x20 else 0))
    return mask


# ---- AArch64 --------------------------------------------------------------------------
def _a64_regs() -> tuple[list[int], int, int, int, int, int, int]:
    from unicorn import arm64_const as c

    gprs = [c.UC_ARM64_REG_X0 + i for i in range(29)] + [c.UC_ARM64_REG_X29,
                                                          c.UC_ARM64_REG_X30]
    return (gprs, c.UC_ARM64_REG_SP, c.UC_ARM64_REG_PC, c.UC_ARM64_REG_NZCV,
            c.UC_ARM64_REG_Q0, c.UC_ARM64_REG_FPSR, c.UC_ARM64_REG_FPCR)


def _setup_a64(t: GuestThread, signo: int, info: bytes, act: SigAction, mask: int,
               pc: int | None, fault_addr: int) -> None:
    uc = t.uc
    gprs, r_sp, r_pc, r_nzcv, r_q0, r_fpsr, r_fpcr = _a64_regs()
    sp = uc.reg_read(r_sp)
    if pc is None:
        pc = uc.reg_read(r_pc)
    regs = [uc.reg_read(r) for r in gprs]
    record = (_stack_top(t, act) - 16) & ~15
    frame = (record - _A64_FRAME) & ~15
    buf = bytearray(_A64_FRAME)
    buf[0:SIGINFO_SIZE] = info
    ss = _uc_stack(t, sp)
    struct.pack_into("<QQQi4xQ", buf, _A64_UC, 0, 0, ss[0], ss[1], ss[2])
    struct.pack_into("<Q", buf, _A64_MASK, mask)
    struct.pack_into("<Q31QQQQ", buf, _A64_SC, fault_addr, *regs, sp, pc,
                     uc.reg_read(r_nzcv))
    res = _A64_RESERVED
    struct.pack_into("<IIII", buf, res, _A64_FPSIMD_MAGIC, _A64_FPSIMD_SIZE,
                     uc.reg_read(r_fpsr), uc.reg_read(r_fpcr))
    for i in range(32):
        v = uc.reg_read(r_q0 + i)
        struct.pack_into("<QQ", buf, res + 16 + 16 * i, v & (2**64 - 1), v >> 64)
    # the end record {0, 0} follows: already zero
    t.mem.write(frame, buf)
    t.mem.write(record, struct.pack("<QQ", regs[29], regs[30]))
    restorer = act.restorer if act.flags & SA_RESTORER else trampoline(t.process)
    uc.reg_write(gprs[0], signo)
    uc.reg_write(gprs[1], frame)
    uc.reg_write(gprs[2], frame + _A64_UC)
    uc.reg_write(gprs[29], record)
    uc.reg_write(gprs[30], restorer)
    uc.reg_write(r_sp, frame)
    uc.reg_write(r_pc, act.handler)


def _restore_a64(t: GuestThread) -> int:
    uc = t.uc
    gprs, r_sp, r_pc, r_nzcv, r_q0, r_fpsr, r_fpcr = _a64_regs()
    frame = uc.reg_read(r_sp)
    if frame & 15:
        raise BadFrame(f"unaligned frame {frame:#x}")
    buf = t.mem.read(frame, _A64_FRAME)
    (mask,) = struct.unpack_from("<Q", buf, _A64_MASK)
    vals = struct.unpack_from("<Q31QQQQ", buf, _A64_SC)
    for reg, v in zip(gprs, vals[1:32], strict=True):
        uc.reg_write(reg, v)
    sp, pc, pstate = vals[32:35]
    uc.reg_write(r_nzcv, pstate & 0xF0000000)
    res = _A64_RESERVED
    magic, size, fpsr, fpcr = struct.unpack_from("<IIII", buf, res)
    if magic == _A64_FPSIMD_MAGIC and size == _A64_FPSIMD_SIZE:
        uc.reg_write(r_fpsr, fpsr)
        uc.reg_write(r_fpcr, fpcr)
        for i in range(32):
            lo, hi = struct.unpack_from("<QQ", buf, res + 16 + 16 * i)
            uc.reg_write(r_q0 + i, lo | hi << 64)
    uc.reg_write(r_sp, sp)
    uc.reg_write(r_pc, pc)
    return mask
