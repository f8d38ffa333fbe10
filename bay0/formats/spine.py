"""The Spine artifact: one file per Spine release (format 1).

Layout (see docs/implementation/format-spine.md)::

    [ verity image: squashfs | superblock | hash tree ]   image_size bytes, from byte 0
    [ manifest: canonical JSON ]                           manifest_size bytes
    [ minisign signature of the manifest ]                 signature_size bytes
    [ footer: 64 bytes ]

The image part starts at byte 0 so it streams into a slot unchanged. Readers parse
the footer, verify the manifest signature, and only then trust any field; the
footer's sizes must agree with the signed manifest.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from bay0.errors import FormatError, ValidationError
from bay0.formats import canonical

FOOTER_MAGIC = b"SPINEART"
FOOTER_FORMAT = 1
FOOTER_SIZE = 64
_FOOTER = struct.Struct("<8sHHIQQQ")  # 40 bytes, then 24 bytes of sha256 over them
MANIFEST_FORMAT = "spine-manifest/1"
MAX_MANIFEST = 16 * 1024 * 1024
MAX_SIGNATURE = 4096

_HEX = re.compile(r"^[0-9a-f]+$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$")


@dataclass(frozen=True)
class Footer:
    image_size: int
    manifest_size: int
    signature_size: int

    @property
    def trailer_size(self) -> int:
        return self.manifest_size + self.signature_size + FOOTER_SIZE


def pack_footer(footer: Footer) -> bytes:
    head = _FOOTER.pack(FOOTER_MAGIC, FOOTER_FORMAT, 0, 0, footer.image_size,
                        footer.manifest_size, footer.signature_size)
    return head + hashlib.sha256(head).digest()[:24]


def parse_footer(data: bytes, file_size: int) -> Footer:
    """Parse the last 64 bytes of a Spine file of ``file_size`` bytes.

    Raises ``FormatError`` for a file that is not a Spine or is truncated.
    """
    hint = "check the path; build one with spinectl spine pack or spinectl build spine"
    if len(data) != FOOTER_SIZE or data[:8] != FOOTER_MAGIC:
        raise FormatError("not a Spine artifact (no SPINEART footer)", hint)
    if hashlib.sha256(data[:40]).digest()[:24] != data[40:]:
        raise FormatError("Spine artifact footer is corrupt", "copy the file again")
    _, fmt, _, _, image_size, manifest_size, signature_size = _FOOTER.unpack(data[:40])
    if fmt != FOOTER_FORMAT:
        raise FormatError(f"Spine artifact format {fmt} is not supported (this is {FOOTER_FORMAT})",
                          "use a spinectl that knows this format")
    footer = Footer(image_size, manifest_size, signature_size)
    if (
        manifest_size > MAX_MANIFEST
        or signature_size > MAX_SIGNATURE
        or image_size % 4096
        or image_size + footer.trailer_size != file_size
    ):
        raise FormatError("Spine artifact is truncated or its sizes disagree", "copy the file again")
    return footer


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValidationError(f"Spine manifest: {message}", "rebuild the Spine with spinectl")


@dataclass(frozen=True)
class Manifest:
    """The signed description of a Spine release. Unknown fields are kept in ``extra``."""

    spine_version: str
    build_id: str
    image_size: int
    image_sha256: str
    verity: dict[str, Any]
    created: int = 0
    alpine_release: str = ""
    recipe_digest: str = ""
    contents: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(_VERSION.match(self.spine_version)), f"bad version {self.spine_version!r}")
        _require(bool(_HEX.match(self.build_id)), "build_id must be hex")
        _require(self.image_size > 0 and self.image_size % 4096 == 0, "image_size must be 4 KiB aligned")
        _require(len(self.image_sha256) == 64 and bool(_HEX.match(self.image_sha256)), "bad image_sha256")
        for key in ("data_size", "hash_offset", "root_hash", "salt"):
            _require(key in self.verity, f"verity.{key} is missing")
        _require(self.verity["hash_offset"] >= self.verity["data_size"], "hash_offset before data end")
        _require(self.verity["hash_offset"] < self.image_size, "hash tree outside the image")
        for index, item in enumerate(self.contents):
            _require(isinstance(item, dict) and "name" in item, f"contents[{index}] needs a name")

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            format=MANIFEST_FORMAT,
            spine_version=self.spine_version,
            build_id=self.build_id,
            created=self.created,
            image={"size": self.image_size, "sha256": self.image_sha256, "verity": self.verity},
            alpine_release=self.alpine_release,
            recipe_digest=self.recipe_digest,
            contents=list(self.contents),
        )
        return doc

    def to_bytes(self) -> bytes:
        return canonical.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        """Build from a parsed document. Raises ``ValidationError`` naming the field."""
        _require(isinstance(doc, dict), "not an object")
        fmt = doc.get("format", "")
        _require(isinstance(fmt, str) and fmt.split("/")[0] == "spine-manifest", "not a Spine manifest")
        _require(fmt == MANIFEST_FORMAT, f"format {fmt!r} is not supported")
        known = {"format", "spine_version", "build_id", "created", "image", "alpine_release",
                 "recipe_digest", "contents"}
        image = doc.get("image")
        _require(isinstance(image, dict), "image is missing")
        try:
            return cls(
                spine_version=doc["spine_version"],
                build_id=doc["build_id"],
                image_size=image["size"],
                image_sha256=image["sha256"],
                verity=dict(image["verity"]),
                created=doc.get("created", 0),
                alpine_release=doc.get("alpine_release", ""),
                recipe_digest=doc.get("recipe_digest", ""),
                contents=tuple(doc.get("contents", ())),
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except (KeyError, TypeError) as e:
            raise ValidationError(f"Spine manifest: field {e} is missing or mistyped",
                                  "rebuild the Spine with spinectl") from e

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls.from_dict(canonical.loads(data))


def build_id_for(root_hash: str, spine_version: str, recipe_digest: str) -> str:
    """A deterministic build id: the same inputs always name the same build."""
    seed = f"{root_hash}\0{spine_version}\0{recipe_digest}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]
