"""apk v2 packages: split, verify (signature, index C:, datahash) and read.

Layout: gzip(signature tar) + gzip(control tar: .PKGINFO, install scripts)
+ gzip(data tar). The signature tar and control tar lack end-of-archive blocks.
Checks, in order, each failing with its own one-line error:

1. signature over the compressed control member   -> BadSignatureError / UnknownKeyError
2. ``"Q1" + base64(sha1(control member))`` equals the index ``C:`` -> IdentityMismatchError
3. control gzip CRC, .PKGINFO name/version equal the index entry   -> CorruptionError
4. ``datahash`` (sha256 of the compressed data member)             -> CorruptionError
5. data gzip CRC; later, per file, the PAX ``APK-TOOLS.checksum.SHA1`` (install.py)
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from dataclasses import dataclass

from bay0.errors import BadSignatureError, CorruptionError, FormatError, IdentityMismatchError
from pipeline.alpine.gzstreams import inflate_whole, read_member
from pipeline.alpine.keys import Keyring
from pipeline.alpine.package import parse_pkginfo

SCRIPT_NAMES = (
    ".pre-install", ".post-install", ".pre-upgrade", ".post-upgrade",
    ".pre-deinstall", ".post-deinstall", ".trigger",
)


def q1_checksum(control_member: bytes) -> str:
    """apk's package identity: ``Q1`` + base64 of sha1 over the compressed control member."""
    return "Q1" + base64.b64encode(hashlib.sha1(control_member).digest()).decode()


@dataclass(frozen=True)
class VerifiedApk:
    """A package whose signature, checksum and datahash all checked out."""

    checksum: str
    key_name: str
    pkginfo: dict[str, list[str]]
    scripts: dict[str, bytes]     # ".post-install" -> script bytes
    data_tar: bytes               # the inflated data tar

    def info(self, key: str, default: str = "") -> str:
        values = self.pkginfo.get(key)
        return values[0] if values else default


def split_signed(data: bytes, keyring: Keyring, what: str):
    """Verify the leading signature member; return (key name, signed member, offset after it).

    Shared by packages and APKINDEX files. Raises ``FormatError``,
    ``CorruptionError``, ``UnknownKeyError`` or ``BadSignatureError``.
    """
    if data[:3] != b"\x1f\x8b\x08":
        raise FormatError(f"{what} is not an apk v2 file (no gzip header)")
    # A changed byte anywhere in the first two members is reported as what it
    # breaks: the signature, even when the change also breaks the deflate data.
    try:
        sig_member, offset = read_member(data, 0, what)
        name, signature = _signature_entry(sig_member.content, what)
    except (CorruptionError, FormatError) as e:
        raise BadSignatureError(f"{what}: bad signature (the signature block is damaged: {e})",
                                "the file was changed after signing; fetch it again") from e
    try:
        signed, end = read_member(data, offset, what)
    except (CorruptionError, FormatError) as e:
        keyring.key_for(what, name)
        raise BadSignatureError(f"{what}: bad signature (the signed block is damaged)",
                                "the file was changed after signing; fetch it again") from e
    key_name = keyring.verify(what, name, signature, signed.compressed)
    if not sig_member.crc_ok or not signed.crc_ok:
        raise CorruptionError(f"{what}: gzip CRC does not match")
    return key_name, signed, end


def _signature_entry(tar_bytes: bytes, what: str) -> tuple[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                if member.name.startswith(".SIGN.") and member.isfile():
                    return member.name, tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise FormatError(f"{what}: signature block is not a tar archive ({e})") from e
    raise BadSignatureError(f"{what} is not signed", "only signed packages and indexes are accepted")


def verify_apk(data: bytes, keyring: Keyring, *, name: str, version: str,
               expected_checksum: str | None) -> VerifiedApk:
    """Run checks 1-5 above on the bytes of ``<name>-<version>.apk``.

    ``expected_checksum`` is the index ``C:`` (None when the caller has no index).
    """
    what = f"package {name}-{version}"
    key_name, control, data_offset = split_signed(data, keyring, what)
    checksum = q1_checksum(control.compressed)
    if expected_checksum is not None and checksum != expected_checksum:
        raise IdentityMismatchError(
            f"{what}: checksum {checksum} does not match the index C:{expected_checksum}",
            "the file is a different build than the index lists; fetch it again")
    pkginfo, scripts = _read_control(control.content, what)
    found = (pkginfo.get("pkgname", [""])[0], pkginfo.get("pkgver", [""])[0])
    if found != (name, version):
        raise IdentityMismatchError(f"{what}: .PKGINFO says {found[0]}-{found[1]}")
    data_member = data[data_offset:]
    datahash = pkginfo.get("datahash", [""])[0]
    if datahash and hashlib.sha256(data_member).hexdigest() != datahash:
        raise CorruptionError(f"{what}: data does not match its signed datahash",
                              "the file was changed after signing; fetch it again")
    if not datahash:
        raise FormatError(f"{what}: .PKGINFO has no datahash", "apk v2 packages must carry one")
    return VerifiedApk(checksum, key_name, pkginfo, scripts,
                       inflate_whole(data_member, what + " data"))


def _read_control(tar_bytes: bytes, what: str) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    pkginfo_text = None
    scripts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                content = tar.extractfile(member).read()
                if member.name == ".PKGINFO":
                    pkginfo_text = content.decode("utf-8")
                elif member.name in SCRIPT_NAMES:
                    scripts[member.name] = content
    except (tarfile.TarError, UnicodeDecodeError) as e:
        raise FormatError(f"{what}: control block does not parse ({e})") from e
    if pkginfo_text is None:
        raise FormatError(f"{what}: no .PKGINFO in the control block")
    return parse_pkginfo(pkginfo_text), scripts
