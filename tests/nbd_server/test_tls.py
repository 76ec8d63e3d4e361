"""pyqemu-nbd with --tls-creds: x509 and PSK against libnbd and qemu's clients,
plaintext refused, --tls-authz, qemu-nbd's CLI messages."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pyqemu.common.nbd import (
    NEED_DATA,
    ClientConnection,
    ClientFlag,
    ClientFlags,
    Opt,
    Option,
    OptionReply,
    Rep,
)

from .conftest import pyqemu_nbd, run

CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
SERVER_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
)
CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
)
CLIENT_DN = "C=GB,O=pyqemu,CN=client"


def _openssl(*args: str) -> None:
    run("openssl", *args)


def make_pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate and two client certificates, laid out in
    directories as qemu and libnbd read them: server/, client/, other/."""
    root.mkdir(parents=True, exist_ok=True)
    exts = {}
    for name, text in (("ca", CA_EXT), ("srv", SERVER_EXT), ("cli", CLIENT_EXT)):
        exts[name] = root / f"{name}.ext"
        exts[name].write_text("[v]\n" + text)
    cnf = root / "req.cnf"
    cnf.write_text("[req]\ndistinguished_name=d\n[d]\n" + "[v]\n" + CA_EXT)
    ca_key, ca_cert = root / "ca-key.pem", root / "ca-cert.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca_cert), "-days", "2", "-subj", "/CN=pyqemu test CA",
             "-config", str(cnf), "-extensions", "v")  # fmt: skip

    def sign(name: str, subj: str, ext: Path) -> tuple[Path, Path]:
        key, csr, cert = root / f"{name}-key.pem", root / f"{name}.csr", root / f"{name}-cert.pem"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", subj)  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
                 "-extensions", "v")  # fmt: skip
        return cert, key

    dirs = {d: root / d for d in ("server", "client", "other")}
    for d in dirs.values():
        d.mkdir()
        (d / "ca-cert.pem").write_bytes(ca_cert.read_bytes())
    cert, key = sign("server", "/O=pyqemu/CN=localhost", exts["srv"])
    (dirs["server"] / "server-cert.pem").write_bytes(cert.read_bytes())
    (dirs["server"] / "server-key.pem").write_bytes(key.read_bytes())
    for who, cn in (("client", "client"), ("other", "intruder")):
        cert, key = sign(who, f"/C=GB/O=pyqemu/CN={cn}", exts["cli"])
        (dirs[who] / "client-cert.pem").write_bytes(cert.read_bytes())
        (dirs[who] / "client-key.pem").write_bytes(key.read_bytes())
    return dirs


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_psk(root: Path) -> tuple[Path, Path]:
    """keys.psk for alice (the server's dir), and a file with a wrong key for bob."""
    good, bad = root / "psk", root / "badpsk"
    good.mkdir()
    bad.mkdir()
    (good / "keys.psk").write_text("alice:" + hashlib.sha256(b"alice").hexdigest() + "\n")
    (bad / "keys.psk").write_text("bob:" + hashlib.sha256(b"bob").hexdigest() + "\n")
    return good, bad


def x509_args(d: Path, *extra: str) -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,dir={d},endpoint=server{''.join(extra)}",
            "--tls-creds", "tls0"]  # fmt: skip


def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.raw"
    run("qemu-img", "create", "-q", "-f", "raw", str(path), "4M")
    return str(path)


def tls_uri(sock: str, query: str, user: str = "") -> str:
    return f"nbds+unix://{user}{'@' if user else ''}/?socket={sock}&{query}"


def qemu_client_opts(sock: str, creds: str) -> list[str]:
    return ["--object", creds, "--image-opts",
            f"driver=nbd,server.type=unix,server.path={sock},tls-creds=tls0,tls-hostname=localhost"]  # fmt: skip


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM the server; its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return err


