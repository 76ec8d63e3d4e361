"""The ``nbd`` block driver with ``tls-creds`` (x509 and PSK) against
pyqemu-nbd and qemu-nbd started with --tls-creds, and its errors compared with
qemu-img's. Certificates are made with openssl in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyqemu.common import objects
from pyqemu.common.block import BlockError, open_image

from tests.common.block.test_nbd_client import server  # noqa: F401  (fixture)
from tests.nbd_server.test_tls import make_pki, make_psk

PYQEMU_IMG = [sys.executable, "-m", "pyqemu.img_tool.main"]
SIZE = 4 << 20


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("creds")
    dirs = make_pki(root / "pki")
    good, bad = make_psk(root)
    return {**dirs, "psk": good, "badpsk": bad}


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(64 * 1024) * (SIZE // (64 * 1024)))
    return path


@pytest.fixture
def registry() -> Iterator[None]:
    objects.remove_all()
    try:
        yield
    finally:
        objects.remove_all()


def server_object(kind: str, creds: dict[str, Path]) -> str:
    if kind == "x509":
        return f"tls-creds-x509,id=tls0,dir={creds['server']},endpoint=server"
    return f"tls-creds-psk,id=tls0,dir={creds['psk']},endpoint=server"


def client_object(kind: str, creds: dict[str, Path]) -> str:
    if kind == "x509":
        return f"tls-creds-x509,id=tls0,dir={creds['client']},endpoint=client"
    return f"tls-creds-psk,id=tls0,dir={creds['psk']},username=alice,endpoint=client"


def start_tls(server, who: str, kind: str, creds: dict[str, Path], disk: Path) -> str:  # noqa: F811
    persist = "-t" if who == "qemu" else "--persistent"
    return server(
        who, "--object", server_object(kind, creds), "--tls-creds", "tls0", persist,
        "-f", "raw", str(disk),
    )  # fmt: skip


def img(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = PYQEMU_IMG if tool == "py" else ["qemu-img"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def opts(sock: str, extra: str = ",tls-creds=tls0") -> str:
    return f"driver=nbd,server.type=unix,server.path={sock}{extra}"


@pytest.mark.parametrize("who", ["py", "qemu"])
@pytest.mark.parametrize("kind", ["x509", "psk"])
def test_info_and_convert_match_qemu_img(
    server,  # noqa: F811 (the imported fixture)
    who: str,
    kind: str,
    creds: dict[str, Path],
    disk: Path,
    tmp_path: Path,  # noqa: F811
) -> None:
    sock = start_tls(server, who, kind, creds, disk)
    host = ",tls-creds=tls0,tls-hostname=localhost" if kind == "x509" else ",tls-creds=tls0"
    args = ["--object", client_object(kind, creds), "--image-opts", opts(sock, host)]
    ours, theirs = img("py", "info", *args), img("qemu", "info", *args)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout
    assert "virtual size: 4 MiB (4194304 bytes)" in ours.stdout
    out = tmp_path / "out.raw"
    done = img("py", "convert", "-O", "raw", *args, str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == disk.read_bytes()


@pytest.mark.parametrize("who", ["py", "qemu"])
def test_write_and_large_read_in_process(
    server,  # noqa: F811 (the imported fixture)
    who: str,
    creds: dict[str, Path],
    disk: Path,
    registry: None,  # noqa: F811
) -> None:
    sock = start_tls(server, who, "psk", creds, disk)
    objects.add_object(client_object("psk", creds))
    node = open_image(options={"driver": "nbd", "server.type": "unix", "server.path": sock,
                               "tls-creds": "tls0"}, read_only=False)  # fmt: skip
    try:
        payload = os.urandom(3 << 20)
        node.write(4096, payload)
        node.flush()
        assert node.read(4096, len(payload)) == payload
    finally:
        node.close()
    assert disk.read_bytes()[4096 : 4096 + len(payload)] == payload


def _err(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1
    return proc.stderr.split(": ", 1)[1]


@pytest.mark.parametrize(
    "case",
    ["plain", "wrong-host", "no-host", "unknown-id", "server-endpoint"],
)
def test_errors_as_qemu_img(
    server,  # noqa: F811 (the imported fixture)
    case: str,
    creds: dict[str, Path],
    disk: Path,  # noqa: F811
) -> None:
    sock = start_tls(server, "qemu", "x509", creds, disk)
    obj = ["--object", client_object("x509", creds)]
    args = {
        "plain": ["--image-opts", opts(sock, "")],
        "wrong-host": [*obj, "--image-opts", opts(sock, ",tls-creds=tls0,tls-hostname=other")],
        "no-host": [*obj, "--image-opts", opts(sock)],
        "unknown-id": ["--image-opts", opts(sock, ",tls-creds=nope")],
        "server-endpoint": [
            "--object",
            f"tls-creds-x509,id=tls0,dir={creds['server']},endpoint=server",
            "--image-opts",
            opts(sock),
        ],  # fmt: skip
    }[case]
    ours, theirs = img("py", "info", *args), img("qemu", "info", *args)
    assert _err(ours) == _err(theirs)
    assert ours.stdout == ""


def test_plaintext_server_denies_starttls(server, creds: dict[str, Path], disk: Path) -> None:  # noqa: F811
    sock = server("py", "--persistent", "-f", "raw", str(disk))
    args = ["--object", client_object("psk", creds), "--image-opts", opts(sock)]
    ours = img("py", "info", *args)
    assert ": Denied by server for option 5 (starttls)\n" in _err(ours)
    qsock = server("qemu", "-t", "-f", "raw", str(disk))
    args = ["--object", client_object("psk", creds), "--image-opts", opts(qsock)]
    assert _err(img("py", "info", *args)) == _err(img("qemu", "info", *args))


def test_wrong_psk_key_fails(server, creds: dict[str, Path], disk: Path) -> None:  # noqa: F811
    sock = start_tls(server, "py", "psk", creds, disk)
    bad = f"tls-creds-psk,id=tls0,dir={creds['badpsk']},username=bob,endpoint=client"
    proc = img("py", "info", "--object", bad, "--image-opts", opts(sock))
    assert "TLS handshake failed" in _err(proc)
    missing = f"tls-creds-psk,id=tls0,dir={creds['psk']},username=carol,endpoint=client"
    proc = img("py", "info", "--object", missing, "--image-opts", opts(sock))
    assert "carol" in _err(proc)


def test_objects_registry_parses_tls_creds(creds: dict[str, Path], registry: None) -> None:
    x509 = objects.add_object(client_object("x509", creds).replace("tls0", "a"))
    assert objects.tls_creds("a") is x509
    with pytest.raises(objects.QemuError, match="No TLS credentials with id 'b'"):
        objects.tls_creds("b")
    with pytest.raises(objects.QemuError, match="Unable to access credentials"):
        objects.add_object(f"tls-creds-x509,id=c,dir={creds['psk']},endpoint=client")
    with pytest.raises(BlockError, match="No TLS credentials with id 'b'"):
        open_image(options={"driver": "nbd", "server.type": "unix", "server.path": "/nonexistent",
                            "tls-creds": "b"})  # fmt: skip
