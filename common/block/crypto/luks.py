"""LUKS1 volumes as QEMU writes and reads them (crypto/block-luks.c; the format
is cryptsetup's "LUKS On-Disk Format Specification" 1.2).

The volume is addressed from its own start (offset 0 = the LUKS magic): for
qcow2 that is the start of the clusters named by the full disk encryption
header extension. Layout QEMU creates:

* 0: the 592-byte partition header (below), big-endian, then zeroes;
* key material of slot ``i`` at sector ``8 + i * round_up(ceil(key_bytes *
  4000 / 512), 8)``: the master key AF-split into 4000 stripes, encrypted with
  the key PBKDF2 derives from the passphrase; only slot 0 is used;
* ``payload_offset`` (sectors) = the end of the eighth slot's material.

Data is encrypted per 512-byte sector; the IV generator takes the sector
number (``offset // 512`` of the offset the caller passes in, which for qcow2
is the host offset of the data).

Ciphers: AES-128/192/256 in XTS, CBC, ECB or CTR mode with plain, plain64 or
ESSIV IVs, through the ``cryptography`` package. Serpent, Twofish and CAST5
images, which QEMU can create, are refused with a clear message.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from ... import records as dataclasses
from ..errors import BlockError, UnsupportedFeature

MAGIC = b"LUKS\xba\xbe"
VERSION = 1
SECTOR_SIZE = 512
NUM_KEY_SLOTS = 8
STRIPES = 4000
DIGEST_LEN = 20
SALT_LEN = 32
KEY_SLOT_OFFSET = 4096  # bytes; slots' material is aligned to this
MIN_SLOT_KEY_ITERS = 1000
MIN_MASTER_KEY_ITERS = 1000
SLOT_ENABLED = 0x00AC71F3
SLOT_DISABLED = 0x0000DEAD
ERASE_ITERATIONS = 16  # random passes over an erased slot's material

# --- the partition header (spec section 2.4, "PHDR") ------------------------
# magic, version, cipher-name, cipher-mode, hash-spec, payload-offset,
# key-bytes, mk-digest, mk-digest-salt, mk-digest-iter, uuid
PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
KEY_SLOT = struct.Struct(">II32sII")  # active, iterations, salt, key-material-offset, stripes
HEADER_LEN = PHDR.size + NUM_KEY_SLOTS * KEY_SLOT.size  # 592

#: QCryptoCipherAlgorithm names -> (LUKS cipher name, key bytes)
CIPHER_ALGS: dict[str, tuple[str, int]] = {
    "aes-128": ("aes", 16),
    "aes-192": ("aes", 24),
    "aes-256": ("aes", 32),
    "cast5-128": ("cast5", 16),
    "serpent-128": ("serpent", 16),
    "serpent-192": ("serpent", 24),
    "serpent-256": ("serpent", 32),
    "twofish-128": ("twofish", 16),
    "twofish-192": ("twofish", 24),
    "twofish-256": ("twofish", 32),
}
CIPHER_MODES = ("ecb", "cbc", "xts", "ctr")
IVGEN_ALGS = ("plain", "plain64", "essiv")
HASH_ALGS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
_DIGEST_LEN = {
    "md5": 16,
    "sha1": 20,
    "sha224": 28,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "ripemd160": 20,
}


class LuksError(BlockError):
    """A LUKS volume that cannot be used (bad header, wrong passphrase, ...)."""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


@dataclasses.dataclass
class KeySlot:
    active: int = SLOT_DISABLED
    iterations: int = 0
    salt: bytes = bytes(SALT_LEN)
    key_offset: int = 0  # sectors
    stripes: int = STRIPES


@dataclasses.dataclass
class Header:
    """The LUKS1 partition header with its eight key slots."""

    cipher_name: str
    cipher_mode: str  # "<mode>-<ivgen>[:<ivhash>]"
    hash_spec: str
    payload_offset: int  # sectors
    key_bytes: int
    mk_digest: bytes
    mk_salt: bytes
    mk_iterations: int
    uuid: str
    slots: list[KeySlot]
    version: int = VERSION

    @classmethod
    def parse(cls, buf: bytes) -> Header:
        if len(buf) < HEADER_LEN:
            raise LuksError("Volume is not in LUKS format", errno.EINVAL)
        fields = PHDR.unpack_from(buf)
        if fields[0] != MAGIC:
            raise LuksError("Volume is not in LUKS format", errno.EINVAL)
        if fields[1] != VERSION:
            raise UnsupportedFeature(f"LUKS version {fields[1]} is not supported")
        slots = [
            KeySlot(*KEY_SLOT.unpack_from(buf, PHDR.size + i * KEY_SLOT.size))
            for i in range(NUM_KEY_SLOTS)
        ]
        return cls(
            cipher_name=_cstr(fields[2]),
            cipher_mode=_cstr(fields[3]),
            hash_spec=_cstr(fields[4]),
            payload_offset=fields[5],
            key_bytes=fields[6],
            mk_digest=fields[7],
            mk_salt=fields[8],
            mk_iterations=fields[9],
            uuid=fields[10].split(b"\0", 1)[0].decode("ascii", "replace"),
            slots=slots,
            version=fields[1],
        )

    def pack(self) -> bytes:
        out = PHDR.pack(
            MAGIC,
            self.version,
            self.cipher_name.encode(),
            self.cipher_mode.encode(),
            self.hash_spec.encode(),
            self.payload_offset,
            self.key_bytes,
            self.mk_digest,
            self.mk_salt,
            self.mk_iterations,
            self.uuid.encode(),
        )
        return out + b"".join(
            KEY_SLOT.pack(s.active, s.iterations, s.salt, s.key_offset, s.stripes)
            for s in self.slots
        )


# --- parameters --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Params:
    """The cipher suite of a volume, parsed and checked."""

    cipher_alg: str  # QEMU name, e.g. aes-256
    cipher_mode: str  # xts, cbc, ecb, ctr
    ivgen_alg: str  # plain, plain64, essiv
    ivgen_hash_alg: str | None
    hash_alg: str

    @property
    def key_bytes(self) -> int:
        n = CIPHER_ALGS[self.cipher_alg][1]
        return 2 * n if self.cipher_mode == "xts" else n

    def mode_spec(self) -> str:
        spec = f"{self.cipher_mode}-{self.ivgen_alg}"
        return f"{spec}:{self.ivgen_hash_alg}" if self.ivgen_hash_alg else spec


def params_from_options(opts: dict[str, Any]) -> Params:
    """Cipher parameters from ``encrypt.*`` create options (prefix removed),
    with QEMU's defaults (aes-256, xts, plain64, sha256)."""

    def pick(name: str, choices: tuple[str, ...] | dict[str, Any], default: str | None) -> Any:
        value = opts.get(name)
        if value in (None, ""):
            return default
        if str(value) not in choices:
            raise BlockError(f"Parameter '{name}' does not accept value '{value}'")
        return str(value)

    ivgen = pick("ivgen-alg", IVGEN_ALGS, "plain64")
    ivhash = pick("ivgen-hash-alg", HASH_ALGS, None)
    if ivgen == "essiv" and ivhash is None:
        ivhash = "sha256"
    return Params(
        cipher_alg=pick("cipher-alg", CIPHER_ALGS, "aes-256"),
        cipher_mode=pick("cipher-mode", CIPHER_MODES, "xts"),
        ivgen_alg=ivgen,
        ivgen_hash_alg=ivhash,
        hash_alg=pick("hash-alg", HASH_ALGS, "sha256"),
    )


