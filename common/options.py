"""QEMU's option syntax.

* ``key=value,key2=value2`` strings (QemuOpts), where ``,,`` is a literal comma.
  An element without ``=`` is either an implied first key (``-o help``) or a
  boolean flag.
* ``json:{...}`` pseudo-filenames, flattened to dotted keys
  (``{"file": {"filename": "x"}}`` becomes ``{"file.filename": "x"}``).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import QemuError


class OptionError(QemuError):
    """A malformed option string."""


def parse_opts(text: str, implied_key: str | None = None) -> dict[str, str]:
    """Parse ``a=b,c=d`` into an ordered dict of strings.

    ``implied_key`` names the key given to a first element that has no ``=``
    (``-o help`` is ``help``; ``-drive x.img`` style is ``file``).
    """
    result: dict[str, str] = {}
    for index, element in enumerate(_split_commas(text)):
        if element == "" and index > 0:
            continue
        key, sep, value = element.partition("=")
        if not sep:
            if index == 0 and implied_key is not None:
                result[implied_key] = key
                continue
            if key.startswith("no") and len(key) > 2:
                result[key[2:]] = "off"
            else:
                result[key] = "on"
            continue
        if key == "":
            raise OptionError(f"Invalid parameter '{element}'")
        result[key] = value
    return result


def _split_commas(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def escape_opt_value(value: str) -> str:
    """Escape a value for an option string (``,`` becomes ``,,``)."""
    return value.replace(",", ",,")


def flatten(tree: dict[str, Any] | list[Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists into dotted keys, as QEMU's ``qdict_flatten``
    (list items are numbered: ``{"a": [{"b": 1}]}`` becomes ``{"a.0.b": 1}``)."""
    flat: dict[str, Any] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        full = f"{prefix}{key}"
        if isinstance(value, dict) or (isinstance(value, list) and value):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def parse_json_filename(filename: str) -> dict[str, Any]:
    """Parse a ``json:{...}`` filename into flattened options."""
    body = filename[len("json:") :]
    try:
        tree = json.loads(body)
    except ValueError as exc:
        raise OptionError(f"Could not parse the JSON options: {exc.args[0]}") from None
    if not isinstance(tree, dict):
        raise OptionError("Invalid JSON object given")
    return flatten(tree)


def sub_options(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Return the options under ``prefix.`` with the prefix removed."""
    dotted = prefix + "."
    return {k[len(dotted) :]: v for k, v in options.items() if k.startswith(dotted)}


def parse_bool(value: Any, name: str) -> bool:
    """QEMU's boolean parser: on/off, yes/no, true/false."""
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    raise OptionError(f"Parameter '{name}' expects 'on' or 'off'")