def test_x509_nbdinfo_qemu_img_qemu_io(tmp_path, server, pki) -> None:
    path = image(tmp_path)
    proc, sock = server("py", "-f", "raw", "-t", *x509_args(pki["server"]), path)
    out = run("nbdinfo", tls_uri(sock, f"tls-certificates={pki['client']}")).stdout
    assert "newstyle-fixed with TLS" in out
    assert "export-size: 4194304" in out
    client = f"tls-creds-x509,id=tls0,dir={pki['client']},endpoint=client"
    info = run("qemu-img", "info", *qemu_client_opts(sock, client)).stdout
    assert "virtual size: 4 MiB (4194304 bytes)" in info
    io = run("qemu-io", "-c", "write -P 0x5a 64k 1M", "-c", "read -P 0x5a 64k 1M",
             *qemu_client_opts(sock, client)).stdout  # fmt: skip
    assert "read 1048576/1048576 bytes at offset 65536" in io
    stop(proc)
    data = Path(path).read_bytes()
    assert data[65536 : 65536 + (1 << 20)] == b"\x5a" * (1 << 20)


def test_plaintext_refused(tmp_path, server, pki) -> None:
    _, sock = server("py", "-f", "raw", "-t", *x509_args(pki["server"]), image(tmp_path))
    res = run("nbdinfo", f"nbd+unix:///?socket={sock}", check=False)
    assert res.returncode != 0
    assert "export-size" not in res.stdout
    res = run("nbdinfo", "--list", f"nbd+unix:///?socket={sock}", check=False)
    assert res.returncode != 0
    res = run("qemu-img", "info", "--image-opts",
              f"driver=nbd,server.type=unix,server.path={sock}", check=False)  # fmt: skip
    assert res.returncode != 0
    # by hand: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD ...
    with Client(sock) as c:
        for opt in (Option(Opt.LIST), Option(Opt.STRUCTURED_REPLY), Option.go("", ())):
            reply = c.option(opt)
            assert reply.reply == Rep.ERR_TLS_REQD, reply
            assert "not permitted before TLS" in str(reply.data)
        # ... and NBD_OPT_EXPORT_NAME before TLS is a disconnect
        c.sock.sendall(c.conn.send(Option.export_name("")))
        assert c.sock.recv(100) == b""
    # bytes sent ahead of the TLS handshake (a STARTTLS injection) are refused
    with Client(sock) as c:
        c.sock.sendall(c.conn.send(Option(Opt.STARTTLS)) + b"IHAVEOPT\0\0\0\3\0\0\0\0")
        got = b""
        for _ in range(100):
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            got += chunk
        assert len(got) == 20  # the STARTTLS ACK, then the server hangs up


