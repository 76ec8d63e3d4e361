"""QMP, the JSON machine protocol of qemu-system-x86_64 7.2 (docs/interop/qmp-spec.txt).

Pure engine: :class:`QmpSession` is fed bytes and returns the bytes to send back; it
does no I/O (the transport is :mod:`.server`). What it does, in qemu's words:

- greeting ``{"QMP": {"version": {"qemu": {"micro", "minor", "major"}, "package"},
  "capabilities": ["oob"]}}``; capabilities negotiation mode, where only
  ``qmp_capabilities`` runs (anything else: CommandNotFound "Expecting capabilities
  negotiation with 'qmp_capabilities'"); events are sent only after it.
- framing as qemu's JSON streamer: a message is complete when its braces and brackets
  balance, whatever the line breaks; qemu's JSON extension of 'single-quoted' strings
  is accepted; parse errors come back as ``JSON parse error, ...`` with qemu's texts.
- message checks (``QMP input must be a JSON object``, ``QMP input member 'x' is
  unexpected``, ``... must be a string``, ``... lacks member 'execute'``), argument
  checks (``Parameter 'x' is unexpected``, ``Parameter 'x' is missing``, ``Invalid
  parameter type for 'x', expected: string``), ``id`` echoed in every reply.
- commands: qmp_capabilities, query-status, query-version, query-name,
  query-commands, query-block, query-chardev, query-cpus-fast, stop, cont,
  system_reset, quit, human-monitor-command.
- events: :meth:`QmpSession.event` adds qemu's wall-clock ``timestamp``.

Key order is qemu's: its dictionaries print in hash-bucket order, newest first within a
bucket (:func:`pyqemu.img_tool.qobject.qdict`), so every dict here is built in the
order qemu inserts the keys (the QAPI schema's field order) and reordered on output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyqemu.img_tool.qobject import qdict, qdict_deep

from .hmp import QEMU_PACKAGE, QEMU_VERSION, Hmp, cpu_thread_id, system_reset_and_wait


class QmpError(Exception):
    """A command failed: the reply's error class and description."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls


# --- JSON framing (qemu's json-lexer + json-streamer) -----------------------------------


_DELIMS = set(" \t\r\n{}[],:\"'")


class JsonStreamer:
    """Splits a byte stream into top-level JSON texts (or error messages).

    :meth:`feed` returns a list of items: ``("value", obj)`` or ``("error", desc)``."""

    def __init__(self) -> None:
        self._pending = b""
        self._text: list[str] = []      # the current message, single quotes rewritten
        self._depth = 0
        self._quote = ""                # inside a string: its quote char
        self._escape = False
        self._bare = ""                 # a top-level bare token being read

    def _emit(self, out: list[tuple[str, Any]]) -> None:
        text = "".join(self._text)
        self._text = []
        out.append(_parse(text))

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        raw = self._pending + data
        # keep an incomplete UTF-8 sequence for the next read
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            b = raw[-back]
            if b & 0xC0 == 0x80:
                continue
            if b >= 0xC0:
                need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
                if back < need:
                    cut = len(raw) - back
            break
        self._pending = raw[cut:]
        out: list[tuple[str, Any]] = []
        for ch in raw[:cut].decode("utf-8", errors="replace"):
            self._char(ch, out)
        return out

    def _char(self, ch: str, out: list[tuple[str, Any]]) -> None:
        if self._bare:
            if ch not in _DELIMS:
                self._bare += ch
                return
            self._text = [self._bare]
            self._bare = ""
            self._emit(out)
        if self._quote:
            if self._escape:
                self._escape = False
                if self._quote == "'" and ch == "'":
                    self._text[-1] = "'"          # \' in a single-quoted string
                    return
                self._text.append(ch)
                return
            if ch == "\\":
                self._escape = True
                self._text.append(ch)
                return
            if ch == self._quote:
                self._quote = ""
                self._text.append('"')
                if self._depth == 0:
                    self._emit(out)
                return
            self._text.append('\\"' if ch == '"' else ch)
            return
        if ch in ('"', "'"):
            self._quote = ch
            self._text.append('"')
            return
        if ch in "{[":
            self._depth += 1
            self._text.append(ch)
            return
        if ch in "}]":
            if self._depth == 0:
                out.append(("error", "JSON parse error, expecting value"))
                return
            self._depth -= 1
            self._text.append(ch)
            if self._depth == 0:
                self._emit(out)
            return
        if self._depth == 0:
            if ch in " \t\r\n":
                return
            if ch.isalnum() or ch in "-+.":
                self._bare = ch
                return
            out.append(("error", "JSON parse error, stray '%s'" % ch))
            return
        self._text.append(ch)


