"""verify_inventory / check_identity: what bay0 refuses (pure, real Ed25519 signatures)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bay0.errors import (
    BadSignatureError,
    ExpiredError,
    FormatError,
    IdentityMismatchError,
    RollbackError,
    UnknownKeyError,
    ValidationError,
)
from bay0.formats import canonical, minisign
from bay0.formats import inventory as inv
from bay0.formats.verity import ImageIdentity
from tests.test_inventory_data import IMAGE, document

NOW = 1_700_000_000 + 3600  # inside the document's created..expires window


@pytest.fixture(scope="module")
def key() -> minisign.SecretKey:
    return minisign.SecretKey.generate()


@pytest.fixture(scope="module")
def other_key() -> minisign.SecretKey:
    return minisign.SecretKey.generate()


def signed(key: minisign.SecretKey, data: bytes | None = None, comment: str = "version:7"):
    data = canonical.dumps(document()) if data is None else data
    return data, key.sign(data, comment)


def check(data: bytes, sig: bytes, key: minisign.SecretKey, floor: int = 0, now: int = NOW):
    return inv.verify_inventory(data, sig, [key.public_key], floor=floor, now=now)


def test_good_inventory_is_returned(key) -> None:
    data, sig = signed(key)
    result = check(data, sig, key, floor=7)
    assert result.version == 7 and [p.name for p in result.personas] == ["web", "batch"]


def test_tampered_document_is_refused(key) -> None:
    data, sig = signed(key)
    tampered = data.replace(b'"pids_max":64', b'"pids_max":99')
    assert tampered != data and canonical.is_canonical(tampered)
    with pytest.raises(BadSignatureError, match="does not match the data"):
        check(tampered, sig, key)


def test_tampered_trusted_comment_is_refused(key) -> None:
    data, sig = signed(key)
    forged = sig.replace(b"trusted comment: version:7", b"trusted comment: version:9")
    with pytest.raises(BadSignatureError, match="trusted comment"):
        check(data, forged, key)


def test_mix_and_match_signature_is_refused(key) -> None:
    data, _ = signed(key)
    _, other_sig = signed(key, canonical.dumps(document(version=8)))
    with pytest.raises(BadSignatureError):
        check(data, other_sig, key)


def test_unknown_key_is_refused_before_parsing(key, other_key) -> None:
    data, sig = signed(other_key, b"not even json")
    with pytest.raises(UnknownKeyError, match=other_key.key_id_hex):
        check(data, sig, key)
    with pytest.raises(UnknownKeyError):
        inv.verify_inventory(*signed(other_key), [], floor=0, now=NOW)


def test_garbage_signature_is_a_format_error(key) -> None:
    data, _ = signed(key)
    with pytest.raises(FormatError):
        check(data, b"untrusted comment: x\nnot base64\n", key)


def test_any_trusted_key_may_sign(key, other_key) -> None:
    data, sig = signed(other_key)
    trusted = [key.public_key, other_key.public_key]
    assert inv.verify_inventory(data, sig, trusted, floor=0, now=NOW).version == 7


@pytest.mark.parametrize("floor, ok", [(0, True), (7, True), (8, False), (2**40, False)])
def test_rollback_below_the_floor_is_refused(key, floor: int, ok: bool) -> None:
    data, sig = signed(key)
    if ok:
        assert check(data, sig, key, floor=floor).version == 7
    else:
        with pytest.raises(RollbackError, match=f"version 7 is below the accepted floor {floor}"):
            check(data, sig, key, floor=floor)


@pytest.mark.parametrize("offset, ok", [(-1, True), (0, False), (10**6, False)])
def test_expired_inventory_is_refused(key, offset: int, ok: bool) -> None:
    data, sig = signed(key)
    expires = document()["expires"]
    if ok:
        check(data, sig, key, now=expires + offset)
    else:
        with pytest.raises(ExpiredError, match=f"expired at {expires}"):
            check(data, sig, key, now=expires + offset)


def test_signed_but_not_canonical_is_refused(key) -> None:
    pretty = canonical.dumps(document()).replace(b'"version":7', b'"version": 7')
    data, sig = signed(key, pretty)
    with pytest.raises(FormatError, match="not canonical"):
        check(data, sig, key)


def test_signed_but_invalid_is_refused(key) -> None:
    doc = document()
    doc["personas"][0]["mounts"][0]["source"] = "../../etc"
    data, sig = signed(key, canonical.dumps(doc))
    with pytest.raises(ValidationError, match="persona web: mounts\\[0\\]: source"):
        check(data, sig, key)


def test_verifies_the_bytes_as_received_with_unknown_fields(key) -> None:
    doc = document(format="spine-inventory/1.2", future={"keep": True})
    data, sig = signed(key, canonical.dumps(doc))
    result = check(data, sig, key)
    assert result.extra == {"future": {"keep": True}} and result.to_bytes() == data


def test_verify_signed_reports_the_key(key) -> None:
    data, sig = signed(key)
    _, verified = inv.verify_signed(data, sig, [key.public_key], floor=0, now=NOW)
    assert verified.key_id_hex == key.key_id_hex


# --- image identity -------------------------------------------------------------------


def identity(**changes) -> ImageIdentity:
    values = {k: v for k, v in IMAGE.items() if k != "file"}
    values.update(changes)
    return ImageIdentity(**values)


@pytest.fixture(scope="module")
def web() -> inv.Persona:
    return inv.Inventory.from_dict(document()).persona("web")


def test_matching_identity_passes(web) -> None:
    inv.check_identity(web, identity())
    assert inv.ImageRecord.from_identity("web.img", identity()) == web.image


@pytest.mark.parametrize(
    "field, value",
    [("size", 4096 * 13), ("sha256", "d" * 64), ("data_size", 4096 * 9),
     ("hash_offset", 4096 * 11), ("root_hash", "e" * 64), ("salt", "f" * 64)],
)
def test_mismatched_identity_names_the_field(web, field: str, value) -> None:
    with pytest.raises(IdentityMismatchError, match=f"persona web: image {field} differs"):
        inv.check_identity(web, identity(**{field: value}))


def test_o1_check_ignores_the_file_sha256(web) -> None:
    other_sha = dataclasses.replace(identity(), sha256="d" * 64)
    inv.check_identity(web, other_sha, fields=inv.O1_IDENTITY_FIELDS)
    with pytest.raises(IdentityMismatchError, match="root_hash"):
        inv.check_identity(web, identity(root_hash="e" * 64), fields=inv.O1_IDENTITY_FIELDS)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_changed_byte_is_refused(key, data) -> None:
    signed_data, sig = signed(key)
    index = data.draw(st.integers(0, len(signed_data) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != signed_data[index]))
    tampered = signed_data[:index] + bytes([value]) + signed_data[index + 1:]
    with pytest.raises(BadSignatureError):
        check(tampered, sig, key)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_torn_signature_is_refused(key, data) -> None:
    signed_data, sig = signed(key)
    cut = data.draw(st.integers(0, len(sig) - 2))
    with pytest.raises((FormatError, BadSignatureError)):
        check(signed_data, sig[:cut], key)
