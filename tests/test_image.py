"""Pod images and Spine artifacts against the real mksquashfs, veritysetup and minisign."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bay0.errors import (
    BadSignatureError,
    CorruptionError,
    ExistsError,
    FormatError,
    NotFoundError,
    UnknownKeyError,
)
from bay0.formats import minisign
from bay0.formats.spine import FOOTER_SIZE
from pipeline import image, spine
from tests.conftest import require_tool


def make_tree(root: Path, salt: str = "") -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n" + salt)
    os.chmod(root / "bin" / "hello", 0o755)
    (root / "etc" / "motd").write_text("persona\n" * 1000)
    (root / "bin" / "sh").symlink_to("hello")
    big = os.urandom(300_000)
    (root / "etc" / "blob").write_bytes(big)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    require_tool("mksquashfs", "veritysetup")
    return make_tree(tmp_path / "tree")


@pytest.fixture(scope="module")
def key() -> minisign.SecretKey:
    return minisign.SecretKey.generate()


def test_build_is_reproducible_and_veritysetup_accepts_it(tree: Path, tmp_path: Path) -> None:
    a = image.build_image(tree, tmp_path / "a.img")
    os.utime(tree / "etc" / "motd", (1, 1))  # mtimes must not matter
    b = image.build_image(tree, tmp_path / "b.img")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    assert a == b
    assert a.hash_offset == a.data_size and a.data_size % 4096 == 0
    subprocess.run(
        ["veritysetup", "verify", tmp_path / "a.img", tmp_path / "a.img", a.root_hash,
         f"--hash-offset={a.hash_offset}"],
        check=True, capture_output=True,
    )
    assert image.read_identity(tmp_path / "a.img") == a


def test_source_date_epoch_sets_the_times(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = image.build_image(tree, tmp_path / "a.img")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    b = image.build_image(tree, tmp_path / "b.img")
    assert a.root_hash != b.root_hash


def test_changed_content_changes_identity(tree: Path, tmp_path: Path) -> None:
    a = image.build_image(tree, tmp_path / "a.img")
    (tree / "etc" / "motd").write_text("changed\n")
    b = image.build_image(tree, tmp_path / "b.img")
    assert a.root_hash != b.root_hash and a.salt != b.salt


def test_build_refuses_to_overwrite_and_leaves_nothing_on_failure(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.img"
    image.build_image(tree, out)
    before = out.read_bytes()
    with pytest.raises(ExistsError):
        image.build_image(tree, out)
    assert out.read_bytes() == before
    with pytest.raises(NotFoundError):
        image.build_image(tmp_path / "missing", tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_read_identity_rejects_non_images(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(FormatError, match="not a squashfs"):
        image.read_identity(junk)


def test_spine_pack_open_and_verify(tree: Path, tmp_path: Path, key: minisign.SecretKey) -> None:
    out = tmp_path / "x.spine"
    art = spine.pack(tree, out, version="2026.11.0", secret_key=key,
                     contents=[{"name": "busybox", "version": "1.36.1-r19"}], epoch=1700000000)
    opened = spine.open_spine(out, [key.public_key])
    assert opened.manifest == art.manifest
    assert opened.signer == key.public_key.key_id_hex
    spine.verify_image(opened)
    # The image part is a plain verity image that veritysetup accepts at offset 0.
    img = tmp_path / "slot.img"
    with open(out, "rb") as f:
        img.write_bytes(f.read(opened.image_size))
    v = opened.verity
    subprocess.run(["veritysetup", "verify", img, img, v.root_hash, f"--hash-offset={v.hash_offset}"],
                   check=True, capture_output=True)
    # Reproducible.
    again = spine.pack(tree, tmp_path / "y.spine", version="2026.11.0", secret_key=key,
                       contents=[{"name": "busybox", "version": "1.36.1-r19"}], epoch=1700000000)
    assert again.manifest == art.manifest
    assert (tmp_path / "y.spine").read_bytes() == out.read_bytes()


def test_manifest_signature_checked_with_stock_minisign(tree: Path, tmp_path: Path, key) -> None:
    require_tool("minisign")
    out = tmp_path / "x.spine"
    spine.pack(tree, out, version="1.0", secret_key=key)
    footer, body, signature = spine.read_trailer(out)
    (tmp_path / "manifest.json").write_bytes(body)
    (tmp_path / "manifest.json.minisig").write_bytes(signature)
    (tmp_path / "k.pub").write_text(key.public_key.to_text())
    subprocess.run(["minisign", "-Vm", tmp_path / "manifest.json", "-p", tmp_path / "k.pub"],
                   check=True, capture_output=True)


def _tamper(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_spine_tampering_is_refused(tree: Path, tmp_path: Path, key) -> None:
    out = tmp_path / "x.spine"
    art = spine.pack(tree, out, version="1.0", secret_key=key)
    other = minisign.SecretKey.generate()
    with pytest.raises(UnknownKeyError):
        spine.open_spine(out, [other.public_key])
    # Manifest byte changed: the signature fails before any field is used.
    bad = tmp_path / "bad.spine"
    shutil.copy(out, bad)
    _tamper(bad, art.image_size + 10)
    with pytest.raises((BadSignatureError, FormatError)):
        spine.open_spine(bad, [key.public_key])
    # Image byte changed: the signature still verifies, the verity check names the block.
    bad2 = tmp_path / "bad2.spine"
    shutil.copy(out, bad2)
    _tamper(bad2, 4096 * 3 + 7)
    opened = spine.open_spine(bad2, [key.public_key])
    with pytest.raises(CorruptionError, match="block 3"):
        spine.verify_image(opened)
    # Truncated, and not a Spine at all.
    trunc = tmp_path / "trunc.spine"
    trunc.write_bytes(out.read_bytes()[:-1])
    with pytest.raises(FormatError):
        spine.open_spine(trunc, [key.public_key])
    junk = tmp_path / "junk.spine"
    junk.write_bytes(b"x" * (FOOTER_SIZE + 10))
    with pytest.raises(FormatError, match="not a Spine"):
        spine.open_spine(junk, [key.public_key])


def test_cli_image_build_and_info(tree: Path, tmp_path: Path, spinectl) -> None:
    out = tmp_path / "pod.img"
    r = spinectl("image", "build", str(tree), "-o", str(out), "--json")
    assert r.code == 0, r.err
    r = spinectl("image", "info", str(out), "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert {"size", "sha256", "data_size", "hash_offset", "root_hash", "salt"} <= info.keys()
    assert info["size"] == out.stat().st_size
    r = spinectl("image", "build", str(tree), "-o", str(out))
    assert r.code == 5 and "already exists" in r.err and len(r.err.strip().splitlines()) == 1


def test_cli_spine_pack_info_verify(tree: Path, tmp_path: Path, spinectl, monkeypatch) -> None:
    monkeypatch.setenv("SPINE_KEY_PASSPHRASE", "correct horse")
    keydir = tmp_path / "keys"
    assert spinectl("keys", "generate", "--name", "op", "--dir", str(keydir)).code == 0
    out = tmp_path / "x.spine"
    r = spinectl("spine", "pack", str(tree), "--version", "2026.11.1",
                 "--key", str(keydir / "op.key"), "-o", str(out))
    assert r.code == 0, r.err
    r = spinectl("image", "info", str(out), "--pubkey", str(keydir / "op.pub"), "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["kind"] == "spine" and info["spine_version"] == "2026.11.1"
    assert {"size", "sha256", "data_size", "hash_offset", "root_hash", "salt"} <= info.keys()
    assert spinectl("spine", "verify", str(out), "--pubkey", str(keydir)).code == 0
    other = tmp_path / "other"
    assert spinectl("keys", "generate", "--name", "x", "--dir", str(other)).code == 0
    r = spinectl("image", "info", str(out), "--pubkey", str(other / "x.pub"))
    assert r.code == 4, r.err
