"""The public library API on raw images, and QEMU's size and option syntax.

The reference is the real QEMU: ``qemu-img map``/``info``/``create`` and
``qemu-io`` run on the same files and their answers are compared with ours.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from pyqemu.common.block import (
    BlockError,
    InvalidRequest,
    block_status_above,
    create_image,
    format_names,
    open_image,
)
from pyqemu.common.errors import QemuError
from pyqemu.common.options import (
    OptionError,
    escape_opt_value,
    flatten,
    parse_bool,
    parse_json_filename,
    parse_opts,
    sub_options,
)
from pyqemu.common.sizes import cvtstr, parse_size, size_to_str

from .conftest import run

MiB = 1 << 20


def pattern(length: int, seed: int = 1) -> bytes:
    """Deterministic non-zero bytes."""
    return bytes((seed + i * 7) % 251 + 1 for i in range(length))


def image_map(img) -> list[dict]:  # type: ignore[no-untyped-def]
    """Walk block_status_above over the whole image, merged as ``qemu-img map`` does."""
    runs: list[dict] = []
    offset = 0
    while offset < img.size:
        r = block_status_above(img, offset, img.size - offset)
        assert r.start == offset and r.length > 0
        entry = {
            "start": r.start,
            "length": r.length,
            "depth": r.depth,
            "present": r.present,
            "zero": r.zero,
            "data": r.data,
            "offset": r.offset,
        }
        last = runs[-1] if runs else None
        if (
            last is not None
            and all(last[k] == entry[k] for k in ("depth", "present", "zero", "data"))
            and (last["offset"] is None) == (entry["offset"] is None)
            and (last["offset"] is None or last["offset"] + last["length"] == entry["offset"])
        ):
            last["length"] += r.length
        else:
            runs.append(entry)
        offset += r.length
    return runs


def qemu_map(qemu_img: str, path: Path) -> list[dict]:
    proc = run([qemu_img, "map", "--output=json", "-f", "raw", str(path)], check=True)
    return json.loads(proc.stdout)


FIELDS = ("start", "length", "zero", "data")


def project(runs: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in FIELDS) for r in runs]


# ----------------------------------------------------------------------
# create and open


def test_create_raw_is_sparse_and_sized(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "a.raw"
    create_image(str(p), "raw", 3 * MiB)
    assert p.stat().st_size == 3 * MiB
    info = json.loads(run([qemu_img, "info", "--output=json", str(p)], check=True).stdout)
    assert info["format"] == "raw"
    assert info["virtual-size"] == 3 * MiB
    with open_image(str(p)) as img:
        assert img.format_name == "raw"
        assert img.size == 3 * MiB
        assert img.read_only
        assert img.read(0, 3 * MiB) == bytes(3 * MiB)
        assert img.specific_info() is None


def test_create_raw_preallocation_full(tmp_path: Path) -> None:
    p = tmp_path / "full.raw"
    create_image(str(p), "raw", MiB, {"preallocation": "full"})
    assert p.stat().st_size == MiB
    assert p.stat().st_blocks * 512 >= MiB


def test_format_names_lists_raw_qcow2_file() -> None:
    assert {"raw", "qcow2", "file"} <= set(format_names())


def test_write_read_round_trip_and_qemu_io_sees_it(
    tmp_path: Path, qemu_io: str, qemu_img: str
) -> None:
    p = tmp_path / "rw.raw"
    create_image(str(p), "raw", 4 * MiB)
    data = pattern(70000)
    with open_image(str(p), read_only=False) as img:
        img.write(12345, data)
        img.write(3 * MiB, b"\x5a" * 65536, fua=True)
        assert img.read(12345, len(data)) == data
        assert img.read(12340, 5) == bytes(5)
        img.flush()
        # flushed data is in the file before close
        with open(p, "rb") as f:
            f.seek(12345)
            assert f.read(len(data)) == data
    proc = run([qemu_io, "-f", "raw", "-c", f"read -P 0x5a {3 * MiB} 64k", str(p)], check=True)
    assert "Pattern verification failed" not in proc.stdout
    assert proc.stdout.startswith(f"read 65536/65536 bytes at offset {3 * MiB}")


def test_write_zeroes_and_discard(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "z.raw"
    create_image(str(p), "raw", 4 * MiB)
    with open_image(str(p), read_only=False) as img:
        img.write(0, pattern(4 * MiB))
        img.write_zeroes(MiB, 65536)
        img.write_zeroes(2 * MiB, 65536, may_unmap=True)
        img.discard(3 * MiB, MiB)
        assert img.read(MiB, 65536) == bytes(65536)
        assert img.read(2 * MiB, 65536) == bytes(65536)
        assert img.read(3 * MiB, MiB) == bytes(MiB)
        assert img.read(MiB + 65536, 16) == pattern(4 * MiB)[MiB + 65536 : MiB + 65536 + 16]
        ours = image_map(img)
    theirs = qemu_map(qemu_img, p)
    assert project(ours) == project(theirs)
    zero_runs = [(r["start"], r["length"]) for r in theirs if r["zero"]]
    assert (2 * MiB, 65536) in zero_runs  # unmapped: a hole
    assert zero_runs[-1] == (3 * MiB, MiB)  # discarded


def test_truncate_grow_and_shrink(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "t.raw"
    create_image(str(p), "raw", MiB)
    with open_image(str(p), read_only=False) as img:
        img.write(MiB - 4, b"tail")
        img.truncate(2 * MiB)
        assert img.size == 2 * MiB
        assert img.read(MiB - 4, 8) == b"tail" + bytes(4)
        img.truncate(512 * 1024)
        assert img.size == 512 * 1024
        with pytest.raises(InvalidRequest):
            img.read(512 * 1024, 1)
        with pytest.raises(InvalidRequest):
            img.truncate(256 * 1024, shrink=False)
    info = json.loads(run([qemu_img, "info", "--output=json", str(p)], check=True).stdout)
    assert info["virtual-size"] == 512 * 1024


def test_context_manager_closes(tmp_path: Path) -> None:
    p = tmp_path / "c.raw"
    create_image(str(p), "raw", 65536)
    with open_image(str(p)) as img:
        pass
    assert img.closed
    with pytest.raises(InvalidRequest):
        img.read(0, 1)
    img.close()  # closing twice is harmless


# ----------------------------------------------------------------------
# block status against qemu-img map


def test_block_status_matches_qemu_img_map(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "sparse.raw"
    create_image(str(p), "raw", 8 * MiB)
    with open_image(str(p), read_only=False) as img:
        img.write(65536, pattern(65536))
        img.write(MiB, pattern(4096, 2))
        img.write(5 * MiB, pattern(3 * 65536, 3))
        img.write(8 * MiB - 4096, pattern(4096, 4))
    with open_image(str(p)) as img:
        ours = image_map(img)
        first = block_status_above(img, 0, img.size)
        second = block_status_above(img, 4096, img.size - 4096)
    theirs = qemu_map(qemu_img, p)
    assert project(ours) == project(theirs)
    assert [r["offset"] for r in ours] == [r["offset"] for r in theirs]
    assert all(r["present"] and r["depth"] == 0 for r in ours)
    # the first 4 KiB are allocated at creation, as qemu-img create does
    assert first.data and not first.zero and first.length == 4096
    assert second.zero and not second.data and second.length == 65536 - 4096
    assert any(r["data"] for r in theirs)


def test_block_status_is_bounded_by_the_request(tmp_path: Path) -> None:
    p = tmp_path / "b.raw"
    create_image(str(p), "raw", MiB)
    with open_image(str(p)) as img:
        r = block_status_above(img, 4096, 8192)
        assert r.start == 4096 and r.length == 8192 and r.zero


# ----------------------------------------------------------------------
# json: filenames and option dicts


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    p = tmp_path / "filled.raw"
    p.write_bytes(pattern(MiB))
    return p


def test_json_filename_nested(filled: Path) -> None:
    spec = {"driver": "raw", "file": {"driver": "file", "filename": str(filled)}}
    with open_image("json:" + json.dumps(spec)) as img:
        assert img.format_name == "raw"
        assert img.read(0, 64) == pattern(MiB)[:64]


def test_json_filename_dotted_keys(filled: Path) -> None:
    with open_image("json:" + json.dumps({"driver": "raw", "file.filename": str(filled)})) as img:
        assert img.size == MiB


def test_options_dict(filled: Path) -> None:
    with open_image(options={"driver": "raw", "file.filename": str(filled)}) as img:
        assert img.format_name == "raw"
        assert img.read(MiB - 16, 16) == pattern(MiB)[-16:]


def test_options_read_only_off_allows_writes(filled: Path) -> None:
    opts = {"driver": "raw", "file.filename": str(filled), "read-only": "off"}
    with open_image(options=opts) as img:
        assert not img.read_only
        img.write(0, b"x")
    assert filled.read_bytes()[:1] == b"x"


def test_raw_offset_and_size_window(filled: Path, qemu_io: str) -> None:
    spec = {"driver": "raw", "offset": 4096, "size": 65536, "file": {"filename": str(filled)}}
    name = "json:" + json.dumps(spec)
    with open_image(name) as img:
        assert img.size == 65536
        assert img.read(0, 65536) == pattern(MiB)[4096 : 4096 + 65536]
        with pytest.raises(InvalidRequest):
            img.read(65536, 1)
    # qemu-io agrees on the window's size
    proc = run([qemu_io, "-c", "length", name], check=True)
    assert proc.stdout.strip() == "64 KiB"


def test_json_filename_that_is_not_json() -> None:
    with pytest.raises(QemuError, match="Could not parse the JSON options"):
        open_image("json:{not json")


# ----------------------------------------------------------------------
# errors


def test_missing_file_message_matches_qemu(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "nope.raw"
    with pytest.raises(BlockError) as exc:
        open_image(str(p))
    assert str(exc.value) == f"Could not open '{p}': No such file or directory"
    assert exc.value.errno == errno.ENOENT
    proc = run([qemu_img, "info", str(p)])
    assert proc.returncode == 1
    assert str(exc.value) in proc.stderr


def test_unknown_driver(tmp_path: Path, qemu_img: str) -> None:
    p = tmp_path / "u.raw"
    create_image(str(p), "raw", 65536)
    with pytest.raises(BlockError) as exc:
        open_image(str(p), "foo")
    assert str(exc.value) == "Unknown driver 'foo'"
    with pytest.raises(BlockError, match="Unknown driver 'foo'"):
        open_image(options={"driver": "foo", "file.filename": str(p)})
    with pytest.raises(BlockError, match="Unknown driver 'foo'"):
        create_image(str(tmp_path / "v"), "foo", 65536)
    proc = run([qemu_img, "info", "-f", "foo", str(p)])
    assert "Unknown driver 'foo'" in proc.stderr


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, MiB + 1), (MiB, 1), (MiB - 1, 2), (-1, 1), (0, -1), (2 * MiB, 0)],
)
def test_out_of_range_is_invalid_request(tmp_path: Path, offset: int, length: int) -> None:
    p = tmp_path / "r.raw"
    create_image(str(p), "raw", MiB)
    with open_image(str(p), read_only=False) as img:
        with pytest.raises(InvalidRequest):
            img.read(offset, length)
        with pytest.raises(InvalidRequest):
            img.write_zeroes(offset, length)
        with pytest.raises(InvalidRequest):
            block_status_above(img, offset, length)
        if length >= 0:
            with pytest.raises(InvalidRequest):
                img.write(offset, bytes(length))


def test_writes_to_read_only_image_are_invalid_requests(tmp_path: Path) -> None:
    p = tmp_path / "ro.raw"
    p.write_bytes(pattern(65536))
    with open_image(str(p)) as img:  # read-only is the default
        for call in (
            lambda: img.write(0, b"x"),
            lambda: img.write_zeroes(0, 512),
            lambda: img.discard(0, 512),
            lambda: img.truncate(2 * 65536),
        ):
            with pytest.raises(InvalidRequest) as exc:
                call()
            assert exc.value.errno == errno.EACCES
        assert img.read(0, 65536) == pattern(65536)
    assert p.read_bytes() == pattern(65536)


def test_errors_are_block_errors() -> None:
    assert issubclass(InvalidRequest, BlockError)
    assert issubclass(BlockError, QemuError)


# ----------------------------------------------------------------------
# sizes: parse_size is qemu_strtosz


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512", 512),
        ("1000", 1000),
        ("1b", 1),
        ("1.0", 1),
        ("1k", 1024),
        ("1K", 1024),
        ("64k", 65536),
        ("1.5k", 1536),
        ("1.k", 1024),
        ("0.5k", 512),
        ("0.001k", 1),
        ("1.5M", 1572864),
        ("1g", 1 << 30),
        ("1.5G", 3 << 29),
        ("1t", 1 << 40),
        ("1P", 1 << 50),
        ("1e", 1 << 60),
        ("00010", 10),
        ("0x1000", 4096),
        (" 1k", 1024),
        ("+1k", 1024),
        ("12345678", 12345678),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "k", "-1", "1x", "1kb", "1KiB", "1e3", "1.5", "1.5b", ".5k", "1k ", "1 k", "0x", "0x1.8k"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_overflow() -> None:
    assert parse_size("15E") == 15 << 60
    with pytest.raises(OverflowError):
        parse_size("16E")
    with pytest.raises(OverflowError):
        parse_size("18446744073709551616")


def test_parse_size_default_suffix() -> None:
    assert parse_size("2", default_suffix="M") == 2 * MiB
    assert parse_size("2k", default_suffix="M") == 2048


@pytest.mark.parametrize(
    "text",
    ["512", "1000", "1k", "1.5k", "1.5M", "0x1000", "00010", "1.0", "1.5", "1.5b", "1 k", ".5k"],
)
def test_parse_size_agrees_with_qemu_img_create(tmp_path: Path, qemu_img: str, text: str) -> None:
    proc = run([qemu_img, "create", "-f", "raw", str(tmp_path / "s.raw"), text])
    if proc.returncode == 0:
        m = re.search(r" size=(\d+)", proc.stdout)
        assert m, proc.stdout
        assert parse_size(text) == int(m.group(1))
    else:
        assert "Invalid image size specified" in proc.stderr
        with pytest.raises(ValueError):
            parse_size(text)


# ----------------------------------------------------------------------
# sizes: size_to_str is what qemu-img info prints


SIZES = [
    0,
    512,
    1024,
    1536,
    10240,
    1000 * 1024,
    1023 * 1024,
    1047552,
    MiB,
    1572864,
    999 * MiB,
    1000 * MiB,
    1023 * MiB,
    (1 << 30) - 512,
    1 << 30,
    3 << 29,
    123456789 * 512,
    1 << 40,
    5 << 40,
]


@pytest.mark.parametrize("size", SIZES)
def test_size_to_str_matches_qemu_img_info(tmp_path: Path, qemu_img: str, size: int) -> None:
    p = tmp_path / "v.raw"
    with open(p, "wb") as f:
        f.truncate(size)
    out = run([qemu_img, "info", "-f", "raw", str(p)], check=True).stdout
    m = re.search(r"^virtual size: (.*) \((\d+) bytes\)$", out, re.M)
    assert m, out
    assert int(m.group(2)) == size
    assert size_to_str(size) == m.group(1)


def test_size_to_str_examples() -> None:
    assert size_to_str(0) == "0 B"
    assert size_to_str(196 * 1024) == "196 KiB"
    assert size_to_str(1 << 30) == "1 GiB"
    assert size_to_str(1023 * 1024) == "0.999 MiB"


# ----------------------------------------------------------------------
# sizes: cvtstr is what qemu-io prints


COUNTS = [1, 511, 512, 1000, 1023, 1024, 1025, 1049, 1536, 4096, 65536, 100000]
COUNTS += [1048575, MiB, MiB + 512, 1572864, 3 * MiB]


@pytest.fixture(scope="module")
def io_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("io") / "io.raw"
    with open(p, "wb") as f:
        f.truncate(4 * MiB)
    return p


@pytest.mark.parametrize("count", COUNTS)
def test_cvtstr_matches_qemu_io(io_image: Path, qemu_io: str, count: int) -> None:
    proc = run([qemu_io, "-f", "raw", "-c", f"write -P 0x5 0 {count}", str(io_image)], check=True)
    first, second = proc.stdout.splitlines()[:2]
    assert first == f"wrote {count}/{count} bytes at offset 0"
    assert second.split(", ")[0] == cvtstr(count)


def test_cvtstr_examples() -> None:
    assert cvtstr(512) == "512 bytes"
    assert cvtstr(1536) == "1.500 KiB"
    assert cvtstr(65536) == "64 KiB"
    assert cvtstr(1 << 60) == "1 EiB"
    assert cvtstr(1023.9996 * 1024) == "1024 KiB"  # "%.3f" rounds up to .000
    assert cvtstr(0.5) == "0.500000 bytes"  # "%f" for bytes, as qemu-io's rates show


# ----------------------------------------------------------------------
# options: QemuOpts strings and json: filenames


def test_parse_opts_basic_and_order() -> None:
    opts = parse_opts("size=1M,compat=1.1,cluster_size=64k")
    assert opts == {"size": "1M", "compat": "1.1", "cluster_size": "64k"}
    assert list(opts) == ["size", "compat", "cluster_size"]


def test_parse_opts_double_comma_is_a_literal_comma() -> None:
    assert parse_opts("file=a,,b.img,format=raw") == {"file": "a,b.img", "format": "raw"}
    assert parse_opts("file=x,,,,y") == {"file": "x,,y"}
    value = "odd,name,,here"
    assert parse_opts("file=" + escape_opt_value(value)) == {"file": value}


def test_parse_opts_implied_key() -> None:
    assert parse_opts("disk.img,format=raw", implied_key="file") == {
        "file": "disk.img",
        "format": "raw",
    }
    assert parse_opts("help", implied_key="help") == {"help": "help"}
    # only the first element takes the implied key
    assert parse_opts("a=1,flag", implied_key="file") == {"a": "1", "flag": "on"}


def test_parse_opts_flags_and_empty_elements() -> None:
    assert parse_opts("lazy_refcounts,nocow") == {"lazy_refcounts": "on", "cow": "off"}
    assert parse_opts("a=1,") == {"a": "1"}
    assert parse_opts("a=") == {"a": ""}
    with pytest.raises(OptionError):
        parse_opts("a=1,=2")


def test_flatten_and_json_filenames() -> None:
    tree = {"driver": "qcow2", "file": {"driver": "file", "filename": "x"}, "backing": None}
    assert flatten(tree) == {
        "driver": "qcow2",
        "file.driver": "file",
        "file.filename": "x",
        "backing": None,
    }
    assert parse_json_filename("json:" + json.dumps(tree)) == flatten(tree)
    assert parse_json_filename('json:{"a": {"b": {"c": 1}}}') == {"a.b.c": 1}
    with pytest.raises(OptionError, match="Could not parse the JSON options"):
        parse_json_filename("json:{")
    with pytest.raises(OptionError, match="Invalid JSON object given"):
        parse_json_filename("json:[1, 2]")


def test_sub_options_and_parse_bool() -> None:
    opts = {"driver": "raw", "file.filename": "x", "file.aio": "threads", "filex": "no"}
    assert sub_options(opts, "file") == {"filename": "x", "aio": "threads"}
    assert sub_options(opts, "backing") == {}
    for text in ("on", "yes", "true", "y", True):
        assert parse_bool(text, "k") is True
    for text in ("off", "no", "false", "n", False):
        assert parse_bool(text, "k") is False
    with pytest.raises(OptionError, match="Parameter 'k' expects 'on' or 'off'"):
        parse_bool("maybe", "k")
