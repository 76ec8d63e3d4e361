"""The x86 CPU (system/x86): reset state, interrupt delivery in every mode, ports, HLT,
external interrupts, kicks; the register dump against the real qemu-system-x86_64.

Each guest is a 64 KiB ROM assembled with nasm (tests/system/asm.py), mapped the way
qemu's ``-bios`` maps it (0xF0000 and 0xFFFF0000), run on an :class:`X86Cpu` with a real
:class:`PortBus`; the guest reports through port writes.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import threading
import time

import pytest
from pyqemu.system.bus import PortBus
from pyqemu.system.x86.cpu import StopReason, X86Cpu

from tests.system.asm import rom

RAM = 0x200000


class Guest:
    """A CPU with 2 MiB of RAM, a ROM, and a port log at 0x80-0x8F."""

    def __init__(self, image: bytes) -> None:
        from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_EXEC, UC_PROT_READ

        def setup(uc) -> None:  # noqa: ANN001
            # RAM, with the BIOS read-only at 0xF0000 and 0xFFFF0000 as on the pc
            # machine: a store to it is dropped (as qemu drops stores to ROM)
            uc.mem_map(0, 0xF0000)
            uc.mem_map(0xF0000, 0x10000)
            uc.mem_map(0x100000, RAM - 0x100000)
            uc.mem_map(0xFFFF0000, 0x10000)
            for base in (0xF0000, 0xFFFF0000):
                uc.mem_write(base, image)
                uc.mem_protect(base, 0x10000, UC_PROT_READ | UC_PROT_EXEC)
            uc.hook_add(UC_HOOK_MEM_WRITE_PROT, lambda *a: True)
        self.cpu = X86Cpu(setup)
        self.log: list[tuple[int, int]] = []          # (port, value) of each OUT
        self.reads = {0x84: 0x5A, 0x86: 0x12345678}
        self.on_write: dict[int, object] = {}
        self.pending = False
        self.vector = 0
        self.acks = 0
        bus = PortBus()
        bus.register(0x80, 16, self._read, self._write, "test")
        self.cpu.set_port_bus(bus)

    def _read(self, port: int, size: int) -> int:
        return self.reads.get(port, 0)

    def _write(self, port: int, size: int, value: int) -> None:
        self.log.append((port, value))
        action = self.on_write.get(port)
        if action is not None:
            action()                                    # type: ignore[operator]

    def _ack(self) -> int:
        self.pending = False
        self.acks += 1
        return self.vector

    def run(self) -> StopReason:
        """One run() with this guest's interrupt line."""
        return self.cpu.run(lambda: self.pending, self._ack, lambda: None)

    def run_to_stop(self) -> StopReason:
        """run() until something other than a kick."""
        for _ in range(1000):
            r = self.run()
            if r is StopReason.ERROR:
                raise AssertionError(f"CPU error: {self.cpu.error}\n"
                                     f"{self.cpu.format_registers()}\nports: {self.log}")
            if r is not StopReason.KICK:
                return r
        raise AssertionError("the guest never stopped")

    def values(self, port: int) -> list[int]:
        return [v for p, v in self.log if p == port]


# ---- reset -----------------------------------------------------------------------------

