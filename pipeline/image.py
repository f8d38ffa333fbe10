"""Pod (persona) images: a reproducible squashfs with its dm-verity tree appended.

Identity = the verity root hash + salt (plus size and file sha256). The salt is
derived from the squashfs bytes, so building the same tree twice gives the same file.
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuid_mod
from pathlib import Path

from bay0.atomic import atomic_output
from bay0.errors import FormatError, NotFoundError
from bay0.formats.verity import ImageIdentity, VerityParams
from pipeline import verity
from pipeline.squashfs import make_squashfs, padded, squashfs_bytes_used

SALT_DOMAIN = b"alpine-spine verity salt v1\0"
READ_CHUNK = 8 * 1024 * 1024


def file_sha256(path: str | os.PathLike[str], *, limit: int | None = None) -> str:
    """sha256 of the first ``limit`` bytes of ``path`` (all when None)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = f.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


def derive_salt(squashfs_path: Path) -> tuple[bytes, str]:
    """A deterministic salt and verity UUID from the squashfs content."""
    digest = hashlib.sha256(SALT_DOMAIN)
    with open(squashfs_path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    salt = digest.digest()
    return salt, str(uuid_mod.UUID(bytes=hashlib.sha256(b"uuid\0" + salt).digest()[:16], version=4))


def seal(squashfs_path: Path) -> VerityParams:
    """Pad ``squashfs_path`` to 4 KiB and append its verity tree in place."""
    size = squashfs_path.stat().st_size
    if size != padded(size):
        with open(squashfs_path, "r+b") as f:
            f.truncate(padded(size))
    salt, uuid = derive_salt(squashfs_path)
    return verity.append_tree(squashfs_path, salt=salt, uuid=uuid)


def identity_of(path: Path, params: VerityParams) -> ImageIdentity:
    return ImageIdentity(
        size=path.stat().st_size,
        sha256=file_sha256(path),
        data_size=params.data_size,
        hash_offset=params.hash_offset,
        root_hash=params.root_hash,
        salt=params.salt,
    )


def build_image(
    src_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    all_root: bool = True,
    epoch: int | None = None,
) -> ImageIdentity:
    """Build a pod image from ``src_dir`` at ``out``; nothing is left at ``out`` on failure.

    Raises ``ExistsError`` (no ``force``), ``NotFoundError``, ``ToolError``.
    """
    with atomic_output(out, overwrite=force) as tmp:
        make_squashfs(src_dir, tmp, epoch=epoch, all_root=all_root)
        params = seal(tmp)
        identity = identity_of(tmp, params)
    return identity


def read_params(path: str | os.PathLike[str], *, offset: int = 0) -> VerityParams:
    """Verity parameters of an image at ``offset`` in ``path`` (file or device).

    The data size comes from the squashfs superblock, the rest from the verity
    superblock after it; the root hash is recomputed from the top hash block.
    Raises ``FormatError`` for anything that is not a sealed image.
    """
    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"{p} does not exist", "check the path")
    with open(p, "rb") as f:
        f.seek(offset)
        header = f.read(96)
    data_size = padded(squashfs_bytes_used(header))
    try:
        return verity.read_superblock(p, data_size, offset=offset)
    except FormatError as e:
        raise FormatError(f"{p}: squashfs without a verity tree ({e.message})",
                          "build images with spinectl image build") from e


def read_identity(path: str | os.PathLike[str]) -> ImageIdentity:
    """Identity of a pod image file: size, sha256 and its verity parameters."""
    p = Path(path)
    params = read_params(p)
    return identity_of(p, params)
