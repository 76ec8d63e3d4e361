"""The x86 CPU (system/x86): reset state, interrupt delivery in every mode, ports, HLT,
external interrupts, kicks; the register dump against the real qemu-system-x86_64.

Each guest is a 64 KiB ROM assembled with nasm (tests/system/asm.py), mapped the way
qemu's ``-bios`` maps it (0xF0000 and 0xFFFF0000), run on an :class:`X86Cpu` with a real
:class:`PortBus`; the guest reports through port writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pyqemu.system.bus import PortBus
from pyqemu.system.x86.cpu import StopReason, X86Cpu

from tests.system.asm import rom

RAM = 0x200000


class Guest:
    """A CPU with 2 MiB of RAM, a ROM, and a port log at 0x80-0x8F."""

    def __init__(self, image: bytes) -> None:
        def setup(uc) -> None:  # noqa: ANN001
            uc.mem_map(0, RAM)
            uc.mem_map(0xFFFF0000, 0x10000)
        self.cpu = X86Cpu(setup)
        self.cpu.uc.mem_write(0xF0000, image)
        self.cpu.uc.mem_write(0xFFFF0000, image)
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


def test_external_interrupt_waits_for_the_shadowed_instruction() -> None:
    g = Guest(rom(EXTERNAL))
    g.vector = 0x20
    g.on_write[0x8F] = lambda: setattr(g, "pending", True)

    def raise_and_kick() -> None:
        g.pending = True
        g.cpu.kick()

    g.on_write[0x8E] = raise_and_kick
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
