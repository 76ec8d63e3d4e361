"""The ``blkdebug`` filter: inject I/O errors and suspend requests on events
(QEMU's block/blkdebug.c, as of 7.2).

blkdebug sits between a format driver and its image: ``qcow2 -> blkdebug ->
file`` for ``-f qcow2 blkdebug:rules.cfg:disk.qcow2``. It passes I/O through
unchanged until a rule fires. Format drivers signal events (``read_aio``,
``l2_update``, ...) on their file child with :meth:`BlockDriver.debug_event`;
this node matches the events against its rules:

* ``inject-error`` makes the following requests of the rule's I/O type fail
  with its errno (optionally only a request covering ``sector``, only once,
  only in ``state``);
* ``set-state`` moves the node's state machine (it starts in state 1);
* a breakpoint (:meth:`Blkdebug.debug_breakpoint`) blocks the request's thread
  until :meth:`Blkdebug.debug_resume`.

Rules come from an ini-style config file (``[inject-error]`` and
``[set-state]`` groups, ``key = "value"`` lines, QEMU's ``qemu_config_parse``)
and from options (``inject-error.0.event=read_aio``). Filenames take the form
``blkdebug:CONFIG:IMAGE`` (CONFIG may be empty); the image is opened as a
protocol node, never probed.

The node also imposes QEMU's request limits (``align``, ``max-transfer``,
``opt-/max-write-zero``, ``opt-/max-discard``) the way QEMU's generic block
layer honours them: unaligned writes become read-modify-write (signalling the
``pwritev_rmw_*`` events), long requests are split.

Not supported: ``immediately`` only changes coroutine scheduling in QEMU and is
accepted and ignored; ``take-child-perms``/``unshare-child-perms`` are accepted
and ignored (there is no permission system here).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import strerror
from ..options import parse_json_filename, sub_options
from ..sizes import parse_size
from .driver import BlockDriver, StatusRun
from .errors import BlockError, InvalidRequest

#: QEMU's BlkdebugEvent (qapi/block-core.json), in its order
EVENTS: tuple[str, ...] = (
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
)
_EVENT_SET = frozenset(EVENTS)

#: QEMU's BlkdebugIOType
IOTYPES: tuple[str, ...] = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
#: the I/O types an inject-error rule without ``iotype`` applies to
DEFAULT_IOTYPES = frozenset(("read", "write", "write-zeroes", "discard", "flush"))

INJECT_ERROR = "inject-error"
SET_STATE = "set-state"
SUSPEND = "suspend"

#: the config groups and their keys with types ("string", "number", "bool")
GROUPS: dict[str, dict[str, str]] = {
    INJECT_ERROR: {
        "event": "string",
        "state": "number",
        "iotype": "string",
        "errno": "number",
        "sector": "number",
        "once": "bool",
        "immediately": "bool",
    },
    SET_STATE: {"event": "string", "state": "number", "new_state": "number"},
}

#: runtime options of the node itself (blkdebug's runtime_opts)
SIZE_OPTIONS = (
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
)
#: generic block-layer options accepted on any node
_GENERIC_OPTIONS = frozenset(
    (
        "driver",
        "filename",
        "node-name",
        "read-only",
        "auto-read-only",
        "force-share",
        "discard",
        "detect-zeroes",
        "cache.direct",
        "cache.no-flush",
    )
)
_CHILD_PREFIXES = ("image.", "take-child-perms.", "unshare-child-perms.")

INT_MAX = (1 << 31) - 1
SECTOR_SIZE = 512

_SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
# strtoull, base 0: leading blanks, a sign, hex / octal / decimal, nothing after
_NUMBER_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


class ConfigError(BlockError):
    """A bad blkdebug config file or rule option."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EINVAL)


# ----------------------------------------------------------------------
# config parsing (QEMU's qemu_config_parse / qemu_config_parse_qdict)


@dataclasses.dataclass
class Section:
    """One ``[group]`` of options, validated against its group's keys."""

    group: str
    values: dict[str, str]


