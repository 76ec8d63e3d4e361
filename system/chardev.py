"""Character devices: the byte pipes between guest devices (serial ports, debugcon) or the
monitor and the outside world, as qemu-system's ``-serial``/``-monitor``/``-chardev``.

Backends: ``null``, ``stdio``, ``file`` (``file:PATH``), ``pipe`` (``pipe:PATH``: PATH.in
and PATH.out, or PATH both ways), ``pty``, ``socket`` (``tcp:HOST:PORT`` and
``unix:PATH`` with ``server=on|off``, ``wait=on|off``, ``nodelay``, also the legacy
``,server,nowait`` spelling), ``vc`` (a virtual console: output kept in memory for the
curses display's Esc+2.. consoles; nothing shows it with ``-display none``) and the multiplexer ``mon:...`` (QEMU's
``mux``: several front ends share one backend, Ctrl-A c moves the input focus, Ctrl-A x
quits, Ctrl-A h prints the help).

Every backend with input has one reader thread that calls the front end's
``on_bytes(data)``; devices must hand the bytes over to the CPU thread themselves.
Writes come from any thread and go straight to the backend (a socket or pty without a
peer drops them, as QEMU does).

Error texts are qemu-system-x86_64 7.2's. A :class:`ChardevError` knows whether the spec
could not be parsed (``parse_failed``: ``-monitor`` then adds ``parse error: SPEC``) and
may have an empty message (QEMU's compat parser fails silently for ``tcp:`` without a
port); :func:`error_lines` gives the lines qemu prints for an option.

``telnet`` sockets negotiate and strip IAC sequences as QEMU's (char-socket.c).

Not supported: ``udp``, ``websocket``/``tn3270`` sockets, TLS, ``reconnect``,
serial/parallel host devices, ``logfile``, ``ringbuf``, ``spicevmc``, ``braille``,
``msmouse``, ``testdev``.
"""

from __future__ import annotations

import atexit
import errno
import os
import select
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable

from pyqemu.common.errors import QemuError, strerror

ESCAPE_CHAR = 0x01  # Ctrl-A, QEMU's term_escape_char

# QEMU's qemu_chardev_opts: option name -> type ("s" string, "b" bool, "n" number)
_OPT_TYPES: dict[str, str] = {
    **dict.fromkeys(
        "backend path input-path host port fd localaddr localport tls-creds tls-authz "
        "name chardev logfile id".split(), "s"),
    **dict.fromkeys(
        "ipv4 ipv6 wait server delay nodelay telnet tn3270 websocket mux signal append "
        "logappend mouse clipboard tight abstract".split(), "b"),
    **dict.fromkeys("to reconnect width height cols rows debug size".split(), "n"),
}

_BOOL_WORDS = {"on": True, "yes": True, "true": True, "y": True,
               "off": False, "no": False, "false": False, "n": False}


class ChardevError(QemuError):
    """A chardev spec that cannot be parsed or opened (QEMU's words; may be empty)."""

    def __init__(self, message: str, *, parse_failed: bool = False) -> None:
        super().__init__(message)
        self.parse_failed = parse_failed


def error_lines(option: str, spec: str, err: ChardevError) -> list[str]:
    """The lines qemu-system-x86_64 prints (each still without ``PROG: ``) when ``-option
    spec`` fails with ``err``: e.g. ``-serial X: <message>`` then ``-serial X: could not
    connect serial device to character backend 'X'``."""
    where = f"-{option} {spec}"
    lines = [f"{where}: {err.message}"] if err.message else []
    if option == "serial":
        lines.append(f"{where}: could not connect serial device to character backend '{spec}'")
    elif option == "monitor" and err.parse_failed:
        lines.append(f"{where}: parse error: {spec}")
    return lines


# --------------------------------------------------------------------------------------
# option parsing (QemuOpts with qemu_chardev_opts, and qemu_chr_parse_compat)

