"""Debian packages for the test recipe: fetch with apt, check, cache, extract.

The tests boot Debian's kernel and borrow a few Debian userland pieces (busybox-static,
cryptsetup, e2fsprogs, python3) where production takes Alpine's. apt verifies the
signed Release files and the index checksums; on top of that each ``.deb`` is checked
against the SHA256 apt's index records for it, every time it is used, and the digest is
kept beside it (``<name>.deb.sha256``) so a build can record what it consumed.

Cache: ``cache_dir()/debian/`` holds the ``.deb`` files under apt's own file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import CorruptionError, NotFoundError, ToolError
from pipeline.paths import cache_dir
from pipeline.run import run

# Packages a dependency walk must not drag into a borrowed runtime tree: maintainer-script
# machinery that a read-only appliance never runs.
DEFAULT_EXCLUDE = frozenset(
    {"debconf", "debconf-2.0", "cdebconf", "perl-base", "dpkg", "install-info", "sensible-utils"}
)

_DEP_FLAGS = ("--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances")


@dataclass(frozen=True)
class Candidate:
    """What apt would download for a package name."""

    package: str
    version: str
    filename: str  # the pool path's basename, e.g. libc6_2.36-9_amd64.deb
    sha256: str


def debs_dir() -> Path:
    path = cache_dir() / "debian"
    path.mkdir(parents=True, exist_ok=True)
    return path


def candidates(names: Sequence[str]) -> list[Candidate]:
    """Ask apt which version of each package it would fetch. Raises ``NotFoundError``."""
    if not names:
        return []
    proc = run(["apt-cache", "show", "--no-all-versions", *names], check=False)
    found: dict[str, Candidate] = {}
    for paragraph in proc.stdout.decode(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" ") and key not in fields:
                fields[key] = value.strip()
        if {"Package", "Version", "Filename", "SHA256"} <= fields.keys():
            cand = Candidate(fields["Package"], fields["Version"], Path(fields["Filename"]).name, fields["SHA256"])
            found.setdefault(cand.package, cand)
    missing = [n for n in names if n not in found]
    if missing:
        raise NotFoundError(
            f"Debian package {missing[0]!r} is not known to apt",
            "run apt-get update, or check the name (virtual packages need a real provider)",
        )
    return [found[n] for n in names]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(cand: Candidate) -> Path | None:
    target = debs_dir() / cand.filename
    return target if target.exists() and sha256_file(target) == cand.sha256 else None


def _download(cands: Sequence[Candidate]) -> None:
    """Fetch ``cands`` with one apt-get call and move each checked file into the cache."""
    by_digest = {c.sha256: c for c in cands}
    with tempfile.TemporaryDirectory(dir=debs_dir(), prefix=".dl-") as tmp:
        # apt-get download drops privileges to _apt; let it write into the temp dir.
        os.chmod(tmp, 0o777)
        run(["apt-get", "download", "-q", *(f"{c.package}={c.version}" for c in cands)], cwd=tmp)
        for fetched in sorted(Path(tmp).glob("*.deb")):
            cand = by_digest.pop(sha256_file(fetched), None)
            if cand is None:
                raise CorruptionError(
                    f"{fetched.name}: sha256 matches nothing in apt's index",
                    "run apt-get update and retry; the mirror may be inconsistent",
                )
            target = debs_dir() / cand.filename
            os.chmod(fetched, 0o644)
            os.replace(fetched, target)
            record = f"{cand.sha256}  {target.name}\n".encode()
            write_atomic(target.with_name(target.name + ".sha256"), record, overwrite=True)
    if by_digest:
        names = ", ".join(c.package for c in by_digest.values())
        raise ToolError(f"apt-get download did not deliver {names}", "run apt-get update and retry")


def _parse_depends(text: str) -> dict[str, list[str]]:
    """Map each package of ``apt-cache depends`` output to the packages it needs.

    Of an OR group (``|Depends:``) only the first alternative is taken; a virtual
    package (``<name>``) resolves to its first listed provider.
    """
    deps: dict[str, list[str]] = {}
    current: list[str] = []
    pending_virtual = False
    skip_rest_of_group = False
    for line in text.splitlines():
        if not line.startswith(" "):
            current = deps.setdefault(line.strip(), [])
            pending_virtual = skip_rest_of_group = False
            continue
        if line.startswith("    "):  # a provider of the virtual package above
            if pending_virtual:
                current.append(line.strip().split(":")[0])
                pending_virtual = False
            continue
        match = re.match(r"^ (\|| )(Pre)?Depends: (.+)$", line)
        if not match:
            pending_virtual = False
            continue
        in_group_before = skip_rest_of_group
        skip_rest_of_group = match.group(1) == "|"
        if in_group_before:
            continue  # a later alternative of an OR group already satisfied
        name = match.group(3).strip()
        if name.startswith("<"):
            pending_virtual = True
        else:
            current.append(name.split(":")[0])
            pending_virtual = False
    return deps


def resolve(names: Sequence[str], *, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> list[str]:
    """Return ``names`` plus everything they depend on (sorted), minus ``exclude``."""
    excluded = set(exclude)
    seen: set[str] = set()
    todo = [n for n in names if n not in excluded]
    while todo:
        batch = sorted(set(todo) - seen)
        seen.update(batch)
        if not batch:
            break
        out = run(["apt-cache", "depends", *_DEP_FLAGS, *batch]).stdout.decode(errors="replace")
        todo = [d for deps in _parse_depends(out).values() for d in deps if d not in excluded]
    return sorted(seen)


def fetch_debs(
    names: Sequence[str], *, resolve_deps: bool = False, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> list[Path]:
    """Download (or reuse from the cache) the ``.deb`` of each package; return their paths.

    With ``resolve_deps`` the Depends/Pre-Depends closure is fetched too (minus
    ``exclude``). Raises ``NotFoundError`` for an unknown package, ``ToolError`` when apt
    fails, ``CorruptionError`` when a file does not match apt's recorded sha256.
    """
    cands = _plan(list(names), resolve_deps, sorted(set(exclude)))
    missing = [c for c in cands if _cached(c) is None]
    if missing:
        _download(missing)
    return [debs_dir() / c.filename for c in cands]


def recorded_sha256(deb: str | os.PathLike[str]) -> str:
    """The sha256 recorded when ``deb`` was fetched and checked (hashes it if unrecorded)."""
    path = Path(deb)
    record = path.with_name(path.name + ".sha256")
    try:
        return record.read_text().split()[0]
    except (OSError, IndexError):
        return sha256_file(path)


def resolve_direct_depends(name: str) -> list[str]:
    """The packages ``name`` depends on directly (e.g. a metapackage's real package)."""
    return _direct(name)


def _direct(name: str) -> list[str]:
    key_doc = json.dumps(["direct", name, _lists_state()]).encode()
    memo = debs_dir() / "plans" / (hashlib.sha256(key_doc).hexdigest()[:32] + ".json")
    try:
        return list(json.loads(memo.read_text()))
    except (OSError, ValueError):
        pass
    out = run(["apt-cache", "depends", *_DEP_FLAGS, name]).stdout.decode(errors="replace")
    deps = _parse_depends(out).get(name, [])
    memo.parent.mkdir(exist_ok=True)
    write_atomic(memo, json.dumps(deps).encode(), overwrite=True)
    return deps


def _lists_state() -> list[list[object]]:
    """What apt's package lists look like now: a plan made from other lists is stale."""
    lists = Path("/var/lib/apt/lists")
    files = sorted(p for p in lists.glob("*_Packages*")) if lists.is_dir() else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _plan(names: list[str], resolve_deps: bool, exclude: list[str]) -> list[Candidate]:
    """Resolve ``names`` to candidates, memoised on disk (each apt-cache run costs ~0.7 s)."""
    key_doc = json.dumps([names, resolve_deps, exclude, _lists_state()]).encode()
    plan_file = debs_dir() / "plans" / (hashlib.sha256(key_doc).hexdigest()[:32] + ".json")
    try:
        return [Candidate(**c) for c in json.loads(plan_file.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    wanted = resolve(names, exclude=exclude) if resolve_deps else list(dict.fromkeys(names))
    cands = candidates(wanted)
    plan_file.parent.mkdir(exist_ok=True)
    write_atomic(plan_file, json.dumps([c.__dict__ for c in cands]).encode(), overwrite=True)
    return cands


def extract(debs: Iterable[str | os.PathLike[str]], target_dir: str | os.PathLike[str]) -> Path:
    """Unpack the data part of each ``.deb`` into ``target_dir`` (created if needed).

    Maintainer scripts are not run. Raises ``NotFoundError`` for a missing file and
    ``ToolError`` when ``dpkg-deb`` fails (a truncated or foreign file).
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        path = Path(deb)
        if not path.is_file():
            raise NotFoundError(f"{path} does not exist", "fetch it first with fetch_debs()")
        run(["dpkg-deb", "-x", str(path), str(target)])
    return target


def clear_cache() -> None:
    """Remove every cached ``.deb`` (tests use it to prove a cold fetch works)."""
    shutil.rmtree(cache_dir() / "debian", ignore_errors=True)