def _opt_string(value: Any) -> str | None:
    """A QDict value as QemuOpts sees it (numbers and booleans as text)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def parse_number(name: str, text: str) -> int:
    """QEMU's ``parse_option_number`` (``qemu_strtou64``, base 0): a uint64."""
    m = _NUMBER_RE.fullmatch(text)
    if not m:
        raise ConfigError(f"Parameter '{name}' expects a number")
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    if value >= 1 << 64:
        raise ConfigError(f"Value '{text}' is too large for parameter '{name}'")
    if sign == "-":
        value = (-value) % (1 << 64)
    return value


def parse_bool_opt(name: str, text: str) -> bool:
    """QEMU's ``parse_option_bool``."""
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    raise ConfigError(f"Parameter '{name}' expects 'on' or 'off'")


def _validate(name: str, kind: str, value: str) -> None:
    if kind == "number":
        parse_number(name, value)
    elif kind == "bool":
        parse_bool_opt(name, value)


def _section_from_dict(group: str, values: dict[str, str], ids: set[str]) -> Section:
    """``qemu_opts_from_qdict``: the id, then every key against the group's keys."""
    desc = GROUPS.get(group)
    if desc is None:
        raise ConfigError(f"There is no option group '{group}'")
    values = dict(values)
    ident = values.pop("id", None)
    if ident is not None:
        if not _ID_RE.fullmatch(ident):
            raise ConfigError(
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
            )
        if ident in ids:
            raise ConfigError(f"Duplicate ID '{ident}' for {group}")
        ids.add(ident)
    for key, value in values.items():
        kind = desc.get(key)
        if kind is None:
            raise ConfigError(f"Invalid parameter '{key}'")
        _validate(key, kind, value)
    return Section(group, values)


def _scan_token(line: str, pos: int) -> tuple[str, int]:
    """sscanf's ``%63s``: skip blanks, take up to 63 non-blank characters."""
    while pos < len(line) and line[pos].isspace():
        pos += 1
    start = pos
    while pos < len(line) and not line[pos].isspace() and pos - start < 63:
        pos += 1
    return line[start:pos], pos


def _scan_key_value(line: str) -> tuple[str, str] | None:
    """``sscanf(line, " %63s = \\"%1023[^\\"]\\"", arg, value)`` as QEMU uses it:
    any line with a first word names a key (with an empty value unless the
    ``= "value"`` part follows); a blank line matches nothing."""
    key, pos = _scan_token(line, 0)
    if not key:
        return None
    m = re.match(r'\s*=\s*"([^"]{1,1023})', line[pos:])
    return key, m.group(1) if m else ""


