"""The Go guest (tests/guests/go/goroutines: goroutines, channels, a mutex, timers, a
ticker, a WaitGroup and a TCP echo server on loopback) under pyqemu-arm and
pyqemu-aarch64 prints what it prints under qemu-arm/qemu-aarch64.

Go needs clone threads, futex, rt_sigaction/sigaltstack for every signal, tgkill'd
SIGURG for preemption, epoll with non-blocking sockets, sched_getaffinity, mmap
reservations, and on arm the YIELD hint its spin loops use.

arm runs with GODEBUG=asyncpreemptoff=1 (under both emulators): with asynchronous
preemption on (SIGURG delivered at the watchdog's stops) about one run in eight still
dies with a corrupted runtime state (reported to the signal family).
"""

from __future__ import annotations

import pytest

from tests.guests.run import GUEST_ENV


@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_go_goroutines(go_guest, assert_same_as_qemu, arch: str) -> None:
    env = {**GUEST_ENV, "GODEBUG": "asyncpreemptoff=1"} if arch == "arm" else None
    _, ours = assert_same_as_qemu(arch, go_guest("goroutines", arch), env=env)
    for line in ("sum of squares 1..1000: 333833500", "mutex counter: 160000",
                 "timers fired in order: 10ms 30ms", "echo: client 2 line 2", "done"):
        assert line in ours.lines()
    assert ours.returncode == 0
