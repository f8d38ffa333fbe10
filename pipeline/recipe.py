"""Build recipes (TOML, recipe format 1): what goes into a Spine or a pod image.

A recipe is read with ``tomllib`` and checked against a small schema before anything
is fetched. Every mistake is one line naming the file and the field, e.g.
``recipe.toml: packages[3]: expected a string, got 7`` (list indexes count from 0).

Paths inside a recipe are relative to the recipe's directory, except those starting
with ``@fixtures/`` (the shared Alpine fixtures), ``@keys/`` (the project's trust
roots) or ``@project/`` (the project root). The full field list is in
``docs/implementation/pipeline.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bay0.errors import NotFoundError, ValidationError
from pipeline.paths import PROJECT_ROOT, alpine_fixtures, trust_keys_dir

RECIPE_FORMAT = 1
KINDS = ("spine", "pod")
OFFICIAL_MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
HINT = "see docs/implementation/pipeline.md for the recipe fields"


# ---------------------------------------------------------------- the parsed recipe


@dataclass(frozen=True)
class Repository:
    """One Alpine repository: a name under the mirror, or an explicit index + package dirs."""

    name: str
    index: str | None = None  # path or URL of APKINDEX.tar.gz (explicit form)
    packages: tuple[str, ...] = ()  # directories or URLs holding the .apk files


@dataclass(frozen=True)
class Alpine:
    release: str
    arch: str
    keys: Path
    mirror: str | None
    repositories: tuple[Repository, ...]


@dataclass(frozen=True)
class Borrow:
    """Debian packages taken because the Alpine source at hand lacks them."""

    packages: tuple[str, ...]
    reason: str
    resolve: bool = False  # also fetch their Depends closure


@dataclass(frozen=True)
class Tree:
    src: Path
    dest: str


@dataclass(frozen=True)
class FileEntry:
    """A file, symlink or directory written into the root after the packages."""

    path: str
    content: str | None = None
    src: Path | None = None
    symlink: str | None = None
    directory: bool = False
    mode: int | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str = "/"
    shell: str = "/sbin/nologin"
    gecos: str = ""


@dataclass(frozen=True)
class Kernel:
    """Where the kernel comes from: an Alpine package, Debian, or files on the host."""

    package: str | None = None  # Alpine kernel package (linux-lts, linux-virt)
    debian: str | None = None  # Debian kernel package (borrowed)
    reason: str = ""
    vmlinuz: Path | None = None
    modules_dir: Path | None = None  # .../lib/modules/<release>
    modules: tuple[str, ...] | None = None  # keep only these (+ dependencies); None = all


@dataclass(frozen=True)
class Bay0:
    source: Path
    python: str = "/usr/bin/python3"
    compile: tuple[str, ...] = ()  # trees in the root to byte-compile too


@dataclass(frozen=True)
class Pod:
    entrypoint: tuple[str, ...]
    user: str = "nobody"
    workdir: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    network: str = "none"
    ceilings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Recipe:
    path: Path
    digest: str  # sha256 of the recipe file's bytes
    kind: str
    name: str
    version: str
    description: str
    source_date_epoch: int | None
    alpine: Alpine
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    debian: tuple[Borrow, ...] = ()
    trees: tuple[Tree, ...] = ()
    files: tuple[FileEntry, ...] = ()
    groups: tuple[Group, ...] = ()
    users: tuple[User, ...] = ()
    kernel: Kernel | None = None
    bay0: Bay0 | None = None
    trust_keys: tuple[Path, ...] = ()
    pod: Pod | None = None
    extra_inputs: tuple[Path, ...] = field(default=(), compare=False)
    compression: str = "zstd"  # the squashfs compressor (lz4 decompresses fastest at boot)

    def with_trust_keys(self, keys: tuple[Path, ...]) -> Recipe:
        """A copy whose trust roots are ``keys`` (tests and ``--trust-key``)."""
        return replace(self, trust_keys=keys)


# ---------------------------------------------------------------- schema checking


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


class _Checker:
    """Walks a parsed TOML document; every error names ``<file>: <field path>``."""

    def __init__(self, label: str, base: Path) -> None:
        self.label = label
        self.base = base

    def fail(self, where: str, problem: str) -> ValidationError:
        return ValidationError(f"{self.label}: {where}: {problem}", HINT)

    def table(self, doc: Any, where: str, known: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(doc, dict):
            raise self.fail(where, f"expected a table, got {_describe(doc)}")
        for key in doc:
            if key not in known:
                path = f"{where}.{key}" if where else key
                raise self.fail(path, f"unknown key (known: {', '.join(sorted(known))})")
        for key in sorted(required):
            if key not in doc:
                raise self.fail(f"{where}.{key}" if where else key, "missing required key")
        return doc

    def typed(self, value: Any, where: str, kind: type, noun: str) -> Any:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise self.fail(where, f"expected {noun}, got {_describe(value)}")
        return value

    def string(self, value: Any, where: str, *, empty: bool = False) -> str:
        text = self.typed(value, where, str, "a string")
        if not empty and not text.strip():
            raise self.fail(where, "must not be empty")
        return text

    def integer(self, value: Any, where: str, *, low: int = 0, high: int = 2**32 - 1) -> int:
        number = self.typed(value, where, int, "an integer")
        if not low <= number <= high:
            raise self.fail(where, f"must be between {low} and {high}, got {number}")
        return number

    def strings(self, value: Any, where: str, *, empty: bool = True) -> tuple[str, ...]:
        items = self.typed(value, where, list, "a list of strings")
        if not empty and not items:
            raise self.fail(where, "must not be empty")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(items))

    def tables(self, value: Any, where: str) -> list[dict]:
        items = self.typed(value, where, list, "a list of tables")
        for i, item in enumerate(items):
            self.typed(item, f"{where}[{i}]", dict, "a table")
        return items

    def abspath(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not text.startswith("/"):
            raise self.fail(where, f"must be an absolute path in the image, got {_describe(text)}")
        return text

    def host_path(self, value: Any, where: str, *, must_exist: bool = True) -> Path:
        text = self.string(value, where)
        path = resolve_path(text, self.base, where=f"{self.label}: {where}")
        if must_exist and not path.exists():
            raise NotFoundError(f"{self.label}: {where}: {path} does not exist", "fix the path")
        return path


def resolve_path(text: str, base: Path, *, where: str = "recipe") -> Path:
    """Resolve a recipe path: ``@fixtures/``, ``@keys/``, ``@project/`` or relative to ``base``."""
    prefixes: dict[str, Callable[[], Path | None]] = {
        "@fixtures": alpine_fixtures,
        "@keys": trust_keys_dir,
        "@project": lambda: PROJECT_ROOT,
    }
    head, _, rest = text.partition("/")
    if head in prefixes:
        root = prefixes[head]()
        if root is None:
            raise NotFoundError(f"{where}: {head} is not available here (no shared fixtures)",
                                "set SPINE_SHARED to the shared directory, or use a mirror")
        return root / rest if rest else root
    if head.startswith("@"):
        raise ValidationError(f"{where}: unknown path prefix {head!r}",
                              "use @fixtures/, @keys/, @project/ or a relative path")
    path = Path(text)
    return path if path.is_absolute() else base / path


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# ---------------------------------------------------------------- sections

TOP_KEYS = {"format", "kind", "name", "version", "description", "source_date_epoch", "packages",
            "exclude", "alpine", "debian", "tree", "file", "group", "user", "kernel", "bay0",
            "trust", "pod", "compression"}
COMPRESSIONS = ("lz4", "zstd", "xz", "gzip")  # mksquashfs -comp names


MIRROR_ENV = "SPINE_ALPINE_MIRROR"


def _with_fallback(c: _Checker, t: dict[str, Any]) -> dict[str, Any]:
    """Where the shared fixtures are absent (an operator's own machine), ``alpine.fallback``
    replaces the repositories with mirror ones: the same reader, over HTTP or a local mirror.
    ``$SPINE_ALPINE_MIRROR`` overrides the mirror URL either way."""
    fallback = t.get("fallback")
    if fallback is not None:
        f = c.table(fallback, "alpine.fallback", {"mirror", "repositories", "keys"},
                    {"mirror", "repositories"})
        if alpine_fixtures() is None:
            t = {**t, "mirror": f["mirror"], "repositories": f["repositories"],
                 "keys": f.get("keys", t["keys"])}
    if os.environ.get(MIRROR_ENV) and "mirror" in t:
        t = {**t, "mirror": os.environ[MIRROR_ENV]}
    return t


def _alpine(c: _Checker, doc: Any) -> Alpine:
    t = c.table(doc, "alpine", {"release", "arch", "keys", "mirror", "repositories", "fallback"},
                {"release", "keys", "repositories"})
    t = _with_fallback(c, dict(t))
    mirror = t.get("mirror")
    if mirror is not None:
        c.string(mirror, "alpine.mirror")
        if not is_url(mirror):
            mirror = str(c.host_path(mirror, "alpine.mirror"))
    items = c.typed(t["repositories"], "alpine.repositories", list, "a list")
    if not items:
        raise c.fail("alpine.repositories", "must not be empty")
    repos = tuple(_repository(c, item, f"alpine.repositories[{i}]", mirror) for i, item in enumerate(items))
    return Alpine(
        release=c.string(t["release"], "alpine.release"),
        arch=c.string(t.get("arch", "x86_64"), "alpine.arch"),
        keys=c.host_path(t["keys"], "alpine.keys"),
        mirror=mirror,
        repositories=repos,
    )


def _repository(c: _Checker, item: Any, where: str, mirror: str | None) -> Repository:
    if isinstance(item, str):
        if mirror is None:
            raise c.fail(where, f"{_describe(item)} names a repository, but alpine.mirror is not set")
        return Repository(name=c.string(item, where))
    t = c.table(item, where, {"name", "index", "packages"}, {"name", "index", "packages"})
    index = c.string(t["index"], f"{where}.index")
    if not is_url(index):
        index = str(c.host_path(index, f"{where}.index"))
    dirs = []
    for i, entry in enumerate(c.strings(t["packages"], f"{where}.packages", empty=False)):
        dirs.append(entry if is_url(entry) else str(c.host_path(entry, f"{where}.packages[{i}]")))
    return Repository(name=c.string(t["name"], f"{where}.name"), index=index, packages=tuple(dirs))


def _debian(c: _Checker, doc: Any) -> tuple[Borrow, ...]:
    out = []
    for i, t in enumerate(c.tables(doc, "debian")):
        where = f"debian[{i}]"
        c.table(t, where, {"packages", "reason", "resolve"}, {"packages", "reason"})
        resolve = t.get("resolve", False)
        c.typed(resolve, f"{where}.resolve", bool, "a boolean")
        out.append(Borrow(c.strings(t["packages"], f"{where}.packages", empty=False),
                          c.string(t["reason"], f"{where}.reason"), resolve))
    return tuple(out)


def _trees(c: _Checker, doc: Any) -> tuple[Tree, ...]:
    out = []
    for i, t in enumerate(c.tables(doc, "tree")):
        c.table(t, f"tree[{i}]", {"src", "dest"}, {"src"})
        src = c.host_path(t["src"], f"tree[{i}].src")
        if not src.is_dir():
            raise c.fail(f"tree[{i}].src", f"{src} is not a directory")
        out.append(Tree(src, c.abspath(t.get("dest", "/"), f"tree[{i}].dest")))
    return tuple(out)


def _files(c: _Checker, doc: Any) -> tuple[FileEntry, ...]:
    out = []
    for i, t in enumerate(c.tables(doc, "file")):
        where = f"file[{i}]"
        c.table(t, where, {"path", "content", "src", "symlink", "directory", "mode", "uid", "gid"}, {"path"})
        sources = [k for k in ("content", "src", "symlink", "directory") if k in t]
        if len(sources) != 1:
            raise c.fail(where, "needs exactly one of content, src, symlink, directory")
        directory = t.get("directory", False)
        c.typed(directory, f"{where}.directory", bool, "a boolean")
        if "directory" in t and not directory:
            raise c.fail(f"{where}.directory", "must be true when given")
        out.append(FileEntry(
            path=c.abspath(t["path"], f"{where}.path"),
            content=c.string(t["content"], f"{where}.content", empty=True) if "content" in t else None,
            src=c.host_path(t["src"], f"{where}.src") if "src" in t else None,
            symlink=c.string(t["symlink"], f"{where}.symlink") if "symlink" in t else None,
            directory=directory,
            mode=c.integer(t["mode"], f"{where}.mode", high=0o7777) if "mode" in t else None,
            uid=c.integer(t.get("uid", 0), f"{where}.uid"),
            gid=c.integer(t.get("gid", 0), f"{where}.gid"),
        ))
    return tuple(out)


def _accounts(c: _Checker, groups: Any, users: Any) -> tuple[tuple[Group, ...], tuple[User, ...]]:
    gs = []
    for i, t in enumerate(c.tables(groups, "group")):
        c.table(t, f"group[{i}]", {"name", "gid", "members"}, {"name", "gid"})
        gs.append(Group(c.string(t["name"], f"group[{i}].name"), c.integer(t["gid"], f"group[{i}].gid"),
                        c.strings(t.get("members", []), f"group[{i}].members")))
    us = []
    for i, t in enumerate(c.tables(users, "user")):
        w = f"user[{i}]"
        c.table(t, w, {"name", "uid", "gid", "home", "shell", "gecos"}, {"name", "uid", "gid"})
        us.append(User(c.string(t["name"], f"{w}.name"), c.integer(t["uid"], f"{w}.uid"),
                       c.integer(t["gid"], f"{w}.gid"), c.abspath(t.get("home", "/"), f"{w}.home"),
                       c.abspath(t.get("shell", "/sbin/nologin"), f"{w}.shell"),
                       c.string(t.get("gecos", ""), f"{w}.gecos", empty=True)))
    for kind, items in (("group", gs), ("user", us)):
        names = [x.name for x in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise c.fail(kind, f"{dup[0]!r} is declared twice")
    return tuple(gs), tuple(us)


def _kernel(c: _Checker, doc: Any) -> Kernel:
    t = c.table(doc, "kernel", {"package", "debian", "reason", "vmlinuz", "modules_dir", "modules"})
    given = [k for k in ("package", "debian", "vmlinuz") if k in t]
    if len(given) != 1:
        raise c.fail("kernel", "needs exactly one of package, debian, vmlinuz")
    if "debian" in t and "reason" not in t:
        raise c.fail("kernel.reason", "a kernel borrowed from Debian needs a stated reason")
    if ("vmlinuz" in t) != ("modules_dir" in t):
        raise c.fail("kernel", "vmlinuz and modules_dir go together")
    return Kernel(
        package=c.string(t["package"], "kernel.package") if "package" in t else None,
        debian=c.string(t["debian"], "kernel.debian") if "debian" in t else None,
        reason=c.string(t["reason"], "kernel.reason") if "reason" in t else "",
        vmlinuz=c.host_path(t["vmlinuz"], "kernel.vmlinuz") if "vmlinuz" in t else None,
        modules_dir=c.host_path(t["modules_dir"], "kernel.modules_dir") if "modules_dir" in t else None,
        modules=c.strings(t["modules"], "kernel.modules") if "modules" in t else None,
    )


def _bay0(c: _Checker, doc: Any) -> Bay0:
    t = c.table(doc, "bay0", {"source", "python", "compile"})
    source = c.host_path(t.get("source", "@project/bay0"), "bay0.source")
    compile_ = c.strings(t.get("compile", []), "bay0.compile")
    for i, item in enumerate(compile_):
        c.abspath(item, f"bay0.compile[{i}]")
    return Bay0(source, c.abspath(t.get("python", "/usr/bin/python3"), "bay0.python"), compile_)


def _pod(c: _Checker, doc: Any) -> Pod:
    t = c.table(doc, "pod", {"entrypoint", "user", "workdir", "env", "network", "ceilings"}, {"entrypoint"})
    env = c.typed(t.get("env", {}), "pod.env", dict, "a table")
    pairs = tuple(sorted((k, c.string(v, f"pod.env.{k}", empty=True)) for k, v in env.items()))
    ceilings = c.table(t.get("ceilings", {}), "pod.ceilings", {"cpu", "memory_mib", "pids"})
    checked: list[tuple[str, Any]] = []
    if "cpu" in ceilings:
        cpu = ceilings["cpu"]
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0 < cpu <= 1024:
            raise c.fail("pod.ceilings.cpu", f"expected a number of CPUs (e.g. 0.5), got {_describe(cpu)}")
        checked.append(("cpu", cpu))
    for key in ("memory_mib", "pids"):
        if key in ceilings:
            checked.append((key, c.integer(ceilings[key], f"pod.ceilings.{key}", low=1)))
    network = c.string(t.get("network", "none"), "pod.network")
    if network not in ("none", "policy"):
        raise c.fail("pod.network", f"expected \"none\" or \"policy\", got {_describe(network)}")
    entry = c.strings(t["entrypoint"], "pod.entrypoint", empty=False)
    c.abspath(entry[0], "pod.entrypoint[0]")
    return Pod(entry, c.string(t.get("user", "nobody"), "pod.user"),
               c.abspath(t.get("workdir", "/"), "pod.workdir"), pairs, network, tuple(sorted(checked)))


def _top(c: _Checker, doc: dict) -> dict:
    c.table(doc, "", TOP_KEYS, {"kind", "name", "version", "alpine", "packages"})
    fmt = doc.get("format", RECIPE_FORMAT)
    if c.integer(fmt, "format") != RECIPE_FORMAT:
        raise c.fail("format", f"recipe format {fmt} is not supported (this is {RECIPE_FORMAT})")
    kind = c.string(doc["kind"], "kind")
    if kind not in KINDS:
        raise c.fail("kind", f"expected \"spine\" or \"pod\", got {_describe(kind)}")
    allowed = {"spine": {"bay0", "trust", "kernel"}, "pod": {"pod"}}[kind]
    for key in ("bay0", "trust", "kernel", "pod"):
        if key in doc and key not in allowed:
            raise c.fail(key, f"not allowed in a {kind} recipe")
    for key in {"spine": ("bay0", "trust"), "pod": ("pod",)}[kind]:
        if key not in doc:
            raise c.fail(key, f"a {kind} recipe needs a [{key}] table")
    return doc


def _trust(c: _Checker, doc: Any) -> tuple[Path, ...]:
    t = c.table(doc, "trust", {"keys"}, {"keys"})
    return tuple(c.host_path(k, f"trust.keys[{i}]")
                 for i, k in enumerate(c.strings(t["keys"], "trust.keys", empty=False)))


def parse_recipe(data: bytes, *, label: str, base: Path, path: Path | None = None) -> Recipe:
    """Parse and check recipe bytes. Raises ``ValidationError``/``FormatError``/``NotFoundError``."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValidationError(f"{label}: not UTF-8 text (byte {e.start})", "save it as UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(f"{label}: invalid TOML: {e}", "fix the syntax") from e
    c = _Checker(label, base)
    _top(c, doc)
    groups, users = _accounts(c, doc.get("group", []), doc.get("user", []))
    epoch = doc.get("source_date_epoch")
    return Recipe(
        path=path or base / label,
        digest=hashlib.sha256(data).hexdigest(),
        kind=doc["kind"],
        name=c.string(doc["name"], "name"),
        version=c.string(doc["version"], "version"),
        description=c.string(doc.get("description", ""), "description", empty=True),
        source_date_epoch=None if epoch is None else c.integer(epoch, "source_date_epoch", high=2**63 - 1),
        alpine=_alpine(c, doc["alpine"]),
        packages=c.strings(doc["packages"], "packages"),
        exclude=c.strings(doc.get("exclude", []), "exclude"),
        debian=_debian(c, doc.get("debian", [])),
        trees=_trees(c, doc.get("tree", [])),
        files=_files(c, doc.get("file", [])),
        groups=groups,
        users=users,
        kernel=_kernel(c, doc["kernel"]) if "kernel" in doc else None,
        bay0=_bay0(c, doc["bay0"]) if "bay0" in doc else None,
        trust_keys=_trust(c, doc["trust"]) if "trust" in doc else (),
        pod=_pod(c, doc["pod"]) if "pod" in doc else None,
        compression=_compression(c, doc.get("compression", "zstd")),
    )


def _compression(c: _Checker, value: Any) -> str:
    name = c.string(value, "compression")
    if name not in COMPRESSIONS:
        raise ValidationError(f"{c.label}: compression: {name!r} is not one of {', '.join(COMPRESSIONS)}",
                              "use lz4 (fastest to boot) or zstd/xz (smaller images)")
    return name


def load_recipe(path: str | Path) -> Recipe:
    """Read and check the recipe at ``path``.

    Raises ``NotFoundError`` (no such file, or a path it names is missing) and
    ``ValidationError`` (bad TOML, unknown key, wrong type), each one line naming the field.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(f"recipe {p} does not exist", "check the path (shipped recipes: pipeline/recipes/)") from e
    except IsADirectoryError as e:
        raise NotFoundError(f"recipe {p} is a directory", "give the .toml file") from e
    return parse_recipe(data, label=str(p), base=p.resolve().parent, path=p.resolve())


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"