def _params_from_header(hdr: Header) -> Params:
    mode, sep, ivgen = hdr.cipher_mode.partition("-")
    if not sep:
        raise LuksError(f"Unexpected cipher mode string format {hdr.cipher_mode}", errno.EINVAL)
    ivgen, _, ivhash = ivgen.partition(":")
    if ivhash and ivhash not in HASH_ALGS:
        raise UnsupportedFeature(f"Hash algorithm {ivhash} not supported")
    if mode not in CIPHER_MODES:
        raise UnsupportedFeature(f"Cipher mode {mode} not supported")
    n = hdr.key_bytes // 2 if mode == "xts" else hdr.key_bytes
    alg = next(
        (k for k, (name, size) in CIPHER_ALGS.items() if name == hdr.cipher_name and size == n),
        None,
    )
    if alg is None:
        raise UnsupportedFeature(
            f"Algorithm {hdr.cipher_name} with key size {n} bytes not supported"
        )
    if hdr.hash_spec not in HASH_ALGS:
        raise UnsupportedFeature(f"Hash algorithm {hdr.hash_spec} not supported")
    if ivgen not in IVGEN_ALGS:
        raise UnsupportedFeature(f"IV generator {ivgen} not supported")
    if ivgen == "essiv" and not ivhash:
        raise LuksError("Missing IV generator hash specification", errno.EINVAL)
    return Params(alg, mode, ivgen, ivhash or None, hdr.hash_spec)


