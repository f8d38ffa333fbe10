"""Assemble a root tree from a recipe: Alpine packages, borrowed Debian pieces, kernel,
extra files, accounts and (for a Spine) bay0 with its trust roots.

Two phases. ``plan_rootfs`` decides: it opens and verifies the Alpine indexes, resolves
the package set and asks apt which Debian files it would use, without downloading
anything, so the plan's ``inputs()`` can key the artifact cache. ``assemble_rootfs``
acts: it writes the tree into an empty directory. Every time in the tree is clamped to
the plan's epoch (``$SOURCE_DATE_EPOCH``, else the recipe's ``source_date_epoch``).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bay0.errors import CorruptionError, NotFoundError, ToolError, ValidationError
from bay0.formats.minisign import PublicKey
from pipeline import debian
from pipeline import kernel as kernel_mod
from pipeline.alpine import Package, RepoSet, RepositorySpec, install, open_repositories
from pipeline.cache import ArtifactCache, digest_tree
from pipeline.recipe import Recipe
from pipeline.rootfs_kernel import find_kernel, host_kernel, install_kernel
from pipeline.run import run

MOUNT_POINTS = ("proc", "sys", "dev", "run", "tmp", "persist", "mnt/stage")
POD_MOUNT_POINTS = ("proc", "dev", "tmp", "run")
BAY0_DIR = "usr/lib/bay0"
LAUNCHER = '''#!{python} -IS
"""bay0 launcher, installed by pipeline.rootfs: PID 1 after switch_root.

-S skips site.py: its directory scans and .pth files cost seconds of boot under
emulation; the two places a distribution keeps packages are added by hand instead.
"""
import os
import sys

sys.path.insert(0, "/usr/lib/bay0")
sys.path += [p for p in ("/usr/lib/python3/dist-packages",  # Debian
                         f"/usr/lib/python3.{{sys.version_info[1]}}/site-packages")  # Alpine
             if os.path.isdir(p)]
from bay0.main import main  # noqa: E402

raise SystemExit(main())
'''

Step = Callable[[str], None]


@dataclass(frozen=True)
class PackageRecord:
    """One package in the manifest: where it came from and which exact file."""

    name: str
    version: str
    checksum: str  # Alpine: the index's Q1 checksum; Debian: sha256 of the .deb
    origin: str  # "alpine" | "debian"
    reason: str = ""  # why a Debian piece was borrowed

    def to_dict(self) -> dict[str, Any]:
        doc = {"name": self.name, "version": self.version, "checksum": self.checksum,
               "origin": self.origin}
        if self.reason:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True)
class DebianPick:
    candidate: debian.Candidate
    reason: str


@dataclass
class Plan:
    """Everything a build will consume, decided before any of it is fetched."""

    recipe: Recipe
    repos: RepoSet
    alpine: list[Package]
    debian: list[DebianPick]
    kernel_deb: DebianPick | None
    epoch: int
    trust_keys: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, text)

    def inputs(self) -> dict[str, Any]:
        """The digestible description of every input (for the cache key)."""
        r = self.recipe
        return {
            "recipe": r.digest,
            "epoch": self.epoch,
            "alpine": [[p.name, p.version, p.checksum] for p in self.alpine],
            "debian": [[d.candidate.package, d.candidate.version, d.candidate.sha256, d.reason]
                       for d in self.debian],
            "kernel_deb": self.kernel_deb and self.kernel_deb.candidate.sha256,
            "trees": [[t.dest, digest_tree(t.src)] for t in r.trees],
            "files": [digest_tree(f.src) for f in r.files if f.src is not None],
            "kernel_files": [digest_tree(p) for p in _kernel_paths(r)],
            "bay0": digest_tree(r.bay0.source) if r.bay0 else None,
            "trust": [[name, text.decode()] for name, text in self.trust_keys],
        }


def _kernel_paths(recipe: Recipe) -> list[Path]:
    k = recipe.kernel
    return [p for p in (k.vmlinuz, k.modules_dir) if p is not None] if k else []


def build_epoch(recipe: Recipe) -> int:
    """``$SOURCE_DATE_EPOCH`` when set, else the recipe's ``source_date_epoch``, else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        if not value.isdigit():
            raise ValidationError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
                                  "set it to an integer, or unset it")
        return int(value)
    return recipe.source_date_epoch or 0


# ---------------------------------------------------------------- planning


