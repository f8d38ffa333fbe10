"""Filesystem steps of extraction, confined to a target root.

Paths from a package are resolved inside the root the way a chroot would see
them: an absolute symlink already in the tree (``/bin/sh -> /bin/busybox``,
``lib64 -> /lib``) points into the root, never at the host.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from bay0.errors import FormatError

MAX_LINKS = 40


def clean_member_name(name: str, what: str) -> str:
    """``./usr/bin/x`` -> ``usr/bin/x``; refuses ``..`` and empty names (FormatError)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise FormatError(f"{what}: unsafe path {name!r} in the data tar")
    return "/".join(parts)


def resolve_dir(root: Path, rel: str, *, create_mode: int = 0o755,
                created: list[Path] | None = None) -> Path:
    """The host path of directory ``rel`` inside ``root``, following symlinks in-root.

    Missing directories are created (mode ``create_mode``) and appended to ``created``.
    """
    current = root
    pending = [p for p in rel.split("/") if p]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                raise FormatError(f"too many symlinks resolving /{rel} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            pending = [p for p in target.split("/") if p and p != "."] + pending
            continue
        if not candidate.exists():
            candidate.mkdir(mode=create_mode)
            os.chmod(candidate, create_mode)
            if created is not None:
                created.append(candidate)
        elif not candidate.is_dir():
            raise FormatError(f"/{posixpath.join(rel)} needs a directory, but {candidate} is not one")
        current = candidate
    return current


def remove_nondir(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()


def set_owner_mode_time(path: Path, uid: int, gid: int, mode: int | None, mtime: int | None,
                        *, chown: bool) -> None:
    """chown first (it clears setuid bits), then chmod, then mtime; never follows symlinks."""
    if chown:
        os.chown(path, uid, gid, follow_symlinks=False)
    if mode is not None and not path.is_symlink():
        os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def read_ids(root: Path, name: str) -> dict[str, int]:
    """name -> id from the target's /etc/passwd or /etc/group (empty when absent)."""
    path = root / "etc" / name
    ids: dict[str, int] = {}
    if path.is_file() and not path.is_symlink():
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                ids.setdefault(fields[0], int(fields[2]))
    return ids
