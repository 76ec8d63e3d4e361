"""Host signals sent from outside to a waiting guest reach its handlers (SIGUSR1 in
sigsuspend, SIGINT through sigwaitinfo, SIGTERM to a two-thread process) and a
signal left at SIG_DFL kills it, under qemu-user and pyqemu alike.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from tests.guests.build import sysroot
from tests.guests.run import GUEST_ENV, is_dynamic, tool_path

ARCHES = ["arm", "aarch64"]
SEQUENCE = (("ready for SIGUSR1", signal.SIGUSR1), ("ready for SIGINT", signal.SIGINT),
            ("ready for SIGTERM", signal.SIGTERM), ("ready for the last SIGINT", signal.SIGINT))


def _drive(tool: str, arch: str, binary: str) -> tuple[list[str], int]:
    """Run the guest, send each signal when its line shows; (lines, return code)."""
    cmd = [tool_path(tool, arch)]
    if is_dynamic(binary):
        cmd += ["-L", sysroot(arch)]
    cmd.append(binary)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(GUEST_ENV), text=True)
    lines: list[str] = []
    guard = threading.Timer(120, proc.kill)        # a hung guest fails, never hangs
    guard.start()
    try:
        steps = iter(SEQUENCE)
        want, sig = next(steps)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(want):
                os.kill(proc.pid, sig)
                want, sig = next(steps, ("\0", 0))
        proc.wait(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return lines, proc.returncode


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_signals_from_outside(guest, arch: str, static: bool) -> None:
    binary = str(guest("sig_external", arch, static=static))
    ref = _drive("qemu", arch, binary)
    ours = _drive("pyqemu", arch, binary)
    assert ours == ref
    assert ours[1] == -signal.SIGINT
    assert "SIGUSR1: count=1 SI_USER=1 from-parent=1" in ours[0]
    assert "SIGTERM: count=1" in ours[0]
