"""QMP, the JSON machine protocol of qemu-system-x86_64 7.2 (docs/interop/qmp-spec.txt).

Pure engine: :class:`QmpSession` is fed bytes and returns the bytes to send back; it
does no I/O (the transport is :mod:`.server`). What it does, in qemu's words:

- greeting ``{"QMP": {"version": {"qemu": {"micro", "minor", "major"}, "package"},
  "capabilities": ["oob"]}}``; capabilities negotiation mode, where only
  ``qmp_capabilities`` runs (anything else: CommandNotFound "Expecting capabilities
  negotiation with 'qmp_capabilities'"); events are sent only after it.
- input as qemu's JSON lexer, streamer and parser read it: a byte-level state machine
  (numbers, keywords, "..." and qemu's 'single-quoted' strings), a message complete
  when braces and brackets balance whatever the line breaks, errors as qemu words them
  (``JSON parse error, stray '-}'``, ``... invalid keyword 'garbage'``, ``...
  expected separator in dict``, ``... duplicate key``, ``\\ud800 is not a valid
  Unicode character``, ``invalid UTF-8 sequence in string``) and qemu's
  resynchronisation after a bad byte (skip to a structural character, a control byte
  or 0xFE/0xFF).
- message checks (``QMP input must be a JSON object``, ``QMP input member 'x' is
  unexpected``, ``... must be a string``, ``... lacks member 'execute'``), argument
  checks (``Parameter 'x' is unexpected``, ``Parameter 'x' is missing``, ``Invalid
  parameter type for 'x', expected: string``), ``id`` echoed in every reply.
- commands: qmp_capabilities, query-status, query-version, query-name,
  query-commands, query-block, query-chardev, query-cpus-fast, query-pci, stop, cont,
  system_reset, quit, human-monitor-command.
- events: :meth:`QmpSession.event` adds qemu's wall-clock ``timestamp``.
- output: compact JSON on one line, or -qmp-pretty's indented form; CR LF line ends.

Key order is qemu's: its dictionaries print in hash-bucket order, newest first within a
bucket (:func:`pyqemu.img_tool.qobject.qdict`), so every dict here is built in the
order qemu inserts the keys (the QAPI schema's field order) and reordered on output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pyqemu.img_tool.qobject import qdict, qdict_deep, to_json

from .hmp import QEMU_PACKAGE, QEMU_VERSION, Hmp, cpu_thread_id, system_reset_and_wait


class QmpError(Exception):
    """A command failed: the reply's error class and description."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls


# --- JSON input (qemu's json-lexer.c, json-streamer.c, json-parser.c) ---------------


class _Tok(IntEnum):
    """Token kinds of qemu's JSON lexer."""

    LCURLY = 1
    RCURLY = 2
    LSQUARE = 3
    RSQUARE = 4
    COLON = 5
    COMMA = 6
    INTEGER = 7
    FLOAT = 8
    KEYWORD = 9
    STRING = 10
    ERROR = 11


_PUNCT = {ord("{"): _Tok.LCURLY, ord("}"): _Tok.RCURLY, ord("["): _Tok.LSQUARE,
          ord("]"): _Tok.RSQUARE, ord(":"): _Tok.COLON, ord(","): _Tok.COMMA}
_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_RESYNC = b"[]{}:,"                 # the structural characters


