"""Golden tests: the same qemu-io scripts through qemu-io 7.2 and pyqemu-io.

Each case runs on copies of the same images; stdout must match once the timing
figures are masked, stderr and the exit code must match exactly, and the
images must afterwards compare equal (``qemu-img compare``) and check clean.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run


@pytest.fixture
def images(qemu_img: str, qemu_io: str, tmp_path: Path) -> dict[str, Path]:
    """raw; qcow2 base with data, zero and compressed clusters; overlay on it."""
    src = tmp_path / "src"
    src.mkdir()
    raw = src / "disk.raw"
    run([qemu_img, "create", "-q", "-f", "raw", str(raw), "1M"], check=True)
    run([qemu_io, "-f", "raw", "-c", "write -P 0x11 64k 64k", str(raw)], check=True)
    base = src / "base.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "4M"], check=True)
    run(
        [
            qemu_io,
            "-c", "write -P 1 0 1M",
            "-c", "write -z 2M 64k",
            "-c", "write -c -P 7 3M 64k",
            "-c", "write -c -P 8 3136k 64k",
            str(base),
        ],
        check=True,
    )  # fmt: skip
    top = src / "top.qcow2"
    run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top)],
        check=True,
    )
    return {"raw": raw, "base": base, "top": top}


def _compare_results(qemu_img: str, tmp_path: Path, names: list[str]) -> None:
    for name in names:
        ref, ours = tmp_path / "ref" / name, tmp_path / "ours" / name
        if not ref.exists():
            continue
        fmt = "raw" if name.endswith(".raw") else "qcow2"
        cmp = run([qemu_img, "compare", "-f", fmt, "-F", fmt, str(ref), str(ours)])
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        if fmt == "qcow2":
            chk = run([qemu_img, "check", str(ours)])
            assert chk.returncode == 0, chk.stdout + chk.stderr


RAW_SCRIPTS = {
    "rw": [
        "write -P 0xab 0 512",
        "read -P 0xab 0 512",
        "read -v 0 40",
        "read -v 64k 20",
        "read -P 0xcd 0 512",
        "read -P 0x11 -s 512 -l 1k 64k 4k",
        "read -C 0 4k",
        "write -C -P 3 4k 4k",
        "read -q -P 3 4k 4k",
        "write -q 8k 1",
        "read -p 0 1",
        "r 0 1",
        "w -f 0 1",
        "write -z 12k 4k",
        "write -z -u 16k 4k",
        "write -z -n 20k 4k",
        "read -P 0 12k 12k",
        "writev -P 5 100k 512 1k 3",
        "readv -P 5 100k 512 1k 3",
        "readv -v -P 6 100k 7",
        "writev -C -f -q 200k 1k",
        "readv -C 200k 1k",
        "length",
        "info",
        "map",
        "alloc 0",
        "alloc 1000 5000",
        "alloc 1M",
        "flush",
        "f",
        "discard 256k 64k",
        "discard -q 256k 64k",
        "discard -C 256k 64k",
        "truncate 2M",
        "length",
        "truncate -m full 3M",
        "truncate -m falloc 4M",
        "length",
        "truncate 1M",
        "l",
    ],
    "errors": [
        "read 0 x",
        "read x 0",
        "read 0 2G",
        "read 0 99999999999999999999",
        "read 1M 1",
        "read 1048575 2",
        "write 1048575 2",
        "read -P 300 0 1",
        "read -P x 0 1",
        "read -P 0x1g 0 1",
        "read -l 5 0 512",
        "read -P 1 -s 600 0 512",
        "read -P 1 -l x 0 512",
        "read -y 0 1",
        "read 0",
        "read 0 1 2",
        "read -b 0 512",
        "read -b 1 512",
        "read -b 0 511",
        "write -b 0 512",
        "write -c 0 64k",
        "write -c 1 512",
        "write -b -z 0 512",
        "write -f -c 0 512",
        "write -f -b 0 512",
        "write -u 0 512",
        "write -n 0 512",
        "write -z -P 1 0 512",
        "write -P 1 -s f 0 1",
        "write -s /nonexistent/file 0 1",
        "write 0 2G",
        "write -z 0 2G",
        "write -zn 0 2G",
        "writev 0 x",
        "writev 0 3G",
        "writev 0 1G 1G",
        "writev 0",
        "readv 0 2M",
        "discard 0 3G",
        "discard 0 2M",
        "discard 0",
        "truncate -m bad 1M",
        "truncate x",
        "truncate -m off x",
        "alloc x",
        "alloc 0 y",
        "alloc",
        "map 1",
        "length 1",
        "foo",
        "help foo",
        "sleep x",
        "sleep -1",
        "sleep 0x10",
        "sigraise 100",
        "sigraise x",
        "sigraise 0",
        "open x",
        "reopen x",
        "reopen -c bad",
        "reopen -r -w",
        "reopen -o foo=bar",
        "reopen -y",
        "aio_write -z 0 1 2",
        "aio_write -u 0 1",
        "aio_read -i 0 1",
        "aio_write -i 0 1",
        "aio_read 0 x",
        "aio_write 0 x",
        "aio_read 2M 1",
        "aio_flush",
        "aio_write 2M 1",
        "aio_flush",
        "break write_aio A",
        "remove_break A",
        "resume A",
        "break a",
    ],
    "aio": [
        "aio_write -P 7 0 4k",
        "aio_flush",
        "aio_read -P 7 0 2k 2k",
        "aio_flush",
        "aio_read -v -P 7 0 16",
        "aio_flush",
        "aio_write -q 8k 1k",
        "aio_flush",
        "aio_read -q -P 0xcd 8k 1k",
        "aio_flush",
        "aio_read -P 1 0 512",
        "aio_flush",
        "aio_write -C 16k 512",
        "aio_flush",
    ],
    "open-close": [
        "close",
        "read 0 1",
        "write 0 1",
        "map",
        "info",
        "length",
        "close",
        "open",
        "open -x",
        "open -r disk.raw",
        "write 0 1",
        "discard 0 1",
        "truncate 1M",
        "writev 0 1",
        "aio_write 0 1",
        "read -P 0 0 1",
        "open disk.raw",
        "close",
        "open -o driver=raw disk.raw",
        "write -P 9 0 1",
        "close",
        "open -o driver=raw,foo=1 disk.raw",
        "open -o driver=nope disk.raw",
        "open nonexistent.img",
        "open -t bad disk.raw",
        "open -d bad disk.raw",
        "open -i bad disk.raw",
        "open -n -k -U -t writeback -d unmap -i threads -o driver=raw disk.raw",
        "read -P 9 0 1",
        "reopen -r",
        "write 0 1",
        "reopen -w",
        "write -P 4 0 1",
        "reopen -c none",
        "reopen -o read-only=on",
        "reopen -r -o read-only=off",
        "c",
        "o -r -o driver=raw disk.raw",
        "read -P 4 0 1",
        "quit",
        "read 0 1",
    ],
    "help": [
        "help",
        "?",
        *[
            f"help {c}"
            for c in (
                "abort aio_flush aio_read aio_write alloc break close discard flush help info "
                "length map open quit read readv remove_break reopen resume sigraise sleep "
                "truncate wait_break write writev r w ? q o c a d f l t i"
            ).split()
        ],
    ],
}


@pytest.mark.parametrize("script", sorted(RAW_SCRIPTS))
def test_raw_scripts(golden, images, qemu_img: str, tmp_path: Path, script: str) -> None:
    args = [a for line in RAW_SCRIPTS[script] for a in ("-c", line)]
    golden([images["raw"]], ["-f", "raw", *args, "disk.raw"])
    _compare_results(qemu_img, tmp_path, ["disk.raw"])


QCOW2_SCRIPTS = {
    "backing": [
        "map",
        "alloc 0 4M",
        "alloc 512k 1k",
        "alloc 100 1000",
        "alloc 4M",
        "read -P 1 0 1M",
        "read -P 0 2M 64k",
        "read -P 7 3M 64k",
        "read -P 8 3136k 64k",
        "read -v 3M 32",
        "write -P 2 512k 64k",
        "write -z 1536k 128k",
        "write -z -u 3200k 64k",
        "write -c -P 3 1M 64k",
        "write -c -P 4 1152k 128k",
        "write -c 1M 64k",
        "write -c 1088k 100k",
        "write -c 1088k 1",
        "write -P 5 100 1000",
        "read -P 5 100 1000",
        "read -P 1 0 100",
        "map",
        "discard 512k 64k",
        "discard 3M 64k",
        "map",
        "read -P 0 512k 64k",
        "read -P 7 3M 64k",
        "writev -P 6 2M 4k 60k",
        "readv -P 6 2M 32k 32k",
        "alloc 0 4M",
        "info",
        "length",
        "truncate 8M",
        "length",
        "map",
        "read -P 0 4M 4M",
        "truncate 6M",
        "map",
    ],
    "snapshot-reopen": [
        "write -P 3 0 64k",
        "reopen -r",
        "write 0 1",
        "reopen -w",
        "write -P 4 64k 64k",
        "read -P 4 64k 64k",
        "map",
    ],
}


@pytest.mark.parametrize("script", sorted(QCOW2_SCRIPTS))
def test_qcow2_scripts(golden, images, qemu_img: str, tmp_path: Path, script: str) -> None:
    args = [a for line in QCOW2_SCRIPTS[script] for a in ("-c", line)]
    golden([images["base"], images["top"]], [*args, "top.qcow2"])
    _compare_results(qemu_img, tmp_path, ["top.qcow2", "base.qcow2"])


def test_snapshot_mode_leaves_image(golden, images, qemu_img: str, tmp_path: Path) -> None:
    script = ["write -P 9 0 64k", "read -P 9 0 64k", "info", "map", "alloc 0 1M", "length"]
    args = [a for line in script for a in ("-c", line)]
    golden([images["base"], images["top"]], ["-s", *args, "top.qcow2"])
    _compare_results(qemu_img, tmp_path, ["top.qcow2"])
    ours = run([qemu_img, "compare", str(images["top"]), str(tmp_path / "ours" / "top.qcow2")])
    assert ours.returncode == 0
    assert not list((tmp_path / "ours").glob("vl.*"))


def test_copy_on_read(golden, images, qemu_img: str, tmp_path: Path) -> None:
    script = ["read -P 1 0 64k", "read -P 1 100k 1000", "read 1M 4k", "map", "alloc 0 256k"]
    args = [a for line in script for a in ("-c", line)]
    golden([images["base"], images["top"]], ["-C", *args, "top.qcow2"])
    _compare_results(qemu_img, tmp_path, ["top.qcow2"])


def test_read_only(golden, images) -> None:
    script = ["write 0 1", "writev 0 1", "aio_write 0 1", "discard 0 1", "truncate 1M"]
    script += ["write -c 0 64k", "read -P 1 0 1k", "reopen -w", "write -P 1 0 1"]
    args = [a for line in script for a in ("-c", line)]
    golden([images["base"], images["top"]], ["-r", *args, "top.qcow2"])


def test_probed_raw_block0(golden, images, qemu_img: str, tmp_path: Path) -> None:
    """Without -f a probed raw image refuses writes that would make it look like qcow2."""
    script = [
        "write -P 0x51 0 1",
        "write -P 0x51 0 4",
        "read -v 0 8",
        "write -P 0x41 512 512",
    ]
    args = [a for line in script for a in ("-c", line)]
    golden([images["raw"]], [*args, "disk.raw"])


STDIN_SCRIPT = """read 0 1
foo

