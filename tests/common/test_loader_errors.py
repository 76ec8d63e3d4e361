"""Programs that cannot be loaded: pyqemu-arm/-aarch64 say what qemu-arm/-aarch64 7.2 say.

qemu-user prints "Error while loading <path>: <strerror>" with printf() on stdout and
then _exit()s, so the line only shows when stdout is a terminal: these runs give both
tools a pty for stdout. The other errors are "<prog>: ..." on stderr, exit 255, where
<prog> is the binary's name (qemu-arm / pyqemu-arm).
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.guests.run import tool_path

TRIPLET = {"arm": "arm-linux-gnueabihf", "aarch64": "aarch64-linux-gnu"}
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def run_tty(cmd: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run with stdout on a pty; (exit status, stdout, stderr)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=ENV, cwd=cwd)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:           # EIO: the child side is closed
            break
        if not chunk:
            break
        out += chunk
    err = proc.stderr.read() if proc.stderr else b""
    status = proc.wait(timeout=60)
    os.close(master)
    return status, out.decode().replace("\r\n", "\n"), err.decode()


def both(arch: str, args: list[str], cwd: Path) -> tuple[tuple, tuple]:
    ref = run_tty([tool_path("qemu", arch), *args], cwd)
    ours = run_tty([tool_path("pyqemu", arch), *args], cwd)
    return ref, ours


def same(arch: str, args: list[str], cwd: Path) -> tuple[int, str, str]:
    ref, ours = both(arch, args, cwd)
    normalized = (ours[0], ours[1], ours[2].replace(f"pyqemu-{arch}:", f"qemu-{arch}:"))
    assert normalized == ref, f"qemu: {ref!r}\npyqemu: {ours!r}"
    return ref


def _compile(tmp: Path, arch: str, name: str, flags: list[str]) -> Path:
    src = tmp / "prog.c"
    if not src.exists():
        src.write_text("int main(void) { return 7; }\n")
    out = tmp / name
    subprocess.run([f"{TRIPLET[arch]}-gcc", "-O2", *flags, "-o", str(out), str(src)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loaderr")
    arm_static = _compile(tmp, "arm", "arm_static", ["-static"])
    _compile(tmp, "aarch64", "a64_static", ["-static"])
    arm_dyn = _compile(tmp, "arm", "arm_dyn", ["-pie", "-fPIE"])
    _compile(tmp, "arm", "arm_obj.o", ["-c"])
    os.chmod(tmp / "arm_obj.o", 0o755)
    (tmp / "dir").mkdir()
    (tmp / "noexec").write_bytes(arm_static.read_bytes())
    os.chmod(tmp / "noexec", 0o644)
    for name, data in (("text", b"#!/bin/sh\necho hello\n"), ("empty", b""),
                       ("short", arm_static.read_bytes()[:51]),
                       ("header_only", arm_static.read_bytes()[:52])):
        (tmp / name).write_bytes(data)
        os.chmod(tmp / name, 0o755)
    # a wrong e_phentsize
    data = bytearray(arm_static.read_bytes())
    data[42:44] = struct.pack("<H", 40)
    _write(tmp / "bad_phentsize", data)
    # PT_INTERP twice, and a PT_INTERP that is not NUL-terminated
    dyn = arm_dyn.read_bytes()
    phoff, = struct.unpack_from("<I", dyn, 28)
    phnum, = struct.unpack_from("<H", dyn, 44)
    types = [struct.unpack_from("<I", dyn, phoff + 32 * i)[0] for i in range(phnum)]
    interp = types.index(3)
    note = types.index(4)
    twice = bytearray(dyn)
    twice[phoff + 32 * note:phoff + 32 * note + 32] = dyn[phoff + 32 * interp:phoff + 32 * interp + 32]
    _write(tmp / "two_interp", twice)
    unterminated = bytearray(dyn)
    filesz_at = phoff + 32 * interp + 16
    filesz, = struct.unpack_from("<I", dyn, filesz_at)
    struct.pack_into("<I", unterminated, filesz_at, filesz - 1)
    _write(tmp / "bad_interp", unterminated)
    return tmp


def _write(path: Path, data: bytes | bytearray) -> None:
    path.write_bytes(bytes(data))
    os.chmod(path, 0o755)


@pytest.mark.parametrize("name,message", [
    ("missing", "No such file or directory"),
    ("dir", "Permission denied"),
    ("noexec", "Permission denied"),
    ("text", "Exec format error"),
    ("empty", "Exec format error"),
    ("short", "Exec format error"),
])
def test_error_while_loading(files: Path, name: str, message: str) -> None:
    status, out, err = same("arm", [f"./{name}"], files)
    assert (status, out, err) == (1, f"Error while loading ./{name}: {message}\n", "")


@pytest.mark.parametrize("arch,name,message", [
    ("arm", "a64_static", "Invalid ELF image for this architecture"),
    ("aarch64", "arm_static", "Invalid ELF image for this architecture"),
    ("arm", "/bin/true", "Invalid ELF image for this architecture"),
    ("arm", "arm_obj.o", "Invalid ELF image for this architecture"),
    ("arm", "bad_phentsize", "Invalid ELF image for this architecture"),
    ("arm", "header_only", "Error mapping file: Invalid argument"),
    ("arm", "two_interp", "Multiple PT_INTERP entries"),
    ("arm", "bad_interp", "Invalid PT_INTERP entry"),
])
def test_error_report(files: Path, arch: str, name: str, message: str) -> None:
    prog = name if name.startswith("/") else f"./{name}"
    status, out, err = same(arch, [prog], files)
    assert (status, out, err) == (255, "", f"qemu-{arch}: {prog}: {message}\n")


def test_missing_interpreter(files: Path, tmp_path: Path) -> None:
    # no -L at a sysroot: qemu looks under its default prefix, then at the plain path
    status, out, err = same("arm", ["./arm_dyn"], files)
    assert (status, out) == (255, "")
    assert err == "qemu-arm: Could not open '/lib/ld-linux-armhf.so.3': No such file or directory\n"
    # a -L prefix without the interpreter falls back to the plain path too
    same("arm", ["-L", str(tmp_path), "./arm_dyn"], files)
    # with the sysroot it runs
    status, out, err = same("arm", ["-L", "/usr/arm-linux-gnueabihf", "./arm_dyn"], files)
    assert (status, out, err) == (7, "", "")