class JsonStreamer:
    """qemu's JSON lexer and streamer over a byte stream (QMP's framing).

    The lexer is a state machine over bytes; a bad byte makes an error token of the
    token so far plus that byte ("stray '...'"), after which input is skipped up to a
    brace, bracket, control character or 0xFE/0xFF (qemu's resynchronisation points).
    The streamer collects tokens until braces and brackets balance (or go negative) and
    hands them to :func:`_parse_tokens`. :meth:`feed` returns ``("value", obj)`` or
    ``("error", desc)`` items."""

    def __init__(self) -> None:
        self._state = "start"
        self._tok = bytearray()
        self._tokens: list[tuple[_Tok, bytes]] = []
        self._braces = 0
        self._brackets = 0

    # -- lexer ------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for b in data:
            self._byte(b, out)
        return out

    def _emit_token(self, kind: _Tok, out: list[tuple[str, Any]]) -> None:
        text = bytes(self._tok)
        self._tok.clear()
        self._state = "recovery" if kind is _Tok.ERROR else "start"
        self._token(kind, text, out)

    def _byte(self, b: int, out: list[tuple[str, Any]]) -> None:
        st = self._state
        if st == "recovery":
            if (b < 0x20 and b != 0x09) or b >= 0xFE or b in _RESYNC:
                self._state = "start"
            else:
                return
            st = "start"
        if st == "start":
            if b in _WS:
                return
            self._tok.append(b)
            if b in _PUNCT:
                self._emit_token(_PUNCT[b], out)
            elif b == 0x22:
                self._state = "dq"
            elif b == 0x27:
                self._state = "sq"
            elif b == 0x2D:
                self._state = "neg"
            elif b == 0x30:
                self._state = "zero"
            elif 0x31 <= b <= 0x39:
                self._state = "int"
            elif 0x61 <= b <= 0x7A:
                self._state = "keyword"
            else:
                self._emit_token(_Tok.ERROR, out)
            return
        if st in ("dq", "sq"):
            self._tok.append(b)
            if b < 0x20 or b >= 0xFE:
                self._emit_token(_Tok.ERROR, out)
            elif b == 0x5C:
                self._state += "_esc"
            elif b == (0x22 if st == "dq" else 0x27):
                self._emit_token(_Tok.STRING, out)
            return
        if st in ("dq_esc", "sq_esc"):
            self._tok.append(b)
            if b < 0x20 or b >= 0xFE:
                self._emit_token(_Tok.ERROR, out)
            else:
                self._state = st[:2]
            return
        # numbers and keywords: (state, byte) -> next state, or the token ends before
        # this byte (a terminal state), or an error that takes this byte with it
        nxt, terminal = _NUMBER_STATES[st](b)
        if nxt is not None:
            self._tok.append(b)
            self._state = nxt
            return
        if terminal is not None:
            self._emit_token(terminal, out)
            self._byte(b, out)
            return
        self._tok.append(b)
        self._emit_token(_Tok.ERROR, out)

    # -- streamer ---------------------------------------------------------------------

    def _token(self, kind: _Tok, text: bytes, out: list[tuple[str, Any]]) -> None:
        if kind is _Tok.ERROR:
            self._reset()
            text = text.split(b"\0")[0]          # qemu's message is a C string
            out.append(("error", "JSON parse error, stray '%s'"
                        % text.decode("utf-8", errors="replace")))
            return
        if kind is _Tok.LCURLY:
            self._braces += 1
        elif kind is _Tok.RCURLY:
            self._braces -= 1
        elif kind is _Tok.LSQUARE:
            self._brackets += 1
        elif kind is _Tok.RSQUARE:
            self._brackets -= 1
        self._tokens.append((kind, text))
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 \
                and self._brackets >= 0:
            if len(self._tokens) > _MAX_TOKENS:
                self._reset()
                out.append(("error", "JSON parse error, JSON token count limit exceeded"))
            return
        tokens = self._tokens
        self._reset()
        try:
            out.append(("value", _Parser(tokens).parse()))
        except _JsonError as e:
            out.append(("error", "JSON parse error, %s" % e))

    def _reset(self) -> None:
        self._tokens = []
        self._braces = 0
        self._brackets = 0


_MAX_TOKENS = 2 * 1024 * 1024
_MAX_NESTING = 1024


def _st_neg(b: int) -> tuple[str | None, _Tok | None]:
    return ("zero" if b == 0x30 else "int" if b in _DIGITS else None), None


def _st_zero(b: int) -> tuple[str | None, _Tok | None]:
    if b == 0x2E:                              # (no exponent right after a 0, as qemu)
        return "mantissa", None
    if b in _DIGITS:
        return None, None                      # "01": an error
    return None, _Tok.INTEGER


def _st_int(b: int) -> tuple[str | None, _Tok | None]:
    if b in _DIGITS:
        return "int", None
    if b == 0x2E:
        return "mantissa", None
    if b in b"eE":
        return "exp_e", None
    return None, _Tok.INTEGER


def _st_mantissa(b: int) -> tuple[str | None, _Tok | None]:
    return ("mantissa_digits" if b in _DIGITS else None), None


def _st_mantissa_digits(b: int) -> tuple[str | None, _Tok | None]:
    if b in _DIGITS:
        return "mantissa_digits", None
    if b in b"eE":
        return "exp_e", None
    return None, _Tok.FLOAT


def _st_exp_e(b: int) -> tuple[str | None, _Tok | None]:
    return ("exp_sign" if b in b"+-" else "exp_digits" if b in _DIGITS else None), None


def _st_exp_sign(b: int) -> tuple[str | None, _Tok | None]:
    return ("exp_digits" if b in _DIGITS else None), None


def _st_exp_digits(b: int) -> tuple[str | None, _Tok | None]:
    return ("exp_digits", None) if b in _DIGITS else (None, _Tok.FLOAT)


def _st_keyword(b: int) -> tuple[str | None, _Tok | None]:
    return ("keyword", None) if 0x61 <= b <= 0x7A else (None, _Tok.KEYWORD)


_NUMBER_STATES = {"neg": _st_neg, "zero": _st_zero, "int": _st_int,
                  "mantissa": _st_mantissa, "mantissa_digits": _st_mantissa_digits,
                  "exp_e": _st_exp_e, "exp_sign": _st_exp_sign,
                  "exp_digits": _st_exp_digits, "keyword": _st_keyword}


class _JsonError(Exception):
    """A parse error (qemu's text, without the "JSON parse error, " prefix)."""


