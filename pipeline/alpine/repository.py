"""Opened repositories: verified indexes, package lookup, verified package fetch."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bay0.errors import NotFoundError
from pipeline.alpine.apk import VerifiedApk, verify_apk
from pipeline.alpine.cache import ApkCache
from pipeline.alpine.index import Index, read_index
from pipeline.alpine.keys import Keyring
from pipeline.alpine.package import Package
from pipeline.alpine.source import RepositorySpec, is_url, join, read_location

INDEX_MAX_AGE = 3600.0  # seconds a downloaded APKINDEX is reused without asking the mirror


@dataclass
class Repository:
    """One opened repository: its spec, its verified index, and how to fetch its packages."""

    spec: RepositorySpec
    index: Index | None = None
    keyring: Keyring | None = field(default=None, repr=False)
    cache: ApkCache | None = field(default=None, repr=False)

    @property
    def packages(self) -> tuple[Package, ...]:
        return self.index.packages if self.index else ()

    def load(self, *, refresh: bool = False) -> None:
        """Read and verify the index (from the cache for a remote mirror, if fresh)."""
        data = None
        if self.spec.remote and self.cache and not refresh:
            data = self.cache.get_index(self.spec.index, INDEX_MAX_AGE)
        if data is None:
            data = read_location(self.spec.index, f"index of {self.spec.name}")
        self.index = read_index(data, self.keyring, where=self.spec.name, repository=self)
        if self.spec.present_only:
            present = _local_files(self.spec.package_dirs)
            kept = tuple(p for p in self.index.packages if p.filename in present)
            self.index = dataclasses.replace(self.index, packages=kept)
        if self.spec.remote and self.cache:
            self.cache.put_index(self.spec.index, data)

    def raw_bytes(self, pkg: Package) -> bytes:
        """The .apk bytes of ``pkg``: cache, then each package location in turn.

        Raises ``NotFoundError`` naming every place that was tried.
        """
        key = "apk:" + pkg.checksum
        if self.cache and (data := self.cache.get(key)) is not None:
            return data
        tried = []
        for location in self.spec.package_dirs:
            where = join(location, pkg.filename)
            if not is_url(where) and not Path(where).is_file():
                tried.append(where)
                continue
            try:
                data = read_location(where, f"package {pkg.nv}")
            except NotFoundError:
                tried.append(where)
                continue
            if self.cache and is_url(where):
                self.cache.put(key, data)
            return data
        raise NotFoundError(f"package {pkg.nv} is in the index of {self.spec.name} but not at "
                            + ", ".join(tried), "add the directory that holds it to package_dirs")

    def fetch(self, pkg: Package) -> VerifiedApk:
        """The verified contents of ``pkg`` (signature, C:, datahash checked); cached."""
        key = f"verified:{pkg.checksum}:{keyring_digest(self.keyring)}"
        if self.cache and (hit := self.cache.get(key)) is not None:
            return hit
        verified = verify_apk(self.raw_bytes(pkg), self.keyring, name=pkg.name,
                              version=pkg.version, expected_checksum=pkg.checksum)
        if self.cache:
            self.cache.put(key, verified)
        return verified


def _local_files(locations: Sequence[str]) -> set[str]:
    names: set[str] = set()
    for location in locations:
        if not is_url(location) and Path(location).is_dir():
            names.update(item.name for item in Path(location).iterdir())
    return names


def keyring_digest(keyring: Keyring) -> str:
    return hashlib.sha256("\n".join(sorted(keyring.keys)).encode()).hexdigest()[:16]


class RepoSet:
    """Several repositories searched in order (earlier wins a tie)."""

    def __init__(self, repositories: Sequence[Repository]) -> None:
        self.repositories = list(repositories)
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[tuple[Package, str | None]]] = {}
        for repo in self.repositories:
            for pkg in repo.packages:
                self.by_name.setdefault(pkg.name, []).append(pkg)
                for provide in pkg.provides:
                    self.providers.setdefault(provide.name, []).append((pkg, provide.version))

    @property
    def packages(self) -> list[Package]:
        return [pkg for repo in self.repositories for pkg in repo.packages]

    def find(self, name: str) -> Package | None:
        """The newest package called ``name`` (no provides), or None."""
        from pipeline.alpine.resolve import newest

        candidates = self.by_name.get(name)
        return newest(candidates) if candidates else None

    def resolve(self, names: Iterable[str]) -> list[Package]:
        """Resolve world atoms (``busybox``, ``musl>=1.2``, ``!foo``) to an install order.

        Raises ``UnknownPackageError``, ``MissingDependencyError`` or
        ``PackageConflictError`` with a one-line message naming the package.
        """
        from pipeline.alpine.resolve import resolve

        return resolve(self, list(names))

    def fetch(self, pkg: Package) -> VerifiedApk:
        return pkg.repository.fetch(pkg)


def open_repositories(specs: Iterable[RepositorySpec], keys_dir: str | Path,
                      cache: ApkCache | None | bool = None, *, refresh: bool = False) -> RepoSet:
    """Open and verify each repository's index.

    ``cache=None`` uses ``ApkCache()`` (``pipeline.paths.cache_dir()/alpine``);
    ``cache=False`` disables caching. Raises what ``read_index`` and
    ``read_location`` raise (``UnknownKeyError``, ``BadSignatureError``,
    ``NotFoundError``, ``ToolError``, ``FormatError``).
    """
    keyring = Keyring.load(keys_dir)
    store = ApkCache() if cache is None else (cache or None)
    repos = []
    for spec in specs:
        repo = Repository(spec, keyring=keyring, cache=store)
        repo.load(refresh=refresh)
        repos.append(repo)
    return RepoSet(repos)
