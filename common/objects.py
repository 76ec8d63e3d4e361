"""QEMU's user-creatable objects (``--object TYPE,id=ID,...``), as far as the
tools need them: ``secret`` objects that hold passwords and keys
(QEMU's crypto/secret.c and qom/object_interfaces.c).

Objects live in a per-process registry: the binaries call :func:`add_object`
for each ``--object`` option, and the block layer looks secrets up by id
(``encrypt.key-secret=ID``) with :func:`secret_bytes` / :func:`secret_utf8`.

``tls-creds-x509`` and ``tls-creds-psk`` objects (:mod:`.tls_creds`) are
registered too: the NBD client finds them by ``tls-creds=ID``.

Not supported: encrypted secrets (``keyid=``/``iv=``), which need an AES key
secret to decrypt them, and every other object type.
"""

from __future__ import annotations

import binascii
import dataclasses
import re
import threading

from .errors import QemuError
from .options import parse_opts
from .tls_creds import TLS_TYPES, Creds, make_creds


class ObjectError(QemuError):
    """A bad ``--object`` definition or a missing object."""


#: what ``--object help`` lists (QEMU 7.2's qemu-img, user creatable types)
OBJECT_TYPES = (
    "authz-list",
    "authz-list-file",
    "authz-simple",
    "main-loop",
    "pr-manager-helper",
    "secret",
    "secret_keyring",
    "thread-context",
    "throttle-group",
    "tls-cipher-suites",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
)

_SECRET_PROPS = ("data", "file", "format", "iv", "keyid")
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")


@dataclasses.dataclass(frozen=True)
class Secret:
    """A ``secret`` object: its id and its raw bytes."""

    id: str
    data: bytes


_registry: dict[str, Secret | Creds] = {}
_lock = threading.Lock()


def help_text(text: str) -> str | None:
    """The text ``--object help`` / ``--object secret,help`` prints, or None
    when ``text`` asks for no help."""
    opts = parse_opts(text, implied_key="qom-type")
    if opts.get("qom-type") == "help":
        return "List of user creatable objects:\n" + "".join(f"  {t}\n" for t in OBJECT_TYPES)
    if "help" in opts and opts.get("qom-type") == "secret":
        return (
            "secret options:\n"
            "  data=<string>\n"
            "  file=<string>\n"
            "  format=<QCryptoSecretFormat>\n"
            "  iv=<string>\n"
            "  keyid=<string>\n"
        )
    return None


def parse_object(text: str) -> Secret | Creds:
    """Parse one ``--object`` definition into a :class:`Secret` or TLS
    credentials (not registered)."""
    opts = parse_opts(text, implied_key="qom-type")
    qom_type = opts.pop("qom-type", None)
    if qom_type is None:
        raise ObjectError("Parameter 'qom-type' is missing")
    if qom_type != "secret" and qom_type not in TLS_TYPES:
        if qom_type in OBJECT_TYPES:
            raise ObjectError(f"Object type '{qom_type}' is not supported yet by pyqemu")
        raise ObjectError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
    obj_id = opts.pop("id", None)
    if obj_id is None:
        raise ObjectError("Parameter 'id' is missing")
    if not _ID_RE.match(obj_id):
        raise ObjectError(
            "Parameter 'id' expects an identifier\n"
            "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
        )
    if qom_type in TLS_TYPES:
        return make_creds(qom_type, obj_id, opts)
    for key in opts:
        if key not in _SECRET_PROPS:
            raise ObjectError(f"Parameter '{key}' is unexpected")
    fmt = opts.get("format", "raw")
    if fmt not in ("raw", "base64"):
        raise ObjectError(f"Parameter 'format' does not accept value '{fmt}'")
    data = opts.get("data")
    path = opts.get("file")
    if data is not None and path is not None:
        raise ObjectError("'file' and 'data' are mutually exclusive")
    if data is None and path is None:
        raise ObjectError("Either 'file' or 'data' must be provided")
    if "keyid" in opts:
        key_id = opts["keyid"]
        if lookup(key_id) is None:
            raise ObjectError(f"No secret with id '{key_id}'")
        raise ObjectError("Encrypted secrets (keyid, iv) are not supported yet by pyqemu")
    if "iv" in opts:
        raise ObjectError("'iv' requires 'keyid'")
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ObjectError(
                f"Unable to read {path}: Failed to open file \u201c{path}\u201d: {exc.strerror}"
            ) from None
    else:
        raw = (data or "").encode("utf-8", "surrogateescape")
    if fmt == "base64":
        raw = _b64decode(raw)
    return Secret(obj_id, raw)


def _b64decode(raw: bytes) -> bytes:
    text = raw.decode("latin-1")
    if not re.fullmatch(r"[A-Za-z0-9+/=\s]*", text):
        raise ObjectError("Base64 data contains invalid characters")
    try:
        return binascii.a2b_base64(text.encode())
    except binascii.Error:
        raise ObjectError("Base64 data contains invalid characters") from None


def add_object(text: str) -> Secret | Creds:
    """Parse ``text`` (a ``--object`` value) and register the object."""
    secret = parse_object(text)
    with _lock:
        if secret.id in _registry:
            raise ObjectError(
                f"attempt to add duplicate property '{secret.id}' to object (type 'container')"
            )
        _registry[secret.id] = secret
    return secret


def lookup(obj_id: str) -> Secret | Creds | None:
    with _lock:
        return _registry.get(obj_id)


def tls_creds(obj_id: str) -> Creds:
    """The ``tls-creds-*`` object ``obj_id`` (nbd_get_tls_creds's lookup)."""
    obj = lookup(obj_id)
    if obj is None:
        raise ObjectError(f"No TLS credentials with id '{obj_id}'")
    if isinstance(obj, Secret):
        raise ObjectError(f"Object with id '{obj_id}' is not TLS credentials")
    return obj


def remove_all() -> None:
    """Forget every object (for tests and embedding)."""
    with _lock:
        _registry.clear()


def secret_bytes(obj_id: str) -> bytes:
    """The raw data of secret ``obj_id`` (qcrypto_secret_lookup)."""
    secret = lookup(obj_id)
    if not isinstance(secret, Secret):
        raise ObjectError(f"No secret with id '{obj_id}'")
    return secret.data


def secret_utf8(obj_id: str) -> bytes:
    """The data of secret ``obj_id``, which must be valid UTF-8
    (qcrypto_secret_lookup_as_utf8); returned as bytes."""
    data = secret_bytes(obj_id)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectError(f"Data from secret {obj_id} is not valid UTF-8") from None
    return data
