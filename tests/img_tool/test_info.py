"""pyqemu-img info against qemu-img info: human, JSON, chains, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from .conftest import Twins, digest


@pytest.fixture
def images(twins: Twins) -> Twins:
    twins.shell(
        ["qemu-img", "create", "-q", "-f", "raw", "r.img", "1M"],
        ["qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", "r.img"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "4M"],
        ["qemu-io", "-c", "write -P 1 0 64k", "-c", "write -z 1M 64k", "c.qcow2"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "r.img", "-F", "raw", "top.qcow2"],
        ["mkdir", "sub"],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../top.qcow2",
            "-F",
            "qcow2",
            "sub/x.qcow2",
        ],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M"],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on,cluster_size=4k",
            "l.qcow2",
            "1M",
        ],
    )
    return twins


@pytest.mark.parametrize(
    "args",
    [
        ["r.img"],
        ["-f", "raw", "r.img"],
        ["c.qcow2"],
        ["top.qcow2"],
        ["sub/x.qcow2"],
        ["v2.qcow2"],
        ["l.qcow2"],
        ["-U", "c.qcow2"],
        ["--image-opts", "driver=qcow2,file.filename=c.qcow2"],
        ["--backing-chain", "sub/x.qcow2"],
    ],
)
def test_info_matches(images: Twins, args: list[str]) -> None:
    images.same("info", *args)
    out = images.same("info", "--output=json", *args)
    # key order is part of the output: compare the parsed pairs in order
    ours = json.loads(out.stdout, object_pairs_hook=list)
    assert ours


def test_info_backing_actual_path(images: Twins) -> None:
    out = images.same("info", "sub/x.qcow2")
    assert b"backing file: ../top.qcow2 (actual path: sub/../top.qcow2)\n" in out.stdout


def test_info_backing_loop(images: Twins) -> None:
    images.shell(
        ["qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"],
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    )
    out = images.same("info", "--backing-chain", "b.qcow2")
    assert out.returncode == 1
    assert out.stderr == b"qemu-img: Backing file 'b.qcow2' creates an infinite loop.\n"
    images.same("info", "b.qcow2")  # without the chain it opens fine


@pytest.mark.parametrize(
    "args",
    [
        ["nofile"],
        ["-f", "foo", "r.img"],
        ["-f", "qcow2", "r.img"],
        ["--output=foo", "r.img"],
        ["r.img", "extra"],
        ["trunc.qcow2"],
        ["sub"],
    ],
)
def test_info_errors(images: Twins, args: list[str]) -> None:
    def truncate(folder: Path) -> None:
        data = (folder / "c.qcow2").read_bytes()
        (folder / "trunc.qcow2").write_bytes(data[:50])

    images.setup(truncate)
    before = digest(images.ours_dir / "r.img")
    a, _ = images.run("info", *args)
    assert a.returncode == 1 and b"Traceback" not in a.stderr
    out = images.same("info", *args)
    assert out.returncode == 1
    assert digest(images.ours_dir / "r.img") == before


def test_info_corrupt_header_is_an_error_not_a_traceback(images: Twins) -> None:
    def corrupt(folder: Path) -> None:
        data = bytearray((folder / "c.qcow2").read_bytes())
        struct.pack_into(">I", data, 20, 40)  # cluster_bits out of range
        (folder / "bad.qcow2").write_bytes(data)

    images.setup(corrupt)
    a, b = images.run("info", "bad.qcow2")
    assert a.returncode == b.returncode == 1
    assert a.stderr.startswith(b"qemu-img: Could not open 'bad.qcow2': ")
    assert b"Traceback" not in a.stderr


def test_info_object_secret_is_accepted(images: Twins) -> None:
    images.same("info", "--object", "secret,id=s0,data=x", "r.img")
