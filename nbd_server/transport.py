"""Sockets and threads around the engine: a thread per connection.

The block layer is synchronous and thread-safe and file I/O releases the GIL,
so each connection's thread reads a request, carries it out and writes the
reply. Large WRITE payloads are read with ``recv_into`` straight into one
buffer of the right size; READ data goes out with ``sendmsg`` next to its
header, without joining.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

from ..common.nbd import (
    NEED_DATA,
    Closed,
    Greeting,
    NBDError,
    Option,
    Request,
    ServerConnection,
    State,
)
from .export import Export, Session

RECV_SIZE = 256 * 1024
#: payloads at least this large are read into a buffer of their own
BIG = 64 * 1024


def sendmsg_all(sock: socket.socket, parts: list[Any]) -> None:
    """Write every buffer in ``parts`` (sendmsg, resuming after partial sends)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:64])
        while sent and views:
            n = len(views[0])
            if sent >= n:
                sent -= n
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class Server:
    """Accepts clients on ``listener`` and serves ``export`` to each."""

    def __init__(
        self,
        listener: socket.socket,
        export: Export,
        *,
        shared: int,
        persistent: bool,
        verbose: bool,
    ) -> None:
        self.listener = listener
        self.export = export
        self.persistent = persistent
        self.verbose = verbose
        self.slots = threading.BoundedSemaphore(shared) if shared > 0 else None
        self.lock = threading.Lock()
        self.clients: set[socket.socket] = set()
        self.active = 0
        #: set when the server should stop (last client gone, or a signal)
        self.done = threading.Event()

    def serve_forever(self) -> None:
        """Run the accept loop in a thread; return at once."""
        threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self.done.is_set():
            if self.slots is not None:
                self.slots.acquire()
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self.slots is not None:
                    self.slots.release()
                if self.done.is_set():
                    return
                continue
            with self.lock:
                self.clients.add(sock)
                self.active += 1
            threading.Thread(target=self._client, args=(sock,), daemon=True).start()

    def _client(self, sock: socket.socket) -> None:
        session = Session(self.export)
        try:
            serve_connection(sock, session)
        except Exception as exc:  # one client's failure never stops the others
            if self.verbose:
                sys.stderr.write(f"pyqemu-nbd: client error: {type(exc).__name__}: {exc}\n")
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self.lock:
                self.clients.discard(sock)
                self.active -= 1
                last = self.active == 0
            if self.slots is not None:
                self.slots.release()
            if session.negotiated and last and not self.persistent:
                self.done.set()

    def shutdown(self) -> None:
        """Stop accepting and cut every client."""
        self.done.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            clients = list(self.clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _recv(sock: socket.socket, conn: ServerConnection) -> bool:
    """Read what the engine needs next; False at EOF (already fed)."""
    want = conn.bytes_wanted
    if want >= BIG:
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        while got < want:
            n = sock.recv_into(view[got:], want - got)
            if n == 0:
                conn.receive_data(view[:got])
                conn.receive_data(b"")
                return False
            got += n
        conn.receive_data(buf)
        return True
    data = sock.recv(RECV_SIZE)
    conn.receive_data(data)
    return bool(data)


def serve_connection(sock: socket.socket, session: Session) -> None:
    """Serve one client until it leaves or breaks the protocol."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    conn = ServerConnection()
    sock.sendall(conn.send(Greeting()))
    for _ in iter(int, 1):  # until the client leaves
        try:
            ev = conn.next_event()
        except NBDError:
            return  # protocol error: drop this client only
        if ev is NEED_DATA:
            if not _recv(sock, conn):
                continue  # EOF fed: next_event gives Closed or an error
            continue
        if isinstance(ev, Closed):
            return
        if isinstance(ev, Option):
            replies = session.option(ev)
            parts: list[Any] = []
            for r in replies:
                parts += conn.send_parts(r)
            if parts:
                sendmsg_all(sock, parts)
            if session.close or conn.state is State.CLOSED:
                return
            continue
        if isinstance(ev, Request):
            replies = session.request(ev)
            if not replies:
                return  # NBD_CMD_DISC
            parts = []
            for r in replies:
                parts += conn.send_parts(r)
            sendmsg_all(sock, parts)
            continue
        # ClientFlags: nothing to answer


def unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock.bind(path)
    sock.listen(128)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"cannot listen on {host}:{port}")
