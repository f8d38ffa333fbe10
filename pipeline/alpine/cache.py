"""A diskcache-backed store for downloads and verified, inflated packages.

Keys are content identities, never paths: ``apk:<Q1 checksum>`` for the raw
bytes of a downloaded package, ``verified:<Q1>:<keyring digest>`` for the
result of verifying it (.PKGINFO, scripts, inflated data tar), and
``index:<url>`` for a downloaded APKINDEX (with its fetch time). diskcache keeps
its entries in SQLite with transactions, so two builds may share one cache
directory at the same time: a reader sees a whole value or none.
"""

from __future__ import annotations

import time
from pathlib import Path

import diskcache

from bay0.errors import CacheError
from pipeline.paths import cache_dir

DEFAULT_SIZE_LIMIT = 4 * 1024**3


class ApkCache:
    """Download and verification cache. ``ApkCache()`` uses ``cache_dir()/alpine``."""

    def __init__(self, directory: str | Path | None = None, *,
                 size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = Path(directory) if directory else cache_dir() / "alpine"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit)
        except (OSError, diskcache.core.Timeout) as e:
            raise CacheError(f"cannot open the Alpine cache at {self.directory}: {e}",
                             "check the permissions, or set SPINE_CACHE elsewhere") from e

    def get(self, key: str):
        try:
            return self._cache.get(key, default=None, retry=True)
        except (OSError, diskcache.core.Timeout) as e:
            raise CacheError(f"the Alpine cache at {self.directory} is unreadable: {e}") from e

    def put(self, key: str, value) -> None:
        try:
            self._cache.set(key, value, retry=True)
        except (OSError, diskcache.core.Timeout) as e:
            raise CacheError(f"cannot write the Alpine cache at {self.directory}: {e}") from e

    def get_index(self, url: str, max_age: float) -> bytes | None:
        entry = self.get("index:" + url)
        if entry is None or time.time() - entry[0] > max_age:
            return None
        return entry[1]

    def put_index(self, url: str, data: bytes) -> None:
        self.put("index:" + url, (time.time(), data))

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def volume(self) -> int:
        return self._cache.volume()

    def close(self) -> None:
        self._cache.close()
