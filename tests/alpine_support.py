"""Shared helpers for the tests/test_alpine_*.py files (fixtures imported by name)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.alpine import RepositorySpec, open_repositories

MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"


def iso_spec(alpine: Path) -> RepositorySpec:
    return RepositorySpec.local(alpine / "v3.19/iso-repo/x86_64/APKINDEX.tar.gz", name="iso-repo")


def main_spec(alpine: Path) -> RepositorySpec:
    return RepositorySpec.local(alpine / "v3.19/index/main/x86_64/APKINDEX.tar.gz",
                                [alpine / "v3.19/extra/x86_64", alpine / "v3.19/iso-repo/x86_64"],
                                name="main")


@pytest.fixture(scope="session")
def iso_repos(alpine):
    return open_repositories([iso_spec(alpine)], alpine / "keys", cache=False)


@pytest.fixture(scope="session")
def main_repos(alpine):
    return open_repositories([main_spec(alpine)], alpine / "keys", cache=False)


@contextmanager
def exec_dir(tmp_path_factory, name: str) -> Iterator[Path]:
    """A scratch directory on a filesystem that allows exec (for chroot runs).

    pytest's base temp may sit on a small ``noexec`` tmpfs at /tmp; then the
    directory goes to /var/tmp and is removed afterwards.
    """
    path = tmp_path_factory.mktemp(name)
    if not os.statvfs(path).f_flag & os.ST_NOEXEC:
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=f"spine-{name}-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def minirootfs(alpine, tmp_path_factory) -> Iterator[Path]:
    """The official 3.19.4 minirootfs, extracted once per session (owners need root)."""
    with exec_dir(tmp_path_factory, "minirootfs") as root:
        with tarfile.open(alpine / MINIROOTFS) as tar:
            tar.extractall(root, filter="fully_trusted")
        yield root


def stanzas(text: str) -> dict[str, str]:
    """installed-db stanzas by package name."""
    result = {}
    for stanza in text.split("\n\n"):
        if stanza.strip():
            name = next(line[2:] for line in stanza.splitlines() if line.startswith("P:"))
            result[name] = stanza
    return result


def tar_bytes(entries) -> bytes:
    """A tar from (TarInfo, content-or-None) pairs."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()
