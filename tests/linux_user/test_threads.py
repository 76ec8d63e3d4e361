"""Guest threads under pyqemu-arm / pyqemu-aarch64 (issue 6, phase 2).

One unicorn engine per guest thread, a process-wide execution lock and a time-slicing
watchdog: the 8-thread guest (mutex- and atomic-protected counters under contention,
condition variables, TLS, a barrier, pthread_once, a detached thread) must print
exactly what it prints under qemu-user, static and dynamic, on both architectures.
"""

from __future__ import annotations

import pytest

ARCHES = ["arm", "aarch64"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_pthreads_guest(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("threads", arch, static=static))
    assert "mutex counter: 160000" in ours.stdout
    assert "atomic counter: 160000" in ours.stdout
    assert "cmpxchg counter: 160000" in ours.stdout
    assert "thread ids distinct and not the pid: 1" in ours.stdout
    assert ours.returncode == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_time_slicing_without_syscalls(guest, assert_same_as_qemu, arch: str) -> None:
    """Threads that never enter the kernel (spin barriers, ldrex/strex or ldxr/stxr
    adds) all make progress: asked in vain to yield at a syscall, the running thread
    is stopped by the watchdog (emu_stop) and the lock handed over."""
    _, ours = assert_same_as_qemu(arch, guest("threads_spin", arch, static=True))
    assert "counter: 400000" in ours.stdout
