"""The one table that maps errors to exit codes (documented in docs/implementation/cli.md)."""

from __future__ import annotations

from bay0 import errors as e

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Most specific first: the first class in an error's MRO found here wins.
EXIT_CODES: dict[type[e.SpineError], int] = {
    e.UsageError: 2,
    e.ValidationError: 3,
    e.FormatError: 3,
    e.BadSignatureError: 4,
    e.UnknownKeyError: 4,
    e.RollbackError: 4,
    e.ExpiredError: 4,
    e.IdentityMismatchError: 4,
    e.CorruptionError: 4,
    e.VerificationError: 4,
    e.ExistsError: 5,
    e.NotFoundError: 6,
    e.ToolError: 7,
    e.DiskError: 8,
    e.SlotStateError: 9,
    e.CacheError: 10,
    e.DependencyError: 11,
    e.StorageError: 12,
    e.SpineError: 1,
}

EXIT_TABLE = [
    (0, "success"),
    (1, "internal error (a bug: rerun with --debug and report it)"),
    (2, "usage: bad or contradictory options, or the operator declined"),
    (3, "format: input does not parse or breaks its schema"),
    (4, "verification: bad signature, unknown key, rollback, expired, identity mismatch, corruption"),
    (5, "exists: refusing to overwrite without --force"),
    (6, "not found: a file, device or entry that does not exist"),
    (7, "tool: a system tool is missing or failed"),
    (8, "disk: no Spine layout, too small, mounted, read-only or system disk"),
    (9, "slot state: the operation would break the A/B contract"),
    (10, "cache: the artifact cache is unusable"),
    (11, "dependency: an unknown package, a missing dependency or conflicting packages"),
    (12, "storage: the host's disk is full or failing (nothing half-written was left)"),
    (130, "interrupted"),
]


def exit_code_for(error: BaseException) -> int:
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_INTERNAL
