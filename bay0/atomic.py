"""Atomic file replacement: temp file in the same directory, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bay0.errors import ExistsError


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a complete, fsynced ``tmp`` into place (never clobbering unless ``overwrite``)."""
    try:
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError as e:
                raise ExistsError(f"{target} already exists") from e
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent if str(target.parent) else Path("."))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and move it into place.

    For large outputs written by tools or in streams. On any exception the temp file
    is removed and ``path`` is untouched. Raises ``ExistsError`` (before any work) when
    ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise ExistsError(f"{target} already exists")
    directory = target.parent if str(target.parent) else Path(".")
    tmp = directory / f".{target.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, target, overwrite)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one.

    Raises ``ExistsError`` when ``path`` exists and ``overwrite`` is false. With
    ``overwrite`` false the final step is ``link`` + ``unlink`` rather than ``rename``,
    so a file created concurrently is never clobbered.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not overwrite and target.exists():
        raise ExistsError(f"{target} already exists")
    tmp = directory / f".{target.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    _publish(tmp, target, overwrite)
    return target
