"""pyqemu-img create against qemu-img create."""

from __future__ import annotations

import pytest

from .conftest import Twins


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "raw", "a.img", "1M"],
        ["-fraw", "a.img", "1.5k"],
        ["-f", "raw", "a.img", "0x100"],
        ["-f", "raw", "a.img", "0"],
        ["-q", "-f", "raw", "a.img", "64k"],
        ["-f", "raw", "-o", "size=2M", "a.img"],
        ["-f", "raw", "-o", "preallocation=falloc", "a.img", "1M"],
        ["-f", "qcow2", "a.qcow2", "1M"],
        ["-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on", "a.qcow2", "1G"],
        ["-f", "qcow2", "-o", "compat=0.10", "a.qcow2", "1M"],
        ["-f", "qcow2", "-o", "preallocation=metadata", "a.qcow2", "1M"],
    ],
)
def test_create_output_matches(twins: Twins, args: list[str]) -> None:
    out = twins.same("create", *args)
    assert out.returncode == 0
    name = args[-1] if "size=" in " ".join(args) else args[-2]
    if name.endswith(".qcow2"):
        # (raw: qemu's file driver allocates the first 4 KiB on create, ours does
        # not, so "disk size" differs; the file protocol is outside img_tool)
        twins.same("info", name)
        twins.same("check", name)


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "raw", "a.img"],
        ["-f", "raw", "a.img", "1Q"],
        ["-f", "raw", "a.img", "1.5"],
        ["-f", "raw", "a.img", "9E"],
        ["-f", "raw", "a.img", "18446744073709551616"],
        ["-f", "foo", "a.img", "1M"],
        ["-f", "raw", "-o", "foo=1", "a.img", "1M"],
        ["-f", "raw", "-b", "base.img", "a.img"],
        ["-f", "qcow2", "-b", "base.img", "a.qcow2"],
        ["-f", "qcow2", "-b", "nope", "-F", "raw", "a.qcow2"],
        ["-f", "qcow2", "-u", "-b", "nope", "a.qcow2", "1M"],
        ["-f", "qcow2", "-b", "a.qcow2", "-F", "raw", "a.qcow2", "1M"],
        ["-f", "qcow2", "-F", "raw", "a.qcow2", "1M"],
        ["-f", "qcow2", "-o", "cluster_size=3k", "a.qcow2", "1M"],
    ],
)
def test_create_errors_match(twins: Twins, args: list[str]) -> None:
    twins.shell(["qemu-img", "create", "-q", "-f", "raw", "base.img", "512"])
    out = twins.same("create", *args)
    assert out.returncode == 1


def test_create_with_backing_takes_its_size(twins: Twins) -> None:
    twins.shell(["qemu-img", "create", "-q", "-f", "raw", "base.img", "3M"])
    twins.same("create", "-f", "qcow2", "-b", "base.img", "-F", "raw", "a.qcow2")
    twins.same("create", "-f", "qcow2", "-o", "backing_file=base.img,backing_fmt=raw", "b.qcow2")
    twins.same("create", "-f", "qcow2", "-u", "-b", "nope", "-F", "raw", "c.qcow2", "1M")
    out = twins.same("info", "--output=json", "a.qcow2")
    assert b'"virtual-size": 3145728' in out.stdout
    twins.same("check", "a.qcow2")


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "raw", "-o", "help"],
        ["-f", "raw", "-o", "help", "x", "1M"],
        ["-f", "qcow2", "-o", "help"],
        ["-f", "qcow2", "-o", "?"],
        ["-f", "qcow2", "-o", "help", "x.qcow2"],
        ["-f", "raw", "-o", "size=1M,help", "x"],
        ["-o", "help"],
    ],
)
def test_create_option_help(twins: Twins, args: list[str]) -> None:
    out = twins.same("create", *args)
    assert out.returncode == 0
    assert b"size=<size>" in out.stdout
