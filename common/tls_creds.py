"""QEMU's TLS credentials objects (``tls-creds-x509``, ``tls-creds-psk``):
their ``--object`` properties, the files they name, and the client side of
the handshake (crypto/tlscredsx509.c, crypto/tlscredspsk.c, crypto/tlssession.c).

Shared by pyqemu-nbd's server (:mod:`pyqemu.nbd_server.tls`) and the NBD
client block driver (:mod:`pyqemu.common.block.nbd`), whose objects come
from :mod:`pyqemu.common.objects`.

* x509 files in ``dir``: ``ca-cert.pem`` (required), ``ca-crl.pem``,
  ``server-cert.pem``/``server-key.pem`` (server), ``client-cert.pem``/
  ``client-key.pem`` (client, optional). The standard library's :mod:`ssl`.
* PSK: ``dir/keys.psk`` with ``username:hexkey`` lines; ``sslpsk3`` (Python's
  :mod:`ssl` has no PSK callbacks).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import ssl

from .errors import QemuError
from .options import parse_bool


class TLSError(QemuError):
    """A TLS configuration or handshake failure, with qemu's message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True)
class X509Creds:
    id: str
    dir: str
    endpoint: str
    verify_peer: bool

    def files(self) -> tuple[str, str, str, str | None]:
        """(ca-cert, cert, key, ca-crl or None), checked as qemu does; a client's
        cert and key are "" when absent."""
        ca = cred_path(self.dir, "ca-cert.pem", True)
        if self.endpoint == "client":
            cert = cred_path(self.dir, "client-cert.pem", False)
            key = cred_path(self.dir, "client-key.pem", False)
            return ca or "", cert or "", key or "", None
        crl = cred_path(self.dir, "ca-crl.pem", False)
        cert = cred_path(self.dir, "server-cert.pem", True)
        key = cred_path(self.dir, "server-key.pem", True)
        return ca or "", cert or "", key or "", crl


