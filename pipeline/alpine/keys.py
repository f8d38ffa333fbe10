"""Alpine's RSA signing keys and the apk v2 signature check.

A signed apk or APKINDEX starts with a gzip stream holding one tar member named
``.SIGN.RSA.<keyfile>`` (PKCS#1 v1.5 over SHA-1) or ``.SIGN.RSA256.<keyfile>``
(SHA-256); ``<keyfile>`` is the file name of the public key in /etc/apk/keys.
The signature covers the *compressed* bytes of the next gzip stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bay0.errors import BadSignatureError, FormatError, NotFoundError, UnknownKeyError

SIGN_PREFIXES = {".SIGN.RSA256.": hashes.SHA256, ".SIGN.RSA.": hashes.SHA1}


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys by file name (``alpine-devel@...-6165ee59.rsa.pub``)."""

    keys: dict[str, rsa.RSAPublicKey]

    @classmethod
    def load(cls, directory: str | Path) -> Keyring:
        """Load every ``*.pub`` PEM key in ``directory``.

        Raises ``NotFoundError`` when the directory is missing or holds no key,
        ``FormatError`` when a file is not an RSA public key.
        """
        path = Path(directory)
        if not path.is_dir():
            raise NotFoundError(f"Alpine keys directory {path} does not exist",
                                "point keys_dir at a copy of /etc/apk/keys")
        keys = {}
        for item in sorted(path.iterdir()):
            if item.is_file() and item.name.endswith(".pub"):
                keys[item.name] = _load_key(item)
        if not keys:
            raise NotFoundError(f"no *.pub keys in {path}", "copy Alpine's /etc/apk/keys there")
        return cls(keys)

    def verify(self, what: str, member_name: str, signature: bytes, signed: bytes) -> str:
        """Check ``signature`` (from tar member ``member_name``) over ``signed``.

        Returns the key name. Raises ``UnknownKeyError`` for a key not in the ring,
        ``BadSignatureError`` when the signature does not match, ``FormatError``
        for a member that is not an apk signature.
        """
        key, key_name, algorithm = self.key_for(what, member_name)
        try:
            key.verify(signature, signed, padding.PKCS1v15(), algorithm())
        except InvalidSignature as e:
            raise BadSignatureError(f"{what}: bad signature (key {key_name})",
                                    "the file was changed after signing; fetch it again") from e
        return key_name


    def key_for(self, what: str, member_name: str):
        """(key, key name, hash class) for a ``.SIGN.*`` member name.

        Raises ``FormatError`` for another name, ``UnknownKeyError`` for a key not in the ring.
        """
        prefix = next((p for p in SIGN_PREFIXES if member_name.startswith(p)), None)
        if prefix is None:
            raise FormatError(f"{what}: {member_name!r} is not an apk signature")
        key_name = member_name[len(prefix):]
        key = self.keys.get(key_name)
        if key is None:
            raise UnknownKeyError(f"{what} is signed by unknown key {key_name}",
                                  "add the key to the Alpine keys directory if you trust it")
        return key, key_name, SIGN_PREFIXES[prefix]


def _load_key(path: Path) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as e:
        raise FormatError(f"{path} is not a PEM public key") from e
    if not isinstance(key, rsa.RSAPublicKey):
        raise FormatError(f"{path} is not an RSA public key")
    return key
