"""minisign keys and signatures (Ed25519), byte-compatible with the stock ``minisign`` tool.

Pure code: takes text/bytes and values, never opens files or reads the clock.
Layouts (all multi-byte integers little-endian; every file is two or four text lines):

- public key: ``untrusted comment: ...`` + base64(``Ed`` | key_id[8] | pk[32])
- signature: ``untrusted comment: ...`` + base64(``ED`` | key_id[8] | sig[64]) +
  ``trusted comment: ...`` + base64(global_sig[64]). ``sig`` signs BLAKE2b-512(data)
  (``ED``) or the raw data (legacy ``Ed``); ``global_sig`` signs ``sig || trusted_comment``.
- secret key: ``untrusted comment: ...`` + base64(``Ed`` | kdf ``Sc``/``\\0\\0`` | ``B2`` |
  salt[32] | opslimit[8] | memlimit[8] | (key_id[8] | seed[32] | pk[32] | chk[32]) XOR
  scrypt stream), chk = BLAKE2b-256(``Ed`` | key_id | seed | pk).

See docs/implementation/format-minisign.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bay0.errors import BadSignatureError, FormatError, UnknownKeyError, VerificationError

SIG_ALG = b"Ed"  # key algorithm, and the legacy (non-prehashed) signature algorithm
SIG_ALG_HASHED = b"ED"  # signature over the BLAKE2b-512 prehash: what we write
KDF_SCRYPT = b"Sc"
KDF_NONE = b"\0\0"
CHK_BLAKE2B = b"B2"

UNTRUSTED_PREFIX = "untrusted comment: "
TRUSTED_PREFIX = "trusted comment: "
# minisign reads comment lines with fgets into buffers of these sizes (minisign.h).
COMMENT_MAX_BYTES = 1024
TRUSTED_COMMENT_MAX_BYTES = 8192

KEY_ID_BYTES = 8
_PUBKEY_LEN = 2 + 8 + 32
_SIG_LEN = 2 + 8 + 64
_SECKEY_LEN = 2 + 2 + 2 + 32 + 8 + 8 + (8 + 64 + 32)
_KEYNUM_SK_LEN = 8 + 64 + 32

# What our encrypted keys store (libsodium pickparams maps them to scrypt N=2^17, r=8,
# p=1, 128 MiB, ~0.4 s here). minisign's own default is N=2^20 (1 GiB, ~6 s in Python);
# the cost is paid on every signing, so we trade 8x for an interactive CLI.
DEFAULT_OPSLIMIT = 1 << 22
DEFAULT_MEMLIMIT = 1 << 27
# libsodium's scrypt bounds: refuse a key file that asks for more (a hostile file could
# otherwise demand terabytes or hours).
_MAX_SCRYPT_MEMORY = 4 << 30
_MAX_SCRYPT_P = 64


class WrongPassphraseError(VerificationError):
    """The passphrase does not decrypt the secret key (its checksum does not match)."""

    default_hint = "check the passphrase (SPINE_KEY_PASSPHRASE or the prompt)"


def prehash() -> hashlib._Hash:
    """A fresh BLAKE2b-512 state: feed it a file in chunks and pass ``.digest()`` on."""
    return hashlib.blake2b(digest_size=64)


def key_id_hex(key_id: bytes) -> str:
    """The key id as minisign prints it: the little-endian u64 in 16 uppercase hex digits."""
    return key_id[::-1].hex().upper()


def _b64decode(text: str, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{what}: invalid base64", "is this a minisign file?") from e
    if len(raw) != length:
        raise FormatError(
            f"{what}: {len(raw)} bytes after base64, expected {length}",
            "is this a minisign file?",
        )
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _lines(text: str | bytes, what: str, count: int) -> list[str]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{what}: not UTF-8 text", "is this a minisign file?") from e
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count:
        raise FormatError(
            f"{what}: {len(lines)} lines, expected {count}", "is this a minisign file?"
        )
    return lines


def _check_comment(comment: str, what: str, limit: int) -> None:
    if "\n" in comment or "\r" in comment:
        raise FormatError(f"{what} must be a single line", "remove the line break")
    if len(comment.encode("utf-8")) >= limit:
        raise FormatError(f"{what} is too long for minisign ({limit} bytes)", "shorten it")


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with its 8-byte minisign key id."""

    key_id: bytes
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.key) != 32:
            raise FormatError("public key: key id must be 8 bytes and key 32 bytes")

    @property
    def key_id_hex(self) -> str:
        return key_id_hex(self.key_id)

    @classmethod
    def parse(cls, text: str | bytes) -> PublicKey:
        """Parse a ``.pub`` file (two lines) or the bare base64 line; raises ``FormatError``."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        stripped = text.strip()
        if not stripped:
            raise FormatError("public key: empty", "is this a minisign .pub file?")
        line = stripped if "\n" not in stripped else _lines(text, "public key", 2)[1]
        raw = _b64decode(line, "public key", _PUBKEY_LEN)
        if raw[:2] != SIG_ALG:
            raise FormatError(
                f"public key: unsupported algorithm {raw[:2]!r}", "only Ed25519 keys exist"
            )
        return cls(raw[2:10], raw[10:])

    def to_base64(self) -> str:
        return _b64(SIG_ALG + self.key_id + self.key)

    def to_text(self) -> str:
        """The ``.pub`` file exactly as ``minisign -G`` writes it."""
        return f"{UNTRUSTED_PREFIX}minisign public key {self.key_id_hex}\n{self.to_base64()}\n"


@dataclass(frozen=True)
class Signature:
    """A parsed ``.minisig`` file (nothing verified yet)."""

    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = ""

    @property
    def prehashed(self) -> bool:
        return self.algorithm == SIG_ALG_HASHED

    @classmethod
    def parse(cls, data: str | bytes) -> Signature:
        """Parse the four lines of a ``.minisig`` file; raises ``FormatError``."""
        lines = _lines(data, "signature", 4)
        if not lines[0].startswith(UNTRUSTED_PREFIX):
            raise FormatError(
                f"signature: first line does not start with {UNTRUSTED_PREFIX.strip()!r}",
                "is this a .minisig file?",
            )
        if not lines[2].startswith(TRUSTED_PREFIX):
            raise FormatError(
                f"signature: third line does not start with {TRUSTED_PREFIX.strip()!r}",
                "is this a .minisig file?",
            )
        raw = _b64decode(lines[1], "signature", _SIG_LEN)
        if raw[:2] not in (SIG_ALG, SIG_ALG_HASHED):
            raise FormatError(
                f"signature: unsupported algorithm {raw[:2]!r}", "expected ED or Ed (minisign)"
            )
        global_sig = _b64decode(lines[3], "signature (global)", 64)
        return cls(
            algorithm=raw[:2],
            key_id=raw[2:10],
            signature=raw[10:],
            trusted_comment=lines[2][len(TRUSTED_PREFIX) :],
            global_signature=global_sig,
            untrusted_comment=lines[0][len(UNTRUSTED_PREFIX) :],
        )

    def to_text(self) -> str:
        return (
            f"{UNTRUSTED_PREFIX}{self.untrusted_comment}\n"
            f"{_b64(self.algorithm + self.key_id + self.signature)}\n"
            f"{TRUSTED_PREFIX}{self.trusted_comment}\n"
            f"{_b64(self.global_signature)}\n"
        )


@dataclass(frozen=True)
class Verified:
    """What a good signature vouches for."""

    key_id_hex: str
    trusted_comment: str
    algorithm: str
    fields: dict[str, str] = field(default_factory=dict)


def parse_trusted_comment(comment: str) -> dict[str, str]:
    """Split ``k:v<TAB>k:v`` into a dict (entries without ``:`` are kept as ``{k: ""}``)."""
    fields: dict[str, str] = {}
    for item in comment.split("\t"):
        key, _, value = item.partition(":")
        if key:
            fields.setdefault(key, value)
    return fields


def _check(public: Ed25519PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        public.verify(sig, message)
    except InvalidSignature:
        return False
    return True


def _find_key(sig: Signature, trusted: Sequence[PublicKey]) -> PublicKey:
    for key in trusted:
        if hmac.compare_digest(key.key_id, sig.key_id):
            return key
    known = ", ".join(k.key_id_hex for k in trusted) or "none"
    raise UnknownKeyError(
        f"signed by key {key_id_hex(sig.key_id)}, which is not trusted (trusted: {known})",
        "verify with the public key that made the signature, or add it to the trusted keys",
    )


def verify_signature(
    message: bytes, signature: Signature, trusted: Sequence[PublicKey]
) -> Verified:
    """Check a parsed signature over ``message`` (the prehash for ``ED``, the data for ``Ed``).

    Raises ``UnknownKeyError`` (key id not among ``trusted``), ``BadSignatureError``
    ("signature does not match the data" / "trusted comment was altered").
    """
    key = _find_key(signature, trusted)
    public = Ed25519PublicKey.from_public_bytes(key.key)
    if not _check(public, signature.signature, message):
        raise BadSignatureError(
            f"signature does not match the data (key {key.key_id_hex})",
            "the file was changed after signing, or the signature belongs to another file",
        )
    comment = signature.trusted_comment.encode("utf-8")
    if not _check(public, signature.global_signature, signature.signature + comment):
        raise BadSignatureError(
            f"trusted comment was altered (key {key.key_id_hex})",
            "the .minisig file was edited; get a fresh signature from the signer",
        )
    return Verified(
        key_id_hex=key.key_id_hex,
        trusted_comment=signature.trusted_comment,
        algorithm=signature.algorithm.decode("ascii"),
        fields=parse_trusted_comment(signature.trusted_comment),
    )


def verify(data: bytes, signature_file: bytes | str, trusted: Sequence[PublicKey]) -> Verified:
    """Verify a whole ``.minisig`` file over ``data`` (``ED`` prehashed, or legacy ``Ed``).

    Raises ``FormatError`` (unparseable signature), ``UnknownKeyError``, ``BadSignatureError``.
    """
    signature = Signature.parse(signature_file)
    message = hashlib.blake2b(data, digest_size=64).digest() if signature.prehashed else data
    return verify_signature(message, signature, trusted)


def verify_prehashed(
    digest: bytes, signature_file: bytes | str, trusted: Sequence[PublicKey]
) -> Verified:
    """Like ``verify`` but given BLAKE2b-512(data), for streaming large files.

    Raises ``FormatError`` also for a legacy ``Ed`` signature (it needs the whole data).
    """
    signature = Signature.parse(signature_file)
    if not signature.prehashed:
        raise FormatError(
            "legacy (non-prehashed) signature: the whole file is needed to check it",
            "re-sign the file with spinectl sign or minisign -S",
        )
    return verify_signature(digest, signature, trusted)


# ---------------------------------------------------------------- secret keys


def scrypt_params(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """libsodium's ``pickparams`` for crypto_pwhash_scryptsalsa208sha256: (N, r, p)."""
    opslimit = max(opslimit, 32768)
    r = 8
    if opslimit < memlimit // 32:
        return 1 << _log2_below(opslimit // (r * 4)), r, 1
    n_log2 = _log2_below(memlimit // (r * 128))
    max_rp = min((opslimit // 4) // (1 << n_log2), 0x3FFFFFFF)
    return 1 << n_log2, r, max_rp // r


def _log2_below(max_n: int) -> int:
    """The smallest n in 1..63 with 2**n > max_n / 2 (libsodium's loop, kept as is)."""
    n_log2 = 1
    while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
        n_log2 += 1
    return n_log2


def _scrypt_stream(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    n, r, p = scrypt_params(opslimit, memlimit)
    needed = 128 * r * (n + 2) + 128 * r * p
    if needed > _MAX_SCRYPT_MEMORY or p > _MAX_SCRYPT_P or p < 1:
        raise FormatError(
            f"secret key asks for scrypt N={n} r={r} p={p}, beyond what we accept",
            "re-encrypt the key with sane limits (minisign -C)",
        )
    return hashlib.scrypt(
        passphrase, salt=salt, n=n, r=r, p=p, maxmem=needed + (1 << 20), dklen=_KEYNUM_SK_LEN
    )


def _checksum(key_id: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + key_id + sk, digest_size=32).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, repr=False)
class SecretKey:
    """An Ed25519 signing key (32-byte seed) with its minisign key id."""

    key_id: bytes
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.seed) != 32:
            raise FormatError("secret key: key id must be 8 bytes and seed 32 bytes")

    def __repr__(self) -> str:  # never print the seed (tracebacks, logs)
        return f"SecretKey(key_id={self.key_id_hex})"

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(KEY_ID_BYTES), secrets.token_bytes(32))

    @property
    def key_id_hex(self) -> str:
        return key_id_hex(self.key_id)

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> PublicKey:
        raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(self.key_id, raw)

    def sign(
        self,
        data: bytes,
        trusted_comment: str,
        untrusted_comment: str = "signature from spinectl secret key",
    ) -> bytes:
        """The whole ``.minisig`` file for ``data`` (prehashed ``ED``); raises ``FormatError``."""
        return self.sign_prehashed(
            hashlib.blake2b(data, digest_size=64).digest(), trusted_comment, untrusted_comment
        )

    def sign_prehashed(
        self,
        digest: bytes,
        trusted_comment: str,
        untrusted_comment: str = "signature from spinectl secret key",
    ) -> bytes:
        """Like ``sign`` given BLAKE2b-512(data) (see ``prehash()``); raises ``FormatError``."""
        if len(digest) != 64:
            raise FormatError("prehash must be a 64-byte BLAKE2b-512 digest")
        _check_comment(trusted_comment, "trusted comment", TRUSTED_COMMENT_MAX_BYTES - 17)
        _check_comment(untrusted_comment, "untrusted comment", COMMENT_MAX_BYTES - 20)
        private = self._private
        sig = private.sign(digest)
        global_sig = private.sign(sig + trusted_comment.encode("utf-8"))
        return (
            Signature(
                SIG_ALG_HASHED, self.key_id, sig, trusted_comment, global_sig, untrusted_comment
            )
            .to_text()
            .encode("utf-8")
        )

    def to_text(
        self,
        passphrase: bytes | None,
        *,
        comment: str | None = None,
        salt: bytes | None = None,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
    ) -> str:
        """The ``.key`` file: scrypt-encrypted, or plain when ``passphrase`` is None.

        Raises ``FormatError`` for an empty passphrase (use None to mean "unencrypted").
        """
        if passphrase is not None and not passphrase:
            raise FormatError("empty passphrase", "give a passphrase, or opt out explicitly")
        sk = self.seed + self.public_key.key
        keynum_sk = self.key_id + sk + _checksum(self.key_id, sk)
        if passphrase is None:
            header = SIG_ALG + KDF_NONE + CHK_BLAKE2B + bytes(32 + 8 + 8)
            comment = comment or "minisign unencrypted secret key"
        else:
            salt = salt if salt is not None else secrets.token_bytes(32)
            header = (
                SIG_ALG + KDF_SCRYPT + CHK_BLAKE2B + salt + struct.pack("<QQ", opslimit, memlimit)
            )
            keynum_sk = _xor(keynum_sk, _scrypt_stream(passphrase, salt, opslimit, memlimit))
            comment = comment or "minisign encrypted secret key"
        _check_comment(comment, "secret key comment", COMMENT_MAX_BYTES - 20)
        return f"{UNTRUSTED_PREFIX}{comment}\n{_b64(header + keynum_sk)}\n"


@dataclass(frozen=True, repr=False)
class SecretKeyFile:
    """A parsed ``.key`` file, possibly still encrypted."""

    kdf: bytes
    salt: bytes
    opslimit: int
    memlimit: int
    payload: bytes  # key_id | sk | chk, XOR-ed with the scrypt stream when encrypted

    @property
    def encrypted(self) -> bool:
        return self.kdf == KDF_SCRYPT

    @classmethod
    def parse(cls, text: str | bytes) -> SecretKeyFile:
        """Parse a minisign secret key file; raises ``FormatError``."""
        lines = _lines(text, "secret key", 2)
        raw = _b64decode(lines[1], "secret key", _SECKEY_LEN)
        if raw[:2] != SIG_ALG:
            raise FormatError(f"secret key: unsupported algorithm {raw[:2]!r}")
        if raw[2:4] not in (KDF_SCRYPT, KDF_NONE):
            raise FormatError(f"secret key: unsupported key derivation {raw[2:4]!r}")
        if raw[4:6] != CHK_BLAKE2B:
            raise FormatError(f"secret key: unsupported checksum {raw[4:6]!r}")
        opslimit, memlimit = struct.unpack("<QQ", raw[38:54])
        return cls(raw[2:4], raw[6:38], opslimit, memlimit, raw[54:])

    def unlock(self, passphrase: bytes | None, *, name: str = "the secret key") -> SecretKey:
        """Decrypt (if needed) and check the key.

        Raises ``WrongPassphraseError`` (checksum mismatch), ``FormatError`` (encrypted but
        no passphrase given, or a damaged key).
        """
        payload = self.payload
        if self.encrypted:
            if passphrase is None:
                raise FormatError(f"{name} is encrypted and no passphrase was given")
            payload = _xor(
                payload, _scrypt_stream(passphrase, self.salt, self.opslimit, self.memlimit)
            )
        key_id, sk, chk = payload[:8], payload[8:72], payload[72:]
        if self.encrypted or any(chk):
            # minisign -G -W leaves the checksum of an unencrypted key zeroed.
            if not hmac.compare_digest(chk, _checksum(key_id, sk)):
                if self.encrypted:
                    raise WrongPassphraseError(f"wrong passphrase for {name}")
                raise FormatError(f"{name}: checksum mismatch (damaged key file)")
        key = SecretKey(key_id, sk[:32])
        if not hmac.compare_digest(key.public_key.key, sk[32:]):
            raise FormatError(f"{name}: its public half does not match its seed (damaged)")
        return key
