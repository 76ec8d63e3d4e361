"""pyqemu-img and pyqemu-io with --object secret and LUKS-encrypted qcow2,
side by side with qemu-img / qemu-io."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Twins

SECRET = "secret,id=sec0,data=123456"
OBJ = ["--object", SECRET]
ENC_OPTS = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"


def _iopts(name: str) -> list[str]:
    return ["--image-opts", f"driver=qcow2,encrypt.key-secret=sec0,file.filename={name}"]


#: qemu-img 7.2 now and then fails to time PBKDF2 while it makes a LUKS header
FLAKY = "Unable to get accurate CPU usage"


def _run_qemu(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a qemu tool that makes a LUKS header, again while it hits FLAKY."""
    for _ in range(10):
        r = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        if FLAKY not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    return r


def _qemu_create(qemu_img: str, path: Path, size: str = "4M") -> None:
    _run_qemu([qemu_img, "create", "-f", "qcow2", *OBJ, "-o", ENC_OPTS, str(path), size])


def _same_create(twins: Twins, *args: str) -> None:
    """twins.same for commands that make a LUKS header (qemu-img may hit FLAKY)."""
    for _ in range(10):
        a, b = twins.run(*args)
        if FLAKY not in b.stderr.decode():
            break
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args


def _strip_random(text: str) -> str:
    """Drop the lines that differ between any two new LUKS headers (uuid and the
    measured PBKDF2 iteration counts)."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not re.search(r"uuid|iters|actual-size|disk size", line)
    )


@pytest.fixture
def ours_io(tmp_path: Path) -> str:
    """pyqemu-io under the program name ``qemu-io``."""
    folder = tmp_path / "iobin"
    folder.mkdir()
    path = folder / "qemu-io"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nfrom pyqemu.io_tool.main import main\nmain()\n"
    )
    path.chmod(0o755)
    return str(path)


def test_create_same_output(twins: Twins) -> None:
    _same_create(
        twins,
        "create",
        "-f",
        "qcow2",
        *OBJ,
        "-o",
        ENC_OPTS + ",encrypt.cipher-alg=aes-256,encrypt.hash-alg=sha256",
        "x.qcow2",
        "1M",
    )
    a, b = twins.run("info", "x.qcow2")
    assert _strip_random(a.stdout.decode()) == _strip_random(b.stdout.decode())
    a, b = twins.run("info", "--output=json", "x.qcow2")
    assert _strip_random(a.stdout.decode()) == _strip_random(b.stdout.decode())
    # each tool's image is checked clean by qemu-img
    for folder in (twins.ours_dir, twins.ref_dir):
        r = subprocess.run(
            [twins.ref, "check", *OBJ, *_iopts("x.qcow2")], cwd=folder, capture_output=True
        )
        assert r.returncode == 0 and b"No errors were found" in r.stdout, r


def test_info_of_qemu_image_identical(twins: Twins, qemu_img: str) -> None:
    """Both tools on the very same qemu-made image (one folder, so that the
    disk size is the same too)."""
    folder = twins.ours_dir
    _qemu_create(qemu_img, folder / "q.qcow2")
    subprocess.run(
        ["qemu-io", *OBJ, *_iopts("q.qcow2"), "-c", "write -P 0x11 0 100k"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    q = _iopts("q.qcow2")
    for args in (
        ["info", "q.qcow2"],
        ["info", "--output=json", "q.qcow2"],
        ["check", *OBJ, *q],
        ["check", "--output=json", *OBJ, *q],
        ["map", "--output=json", *OBJ, *q],
        ["compare", *OBJ, "--image-opts", q[1], q[1]],
    ):
        a = subprocess.run([twins.ours, *args], cwd=folder, capture_output=True, text=True)
        b = subprocess.run([twins.ref, *args], cwd=folder, capture_output=True, text=True)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args


@pytest.mark.parametrize(
    "objdef",
    [
        "secret,data=1",
        "foo,id=x",
        "id=x",
        "secret,id=s",
        "secret,id=s,data=1,format=xx",
        "secret,id=s,data=!!,format=base64",
        "secret,id=s,data=1,file=/x",
        "secret,id=s,data=1,bogus=2",
        "secret,id=0bad,data=1",
        "help",
        "secret,help",
    ],
)
def test_object_errors_same(twins: Twins, objdef: str) -> None:
    twins.same("info", "--object", objdef, "nothing.qcow2")


def test_key_errors_same(twins: Twins, qemu_img: str) -> None:
    twins.setup(lambda d: _qemu_create(qemu_img, d / "q.qcow2", "1M"))
    twins.same("check", "--object", "secret,id=sec0,data=wrong", *_iopts("q.qcow2"))
    twins.same("check", "q.qcow2")
    twins.same(
        "check", *OBJ, "--image-opts", "driver=qcow2,encrypt.key-secret=x,file.filename=q.qcow2"
    )
    twins.same("info", *OBJ, "--object", SECRET, "q.qcow2")


@pytest.mark.parametrize(
    "options",
    [
        "encrypt.format=luks",
        "encrypt.key-secret=sec0",
        "encrypt.format=luks,encrypt.key-secret=nope",
        "encrypt.format=foo",
        ENC_OPTS + ",encrypt.cipher-alg=foo",
        ENC_OPTS + ",encrypt.cipher-mode=foo",
        ENC_OPTS + ",encrypt.hash-alg=foo",
    ],
)
def test_create_errors_same(twins: Twins, options: str) -> None:
    _same_create(twins, "create", "-f", "qcow2", *OBJ, "-o", options, "x.qcow2", "1M")


def test_convert_to_and_from_encrypted(tmp_path: Path, ours: str, qemu_img: str) -> None:
    src = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "create", "-f", "qcow2", str(src), "3M"], check=True)
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 1500k 700k", str(src)],
        check=True,
        capture_output=True,
    )
    enc = tmp_path / "enc.qcow2"
    r = subprocess.run(
        [ours, "convert", *OBJ, "-O", "qcow2", "-o", ENC_OPTS, str(src), str(enc)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [qemu_img, "compare", *OBJ, "--image-opts", f"file.filename={src}", _iopts(str(enc))[1]],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout == "Images are identical.\n", r
    r = subprocess.run([qemu_img, "check", *OBJ, *_iopts(str(enc))], capture_output=True)
    assert r.returncode == 0, r
    # and back out of a qemu-made encrypted image
    qenc = tmp_path / "qenc.qcow2"
    _run_qemu([qemu_img, "convert", *OBJ, "-O", "qcow2", "-o", ENC_OPTS, str(src), str(qenc)])
    out = tmp_path / "out.raw"
    r = subprocess.run(
        [ours, "convert", *OBJ, *_iopts(str(qenc)), "-O", "raw", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(src), str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r


def test_convert_compressed_encrypted_refused(twins: Twins) -> None:
    twins.setup(lambda d: (d / "r.raw").write_bytes(bytes(65536)))
    twins.same("convert", "-c", *OBJ, "-O", "qcow2", "-o", ENC_OPTS, "r.raw", "c.qcow2")


def test_pyqemu_io_with_secret(tmp_path: Path, ours_io: str, qemu_io: str, qemu_img: str) -> None:
    img = tmp_path / "q.qcow2"
    _qemu_create(qemu_img, img, "1M")
    r = subprocess.run(
        [ours_io, *OBJ, *_iopts(str(img)), "-c", "write -P 0x77 512 4000"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "wrote 4000/4000 bytes at offset 512" in r.stdout, r
    r = subprocess.run(
        [qemu_io, *OBJ, *_iopts(str(img)), "-c", "read -P 0x77 512 4000", "-c", "read -P 0 0 512"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "verification failed" not in r.stdout, r
    for args in (
        ["--object", "secret,id=sec0,data=bad", *_iopts(str(img)), "-c", "read 0 1"],
        ["-c", "read 0 1", str(img)],
        ["--object", "secret,data=1", "-c", "read 0 1", str(img)],
        ["--object", "foo,id=x", "-c", "read 0 1", str(img)],
    ):
        a = subprocess.run([ours_io, *args], capture_output=True, text=True)
        b = subprocess.run([qemu_io, *args], capture_output=True, text=True)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args


def test_info_json_encrypt_block(tmp_path: Path, ours: str, qemu_img: str) -> None:
    """The encrypt block of an image we made parses as qemu-img reports it."""
    img = tmp_path / "o.qcow2"
    r = subprocess.run(
        [ours, "create", "-q", "-f", "qcow2", *OBJ, "-o", ENC_OPTS, str(img), "1M"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    ref = json.loads(
        subprocess.run(
            [qemu_img, "info", "--output=json", str(img)], capture_output=True, check=True
        ).stdout
    )
    mine = json.loads(
        subprocess.run([ours, "info", "--output=json", str(img)], capture_output=True).stdout
    )
    assert mine["format-specific"] == ref["format-specific"]
    assert ref["encrypted"] is True and mine["encrypted"] is True
    assert shutil.which("qemu-img")
