"""The x86-64 CPU of pyqemu-system-x86_64: one unicorn engine and what it lacks.

One ``Uc(UC_ARCH_X86, UC_MODE_64)`` runs the guest in every CPU mode (only a 64-bit
engine can resume in all of them), put into the architectural reset state by writing
its state directly (:mod:`.calibrate` finds where; :class:`.descriptors.Env` writes it).

What is done here rather than by unicorn (UNICORN.md "x86 system mode"):
- ``no_exit_request`` is set: an ``emu_stop()`` from any thread (:meth:`kick`) stops at
  the next translation-block start with exact state (no re-run of a read-modify-write);
- IN/OUT, INS/OUTS (``rep insw`` included) reach the port bus through UC_HOOK_INSN;
- every exception and INT n stops the engine in the interrupt hook (only recorded
  there) and is delivered in Python (:mod:`.delivery`) after ``emu_start`` returns;
- external interrupts are delivered between runs when IF=1 and no interrupt shadow
  (hflags' INHIBIT_IRQ after STI / MOV SS: the shadowed instruction is single-stepped
  with TF first, so the interrupt comes exactly after it). The engine cannot tell when
  the guest sets IF again (STI, POPF, IRET run inside it): an interrupt that arrived
  while IF=0 is delivered at the next return from the engine (kick, exception, HLT);
  ``irq_blocked`` says run() is in that state, so the machine can kick it sooner;
- HLT returns from ``emu_start``; the CPU's ``halted`` flag says so.

SYSCALL and SYSENTER only call a hook in the engine: they are done here too.

Not done: RDMSR/WRMSR hooks (the engine's MSRs are used as they are; unknown MSRs read
0), task gates and hardware task switches, SMM, the local APIC.

No UC_HOOK_CODE/BLOCK and no memory hooks are installed: the guest runs at the engine's
full speed between port accesses and interrupts.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import threading
from collections.abc import Callable
from typing import Any

from . import calibrate
from .delivery import Delivery, Kind, TripleFault, UnsupportedDelivery
from .descriptors import (
    CR0_PE,
    CR0_PG,
    CS,
    DESC_A,
    DESC_B,
    DESC_CS,
    DESC_G,
    DESC_L,
    DESC_P,
    DESC_R,
    DESC_S,
    DESC_W,
    HF_ADDSEG,
    HF_CS64,
    HF_INHIBIT_IRQ,
    HF_LMA,
    HF_SMM,
    IF,
    RF,
    SEG_NAMES,
    SS,
    TF,
    VM,
    Env,
    GuestFault,
    Segment,
    translate,
)

MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
EFER_SCE = 1


_LIB: list[ctypes.CDLL] = []


def _lib() -> ctypes.CDLL:
    """unicorn's library, opened again with our own prototypes for the memory calls."""
    if not _LIB:
        from unicorn.unicorn_py3.unicorn import uclib

        lib = ctypes.CDLL(uclib._name)
        for name, data in (("uc_mem_read", ctypes.c_void_p), ("uc_mem_write", ctypes.c_char_p)):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, data, ctypes.c_size_t]
            fn.restype = ctypes.c_int
        _LIB.append(lib)
    return _LIB[0]


class StopReason(enum.Enum):
    HALT = "halt"              # HLT with nothing to deliver: sleep until IRQ or timer
    KICK = "kick"              # kick(): the machine has work
    SHUTDOWN = "shutdown"      # triple fault
    ERROR = "error"            # see X86Cpu.error


_GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SYS_TYPES = (
    ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16",
     "TrapGate16", "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32",
     "Reserved", "IntGate32", "TrapGate32"),
    ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved",
     "Reserved", "Reserved", "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64",
     "Reserved", "IntGate64", "TrapGate64"),
)


