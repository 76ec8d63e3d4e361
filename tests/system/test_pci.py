"""PCI configuration mechanism #1, the i440FX and the PIIX3/PIIX4 functions, compared
with the real qemu-system-x86_64 (paused, driven through qtest): every configuration
byte after reset, write masks, sub-dword accesses, BAR sizing and decoding, PAM
callbacks, PIRQ routing to the 8259s, the reset control register, the PM I/O block."""

from __future__ import annotations

import random
from pathlib import Path

from tests.system.pc_ports import QEMU_ARGS, OurPc, config_read_script, run
from tests.system.qtest_peer import QemuQtest

FUNCTIONS = (0x00, 0x08, 0x09, 0x0B)     # 00.0 i440FX, 01.0 ISA, 01.1 IDE, 01.3 PM


def _diff(theirs: list[str], ours: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in zip(theirs, ours, strict=True) if a != b]


def test_config_space_after_reset_matches_qemu(tmp_path: Path) -> None:
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        for devfn in FUNCTIONS:
            script = config_read_script(devfn)
            theirs = run(q, script)
            assert _diff(theirs, run(ours, script)) == []
    # the identity lspci -nn shows, read through the ports as a guest would
    ids = {}
    for devfn in FUNCTIONS:
        ours.bus.write(0xCF8, 4, 0x80000000 | devfn << 8)
        ids[devfn] = ours.bus.read(0xCFC, 4)
    assert ids == {0x00: 0x12378086, 0x08: 0x70008086, 0x09: 0x70108086, 0x0B: 0x71138086}


def test_write_masks_match_qemu(tmp_path: Path) -> None:
    """All ones, then all zeroes, written to every dword; then byte and word writes."""
    ours = OurPc()
    script = []
    for devfn in FUNCTIONS:
        for value in (0xFFFFFFFF, 0x00000000, 0x5AA5C33C):
            for off in range(0, 256, 4):
                script += [f"outl 0xcf8 {0x80000000 | devfn << 8 | off:#x}",
                           f"outl 0xcfc {value:#x}", "inl 0xcfc"]
        for off in (0x04, 0x06, 0x0C, 0x3C, 0x59, 0x60, 0x72):
            script += [f"outl 0xcf8 {0x80000000 | devfn << 8 | (off & 0xFC):#x}",
                       f"outb {0xCFC + (off & 3):#x} 0xff", "inl 0xcfc",
                       f"outw {0xCFC + (off & 2):#x} 0x1234", "inl 0xcfc"]
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []
    assert ours.pam_calls, "PAM writes reached on_pam"


def test_access_widths_and_unassigned_functions_match_qemu(tmp_path: Path) -> None:
    script = ["outl 0xcf8 0x80000b40", "inl 0xcf8", "inw 0xcf8", "inb 0xcfa", "inb 0xcfb",
              "outw 0xcf8 0x1234", "inl 0xcf8",                  # only dword writes latch
              "outl 0xcf8 0x80000800", "inb 0xcfd", "inw 0xcfe", "inb 0xcff", "inw 0xcfd",
              "outl 0xcf8 0x80000803", "inb 0xcfc", "inw 0xcfc", "inl 0xcfc",
              "outl 0xcf8 0x800008fe", "inl 0xcfc", "inw 0xcfe",
              "outl 0xcf8 0x80010000", "inl 0xcfc",            # bus 1
              "outl 0xcf8 0x00000000", "inl 0xcfc",            # enable bit clear
              "outl 0xcf8 0x80001000", "inl 0xcfc",            # empty slot 2
              "outl 0xcf8 0x80000a00", "inl 0xcfc"]            # 01.2 does not exist
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []


def test_bar_sizing_and_bmide_decoding_match_qemu(tmp_path: Path) -> None:
    script = ["outl 0xcf8 0x80000920", "outl 0xcfc 0xffffffff", "inl 0xcfc",   # size 16
              "outl 0xcfc 0xc001", "inl 0xcfc",
              "inb 0xc002",                                   # not decoded: IO off
              "outl 0xcf8 0x80000904", "outw 0xcfc 0x0005", "inl 0xcfc",
              "inb 0xc000", "inb 0xc002", "outb 0xc002 0x66", "inb 0xc002",
              "outl 0xc004 0x12345677", "inl 0xc004", "inw 0xc006", "inb 0xc005",
              "outw 0xc006 0xabcd", "inl 0xc004", "inw 0xc000", "inb 0xc001",
              "inb 0xc00a", "outb 0xc00a 0x20", "inb 0xc00a",
              "outl 0xcf8 0x80000920", "outl 0xcfc 0xd001",   # move the BAR
              "inb 0xc002", "inb 0xd002", "inl 0xd004",
              "outl 0xcf8 0x80000904", "outw 0xcfc 0x0000", "inb 0xd002"]
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []


def test_pam_and_smram_writes_call_back() -> None:
    ours = OurPc()
    pam_values = [0x10, 0x33, 0x11, 0x22, 0x30, 0x03, 0x00]
    # PAM0 at 0x59 sits in the dword at 0x58; a guest writes them as bytes and dwords
    ours.bus.write(0xCF8, 4, 0x80000058)
    ours.bus.write(0xCFD, 1, pam_values[0])
    ours.bus.write(0xCFE, 2, pam_values[1] | pam_values[2] << 8)
    ours.bus.write(0xCF8, 4, 0x8000005C)
    ours.bus.write(0xCFC, 4, int.from_bytes(bytes(pam_values[3:7]), "little"))
    assert ours.pam_calls == list(enumerate(pam_values))
    assert [ours.i440fx.pam(i) for i in range(7)] == pam_values
    smram: list[int] = []
    ours.i440fx.on_smram = smram.append
    ours.bus.write(0xCF8, 4, 0x80000070)
    ours.bus.write(0xCFE, 1, 0x4A)
    assert smram == [0x4A]


def test_pm_io_block_apm_and_reset_control_match_qemu(tmp_path: Path) -> None:
    script = ["outl 0xcf8 0x80000b40", "outl 0xcfc 0x601",
              "outl 0xcf8 0x80000b80", "inw 0x600",          # not enabled yet
              "outb 0xcfc 1", "inw 0x600", "inw 0x602", "inw 0x604", "inl 0x608",
              "outw 0x600 1", "inw 0x600", "outw 0x602 0x21", "inw 0x602",
              "outw 0x604 0x0000", "inw 0x604", "inb 0xb2", "outb 0xb2 0xf1",
              "inw 0x604", "inb 0xb2", "outb 0xb2 0xf0", "inw 0x604",
              "inb 0xb3", "outb 0xb3 0x55", "inb 0xb3",
              "inb 0xcf9", "outb 0xcf9 2", "inb 0xcf9", "outb 0xcf9 0x0b", "inb 0xcf9"]
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []
    assert ours.resets == 0
    ours.bus.write(0xCF9, 1, 0x06)                           # hard reset request
    assert ours.resets == 1
    ours.bus.write(0x604, 2, 0x2000)                         # SLP_TYP 0 + SLP_EN: S5
    assert ours.shutdowns == 1


def test_acpi_registers_match_qemu(tmp_path: Path) -> None:
    """PM1 block accesses of every width and offset, GPE0 (0xAFE0), PCI hotplug (0xAE00)
    and CPU hotplug (0xAF00) registers, as the ACPI tables SeaBIOS builds use them."""
    script = ["outl 0xcf8 0x80000b40", "outl 0xcfc 0x601",
              "outl 0xcf8 0x80000b80", "outb 0xcfc 1"]
    script += [f"in{w} {0x600 + off:#x}" for w in "bwl" for off in range(0, 16)]
    script += ["outb 0x602 0x21", "inw 0x602", "outb 0x603 0x04", "inw 0x602",
               "outl 0x600 0x01200001", "inl 0x600", "outw 0x605 0x2000", "inw 0x604",
               "outb 0x604 0x00", "inw 0x604", "outl 0x604 0x12340001", "inl 0x604"]
    script += [f"in{w} {0xAFE0 + off:#x}" for w in "bwl" for off in range(0, 6)]
    script += ["outb 0xafe2 0xff", "outb 0xafe3 0x5a", "inl 0xafe0", "outw 0xafe0 0xffff",
               "inl 0xafe0", "outl 0xafe0 0x12345678", "inl 0xafe0", "inw 0xafe2"]
    script += [f"in{w} {0xAE00 + off:#x}" for w in "bwl" for off in range(0, 0x1A)]
    script += ["outl 0xae10 0x1", "inl 0xae10", "outb 0xae10 0x0", "inl 0xae10",
               "outl 0xae00 0xffffffff", "inl 0xae00", "outl 0xae08 0x4", "inl 0xae08"]
    script += [f"in{w} {0xAF00 + off:#x}" for w in "bwl" for off in range(0, 0x22)]
    script += ["outb 0xaf00 0xff", "inb 0xaf00"]
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []


def test_pm_timer_counts_virtual_time() -> None:
    now = [0]
    ours = OurPc(clock_ns=lambda: now[0])
    ours.bus.write(0xCF8, 4, 0x80000B40)
    ours.bus.write(0xCFC, 4, 0x601)
    ours.bus.write(0xCF8, 4, 0x80000B80)
    ours.bus.write(0xCFC, 1, 1)
    now[0] = 1_000_000_000                                   # one second: 3579545 ticks
    assert ours.bus.read(0x608, 4) == 3579545
    now[0] = 5_000_000_000                                   # wraps at 2^24
    assert ours.bus.read(0x608, 4) == (5 * 3579545) & 0xFFFFFF