def _qemu_info_registers(args: list[str], until: str | None = None) -> str:
    """HMP `info registers` of the real qemu-system-x86_64 (through QMP's
    human-monitor-command), once ``until`` shows up in it; the ``CPU#0`` header
    that HMP prints before the dump is removed."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.fail("required peer tool 'qemu-system-x86_64' is not installed")
    proc = subprocess.Popen([qemu, "-display", "none", "-nodefaults", "-qmp", "stdio",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None

    def execute(cmd: dict) -> object:
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")   # type: ignore[union-attr]
        proc.stdin.flush()                                     # type: ignore[union-attr]
        while True:
            line = proc.stdout.readline()                      # type: ignore[union-attr]
            if not line:
                raise AssertionError("qemu-system-x86_64 exited")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            assert "error" not in reply, reply

    try:
        assert "QMP" in json.loads(proc.stdout.readline())
        execute({"execute": "qmp_capabilities"})
        for _ in range(10000):          # the guest runs to its HLT
            out = execute({"execute": "human-monitor-command",
                           "arguments": {"command-line": "info registers"}})
            assert isinstance(out, str)
            if until is None or until in out:
                break
        assert out.startswith("\r\nCPU#0\r\n") or out.startswith("\nCPU#0\n"), out
        return out.replace("\r\n", "\n").split("CPU#0\n", 1)[1]
    finally:
        proc.stdin.write(b'{"execute": "quit"}\n')
        proc.stdin.flush()
        proc.wait()


def test_reset_state_is_qemus() -> None:
    g = Guest(rom("start: cli\nhlt\n"))
    regs = g.cpu.registers()
    assert (regs["cs"], regs["cs_base"], regs["rip"]) == (0xF000, 0xFFFF0000, 0xFFF0)
    assert (regs["cr0"], regs["rflags"], regs["rdx"]) == (0x60000010, 2, 0x663)
    # qemu's qemu64 model with unicorn's family/model/stepping (6/6/3: EDX=0x663)
    ref = _qemu_info_registers(["-S", "-cpu", "qemu64,family=6,model=6,stepping=3"])
    assert g.cpu.format_registers() == ref


# ---- real mode -----------------------------------------------------------------------

REAL_MODE = """
start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ds, ax
    mov word [0x42*4], int42
    mov word [0x42*4+2], 0xF000
    mov word [6*4], ud_handler
    mov word [6*4+2], 0xF000
    sti
    mov ax, 0x1111
    int 0x42
    out 0x82, ax            ; 0x2222 from the handler
    pushf
    pop ax
    out 0x83, ax            ; IF restored by IRET
    in al, 0x84             ; 0x5A
    out 0x80, al
    mov dx, 0x86
    in eax, dx              ; 0x12345678
    out dx, eax
    mov dx, 0x86
    mov di, 0x600
    mov cx, 3
    cld
    rep insw                ; 3 x 0x5678
    mov si, 0x600
    mov cx, 3
    mov dx, 0x8A
    rep outsw
    ud2
    out 0x88, al            ; after the #UD handler skipped ud2
    cli
    hlt
int42:
    out 0x80, ax            ; 0x1111
    pushf
    pop ax
    out 0x81, ax            ; IF clear in the handler
    mov bp, sp
    mov ax, [bp]            ; return IP
    out 0x8C, ax
    mov ax, 0x2222
    iret
after_int:
ud_handler:
    push bp
    mov bp, sp
    add word [bp+2], 2
    pop bp
    iret
"""


def _label(source: str, name: str) -> int:
    """Offset of ``name`` in the assembled ROM (a marker instruction finds it)."""
    probe = source.replace(f"{name}:", f"{name}:\n    db 0x0F, 0x0B, 0xEE, 0xFE, 0xC4, 0x7A", 1)
    data = rom(probe)
    return data.index(bytes([0x0F, 0x0B, 0xEE, 0xFE, 0xC4, 0x7A]))


def test_real_mode_int_iret_ud_ports_and_hlt() -> None:
    g = Guest(rom(REAL_MODE))
    assert g.run_to_stop() is StopReason.HALT
    assert g.values(0x80) == [0x1111, 0x5A]
    assert g.values(0x81)[0] & 0x200 == 0
    assert g.values(0x82) == [0x2222]
    assert g.values(0x83)[0] & 0x200 == 0x200
    # the return address pushed by INT 0x42 is the instruction after it
    int_at = rom(REAL_MODE).index(bytes([0xCD, 0x42]))
    assert g.values(0x8C) == [int_at + 2]
    assert g.values(0x86) == [0x12345678]
    assert g.values(0x8A) == [0x5678] * 3                # rep insw / rep outsw
    assert g.values(0x88) == [0x78]                      # ud2 skipped by the handler
    assert g.cpu.halted
    assert "HLT=1" in g.cpu.format_registers()


def test_real_mode_triple_fault_shuts_down() -> None:
    g = Guest(rom("""
start:
    lidt [cs:zero]
    int3
    hlt
zero: dw 0
      dd 0
"""))
    assert g.run_to_stop() is StopReason.SHUTDOWN


# ---- external interrupts and the interrupt shadow --------------------------------------

EXTERNAL = """
start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ds, ax
    mov word [0x20*4], irq
    mov word [0x20*4+2], 0xF000
    out 0x8F, al            ; the test raises the line (IF=0: nothing delivered)
    mov ax, 7
    sti
    hlt                     ; the interrupt comes after the HLT (STI shadow)
after_hlt:
    cli
    out 0x81, al
    mov ax, 1
    out 0x8E, al            ; (second test) raises the line again and kicks
    sti
