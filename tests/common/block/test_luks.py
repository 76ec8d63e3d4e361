"""LUKS volumes (common/block/crypto/luks.py), secret objects (common/objects.py)
and LUKS-encrypted qcow2 through the block layer, checked against real
qemu-img and qemu-io."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyqemu.common import objects
from pyqemu.common.block import BlockError, Status, create_image, open_image
from pyqemu.common.block.crypto import luks, metadata_only

PASSWORD = "123456"
SECRET = f"secret,id=sec0,data={PASSWORD}"
ENC = {"encrypt.format": "luks", "encrypt.key-secret": "sec0", "encrypt.iter-time": "10"}


@pytest.fixture(autouse=True)
def secret() -> Iterator[None]:
    objects.remove_all()
    objects.add_object(SECRET)
    yield
    objects.remove_all()


def _opts(path: Path, **extra: str) -> dict[str, str]:
    return {"driver": "qcow2", "encrypt.key-secret": "sec0", "file.filename": str(path), **extra}


def _image_opts(path: Path) -> list[str]:
    return ["--image-opts", f"driver=qcow2,encrypt.key-secret=sec0,file.filename={path}"]


def _qemu_io(qemu_io: str, path: Path, *cmds: str) -> subprocess.CompletedProcess[str]:
    args = [qemu_io, "--object", SECRET, *_image_opts(path)]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True)


# --- secret objects -------------------------------------------------------------


def test_secret_objects(tmp_path: Path) -> None:
    objects.add_object("secret,id=b64,data=cHcK,format=base64")
    assert objects.secret_bytes("b64") == b"pw\n"
    f = tmp_path / "pw"
    f.write_bytes(b"from-file\n")
    objects.add_object(f"secret,id=f,file={f}")
    assert objects.secret_bytes("f") == b"from-file\n"
    assert objects.secret_utf8("sec0") == PASSWORD.encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("secret,data=1", "Parameter 'id' is missing"),
        ("foo,id=x", "Parameter 'qom-type' does not accept value 'foo'"),
        ("id=x", "Parameter 'qom-type' is missing"),
        ("secret,id=s", "Either 'file' or 'data' must be provided"),
        ("secret,id=s,data=1,format=xx", "Parameter 'format' does not accept value 'xx'"),
        ("secret,id=s,data=!!,format=base64", "Base64 data contains invalid characters"),
        ("secret,id=s,data=1,file=/x", "'file' and 'data' are mutually exclusive"),
        ("secret,id=s,data=1,bogus=2", "Parameter 'bogus' is unexpected"),
        ("secret,id=s,data=1,keyid=k", "No secret with id 'k'"),
        ("secret,id=sec0,data=2", "attempt to add duplicate property 'sec0'"),
        ("secret,id=0bad,data=1", "Parameter 'id' expects an identifier"),
    ],
)
def test_secret_object_errors(text: str, message: str) -> None:
    with pytest.raises(objects.ObjectError) as exc:
        objects.add_object(text)
    assert exc.value.message.startswith(message)


def test_missing_secret() -> None:
    with pytest.raises(objects.ObjectError, match="No secret with id 'nope'"):
        objects.secret_bytes("nope")


# --- LUKS primitives --------------------------------------------------------------


@pytest.mark.parametrize("hash_alg", ["sha1", "sha256", "sha512"])
def test_af_split_merge_round_trip(hash_alg: str) -> None:
    key = bytes(range(64))
    material = luks.af_split(hash_alg, key, 50)
    assert len(material) == 64 * 50
    assert luks.af_merge(hash_alg, material, 64, 50) == key
    # one changed byte of key material gives another key (flip it: the random
    # split may already end in a zero byte)
    assert luks.af_merge(hash_alg, material[:-1] + bytes([material[-1] ^ 1]), 64, 50) != key


@pytest.mark.parametrize(
    ("alg", "mode", "ivgen"),
    [
        ("aes-256", "xts", "plain64"),
        ("aes-128", "xts", "plain"),
        ("aes-256", "cbc", "essiv"),
        ("aes-128", "ctr", "plain64"),
        ("aes-192", "cbc", "plain64"),
        ("aes-128", "ecb", "plain64"),
    ],
)
def test_volume_create_open(alg: str, mode: str, ivgen: str) -> None:
    params = luks.params_from_options({"cipher-alg": alg, "cipher-mode": mode, "ivgen-alg": ivgen})
    volume, area = luks.Volume.create(params, b"pw", 10)
    assert len(area) == volume.payload_offset
    header = luks.Header.parse(area)
    assert header.pack() == area[: luks.HEADER_LEN]
    assert header.slots[0].active == luks.SLOT_ENABLED
    assert all(s.active == luks.SLOT_DISABLED for s in header.slots[1:])

    def read(pos: int, n: int) -> bytes:
        return area[pos : pos + n]

    opened = luks.Volume.open(read, b"pw")
    assert opened.cipher is not None and volume.cipher is not None
    data = random.Random(1).randbytes(2048)
    enc = volume.cipher.encrypt(4096, data)
    assert enc != data
    assert opened.cipher.decrypt(4096, enc) == data
    # the IV depends on the sector number
    assert volume.cipher.encrypt(4608, data) != enc or mode == "ecb"
    with pytest.raises(luks.LuksError, match="Invalid password, cannot unlock any keyslot"):
        luks.Volume.open(read, b"wrong")
    assert luks.Volume.open(read, None).cipher is None


def test_volume_layout_matches_qemu() -> None:
    """Slot offsets and payload offset as QEMU 7.2 writes them for aes-256-xts."""
    volume, _ = luks.Volume.create(luks.params_from_options({}), b"pw", 10)
    info = volume.info()
    assert [s["key-offset"] for s in info["slots"]] == [
        4096,
        262144,
        520192,
        778240,
        1036288,
        1294336,
        1552384,
        1810432,
    ]
    assert info["payload-offset"] == 2068480
    assert (info["cipher-alg"], info["cipher-mode"], info["ivgen-alg"], info["hash-alg"]) == (
        "aes-256",
        "xts",
        "plain64",
        "sha256",
    )


def test_bad_header() -> None:
    with pytest.raises(luks.LuksError, match="Volume is not in LUKS format"):
        luks.Header.parse(bytes(592))
    with pytest.raises(luks.LuksError, match="Volume is not in LUKS format"):
        luks.Header.parse(b"LUKS")


def test_unsupported_cipher_refused() -> None:
    params = luks.params_from_options({"cipher-alg": "twofish-128"})
    with pytest.raises(BlockError, match="twofish-128 is not supported by pyqemu"):
        luks.Volume.create(params, b"pw", 10)


# --- qcow2 with LUKS -------------------------------------------------------------


def test_qcow2_model_and_qemu_reads(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    """Unaligned writes through ours match a bytearray model; qemu-io reads the
    same bytes, and qemu-img check finds the image clean."""
    path = tmp_path / "a.qcow2"
    size = 3 << 20
    create_image(str(path), "qcow2", size, ENC)
    model = bytearray(size)
    rng = random.Random(7)
    node = open_image(None, None, options=_opts(path), read_only=False)
    try:
        for _ in range(40):
            off = rng.randrange(size - 1)
            n = rng.randrange(1, min(200000, size - off))
            byte = rng.randrange(1, 256)
            node.write(off, bytes([byte]) * n)
            model[off : off + n] = bytes([byte]) * n
        node.write_zeroes(65536, 65536)
        model[65536:131072] = bytes(65536)
        assert node.read(0, size) == bytes(model)
        assert node.block_status(0, 65536).flags & Status.OFFSET_VALID == 0
        with pytest.raises(BlockError, match="Input/output error"):
            node.write_compressed(0, bytes(65536))
    finally:
        node.close()
    dump = tmp_path / "dump.raw"
    r = subprocess.run(
        [
            qemu_img,
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            f"driver=qcow2,encrypt.key-secret=sec0,file.filename={path}",
            "-O",
            "raw",
            str(dump),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert dump.read_bytes() == bytes(model)
    r = subprocess.run(
        [qemu_img, "check", "--object", SECRET, *_image_opts(path)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout


def test_qemu_written_image_reads_identical(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    path = tmp_path / "q.qcow2"
    cmd = [qemu_img, "create", "-f", "qcow2", "--object", SECRET, "-o"]
    cmd += ["encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", str(path), "2M"]
    for _ in range(10):  # qemu-img 7.2 now and then fails to time PBKDF2
        r = subprocess.run(cmd, capture_output=True, text=True)
        if "Unable to get accurate CPU usage" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    r = _qemu_io(
        qemu_io, path, "write -P 0x11 0 65536", "write -P 0x22 70000 3333", "write -P 0x33 1M 1M"
    )
    assert r.returncode == 0, r.stderr
    expect = bytearray(2 << 20)
    expect[0:65536] = b"\x11" * 65536
    expect[70000:73333] = b"\x22" * 3333
    expect[1 << 20 :] = b"\x33" * (1 << 20)
    node = open_image(None, None, options=_opts(path))
    try:
        assert node.read(0, 2 << 20) == bytes(expect)
        info = node.specific_info()["encrypt"]
        assert info["format"] == "luks" and info["slots"][0]["active"] is True
    finally:
        node.close()
    # we write, qemu-io reads
    node = open_image(None, None, options=_opts(path), read_only=False)
    try:
        node.write(100, b"\x44" * 1000)
    finally:
        node.close()
    r = _qemu_io(qemu_io, path, "read -P 0x44 100 1000", "read -P 0x11 1100 64436")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def test_qcow2_open_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    create_image(str(path), "qcow2", 1 << 20, ENC)
    with pytest.raises(BlockError, match="Parameter 'encrypt.key-secret' is required for cipher"):
        open_image(str(path))
    with pytest.raises(objects.ObjectError, match="No secret with id 'sec1'"):
        open_image(None, None, options=_opts(path, **{"encrypt.key-secret": "sec1"}))
    objects.add_object("secret,id=bad,data=654321")
    with pytest.raises(BlockError, match="Invalid password, cannot unlock any keyslot"):
        open_image(None, None, options=_opts(path, **{"encrypt.key-secret": "bad"}))
    with pytest.raises(BlockError, match="Header reported 'luks' encryption format"):
        open_image(None, None, options=_opts(path, **{"encrypt.format": "aes"}))
    with metadata_only():
        node = open_image(str(path))
    try:
        assert node.encrypted
        assert node.specific_info()["encrypt"]["format"] == "luks"
        with pytest.raises(BlockError, match="key-secret' is required"):
            node.read(0, 512)
    finally:
        node.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encrypt.format": "luks"}, "Parameter 'encrypt.key-secret' is required for cipher"),
        ({"encrypt.key-secret": "sec0"}, "Parameter 'encrypt.format' is missing"),
        ({**ENC, "encrypt.key-secret": "nope"}, "No secret with id 'nope'"),
        ({**ENC, "encrypt.cipher-alg": "foo"}, "Parameter 'cipher-alg' does not accept value"),
        ({**ENC, "encrypt.iter-time": "abc"}, "Parameter 'encrypt.iter-time' expects a number"),
        ({"encrypt.format": "foo"}, "Parameter 'format' does not accept value 'foo'"),
        ({"encryption": "on"}, "Parameter 'encrypt.key-secret' is required for cipher"),
    ],
)
def test_create_option_errors(tmp_path: Path, options: dict[str, str], message: str) -> None:
    with pytest.raises((BlockError, objects.ObjectError)) as exc:
        create_image(str(tmp_path / "x.qcow2"), "qcow2", 1 << 20, options)
    assert message in exc.value.message
