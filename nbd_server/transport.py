"""Sockets and threads around the engine.

One thread per connection reads and parses; up to :data:`EXECUTORS` executor
threads per connection carry out the requests (workers take the ones that
wait on the disk), so a client's in-flight requests overlap with the reading
and with each other (the block layer is synchronous and thread-safe; file
I/O releases the GIL).

* Reading: into one reusable buffer (``sock.recv(256 KiB)`` would allocate
  256 KiB per call); large WRITE payloads are read with ``recv_into``
  straight into a buffer of their own, and after a large WRITE the next
  request is read into a buffer sized for a WRITE of the same length (header
  and payload in one read when it is one, else as far as it came), so that
  the next payload lands whole in its own buffer too (no join of two pieces
  by the engine). Before the reader itself writes a large WRITE, it takes
  what has come of the next request without waiting (PlainStream.read_ahead):
  a unix socket's buffer holds less than one of nbdcopy's 256 KiB requests,
  and without this the client stalled for the whole write (measured with
  nbdcopy, raw: 1.2-1.3 GiB/s without, 2.0-2.5 with). These buffers come
  from the connection's :class:`BufferPool`: the payload on a page boundary
  (the kernel copies into the page cache faster from there), and reused once
  the request is done, so neither allocated nor zero-filled again.
* Batches: the reader parses every request it holds, then posts them to the
  connection's executors; one takes everything posted at each round and
  writes the replies in one ``sendmsg`` per 16 buffers (or at once for a
  large READ payload): a wake-up only when an executor was idle, a few
  syscalls per batch, not per request. A batch holding a WRITE posted while
  the executors are busy starts (or wakes) another, up to :data:`EXECUTORS`.
  A lone request with nothing else running is served inline by the reader
  (queue depth 1: no hand-off at all).
  FUA writes and FLUSH, which wait on the disk, go to up to :data:`WORKERS`
  workers instead. At most :data:`MAX_BATCHED` requests and
  :data:`MAX_IN_FLIGHT_BYTES` of WRITE payload are queued for the executors,
  and :data:`MAX_IN_FLIGHT` (and as many bytes) for the workers: the memory
  one client can pin is bounded.
* Replies: each request's replies (all its structured chunks) are encoded
  under the engine's lock and written as one unit under the stream's lock, so
  two requests' chunks never interleave.
* NBD_CMD_FLUSH waits for every request received before it to finish, then
  flushes (stronger than NBD asks: it covers the writes completed *and* those
  still in flight when the flush came). NBD_CMD_DISC waits for all of them.
* TLS (``--tls-creds``): after the session acknowledges NBD_OPT_STARTTLS the
  raw socket is handed to :mod:`.tls` and the same loop goes on over the
  decrypted stream.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from sys import getrefcount
from time import monotonic_ns
from typing import Any, Protocol

from ..common.block.buffers import aligned_bytearray
from ..common.nbd import (
    NEED_DATA,
    Closed,
    Cmd,
    CmdFlag,
    Greeting,
    NBDError,
    Option,
    Request,
    ServerConnection,
    State,
)
from ..common.nbd.layout import REQUEST, REQUEST_MAGIC
from .export import Export, FileRange, Session

RECV_SIZE = 256 * 1024
#: how long a reader polls for the next request before it sleeps in recv
POLL_NS = 50_000
_DONTWAIT = socket.MSG_DONTWAIT
#: the socket's send buffer (see serve_connection)
SNDBUF = 4 << 20
#: payloads at least this large are read into a buffer of their own
BIG = 64 * 1024
#: FUA/FLUSH requests read ahead per connection for the workers, and the WRITE
#: payload bytes queued (for the workers, and for the executor): a client can
#: pin at most this much memory (nbdcopy keeps 64 requests of 256 KiB in
#: flight per connection: a bound of 16 requests as qemu's NBD_MAX_REQUESTS
#: made the reader wait at every request)
MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 64 << 20
#: reply buffers gathered before one sendmsg: 8 to 16 replies to small
#: requests. Fewer syscalls with more, but the client waits longer for the
#: first of them and keeps fewer requests in flight (fio, 4K random writes at
#: queue depth 32, raw: 27k IOPS with 64, 38k with 16; random reads as fast)
FLUSH_PARTS = 16
#: worker threads per connection (FUA writes and FLUSH)
WORKERS = 8
_FUA = int(CmdFlag.FUA)
_FLUSH = int(Cmd.FLUSH)
_DISC = int(Cmd.DISC)
_WRITE = int(Cmd.WRITE)
_REQ_SIZE = REQUEST.size
_unpack_request = REQUEST.unpack_from
#: payload buffers a connection keeps for reuse (see BufferPool), and the
#: largest it keeps (nbdcopy writes 256 KiB, qemu-img convert up to 2 MiB)
POOL_KEEP = 4
POOL_MAX = (2 << 20) + 64
#: requests queued to the executors per connection before the reader waits
MAX_BATCHED = 256
#: executor threads per connection. With more than one, a batch of writes
#: posted while one is at work starts or wakes another (batches of reads
#: only when none is at work: two executors reading cost 20-40% more CPU per
#: 4K read for no more IOPS). A second executor once gained 4K random writes
#: at qd32 32.1k against 22.5k IOPS; since the replies go out every 16
#: buffers it costs more than it overlaps (fio, 10 alternating runs, servers
#: trading image copies; IOPS and server CPU per write): qcow2 26.4k at
#: 45.2 us with two, 34.1k at 31.2 us with one (qemu-nbd 30.1k, 43.3 us);
#: raw 26.9k at 47.5 us, 31.6k at 33.9 us. Reads as fast either way.
EXECUTORS = 1


def sendmsg_all(sock: socket.socket, parts: list[Any]) -> None:
    """Write every buffer in ``parts`` (sendmsg, resuming after partial
    sends); a :class:`.export.FileRange` goes out by ``os.sendfile``."""
    start = 0
    for i, p in enumerate(parts):
        if p.__class__ is FileRange:
            _sendmsg(sock, parts[start:i], socket.MSG_MORE)
            _sendfile(sock, p)
            start = i + 1
    _sendmsg(sock, parts[start:] if start else parts, 0)


def _sendmsg(sock: socket.socket, parts: list[Any], flags: int) -> None:
    if len(parts) == 1 and parts[0].__class__ is bytes:  # a reply's header alone
        head = parts[0]
        sent = sock.send(head, flags)
        if sent == len(head):
            return
        parts = [head[sent:]]
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:64], (), flags)
        while sent and views:
            n = len(views[0])
            if sent >= n:
                sent -= n
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _sendfile(sock: socket.socket, part: FileRange) -> None:
    offset, left = part.offset, part.length
    out = sock.fileno()
    while left:
        n = os.sendfile(out, part.fd, offset, left)
        if n == 0:  # the file ended (shrunk under us): zeroes, as a read gives
            _sendmsg(sock, [bytes(left)], 0)
            return
        offset += n
        left -= n


class Stream(Protocol):
    def recv(self, n: int, poll: bool = False) -> bytes: ...

    def recv_into(self, view: memoryview, n: int) -> int: ...

    def send_parts(self, parts: list[Any]) -> None: ...

    def close(self) -> None: ...


class PlainStream:
    """A plain socket as a :class:`Stream`; writes are atomic under a lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        # sock.recv(256 KiB) allocates (and maps) 256 KiB per call, ~14 us even
        # for a 28-byte request: receive into one buffer and copy what came
        self._view = memoryview(bytearray(RECV_SIZE))
        #: what read_ahead took: (buffer, bytes in it), or None
        self.early: tuple[bytearray, int] | None = None

    def read_ahead(self, buf: bytearray) -> None:
        """Take what has come of the next request, without waiting, into
        ``buf`` (sized for a WRITE like the one about to be written): done
        before a large write, so that the client can send on while it runs
        (its socket's buffer holds less than one of nbdcopy's requests).
        :func:`_recv` uses the buffer next."""
        if self.early is not None:
            return
        try:
            got = self.sock.recv_into(buf, len(buf), _DONTWAIT)
        except OSError:  # nothing yet (EAGAIN), or an error the next receive meets
            return
        if got:  # 0: end of file, which the next receive sees again
            self.early = (buf, got)

    def recv(self, n: int, poll: bool = False) -> bytes:
        view = self._view
        n = min(n, RECV_SIZE)
        if poll and POLL_NS:
            # the next request often comes within tens of microseconds: wait
            # for it awake instead of sleeping in recv (waking an idle CPU
            # costs more than the wait); only the small reads (headers) poll
            deadline = monotonic_ns() + POLL_NS
            recv_into = self.sock.recv_into
            for _ in iter(int, 1):
                try:
                    got = recv_into(view, n, _DONTWAIT)
                    return bytes(view[:got])
                except BlockingIOError:
                    if monotonic_ns() >= deadline:
                        break
        got = self.sock.recv_into(view, n)
        return bytes(view[:got])

    def recv_into(self, view: memoryview, n: int) -> int:
        return self.sock.recv_into(view, n)

    def send_parts(self, parts: list[Any]) -> None:
        with self.lock:
            sendmsg_all(self.sock, parts)

    def close(self) -> None:
        pass


