"""The bulk sector paths of common/block/crypto/luks.py (numpy, a few AES-ECB
calls per request) against the ``cryptography`` package's own modes run one
sector at a time, on random data; and pyqemu-img's LUKS writes read by qemu-img
and qemu-io, and theirs read by us, through the bulk paths."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pyqemu.common.block.crypto import luks

SECTOR = 512


def _reference(params: luks.Params, key: bytes, sector: int, data: bytes, encrypt: bool) -> bytes:
    """One cryptography cipher per sector, IVs computed here from the spec."""
    out = bytearray()
    for i in range(len(data) // SECTOR):
        s = sector + i
        if params.ivgen_alg == "plain":
            iv = struct.pack("<I", s & 0xFFFFFFFF) + bytes(12)
        else:
            iv = struct.pack("<Q", s & 0xFFFFFFFFFFFFFFFF) + bytes(8)
        if params.ivgen_alg == "essiv":
            assert params.ivgen_hash_alg
            salt = luks.hashlib.new(params.ivgen_hash_alg, key).digest()
            iv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update(iv)
        mode = {"xts": modes.XTS, "cbc": modes.CBC, "ctr": modes.CTR}[params.cipher_mode](iv)
        c = Cipher(algorithms.AES(key), mode)
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[i * SECTOR : (i + 1) * SECTOR]) + ctx.finalize()
    return bytes(out)


CASES = [
    ("aes-256", "xts", "plain64", None),
    ("aes-128", "xts", "plain64", None),
    ("aes-256", "xts", "plain", None),
    ("aes-256", "xts", "essiv", "sha256"),
    ("aes-128", "cbc", "essiv", "sha256"),
    ("aes-256", "cbc", "plain64", None),
    ("aes-192", "cbc", "plain", None),
    ("aes-256", "ctr", "plain64", None),
    ("aes-128", "ctr", "essiv", "sha256"),
]


@pytest.mark.parametrize(("alg", "mode", "ivgen", "ivhash"), CASES)
def test_bulk_equals_per_sector_reference(
    alg: str, mode: str, ivgen: str, ivhash: str | None
) -> None:
    params = luks.Params(alg, mode, ivgen, ivhash, "sha256")
    rng = random.Random(f"{alg}{mode}{ivgen}")
    key = rng.randbytes(params.key_bytes)
    cipher = luks.SectorCipher(params, key)
    assert cipher._np is not None  # the bulk path is what is tested here
    # sector numbers around 0, 2^32 (plain wraps there) and far out
    for sector in (0, 1, 7, 0xFFFFFFF0, 0x1234567890, rng.randrange(1 << 40)):
        data = rng.randbytes(SECTOR * rng.choice((1, 3, 40, 129)))
        enc = cipher.encrypt(sector * SECTOR, data)
        assert enc == _reference(params, key, sector, data, True), (sector, len(data))
        assert cipher.decrypt(sector * SECTOR, enc) == data
        assert cipher.decrypt(sector * SECTOR, data) == _reference(params, key, sector, data, False)
        # in place (the qcow2 read path) gives the same
        buf = bytearray(enc)
        cipher.decrypt_into(sector * SECTOR, memoryview(buf))
        assert buf == data
        # and the per-sector path (used without numpy) agrees
        assert cipher._run_per_sector(sector, memoryview(data), True) == enc


def test_xts_one_sector_cryptography() -> None:
    """A single sector: XTS of cryptography with the plain64 IV, directly."""
    key = os.urandom(64)
    data = os.urandom(SECTOR * 2048)  # 1 MiB
    cipher = luks.SectorCipher(luks.Params("aes-256", "xts", "plain64", None, "sha256"), key)
    enc = cipher.encrypt(5 * SECTOR, data)
    for i in (0, 1, 1000, 2047):
        iv = (5 + i).to_bytes(16, "little")
        ctx = Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor()
        assert enc[i * SECTOR : (i + 1) * SECTOR] == ctx.update(data[i * SECTOR : (i + 1) * SECTOR])


# --- interop through the bulk paths -----------------------------------------------

OBJ = ["--object", "secret,id=sec0,data=123456"]
SUITES = [
    "",  # aes-256-xts-plain64
    ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
    "encrypt.ivgen-hash-alg=sha256",
    ",encrypt.cipher-mode=ctr,encrypt.ivgen-alg=plain",
]
#: multi-cluster, unaligned and sub-sector writes: the first three by us, the
#: others by qemu-io, into one image
WRITES = [
    (0x11, 0, 300 * 1024),
    (0x22, 700 * 1024, 1536 * 1024),
    (0x33, 400 * 1024 + 100, 3000),
    (0x44, 300 * 1024, 1000),
    (0x55, 2300 * 1024 + 512, 600 * 1024),
    (0x66, 500 * 1024 + 7, 100 * 1024),
]


def _iopts(path: Path) -> list[str]:
    return ["--image-opts", f"driver=qcow2,encrypt.key-secret=sec0,file.filename={path}"]


def _io(tool: list[str], path: Path, *cmds: str) -> str:
    args = [*tool, *OBJ, *_iopts(path)]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0 and "fail" not in r.stdout + r.stderr, (args, r)
    return r.stdout


def _create(tool: list[str], path: Path, suite: str) -> None:
    opts = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10" + suite
    for _ in range(10):  # qemu-img 7.2 sometimes fails to time PBKDF2
        r = subprocess.run(
            [*tool, "create", "-q", "-f", "qcow2", *OBJ, "-o", opts, str(path), "3M"],
            capture_output=True,
            text=True,
        )
        if "Unable to get accurate CPU usage" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("suite", SUITES, ids=["xts", "cbc-essiv", "ctr-plain"])
def test_bulk_interop(
    tmp_path: Path, suite: str, pyqemu_img: list[str], qemu_img: str, qemu_io: str
) -> None:
    """We write, qemu-io reads and writes more, we read all; qemu-img's header
    reading and PBKDF2 are covered by test_luks.py, so the header is ours here."""
    ours_io = [sys.executable, "-c", "from pyqemu.io_tool.main import main; main()"]
    writes = [f"write -P {p:#x} {o} {n}" for p, o, n in WRITES]
    reads = [f"read -P {p:#x} {o} {n}" for p, o, n in WRITES]
    img = tmp_path / "mine.qcow2"
    _create(pyqemu_img, img, suite)
    _io(ours_io, img, *writes[:3])
    _io([qemu_io], img, *reads[:3], "read -P 0 304k 96k", *writes[3:])
    _io(ours_io, img, *reads, "read -P 0 2236k 64k")
    outs = []
    for tool in (pyqemu_img, [qemu_img]):
        out = tmp_path / f"{len(outs)}.raw"
        cmd = [*tool, "convert", *OBJ, *_iopts(img), "-O", "raw", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert len(outs[0]) == 3 << 20 and outs[0] == outs[1]
    assert outs[0][700 * 1024 : 701 * 1024] == b"\x22" * 1024


@pytest.mark.parametrize("hash_alg", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"])
def test_pbkdf2_equals_hashlib(hash_alg: str) -> None:
    """luks.pbkdf2 runs through cryptography (faster); hashlib is the reference."""
    salt = os.urandom(32)
    for length in (16, 20, 64):
        ref = luks.hashlib.pbkdf2_hmac(hash_alg, b"pass phrase", salt, 1500, length)
        assert luks.pbkdf2(hash_alg, b"pass phrase", salt, 1500, length) == ref
