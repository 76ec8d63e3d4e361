"""The blkdebug filter against real qemu-io: the same rules fail the same requests.

Each comparison runs a list of requests through qemu-io (``read failed: ...``
lines) and through our block layer (``BlockError`` with the errno), and
compares the outcome of every request.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from pyqemu.common.block import BlockError, open_image
from pyqemu.common.block.blkdebug import Blkdebug, parse_config_text
from pyqemu.common.block.file import FileProtocol
from pyqemu.common.block.qcow2 import Qcow2
from pyqemu.common.block.raw import RawFormat
from pyqemu.common.errors import strerror
from pyqemu.common.options import flatten, parse_json_filename, parse_opts

from tests.conftest import run

Op = tuple[str, int, int]  # ("read" | "write", offset, length)


def _config(path: Path, *sections: tuple[str, dict[str, object]]) -> str:
    lines = []
    for group, values in sections:
        lines.append(f"[{group}]")
        lines += [f'{k} = "{v}"' for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _qemu_outcomes(qemu_io: str, args: list[str], ops: list[Op], cwd: Path) -> list[str]:
    cmd = [qemu_io]
    for op, offset, length in ops:
        cmd += ["-c", f"{op} {offset} {length}"]
    res = run(cmd + args, cwd=cwd)
    outcomes = []
    for line in res.stdout.splitlines():
        if line.startswith(("read ", "wrote ")) and "bytes at offset" in line:
            outcomes.append("ok")
        elif " failed: " in line:
            outcomes.append(line.split(" failed: ", 1)[1])
    assert len(outcomes) == len(ops), res.stdout + res.stderr
    return outcomes


def _our_outcomes(node_args: dict[str, object], ops: list[Op], cwd: Path) -> list[str]:
    outcomes = []
    old = os.getcwd()
    os.chdir(cwd)  # relative image names inside blkdebug: filenames, as qemu-io sees them
    try:
        node = open_image(read_only=False, **node_args)  # type: ignore[arg-type]
        try:
            for op, offset, length in ops:
                try:
                    if op == "read":
                        node.read(offset, length)
                    else:
                        node.write(offset, b"\x5a" * length)
                    outcomes.append("ok")
                except BlockError as exc:
                    assert exc.errno is not None and exc.message == strerror(exc.errno)
                    outcomes.append(exc.message)
        finally:
            try:
                node.close()
            except BlockError:
                pass
    finally:
        os.chdir(old)
    return outcomes


@pytest.fixture
def raw_img(tmp_path: Path) -> Path:
    img = tmp_path / "img.raw"
    img.write_bytes(bytes(1 << 20))
    return img


def _compare_raw(qemu_io: str, tmp_path: Path, cfg: str, ops: list[Op]) -> list[str]:
    name = f"blkdebug:{cfg}:img.raw"
    theirs = _qemu_outcomes(qemu_io, ["-f", "raw", name], ops, tmp_path)
    ours = _our_outcomes({"filename": name, "fmt": "raw"}, ops, tmp_path)
    assert ours == theirs
    return ours


def test_read_aio_errno(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": "read_aio", "errno": 5}))
    got = _compare_raw(qemu_io, tmp_path, cfg, [("read", 0, 512), ("read", 0, 512)])
    assert got == ["Input/output error"] * 2
    with open_image(f"blkdebug:{cfg}:{raw_img}", "raw") as node:
        with pytest.raises(BlockError) as info:
            node.read(0, 512)
        assert info.value.errno == errno.EIO


def test_once(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(
        tmp_path / "cfg", ("inject-error", {"event": "read_aio", "errno": 28, "once": "on"})
    )
    got = _compare_raw(qemu_io, tmp_path, cfg, [("read", 0, 512), ("read", 0, 512)])
    assert got == ["No space left on device", "ok"]


def test_sector_filter(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": "write_aio", "sector": "0x8"}))
    ops: list[Op] = [("write", 0, 512), ("write", 4096, 512), ("write", 3584, 1024)]
    ops += [("read", 4096, 512), ("read", 0, 512)]  # the armed rule covers reads too
    got = _compare_raw(qemu_io, tmp_path, cfg, ops)
    assert got == ["ok", "Input/output error", "Input/output error", "Input/output error", "ok"]


def test_iotype(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": "read_aio", "iotype": "write"}))
    assert _compare_raw(qemu_io, tmp_path, cfg, [("read", 0, 512)]) == ["ok"]


def test_set_state(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(
        tmp_path / "cfg",
        ("set-state", {"event": "write_aio", "state": 1, "new_state": 2}),
        ("inject-error", {"event": "read_aio", "state": 2}),
    )
    ops: list[Op] = [("read", 0, 512), ("write", 0, 512), ("read", 0, 512)]
    assert _compare_raw(qemu_io, tmp_path, cfg, ops) == ["ok", "ok", "Input/output error"]


@pytest.mark.parametrize(
    ("rule", "expect"),
    [
        # QEMU 7.2 ignores a failed read-modify-write read: the write goes on
        ({"event": "pwritev_rmw_head", "iotype": "read"}, ["ok", "ok"]),
        ({"event": "pwritev_rmw_head", "iotype": "write"}, ["Input/output error"] * 2),
        (
            {"event": "pwritev_rmw_tail", "iotype": "write", "once": "on"},
            ["Input/output error", "ok"],
        ),
        ({"event": "write_aio", "sector": 0}, ["Input/output error", "ok"]),  # padded to 0
        ({"event": "pwritev", "sector": 16, "once": "on"}, ["ok", "Input/output error"]),
    ],
)
def test_align_and_max_transfer(
    qemu_io: str, tmp_path: Path, raw_img: Path, rule: dict[str, object], expect: list[str]
) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", rule))
    ops: list[Op] = [("write", 512, 512), ("write", 4096, 12288)]
    blkdebug = {"driver": "blkdebug", "config": cfg, "align": 4096, "max-transfer": 8192}
    blkdebug["image"] = {"driver": "file", "filename": "img.raw"}
    name = "json:" + json.dumps({"driver": "raw", "file": blkdebug})
    theirs = _qemu_outcomes(qemu_io, [name], ops, tmp_path)
    assert theirs == expect
    assert _our_outcomes({"filename": name}, ops, tmp_path) == theirs


def test_json_and_option_forms(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    tree = {
        "driver": "raw",
        "file": {
            "driver": "blkdebug",
            "inject-error": [{"event": "read_aio", "errno": 28, "once": True}],
            "image": {"driver": "file", "filename": "img.raw"},
        },
    }
    name = "json:" + json.dumps(tree)
    ops: list[Op] = [("read", 0, 512), ("read", 0, 512)]
    theirs = _qemu_outcomes(qemu_io, [name], ops, tmp_path)
    assert theirs == ["No space left on device", "ok"]
    assert _our_outcomes({"filename": name}, ops, tmp_path) == theirs
    # the same as --image-opts and as an option dict (one section without index)
    text = "driver=raw,file.driver=blkdebug,file.inject-error.0.event=read_aio,file.inject-error.0.once=on,file.image.filename=img.raw"
    theirs = _qemu_outcomes(qemu_io, ["--image-opts", text], ops, tmp_path)
    assert _our_outcomes({"options": parse_opts(text)}, ops, tmp_path) == theirs
    opts = {
        "driver": "raw",
        "file.driver": "blkdebug",
        "file.inject-error.event": "read_aio",
        "file.image.filename": str(raw_img),
    }
    assert _our_outcomes({"options": opts}, ops, tmp_path) == ["Input/output error"] * 2


def test_graph_and_probing(tmp_path: Path, qemu_img: str) -> None:
    img = tmp_path / "x.qcow2"
    run([qemu_img, "create", "-f", "qcow2", str(img), "1M"], check=True)
    name = f"blkdebug::{img}"
    for fmt in (None, "qcow2"):
        with open_image(name, fmt) as node:
            assert isinstance(node, Qcow2) and isinstance(node.file, Blkdebug)
            assert isinstance(node.file.file, FileProtocol)
            assert node.filename == name and node.size == 1 << 20
            assert node.allocated_file_size() is None  # qemu-img: "disk size: unavailable"
    with open_image(name, "blkdebug") as node:  # -f blkdebug: the image is not probed
        assert isinstance(node, Blkdebug) and node.read(0, 4) == b"QFI\xfb"
    opts = {"driver": "raw", "file.driver": "blkdebug", "file.image.filename": str(img)}
    with open_image(None, options=opts) as node:
        assert isinstance(node, RawFormat) and node.file.filename == name


@pytest.mark.parametrize(
    ("event", "once"),
    [("cluster_alloc", "on"), ("write_aio", "off"), ("l2_update", "off"), ("l1_update", "on")],
)
def test_qcow2_over_blkdebug(
    qemu_io: str, qemu_img: str, tmp_path: Path, event: str, once: str
) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": event, "once": once}))
    img = tmp_path / "t.qcow2"
    run([qemu_img, "create", "-f", "qcow2", str(img), "1M"], check=True)
    failed = []
    node = open_image(f"blkdebug:{cfg}:{img}", "qcow2", read_only=False)
    for offset in (0, 65536 + 512):
        try:
            node.write(offset, b"x" * 4096)
        except BlockError as exc:
            assert exc.errno == errno.EIO
            failed.append(offset)
    try:
        node.flush()
        failed.append("no flush error")
    except BlockError as exc:
        assert exc.errno == errno.EIO
    try:
        node.close()
    except BlockError:
        pass
    if event in ("cluster_alloc", "write_aio"):
        assert failed[0] == 0  # the first write fails, as with qemu-io
    if once == "on":
        assert 65536 + 512 not in failed
    # the image may leak clusters, never be corrupt
    res = run([qemu_img, "check", str(img)])
    assert res.returncode in (0, 3), res.stdout + res.stderr
    assert "ERROR" not in res.stdout


def test_qcow2_first_write_fails_like_qemu(qemu_io: str, qemu_img: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": "cluster_alloc", "once": "on"}))
    ops: list[Op] = [("write", 0, 4096), ("write", 65536, 4096), ("read", 0, 4096)]
    for name in ("a.qcow2", "b.qcow2"):
        run([qemu_img, "create", "-f", "qcow2", str(tmp_path / name), "1M"], check=True)
    theirs = _qemu_outcomes(qemu_io, ["-f", "qcow2", f"blkdebug:{cfg}:a.qcow2"], ops, tmp_path)
    ours = _our_outcomes({"filename": f"blkdebug:{cfg}:b.qcow2", "fmt": "qcow2"}, ops, tmp_path)
    assert ours == theirs == ["Input/output error", "ok", "ok"]
    for name in ("a.qcow2", "b.qcow2"):
        assert run([qemu_img, "check", str(tmp_path / name)]).returncode == 0


BAD_CONFIGS = [
    '[inject-error]\nevent = "foo"\n',
    '[inject-error]\nerrno = "5"\n',
    '[inject-error]\nevent = "read_aio"\nerrno = "abc"\n',
    '[inject-error]\nevent = "read_aio"\nerrno = " 7 "\n',
    '[inject-error]\nevent = "read_aio"\niotype = "xx"\n',
    '[inject-error]\nevent = "read_aio"\nonce = "maybe"\n',
    '[foo]\nevent = "read_aio"\n',
    '[inject-error]\nevent = "read_aio"\nbogus = "1"\n',
    '[inject-error]\nevent="read_aio"\n',
    "garbage line\n",
    '[inject-error]\nevent = "read_aio"\n  \n',
    '[inject-error "1x"]\nevent = "read_aio"\n',
    '[set-state]\nevent = "read_aio"\nnew_state = "x"\n',
]


@pytest.mark.parametrize("text", BAD_CONFIGS)
def test_bad_config(qemu_io: str, tmp_path: Path, raw_img: Path, text: str) -> None:
    (tmp_path / "cfg").write_text(text)
    name = "blkdebug:cfg:img.raw"
    res = run([qemu_io, "-f", "raw", "-c", "read 0 512", name], cwd=tmp_path)
    prefix = f"qemu-io: can't open device {name}: "
    assert res.returncode == 1 and res.stderr.startswith(prefix), res.stderr
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(BlockError) as info:
            open_image(name, "raw")
    finally:
        os.chdir(old)
    assert prefix + info.value.message + "\n" == res.stderr


@pytest.mark.parametrize(
    "extra",
    [
        "file.inject-error.1.event=read_aio",
        "file.inject-error.0.event=read_aio,file.inject-error.0.foo=1",
        "file.inject-error.0.event=read_aio,file.inject-error.event=x",
        "file.inject-error.0=x",
        "file.foo=1",
        "file.align=3",
        "file.align=abc",
        "file.align=4096,file.max-transfer=512",
        "file.align=4096,file.opt-write-zero=512",
        "file.set-state.0.event=nope",
    ],
)
def test_bad_options(qemu_io: str, tmp_path: Path, raw_img: Path, extra: str) -> None:
    text = f"driver=raw,file.driver=blkdebug,file.image.filename={raw_img},{extra}"
    res = run([qemu_io, "--image-opts", "-c", "read 0 512", text])
    assert res.returncode == 1 and res.stderr.startswith("qemu-io: can't open: "), res.stderr
    with pytest.raises(BlockError) as info:
        open_image(None, options=parse_opts(text))
    assert "qemu-io: can't open: " + info.value.message + "\n" == res.stderr


@pytest.mark.parametrize(
    ("name", "cfg_text"),
    [
        ("blkdebug:nonexist:img.raw", None),
        ("blkdebug:cfg", ""),
        ("blkdebug:cfg:nonexist", ""),
    ],
)
def test_bad_open(
    qemu_io: str, tmp_path: Path, raw_img: Path, name: str, cfg_text: str | None
) -> None:
    if cfg_text is not None:
        (tmp_path / "cfg").write_text(cfg_text)
    res = run([qemu_io, "-f", "raw", "-c", "read 0 512", name], cwd=tmp_path)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(BlockError) as info:
            open_image(name, "raw")
    finally:
        os.chdir(old)
    assert res.stderr == f"qemu-io: can't open device {name}: {info.value.message}\n"


def test_event_none_fails_probing(tmp_path: Path, raw_img: Path) -> None:
    cfg = _config(tmp_path / "cfg", ("inject-error", {"event": "none"}))
    with pytest.raises(BlockError) as info:
        open_image(f"blkdebug:{cfg}:{raw_img}")
    assert info.value.errno == errno.EIO


def test_breakpoints(qemu_io: str, tmp_path: Path, raw_img: Path) -> None:
    res = run(
        [qemu_io, "-f", "raw"]
        + ["-c", "break foo T", "-c", "remove_break X", "-c", "resume X"]
        + ["blkdebug::img.raw"],
        cwd=tmp_path,
    )
    assert res.stdout.splitlines() == [
        "Could not set breakpoint: No such file or directory",
        "Could not remove breakpoint X: No such file or directory",
        "Could not resume request: No such file or directory",
    ]
    node = open_image(f"blkdebug::{raw_img}", "raw")
    bd = node.file
    assert isinstance(bd, Blkdebug)
    lines: list[str] = []
    bd.notify = lines.append
    for call in (
        lambda: bd.debug_breakpoint("foo", "T"),
        lambda: bd.debug_remove_breakpoint("X"),
        lambda: bd.debug_resume("X"),
    ):
        with pytest.raises(BlockError) as info:
            call()
        assert info.value.errno == errno.ENOENT
    assert not bd.debug_is_suspended("A")

    bd.debug_breakpoint("read_aio", "A")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (node.read(0, 512), done.set()))
    thread.start()
    deadline = time.monotonic() + 10
    while not bd.debug_is_suspended("A"):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert not done.wait(0.05)  # blocked at the breakpoint
    bd.debug_resume("A")
    thread.join(10)
    assert done.is_set() and not bd.debug_is_suspended("A")
    assert lines == ["blkdebug: Suspended request 'A'\n", "blkdebug: Resuming request 'A'\n"]

    # a breakpoint fires once; removed ones never fire
    node.read(0, 512)
    bd.debug_breakpoint("read_aio", "B")
    bd.debug_remove_breakpoint("B")
    node.read(0, 512)
    assert len(lines) == 2
    node.close()


def test_config_parser_and_flatten() -> None:
    sections = parse_config_text(
        '# comment\n\n[inject-error]\nevent = "read_aio"\n  errno = "0x1c"\n'
        '[set-state "s1"]\nevent = "none"\nnew_state = "2"\n'
    )
    assert [(s.group, s.values) for s in sections] == [
        ("inject-error", {"event": "read_aio", "errno": "0x1c"}),
        ("set-state", {"event": "none", "new_state": "2"}),
    ]
    assert flatten({"a": {"b": [{"c": 1}, 2, [3]]}, "d": []}) == {
        "a.b.0.c": 1,
        "a.b.1": 2,
        "a.b.2.0": 3,
        "d": [],
    }
    assert parse_json_filename('json:{"x": {"inject-error": [{"event": "none"}]}}') == {
        "x.inject-error.0.event": "none"
    }
