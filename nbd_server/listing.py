"""``pyqemu-nbd -L``: list a server's exports, as qemu-nbd prints them, with
the engine's client side."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..common.nbd import (
    NEED_DATA,
    ClientConnection,
    ClientFlags,
    Closed,
    Info,
    NBDError,
    Opt,
    Option,
    OptionReply,
    Rep,
    RepInfo,
    RepMetaContext,
    RepServer,
    TransmissionFlag,
)
from .main import Fail

FLAG_NAMES = (
    "readonly", "flush", "fua", "rotational", "trim", "zeroes",
    "df", "multi", "resize", "cache", "fast-zero",
)  # fmt: skip


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = ClientConnection()

    def event(self) -> Any:
        for _ in range(1 << 20):
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                if isinstance(ev, Closed):
                    raise Fail(
                        "Failed to read initial magic: Unexpected end-of-file before all data were read"
                    )
                return ev
            self.conn.receive_data(self.sock.recv(65536))
        raise Fail("server sends too little data")

    def option(self, opt: Option) -> list[OptionReply]:
        self.sock.sendall(self.conn.send(opt))
        out = []
        for _ in range(1 << 16):
            rep = self.event()
            out.append(rep)
            if rep.is_final:
                return out
        raise Fail("too many option replies")


def list_exports(o: dict[str, Any]) -> int:
    path = o["socket"]
    where = path or f"{o['bind'] or 'localhost'}:{o['port']}"
    try:
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
        else:
            sock = socket.create_connection((o["bind"] or "localhost", o["port"]))
    except OSError as exc:
        raise Fail(f"Failed to connect to '{where}': {exc.strerror or exc}") from None
    try:
        text = _list(_Client(sock))
    except NBDError as exc:
        raise Fail(exc.message) from None
    except OSError as exc:
        raise Fail(f"Failed to read from '{where}': {exc.strerror or exc}") from None
    finally:
        sock.close()
    sys.stdout.write(text)
    return 0


def _list(c: _Client) -> str:
    c.event()  # Greeting
    c.sock.sendall(c.conn.send(ClientFlags()))
    c.option(Option(Opt.STRUCTURED_REPLY))
    reps = c.option(Option(Opt.LIST))
    if reps[-1].is_error:
        raise Fail(f"Server does not support export lists: {reps[-1].data}")
    exports = [r.data for r in reps if isinstance(r.data, RepServer)]
    lines = [f"exports available: {len(exports)}"]
    for ex in exports:
        lines.append(f" export: '{ex.name}'")
        if ex.description:
            lines.append(f"  description: {ex.description}")
        info = c.option(
            Option.go(ex.name, (Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE), info=True)
        )
        size = flags = 0
        block = None
        for r in info:
            if isinstance(r.data, RepInfo):
                if r.data.info is Info.EXPORT:
                    size, flags = r.data.size, int(r.data.flags)
                elif r.data.info is Info.BLOCK_SIZE:
                    block = r.data
        if flags & TransmissionFlag.HAS_FLAGS:
            lines.append(f"  size:  {size}")
            names = "".join(f" {n}" for bit, n in enumerate(FLAG_NAMES, 1) if flags & (1 << bit))
            lines.append(f"  flags: 0x{flags:x} ({names} )")
        if block is not None:
            lines.append(f"  min block: {block.minimum}")
            lines.append(f"  opt block: {block.preferred}")
            lines.append(f"  max block: {block.maximum}")
        metas = c.option(Option.meta_context(Opt.LIST_META_CONTEXT, ex.name, ()))
        ctx = [r.data.name for r in metas if isinstance(r.data, RepMetaContext)]
        if ctx and metas[-1].reply == Rep.ACK:
            lines.append(f"  available meta contexts: {len(ctx)}")
            lines += [f"   {n}" for n in ctx]
    try:
        c.option(Option(Opt.ABORT))
    except (NBDError, OSError, Fail):
        pass
    return "\n".join(lines) + "\n"
