"""One export: qemu-nbd's answers to options and commands, over a block node.

No sockets here: :class:`Session` takes the engine's messages and returns the
messages to send back; the transport moves bytes.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import fcntl
import os
from typing import Any

from ..common.block import BlockError, MapRun, block_status_above
from ..common.block.file import FileProtocol
from ..common.block.qcow2 import Qcow2
from ..common.block.raw import RawFormat
from ..common.nbd import (
    BASE_ALLOCATION,
    MAX_PAYLOAD,
    QEMU_ALLOCATION_DEPTH,
    QEMU_DIRTY_BITMAP,
    Chunk,
    Cmd,
    CmdFlag,
    Errno,
    ExportNameOpt,
    ExportNameReply,
    Extent,
    Info,
    InfoOpt,
    InvalidMessage,
    MetaContextOpt,
    Opt,
    Option,
    OptionReply,
    Rep,
    RepInfo,
    ReplyFlag,
    RepMetaContext,
    RepServer,
    Request,
    SimpleReply,
    StateFlag,
    StructuredChunk,
    TransmissionFlag,
)
from ..common.nbd.events import data_chunk, done_chunk

#: qemu-nbd's block sizes: any byte, 4 KiB preferred, 32 MiB at most
MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK = 1, 4096, MAX_PAYLOAD
#: the most extents one BLOCK_STATUS reply carries (bounded work per request)
MAX_EXTENTS = 1 << 16
#: data runs at least this long are read with readinto (no copy into bytes)
BIG_READ = 1 << 16
#: sparse READs cache one data run per 64 MiB window, for at most 4096 windows
STATUS_WINDOW_BITS, STATUS_WINDOWS = 26, 4096

Reply = OptionReply | ExportNameReply | SimpleReply | StructuredChunk


class FileRange:
    """A READ payload left in the host file: ``length`` bytes at ``offset`` of
    ``fd``. The plain-socket transport sends it with ``os.sendfile`` (the
    kernel hands page-cache pages to the socket: measured 15 us of CPU per
    256 KiB against 51-69 us for preadv into a buffer and sendmsg);
    :meth:`read` gives the bytes for anything else. A read error then
    surfaces on the socket: the header is out, so the connection is cut
    instead of an error chunk being sent."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        """The bytes (zeroes past the end of the file, as the raw driver reads)."""
        data = os.pread(self.fd, self.length, self.offset)
        if len(data) < self.length:
            data += bytes(self.length - len(data))
        return data


@dataclasses.dataclass
class Export:
    """What qemu-nbd exports: a node, its name, flags and meta contexts."""

    node: Any
    name: str = ""
    description: str = ""
    read_only: bool = False
    offset: int = 0
    shared: int = 1
    allocation_depth: bool = False
    bitmap: Any = None  # a DirtyBitmap for -B
    discard: bool = False  # --discard=unmap
    detect_zeroes: str = "off"

    def __post_init__(self) -> None:
        size = max(0, self.node.size - self.offset)
        #: the export size: rounded up to 512 bytes, the tail reads as zeroes
        self.size = (size + 511) & ~511
        self.backed = size
        #: data runs block status reported, in export offsets: window number
        #: (offset >> STATUS_WINDOW_BITS) -> (start, end) within that window.
        #: Sparse reads inside one skip block status (as qemu's file-posix
        #: block status cache). Only data is cached, so a stale entry costs
        #: sparseness, never correctness; zero writes and discards clear it.
        self.data_runs: dict[int, tuple[int, int]] = {}
        #: (fd, offset of export byte 0 in it) when the node is a raw image in
        #: a plain host file: large READ payloads then go out by os.sendfile
        #: (see FileRange); else None
        self.host_file: tuple[int, int] | None = None
        #: the plain host files (page cache, no O_DIRECT) directly under the raw
        #: and qcow2 layers of the chain: block status runs in these may be sent
        #: from the file (a file under another layer, e.g. blkdebug, must be read
        #: through it)
        self.host_files: list[Any] = []
        node = layer = self.node
        while layer is not None:
            child = getattr(layer, "file", None)
            if type(layer) in (RawFormat, Qcow2) and type(child) is FileProtocol:
                if not fcntl.fcntl(child.fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
                    self.host_files.append(child)
            layer = getattr(layer, "backing", None)
        if type(node) is RawFormat and self.host_files and self.host_files[0] is node.file:
            self.host_file = (node.file.fd, node.offset + self.offset)

    def status(self, offset: int, length: int) -> tuple[int, bool]:
        """(n, zero): the first ``n`` bytes (1 <= n <= length) from export
        ``offset`` all read as zero, or all may hold data."""
        win = offset >> STATUS_WINDOW_BITS
        cached = self.data_runs.get(win)
        if cached is not None and cached[0] <= offset and offset + length <= cached[1]:
            return length, False
        # ask to the end of the window, so the data run cached is whole there
        ask = max(length, min(self.backed, (win + 1) << STATUS_WINDOW_BITS) - offset)
        run: MapRun = block_status_above(self.node, offset + self.offset, ask)
        whole = max(1, min(run.length, ask))
        if not run.zero:
            if len(self.data_runs) >= STATUS_WINDOWS:
                self.data_runs.clear()
            self.data_runs[win] = (offset, offset + whole)
        return min(whole, length), run.zero

    def flags(self, structured: bool) -> TransmissionFlag:
        f = (
            TransmissionFlag.HAS_FLAGS
            | TransmissionFlag.SEND_FLUSH
            | TransmissionFlag.SEND_FUA
            | TransmissionFlag.SEND_CACHE
        )
        if self.read_only:
            f |= TransmissionFlag.READ_ONLY
        else:
            f |= (
                TransmissionFlag.SEND_TRIM
                | TransmissionFlag.SEND_WRITE_ZEROES
                | TransmissionFlag.SEND_FAST_ZERO
            )
        if structured:
            f |= TransmissionFlag.SEND_DF
        if self.shared != 1:
            f |= TransmissionFlag.CAN_MULTI_CONN
        return f

    def contexts(self) -> list[str]:
        names = [BASE_ALLOCATION]
        if self.allocation_depth:
            names.append(QEMU_ALLOCATION_DEPTH)
        if self.bitmap is not None:
            names.append(QEMU_DIRTY_BITMAP + self.bitmap.name)
        return names

    def match_contexts(self, queries: tuple[str, ...], listing: bool) -> list[tuple[int, str]]:
        """(id, name) of the contexts the queries select (ids as qemu numbers them)."""
        ours = list(enumerate(self.contexts()))
        if not queries:
            return ours if listing else []
        out: list[tuple[int, str]] = []
        for q in queries:
            for cid, name in ours:
                if (cid, name) in out:
                    continue
                if name == q:
                    out.append((cid, name))
                elif listing and q in ("base:", "qemu:") and name.startswith(q):
                    out.append((cid, name))
                elif listing and q == QEMU_DIRTY_BITMAP and name.startswith(q):
                    out.append((cid, name))
        return sorted(out)


def nbd_errno(exc: BaseException) -> Errno:
    """The wire error for a block layer failure (system_errno_to_nbd_errno)."""
    code = getattr(exc, "errno", None) or _errno.EIO
    return {
        _errno.EPERM: Errno.EPERM,
        _errno.EROFS: Errno.EPERM,
        _errno.EACCES: Errno.EPERM,
        _errno.EIO: Errno.EIO,
        _errno.ENOMEM: Errno.ENOMEM,
        _errno.ENOSPC: Errno.ENOSPC,
        _errno.EFBIG: Errno.ENOSPC,
        _errno.EDQUOT: Errno.ENOSPC,
        _errno.EOVERFLOW: Errno.EOVERFLOW,
        _errno.ENOTSUP: Errno.ENOTSUP,
        _errno.ESHUTDOWN: Errno.ESHUTDOWN,
    }.get(code, Errno.EINVAL)


#: the flags each command accepts, as plain ints
_ALLOWED_FLAGS: dict[int, int] = {
    Cmd.READ: int(CmdFlag.DF),
    Cmd.WRITE: int(CmdFlag.FUA),
    Cmd.WRITE_ZEROES: int(CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO),
    Cmd.TRIM: int(CmdFlag.FUA),
    Cmd.FLUSH: 0,
    Cmd.CACHE: 0,
    Cmd.BLOCK_STATUS: int(CmdFlag.REQ_ONE),
    Cmd.DISC: 0,
}
_DF, _FUA, _NO_HOLE = int(CmdFlag.DF), int(CmdFlag.FUA), int(CmdFlag.NO_HOLE)
_READ, _WRITE = int(Cmd.READ), int(Cmd.WRITE)


class Session:
    """The server side of one connection: option and command answers."""

    def __init__(self, export: Export, tls: bool = False) -> None:
        self.export = export
        self.structured = False
        #: context id -> name, chosen with NBD_OPT_SET_META_CONTEXT
        self.meta: dict[int, str] = {}
        #: True once NBD_OPT_GO / EXPORT_NAME succeeded
        self.negotiated = False
        #: the connection must be closed after the replies (EXPORT_NAME failure)
        self.close = False
        #: --tls-creds given: options other than STARTTLS are refused until TLS
        self.tls = tls
        #: TLS is running on this connection
        self.tls_active = False
        #: set with the STARTTLS ACK: the transport must start TLS after sending it
        self.starttls = False

    # --- options ---------------------------------------------------------

    def option(self, opt: Option) -> list[Reply]:
        exp = self.export
        code = opt.opt

        def err(rep: Rep, text: str) -> list[Reply]:
            return [OptionReply(code, rep, text)]

        if self.tls and not self.tls_active:
            return self._before_tls(opt)
        try:
            parsed = opt.parsed()
        except InvalidMessage as exc:
            if code == Opt.EXPORT_NAME:
                self.close = True
                return []
            if isinstance(code, Opt):
                return err(Rep.ERR_INVALID, f"{code.name} option: {exc}")
            return err(Rep.ERR_UNSUP, f"Unsupported option {int(code)} (unknown)")
        if code == Opt.EXPORT_NAME:
            assert isinstance(parsed, ExportNameOpt)
            if parsed.name != exp.name:
                self.close = True
                return []
            self.negotiated = True
            return [ExportNameReply(exp.size, exp.flags(self.structured))]
        if code == Opt.ABORT:
            return [OptionReply(code, Rep.ACK)]
        if code == Opt.LIST:
            return [
                OptionReply(code, Rep.SERVER, RepServer(exp.name, exp.description)),
                OptionReply(code, Rep.ACK),
            ]
        if code == Opt.STARTTLS:
            if self.tls_active:
                return err(Rep.ERR_INVALID, "TLS already enabled")
            return err(Rep.ERR_POLICY, "TLS not configured")
        if code == Opt.STRUCTURED_REPLY:
            if self.structured:
                return err(Rep.ERR_INVALID, "structured reply already negotiated")
            self.structured = True
            return [OptionReply(code, Rep.ACK)]
        if code in (Opt.INFO, Opt.GO):
            assert isinstance(parsed, InfoOpt)
            if parsed.name != exp.name:
                return err(Rep.ERR_UNKNOWN, f"export '{parsed.name}' not present")
            out: list[Reply] = []
            reqs = set(parsed.requests)
            if Info.NAME in reqs:
                out.append(OptionReply(code, Rep.INFO, RepInfo(Info.NAME, name=exp.name)))
            if Info.DESCRIPTION in reqs and exp.description:
                out.append(
                    OptionReply(
                        code, Rep.INFO, RepInfo(Info.DESCRIPTION, description=exp.description)
                    )
                )
            out.append(
                OptionReply(
                    code,
                    Rep.INFO,
                    RepInfo(
                        Info.BLOCK_SIZE,
                        minimum=MIN_BLOCK,
                        preferred=PREFERRED_BLOCK,
                        maximum=MAX_BLOCK,
                    ),
                )
            )
            out.append(
                OptionReply(
                    code,
                    Rep.INFO,
                    RepInfo(Info.EXPORT, size=exp.size, flags=exp.flags(self.structured)),
                )
            )
            out.append(OptionReply(code, Rep.ACK))
            if code == Opt.GO:
                self.negotiated = True
            return out
        if code in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            assert isinstance(parsed, MetaContextOpt)
            if not self.structured:
                return err(Rep.ERR_INVALID, "request not valid before NBD_OPT_STRUCTURED_REPLY")
            if parsed.name != exp.name:
                return err(Rep.ERR_UNKNOWN, f"export '{parsed.name}' not present")
            listing = code == Opt.LIST_META_CONTEXT
            chosen = exp.match_contexts(parsed.queries, listing)
            if not listing:
                self.meta = dict(chosen)
            out = [OptionReply(code, Rep.META_CONTEXT, RepMetaContext(i, n)) for i, n in chosen]
            out.append(OptionReply(code, Rep.ACK))
            return out
        name = code.name if isinstance(code, Opt) else "unknown"
        return err(Rep.ERR_UNSUP, f"Unsupported option {int(code)} ({name})")

    def _before_tls(self, opt: Option) -> list[Reply]:
        """qemu-nbd's answers while TLS is required and not started yet."""
        code = opt.opt
        if code == Opt.EXPORT_NAME:
            self.close = True  # no way to send an error: disconnect
            return []
        if code == Opt.STARTTLS:
            if opt.data:
                self.close = True
                return [
                    OptionReply(code, Rep.ERR_INVALID, "option 'STARTTLS' has unexpected length")
                ]
            self.starttls = True
            return [OptionReply(code, Rep.ACK)]
        if code == Opt.ABORT:
            self.close = True  # the client asked to quit: answer, then close
        return [
            OptionReply(code, Rep.ERR_TLS_REQD, f"Option 0x{int(code):x} not permitted before TLS")
        ]

    # --- commands --------------------------------------------------------

    def error(self, req: Request, code: Errno, message: str = "") -> list[Reply]:
        if self.structured:
            return [
                StructuredChunk(
                    req.cookie, Chunk.ERROR, ReplyFlag.DONE, error=code, message=message
                )
            ]
        return [SimpleReply(req.cookie, code)]

    def ok(self, req: Request) -> list[Reply]:
        if self.structured:
            return [StructuredChunk(req.cookie, Chunk.NONE, ReplyFlag.DONE)]
        return [SimpleReply(req.cookie)]

    def request(self, req: Request) -> list[Reply]:
        """Carry out one command; returns its replies (none for DISC).

        READ and WRITE without unusual flags, inside the export, take a short
        path first (plain int tests, replies built without re-validation);
        the answers are those of the general path below."""
        exp = self.export
        cmd = req.cmd
        if cmd == _READ or cmd == _WRITE:
            flags = int(req.flags)
            end = req.offset + req.length
            if end <= exp.backed and req.length <= MAX_BLOCK:
                try:
                    if cmd == _READ:
                        if not flags and self.structured and req.length:
                            n, zero = exp.status(req.offset, req.length)
                            if n == req.length and not zero:
                                return [self._data(req.cookie, req.offset, req.length, True)]
                            return self._sparse_read(req)
                    elif not flags & ~_FUA and not exp.read_only and exp.detect_zeroes == "off":
                        exp.node.write(req.offset + exp.offset, req.data, fua=bool(flags))
                        return (
                            [done_chunk(req.cookie)]
                            if self.structured
                            else [SimpleReply(req.cookie)]
                        )
                except BlockError as exc:
                    return self.error(req, nbd_errno(exc), exc.message)
                except OSError as exc:
                    return self.error(req, nbd_errno(exc), exc.strerror or str(exc))
        return self._request(req)

    def _data(self, cookie: int, off: int, n: int, done: bool) -> StructuredChunk:
        """An OFFSET_DATA chunk of the ``n`` bytes at export offset ``off``."""
        exp = self.export
        if n >= BIG_READ and not self.tls and exp.host_files:
            if exp.host_file is not None:
                fd, base = exp.host_file
                return data_chunk(cookie, off, FileRange(fd, base + off, n), done)  # type: ignore[arg-type]
            # qcow2: where block status gives the run's place in the host file
            # (OFFSET_VALID, as `qemu-img map` reports: data clusters neither
            # compressed nor encrypted, in the image or a backing file), the
            # bytes are there as they are; looked up per request, as the
            # driver's own read maps under its lock and reads after
            run = block_status_above(exp.node, off + exp.offset, n)
            if (
                run.data
                and not run.zero
                and run.offset is not None
                and run.length >= n
                and any(run.file is f for f in exp.host_files)
            ):
                rng = FileRange(run.file.fd, run.offset, n)
                return data_chunk(cookie, off, rng, done)  # type: ignore[arg-type]
        if n >= BIG_READ:
            readinto = getattr(exp.node, "readinto", None)
            if readinto is not None:
                # into our buffer: read() may zero one and copy it into bytes
                data: Any = bytearray(n)
                readinto(off + exp.offset, memoryview(data))
                return data_chunk(cookie, off, data, done)
        return data_chunk(cookie, off, exp.node.read(off + exp.offset, n), done)

    def _request(self, req: Request) -> list[Reply]:
        exp = self.export
        cmd = req.cmd
        if cmd == Cmd.DISC:
            return []
        flags = int(req.flags)  # plain int tests: IntFlag operators cost more per request
        allowed = _ALLOWED_FLAGS.get(cmd)  # type: ignore[call-overload]
        if allowed is None:
            return self.error(req, Errno.EINVAL, f"unsupported command {int(cmd)}")
        if flags & ~allowed:
            return self.error(req, Errno.EINVAL, f"unsupported flags (got 0x{flags:x})")
        if flags & _DF and not self.structured:
            return self.error(req, Errno.EINVAL, "DF flag needs structured replies")
        if exp.read_only and cmd in (Cmd.WRITE, Cmd.WRITE_ZEROES, Cmd.TRIM):
            return self.error(req, Errno.EINVAL, "export is read-only")
        if req.length > MAX_BLOCK and cmd in (Cmd.READ, Cmd.WRITE):
            return self.error(req, Errno.EINVAL, f"len ({req.length}) is larger than max len")
        end = req.offset + req.length
        if end > exp.size and cmd != Cmd.FLUSH:
            return self.error(req, Errno.EINVAL, "operation past EOF")
        fua = bool(flags & _FUA)
        try:
            if cmd == Cmd.READ:
                return self._read(req)
            if cmd == Cmd.WRITE:
                assert req.data is not None
                self._write(req.offset, req.data, fua)
            elif cmd == Cmd.WRITE_ZEROES:
                unmap = exp.discard and not flags & _NO_HOLE
                self._zero(req.offset, req.length, unmap, fua)
            elif cmd == Cmd.TRIM:
                if exp.discard:
                    exp.data_runs.clear()
                    lo, hi = self._clip(req.offset, req.length)
                    if hi > lo:
                        exp.node.discard(lo, hi - lo)
                if fua:
                    exp.node.flush()
            elif cmd == Cmd.FLUSH:
                exp.node.flush()
            elif cmd == Cmd.CACHE:
                pass  # nothing to prefetch into: the host page cache does it
            elif cmd == Cmd.BLOCK_STATUS:
                return self._block_status(req)
        except BlockError as exc:
            return self.error(req, nbd_errno(exc), exc.message)
        except OSError as exc:
            return self.error(req, nbd_errno(exc), exc.strerror or str(exc))
        return self.ok(req)

    def _clip(self, offset: int, length: int) -> tuple[int, int]:
        """The part of [offset, offset + length) backed by the node, in node offsets."""
        exp = self.export
        lo = min(offset, exp.backed)
        hi = min(offset + length, exp.backed)
        return lo + exp.offset, hi + exp.offset

    def _read(self, req: Request) -> list[Reply]:
        exp = self.export
        if self.structured and req.length and not int(req.flags) & _DF:
            return self._sparse_read(req)
        lo, hi = self._clip(req.offset, req.length)
        data: bytes | bytearray = exp.node.read(lo, hi - lo) if hi > lo else b""
        if len(data) < req.length:
            data = bytearray(data) + bytes(req.length - len(data))
        if not self.structured:
            return [SimpleReply(req.cookie, 0, data)]
        if not req.length:
            return self.ok(req)
        return [
            StructuredChunk(
                req.cookie, Chunk.OFFSET_DATA, ReplyFlag.DONE, offset=req.offset, data=data
            )
        ]

    def _sparse_read(self, req: Request) -> list[Reply]:
        """A structured READ as qemu-nbd answers it without NBD_CMD_FLAG_DF
        (nbd_co_send_sparse_read): one chunk per block status run, OFFSET_HOLE
        where the run reads as zeroes, OFFSET_DATA with the bytes elsewhere;
        the zero tail past the node joins a hole before it."""
        exp = self.export
        pos, end = req.offset, req.offset + req.length
        runs: list[tuple[int, int, bool]] = []  # (offset, length, hole)
        while pos < end:
            if pos >= exp.backed:
                if runs and runs[-1][2]:
                    runs[-1] = (runs[-1][0], end - runs[-1][0], True)
                else:
                    runs.append((pos, end - pos, True))
                break
            n, zero = exp.status(pos, min(end, exp.backed) - pos)
            runs.append((pos, n, zero))
            pos += n
        out: list[Reply] = []
        last = len(runs) - 1
        for i, (off, n, hole) in enumerate(runs):
            if hole:
                flags = ReplyFlag.DONE if i == last else ReplyFlag.NONE
                out.append(
                    StructuredChunk(req.cookie, Chunk.OFFSET_HOLE, flags, offset=off, length=n)
                )
            else:
                out.append(self._data(req.cookie, off, n, i == last))
        return out

    def _write(self, offset: int, data: Any, fua: bool) -> None:
        exp = self.export
        lo, hi = self._clip(offset, len(data))
        if hi <= lo:
            return
        view = memoryview(data)[: hi - lo]
        if exp.detect_zeroes != "off" and not any(view):
            exp.data_runs.clear()
            exp.node.write_zeroes(lo, hi - lo, may_unmap=exp.detect_zeroes == "unmap", fua=fua)
            return
        exp.node.write(lo, view, fua=fua)

    def _zero(self, offset: int, length: int, unmap: bool, fua: bool) -> None:
        self.export.data_runs.clear()
        lo, hi = self._clip(offset, length)
        if hi > lo:
            self.export.node.write_zeroes(lo, hi - lo, may_unmap=unmap, fua=fua)

    def _block_status(self, req: Request) -> list[Reply]:
        if not self.structured or not self.meta:
            return self.error(req, Errno.EINVAL, "CMD_BLOCK_STATUS not negotiated")
        if not req.length:
            return self.error(req, Errno.EINVAL, "zero length")
        one = bool(req.flags & CmdFlag.REQ_ONE)
        chunks: list[Reply] = []
        items = sorted(self.meta.items())
        for n, (cid, name) in enumerate(items):
            ext = self._extents(name, req.offset, req.length, one)
            done = ReplyFlag.DONE if n == len(items) - 1 else ReplyFlag.NONE
            chunks.append(
                StructuredChunk(req.cookie, Chunk.BLOCK_STATUS, done, context_id=cid, extents=ext)
            )
        return chunks

    def _extents(self, name: str, offset: int, length: int, one: bool) -> tuple[Extent, ...]:
        exp = self.export
        end = offset + length
        out: list[list[int]] = []

        def add(n: int, flags: int) -> bool:
            if out and out[-1][1] == flags:
                out[-1][0] += n
            else:
                out.append([n, flags])
            return len(out) > MAX_EXTENTS or (one and len(out) > 1)

        if name.startswith(QEMU_DIRTY_BITMAP):
            bm = exp.bitmap
            pos = offset
            for start, stop in bm.runs():
                start, stop = start - exp.offset, stop - exp.offset
                if stop <= pos:
                    continue
                if start >= end:
                    break
                if start > pos and add(start - pos, 0):
                    break
                s = max(start, pos)
                e = min(stop, end)
                if add(e - s, 1):
                    break
                pos = e
            if pos < end:
                add(end - pos, 0)
        else:
            depth_ctx = name == QEMU_ALLOCATION_DEPTH
            pos = offset
            for _ in range(MAX_EXTENTS * 4):
                if pos >= end:
                    break
                if pos >= exp.backed:
                    flags = 0 if depth_ctx else int(StateFlag.HOLE | StateFlag.ZERO)
                    if add(end - pos, flags):
                        break
                    break
                hi = min(end, exp.backed)
                run: MapRun = block_status_above(exp.node, pos + exp.offset, hi - pos)
                n = max(1, min(run.length, hi - pos))
                if depth_ctx:
                    flags = run.depth + 1 if run.present else 0
                else:
                    flags = (0 if run.data else int(StateFlag.HOLE)) | (
                        int(StateFlag.ZERO) if run.zero else 0
                    )
                if add(n, flags):
                    break
                pos += n
        if one or len(out) > MAX_EXTENTS:
            out = out[:1] if one else out[:MAX_EXTENTS]
        if one:
            out[0][0] = min(out[0][0], length)
        # the reply must not extend past the request
        total = 0
        res = []
        for n, f in out:
            n = min(n, length - total)
            if n <= 0:
                break
            res.append(Extent(n, f))
            total += n
        return tuple(res)