def _parse(text: str) -> tuple[str, Any]:
    try:
        return "value", json.loads(text)
    except json.JSONDecodeError as e:
        return "error", "JSON parse error, " + _json_error(text, e)
    except RecursionError:
        return "error", "JSON parse error, too many nested data structures"


def _json_error(text: str, e: json.JSONDecodeError) -> str:
    msg = e.msg
    at = text[e.pos:e.pos + 1]
    if msg.startswith("Expecting value"):
        word = ""
        for c in text[e.pos:]:
            if not c.isalpha():
                break
            word += c
        if word:
            return "invalid keyword '%s'" % word
        if at and at not in "{}[],:\"-0123456789 \t\r\n":
            return "stray '%s'" % at
        return "expecting value"
    if msg.startswith("Expecting ':'"):
        return "missing : in object pair"
    if msg.startswith("Expecting property name"):
        if at and (at.isdigit() or at in "-{[tfn"):
            return "key is not a string in object"
        return "expecting value"
    if msg.startswith("Expecting ',' delimiter"):
        depth = []
        for c in text[:e.pos]:
            if c in "{[":
                depth.append(c)
            elif c in "}]" and depth:
                depth.pop()
        return "expected separator in %s" % ("dict" if depth and depth[-1] == "{" else "list")
    return "expecting value"


# --- output (qobject/json-writer.c, compact) ----------------------------------------------


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= cp <= 0x7E:
            out.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append("\\u%04X\\u%04X" % (0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF)))
        else:
            out.append("\\u%04X" % cp)
    out.append('"')
    return "".join(out)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


