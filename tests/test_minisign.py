"""bay0.formats.minisign: the pure format, with the stock minisign tool as the oracle."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bay0.errors import BadSignatureError, FormatError, UnknownKeyError
from bay0.formats import minisign as m
from pipeline.run import run
from tests.conftest import require_tool

# libsodium's INTERACTIVE limits: N=2^14 (16 MiB), so key tests stay fast.
CHEAP = {"opslimit": 524288, "memlimit": 16777216}
DATA = b"pod image bytes\n" * 100


def make_key(n: int = 1) -> m.SecretKey:
    return m.SecretKey(bytes([n]) * 8, bytes([n + 100]) * 32)


def sig_lines(sig: bytes) -> list[str]:
    return sig.decode().splitlines()


# ------------------------------------------------------------------ public keys


def test_public_key_text_roundtrip_and_key_id_is_little_endian():
    key = m.SecretKey(bytes(range(1, 9)), b"\x07" * 32).public_key
    text = key.to_text()
    assert text.splitlines()[0] == "untrusted comment: minisign public key 0807060504030201"
    assert key.key_id_hex == "0807060504030201"
    assert m.PublicKey.parse(text) == key
    assert m.PublicKey.parse(key.to_base64()) == key  # the -P form
    assert m.PublicKey.parse(text.encode()) == key


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("untrusted comment: x\nRWQ=\n", "bytes after base64"),
        ("untrusted comment: x\n!!!notbase64\n", "invalid base64"),
        ("a\nb\nc\n", "3 lines"),
        (
            "untrusted comment: x\n" + base64.b64encode(b"XX" + bytes(40)).decode(),
            "unsupported algorithm",
        ),
    ],
)
def test_public_key_parse_errors(text, problem):
    with pytest.raises(FormatError, match=problem):
        m.PublicKey.parse(text)


# ------------------------------------------------------------------ signatures


def test_sign_verify_roundtrip_prehashed():
    key = make_key()
    sig = key.sign(DATA, "timestamp:1\tfile:x\tsize:1600")
    lines = sig_lines(sig)
    assert lines[0].startswith("untrusted comment: ")
    assert base64.b64decode(lines[1])[:2] == b"ED"
    assert lines[2] == "trusted comment: timestamp:1\tfile:x\tsize:1600"
    verified = m.verify(DATA, sig, [make_key(2).public_key, key.public_key])
    assert verified.key_id_hex == key.key_id_hex
    assert verified.algorithm == "ED"
    assert verified.fields == {"timestamp": "1", "file": "x", "size": "1600"}


def test_sign_prehashed_equals_sign():
    key = make_key()
    digest = hashlib.blake2b(DATA, digest_size=64).digest()
    assert key.sign_prehashed(digest, "c") == key.sign(DATA, "c")  # Ed25519 is deterministic
    assert m.verify_prehashed(digest, key.sign(DATA, "c"), [key.public_key]).trusted_comment == "c"


def test_legacy_ed_signature_is_accepted():
    key = make_key()
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    sig = private.sign(DATA)
    comment = "timestamp:1\tfile:x"
    legacy = m.Signature(b"Ed", key.key_id, sig, comment, private.sign(sig + comment.encode()))
    verified = m.verify(DATA, legacy.to_text(), [key.public_key])
    assert verified.algorithm == "Ed"
    with pytest.raises(FormatError, match="legacy"):
        m.verify_prehashed(hashlib.blake2b(DATA, digest_size=64).digest(), legacy.to_text(), [])


def tamper_comment(sig: bytes) -> bytes:
    lines = sig_lines(sig)
    lines[2] = lines[2].replace("size:1600", "size:1601")
    return ("\n".join(lines) + "\n").encode()


def test_tampering_gives_three_distinct_errors():
    key = make_key()
    sig = key.sign(DATA, "timestamp:1\tfile:x\tsize:1600")
    with pytest.raises(BadSignatureError) as changed_data:
        m.verify(DATA + b"!", sig, [key.public_key])
    with pytest.raises(BadSignatureError) as changed_comment:
        m.verify(DATA, tamper_comment(sig), [key.public_key])
    other = make_key(2).public_key
    with pytest.raises(UnknownKeyError) as wrong_key:
        m.verify(DATA, sig, [other])
    assert "signature does not match the data" in str(changed_data.value)
    assert "trusted comment was altered" in str(changed_comment.value)
    assert key.key_id_hex in str(wrong_key.value) and other.key_id_hex in str(wrong_key.value)
    assert len({str(changed_data.value), str(changed_comment.value), str(wrong_key.value)}) == 3


def test_same_key_id_but_other_key_does_not_verify():
    key = make_key()
    impostor = m.PublicKey(key.key_id, make_key(2).public_key.key)
    with pytest.raises(BadSignatureError, match="does not match the data"):
        m.verify(DATA, key.sign(DATA, "c"), [impostor])


def test_no_trusted_keys_is_unknown_key():
    with pytest.raises(UnknownKeyError, match="trusted: none"):
        m.verify(DATA, make_key().sign(DATA, "c"), [])


@pytest.mark.parametrize(
    "comment, problem", [("a\nb", "single line"), ("x" * 9000, "too long"), ("a\rb", "single")]
)
def test_bad_trusted_comment_is_refused(comment, problem):
    with pytest.raises(FormatError, match=problem):
        make_key().sign(DATA, comment)


def test_signature_parse_errors():
    good = sig_lines(make_key().sign(DATA, "c"))
    cases = [
        (["x"] + good[1:], "first line"),
        (good[:2] + ["x"] + good[3:], "third line"),
        (good[:3], "3 lines"),
        (good[:1] + [base64.b64encode(b"Xx" + bytes(72)).decode()] + good[2:], "algorithm"),
        (good[:3] + ["AAAA"], "global"),
    ]
    for lines, problem in cases:
        with pytest.raises(FormatError, match=problem):
            m.verify(DATA, "\n".join(lines), [make_key().public_key])
    with pytest.raises(FormatError, match="UTF-8"):
        m.Signature.parse(b"\xff\xfe\n\n\n\n")


def test_crlf_signature_files_parse():
    key = make_key()
    sig = key.sign(DATA, "c").replace(b"\n", b"\r\n")
    assert m.verify(DATA, sig, [key.public_key]).trusted_comment == "c"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_parsers_only_raise_format_error(blob):
    for parse in (m.Signature.parse, m.PublicKey.parse, m.SecretKeyFile.parse):
        try:
            parse(blob)
        except FormatError:
            pass


# ------------------------------------------------------------------ secret keys


@pytest.mark.parametrize(
    "opslimit, memlimit, expected",
    [
        (33554432, 1073741824, (1 << 20, 8, 1)),  # libsodium SENSITIVE: minisign's default
        (524288, 16777216, (1 << 14, 8, 1)),  # INTERACTIVE
        (m.DEFAULT_OPSLIMIT, m.DEFAULT_MEMLIMIT, (1 << 17, 8, 1)),  # ours
        (1 << 20, 1 << 30, (1 << 15, 8, 1)),  # opslimit-bound branch
        (1 << 25, 1 << 24, (1 << 14, 8, 64)),  # memory-bound, spare ops go to p
        (1 << 20, 1 << 24, (1 << 14, 8, 2)),
        (0, 0, (2, 8, 512)),
    ],
)
def test_scrypt_params_follow_libsodium_pickparams(opslimit, memlimit, expected):
    assert m.scrypt_params(opslimit, memlimit) == expected


def test_encrypted_secret_key_roundtrip_and_wrong_passphrase():
    key = make_key()
    text = key.to_text(b"correct horse", **CHEAP)
    raw = base64.b64decode(text.splitlines()[1])
    assert len(raw) == 158 and raw[:6] == b"EdScB2"
    assert struct.unpack("<QQ", raw[38:54]) == (CHEAP["opslimit"], CHEAP["memlimit"])
    assert key.seed not in raw
    parsed = m.SecretKeyFile.parse(text)
    assert parsed.encrypted
    assert parsed.unlock(b"correct horse") == key
    with pytest.raises(m.WrongPassphraseError, match="wrong passphrase for the secret key"):
        parsed.unlock(b"wrong", name="the secret key")
    with pytest.raises(FormatError, match="no passphrase"):
        parsed.unlock(None)
    with pytest.raises(FormatError, match="empty passphrase"):
        key.to_text(b"")


def test_unencrypted_secret_key_checks_integrity():
    key = make_key()
    text = key.to_text(None)
    raw = bytearray(base64.b64decode(text.splitlines()[1]))
    assert raw[:6] == b"Ed\0\0B2" and not any(raw[6:54])
    assert m.SecretKeyFile.parse(text).unlock(None) == key
    zeroed = bytes(raw[:126]) + bytes(32)  # minisign -G -W writes no checksum
    assert m.SecretKeyFile.parse(b"c\n" + base64.b64encode(zeroed)).unlock(None) == key
    raw[70] ^= 1  # flip a bit of the seed
    with pytest.raises(FormatError, match="checksum mismatch"):
        m.SecretKeyFile.parse(b"c\n" + base64.b64encode(bytes(raw))).unlock(None)
    damaged = bytearray(zeroed)
    damaged[70] ^= 1
    with pytest.raises(FormatError, match="public half"):
        m.SecretKeyFile.parse(b"c\n" + base64.b64encode(bytes(damaged))).unlock(None)


def test_hostile_kdf_limits_are_refused_before_deriving():
    raw = bytearray(base64.b64decode(make_key().to_text(b"pw", **CHEAP).splitlines()[1]))
    raw[38:54] = struct.pack("<QQ", 1 << 40, 1 << 40)
    with pytest.raises(FormatError, match="beyond what we accept"):
        m.SecretKeyFile.parse(b"c\n" + base64.b64encode(bytes(raw))).unlock(b"pw")


@pytest.mark.parametrize(
    "field, value", [(slice(0, 2), b"XX"), (slice(2, 4), b"Ar"), (slice(4, 6), b"S2")]
)
def test_secret_key_unsupported_algorithms(field, value):
    raw = bytearray(base64.b64decode(make_key().to_text(None).splitlines()[1]))
    raw[field] = value
    with pytest.raises(FormatError, match="unsupported"):
        m.SecretKeyFile.parse(b"c\n" + base64.b64encode(bytes(raw)))


def test_secret_key_repr_hides_the_seed():
    key = make_key()
    assert key.seed.hex() not in repr(key) and key.key_id_hex in repr(key)


# ------------------------------------------------------------------ against minisign


def test_minisign_accepts_our_signature_and_we_accept_its_own(tmp_path):
    require_tool("minisign")
    key = make_key()
    (tmp_path / "k.pub").write_text(key.public_key.to_text())
    (tmp_path / "data").write_bytes(DATA)
    (tmp_path / "data.minisig").write_bytes(key.sign(DATA, "timestamp:1\tfile:data"))
    out = run(["minisign", "-Vm", tmp_path / "data", "-p", tmp_path / "k.pub"])
    assert b"Trusted comment: timestamp:1\tfile:data" in out.stdout
    # minisign signs with our unencrypted key; we verify, prehashed and legacy (-l).
    (tmp_path / "k.key").write_text(key.to_text(None))
    for extra, alg in (([], "ED"), (["-l"], "Ed")):
        sig = tmp_path / f"m{alg}.minisig"
        run(
            ["minisign", "-S", *extra, "-s", tmp_path / "k.key", "-m", tmp_path / "data", "-x", sig]
        )
        assert m.verify(DATA, sig.read_bytes(), [key.public_key]).algorithm == alg


@pytest.mark.parametrize(
    "limits",
    [CHEAP, {"opslimit": 1 << 20, "memlimit": 1 << 30}, {"opslimit": 1 << 20, "memlimit": 1 << 24}],
)
def test_minisign_decrypts_our_encrypted_key(tmp_path, limits):
    """Both pickparams branches and p > 1: a wrong N/r/p reads as a wrong password there."""
    require_tool("minisign")
    key = make_key()
    (tmp_path / "k.key").write_text(key.to_text(b"pass phrase", **limits))
    (tmp_path / "data").write_bytes(DATA)
    run(
        ["minisign", "-S", "-s", tmp_path / "k.key", "-m", tmp_path / "data"],
        input=b"pass phrase\n",
    )
    assert m.verify(DATA, (tmp_path / "data.minisig").read_bytes(), [key.public_key])
    bad = run(
        ["minisign", "-S", "-s", tmp_path / "k.key", "-m", tmp_path / "data", "-x", tmp_path / "x"],
        input=b"nope\n",
        check=False,
    )
    assert bad.returncode != 0 and b"Wrong password" in bad.stdout + bad.stderr


def test_we_read_a_minisign_generated_unencrypted_key(tmp_path):
    require_tool("minisign")
    run(["minisign", "-G", "-W", "-p", tmp_path / "m.pub", "-s", tmp_path / "m.key"])
    public = m.PublicKey.parse((tmp_path / "m.pub").read_text())
    # minisign prints the id with %PRIX64 (no leading zeros); compare the numbers
    shown = (tmp_path / "m.pub").read_text().splitlines()[0].split()[-1]
    assert int(shown, 16) == int(public.key_id_hex, 16)
    secret = m.SecretKeyFile.parse((tmp_path / "m.key").read_text())
    assert not secret.encrypted
    assert secret.unlock(None).public_key == public
