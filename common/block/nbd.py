"""The ``nbd`` protocol driver: a client of an NBD server (QEMU's block/nbd.c, 7.2).

All protocol work is done by the engine in :mod:`pyqemu.common.nbd`; this
module is its transport: a socket, a lock, and the mapping between the block
layer's hooks and NBD commands.

Names accepted (as QEMU's ``nbd_parse_filename``):

* ``nbd://HOST[:PORT]/EXPORT`` and ``nbd+tcp://...`` (port 10809 by default),
* ``nbd+unix:///EXPORT?socket=PATH``,
* the legacy ``nbd:unix:PATH[:exportname=NAME]`` and ``nbd:HOST:PORT[:exportname=NAME]``,
* options: ``server.type=unix|inet``, ``server.path``, ``server.host``,
  ``server.port``, ``export``, ``x-dirty-bitmap`` (also in ``json:{...}``), and the
  legacy flat ``path``/``host``/``port``.

Negotiation is fixed newstyle: NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT
(``base:allocation``, or the ``x-dirty-bitmap`` context), then NBD_OPT_GO asking
for NBD_INFO_BLOCK_SIZE; a server that does not know NBD_OPT_GO gets
NBD_OPT_EXPORT_NAME instead. Block status comes from ``base:allocation``
(everything is data without it); the minimum block size is the request
alignment (unaligned requests are widened, writes read-modify-write); requests
longer than the maximum block size are split.

Thread safety: the block layer may call from several threads (convert's
workers) and their requests are in flight together: each caller sends its
request, then waits; one waiting caller at a time reads the socket and hands
each reply to the caller of its cookie (no thread of its own: with a single
caller, it reads its own reply as before). Over TLS one request at a time.

TLS: ``tls-creds=ID`` names a ``tls-creds-x509`` or ``tls-creds-psk`` object
(``--object``, :mod:`pyqemu.common.objects`); the client sends NBD_OPT_STARTTLS
first, then runs TLS over the socket (:func:`pyqemu.common.tls_creds.client_handshake`)
and negotiates the rest inside it. x509 checks the server's certificate against
``tls-hostname``, else the inet host; a unix socket needs ``tls-hostname``
(QEMU's "No hostname for certificate validation").

Not supported: reconnection (``reconnect-delay`` and
``open-timeout`` are accepted and ignored), the oldstyle handshake, abstract
unix sockets, ``qemu:allocation-depth``.
"""

from __future__ import annotations

import errno
import socket
import threading
import urllib.parse
from typing import Any

from .. import objects
from ..errors import QemuError, strerror
from ..nbd import (
    BASE_ALLOCATION,
    MAX_PAYLOAD,
    NEED_DATA,
    Chunk,
    ClientConnection,
    ClientFlag,
    ClientFlags,
    Closed,
    Cmd,
    CmdFlag,
    ExportNameReply,
    Greeting,
    HandshakeFlag,
    Info,
    NBDError,
    Opt,
    Option,
    OptionReply,
    Rep,
    RepInfo,
    RepMetaContext,
    Request,
    SimpleReply,
    StateFlag,
    StructuredChunk,
    TransmissionFlag,
)
from ..tls_creds import Creds, TLSError, client_handshake
from .driver import BlockDriver, Status, StatusRun
from .errors import BlockError, InvalidRequest, UnsupportedFeature

DEFAULT_PORT = "10809"
EN_OPTSTR = ":exportname="
#: the largest request when the server gives no maximum (QEMU's NBD_MAX_BUFFER_SIZE)
DEFAULT_MAX_BLOCK = MAX_PAYLOAD
#: how much to read from the socket at once for small messages
RECV_SIZE = 256 * 1024
INT_MAX = (1 << 31) - 1