class X86Cpu:
    """The PC's CPU (see the module doc). All methods but :meth:`kick` run on the CPU
    thread."""

    def __init__(self, uc_mem_setup: Callable[[Any], None] | None = None) -> None:
        from unicorn import (
            UC_ARCH_X86,
            UC_HOOK_INSN,
            UC_HOOK_INSN_INVALID,
            UC_HOOK_INTR,
            UC_MODE_64,
            Uc,
        )
        from unicorn import x86_const as x

        self._x = x
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(calibrate.CPU_MODEL)
        # no `until`: unicorn would walk it through the guest page tables at the end of
        # every run, clobbering CR2 and the error code (UNICORN.md)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self.uc = uc
        lay, env_addr, cpu_addr = calibrate.attach(uc)
        self.env = Env(uc, lay, env_addr, cpu_addr)
        self._no_exit_addr = calibrate.set_no_exit_request(uc)
        self._uch = ctypes.c_void_p(calibrate.uc_handle(uc))
        lib = _lib()
        self._mem_read, self._mem_write = lib.uc_mem_read, lib.uc_mem_write
        self._buf = ctypes.create_string_buffer(64)
        self._delivery = Delivery(self)
        self.halted = False
        self.error = ""                 # the message of the last StopReason.ERROR
        self._exc: tuple[int, bool, int] | None = None   # (vector, software, error code)
        self._stop_insn: str | None = None
        self._stepping = False          # TF set by run() for one shadowed instruction
        #: the last run of the engine began with an interrupt pending and IF=0
        self.irq_blocked = False
        self._step_dr6 = 0
        self._step_pushf = False
        self._kicked = False
        self._in_emu = False
        self._emu_done = threading.Event()
        self._lock = threading.Lock()
        self._cpu_thread: int | None = None
        self._bus: Any = None
        self._hooks = [
            uc.hook_add(UC_HOOK_INTR, self._on_intr),
            uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid),
            uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x.UC_X86_INS_SYSCALL),
            uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, x.UC_X86_INS_SYSENTER),
        ]
        if uc_mem_setup is not None:
            uc_mem_setup(uc)
        self.reset()

    # ---- state ----------------------------------------------------------------------
    def reset(self) -> None:
        """The architectural reset state (as QEMU's x86_cpu_reset for the pc machine)."""
        x, env, uc = self._x, self.env, self.uc
        for i in range(16):
            env.set_gpr(i, 0)
        env.set_gpr(2, env.lay.cpuid_version)          # EDX: family/model/stepping
        uc.reg_write(x.UC_X86_REG_CR4, 0)
        uc.reg_write(x.UC_X86_REG_CR3, 0)
        uc.reg_write(x.UC_X86_REG_CR2, 0)
        uc.reg_write(x.UC_X86_REG_CR0, 0x60000010)
        env.efer = 0
        env.a20_mask = 0xFFFFFFFF
        # real mode: CPL 0, 16-bit code and stack, ADDSEG (segment bases in use)
        env.hflags = HF_ADDSEG
        data = DESC_P | DESC_S | DESC_W | DESC_A
        for n in range(6):
            env.write_seg_raw(n, Segment(0, 0, 0xFFFF, data))
        env.write_seg_raw(CS, Segment(0xF000, 0xFFFF0000, 0xFFFF,
                                      DESC_P | DESC_S | DESC_CS | DESC_R | DESC_A))
        env.write_seg_raw(6, Segment(0, 0, 0xFFFF, DESC_P | (2 << 8)))
        env.write_seg_raw(7, Segment(0, 0, 0xFFFF, DESC_P | (11 << 8)))
        env.write_seg_raw(8, Segment(0, 0, 0xFFFF, 0))
        env.write_seg_raw(9, Segment(0, 0, 0xFFFF, 0))
        uc.reg_write(x.UC_X86_REG_RFLAGS, 2)
        env.rip = 0xFFF0
        for r in range(x.UC_X86_REG_DR0, x.UC_X86_REG_DR3 + 1):
            uc.reg_write(r, 0)
        uc.reg_write(x.UC_X86_REG_DR6, 0xFFFF0FF0)
        uc.reg_write(x.UC_X86_REG_DR7, 0x400)
        uc.reg_write(x.UC_X86_REG_FPCW, 0x37F)
        uc.reg_write(x.UC_X86_REG_FPSW, 0)
        uc.reg_write(x.UC_X86_REG_FPTAG, 0xFFFF)
        uc.reg_write(x.UC_X86_REG_MXCSR, 0x1F80)
        for r in range(8):
            uc.reg_write(x.UC_X86_REG_FP0 + r, (0, 0))
        for r in (*range(x.UC_X86_REG_XMM0, x.UC_X86_REG_XMM7 + 1),
                  *range(x.UC_X86_REG_XMM8, x.UC_X86_REG_XMM15 + 1)):
            uc.reg_write(r, 0)
        env.clear_exception()
        env.cpu_halted = False
        self.halted = False
        self.irq_blocked = False
        self._exc = None
        uc.ctl_flush_tb()

    def eflags(self) -> int:
        return self.uc.reg_read(self._x.UC_X86_REG_RFLAGS) & 0xFFFFFFFF

    def set_eflags(self, value: int) -> None:
        self.uc.reg_write(self._x.UC_X86_REG_RFLAGS, value | 2)

    def set_a20(self, enabled: bool) -> None:
        """The A20 gate (port 0x92, i8042): address bit 20 forced to 0 when disabled."""
        mask = 0xFFFFFFFF if enabled else 0xFFEFFFFF
        if self.env.a20_mask != mask:
            from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

            self.env.a20_mask = mask
            # the softmmu TLB holds addresses made with the old mask: flushed, as qemu's
            # x86_cpu_set_a20 does (safe from an I/O hook, unlike a code-cache flush)
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # ---- memory as the CPU sees it ------------------------------------------------------
    def _read_phys(self, addr: int, size: int) -> bytes:
        """Guest physical memory (the C call with a kept buffer: about 0.5 us against
        3-4 us through Uc.mem_read, which allocates a buffer per call)."""
        if size > len(self._buf):
            return bytes(self.uc.mem_read(addr, size))
        err = self._mem_read(self._uch, addr, self._buf, size)
        if err:
            from unicorn import UcError
            raise UcError(err)
        return self._buf.raw[:size]

    def _write_phys(self, addr: int, data: bytes) -> None:
        if self._mem_write(self._uch, addr, data, len(data)):
            self.uc.mem_write(addr, data)           # raises the engine's error

    def _walk(self, linear: int, size: int, write: bool, user: bool):  # noqa: ANN202
        """(physical address, length) pieces of a linear range, page by page."""
        end = linear + size
        while linear < end:
            n = min(end - linear, 0x1000 - (linear & 0xFFF))
            try:
                phys = translate(self.env, self._read_phys, self._write_phys, linear,
                                 write=write, user=user)
            except GuestFault as f:
                if f.vector == 14:
                    self.uc.reg_write(self._x.UC_X86_REG_CR2, linear)
                raise
            yield phys, n
            linear += n

    def read_linear(self, linear: int, size: int, user: bool = False) -> bytes:
        """Read through the guest's paging (GuestFault #PF, with CR2 set)."""
        env = self.env
        if not env.cr(0) & CR0_PG:
            mask = env.a20_mask
            if mask == 0xFFFFFFFF or not (linear ^ (linear + size - 1)) & 0x100000:
                return bytes(self.uc.mem_read(linear & mask, size))
        return b"".join(self._read_phys(p, n) for p, n in self._walk(linear, size, False,
                                                                     user))

    def write_linear(self, linear: int, data: bytes, user: bool = False) -> None:
        env = self.env
        if not env.cr(0) & CR0_PG:
            mask = env.a20_mask
            if mask == 0xFFFFFFFF or not (linear ^ (linear + len(data) - 1)) & 0x100000:
                self.uc.mem_write(linear & mask, data)
                return
        pieces = list(self._walk(linear, len(data), True, user))
        at = 0
        for p, n in pieces:
            self._write_phys(p, data[at:at + n])
            at += n

    def read_virt(self, addr: int, size: int) -> bytes:
        """Guest virtual memory for the monitor (``x``): no fault is raised in the guest,
        CR2 and the accessed/dirty bits are left alone; ValueError if not mapped."""
        out = bytearray()
        end = addr + size
        while addr < end:
            n = min(end - addr, 0x1000 - (addr & 0xFFF))
            try:
                phys = translate(self.env, self._read_phys, self._write_phys, addr,
                                 set_ad=False)
            except GuestFault:
                raise ValueError(f"cannot access memory at {addr:#x}") from None
            out += self._read_phys(phys, n)
            addr += n
        return bytes(out)

    # ---- ports --------------------------------------------------------------------------
    def set_port_bus(self, bus: Any) -> None:
        """Send IN/OUT (and INS/OUTS) to ``bus`` (read(port, size), write(port, size, v))."""
        from unicorn import UC_HOOK_INSN

        x = self._x
        self._bus = bus
        read, write = bus.read, bus.write

        def on_in(_uc: Any, port: int, size: int, _ud: Any) -> int:
            return read(port, size)

        def on_out(_uc: Any, port: int, size: int, value: int, _ud: Any) -> None:
            write(port, size, value)

        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, x.UC_X86_INS_IN))
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0,
                                            x.UC_X86_INS_OUT))

    # ---- hooks (record only; delivery happens after emu_start returns) ---------------
    def _on_intr(self, uc: Any, intno: int, _ud: Any) -> None:
        env = self.env
        if intno == 1 and self._stepping and not env.exception_is_int:
            self._stepping = False      # our own single step is done: not the guest's
        else:
            self._exc = (intno, env.exception_is_int, env.error_code)
        env.clear_exception()
        uc.emu_stop()

    def _on_invalid(self, _uc: Any, _ud: Any) -> bool:
        return False                    # emu_start fails with UC_ERR_INSN_INVALID: #UD

    def _on_syscall(self, uc: Any, _ud: Any) -> None:
        self._stop_insn = "SYSCALL"
        uc.emu_stop()

    def _on_sysenter(self, uc: Any, _ud: Any) -> None:
        self._stop_insn = "SYSENTER"
        uc.emu_stop()

    # ---- running ------------------------------------------------------------------------
    def kick(self) -> None:
        """Stop the engine at the next block start; run() then returns KICK. Any thread.

        unicorn drops an emu_stop() that lands while emu_start is still setting up (it
        clears its stop request after marking itself running): from another thread
        the stop is repeated until the engine has returned (a few ms at most)."""
        with self._lock:
            self._kicked = True
            if not self._in_emu:
                return
            self._emu_done.clear()
            self.uc.emu_stop()
        if threading.get_ident() == self._cpu_thread:
            return
        for _ in range(100):
            if self._emu_done.wait(0.001):
                return
            with self._lock:
                if not self._in_emu:
                    return
                self.uc.emu_stop()

    def _begin_step(self) -> None:
        env = self.env
        self._stepping = True
        self._step_dr6 = self.uc.reg_read(self._x.UC_X86_REG_DR6)
        # a PUSHF in the shadow would push our TF: noted, and cleared in the copy after
        try:
            code = self.read_virt(env.seg(CS).base + env.rip, 4)
        except ValueError:
            code = b""
        # (TF is bit 8: byte 1 of the pushed word, dword or qword alike)
        prefixes = bytes([0x66, *range(0x40, 0x50)]) if env.hflags & HF_CS64 else b"\x66"
        self._step_pushf = code.lstrip(prefixes)[:1] == b"\x9c"
        self.set_eflags(self.eflags() | TF)

    def _end_step(self) -> None:
        """TF and DR6 back as the guest had them (a POPF/IRET in the shadow that sets
        TF itself is not told apart: TF is cleared)."""
        env = self.env
        self._stepping = False
        self.set_eflags(self.eflags() & ~TF)
        self.uc.reg_write(self._x.UC_X86_REG_DR6, self._step_dr6)
        if self._step_pushf and self._exc is None:
            ss = env.seg(SS)
            sp = env.gpr(4) & (0xFFFFFFFFFFFFFFFF if env.hflags & HF_CS64 else
                               0xFFFFFFFF if ss.flags & DESC_B else 0xFFFF)
            try:
                low = self.read_linear(ss.base + sp, 2)
                self.write_linear(ss.base + sp, bytes([low[0], low[1] & ~1]))
            except GuestFault:
                pass

    def deliver(self, vector: int, kind: Kind, error_code: int = 0,
                fault_ip: int | Callable[[], int] | None = None) -> StopReason | None:
        """Deliver one event now (None, or SHUTDOWN/ERROR)."""
        try:
            self._delivery.deliver(vector, kind, error_code, fault_ip)
        except TripleFault:
            self.error = "triple fault"
            return StopReason.SHUTDOWN
        except UnsupportedDelivery as e:
            self.error = str(e)
            return StopReason.ERROR
        self.halted = False
        return None

    def _software_int_start(self, vector: int, rip: int) -> int:
        """Address of the INT instruction whose next RIP is ``rip`` (for faults)."""
        try:
            two = self.read_virt(self.env.seg(CS).base + rip - 2, 2)
        except ValueError:
            return rip - 2
        if two[0] == 0xCD and two[1] == vector:
            return rip - 2
        return rip - 1                  # INT3 (CC), INTO (CE), INT1 (F1)

    def run(self, interrupt_pending: Callable[[], bool], acknowledge: Callable[[], int],
            service: Callable[[], None]) -> StopReason:
        """Run the guest until the machine must act (see sys_api.md)."""
        from unicorn import UC_ERR_INSN_INVALID, UcError

        env, uc = self.env, self.uc
        self._cpu_thread = threading.get_ident()
        while True:
            service()
            if self._kicked:
                self._kicked = False
                return StopReason.KICK
            step = False
            self.irq_blocked = False
            if not env.eflags_raw() & IF:
                self.irq_blocked = interrupt_pending()
            elif interrupt_pending():
                if env.hflags & HF_INHIBIT_IRQ:
                    # the shadowed instruction first: single-stepped with TF (exact;
                    # emu_start's count= stops one translation block late here)
                    step = not env.eflags_raw() & TF
                else:
                    stop = self.deliver(acknowledge() & 0xFF, Kind.EXTERNAL)
                    if stop is not None:
                        return stop
            if self.halted:
                return StopReason.HALT
            self._exc = None
            self._stop_insn = None
            env.cpu_halted = False
            with self._lock:
                if self._kicked:
                    continue
                self._in_emu = True
            try:
                if step:
                    self._begin_step()
                uc.emu_start(env.rip, 0)
            except UcError as e:
                if e.errno == UC_ERR_INSN_INVALID:
                    self._exc = (6, False, 0)
                else:
                    self.error = f"{e} at RIP={env.rip:#x}"
                    return StopReason.ERROR
            finally:
                with self._lock:
                    self._in_emu = False
                    self._emu_done.set()
                if step:
                    self._end_step()
            if self._exc is not None:
                vector, software, code = self._exc
                self._exc = None
                if software:
                    stop = self.deliver(vector, Kind.SOFTWARE, 0, functools.partial(
                        self._software_int_start, vector, env.rip))
                else:
                    stop = self.deliver(vector, Kind.EXCEPTION, code)
                if stop is not None:
                    return stop
            elif self._stop_insn is not None:
                stop = self._fast_system_call(self._stop_insn)
                if stop is not None:
                    return stop
            elif env.cpu_halted:
                self.halted = True

    # ---- SYSCALL / SYSENTER (the engine only calls the hook and skips them) ------------
    def _msr(self, index: int) -> int:
        return self.uc.reg_read(self._x.UC_X86_REG_MSR, index)

    def _fast_system_call(self, insn: str) -> StopReason | None:
        """Do what SYSCALL or SYSENTER does (qemu's helper_syscall/helper_sysenter);
        RIP is already past the instruction. SYSRET and SYSEXIT run in the engine."""
        env = self.env
        flat = 0xFFFFFFFF
        code = DESC_G | DESC_P | DESC_S | DESC_CS | DESC_R | DESC_A
        data = DESC_G | DESC_B | DESC_P | DESC_S | DESC_W | DESC_A
        long_mode = bool(env.hflags & HF_LMA)
        if insn == "SYSCALL":
            if not env.efer & EFER_SCE:
                env.rip -= 2                    # #UD is a fault: at the instruction
                return self.deliver(6, Kind.EXCEPTION)
            selector = (self._msr(MSR_STAR) >> 32) & 0xFFFF
            flags = self.eflags()
            if long_mode:
                env.set_gpr(1, env.rip)
                env.set_gpr(11, flags & ~RF)
                target = self._msr(MSR_LSTAR if env.hflags & HF_CS64 else MSR_CSTAR)
                self.set_eflags(flags & ~(self._msr(MSR_FMASK) | RF))
                cs_flags = code | DESC_L
            else:
                env.set_gpr(1, env.rip & 0xFFFFFFFF)
                target = self._msr(MSR_STAR) & 0xFFFFFFFF
                self.set_eflags(flags & ~(IF | RF | VM))
                cs_flags = code | DESC_B
        else:
            sysenter_cs = self._msr(MSR_SYSENTER_CS) & 0xFFFF
            if not env.cr(0) & CR0_PE or not sysenter_cs:
                env.rip -= 2
                return self.deliver(13 if env.cr(0) & CR0_PE else 6, Kind.EXCEPTION)
            selector = sysenter_cs
            self.set_eflags(self.eflags() & ~(VM | IF | RF))
            cs_flags = code | (DESC_L if long_mode else DESC_B)
            env.set_gpr(4, self._msr(MSR_SYSENTER_ESP))
            target = self._msr(MSR_SYSENTER_EIP)
        env.load_seg_cache(CS, Segment(selector & 0xFFFC, 0, flat, cs_flags))
        env.load_seg_cache(SS, Segment((selector + 8) & 0xFFFC, 0, flat, data))
        env.rip = target if long_mode else target & 0xFFFFFFFF
        return None

    # ---- registers ------------------------------------------------------------------------
    def registers(self) -> dict[str, int]:
        """Register values by lower-case name (general, rip, rflags, segments, control)."""
        env, x, uc = self.env, self._x, self.uc
        regs = {name: env.gpr(i) for i, name in enumerate(_GPR_NAMES)}
        regs["rip"] = env.rip
        regs["rflags"] = self.eflags()
        for n, name in enumerate(SEG_NAMES):
            seg = env.seg(n)
            regs[name.lower()] = seg.selector
            regs[name.lower() + "_base"] = seg.base
        for n in (0, 2, 3, 4):
            regs[f"cr{n}"] = env.cr(n)
        regs["cr8"] = uc.reg_read(x.UC_X86_REG_CR8)
        regs["efer"] = env.efer
        for n, name in ((8, "gdt"), (9, "idt")):
            seg = env.seg(n)
            regs[name + "_base"], regs[name + "_limit"] = seg.base, seg.limit
        regs["cpl"] = env.cpl
        regs["halted"] = int(self.halted)
        return regs

    def _format_seg(self, name: str, seg: Segment) -> str:
        env = self.env
        hf = env.hflags
        if hf & HF_CS64:
            line = f"{name:<3}={seg.selector:04x} {seg.base:016x} {seg.limit:08x} " \
                   f"{seg.flags & 0x00FFFF00:08x}"
        else:
            line = f"{name:<3}={seg.selector:04x} {seg.base & 0xFFFFFFFF:08x} " \
                   f"{seg.limit:08x} {seg.flags & 0x00FFFF00:08x}"
        if not env.cr(0) & CR0_PE or not seg.flags & DESC_P:
            return line
        f = seg.flags
        line += f" DPL={seg.dpl} "
        if f & DESC_S:
            if f & DESC_CS:
                line += "CS64" if f & (1 << 21) else ("CS32" if f & (1 << 22) else "CS16")
                line += " [" + ("C" if f & (1 << 10) else "-") + ("R" if f & (1 << 9) else "-")
            else:
                line += "DS  " if f & (1 << 22) or hf & HF_LMA else "DS16"
                line += " [" + ("E" if f & (1 << 10) else "-") + ("W" if f & (1 << 9) else "-")
            line += ("A" if f & DESC_A else "-") + "]"
        else:
            line += _SYS_TYPES[1 if hf & HF_LMA else 0][(f >> 8) & 0xF]
        return line

    def format_registers(self) -> str:
        """qemu's cpu_dump_state(CPU_DUMP_FPU) text, as HMP ``info registers`` prints
        it after its ``CPU#0`` line."""
        env, x, uc = self.env, self._x, self.uc
        hf = env.hflags
        fl = self.eflags()
        flags = "".join(c if fl & bit else "-" for c, bit in
                        (("D", 1 << 10), ("O", 1 << 11), ("S", 1 << 7), ("Z", 1 << 6),
                         ("A", 1 << 4), ("P", 1 << 2), ("C", 1)))
        tail = (f" [{flags}] CPL={hf & 3} II={(hf >> 3) & 1} "
                f"A20={(env.a20_mask >> 20) & 1} SMM={int(bool(hf & HF_SMM))} "
                f"HLT={int(self.halted)}")
        g = [env.gpr(i) for i in range(16)]
        out = []
        if hf & HF_CS64:
            order = (("RAX", 0), ("RBX", 3), ("RCX", 1), ("RDX", 2), ("RSI", 6), ("RDI", 7),
                     ("RBP", 5), ("RSP", 4), ("R8 ", 8), ("R9 ", 9), ("R10", 10),
                     ("R11", 11), ("R12", 12), ("R13", 13), ("R14", 14), ("R15", 15))
            for row in range(4):
                out.append(" ".join(f"{n}={g[i]:016x}" for n, i in order[row * 4:row * 4 + 4]))
            out.append(f"RIP={env.rip:016x} RFL={fl:08x}" + tail)
        else:
            order = (("EAX", 0), ("EBX", 3), ("ECX", 1), ("EDX", 2), ("ESI", 6), ("EDI", 7),
                     ("EBP", 5), ("ESP", 4))
            for row in range(2):
                out.append(" ".join(f"{n}={g[i] & 0xFFFFFFFF:08x}"
                                    for n, i in order[row * 4:row * 4 + 4]))
            out.append(f"EIP={env.rip & 0xFFFFFFFF:08x} EFL={fl:08x}" + tail)
        for n, name in enumerate(SEG_NAMES):
            out.append(self._format_seg(name, env.seg(n)))
        out.append(self._format_seg("LDT", env.seg(6)))
        out.append(self._format_seg("TR", env.seg(7)))
        gdt, idt = env.seg(8), env.seg(9)
        dr = [uc.reg_read(x.UC_X86_REG_DR0 + i) for i in range(8)]
        if hf & HF_LMA:
            out.append(f"GDT=     {gdt.base:016x} {gdt.limit:08x}")
            out.append(f"IDT=     {idt.base:016x} {idt.limit:08x}")
            out.append(f"CR0={env.cr(0) & 0xFFFFFFFF:08x} CR2={env.cr(2):016x} "
                       f"CR3={env.cr(3):016x} CR4={env.cr(4) & 0xFFFFFFFF:08x}")
        else:
            out.append(f"GDT=     {gdt.base & 0xFFFFFFFF:08x} {gdt.limit:08x}")
            out.append(f"IDT=     {idt.base & 0xFFFFFFFF:08x} {idt.limit:08x}")
            out.append(f"CR0={env.cr(0) & 0xFFFFFFFF:08x} CR2={env.cr(2) & 0xFFFFFFFF:08x} "
                       f"CR3={env.cr(3) & 0xFFFFFFFF:08x} CR4={env.cr(4) & 0xFFFFFFFF:08x}")
        out.append("".join(f"DR{i}={dr[i]:016x} " for i in range(4)))
        out.append(f"DR6={dr[6]:016x} DR7={dr[7]:016x}")
        out.append(f"EFER={env.efer:016x}")
        fsw = uc.reg_read(x.UC_X86_REG_FPSW)
        tags = uc.reg_read(x.UC_X86_REG_FPTAG)
        ftw = sum(1 << i for i in range(8) if (tags >> (2 * i)) & 3 != 3)
        out.append(f"FCW={uc.reg_read(x.UC_X86_REG_FPCW):04x} FSW={fsw:04x} "
                   f"[ST={(fsw >> 11) & 7}] FTW={ftw:02x} "
                   f"MXCSR={uc.reg_read(x.UC_X86_REG_MXCSR):08x}")
        fpr = []
        for i in range(8):
            mant, exp = uc.reg_read(x.UC_X86_REG_FP0 + i)
            fpr.append(f"FPR{i}={mant:016x} {exp:04x}")
        out += [" ".join(fpr[i:i + 2]) for i in range(0, 8, 2)]
        xmm_ids = [*range(x.UC_X86_REG_XMM0, x.UC_X86_REG_XMM7 + 1),
                   *range(x.UC_X86_REG_XMM8, x.UC_X86_REG_XMM15 + 1)]
        nb = 16 if hf & HF_CS64 else 8
        xmm = []
        for i in range(nb):
            v = uc.reg_read(xmm_ids[i])
            xmm.append(f"XMM{i:02d}={v >> 64:016x} {v & 0xFFFFFFFFFFFFFFFF:016x}")
        out += [" ".join(xmm[i:i + 2]) for i in range(0, nb, 2)]
        return "\n".join(out) + "\n"


__all__ = ["X86Cpu", "StopReason", "Kind", "GuestFault", "SS"]
