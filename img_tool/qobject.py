"""QEMU's QObject output: QDict key order, pretty JSON and the human dump.

QEMU prints a QDict by walking its 512 hash buckets (``tdb_hash`` of the key),
newest entry first within a bucket; :func:`qdict` reproduces that order from
a dict whose insertion order is the QAPI schema's field order. The JSON
writer matches ``qobject/json-writer.c`` (4-space indent, ``{\\n}`` for an
empty dict, non-ASCII escaped as ``\\uXXXX``).
"""

from __future__ import annotations

from typing import Any

QDICT_BUCKET_MAX = 512


def tdb_hash(name: str) -> int:
    """``tdb_hash`` from qobject/qdict.c."""
    data = name.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, ch in enumerate(data):
        value = (value + (ch << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict(fields: dict[str, Any]) -> dict[str, Any]:
    """Reorder ``fields`` (given in insertion order) as QEMU iterates a QDict."""
    buckets: dict[int, list[str]] = {}
    for key in fields:
        buckets.setdefault(tdb_hash(key) % QDICT_BUCKET_MAX, []).insert(0, key)
    return {key: fields[key] for b in sorted(buckets) for key in buckets[b]}


def qdict_deep(value: Any) -> Any:
    """Apply :func:`qdict` to every dict inside ``value``."""
    if isinstance(value, dict):
        return qdict({k: qdict_deep(v) for k, v in value.items()})
    if isinstance(value, list):
        return [qdict_deep(v) for v in value]
    return value


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= cp <= 0x7E:
            out.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append("\\u%04X\\u%04X" % (0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF)))
        else:
            out.append("\\u%04X" % cp)
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
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


def to_json(value: Any) -> str:
    """qemu's compact JSON (QMP's replies): ``{"a": 1, "b": [true, null]}``, non-ASCII
    as \\uXXXX."""
    if isinstance(value, dict):
        return "{" + ", ".join(_quote(str(k)) + ": " + to_json(v)
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return _scalar(value)


def to_json_pretty(value: Any, level: int = 0) -> str:
    """``qobject_to_json_pretty``: dicts printed in the order given."""
    pad = " " * (4 * (level + 1))
    end = "\n" + " " * (4 * level)
    if isinstance(value, dict):
        items = [f"{pad}{_quote(k)}: {to_json_pretty(v, level + 1)}" for k, v in value.items()]
        return "{" + ("\n" + ",\n".join(items) if items else "") + end + "}"
    if isinstance(value, list):
        items = [pad + to_json_pretty(v, level + 1) for v in value]
        return "[" + ("\n" + ",\n".join(items) if items else "") + end + "]"
    return _scalar(value)


def _human_scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def dump_human(value: Any, indentation: int) -> str:
    """``dump_qobject`` of block/qapi.c (the ``Format specific information``)."""
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            composite = isinstance(item, (dict, list))
            out.append(
                "%*s%s:%s"
                % (indentation * 4, "", key.replace("-", " "), "\n" if composite else " ")
            )
            out.append(dump_human(item, indentation + 1))
            if not composite:
                out.append("\n")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            composite = isinstance(item, (dict, list))
            out.append("%*s[%i]:%s" % (indentation * 4, "", i, "\n" if composite else " "))
            out.append(dump_human(item, indentation + 1))
            if not composite:
                out.append("\n")
    else:
        out.append(_human_scalar(value))
    return "".join(out)