class BufferPool:
    """A connection's last few payload buffers, for reuse once nothing holds
    them: a buffer taken again needs no allocation and no zero-fill (~5 us
    per 256 KiB; a received payload only ever exposes the bytes received).
    A request's payload is a view of its buffer, so the buffer is free when
    the request and every view of it are gone: its reference count tells."""

    def __init__(self) -> None:
        #: (buffer, head): see :meth:`get`
        self.entries: list[tuple[bytearray, int]] = []

    def get(self, n: int, head: int = 0) -> bytearray:
        """A buffer of ``n`` bytes whose bytes from ``head`` on start on a
        page boundary (a request's header, then its payload); its content is
        whatever it held (zeroes when new)."""
        entries = self.entries
        for entry in entries:
            buf = entry[0]
            # referenced by the entry, ``buf`` and the call alone: free
            if len(buf) == n and entry[1] == head and getrefcount(buf) == 3:
                return buf
        buf = aligned_bytearray(n, head)
        if n <= POOL_MAX:
            if len(entries) >= POOL_KEEP:
                del entries[0]
            entries.append((buf, head))
        return buf


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
        tls: Any = None,
    ) -> None:
        self.listener = listener
        #: a :class:`.tls.ServerTLS` for --tls-creds, else None
        self.tls = tls
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
        session = Session(self.export, tls=self.tls is not None)
        try:
            serve_connection(sock, session, self.tls)
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


