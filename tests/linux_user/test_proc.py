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
                 "ok: execve of a missing file: ENOENT",
                 "child's /proc/<pid>/exe is /proc/self/exe: 1", "system: 3",
                 "popen read: from popen", "posix_spawn status: 4", "failures: 0"):
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


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_mem_guest_shared_across_fork(guest, assert_same_as_qemu, arch: str,
                                      static: bool) -> None:
    """mem.c: a forked child's store into a MAP_SHARED|MAP_ANONYMOUS mapping reaches the
    parent (guest RAM is private host memory; shared mappings are host shared ones)."""
    _, ours = assert_same_as_qemu(arch, guest("mem", arch, static=static))
    assert "ok: child's write to MAP_SHARED is seen by the parent" in ours.lines()
    assert ours.returncode == 0


#: the CPU model unicorn 2.1.4 creates by default, which pyqemu advertises (qemu's
#: default is "max": AT_PLATFORM v8l on arm, LSE and more on aarch64)
UNICORN_CPU = {"arm": "cortex-a15", "aarch64": "cortex-a72"}


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_procself_guest(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    """/proc/self/exe, cmdline, maps, stat, auxv as qemu-user fakes them (both run with
    the CPU model pyqemu emulates, so AT_PLATFORM agrees)."""
    _, ours = assert_same_as_qemu(arch, guest("procself", arch, static=static),
                                  ("first", "second"), options=("-cpu", UNICORN_CPU[arch]))
    for line in ("cmdline[1]: first", "cmdline[2]: second", "cmdline has argc entries: 1",
                 "maps: program mapped=1 with an r-xp mapping=1 [stack]=1",
                 "stat pid field is getpid: 1", "auxv: AT_PAGESZ=4096 ends with AT_NULL=1",
                 "ok: auxv AT_ENTRY matches getauxval", "failures: 0"):
        assert line in ours.lines()


def _auxv_line(run) -> dict[str, str]:
    (line,) = [x for x in run.lines() if x.startswith("AT_HWCAP=")]
    return dict(f.split("=", 1) for f in line.split())


@pytest.mark.parametrize("arch", ARCHES)
def test_hwcaps_are_qemus_for_the_same_cpu(guest, run_guest, arch: str) -> None:
    """AT_HWCAP/AT_HWCAP2/AT_PLATFORM are what qemu reports for unicorn's CPU model,
    less what unicorn cannot execute (arm: thumbee, ENTERX is refused); /proc/cpuinfo
    names exactly those bits and the architecture."""
    from pyqemu.linux_user.procfs import AARCH64_FEATURES, ARM_FEATURES

    binary = guest("procself", arch, static=True)
    ref = _auxv_line(run_guest("qemu", arch, binary, ("hwcap",),
                               options=("-cpu", UNICORN_CPU[arch])))
    ours = _auxv_line(run_guest("pyqemu", arch, binary, ("hwcap",)))
    unexecutable = (1 << ARM_FEATURES.index("thumbee")) if arch == "arm" else 0
    assert int(ours["AT_HWCAP"], 16) == int(ref["AT_HWCAP"], 16) & ~unexecutable
    assert ours["AT_HWCAP2"] == ref["AT_HWCAP2"]
    assert ours["AT_PLATFORM"] == ref["AT_PLATFORM"]
    info = run_guest("pyqemu", arch, binary, ("cpuinfo",)).lines()
    names = ARM_FEATURES if arch == "arm" else AARCH64_FEATURES
    hwcap = int(ours["AT_HWCAP"], 16)
    want = " ".join(n for i, n in enumerate(names) if hwcap >> i & 1)
    assert f"cpuinfo: Features\t: {want}" in info
    assert f"cpuinfo: CPU architecture: {7 if arch == 'arm' else 8}" in info


def test_unicorn_cpus_lack_what_is_not_advertised() -> None:
    """The measurement behind the hwcaps: unicorn's default arm CPU refuses ARMv8
    AArch32 instructions (so no v8l), its default aarch64 CPU refuses LSE atomics (so
    no 'atomics'), while the crypto/crc32 instructions advertised run."""
    import struct

    from unicorn import UC_ARCH_ARM, UC_ARCH_ARM64, UC_MODE_ARM, Uc, UcError

    def runs(arch: int, insn: int) -> bool:
        uc = Uc(arch, UC_MODE_ARM)
        if arch == UC_ARCH_ARM:
            from unicorn import arm_const as c

            uc.reg_write(c.UC_ARM_REG_C1_C0_2, 0xF00000)
            uc.reg_write(c.UC_ARM_REG_FPEXC, 0x40000000)
            uc.reg_write(c.UC_ARM_REG_R1, 0x2000)
        else:
            from unicorn import arm64_const as c

            uc.reg_write(c.UC_ARM64_REG_X2, 0x2000)
        uc.mem_map(0x1000, 0x2000)
        uc.mem_write(0x1000, struct.pack("<I", insn))
        try:
            uc.emu_start(0x1000, 0x1004)
        except UcError:
            return False
        return True

    assert not runs(UC_ARCH_ARM, 0xE1910C9F)         # lda r0, [r1]
    assert not runs(UC_ARCH_ARM, 0xE1010042)         # crc32b r0, r1, r2
    assert runs(UC_ARCH_ARM, 0xE710F211)             # sdiv (idiva)
    assert not runs(UC_ARCH_ARM64, 0xB8200041)       # ldadd w0, w1, [x2]
    assert not runs(UC_ARCH_ARM64, 0x88A07C41)       # cas w0, w1, [x2]
    assert runs(UC_ARCH_ARM64, 0x1AC24020)           # crc32b
    assert runs(UC_ARCH_ARM64, 0x4E284820)           # aese


@pytest.mark.parametrize("arch", ARCHES)
def test_exec_script_with_guest_interpreter(guest, run_guest, tmp_path, arch: str) -> None:
    """A #! script whose interpreter is a guest program runs that program under pyqemu
    with the kernel's argv: interpreter, its argument, the script, the arguments."""
    binary = guest("proc", arch, static=True)
    script = tmp_path / "script"
    script.write_text(f"#!{binary} exec-child\nnot read by anyone\n")
    script.chmod(0o755)
    ours = run_guest("pyqemu", arch, binary, ("exec-guest", str(script)))
    lines = ours.lines()
    end = lines.index("exec of the script: exited=1 status=5")
    start = lines.index("exec child argc=4 argv0=" + str(binary))
    assert lines[start + 1:end] == ["exec child argv[1]=exec-child",
                                     f"exec child argv[2]={script}",
                                     "exec child argv[3]=two words",
                                     "exec child env: ONLY=this", "ok: waitpid"]
    assert lines[-1] == "failures: 0"