#: nbd_opt_lookup's names, for the option error messages
_OPT_NAMES = {
    Opt.EXPORT_NAME: "export name",
    Opt.ABORT: "abort",
    Opt.LIST: "list",
    Opt.PEEK_EXPORT: "peek export",
    Opt.STARTTLS: "starttls",
    Opt.INFO: "info",
    Opt.GO: "go",
    Opt.STRUCTURED_REPLY: "structured reply",
    Opt.LIST_META_CONTEXT: "list meta context",
    Opt.SET_META_CONTEXT: "set meta context",
}
#: nbd_handle_reply_err's message by error reply type
_REP_ERRORS = {
    Rep.ERR_POLICY: "Denied by server for option",
    Rep.ERR_INVALID: "Invalid parameters for option",
    Rep.ERR_PLATFORM: "Server lacks support for option",
    Rep.ERR_TLS_REQD: "TLS negotiation required before option",
    Rep.ERR_SHUTDOWN: "Server shutting down before option",
    Rep.ERR_BLOCK_SIZE_REQD: "Server requires INFO_BLOCK_SIZE for option",
    Rep.ERR_TOO_BIG: "Server rejected request as too large for option",
}
#: wire errno -> host errno (nbd_errno_to_system_errno); others become EINVAL
_ERRNO = {
    1: errno.EPERM,
    5: errno.EIO,
    12: errno.ENOMEM,
    22: errno.EINVAL,
    28: errno.ENOSPC,
    75: errno.EOVERFLOW,
    95: errno.ENOTSUP,
    108: errno.ESHUTDOWN,
}

#: runtime options besides the server address (nbd_runtime_opts and generic ones)
_KNOWN_OPTIONS = frozenset(
    (
        "driver",
        "filename",
        "export",
        "x-dirty-bitmap",
        "reconnect-delay",
        "open-timeout",
        "node-name",
        "read-only",
        "auto-read-only",
        "force-share",
        "discard",
        "detect-zeroes",
        "cache.direct",
        "cache.no-flush",
        "tls-creds",
        "tls-hostname",
    )
)


class NBDConnectError(BlockError):
    """The server could not be reached or refused the export."""


# ----------------------------------------------------------------------
# names and options


def parse_uri(filename: str) -> dict[str, str]:
    """Options from an ``nbd[+tcp|+unix]://`` URI (nbd_parse_uri)."""
    bad = BlockError("No valid URL specified", errno.EINVAL)
    try:
        uri = urllib.parse.urlsplit(filename)
        port = uri.port
    except ValueError:
        raise bad from None
    scheme = uri.scheme
    if scheme in ("nbd", "nbd+tcp"):
        is_unix = False
    elif scheme == "nbd+unix":
        is_unix = True
    else:
        raise bad
    opts: dict[str, str] = {}
    path = urllib.parse.unquote(uri.path)
    if path.startswith("/"):
        path = path[1:]
    if path:
        opts["export"] = path
    query = urllib.parse.parse_qsl(uri.query, keep_blank_values=True) if uri.query else []
    if is_unix:
        if uri.netloc or len(query) != 1 or query[0][0] != "socket":
            raise bad
        opts["server.type"] = "unix"
        opts["server.path"] = query[0][1]
    else:
        if query or not uri.hostname:
            raise bad
        host = uri.hostname
        opts["server.type"] = "inet"
        opts["server.host"] = host
        opts["server.port"] = str(port) if port is not None else DEFAULT_PORT
    return opts


def parse_filename(filename: str) -> dict[str, str]:
    """Options from an ``nbd...`` filename (nbd_parse_filename)."""
    if "://" in filename:
        return parse_uri(filename)
    opts: dict[str, str] = {}
    spec = filename
    pos = spec.find(EN_OPTSTR)
    if pos >= 0:
        opts["export"] = spec[pos + len(EN_OPTSTR) :]
        spec = spec[:pos]
    if not spec.startswith("nbd:"):
        raise BlockError("File name string for NBD must start with 'nbd:'", errno.EINVAL)
    host_spec = spec[len("nbd:") :]
    if not host_spec:
        return opts
    if host_spec.startswith("unix:"):
        opts["server.type"] = "unix"
        opts["server.path"] = host_spec[len("unix:") :]
        return opts
    host, port = _inet_parse(host_spec)
    opts["server.type"] = "inet"
    opts["server.host"] = host
    opts["server.port"] = port
    return opts