shadowed:
    cli                     ; in the shadow of STI: runs before any interrupt
    mov ax, 3
    hlt
irq:
    mov bp, sp
    push ax
    mov ax, [bp]
    out 0x8C, ax            ; return IP
    pop ax
    out 0x80, ax
    iret
"""


def test_external_interrupt_after_sti_hlt() -> None:
    g = Guest(rom(EXTERNAL))
    g.vector = 0x20

    def raise_line() -> None:
        g.pending = True

    g.on_write[0x8F] = raise_line
    assert g.run_to_stop() is StopReason.HALT
    # delivered once, after the HLT (return address past it), with AX from before
    after = _label(EXTERNAL, "after_hlt")
    assert g.values(0x8C)[0] == after
    assert g.values(0x80)[0] == 7
    assert g.acks == 1
    assert g.values(0x81) == [7]


def _kicked_guest(source: str) -> Guest:
    """A guest of the EXTERNAL kind: port 0x8F raises the interrupt line (vector
    0x20), port 0x8E raises it and kicks the CPU."""
    g = Guest(rom(source))
    g.vector = 0x20
    g.on_write[0x8F] = lambda: setattr(g, "pending", True)

    def raise_and_kick() -> None:
        g.pending = True
        g.cpu.kick()

    g.on_write[0x8E] = raise_and_kick
    return g


def test_external_interrupt_waits_for_the_shadowed_instruction() -> None:
    g = _kicked_guest(EXTERNAL)
    # the first interrupt is delivered after the HLT; the kick stops the CPU at the
    # block start after STI, inside its shadow, with the line raised again
    assert g.run() is StopReason.KICK
    assert g.acks == 1 and g.pending
    assert g.cpu.env.rip == _label(EXTERNAL, "shadowed")
    assert " II=1 " in g.cpu.format_registers()
    # the shadowed CLI runs first: the interrupt stays pending, the CPU halts with IF=0
    # (a dead CPU: run() still says HALT)
    assert g.run_to_stop() is StopReason.HALT
    assert g.acks == 1 and g.pending
    assert g.values(0x80) == [7]
    assert g.run() is StopReason.HALT


def test_external_interrupt_right_after_the_shadowed_instruction() -> None:
    """STI; NOP; MOV; MOV; CLI with the line raised: the interrupt comes after the NOP
    (the one instruction of the shadow), not later and not never (SeaBIOS's yield()
    opens its interrupt window with exactly STI; NOP; ...; CLI)."""
    source = EXTERNAL.replace("""shadowed:
    cli                     ; in the shadow of STI: runs before any interrupt
    mov ax, 3
    hlt""", """shadowed:
    nop
window:
    mov ax, 3
    mov ax, 4
    cli
    hlt""")
    g = _kicked_guest(source)
    assert g.run() is StopReason.KICK
    assert g.cpu.env.rip == _label(source, "shadowed")
    assert g.run_to_stop() is StopReason.HALT
    assert g.acks == 2 and not g.pending
    assert g.values(0x8C) == [_label(source, "after_hlt"), _label(source, "window")]
    assert g.values(0x80) == [7, 1]
    assert g.cpu.eflags() & 0x100 == 0                  # the single step left no TF


def test_pushf_in_the_shadow_does_not_leak_the_single_step_flag() -> None:
    source = EXTERNAL.replace("""shadowed:
    cli                     ; in the shadow of STI: runs before any interrupt
    mov ax, 3
    hlt""", """shadowed:
    pushf
window:
    pop ax
    out 0x89, ax
    cli
    hlt""")
    g = _kicked_guest(source)
    assert g.run() is StopReason.KICK
    assert g.run_to_stop() is StopReason.HALT
    assert g.values(0x8C) == [_label(source, "after_hlt"), _label(source, "window")]
    assert g.values(0x89)[0] & 0x300 == 0x200            # IF as pushed, no TF


def test_halt_with_interrupts_enabled_waits_for_an_interrupt() -> None:
    source = """
start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ds, ax
    mov word [0x21*4], irq
    mov word [0x21*4+2], 0xF000
    sti
.idle:
    hlt
    out 0x82, al
    jmp .idle
irq:
    out 0x80, al
    iret
