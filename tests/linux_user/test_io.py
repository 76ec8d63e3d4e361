"""I/O multiplexing, files and terminals: pyqemu-arm/-aarch64 against qemu-arm/-aarch64.

The guests (tests/guests/linux/poll_io.c, files.c, tty.c) check their own results
line by line; each runs under both emulators, static and dynamic, and standard output
and exit status must be equal and hold the program's key lines (programs.py).
"""

from __future__ import annotations

import pytest

from tests.guests.programs import PROGRAMS

ARCHES = ["arm", "aarch64"]
LINKS = pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])


def _check(guest, assert_same_as_qemu, name: str, arch: str, static: bool, **kw) -> str:
    spec = PROGRAMS[name]
    _, ours = assert_same_as_qemu(arch, guest(name, arch, static=static), list(spec.args),
                                  **kw)
    lines = ours.lines()
    for want in spec.expected_stdout(arch):
        assert want in lines, f"{name}: missing {want!r}\n{ours.describe()}"
    assert ours.returncode == spec.exit
    return ours.stdout


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_poll_select_epoll_eventfd_fcntl(guest, assert_same_as_qemu, arch: str,
                                         static: bool, tmp_path) -> None:
    out = _check(guest, assert_same_as_qemu, "poll_io", arch, static, cwd=tmp_path)
    assert "FAIL" not in out


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_terminal_ioctls(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    out = _check(guest, assert_same_as_qemu, "tty", arch, static)
    assert "window size: 80x24" in out


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_files_and_directories(guest, assert_same_as_qemu, arch: str, static: bool,
                               tmp_path) -> None:
    out = _check(guest, assert_same_as_qemu, "files", arch, static, cwd=tmp_path)
    assert "failures: 0" in out


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_signalfd(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    out = _check(guest, assert_same_as_qemu, "signalfd", arch, static)
    assert "first: signo=12 code=-6 int=0; second: signo=10" in out


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_blocking_io_does_not_stall_other_threads(guest, assert_same_as_qemu, arch: str,
                                                  static: bool) -> None:
    # read, poll(-1), epoll_wait(-1), accept+recv and a signalfd poll block in five
    # threads; the main thread can only feed them if none of them holds the CPU
    out = _check(guest, assert_same_as_qemu, "io_threads", arch, static, timeout=60)
    assert "failures: 0" in out


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_signals_interrupt_blocking_io(guest, assert_same_as_qemu, arch: str,
                                       static: bool) -> None:
    # SIGALRM ends blocked read/poll/select/epoll_wait/accept/recv/ppoll with EINTR, or
    # restarts read and recv under SA_RESTART, exactly as qemu-user (the host kernel) does
    out = _check(guest, assert_same_as_qemu, "io_eintr", arch, static, timeout=60)
    assert "handler calls: 9" in out