def _inet_parse(text: str) -> tuple[str, str]:
    """``HOST:PORT`` or ``[V6]:PORT`` (QEMU's inet_parse, without its ,options)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise BlockError(f"error parsing IPv6 address '{text}'", errno.EINVAL)
        return text[1:end], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise BlockError(f"error parsing address '{text}'", errno.EINVAL)
    return host, port


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def resolve_options(options: dict[str, Any]) -> dict[str, str]:
    """Flat options with the address in ``server.*`` (nbd_process_options)."""
    opts = {k: _string(v) for k, v in options.items() if v is not None}
    filename = opts.pop("filename", None)
    if filename is not None:
        if any(k in opts for k in ("host", "port", "path")):
            raise BlockError(
                "host/port/path and a file name may not be specified at the same time",
                errno.EINVAL,
            )
        if any(k.startswith("server.") for k in opts):
            raise BlockError(
                "address and a file name may not be specified at the same time", errno.EINVAL
            )
        for key, value in parse_filename(filename).items():
            opts.setdefault(key, value)
    legacy = [k for k in ("path", "host", "port") if k in opts]
    if legacy:
        if any(k.startswith("server.") for k in opts):
            raise BlockError("Cannot use 'server' and path/host at the same time", errno.EINVAL)
        if "path" in opts and "host" in opts:
            raise BlockError("path and host may not be used at the same time", errno.EINVAL)
        if "path" in opts:
            if "port" in opts:
                raise BlockError("port may not be used without host", errno.EINVAL)
            opts["server.type"] = "unix"
            opts["server.path"] = opts.pop("path")
        elif "host" in opts:
            opts["server.type"] = "inet"
            opts["server.host"] = opts.pop("host")
            opts["server.port"] = opts.pop("port", DEFAULT_PORT)
        else:
            raise BlockError("port may not be used without host", errno.EINVAL)
    for key in opts:
        if key.startswith("server.") or key in _KNOWN_OPTIONS:
            continue
        raise BlockError(f"Block protocol 'nbd' doesn't support the option '{key}'", errno.EINVAL)
    kind = opts.get("server.type")
    if kind is None:
        if any(k.startswith("server.") for k in opts):
            raise BlockError("Parameter 'type' is missing", errno.EINVAL)
        raise BlockError("NBD server address missing", errno.EINVAL)
    if kind == "unix":
        allowed = {"server.type", "server.path"}
        if "server.path" not in opts:
            raise BlockError("Parameter 'path' is missing", errno.EINVAL)
    elif kind == "inet":
        allowed = {"server.type", "server.host", "server.port"}
        for need in ("host", "port"):
            if f"server.{need}" not in opts:
                raise BlockError(f"Parameter '{need}' is missing", errno.EINVAL)
    elif kind in ("fd", "vsock"):
        raise UnsupportedFeature(f"NBD server address type '{kind}' is not supported")
    else:
        raise BlockError(
            f"Parameter 'type' does not accept value '{kind}'", errno.EINVAL
        )  # QAPI's wording for a bad enum value
    for key in opts:
        if key.startswith("server.") and key not in allowed:
            raise BlockError(f"Parameter '{key}' is unexpected", errno.EINVAL)
    return opts


def canonical_filename(opts: dict[str, str]) -> str:
    """The pseudo-filename QEMU shows (nbd_refresh_filename)."""
    export = opts.get("export")
    if opts["server.type"] == "unix":
        path = opts["server.path"]
        if export is not None:
            return f"nbd+unix:///{export}?socket={path}"
        return f"nbd+unix://?socket={path}"
    host, port = opts["server.host"], opts["server.port"]
    if export is not None:
        return f"nbd://{host}:{port}/{export}"
    return f"nbd://{host}:{port}"


# ----------------------------------------------------------------------
# the connection


def _connect(opts: dict[str, str]) -> socket.socket:
    """A connected socket, or QEMU's ``Failed to connect to '...'`` error."""
    if opts["server.type"] == "unix":
        path = opts["server.path"]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            code = exc.errno or errno.EIO
            raise NBDConnectError(
                f"Failed to connect to '{path}': {strerror(code)}", code
            ) from None
        return sock
    host, port = opts["server.host"], opts["server.port"]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NBDConnectError(
            f"address resolution failed for {host}:{port}: {exc.strerror}", errno.EINVAL
        ) from None
    last = errno.ECONNREFUSED
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc.errno or errno.EIO
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise NBDConnectError(f"Failed to connect to '{host}:{port}': {strerror(last)}", last)


def _tls_creds(oid: str) -> Creds:
    """The client credentials ``tls-creds`` names (nbd_get_tls_creds)."""
    try:
        creds = objects.tls_creds(oid)
    except QemuError as exc:
        raise BlockError(exc.message, errno.EINVAL) from None
    if creds.endpoint != "client":
        raise BlockError("Expected TLS credentials for a client endpoint", errno.EINVAL)
    return creds


def _io_error(detail: str = "") -> BlockError:
    return BlockError(strerror(errno.EIO), errno.EIO)


