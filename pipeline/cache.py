"""The artifact cache: build outputs keyed by the digest of everything that made them.

A key is ``<kind>:<sha256 of the canonical JSON of the inputs>``: the recipe digest,
package checksums, tool versions, the bay0 source digest, ... Whatever changes an
input changes the key, so an entry is never stale, only unused; a size bound evicts the
least recently used. Values are files (streamed in and out by ``diskcache``) or small
JSON documents.

Layout: ``cache_dir()/artifacts`` (this module); the Alpine reader keeps its downloads in
``cache_dir()/alpine`` and the Debian fetcher in ``cache_dir()/debian``. ``cache_info`` and
``clear_cache`` cover all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from bay0.atomic import atomic_output
from bay0.errors import CacheError
from pipeline.paths import cache_dir

DEFAULT_SIZE_LIMIT = 8 * 1024**3  # whole Spine images are a few tens of MiB each
ARTIFACTS = "artifacts"


def digest_inputs(inputs: Any) -> str:
    """sha256 (hex) of the canonical JSON form of ``inputs`` (sorted keys, compact)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_tree(root: Path) -> str:
    """sha256 over the relative paths, modes, link targets and contents of a tree.

    ``__pycache__`` directories are skipped: they are outputs, not sources.
    """
    digest = hashlib.sha256()
    entries = [root] if root.is_file() else sorted(root.rglob("*"))
    for path in entries:
        if "__pycache__" in path.parts:
            continue
        rel = path.name if path == root else path.relative_to(root).as_posix()
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreInfo:
    name: str
    directory: Path
    entries: int
    size_bytes: int


@dataclass(frozen=True)
class CacheInfo:
    directory: Path
    stores: tuple[StoreInfo, ...]
    size_limit: int

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self.stores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "size_bytes": self.size_bytes,
            "size_limit": self.size_limit,
            "stores": [{"name": s.name, "directory": str(s.directory), "entries": s.entries,
                        "size_bytes": s.size_bytes} for s in self.stores],
        }


class ArtifactCache:
    """A size-bounded, least-recently-used store of build artifacts.

    Raises ``CacheError`` when the cache directory cannot be opened or written.
    """

    def __init__(self, directory: Path | None = None, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir() / ARTIFACTS
        self.size_limit = size_limit
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit,
                                          eviction_policy="least-recently-used")
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"cannot open the cache at {self.directory}: {e}",
                             "check its permissions, or set SPINE_CACHE to another directory") from e

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> ArtifactCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def key(kind: str, inputs: Any) -> str:
        return f"{kind}:{digest_inputs(inputs)}"

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error, diskcache.Timeout) as e:
            raise CacheError(f"cache {action} failed in {self.directory}: {e}",
                             "run `spinectl cache clear`, or set SPINE_CACHE elsewhere") from e

    def has(self, key: str) -> bool:
        with self._guard("lookup"):
            return key in self._cache

    def get_file(self, key: str, dest: Path, *, overwrite: bool = True) -> bool:
        """Copy the cached file for ``key`` to ``dest`` (atomically); False when absent."""
        with self._guard("read"):
            handle = self._cache.get(key, read=True)
            if handle is None:
                return False
            with handle, atomic_output(dest, overwrite=overwrite) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(handle, out, 8 << 20)
        return True

    def put_file(self, key: str, src: Path) -> None:
        """Store a copy of the file ``src`` under ``key``."""
        kind = key.split(":", 1)[0]
        with self._guard("write"), open(src, "rb") as f:
            self._cache.set(key, f, read=True, tag=kind)

    def get_json(self, key: str) -> Any:
        with self._guard("read"):
            raw = self._cache.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any) -> None:
        kind = key.split(":", 1)[0]
        with self._guard("write"):
            self._cache.set(key, json.dumps(value, sort_keys=True), tag=kind)

    def clear(self) -> int:
        with self._guard("clear"):
            return self._cache.clear()


def _dir_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            files += 1
            size += p.stat().st_size
    return files, size


def _store_stats(directory: Path) -> tuple[int, int]:
    try:
        with diskcache.Cache(str(directory)) as store:
            return len(store), store.volume()
    except (OSError, sqlite3.Error) as e:
        raise CacheError(f"cannot read the cache store {directory}: {e}", "run `spinectl cache clear`") from e


def cache_info(root: Path | None = None) -> CacheInfo:
    """Describe every store under the cache directory (entries, bytes on disk)."""
    base = Path(root) if root is not None else cache_dir()
    stores = []
    if base.is_dir():
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            if (sub / "cache.db").exists():
                entries, size = _store_stats(sub)
            else:
                entries, size = _dir_size(sub)
            stores.append(StoreInfo(sub.name, sub, entries, size))
    return CacheInfo(base, tuple(stores), DEFAULT_SIZE_LIMIT)


def clear_cache(root: Path | None = None) -> int:
    """Empty every store under the cache directory; return the number of entries removed."""
    base = Path(root) if root is not None else cache_dir()
    removed = 0
    if not base.is_dir():
        return 0
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            if (sub / "cache.db").exists():
                # Opened without settings so another store's own size limit is kept.
                with diskcache.Cache(str(sub)) as store:
                    removed += store.clear()
            else:
                removed += _dir_size(sub)[0]
                shutil.rmtree(sub)
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"cannot clear {sub}: {e}", "check its permissions") from e
    return removed
