"""Where indexes and packages come from: a local directory or an HTTP(S) mirror.

A repository is configured as one index location plus one or more package
locations; each location is a filesystem path or an ``http(s)://`` / ``file://``
URL, and both kinds go through the same code (``read_location``).
``RepositorySpec.mirror`` builds the official layout
``<root>/<branch>/<repo>/<arch>/{APKINDEX.tar.gz,<name>-<version>.apk}``.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bay0.errors import NotFoundError, ToolError

DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
HTTP_TIMEOUT = 60


def is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https", "file")


def join(location: str, name: str) -> str:
    if is_url(location):
        return location.rstrip("/") + "/" + urllib.parse.quote(name)
    return str(Path(location) / name)


@dataclass(frozen=True)
class RepositorySpec:
    """One repository: its index and the places its .apk files live."""

    index: str
    package_dirs: tuple[str, ...]
    name: str
    present_only: bool = False   # keep only index entries whose .apk is in a (local) dir

    @classmethod
    def mirror(cls, root: str | Path = DEFAULT_MIRROR, branch: str = "v3.19",
               repo: str = "main", arch: str = "x86_64") -> RepositorySpec:
        """The official layout under ``root`` (a mirror URL or a local copy of one)."""
        base = join(str(root), f"{branch}/{repo}/{arch}") if is_url(str(root)) \
            else str(Path(root) / branch / repo / arch)
        return cls(join(base, "APKINDEX.tar.gz"), (base,), f"{branch}/{repo}")

    @classmethod
    def local(cls, index: str | Path, package_dirs=(), name: str | None = None, *,
              present_only: bool = False) -> RepositorySpec:
        """An index file plus package directories. With no directories, the index's own.

        ``present_only`` hides index entries whose file is in none of the (local)
        directories, so a full index can be paired with a partial set of packages.
        """
        index = str(index)
        dirs = tuple(str(d) for d in package_dirs) or (index.rsplit("/", 1)[0],)
        return cls(index, dirs, name or index, present_only)

    @property
    def remote(self) -> bool:
        return is_url(self.index) and not self.index.startswith("file:")


def read_location(location: str, what: str) -> bytes:
    """Read a path or URL. Raises ``NotFoundError`` (absent) or ``ToolError`` (network)."""
    if not is_url(location):
        try:
            return Path(location).read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(f"{what}: {location} does not exist") from e
        except OSError as e:
            raise NotFoundError(f"{what}: cannot read {location}: {e.strerror}") from e
    request = urllib.request.Request(location, headers={"User-Agent": "alpine-spine"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFoundError(f"{what}: {location} does not exist (HTTP 404)") from e
        raise ToolError(f"{what}: {location}: HTTP {e.code}", "check the mirror URL") from e
    except (urllib.error.URLError, OSError) as e:
        if isinstance(getattr(e, "reason", None), FileNotFoundError):
            raise NotFoundError(f"{what}: {location} does not exist") from e
        raise ToolError(f"{what}: cannot fetch {location}: {getattr(e, 'reason', e)}",
                        "check the network or use a local mirror directory") from e
