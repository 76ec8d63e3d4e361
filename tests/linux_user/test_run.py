"""pyqemu-arm / pyqemu-aarch64 run real cross-compiled programs as qemu-user does.

Every test runs the same binary under qemu-<arch> and pyqemu-<arch> (F's harness,
tests/guests/run.py) and compares standard output and exit status, standard error
too where qemu's own words are involved.
"""

from __future__ import annotations

import pytest

ARCHES = ["arm", "aarch64"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_hello(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("hello", arch, static=static), ["a b", "c"])
    assert ours.stdout.strip()


@pytest.mark.parametrize("arch", ARCHES)
def test_argv_env_and_exit_status(guest, assert_same_as_qemu, arch: str) -> None:
    _, ours = assert_same_as_qemu(arch, guest("args_env", arch), ["one", "", "three four"],
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "GUEST_X": "=y="})
    assert "failures: 0" in ours.stdout


@pytest.mark.parametrize("arch", ARCHES)
def test_file_io(guest, assert_same_as_qemu, arch: str, tmp_path) -> None:
    _, ours = assert_same_as_qemu(arch, guest("files", arch), cwd=tmp_path)
    assert "failures: 0" in ours.stdout and ours.returncode == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_malloc_heavy(guest, assert_same_as_qemu, arch: str) -> None:
    _, ours = assert_same_as_qemu(arch, guest("bench_malloc", arch), ["6000"])
    assert ours.stdout.startswith("checksum ")


@pytest.mark.parametrize("arch", ARCHES)
def test_cpu_bound_result(guest, assert_same_as_qemu, arch: str) -> None:
    _, ours = assert_same_as_qemu(arch, guest("bench_cpu", arch, static=True), ["3"])
    assert len(ours.stdout.strip()) == 64


@pytest.mark.parametrize("arch", ARCHES)
def test_uncaught_segv_reported_and_fatal(guest, assert_same_as_qemu, arch: str) -> None:
    ref, ours = assert_same_as_qemu(arch, guest("segv_die", arch), compare_stderr=True)
    assert ours.returncode == -11
    assert "qemu: uncaught target signal 11 (Segmentation fault) - core dumped" in ours.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_unknown_syscall_enosys_and_unimp_log(guest, assert_same_as_qemu, arch: str) -> None:
    _, ours = assert_same_as_qemu(arch, guest("bench_syscall", arch), ["2", "3999"],
                                  options=["-d", "unimp"], compare_stderr=True)
    assert ours.stdout == "calls=2 ret=-1 errno=38\n"
    assert ours.stderr.count("Unsupported syscall: 3999\n") == 2