def to_json(value: Any) -> str:
    """qemu's compact JSON: ``{"a": 1, "b": [true, null]}``, non-ASCII as \\uXXXX."""
    if isinstance(value, dict):
        return "{" + ", ".join(_quote(str(k)) + ": " + to_json(v)
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%.17g" % value
    return _quote(str(value))


# --- commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str            # "str", "int", "bool", "list", "any"
    optional: bool = False


_TYPE_NAMES = {"str": "string", "int": "integer", "bool": "boolean", "list": "array"}


def check_args(args: dict[str, Any], params: list[Param]) -> None:
    """qemu's QAPI input visitor checks, in its wording."""
    known = {p.name: p for p in params}
    for p in params:
        if p.name not in args:
            if not p.optional:
                raise QmpError("Parameter '%s' is missing" % p.name)
            continue
        v = args[p.name]
        ok = {"str": isinstance(v, str),
              "int": isinstance(v, int) and not isinstance(v, bool),
              "bool": isinstance(v, bool),
              "list": isinstance(v, list)}.get(p.type, True)
        if not ok:
            raise QmpError("Invalid parameter type for '%s', expected: %s"
                           % (p.name, _TYPE_NAMES[p.type]))
    for name in args:
        if name not in known:
            raise QmpError("Parameter '%s' is unexpected" % name)


def version_info() -> dict[str, Any]:
    major, minor, micro = QEMU_VERSION
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": QEMU_PACKAGE}


def status_info(status: str) -> dict[str, Any]:
    return {"running": status == "running", "singlestep": False, "status": status}


def chardev_entry(info: dict[str, Any]) -> dict[str, Any]:
    return {"label": info["label"], "filename": info["filename"],
            "frontend-open": info.get("frontend-open", True)}


def block_device_info(device: str, qdev: str | None, node: Any | None, *,
                      removable: bool, node_name: str = "#block0", read_only: bool = False,
                      tray_open: bool = False, locked: bool = False) -> dict[str, Any]:
    """One query-block entry (qemu's BlockInfo) for a drive: ``node`` is its
    :mod:`pyqemu.common.block` node (None: no medium). The integrator's
    ``machine.block_info()`` returns a list of these; HMP ``info block`` is made from it."""
    info: dict[str, Any] = {"device": device}
    if qdev:
        info["qdev"] = qdev
    info["type"] = "unknown"
    info["removable"] = removable
    info["locked"] = locked
    if node is not None:
        from pyqemu.img_tool.info import query_image_info

        def image_chain(n: Any) -> dict[str, Any]:
            image = dict(query_image_info(n))
            if getattr(n, "backing", None) is not None:
                image["backing-image"] = image_chain(n.backing)
            return image

        depth, b = 0, getattr(node, "backing", None)
        while b is not None:
            depth += 1
            b = getattr(b, "backing", None)
        inserted: dict[str, Any] = {"file": node.filename, "node-name": node_name,
                                    "ro": read_only, "drv": node.format_name}
        if node.backing_filename:         # the backing node's name: the combined path
            inserted["backing_file"] = node.full_backing_filename or node.backing_filename
        inserted.update({"backing_file_depth": depth, "encrypted": False,
                         "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0,
                         "iops": 0, "iops_rd": 0, "iops_wr": 0, "image": image_chain(node),
                         "cache": {"writeback": True, "direct": False, "no-flush": False},
                         "write_threshold": 0})
        info["inserted"] = inserted
    if removable:
        info["tray_open"] = tray_open
    info["io-status"] = "ok"
    return info


class QmpCommands:
    """The commands, over one machine (:class:`pyqemu.system.machine.PcMachine`)."""

    def __init__(self, machine: Any, hmp: Hmp | None = None) -> None:
        self.machine = machine
        self.hmp = hmp if hmp is not None else Hmp(machine)
        self.table: dict[str, tuple[list[Param], Callable[[dict[str, Any]], Any]]] = {
            "qmp_capabilities": ([Param("enable", "list", True)], self._no_op),
            "query-status": ([], lambda a: status_info(self.machine.status)),
            "query-version": ([], lambda a: version_info()),
            "query-name": ([], self.query_name),
            "query-commands": ([], self.query_commands),
            "query-block": ([], lambda a: list(self.machine.block_info())),
            "query-chardev": ([], lambda a: [chardev_entry(c)
                                             for c in self.machine.chardev_info()]),
            "query-cpus-fast": ([], self.query_cpus_fast),
            "stop": ([], lambda a: self._call(self.machine.stop)),
            "cont": ([], lambda a: self._call(self.machine.cont)),
            "system_reset": ([], lambda a: self._call(
                lambda: system_reset_and_wait(self.machine))),
            "quit": ([], lambda a: self._call(self.machine.quit)),
            "human-monitor-command": ([Param("command-line", "str"),
                                       Param("cpu-index", "int", True)], self.hmp_command),
        }

    @staticmethod
    def _no_op(args: dict[str, Any]) -> dict[str, Any]:
        return {}

    @staticmethod
    def _call(fn: Callable[[], Any]) -> dict[str, Any]:
        try:
            fn()
        except QmpError:
            raise
        except Exception as e:           # e.g. cont after a shutdown with -no-shutdown
            raise QmpError(str(e)) from e
        return {}

    def query_name(self, args: dict[str, Any]) -> dict[str, Any]:
        name = getattr(self.machine, "name", None)
        return {"name": name} if name else {}

    def query_commands(self, args: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": n} for n in self.table]

    def query_cpus_fast(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]",
                 "thread-id": cpu_thread_id(self.machine),
                 "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
                 "target": "x86_64"}]

    def hmp_command(self, args: dict[str, Any]) -> str:
        if args.get("cpu-index", 0) != 0:
            raise QmpError("Parameter 'cpu-index' expects a CPU number")
        return self.hmp.run(args["command-line"]).replace("\n", "\r\n")