"""
    g = Guest(rom(source))
    g.vector = 0x21
    assert g.run_to_stop() is StopReason.HALT
    assert g.run() is StopReason.HALT                # nothing pending: still halted
    assert g.log == []
    for n in range(1, 4):
        g.pending = True
        assert g.run_to_stop() is StopReason.HALT
        assert [p for p, _ in g.log] == [0x80, 0x82] * n


# ---- protected mode ----------------------------------------------------------------------

PROTECTED = """
%define ROM 0xF0000
%macro GATE 3                       ; vector, handler, type/DPL byte pair (0x8E00: int gate)
    mov eax, ROM + %2
    mov word [0x1000 + %1*8], ax
    mov word [0x1000 + %1*8 + 2], 0x08
    mov word [0x1000 + %1*8 + 4], %3
    shr eax, 16
    mov word [0x1000 + %1*8 + 6], ax
%endmacro
start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    lgdt [cs:gdt_desc]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:(ROM + pm32)
bits 32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x90000
    GATE 13, gp_handler, 0x8E00
    GATE 14, pf_handler, 0x8E00
    GATE 0x80, sys_handler, 0xEE00      ; DPL 3
    GATE 0x81, sys_handler, 0x8E00      ; DPL 0: #GP from ring 3
    GATE 0x82, stop_handler, 0xEE00
    lidt [ROM + idt_desc]
    ; TSS at 0x2000: SS0:ESP0 = 0x10:0x80000
    mov dword [0x2004], 0x80000
    mov dword [0x2008], 0x10
    mov ax, 0x28
    ltr ax
    ; paging: identity 0-4 MiB, user/writable, page 0x180000 not present
    mov edi, 0x11000
    mov eax, 7
    mov ecx, 1024
.fill:
    stosd
    add eax, 0x1000
    loop .fill
    and dword [0x11000 + 0x180*4], ~1
    mov dword [0x10000], 0x11000 | 7
    mov eax, 0x10000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    ; #GP(0x1234): selector past the GDT limit
    mov ax, 0x1234
gp_at:
    mov ds, ax
    out 0x81, al                          ; resumed after the handler skipped the mov
    mov ax, 0x10
    mov ds, ax
    ; #PF writing a not-present page; the handler maps it and the store is retried
pf_at:
    mov dword [0x180010], 0xCAFE
    mov eax, [0x180010]
    out 0x84, eax
    ; to ring 3
    push dword 0x23
    push dword 0x70000
    push dword 0x202
    push dword 0x1B
    push dword ROM + ring3
    iret
ring3:
    int 0x80
    int 0x81                              ; gate DPL 0: #GP(0x81*8+2)
    int 0x82
gp_handler:
    pop eax
    out 0x80, eax                         ; error code
    add dword [esp], 2                    ; skip the 2-byte faulting instruction
    iret
pf_handler:
    pop eax
    out 0x88, eax                         ; error code
    mov eax, cr2
    out 0x8C, eax
    or dword [0x11000 + 0x180*4], 1
    invlpg [0x180000]
    iret
sys_handler:
    mov eax, esp
    out 0x8A, eax                         ; the ring-0 stack from the TSS
    mov eax, [esp + 4]
    out 0x8A, eax                         ; the caller's CS (ring 3)
    mov eax, [esp + 16]
    out 0x8A, eax                         ; the caller's SS
    iret
stop_handler:
    mov ax, 0x10                          ; (unicorn's IRET to ring 3 zeroes the data
    mov ds, ax                            ; segment caches, qemu 7.2 only clears P)
    mov es, ax
    cli
    hlt
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF                 ; 0x08 code32 DPL0
    dq 0x00CF92000000FFFF                 ; 0x10 data32 DPL0
    dq 0x00CFFA000000FFFF                 ; 0x18 code32 DPL3
    dq 0x00CFF2000000FFFF                 ; 0x20 data32 DPL3
    dq 0x0000890020000067                 ; 0x28 TSS32 at 0x2000
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd ROM + gdt
idt_desc:
    dw 0x83*8 - 1
    dd 0x1000