def repository_specs(recipe: Recipe) -> list[RepositorySpec]:
    a = recipe.alpine
    specs = []
    for repo in a.repositories:
        if repo.index is None:
            specs.append(RepositorySpec.mirror(a.mirror, a.release, repo.name, a.arch))
        else:
            specs.append(RepositorySpec.local(repo.index, repo.packages, repo.name))
    return specs


def world_of(recipe: Recipe) -> list[str]:
    extra = [recipe.kernel.package] if recipe.kernel and recipe.kernel.package else []
    return list(dict.fromkeys([*recipe.packages, *extra]))


def apt_lists_state() -> list[list[Any]]:
    """Names, sizes and times of apt's package lists: answers from other lists are stale."""
    lists = Path("/var/lib/apt/lists")
    files = sorted(lists.glob("*_Packages*")) if lists.is_dir() else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def debian_candidates(names: list[str], memo: ArtifactCache | None) -> dict[str, debian.Candidate]:
    """apt's candidate for each name; remembered in ``memo`` while apt's lists are unchanged
    (one ``apt-cache show`` costs more than a whole warm build)."""
    if not names:
        return {}
    key = ArtifactCache.key("apt-candidates", [names, apt_lists_state()])
    known = memo.get_json(key) if memo is not None else None
    if known is None:
        known = [c.__dict__ for c in debian.candidates(names)]
        if memo is not None:
            memo.put_json(key, known)
    return {c["package"]: debian.Candidate(**c) for c in known}


def borrow_closure(names: Sequence[str], memo: ArtifactCache | None) -> list[str]:
    """``names`` and their Depends closure (``resolve = true``), remembered like candidates."""
    key = ArtifactCache.key("apt-closure", [list(names), apt_lists_state()])
    known = memo.get_json(key) if memo is not None else None
    if known is None:
        known = debian.resolve(names)
        if memo is not None:
            memo.put_json(key, known)
    return list(known)


def kernel_package(name: str) -> str:
    """Follow a Debian kernel metapackage (``linux-image-amd64``) to the real image package."""
    if re.match(r"linux-image-\d", name) or not name.startswith("linux-image-"):
        return name
    return next((d for d in debian.resolve_direct_depends(name) if d.startswith("linux-image-")), name)


def read_trust_keys(paths: Sequence[Path]) -> list[tuple[str, bytes]]:
    """The minisign public keys to bake in: each file, or each ``*.pub`` in a directory.

    Raises ``NotFoundError`` when there is none, ``FormatError`` naming a bad key file.
    """
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.pub")) if path.is_dir() else [path])
    keys: dict[str, bytes] = {}
    for f in files:
        text = f.read_bytes()
        try:
            PublicKey.parse(text)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValidationError(f"trust key {f}: not a minisign public key ({e})",
                                  "generate one with spinectl keys generate") from e
        if f.name in keys and keys[f.name] != text:
            raise ValidationError(f"two trust keys are named {f.name}", "rename one of them")
        keys[f.name] = text
    if not keys:
        shown = ", ".join(str(p) for p in paths) or "(none)"
        raise NotFoundError(f"no trust-root public keys found in {shown}",
                            "put a minisign .pub in keys/ or pass --trust-key")
    return sorted(keys.items())


def plan_rootfs(recipe: Recipe, *, memo: ArtifactCache | None = None, alpine_cache: Any = None) -> Plan:
    """Resolve every input of ``recipe`` without fetching packages.

    Raises the Alpine reader's errors (unknown key, bad signature, unknown package,
    missing dependency, conflict) and ``NotFoundError`` for an unknown Debian package.
    ``memo`` remembers apt's answers between builds.
    """
    repos = open_repositories(repository_specs(recipe), recipe.alpine.keys, cache=alpine_cache)
    packages = repos.resolve(world_of(recipe))
    groups = [(borrow_closure(b.packages, memo) if b.resolve else list(b.packages), b.reason)
              for b in recipe.debian]
    names = [n for group, _ in groups for n in group]
    kernel_name = kernel_package(recipe.kernel.debian) if recipe.kernel and recipe.kernel.debian else None
    wanted = list(dict.fromkeys(names + ([kernel_name] if kernel_name else [])))
    found = debian_candidates(wanted, memo)
    picks: dict[str, DebianPick] = {}
    for group, reason in groups:
        for name in group:
            picks.setdefault(name, DebianPick(found[name], reason))
    kernel = DebianPick(found[kernel_name], recipe.kernel.reason) if kernel_name else None
    trust = read_trust_keys(recipe.trust_keys) if recipe.kind == "spine" else []
    return Plan(recipe, repos, packages, list(picks.values()), kernel, build_epoch(recipe), trust)


