"""Signals under pyqemu-arm / pyqemu-aarch64 (issue 6, phase 2): guest handlers run
on the real ARM / AArch64 rt signal frames, CPU faults become SIGSEGV / SIGBUS /
SIGILL / SIGTRAP with si_addr and si_code, and an unhandled fault still ends the
process with qemu's line. Each guest is compared with qemu-user, static and dynamic.
"""

from __future__ import annotations

import pytest

ARCHES = ["arm", "aarch64"]
LINKS = pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_segv_recover(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("segv_recover", arch, static=static))
    assert "read unmapped page 3: SIGSEGV SEGV_MAPERR at base+12320" in ours.stdout
    assert "loop of 100 faults, each at its own address: 100" in ours.stdout


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_segv_die(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("segv_die", arch, static=static),
                                  compare_stderr=True)
    assert ours.returncode == -11


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_fpe_ill_bus_trap(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    _, ours = assert_same_as_qemu(arch, guest("fpe_ill", arch, static=static))
    assert "unaligned exclusive load: SIGBUS BUS_ADRALN" in ours.stdout
    assert "raise SIGTRAP: caught SIGTRAP" in ours.stdout
    assert ours.returncode == 0


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_signals_guest(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    """sigaction/raise/kill/sigqueue/tgkill, masks and pending, sigtimedwait, SIG_IGN,
    nested handlers, sigaltstack, setitimer/alarm SIGALRM, SIGCHLD from a forked child,
    a signal() handler, SIGPIPE on EPIPE."""
    _, ours = assert_same_as_qemu(arch, guest("signals", arch, static=static))
    assert "SA_ONSTACK handler ran: 1 on the alternate stack: 1" in ours.stdout
    assert "SIGCHLD: count=1 code=CLD_EXITED status=6" in ours.stdout
    # signal(): no SA_SIGINFO (arm: the non-rt frame and sigreturn)
    assert "plain handler: sig=12 x=78.00 y=85" in ours.stdout
    assert "after the signal() handler: ran=1 k=42 f=3.0 usr2-blocked=0" in ours.stdout
    # SIGPIPE on EPIPE: the handler runs, MSG_NOSIGNAL sends none, blocked stays pending,
    # SIG_DFL kills a child
    for line in ("SIGPIPE from write: count=1 code=SI_USER pid-ok=1",
                 "after send with MSG_NOSIGNAL: count=1", "after send: count=2",
                 "after write to the socket: count=3", "ok: SIGPIPE pending while blocked",
                 "child writing to a broken pipe: signaled=1 sig=13"):
        assert line in ours.lines()
    assert ours.returncode == 0



@LINKS
def test_arm_signal_without_siginfo(guest, run_guest, static: bool) -> None:
    """A handler installed with signal() (no SA_SIGINFO; compared with qemu in
    test_signals_guest) gets the non-rt frame on arm and returns through glibc's
    sigreturn (119) restorer, which restores registers, VFP state and mask."""
    run = run_guest("pyqemu", "arm", guest("signals", "arm", static=static),
                    options=("-strace",))
    assert "after the signal() handler: ran=1 k=42 f=3.0 usr2-blocked=0" in run.stdout
    returns = [x for x in run.stderr.splitlines() if " sigreturn(" in x]
    assert len(returns) >= 3 and all("errno=513" in x for x in returns), returns


@pytest.mark.parametrize("arch", ARCHES)
@LINKS
def test_sigpipe_default_action(guest, assert_same_as_qemu, arch: str, static: bool) -> None:
    """A write to a pipe without a reader, SIGPIPE at SIG_DFL: the process dies of
    SIGPIPE (no qemu line: not a core-dumping signal) before printing again."""
    _, ours = assert_same_as_qemu(arch, guest("signals", arch, static=static), ("sigpipe",),
                                  compare_stderr=True)
    assert ours.returncode == -13
    assert "still alive after the write" not in ours.stdout
