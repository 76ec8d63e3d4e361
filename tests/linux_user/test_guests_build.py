"""The guest programs themselves: they build for both arches and say the right things under qemu.

These tests check the programs of tests/guests/ against the reference, qemu-arm
and qemu-aarch64, so that comparing pyqemu with qemu (test_guests_*.py) means
something: each program must print its key lines (specific values, not just
exit 0) when qemu-user runs it, static and dynamic.
"""

from __future__ import annotations

import pytest

from tests.guests.build import ARCHES, c_guests

# Per program: (lines that must appear in stdout under qemu, expected exit status).
# Arch-specific lines use "{machine}" (armv7l / aarch64) and "{bits}" (32 / 64).
EXPECTED: dict[str, tuple[list[str], int]] = {
    "hello": (["hello from the guest"], 0),
}

MACHINE = {"arm": "armv7l", "aarch64": "aarch64"}
BITS = {"arm": "32", "aarch64": "64"}


def expected_lines(name: str, arch: str) -> list[str]:
    return [line.format(machine=MACHINE[arch], bits=BITS[arch]) for line in EXPECTED[name][0]]


def test_every_program_has_expectations() -> None:
    assert sorted(EXPECTED) == c_guests()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_guest_under_qemu(guest, run_guest, name: str, arch: str, static: bool) -> None:
    binary = guest(name, arch, static=static)
    result = run_guest("qemu", arch, binary)
    lines = result.lines()
    for line in expected_lines(name, arch):
        assert line in lines, f"missing line {line!r}\n{result.describe()}"
    assert result.returncode == EXPECTED[name][1], result.describe()
