"""/proc/cpuinfo as the guest reads it describes the guest's CPU under pyqemu.

qemu-user 7.2 passes the host's /proc/cpuinfo through for ARM guests, so this
is not a comparison: the reference is what Linux on an ARMv7 / ARMv8 machine
prints ("CPU architecture: 8", a "model name" naming v8l on 32-bit ARM: pyqemu's
default CPU is qemu's, "max").
The qemu run only checks that the guest program reads the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.build import ARCHES

ARCH_LINE = {"arm": "cpuinfo: CPU architecture: 8", "aarch64": "cpuinfo: CPU architecture: 8"}


@pytest.mark.parametrize("arch", ARCHES)
def test_cpuinfo_describes_the_guest(guest, run_guest, tmp_path: Path, arch: str) -> None:
    binary = guest("procself", arch, static=True)
    ref = run_guest("qemu", arch, binary, ["cpuinfo"], cwd=tmp_path)
    assert "cpuinfo non-empty: 1" in ref.lines(), ref.describe()

    ours = run_guest("pyqemu", arch, binary, ["cpuinfo"], cwd=tmp_path)
    assert ours.returncode == 0, ours.describe()
    lines = ours.lines()
    assert "cpuinfo non-empty: 1" in lines, ours.describe()
    assert ARCH_LINE[arch] in lines, ours.describe()
    features = [line for line in lines if line.startswith("cpuinfo: Features")]
    assert len(features) == 1, ours.describe()
    words = features[0].split(":", 2)[2].split()
    # what Linux lists for these CPUs: VFP/NEON on ARMv8 AArch32 (EABI hard-float needs them),
    # FP/ASIMD on AArch64
    expected = {"vfp", "neon", "tls"} if arch == "arm" else {"fp", "asimd"}
    assert expected <= set(words), ours.describe()
    if arch == "arm":
        assert any(line.startswith("cpuinfo: model name") and "(v8l)" in line for line in lines)
    assert not [line for line in lines if "AMD" in line or "Intel" in line], ours.describe()
