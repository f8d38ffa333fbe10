"""Pack and open Spine artifacts (format in bay0/formats/spine.py).

``pack`` turns any root directory into a signed ``.spine``; ``open_spine`` verifies
the manifest signature before it trusts a single field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bay0.atomic import atomic_output
from bay0.errors import CorruptionError, FormatError, NotFoundError
from bay0.formats import minisign
from bay0.formats.spine import (
    FOOTER_SIZE,
    Footer,
    Manifest,
    build_id_for,
    pack_footer,
    parse_footer,
)
from bay0.formats.verity import VerityParams
from pipeline import verity
from pipeline.image import file_sha256, seal
from pipeline.squashfs import make_squashfs, source_date_epoch


@dataclass(frozen=True)
class SpineArtifact:
    """A Spine whose manifest signature has been verified."""

    path: Path
    manifest: Manifest
    footer: Footer
    signer: str  # key id (hex) of the key that signed the manifest

    @property
    def image_size(self) -> int:
        return self.footer.image_size

    @property
    def verity(self) -> VerityParams:
        return VerityParams.from_dict(self.manifest.verity)


def trusted_comment(manifest: Manifest, key_id: str) -> str:
    """The signed comment of a manifest signature (format-spine.md)."""
    return (f"timestamp:{manifest.created}\tfile:spine-manifest\t"
            f"spine:{manifest.spine_version}\tbuild:{manifest.build_id}\tkey:{key_id}")


def append_signed_manifest(image: Path, manifest: Manifest, secret_key: minisign.SecretKey) -> Footer:
    """Sign ``manifest`` and append it, its signature and the footer to the sealed ``image``."""
    body = manifest.to_bytes()
    signature = secret_key.sign(body, trusted_comment(manifest, secret_key.public_key.key_id_hex))
    footer = Footer(manifest.image_size, len(body), len(signature))
    with open(image, "ab") as f:
        f.write(body + signature + pack_footer(footer))
    return footer


def pack(
    rootfs_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    version: str,
    secret_key: minisign.SecretKey,
    contents: Sequence[dict[str, Any]] = (),
    alpine_release: str = "",
    recipe_digest: str = "",
    extra: dict[str, Any] | None = None,
    force: bool = False,
    epoch: int | None = None,
) -> SpineArtifact:
    """Build a signed Spine from ``rootfs_dir``; nothing is left at ``out`` on failure.

    Owners in the tree are kept (the Spine is a whole OS); times are fixed.
    Raises ``ExistsError``, ``NotFoundError``, ``ToolError``, ``ValidationError``.
    """
    created = source_date_epoch() if epoch is None else epoch
    with atomic_output(out, overwrite=force) as tmp:
        make_squashfs(rootfs_dir, tmp, epoch=created, all_root=False)
        params = seal(tmp)
        image_size = tmp.stat().st_size
        manifest = Manifest(
            spine_version=version,
            build_id=build_id_for(params.root_hash, version, recipe_digest),
            image_size=image_size,
            image_sha256=file_sha256(tmp),
            verity=params.to_dict(),
            created=created,
            alpine_release=alpine_release,
            recipe_digest=recipe_digest,
            contents=tuple(contents),
            extra=dict(extra or {}),
        )
        footer = append_signed_manifest(tmp, manifest, secret_key)
    return SpineArtifact(Path(out), manifest, footer, secret_key.public_key.key_id_hex)


def read_trailer(path: Path) -> tuple[Footer, bytes, bytes]:
    """Footer, manifest bytes and signature bytes of a Spine file (unverified)."""
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist or is not a file", "check the path")
    size = path.stat().st_size
    if size < FOOTER_SIZE:
        raise FormatError(f"{path} is not a Spine artifact (too short)", "check the path")
    with open(path, "rb") as f:
        f.seek(size - FOOTER_SIZE)
        footer = parse_footer(f.read(FOOTER_SIZE), size)
        f.seek(footer.image_size)
        body = f.read(footer.manifest_size)
        signature = f.read(footer.signature_size)
    return footer, body, signature


def open_spine(path: str | os.PathLike[str], trusted: Sequence[minisign.PublicKey]) -> SpineArtifact:
    """Open ``path`` and verify its manifest signature against ``trusted`` keys.

    Raises ``FormatError`` (not a Spine, truncated), ``BadSignatureError``,
    ``UnknownKeyError``, ``ValidationError``.
    """
    p = Path(path)
    footer, body, signature = read_trailer(p)
    verified = minisign.verify(body, signature, trusted)
    manifest = Manifest.from_bytes(body)
    if manifest.image_size != footer.image_size:
        raise FormatError(f"{p}: footer and signed manifest disagree on the image size",
                          "the file was altered; rebuild or copy it again")
    return SpineArtifact(p, manifest, footer, verified.key_id_hex)


def verify_image(
    artifact: SpineArtifact,
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check every block of the artifact's image against the signed verity root hash.

    Raises ``CorruptionError`` naming the block. (Slots on a disk are checked while they
    are written: ``pipeline.disk.writeverify``.)
    """
    try:
        verity.verify_image(artifact.path, artifact.verity, progress=progress)
    except CorruptionError as e:
        raise CorruptionError(f"{artifact.path}: {e.message}", e.hint) from e
