"""pyqemu-img dd and bench against qemu-img 7.2."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import Twins


def _inputs(folder: Path) -> None:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    sh("qemu-img", "create", "-f", "qcow2", "in.qcow2", "10M")
    sh(
        "qemu-io",
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -P 7 3000 5000",
        "-c",
        "write -P 9 9M 1M",
        "in.qcow2",
    )
    sh("qemu-img", "create", "-f", "raw", "in.raw", "1000000")
    sh("qemu-io", "-f", "raw", "-c", "write -P 3 0 1000", "-c", "write -P 4 999000 1000", "in.raw")
    sh("qemu-img", "create", "-f", "qcow2", "bench.qcow2", "64M")


DD_CASES = [
    ("if=in.qcow2 of=o.raw", "o.raw"),
    ("-O qcow2 if=in.qcow2 of=o.qcow2", "o.qcow2"),
    ("bs=4k if=in.qcow2 of=o.raw count=10 skip=3", "o.raw"),
    ("if=in.raw of=o.raw bs=3000 skip=10", "o.raw"),
    ("if=in.raw of=o.raw bs=3000 skip=1000", "o.raw"),
    ("if=in.raw of=o.raw bs=3000 count=1000", "o.raw"),
    ("if=in.raw of=o.raw count=0", "o.raw"),
    ("-O qcow2 if=in.raw of=o.qcow2 bs=7 skip=3", "o.qcow2"),
    ("-f raw if=in.qcow2 of=o.raw skip=1", "o.raw"),
    ("-O file if=in.raw of=o.raw", "o.raw"),
    ("--image-opts if=driver=raw,file.filename=in.raw of=o.raw", "o.raw"),
]


@pytest.mark.parametrize(("args", "output"), DD_CASES)
def test_dd_output_equal(twins: Twins, args: str, output: str) -> None:
    twins.setup(_inputs)
    twins.same("dd", *args.split())
    ours, ref = twins.ours_dir / output, twins.ref_dir / output
    fmt = "qcow2" if output.endswith("qcow2") else "raw"
    if fmt == "raw":
        assert ours.stat().st_size == ref.stat().st_size
    cmp = subprocess.run(
        [twins.ref, "compare", "-s", "-f", fmt, "-F", fmt, str(ours), str(ref)],
        capture_output=True,
    )
    assert cmp.returncode == 0, cmp.stdout
    if fmt == "qcow2":
        # same layout: qemu-img check gives the same report (end offset included)
        check = subprocess.run(
            [twins.ref, "check", output], cwd=twins.ours_dir, capture_output=True
        )
        check_ref = subprocess.run(
            [twins.ref, "check", output], cwd=twins.ref_dir, capture_output=True
        )
        assert check.returncode == 0, check.stdout
        assert check.stdout == check_ref.stdout


@pytest.mark.parametrize(
    "args",
    [
        "if=in.raw of=o.raw bs=0",
        "if=in.raw of=o.raw bs=x",
        "if=in.raw of=o.raw bs=2G",
        "if=in.raw of=o.raw count=-1",
        "if=in.raw",
        "foo if=in.raw of=x",
        "bar=1 if=in.raw of=x",
        "if=nope of=x",
        "-O foo if=in.raw of=x",
        "if=in.raw of=/nonexistent/x",
        "if=in.raw of=o.raw skip=99999999999999999",
    ],
)
def test_dd_errors(twins: Twins, args: str) -> None:
    twins.setup(_inputs)
    out = twins.same("dd", *args.split())
    assert out.returncode != 0 or b"cannot skip" in out.stderr


def _filtered(proc: subprocess.CompletedProcess[bytes]) -> tuple[int, str, str]:
    text = re.sub(r"in [0-9.]+ seconds", "in X seconds", proc.stdout.decode())
    return proc.returncode, text, proc.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        "-c 200",
        "-c 200 -w",
        "-c 200 -d 2",
        "-c 10 -s 0",
        "-c 200 -w -d 4 -s 8k -S 16k -o 4k --pattern=5",
        "-c 200 -w --flush-interval=100",
        "-c 200 -w --no-drain --flush-interval=100",
        "-c 200 -w --flush-interval=3 -d 2",
        "-c 200 -S 1M",
        "-c 100 -o 1",
        "-c 10 -t none -n",
        "-c 10 -i threads -f qcow2 -U -q",
        "-c 10 -o 64M",
        "-c 10 -w -o 63M -s 2M",
        "-c x",
        "-d x",
        "-s x",
        "-s 5G",
        "-S x",
        "-o x",
        "--pattern=256",
        "--flush-interval=x",
        "--flush-interval=100",
        "-w --flush-interval=10",
        "-i foo",
        "-i native",
        "-n",
        "-t foo",
    ],
)
def test_bench_output_form(twins: Twins, args: str) -> None:
    twins.setup(_inputs)
    a, b = twins.run("bench", *args.split(), "bench.qcow2")
    assert _filtered(a) == _filtered(b)
    assert b"Traceback" not in a.stderr
    if a.returncode == 0:
        assert b"Run completed in " in a.stdout
        check = subprocess.run(
            [twins.ref, "check", str(twins.ours_dir / "bench.qcow2")], capture_output=True
        )
        assert check.returncode == 0


def test_bench_write_pattern(twins: Twins) -> None:
    twins.setup(_inputs)
    twins.run("bench", "-c", "100", "-w", "-s", "8k", "-S", "64k", "--pattern=171", "bench.qcow2")
    cmp = subprocess.run(
        [
            twins.ref,
            "compare",
            str(twins.ours_dir / "bench.qcow2"),
            str(twins.ref_dir / "bench.qcow2"),
        ],
        capture_output=True,
    )
    assert cmp.returncode == 0, cmp.stdout


@pytest.mark.parametrize("args", [[], ["a", "b"], ["-c", "10", "nonexistent"]])
def test_bench_usage(twins: Twins, args: list[str]) -> None:
    out = twins.same("bench", *args)
    assert out.returncode == 1
