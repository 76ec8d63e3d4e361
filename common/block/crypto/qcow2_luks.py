"""qcow2's encryption (QEMU's block/qcow2.c: qcow2_update_options_prepare,
qcow2_set_up_encryption, the crypto header read/init/write functions;
crypto/block-qcow.c for the legacy AES method).

A qcow2 image with ``crypt_method = 2`` keeps a LUKS header in clusters named
by the "full disk encryption header" extension (offset and length, spec
section "Full disk encryption header pointer"). Guest data clusters hold the
LUKS payload: each 512-byte sector is encrypted with the IV of its *host*
sector number (QEMU's ``crypt_physical_offset``).

``crypt_method = 1`` is the legacy AES method (``encrypt.format=aes`` /
``encryption=on``, which qemu-img 7.2 still creates, reads and writes; only
the system emulators refuse it): no header at all, the key is the passphrase
cut or zero-padded to 16 bytes, AES-128-CBC per 512-byte sector with the
plain64 IV of the *guest* sector number.

The qcow2 driver calls in here through small hooks: :func:`open_crypto` on
open, :func:`parse_create_options` and :func:`set_up_encryption` on create,
:func:`info` for ``qemu-img info``; ``Crypto.encrypt/decrypt`` with the host
and the guest offset of whole sectors.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from ..errors import BlockError, UnsupportedFeature

#: the "full disk encryption header pointer" extension: offset, length
CRYPTO_EXT = struct.Struct(">QQ")
#: an internal open option: open for metadata only (qemu-img info's BDRV_O_NO_IO)
NO_IO_OPTION = "x-pyqemu-no-io"
CRYPT_AES = 1
CRYPT_LUKS = 2
_FORMAT_NAMES = {CRYPT_AES: "aes", CRYPT_LUKS: "luks"}


class Crypto:
    """The encryption state of an open qcow2 image."""

    def __init__(
        self,
        method: int,
        volume: Any,
        missing: str | None,
        region: tuple[int, int] | None = None,
        secret_id: str | None = None,
    ) -> None:
        self.method = method
        self.volume = volume
        #: why I/O is impossible (no key given: opened for metadata only)
        self.missing = missing
        #: (offset, length) in the image file of the LUKS header clusters
        self.region = region
        #: the encrypt.key-secret the image was opened with
        self.secret_id = secret_id
        #: the legacy AES method's cipher (LUKS: the volume's)
        self.aes: Any = None

    @property
    def cipher(self) -> Any:
        if self.aes is not None:
            return self.aes
        if self.volume is None or self.volume.cipher is None:
            raise BlockError(self.missing or "Image is encrypted", errno.EACCES)
        return self.volume.cipher

    def _offset(self, host_offset: int, guest_offset: int | None) -> int:
        """The offset whose sector numbers are the IVs: host for LUKS, guest for AES."""
        if self.method == CRYPT_LUKS:
            return host_offset
        assert guest_offset is not None, "AES-encrypted qcow2 needs the guest offset"
        return guest_offset

    def encrypt(
        self, host_offset: int, data: Any, guest_offset: int | None = None
    ) -> bytes | bytearray:
        return self.cipher.encrypt(self._offset(host_offset, guest_offset), data)

    def decrypt(
        self, host_offset: int, data: Any, guest_offset: int | None = None
    ) -> bytes | bytearray:
        return self.cipher.decrypt(self._offset(host_offset, guest_offset), data)

    def decrypt_into(self, host_offset: int, buf: Any, guest_offset: int | None = None) -> None:
        """Decrypt the writable buffer ``buf`` in place (whole sectors)."""
        self.cipher.decrypt_into(self._offset(host_offset, guest_offset), buf)


def aes_cipher(password: bytes) -> Any:
    """The legacy method's cipher (qcrypto_block_qcow_init): AES-128-CBC, plain64
    IVs, keyed with the passphrase's first 16 bytes, zero-padded."""
    from . import luks

    key = password.split(b"\0", 1)[0][:16].ljust(16, b"\0")
    return luks.SectorCipher(luks.Params("aes-128", "cbc", "plain64", None, "sha256"), key)


def _read_ext_region(file: Any, ext_data: bytes) -> tuple[int, int]:
    if len(ext_data) < CRYPTO_EXT.size:
        raise BlockError("Invalid encryption header extension", errno.EINVAL)
    return CRYPTO_EXT.unpack_from(ext_data)


