"""Processes under pyqemu-arm / pyqemu-aarch64 (issue 6, phase 2): fork, vfork, clone as
a process, wait4, waitid, exit statuses, death by a signal, execve of a host program and
of a guest program, and the /proc views the guest gets.

proc.c and procself.c print the same under qemu-user and pyqemu (static and dynamic,
both arches). Exec of a guest binary is compared with what the program itself asked
for: qemu-user 7.2 leaves that to the host kernel's binfmt_misc (ENOEXEC without it),
pyqemu runs it under pyqemu-<arch> itself.
"""

from __future__ import annotations

import pytest

ARCHES = ["arm", "aarch64"]
LINKS = pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_proc_guest(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("proc", arch, static=static))
    for line in ("wait4: exited=1 status=7",
                 "waitid: pid-matches=1 signo=17 code=CLD_EXITED status=42",
                 "vfork: status=3", "host sh says arg0 arg1", "execve /bin/sh: status=9",
                 "ok: execve of a missing file: ENOENT", "failures: 0"):
        assert line in ours.lines()
    assert ours.returncode == 0


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_exec_guest_binary(guest, run_guest, arch: str, static: bool) -> None:
    """execve of a guest ELF (by path and by /proc/self/exe) runs it under pyqemu with
    argv[0] and the environment exactly as given."""
    ours = run_guest("pyqemu", arch, guest("proc", arch, static=static), ("exec-guest",))
    lines = ours.lines()
    child = ["exec child argc=3 argv0=renamed", "exec child argv[1]=exec-child",
             "exec child argv[2]=two words"]
    env = {"exec child env: ONLY=this", "exec child env: AND=that"}
    for how in ("the program", "/proc/self/exe"):
        end = lines.index(f"exec of {how}: exited=1 status=5")
        block = lines[:end]
        start = max(i for i, line in enumerate(block) if line == child[0])
        got = block[start:]
        assert got[:3] == child, ours.describe()
        assert {line for line in got if "env:" in line} == env, ours.describe()
        lines = lines[end + 1:]
    assert "ok: execve of a non-executable file: EACCES" in ours.lines()
    assert ours.lines()[-1] == "failures: 0"
    assert ours.returncode == 0
