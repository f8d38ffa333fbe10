"""The one shallow error hierarchy shared by bay0, the pipeline and spinectl.

Every error carries a one-line ``message`` that names the problem and a ``hint``
that names the fix. The CLI maps classes to exit codes in exactly one place
(``spinectl/errors.py``); bay0 logs them and decides (purge, reboot).
"""

from __future__ import annotations


class SpineError(Exception):
    """Base class: ``message`` names the problem, ``hint`` the fix."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(SpineError):
    """The operator asked for something contradictory or incomplete."""


class FormatError(SpineError):
    """Bytes that do not parse as the format they claim to be."""


class ValidationError(FormatError):
    """A document that parses but breaks a rule of its schema."""


class VerificationError(SpineError):
    """A signature, hash or identity check failed."""


class BadSignatureError(VerificationError):
    """The signature does not match the signed bytes or the trusted comment."""


class UnknownKeyError(VerificationError):
    """The signature was made by a key that is not trusted."""


class RollbackError(VerificationError):
    """A document older than the floor already accepted."""


class ExpiredError(VerificationError):
    """A document past its ``expires`` time."""


class IdentityMismatchError(VerificationError):
    """An image whose size, sha256 or verity root hash differs from its record."""


class CorruptionError(VerificationError):
    """Data that fails its hash tree or checksum (names the first bad block)."""


class ExistsError(SpineError):
    """Refusing to overwrite an existing key, signature or document."""

    default_hint = "pass --force to replace it, or choose another path"


class NotFoundError(SpineError):
    """A file, device or entry that does not exist."""


class ToolError(SpineError):
    """An external tool is missing or failed."""


class DiskError(SpineError):
    """A disk that lacks the layout, is too small, mounted, or read-only."""


class SlotStateError(SpineError):
    """A slot operation that would break the A/B contract (active slot, empty slot)."""


class CacheError(SpineError):
    """The artifact cache is unusable."""


class DependencyError(SpineError):
    """Packages that cannot be resolved: unknown names, missing dependencies, conflicts."""


class StorageError(SpineError):
    """The host's own storage failed us (disk full, I/O error) while writing an output."""
