"""Sockets: pyqemu-arm/-aarch64 against qemu-arm/-aarch64 on tests/guests/linux/sockets.c
(socketpair, SCM_RIGHTS through sendmsg/recvmsg with several iovecs, AF_UNIX paths,
AF_INET/AF_INET6 TCP and UDP on loopback with addresses and options checked), static
and dynamic."""

from __future__ import annotations

import pytest

from tests.guests.programs import PROGRAMS

ARCHES = ["arm", "aarch64"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_sockets(guest, assert_same_as_qemu, arch: str, static: bool, tmp_path) -> None:
    spec = PROGRAMS["sockets"]
    _, ours = assert_same_as_qemu(arch, guest("sockets", arch, static=static), cwd=tmp_path)
    lines = ours.lines()
    for want in spec.expected_stdout(arch):
        assert want in lines, f"missing {want!r}\n{ours.describe()}"
    assert ours.returncode == 0 and "FAIL" not in ours.stdout
