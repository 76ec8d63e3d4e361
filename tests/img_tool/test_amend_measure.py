"""pyqemu-img measure and amend against qemu-img 7.2."""

from __future__ import annotations

import pytest

from .conftest import Twins

SIZES = ["0", "1", "512", "65537", "1M", "1G", "100G", "2T", "5555555"]
TARGET_OPTIONS = [
    "",
    "cluster_size=512",
    "cluster_size=4k",
    "cluster_size=2M",
    "refcount_bits=1",
    "refcount_bits=64",
    "refcount_bits=1,cluster_size=512",
    "compat=0.10",
    "extended_l2=on,cluster_size=16k",
    "extended_l2=on",
    "preallocation=metadata",
    "preallocation=falloc",
    "preallocation=full",
    "backing_file=x",
]


@pytest.mark.parametrize("size", SIZES)
def test_measure_size_matrix(twins: Twins, size: str) -> None:
    for opts in TARGET_OPTIONS:
        o = ["-o", opts] if opts else []
        out = twins.same("measure", "-O", "qcow2", *o, "--size", size)
        assert out.stdout.startswith(b"required size: ") or b"too large" in out.stderr
        twins.same("measure", "-O", "qcow2", *o, "--size", size, "--output=json")
    twins.same("measure", "--size", size)
    twins.same("measure", "-O", "raw", "--size", size, "--output=json")


def _inputs(folder) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    sh("qemu-img", "create", "-f", "qcow2", "a.qcow2", "100M")
    sh(
        "qemu-io",
        "-c",
        "write 0 1M",
        "-c",
        "write 5M 100k",
        "-c",
        "write -z 10M 1M",
        "-c",
        "write 99M 1M",
        "-c",
        "write -c 20M 64k",
        "a.qcow2",
    )
    sh("qemu-img", "create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "top.qcow2")
    sh("qemu-io", "-c", "write 50M 70k", "top.qcow2")
    sh("qemu-img", "create", "-f", "raw", "r.raw", "50M")
    sh("qemu-io", "-f", "raw", "-c", "write 4k 1M", "r.raw")
    sh("qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "10M")
    sh("qemu-img", "create", "-f", "qcow2", "bm.qcow2", "1G")
    sh("qemu-img", "bitmap", "--add", "bm.qcow2", "b0")
    sh("qemu-img", "bitmap", "--add", "-g", "512", "bm.qcow2", "a-long-bitmap-name")
    sh("qemu-io", "-c", "write 0 3M", "bm.qcow2")


def test_measure_input_images(twins: Twins) -> None:
    twins.setup(_inputs)
    for image in ("a.qcow2", "top.qcow2", "r.raw", "v2.qcow2", "bm.qcow2"):
        for opts in TARGET_OPTIONS:
            o = ["-o", opts] if opts else []
            out = twins.same("measure", "-O", "qcow2", *o, image)
            assert b"fully allocated size: " in out.stdout
            twins.same("measure", "--output=json", "-O", "qcow2", *o, image)
        twins.same("measure", image)
    twins.same("measure", "-O", "qcow2", "-f", "raw", "a.qcow2")
    twins.same("measure", "-O", "qcow2", "--image-opts", "driver=qcow2,file.filename=top.qcow2")
    assert b"bitmaps size: 524288" in twins.same("measure", "-O", "qcow2", "bm.qcow2").stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["a", "b"],
        ["-f", "qcow2", "--size", "1G"],
        ["--size", "1G", "a.qcow2"],
        ["--size", "1x"],
        ["-O", "foo", "--size", "1"],
        ["-O", "file", "--size", "1"],
        ["-O", "qcow2", "-o", "foo=1", "--size", "1"],
        ["-O", "qcow2", "-o", "help", "--size", "1"],
        ["-O", "raw", "-o", "cluster_size=4k", "--size", "1"],
        ["--size", "1", "--output=xml"],
        ["nonexistent"],
        ["-l", "foo", "a.qcow2"],
        ["-O", "qcow2", "-o", "refcount_bits=3", "--size", "1G"],
        ["-O", "qcow2", "-o", "refcount_bits=x", "--size", "1G"],
        ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1G"],
        ["-O", "qcow2", "-o", "cluster_size=x", "--size", "1G"],
        ["-O", "qcow2", "-o", "cluster_size=3k", "--size", "1G"],
        ["-O", "qcow2", "-o", "extended_l2=x", "--size", "1G"],
        ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=4k", "--size", "1G"],
        ["-O", "qcow2", "-o", "compat=xx", "--size", "1G"],
        ["-O", "qcow2", "-o", "preallocation=xx", "--size", "1G"],
        ["-O", "qcow2", "-o", "cluster_size=512", "--size", "8T"],
    ],
)
def test_measure_errors(twins: Twins, args: list[str]) -> None:
    twins.setup(_inputs)
    out = twins.same("measure", *args)
    assert out.returncode == 1
