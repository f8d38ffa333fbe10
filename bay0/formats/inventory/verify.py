"""Verification of a received inventory and of attached pod images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bay0.errors import ExpiredError, IdentityMismatchError, RollbackError
from bay0.formats.inventory._base import IDENTITY_FIELDS
from bay0.formats.inventory.document import Inventory, parse_inventory
from bay0.formats.inventory.persona import Persona

# --- verification ------------------------------------------------------------------


def verify_signed(
    data: bytes, signature: bytes, trusted_keys: Sequence[Any], *, floor: int, now: int
) -> tuple[Inventory, Any]:
    """Like ``verify_inventory`` but also return minisign's ``Verified`` (key id, comment)."""
    from bay0.formats import minisign  # the signature module (a sibling format)

    verified = minisign.verify(data, signature, trusted_keys)
    inventory = parse_inventory(data, require_canonical=True)
    if inventory.version < floor:
        raise RollbackError(
            f"inventory version {inventory.version} is below the accepted floor {floor}",
            "deploy an inventory signed later (spinectl inventory sign bumps the version)",
        )
    if now >= inventory.expires:
        raise ExpiredError(
            f"inventory version {inventory.version} expired at {inventory.expires} (now {now})",
            "re-sign it: spinectl inventory sign FILE --key KEY --expires-days N",
        )
    return inventory, verified


def verify_inventory(
    data: bytes, signature: bytes, trusted_keys: Sequence[Any], *, floor: int, now: int
) -> Inventory:
    """Verify the inventory bytes exactly as received, then parse and police them.

    Order: signature over ``data`` (``BadSignatureError``, ``UnknownKeyError``,
    ``FormatError`` for a malformed signature), canonical form and schema
    (``FormatError``/``ValidationError``), ``version >= floor`` (``RollbackError``),
    ``now < expires`` (``ExpiredError``). ``now`` is seconds since the epoch.
    Images are checked separately with ``check_identity`` once they are attached.
    """
    return verify_signed(data, signature, trusted_keys, floor=floor, now=now)[0]


def check_identity(
    persona: Persona, identity: Any, *, fields: Sequence[str] = IDENTITY_FIELDS
) -> None:
    """Raise ``IdentityMismatchError`` naming the first field of ``identity`` that differs.

    ``identity`` is an ``ImageIdentity`` (or any object with those attributes); pass
    ``fields=O1_IDENTITY_FIELDS`` when the sha256 of the file was not computed.
    """
    for name in fields:
        expected = getattr(persona.image, name)
        actual = getattr(identity, name)
        if isinstance(actual, bytes):
            actual = actual.hex()
        if isinstance(expected, str) and isinstance(actual, str):
            actual = actual.lower()
        if actual != expected:
            raise IdentityMismatchError(
                f"persona {persona.name}: image {name} differs: "
                f"inventory has {expected}, image has {actual}",
                "deploy the pod the inventory names, or update the entry "
                "(spinectl inventory update --image) and re-sign",
            )