def _recv(stream: Stream, conn: ServerConnection, lock: threading.Lock, pool: BufferPool,
          exact: bool, poll: bool = False, expect: int = 0) -> bool:  # fmt: skip
    """Read what the engine needs next, no more than it wants when ``exact``
    (``poll``: for a short while without sleeping, see PlainStream.recv);
    False at EOF (already fed). ``expect``: the payload length of the large
    WRITE before, when the next request is likely one of the same length.
    Large reads go into buffers from ``pool``."""
    want = conn.bytes_wanted
    early = getattr(stream, "early", None)
    if early is not None:
        stream.early = None  # type: ignore[attr-defined]
    if expect and want == _REQ_SIZE and not conn.buffered:
        if early is None:
            early = pool.get(_REQ_SIZE + expect, _REQ_SIZE), 0
        return _recv_buffer(stream, conn, lock, early, expect)
    if early is not None:  # not where a request starts: fed as it came
        buf, got = early
        with lock:
            conn.receive_data(memoryview(buf)[:got])
        return True
    if want >= BIG:
        return _recv_buffer(stream, conn, lock, (pool.get(want), 0))
    data = stream.recv(want if exact else RECV_SIZE, poll)
    with lock:
        conn.receive_data(data)
    return bool(data)


def _recv_buffer(stream: Stream, conn: ServerConnection, lock: threading.Lock,
                 into: tuple[bytearray, int], expect: int = 0) -> bool:  # fmt: skip
    """Fill a buffer of its own (``into``: the buffer and how many bytes are
    in it already, say read ahead) and feed it whole: a large payload lands
    in one piece, which the engine takes without a copy.

    With ``expect``, the buffer is sized for the next request being a WRITE
    of ``expect`` payload bytes: header and payload come in one read and one
    wake-up instead of two (a bulk writer's requests are alike); the read
    stops once the header shows another request, and what came is fed."""
    buf, got = into
    n = len(buf)
    view = memoryview(buf)
    unchecked = bool(expect)  # the header is looked at once, when it is in
    while got < n:
        if unchecked and got >= _REQ_SIZE:
            unchecked = False
            magic, _, cmd, _, _, length = _unpack_request(buf)
            if magic != REQUEST_MAGIC or cmd != _WRITE or length != expect:
                break  # another request: feed what came
        k = stream.recv_into(view[got:], n - got)
        if k == 0:
            with lock:
                conn.receive_data(view[:got])
                conn.receive_data(b"")
            return False
        got += k
    with lock:
        conn.receive_data(buf if got == len(buf) else view[:got])
    return True


