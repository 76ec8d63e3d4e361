"""qcow2 driver against the real qemu-img / qemu-io."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import pytest
from pyqemu.common.block import (
    BlockError,
    ImageCorrupt,
    Status,
    UnsupportedFeature,
    create_image,
    open_image,
)
from pyqemu.common.block.qcow2 import Qcow2

from tests.conftest import run

MiB = 1 << 20


def qcheck(qemu_img: str, path: str) -> subprocess.CompletedProcess[str]:
    return run([qemu_img, "check", "--output=json", path])


def assert_clean(qemu_img: str, path: str) -> dict:
    r = qcheck(qemu_img, path)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info.get("leaks", 0) == 0 and info.get("corruptions", 0) == 0
    return info


def assert_same(qemu_img: str, path: str, expected: bytes, tmp_path) -> None:
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    r = run([qemu_img, "compare", "-f", "qcow2", "-F", "raw", path, str(raw)])
    assert r.returncode == 0, r.stdout + r.stderr


def qio(qemu_io: str, path: str, *cmds: str, fmt: str = "qcow2") -> None:
    args = [qemu_io, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    r = run(args + [path])
    assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr


# --- create --------------------------------------------------------------------

CREATE_CASES = [
    {},
    {"compat": "0.10"},
    {"cluster_size": "512"},
    {"cluster_size": "4k", "refcount_bits": "1"},
    {"cluster_size": "2M", "refcount_bits": "64"},
    {"lazy_refcounts": "on", "compression_type": "zstd"},
    {"extended_l2": "on", "cluster_size": "128k"},
]


@pytest.mark.parametrize(
    "opts", CREATE_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
@pytest.mark.parametrize("size", [1 << 30, 3 * MiB + 512])
def test_create_matches_qemu_byte_for_byte(qemu_img, tmp_path, opts, size) -> None:
    ours = tmp_path / "ours.qcow2"
    theirs = tmp_path / "theirs.qcow2"
    create_image(str(ours), "qcow2", size, opts)
    o = ",".join(f"{k}={v}" for k, v in opts.items())
    r = run(
        [qemu_img, "create", "-q", "-f", "qcow2"]
        + (["-o", o] if o else [])
        + [str(theirs), str(size)]
    )
    assert r.returncode == 0, r.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    assert_clean(qemu_img, str(ours))


def test_create_with_backing_matches_qemu(qemu_img, tmp_path) -> None:
    base = tmp_path / "base.qcow2"
    create_image(str(base), "qcow2", 4 * MiB)
    ours = tmp_path / "ours.qcow2"
    theirs = tmp_path / "theirs.qcow2"
    create_image(
        str(ours), "qcow2", 4 * MiB, {"backing_file": "base.qcow2", "backing_fmt": "qcow2"}
    )
    r = run(
        [
            qemu_img,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            str(theirs),
            "4M",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    with open_image(str(ours)) as img:
        assert img.backing is not None and img.backing_format == "qcow2"


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"compat": "0.10"},
        {"compat": "v3", "backing_file": "b.qcow2", "backing_fmt": "qcow2"},
        {
            "cluster_size": "4k",
            "preallocation": "metadata",
            "lazy_refcounts": "on",
            "refcount_bits": "8",
        },
        {"extended_l2": "true", "compression_type": "zstd", "encryption": "off"},
        {"backing_fmt": "raw", "backing_file": "x"},
    ],
)
def test_create_summary_matches_qemu(qemu_img, tmp_path, opts) -> None:
    base = tmp_path / "b.qcow2"
    create_image(str(base), "qcow2", MiB)
    (tmp_path / "x").write_bytes(bytes(MiB))
    o = ",".join(f"{k}={v}" for k, v in opts.items())
    target = tmp_path / "t.qcow2"
    r = run(
        [qemu_img, "create", "-f", "qcow2"] + (["-o", o] if o else []) + [str(target), "1M"],
        cwd=str(tmp_path),
    )
    line = r.stdout.strip().splitlines()[0]
    pairs = " ".join(f"{k}={v}" for k, v in Qcow2.create_summary(MiB, opts))
    assert line == f"Formatting '{target}', fmt=qcow2 {pairs}"


def test_create_options_help_order(qemu_img) -> None:
    r = run([qemu_img, "create", "-f", "qcow2", "-o", "help"])
    names = [ln.split("=")[0].strip() for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert names == [o.name for o in Qcow2.create_options]


@pytest.mark.parametrize(
    "opts",
    [
        {"cluster_size": "1000"},
        {"cluster_size": "256"},
        {"cluster_size": "4M"},
        {"refcount_bits": "3"},
        {"refcount_bits": "128"},
        {"compat": "0.10", "lazy_refcounts": "on"},
        {"compat": "0.10", "refcount_bits": "8"},
        {"compat": "0.10", "extended_l2": "on"},
        {"compat": "0.10", "compression_type": "zstd"},
        {"compat": "2"},
        {"compression_type": "lz4"},
        {"preallocation": "foo"},
        {"backing_fmt": "raw"},
        {"extended_l2": "on", "cluster_size": "4k"},
    ],
)
def test_create_errors_match_qemu(qemu_img, tmp_path, opts) -> None:
    o = ",".join(f"{k}={v}" for k, v in opts.items())
    target = tmp_path / "t.qcow2"
    r = run([qemu_img, "create", "-q", "-f", "qcow2", "-o", o, str(target), "1M"])
    assert r.returncode == 1
    expected = r.stderr.strip().split(": ", 2)[2]
    with pytest.raises(BlockError) as exc:
        create_image(str(tmp_path / "o.qcow2"), "qcow2", MiB, opts)
    assert str(exc.value) == expected


@pytest.mark.parametrize("opts", [{"data_file": "d.raw"}])
def test_create_unsupported_is_refused(tmp_path, opts) -> None:
    with pytest.raises(UnsupportedFeature, match="not supported yet"):
        create_image(str(tmp_path / "o.qcow2"), "qcow2", MiB, opts)


# --- random I/O against a bytearray model ------------------------------------------

IO_CASES = [
    {"cluster_size": "512"},
    {"cluster_size": "4k", "refcount_bits": "1"},
    {},
    {"compat": "0.10"},
    {"refcount_bits": "64"},
    {"extended_l2": "on", "cluster_size": "32k"},
    {"cluster_size": "2M"},
    {"lazy_refcounts": "on", "cluster_size": "4k"},
]


@pytest.mark.parametrize(
    "opts", IO_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_random_io_model(qemu_img, tmp_path, opts) -> None:
    rng = random.Random(42)
    size = 8 * MiB
    path = str(tmp_path / "t.qcow2")
    create_image(path, "qcow2", size, opts)
    model = bytearray(size)
    with open_image(path, read_only=False) as img:
        cs = img.cluster_size
        for _ in range(120):
            off = rng.randrange(size)
            n = min(rng.randrange(1, 3 * cs + 5000), size - off)
            op = rng.random()
            if op < 0.6:
                data = rng.randbytes(n)
                img.write(off, data)
                model[off : off + n] = data
            elif op < 0.8:
                img.write_zeroes(off, n, may_unmap=rng.random() < 0.5)
                model[off : off + n] = bytes(n)
            else:
                img.discard(off, n)
                a = -(-off // cs) * cs
                b = (off + n) // cs * cs if off + n < size else size
                if a < b:
                    model[a:b] = bytes(b - a)
        assert img.read(0, size) == model
    assert_clean(qemu_img, path)
    assert_same(qemu_img, path, bytes(model), tmp_path)


# --- images written by qemu-io read back -------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        "compression_type=zlib",
        "compression_type=zstd",
        "extended_l2=on",
        "compat=0.10",
        "cluster_size=512",
        "cluster_size=2M,refcount_bits=1",
    ],
)
def test_read_qemu_written_image(qemu_img, qemu_io, tmp_path, opts) -> None:
    path = str(tmp_path / "q.qcow2")
    r = run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, path, "8M"])
    assert r.returncode == 0, r.stderr
    cs = 2 * MiB if "2M" in opts else 512 if "512" in opts else 65536
    cmds = [
        "write -P 0xab 0 64k",
        f"write -c -P 0xcd {2 * MiB + 2 * cs} {cs}",
        "write -P 0x11 1M 300k",
        "write -z 1100k 64k",
        "discard 1200k 128k",
        "write -P 0x22 3M 4k",
        f"write -c -P 0x33 {4 * MiB} {cs}",
    ]
    if "0.10" in opts:
        cmds = [c for c in cmds if "-z" not in c]
    qio(qemu_io, path, *cmds)
    raw = tmp_path / "q.raw"
    assert run([qemu_img, "convert", "-O", "raw", path, str(raw)]).returncode == 0
    with open_image(path) as img:
        assert img.read(0, img.size) == raw.read_bytes()


def test_reads_with_backing_and_cow(qemu_img, qemu_io, tmp_path) -> None:
    base = str(tmp_path / "base.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", base, "4M"])
    qio(qemu_io, base, "write -P 0x5a 0 4M")
    top = str(tmp_path / "top.qcow2")
    create_image(
        top, "qcow2", 6 * MiB, {"backing_file": base, "backing_fmt": "qcow2", "cluster_size": "64k"}
    )
    expected = bytearray(b"\x5a" * (4 * MiB) + bytes(2 * MiB))
    with open_image(top, read_only=False) as img:
        for off, n in ((100, 10), (70000, 200000), (4 * MiB - 5, 10), (5 * MiB, 3)):
            img.write(off, b"\x01" * n)
            expected[off : off + n] = b"\x01" * n
        img.write_zeroes(2 * MiB, 65536)
        expected[2 * MiB : 2 * MiB + 65536] = bytes(65536)
        img.discard(3 * MiB, 65536)  # v3 with backing: reads as zero
        expected[3 * MiB : 3 * MiB + 65536] = bytes(65536)
        assert img.read(0, img.size) == expected
    assert_clean(qemu_img, top)
    assert_same(qemu_img, top, bytes(expected), tmp_path)
    # allocation: only the touched clusters are in the overlay
    m = json.loads(run([qemu_img, "map", "--output=json", top]).stdout)
    top_bytes = sum(e["length"] for e in m if e["depth"] == 0 and e["data"])
    assert top_bytes == 8 * 65536


def test_extended_l2_subcluster_cow(qemu_img, qemu_io, tmp_path) -> None:
    base = str(tmp_path / "base.raw")
    with open(base, "wb") as f:
        f.write(b"\x77" * MiB)
    top = str(tmp_path / "top.qcow2")
    create_image(
        top, "qcow2", MiB, {"backing_file": base, "backing_fmt": "raw", "extended_l2": "on"}
    )
    expected = bytearray(b"\x77" * MiB)
    with open_image(top, read_only=False) as img:
        img.write(5000, b"\x09" * 100)  # one 2 KiB subcluster allocated
        expected[5000:5100] = b"\x09" * 100
        st = img.block_status(0, 65536)
        assert st.flags == Status.OFFSET_VALID and st.length == 4096
        st = img.block_status(4096, 65536 - 4096)
        assert st.flags & Status.DATA and st.length == 2048
        st = img.block_status(6144, 65536 - 6144)
        assert st.flags == Status.OFFSET_VALID
    assert_clean(qemu_img, top)
    assert_same(qemu_img, top, bytes(expected), tmp_path)
    r = run([qemu_io, "-f", "qcow2", "-c", "map", top])
    assert "2 KiB (0x800) bytes     allocated at offset 4 KiB" in r.stdout


# --- compressed writes -----------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
@pytest.mark.parametrize("cluster", ["4k", "64k"])
def test_compressed_writes(qemu_img, tmp_path, ctype, cluster) -> None:
    path = str(tmp_path / "c.qcow2")
    size = MiB + 4096 + 1024
    create_image(path, "qcow2", size, {"compression_type": ctype, "cluster_size": cluster})
    rng = random.Random(1)
    expected = bytearray(size)
    with open_image(path, read_only=False) as img:
        cs = img.cluster_size
        for off in range(0, size, cs):
            n = min(cs, size - off)
            data = (bytes([rng.randrange(4)]) * 64 + rng.randbytes(8)) * (n // 72) + bytes(n % 72)
            if off // cs % 3 == 0:
                packed = img.compress_cluster(data)
                assert packed is not None and len(packed) < cs
                img.write_compressed_raw(off, packed)
            else:
                img.write_compressed(off, data)
            expected[off : off + n] = data
        img.write_compressed(cs * 5, os.urandom(cs))  # incompressible: a normal cluster
        expected[cs * 5 : cs * 6] = img.read(cs * 5, cs)
        assert img.read(0, size) == expected
        # rewriting part of a compressed cluster moves it to a normal one
        img.write(cs + 10, b"xyz")
        expected[cs + 10 : cs + 13] = b"xyz"
        img.write_zeroes(2 * cs, cs, may_unmap=True)
        expected[2 * cs : 3 * cs] = bytes(cs)
    info = assert_clean(qemu_img, path)
    assert info["compressed-clusters"] > 0
    assert_same(qemu_img, path, bytes(expected), tmp_path)


# --- block status -----------------------------------------------------------------------


def test_block_status_matches_qemu_map(qemu_img, qemu_io, tmp_path) -> None:
    path = str(tmp_path / "m.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", path, "4M"])
    qio(
        qemu_io,
        path,
        "write 0 128k",
        "write -c 256k 64k",
        "write -z 512k 64k",
        "write 1M 64k",
        "write -z -u 1M 64k",
        "write 2M 192k",
    )
    from pyqemu.common.block import block_status_above

    theirs = json.loads(run([qemu_img, "map", "--output=json", path]).stdout)
    with open_image(path) as img:
        ours = []
        off = 0
        while off < img.size:
            r = block_status_above(img, off, img.size - off)
            ours.append((r.start, r.length, r.data, (r.zero, r.present), r.offset))
            off += r.length
    merged: list[tuple] = []
    for s, n, d, z, o in ours:
        if (
            merged
            and merged[-1][2:4] == (d, z)
            and (
                o is None
                and merged[-1][4] is None
                or o is not None
                and merged[-1][4] is not None
                and merged[-1][4] + merged[-1][1] == o
            )
        ):
            ps, pn, pd, pz, po = merged[-1]
            merged[-1] = (ps, pn + n, pd, pz, po)
        else:
            merged.append((s, n, d, z, o))
    assert merged == [
        (e["start"], e["length"], e["data"], (e["zero"], e["present"]), e.get("offset"))
        for e in theirs
    ]


# --- preallocation, resize ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["off", "metadata", "falloc", "full"])
def test_preallocation(qemu_img, tmp_path, mode) -> None:
    path = str(tmp_path / "p.qcow2")
    create_image(path, "qcow2", 3 * MiB, {"preallocation": mode})
    assert_clean(qemu_img, path)
    m = json.loads(run([qemu_img, "map", "--output=json", path]).stdout)
    if mode == "off":
        assert all(not e["data"] for e in m)
    else:
        assert all(e["data"] and "offset" in e for e in m)
        assert os.path.getsize(path) >= 3 * MiB
    with open_image(path, read_only=False) as img:
        img.write(MiB, b"a" * 100)
        assert img.read(MiB - 1, 102) == b"\0" + b"a" * 100 + b"\0"
    assert_clean(qemu_img, path)


@pytest.mark.parametrize("prealloc", ["off", "metadata", "full"])
def test_resize_grow_and_shrink(qemu_img, tmp_path, prealloc) -> None:
    path = str(tmp_path / "r.qcow2")
    create_image(path, "qcow2", MiB, {"cluster_size": "4k"})
    with open_image(path, read_only=False) as img:
        img.write(0, b"\x42" * MiB)
        img.truncate(300 * MiB, prealloc=prealloc)  # L1 grows
        img.write(299 * MiB, b"\x43" * 4096)
        assert img.size == 300 * MiB
    assert_clean(qemu_img, path)
    info = json.loads(run([qemu_img, "info", "--output=json", path]).stdout)
    assert info["virtual-size"] == 300 * MiB
    with open_image(path, read_only=False) as img:
        img.truncate(MiB // 2)
        assert img.read(0, MiB // 2) == b"\x42" * (MiB // 2)
    assert_clean(qemu_img, path)
    assert_same(qemu_img, path, b"\x42" * (MiB // 2), tmp_path)
    assert os.path.getsize(path) < 2 * MiB


def test_resize_errors(tmp_path) -> None:
    path = str(tmp_path / "r.qcow2")
    create_image(path, "qcow2", MiB)
    with open_image(path, read_only=False) as img:
        with pytest.raises(BlockError, match="Preallocation can't be used for shrinking"):
            img.truncate(4096, prealloc="full")
        with pytest.raises(BlockError, match="multiple of 512"):
            img.truncate(MiB + 1)


# --- info ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        "compat=0.10",
        "compat=1.1",
        "lazy_refcounts=on,compression_type=zstd,extended_l2=on,refcount_bits=4",
    ],
)
def test_specific_info_matches_qemu(qemu_img, tmp_path, opts) -> None:
    path = str(tmp_path / "i.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, path, "1M"])
    theirs = json.loads(run([qemu_img, "info", "--output=json", path]).stdout)
    with open_image(path) as img:
        assert img.specific_info() == theirs["format-specific"]["data"]
        assert list(img.specific_info()) == list(theirs["format-specific"]["data"])
        assert img.cluster_size == theirs["cluster-size"]
        assert img.dirty is False


def test_bitmaps_maintained_and_autoclear_kept(qemu_img, tmp_path) -> None:
    # bitmaps are maintained (see test_qcow2_bitmap.py): a rw open keeps them valid
    path = str(tmp_path / "b.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", path, "1M"])
    assert run([qemu_img, "bitmap", "--add", path, "b0"]).returncode == 0
    theirs = json.loads(run([qemu_img, "info", "--output=json", path]).stdout)
    with open_image(path) as img:
        assert img.specific_info() == theirs["format-specific"]["data"]
    with open_image(path, read_only=False) as img:
        img.write(0, b"x")
        assert img.header.extension(0x23852875) is not None
    hdr = open(path, "rb").read(112)
    assert struct.unpack_from(">Q", hdr, 88)[0] == 1  # autoclear bit 'bitmaps' kept
    after = json.loads(run([qemu_img, "info", "--output=json", path]).stdout)
    assert after["format-specific"]["data"] == theirs["format-specific"]["data"]
    assert_clean(qemu_img, path)


# --- lazy refcounts, corruption, hostile headers -----------------------------------------------


def test_lazy_refcounts_dirty_image_is_repaired(qemu_img, tmp_path) -> None:
    path = str(tmp_path / "l.qcow2")
    create_image(path, "qcow2", 4 * MiB, {"lazy_refcounts": "on"})
    code = (
        "import os,sys\n"
        "from pyqemu.common.block import open_image\n"
        f"img = open_image({path!r}, read_only=False)\n"
        "img.write(0, b'a' * 300000)\n"
        "img.flush()\n"
        "img.write(2 << 20, b'b' * 70000)\n"
        "img.flush()\n"
        "assert img.dirty\n"
        "os._exit(0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    with open_image(path) as img:
        assert img.dirty
    with open_image(path, read_only=False) as img:
        assert not img.dirty
        assert img.read(0, 300000) == b"a" * 300000
    assert_clean(qemu_img, path)
    assert json.loads(run([qemu_img, "info", "--output=json", path]).stdout)["dirty-flag"] is False


def test_corrupt_bit(qemu_img, qemu_io, tmp_path, capfd) -> None:
    path = str(tmp_path / "c.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", path, "1M"])
    qio(qemu_io, path, "write 0 64k")
    with open(path, "r+b") as f:
        f.seek(196608)  # L1 entry 0: an unaligned L2 offset
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(196608)
        f.write(struct.pack(">Q", l1 + 0x200))
    with open_image(path, read_only=False) as img:
        with pytest.raises(ImageCorrupt, match="L2 table offset 0x40200 unaligned"):
            img.read(0, 512)
    assert (
        "qcow2: Marking image as corrupt: L2 table offset 0x40200 unaligned (L1 index: 0x0); further corruption events will be suppressed"
        in capfd.readouterr().err
    )
    with pytest.raises(BlockError, match="qcow2: Image is corrupt; cannot be opened read/write"):
        open_image(path, read_only=False)
    with open_image(path) as img:
        assert img.specific_info()["corrupt"] is True
        with pytest.raises(ImageCorrupt):
            img.read(65536, 512)
    assert "qcow2: Image is corrupt: L2 table offset" in capfd.readouterr().err
    info = json.loads(run([qemu_img, "info", "--output=json", path]).stdout)
    assert info["format-specific"]["data"]["corrupt"] is True


def test_overlap_with_metadata_is_refused(qemu_img, tmp_path, capfd) -> None:
    path = str(tmp_path / "o.qcow2")
    create_image(path, "qcow2", MiB)
    with open(path, "r+b") as f:  # refcount of the L1 cluster dropped: allocator would reuse it
        f.seek(2 * 65536 + 3 * 2)
        f.write(b"\0\0")
    with open_image(path, read_only=False) as img:
        with pytest.raises(ImageCorrupt, match="Preventing invalid write on metadata"):
            img.write(0, b"x" * 512)
    assert "Marking image as corrupt" in capfd.readouterr().err


def _patched(tmp_path, qemu_img, fmt: str, offset: int, value: int) -> str:
    path = str(tmp_path / "h.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", path, "1M"])
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    return path


@pytest.mark.parametrize(
    "fmt,offset,value",
    [
        (">I", 4, 4),  # version
        (">Q", 72, 1 << 9),  # unknown incompatible bit
        (">I", 20, 8),  # cluster bits
        (">I", 36, 0),  # l1_size too small
        (">Q", 40, 0x30001),  # L1 offset unaligned
        (">Q", 48, 0x10001),  # reftable offset unaligned
        (">I", 56, 0),  # no reftable
        (">I", 56, 1 << 20),  # reftable too large
        (">I", 36, 1 << 30),  # L1 too large
    ],
)
def test_hostile_headers(qemu_img, tmp_path, fmt, offset, value) -> None:
    path = _patched(tmp_path, qemu_img, fmt, offset, value)
    r = run([qemu_img, "info", path])
    assert r.returncode == 1
    with pytest.raises(BlockError) as exc:
        open_image(path)
    assert str(exc.value) in r.stderr


def test_external_data_file_refused(qemu_img, tmp_path) -> None:
    path = _patched(tmp_path, qemu_img, ">Q", 72, 1 << 2)
    with pytest.raises(UnsupportedFeature, match="not supported yet"):
        open_image(path)


def test_garbage_never_escapes(tmp_path) -> None:
    rng = random.Random(7)
    good = tmp_path / "g.qcow2"
    create_image(str(good), "qcow2", 4 * MiB)
    with open_image(str(good), read_only=False) as img:
        img.write(0, b"z" * 300000)
    data = good.read_bytes()
    for i in range(150):
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            pos = (
                rng.randrange(min(len(buf), 4096))
                if rng.random() < 0.7
                else rng.randrange(len(buf))
            )
            buf[pos] = rng.randrange(256)
        path = tmp_path / f"f{i % 3}.qcow2"
        path.write_bytes(bytes(buf))
        try:
            with open_image(str(path), fmt="qcow2") as img:
                img.read(0, min(img.size, 400000))
        except BlockError:
            pass


# --- crash safety ---------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["512", "64k"])
def test_sigkill_leaves_only_leaks(qemu_img, tmp_path, cluster) -> None:
    path = str(tmp_path / "k.qcow2")
    create_image(path, "qcow2", 64 * MiB, {"cluster_size": cluster})
    code = (
        "import os, random, signal, threading\n"
        "from pyqemu.common.block import open_image\n"
        f"img = open_image({path!r}, read_only=False)\n"
        "rng = random.Random(3)\n"
        "threading.Timer(0.4, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n"
        "while True:\n"
        "    off = rng.randrange(64 << 20); n = min(rng.randrange(1, 300000), (64 << 20) - off)\n"
        "    r = rng.random()\n"
        "    if r < 0.6: img.write(off, b'q' * n)\n"
        "    elif r < 0.8: img.discard(off, n)\n"
        "    elif r < 0.9: img.write_zeroes(off, n, may_unmap=True)\n"
        "    else: img.flush()\n"
    )
    p = subprocess.run([sys.executable, "-c", code])
    assert p.returncode == -9
    r = qcheck(qemu_img, path)
    info = json.loads(r.stdout)
    assert info.get("corruptions", 0) == 0, r.stdout
    assert r.returncode in (0, 3)


def test_write_over_internal_snapshot_copies(qemu_img, qemu_io, tmp_path) -> None:
    path = str(tmp_path / "s.qcow2")
    run([qemu_img, "create", "-q", "-f", "qcow2", path, "2M"])
    qio(qemu_io, path, "write -P 0x61 0 1M", "write -c -P 0x62 1M 64k")
    assert run([qemu_img, "snapshot", "-c", "snap1", path]).returncode == 0
    with open_image(path, read_only=False) as img:
        img.write(100, b"new")
        img.write(MiB + 10, b"new")
        img.write_zeroes(512 * 1024, 65536, may_unmap=True)
    assert_clean(qemu_img, path)
    expected = bytearray(b"\x61" * MiB + b"\x62" * 65536 + bytes(MiB - 65536))
    expected[100:103] = b"new"
    expected[MiB + 10 : MiB + 13] = b"new"
    expected[512 * 1024 : 512 * 1024 + 65536] = bytes(65536)
    assert_same(qemu_img, path, bytes(expected), tmp_path)
    snap = tmp_path / "snap.raw"
    r = run([qemu_img, "convert", "-l", "snap1", "-O", "raw", path, str(snap)])
    assert r.returncode == 0, r.stderr
    assert snap.read_bytes() == b"\x61" * MiB + b"\x62" * 65536 + bytes(MiB - 65536)


def test_check_repairs_leaks_then_allocator_continues(qemu_img, tmp_path) -> None:
    path = str(tmp_path / "c.qcow2")
    create_image(path, "qcow2", 4 * MiB)
    with open(path, "r+b") as f:  # leak cluster 5 and 6
        f.truncate(10 * 65536)
        f.seek(2 * 65536 + 5 * 2)
        f.write(b"\0\1\0\1")
    from pyqemu.common.block import FIX_LEAKS

    with open_image(path, read_only=False) as img:
        result = img.check(FIX_LEAKS)
        assert result.leaks_fixed == 2 and result.corruptions == 0
        img.write(0, b"k" * 200000)
        assert img.read(0, 200000) == b"k" * 200000
    assert_clean(qemu_img, path)


def test_no_flush_option(qemu_img, tmp_path) -> None:
    path = str(tmp_path / "n.qcow2")
    create_image(path, "qcow2", 8 * MiB, {"cluster_size": "512"})
    data = random.Random(5).randbytes(3 * MiB)
    with open_image(path, read_only=False, options={"cache.no-flush": "on"}) as img:
        assert img.no_flush
        img.write(4096, data)
    assert_clean(qemu_img, path)
    assert_same(qemu_img, path, bytes(4096) + data + bytes(5 * MiB - 4096), tmp_path)
