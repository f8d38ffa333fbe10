"""Pure verity format code: superblock bytes, tree geometry, levels, parameter records."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bay0.errors import FormatError
from bay0.formats import verity as v

SALT = bytes(range(32))
UUID = "11111111-2222-4333-8444-555555555555"
ROOT = "ab" * 32


def sb(**kw) -> v.Superblock:
    return v.Superblock(**{"uuid": UUID, "data_blocks": 129, "salt": SALT, **kw})


def test_superblock_fields_sit_where_veritysetup_puts_them() -> None:
    block = v.pack_superblock(sb())
    assert len(block) == 4096 and block[512:] == bytes(3584)
    assert block[0:8] == b"verity\0\0"
    assert struct.unpack_from("<II", block, 8) == (1, 1)  # version, hash type
    assert block[16:32] == bytes.fromhex(UUID.replace("-", ""))
    assert block[32:64] == b"sha256".ljust(32, b"\0")
    assert struct.unpack_from("<IIQH", block, 64) == (4096, 4096, 129, 32)
    assert block[88:120] == SALT and block[120:512] == bytes(392)


@given(
    blocks=st.integers(1, 2**64 - 1),
    salt=st.binary(max_size=256),
    uuid=st.uuids().map(str),
)
def test_superblock_round_trips(blocks: int, salt: bytes, uuid: str) -> None:
    record = sb(data_blocks=blocks, salt=salt, uuid=uuid)
    assert v.parse_superblock(v.pack_superblock(record)) == record


def _patched(offset: int, fmt: str, value) -> bytes:
    block = bytearray(v.pack_superblock(sb()))
    struct.pack_into(fmt, block, offset, value)
    return bytes(block)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"verity\0\0" + bytes(100), "superblock is 108 bytes"),
        (_patched(0, "8s", b"VERITY\0\0"), "no verity superblock"),
        (_patched(8, "<I", 2), "superblock version 2"),
        (_patched(12, "<I", 0), "hash type 0"),
        (_patched(32, "32s", b"sha1"), "algorithm 'sha1'"),
        (_patched(64, "<I", 512), "block sizes 512/4096"),
        (_patched(68, "<I", 1024), "block sizes 4096/1024"),
        (_patched(72, "<Q", 0), "zero data blocks"),
        (_patched(80, "<H", 257), "salt size 257"),
    ],
)
def test_bad_superblocks_are_named(block: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        v.parse_superblock(block)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (sb(salt=bytes(257)), "salt is 257 bytes"),
        (sb(uuid="not-a-uuid"), "not a UUID"),
        (sb(data_blocks=0), "out of range"),
        (sb(algorithm="sha512"), "algorithm"),
    ],
)
def test_unpackable_superblocks_are_refused(record: v.Superblock, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        v.pack_superblock(record)


@pytest.mark.parametrize(
    ("blocks", "sizes", "starts"),
    [
        (1, (), ()),
        (2, (1,), (1,)),
        (128, (1,), (1,)),  # exactly one full hash block
        (129, (2, 1), (2, 1)),
        (128 * 128, (128, 1), (2, 1)),
        (128 * 128 + 1, (129, 2, 1), (4, 2, 1)),
        (262144, (2048, 16, 1), (18, 2, 1)),  # 1 GiB: veritysetup reports 2065 hash blocks
    ],
)
def test_geometry_matches_veritysetup(blocks: int, sizes: tuple, starts: tuple) -> None:
    geometry = v.tree_geometry(blocks)
    assert (geometry.level_blocks, geometry.level_starts) == (sizes, starts)
    assert geometry.area_size == 4096 * (1 + sum(sizes))


@given(st.integers(2, 2**64 - 1))
def test_geometry_invariants(blocks: int) -> None:
    g = v.tree_geometry(blocks)
    below = blocks
    for size in g.level_blocks:  # each level holds exactly enough hashes for the one below
        assert size == -(-below // 128)
        below = size
    assert g.level_blocks[-1] == 1
    assert g.levels == 1 or g.level_blocks[-2] > 1  # no redundant top level
    # Top level first, right after the superblock, levels contiguous.
    assert g.level_starts[-1] == 1
    for i in range(g.levels - 1):
        assert g.level_starts[i] == g.level_starts[i + 1] + g.level_blocks[i + 1]


@pytest.mark.parametrize("blocks", [0, 2**64])
def test_geometry_refuses_impossible_counts(blocks: int) -> None:
    with pytest.raises(FormatError, match="out of range"):
        v.tree_geometry(blocks)


def test_hash_blocks_prepends_the_salt() -> None:
    data = bytes(4096) + b"\1" * 4096
    expected = b"".join(hashlib.sha256(SALT + data[i : i + 4096]).digest() for i in (0, 4096))
    assert v.hash_blocks(data, SALT) == expected
    with pytest.raises(FormatError, match="whole number"):
        v.hash_blocks(bytes(100), SALT)


def test_single_block_root_is_its_digest() -> None:
    block = b"\7" * 4096
    digest = v.hash_blocks(block, SALT)
    assert v.build_levels(digest, SALT) == []
    assert v.tree_root(digest, [], SALT) == hashlib.sha256(SALT + block).hexdigest()


@settings(max_examples=30)
@given(blocks=st.integers(1, 600), salt=st.binary(max_size=64))
def test_levels_chain_up_to_the_root(blocks: int, salt: bytes) -> None:
    digests = hashlib.sha256(str(blocks).encode()).digest() * blocks  # any digests will do
    levels = v.build_levels(digests, salt)
    g = v.tree_geometry(blocks)
    assert [len(level) // 4096 for level in levels] == list(g.level_blocks)
    below = digests
    for level in levels:  # every level is its child digests, zero-padded to whole blocks
        assert level[: len(below)] == below and not any(level[len(below) :])
        below = v.hash_blocks(level, salt)
    root = v.tree_root(digests, levels, salt)
    assert root == (below.hex() if levels else digests.hex())
    area = v.assemble_hash_area(sb(data_blocks=blocks, salt=salt), levels)
    assert len(area) == g.area_size


def test_first_mismatch() -> None:
    a = bytes(32 * 5)
    assert v.first_mismatch(a, a) is None
    assert v.first_mismatch(a, a[:64] + b"\1" + a[65:]) == 2
    assert v.first_mismatch(a, a[:64]) == 2


def params(**kw) -> v.VerityParams:
    base = {"data_size": 8192, "hash_offset": 8192, "root_hash": ROOT, "salt": SALT.hex()}
    return v.VerityParams(**{**base, "uuid": UUID, **kw})


def test_params_round_trip_and_defaults() -> None:
    p = params()
    assert p.data_blocks == 2 and p.salt_bytes == SALT
    assert p.to_dict()["algorithm"] == "sha256" and p.to_dict()["data_block_size"] == 4096
    assert v.VerityParams.from_dict({**p.to_dict(), "future_field": 1}) == p


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"data_size": 0}, "data_size 0"),
        ({"data_size": 4097, "hash_offset": 8192}, "data_size 4097"),
        ({"data_size": True}, "non-negative integer"),
        ({"hash_offset": 4096}, "hash_offset 4096"),
        ({"hash_offset": 8193}, "hash_offset 8193"),
        ({"root_hash": "AB" * 32}, "root_hash"),
        ({"root_hash": "ab" * 31}, "root_hash"),
        ({"salt": "xyz"}, "salt 'xyz'"),
        ({"salt": "00" * 257}, "salt is 257 bytes"),
        ({"uuid": "nope"}, "not a UUID"),
        ({"algorithm": "sha1"}, "algorithm 'sha1'"),
        ({"data_block_size": 512}, "block sizes"),
    ],
)
def test_bad_params_are_named(kw: dict, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        params(**kw)


def test_params_from_dict_names_missing_fields() -> None:
    d = params().to_dict()
    del d["root_hash"], d["uuid"]
    with pytest.raises(FormatError, match="missing: root_hash, uuid"):
        v.VerityParams.from_dict(d)
    with pytest.raises(FormatError, match="expected an object"):
        v.VerityParams.from_dict(["data_size"])  # type: ignore[arg-type]


def test_image_identity() -> None:
    ident = v.ImageIdentity(
        size=16384, sha256="cd" * 32, data_size=8192, hash_offset=8192, root_hash=ROOT, salt="00"
    )
    assert v.ImageIdentity.from_dict(ident.to_dict()) == ident
    with pytest.raises(FormatError, match="sha256"):
        v.ImageIdentity.from_dict({**ident.to_dict(), "sha256": "x"})
    with pytest.raises(FormatError, match="no room"):
        v.ImageIdentity.from_dict({**ident.to_dict(), "size": 8192})
    with pytest.raises(FormatError, match="missing: salt"):
        v.ImageIdentity.from_dict({k: x for k, x in ident.to_dict().items() if k != "salt"})
