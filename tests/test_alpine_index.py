"""APKINDEX parsing and the signature, C: and datahash checks on the real fixtures."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bay0.errors import (
    BadSignatureError,
    CorruptionError,
    IdentityMismatchError,
    NotFoundError,
    UnknownKeyError,
)
from pipeline.alpine.apk import q1_checksum, verify_apk
from pipeline.alpine.gzstreams import read_member
from pipeline.alpine.index import read_index
from pipeline.alpine.keys import Keyring
from tests.alpine_support import iso_repos, main_repos  # noqa: F401

KEY = "alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub"


@pytest.fixture(scope="module")
def keyring(alpine):
    return Keyring.load(alpine / "keys")


@pytest.mark.parametrize(("path", "count", "description"), [
    ("v3.19/index/main", 5443, "v3.19.1-643-gec825d20535"),
    ("v3.19/index/community", 17587, "v3.19.1-642-g9e5b575ce97"),
    ("v3.19/iso-repo", 100, "3.19.1"),
])
def test_index_counts(alpine, keyring, path, count, description):
    index = read_index((alpine / path / "x86_64/APKINDEX.tar.gz").read_bytes(), keyring, where=path)
    assert len(index.packages) == count
    assert index.description == description
    assert index.key_name == KEY


def test_index_fields(main_repos):  # noqa: F811
    busybox = main_repos.find("busybox")
    assert (busybox.version, busybox.arch, busybox.license) == ("1.36.1-r19", "x86_64", "GPL-2.0-only")
    assert busybox.checksum == "Q1RWLMZH10kdz0zUmHb2dljdFhLlQ="   # the minirootfs db has the same
    assert [str(d) for d in busybox.depends] == ["so:libc.musl-x86_64.so.1"]
    binsh = main_repos.find("busybox-binsh")
    assert binsh.provider_priority == 100 and "/bin/sh" in [p.name for p in binsh.provides]


def _apk_files(alpine):
    for repo, apk_dir in [
        ("iso", "v3.19/iso-repo"), ("main", "v3.19/extra")]:
        for path in sorted((alpine / apk_dir / "x86_64").glob("*.apk")):
            yield repo, path


def test_every_fixture_package_verifies(alpine, iso_repos, main_repos):  # noqa: F811
    """All 152 apks: signature, C: against their index, datahash, and the data inflates."""
    repos = {"iso": iso_repos, "main": main_repos}
    checked = 0
    for repo, path in _apk_files(alpine):
        pkg = next(p for p in repos[repo].packages if p.filename == path.name
                   and p.repository.spec.name == ("iso-repo" if repo == "iso" else "main"))
        verified = pkg.repository.fetch(pkg)
        assert verified.checksum == pkg.checksum and verified.key_name == KEY
        checked += 1
    assert checked == 152


# --- tampering -------------------------------------------------------------

@pytest.fixture(scope="module")
def busybox_apk(alpine):
    return (alpine / "v3.19/iso-repo/x86_64/busybox-1.36.1-r15.apk").read_bytes()


def _verify(data, keyring, checksum="Q1AYNx2pLOAHRYZQgv3nM8TNtvRWY="):
    return verify_apk(data, keyring, name="busybox", version="1.36.1-r15",
                      expected_checksum=checksum)


def _members(data):
    sig, a = read_member(data, 0, "t")
    control, b = read_member(data, a, "t")
    return sig, control, b


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def test_untampered_busybox_verifies(busybox_apk, keyring):
    verified = _verify(busybox_apk, keyring)
    assert verified.info("pkgname") == "busybox" and ".post-install" in verified.scripts


def test_one_byte_in_control_fails_the_signature(busybox_apk, keyring):
    _sig, _control, control_end = _members(busybox_apk)
    with pytest.raises(BadSignatureError, match=r"package busybox-1.36.1-r15: bad signature"):
        _verify(_flip(busybox_apk, control_end - 5), keyring)   # inside the control CRC


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_any_byte_in_control_fails_the_signature(busybox_apk, keyring, where):
    _sig, control, control_end = _members(busybox_apk)
    start = control_end - len(control.compressed)
    offset = start + 12 + int(where * (len(control.compressed) - 20))
    with pytest.raises(BadSignatureError, match=r"^package busybox-1.36.1-r15: bad signature"):
        _verify(_flip(busybox_apk, offset), keyring)


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_any_byte_in_the_signature_block_fails_the_signature(busybox_apk, keyring, where):
    sig, _control, _end = _members(busybox_apk)
    offset = 12 + int(where * (len(sig.compressed) - 20))
    with pytest.raises(BadSignatureError, match=r"^package busybox-1.36.1-r15: bad signature"):
        _verify(_flip(busybox_apk, offset), keyring)


def test_not_an_apk(keyring):
    from bay0.errors import FormatError

    with pytest.raises(FormatError, match="is not an apk v2 file"):
        _verify(b"PK\x03\x04 a zip file", keyring)


def test_one_byte_in_data_fails_the_datahash(busybox_apk, keyring):
    _sig, _control, control_end = _members(busybox_apk)
    middle = (control_end + len(busybox_apk)) // 2
    with pytest.raises(CorruptionError, match=r"busybox-1.36.1-r15: data does not match its signed datahash"):
        _verify(_flip(busybox_apk, middle), keyring)


def _resign(content_tar: bytes, signature: bytes, member_name: str) -> bytes:
    info = tarfile.TarInfo(member_name)
    info.size = len(signature)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(signature))
    return gzip.compress(out.getvalue(), mtime=0) + content_tar


def test_one_byte_in_the_signature_fails(busybox_apk, keyring):
    sig, control, _end = _members(busybox_apk)
    with tarfile.open(fileobj=io.BytesIO(sig.content)) as tar:
        member = tar.next()
        signature = bytearray(tar.extractfile(member).read())
    signature[100] ^= 0x01
    forged = _resign(control.compressed, bytes(signature), member.name)
    with pytest.raises(BadSignatureError, match="bad signature"):
        _verify(forged + busybox_apk[_end:], keyring)


def test_a_different_package_fails_the_index_checksum(alpine, keyring):
    other = (alpine / "v3.19/iso-repo/x86_64/busybox-binsh-1.36.1-r15.apk").read_bytes()
    with pytest.raises(IdentityMismatchError, match="does not match the index C:"):
        verify_apk(other, keyring, name="busybox-binsh", version="1.36.1-r15",
                   expected_checksum="Q1AYNx2pLOAHRYZQgv3nM8TNtvRWY=")


def test_q1_checksum_is_sha1_of_the_control_member(busybox_apk):
    _sig, control, _end = _members(busybox_apk)
    assert q1_checksum(control.compressed) == "Q1AYNx2pLOAHRYZQgv3nM8TNtvRWY="


def test_index_signed_by_an_unknown_key(alpine, keyring):
    data = (alpine / "v3.19/iso-repo/x86_64/APKINDEX.tar.gz").read_bytes()
    _sig, end = read_member(data, 0, "t")
    content = data[end:]
    evil = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = evil.sign(content, padding.PKCS1v15(), hashes.SHA1())
    forged = _resign(content, signature, ".SIGN.RSA.evil@example.com-12345678.rsa.pub")
    with pytest.raises(UnknownKeyError, match="signed by unknown key evil@example.com-12345678"):
        read_index(forged, keyring, where="iso-repo")
    # The same forgery under the name of a trusted key is a bad signature.
    forged = _resign(content, signature, ".SIGN.RSA." + KEY)
    with pytest.raises(BadSignatureError, match="index iso-repo: bad signature"):
        read_index(forged, keyring, where="iso-repo")


def test_unsigned_index_is_refused(alpine, keyring):
    data = (alpine / "v3.19/iso-repo/x86_64/APKINDEX.tar.gz").read_bytes()
    _sig, end = read_member(data, 0, "t")
    with pytest.raises(BadSignatureError, match="index iso-repo is not signed"):
        read_index(data[end:], keyring, where="iso-repo")


def test_keys_dir_must_exist(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        Keyring.load(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="no \\*.pub keys"):
        Keyring.load(tmp_path)
