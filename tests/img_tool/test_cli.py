"""pyqemu-img's global behaviour: --version, --help, bad command lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import Twins


def test_version_names_the_program(pyqemu_img: list[str], ours: str) -> None:
    for cmd in ([*pyqemu_img, "--version"], [*pyqemu_img, "-V"]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0
        lines = out.stdout.splitlines()
        assert lines[0] == "pyqemu-img version 7.2.0 (pyqemu 0.1.0)"
        assert lines[1].startswith("Copyright (c) 2003-2022 Fabrice Bellard")
    out = subprocess.run([ours, "--version"], capture_output=True, text=True)
    assert out.stdout.startswith("qemu-img version 7.2.0 (pyqemu 0.1.0)\n")


def test_help_lists_formats_and_commands(pyqemu_img: list[str]) -> None:
    for args in (["--help"], ["-h"], ["info", "-h"], ["convert", "--help"]):
        out = subprocess.run([*pyqemu_img, *args], capture_output=True, text=True)
        assert out.returncode == 0
        assert "usage: pyqemu-img [standard options] command [command options]" in out.stdout
        formats = [ln for ln in out.stdout.splitlines() if ln.startswith("Supported formats:")]
        assert formats and "qcow2" in formats[0].split() and "raw" in formats[0].split()
        for command in ("check", "compare", "convert", "create", "info", "map", "resize"):
            assert f"\n  {command} [" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["foo"],
        ["-x"],
        ["--foo"],
        ["info"],
        ["info", "-f"],
        ["info", "--output"],
        ["info", "-q", "x"],
        ["info", "--backing-chain=1", "x"],
        ["check", "-qx", "x"],
        ["create"],
        ["create", "-f", "raw", "a.img", "-1"],
        ["create", "-f", "raw", "a.img", "1M", "extra"],
        ["compare", "x"],
        ["resize", "x"],
        ["convert", "x"],
        ["map"],
    ],
)
def test_usage_errors_match_qemu(twins: Twins, args: list[str]) -> None:
    out = twins.same(*args)
    assert out.returncode == 1
    assert out.stderr.startswith(b"qemu-img: ")


def test_trace_option_is_accepted(twins: Twins) -> None:
    twins.shell(["qemu-img", "create", "-f", "raw", "a.img", "1M"])
    a, _ = twins.run("-T", "foo", "info", "a.img")
    assert a.returncode == 0
    assert a.stdout.startswith(b"image: a.img\n")


def test_long_option_prefix_and_equals(twins: Twins) -> None:
    twins.shell(["qemu-img", "create", "-f", "raw", "a.img", "1M"])
    twins.same("info", "--out=json", "a.img")
    twins.same("info", "--outp", "json", "a.img")
    twins.same("info", "a.img", "--output", "json")  # permutation


def test_every_qemu_img_command_is_dispatched(pyqemu_img: list[str], tmp_path: Path) -> None:
    # bench was the last "not supported yet" command: it now opens the image
    out = subprocess.run([*pyqemu_img, "bench", "x"], capture_output=True, text=True,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("pyqemu-img: Could not open 'x': ")


def test_broken_pipe_is_quiet(pyqemu_img: list[str]) -> None:
    proc = subprocess.Popen(
        ["sh", "-c", f"{pyqemu_img[0]} --help | head -c 10 >/dev/null"],
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err
