"""Constants and small checkers shared by the inventory schema modules."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bay0.errors import ValidationError

FORMAT = "spine-inventory/1"
FORMAT_MAJOR = 1
MAX_DOCUMENT_BYTES = 1 << 20  # bounds what bay0 parses before trusting anything

# Names bay0's seccomp code maps to syscall allowlists (bay0/seccomp owns the lists).
SECCOMP_PROFILES: Mapping[str, str] = {
    "default": "a general service: files, memory, time, signals, threads, AF_UNIX sockets",
    "network-service": "default plus AF_INET/AF_INET6 sockets (connect, bind, listen, accept)",
    "batch": "a compute job: default without sockets of any family",
}
RESTART_POLICIES = ("never", "on-failure", "always")
EGRESS_PROTOCOLS = ("tcp", "udp")
# Top-level directories of /persist that hold bay0's own state; no persona mounts them.
RESERVED_PERSIST_DIRS = frozenset({"spine", "bay0", "pods", "inventory", "logs"})
# bay0 builds these itself inside every persona; a bind mount must not cover them.
RESERVED_TARGETS = ("/proc", "/dev", "/sys")

# Identity fields as pipeline.image.read_identity reports them. bay0 compares the
# O(1) subset (verity superblock + file size) at launch; spinectl checks them all.
IDENTITY_FIELDS = ("size", "sha256", "data_size", "hash_offset", "root_hash", "salt")
O1_IDENTITY_FIELDS = ("size", "data_size", "hash_offset", "root_hash", "salt")

BLOCK = 4096
CPU_PERIOD_DEFAULT = 100_000
CPU_PERIOD_RANGE = (1_000, 1_000_000)  # kernel limits for cpu.max period (microseconds)
CPU_QUOTA_MIN = 1_000  # kernel minimum quota (1 ms)
MEMORY_MIN = 1 << 20
PIDS_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit
ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid
MAX_RESTARTS = 1000
MAX_BACKOFF = 86_400

NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")
SOURCE_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")
TARGET_PART_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,255}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
SALT_RE = re.compile(r"(?:[0-9a-f]{2}){0,256}")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CPU_MAX_RE = re.compile(r"([1-9][0-9]{0,12}) ([1-9][0-9]{0,7})")

_REHINT = "fix the entry with spinectl inventory update, or edit and re-sign"


# --- helpers ---------------------------------------------------------------------


def _fail(where: str, problem: str, hint: str = _REHINT) -> None:
    raise ValidationError(f"{where}: {problem}", hint)


@contextlib.contextmanager
def context(prefix: str) -> Iterator[None]:
    """Prefix validation errors raised inside with ``prefix`` (e.g. ``persona web``)."""
    try:
        yield
    except ValidationError as e:
        raise ValidationError(f"{prefix}: {e.message}", e.hint) from e


def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int:
        _fail(where, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        _fail(where, f"{value} is outside {low}..{high}")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from non-UTF-8 argv
        _fail(where, f"{value!r} is not valid Unicode text", "use UTF-8 text")
    if pattern is not None and not pattern.fullmatch(value):
        _fail(where, f"{value!r} is not {what}")
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        _fail(where, f"must be true or false, not {type(value).__name__}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"must be an object, not {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, f"must be a list, not {type(value).__name__}")
    return value


def _split(
    data: Any, where: str, required: Sequence[str], optional: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (known fields, unknown fields); a missing required field is an error."""
    obj = _object(data, where)
    for name in required:
        if name not in obj:
            _fail(where, f"{name} is missing", "add the field (spinectl writes every field)")
    known = set(required) | set(optional)
    return (
        {k: v for k, v in obj.items() if k in known},
        {k: v for k, v in obj.items() if k not in known},
    )


def _with_extra(extra: Mapping[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    return {**extra, **known}