def _slot_sectors(key_bytes: int) -> int:
    """Sectors a key slot's material takes: the AF-split key, rounded up to 4 KiB."""
    sectors = (key_bytes * STRIPES + SECTOR_SIZE - 1) // SECTOR_SIZE
    return (sectors + 7) // 8 * 8


def header_length(params: Params) -> int:
    """Bytes before the payload of a volume made with ``params``: the header and
    eight key slots (qcrypto_block_calculate_payload_offset)."""
    return KEY_SLOT_OFFSET + NUM_KEY_SLOTS * _slot_sectors(params.key_bytes) * SECTOR_SIZE


def check_essiv(params: Params) -> None:
    """QEMU's ESSIV cipher is AES keyed with the hash of the key: the digest must
    be an AES key size (qcrypto_block_luks_essiv_cipher)."""
    if params.ivgen_alg == "essiv" and params.ivgen_hash_alg:
        n = _DIGEST_LEN[params.ivgen_hash_alg]
        if CIPHER_ALGS[params.cipher_alg][0] == "aes" and n not in (16, 24, 32):
            raise LuksError(f"No AES cipher with key size {n} available")


# --- primitives ----------------------------------------------------------------


def _load_cryptography() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        raise UnsupportedFeature(
            "LUKS encryption needs the Python package 'cryptography' (pip install 'pyqemu[crypto]')"
        ) from None
    return Cipher, algorithms, modes


