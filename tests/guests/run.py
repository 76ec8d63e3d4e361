"""Run guest programs under qemu-user and under pyqemu, and compare the two.

``run_guest("qemu", "arm", binary)`` runs ``qemu-arm binary``;
``run_guest("pyqemu", "arm", binary)`` runs ``pyqemu-arm binary``. Dynamic
binaries get ``-L <cross sysroot>``; whether a binary is dynamic is read from
its ELF program headers (PT_INTERP) unless ``static=`` says so.

The guest's environment is small and explicit (GUEST_ENV unless ``env=`` is
given), so both emulators hand the guest the same one and output is
deterministic. tests/linux_user/conftest.py wraps these as fixtures.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.guests.build import sysroot

# What the guest sees as its environment under both tools (qemu-user and pyqemu
# pass their own environment through unchanged). PYTHONDONTWRITEBYTECODE keeps
# pyqemu from writing bytecode; it is given to qemu's guest too so both match.
GUEST_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LC_ALL": "C",
    "PYTHONDONTWRITEBYTECODE": "1",
}

TOOLS = ("qemu", "pyqemu")


class HarnessError(Exception):
    """The harness itself cannot do what was asked (missing tool, bad name)."""


@dataclass
class GuestRun:
    """One run of a guest program under one tool."""

    tool: str
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        """Standard output split into lines."""
        return self.stdout.splitlines()

    def describe(self) -> str:
        """A readable account of the run, for assertion messages."""
        return (
            f"$ {' '.join(self.cmd)}\n[exit {self.returncode}]\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def tool_path(tool: str, arch: str) -> str:
    """Path of qemu-<arch> or pyqemu-<arch>; HarnessError when it is not installed.

    ``$PYQEMU_USER_DIR``, when set, is the directory pyqemu-<arch> is taken from
    (e.g. wrappers running another checkout); it is not passed to the guest.
    """
    if tool not in TOOLS:
        raise HarnessError(f"unknown tool {tool!r} (known: {', '.join(TOOLS)})")
    name = f"{tool}-{arch}"
    found = None
    if tool == "pyqemu":
        # $PYQEMU_USER_DIR names another build to test; else prefer the one next
        # to the running interpreter (a venv), then PATH
        override = os.environ.get("PYQEMU_USER_DIR")
        if override:
            found = shutil.which(name, path=override)
            if found is None:
                raise HarnessError(f"{name} is not in $PYQEMU_USER_DIR ({override})")
            return found
        found = shutil.which(name, path=str(Path(sys.executable).parent))
    found = found or shutil.which(name)
    if found is None:
        raise HarnessError(f"{name} is not installed")
    return found


def is_dynamic(binary: str | os.PathLike[str]) -> bool:
    """Whether the ELF file has a PT_INTERP program header (needs the dynamic loader)."""
    with open(binary, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise HarnessError(f"{binary} is not an ELF file")
        bits64 = ident[4] == 2
        order = "<" if ident[5] == 1 else ">"
        if bits64:
            (phoff,) = struct.unpack_from(order + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
        else:
            (phoff,) = struct.unpack_from(order + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def run_guest(
    tool: str,
    arch: str,
    binary: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | bytes | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
    static: bool | None = None,
    options: Sequence[str] = (),
) -> GuestRun:
    """Run ``binary args...`` under ``tool`` ("qemu" or "pyqemu") for ``arch``.

    ``options`` go before the program (e.g. ``("-strace",)``); ``-L sysroot`` is
    added for dynamic binaries. ``stdin`` is fed to the guest (none: /dev/null).
    Output is decoded as UTF-8 with surrogate escapes, so any bytes survive.
    """
    if static is None:
        static = not is_dynamic(binary)
    cmd = [tool_path(tool, arch), *options]
    if not static:
        cmd += ["-L", sysroot(arch)]
    cmd += [str(binary), *args]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        cmd,
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env=dict(GUEST_ENV if env is None else env),
        timeout=timeout,
        cwd=cwd,
    )
    return GuestRun(
        tool=tool,
        cmd=cmd,
        returncode=proc.returncode,
        stdout=proc.stdout.decode("utf-8", "surrogateescape"),
        stderr=proc.stderr.decode("utf-8", "surrogateescape"),
    )


def assert_same_as_qemu(
    arch: str,
    binary: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    compare_stderr: bool = False,
    env: Mapping[str, str] | None = None,
    stdin: str | bytes | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
    static: bool | None = None,
    options: Sequence[str] = (),
) -> tuple[GuestRun, GuestRun]:
    """Run the guest under qemu-<arch> then pyqemu-<arch>; assert equal stdout and exit status.

    With ``compare_stderr`` standard error must match too. Returns (qemu run,
    pyqemu run) for further assertions.
    """
    kw = dict(env=env, stdin=stdin, timeout=timeout, cwd=cwd, static=static, options=options)
    ref = run_guest("qemu", arch, binary, args, **kw)  # type: ignore[arg-type]
    ours = run_guest("pyqemu", arch, binary, args, **kw)  # type: ignore[arg-type]
    context = f"\n=== qemu ===\n{ref.describe()}\n=== pyqemu ===\n{ours.describe()}"
    assert ours.stdout == ref.stdout, "standard output differs" + context
    assert ours.returncode == ref.returncode, "exit status differs" + context
    if compare_stderr:
        assert ours.stderr == ref.stderr, "standard error differs" + context
    return ref, ours