class _Requests:
    """The transmission phase of one connection: batches of requests for the
    executor thread (a lone one inline in the reader), FUA writes and FLUSH
    for workers started as needed, bounds on what is read ahead."""

    def __init__(self, stream: Stream, conn: ServerConnection, session: Session,
                 lock: threading.Lock, pool: BufferPool) -> None:  # fmt: skip
        self.stream = stream
        self.pool = pool  # the reader's payload buffers
        self.conn = conn
        self.session = session
        self.lock = lock  # the engine's
        counts = threading.Lock()  # guards the counts and the mailbox
        self.idle = threading.Condition(counts)
        #: the executors wait on this one (same lock): a finished batch wakes
        #: only drain() and a held-back reader, not an idle executor
        self.mailbox = threading.Condition(counts)
        #: requests handed to workers (heavy ones) and not answered yet
        self.busy = 0
        #: their WRITE payload bytes
        self.busy_bytes = 0
        #: requests handed to the executor and not answered yet, their WRITE bytes
        self.queued = 0
        self.queued_bytes = 0
        #: the executor's mailbox: requests it has not taken yet (the
        #: reader appends; a busy executor takes them all at its next round,
        #: so only an idle one costs a wake-up)
        self.mail: list[Request] = []
        #: executors waiting for mail
        self.sleeping = 0
        self.closing = False
        self.executors: list[threading.Thread] = []
        self.failed = False
        self.queue: queue.SimpleQueue[list[Request] | None] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []
        #: reply buffers of inline requests not written yet: the reader sends
        #: them in one sendmsg before it would wait for more bytes
        self.pending: list[Any] = []
        #: requests parsed and not yet run (see dispatch)
        self.batch: list[Request] = []

    def submit(self, req: Request) -> None:
        """Take one request from the reader. Most join the batch that
        :meth:`dispatch` posts to the executor when the reader has parsed all
        it holds; FUA writes and FLUSH go to a worker of their own (they wait
        on the disk), unless nothing else is queued or running."""
        # FLUSH or a FUA write waits on the disk: a worker of its own
        if req.cmd != _FLUSH and not int(req.flags) & _FUA:
            self.batch.append(req)
            return
        # read without the lock: only this thread raises the counts, so a
        # 0 seen is not stale (a stale non-0 only takes the general path)
        alone = self.busy == 0 and self.queued == 0
        if alone and not self.batch and not self.conn.buffered:
            self._inline(req)
            return
        size = len(req.data) if req.data is not None else 0
        with self.idle:
            while self.busy and (
                self.busy >= MAX_IN_FLIGHT or self.busy_bytes + size > MAX_IN_FLIGHT_BYTES
            ):
                self.idle.wait()  # bound what one client can pin
            self.busy_bytes += size
        self._queue([req])

    def dispatch(self) -> None:
        """The reader is about to wait for bytes: run the batch of requests
        parsed. Inline (no thread hand-off) when it is one request and
        nothing else runs (queue depth 1: latency); else the connection's
        executor thread takes them, so the reader goes on receiving and parsing
        while their I/O runs (measured: +15-25% IOPS at queue depth 32 over
        running the batch inline)."""
        batch = self.batch
        if batch:
            self.batch = []
            alone = self.busy == 0 and self.queued == 0  # as in submit
            if alone and len(batch) == 1:
                self._inline(batch[0])
            else:
                self._post(batch)
        self.flush()

    def _post(self, batch: list[Request]) -> None:
        """Give requests to the executors: an idle one is woken (or started)
        when none is at work, or when the batch holds a WRITE and fewer than
        :data:`EXECUTORS` are; else the mail waits for the next round of one
        at work."""
        size = 0
        writes = False
        for r in batch:
            if r.data is not None:
                size += len(r.data)
                writes = True
        with self.idle:
            while self.queued and (
                self.queued >= MAX_BATCHED or self.queued_bytes + size > MAX_IN_FLIGHT_BYTES
            ):  # bound what one client can queue
                self.idle.wait()
            self.queued += len(batch)
            self.queued_bytes += size
            self.mail += batch
            at_work = len(self.executors) - self.sleeping
            if at_work and (not writes or at_work >= EXECUTORS):
                return
            if self.sleeping:
                self.mailbox.notify()
                return
        if len(self.executors) < EXECUTORS:
            t = threading.Thread(target=self._execute, name="nbd-exec", daemon=True)
            self.executors.append(t)
            t.start()

    def _execute(self) -> None:
        for _ in iter(int, 1):  # until close()
            with self.idle:
                while not self.mail:
                    if self.closing:
                        return
                    self.sleeping += 1
                    self.mailbox.wait()
                    self.sleeping -= 1
                batch, self.mail = self.mail, []
            self._answer(batch)
            size = sum(len(r.data) for r in batch if r.data is not None)
            with self.idle:
                self.queued -= len(batch)
                self.queued_bytes -= size
                self.idle.notify_all()  # drain() or a reader held back by the bound

    def _queue(self, batch: list[Request]) -> None:
        with self.idle:
            self.busy += 1
        if len(self.workers) < WORKERS and self.busy > len(self.workers):
            t = threading.Thread(target=self._work, name="nbd-worker", daemon=True)
            self.workers.append(t)
            t.start()
        self.queue.put(batch)

    def _inline(self, req: Request) -> None:
        if req.cmd == _WRITE and req.length >= BIG and not self.conn.buffered:
            read_ahead = getattr(self.stream, "read_ahead", None)
            if read_ahead is not None:
                read_ahead(self.pool.get(_REQ_SIZE + req.length, _REQ_SIZE))
        replies = self.session.request(req)
        with self.lock:
            for r in replies:
                self.pending += self.conn.send_parts(r)
        if len(self.pending) >= FLUSH_PARTS or (self.pending and len(self.pending[-1]) >= BIG):
            self.flush()  # enough for one sendmsg, or a large READ payload

    def flush(self) -> None:
        """Write the replies of inline requests (one sendmsg for the batch)."""
        if not self.pending:
            return
        parts, self.pending = self.pending, []
        if self.failed:
            return
        try:
            self.stream.send_parts(parts)
        except OSError:
            self.failed = True  # the reader sees the socket fail too and stops

    def _work(self) -> None:
        for _ in iter(int, 1):  # until close() sends None
            batch = self.queue.get()
            if batch is None:
                return
            self._run(batch)

    def _answer(self, batch: list[Request]) -> None:
        """Carry out ``batch``; replies gathered, written every FLUSH_PARTS buffers."""
        parts: list[Any] = []
        try:
            for req in batch:
                replies = self.session.request(req)
                with self.lock:
                    for r in replies:
                        parts += self.conn.send_parts(r)
                if len(parts) >= FLUSH_PARTS or (parts and len(parts[-1]) >= BIG):
                    if not self.failed:
                        self.stream.send_parts(parts)
                    parts = []
            if parts and not self.failed:
                self.stream.send_parts(parts)
        except (OSError, NBDError):
            self.failed = True  # the reader sees the socket fail too and stops

    def _run(self, batch: list[Request]) -> None:
        """A worker's heavy request."""
        try:
            self._answer(batch)
        finally:
            data = batch[0].data
            with self.idle:
                self.busy -= 1
                self.busy_bytes -= len(data) if data is not None else 0
                self.idle.notify_all()

    def idle_now(self) -> bool:
        """Nothing queued, running or waiting to be sent."""
        return self.busy == 0 and self.queued == 0 and not self.batch and not self.pending

    def drain(self) -> None:
        """Wait until every submitted request has been answered."""
        self.dispatch()
        with self.idle:
            for _ in iter(int, 1):  # until the workers are idle
                if self.busy == 0 and self.queued == 0:
                    return
                self.idle.wait()

    def close(self) -> None:
        self.drain()
        with self.idle:
            self.closing = True
            self.mailbox.notify_all()
        for t in self.executors:
            t.join()
        for _ in self.workers:
            self.queue.put(None)
        for t in self.workers:
            t.join()


