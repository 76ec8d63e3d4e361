"""Structured READ replies: OFFSET_HOLE chunks where block status says zero,
chunk for chunk as qemu-nbd sends them for the same image (seen through
libnbd's chunk callback), and one OFFSET_DATA chunk with NBD_CMD_FLAG_DF."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from .conftest import SYSTEM_PYTHON, env_clean, run

# runs under the system python (libnbd's binding): prints, per read, the chunks
# as [offset, length, "D"|"H", md5 of the bytes], and the md5 of the whole export
CLIENT = r"""
import hashlib, json, sys
import nbd

sock, reqs = sys.argv[1], json.loads(sys.argv[2])
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sock)
size = h.get_size()
out = []
for off, n, df in reqs:
    chunks = []

    def cb(buf, o, st, err):
        kind = {nbd.READ_DATA: "D", nbd.READ_HOLE: "H"}.get(st, str(st))
        chunks.append([o, len(buf), kind, hashlib.md5(buf).hexdigest()])
        return 0

    h.pread_structured(n, off, cb, nbd.CMD_FLAG_DF if df else 0)
    out.append(chunks)
whole = hashlib.md5()
pos = 0
while pos < size:
    n = min(size - pos, 1 << 20)
    whole.update(h.pread(n, pos))
    pos += n
print(json.dumps({"reads": out, "md5": whole.hexdigest(), "size": size}))
h.shutdown()
"""


def reads(tmp_path: Path, sock: str, reqs: list[list[int]]) -> dict:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = subprocess.run(
        [SYSTEM_PYTHON, str(script), sock, json.dumps(reqs)],
        capture_output=True, text=True, check=True, timeout=120, env=env_clean(),
    ).stdout  # fmt: skip
    return json.loads(out)


def qemu_io(path: str, fmt: str, *cmds: str) -> None:
    args = []
    for c in cmds:
        args += ["-c", c]
    run("qemu-io", "-f", fmt, *args, path)


def md5_convert(tmp_path: Path, path: str, fmt: str, size: int) -> str:
    out = tmp_path / "conv.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, str(out))
    data = out.read_bytes()
    return hashlib.md5(data + bytes(size - len(data))).hexdigest()


def sparse_raw(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "s.raw"
    with open(path, "wb") as f:
        f.truncate(1000000)  # not a multiple of 512: the export has a zero tail
        f.seek(65536)
        f.write(b"x" * 65536)
        f.seek(300000)
        f.write(b"y" * 1000)
    return str(path), "raw"


def qcow2_kinds(tmp_path: Path) -> tuple[str, str]:
    path = str(tmp_path / "k.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
    qemu_io(path, "qcow2", "write -P 1 0 64k", "write -z 128k 64k", "write -P 2 200k 4k",
            "write -z 512k 512k")  # fmt: skip
    return path, "qcow2"


def backing_chain(tmp_path: Path) -> tuple[str, str]:
    base = str(tmp_path / "base.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
    qemu_io(base, "qcow2", "write -P 1 0 256k", "write -P 3 640k 128k")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "qcow2", "write -P 2 128k 256k", "write -z 640k 64k")
    return top, "qcow2"


def compressed(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "c.raw"
    with open(src, "wb") as f:
        f.truncate(1 << 20)
        f.seek(100000)
        f.write(bytes(range(256)) * 512)
    path = str(tmp_path / "c.qcow2")
    run("qemu-img", "convert", "-c", "-O", "qcow2", str(src), path)
    return path, "qcow2"


IMAGES = {
    "sparse-raw": sparse_raw,
    "qcow2-kinds": qcow2_kinds,
    "backing": backing_chain,
    "compressed": compressed,
}

REQS = [
    [0, 1 << 20, 0],
    [0, 1 << 20, 1],  # DF: one data chunk
    [60000, 10000, 0],
    [65536, 65536, 0],
    [100000, 300000, 0],
    [0, 4096, 0],
    [131072, 65536, 0],
    [204800, 8192, 0],
    [655360, 131072, 0],
]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_chunks_same_as_qemu_nbd(tmp_path, server, kind) -> None:
    path, fmt = IMAGES[kind](tmp_path)
    _, py = server("py", "-t", "-r", "-f", fmt, path)
    _, q = server("qemu", "-t", "-r", "-f", fmt, path)
    size = reads(tmp_path, q, [])["size"]
    reqs = [r for r in REQS if r[0] + r[1] <= size] + [[size - 4096, 4096, 0]]
    ours, theirs = reads(tmp_path, py, reqs), reads(tmp_path, q, reqs)
    assert ours == theirs
    kinds = {c[2] for chunks in ours["reads"] for c in chunks}
    assert kinds == {"D", "H"}  # the images mix data and zeroes
    df = ours["reads"][reqs.index([0, 1 << 20, 1])] if [0, 1 << 20, 1] in reqs else None
    if df is not None:
        assert [c[:3] for c in df] == [[0, 1 << 20, "D"]]
    assert ours["md5"] == md5_convert(tmp_path, path, fmt, size)


def test_chunks_after_writes_and_zeroes(tmp_path, server) -> None:
    """Writes and unmapping zero writes through the server change what reads
    as holes, as on qemu-nbd (a cached data run never hides a later hole)."""
    script = tmp_path / "w.py"
    script.write_text(
        "import nbd, sys\n"
        "h = nbd.NBD()\n"
        "h.connect_uri('nbd+unix:///?socket=' + sys.argv[1])\n"
        "h.pread(65536, 0)\n"  # a hole
        "h.pwrite(b'a' * 262144, 0)\n"
        "h.pread(65536, 0)\n"  # a data run now
        "h.zero(65536, 131072)\n"  # 64 KiB at 128 KiB punched: a hole again
        "h.shutdown()\n"
    )
    results = []
    for kind in ("py", "qemu"):
        path = tmp_path / f"w-{kind}.raw"
        with open(path, "wb") as f:
            f.truncate(1 << 20)
        _, sock = server(kind, "-t", "-f", "raw", "--discard=unmap", str(path))
        subprocess.run([SYSTEM_PYTHON, str(script), sock], check=True, timeout=60, env=env_clean())
        results.append(reads(tmp_path, sock, [[0, 262144, 0], [0, 1 << 20, 0]]))
    ours, theirs = results
    assert ours == theirs
    assert [c[2] for c in ours["reads"][0]] == ["D", "H", "D"]
    data = bytearray(1 << 20)
    data[0:131072] = b"a" * 131072
    data[196608:262144] = b"a" * 65536
    assert ours["md5"] == hashlib.md5(bytes(data)).hexdigest()
    for off, n, _kind, digest in ours["reads"][0]:
        assert digest == hashlib.md5(bytes(data[off : off + n])).hexdigest()