def open_crypto(drv: Any, options: dict[str, Any], read_only: bool) -> Crypto:
    """Open the encryption layer of qcow2 node ``drv`` (its header says crypt_method)."""
    from ...objects import secret_utf8

    method = drv.header.crypt_method
    fmt = options.get("encrypt.format")
    if fmt not in (None, "") and fmt != _FORMAT_NAMES.get(method):
        if fmt not in ("aes", "luks"):
            raise BlockError(f"Parameter 'encrypt.format' does not accept value '{fmt}'")
        raise BlockError(
            f"Header reported '{_FORMAT_NAMES.get(method)}' encryption format but "
            f"options specify '{fmt}'"
        )
    from . import METADATA_ONLY

    no_io = str(options.get(NO_IO_OPTION, "off")) == "on" or METADATA_ONLY.get()
    if method == CRYPT_AES:
        secret_id = options.get("encrypt.key-secret")
        if secret_id in (None, ""):
            missing = "Parameter 'encrypt.key-secret' is required for cipher"
            if not no_io:
                raise BlockError(missing, errno.EINVAL)
            return Crypto(method, None, missing)
        crypto = Crypto(method, None, None, None, str(secret_id))
        crypto.aes = aes_cipher(secret_utf8(str(secret_id)))
        return crypto
    from ..qcow2.layout import Ext
    from . import luks

    ext = drv.header.extension(Ext.CRYPTO)
    if ext is None:
        raise BlockError("Could not find LUKS header extension", errno.EINVAL)
    offset, length = _read_ext_region(drv.file, ext.data)

    def read(pos: int, n: int) -> bytes:
        if pos + n > length:
            raise BlockError("Request for data outside of extension header", errno.EINVAL)
        return drv.file.read(offset + pos, n)

    secret_id = options.get("encrypt.key-secret")
    if secret_id in (None, ""):
        missing = "Parameter 'encrypt.key-secret' is required for cipher"
        if not no_io:
            raise BlockError(missing, errno.EINVAL)
        return Crypto(method, luks.Volume.open(read, None), missing, (offset, length))
    password = secret_utf8(str(secret_id))
    volume = luks.Volume.open(read, password)
    return Crypto(method, volume, None, (offset, length), str(secret_id))


def parse_create_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """The ``encrypt.*`` / ``encryption`` create options, checked: None for an
    unencrypted image, else ``{"params": Params, "password": bytes, "iter_time": ms}``."""
    from ...objects import secret_utf8
    from ...options import parse_bool

    enc = {k[len("encrypt.") :]: v for k, v in options.items() if k.startswith("encrypt.")}
    legacy = options.get("encryption") not in (None, "") and parse_bool(
        options["encryption"], "encryption"
    )
    fmt = enc.pop("format", None)
    if legacy:
        if fmt not in (None, ""):
            raise BlockError(
                "'encrypt.format' and its alias 'encryption' can't be used at the same time"
            )
        fmt = "aes"
    if fmt in (None, ""):
        if enc:
            raise BlockError("Parameter 'encrypt.format' is missing")
        return None
    if fmt not in ("aes", "luks"):
        raise BlockError(f"Parameter 'format' does not accept value '{fmt}'")
    if fmt == "aes":  # QCryptoBlockOptionsQCow: the key secret only
        for key in enc:
            if key != "key-secret":
                raise BlockError(f"Parameter 'encrypt.{key}' is unexpected")
        secret_id = enc.get("key-secret")
        if secret_id in (None, ""):
            raise BlockError("Parameter 'encrypt.key-secret' is required for cipher")
        return {"format": "aes", "password": secret_utf8(str(secret_id))}
    for key in enc:
        if key not in (
            "key-secret",
            "cipher-alg",
            "cipher-mode",
            "ivgen-alg",
            "ivgen-hash-alg",
            "hash-alg",
            "iter-time",
        ):
            raise BlockError(f"Parameter 'encrypt.{key}' is unexpected")
    iter_time = 2000
    if enc.get("iter-time") not in (None, ""):
        try:
            iter_time = int(str(enc["iter-time"]), 0)
        except ValueError:
            raise BlockError("Parameter 'encrypt.iter-time' expects a number") from None
        if iter_time <= 0:
            raise BlockError("Parameter 'encrypt.iter-time' must be positive")
    from . import luks

    params = luks.params_from_options(enc)
    secret_id = enc.get("key-secret")
    if secret_id in (None, ""):
        raise BlockError("Parameter 'encrypt.key-secret' is required for cipher")
    password = secret_utf8(str(secret_id))
    return {"format": "luks", "params": params, "password": password, "iter_time": iter_time}


