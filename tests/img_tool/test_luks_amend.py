"""pyqemu-img amend -o encrypt.* (LUKS key slots) side by side with qemu-img 7.2:
the same sequence of adds, erases and refusals on twin copies of one image
gives the same messages and exit codes, and the amended images open in
qemu-img / qemu-io with the new secrets and hold the data written before."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .conftest import Twins

OBJ = [
    *("--object", "secret,id=s0,data=first"),
    *("--object", "secret,id=s1,data=second"),
    *("--object", "secret,id=s2,data=third"),
]
FLAKY = "Unable to get accurate CPU usage"


def _iopts(secret: str, name: str = "a.qcow2") -> list[str]:
    return ["--image-opts", f"driver=qcow2,encrypt.key-secret={secret},file.filename={name}"]


def _same(twins: Twins, *args: str) -> int:
    """Both tools, same stdout/stderr/exit code; qemu-img's PBKDF2 timing
    failure (FLAKY) leaves the image unchanged, so it is simply run again."""
    for _ in range(10):
        b = subprocess.run([twins.ref, *args], cwd=twins.ref_dir, capture_output=True)
        if FLAKY not in b.stderr.decode():
            break
    a = subprocess.run([twins.ours, *args], cwd=twins.ours_dir, capture_output=True)
    assert (a.returncode, a.stdout.decode(), a.stderr.decode()) == (
        b.returncode,
        b.stdout.decode(),
        b.stderr.decode(),
    ), args
    assert b"Traceback" not in a.stderr
    return a.returncode


def _slots(qemu_img: str, path: Path) -> list[bool]:
    import json

    r = subprocess.run(
        [qemu_img, "info", "--output=json", str(path)], capture_output=True, check=True
    )
    slots = json.loads(r.stdout)["format-specific"]["data"]["encrypt"]["slots"]
    return [s["active"] for s in slots]


def test_amend_keyslots_same(
    twins: Twins, pyqemu_img: list[str], qemu_img: str, qemu_io: str, tmp_path: Path
) -> None:
    made = tmp_path / "a.qcow2"
    r = subprocess.run(
        [
            *pyqemu_img,
            "create",
            "-q",
            "-f",
            "qcow2",
            *OBJ,
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            str(made),
            "1M",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    subprocess.run(
        [qemu_io, *OBJ, *_iopts("s0", str(made)), "-c", "write -P 0x5c 4k 300k"],
        check=True,
        capture_output=True,
    )
    twins.setup(lambda d: shutil.copy(made, d / "a.qcow2"))
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", str(twins.ours_dir / "p.qcow2"), "1M"], check=True
    )
    shutil.copy(twins.ours_dir / "p.qcow2", twins.ref_dir / "p.qcow2")
    s0 = _iopts("s0")
    add = "encrypt.state=active,encrypt.iter-time=10"
    steps: list[tuple[list[str], int]] = [
        # refusals before anything changes
        (["-o", "encrypt.format=luks", *s0], 1),
        (["-o", "encrypt.state=active", *s0], 1),
        (["-o", "encrypt.new-secret=s1", *s0], 1),
        (["-o", add + ",encrypt.new-secret=s1", "a.qcow2"], 1),  # no key
        (["-o", add + ",encrypt.new-secret=s1,encrypt.old-secret=s0", *s0], 1),
        (["-o", "encrypt.state=foo,encrypt.new-secret=s1", *s0], 1),
        (["-o", add + ",encrypt.new-secret=s1,encrypt.keyslot=0", *s0], 1),
        (["-o", add + ",encrypt.new-secret=s1,encrypt.keyslot=9", *s0], 1),
        (["-o", add + ",encrypt.new-secret=s1,encrypt.keyslot=-1", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=abc", *s0], 1),
        (["-o", add + ",encrypt.new-secret=nope", *s0], 1),
        (["-o", "encrypt.keyslot=1", "--image-opts", "driver=qcow2,file.filename=p.qcow2"], 1),
        # slot 1 gets s1, slot 5 s2
        (["-o", add + ",encrypt.new-secret=s1", *s0], 0),
        (["-o", add + ",encrypt.new-secret=s2,encrypt.keyslot=5", *s0], 0),
        (["-o", "encrypt.state=inactive,encrypt.new-secret=s1", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.iter-time=10", *s0], 1),
        (["-o", "encrypt.state=inactive", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=3", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=-1", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=1,encrypt.old-secret=s0", *s0], 1),
        (["-o", "encrypt.state=inactive,encrypt.old-secret=nope", *s0], 1),
        # erase s0's slot by password, opened with s1; then 5 by index, opened with s2
        (["-o", "encrypt.state=inactive,encrypt.old-secret=s0", *_iopts("s1")], 0),
        (["-o", "encrypt.state=inactive,encrypt.old-secret=s0", *_iopts("s1")], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=5,size=2M", *_iopts("s2")], 0),
        (["-o", "encrypt.state=inactive,encrypt.old-secret=s1", *_iopts("s1")], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=1", *_iopts("s1")], 1),
        (["-o", "encrypt.state=inactive,encrypt.keyslot=5", "--force", *_iopts("s1")], 0),
        (["-o", add + ",encrypt.new-secret=s1,encrypt.keyslot=1", *_iopts("s1")], 1),
        (["-o", add + ",encrypt.new-secret=s0,encrypt.keyslot=1", "--force", *_iopts("s1")], 0),
        (["-o", "encrypt.state=inactive", *s0], 1),  # s0 opens slot 1 now
    ]
    for args, rc in steps:
        assert _same(twins, "amend", *OBJ, *args) == rc, args
    for folder in (twins.ours_dir, twins.ref_dir):
        img = folder / "a.qcow2"
        assert _slots(qemu_img, img) == [False, True] + [False] * 6
        r = subprocess.run(
            [
                qemu_io,
                *OBJ,
                *_iopts("s0", str(img)),
                "-c",
                "read -P 0x5c 4k 300k",
                "-c",
                "read -P 0 1M 1M",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0 and "fail" not in r.stdout, r
        r = subprocess.run(
            [qemu_img, "check", *OBJ, *_iopts("s0", str(img))], capture_output=True, text=True
        )
        assert r.returncode == 0 and "No errors were found" in r.stdout, r
        # the erased passphrase no longer opens it
        r = subprocess.run(
            [qemu_img, "check", *OBJ, *_iopts("s1", str(img))], capture_output=True, text=True
        )
        assert "Invalid password, cannot unlock any keyslot" in r.stderr, r


def test_amend_encrypt_with_compat_same(
    twins: Twins, pyqemu_img: list[str], tmp_path: Path
) -> None:
    """Key slots and a downgrade in one amend; then the other checks."""
    made = tmp_path / "a.qcow2"
    r = subprocess.run(
        [
            *pyqemu_img,
            "create",
            "-q",
            "-f",
            "qcow2",
            *OBJ,
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            str(made),
            "1M",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    twins.setup(lambda d: shutil.copy(made, d / "a.qcow2"))
    opts = "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10"
    assert _same(twins, "amend", *OBJ, "-o", opts + ",compat=foo", *_iopts("s0")) == 1
    assert _same(twins, "amend", *OBJ, "-o", opts + ",compat=0.10", *_iopts("s0")) == 0
    assert _same(twins, "check", *OBJ, *_iopts("s1")) == 0
    a, b = twins.run("info", "a.qcow2")
    # the same but for the new slot's PBKDF2 iterations (each tool times its own)
    lines = [[x for x in r.stdout.decode().splitlines() if "iters:" not in x] for r in (a, b)]
    assert lines[0] == lines[1] and "    compat: 0.10" in lines[0]
