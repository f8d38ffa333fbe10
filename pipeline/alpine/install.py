"""Install a resolved package list into a target root, as apk would, without apk.

Phase 1 fetches and verifies every package (nothing is written if any check
fails). Phase 2 extracts them in order — regular files (sha1 checked against the
PAX ``APK-TOOLS.checksum.SHA1``), directories, symlinks, hardlinks, device
nodes; modes including setuid/setgid/sticky; owners; mtimes (clamped to
``epoch``) — and records what each package owns. Phase 3 emulates the needed
install scripts (scripts.py) and writes ``/lib/apk/db/{installed,scripts.tar,
triggers,lock}``, ``/etc/apk/world`` and ``/etc/apk/arch``.

Owners follow apk: a tar entry's user/group *name* is looked up in the target's
/etc/passwd and /etc/group as they are at that moment; when absent, the numeric
id from the tar is used.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import CorruptionError, ExistsError, FormatError
from pipeline.alpine import db, scripts
from pipeline.alpine.apk import VerifiedApk
from pipeline.alpine.deps import parse_dependencies
from pipeline.alpine.errors import PackageConflictError
from pipeline.alpine.fsops import (
    clean_member_name,
    read_ids,
    remove_nondir,
    resolve_dir,
    set_owner_mode_time,
)
from pipeline.alpine.package import Package

PAX_SHA1 = "APK-TOOLS.checksum.SHA1"
XATTR_PREFIX = "SCHILY.xattr."


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    arch: str
    checksum: str
    origin: str = ""


@dataclass
class InstalledSet:
    """What ``install`` did: packages in order, scripts not run, links made."""

    packages: list[InstalledPackage]
    skipped_scripts: list[tuple[str, str]] = field(default_factory=list)
    applet_links: list[str] = field(default_factory=list)
    owners_applied: bool = True

    def manifest(self) -> list[dict[str, str]]:
        """Sorted ``{name, version, arch, checksum}`` records for a signed manifest."""
        return sorted(({"name": p.name, "version": p.version, "arch": p.arch,
                        "checksum": p.checksum} for p in self.packages),
                      key=lambda r: r["name"])


def default_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else None


class _Installer:
    def __init__(self, root: Path, epoch: int | None) -> None:
        self.root = root
        self.epoch = epoch
        self.chown = os.geteuid() == 0
        self.owner: dict[str, db.DbEntry] = {}   # file path -> owning entry
        self.dir_times: dict[Path, int] = {}
        self.created: list[Path] = []

    def clamp(self, mtime: int) -> int:
        return mtime if self.epoch is None else min(int(mtime), self.epoch)

    def extract(self, pkg: Package, verified: VerifiedApk) -> db.DbEntry:
        entry = db.DbEntry(_with_pkginfo(pkg, verified), scripts=dict(verified.scripts),
                           triggers=verified.info("triggers"))
        users, groups = read_ids(self.root, "passwd"), read_ids(self.root, "group")
        with tarfile.open(fileobj=io.BytesIO(verified.data_tar), mode="r:") as tar:
            for member in tar:
                self._member(entry, member, tar, users, groups)
        return entry

    def _member(self, entry, member, tar, users, groups) -> None:
        pkg = entry.package
        rel = clean_member_name(member.name, f"package {pkg.nv}")
        dirname, base = posixpath.split(rel)
        if not dirname and base.startswith("."):
            # apk treats every top-level dot name as package metadata and never
            # installs it (libc-utils ships a "/.dummy" that no system has).
            return
        uid = users.get(member.uname, member.uid) if member.uname else member.uid
        gid = groups.get(member.gname, member.gid) if member.gname else member.gid
        mode = stat.S_IMODE(member.mode)
        parent = resolve_dir(self.root, dirname, created=self.created)
        dest = parent / base
        xattrs = _xattrs(member)
        acl = (uid, gid, mode, db.xattr_checksum(xattrs))
        if member.isdir():
            if not dest.is_dir():
                remove_nondir(dest)
                dest.mkdir()
            set_owner_mode_time(dest, uid, gid, mode, None, chown=self.chown)
            _set_xattrs(dest, xattrs)
            self.dir_times[dest] = self.clamp(member.mtime)
            entry.dir(rel).acl = acl
            return
        checksum = self._write(pkg, rel, dest, member, tar)
        set_owner_mode_time(dest, uid, gid, mode, self.clamp(member.mtime), chown=self.chown)
        _set_xattrs(dest, xattrs)
        self._claim(entry, rel, dirname, base)
        entry.dir(dirname).files.append(db.FileRecord(base, acl, checksum))

    def _write(self, pkg, rel, dest, member, tar) -> str | None:
        expected = member.pax_headers.get(PAX_SHA1)
        if dest.is_dir() and not dest.is_symlink():
            raise FormatError(f"package {pkg.nv}: /{rel} is a directory in the target")
        remove_nondir(dest)
        if member.isreg():
            content = tar.extractfile(member).read()
            self._check(pkg, rel, content, expected)
            tmp = dest.with_name(f".{dest.name}.apk-new")
            tmp.write_bytes(content)
            os.replace(tmp, dest)
        elif member.issym():
            self._check(pkg, rel, member.linkname.encode(), expected)
            os.symlink(member.linkname, dest)
        elif member.islnk():
            target = clean_member_name(member.linkname, f"package {pkg.nv}")
            os.link(resolve_dir(self.root, posixpath.dirname(target))
                    / posixpath.basename(target), dest, follow_symlinks=False)
            owner = self.owner.get(target)
            return _find_checksum(owner, target) if owner else None
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}.get(
                member.type, stat.S_IFIFO)
            os.mknod(dest, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise FormatError(f"package {pkg.nv}: unsupported tar entry type for /{rel}")
        return "Q1" + base64.b64encode(bytes.fromhex(expected)).decode() if expected else None

    @staticmethod
    def _check(pkg, rel, content: bytes, expected: str | None) -> None:
        if expected and hashlib.sha1(content).hexdigest() != expected.lower():
            raise CorruptionError(f"package {pkg.nv}: /{rel} does not match its signed sha1",
                                  "the package is corrupt; fetch it again")

    def _claim(self, entry, rel, dirname, base) -> None:
        previous = self.owner.get(rel)
        if previous is not None and previous is not entry:
            new, old = entry.package, previous.package
            if not any(d.name == old.name for d in new.replaces):
                raise PackageConflictError(
                    f"{new.nv} and {old.nv} both contain /{rel}",
                    f"install only one of {new.name} and {old.name}")
            previous.drop_file(dirname, base)
        self.owner[rel] = entry

    def finish_dirs(self) -> None:
        """Set directory mtimes last (creating entries inside changed them)."""
        if self.epoch is not None:
            # The root's own mtime ends up in the image (the squashfs root inode).
            for path in [self.root, *self.created]:
                self.dir_times.setdefault(path, self.epoch)
        for path in sorted(self.dir_times, key=lambda p: len(p.parts), reverse=True):
            os.utime(path, (self.dir_times[path],) * 2, follow_symlinks=False)


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    """PAX ``SCHILY.xattr.*`` records (file capabilities and the like), raw values."""
    return {key[len(XATTR_PREFIX):]: value.encode("utf-8", "surrogateescape")
            for key, value in member.pax_headers.items() if key.startswith(XATTR_PREFIX)}


def _set_xattrs(path: Path, xattrs: dict[str, bytes]) -> None:
    for name in sorted(xattrs):
        os.setxattr(path, name, xattrs[name], follow_symlinks=False)


def _with_pkginfo(pkg: Package, verified: VerifiedApk) -> Package:
    """The index entry plus what only .PKGINFO carries (APKINDEX v2 lacks r: and q:)."""
    replaces = " ".join(verified.pkginfo.get("replaces", []))
    priority = verified.info("replaces_priority", "0")
    return dataclasses.replace(pkg, replaces=parse_dependencies(replaces) or pkg.replaces,
                               replaces_priority=int(priority) if priority.isdigit() else 0)


def _find_checksum(entry: db.DbEntry, rel: str) -> str | None:
    dirname, base = posixpath.split(rel)
    record = entry.dirs.get(dirname)
    for f in record.files if record else ():
        if f.name == base:
            return f.checksum
    return None


def install(packages: Sequence[Package], target_root: str | Path, *,
            world: Iterable[str] | None = None, epoch: int | None = None,
            arch: str | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> InstalledSet:
    """Install ``packages`` (in the order given, e.g. from ``RepoSet.resolve``).

    ``world`` is written to /etc/apk/world (default: the package names).
    ``epoch`` clamps every mtime (default ``$SOURCE_DATE_EPOCH``, else none).
    Raises the verification errors of ``Repository.fetch`` before writing
    anything; ``PackageConflictError`` when two packages contain one file;
    ``ExistsError`` when the target already has an apk database.
    ``progress(step, done, total)`` is called as packages are verified
    (step ``"verify"``) and extracted (``"extract"``), e.g. to drive a progress bar.
    """
    def tick(step: str, done: int) -> None:
        if progress is not None:
            progress(step, done, len(packages))

    root = Path(target_root)
    epoch = default_epoch() if epoch is None else epoch
    if (root / "lib/apk/db/installed").exists():
        raise ExistsError(f"{root} already has an apk database",
                          "install into an empty staging directory")
    verified = []
    for pkg in packages:
        verified.append((pkg, pkg.repository.fetch(pkg)))
        tick("verify", len(verified))
    root.mkdir(parents=True, exist_ok=True)
    installer = _Installer(root, epoch)
    entries = []
    for pkg, checked in verified:
        entries.append(installer.extract(pkg, checked))
        tick("extract", len(entries))
    result = InstalledSet(
        [InstalledPackage(p.name, p.version, p.arch, p.checksum, p.origin) for p in packages],
        owners_applied=installer.chown)
    names = {e.package.name for e in entries}
    if "busybox-suid" in names:     # its trigger runs bbsuid before busybox --install
        result.applet_links += scripts.install_bbsuid_links(root, epoch)
    for entry in entries:
        name = entry.package.name
        if name in scripts.APPLET_LISTS:
            result.applet_links += scripts.install_applet_links(root, name, epoch)
        result.skipped_scripts += [(name, s) for s in sorted(entry.scripts)
                                   if s in scripts.FRESH_INSTALL and (name, s) not in scripts.HANDLED]
    _write_database(root, entries, world, epoch, arch or _arch_of(packages), installer)
    installer.finish_dirs()
    return result


def _arch_of(packages: Sequence[Package]) -> str:
    return next((p.arch for p in packages if p.arch and p.arch != "noarch"), "x86_64")


def _write_database(root, entries, world, epoch, arch, installer) -> None:
    db_dir = resolve_dir(root, "lib/apk/db", created=installer.created)
    resolve_dir(root, "lib/apk/exec", created=installer.created)
    apk_etc = resolve_dir(root, "etc/apk", created=installer.created)
    names = sorted(set(world if world is not None else (e.package.name for e in entries)))
    entries = sorted(entries, key=lambda e: e.package.name)   # apk keeps its db sorted by name
    files = [
        (db_dir / "installed", db.render_installed(entries), 0o644),
        (db_dir / "scripts.tar", db.render_scripts_tar(entries, epoch), 0o644),
        (db_dir / "triggers", db.render_triggers(entries), 0o644),
        (db_dir / "lock", b"", 0o600),
        (apk_etc / "world", "".join(n + "\n" for n in names).encode(), 0o644),
        (apk_etc / "arch", f"{arch}\n".encode(), 0o644),
    ]
    for path, data, mode in files:
        write_atomic(path, data, mode=mode, overwrite=True)
        if epoch is not None:
            os.utime(path, (epoch, epoch))
