"""Legacy AES-encrypted qcow2 (crypt_method 1: encrypt.format=aes /
encryption=on), which qemu-img 7.2 still creates, reads and writes: pyqemu-img
and pyqemu-io against qemu-img and qemu-io on the same images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Twins

#: longer than the 16 bytes of key the method uses: the cut is tested too
OBJ = ["--object", "secret,id=s0,data=a-passphrase-longer-than-16"]
AES = "encrypt.format=aes,encrypt.key-secret=s0"
#: guest order differs from allocation (host) order: the IV is the guest sector
WRITES = [(0x33, 3 << 20, 70 * 1024), (0x5A, 1000, 200 * 1024), (0x77, 1 << 20, 513)]


def _iopts(path: Path | str) -> list[str]:
    return ["--image-opts", f"driver=qcow2,encrypt.key-secret=s0,file.filename={path}"]


def _io(tool: list[str], path: Path, *cmds: str) -> None:
    args = [*tool, *OBJ, *_iopts(path)]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0 and "fail" not in r.stdout + r.stderr, (args, r)


def _to_raw(tool: list[str], image: Path, out: Path) -> bytes:
    r = subprocess.run(
        [*tool, "convert", *OBJ, *_iopts(image), "-O", "raw", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def test_aes_both_ways(tmp_path: Path, pyqemu_img: list[str], qemu_img: str, qemu_io: str) -> None:
    ours_io = [sys.executable, "-c", "from pyqemu.io_tool.main import main; main()"]
    writes = [f"write -P {p:#x} {o} {n}" for p, o, n in WRITES]
    reads = [f"read -P {p:#x} {o} {n}" for p, o, n in WRITES]
    images = {}
    for name, img_tool, io_tool, reader in (
        ("theirs", [qemu_img], [qemu_io], ours_io),
        ("mine", pyqemu_img, ours_io, [qemu_io]),
    ):
        img = tmp_path / f"{name}.qcow2"
        r = subprocess.run(
            [*img_tool, "create", "-q", "-f", "qcow2", *OBJ, "-o", AES, str(img), "4M"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        _io(io_tool, img, *writes)
        _io(reader, img, *reads, "read -P 0 201k 100k")
        images[name] = img
    # no random parts in this method: the files are byte for byte the same
    assert images["mine"].read_bytes() == images["theirs"].read_bytes()
    outs = [
        _to_raw(tool, images[name], tmp_path / f"{name}-{i}.raw")
        for i, tool in enumerate((pyqemu_img, [qemu_img]))
        for name in ("mine", "theirs")
    ]
    assert all(o == outs[0] for o in outs) and outs[0][1000:1016] == b"\x5a" * 16
    r = subprocess.run(
        [qemu_img, "check", *OBJ, *_iopts(images["mine"])], capture_output=True, text=True
    )
    assert r.returncode == 0 and "No errors were found" in r.stdout, r


def test_aes_convert_to(tmp_path: Path, pyqemu_img: list[str], qemu_img: str) -> None:
    """convert's parallel write path into an AES target, read back by qemu-img."""
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(range(256)) * 4096 * 3 + b"\x00" * (1 << 20) + b"\x91" * 70000)
    out = tmp_path / "out.qcow2"
    r = subprocess.run(
        [
            *pyqemu_img,
            "convert",
            *OBJ,
            "-O",
            "qcow2",
            "-o",
            "encryption=on,encrypt.key-secret=s0",
            str(src),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            qemu_img,
            "compare",
            *OBJ,
            "--image-opts",
            f"driver=raw,file.filename={src}",
            _iopts(out)[1],
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r


@pytest.mark.parametrize(
    "args",
    [
        ["amend", *OBJ, "-o", "encrypt.state=active", *_iopts("q.qcow2")],
        ["check", "q.qcow2"],
        [
            "check",
            *OBJ,
            "--image-opts",
            "driver=qcow2,encrypt.key-secret=s0,encrypt.format=luks,file.filename=q.qcow2",
        ],
        ["info", "q.qcow2"],
        ["info", "--output=json", "q.qcow2"],
        ["map", *OBJ, *_iopts("q.qcow2")],
        ["measure", *OBJ, "-O", "qcow2", "-o", AES, *_iopts("q.qcow2")],
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            *OBJ,
            "-o",
            AES + ",encrypt.cipher-alg=aes-128",
            "x.qcow2",
            "1M",
        ],
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            *OBJ,
            "-o",
            "encryption=on,encrypt.format=luks",
            "x.qcow2",
            "1M",
        ],
        ["create", "-q", "-f", "qcow2", "-o", "encryption=on", "x.qcow2", "1M"],
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s9",
            "x.qcow2",
            "1M",
        ],
        ["convert", "-c", *OBJ, "-O", "qcow2", "-o", AES, *_iopts("q.qcow2"), "c.qcow2"],
    ],
)
def test_aes_messages_same(twins: Twins, qemu_img: str, qemu_io: str, args: list[str]) -> None:
    def make(folder: Path) -> None:
        subprocess.run(
            [
                qemu_img,
                "create",
                "-q",
                "-f",
                "qcow2",
                *OBJ,
                "-o",
                AES,
                str(folder / "q.qcow2"),
                "2M",
            ],
            check=True,
        )
        _io([qemu_io], folder / "q.qcow2", "write -P 7 64k 64k")

    twins.setup(make)
    twins.same(*args)
