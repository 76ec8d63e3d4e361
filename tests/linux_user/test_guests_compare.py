"""pyqemu-arm / pyqemu-aarch64 against qemu-arm / qemu-aarch64 on the guest programs.

Each program of tests/guests/programs.PROGRAMS runs under both emulators, for
both architectures, static and dynamic (with -L at the cross sysroot); standard
output and exit status must be equal (standard error too where the program's
spec asks, e.g. qemu's "uncaught target signal" line), and the output must
hold the program's key lines, so that two equally wrong runs cannot pass.

NOT_YET lists the programs (or program/arch pairs) pyqemu does not run
correctly yet, with the first thing that goes wrong; they are left out until it
does. Every other program of PROGRAMS is compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.programs import PROGRAMS

from .conftest import guest_params

# "program" or "program/arch" -> what goes wrong under pyqemu today (the first
# failing call or fault); measured against the committed tree
NOT_YET: dict[str, str] = {
    "goroutines/arm": "'fatal error: sync: unlock of unlocked mutex' in the 16-goroutine mutex"
    " test: an ldrex/strex sequence is not atomic across guest threads",
    "threads/arm": "now and then 'atomic counter: 160001' (1 in ~10 runs): an ldrex/strex"
    " increment is applied twice, the same atomicity bug as goroutines/arm",
}


def _not_yet(name: str, arch: str) -> bool:
    return name in NOT_YET or f"{name}/{arch}" in NOT_YET


def compared() -> list[tuple[str, str, str]]:
    return [p for p in guest_params() if not _not_yet(p[0], p[1])]


def test_not_yet_names_real_programs() -> None:
    for key in NOT_YET:
        name, _, arch = key.partition("/")
        assert name in PROGRAMS, key
        assert arch in ("", "arm", "aarch64"), key
    assert compared(), "nothing is compared"


@pytest.mark.parametrize(("name", "arch", "link"), compared())
def test_same_as_qemu(
    all_guests: dict[tuple[str, str, str], Path],
    qemu_reference,
    run_guest,
    tmp_path: Path,
    name: str,
    arch: str,
    link: str,
) -> None:
    spec = PROGRAMS[name]
    ref = qemu_reference(name, arch, link)
    ours = run_guest(
        "pyqemu", arch, all_guests[name, arch, link], spec.args, cwd=tmp_path, timeout=60
    )
    context = f"\n=== qemu ===\n{ref.describe()}\n=== pyqemu ===\n{ours.describe()}"
    assert ours.stdout == ref.stdout, "standard output differs" + context
    assert ours.returncode == ref.returncode, "exit status differs" + context
    if spec.compare_stderr:
        assert ours.stderr == ref.stderr, "standard error differs" + context
    lines = ours.lines()
    for line in spec.expected_stdout(arch):
        assert line in lines, f"missing line {line!r}\n{ours.describe()}"
    assert ours.returncode == spec.exit, ours.describe()
    assert list(tmp_path.iterdir()) == [], "the guest left files behind under pyqemu"


# hello built other ways: fixed-address dynamic, static-PIE (AArch64: Debian's
# armhf glibc has no rcrt1.o), ARM state instead of Thumb-2 on 32-bit ARM
VARIANTS = [
    ("arm", False, False, ()),
    ("aarch64", False, False, ()),
    ("aarch64", True, True, ()),
    ("arm", False, None, ("-marm",)),
    ("arm", True, None, ("-marm",)),
]


@pytest.mark.parametrize(
    ("arch", "static", "pie", "extra"),
    VARIANTS,
    ids=[
        "arm-dyn-nopie",
        "aarch64-dyn-nopie",
        "aarch64-static-pie",
        "arm-dyn-marm",
        "arm-static-marm",
    ],
)
def test_hello_variants(
    guest, assert_same_as_qemu, tmp_path: Path, arch: str, static: bool, pie, extra
) -> None:
    binary = guest("hello", arch, static=static, pie=pie, extra=extra)
    ref, ours = assert_same_as_qemu(arch, binary, cwd=tmp_path, compare_stderr=True)
    assert ours.stdout == "hello from the guest\n" and ours.returncode == 0, ours.describe()
