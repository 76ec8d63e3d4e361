"""linux_user.syscalls: the per-arch tables and the registry built over them."""

from __future__ import annotations

import importlib

import pytest
from pyqemu.linux_user.syscalls import gen_numbers, table_for


@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_number_tables_match_the_cross_toolchains_headers(arch: str) -> None:
    committed = importlib.import_module(f"pyqemu.linux_user.syscalls.numbers_{arch}").NUMBERS
    assert committed == gen_numbers.numbers(gen_numbers.TOOLCHAINS[arch])


def test_handlers_sit_at_each_arch_number() -> None:
    arm, a64 = table_for("arm"), table_for("aarch64")
    assert arm.handlers[4][0] == "write" and a64.handlers[64][0] == "write"
    assert arm.handlers[192][0] == "mmap2" and 192 not in [
        n for n, h in a64.handlers.items() if h[0] == "mmap2"]
    assert a64.handlers[222][0] == "mmap"
    assert arm.handlers[0xF0005][0] == "ARM_set_tls"
    # the arm-only argument layouts win over the generic ones on arm only
    assert arm.handlers[180][1].__name__ == "sys_pread64_arm"
    assert a64.handlers[67][1].__name__ == "sys_pread64"
    # (name, handler, argument count)
    assert arm.handlers[arm.number("openat")][2] == 4


def test_unregistered_numbers_are_left_to_enosys() -> None:
    arm = table_for("arm")
    assert arm.number("rseq") not in arm.handlers
    assert 3999 not in arm.handlers
