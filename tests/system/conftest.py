"""Fixtures for the system-emulator tests: both emulators, the x86 guests, VM runs.

Every end-to-end test runs the same command line under the real
qemu-system-x86_64 (the reference) and under pyqemu-system-x86_64, through the
``system_emulator`` fixture parametrised over both. A missing emulator is a
failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.guests.build_x86 import build_bootsector, build_mbkernel

QEMU_SYSTEM = "qemu-system-x86_64"
PYQEMU_SYSTEM = "pyqemu-system-x86_64"
EMULATORS = (QEMU_SYSTEM, PYQEMU_SYSTEM)

# Generous: pyqemu boots SeaBIOS in a CPU emulator driven from Python, on two
# shared cores. Only a hang reaches it; nothing is asserted about time.
VM_TIMEOUT = 90.0


def emulator_path(name: str) -> str:
    """The executable for ``name`` (ours from this interpreter's bin dir first)."""
    path = None
    if name == PYQEMU_SYSTEM:
        path = shutil.which(name, path=str(Path(sys.executable).parent))
    path = path or shutil.which(name)
    if path is None:
        pytest.fail(f"required system emulator '{name}' is not installed")
    return path


@pytest.fixture(params=EMULATORS)
def system_emulator(request: pytest.FixtureRequest) -> str:
    """Path of qemu-system-x86_64 or pyqemu-system-x86_64 (one test run for each)."""
    return emulator_path(request.param)


@pytest.fixture(scope="session")
def qemu_system() -> str:
    """Path of the real qemu-system-x86_64 (the reference output)."""
    return emulator_path(QEMU_SYSTEM)


@pytest.fixture(scope="session")
def bootsector() -> Path:
    """The boot sector built from tests/guests/x86/bootsect.asm."""
    return build_bootsector()


@pytest.fixture(scope="session")
def mbkernel() -> Path:
    """The Multiboot kernel built from tests/guests/x86/mbkernel/."""
    return build_mbkernel()


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a, the hash the boot sector prints for its second sector."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


@pytest.fixture(scope="session")
def boot_disk(tmp_path_factory: pytest.TempPathFactory, bootsector: Path) -> Path:
    """A 1 MiB raw disk: the boot sector, then a random second sector."""
    path = tmp_path_factory.mktemp("bootdisk") / "boot.raw"
    data = bootsector.read_bytes() + os.urandom(512)
    path.write_bytes(data + bytes(1024 * 1024 - len(data)))
    return path


def run_vm(
    cmd: list[str], *, timeout: float = VM_TIMEOUT, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run an emulator to its exit; stdin is /dev/null; fail (with its output) on a hang."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd)} did not exit within {timeout:.0f}s\n"
            f"stdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class RunningVM:
    """An emulator process in the background, stopped for sure at the end."""

    def __init__(self, cmd: list[str], **kw: Any) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
        )

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = VM_TIMEOUT) -> None:
        """Poll ``check`` until true; fail if the process exits or the wait hangs."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                self.fail(f"exited with status {self.proc.returncode} before {what}")
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {timeout:.0f}s")
            time.sleep(0.05)

    def fail(self, message: str) -> None:
        self.stop()
        out, err = self.proc.communicate()
        pytest.fail(
            f"{' '.join(self.cmd)}: {message}\nstdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}"
        )

    def wait(self, timeout: float = VM_TIMEOUT) -> tuple[int, bytes, bytes]:
        """Wait for the exit; returns (status, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"did not exit within {timeout:.0f}s")
        return self.proc.returncode, out, err

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def vm_runner() -> Any:
    """Start emulators in the background: ``vm_runner(cmd)``; all killed at teardown."""
    vms: list[RunningVM] = []

    def start(cmd: list[str], **kw: Any) -> RunningVM:
        vm = RunningVM(cmd, **kw)
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.stop()
        for f in (vm.proc.stdout, vm.proc.stderr):
            if f:
                f.close()


async def qmp_connect(sock: Path, vm: RunningVM, timeout: float = VM_TIMEOUT) -> Any:
    """A connected qemu.qmp QMPClient for ``-qmp unix:SOCK,server=on,wait=off``."""
    from qemu.qmp import QMPClient

    deadline = time.monotonic() + timeout
    while not sock.exists():
        if vm.proc.poll() is not None:
            vm.fail("exited before creating the QMP socket")
        if time.monotonic() > deadline:
            vm.fail(f"no QMP socket {sock} within {timeout:.0f}s")
        await asyncio.sleep(0.05)
    client = QMPClient("test")
    await client.connect(str(sock))
    return client


async def qmp_wait_status(
    client: Any, vm: RunningVM, status: str, timeout: float = VM_TIMEOUT
) -> dict:
    """Poll query-status until the run state is ``status``; returns the reply."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.execute("query-status")
        if reply["status"] == status:
            return reply
        if time.monotonic() > deadline:
            vm.fail(f"status stayed {reply['status']!r}, never {status!r}")
        await asyncio.sleep(0.1)


async def qmp_disconnect(client: Any) -> None:
    """Disconnect; the server closing first (after quit) is expected, not an error."""
    with contextlib.suppress(EOFError, ConnectionResetError, BrokenPipeError):
        await client.disconnect()


class MonitorPeer:
    """An emulator started -S with its monitor (``option``: -monitor or -qmp) on a unix
    socket, connected to; ``close`` kills it."""

    def __init__(self, exe: str, option: str, sock_path: Path,
                 extra: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [exe, "-S", "-display", "none", "-nodefaults", option,
             f"unix:{sock_path},server=on,wait=off", *(extra or [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(sock_path))
                break
            except OSError:
                self.sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    assert self.proc.stderr is not None
                    raise AssertionError(f"{exe} {option} did not start: "
                                         f"{self.proc.stderr.read()!r}") from None
                time.sleep(0.05)
        self.sock.settimeout(60)

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()


def edge_recorder(clock: Any) -> tuple[Any, list[int]]:
    """An IrqLine that records the virtual time (ns) of each rising edge, and the list."""
    from pyqemu.system.bus import IrqLine

    rises: list[int] = []
    state = {"level": False}

    def line(level: bool) -> None:
        if level and not state["level"]:
            rises.append(clock.now_ns())
        state["level"] = level

    return IrqLine(line), rises