# ---------------------------------------------------------------- assembly


def fetch_checked(picks: Sequence[DebianPick]) -> list[Path]:
    """Download (or reuse) each planned ``.deb`` and check it is the planned file."""
    paths = debian.fetch_debs([p.candidate.package for p in picks])
    for pick, path in zip(picks, paths, strict=True):
        if debian.sha256_file(path) != pick.candidate.sha256:
            raise CorruptionError(f"Debian package {pick.candidate.package}: the file differs from "
                                  "the one planned", "apt's index changed during the build; build again")
    return paths


def install_debian(plan: Plan, root: Path) -> list[PackageRecord]:
    if not plan.debian:
        return []
    debian.extract(fetch_checked(plan.debian), root)
    return [PackageRecord(p.candidate.package, p.candidate.version, p.candidate.sha256, "debian", p.reason)
            for p in plan.debian]


def install_kernel_from_plan(plan: Plan, root: Path) -> tuple[str | None, list[PackageRecord]]:
    k = plan.recipe.kernel
    if k is None:
        return None, []
    records: list[PackageRecord] = []
    if plan.kernel_deb is not None:
        c = plan.kernel_deb.candidate
        source = kernel_mod.fetch_kernel(c.package)  # extracted once into the cache
        if source.deb_sha256 and source.deb_sha256 != c.sha256:
            raise CorruptionError(f"Debian package {c.package}: the file differs from the one planned",
                                  "apt's index changed during the build; build again")
        records.append(PackageRecord(c.package, c.version, c.sha256, "debian", plan.kernel_deb.reason))
    elif k.vmlinuz is not None and k.modules_dir is not None:
        source = host_kernel(k.vmlinuz, k.modules_dir)
    else:
        source = find_kernel(root, where=f"Alpine package {k.package}")
    return install_kernel(source, root, k.modules), records


