#!/usr/bin/env bash
# pyqemu's main job, end to end: create a qcow2 image, write into it through
# the Python library and with pyqemu-io, take an internal snapshot, convert it
# to raw and back with pyqemu-img, show its info and check it. Needs pyqemu
# installed (python3 -m pip install .).
set -euo pipefail

# pyqemu-img from PATH, else the one installed beside python3
img=$(command -v pyqemu-img || true)
if [ -z "$img" ]; then
    img="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/pyqemu-img"
fi
if [ ! -x "$img" ]; then
    echo "demo: pyqemu-img is not installed (python3 -m pip install .)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pyqemu-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

say() { printf '\n$ %s\n' "$*"; }
pyqemu_img() {
    say pyqemu-img "$@"
    "$img" "$@"
}
pyqemu_io() {
    say pyqemu-io "$@"
    "$(dirname "$img")/pyqemu-io" "$@"
}

pyqemu_img create -f qcow2 disk.qcow2 64M

say "python3: write through pyqemu.common.block"
python3 - disk.qcow2 <<'PY'
import sys

from pyqemu.common.block import block_status_above, open_image

path = sys.argv[1]
with open_image(path, read_only=False) as img:
    img.write(0, b"hello, pyqemu\n")
    img.write(1 << 20, b"\xab" * 65536)
    img.write_zeroes(2 << 20, 65536)
with open_image(path) as img:
    assert img.read(0, 14) == b"hello, pyqemu\n", "read back mismatch at 0"
    assert img.read(1 << 20, 65536) == b"\xab" * 65536, "read back mismatch at 1M"
    run = block_status_above(img, 1 << 20, 65536)
    assert run.data, "written cluster does not report data"
    print(f"wrote and read back through {type(img).__name__}: {img.size} bytes virtual")
PY

pyqemu_io -c "write -P 0x5a 4M 128k" -c "read -P 0x5a 4M 128k" -c "map" disk.qcow2
pyqemu_img snapshot -c before-zero disk.qcow2
pyqemu_io -c "write -z 4M 64k" disk.qcow2
pyqemu_img snapshot -l disk.qcow2
pyqemu_img convert -O raw disk.qcow2 disk.raw
pyqemu_img convert -f raw -O qcow2 disk.raw copy.qcow2
pyqemu_img info copy.qcow2
pyqemu_img check copy.qcow2

say "python3: compare the round trip"
python3 - disk.qcow2 disk.raw copy.qcow2 <<'PY'
import sys

from pyqemu.common.block import open_image

images = [open_image(p) for p in sys.argv[1:]]
try:
    size = images[0].size
    assert all(i.size == size for i in images), "virtual sizes differ"
    step = 1 << 20
    for offset in range(0, size, step):
        chunks = {i.read(offset, min(step, size - offset)) for i in images}
        assert len(chunks) == 1, f"contents differ at offset {offset}"
finally:
    for i in images:
        i.close()
print("disk.qcow2, disk.raw and copy.qcow2 hold the same data")
PY

echo
echo "demo: OK"