def _opts_do_parse(text: str, opts: dict[str, str], implied: str | None) -> None:
    """qemu_opts_do_parse: ``a=b,c`` into ``opts``, validated against the chardev list."""
    if not text:
        return
    i = 0
    first = True
    while i <= len(text):
        # one element up to an unescaped comma
        chars: list[str] = []
        while i < len(text):
            if text[i] == ",":
                if text[i + 1:i + 2] == ",":
                    chars.append(",")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        i += 1
        element = "".join(chars)
        if element == "" and not first:
            if i > len(text):
                break
            continue
        key, sep, value = element.partition("=")
        if not sep:
            if first and implied is not None:
                opts[implied] = key
                first = False
                continue
            if key.startswith("no") and key[2:] in _OPT_TYPES and _OPT_TYPES[key[2:]] == "b":
                key, value = key[2:], "off"
            else:
                value = "on"
        first = False
        kind = _OPT_TYPES.get(key)
        if kind is None:
            raise ChardevError(f"Invalid parameter '{key}'", parse_failed=True)
        if kind == "b" and value not in _BOOL_WORDS:
            raise ChardevError(f"Parameter '{key}' expects 'on' or 'off'", parse_failed=True)
        if kind == "n" and not value.isdigit():
            raise ChardevError(f"Parameter '{key}' expects a number", parse_failed=True)
        opts[key] = value


def parse_chardev_option(text: str) -> dict[str, str]:
    """``-chardev backend,id=ID,...`` into options (``backend`` is the implied key)."""
    opts: dict[str, str] = {}
    _opts_do_parse(text, opts, "backend")
    return opts


def _scan_host_port(text: str, stop: str) -> tuple[str, str, int] | None:
    """sscanf("%64[^:]:%32[^<stop>]%n") with the ``:%32[^<stop>]`` fallback."""
    colon = text.find(":")
    if colon > 0:
        host = text[:colon]
        rest = text[colon + 1:]
        end = next((k for k, c in enumerate(rest) if c in stop), len(rest))
        if end > 0:
            return host, rest[:end], colon + 1 + end
    if text.startswith(":"):
        rest = text[1:]
        end = next((k for k, c in enumerate(rest) if c in stop), len(rest))
        if end > 0:
            return "", rest[:end], 1 + end
    return None


def parse_legacy(spec: str, label: str, *, permit_mux_mon: bool = True) -> dict[str, str]:
    """qemu_chr_parse_compat: a ``-serial``/``-monitor`` spec into chardev options."""
    opts: dict[str, str] = {"id": label}
    filename = spec
    if filename.startswith("mon:"):
        if not permit_mux_mon:
            raise ChardevError("mon: isn't supported in this context", parse_failed=True)
        filename = filename[4:]
        opts["mux"] = "on"
        if filename == "stdio":
            opts["signal"] = "off"   # -nographic: Ctrl-C goes to the guest
    if filename in ("null", "pty", "msmouse", "wctablet", "braille", "testdev", "stdio"):
        opts["backend"] = filename
        return opts
    if filename.startswith("vc"):
        opts["backend"] = "vc"
        rest = filename[2:]
        if rest.startswith(":"):
            size = rest[1:]
            w, x, h = size.partition("x")
            if x and w.isdigit() and h.isdigit():
                opts["width"], opts["height"] = w, h
            elif x and w.endswith("C") and h.endswith("C") and w[:-1].isdigit() \
                    and h[:-1].isdigit():
                opts["cols"], opts["rows"] = w[:-1], h[:-1]
            else:
                raise ChardevError("", parse_failed=True)
        return opts
    for prefix, backend in (("file:", "file"), ("pipe:", "pipe"), ("pty:", "pty")):
        if filename.startswith(prefix):
            opts["backend"] = backend
            opts["path"] = filename[len(prefix):]
            return opts
    for prefix in ("tcp:", "telnet:", "tn3270:", "websocket:"):
        if filename.startswith(prefix):
            scanned = _scan_host_port(filename[len(prefix):], ",")
            if scanned is None:
                raise ChardevError("", parse_failed=True)
            host, port, pos = scanned
            opts.update(backend="socket", host=host, port=port)
            rest = filename[len(prefix) + pos:]
            if rest.startswith(","):
                _opts_do_parse(rest[1:], opts, None)
            if prefix != "tcp:":
                opts[prefix[:-1]] = "on"
            return opts
    if filename.startswith("udp:"):
        opts["backend"] = "udp"
        return opts
    if filename.startswith("unix:"):
        opts["backend"] = "socket"
        _opts_do_parse(filename[5:], opts, "path")
        return opts
    if filename.startswith("/dev/"):
        opts["backend"] = "parallel" if filename.startswith(("/dev/parport", "/dev/ppi")) \
            else "serial"
        opts["path"] = filename
        return opts
    raise ChardevError(f"'{filename}' is not a valid char driver", parse_failed=True)


