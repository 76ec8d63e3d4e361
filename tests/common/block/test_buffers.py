"""Page-aligned bulk buffers and the host file's write-behind.

``aligned_bytearray`` is an ordinary zero-filled ``bytearray`` whose data
start on a page boundary, and reads into it give what qemu-io wrote;
``set_write_behind`` only starts the write-back early: an image written with
it (every 64 KiB) reads back what was written and checks clean under
qemu-img.
"""

from __future__ import annotations

import random
from pathlib import Path

from pyqemu.common.block import open_image
from pyqemu.common.block.buffers import ALIGN, MIN_ALIGNED, _addressof, aligned_bytearray
from pyqemu.common.block.file import FileProtocol, set_write_behind, start_writeback

from tests.conftest import run

MiB = 1 << 20


def test_aligned_bytearray_is_a_zeroed_aligned_bytearray() -> None:
    for size in (MIN_ALIGNED, 64 << 10, 2 * MiB, 2 * MiB + 17, 3 * MiB):
        buf = aligned_bytearray(size)
        assert type(buf) is bytearray
        assert len(buf) == size
        assert _addressof(buf) % ALIGN == 0
        assert buf.count(0) == size
        buf[:5] = b"abcde"  # an ordinary bytearray: writable, comparable
        assert buf.startswith(b"abcde") and buf[size - 1] == 0
    small = aligned_bytearray(100)
    assert type(small) is bytearray and len(small) == 100 and small.count(0) == 100


def test_aligned_bytearray_with_a_head() -> None:
    """``head`` bytes before the boundary: a request's header, then its
    payload on the boundary."""
    for head in (1, 32, ALIGN - 1):
        for size in (MIN_ALIGNED, (256 << 10) + head, 2 * MiB + 17):
            buf = aligned_bytearray(size, head)
            assert type(buf) is bytearray and len(buf) == size
            assert (_addressof(buf) + head) % ALIGN == 0
            assert buf.count(0) == size


def test_read_into_aligned_buffer(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    path = tmp_path / "a.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    out = run([qemu_io, "-c", "write -P 0x5a 64k 1M", "-c", "write -P 0x21 2M 300k", str(path)])
    assert out.returncode == 0, out.stderr
    image = open_image(str(path), read_only=True)
    try:
        buf = aligned_bytearray(4 * MiB)
        image.readinto(0, memoryview(buf))
        data = image.read(0, 4 * MiB)
    finally:
        image.close()
    expected = bytearray(4 * MiB)
    expected[64 << 10 : (64 << 10) + MiB] = b"\x5a" * MiB
    expected[2 * MiB : 2 * MiB + (300 << 10)] = b"\x21" * (300 << 10)
    assert buf == expected
    assert data == expected


def test_write_behind_image_reads_back(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    path = tmp_path / "w.qcow2"
    src = tmp_path / "src.raw"
    rng = random.Random(4)
    payload = rng.randbytes(3 * MiB)
    src.write_bytes(payload)
    run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "8M"], check=True)
    image = open_image(str(path), read_only=False)
    source = open_image(str(src), "raw", read_only=True)
    try:
        set_write_behind(image, 64 << 10)
        node = image.file
        assert isinstance(node, FileProtocol) and node.write_behind == 64 << 10
        for off in range(0, 2 * MiB, 192 << 10):  # buffered writes
            image.write(off + 4096, payload[off : off + (192 << 10)])
        # file to file (copy_file_range) into fresh clusters
        image.write_from(5 * MiB, source.file, 2 * MiB, MiB)
        # the kernel call exists here: the write-back was started, not skipped
        assert start_writeback(node.fd)
        assert node.write_behind == 64 << 10 and node._written_behind < 64 << 10
    finally:
        source.close()
        image.close()
    check = run([qemu_img, "check", str(path)])
    assert check.returncode == 0, check.stdout + check.stderr
    with open(tmp_path / "expect.raw", "wb") as f:
        f.truncate(8 * MiB)
        for off in range(0, 2 * MiB, 192 << 10):
            f.seek(off + 4096)
            f.write(payload[off : off + (192 << 10)])
        f.seek(5 * MiB)
        f.write(payload[2 * MiB :])
    cmp = run(
        [qemu_img, "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / "expect.raw"), str(path)]
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