class _Parser:
    """qemu's JSON parser over one statement's tokens (json-parser.c's rules and
    messages; the first error wins)."""

    def __init__(self, tokens: list[tuple[_Tok, bytes]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def _next(self) -> tuple[_Tok | None, bytes]:
        if self.pos >= len(self.tokens):
            return None, b""
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _peek(self) -> _Tok | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def parse(self) -> Any:
        return self._value()

    def _value(self) -> Any:
        kind, text = self._next()
        if kind is _Tok.LCURLY:
            return self._object()
        if kind is _Tok.LSQUARE:
            return self._array()
        if kind is _Tok.STRING:
            return _parse_string(text)
        if kind is _Tok.INTEGER:
            value = int(text)
            if -(1 << 63) <= value < 1 << 64:
                return value
            return float(text)
        if kind is _Tok.FLOAT:
            return float(text)
        if kind is _Tok.KEYWORD:
            word = text.decode()
            if word in _KEYWORDS:
                return _KEYWORDS[word]
            raise _JsonError("invalid keyword '%s'" % word)
        raise _JsonError("expecting value")

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _JsonError("JSON nesting depth limit exceeded")

    def _object(self) -> dict[str, Any]:
        self._enter()
        out: dict[str, Any] = {}
        if self._peek() is _Tok.RCURLY:
            self._next()
            self.depth -= 1
            return out
        while True:
            key = self._value()
            if not isinstance(key, str):
                raise _JsonError("key is not a string in object")
            if self._next()[0] is not _Tok.COLON:
                raise _JsonError("missing : in object pair")
            value = self._value()
            if key in out:
                raise _JsonError("duplicate key")
            out[key] = value
            kind = self._next()[0]
            if kind is _Tok.RCURLY:
                self.depth -= 1
                return out
            if kind is not _Tok.COMMA:
                raise _JsonError("expected separator in dict")

    def _array(self) -> list[Any]:
        self._enter()
        out: list[Any] = []
        if self._peek() is _Tok.RSQUARE:
            self._next()
            self.depth -= 1
            return out
        while True:
            out.append(self._value())
            kind = self._next()[0]
            if kind is _Tok.RSQUARE:
                self.depth -= 1
                return out
            if kind is not _Tok.COMMA:
                raise _JsonError("expected separator in list")


_KEYWORDS = {"true": True, "false": False, "null": None}
_ESCAPES_IN = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
               ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}


def _hex4(text: bytes, at: int) -> int | None:
    digits = text[at:at + 4]
    if len(digits) == 4 and all(c in b"0123456789abcdefABCDEF" for c in digits):
        return int(digits, 16)
    return None


def _parse_string(text: bytes) -> str:
    """A string token's value (quotes included in ``text``): escapes, surrogate
    pairs, and modified UTF-8 (overlong NUL allowed, encoded surrogates refused)."""
    out: list[str] = []
    i, end = 1, len(text) - 1
    while i < end:
        c = text[i]
        if c == 0x5C:
            e = text[i + 1]
            if e == ord("u"):
                cp = _hex4(text, i + 2)
                bad = "\\u%s is not a valid Unicode character" % text[
                    i + 2:i + 6].split(b"\0")[0].decode("utf-8", errors="replace")
                if cp is None or 0xDC00 <= cp <= 0xDFFF:
                    raise _JsonError(bad)
                i += 6
                if 0xD800 <= cp <= 0xDBFF:
                    low = _hex4(text, i + 2) if text[i:i + 2] == b"\\u" else None
                    if low is None or not 0xDC00 <= low <= 0xDFFF:
                        raise _JsonError(bad)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                out.append(chr(cp))
                continue
            if e not in _ESCAPES_IN:
                raise _JsonError("invalid escape sequence in string")
            out.append(_ESCAPES_IN[e])
            i += 2
            continue
        if c < 0x80:
            out.append(chr(c))
            i += 1
            continue
        cp, n = _utf8_char(text, i, end)
        if cp is None:
            raise _JsonError("invalid UTF-8 sequence in string")
        out.append(chr(cp))
        i += n
    return "".join(out)


def _utf8_char(text: bytes, i: int, end: int) -> tuple[int | None, int]:
    """One modified-UTF-8 character at ``text[i]`` (a lead byte >= 0x80)."""
    c = text[i]
    if text[i:i + 2] == b"\xc0\x80":
        return 0, 2                            # modified UTF-8's NUL
    if 0xC2 <= c <= 0xDF:
        n, cp, low = 2, c & 0x1F, 0x80
    elif 0xE0 <= c <= 0xEF:
        n, cp, low = 3, c & 0x0F, 0x800
    elif 0xF0 <= c <= 0xF4:
        n, cp, low = 4, c & 0x07, 0x10000
    else:
        return None, 1
    if i + n > end:
        return None, 1
    for k in range(1, n):
        b = text[i + k]
        if b & 0xC0 != 0x80:
            return None, 1
        cp = (cp << 6) | (b & 0x3F)
    if cp < low or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return None, 1
    return cp, n


# --- output (qobject/json-writer.c, compact) ----------------------------------------------


# to_json: pyqemu.img_tool.qobject's, the same json-writer.c (also qemu-img's --output=json)


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
            "query-pci": ([], self.query_pci),
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

    def query_pci(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        pci = self.machine.pci
        run = getattr(self.machine, "run_on_cpu_thread", None)
        return run(pci.query_pci) if run else pci.query_pci()

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
