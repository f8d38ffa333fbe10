"""Errors of the Alpine reader: subclasses of the shared hierarchy in bay0.errors.

Each names the package (or index) it is about in a single line.
"""

from __future__ import annotations

from bay0.errors import DependencyError


class UnknownPackageError(DependencyError):
    """A requested name that no repository provides."""

    default_hint = "check the spelling, or add the repository that has it"


class MissingDependencyError(DependencyError):
    """A dependency that no package in the repositories satisfies."""

    default_hint = "add the repository (or package directory) that provides it"


class PackageConflictError(DependencyError):
    """Two requested or required packages exclude each other."""

    default_hint = "drop one of the conflicting packages from the recipe"
