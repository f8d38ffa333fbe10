"""dm-verity hash trees, format 1 (the layout `veritysetup format` writes), as pure code.

One verity image file is ``data || superblock block || hash levels``; this module
knows the bytes (superblock, geometry, level hashing, root hash) and takes only
bytes and values. Reading and writing files lives in ``pipeline.verity``.

Only what Alpine Spine uses is supported: hash type 1 (salt prepended), sha256,
4096-byte data and hash blocks, superblock version 1. See
``docs/implementation/format-verity.md``.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid as uuid_module
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bay0.errors import FormatError

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE  # 128: digests pack without per-block padding
ALGORITHM = "sha256"
MAGIC = b"verity\0\0"
SUPERBLOCK_VERSION = 1
HASH_TYPE = 1  # 1 = "normal" (salt || block); 0 is the Chrome OS variant (block || salt)
SUPERBLOCK_SIZE = 512
MAX_SALT_SIZE = 256

# struct verity_sb from cryptsetup lib/verity/verity.c, little-endian, packed.
_SB = struct.Struct("<8sII16s32sIIQH6s256s168s")
assert _SB.size == SUPERBLOCK_SIZE

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True)
class Superblock:
    """The fields of a verity superblock that this format pins or records."""

    uuid: str
    data_blocks: int
    salt: bytes
    algorithm: str = ALGORITHM
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE


def pack_superblock(sb: Superblock) -> bytes:
    """Return the on-disk superblock block: 512 bytes of ``verity_sb``, zero-padded to 4096.

    Raises ``FormatError`` for values the format cannot hold.
    """
    _check_supported(sb.algorithm, sb.data_block_size, sb.hash_block_size)
    _check_salt(sb.salt)
    if not 0 < sb.data_blocks < 2**64:
        raise FormatError(f"verity data block count {sb.data_blocks} is out of range")
    packed = _SB.pack(
        MAGIC,
        SUPERBLOCK_VERSION,
        HASH_TYPE,
        _uuid_bytes(sb.uuid),
        sb.algorithm.encode("ascii"),
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        len(sb.salt),
        b"",
        sb.salt,
        b"",
    )
    return packed.ljust(BLOCK_SIZE, b"\0")


def parse_superblock(block: bytes) -> Superblock:
    """Parse the first 512 bytes of ``block`` as a verity superblock.

    Raises ``FormatError`` naming the first field that is wrong or unsupported.
    """
    if len(block) < SUPERBLOCK_SIZE:
        raise FormatError(f"verity superblock is {len(block)} bytes, expected {SUPERBLOCK_SIZE}")
    (magic, version, hash_type, raw_uuid, raw_alg, dbs, hbs, data_blocks, salt_size, _, salt, _) = (
        _SB.unpack_from(block)
    )
    hint = "is this the hash offset of a verity image made by veritysetup or spinectl?"
    if magic != MAGIC:
        raise FormatError(f"no verity superblock (magic {magic!r})", hint)
    if version != SUPERBLOCK_VERSION:
        raise FormatError(f"unsupported verity superblock version {version}", hint)
    if hash_type != HASH_TYPE:
        raise FormatError(f"unsupported verity hash type {hash_type} (only 1 is supported)", hint)
    if salt_size > MAX_SALT_SIZE:
        raise FormatError(f"verity salt size {salt_size} exceeds {MAX_SALT_SIZE}", hint)
    algorithm = raw_alg.rstrip(b"\0").decode("ascii", errors="replace")
    _check_supported(algorithm, dbs, hbs)
    if data_blocks == 0:
        raise FormatError("verity superblock records zero data blocks", hint)
    return Superblock(
        uuid=str(uuid_module.UUID(bytes=raw_uuid)),
        data_blocks=data_blocks,
        salt=salt[:salt_size],
        algorithm=algorithm,
        data_block_size=dbs,
        hash_block_size=hbs,
    )


@dataclass(frozen=True)
class Geometry:
    """Where the hash levels sit, in blocks counted from ``hash_offset``.

    Block 0 of the hash area is the superblock. ``level_blocks[i]`` is the size of
    level ``i`` (level 0 hashes the data) and ``level_starts[i]`` its first block;
    like veritysetup, the top level comes first on disk and level 0 last.
    """

    data_blocks: int
    level_blocks: tuple[int, ...]
    level_starts: tuple[int, ...]

    @property
    def levels(self) -> int:
        return len(self.level_blocks)

    @property
    def hash_blocks(self) -> int:
        """Hash blocks after the superblock (what veritysetup reports as "Hash blocks")."""
        return sum(self.level_blocks)

    @property
    def area_size(self) -> int:
        """Bytes from ``hash_offset`` to the end of the tree, superblock included."""
        return (1 + self.hash_blocks) * BLOCK_SIZE

    def level_range(self, level: int) -> tuple[int, int]:
        """Byte range ``(start, end)`` of ``level`` relative to ``hash_offset``."""
        start = self.level_starts[level] * BLOCK_SIZE
        return start, start + self.level_blocks[level] * BLOCK_SIZE


def tree_geometry(data_blocks: int) -> Geometry:
    """Compute the level sizes and positions veritysetup uses for ``data_blocks``.

    A single data block has no levels: its salted hash is the root hash itself.
    Raises ``FormatError`` for a count of zero or beyond 2**64.
    """
    if not 0 < data_blocks < 2**64:
        raise FormatError(f"verity data block count {data_blocks} is out of range")
    bits = HASHES_PER_BLOCK.bit_length() - 1
    levels = 0
    while bits * levels < 64 and (data_blocks - 1) >> (bits * levels):  # as the kernel does
        levels += 1
    sizes = [_ceil_shift(data_blocks, bits * (i + 1)) for i in range(levels)]
    starts = [0] * levels
    position = 1  # block 0 is the superblock
    for i in reversed(range(levels)):
        starts[i] = position
        position += sizes[i]
    return Geometry(data_blocks, tuple(sizes), tuple(starts))


def hash_blocks(data: bytes | bytearray | memoryview, salt: bytes) -> bytes:
    """Return sha256(salt || block) of every 4096-byte block of ``data``, concatenated.

    This loop is the whole cost of a verity tree, so it does the minimum per block:
    copy a context already fed with the salt, update with a view, keep the digest.
    Raises ``FormatError`` if ``data`` is not a whole number of blocks.
    """
    view = memoryview(data).cast("B")
    if len(view) % BLOCK_SIZE:
        raise FormatError(f"{len(view)} bytes is not a whole number of {BLOCK_SIZE}-byte blocks")
    copy = hashlib.sha256(salt).copy
    out = []
    append = out.append
    for i in range(0, len(view), BLOCK_SIZE):
        h = copy()
        h.update(view[i : i + BLOCK_SIZE])
        append(h.digest())
    return b"".join(out)


def pad_level(digests: bytes) -> bytes:
    """Pack digests into hash blocks: 128 per block, the last block zero-filled."""
    return digests + bytes(-len(digests) % BLOCK_SIZE)


def build_levels(level0_digests: bytes, salt: bytes) -> list[bytes]:
    """Return every level's blocks (index 0 = level 0) given the digests of all data blocks.

    With one data block there are no levels (see ``tree_geometry``).
    Raises ``FormatError`` when the digests are not whole.
    """
    if not level0_digests or len(level0_digests) % DIGEST_SIZE:
        raise FormatError(f"{len(level0_digests)} bytes is not a whole number of digests")
    levels: list[bytes] = []
    digests = level0_digests
    while len(digests) > DIGEST_SIZE:
        level = pad_level(digests)
        levels.append(level)
        digests = hash_blocks(level, salt)
    return levels


def root_hash_of(top: bytes, salt: bytes) -> str:
    """Root hash (hex) from the single top block: the top hash block, or the only data block."""
    if len(top) != BLOCK_SIZE:
        raise FormatError(f"a verity top block is {BLOCK_SIZE} bytes, got {len(top)}")
    return hashlib.sha256(salt + bytes(top)).hexdigest()


def tree_root(level0_digests: bytes, levels: list[bytes], salt: bytes) -> str:
    """Root hash (hex) of a tree built by ``build_levels``.

    With no levels the one data block's digest is the root hash already.
    """
    if not levels:
        return bytes(level0_digests).hex()
    return root_hash_of(levels[-1], salt)


def assemble_hash_area(sb: Superblock, levels: list[bytes]) -> bytes:
    """The bytes from ``hash_offset`` on: superblock block, then the levels top first.

    Raises ``FormatError`` if ``levels`` does not fit the geometry of ``sb.data_blocks``.
    """
    geometry = tree_geometry(sb.data_blocks)
    if [len(b) // BLOCK_SIZE for b in levels] != list(geometry.level_blocks):
        raise FormatError("verity levels do not match the data block count")
    return pack_superblock(sb) + b"".join(reversed(levels))


def first_mismatch(actual: bytes, expected: bytes | memoryview) -> int | None:
    """Index of the first differing 32-byte digest, or None when all match."""
    if actual == expected:
        return None
    for i, (a, e) in enumerate(zip(_digests(actual), _digests(expected), strict=False)):
        if a != e:
            return i
    return min(len(actual), len(expected)) // DIGEST_SIZE


def _digests(data: bytes | memoryview) -> Iterator[bytes | memoryview]:
    view = memoryview(data)
    return (view[i : i + DIGEST_SIZE] for i in range(0, len(view), DIGEST_SIZE))


@dataclass(frozen=True, kw_only=True)
class VerityParams:
    """What a reader needs to check a verity image: sizes, salt and the root hash.

    Raises ``FormatError`` at construction when a value is malformed or unsupported.
    """

    data_size: int
    hash_offset: int
    root_hash: str
    salt: str
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    algorithm: str = ALGORITHM
    uuid: str

    def __post_init__(self) -> None:
        _check_supported(self.algorithm, self.data_block_size, self.hash_block_size)
        _check_tree_fields(self.data_size, self.hash_offset, self.root_hash, self.salt)
        _uuid_bytes(self.uuid)

    @property
    def data_blocks(self) -> int:
        return self.data_size // self.data_block_size

    @property
    def salt_bytes(self) -> bytes:
        return bytes.fromhex(self.salt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_size": self.data_size,
            "hash_offset": self.hash_offset,
            "root_hash": self.root_hash,
            "salt": self.salt,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "algorithm": self.algorithm,
            "uuid": self.uuid,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerityParams:
        """Build from ``to_dict`` output; unknown keys are ignored. Raises ``FormatError``."""
        required = ("data_size", "hash_offset", "root_hash", "salt", "uuid")
        return cls(**_pick(d, required, ("data_block_size", "hash_block_size", "algorithm")))


@dataclass(frozen=True)
class ImageIdentity:
    """How an inventory or manifest names a verity image file.

    Raises ``FormatError`` at construction when a value is malformed.
    """

    size: int
    sha256: str
    data_size: int
    hash_offset: int
    root_hash: str
    salt: str

    def __post_init__(self) -> None:
        _check_int("size", self.size)
        if not isinstance(self.sha256, str) or not _HEX64.fullmatch(self.sha256):
            raise FormatError(f"image sha256 {self.sha256!r} is not 64 lowercase hex digits")
        _check_tree_fields(self.data_size, self.hash_offset, self.root_hash, self.salt)
        if self.size < self.hash_offset + BLOCK_SIZE:
            raise FormatError(f"image size {self.size} leaves no room for the verity tree")

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "data_size": self.data_size,
            "hash_offset": self.hash_offset,
            "root_hash": self.root_hash,
            "salt": self.salt,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageIdentity:
        """Build from ``to_dict`` output; unknown keys are ignored. Raises ``FormatError``."""
        required = ("size", "sha256", "data_size", "hash_offset", "root_hash", "salt")
        return cls(**_pick(d, required, ()))


def _pick(d: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(d, Mapping):
        raise FormatError(f"expected an object of verity fields, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        raise FormatError(f"verity fields missing: {', '.join(missing)}")
    return {k: d[k] for k in required + optional if k in d}


def _check_tree_fields(data_size: int, hash_offset: int, root_hash: str, salt: str) -> None:
    _check_int("data_size", data_size)
    _check_int("hash_offset", hash_offset)
    if data_size <= 0 or data_size % BLOCK_SIZE:
        raise FormatError(f"verity data_size {data_size} is not a positive multiple of 4096")
    if hash_offset < data_size or hash_offset % BLOCK_SIZE:
        raise FormatError(f"verity hash_offset {hash_offset} must be 4096-aligned and >= data_size")
    if not isinstance(root_hash, str) or not _HEX64.fullmatch(root_hash):
        raise FormatError(f"verity root_hash {root_hash!r} is not 64 lowercase hex digits")
    if not isinstance(salt, str) or not _HEX.fullmatch(salt):
        raise FormatError(f"verity salt {salt!r} is not lowercase hex")
    _check_salt(bytes.fromhex(salt))


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{name} must be a non-negative integer, got {value!r}")


def _check_supported(algorithm: str, data_block_size: int, hash_block_size: int) -> None:
    if algorithm != ALGORITHM:
        raise FormatError(f"unsupported verity hash algorithm {algorithm!r} (only sha256)")
    if data_block_size != BLOCK_SIZE or hash_block_size != BLOCK_SIZE:
        raise FormatError(
            f"unsupported verity block sizes {data_block_size}/{hash_block_size} (only 4096)"
        )


def _check_salt(salt: bytes) -> None:
    if len(salt) > MAX_SALT_SIZE:
        raise FormatError(f"verity salt is {len(salt)} bytes, at most {MAX_SALT_SIZE} fit")


def _uuid_bytes(text: str) -> bytes:
    try:
        return uuid_module.UUID(text).bytes
    except (ValueError, TypeError, AttributeError) as e:
        raise FormatError(f"verity uuid {text!r} is not a UUID") from e


def _ceil_shift(value: int, shift: int) -> int:
    return (value + (1 << shift) - 1) >> shift
