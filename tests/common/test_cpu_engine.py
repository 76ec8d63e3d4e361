"""common.cpu.engine: engines with 4 KiB target pages, and FastRegs' direct access to
the general registers agreeing with unicorn's own register API, on real engines."""

from __future__ import annotations

from typing import Any

import pytest
from pyqemu.common.cpu import get_arch
from pyqemu.common.cpu.engine import _GPRS, FastRegs, new_engine
from pyqemu.common.memory import PROT_EXEC, PROT_READ, PROT_WRITE, GuestMemory

CODE = 0x10000
# arm:     add r0, r0, r1; add r7, r7, #1; svc 0
ARM_CODE = bytes.fromhex("010080e0017087e2000000ef")
# aarch64: add x0, x0, x1; add x8, x8, #1; svc 0
A64_CODE = bytes.fromhex("0000018b08050091010000d4")


def _setup(name: str) -> tuple[Any, Any, FastRegs, GuestMemory]:
    arch = get_arch(name)
    mem = GuestMemory(arch)
    uc = new_engine(arch)
    mem.attach(uc)
    regs = FastRegs(uc, (arch.reg_syscall_nr, *arch.reg_args))
    return arch, uc, regs, mem


@pytest.mark.parametrize("name", ["arm", "aarch64"])
def test_engine_uses_4k_target_pages(name: str) -> None:
    arch = get_arch(name)
    uc = new_engine(arch)
    assert uc.ctl_get_page_size() == arch.page_size == 4096


@pytest.mark.parametrize("name", ["arm", "aarch64"])
def test_fastregs_agree_with_the_register_api(name: str) -> None:
    arch, uc, regs, _mem = _setup(name)
    assert regs.direct
    ids, _slots, width = _GPRS[name]
    mask = (1 << (8 * width)) - 1
    # calibration left the registers as they were (zero after reset)
    assert [uc.reg_read(r) for r in ids] == [0] * len(ids)
    for i, reg in enumerate(ids):
        value = (0x1234_5678_9ABC_DEF0 * (i + 3)) & mask
        uc.reg_write(reg, value)
        assert regs.read(reg) == value
        regs.write(reg, value ^ mask)
        assert uc.reg_read(reg) == value ^ mask
    regs.write(arch.reg_ret, -2)                 # negative results wrap as the guest's
    assert uc.reg_read(arch.reg_ret) == mask - 1
    # registers outside the direct window still work (through the C API)
    regs.write(arch.reg_tls, 0x1000)
    assert regs.read(arch.reg_tls) == uc.reg_read(arch.reg_tls) == 0x1000
    want = [uc.reg_read(r) for r in (arch.reg_syscall_nr, *arch.reg_args)]
    assert list(regs.read_batch()) == want


@pytest.mark.parametrize("name", ["arm", "aarch64"])
def test_fastregs_see_the_guest_running(name: str) -> None:
    """Values the guest computes are what the direct view reads inside the syscall
    hook, and a result written there is what the guest continues with."""
    import unicorn

    arch, uc, regs, mem = _setup(name)
    mem.mmap(CODE, 4096, PROT_READ | PROT_EXEC, fixed=True)
    mem.mmap(CODE + 0x10000, 4096, PROT_READ | PROT_WRITE, fixed=True)
    mem.write(CODE, ARM_CODE if name == "arm" else A64_CODE)
    a0, a1 = arch.reg_args[0], arch.reg_args[1]
    regs.write(a0, 40)
    regs.write(a1, 2)
    regs.write(arch.reg_syscall_nr, 99)
    seen = []

    def on_intr(uc_: object, intno: int, _: object) -> None:
        seen.append(tuple(regs.read_batch()[:3]))
        regs.write(arch.reg_ret, 7)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    uc.emu_start(CODE, 0)
    assert seen == [(100, 42, 2)]
    assert uc.reg_read(arch.reg_ret) == 7


def test_second_engine_reuses_the_layout() -> None:
    """Every engine of a process (one per guest thread) gets its own register file."""
    arch, uc1, regs1, mem = _setup("arm")
    uc2 = new_engine(arch)
    mem.attach(uc2)
    regs2 = FastRegs(uc2, (arch.reg_syscall_nr, *arch.reg_args))
    assert regs1.direct and regs2.direct
    regs1.write(arch.reg_args[0], 11)
    regs2.write(arch.reg_args[0], 22)
    assert (uc1.reg_read(arch.reg_args[0]), uc2.reg_read(arch.reg_args[0])) == (11, 22)


@pytest.mark.parametrize("name", ["arm", "aarch64"])
def test_setter_writes_the_register(name: str) -> None:
    arch, uc, regs, _mem = _setup(name)
    set_ret = regs.setter(arch.reg_ret)
    set_ret(arch.mask - 3)                        # -4 as the guest sees it
    assert uc.reg_read(arch.reg_ret) == arch.mask - 3
    set_tls = regs.setter(arch.reg_tls)           # not a general register: C API
    set_tls(0x2000)
    assert uc.reg_read(arch.reg_tls) == 0x2000
