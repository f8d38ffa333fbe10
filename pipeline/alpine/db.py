"""apk's installed database (``/lib/apk/db/installed``) and its companions.

Format (apk-tools 2.x, as ``apk_db_write_fdb`` writes it): one stanza per
package, separated by a blank line. The header repeats the index fields
(C P V A S I T U L o m t c k D p i), then r: (replaces), q: (replaces
priority), then for every directory the package owns ``F:<dir>`` with ``M:uid:gid:mode``
when it is not root:root 0755, and under it each file ``R:<name>`` with
``a:uid:gid:mode`` when not root:root 0644 and ``Z:Q1<base64 sha1>``.
Modes are octal without a leading zero; ``:Q1<xattr checksum>`` follows the mode
when the entry has extended attributes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import tarfile
from dataclasses import dataclass, field

from pipeline.alpine.package import Package

# (uid, gid, mode, xattr checksum or None)
Acl = tuple[int, int, int, str | None]
DEFAULT_DIR_ACL: Acl = (0, 0, 0o755, None)
DEFAULT_FILE_ACL: Acl = (0, 0, 0o644, None)


def xattr_checksum(xattrs: dict[str, bytes]) -> str | None:
    """apk's checksum of a file's xattrs, the 4th field of ``a:``/``M:``.

    sha1 over the xattrs sorted by name, each as big-endian u32 length + name,
    then u32 length + value (checked against apk-tools 2.14.4 by a test).
    """
    if not xattrs:
        return None
    digest = hashlib.sha1()
    for name in sorted(xattrs, key=lambda n: n.encode()):
        for part in (name.encode(), xattrs[name]):
            digest.update(struct.pack(">I", len(part)) + part)
    return "Q1" + base64.b64encode(digest.digest()).decode()


@dataclass
class FileRecord:
    name: str
    acl: Acl
    checksum: str | None


@dataclass
class DirRecord:
    acl: Acl = DEFAULT_DIR_ACL
    files: list[FileRecord] = field(default_factory=list)


@dataclass
class DbEntry:
    """What one installed package owns, in the order apk saw it in the data tar."""

    package: Package
    dirs: dict[str, DirRecord] = field(default_factory=dict)
    scripts: dict[str, bytes] = field(default_factory=dict)
    triggers: str = ""

    def dir(self, path: str) -> DirRecord:
        return self.dirs.setdefault(path, DirRecord())

    def drop_file(self, dirname: str, name: str) -> None:
        record = self.dirs.get(dirname)
        if record:
            record.files = [f for f in record.files if f.name != name]


def _acl_line(letter: str, acl: Acl) -> str:
    xattrs = f":{acl[3]}" if acl[3] else ""
    return f"{letter}:{acl[0]}:{acl[1]}:{acl[2]:o}{xattrs}\n"


def package_header(pkg: Package) -> str:
    """The index-style header of one stanza (shared with APKINDEX writers)."""
    lines = [f"C:{pkg.checksum}", f"P:{pkg.name}", f"V:{pkg.version}"]
    if pkg.arch:
        lines.append(f"A:{pkg.arch}")
    lines += [f"S:{pkg.size}", f"I:{pkg.installed_size}", f"T:{pkg.description}",
              f"U:{pkg.url}", f"L:{pkg.license}"]
    optional = [("o", pkg.origin), ("m", pkg.maintainer), ("t", pkg.build_time),
                ("c", pkg.commit), ("k", pkg.provider_priority)]
    lines += [f"{k}:{value}" for k, value in optional if value]
    lists = [("D", pkg.depends), ("p", pkg.provides), ("i", pkg.install_if)]
    lines += [f"{k}:{' '.join(str(x) for x in items)}" for k, items in lists if items]
    return "\n".join(lines) + "\n"


def render_entry(entry: DbEntry) -> str:
    pkg = entry.package
    text = package_header(pkg)
    if pkg.replaces:
        text += "r:" + " ".join(str(d) for d in pkg.replaces) + "\n"
    if pkg.replaces_priority:
        text += f"q:{pkg.replaces_priority}\n"
    for path, record in entry.dirs.items():
        text += f"F:{path}\n"
        if record.acl != DEFAULT_DIR_ACL:
            text += _acl_line("M", record.acl)
        for f in record.files:
            text += f"R:{f.name}\n"
            if f.acl != DEFAULT_FILE_ACL:
                text += _acl_line("a", f.acl)
            if f.checksum:
                text += f"Z:{f.checksum}\n"
    return text


def render_installed(entries: list[DbEntry]) -> bytes:
    """The whole ``installed`` file: stanzas each followed by a blank line."""
    return "".join(render_entry(e) + "\n" for e in entries).encode("utf-8")


def render_triggers(entries: list[DbEntry]) -> bytes:
    return "".join(f"{e.package.checksum} {e.triggers}\n"
                   for e in entries if e.triggers and ".trigger" in e.scripts).encode()


def render_scripts_tar(entries: list[DbEntry], mtime_cap: int | None) -> bytes:
    """``scripts.tar``: ``<name>-<ver>.<Q1>.<script>`` members, as apk stores them."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            pkg = entry.package
            for script, content in entry.scripts.items():
                info = tarfile.TarInfo(f"{pkg.nv}.{pkg.checksum}{script}")
                info.size, info.mode = len(content), 0o755
                info.uname = info.gname = "root"
                info.mtime = min(pkg.build_time, mtime_cap) if mtime_cap is not None \
                    else pkg.build_time
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()