\x20\x20\x20
help quit
read\t0 1
write -P 5 0 4k
read -P 5 0 4k
write 0 x
aio_write 8k 1k
aio_flush
quit
read 0 1
"""


def test_stdin_prompts(golden, images) -> None:
    golden([images["raw"]], ["-f", "raw", "disk.raw"], stdin=STDIN_SCRIPT)


def test_stdin_eof_and_no_file(golden, images) -> None:
    golden([images["raw"]], [], stdin="read 0 1\nopen -o driver=raw disk.raw\nlength\n")
    golden([images["raw"]], ["-f", "raw", "disk.raw"], stdin="")
    golden([images["raw"]], ["disk.raw"], stdin="length\nwrite -P 1 1k 1\n")


@pytest.mark.parametrize(
    "args",
    [
        ["-x", "disk.raw"],
        ["-c"],
        ["--foo"],
        ["--cmd"],
        ["--for=raw", "-c", "length", "disk.raw"],
        ["--format", "raw", "--cmd=length", "--read-only", "disk.raw"],
        ["--snap", "-c", "length", "disk.raw"],
        ["--cache=unsafe", "--nocache", "-m", "-k", "-U", "-c", "length", "disk.raw"],
        ["--aio=threads", "--discard=unmap", "-c", "length", "disk.raw"],
        ["a", "b"],
        ["-f", "qcow2", "disk.raw"],
        ["-f", "foo", "disk.raw"],
        ["--image-opts", "-f", "raw", "disk.raw"],
        ["--image-opts", "driver=raw,file.filename=disk.raw", "-c", "length"],
        ["--image-opts", "disk.raw", "-c", "info"],
        ["-t", "bad", "disk.raw"],
        ["-d", "bad", "disk.raw"],
        ["-i", "bad", "disk.raw"],
        ["nonexistent"],
        ["-h"],
        ["--help"],
        ["-r", "disk.raw", "-c", "length"],
        ["json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"disk.raw\"}}",
         "-c", "info", "-c", "write -P 1 0 1"],
        ["-c", "length"],
        ["-c", "help", "-c", "sleep 1", "-c", "quit", "-c", "help"],
        ["-f", "raw", "-c", "read 0 1", "-c", "sigraise 15", "-c", "read 0 1", "disk.raw"],
    ],
)  # fmt: skip
def test_command_line(golden, images, args: list[str]) -> None:
    golden([images["raw"]], args)


def test_exit_code_any_failure(golden, images) -> None:
    ref, _ = golden([images["raw"]], ["-f", "raw", "-c", "read 2M 1", "-c", "length", "disk.raw"])
    assert ref.returncode == 1
    ref, _ = golden([images["raw"]], ["-f", "raw", "-c", "length", "disk.raw"])
    assert ref.returncode == 0


def test_abort(qemu_io: str, our_qemu_io: str, images) -> None:
    results = [
        subprocess.run(
            [tool, "-f", "raw", "-c", "abort", str(images["raw"])], capture_output=True, text=True
        )
        for tool in (qemu_io, our_qemu_io)
    ]
    assert results[0].returncode == results[1].returncode == -6


def test_blkdebug_breakpoints(golden, images) -> None:
    """A request suspended at a blkdebug breakpoint waits in its thread until resume."""
    script = [
        "break write_aio A",
        "aio_write -P 3 0 512",
        "wait_break A",
        "resume A",
        "aio_flush",
        "read -P 3 0 512",
        "break read_aio B",
        "aio_read -P 3 0 512",
        "wait_break B",
        "resume B",
        "aio_flush",
        "break nosuch C",
        "remove_break X",
        "resume X",
        "break write_aio D",
        "remove_break D",
        "write -P 4 0 512",
    ]
    args = [a for line in script for a in ("-c", line)]
    golden([images["raw"]], [*args, "blkdebug::disk.raw"])
    stdin = "".join(line + "\n" for line in script)
    golden([images["raw"]], ["blkdebug::disk.raw"], stdin=stdin)
