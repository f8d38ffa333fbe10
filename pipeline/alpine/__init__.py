"""Pure-Python Alpine (apk v2) repository reader: indexes, signatures, resolver, installer.

See docs/implementation/alpine.md. Typical use::

    repos = open_repositories([RepositorySpec.mirror(root, "v3.19", "main")], keys_dir)
    packages = repos.resolve(["alpine-baselayout", "busybox"])
    result = install(packages, target_root, world=["alpine-baselayout", "busybox"])
"""

from __future__ import annotations

from pipeline.alpine.cache import ApkCache
from pipeline.alpine.deps import Dependency, Provide, parse_dependency
from pipeline.alpine.errors import MissingDependencyError, PackageConflictError, UnknownPackageError
from pipeline.alpine.install import InstalledPackage, InstalledSet, install
from pipeline.alpine.package import Package
from pipeline.alpine.repository import RepoSet, Repository, open_repositories
from pipeline.alpine.source import DEFAULT_MIRROR, RepositorySpec
from pipeline.alpine.version import compare as compare_versions

__all__ = [
    "ApkCache", "DEFAULT_MIRROR", "Dependency", "InstalledPackage", "InstalledSet",
    "MissingDependencyError", "Package", "PackageConflictError", "Provide", "RepoSet",
    "Repository", "RepositorySpec", "UnknownPackageError", "compare_versions", "install",
    "open_repositories", "parse_dependency",
]
