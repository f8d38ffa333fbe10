"""Where things are: the project root, the shared fixtures, the cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """The shared fixtures directory: ``$SPINE_SHARED`` or ``../shared`` beside the project.

    Returns None when neither exists (a user's own machine): callers then use a mirror.
    """
    override = os.environ.get("SPINE_SHARED")
    candidate = Path(override) if override else PROJECT_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


def alpine_fixtures() -> Path | None:
    shared = shared_dir()
    if shared is None:
        return None
    path = shared / "fixtures" / "alpine"
    return path if path.is_dir() else None


def cache_dir() -> Path:
    """``$SPINE_CACHE`` or ``$XDG_CACHE_HOME/alpine-spine`` (``~/.cache/alpine-spine``)."""
    override = os.environ.get("SPINE_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alpine-spine"


def trust_keys_dir() -> Path:
    return PROJECT_ROOT / "keys"