def parse_config_text(text: str) -> list[Section]:
    """Parse a blkdebug config file's text (``qemu_config_parse``)."""
    sections: list[Section] = []
    ids: set[str] = set()
    group: str | None = None
    current: dict[str, str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("\n") or line.startswith("#"):
            continue
        if line.startswith("["):
            m = re.match(r'\[(\S{1,63})\s+"([^"]{1,63})"\]', line)
            if m:
                new: dict[str, str] | None = {"id": m.group(2)}
                name = m.group(1)
            else:
                m = re.match(r"\[([^\]]{1,63})\]", line)
                new = {} if m else None
                name = m.group(1) if m else ""
            if new is not None:
                if current is not None and group is not None:
                    sections.append(_section_from_dict(group, current, ids))
                group, current = name, new
                continue
        kv = _scan_key_value(line)
        if kv is None:
            raise ConfigError("parse error")
        if current is None:
            raise ConfigError("no group defined")
        current[kv[0]] = kv[1]
    if current is not None and group is not None:
        sections.append(_section_from_dict(group, current, ids))
    return sections


def read_config_file(path: str) -> list[Section]:
    """Read and parse the config file at ``path``."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise BlockError(f"Could not read blkdebug config file: {strerror(code)}", code) from None
    return parse_config_text(text)


def config_from_options(options: dict[str, Any]) -> list[Section]:
    """Sections from flattened options (``qemu_config_parse_qdict``): either one
    section (``inject-error.event=...``) or a list (``inject-error.0.event=...``)."""
    sections: list[Section] = []
    for group, desc in GROUPS.items():
        sub = {k: v for k, v in sub_options(options, group).items()}
        if not sub:
            continue
        absorbed: dict[str, str] = {}
        rest: dict[str, Any] = {}
        for key, value in sub.items():
            if key in desc:
                text = _opt_string(value)
                if text is None:
                    continue
                _validate(key, desc[key], text)
                absorbed[key] = text
            else:
                rest[key] = value
        if rest and absorbed:
            raise ConfigError(f"Unknown option '{next(iter(rest))}' for [{group}]")
        if not rest:
            sections.append(Section(group, absorbed))
            continue
        index = 0
        while True:
            prefix = f"{index}."
            single = str(index) in rest
            nested = any(k.startswith(prefix) for k in rest)
            if single == nested:
                break
            if single:
                raise ConfigError(f"[{group}] section (index {index}) does not consist of keys")
            section_opts = {
                k[len(prefix) :]: rest.pop(k) for k in list(rest) if k.startswith(prefix)
            }
            values: dict[str, str] = {}
            for key, value in section_opts.items():
                if key not in desc:
                    continue
                text = _opt_string(value)
                if text is None:
                    continue
                _validate(key, desc[key], text)
                values[key] = text
            for key in section_opts:
                if key not in desc:
                    raise ConfigError(f"[{group}] section doesn't support the option '{key}'")
            sections.append(Section(group, values))
            index += 1
        if rest:
            raise ConfigError(f"Unused option '{next(iter(rest))}' for [{group}]")
    return sections


# ----------------------------------------------------------------------
# rules


def _int32(value: int) -> int:
    """A uint64 option stored in a C ``int``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@dataclasses.dataclass(eq=False)
class Rule:
    """One rule of an event (QEMU's BlkdebugRule)."""

    event: str
    action: str
    #: 0 = any state
    state: int = 0
    # inject-error
    error: int = errno.EIO
    once: bool = False
    immediately: bool = False
    #: byte offset a request must cover, -1 = any
    offset: int = -1
    iotypes: frozenset[str] = DEFAULT_IOTYPES
    # set-state
    new_state: int = 0
    # suspend
    tag: str = ""


def _event_index(name: str | None) -> str:
    if name is None:
        raise ConfigError("Missing event name for rule")
    if name not in _EVENT_SET:
        raise ConfigError(f"invalid parameter value: {name}")
    return name


def rule_from_section(section: Section) -> Rule:
    """``add_rule``: the event, then the action's own options."""
    v = section.values
    event = _event_index(v.get("event"))
    state = _int32(parse_number("state", v["state"])) if "state" in v else 0
    if section.group == SET_STATE:
        new_state = _int32(parse_number("new_state", v["new_state"])) if "new_state" in v else 0
        return Rule(event, SET_STATE, state, new_state=new_state)
    error = _int32(parse_number("errno", v["errno"])) if "errno" in v else errno.EIO
    sector = parse_number("sector", v["sector"]) if "sector" in v else -1
    if sector >= 1 << 63:
        sector -= 1 << 64
    iotype = v.get("iotype")
    if iotype is not None and iotype not in IOTYPES:
        raise ConfigError(f"invalid parameter value: {iotype}")
    return Rule(
        event,
        INJECT_ERROR,
        state,
        error=error,
        once=parse_bool_opt("once", v["once"]) if "once" in v else False,
        immediately=parse_bool_opt("immediately", v["immediately"])
        if "immediately" in v
        else False,
        offset=-1 if sector == -1 else sector * SECTOR_SIZE,
        iotypes=frozenset((iotype,)) if iotype is not None else DEFAULT_IOTYPES,
    )


def _print_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _Suspended:
    """A request blocked at a breakpoint."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.wake = threading.Event()


def _size_option(options: dict[str, Any], name: str) -> int:
    value = options.get(name)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BlockError(
                f"Parameter '{name}' expects a non-negative number below 2^64\n{_SIZE_HINT}"
            )
        return value
    try:
        return parse_size(str(value))
    except (ValueError, OverflowError):
        raise BlockError(
            f"Parameter '{name}' expects a non-negative number below 2^64\n{_SIZE_HINT}"
        ) from None


def parse_filename(filename: str) -> tuple[str | None, str]:
    """Split ``blkdebug:CONFIG:IMAGE`` into (config or None, image)."""
    if not filename.startswith("blkdebug:"):
        return None, filename
    rest = filename[len("blkdebug:") :]
    config, sep, image = rest.partition(":")
    if not sep:
        raise BlockError("blkdebug requires both config file and image path")
    return (config or None), image


class Blkdebug(BlockDriver):
    """The blkdebug filter node; its child (QEMU's ``image``) is ``self.file``."""

    format_name = "blkdebug"
    is_protocol = True
    protocol_prefixes = ("blkdebug",)

    def __init__(self, filename: str, *, read_only: bool) -> None:
        super().__init__(filename, read_only=read_only)
        self.config_file: str | None = None
        #: event -> rules, newest first (QEMU inserts at the list head)
        self.rules: dict[str, list[Rule]] = {}
        #: the inject-error rules armed by the last event that had any
        self.active_rules: list[Rule] = []
        self.state = 1
        self.suspended: list[_Suspended] = []
        self.align = 0
        self.max_transfer = 0
        self.opt_write_zero = 0
        self.max_write_zero = 0
        self.opt_discard = 0
        self.max_discard = 0
        #: where "blkdebug: Suspended request 'tag'" lines go (QEMU prints to stdout)
        self.notify: Callable[[str], None] = _print_stdout
        self._rules_lock = threading.Lock()

    # ------------------------------------------------------------------
    # open

    @classmethod
    def open(cls, options: dict[str, Any], *, read_only: bool) -> Blkdebug:
        """Open from options: ``filename`` (``blkdebug:CONFIG:IMAGE``) or ``config``,
        ``image.*`` / ``x-image``, the request limits and the rule lists."""
        opts = dict(options)
        filename = opts.get("filename")
        config = opts.get("config")
        image_name = opts.get("x-image")
        if filename is not None:
            cfg, image_name = parse_filename(str(filename))
            if cfg is not None:
                config = cfg
        sizes = {name: _size_option(opts, name) for name in SIZE_OPTIONS}

        sections = read_config_file(str(config)) if config is not None else []
        sections += config_from_options(opts)
        node = cls("", read_only=read_only)
        node.config_file = str(config) if config is not None else None
        rules = [rule_from_section(s) for s in sections if s.group == INJECT_ERROR]
        rules += [rule_from_section(s) for s in sections if s.group == SET_STATE]
        for rule in rules:
            node.rules.setdefault(rule.event, []).insert(0, rule)

        image_opts = sub_options(opts, "image")
        if isinstance(image_name, str) and image_name.startswith("json:"):
            image_opts = {**parse_json_filename(image_name), **image_opts}
        elif image_name is not None and "filename" not in image_opts:
            image_opts["filename"] = image_name
        if not image_opts:
            raise BlockError('A block device must be specified for "image"')
        node.file = _open_child(image_opts, read_only)
        try:
            node._set_limits(sizes)
            _check_unknown(opts)
        except BaseException:
            node.file.close()
            raise
        node.filename = node._make_filename(opts)
        node.alignment = max(1, node.align)
        node.debug_event("none")
        return node

    def _set_limits(self, sizes: dict[str, int]) -> None:
        align = sizes["align"]
        if align and (align >= INT_MAX or align & (align - 1)):
            raise BlockError(f"Cannot meet constraints with align {align}")
        self.align = align
        base = max(align, self.file.alignment if self.file is not None else 1)

        def check(name: str, value: int, multiple: int) -> int:
            if value and (value >= INT_MAX or value % multiple):
                raise BlockError(f"Cannot meet constraints with {name} {value}")
            return value

        self.max_transfer = check("max-transfer", sizes["max-transfer"], base)
        self.opt_write_zero = check("opt-write-zero", sizes["opt-write-zero"], base)
        self.max_write_zero = check(
            "max-write-zero", sizes["max-write-zero"], max(self.opt_write_zero, base)
        )
        self.opt_discard = check("opt-discard", sizes["opt-discard"], base)
        self.max_discard = check("max-discard", sizes["max-discard"], max(self.opt_discard, base))

    def _make_filename(self, opts: dict[str, Any]) -> str:
        """``blkdebug:CONFIG:IMAGE`` when only those were given, else ``json:{...}``
        (blkdebug_refresh_filename)."""
        assert self.file is not None
        plain = all(
            k in ("config", "x-image", "driver", "filename") or k.startswith("image.") for k in opts
        )
        if plain:
            return f"blkdebug:{self.config_file or ''}:{self.file.filename}"
        # as QEMU's full_open_options: the image nested, rule options flat
        tree: dict[str, Any] = {"driver": "blkdebug"}
        image: dict[str, Any] = {"driver": self.file.format_name}
        for key, value in opts.items():
            if key.startswith("image."):
                image[key[len("image.") :]] = value
            elif key not in ("filename", "x-image", "driver"):
                tree[key] = value
        if "filename" not in image:
            image["filename"] = self.file.filename
        tree["image"] = image
        return "json:" + json.dumps(tree, separators=(", ", ": "))

    # ------------------------------------------------------------------
    # events and rules

    def debug_event(self, event: str) -> None:
        """Run this event's rules (blkdebug_debug_event); block at a breakpoint."""
        waits: list[_Suspended] = []
        with self._rules_lock:
            rules = self.rules.get(event)
            if not rules:
                return
            new_state = self.state
            injected = 0
            for rule in list(rules):
                if rule.state and rule.state != self.state:
                    continue
                if rule.action == INJECT_ERROR:
                    injected += 1
                    if injected == 1:
                        self.active_rules = []
                    self.active_rules.insert(0, rule)
                elif rule.action == SET_STATE:
                    new_state = rule.new_state
                else:
                    req = _Suspended(rule.tag)
                    self._remove_rule(rule)
                    self.suspended.insert(0, req)
                    self.notify(f"blkdebug: Suspended request '{rule.tag}'\n")
                    waits.append(req)
            self.state = new_state
        for req in waits:
            req.wake.wait()

    def _remove_rule(self, rule: Rule) -> None:
        rules = self.rules.get(rule.event)
        if rules is not None and rule in rules:
            rules.remove(rule)
        if rule in self.active_rules:
            self.active_rules.remove(rule)

    def _rule_check(self, offset: int, length: int, iotype: str) -> None:
        """Fail the request if an armed rule matches it (rule_check)."""
        if not self.active_rules:
            return
        with self._rules_lock:
            for rule in self.active_rules:
                hit = rule.offset == -1 or (length and offset <= rule.offset < offset + length)
                if hit and iotype in rule.iotypes:
                    break
            else:
                return
            if not rule.error:
                return
            if rule.once:
                self._remove_rule(rule)
            code = rule.error
        if code > 0:
            raise BlockError(strerror(code), code)

    # ------------------------------------------------------------------
    # breakpoints (qemu-io's break / remove_break / resume / wait_break)

    def debug_breakpoint(self, event: str, tag: str) -> None:
        """Suspend the next request that signals ``event``, tagged ``tag``."""
        if event not in _EVENT_SET:
            raise BlockError(strerror(errno.ENOENT), errno.ENOENT)
        with self._rules_lock:
            self.rules.setdefault(event, []).insert(0, Rule(event, SUSPEND, tag=tag))

    def debug_remove_breakpoint(self, tag: str) -> None:
        """Remove the breakpoints tagged ``tag`` and resume every request suspended
        with it; ENOENT unless a breakpoint was removed (QEMU 7.2 reports ENOENT
        even after resuming requests)."""
        found = False
        with self._rules_lock:
            for rules in self.rules.values():
                for rule in list(rules):
                    if rule.action == SUSPEND and rule.tag == tag:
                        self._remove_rule(rule)
                        found = True
        while self._resume_one(tag):
            pass
        if not found:
            raise BlockError(strerror(errno.ENOENT), errno.ENOENT)

    def debug_resume(self, tag: str) -> None:
        """Resume the most recently suspended request tagged ``tag``; ENOENT if none."""
        if not self._resume_one(tag):
            raise BlockError(strerror(errno.ENOENT), errno.ENOENT)

    def debug_is_suspended(self, tag: str) -> bool:
        """True while a request tagged ``tag`` is suspended."""
        with self._rules_lock:
            return any(req.tag == tag for req in self.suspended)

    def _resume_one(self, tag: str) -> bool:
        with self._rules_lock:
            for req in self.suspended:
                if req.tag == tag:
                    self.suspended.remove(req)
                    break
            else:
                return False
        self.notify(f"blkdebug: Resuming request '{tag}'\n")
        req.wake.set()
        return True

    # ------------------------------------------------------------------
    # I/O

    @property  # type: ignore[override]
    def total_size(self) -> int:
        return self.file.size if self.file is not None else 0

    @total_size.setter
    def total_size(self, value: int) -> None:
        pass  # the size is always the image's

    def _check_range(self, offset: int, length: int) -> None:
        # a protocol node: format drivers write past its end to grow it
        if self.closed:
            raise InvalidRequest("Image is closed")
        if offset < 0 or length < 0:
            raise InvalidRequest(f"Invalid request: offset {offset}, length {length}", errno.EINVAL)

    def _chunks(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        if not limit:
            return [(offset, length)]
        return [(o, min(limit, offset + length - o)) for o in range(offset, offset + length, limit)]

    def _read_aligned(self, offset: int, length: int) -> bytes:
        assert self.file is not None
        parts = []
        for off, n in self._chunks(offset, length, self.max_transfer):
            self._rule_check(off, n, "read")
            parts.append(self._child_read(off, n))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _child_read(self, offset: int, length: int) -> bytes:
        file = self.file
        assert file is not None
        if file.is_protocol:
            return file.read(offset, length)
        avail = max(0, min(length, file.size - offset))
        data = file.read(offset, avail) if avail else b""
        return data + bytes(length - avail)

    def _pread(self, offset: int, length: int) -> bytes:
        align = self.align
        if align <= 1 or (offset % align == 0 and length % align == 0):
            return self._read_aligned(offset, length)
        start = offset - offset % align
        end = -(-(offset + length) // align) * align
        data = self._read_aligned(start, end - start)
        return data[offset - start : offset - start + length]

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        align = self.align
        length = len(data)
        if align > 1 and (offset % align or length % align):
            offset, data = self._pad_rmw(offset, data)
        self._write_aligned(offset, data)

    def _pad_rmw(self, offset: int, data: bytes | bytearray | memoryview) -> tuple[int, bytearray]:
        """Read the partial head and tail blocks (bdrv_padding_rmw_read). As in
        QEMU 7.2, whose bdrv_co_pwritev_part ignores its result, a failed read
        does not fail the write (the block is padded with zeroes here)."""
        align = self.align
        end = offset + len(data)
        start = offset - offset % align
        aligned_end = -(-end // align) * align
        buf = bytearray(aligned_end - start)
        head = offset % align != 0
        tail = end % align != 0
        merged = aligned_end - start == align
        if head or merged:
            if head:
                self.debug_event("pwritev_rmw_head")
            if merged and tail:
                self.debug_event("pwritev_rmw_tail")
            self._rmw_read(buf, 0, start, align)
            if head:
                self.debug_event("pwritev_rmw_after_head")
            if merged and tail:
                self.debug_event("pwritev_rmw_after_tail")
        if tail and not merged:
            self.debug_event("pwritev_rmw_tail")
            self._rmw_read(buf, len(buf) - align, aligned_end - align, align)
            self.debug_event("pwritev_rmw_after_tail")
        buf[offset - start : end - start] = data
        return start, buf

    def _rmw_read(self, buf: bytearray, pos: int, offset: int, length: int) -> None:
        try:
            buf[pos : pos + length] = self._read_aligned(offset, length)
        except BlockError:
            pass

    def _write_aligned(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert self.file is not None
        view = memoryview(data)
        self.debug_event("pwritev")
        try:
            for off, n in self._chunks(offset, len(view), self.max_transfer):
                self._rule_check(off, n, "write")
                self.file.write(off, view[off - offset : off - offset + n])
        finally:
            self.debug_event("pwritev_done")

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        assert self.file is not None
        align = self.align
        end = offset + length
        if align > 1:
            head_end = min(end, -(-offset // align) * align)
            tail_start = max(head_end, end - end % align)
            if head_end > offset:
                self._pwrite(offset, bytes(head_end - offset))
            if tail_start < end:
                self._pwrite(tail_start, bytes(end - tail_start))
            offset, end = head_end, tail_start
            if offset >= end:
                return
        zero_align = max(align, self.opt_write_zero, 1)
        self.debug_event("pwritev_zero")
        try:
            for off, n in self._chunks(offset, end - offset, self.max_write_zero):
                if n < zero_align:
                    # blkdebug refuses it (ENOTSUP); QEMU falls back to a write
                    self._rule_check(off, n, "write")
                    self.file.write(off, bytes(n))
                else:
                    self._rule_check(off, n, "write-zeroes")
                    self.file.write_zeroes(off, n, may_unmap=may_unmap)
        finally:
            self.debug_event("pwritev_done")

    def _pdiscard(self, offset: int, length: int) -> None:
        assert self.file is not None
        align = max(self.align, self.opt_discard, 1)
        start = -(-offset // align) * align
        end = (offset + length) // align * align
        if end <= start:
            return
        for off, n in self._chunks(start, end - start, self.max_discard):
            self._rule_check(off, n, "discard")
            self.file.discard(off, n)

    def _flush_to_disk(self) -> None:
        self._rule_check(0, 0, "flush")

    def _truncate(self, size: int, exact: bool, prealloc: str) -> None:
        assert self.file is not None
        self.file.truncate(size, exact=exact, prealloc=prealloc)

    def _block_status(self, offset: int, length: int) -> StatusRun:
        assert self.file is not None
        self._rule_check(offset, length, "block-status")
        return self.file.block_status(offset, length)

    def allocated_file_size(self) -> int | None:
        return None  # a protocol driver without the hook: "unavailable"

    def close(self) -> None:
        """Flush (errors ignored, as bdrv_close), wake suspended requests, close."""
        if self.closed:
            return
        try:
            self.flush()
        except BlockError:
            pass
        with self._rules_lock:
            self.rules.clear()
            self.active_rules = []
            waiting, self.suspended = self.suspended, []
        for req in waiting:
            req.wake.set()
        self.closed = True
        if self.file is not None:
            self.file.close()


def _open_child(options: dict[str, Any], read_only: bool) -> BlockDriver:
    """Open the image child as a protocol node (a format only if named)."""
    from . import open_image, open_protocol
    from .registry import get_format

    driver = options.get("driver")
    if driver is not None and not get_format(str(driver)).is_protocol:
        return open_image(None, options=options, read_only=read_only, backing=True)
    return open_protocol(options, read_only=read_only)


def _check_unknown(options: dict[str, Any]) -> None:
    known = set(SIZE_OPTIONS) | {"config", "x-image"} | _GENERIC_OPTIONS
    for key in options:
        if key in known or key.startswith(_CHILD_PREFIXES):
            continue
        if key.startswith(tuple(f"{g}." for g in GROUPS)) or key in GROUPS:
            continue
        if key in ("take-child-perms", "unshare-child-perms"):
            continue
        raise BlockError(f"Block protocol 'blkdebug' doesn't support the option '{key}'")
