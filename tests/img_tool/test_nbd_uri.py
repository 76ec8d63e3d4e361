"""pyqemu-img and pyqemu-io on NBD exports (pyqemu-nbd, qemu-nbd, nbdkit): the
same output, messages and exit codes as qemu-img and qemu-io for the same URI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common.block.test_nbd_client import KINDS, _peers, export, server  # noqa: F401

_TIMING = re.compile(r"\d+ ops; .*$", re.M)


def run(*cmd: str) -> tuple[int, str, str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr
    return p.returncode, _TIMING.sub("", p.stdout), p.stderr


@pytest.fixture
def our_io(tmp_path: Path) -> str:
    """pyqemu-io under the program name ``qemu-io``."""
    folder = tmp_path / "iobin"
    folder.mkdir()
    path = folder / "qemu-io"
    path.write_text(f"#!{sys.executable}\nfrom pyqemu.io_tool.main import main\nmain()\n")
    path.chmod(0o755)
    return str(path)


def names(uri: str) -> list[str]:
    """The URI and its legacy, json and --image-opts spellings."""
    sock = uri.partition("socket=")[2]
    name = uri.partition(":///")[2].partition("?")[0]
    tree: dict[str, object] = {"driver": "nbd", "server": {"type": "unix", "path": sock}}
    if name:
        tree["export"] = name
    legacy = f"nbd:unix:{sock}" + (f":exportname={name}" if name else "")
    return [uri, legacy, "json:" + json.dumps(tree)]


@pytest.mark.parametrize("kind", KINDS)
def test_info_map_same(kind: str, server, tmp_path: Path, ours: str) -> None:  # noqa: F811
    uri = export(kind, server, tmp_path)
    if kind == "nbdkit":  # give the memory disk some data and a zeroed range
        run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", "-c", "write -z 8M 1M", uri)
    for name in names(uri):
        for args in (("info",), ("info", "--output=json"), ("map",), ("map", "--output=json")):
            assert run(ours, *args, name) == run("qemu-img", *args, name), (args, name)
    sock = uri.partition("socket=")[2]
    opts = f"driver=nbd,server.type=unix,server.path={sock}"
    opts += ",export=exp" if kind != "nbdkit" else ""
    assert run(ours, "info", "--image-opts", opts) == run("qemu-img", "info", "--image-opts", opts)


@pytest.mark.parametrize("kind", KINDS)
def test_convert_compare(kind: str, server, tmp_path: Path, ours: str) -> None:  # noqa: F811
    uri = export(kind, server, tmp_path)
    ref, out = tmp_path / "ref.qcow2", tmp_path / "out.qcow2"
    assert run("qemu-img", "convert", "-O", "qcow2", uri, str(ref))[0] == 0
    assert run(ours, "convert", "-m", "4", "-W", "-O", "qcow2", uri, str(out))[0] == 0
    assert run("qemu-img", "compare", uri, str(out)) == (0, "Images are identical.\n", "")
    assert run(ours, "compare", uri, str(out)) == (0, "Images are identical.\n", "")
    assert run("qemu-img", "check", str(out))[0] == 0

    # -W: clusters are allocated in the order the reads complete (the nbd
    # client keeps several in flight), so the host offsets may differ from
    # qemu-img's in-order layout (and split map runs); the guest map must not
    def guest_map(path: Path) -> list[dict]:
        out: list[dict] = []
        for r in json.loads(run("qemu-img", "map", "--output=json", str(path))[1]):
            r.pop("offset", None)
            last = out[-1] if out else None
            if last and {**last, "start": 0, "length": 0} == {**r, "start": 0, "length": 0}:
                last["length"] += r["length"]
            else:
                out.append(r)
        return out

    assert guest_map(out) == guest_map(ref)
    # and back into the export, then compare again
    assert run(ours, "convert", "-n", "-O", "raw", str(out), uri)[0] == 0
    assert run("qemu-img", "compare", uri, str(ref))[0] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_qemu_io_same(kind: str, server, tmp_path: Path, our_io: str) -> None:  # noqa: F811
    uri = export(kind, server, tmp_path)
    steps = [
        ("write -P 0x11 100 70000",),
        ("read -P 0x11 100 70000", "read -v 99 4"),
        ("write -z 1M 64k", "read -P 0 1M 64k"),
        ("writev -P 5 0 4k 4k", "read -P 5 0 8k"),
        ("write -f -P 7 4M 512", "flush", "discard 5M 64k"),
        ("read -P 9 0 512",),  # a pattern mismatch
    ]
    for step in steps:
        args = [a for c in step for a in ("-c", c)]
        assert run(our_io, "-f", "raw", *args, uri) == run("qemu-io", "-f", "raw", *args, uri)
    for name in names(uri):
        args = ["-r", "-c", "read -v 4M 16", "-c", "write 0 1"]
        assert run(our_io, *args, name) == run("qemu-io", *args, name), name


def test_read_only_export(server, tmp_path: Path, ours: str, our_io: str) -> None:  # noqa: F811
    uri = export("qemu", server, tmp_path, "-r")
    for cmd in ((our_io, "-c", "write 0 512"), (our_io, "-f", "raw", "-c", "write 0 512")):
        assert run(*cmd, uri) == run("qemu-io", *cmd[1:], uri)
    assert run(ours, "resize", "-f", "raw", uri, "32M") == run(
        "qemu-img", "resize", "-f", "raw", uri, "32M"
    )


@pytest.mark.parametrize(
    "name",
    [
        "nbd+unix:///exp?socket={tmp}/none.sock",
        "nbd://127.0.0.1:1/x",
        "nbd://",
        "nbd:",
        "nbd:127.0.0.1",
        "nbd+unix:///x?socket=a&b=c",
        'json:{"driver":"nbd"}',
    ],
)
def test_open_errors_same(name: str, tmp_path: Path, ours: str) -> None:
    name = name.replace("{tmp}", str(tmp_path))
    ref = run("qemu-img", "info", name)
    assert ref[0] == 1
    assert run(ours, "info", name) == ref


@pytest.mark.parametrize("kind", ("py", "qemu"))
def test_unknown_export_same(kind: str, server, tmp_path: Path, ours: str) -> None:  # noqa: F811
    uri = export(kind, server, tmp_path).replace("/exp?", "/nope?")
    assert run(ours, "info", uri) == run("qemu-img", "info", uri)


def test_qemu_nbd_image_clean_after_our_writes(
    server,  # noqa: F811
    tmp_path: Path,
    our_io: str,
) -> None:
    uri = export("qemu", server, tmp_path)
    image = tmp_path / "qemu.qcow2"
    cmds = ["write -P 1 0 3M", "write -z 1M 512k", "discard 2M 64k", "aio_write -P 2 10M 1M"]
    assert run(our_io, "-f", "raw", *[a for c in cmds for a in ("-c", c)], uri)[0] == 0
    assert run("qemu-io", "-f", "raw", "-c", "read -P 2 10M 1M", uri)[0] == 0
    rc, out, err = run("qemu-img", "check", "-U", str(image))
    assert (rc, err) == (0, "") and "No errors were found on the image." in out
