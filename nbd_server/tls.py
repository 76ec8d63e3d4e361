"""TLS for pyqemu-nbd: qemu's ``--object tls-creds-x509`` / ``tls-creds-psk`` /
``authz-simple``, ``--tls-creds`` and ``--tls-authz``, server side.

The engine stays pure: the session answers NBD_OPT_STARTTLS with an ACK, then
:meth:`ServerTLS.handshake` runs TLS over the raw socket and returns a
:class:`TLSStream`, and the engine goes on reading the decrypted bytes.

TLS runs on an :class:`ssl.SSLObject` over memory BIOs rather than an
``SSLSocket``: the connection's reader thread and its workers then share one
OpenSSL object under one lock, and the reader waits for bytes on the raw socket
without holding it.

* x509: the standard library's :mod:`ssl`. Files as qemu names them in
  ``dir``: ``ca-cert.pem``, ``ca-crl.pem`` (optional), ``server-cert.pem``,
  ``server-key.pem``. ``verify-peer=on`` (qemu's default) requires a client
  certificate signed by the CA.
* PSK: ``sslpsk3`` (Python 3.11's :mod:`ssl` has no PSK callbacks); the keys
  are ``dir/keys.psk``, ``username:hexkey`` lines as gnutls reads them.
* ``--tls-authz`` with ``authz-simple``: the client certificate's subject DN,
  in the order qemu prints it (``C=GB,O=Example,CN=client``), must equal
  ``identity``. Like qemu 7.2, authz is checked only for x509 with
  ``verify-peer=on``.

The credentials objects themselves are :mod:`pyqemu.common.tls_creds` (shared with
the NBD client); :class:`Objects` is pyqemu-nbd's ``--object`` registry.

Not supported: ``passwordid`` (encrypted server keys), ``dh-params.pem`` (the
file is accepted and ignored; OpenSSL picks its own groups), ``priority``
strings (accepted, ignored), ``tls-creds-anon``, ``authz-list``/``-pam``.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
from typing import Any

from ..common.options import OptionError, parse_opts
from ..common.tls_creds import (
    Creds,
    TLSError,
    X509Creds,
    _take,
    make_creds,
)
from ..common.tls_creds import (
    reason as _reason,
)

RECV_SIZE = 256 * 1024
#: plaintext encrypted per socket write when sending large payloads
WRITE_CHUNK = 1024 * 1024
#: bounded handshake: far more round trips than any TLS handshake needs
HANDSHAKE_STEPS = 1000

#: qemu's user-creatable types that pyqemu-nbd knows about but does not do
_UNSUPPORTED = (
    "authz-list", "authz-list-file", "authz-pam", "iothread", "secret", "secret_keyring",
    "tls-cipher-suites", "tls-creds-anon", "throttle-group",
)  # fmt: skip
_KNOWN = ("authz-simple", "tls-creds-psk", "tls-creds-x509")

#: OpenSSL's long attribute names -> the short names in qemu's (gnutls') DN text
_DN_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "EMAIL",
    "domainComponent": "DC",
    "userId": "UID",
    "streetAddress": "STREET",
    "serialNumber": "serialNumber",
    "title": "title",
    "surname": "surname",
    "givenName": "givenName",
}


@dataclasses.dataclass(frozen=True)
class AuthzSimple:
    id: str
    identity: str


class Objects:
    """The ``--object`` definitions of one command line, by id."""

    def __init__(self) -> None:
        self.by_id: dict[str, Creds | AuthzSimple] = {}

    @staticmethod
    def help_text() -> str:
        lines = ["List of user creatable objects:"] + [f"  {t}" for t in _KNOWN]
        return "\n".join(lines) + "\n"

    def add(self, text: str) -> None:
        """Create the object ``text`` describes (``type,id=ID,key=value,...``)."""
        try:
            props = parse_opts(text, implied_key="qom-type")
        except OptionError as exc:
            raise TLSError(exc.message) from None
        kind = props.pop("qom-type", None)
        if kind is None:
            raise TLSError("Parameter 'qom-type' is missing")
        if kind in _UNSUPPORTED:
            raise TLSError(f"object type '{kind}' is not supported by pyqemu-nbd")
        if kind not in _KNOWN:
            raise TLSError(f"Parameter 'qom-type' does not accept value '{kind}'")
        oid = props.pop("id", None)
        if oid is None:
            raise TLSError("Parameter 'id' is missing")
        if oid in self.by_id:
            raise TLSError(
                f"attempt to add duplicate property '{oid}' to object (type 'container')"
            )
        try:
            obj = self._make(kind, oid, props)
        except OptionError as exc:
            raise TLSError(exc.message) from None
        self.by_id[oid] = obj

    def _make(self, kind: str, oid: str, props: dict[str, str]) -> Creds | AuthzSimple:
        if kind == "authz-simple":
            _take(props, ("identity",))
            if "identity" not in props:
                raise TLSError("Parameter 'identity' is missing")
            return AuthzSimple(oid, props["identity"])
        return make_creds(kind, oid, props, "pyqemu-nbd")

    def tls_creds(self, oid: str) -> Creds:
        """The credentials ``--tls-creds`` names (qemu-nbd's nbd_get_tls_creds)."""
        obj = self.by_id.get(oid)
        if obj is None:
            raise TLSError(f"No TLS credentials with id '{oid}'")
        if isinstance(obj, AuthzSimple):
            raise TLSError(f"Object with id '{oid}' is not TLS credentials")
        if obj.endpoint != "server":
            raise TLSError("Expected TLS credentials for a server endpoint")
        return obj


def peer_dn(cert: dict[str, Any]) -> str:
    """The subject of a validated peer certificate, as qemu prints it."""
    rdns = []
    for rdn in cert.get("subject", ()):
        parts = []
        for name, value in rdn:
            short = _DN_NAMES.get(name, name)
            text = str(value)
            for ch in '\\,+"<>;=':
                text = text.replace(ch, "\\" + ch)
            parts.append(f"{short}={text}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


class ServerTLS:
    """The server's TLS setup: a context built once, a handshake per client."""

    def __init__(self, creds: Creds, objects: Objects, authz: str | None = None) -> None:
        self.creds = creds
        self.objects = objects
        self.authz = authz
        #: the PSK identity the handshake on this thread did not find, if any
        self._unknown = threading.local()
        self.context = self._context()

    def _context(self) -> ssl.SSLContext:
        creds = self.creds
        if isinstance(creds, X509Creds):
            ca, cert, key, crl = creds.files()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise TLSError(
                    f"Cannot load certificate '{cert}' & key '{key}': {_reason(exc)}"
                ) from None
            try:
                ctx.load_verify_locations(cafile=ca)
                if crl:
                    ctx.load_verify_locations(cafile=crl)
                    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            except (ssl.SSLError, OSError) as exc:
                raise TLSError(f"Unable to load CA certificate list {ca}: {_reason(exc)}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED if creds.verify_peer else ssl.CERT_NONE
            ctx.num_tickets = 0
            return ctx
        try:
            import sslpsk3
        except ImportError:
            raise TLSError(
                "tls-creds-psk needs the sslpsk3 package (pip install 'pyqemu[tls]')"
            ) from None
        psk_ctx = sslpsk3.SSLPSKContext(ssl.PROTOCOL_TLS_SERVER)
        psk_ctx.check_hostname = False
        psk_ctx.verify_mode = ssl.CERT_NONE
        psk_ctx.num_tickets = 0
        psk_ctx.set_ciphers("PSK:ECDHE-PSK:DHE-PSK:@SECLEVEL=0")

        def lookup(identity: str | None) -> bytes:
            key = creds.key_for(identity or "")
            if key is None:
                self._unknown.name = identity or ""
                return b""
            return key

        psk_ctx.set_psk_server_callback(lookup)
        return psk_ctx

    def handshake(self, sock: socket.socket) -> TLSStream:
        """Run the server side of the handshake on ``sock``; check authz."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.context.wrap_bio(incoming, outgoing, server_side=True)
        self._unknown.name = None
        for step in range(HANDSHAKE_STEPS):
            try:
                if step == 0:
                    obj.do_handshake()  # sslpsk3's object attaches its callbacks here
                else:
                    ssl.SSLObject.do_handshake(obj)
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise TLSError(
                        "TLS handshake failed: the client closed the connection"
                    ) from None
                incoming.write(data)
            except ssl.SSLError as exc:
                pending = outgoing.read()
                try:
                    if pending:
                        sock.sendall(pending)  # the alert, so the client learns why
                except OSError:
                    pass
                reason = _reason(exc)
                if self._unknown.name is not None:
                    reason = f"unknown PSK identity '{self._unknown.name}'"
                raise TLSError(f"TLS handshake failed: {reason}") from None
        else:
            raise TLSError("TLS handshake failed: too many round trips")
        pending = outgoing.read()
        if pending:
            sock.sendall(pending)
        self._check_authz(obj)
        return TLSStream(sock, obj, incoming, outgoing)

    def _check_authz(self, obj: ssl.SSLObject) -> None:
        if self.authz is None:
            return
        creds = self.creds
        if not isinstance(creds, X509Creds) or not creds.verify_peer:
            return  # qemu 7.2 checks authz on validated x509 certificates only
        dn = peer_dn(obj.getpeercert() or {})
        authz = self.objects.by_id.get(self.authz)
        if not isinstance(authz, AuthzSimple):
            raise TLSError(f"Authorization object '{self.authz}' not found")
        if authz.identity != dn:
            raise TLSError(f"TLS x509 authz check for {dn} is denied")


class TLSStream:
    """A TLS connection over a raw socket, safe for one reader and many writers.

    One lock guards the SSL object and the socket writes (so records go out in
    the order they were made); the reader waits for raw bytes without it.
    """

    def __init__(
        self,
        sock: socket.socket,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self.sock = sock
        self.obj = obj
        self.incoming = incoming
        self.outgoing = outgoing
        self.lock = threading.Lock()
        self.eof = False

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def recv_into(self, view: memoryview, n: int) -> int:
        """Up to ``n`` decrypted bytes into ``view``; 0 at EOF."""
        n = min(n, len(view))
        for _ in iter(int, 1):  # until a record is complete or the peer leaves
            with self.lock:
                try:
                    got = self.obj.read(n, view)
                    self._flush()
                    return got
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return 0
                if self.eof:
                    return 0
            data = self.sock.recv(RECV_SIZE)
            with self.lock:
                if data:
                    self.incoming.write(data)
                else:
                    self.eof = True
                    self.incoming.write_eof()
        return 0  # not reached

    def recv(self, n: int, poll: bool = False) -> bytes:
        n = min(n, 64 * 1024)  # one TLS record holds at most 16 KiB anyway
        buf = bytearray(n)
        got = self.recv_into(memoryview(buf), n)
        del buf[got:]
        return bytes(buf)

    def send_parts(self, parts: list[Any]) -> None:
        """Encrypt and write ``parts`` in order, as one unit."""
        with self.lock:
            budget = 0
            for part in parts:
                view = memoryview(part).cast("B")
                for pos in range(0, len(view), WRITE_CHUNK):
                    chunk = view[pos : pos + WRITE_CHUNK]
                    self.obj.write(chunk)
                    budget += len(chunk)
                    if budget >= WRITE_CHUNK:
                        self._flush()
                        budget = 0
            self._flush()

    def close(self) -> None:
        """Send close_notify (best effort)."""
        with self.lock:
            try:
                self.obj.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            try:
                self._flush()
            except OSError:
                pass
