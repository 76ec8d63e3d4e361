"""Host signals sent from outside to a waiting guest reach its handlers (SIGUSR1 in
sigsuspend, SIGINT through sigwaitinfo, SIGTERM to a two-thread process) and a
signal left at SIG_DFL kills it, under qemu-user and pyqemu alike.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

import pytest

from tests.guests.build import sysroot
from tests.guests.run import GUEST_ENV, is_dynamic, tool_path

ARCHES = ["arm", "aarch64"]
SEQUENCE = (("ready for SIGUSR1", signal.SIGUSR1), ("ready for SIGINT", signal.SIGINT),
            ("ready for SIGTERM", signal.SIGTERM), ("ready for the last SIGINT", signal.SIGINT))


#: the whole run of one tool, after which it fails instead of hanging
DEADLINE = 120


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drive(tool: str, arch: str, binary: str) -> tuple[list[str], int]:
    """Run the guest, send each signal when its line shows; (lines, return code).

    Never blocks without a deadline: the tool runs in its own process group (so a
    descendant holding the pipes dies with it), its output is read through select()
    with a timeout, and past DEADLINE the whole group is killed and the pipes closed.
    """
    cmd = [tool_path(tool, arch)]
    if is_dynamic(binary):
        cmd += ["-L", sysroot(arch)]
    cmd.append(binary)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(GUEST_ENV),
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + DEADLINE
    lines: list[str] = []
    pending = b""
    steps = iter(SEQUENCE)
    want, sig = next(steps)
    open_fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    del open_fds[fd]
                elif open_fds[fd] == "out":
                    pending += data
                    while b"\n" in pending:
                        raw, pending = pending.split(b"\n", 1)
                        line = raw.decode(errors="replace")
                        lines.append(line)
                        if line.startswith(want):
                            os.kill(proc.pid, sig)
                            want, sig = next(steps, ("\0", 0))
        if pending:
            lines.append(pending.decode(errors="replace"))
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            _killpg(proc)
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
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