def serve_connection(sock: socket.socket, session: Session, tls: Any = None) -> None:
    """Serve one client until it leaves or breaks the protocol.

    ``tls`` is a :class:`.tls.ServerTLS` when ``--tls-creds`` is given (the
    TLS stream keeps using ``sock``, so shutting ``sock`` down still cuts it).
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    try:
        # room for several large READ replies: the executor goes on to the
        # next read while the client drains the socket (the default ~208 KiB
        # holds less than one of nbdcopy's 256 KiB replies, so every reply
        # waited for the client); the kernel caps it at net.core.wmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    except OSError:
        pass
    stream: Stream = PlainStream(sock)
    conn = ServerConnection()
    lock = threading.Lock()
    pool = BufferPool()
    stream.send_parts([conn.send(Greeting())])
    requests: _Requests | None = None
    big_writes = False
    last_write = 0
    try:
        for _ in iter(int, 1):  # until the client leaves
            try:
                with lock:
                    ev = conn.next_event()
            except NBDError:
                return  # protocol error: drop this client only
            if ev is NEED_DATA:
                if requests is not None:
                    requests.dispatch()  # answer what was read before waiting for more
                    if requests.failed:
                        return
                # nothing running: the client waits for our replies, and its
                # next request tends to come soon (queue depth 1); not after a
                # large WRITE (a bulk writer: the poll only takes its CPU)
                poll = not big_writes and requests is not None and requests.idle_now()
                _recv(stream, conn, lock, pool, big_writes, poll, last_write if big_writes else 0)
                continue  # at EOF next_event gives Closed or an error
            if ev.__class__ is Request:  # the transmission phase: one per round
                # after a large WRITE the next header is read exactly, so the
                # next payload lands whole in a buffer of its own (else the
                # engine joins the piece that came with the header and the
                # rest: a copy of the payload; halves the CPU under nbdcopy)
                cmd = ev.cmd  # type: ignore[union-attr]
                last_write = ev.length  # type: ignore[union-attr]
                big_writes = cmd == _WRITE and last_write >= BIG
                if requests is None:
                    requests = _Requests(stream, conn, session, lock, pool)
                if cmd == _DISC:
                    return  # the finally clause answers what is in flight first
                if cmd == _FLUSH:
                    requests.drain()
                requests.submit(ev)  # type: ignore[arg-type]
                continue
            if isinstance(ev, Closed):
                return
            if isinstance(ev, Option):
                replies = session.option(ev)
                parts: list[Any] = []
                for r in replies:
                    parts += conn.send_parts(r)
                if parts:
                    stream.send_parts(parts)
                if session.close or conn.state is State.CLOSED:
                    return
                if session.starttls:
                    session.starttls = False
                    if conn.buffered:
                        return  # bytes sent ahead of the TLS handshake: refuse
                    from .tls import TLSError

                    try:
                        stream = tls.handshake(sock)
                    except TLSError as exc:
                        prog = os.path.basename(sys.argv[0]) or "pyqemu-nbd"
                        sys.stderr.write(f"{prog}: option negotiation failed: {exc.message}\n")
                        return
                    session.tls_active = True
                continue
            # ClientFlags: nothing to answer
    finally:
        if requests is not None:
            requests.close()
        stream.close()


def unix_listener(path: str) -> socket.socket:
    """A listening unix socket at ``path``. It is bound under a temporary name
    in the same folder and renamed once listening: whoever sees ``path`` appear
    can connect at once (between bind and listen a connect is refused)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.{os.getpid()}")
    try:
        os.unlink(temp)
    except OSError:
        pass
    if len(os.fsencode(temp)) >= 108:  # sun_path: too long for the temporary name
        temp = path
    try:
        sock.bind(temp)
        sock.listen(128)
        if temp != path:
            os.rename(temp, path)
    except OSError:
        sock.close()
        if temp != path:
            try:
                os.unlink(temp)
            except OSError:
                pass
        raise
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