# --------------------------------------------------------------------------------------
# the chardevs

_registry: dict[str, Chardev] = {}
_registry_lock = threading.Lock()


def find(label: str) -> Chardev | None:
    """The open chardev with this id/label (``-chardev id=...``, ``serial0`` ...)."""
    return _registry.get(label)


def chardev_info() -> list[dict[str, object]]:
    """``query-chardev``: label, filename and frontend-open of every chardev."""
    return [{"label": c.label, "filename": c.filename, "frontend-open": c.frontend_open}
            for c in reversed(list(_registry.values()))]


class Chardev:
    """A byte pipe with one front end (device or monitor) and one backend."""

    backend = "null"

    def __init__(self, label: str) -> None:
        self.label = label
        self.filename = self.backend
        self._on_bytes: Callable[[bytes], None] | None = None
        self._on_event: Callable[[str], None] | None = None
        self._closed = False
        self.frontend_open = False
        self._pending: list[bytes] = []   # input that arrived before set_reader
        self._lock = threading.Lock()

    # front-end side -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes out (discarded by ``null``)."""

    def set_reader(self, on_bytes: Callable[[bytes], None] | None) -> None:
        """Route input to ``on_bytes`` (called on a reader thread); None stops it."""
        with self._lock:
            self._on_bytes = on_bytes
            self.frontend_open = on_bytes is not None
            pending, self._pending = self._pending, []
        if on_bytes is not None:
            for chunk in pending:
                on_bytes(chunk)

    def set_event_handler(self, on_event: Callable[[str], None] | None) -> None:
        """Events for the front end: ``opened``, ``closed``, ``break``, ``mux-in``,
        ``mux-out`` (QEMU's CHR_EVENT_*), called on the thread that caused them."""
        self._on_event = on_event

    def close(self) -> None:
        """Stop the reader thread and release the backend."""
        self._closed = True
        with _registry_lock:
            if _registry.get(self.label) is self:
                del _registry[self.label]

    # backend side --------------------------------------------------------------------
    def _deliver(self, data: bytes) -> None:
        with self._lock:
            handler = self._on_bytes
            if handler is None:
                self._pending.append(data)
                return
        handler(data)

    def _event(self, name: str) -> None:
        if self._on_event is not None:
            self._on_event(name)

    def _start_reader(self, loop: Callable[[], None]) -> None:
        thread = threading.Thread(target=loop, name=f"chardev-{self.label}", daemon=True)
        self._reader = thread
        thread.start()


class NullChardev(Chardev):
    backend = "null"