#: hashes PBKDF2 runs through ``cryptography`` (about 2x faster than hashlib's
#: here, which matters at qemu's default of 2 s worth of iterations)
_FAST_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def pbkdf2(hash_alg: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC (RFC 2898) with ``hash_alg``."""
    if hash_alg in _FAST_HASHES:
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
        except ImportError:
            pass
        else:
            algorithm = getattr(hashes, hash_alg.upper())()
            return PBKDF2HMAC(algorithm, length, salt, iterations).derive(password)
    try:
        return hashlib.pbkdf2_hmac(hash_alg, password, salt, iterations, length)
    except ValueError:
        raise UnsupportedFeature(f"Hash algorithm {hash_alg} not supported") from None


def count_iters(hash_alg: str, password: bytes, salt: bytes, length: int) -> int:
    """PBKDF2 iterations per second of CPU time (qcrypto_pbkdf2_count_iters),
    measured over at least 100 ms."""
    iterations = 1 << 12
    while True:
        start = time.thread_time()
        pbkdf2(hash_alg, password, salt, iterations, length)
        spent = time.thread_time() - start
        if spent >= 0.1:
            return int(iterations / spent)
        iterations *= 2


def _diffuse(hash_alg: str, block: bytes) -> bytes:
    """The AF splitter's diffusion: each digest-sized piece ``j`` of the block
    becomes H(be32(j) || piece), cut to the piece's length."""
    size = _DIGEST_LEN[hash_alg]
    out = bytearray()
    for j, pos in enumerate(range(0, len(block), size)):
        piece = block[pos : pos + size]
        digest = hashlib.new(hash_alg, struct.pack(">I", j) + piece).digest()
        out += digest[: len(piece)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def af_split(hash_alg: str, key: bytes, stripes: int) -> bytes:
    """Anti-forensic split of ``key`` into ``stripes`` blocks (LUKS spec 2.4)."""
    n = len(key)
    material = bytearray(os.urandom(n * (stripes - 1)))
    d = bytes(n)
    for i in range(stripes - 1):
        d = _diffuse(hash_alg, _xor(d, bytes(material[i * n : (i + 1) * n])))
    material += _xor(d, key)
    return bytes(material)


def af_merge(hash_alg: str, material: bytes, key_len: int, stripes: int) -> bytes:
    """Recover the key from its AF-split ``material``."""
    n = key_len
    d = bytes(n)
    for i in range(stripes - 1):
        d = _diffuse(hash_alg, _xor(d, material[i * n : (i + 1) * n]))
    return _xor(d, material[(stripes - 1) * n : stripes * n])


def _load_numpy() -> Any:
    """numpy, for the bulk sector paths; None when it is missing (the per-sector
    path, one cipher object per sector, then does the work, ~50x slower)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _fold8_table(np: Any) -> Any:
    """b * (x^7 + x^2 + x + 1) for every byte b: what the byte pushed out of a
    128-bit value by a shift of 8 contributes back (carry-less, < 2^15)."""
    table = [0] * 256
    for b in range(256):
        table[b] = b ^ (b << 1) ^ (b << 2) ^ (b << 7)
    return np.array(table, dtype=np.uint64)


#: 16-byte blocks per sector
_BLOCKS = SECTOR_SIZE // 16
#: bytes per bulk step
_CHUNK = 128 * 1024


class SectorCipher:
    """A key and cipher suite, encrypting 512-byte sectors with per-sector IVs.

    Requests of whole sectors go through bulk paths (numpy over little-endian
    64-bit words, one AES-ECB call over all IV blocks and a few over all data):

    * IVs: plain / plain64 are the sector numbers; ESSIV is one ECB pass of
      those under the hashed key.
    * XTS (IEEE 1619, 512-byte data units, so no ciphertext stealing): the
      first tweak of every sector is one ECB pass over the IVs under the second
      key half; the other 31 are it times alpha^j in GF(2^128), expanded for all
      sectors at once in five steps (alpha^1, ^2, ^4, ^8, ^16); then
      ``E(P ^ T) ^ T`` with one ECB call.
    * CBC: decryption is one ECB pass XORed with the ciphertext shifted by a
      block (the IV in front of each sector); encryption is serial inside a
      sector, so it runs block column by column: 32 ECB calls, each over the
      j-th block of every sector.
    * CTR: the counter blocks (IV + j as a 128-bit big-endian number) of all
      sectors, one ECB pass, XORed with the data.
    """

    def __init__(self, params: Params, key: bytes) -> None:
        if CIPHER_ALGS[params.cipher_alg][0] != "aes":
            raise UnsupportedFeature(
                f"Cipher algorithm {params.cipher_alg} is not supported by pyqemu "
                "(only aes-128, aes-192 and aes-256)"
            )
        if params.cipher_mode == "xts" and params.cipher_alg == "aes-192":
            raise UnsupportedFeature("Cipher aes-192 in xts mode is not supported by pyqemu")
        cipher_cls, algorithms, modes = _load_cryptography()
        self._cipher_cls = cipher_cls
        self._aes = algorithms.AES
        self._modes = modes
        self.params = params
        self.key = key
        self._np = np = _load_numpy()
        if np is not None:
            shift = np.arange(8, dtype=np.uint64).reshape(1, 8)
            self._shifts = (shift, np.uint64(63) - shift, np.uint64(1), _fold8_table(np))
        ecb = modes.ECB()
        self._essiv: Any = None
        if params.ivgen_alg == "essiv":
            assert params.ivgen_hash_alg is not None
            salt = hashlib.new(params.ivgen_hash_alg, key).digest()
            # QEMU's ESSIV cipher takes a key the size of the hash digest
            # (qcrypto_block_luks_essiv_cipher)
            if len(salt) not in (16, 24, 32):
                raise LuksError(f"No AES cipher with key size {len(salt)} available")
            self._essiv = cipher_cls(algorithms.AES(salt), ecb)
        if params.cipher_mode == "xts":
            half = len(key) // 2
            self._ecb = cipher_cls(algorithms.AES(key[:half]), ecb)
            self._tweak_ecb = cipher_cls(algorithms.AES(key[half:]), ecb)
        else:
            self._ecb = cipher_cls(algorithms.AES(key), ecb)

    # --- the per-sector path (partial sectors, or no numpy) ---------------------

    def _iv(self, sector: int) -> bytes:
        alg = self.params.ivgen_alg
        if alg == "plain":
            return struct.pack("<I", sector & 0xFFFFFFFF) + bytes(12)
        if alg == "plain64":
            return struct.pack("<Q", sector & 0xFFFFFFFFFFFFFFFF) + bytes(8)
        block = struct.pack("<Q", sector & 0xFFFFFFFFFFFFFFFF) + bytes(8)
        return self._essiv.encryptor().update(block)

    def _mode(self, iv: bytes) -> Any:
        mode = self.params.cipher_mode
        if mode == "xts":
            return self._modes.XTS(iv)
        if mode == "cbc":
            return self._modes.CBC(iv)
        return self._modes.CTR(iv)

    def _run_per_sector(self, sector: int, mv: memoryview, encrypt: bool) -> bytes:
        out = bytearray(len(mv))
        aes = self._aes(self.key)
        cls = self._cipher_cls
        for pos in range(0, len(mv), SECTOR_SIZE):
            c = cls(aes, self._mode(self._iv(sector)))
            ctx = c.encryptor() if encrypt else c.decryptor()
            out[pos : pos + SECTOR_SIZE] = ctx.update(mv[pos : pos + SECTOR_SIZE])
            sector += 1
        return bytes(out)

    # --- the bulk path ----------------------------------------------------------

    def _ivs(self, sector: int, n: int) -> Any:
        """The IVs of sectors ``sector .. sector+n-1`` as n x 2 little-endian u64."""
        np = self._np
        u64 = np.dtype("<u8")
        ivs = np.zeros((n, 2), u64)
        alg = self.params.ivgen_alg
        mask = 0xFFFFFFFF if alg == "plain" else 0xFFFFFFFFFFFFFFFF
        if alg == "plain" and (sector & mask) + n > mask + 1:
            ivs[:, 0] = [(sector + i) & mask for i in range(n)]  # wraps: rare, small
        else:
            ivs[:, 0] = np.arange(n, dtype=u64) + np.uint64(sector & mask)
        if alg == "essiv":
            enc = self._essiv.encryptor().update(ivs.tobytes())
            ivs = np.frombuffer(enc, u64).reshape(n, 2)
        return ivs

    def _xts_tweaks(self, ivs: Any) -> Any:
        """Every block's XTS tweak: n x 32 x 2 little-endian u64 (lo, hi).

        Block j's tweak is the first times x^j modulo x^128 + x^7 + x^2 + x + 1.
        Blocks 0..7: the 128-bit value shifted left by j, the j bits pushed out
        at the top (h) folded back in as h * (x^7 + x^2 + x + 1), all j at once.
        Blocks 8..31: eight at a time from the eight before, times x^8: a shift
        by one byte and the byte pushed out folded back by table lookup."""
        np = self._np
        u64 = np.dtype("<u8")
        n = len(ivs)
        first = np.frombuffer(self._tweak_ecb.encryptor().update(ivs.tobytes()), u64)
        first = first.reshape(n, 2)
        lo = first[:, 0:1]
        hi = first[:, 1:2]
        shift, rshift, one, fold8 = self._shifts
        # (x >> 1) >> (63 - j): x >> (64 - j) without a shift by 64 at j = 0
        carry = (hi >> one) >> rshift
        fold = carry << np.uint64(7)
        fold ^= carry
        fold ^= carry << one
        fold ^= carry << np.uint64(2)
        t = np.empty((n, _BLOCKS, 2), u64)
        np.left_shift(lo, shift, out=t[:, :8, 0])
        t[:, :8, 0] ^= fold
        np.left_shift(hi, shift, out=t[:, :8, 1])
        t[:, :8, 1] |= (lo >> one) >> rshift
        byte = np.uint64(8)
        top = np.uint64(56)
        for k in range(8, _BLOCKS, 8):
            prev_lo = t[:, k - 8 : k, 0]
            prev_hi = t[:, k - 8 : k, 1]
            pushed = (prev_hi >> top).astype(np.intp)
            np.left_shift(prev_hi, byte, out=t[:, k : k + 8, 1])
            t[:, k : k + 8, 1] |= prev_lo >> top
            np.left_shift(prev_lo, byte, out=t[:, k : k + 8, 0])
            t[:, k : k + 8, 0] ^= fold8[pushed]
        return t

    def _run_bulk(self, sector: int, mv: memoryview, encrypt: bool, out: Any) -> None:
        """Whole sectors ``mv`` from ``sector`` on into ``out`` (u64 array)."""
        np = self._np
        u64 = np.dtype("<u8")
        n = len(mv) // SECTOR_SIZE
        mode = self.params.cipher_mode
        data = np.frombuffer(mv, u64)
        if mode == "xts":
            t = self._xts_tweaks(self._ivs(sector, n)).reshape(-1)
            x = data ^ t
            ctx = self._ecb.encryptor() if encrypt else self._ecb.decryptor()
            np.bitwise_xor(np.frombuffer(ctx.update(x.view(np.uint8)), u64), t, out=out)
            return
        out = out.reshape(n, _BLOCKS, 2)
        if mode == "cbc":
            ivs = self._ivs(sector, n)
            blocks = data.reshape(n, _BLOCKS, 2)
            if not encrypt:
                plain = np.frombuffer(self._ecb.decryptor().update(mv), u64)
                plain = plain.reshape(n, _BLOCKS, 2)
                # blocks 1.. first: ``out`` may be ``mv`` itself (decrypt_into)
                np.bitwise_xor(plain[:, 1:], blocks[:, :-1], out=out[:, 1:])
                np.bitwise_xor(plain[:, 0], ivs, out=out[:, 0])
                return
            ctx = self._ecb.encryptor()
            prev = ivs
            for j in range(_BLOCKS):
                col = np.ascontiguousarray(blocks[:, j]) ^ prev
                prev = np.frombuffer(ctx.update(col.view(np.uint8)), u64).reshape(n, 2)
                out[:, j] = prev
            return
        # ctr: counters are the IV as a big-endian 128-bit number, plus j
        be = np.dtype(">u8")
        ivs = np.frombuffer(self._ivs(sector, n).tobytes(), be).reshape(n, 1, 2)
        j = np.arange(_BLOCKS, dtype=be).reshape(1, _BLOCKS)
        counters = np.empty((n, _BLOCKS, 2), be)
        low = ivs[:, :, 1] + j
        counters[:, :, 1] = low
        counters[:, :, 0] = ivs[:, :, 0] + (low < ivs[:, :, 1])
        stream = np.frombuffer(self._ecb.encryptor().update(counters.tobytes()), u64)
        np.bitwise_xor(stream.reshape(n, _BLOCKS, 2), data.reshape(n, _BLOCKS, 2), out=out)

    def _run(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        encrypt: bool,
        into: memoryview | None = None,
    ) -> bytes | bytearray:
        mv = memoryview(data).cast("B")
        if offset % SECTOR_SIZE:
            raise BlockError("Encrypted I/O must be sector aligned", errno.EINVAL)
        if self.params.cipher_mode == "ecb":
            ctx = self._ecb.encryptor() if encrypt else self._ecb.decryptor()
            return ctx.update(mv) + ctx.finalize()
        sector = offset // SECTOR_SIZE
        np = self._np
        if np is None or len(mv) % SECTOR_SIZE or not mv:
            return self._run_per_sector(sector, mv, encrypt)
        result = bytearray() if into is not None else bytearray(len(mv))
        out = np.frombuffer(into if into is not None else result, np.dtype("<u8"))
        # in pieces that stay in the CPU caches (about 2x faster than MiBs at once)
        for pos in range(0, len(mv), _CHUNK):
            end = min(pos + _CHUNK, len(mv))
            self._run_bulk(
                sector + pos // SECTOR_SIZE, mv[pos:end], encrypt, out[pos // 8 : end // 8]
            )
        return result

    def encrypt(self, offset: int, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Encrypt whole sectors; ``offset`` (bytes) gives the first sector number."""
        return self._run(offset, data, True)

    def decrypt(self, offset: int, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        return self._run(offset, data, False)

    def decrypt_into(self, offset: int, buf: memoryview) -> None:
        """Decrypt the writable buffer ``buf`` in place."""
        mv = memoryview(buf).cast("B")
        if self._np is None or mv.readonly or len(mv) % SECTOR_SIZE or not mv.contiguous:
            mv[:] = self.decrypt(offset, mv)
        elif self.params.cipher_mode == "ecb":
            mv[:] = self._run(offset, mv, False)
        elif mv:
            self._run(offset, mv, False, mv)


# --- volumes ---------------------------------------------------------------------


ReadFn = Callable[[int, int], bytes]
WriteFn = Callable[[int, bytes], None]


class Volume:
    """An opened (or only inspected) LUKS volume."""

    def __init__(self, header: Header, params: Params, cipher: SectorCipher | None) -> None:
        self.header = header
        self.params = params
        #: None when opened without a passphrase (inspection only)
        self.cipher = cipher

    @property
    def payload_offset(self) -> int:
        return self.header.payload_offset * SECTOR_SIZE

    @classmethod
    def open(cls, read: ReadFn, password: bytes | None) -> Volume:
        """Read the header with ``read(offset, length)``; with a ``password``
        unlock the master key from the first key slot that accepts it."""
        hdr = Header.parse(read(0, HEADER_LEN))
        params = _params_from_header(hdr)
        if password is None:
            return cls(hdr, params, None)
        key = _find_key(hdr, params, password.split(b"\0", 1)[0], read)
        return cls(hdr, params, SectorCipher(params, key))

    @classmethod
    def create(
        cls, params: Params, password: bytes, iter_time_ms: int = 2000
    ) -> tuple[Volume, bytes]:
        """Make a new volume: returns it (unlocked) and the bytes of its whole
        header area (``payload_offset`` bytes: header, zeroes, slot 0's material)."""
        password = password.split(b"\0", 1)[0]
        for name, value, limit in (
            ("Cipher name", CIPHER_ALGS[params.cipher_alg][0], 32),
            ("Cipher mode", params.mode_spec(), 32),
            ("Hash name", params.hash_alg, 32),
        ):
            if len(value) >= limit:
                raise BlockError(f"{name} '{value}' is too long for LUKS header")
        nkey = params.key_bytes
        master = os.urandom(nkey)
        check_essiv(params)
        cipher = SectorCipher(params, master)  # refuses unsupported ciphers first
        h = params.hash_alg
        mk_salt = os.urandom(SALT_LEN)
        iters = count_iters(h, master, mk_salt, DIGEST_LEN) * iter_time_ms // 1000 // 8
        mk_iters = max(iters, MIN_MASTER_KEY_ITERS)
        if mk_iters > 0xFFFFFFFF:
            raise BlockError(f"PBKDF iterations {mk_iters} larger than {0xFFFFFFFF}")
        digest = pbkdf2(h, master, mk_salt, mk_iters, DIGEST_LEN)
        per_slot = _slot_sectors(nkey)
        base = KEY_SLOT_OFFSET // SECTOR_SIZE
        slots = [
            KeySlot(
                active=SLOT_ENABLED if i == 0 else SLOT_DISABLED,
                key_offset=base + per_slot * i,
            )
            for i in range(NUM_KEY_SLOTS)
        ]
        material = _fill_slot(params, slots[0], password, master, iter_time_ms)
        hdr = Header(
            cipher_name=CIPHER_ALGS[params.cipher_alg][0],
            cipher_mode=params.mode_spec(),
            hash_spec=h,
            payload_offset=base + per_slot * NUM_KEY_SLOTS,
            key_bytes=nkey,
            mk_digest=digest,
            mk_salt=mk_salt,
            mk_iterations=mk_iters,
            uuid=str(uuid.uuid4()),
            slots=slots,
        )
        area = bytearray(hdr.payload_offset * SECTOR_SIZE)
        packed = hdr.pack()
        area[: len(packed)] = packed
        start = slots[0].key_offset * SECTOR_SIZE
        area[start : start + len(material)] = material
        return cls(hdr, params, cipher), bytes(area)

    def info(self) -> dict[str, Any]:
        """QCryptoBlockInfoLUKS as a dict in QAPI field order (without ``format``)."""
        hdr = self.header
        p = self.params
        info: dict[str, Any] = {
            "cipher-alg": p.cipher_alg,
            "cipher-mode": p.cipher_mode,
            "ivgen-alg": p.ivgen_alg,
        }
        if p.ivgen_alg == "essiv" and p.ivgen_hash_alg:
            info["ivgen-hash-alg"] = p.ivgen_hash_alg
        info["hash-alg"] = p.hash_alg
        info["payload-offset"] = self.payload_offset
        info["master-key-iters"] = hdr.mk_iterations
        info["uuid"] = hdr.uuid
        slots = []
        for s in hdr.slots:
            slot: dict[str, Any] = {"active": s.active == SLOT_ENABLED}
            if s.active == SLOT_ENABLED:
                slot["iters"] = s.iterations
                slot["stripes"] = s.stripes
            slot["key-offset"] = s.key_offset * SECTOR_SIZE
            slots.append(slot)
        info["slots"] = slots
        return info

    # --- keyslot management (qcrypto_block_luks_amend_options) -------------------

    def load_key(self, index: int, password: bytes, read: ReadFn) -> bool:
        """Whether key slot ``index`` is active and opens with ``password``
        (qcrypto_block_luks_load_key)."""
        slot = self.header.slots[index]
        if slot.active != SLOT_ENABLED:
            return False
        return _try_slot(self.header, self.params, slot, password, read) is not None

    def store_key(self, index: int, password: bytes, iter_time_ms: int, write: WriteFn) -> None:
        """Put the master key into slot ``index`` under ``password``: its
        material first, then the header naming it active (qcrypto_block_luks_store_key)."""
        assert self.cipher is not None
        slot = self.header.slots[index]
        material = _fill_slot(self.params, slot, password, self.cipher.key, iter_time_ms)
        write(slot.key_offset * SECTOR_SIZE, material)
        slot.active = SLOT_ENABLED
        write(0, self.header.pack())

    def erase_key(self, index: int, write: WriteFn) -> None:
        """Disable slot ``index`` in the header, then overwrite its material with
        random bytes, 16 times as QEMU (qcrypto_block_luks_erase_key)."""
        slot = self.header.slots[index]
        slot.salt = bytes(SALT_LEN)
        slot.iterations = 0
        slot.active = SLOT_DISABLED
        write(0, self.header.pack())
        length = self.header.key_bytes * slot.stripes
        for _ in range(ERASE_ITERATIONS):
            write(slot.key_offset * SECTOR_SIZE, os.urandom(length))


def _fill_slot(
    params: Params, slot: KeySlot, password: bytes, master: bytes, iter_time_ms: int
) -> bytes:
    """Give ``slot`` a new salt and PBKDF2 iteration count (``iter_time_ms`` of
    hashing) and return the AF-split ``master`` encrypted under ``password``."""
    h = params.hash_alg
    nkey = len(master)
    salt = os.urandom(SALT_LEN)
    iters = count_iters(h, password, salt, nkey) * iter_time_ms // 1000
    if iters > 0xFFFFFFFF:
        raise BlockError(f"PBKDF iterations {iters} larger than {0xFFFFFFFF}")
    slot.iterations = max(iters, MIN_SLOT_KEY_ITERS)
    slot.salt = salt
    slot.stripes = STRIPES
    slot_key = pbkdf2(h, password, salt, slot.iterations, nkey)
    return bytes(SectorCipher(params, slot_key).encrypt(0, af_split(h, master, STRIPES)))


def _try_slot(
    hdr: Header, params: Params, slot: KeySlot, password: bytes, read: ReadFn
) -> bytes | None:
    """The master key if ``password`` opens the (active) ``slot``."""
    nkey = hdr.key_bytes
    if not 1 <= slot.stripes <= 1 << 20:
        raise LuksError(f"Keyslot stripes {slot.stripes} is out of range", errno.EINVAL)
    possible = pbkdf2(hdr.hash_spec, password, slot.salt, slot.iterations, nkey)
    material = read(slot.key_offset * SECTOR_SIZE, nkey * slot.stripes)
    split = SectorCipher(params, possible).decrypt(0, material)
    master = af_merge(hdr.hash_spec, split, nkey, slot.stripes)
    digest = pbkdf2(hdr.hash_spec, master, hdr.mk_salt, hdr.mk_iterations, DIGEST_LEN)
    return master if hmac.compare_digest(digest, hdr.mk_digest) else None


def _find_key(hdr: Header, params: Params, password: bytes, read: ReadFn) -> bytes:
    for slot in hdr.slots:
        if slot.active != SLOT_ENABLED:
            continue
        master = _try_slot(hdr, params, slot, password, read)
        if master is not None:
            return master
    raise LuksError("Invalid password, cannot unlock any keyslot", errno.EACCES)