class Client:
    """A raw plaintext NBD client on the engine."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.conn = ClientConnection()
        self._next()  # the greeting
        flags = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES
        self.sock.sendall(self.conn.send(ClientFlags(flags)))

    def _next(self) -> object:
        for _ in range(1000):
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev
            self.conn.receive_data(self.sock.recv(65536))
        raise AssertionError("no message")

    def option(self, opt: Option) -> OptionReply:
        self.sock.sendall(self.conn.send(opt))
        ev = self._next()
        assert isinstance(ev, OptionReply)
        return ev

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_authz_accepts_dn_and_refuses_another(tmp_path, server, pki) -> None:
    ident = CLIENT_DN.replace(",", ",,")
    proc, sock = server("py", "-f", "raw", "-t", *x509_args(pki["server"]),
                        "--object", f"authz-simple,id=auth0,identity={ident}",
                        "--tls-authz", "auth0", image(tmp_path))  # fmt: skip
    ok = run("nbdinfo", tls_uri(sock, f"tls-certificates={pki['client']}"))
    assert "export-size: 4194304" in ok.stdout
    bad = run("nbdinfo", tls_uri(sock, f"tls-certificates={pki['other']}"), check=False)
    assert bad.returncode != 0
    assert "export-size" not in bad.stdout
    client = f"tls-creds-x509,id=tls0,dir={pki['other']},endpoint=client"
    res = run("qemu-img", "info", *qemu_client_opts(sock, client), check=False)
    assert res.returncode != 0
    err = stop(proc)
    assert "TLS x509 authz check for C=GB,O=pyqemu,CN=intruder is denied" in err
    assert "CN=client is denied" not in err


def test_verify_peer_requires_client_cert(tmp_path, server, pki) -> None:
    _, sock = server("py", "-f", "raw", "-t", *x509_args(pki["server"]), image(tmp_path))
    nocert = tmp_path / "nocert"
    nocert.mkdir()
    (nocert / "ca-cert.pem").write_bytes((pki["client"] / "ca-cert.pem").read_bytes())
    res = run("nbdinfo", tls_uri(sock, f"tls-certificates={nocert}"), check=False)
    assert res.returncode != 0
    _, sock2 = server("py", "-f", "raw", "-t", *x509_args(pki["server"], ",verify-peer=off"),
                      image(tmp_path))  # fmt: skip
    res = run("nbdinfo", tls_uri(sock2, f"tls-certificates={nocert}"))
    assert "export-size: 4194304" in res.stdout


def test_psk_nbdinfo_and_qemu_img(tmp_path, server) -> None:
    good, bad = make_psk(tmp_path)
    proc, sock = server("py", "-f", "raw", "-t", "--object",
                        f"tls-creds-psk,id=tls0,dir={good},endpoint=server",
                        "--tls-creds", "tls0", image(tmp_path))  # fmt: skip
    out = run("nbdinfo", tls_uri(sock, f"tls-psk-file={good}/keys.psk", "alice")).stdout
    assert "newstyle-fixed with TLS" in out and "export-size: 4194304" in out
    client = f"tls-creds-psk,id=tls0,dir={good},endpoint=client,username=alice"
    res = run("qemu-io", "-c", "write -P 3 0 128k", "-c", "read -P 3 0 128k",
              *qemu_client_opts(sock, client)).stdout  # fmt: skip
    assert "read 131072/131072 bytes at offset 0" in res
    info = run("qemu-img", "info", *qemu_client_opts(sock, client)).stdout
    assert "virtual size: 4 MiB" in info
    res = run("nbdinfo", tls_uri(sock, f"tls-psk-file={bad}/keys.psk", "bob"), check=False)
    assert res.returncode != 0 and "export-size" not in res.stdout
    res = run("nbdinfo", f"nbd+unix:///?socket={sock}", check=False)
    assert res.returncode != 0
    err = stop(proc)
    assert "unknown PSK identity 'bob'" in err


def _cli_cases(pki: dict[str, Path]) -> list[list[str]]:
    s, c = pki["server"], pki["client"]
    return [
        ["--tls-creds", "tls0"],
        ["--tls-authz", "a"],
        ["--object", "tls-creds-x509,id=tls0,dir=/nonexistent,endpoint=server",
         "--tls-creds", "tls0"],
        ["--object", f"tls-creds-x509,id=tls0,dir={s}", "--tls-creds", "tls0"],
        ["--object", f"tls-creds-x509,id=tls0,dir={c},endpoint=server", "--tls-creds", "tls0"],
        ["--object", "authz-simple,id=a,identity=x", "--tls-creds", "a"],
        ["--object", "foo,id=x"],
        ["--object", "tls-creds-x509,dir=/tmp"],
        ["--object", "tls-creds-x509,id=t,bogus=1"],
        ["--object", "tls-creds-x509,id=t,endpoint=middle"],
        ["--object", "tls-creds-x509,id=t,verify-peer=maybe"],
        ["--object", "tls-creds-psk,id=tls0,dir=/nonexistent,endpoint=server"],
        ["--object", "authz-simple,id=a"],
    ]  # fmt: skip


def test_cli_errors_same_as_qemu_nbd(tmp_path, pki) -> None:
    path = image(tmp_path)
    for case in _cli_cases(pki):
        sock = str(tmp_path / "never.sock")
        ours = run(*pyqemu_nbd(), "-k", sock, "-f", "raw", *case, path, check=False)
        theirs = run("qemu-nbd", "-k", sock, "-f", "raw", *case, path, check=False)
        assert theirs.returncode == 1, (case, theirs.stderr)
        assert ours.returncode == 1, case
        assert "Traceback" not in ours.stderr
        assert ours.stderr.split(": ", 1)[1] == theirs.stderr.split(": ", 1)[1], case