class VcChardev(Chardev):
    """A virtual console: output is kept (the last ``limit`` bytes) and passed to the
    listeners a display adds (``-display curses`` shows it on Esc+2...); input comes
    from :meth:`feed`. With ``-display none`` nothing shows it, as in QEMU."""

    backend = "vc"

    def __init__(self, label: str, limit: int = 64 * 1024) -> None:
        super().__init__(label)
        self.output = bytearray()
        self._limit = limit
        self._listeners: list[Callable[[bytes], None]] = []

    def add_listener(self, on_output: Callable[[bytes], None]) -> None:
        """Call ``on_output(data)`` for everything written from now on, after the
        output kept so far."""
        with self._lock:
            self._listeners.append(on_output)
            kept = bytes(self.output)
        if kept:
            on_output(kept)

    def write(self, data: bytes) -> None:
        with self._lock:
            self.output += data
            if len(self.output) > self._limit:
                del self.output[:len(self.output) - self._limit]
            listeners = list(self._listeners)
        for listener in listeners:
            listener(data)

    def feed(self, data: bytes) -> None:
        """Input typed into this console."""
        self._deliver(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


class FdChardev(Chardev):
    """A pair of file descriptors: output fd, optional input fd with a reader thread."""

    def __init__(self, label: str, out_fd: int, in_fd: int | None, *,
                 owns_fds: bool = True) -> None:
        super().__init__(label)
        self._out_fd = out_fd
        self._in_fd = in_fd
        self._owns = owns_fds
        self._wlock = threading.Lock()
        if in_fd is not None:
            self._start_reader(self._read_loop)

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        with self._wlock:
            try:
                _write_all(self._out_fd, data)
            except OSError:
                pass  # QEMU drops output it cannot write

    def _read_loop(self) -> None:
        assert self._in_fd is not None
        while not self._closed:
            try:
                data = os.read(self._in_fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data:
                self._event("closed")
                break
            self._deliver(data)

    def close(self) -> None:
        super().close()
        if self._owns:
            for fd in {self._out_fd, self._in_fd} - {None}:
                try:
                    os.close(fd)  # type: ignore[arg-type]
                except OSError:
                    pass


class FileChardev(FdChardev):
    backend = "file"


class PipeChardev(FdChardev):
    backend = "pipe"


# stdio: one user at most; the terminal goes to raw mode and comes back at exit
_stdio_in_use = False
_saved_tty: list | None = None


def _restore_tty() -> None:
    global _saved_tty
    if _saved_tty is not None:
        try:
            termios.tcsetattr(0, termios.TCSANOW, _saved_tty)
        except termios.error:
            pass
        _saved_tty = None


class StdioChardev(FdChardev):
    """stdin/stdout. On a tty: raw input (no echo, no line editing, 8 bits), output
    post-processing kept (``\\n`` becomes CR LF), and Ctrl-C still raises SIGINT unless
    ``signal=off`` (``mon:stdio`` and ``-nographic``)."""

    backend = "stdio"

    def __init__(self, label: str, allow_signal: bool = True) -> None:
        global _stdio_in_use, _saved_tty
        if _stdio_in_use:
            raise ChardevError("cannot use stdio by multiple character devices")
        _stdio_in_use = True
        if os.isatty(0):
            old = termios.tcgetattr(0)
            tty = [list(x) if isinstance(x, list) else x for x in old]
            tty[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
            tty[1] |= termios.OPOST
            tty[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
            tty[2] &= ~(termios.CSIZE | termios.PARENB)
            tty[2] |= termios.CS8
            tty[6][termios.VMIN] = 1
            tty[6][termios.VTIME] = 0
            if not allow_signal:
                tty[3] &= ~termios.ISIG
            if _saved_tty is None:
                _saved_tty = old
                atexit.register(_restore_tty)
            termios.tcsetattr(0, termios.TCSANOW, tty)
        super().__init__(label, sys.stdout.fileno(), 0, owns_fds=False)

    def write(self, data: bytes) -> None:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        super().write(data)

    def close(self) -> None:
        global _stdio_in_use
        super().close()
        _restore_tty()
        _stdio_in_use = False


class PtyChardev(Chardev):
    """A pseudo-terminal: the guest side is the master, users open the slave. Output
    is dropped while nobody has the slave open, as QEMU does."""

    backend = "pty"

    def __init__(self, label: str) -> None:
        super().__init__(label)
        master, slave = os.openpty()
        self.path = os.ttyname(slave)
        attrs = termios.tcgetattr(slave)
        # cfmakeraw
        attrs[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                      | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        attrs[1] &= ~termios.OPOST
        attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                      | termios.IEXTEN)
        attrs[2] &= ~(termios.CSIZE | termios.PARENB)
        attrs[2] |= termios.CS8
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self.filename = f"pty:{self.path}"
        self._wlock = threading.Lock()
        self._start_reader(self._read_loop)

    def _connected(self) -> bool:
        poller = select.poll()
        poller.register(self._master, select.POLLOUT)
        return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def write(self, data: bytes) -> None:
        if self._closed or not self._connected():
            return
        with self._wlock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._master, view)
                except InterruptedError:
                    continue
                except BlockingIOError:
                    if not self._connected():
                        return
                    select.select([], [self._master], [], 0.1)
                    continue
                except OSError:
                    return
                view = view[n:]

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        while not self._closed:
            events = poller.poll(200)
            if not events:
                continue
            if any(ev & select.POLLHUP and not ev & select.POLLIN for _, ev in events):
                time.sleep(0.1)   # nobody on the slave side: poll again later
                continue
            try:
                data = os.read(self._master, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    time.sleep(0.1)
                    continue
                break
            if data:
                self._deliver(data)

    def close(self) -> None:
        super().close()
        try:
            os.close(self._master)
        except OSError:
            pass


IAC = 0xFF
IAC_BREAK = 0xF3
# what QEMU sends a telnet peer: WILL ECHO, WILL SUPPRESS-GO-AHEAD, WILL BINARY, DO BINARY
TELNET_INIT = bytes((IAC, 0xFB, 0x01, IAC, 0xFB, 0x03, IAC, 0xFB, 0x00, IAC, 0xFD, 0x00))


class SocketChardev(Chardev):
    """A TCP or unix stream socket, server (one client at a time, accepts again after
    a disconnect) or client. Output with no peer connected is dropped."""

    backend = "socket"

    def __init__(self, label: str, opts: dict[str, str], *,
                 notice: Callable[[str], None] | None = None) -> None:
        super().__init__(label)
        self._server = _bool(opts.get("server", "off"))
        wait_given = "wait" in opts
        self._wait = _bool(opts.get("wait", "on"))
        self._nodelay = _bool(opts.get("nodelay", "off")) or not _bool(
            opts.get("delay", "on"))
        if not self._server and wait_given:
            raise ChardevError("'wait' option is incompatible with socket in client "
                               "connect mode")
        self._telnet = _bool(opts.get("telnet", "off"))
        self._telnet_state = 1
        for unsupported in ("websocket", "tn3270", "tls-creds", "reconnect"):
            if unsupported in opts and opts[unsupported] not in ("off", "0"):
                raise ChardevError(f"chardev: socket: '{unsupported}' is not supported "
                                   "by pyqemu")
        self._conn: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._wlock = threading.Lock()
        self._cond = threading.Condition()
        if "path" in opts:
            self._family = socket.AF_UNIX
            self.path = opts["path"]
            self._describe = f"unix:{self.path}"
        else:
            self._family = socket.AF_INET
            self.host = opts["host"]
            self.port = opts["port"]
            self._describe = ""
        if self._server:
            self._listen()
        else:
            self._connect()
        if self._server:
            self._disconnected_name()
            if self._wait:
                msg = f"info: QEMU waiting for connection on: {self.filename}"
                if notice is not None:
                    notice(msg)
                else:
                    print(f"{msg}", file=sys.stderr, flush=True)
                self._accept_one()
            self._start_reader(self._server_loop)
        else:
            self._start_reader(self._client_loop)

    # setup ---------------------------------------------------------------------------
    def _inet_name(self) -> str:
        return f"{'telnet' if self._telnet else 'tcp'}:{self.host}:{self.port}"

    def _disconnected_name(self) -> None:
        base = self._describe if self._family == socket.AF_UNIX else self._inet_name()
        self.filename = f"disconnected:{base}{',server=on' if self._server else ''}"

    def _listen(self) -> None:
        if self._family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(self.path):
                    os.unlink(self.path)
                sock.bind(self.path)
            except OSError as exc:
                sock.close()
                raise ChardevError(f"Failed to bind socket to {self.path}: "
                                   f"{strerror(exc.errno or errno.EINVAL)}") from None
        else:
            addrs = self._resolve(passive=True)
            sock = None
            last: OSError | None = None
            for family, _, _, _, addr in addrs:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(addr)
                    break
                except OSError as exc:
                    last = exc
                    sock.close()
                    sock = None
            if sock is None:
                code = last.errno if last and last.errno else errno.EADDRINUSE
                raise ChardevError(f"Failed to find an available port: {strerror(code)}")
            # port 0: the one the kernel chose; no host: the address bound (0.0.0.0)
            self.port = str(sock.getsockname()[1])
            if not self.host:
                self.host = sock.getsockname()[0]
        sock.listen(1)
        self._listener = sock

    def _resolve(self, passive: bool) -> list:
        host = self.host or (None if passive else "localhost")
        if passive and host is None:
            host = "0.0.0.0"
        try:
            return socket.getaddrinfo(host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                      0, socket.AI_PASSIVE if passive else 0)
        except socket.gaierror as exc:
            raise ChardevError(f"address resolution failed for {self.host}:{self.port}: "
                               f"{exc.strerror}") from None

    def _connect(self) -> None:
        if self._family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise ChardevError(f"Failed to connect to '{self.path}': "
                                   f"{strerror(exc.errno or errno.EINVAL)}") from None
        else:
            sock = None
            code = errno.ECONNREFUSED
            for family, _, _, _, addr in self._resolve(passive=False):
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.connect(addr)
                    break
                except OSError as exc:
                    code = exc.errno or code
                    sock.close()
                    sock = None
            if sock is None:
                raise ChardevError(f"Failed to connect to '{self.host}:{self.port}': "
                                   f"{strerror(code)}")
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        if self._family != socket.AF_UNIX and self._nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.family == socket.AF_UNIX:
            self.filename = f"unix:{self.path}{',server=on' if self._server else ''}"
        else:
            local = sock.getsockname()
            peer = sock.getpeername()
            left, right = ("[", "]") if sock.family == socket.AF_INET6 else ("", "")
            kind = "telnet" if self._telnet else "tcp"
            self.filename = (f"{kind}:{left}{local[0]}{right}:{local[1]}"
                             f"{',server=on' if self._server else ''} <-> "
                             f"{left}{peer[0]}{right}:{peer[1]}")
        if self._telnet:
            self._telnet_state = 1
            try:
                sock.sendall(TELNET_INIT)
            except OSError:
                pass
        with self._cond:
            self._conn = sock
            self._cond.notify_all()
        self._event("opened")

    def _accept_one(self) -> bool:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return False
        self._attach(sock)
        return True

    # threads -------------------------------------------------------------------------
    def _pump(self, sock: socket.socket) -> None:
        while not self._closed:
            try:
                data = sock.recv(4096)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            if self._telnet:
                data = self._strip_telnet(data)
                if not data:
                    continue
            self._deliver(data)
        with self._cond:
            if self._conn is sock:
                self._conn = None
        try:
            sock.close()
        except OSError:
            pass
        if not self._closed:
            self._event("closed")

    def _client_loop(self) -> None:
        if self._conn is not None:
            self._pump(self._conn)
        self.filename = f"disconnected:{self._describe or self._inet_name()}"

    def _server_loop(self) -> None:
        while not self._closed:
            if self._conn is None:
                self._disconnected_name()
                if not self._accept_one():
                    break
            conn = self._conn
            if conn is not None:
                self._pump(conn)

    def _strip_telnet(self, data: bytes) -> bytes:
        """QEMU's tcp_chr_process_IAC_bytes: IAC IAC is a literal 0xFF, IAC BREAK a
        break event, any other IAC swallows itself and the next two bytes."""
        out = bytearray()
        state = self._telnet_state
        for byte in data:
            if state > 1:
                if byte == IAC and state == 2:
                    out.append(byte)
                    state = 1
                else:
                    if byte == IAC_BREAK and state == 2:
                        self._event("break")
                        state += 1
                    state += 1
                if state >= 4:
                    state = 1
            elif byte == IAC:
                state = 2
            else:
                out.append(byte)
        self._telnet_state = state
        return bytes(out)

    # front end -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self._closed:
            return
        with self._wlock:
            try:
                conn.sendall(data)
            except OSError:
                pass

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until a peer is connected (for tests and ``wait=on`` callers)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._conn is not None, timeout)

    def close(self) -> None:
        super().close()
        for sock in (self._conn, self._listener):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        if self._listener is not None and self._family == socket.AF_UNIX:
            try:
                os.unlink(self.path)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# the multiplexer

_MUX_HELP = (
    "% h    print this help\n\r",
    "% x    exit emulator\n\r",
    "% s    save disk data back to file (if -snapshot)\n\r",
    "% t    toggle console timestamps\n\r",
    "% b    send break (magic sysrq)\n\r",
    "% c    switch between console and monitor\n\r",
    "% %  sends %\n\r",
)


class MuxFrontend(Chardev):
    """One user of a :class:`MuxChardev`: writes go to the shared backend; input
    arrives only while this front end has the focus."""

    backend = "mux"

    def __init__(self, mux: MuxChardev, index: int) -> None:
        super().__init__(mux.label)
        self.mux = mux
        self.index = index

    def write(self, data: bytes) -> None:
        self.mux.write(data)

    def set_reader(self, on_bytes: Callable[[bytes], None] | None) -> None:
        """The first front end to read takes the focus and keeps it when others
        attach: the serial port keeps it when the monitor joins later, the state QEMU
        reaches (its monitor attaches first, the serial port's handlers then take
        the focus). Ctrl-A c moves it."""
        super().set_reader(on_bytes)
        mux = self.mux
        if on_bytes is not None and (
                mux.focus < 0 or mux.frontends[mux.focus]._on_bytes is None):
            mux.set_focus(self.index)

    @property
    def focused(self) -> bool:
        """True while input goes to this front end."""
        return self.mux.focus == self.index

    def close(self) -> None:
        self._closed = True


class MuxChardev(Chardev):
    """QEMU's mux chardev (``mon:``): a backend shared by several front ends with the
    Ctrl-A escape: ``c`` next front end, ``x`` quit, ``h``/``?`` help, ``b`` break,
    ``t`` timestamps, ``s`` commit disks, Ctrl-A Ctrl-A a literal Ctrl-A.

    The machine sets ``on_quit`` (Ctrl-A x; default: exit the process with status 0)
    and ``on_commit`` (Ctrl-A s)."""

    backend = "mux"

    def __init__(self, label: str, base: Chardev) -> None:
        super().__init__(label)
        self.base = base
        self.filename = base.filename
        self.frontends: list[MuxFrontend] = []
        self.focus = -1
        self._got_escape = False
        self.timestamps = False
        self._timestamps_start = -1.0
        self._linestart = False
        self.on_quit: Callable[[], None] | None = None
        self.on_commit: Callable[[], None] | None = None
        self._wlock = threading.RLock()
        base.set_reader(self._from_base)
        base.set_event_handler(self._base_event)

    def frontend(self) -> MuxFrontend:
        """Attach a new user (serial port, monitor ...)."""
        fe = MuxFrontend(self, len(self.frontends))
        self.frontends.append(fe)
        return fe

    def set_focus(self, index: int) -> None:
        if self.focus == index:
            return
        if 0 <= self.focus < len(self.frontends):
            self.frontends[self.focus]._event("mux-out")
        self.focus = index
        self.frontends[index]._event("mux-in")

    def write(self, data: bytes) -> None:
        with self._wlock:
            if not self.timestamps:
                self.base.write(data)
                return
            out = bytearray()
            for byte in data:
                if self._linestart:
                    now = time.monotonic() * 1000
                    if self._timestamps_start < 0:
                        self._timestamps_start = now
                    ms = int(now - self._timestamps_start)
                    secs = ms // 1000
                    out += (f"[{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}."
                            f"{ms % 1000:03d}] ").encode()
                    self._linestart = False
                out.append(byte)
                if byte == 0x0A:
                    self._linestart = True
            self.base.write(bytes(out))

    def _print_help(self) -> None:
        ebuf = f"C-{chr(ESCAPE_CHAR - 1 + ord('a'))}"
        text = "\n\r" + "".join(line.replace("%", ebuf) for line in _MUX_HELP)
        self.base.write(text.encode())

    def _from_base(self, data: bytes) -> None:
        passed = bytearray()
        for ch in data:
            if self._got_escape:
                self._got_escape = False
                if ch == ESCAPE_CHAR:
                    passed.append(ch)
                    continue
                self._flush(passed)
                if ch in (ord("h"), ord("?")):
                    self._print_help()
                elif ch == ord("x"):
                    self.base.write(b"QEMU: Terminated\n\r")
                    self._quit()
                elif ch == ord("s"):
                    if self.on_commit is not None:
                        self.on_commit()
                elif ch == ord("b"):
                    if 0 <= self.focus < len(self.frontends):
                        self.frontends[self.focus]._event("break")
                elif ch == ord("c") and self.frontends:
                    self.set_focus((self.focus + 1) % len(self.frontends))
                elif ch == ord("t"):
                    self.timestamps = not self.timestamps
                    self._timestamps_start = -1.0
                    self._linestart = False
            elif ch == ESCAPE_CHAR:
                self._got_escape = True
            else:
                passed.append(ch)
        self._flush(passed)

    def _flush(self, passed: bytearray) -> None:
        if passed and 0 <= self.focus < len(self.frontends):
            self.frontends[self.focus]._deliver(bytes(passed))
        passed.clear()

    def _quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()
            return
        _restore_tty()
        os._exit(0)

    def _base_event(self, name: str) -> None:
        for fe in self.frontends:
            fe._event(name)

    def close(self) -> None:
        super().close()
        self.base.close()


# --------------------------------------------------------------------------------------
# opening

def _bool(value: str) -> bool:
    return _BOOL_WORDS[value]


def open_from_opts(opts: dict[str, str], *,
                   notice: Callable[[str], None] | None = None) -> Chardev:
    """qemu_chr_new_from_opts: open the chardev ``opts`` describes (``-chardev``)."""
    backend = opts.get("backend")
    label = opts.get("id")
    if label is None:
        raise ChardevError("chardev: no id specified")
    if backend is None:
        raise ChardevError(f'chardev: "{label}" missing backend')
    if label in _registry or (_bool(opts.get("mux", "off")) and f"{label}-base" in _registry):
        raise ChardevError(f"Duplicate ID '{label}' for chardev")
    mux = _bool(opts.get("mux", "off"))
    chr_label = f"{label}-base" if mux else label
    chardev = _open_backend(backend, chr_label, opts, notice)
    if mux:
        _register(chardev)
        chardev = MuxChardev(label, chardev)
    _register(chardev)
    return chardev


def _register(chardev: Chardev) -> None:
    with _registry_lock:
        _registry[chardev.label] = chardev


def _open_backend(backend: str, label: str, opts: dict[str, str],
                  notice: Callable[[str], None] | None) -> Chardev:
    if backend == "null":
        return NullChardev(label)
    if backend == "vc":
        return VcChardev(label)
    if backend == "stdio":
        return StdioChardev(label, allow_signal=_bool(opts.get("signal", "on")))
    if backend == "pty":
        chardev = PtyChardev(label)
        msg = f"char device redirected to {chardev.path} (label {label})"
        print(msg, file=sys.stderr, flush=True)
        return chardev
    if backend == "file":
        path = opts.get("path")
        if path is None:
            raise ChardevError("chardev: file: no filename given")
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_APPEND if _bool(opts.get("append", "off")) else os.O_TRUNC
        out_fd = _open_or_fail(path, flags)
        in_fd = None
        if "input-path" in opts:
            in_fd = _open_or_fail(opts["input-path"], os.O_RDONLY | os.O_CLOEXEC)
        chardev = FileChardev(label, out_fd, in_fd)
        return chardev
    if backend == "pipe":
        path = opts.get("path")
        if path is None:
            raise ChardevError("chardev: pipe: no filename given")
        try:
            in_fd = os.open(path + ".in", os.O_RDWR | os.O_CLOEXEC)
            try:
                out_fd = os.open(path + ".out", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                os.close(in_fd)
                raise
        except OSError:
            in_fd = out_fd = _open_or_fail(path, os.O_RDWR | os.O_CLOEXEC)
        return PipeChardev(label, out_fd, in_fd)
    if backend == "socket":
        if "path" not in opts:
            if "host" in opts:
                if "port" not in opts:
                    raise ChardevError("chardev: socket: no port given")
            else:
                fd = opts.get("fd", "")
                raise ChardevError(f"Unable to parse FD number {fd}" if not fd.isdigit()
                                   else "chardev: socket: fd= is not supported by pyqemu")
        return SocketChardev(label, opts, notice=notice)
    if backend in ("udp", "serial", "parallel", "ringbuf", "memory", "spicevmc",
                   "spiceport", "braille", "msmouse", "wctablet", "testdev", "qemu-vdagent",
                   "dbus", "tty", "parport"):
        raise ChardevError(f"chardev backend '{backend}' is not supported by pyqemu")
    raise ChardevError(f"'{backend}' is not a valid char driver name")


def _open_or_fail(path: str, flags: int) -> int:
    try:
        return os.open(path, flags, 0o666)
    except OSError as exc:
        raise ChardevError(f"Could not open '{path}': "
                           f"{strerror(exc.errno or errno.EIO)}") from None


def open_chardev(spec: str, *, for_monitor: bool = False, label: str | None = None,
                 notice: Callable[[str], None] | None = None) -> Chardev:
    """Open a ``-serial``/``-monitor``/``-debugcon`` style spec (qemu_chr_new_mux_mon).

    ``chardev:ID`` returns the ``-chardev`` with that id. ``mon:...`` returns a
    :class:`MuxChardev`: call ``frontend()`` on it once for each user (the serial port,
    the monitor). ``label`` defaults to ``compat_monitor0``/``serial0``. ``notice``
    receives informational lines (``info: QEMU waiting for connection on: ...``) for
    the caller to print with its location; default: printed on stderr."""
    if label is None:
        label = "compat_monitor0" if for_monitor else "serial0"
    if spec.startswith("chardev:"):
        found = find(spec[len("chardev:"):])
        if found is None:
            raise ChardevError("")   # qemu says only "could not connect ..."
        return found
    opts = parse_legacy(spec, label)
    return open_from_opts(opts, notice=notice)


def close_all() -> None:
    """Close every open chardev (machine shutdown; tests)."""
    for chardev in list(_registry.values()):
        chardev.close()
