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


# ---------------------------------------------------------------- amend

AMEND_SETUPS = {
    "v3": [
        ["qemu-img", "create", "-f", "qcow2", "am.qcow2", "10M"],
        [
            "qemu-io",
            "-c",
            "write -P 1 0 1M",
            "-c",
            "write -z 2M 1M",
            "-c",
            "write -P 3 4M 64k",
            "-c",
            "write -z -u 4M 64k",
            "am.qcow2",
        ],
    ],
    "v2": [
        ["qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", "am.qcow2", "10M"],
        ["qemu-io", "-c", "write -P 1 0 1M", "am.qcow2"],
    ],
    "backed": [
        ["qemu-img", "create", "-f", "qcow2", "base.qcow2", "10M"],
        ["qemu-io", "-c", "write -P 5 0 10M", "base.qcow2"],
        ["qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "am.qcow2"],
        ["qemu-io", "-c", "write -z 1M 1M", "-c", "write -P 1 3M 100k", "am.qcow2"],
    ],
    "lazy8": [
        [
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on,refcount_bits=8",
            "am.qcow2",
            "10M",
        ],
        ["qemu-io", "-c", "write -P 1 0 1M", "am.qcow2"],
    ],
    "small2": [
        [
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512,refcount_bits=2",
            "am.qcow2",
            "30M",
        ],
        ["qemu-io", "-c", "write -P 1 0 20M", "am.qcow2"],
    ],
    "zstd": [
        ["qemu-img", "create", "-f", "qcow2", "-o", "compression_type=zstd", "am.qcow2", "10M"],
        ["qemu-io", "-c", "write -c -P 1 0 64k", "am.qcow2"],
    ],
    "extl2": [["qemu-img", "create", "-f", "qcow2", "-o", "extended_l2=on", "am.qcow2", "10M"]],
}
AMENDS = [
    "compat=0.10",
    "compat=1.1",
    "refcount_bits=1",
    "refcount_bits=16",
    "refcount_bits=64",
    "lazy_refcounts=on",
    "lazy_refcounts=off",
    "size=20M",
    "refcount_bits=8,lazy_refcounts=on",
    "compat=0.10,refcount_bits=8",
    "compat=1.1,refcount_bits=4,lazy_refcounts=on",
    "compat=0.10,lazy_refcounts=on",
    "cluster_size=4k",
    "foo=1",
    "backing_file=x",
    "data_file=x",
    "data_file_raw=on",
    "compat=9",
    "refcount_bits=3",
    "lazy_refcounts=x",
]


def _info(tool: str, folder) -> str:  # type: ignore[no-untyped-def]
    import json
    import subprocess

    out = subprocess.run(
        [tool, "info", "--output=json", "am.qcow2"], cwd=folder, capture_output=True, check=True
    )
    data = json.loads(out.stdout)
    data.pop("actual-size", None)
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize("setup", sorted(AMEND_SETUPS))
def test_amend_matrix(twins: Twins, setup: str) -> None:
    import subprocess

    for option in AMENDS:
        for folder in (twins.ours_dir, twins.ref_dir):
            for f in folder.iterdir():
                f.unlink()
        twins.shell(*AMEND_SETUPS[setup])
        orig = twins.ref_dir / "orig.qcow2"
        orig.write_bytes((twins.ref_dir / "am.qcow2").read_bytes())
        twins.same("amend", "-o", option, "am.qcow2")
        assert _info(twins.ref, twins.ours_dir) == _info(twins.ref, twins.ref_dir), option
        check = subprocess.run(
            [twins.ref, "check", "am.qcow2"], cwd=twins.ours_dir, capture_output=True
        )
        assert check.returncode == 0, (option, check.stdout)
        if not option.startswith("size"):
            cmp = subprocess.run(
                [twins.ref, "compare", str(orig), str(twins.ours_dir / "am.qcow2")],
                capture_output=True,
            )
            assert cmp.returncode == 0, (option, cmp.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "qcow2", "-o", "help"],
        ["-o", "help", "am.qcow2"],
        ["am.qcow2"],
        ["-f", "raw", "-o", "compat=1.1", "am.qcow2"],
        ["-o", "compat=1.1", "-q", "-t", "none", "am.qcow2"],
        ["-o", "compat=1.1", "a", "am.qcow2"],
        ["-o", "compat=1.1"],
        ["-o", "compat=1.1", "nonexistent"],
    ],
)
def test_amend_cli(twins: Twins, args: list[str]) -> None:
    twins.shell(*AMEND_SETUPS["v2"])
    out = twins.same("amend", *args)
    assert out.returncode in (0, 1)
    assert out.returncode == 1 or b"Traceback" not in out.stderr
