"""pyqemu-arm / pyqemu-aarch64 start-up (linux_user/main.py) against qemu-arm/-aarch64 7.2.

What happens between the command line and the guest's first instruction: the -D log
file opened first (its error before the program's), the stack of -s/QEMU_STACK_SIZE
mapped where qemu maps it (arm: at 0x40000000 for a fixed-address program) with its
guard page (a deep recursion dies of SIGSEGV), and every way a bad program, -L or
argument list can fail giving qemu's own line and status, never "internal error".
The guest ``stack`` prints where its stack lies (to 16 MiB) and recurses N KiB deep.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tests.guests.run import GuestRun

SYSROOT = {"arm": "/usr/arm-linux-gnueabihf", "aarch64": "/usr/aarch64-linux-gnu"}


def same(ref: GuestRun, ours: GuestRun, arch: str) -> None:
    """Equal status, stdout and stderr, qemu-<arch> read as pyqemu-<arch>."""
    context = f"\n=== qemu ===\n{ref.describe()}\n=== pyqemu ===\n{ours.describe()}"
    name = f"qemu-{arch}:"
    assert ours.returncode == ref.returncode, "exit status differs" + context
    assert ours.stdout == ref.stdout, "standard output differs" + context
    assert ours.stderr == ref.stderr.replace(name, "py" + name), "stderr differs" + context
    assert "internal error" not in ours.stderr


def both(run_guest, arch: str, binary: object, args: tuple[str, ...] = (), **kw: object
         ) -> tuple[GuestRun, GuestRun]:
    ref = run_guest("qemu", arch, binary, args, **kw)
    ours = run_guest("pyqemu", arch, binary, args, **kw)
    same(ref, ours, arch)
    return ref, ours


# ---- -D and the order of qemu's start-up checks -------------------------------------

@pytest.mark.parametrize(("options", "program"), [
    (("-D", "/nonexistent/x"), "hello"),
    (("-D", "/nonexistent/x"), None),                       # before the missing program
    (("-D", "/nonexistent/x", "-cpu", "nosuchcpu"), "hello"),  # before -cpu
    (("-D", "/nonexistent/x", "-seed", "x1"), "hello"),     # before -seed
    (("-cpu", "nosuchcpu"), None),                          # the program before -cpu
    (("-seed", "x1"), None),
    (("-cpu", "nosuchcpu", "-seed", "x1"), "hello"),        # -cpu before -seed
])
def test_log_file_and_check_order(run_guest, guest, tmp_path: Path,
                                  options: tuple[str, ...], program: str | None) -> None:
    binary = guest("hello", "arm", static=True) if program else tmp_path / "missing"
    ref, _ = both(run_guest, "arm", binary, static=True, options=options)
    assert ref.returncode == 1


def test_log_file_made_before_the_program_fails(run_guest, tmp_path: Path) -> None:
    runs = {}
    for tool in ("qemu", "pyqemu"):
        log = tmp_path / f"{tool}.log"
        runs[tool] = run_guest(tool, "arm", tmp_path / "missing", static=True,
                               options=("-D", str(log)))
        runs[tool + "-log"] = log.exists()
    same(runs["qemu"], runs["pyqemu"], "arm")
    assert runs["qemu-log"] is True and runs["pyqemu-log"] is True


# ---- the stack: size, placement, guard -----------------------------------------------

@pytest.mark.parametrize(("arch", "static", "pie"), [
    ("arm", True, None),      # fixed address (Debian's -static is ET_EXEC)
    ("arm", False, False),    # fixed address, dynamic: ld.so below the stack
    ("arm", False, None),     # PIE at 0x40000000: the stack below it
    ("aarch64", True, None),
    ("aarch64", False, None),
])
def test_stack_placement(run_guest, guest, arch: str, static: bool, pie: bool | None) -> None:
    binary = guest("stack", arch, static=static, pie=pie)
    ref, ours = both(run_guest, arch, binary)
    assert ref.returncode == 0 and ref.lines()[0].startswith("stack: 0x")
    if arch == "arm" and static:
        assert ours.lines()[0] == "stack: 0x40"     # 0x40001000-0x40801000 as qemu


@pytest.mark.parametrize(("arch", "options", "env", "kib"), [
    ("arm", ("-s", "1"), {}, 100),          # 1 byte: qemu's 32-page minimum
    ("arm", ("-s", "1"), {}, 200),          # ... which a 200 KiB recursion overflows
    ("arm", ("-s", "64k"), {}, 200),
    ("arm", (), {"QEMU_STACK_SIZE": "1"}, 200),
    ("arm", ("-s", "1M"), {}, 900),
    ("arm", ("-s", "4096M"), {}, 200),      # abi_ulong: 4 GiB is 0, the minimum
    ("arm", ("-s", "3000M"), {}, 1000),     # most of the 32-bit space
    ("arm", (), {}, 7000),                  # the default 8 MiB
    ("aarch64", ("-s", "1"), {}, 200),
    ("aarch64", ("-s", "4000M"), {}, 1000),
])
def test_stack_size(run_guest, guest, arch: str, options: tuple[str, ...],
                    env: dict[str, str], kib: int) -> None:
    binary = guest("stack", arch, static=True)
    environ = {"LC_ALL": "C", **env}
    ref, _ = both(run_guest, arch, binary, (str(kib),), options=options, env=environ)
    if ref.returncode == 0:
        assert ref.lines()[-1] == f"recursed {kib} KiB"
    else:
        assert ref.returncode == -11 and "uncaught target signal 11" in ref.stderr


def test_stack_size_wrapping_to_zero(run_guest, guest) -> None:
    # 4 GiB less a page: with the guard page the mapping's length is 0 in 32 bits
    binary = guest("stack", "arm", static=True)
    ref, _ = both(run_guest, "arm", binary, options=("-s", "4294963200"))
    assert ref.stderr == "mmap stack: Invalid argument\n" and ref.returncode == 255


def test_stack_size_exact_top(run_guest, guest) -> None:
    # qemu does not round -s: the stack's top is stack_limit + size, inside a page;
    # the guest's initial sp (qemu's -d page start_stack) shows it
    binary = guest("hello", "arm", static=True)
    runs = [run_guest(tool, "arm", binary, options=("-s", "200000", "-d", "page"))
            for tool in ("qemu", "pyqemu")]
    tops = [[line for line in r.stderr.splitlines() if line.startswith(("start_stack",
                                                                         "argv_start"))]
            for r in runs]
    assert tops[0] == tops[1] and len(tops[0]) == 2, tops


def test_stack_too_large_for_pyqemu(run_guest, guest) -> None:
    # qemu-arm maps a 4000 MiB stack at the top of the address space; pyqemu's guest
    # RAM for arm is 3 GiB, so it says what qemu says when the mapping fails
    binary = guest("stack", "arm", static=True)
    ref = run_guest("qemu", "arm", binary, options=("-s", "4000M"))
    ours = run_guest("pyqemu", "arm", binary, options=("-s", "4000M"))
    assert ref.returncode == 0 and ref.lines()[0] == "stack: 0xff"   # the top of the space
    assert (ours.returncode, ours.stdout, ours.stderr) == \
        (255, "", "mmap stack: Cannot allocate memory\n")


@pytest.mark.parametrize(("arch", "stack", "sizes"), [
    ("arm", "1", (60000, 60000)),               # fits the 128 KiB minimum
    ("arm", "1", (70000, 70000)),               # does not
    ("arm", "200k", (70000, 70000, 70000)),
    ("aarch64", "1", (70000, 70000)),
])
def test_argument_list_too_long(run_guest, guest, arch: str, stack: str,
                                sizes: tuple[int, ...]) -> None:
    binary = guest("hello", arch, static=True)
    args = tuple("a" * n for n in sizes)
    ref, _ = both(run_guest, arch, binary, args, options=("-s", stack))
    if ref.returncode:
        assert ref.stderr == f"{binary}: Argument list too long\n" and ref.returncode == 255


def test_environment_too_long(run_guest, guest) -> None:
    binary = guest("hello", "arm", static=True)
    env = {"LC_ALL": "C", "BIG1": "b" * 70000, "BIG2": "b" * 70000}
    ref, _ = both(run_guest, "arm", binary, options=("-s", "1"), env=env)
    assert ref.returncode == 255


# ---- programs that cannot be loaded ---------------------------------------------------

def _no_pt_load(path: Path) -> Path:
    header = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
        "<HHIIIIIHHHHHH", 2, 40, 1, 0x10000, 52, 0, 0x5000400, 52, 32, 1, 40, 0, 0)
    note = struct.pack("<IIIIIIII", 4, 0, 0, 0, 0, 0, 4, 4)
    path.write_bytes(header + note)
    path.chmod(0o755)
    return path


def _bad_programs(tmp_path: Path, hello: Path) -> dict[str, Path]:
    no_exec = tmp_path / "no_exec"
    no_exec.write_bytes(hello.read_bytes())
    no_exec.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    empty.chmod(0o755)
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    cut = {}
    for size in (40, 60):       # in the ELF header; in the program headers
        cut[size] = tmp_path / f"cut{size}"
        cut[size].write_bytes(hello.read_bytes()[:size])
        cut[size].chmod(0o755)
    return {
        "no_exec": no_exec, "directory": tmp_path, "empty": empty, "script": script,
        "cut_in_header": cut[40], "cut_in_phdrs": cut[60], "no_pt_load": _no_pt_load(tmp_path / "no_load"),
        "missing": tmp_path / "missing", "not_a_dir": hello / "x",
        "long_path": Path("/x" * 3000),     # ENAMETOOLONG: qemu's stdout shows 4096 bytes
    }


@pytest.mark.parametrize("case", ["no_exec", "directory", "empty", "script", "cut_in_header",
                                  "cut_in_phdrs", "no_pt_load", "missing", "not_a_dir",
                                  "long_path"])
def test_bad_program(run_guest, guest, tmp_path: Path, case: str) -> None:
    binary = _bad_programs(tmp_path, guest("hello", "arm", static=True))[case]
    ref, _ = both(run_guest, "arm", binary, static=True)
    assert ref.returncode in (1, 255)


@pytest.mark.parametrize("prefix", ["/nonexistent/" + "x" * 300, "/x" * 3000, "/dev/null",
                                    "/etc/passwd", "", "relative/dir"])
def test_absurd_ld_prefix(run_guest, guest, prefix: str) -> None:
    binary = guest("hello", "arm")
    ref, _ = both(run_guest, "arm", binary, static=True, options=("-L", prefix))
    assert ref.returncode == 255 and "Could not open" in ref.stderr


def test_ld_prefix_of_the_other_arch(run_guest, guest) -> None:
    # the aarch64 sysroot has no ld-linux-armhf.so.3 either
    binary = guest("hello", "arm")
    ref, _ = both(run_guest, "arm", binary, static=True, options=("-L", SYSROOT["aarch64"]))
    assert ref.returncode == 255


def test_wrong_arch_program(run_guest, guest) -> None:
    ref, _ = both(run_guest, "arm", guest("hello", "aarch64", static=True))
    assert ref.returncode == 255 and "Invalid ELF image" in ref.stderr
    assert os.path.exists(SYSROOT["arm"])


def test_guest_space_refused_by_the_host(guest) -> None:
    # ulimit -v 2 GB: qemu-arm cannot reserve its 4 GiB guest space, pyqemu-arm its RAM
    import resource
    import subprocess

    from tests.guests.run import GUEST_ENV, tool_path

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    binary = str(guest("hello", "arm", static=True))
    runs = [subprocess.run([tool_path(tool, "arm"), binary], capture_output=True, text=True,
                           env=GUEST_ENV, preexec_fn=limit, timeout=60)
            for tool in ("qemu", "pyqemu")]
    assert runs[0].returncode == runs[1].returncode == 1
    assert runs[0].stdout == runs[1].stdout == ""
    assert runs[1].stderr == runs[0].stderr.replace("qemu-arm:", "pyqemu-arm:")
    assert "Unable to reserve 0xfffff000 bytes" in runs[1].stderr