def measure_header_size(options: dict[str, Any], cluster_size: int) -> int:
    """The clusters a LUKS header of a new image with ``-o`` ``options`` takes,
    for ``measure`` (qcow2_measure: ``encrypt.format=luks`` only; the legacy
    ``encryption=on`` / ``aes`` adds nothing). Checked as QEMU's creation
    does (the cipher names, the key secret and its object), but without
    making a key: PBKDF2 is not run."""
    if options.get("encrypt.format") != "luks":
        return 0
    opts = {k: v for k, v in options.items() if k.startswith("encrypt.")}
    iter_time = opts.pop("encrypt.iter-time", None)
    if iter_time not in (None, ""):
        try:
            int(str(iter_time), 0)
        except ValueError:
            raise BlockError(
                "Parameter 'encrypt.iter-time' expects a number\n"
                "Invalid options for file format 'qcow2'"
            ) from None
    spec = parse_create_options(opts)
    assert spec is not None
    from . import luks

    luks.check_essiv(spec["params"])
    length = luks.header_length(spec["params"])
    return -(-length // cluster_size) * cluster_size


def set_up_encryption(drv: Any, spec: dict[str, Any]) -> None:
    """Write a new LUKS header into freshly allocated clusters of ``drv`` and
    point the header at it (qcow2_set_up_encryption); the image is unlocked."""
    from ..qcow2.layout import Ext
    from . import luks

    if spec["format"] == "aes":
        drv.header.crypt_method = CRYPT_AES
        drv._write_header()
        drv.crypto = Crypto(CRYPT_AES, None, None)
        drv.crypto.aes = aes_cipher(spec["password"])
        return
    volume, area = luks.Volume.create(spec["params"], spec["password"], spec["iter_time"])
    cs = drv.cs
    length = len(area)
    clusters = -(-length // cs) * cs
    offset = drv.refs.alloc_clusters(clusters)
    drv._write_metadata(sync=True)
    drv.file.write(offset, area + bytes(clusters - length))
    drv.header.crypt_method = CRYPT_LUKS
    drv.header.set_extension(Ext.CRYPTO, CRYPTO_EXT.pack(offset, length))
    drv._write_header()
    drv.crypto = Crypto(CRYPT_LUKS, volume, None, (offset, length))


def info(crypto: Crypto) -> dict[str, Any]:
    """``encrypt`` of ImageInfoSpecificQCow2 (QAPI order: format first)."""
    out: dict[str, Any] = {"format": _FORMAT_NAMES.get(crypto.method, "aes")}
    if crypto.method == CRYPT_LUKS and crypto.volume is not None:
        out.update(crypto.volume.info())
    return out


# --- amend (qcow2_amend_options' encryption part, crypto/block-luks.c) --------------


def check_amend(drv: Any) -> None:
    """The encrypt.* amend options need a LUKS image (qcow2_amend_options)."""
    crypto = drv.crypto
    if crypto is None:
        raise BlockError("Can't amend encryption options - encryption not present", errno.EINVAL)
    if crypto.method != CRYPT_LUKS:
        raise UnsupportedFeature("Only LUKS encryption options can be amended")


def _amend_number(opts: dict[str, Any], name: str) -> int | None:
    value = opts.get(name)
    if value in (None, ""):
        return None
    try:
        return int(str(value), 0)
    except ValueError:
        raise BlockError(f"Parameter 'encrypt.{name}' expects a number") from None


def check_amend_options(options: dict[str, Any]) -> None:
    """What QEMU's option parser refuses before anything is changed."""
    opts = {k[len("encrypt.") :]: v for k, v in options.items() if k.startswith("encrypt.")}
    _amend_number(opts, "keyslot")
    _amend_number(opts, "iter-time")


def amend(drv: Any, options: dict[str, Any], force: bool) -> None:
    """Add or erase LUKS key slots of qcow2 node ``drv`` as ``qemu-img amend -o
    encrypt.state=active|inactive,...`` does, with QEMU's refusals and words."""
    from ...objects import secret_utf8
    from . import luks

    check_amend(drv)
    crypto = drv.crypto
    volume = crypto.volume
    if volume is None or volume.cipher is None or crypto.region is None:
        raise BlockError(crypto.missing or "Image is encrypted", errno.EACCES)
    opts = {k[len("encrypt.") :]: v for k, v in options.items() if k.startswith("encrypt.")}
    keyslot = _amend_number(opts, "keyslot")
    iter_time = _amend_number(opts, "iter-time")
    state = opts.get("state")
    if state in (None, ""):
        raise BlockError("Parameter 'state' is missing")
    if state not in ("active", "inactive"):
        raise BlockError(f"Parameter 'state' does not accept value '{state}'")
    new_secret = opts.get("new-secret")
    old_secret = opts.get("old-secret")
    offset, length = crypto.region
    file = drv.file

    def read(pos: int, n: int) -> bytes:
        if pos + n > length:
            raise BlockError("Request for data outside of extension header", errno.EINVAL)
        return file.read(offset + pos, n)

    def write(pos: int, data: bytes) -> None:
        if pos + len(data) > length:
            raise BlockError("Request for data outside of extension header", errno.EINVAL)
        file.write(offset + pos, data)

    hdr = volume.header
    nslots = luks.NUM_KEY_SLOTS

    def active(i: int) -> bool:
        return hdr.slots[i].active == luks.SLOT_ENABLED

    if state == "active":
        if new_secret is None:
            raise BlockError("'new-secret' is required to activate a keyslot")
        if old_secret is not None:
            raise BlockError("'old-secret' must not be given when activating keyslots")
        if keyslot is not None:
            if not 0 <= keyslot < nslots:
                raise BlockError(
                    f"Invalid keyslot {keyslot & 0xFFFFFFFF} specified, must be between 0 "
                    f"and {nslots - 1}"
                )
        else:
            keyslot = next((i for i in range(nslots) if not active(i)), None)
            if keyslot is None:
                raise BlockError("Can't add a keyslot - all keyslots are in use")
        if not force and active(keyslot):
            raise BlockError(
                f"Refusing to overwrite active keyslot {keyslot} - please erase it first"
            )
        # QEMU unlocks the master key again with the image's key-secret: the
        # image was opened with it, so the key in hand is that key
        if crypto.secret_id is not None:
            secret_utf8(crypto.secret_id)
        password = secret_utf8(str(new_secret))
        volume.store_key(keyslot, password, 2000 if iter_time is None else iter_time, write)
        return
    if new_secret is not None:
        raise BlockError("'new-secret' must not be given when erasing keyslots")
    if iter_time is not None:
        raise BlockError("'iter-time' must not be given when erasing keyslots")
    old_password = secret_utf8(str(old_secret)) if old_secret is not None else None
    count_active = sum(active(i) for i in range(nslots))
    if keyslot is not None:
        if not 0 <= keyslot < nslots:
            raise BlockError(
                f"Invalid keyslot {keyslot} specified, must be between 0 and {nslots - 1}"
            )
        if old_password is not None and not volume.load_key(keyslot, old_password, read):
            raise BlockError(
                f"Given keyslot {keyslot} doesn't contain the given old password for erase "
                "operation"
            )
        if not force and not active(keyslot):
            raise BlockError(f"Given keyslot {keyslot} is already erased (inactive) ")
        if not force and count_active == 1:
            raise BlockError(
                f"Attempt to erase the only active keyslot {keyslot} which will erase all the "
                "data in the image irreversibly - refusing operation"
            )
        volume.erase_key(keyslot, write)
    elif old_password is not None:
        matching = [i for i in range(nslots) if volume.load_key(i, old_password, read)]
        if not matching:
            raise BlockError("No keyslots match given (old) password for erase operation")
        if not force and len(matching) == count_active:
            raise BlockError(
                "All the active keyslots match the (old) password that was given and erasing "
                "them will erase all the data in the image irreversibly - refusing operation"
            )
        for i in matching:
            volume.erase_key(i, write)
    else:
        raise BlockError(
            "To erase keyslot(s), either explicit keyslot index or the password currently "
            "contained in them must be given"
        )