class _Waiter:
    """A request in flight: where its reply goes, and how it ended."""

    __slots__ = ("offset", "length", "into", "status", "error", "done")

    def __init__(self, offset: int, length: int, into: memoryview | None) -> None:
        self.offset = offset
        self.length = length
        self.into = into
        self.status: list[StructuredChunk] = []
        self.error = 0
        self.done = False


class NBDClient:
    """One negotiated NBD connection; :meth:`request` is thread-safe and
    lets several callers' requests be in flight at once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self.conn = ClientConnection()
        #: guards the engine, the waiter table and the reader role
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        #: serialises writes to the socket (a request's bytes go out whole)
        self.send_lock = threading.Lock()
        #: requests in flight by cookie, each with where its reply goes
        self.waiters: dict[int, _Waiter] = {}
        #: one of the waiting callers reads the socket and hands replies out
        self.reading = False
        #: several requests in flight over a plain socket; one at a time over
        #: TLS (an SSL object must not read and write from two threads at once)
        self.pipelined = True
        #: READs of more than RECV_SIZE in flight: while there are, the reader
        #: receives headers exactly, so each payload lands in one buffer of its
        #: own (else the engine joins a partial first piece and the rest: a copy)
        self.big_reads = 0
        #: the most requests that were in flight at once (for tests and traces)
        self.peak_in_flight = 0
        self.size = 0
        self.flags = TransmissionFlag.NONE
        self.min_block = 1
        self.max_block = DEFAULT_MAX_BLOCK
        #: the negotiated meta context id for block status, or None
        self.context_id: int | None = None
        self.context_name = ""
        self._cookie = 0
        self.dead = False

    # --- low level ---------------------------------------------------------

    def _send(self, msg: Any) -> None:
        try:
            parts = self.conn.send_parts(msg)
            if len(parts) == 1:
                self.sock.sendall(parts[0])
            else:
                for part in parts:
                    self.sock.sendall(part)
        except (OSError, NBDError):
            self.dead = True
            raise _io_error() from None

    def _recv_up_to(self, want: int) -> bytearray:
        """``want`` bytes from the socket into one buffer, fewer only at end of file."""
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        while got < want:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                del view
                del buf[got:]
                break
            got += n
        return buf

    def _event(self) -> Any:
        """The next message from the server (reading as needed)."""
        conn = self.conn
        for _ in range(1 << 40):  # bounded by the socket: each pass reads or returns
            try:
                event = conn.next_event()
            except NBDError:
                self.dead = True
                raise _io_error() from None
            if event is not NEED_DATA:
                return event
            want = conn.bytes_wanted
            try:
                if want > RECV_SIZE:
                    buf = self._recv_up_to(want)
                    conn.receive_data(buf)
                    if len(buf) < want:
                        conn.receive_data(b"")
                else:
                    conn.receive_data(self.sock.recv(RECV_SIZE))
            except OSError:
                self.dead = True
                raise _io_error() from None
        raise _io_error()

    # --- handshake -----------------------------------------------------------

    def _option(self, option: Option) -> list[OptionReply]:
        """Send ``option`` and collect its replies up to the final one."""
        self._send(option)
        replies = []
        for _ in range(1 << 20):
            reply = self._event()
            if isinstance(reply, Closed):
                raise BlockError("Failed to read option reply: Unexpected end-of-file", errno.EIO)
            replies.append(reply)
            if reply.is_final:
                return replies
        raise _io_error()

    @staticmethod
    def _reply_error(reply: OptionReply) -> BlockError:
        opt = int(reply.opt)
        name = _OPT_NAMES.get(reply.opt, "<unknown>")  # type: ignore[call-overload]
        if reply.reply == Rep.ERR_UNKNOWN:
            message = "Requested export not available"
        else:
            head = _REP_ERRORS.get(
                reply.reply,  # type: ignore[call-overload]
                "Unknown error code when asking for option",
            )
            message = f"{head} {opt} ({name})"
        if reply.reply == Rep.ERR_TLS_REQD:
            message += "\nDid you forget a valid tls-creds?"
        if reply.data:
            message += f"\nserver reported: {reply.data}"
        return NBDConnectError(message, errno.EINVAL)

    def negotiate(
        self,
        export: str,
        bitmap: str | None,
        tls: Creds | None = None,
        hostname: str | None = None,
    ) -> None:
        """The fixed newstyle handshake up to transmission (nbd_receive_negotiate);
        with ``tls``, NBD_OPT_STARTTLS and TLS first."""
        try:
            self._negotiate(export, bitmap, tls, hostname)
        except NBDError as exc:
            self.dead = True
            raise BlockError(exc.message, errno.EINVAL) from None

    def _negotiate(
        self, export: str, bitmap: str | None, tls: Creds | None, hostname: str | None
    ) -> None:
        greeting = self._event()
        if isinstance(greeting, Closed):
            raise BlockError("Failed to read initial magic: Unexpected end-of-file", errno.EIO)
        assert isinstance(greeting, Greeting)
        fixed = bool(greeting.flags & HandshakeFlag.FIXED_NEWSTYLE)
        flags = ClientFlag.NONE
        if fixed:
            flags |= ClientFlag.FIXED_NEWSTYLE
        if greeting.flags & HandshakeFlag.NO_ZEROES:
            flags |= ClientFlag.NO_ZEROES
        self._send(ClientFlags(flags))
        if tls is not None:
            if not fixed:
                raise NBDConnectError("Server does not support STARTTLS", errno.EINVAL)
            self._starttls(tls, hostname)
        if fixed:
            # not strict, as QEMU asks: any error (even TLS required) only means
            # no structured replies; NBD_OPT_GO then reports the real problem
            self._option(Option(Opt.STRUCTURED_REPLY))
            if self.conn.structured:
                self._set_meta_context(export, bitmap or BASE_ALLOCATION, bitmap is not None)
            if self._go(export):
                return
        self._export_name(export)

    def _starttls(self, tls: Creds, hostname: str | None) -> None:
        """NBD_OPT_STARTTLS, then the TLS handshake (nbd_receive_starttls)."""
        final = self._option(Option(Opt.STARTTLS))[-1]
        if final.is_error:
            raise self._reply_error(final)
        if self.conn.buffered:
            raise NBDConnectError("Unexpected data after STARTTLS reply", errno.EINVAL)
        try:
            self.sock = client_handshake(self.sock, tls, hostname)
            self.pipelined = False
        except TLSError as exc:
            self.dead = True
            raise NBDConnectError(exc.message, errno.EINVAL) from None

    def _set_meta_context(self, export: str, query: str, required: bool) -> None:
        replies = self._option(Option.meta_context(Opt.SET_META_CONTEXT, export, (query,)))
        final = replies[-1]
        if final.is_error and final.reply != Rep.ERR_UNSUP:
            raise self._reply_error(final)
        for reply in replies:
            data = reply.data
            if isinstance(data, RepMetaContext):
                if data.name != query:
                    raise BlockError(
                        f"Unexpected context name: {data.name}", errno.EINVAL
                    )  # nbd_receive_one_meta_context's check
                self.context_id = data.context_id
                self.context_name = data.name
        if required and self.context_id is None:
            raise BlockError(f"requested x-dirty-bitmap {query} not found", errno.EINVAL)

    def _go(self, export: str) -> bool:
        """NBD_OPT_GO; False if the server does not know it."""
        replies = self._option(Option.go(export, (Info.BLOCK_SIZE,)))
        final = replies[-1]
        if final.reply == Rep.ERR_UNSUP:
            return False
        if final.is_error:
            raise self._reply_error(final)
        have_export = False
        for reply in replies:
            data = reply.data
            if not isinstance(data, RepInfo):
                continue
            if data.info is Info.EXPORT:
                self.size, self.flags = data.size, TransmissionFlag(data.flags)
                have_export = True
            elif data.info is Info.BLOCK_SIZE:
                self.min_block = data.minimum
                self.max_block = max(
                    data.minimum,
                    min(data.maximum, DEFAULT_MAX_BLOCK) // data.minimum * data.minimum,
                )
        if not have_export:
            raise BlockError("broken server omitted NBD_INFO_EXPORT", errno.EINVAL)
        return True

    def _export_name(self, export: str) -> None:
        # the server may not know the meta context it never saw an answer for
        self._send(Option.export_name(export))
        reply = self._event()
        if isinstance(reply, Closed):
            raise NBDConnectError(
                "Failed to read export length: Unexpected end-of-file", errno.EIO
            )  # what QEMU reports when the server drops an unknown export name
        assert isinstance(reply, ExportNameReply)
        self.size, self.flags = reply.size, TransmissionFlag(reply.flags)

    # --- transmission --------------------------------------------------------

    def request(
        self,
        cmd: Cmd,
        offset: int = 0,
        length: int = 0,
        flags: CmdFlag = CmdFlag.NONE,
        data: Any = None,
        into: memoryview | None = None,
    ) -> list[StructuredChunk]:
        """Send one command and wait for its whole reply; READ data lands in
        ``into``; BLOCK_STATUS chunks are returned. Server errors become
        BlockError with the errno. Thread-safe: callers' requests are in
        flight together, one waiting caller at a time reads the socket and
        hands each reply to its caller (by cookie)."""
        if not self.pipelined:
            with self.lock:
                return self._request_alone(cmd, offset, length, flags, data, into)
        w = _Waiter(offset, length, into)
        big = cmd == Cmd.READ and length > RECV_SIZE
        with self.lock:
            if self.dead:
                raise _io_error()
            self._cookie += 1
            cookie = self._cookie
            self.big_reads += big
            try:
                parts = self.conn.send_parts(Request(cmd, cookie, offset, length, flags, data))
            except NBDError:
                self._fail()
                raise _io_error() from None
            self.waiters[cookie] = w
            self.peak_in_flight = max(self.peak_in_flight, len(self.waiters))
        try:
            with self.send_lock:
                if len(parts) == 1:
                    self.sock.sendall(parts[0])
                else:
                    for part in parts:
                        self.sock.sendall(part)
        except OSError:
            with self.lock:
                self._fail()
            raise _io_error() from None
        try:
            self._wait(w)
        finally:
            if big:
                with self.lock:
                    self.big_reads -= 1
        if w.error:
            code = _ERRNO.get(w.error, errno.EINVAL)
            raise BlockError(strerror(code), code)
        return w.status

    def _fail(self) -> None:
        """The connection is broken: every waiter gives up (under the lock)."""
        self.dead = True
        self.cv.notify_all()

    def _wait(self, w: _Waiter) -> None:
        """Until ``w`` is answered: wait, or be the reader while nobody is."""
        with self.lock:
            for _ in iter(int, 1):  # until answered, or the reader role is ours
                if w.done:
                    return
                if self.dead:
                    raise _io_error()
                if not self.reading:
                    self.reading = True
                    break
                self.cv.wait()
        try:
            while not w.done:
                self._dispatch(self._next_reply())
        except BlockError:
            with self.lock:
                self._fail()
            raise
        finally:
            with self.lock:
                self.reading = False
                self.cv.notify_all()  # another waiter takes over the reading

    def _next_reply(self) -> Any:
        """The next reply, reading the socket outside the lock (only the
        reader reads; the engine is touched under the lock)."""
        conn = self.conn
        for _ in range(1 << 40):  # bounded by the socket: each pass reads or returns
            with self.lock:
                if self.dead:
                    raise _io_error()
                try:
                    event = conn.next_event()
                except NBDError:
                    raise _io_error() from None
                want = conn.bytes_wanted
                exact = self.big_reads > 0
            if event is not NEED_DATA:
                return event
            try:
                if want > RECV_SIZE:
                    buf = self._recv_up_to(want)
                    with self.lock:
                        conn.receive_data(buf)
                        if len(buf) < want:
                            conn.receive_data(b"")
                else:
                    data = self.sock.recv(want if exact else RECV_SIZE)
                    with self.lock:
                        conn.receive_data(data)
            except OSError:
                raise _io_error() from None
        raise _io_error()

    def _dispatch(self, reply: Any) -> None:
        """Give ``reply`` to the caller waiting for its cookie."""
        if isinstance(reply, Closed):
            raise _io_error()
        with self.lock:
            w = self.waiters.get(reply.cookie)
        if w is None:
            raise _io_error()  # the engine knew the cookie: a bug, not the server
        if isinstance(reply, SimpleReply):
            w.error = int(reply.error)
            if not w.error and w.into is not None and reply.data is not None:
                w.into[:] = reply.data
            done = True
        else:
            w.error = w.error or self._chunk(reply, w.offset, w.length, w.into, w.status)
            done = reply.done
        if done:
            with self.lock:
                del self.waiters[reply.cookie]
                w.done = True
                self.cv.notify_all()

    def _request_alone(
        self,
        cmd: Cmd,
        offset: int,
        length: int,
        flags: CmdFlag,
        data: Any,
        into: memoryview | None,
    ) -> list[StructuredChunk]:
        """One request and its whole reply, under the caller's lock (TLS)."""
        if self.dead:
            raise _io_error()
        self._cookie += 1
        cookie = self._cookie
        self._send(Request(cmd, cookie, offset, length, flags, data))
        status: list[StructuredChunk] = []
        error = 0
        for _ in range(1 << 32):
            reply = self._event()
            if isinstance(reply, Closed):
                self.dead = True
                raise _io_error()
            if reply.cookie != cookie:
                self.dead = True
                raise _io_error()
            if isinstance(reply, SimpleReply):
                error = int(reply.error)
                if not error and into is not None and reply.data is not None:
                    into[:] = reply.data
                break
            error = error or self._chunk(reply, offset, length, into, status)
            if reply.done:
                break
        if error:
            code = _ERRNO.get(error, errno.EINVAL)
            raise BlockError(strerror(code), code)
        return status

    def _chunk(
        self,
        chunk: StructuredChunk,
        offset: int,
        length: int,
        into: memoryview | None,
        status: list[StructuredChunk],
    ) -> int:
        """Apply one structured chunk; its error (0 if none)."""
        t = chunk.type
        if t in (Chunk.ERROR, Chunk.ERROR_OFFSET):
            return int(chunk.error)
        if t == Chunk.OFFSET_DATA and into is not None and chunk.data is not None:
            start = chunk.offset - offset
            if start < 0 or start + len(chunk.data) > length:
                self.dead = True
                raise _io_error()
            into[start : start + len(chunk.data)] = chunk.data
        elif t == Chunk.OFFSET_HOLE and into is not None:
            start = chunk.offset - offset
            if start < 0 or start + chunk.length > length:
                self.dead = True
                raise _io_error()
            into[start : start + chunk.length] = bytes(chunk.length)
        elif t == Chunk.BLOCK_STATUS:
            status.append(chunk)
        return 0

    def disconnect(self) -> None:
        """NBD_CMD_DISC and close the socket."""
        with self.send_lock, self.lock:
            if not self.dead:
                try:
                    self._send(Request(Cmd.DISC, 0))
                except BlockError:
                    pass
            self.dead = True
            try:
                self.sock.close()
            except OSError:
                pass


