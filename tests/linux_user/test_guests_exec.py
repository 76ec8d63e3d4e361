"""A guest that execve()s a guest program: under pyqemu the new program runs under pyqemu too.

exec_self runs itself again (through /proc/self/exe and through its own path)
with arguments and an environment of its choosing. qemu-user can only do this
with binfmt_misc registered for the architecture (else the host kernel answers
ENOEXEC), so the reference for the re-executed program is qemu running it
directly with the same argv and environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.build import ARCHES

HOWS = ("/proc/self/exe", "argv[0]")


def binfmt_registered(arch: str) -> bool:
    return Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch}").exists()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("arch", ARCHES)
def test_exec_self(guest, run_guest, tmp_path: Path, arch: str, static: bool) -> None:
    binary = guest("exec_self", arch, static=static)
    # what the re-executed program prints, from qemu running it directly
    children = {}
    for how in HOWS:
        direct = run_guest(
            "qemu", arch, binary, ["child", how], env={"GUEST_EXEC": "yes"}, cwd=tmp_path
        )
        assert direct.returncode == 5, direct.describe()
        assert len(direct.lines()) == 1 and direct.lines()[0].startswith("child: argc=3 "), (
            direct.describe()
        )
        assert "env=yes envc=1" in direct.stdout, direct.describe()
        children[how] = direct.lines()[0]
    success = [line for how in HOWS for line in (children[how], f"execve via {how}: exit status 5")]

    ref = run_guest("qemu", arch, binary, cwd=tmp_path)
    assert ref.returncode == 0, ref.describe()
    if binfmt_registered(arch):
        assert ref.lines() == success, ref.describe()
    else:
        assert ref.lines() == [
            line
            for how in HOWS
            for line in (f"execve via {how} failed: ENOEXEC", f"execve via {how}: exit status 127")
        ], ref.describe()

    ours = run_guest("pyqemu", arch, binary, cwd=tmp_path)
    assert ours.returncode == 0, ours.describe()
    assert ours.lines() == success, ours.describe()
