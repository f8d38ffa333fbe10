"""Keys and signatures on disk: generate, load, sign and verify files (the I/O around
``bay0.formats.minisign``). The only place that asks for a passphrase.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import (
    BadSignatureError,
    ExistsError,
    FormatError,
    NotFoundError,
    UsageError,
)
from bay0.formats import minisign
from bay0.formats.minisign import PublicKey, SecretKey, SecretKeyFile, Verified
from pipeline.paths import PROJECT_ROOT, trust_keys_dir

PASSPHRASE_ENV = "SPINE_KEY_PASSPHRASE"
SIG_SUFFIX = ".minisig"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class GeneratedKey:
    public_key: PublicKey
    public_path: Path
    secret_path: Path
    encrypted: bool

    @property
    def key_id_hex(self) -> str:
        return self.public_key.key_id_hex


def read_passphrase(purpose: str, *, confirm: bool = False) -> bytes:
    """``$SPINE_KEY_PASSPHRASE``, else a hidden prompt on a terminal (twice with ``confirm``).

    Raises ``UsageError`` when there is neither (no terminal) or the answer is empty.
    """
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        if not sys.stdin.isatty():
            raise UsageError(
                f"a passphrase is needed for {purpose} and there is no terminal to ask",
                f"set {PASSPHRASE_ENV}",
            )
        import typer  # only the interactive path needs it

        value = typer.prompt(
            f"Passphrase for {purpose}", hide_input=True, confirmation_prompt=confirm
        )
    if not value:
        raise UsageError(
            f"empty passphrase for {purpose}",
            "give a passphrase (keys generate --no-passphrase writes an unencrypted key)",
        )
    return value.encode("utf-8")


def _inside_repository(directory: Path) -> bool:
    return directory.resolve().is_relative_to(PROJECT_ROOT)


def generate(
    name: str, directory: str | os.PathLike[str], passphrase: bytes | None
) -> GeneratedKey:
    """Write ``DIR/NAME.pub`` and ``DIR/NAME.key`` (0600; plain only if ``passphrase`` is None).

    Raises ``UsageError`` (bad name, a directory inside the repository), ``ExistsError``
    (either file exists: nothing is written).
    """
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid key name {name!r}", "use letters, digits, '.', '_' or '-' (max 64)"
        )
    directory = Path(directory)
    if _inside_repository(directory):
        raise UsageError(
            f"refusing to write a private key inside the repository ({directory})",
            "choose a directory outside it, e.g. ~/.config/alpine-spine/keys; "
            "copy only the .pub file into keys/",
        )
    public_path, secret_path = directory / f"{name}.pub", directory / f"{name}.key"
    for path in (secret_path, public_path):
        if path.exists():
            raise ExistsError(f"{path} already exists", "choose another --name or --dir")
    key = SecretKey.generate()
    secret_text = key.to_text(passphrase, comment=f"spinectl secret key {key.key_id_hex}")
    with _writing(directory):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(secret_path, secret_text.encode("ascii"), mode=0o600)
        try:
            write_atomic(public_path, key.public_key.to_text().encode("ascii"), mode=0o644)
        except BaseException:
            secret_path.unlink(missing_ok=True)  # no half key pair
            raise
    return GeneratedKey(key.public_key, public_path, secret_path, passphrase is not None)


@contextlib.contextmanager
def _writing(where: Path) -> Iterator[None]:
    """Turn a failed write (permissions, a file where a directory should be) into one line."""
    try:
        yield
    except OSError as e:
        raise UsageError(
            f"cannot write in {where}: {e.strerror or e}", "check that it is a writable directory"
        ) from e


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(f"{what} {path} does not exist", "check the path") from e
    except IsADirectoryError as e:
        raise UsageError(f"{what} {path} is a directory", "give a file") from e
    except OSError as e:
        raise NotFoundError(f"cannot read {what} {path}: {e.strerror}", "check the path") from e


def load_secret_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> SecretKey:
    """Load a minisign ``.key`` (ours or minisign's), asking for its passphrase if encrypted.

    Raises ``NotFoundError``, ``FormatError``, ``UsageError`` (no passphrase available),
    ``WrongPassphraseError`` ("wrong passphrase for KEY").
    """
    path = Path(path)
    try:
        parsed = SecretKeyFile.parse(_read(path, "secret key"))
    except FormatError as e:
        raise FormatError(f"{path}: {e.message}", "give a minisign secret key file") from e
    if parsed.encrypted and passphrase is None:
        passphrase = read_passphrase(str(path))
    return parsed.unlock(passphrase if parsed.encrypted else None, name=str(path))


def _load_public(path: Path) -> PublicKey:
    try:
        return PublicKey.parse(_read(path, "public key"))
    except FormatError as e:
        raise FormatError(f"{path}: {e.message}", "give a minisign public key (.pub)") from e


def load_trusted_keys(path_or_dir: str | os.PathLike[str]) -> list[PublicKey]:
    """A ``.pub`` file, or every ``*.pub`` in a directory (sorted by name).

    Raises ``NotFoundError`` (missing path, directory without keys), ``FormatError``.
    """
    path = Path(path_or_dir)
    if not path.is_dir():
        return [_load_public(path)]
    files = sorted(p for p in path.glob("*.pub") if p.is_file())
    if not files:
        raise NotFoundError(
            f"no trusted keys (*.pub) in {path}", "add a public key or point at a .pub file"
        )
    return [_load_public(p) for p in files]


def trusted_or_roots(pubkey: str | os.PathLike[str] | None) -> list[PublicKey]:
    """Keys from ``--pubkey`` (file or directory), else the trust roots in ``keys/``.

    Fails closed: with neither, raises ``UsageError`` (nothing is trusted by default).
    """
    if pubkey is not None:
        return load_trusted_keys(pubkey)
    roots = trust_keys_dir()
    if not any(roots.glob("*.pub")):
        raise UsageError("no trusted public key to verify against",
                         "pass --pubkey KEY.pub (or a directory of keys)")
    return load_trusted_keys(roots)


def hash_file(path: Path) -> tuple[bytes, int]:
    """BLAKE2b-512 of the file, streamed, and its size; raises ``NotFoundError``."""
    state = minisign.prehash()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                state.update(chunk)
                size += len(chunk)
    except FileNotFoundError as e:
        raise NotFoundError(f"{path} does not exist", "check the path") from e
    except IsADirectoryError as e:
        raise UsageError(f"{path} is a directory", "sign or verify a file") from e
    return state.digest(), size


def signing_time() -> int:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now; raises ``UsageError``."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return int(time.time())
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds", "fix it")
    return int(value)


def signature_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIG_SUFFIX)


def sign_file(path: str | os.PathLike[str], secret_key: SecretKey, force: bool = False) -> Path:
    """Write ``PATH.minisig`` atomically; returns its path.

    Trusted comment: ``timestamp:<T>\\tfile:<basename>\\tsize:<bytes>\\tkey:<KEYID>``.
    Raises ``ExistsError`` (signature exists, no ``force``), ``NotFoundError``.
    """
    path = Path(path)
    target = signature_path(path)
    if target.exists() and not force:
        raise ExistsError(f"{target} already exists")
    digest, size = hash_file(path)
    comment = (
        f"timestamp:{signing_time()}\tfile:{path.name}\tsize:{size}\tkey:{secret_key.key_id_hex}"
    )
    data = secret_key.sign_prehashed(digest, comment)
    with _writing(target.parent):
        return write_atomic(target, data, mode=0o644, overwrite=force)


def verify_file(
    path: str | os.PathLike[str],
    trusted: list[PublicKey],
    signature: str | os.PathLike[str] | None = None,
) -> Verified:
    """Check ``PATH.minisig`` (or ``signature``) against ``trusted`` keys.

    Also checks ``size:`` in the trusted comment when present. Raises ``NotFoundError``,
    ``FormatError``, ``UnknownKeyError``, ``BadSignatureError``.
    """
    path = Path(path)
    sig_path = Path(signature) if signature is not None else signature_path(path)
    sig_bytes = _read(sig_path, "signature")
    try:
        parsed = minisign.Signature.parse(sig_bytes)
    except FormatError as e:
        raise FormatError(f"{sig_path}: {e.message}", e.hint) from e
    if parsed.prehashed:
        message, size = hash_file(path)
    else:
        message = _read(path, "file")  # legacy Ed signs the raw bytes
        size = len(message)
    verified = minisign.verify_signature(message, parsed, trusted)
    signed_size = verified.fields.get("size")
    if signed_size is not None and signed_size != str(size):
        raise BadSignatureError(
            f"{path} is {size} bytes but its signature vouches for {signed_size}",
            "the file was truncated or extended after signing",
        )
    return verified