# ----------------------------------------------------------------------
# the driver


class NBDProtocol(BlockDriver):
    """A block node backed by an NBD export."""

    format_name = "nbd"
    is_protocol = True
    protocol_prefixes = ("nbd", "nbd+tcp", "nbd+unix")
    has_zero_init = False
    #: no bdrv_get_info: qemu-img info shows no dirty flag
    get_info_supported = False

    def __init__(self, filename: str, client: NBDClient, *, read_only: bool) -> None:
        super().__init__(filename, read_only=read_only)
        self.client = client
        self.total_size = client.size
        self.alignment = client.min_block
        self.max_transfer = client.max_block

    @classmethod
    def open(cls, options: dict[str, Any], *, read_only: bool) -> NBDProtocol:
        """Connect and negotiate (nbd_open)."""
        opts = resolve_options(options)
        if "read-only" in opts:
            read_only = opts["read-only"] in ("on", "true", "yes", "1")
        creds = None
        hostname = opts.get("tls-hostname")
        if "tls-creds" in opts:
            creds = _tls_creds(opts["tls-creds"])
            if hostname is None and opts["server.type"] == "inet":
                hostname = opts["server.host"]
        sock = _connect(opts)
        client = NBDClient(sock)
        try:
            client.negotiate(opts.get("export", ""), opts.get("x-dirty-bitmap"), creds, hostname)
            if not read_only and client.flags & TransmissionFlag.READ_ONLY:
                raise BlockError("Could not open image: Permission denied", errno.EACCES)
        except BaseException:
            client.disconnect()
            raise
        return cls(canonical_filename(opts), client, read_only=read_only)

    def _has(self, flag: TransmissionFlag) -> bool:
        return bool(self.client.flags & flag)

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise InvalidRequest("Image is closed")
        if offset < 0 or length < 0 or offset + length > self.total_size:
            raise InvalidRequest(
                f"Request out of range: offset {offset}, length {length}, size {self.total_size}",
                errno.EIO,
            )

    def _pieces(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        step = max(1, limit)
        return [(o, min(step, offset + length - o)) for o in range(offset, offset + length, step)]

    def _aligned(self, offset: int, length: int) -> tuple[int, int]:
        align = self.alignment
        start = offset - offset % align
        end = min(-(-(offset + length) // align) * align, max(self.total_size, offset + length))
        return start, end

    # --- read ----------------------------------------------------------------

    def _read_into(self, offset: int, view: memoryview) -> None:
        for off, n in self._pieces(offset, len(view), self.max_transfer):
            self.client.request(Cmd.READ, off, n, into=view[off - offset : off - offset + n])

    def _pread(self, offset: int, length: int) -> bytes:
        start, end = self._aligned(offset, length)
        buf = bytearray(end - start)
        self._read_into(start, memoryview(buf))
        if start == offset and end == offset + length:
            return bytes(buf)
        return bytes(buf[offset - start : offset - start + length])

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Read ``len(buf)`` bytes at ``offset`` straight into ``buf``."""
        self._check_range(offset, len(buf))
        start, end = self._aligned(offset, len(buf))
        if start == offset and end == offset + len(buf):
            self._read_into(offset, buf.cast("B"))
        else:
            buf[:] = self._pread(offset, len(buf))

    # --- write ---------------------------------------------------------------

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        """Write ``data``; FUA goes to the server as a flag when it takes one."""
        if not fua or not self._has(TransmissionFlag.SEND_FUA):
            super().write(offset, data, fua=fua)
            return
        self._check_range(offset, len(data))
        self._check_writable()
        if len(data):
            try:
                self._write(offset, data, CmdFlag.FUA)
            finally:
                self.write_gen += 1

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._write(offset, data, CmdFlag.NONE)

    def _write(self, offset: int, data: bytes | bytearray | memoryview, flags: CmdFlag) -> None:
        view = memoryview(data).cast("B")
        start, end = self._aligned(offset, len(view))
        if start != offset or end != offset + len(view):
            # read-modify-write of the partial blocks (the generic layer's padding)
            buf = bytearray(end - start)
            self._read_into(start, memoryview(buf))
            buf[offset - start : offset - start + len(view)] = view
            offset, view = start, memoryview(buf)
        for off, n in self._pieces(offset, len(view), self.max_transfer):
            self.client.request(
                Cmd.WRITE, off, n, flags, data=view[off - offset : off - offset + n]
            )

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        align = self.alignment
        if not self._has(TransmissionFlag.SEND_WRITE_ZEROES) or offset % align or length % align:
            # a write of zero buffers, as the generic layer falls back to
            zero = memoryview(bytes(min(length, self.max_transfer)))
            for off, n in self._pieces(offset, length, len(zero)):
                self._write(off, zero[:n], CmdFlag.NONE)
            return
        flags = CmdFlag.NONE if may_unmap else CmdFlag.NO_HOLE
        limit = INT_MAX - INT_MAX % align
        for off, n in self._pieces(offset, length, limit):
            self.client.request(Cmd.WRITE_ZEROES, off, n, flags)

    def _pdiscard(self, offset: int, length: int) -> None:
        if not self._has(TransmissionFlag.SEND_TRIM):
            return
        align = self.alignment
        start = -(-offset // align) * align
        end = (offset + length) // align * align
        if end <= start:
            return
        limit = INT_MAX - INT_MAX % align
        for off, n in self._pieces(start, end - start, limit):
            self.client.request(Cmd.TRIM, off, n)

    def _flush_to_disk(self) -> None:
        if self._has(TransmissionFlag.SEND_FLUSH):
            self.client.request(Cmd.FLUSH)

    def _truncate(self, size: int, exact: bool, prealloc: str) -> None:
        if size != self.total_size and exact:
            raise UnsupportedFeature("Cannot resize NBD nodes")
        if size > self.total_size:
            raise InvalidRequest("Cannot grow NBD nodes")

    # --- status --------------------------------------------------------------

    def _block_status(self, offset: int, length: int) -> StatusRun:
        client = self.client
        if client.context_id is None:
            return StatusRun(length, Status.DATA | Status.OFFSET_VALID, offset, self)
        align = self.alignment
        n = min(length, INT_MAX - INT_MAX % align)
        chunks = client.request(Cmd.BLOCK_STATUS, offset, n, CmdFlag.REQ_ONE)
        for chunk in chunks:
            if chunk.context_id != client.context_id or not chunk.extents:
                continue
            extent = chunk.extents[0]
            run = min(extent.length, n)
            # x-dirty-bitmap is read with base:allocation's bits, as QEMU does:
            # a dirty extent shows as a hole ("data": false)
            flags = Status.OFFSET_VALID
            if not extent.flags & StateFlag.HOLE:
                flags |= Status.DATA
            if extent.flags & StateFlag.ZERO:
                flags |= Status.ZERO
            return StatusRun(run, flags, offset, self)
        raise BlockError(strerror(errno.EIO), errno.EIO)

    def allocated_file_size(self) -> int | None:
        return None

    def _close(self) -> None:
        self.client.disconnect()