bits 16
"""


def test_protected_mode_gp_pf_and_privilege_change() -> None:
    g = Guest(rom(PROTECTED))
    assert g.run_to_stop() is StopReason.HALT
    # #GP(selector) from the guest's own handler; execution resumed after the mov
    assert g.values(0x80) == [0x1234, 0x81 * 8 + 2]
    assert g.values(0x81) == [0x34]
    # #PF: write to a not-present page (error code 2, supervisor), CR2 the address;
    # the handler mapped the page and the retried store landed
    assert g.values(0x88) == [0x2]
    assert g.values(0x8C) == [0x180010]
    assert g.values(0x84) == [0xCAFE]
    # INT 0x80 from ring 3: stack from the TSS (5 dwords pushed), CS and SS of ring 3
    assert g.values(0x8A)[:3] == [0x80000 - 20, 0x1B, 0x23]
    assert g.cpu.registers()["cpl"] == 0
    assert g.cpu.registers()["cs"] == 0x08


# ---- long mode -------------------------------------------------------------------------

LONG_MODE = """
%define ROM 0xF0000
start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    lgdt [cs:gdt_desc]
    ; identity map of the first 2 MiB: PML4 0x10000 -> PDPT 0x11000 -> PD 0x12000 (2 MiB page)
    mov ax, 0x1000
    mov es, ax
    mov dword [es:0x0000], 0x11000 | 3
    mov dword [es:0x1000], 0x12000 | 3
    mov dword [es:0x2000], 0x83
    mov eax, cr4
    or eax, 0x220                         ; PAE, OSFXSR
    mov cr4, eax
    mov eax, 0x10000
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100                         ; LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    jmp dword 0x08:(ROM + lm64)
bits 64
lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, 0x90000
    ; TSS at 0x3000: RSP0 0x70000, IST1 0x80000
    mov qword [0x3004], 0x70000
    mov qword [0x3024], 0x80000
    mov ax, 0x18
    ltr ax
    ; IDT at 0x1000: #PF -> pf_handler, interrupt gate, IST 1
    mov rax, ROM + pf_handler
    mov word [0x1000 + 14*16], ax
    mov word [0x1000 + 14*16 + 2], 0x08
    mov word [0x1000 + 14*16 + 4], 0x8E01
    shr rax, 16
    mov word [0x1000 + 14*16 + 6], ax
    shr rax, 16
    mov dword [0x1000 + 14*16 + 8], eax
    lidt [ROM + idt_desc]
    mov rbx, 0x1122334455667788
    movq xmm1, rbx
pf_at:
    mov rax, [0x40000000]                 ; PDPT entry 1 not present: #PF
pf_handler:
    mov rax, rsp
    out 0x80, eax                         ; the IST1 stack, 16-aligned, 6 qwords pushed
    mov rax, [rsp]
    out 0x84, eax                         ; error code
    mov rax, cr2
    out 0x88, eax
    mov rax, [rsp + 8]
    out 0x8C, eax                         ; RIP of the faulting instruction
    mov rax, [rsp + 32]
    out 0x8A, eax                         ; the interrupted RSP
    mov rax, 0xA1A2A3A4A5A6A7A8
    mov rcx, 0xC1
    mov rdx, 0xD1D2
    mov rsi, 0x51
    mov rdi, 0xD1
    mov rbp, 0xB1
    mov r8, 8
    mov r9, 9
    mov r10, 10
    mov r11, 11
    mov r12, 12
    mov r13, 13
    mov r14, 14
    mov r15, 0xF15
    hlt
align 8
gdt:
    dq 0
    dq 0x00209A0000000000                 ; 0x08 code64
    dq 0x0000920000000000                 ; 0x10 data
    dq 0x0000890030000067                 ; 0x18 TSS64 at 0x3000 (16 bytes)
    dq 0
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd ROM + gdt
idt_desc:
    dw 16*32 - 1
    dq 0x1000
bits 16
"""


def test_long_mode_page_fault_on_ist_stack() -> None:
    g = Guest(rom(LONG_MODE))
    assert g.run_to_stop() is StopReason.HALT
    assert g.values(0x80) == [0x80000 - 6 * 8]
    assert g.values(0x84) == [0]                       # read, not present, supervisor
    assert g.values(0x88) == [0x40000000]
    assert g.values(0x8C) == [0xF0000 + _label(LONG_MODE, "pf_at")]
    assert g.values(0x8A) == [0x90000]
    regs = g.cpu.registers()
    assert regs["efer"] & 0x500 == 0x500 and regs["cr2"] == 0x40000000
    # the monitor's view through the page tables: mapped, and not mapped
    assert g.cpu.read_virt(0xFFFF0, 5) == rom(LONG_MODE)[0xFFF0:0xFFF5]
    with pytest.raises(ValueError, match="cannot access memory at 0x40000000"):
        g.cpu.read_virt(0x40000000, 4)
    assert g.cpu.registers()["cr2"] == 0x40000000


@pytest.mark.parametrize("source", [PROTECTED, LONG_MODE], ids=["protected", "long"])
def test_info_registers_match_qemu(tmp_path, source: str) -> None:  # noqa: ANN001
    """The same ROM on the real qemu-system-x86_64, stopped at the same HLT: the
    register dump is the same text, byte for byte."""
    image = rom(source)
    g = Guest(image)
    assert g.run_to_stop() is StopReason.HALT
    bios = tmp_path / "bios.bin"
    bios.write_bytes(image)
    ref = _qemu_info_registers(["-bios", str(bios), "-cpu",
                                "qemu64,family=6,model=6,stepping=3"], until="HLT=1")
    ours = g.cpu.format_registers()
    assert ours == ref, "\n".join(f"ours: {a}\nqemu: {b}" for a, b in
                                  zip(ours.splitlines(), ref.splitlines(), strict=False)
                                  if a != b)


# ---- kicks -------------------------------------------------------------------------------

KICK_LOOP = """
start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    xor ebx, ebx
    mov dword [0x500], 0
    mov dword [0x504], 0
    mov dword [0x508], 0