class QmpSession:
    """One QMP connection: bytes in -> bytes out, no I/O."""

    def __init__(self, commands: QmpCommands, *, pretty: bool = False) -> None:
        self.commands = commands
        self.pretty = pretty
        self.streamer = JsonStreamer()
        self.negotiated = False
        self.oob = False

    @staticmethod
    def encode(obj: dict[str, Any], pretty: bool = False) -> bytes:
        """One reply/event as qemu writes it: QDict key order, compact JSON on one
        line, or (-qmp-pretty) qemu's 4-space indented form; CR LF line ends."""
        obj = qdict_deep(obj)
        if pretty:
            from pyqemu.img_tool.qobject import to_json_pretty

            return (to_json_pretty(obj) + "\n").replace("\n", "\r\n").encode()
        return to_json(obj).encode() + b"\r\n"

    def format(self, obj: dict[str, Any]) -> bytes:
        """:meth:`encode` in this session's style."""
        return self.encode(obj, self.pretty)

    def greeting(self) -> bytes:
        return self.format({"QMP": {"version": version_info(), "capabilities": ["oob"]}})

    def event(self, name: str, data: dict[str, Any] | None,
              when: float | None = None) -> bytes | None:
        """The event line for this client (None while still negotiating)."""
        if not self.negotiated:
            return None
        t = time.time() if when is None else when
        us = int(round(t * 1_000_000))
        msg: dict[str, Any] = {"event": name,
                               "timestamp": {"seconds": us // 1_000_000,
                                             "microseconds": us % 1_000_000}}
        if data:
            msg["data"] = data
        return self.format(msg)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Parse input; returns the complete messages as "requests": each is either a
        reply ready to send (key ``"reply"``) or a command to run with :meth:`run`."""
        items = []
        for kind, value in self.streamer.feed(data):
            if kind == "error":
                items.append({"reply": {"error": {"class": "GenericError", "desc": value}}})
            else:
                items.append({"request": value})
        return items

    def _error(self, req: dict[str, Any] | None, err: QmpError) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(req, dict) and "id" in req:
            out["id"] = req["id"]
        out["error"] = {"class": err.cls, "desc": err.desc}
        return out

    def run(self, req: Any) -> dict[str, Any]:
        """Execute one parsed request; returns the reply object. The checks come in
        qemu's order (qmp_dispatch): the members (in QDict order), execute/exec-oob,
        the command's lookup (in negotiation mode only qmp_capabilities exists, and
        "not found" reads "Expecting capabilities negotiation ..."), OOB, the
        arguments, then the command."""
        try:
            if not isinstance(req, dict):
                raise QmpError("QMP input must be a JSON object")
            for key in qdict(dict.fromkeys(req)):
                value = req[key]
                if key in ("execute", "exec-oob"):
                    if key == "exec-oob" and not self.oob:
                        raise QmpError("QMP input member '%s' is unexpected" % key)
                    if not isinstance(value, str):
                        raise QmpError("QMP input member '%s' must be a string" % key)
                elif key == "arguments":
                    if not isinstance(value, dict):
                        raise QmpError("QMP input member 'arguments' must be an object")
                elif key != "id":
                    raise QmpError("QMP input member '%s' is unexpected" % key)
            if "execute" in req and "exec-oob" in req:
                raise QmpError("QMP input member 'execute' clashes with 'exec-oob'")
            name = req.get("execute", req.get("exec-oob"))
            if name is None:
                raise QmpError("QMP input lacks member 'execute'")
            entry = self.commands.table.get(name)
            if entry is None or (not self.negotiated and name != "qmp_capabilities"):
                if not self.negotiated:
                    raise QmpError("Expecting capabilities negotiation with "
                                   "'qmp_capabilities'", "CommandNotFound")
                raise QmpError("The command %s has not been found" % name, "CommandNotFound")
            if "exec-oob" in req:
                raise QmpError("The command %s does not support OOB" % name)
            args = req.get("arguments", {})
            params, handler = entry
            check_args(args, params)
            if name == "qmp_capabilities":
                for cap in args.get("enable", []):
                    if cap != "oob":
                        raise QmpError("Parameter 'null' does not accept value '%s'" % cap)
                if self.negotiated:
                    raise QmpError("Capabilities negotiation is already complete, command "
                                   "ignored", "CommandNotFound")
                result = handler(args)
                self.negotiated = True
                self.oob = "oob" in args.get("enable", [])
            else:
                try:
                    result = handler(args)
                except QmpError:
                    raise
                except Exception as e:         # a failure in the machine: a reply
                    raise QmpError(str(e) or type(e).__name__) from e
        except QmpError as e:
            return self._error(req, e)
        out = {"return": result}
        if "id" in req:
            out["id"] = req["id"]
        return out