@dataclasses.dataclass(frozen=True)
class PSKCreds:
    id: str
    dir: str
    endpoint: str
    username: str

    @property
    def keys_file(self) -> str:
        return os.path.join(self.dir, "keys.psk")

    def key_for(self, identity: str) -> bytes | None:
        """The key of ``identity`` from keys.psk (read at each handshake)."""
        try:
            with open(self.keys_file, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        for line in lines[:100000]:
            name, sep, hexkey = line.strip().partition(":")
            if sep and name == identity:
                try:
                    return bytes.fromhex(hexkey.strip())
                except ValueError:
                    return None
        return None


Creds = X509Creds | PSKCreds
#: the object types this module creates
TLS_TYPES = ("tls-creds-psk", "tls-creds-x509")


def cred_path(directory: str, name: str, required: bool) -> str | None:
    """qcrypto_tls_creds_get_path: the file's path, None if optional and absent."""
    path = os.path.join(directory, name)
    try:
        os.stat(path)
    except OSError as exc:
        if required or exc.errno != errno.ENOENT:
            raise TLSError(f"Unable to access credentials {path}: {exc.strerror or exc}") from None
        return None
    if not os.access(path, os.R_OK):
        raise TLSError(f"Unable to access credentials {path}: Permission denied")
    return path


def _take(props: dict[str, str], allowed: tuple[str, ...]) -> None:
    for key in props:
        if key not in allowed:
            raise TLSError(f"Parameter '{key}' is unexpected")


def _endpoint(props: dict[str, str]) -> str:
    value = props.get("endpoint", "client")
    if value not in ("client", "server"):
        raise TLSError(f"Parameter 'endpoint' does not accept value '{value}'")
    return value


def make_creds(kind: str, oid: str, props: dict[str, str], tool: str = "pyqemu") -> Creds:
    """A ``tls-creds-x509`` / ``tls-creds-psk`` object from its properties
    (without ``qom-type`` and ``id``); the files are checked now, as qemu's
    ``loaded`` property does at creation."""
    if kind == "tls-creds-x509":
        _take(
            props,
            ("dir", "endpoint", "verify-peer", "priority", "sanity-check", "loaded",
             "passwordid"),
        )  # fmt: skip
        endpoint = _endpoint(props)
        verify = parse_bool(props.get("verify-peer", "on"), "verify-peer")
        parse_bool(props.get("sanity-check", "on"), "sanity-check")
        if "passwordid" in props:
            raise TLSError(f"passwordid (encrypted keys) is not supported by {tool}")
        if "dir" not in props:
            raise TLSError("Missing 'dir' property value")
        x509 = X509Creds(oid, props["dir"], endpoint, verify)
        x509.files()
        return x509
    if kind != "tls-creds-psk":
        raise TLSError(f"Parameter 'qom-type' does not accept value '{kind}'")
    _take(props, ("dir", "endpoint", "username", "priority", "loaded", "verify-peer"))
    endpoint = _endpoint(props)
    if "dir" not in props:
        raise TLSError("Missing 'dir' property value")
    psk = PSKCreds(oid, props["dir"], endpoint, props.get("username", "qemu"))
    cred_path(psk.dir, "keys.psk", True)
    return psk


def reason(exc: BaseException) -> str:
    """A short text for an ssl/OS error."""
    if isinstance(exc, ssl.SSLError):
        return str(getattr(exc, "reason", None) or exc.args[-1] if exc.args else exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _psk_module():  # type: ignore[no-untyped-def]
    try:
        import sslpsk3
    except ImportError:
        raise TLSError(
            "tls-creds-psk needs the sslpsk3 package (pip install 'pyqemu[tls]')"
        ) from None
    return sslpsk3


def client_context(creds: Creds, hostname: str | None) -> ssl.SSLContext:
    """The client's SSL context for ``creds`` (qcrypto_tls_session_new, client)."""
    if creds.endpoint != "client":
        raise TLSError("Expected TLS credentials for a client endpoint")
    if isinstance(creds, X509Creds):
        ca, cert, key, _ = creds.files()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # checked after the handshake, with qemu's message
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"Unable to load CA certificate list {ca}: {reason(exc)}") from None
        if cert and key:
            try:
                ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise TLSError(
                    f"Cannot load certificate '{cert}' & key '{key}': {reason(exc)}"
                ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED if creds.verify_peer else ssl.CERT_NONE
        return ctx
    key_bytes = creds.key_for(creds.username)
    if key_bytes is None:
        raise TLSError(
            f"Username {creds.username} not found in pre-shared key file {creds.keys_file}"
        )
    sslpsk3 = _psk_module()
    psk_ctx = sslpsk3.SSLPSKContext(ssl.PROTOCOL_TLS_CLIENT)
    psk_ctx.check_hostname = False
    psk_ctx.verify_mode = ssl.CERT_NONE
    psk_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    psk_ctx.set_ciphers("PSK:ECDHE-PSK:DHE-PSK:@SECLEVEL=0")
    identity = creds.username
    psk_ctx.set_psk_client_callback(lambda hint: (identity, key_bytes))  # Python 3.13's order
    return psk_ctx


def client_handshake(sock: socket.socket, creds: Creds, hostname: str | None) -> ssl.SSLSocket:
    """Run the client side of TLS over ``sock`` (after STARTTLS) and check the
    server's certificate against ``hostname`` as qemu does; the TLS socket."""
    ctx = client_context(creds, hostname)
    try:
        tls = ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(f"TLS handshake failed: {reason(exc)}") from None
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise TLSError(f"The certificate hasn't got a known issuer: {exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        tls.close()
        text = reason(exc)
        if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)) or not text:
            text = "The TLS connection was non-properly terminated."
        raise TLSError(f"TLS handshake failed: {text}") from None
    if isinstance(creds, X509Creds) and creds.verify_peer:
        if not hostname:
            tls.close()
            raise TLSError("No hostname for certificate validation")
        cert = tls.getpeercert() or {}
        if not _hostname_matches(cert, hostname):
            tls.close()
            raise TLSError(f"Certificate does not match the hostname {hostname}")
    return tls


def _hostname_matches(cert: dict, hostname: str) -> bool:
    """gnutls_x509_crt_check_hostname, as far as DNS/IP SANs and the CN go."""
    import ipaddress

    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    ips = [v for k, v in cert.get("subjectAltName", ()) if k == "IP Address"]
    try:
        want_ip = ipaddress.ip_address(hostname)
    except ValueError:
        want_ip = None
    if want_ip is not None:
        return any(_ip_eq(v, want_ip) for v in ips)
    if not names:
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    host = hostname.lower().rstrip(".")
    for name in names:
        pattern = name.lower().rstrip(".")
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host:
            if host.split(".", 1)[1] == pattern[2:]:
                return True
    return False


def _ip_eq(text: str, want: object) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text.strip()) == want
    except ValueError:
        return False