.loop:
    inc dword [0x500]                    ; read-modify-write instructions: run twice
    add dword [0x504], 3                 ; after an inexact stop, they would drift
    lock xadd [0x508], ebx               ; from the register counter
    mov ebx, [0x508]
    inc ecx
    cmp byte [0x50C], 0
    je .loop
    cli
    hlt
"""


def test_async_kicks_keep_the_state_exact() -> None:
    """300+ emu_stop()s from another thread, each landing anywhere in a loop of
    read-modify-write instructions: memory and register counters stay consistent."""
    g = Guest(rom(KICK_LOOP))
    kicks = 0
    done = threading.Event()

    def kicker() -> None:
        nonlocal kicks
        rnd = random.Random(7)
        while kicks < 320:
            time.sleep(rnd.uniform(0, 0.0005))
            g.cpu.kick()
            kicks += 1
        done.set()
        g.cpu.kick()            # the CPU thread may be back in run(): end it there

    returns = 0
    thread = threading.Thread(target=kicker)
    thread.start()
    try:
        while not done.is_set():
            r = g.run()
            assert r is StopReason.KICK, g.cpu.error
            returns += 1
            regs = g.cpu.registers()
            count, triple, _ = struct.unpack("<III", g.cpu.uc.mem_read(0x500, 12))
            assert count == regs["rcx"] & 0xFFFFFFFF
            assert triple == 3 * count
    finally:
        done.wait()
        thread.join()
    g.cpu.uc.mem_write(0x50C, b"\x01")
    assert g.run_to_stop() is StopReason.HALT
    count, triple, _ = struct.unpack("<III", g.cpu.uc.mem_read(0x500, 12))
    assert count > 0 and count == g.cpu.registers()["rcx"] & 0xFFFFFFFF
    assert triple == 3 * count
    assert returns >= 100


SYSCALL = LONG_MODE.split("lm64:")[0].replace("0x83", "0x87").replace(
    "0x11000 | 3", "0x11000 | 7").replace("0x12000 | 3", "0x12000 | 7") + """
lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, 0x90000
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1                             ; SCE
    wrmsr
    mov ecx, 0xC0000081                   ; STAR: SYSCALL CS 0x08, SYSRET base 0x18
    xor eax, eax
    mov edx, 0x00180008
    wrmsr
    mov ecx, 0xC0000082                   ; LSTAR
    mov eax, ROM + sys_entry
    xor edx, edx
    wrmsr
    mov ecx, 0xC0000084                   ; FMASK: IF, DF
    mov eax, 0x600
    wrmsr
    sti
    syscall
after_ring0:
    hlt
sys_entry:
    mov rax, rcx
    out 0x80, eax                         ; the return RIP
    mov rax, r11
    out 0x84, eax                         ; RFLAGS before
    pushfq
    pop rax
    out 0x86, eax                         ; RFLAGS in the handler (FMASK applied)
    mov ax, cs
    out 0x88, ax
    mov ax, ss
    out 0x8A, ax
    inc byte [0x600]
    cmp byte [0x600], 2
    je .stop
    mov rcx, ROM + user
    mov r11, 0x3202                       ; IOPL 3: ring 3 may use the test ports
    mov rsp, 0x70000
    o64 sysret
.stop:
    cli
    hlt
user:
    mov ax, cs
    out 0x8C, ax
    mov ax, ss
    out 0x8C, ax
    syscall
