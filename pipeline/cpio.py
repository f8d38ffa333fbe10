"""Reproducible cpio "newc" archives (the format the Linux kernel unpacks as an initramfs).

The same tree always gives the same bytes: members are sorted by name, inode numbers are
assigned in that order, owners are 0:0 and every mtime is one fixed value
(``SOURCE_DATE_EPOCH`` or 0). Hard links share an inode number; the data travels with the
first name only and the later names carry size 0 (the kernel's unpacker and GNU cpio both
accept that). Device nodes can be added without root (``/dev/console`` must exist before
/init runs, or the kernel starts init without a console).
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bay0.errors import FormatError, NotFoundError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` for regular files, ``target`` for symlinks."""

    name: str
    mode: int
    data: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    link_group: object = None  # members with the same non-None group are hard links

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or ".." in self.name.split("/"):
            raise FormatError(f"bad cpio member name {self.name!r}", "use a relative path without '..'")


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int], name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + _pad4(len(head))


def default_mtime() -> int:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


def pack(entries: Iterable[Entry], *, mtime: int | None = None) -> bytes:
    """Return the newc archive of ``entries`` (sorted by name), trailer included.

    Raises ``FormatError`` on duplicate names.
    """
    mtime = default_mtime() if mtime is None else mtime
    ordered = sorted(entries, key=lambda e: e.name.encode())
    names = [e.name for e in ordered]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise FormatError(f"duplicate cpio members: {', '.join(dupes[:3])}", "give every member one name")
    nlinks: dict[object, int] = {}
    for e in ordered:
        if e.link_group is not None:
            nlinks[e.link_group] = nlinks.get(e.link_group, 0) + 1
    inodes: dict[object, int] = {}
    out = bytearray()
    next_ino = 1
    for e in ordered:
        body = e.target.encode() if stat.S_ISLNK(e.mode) else e.data
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        if e.link_group is not None:
            nlink = nlinks[e.link_group]
            if e.link_group in inodes:
                ino, body = inodes[e.link_group], b""  # data went with the first name
            else:
                ino = inodes[e.link_group] = next_ino
                next_ino += 1
        else:
            ino = next_ino
            next_ino += 1
        out += _header(ino, e.mode, nlink, mtime, len(body), e.rdev, e.name.encode())
        out += body + _pad4(len(body))
    out += _header(0, 0, 1, 0, 0, (0, 0), TRAILER.encode())
    return bytes(out)


def entries_from_tree(root: str | os.PathLike[str]) -> list[Entry]:
    """Read ``root`` into entries (files, dirs, symlinks, hard links, device nodes).

    Permission bits are kept; owners and times are not. Raises ``NotFoundError`` if
    ``root`` is not a directory, ``FormatError`` on a socket or other unsupported type.
    """
    base = Path(root)
    if not base.is_dir():
        raise NotFoundError(f"{base} is not a directory", "build the staging tree first")
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            entries.append(_entry_for(path, path.relative_to(base).as_posix()))
    return entries


def _entry_for(path: Path, name: str) -> Entry:
    st = path.lstat()
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return Entry(name, stat.S_IFLNK | 0o777, target=os.readlink(path))
    if stat.S_ISDIR(mode):
        return Entry(name, mode)
    if stat.S_ISREG(mode):
        group = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return Entry(name, mode, data=path.read_bytes(), link_group=group)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return Entry(name, mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    raise FormatError(f"{path}: unsupported file type for an initramfs", "remove sockets and fifos")


def write_archive(
    out: str | os.PathLike[str],
    entries: Iterable[Entry],
    *,
    compress: str = "none",
    mtime: int | None = None,
) -> Path:
    """Write ``entries`` as a newc archive to ``out`` atomically; ``compress`` is none|gzip.

    gzip output carries no name and mtime 0, so it is reproducible too.
    Raises ``FormatError`` for an unknown compression or bad entries.
    """
    from bay0.atomic import write_atomic

    data = pack(entries, mtime=mtime)
    if compress == "gzip":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    elif compress != "none":
        raise FormatError(f"unknown initramfs compression {compress!r}", "use none or gzip")
    return write_atomic(out, data, overwrite=True)


def unpack(data: bytes) -> list[Entry]:
    """Parse a newc archive back into entries (for tests and inspection).

    Hard links come back as entries sharing ``link_group`` (the inode number), with the
    data copied to every name. Raises ``FormatError`` on a malformed archive.
    """
    entries: list[Entry] = []
    bodies: dict[int, bytes] = {}
    pos = 0
    while True:
        if data[pos : pos + 6] != MAGIC:
            raise FormatError(f"no newc header at offset {pos}", "is this a gzip-compressed archive?")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, nlink, size, namesize = fields[0], fields[1], fields[4], fields[6], fields[11]
        name_start = pos + HEADER_SIZE
        name = data[name_start : name_start + namesize - 1].decode()
        body_start = name_start + namesize + (-(HEADER_SIZE + namesize) % 4)
        body = data[body_start : body_start + size]
        pos = body_start + size + (-size % 4)
        if name == TRAILER:
            return entries
        group = ino if stat.S_ISREG(mode) and nlink > 1 else None
        if group is not None:
            body = bodies.setdefault(ino, body) or body
        if stat.S_ISLNK(mode):
            entries.append(Entry(name, mode, target=body.decode()))
        else:
            entries.append(Entry(name, mode, data=body, rdev=(fields[9], fields[10]), link_group=group))