def test_pirq_routing_reaches_the_pic() -> None:
    """A PCI function's INTA on slot 1 is PIRQ A; route it to IRQ 11 via 0x60."""
    ours = OurPc()
    pm = ours.piix.pm                                        # 01.3 has INTA
    pic = ours.pic
    # unmask everything, edge->level for IRQ 11 (PCI interrupts are level-triggered)
    for port, value in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, 0x70), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0x00), (0xA1, 0x00), (0x4D1, 0x08)):
        ours.bus.write(port, 1, value)
    pm.set_irq(True)
    assert not pic.intr_pending()                            # PIRQA disabled (0x80)
    ours.bus.write(0xCF8, 4, 0x80000860)
    ours.bus.write(0xCFC, 1, 11)                             # PIRQA -> IRQ 11
    assert pic.intr_pending()
    assert pic.acknowledge() == 0x70 + 3
    # the status register's interrupt bit follows INTx; INTX_DISABLE masks it
    ours.bus.write(0xCF8, 4, 0x80000B04)
    assert ours.bus.read(0xCFE, 2) & 0x0008
    ours.bus.write(0xCFC, 2, 0x0400)
    assert not pic.slave.irr & 0x08
    ours.bus.write(0xCFC, 2, 0x0000)
    assert pic.slave.irr & 0x08
    pm.set_irq(False)
    assert not pic.slave.irr & 0x08


def _qmp(q: QemuQtest, command: str, **arguments: object) -> object:
    (result,) = q.qmp((command, arguments))
    return result


def _qmp_system_reset(q: QemuQtest) -> None:
    _qmp(q, "system_reset")
    # the reset runs in QEMU's main loop after the reply: wait for its effect
    for _ in range(10000):
        q.cmd("outl 0xcf8 0x80000860")
        if q.cmd("inl 0xcfc") == "0x80808080":
            return
    raise AssertionError("QEMU never reset")


def test_system_reset_matches_qemu(tmp_path: Path) -> None:
    """A reset clears command/status/BARs and the PIIX registers, but the i440FX's PAM
    and SMRAM and the PM base keep what the firmware wrote (QEMU 7.2)."""
    setup = ["outl 0xcf8 0x80000058", "outl 0xcfc 0x33333000",
             "outl 0xcf8 0x80000070", "outl 0xcfc 0x00a8ffff",
             "outl 0xcf8 0x80000860", "outl 0xcfc 0x0b0a0908",
             "outl 0xcf8 0x80000920", "outl 0xcfc 0xc001",
             "outl 0xcf8 0x80000904", "outl 0xcfc 0x0005",
             "outl 0xcf8 0x80000b40", "outl 0xcfc 0x601",
             "outl 0xcf8 0x80000b80", "outb 0xcfc 1", "outw 0x604 0x0000"]
    after = ["inb 0xc002", "inw 0x604"]
    for devfn in FUNCTIONS:
        after += config_read_script(devfn)
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert run(q, setup) == run(ours, setup)
        _qmp_system_reset(q)
        ours.host.reset()
        assert _diff(run(q, after), run(ours, after)) == []


def test_info_pci_matches_qemu(tmp_path: Path) -> None:
    """HMP info pci and QMP query-pci before and after the firmware's usual
    programming."""
    ours = OurPc()
    setup = ["outl 0xcf8 0x80000920", "outl 0xcfc 0xc001", "outl 0xcf8 0x80000904",
             "outw 0xcfc 0x0005", "outl 0xcf8 0x80000b3c", "outb 0xcfc 9"]
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        before = _qmp(q, "human-monitor-command", **{"command-line": "info pci"})
        assert before == ours.host.info_text().replace("\n", "\r\n")
        assert _qmp(q, "query-pci") == ours.host.query_pci()
        run(q, setup)
        run(ours, setup)
        after = _qmp(q, "human-monitor-command", **{"command-line": "info pci"})
        assert after == ours.host.info_text().replace("\n", "\r\n")
        assert _qmp(q, "query-pci") == ours.host.query_pci()
    assert "BAR4: I/O at 0xc000 [0xc00f]." in after


def test_random_config_writes_match_qemu(tmp_path: Path) -> None:
    """Random writes (any function, offset, width, value), then every configuration
    dword of the four functions read back: equal to qemu's."""
    rng = random.Random(7)
    script = []
    for _ in range(600):
        devfn = rng.choice(FUNCTIONS)
        offset = rng.randrange(256)
        width = rng.choice("bwl")
        port = 0xCFC + (offset & 3 if width == "b" else offset & 2 if width == "w" else 0)
        value = rng.getrandbits({"b": 8, "w": 16, "l": 32}[width])
        script += [f"outl 0xcf8 {0x80000000 | devfn << 8 | (offset & 0xFC):#x}",
                   f"out{width} {port:#x} {value:#x}"]
    for devfn in FUNCTIONS:
        script += config_read_script(devfn)
    ours = OurPc()
    with QemuQtest(tmp_path, *QEMU_ARGS) as q:
        assert _diff(run(q, script), run(ours, script)) == []