def write_entries(recipe: Recipe, root: Path) -> None:
    """Copy the recipe's trees, then write its files, symlinks and directories."""
    for tree in recipe.trees:
        shutil.copytree(tree.src, inside(root, tree.dest), symlinks=True, dirs_exist_ok=True)
    for f in recipe.files:
        dest = inside(root, f.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.directory:
            dest.mkdir(exist_ok=True)
        elif f.symlink is not None:
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            os.symlink(f.symlink, dest)
        elif f.src is not None:
            shutil.copyfile(f.src, dest, follow_symlinks=True)
        else:
            dest.write_text(f.content or "")
        if f.symlink is None:
            os.chmod(dest, f.mode if f.mode is not None else (0o755 if f.directory else 0o644))
        if os.geteuid() == 0:  # owners need root; an unprivileged build keeps its own
            os.lchown(dest, f.uid, f.gid)


def inside(root: Path, path: str) -> Path:
    """``root`` + an absolute image path, refusing ``..`` escapes."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValidationError(f"path {path!r} leaves the image", "use a plain absolute path")
    return root.joinpath(*parts)


def _replace_lines(path: Path, entries: dict[str, str], mode: int) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.split(":", 1)[0] not in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in [*kept, *entries.values()]))
    os.chmod(path, mode)


def write_accounts(recipe: Recipe, root: Path) -> None:
    """Add (or replace) the recipe's groups and users in /etc/group, passwd and shadow."""
    if not recipe.groups and not recipe.users:
        return
    etc = root / "etc"
    members = {g.name: list(g.members) for g in recipe.groups}
    _replace_lines(etc / "group", {g.name: f"{g.name}:x:{g.gid}:{','.join(members[g.name])}"
                                   for g in recipe.groups}, 0o644)
    _replace_lines(etc / "passwd", {u.name: f"{u.name}:x:{u.uid}:{u.gid}:{u.gecos}:{u.home}:{u.shell}"
                                    for u in recipe.users}, 0o644)
    _replace_lines(etc / "shadow", {u.name: f"{u.name}:!::0:::::" for u in recipe.users}, 0o640)


def apply_excludes(root: Path, patterns: Sequence[str]) -> int:
    """Remove every path matching one of ``patterns`` (fnmatch on ``/abs/path``)."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).lstrip(".")
        for name in sorted(dirnames + filenames):
            image_path = f"{rel.rstrip('/')}/{name}"
            if any(fnmatch.fnmatchcase(image_path, p) for p in patterns):
                target = Path(dirpath) / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                    dirnames.remove(name)
                else:
                    target.unlink()
                removed += 1
    return removed


def exists_in_root(root: Path, path: str, hops: int = 40) -> bool:
    """Whether ``path`` exists in the image, following symlinks inside ``root``."""
    current = path
    for _ in range(hops):
        host = inside(root, current)
        if host.is_symlink():
            target = os.readlink(host)
            current = target if target.startswith("/") else os.path.normpath(
                os.path.join(os.path.dirname(current), target))
            continue
        return host.exists()
    return False


def alpine_release(root: Path, recipe: Recipe) -> str:
    """The exact Alpine release installed (``/etc/alpine-release``), else the recipe's branch."""
    path = root / "etc/alpine-release"
    return path.read_text().strip() if path.is_file() else recipe.alpine.release


def install_bay0(plan: Plan, root: Path, release: dict[str, str]) -> None:
    """bay0 as interfaces.md lays it out: package, launcher, keys, release, mount points."""
    b = plan.recipe.bay0
    assert b is not None
    if not exists_in_root(root, b.python):
        raise NotFoundError(f"bay0's Python runtime is missing: {b.python} is not in the root",
                            "add python3 to packages, or borrow it from Debian in a [[debian]] table")
    if not (b.source / "__init__.py").is_file():
        raise NotFoundError(f"bay0 source {b.source} is not a Python package",
                            "point bay0.source at the bay0 package directory")
    target = root / BAY0_DIR / "bay0"
    shutil.copytree(b.source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    launcher = root / "sbin/bay0"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER.format(python=b.python))
    os.chmod(launcher, 0o755)
    keys = root / "etc/spine/keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name, text in plan.trust_keys:
        (keys / name).write_bytes(text)
    text = "".join(f"{k}={v}\n" for k, v in release.items())
    (root / "etc/spine/release").write_text(text)
    make_mount_points(root, MOUNT_POINTS)


def make_mount_points(root: Path, names: Sequence[str]) -> None:
    for name in names:
        path = inside(root, "/" + name)
        if not path.is_symlink():
            path.mkdir(parents=True, exist_ok=True)
    if (root / "tmp").is_dir() and not (root / "tmp").is_symlink():
        os.chmod(root / "tmp", 0o1777)


def target_python_version(root: Path) -> str | None:
    found = sorted(p.name[len("python"):] for p in (root / "usr/lib").glob("python3.*")
                   if p.is_dir() and p.name[len("python"):].replace(".", "").isdigit())
    return found[-1] if found else None


def host_python(root: Path, purpose: str) -> tuple[str, str]:
    """A build-host interpreter of the image's Python version, and that version.

    Raises ``NotFoundError`` when the image has no Python, ``ToolError`` when the host
    has no interpreter of its version.
    """
    version = target_python_version(root)
    if version is None:
        raise NotFoundError("no /usr/lib/python3.X in the image", "install the Python runtime first")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    python = sys.executable if here == version else shutil.which(f"python{version}")
    if python is None:
        raise ToolError(f"python{version} is needed to {purpose} {version}",
                        f"install python{version} on the build host")
    return python, version


def compile_python(root: Path, trees: Sequence[str]) -> None:
    """Byte-compile ``trees`` of the image (``unchecked-hash`` .pyc: no mtimes inside).

    Uses a host interpreter of the image's Python version. Raises ``ToolError`` when
    there is none.
    """
    present = [t for t in trees if inside(root, t).is_dir()]
    if not present:
        return
    python, _ = host_python(root, "byte-compile the image's Python")
    # One process, files in compileall's sorted order: marshal output can depend on what
    # else a worker compiled before (refcounts decide FLAG_REF), so no -j.
    run([python, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
         "-s", str(root), "-p", "/", *[str(inside(root, t)) for t in present]],
        env={"PYTHONHASHSEED": "0"})


PREFETCH_LIST = "etc/spine/prefetch"
_PREFETCH_PATH = re.compile(r"[A-Za-z0-9._+-][A-Za-z0-9._+/-]*")  # what initramfs prefetch() reads

# Run by the image's Python version on the build host: import what bay0 imports before
# READY and name, per module, where its code comes from (stdlib-relative or bay0's).
_BOOT_IMPORTS = r"""
import sys, sysconfig
sys.path.insert(0, sys.argv[1])
stdlib = sysconfig.get_paths()["stdlib"] + "/"
before = set(sys.modules)
import bay0.main  # noqa: F401
for name in sorted(set(sys.modules) - before | {"encodings", "encodings.aliases", "encodings.utf_8"}):
    origin = getattr(getattr(sys.modules.get(name), "__spec__", None), "origin", None) or ""
    if origin.startswith(sys.argv[1] + "/"):
        print("bay0", origin[len(sys.argv[1]) + 1:])
    elif origin.startswith(stdlib):
        print("stdlib", origin[len(stdlib):])
"""


def prefetch_list(root: Path, python: str) -> list[str]:
    """Root-relative real paths of what bay0's first seconds read: the interpreter and
    its libraries (ELF closure), and the compiled modules ``bay0.main`` imports.

    The initramfs reads them into the page cache on the core that is otherwise idle
    while /persist unlocks (``/etc/spine/prefetch``, one path per line). Uses a host
    interpreter of the image's Python version, like ``compile_python``.
    """
    from pipeline.elf import closure, resolve_in_root

    host, version = host_python(root, "list what bay0 imports at boot with Python")
    paths: dict[str, None] = {}
    for program in closure(root, [python]):
        paths[str(resolve_in_root(root, program).relative_to(root))] = None
    tag = f"cpython-{version.replace('.', '')}"
    out = run([host, "-IS", "-c", _BOOT_IMPORTS, str(root / BAY0_DIR)], env={"PYTHONHASHSEED": "0"})
    for line in out.stdout.decode().splitlines():
        kind, rel = line.split(" ", 1)
        base = BAY0_DIR if kind == "bay0" else f"usr/lib/python{version}"
        source = Path(base) / rel
        compiled = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        for candidate in (compiled, source) if source.suffix == ".py" else (source,):
            if (root / candidate).is_file() and not (root / candidate).is_symlink():
                paths[str(candidate)] = None
                break
    bad = [p for p in paths if not _PREFETCH_PATH.fullmatch(p) or ".." in p.split("/")]
    if bad:  # /init skips what it cannot pass to cat safely; say so here instead
        raise ValidationError(f"prefetch path {bad[0]!r} has characters /init does not read",
                              "keep image paths to [A-Za-z0-9._+/-]")
    return list(paths)


def write_prefetch_list(root: Path, python: str) -> None:
    target = root / PREFETCH_LIST
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{p}\n" for p in prefetch_list(root, python)))


def clamp_times(root: Path, epoch: int) -> None:
    """No time in the tree is later than ``epoch`` (links included, not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch or st.st_atime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


@dataclass(frozen=True)
class RootfsResult:
    root: Path
    packages: tuple[PackageRecord, ...]
    kernel_release: str | None
    skipped_scripts: tuple[tuple[str, str], ...]


def assemble_rootfs(plan: Plan, root: Path, *, build_id: str = "", step: Step | None = None) -> RootfsResult:
    """Write the planned tree into ``root`` (an empty or absent directory).

    Raises the Alpine reader's verification errors (a corrupt or foreign-signed
    package), ``CorruptionError`` for a Debian file that changed, ``ToolError``.
    """
    say = step or (lambda _label: None)
    recipe = plan.recipe
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    say("install Alpine packages")
    installed = install(plan.alpine, root, world=world_of(recipe), epoch=plan.epoch,
                        progress=lambda what, done, total: say(f"Alpine: {what} {done}/{total}"))
    records = [PackageRecord(p.name, p.version, p.checksum, "alpine") for p in installed.packages]
    say("borrow Debian packages")
    records += install_debian(plan, root)
    say("install the kernel")
    release, kernel_records = install_kernel_from_plan(plan, root)
    records += kernel_records
    say("write files and accounts")
    write_entries(recipe, root)
    write_accounts(recipe, root)
    apply_excludes(root, recipe.exclude)
    if recipe.kind == "spine":
        say("install bay0")
        info = {"version": recipe.version, "build_id": build_id, "alpine": alpine_release(root, recipe)}
        if release:
            info["kernel"] = release
        install_bay0(plan, root, info)
        say("byte-compile Python")
        compile_python(root, [f"/{BAY0_DIR}", *recipe.bay0.compile])
        say("list what bay0 reads first")
        write_prefetch_list(root, recipe.bay0.python)
    else:
        make_mount_points(root, POD_MOUNT_POINTS)
    clamp_times(root, plan.epoch)
    return RootfsResult(root, tuple(sorted(records, key=lambda r: (r.origin, r.name))), release,
                        tuple(installed.skipped_scripts))