after_ring3:
    hlt
align 8
gdt:
    dq 0
    dq 0x00209A0000000000                 ; 0x08 code64 DPL0
    dq 0x0000920000000000                 ; 0x10 data DPL0
    dq 0x00CFFA000000FFFF                 ; 0x18 code32 DPL3 (SYSRET to 32-bit)
    dq 0x0000F20000000000                 ; 0x20 data DPL3
    dq 0x0020FA0000000000                 ; 0x28 code64 DPL3
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd ROM + gdt
bits 16
"""


def test_syscall_and_sysret() -> None:
    g = Guest(rom(SYSCALL))
    assert g.run_to_stop() is StopReason.HALT
    base = 0xF0000
    assert g.values(0x80) == [base + _label(SYSCALL, "after_ring0"),
                              base + _label(SYSCALL, "after_ring3")]
    before = g.values(0x84)
    assert before[0] & 0x200 and before[1] & 0x3200 == 0x3200
    assert all(not v & 0x600 for v in g.values(0x86))   # IF and DF masked
    assert g.values(0x88) == [0x08, 0x08] and g.values(0x8A) == [0x10, 0x10]
    assert g.values(0x8C) == [0x2B, 0x23]                # SYSRET to ring 3
    assert g.cpu.registers()["cpl"] == 0


def _flat_protected(code: str, vectors: int) -> str:
    """PROTECTED's start (to 32-bit protected mode, flat ring-0 code and data, the
    GATE macro), then ``code`` and a GDT and an IDT of ``vectors`` gates at 0x1000."""
    return PROTECTED.split("    GATE 13,")[0] + code + f"""align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd ROM + gdt
idt_desc:
    dw {vectors:#x}*8 - 1
    dd 0x1000
bits 16
"""


def test_protected_mode_double_fault() -> None:
    """#GP whose gate is not present: the #NP raised while delivering it makes a
    double fault (error code 0) that the guest's #DF handler receives."""
    body = _flat_protected("""
    GATE 8, df_handler, 0x8E00
    lidt [ROM + idt_desc]
    mov ax, 0x1234
    mov ds, ax                            ; #GP -> gate 13 not present (#NP) -> #DF
    hlt
df_handler:
    pop eax
    out 0x80, eax                         ; the double fault's error code
    mov eax, [esp]
    out 0x84, eax                         ; the faulting instruction
    cli
    hlt
""", vectors=0x20)
    g = Guest(rom(body))
    assert g.run_to_stop() is StopReason.HALT
    assert g.values(0x80) == [0]
    mov_ds = rom(body).rindex(bytes([0x8E, 0xD8]))      # the last mov ds, ax
    assert g.values(0x84) == [0xF0000 + mov_ds]


def test_reset_from_long_mode_and_run_again() -> None:
    g = Guest(rom(LONG_MODE))
    fresh = g.cpu.format_registers()
    assert g.run_to_stop() is StopReason.HALT
    g.cpu.reset()
    assert g.cpu.format_registers() == fresh
    g.log.clear()
    assert g.run_to_stop() is StopReason.HALT            # the same boot again
    assert g.values(0x88) == [0x40000000]


def test_a20_gate() -> None:
    """FFFF:0010 is linear 0x100000: with A20 disabled the CPU reads address 0."""
    g = Guest(rom("""
start:
    cli
    xor ax, ax
    mov ds, ax
    mov dword [0], 0x11111111
    mov ax, 0xFFFF
    mov es, ax
.again:
    mov eax, [es:0x10]
    out 0x80, eax
    out 0x81, al                          ; the test flips A20 here
    jmp .again
"""))
    g.cpu.uc.mem_write(0x100000, struct.pack("<I", 0x22222222))
    flips = [False, True]
    g.on_write[0x81] = lambda: g.cpu.set_a20(flips.pop(0)) if flips else g.cpu.kick()
    for _ in range(10):
        if g.run() is StopReason.KICK:
            break
    assert g.values(0x80)[:3] == [0x22222222, 0x11111111, 0x22222222]


def test_task_gate_is_a_clean_error() -> None:
    body = _flat_protected("""
    GATE 0x40, 0, 0x8500                  ; a task gate
    lidt [ROM + idt_desc]
    int 0x40
    hlt
""", vectors=0x41)
    g = Guest(rom(body))
    assert g.run() is StopReason.ERROR
    assert g.cpu.error == "task gate for vector 0x40 is not supported"
