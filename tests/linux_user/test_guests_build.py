"""The guest programs themselves: they build for both arches and say the right things under qemu.

These tests check the programs of tests/guests/ against the reference, qemu-arm
and qemu-aarch64, so that comparing pyqemu with qemu (test_guests_compare.py)
means something: each program must print its key lines (specific values, not
just exit 0) when qemu-user runs it, static and dynamic.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.guests.build import ARCHES, build_guest, c_guests, go_guests, supports_static_pie
from tests.guests.programs import DRIVEN, PROGRAMS
from tests.guests.run import is_dynamic

from .conftest import guest_params

ELF_MACHINE = {"arm": 40, "aarch64": 183}


def elf_header(path: Path) -> tuple[int, int, int]:
    """(EI_CLASS, e_type, e_machine) of an ELF file."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not ELF"
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    return head[4], e_type, e_machine


def test_every_program_has_a_spec() -> None:
    sources = set(c_guests() + go_guests())
    assert not set(PROGRAMS) & set(DRIVEN)
    missing = sources - set(PROGRAMS) - set(DRIVEN)
    assert not missing, f"add a Spec to tests/guests/programs.py (or a DRIVEN entry) for {missing}"
    assert set(PROGRAMS) | set(DRIVEN) <= sources
    assert {name for name, spec in PROGRAMS.items() if spec.go} == set(go_guests())


def test_all_guests_build(all_guests: dict[tuple[str, str, str], Path]) -> None:
    expected = {(n, a, link) for n, a, link in guest_params()}
    assert set(all_guests) == expected
    for (name, arch, link), path in all_guests.items():
        elf_class, e_type, machine = elf_header(path)
        assert machine == ELF_MACHINE[arch], (name, arch)
        assert elf_class == (1 if arch == "arm" else 2), (name, arch)
        assert is_dynamic(path) == (link == "dynamic"), (name, arch, link)
        # Debian's gcc builds PIE (ET_DYN) by default; -static gives ET_EXEC
        if not PROGRAMS[name].go:
            assert e_type == (3 if link == "dynamic" else 2), (name, arch, link)


@pytest.mark.parametrize("arch", ARCHES)
def test_static_pie_hello(arch: str, run_guest) -> None:
    if not supports_static_pie(arch):
        # Debian's armhf glibc has no rcrt1.o: gcc -static-pie cannot link
        assert arch == "arm"
        return
    path = build_guest("hello", arch, static=True, pie=True)
    assert elf_header(path)[1] == 3 and not is_dynamic(path)
    result = run_guest("qemu", arch, path)
    assert result.stdout == "hello from the guest\n" and result.returncode == 0, result.describe()


@pytest.mark.parametrize(("name", "arch", "link"), guest_params())
def test_guest_under_qemu(qemu_reference, name: str, arch: str, link: str) -> None:
    spec = PROGRAMS[name]
    result = qemu_reference(name, arch, link)
    lines = result.lines()
    for line in spec.expected_stdout(arch):
        assert line in lines, f"missing line {line!r}\n{result.describe()}"
    assert not [line for line in lines if line.startswith("FAIL")], result.describe()
    err = result.stderr.splitlines()
    for line in spec.expected_stderr(arch):
        assert line in err, f"missing stderr line {line!r}\n{result.describe()}"
    assert result.returncode == spec.exit, result.describe()
