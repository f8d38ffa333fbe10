"""The kernel the tests boot: Debian's ``linux-image-amd64``, its modules and their order.

Debian's ``.deb`` ships no ``modules.dep``; ``depmod -b`` on the extracted tree makes one.
The initramfs cannot rely on ``modprobe`` (busybox's knows no aliases, and request_module
for crypto templates would need them), so the build works out the whole closure of the
wanted modules here and /init loads that list with ``insmod`` in dependency order.
Compressed modules (``.ko.xz``/``.ko.zst``/``.ko.gz``) are decompressed at build time:
busybox ``insmod`` may not read them.

Production takes Alpine's kernel; everything below works on any extracted kernel tree.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import FormatError, NotFoundError
from pipeline import debian
from pipeline.paths import cache_dir
from pipeline.run import run

# What /init needs before switch_root, and what bay0 needs later but cannot load itself
# (the Spine carries no modules). ``crc32c_generic`` is ext4's soft dependency; ``ecb``, ``xts``
# and ``algif_skcipher`` serve LUKS2's default aes-xts-plain64 (aes itself is built in).
BOOT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "dm-mod",
    "dm-verity",
    "dm-crypt",
    "ecb",
    "xts",
    "algif_skcipher",
    "squashfs",
    "crc32c_generic",
    "ext4",
    "vfat",
    "loop",
    "i6300esb",
)

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Kernel:
    """An extracted kernel: ``root/lib/modules/<version>`` plus the bootable image."""

    version: str
    vmlinuz: Path
    root: Path
    deb_sha256: str = ""

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


@dataclass(frozen=True)
class Module:
    name: str  # canonical: underscores, no suffix
    relpath: str  # as in modules.dep, e.g. kernel/drivers/md/dm-mod.ko


def canonical(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike (``dm-mod`` == ``dm_mod``)."""
    base = name.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def fetch_kernel(package: str = "linux-image-amd64") -> Kernel:
    """Fetch Debian's kernel package, extract it once into the cache, run depmod.

    ``package`` may be the metapackage: its ``linux-image-*`` dependency is taken.
    Raises ``NotFoundError`` / ``ToolError`` / ``CorruptionError`` from the fetch.
    """
    real = _image_package(package)
    (deb,) = debian.fetch_debs([real])
    digest = debian.recorded_sha256(deb)
    root = cache_dir() / "kernel" / deb.name.removesuffix(".deb")
    marker = root / ".spine-extracted"
    if not marker.exists() or marker.read_text().strip() != digest:
        shutil.rmtree(root, ignore_errors=True)
        debian.extract([deb], root)
        kernel = prepare_tree(root, deb_sha256=digest)
        write_atomic(marker, (digest + "\n").encode(), overwrite=True)
        return kernel
    return _describe(root, digest)


def _image_package(package: str) -> str:
    if not re.fullmatch(r"linux-image-[a-z0-9-]+", package) or re.match(r"linux-image-\d", package):
        return package  # already a versioned image package (or not a Debian name at all)
    for name in debian.resolve_direct_depends(package):
        if name.startswith("linux-image-"):
            return name
    raise NotFoundError(f"{package} depends on no linux-image package", "name the image package")


def _describe(root: Path, digest: str = "") -> Kernel:
    versions = sorted(p.name for p in (root / "lib" / "modules").glob("*") if p.is_dir())
    if len(versions) != 1:
        raise FormatError(f"{root}: expected one kernel under lib/modules, found {versions}", "extract one kernel")
    version = versions[0]
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise NotFoundError(f"{vmlinuz} is missing", "the kernel package must ship boot/vmlinuz-<version>")
    return Kernel(version, vmlinuz, root, digest)


def describe(root: str | os.PathLike[str]) -> Kernel:
    """The kernel of a tree that already has its ``modules.dep`` (e.g. a Spine's root).

    Raises ``FormatError``/``NotFoundError`` when the tree holds no usable kernel.
    """
    kernel = _describe(Path(root))
    if not (kernel.modules_dir / "modules.dep").is_file():
        raise NotFoundError(f"{kernel.modules_dir}/modules.dep is missing", "run depmod -b on the tree")
    return kernel


def prepare_tree(root: str | os.PathLike[str], *, deb_sha256: str = "") -> Kernel:
    """Describe an extracted kernel tree and (re)build its ``modules.dep`` with depmod.

    Raises ``FormatError`` when the tree holds no or several kernels, ``ToolError``
    when depmod fails.
    """
    kernel = _describe(Path(root), deb_sha256)
    run(["depmod", "-b", str(kernel.root), kernel.version])
    return kernel


def read_modules_dep(kernel: Kernel) -> dict[str, tuple[str, list[str]]]:
    """Map canonical module name -> (relpath, [dependency relpaths]). Raises ``NotFoundError``."""
    dep_file = kernel.modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise NotFoundError(f"{dep_file} is missing", "run prepare_tree() (depmod -b) first")
    table: dict[str, tuple[str, list[str]]] = {}
    for line in dep_file.read_text().splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            table[canonical(path)] = (path, deps.split())
    return table


def builtin_modules(kernel: Kernel) -> set[str]:
    path = kernel.modules_dir / "modules.builtin"
    return {canonical(line) for line in path.read_text().split()} if path.is_file() else set()


def module_closure(kernel: Kernel, wanted: Iterable[str]) -> list[Module]:
    """The wanted modules and all their dependencies, each after what it needs.

    Built-in modules are skipped. Raises ``NotFoundError`` for a module that is neither
    a loadable module nor built in.
    """
    table = read_modules_dep(kernel)
    builtin = builtin_modules(kernel)
    ordered: list[Module] = []
    seen: set[str] = set()

    def visit(name: str) -> None:  # depth-first, post-order: dependencies first
        if name in seen:
            return
        seen.add(name)
        relpath, deps = table[name]
        for dep in deps:
            visit(canonical(dep))
        ordered.append(Module(name, relpath))

    for want in wanted:
        name = canonical(want)
        if name in table:
            visit(name)
        elif name not in builtin:
            raise NotFoundError(
                f"kernel {kernel.version} has no module {want!r}",
                "check the name in modules.dep or the kernel config",
            )
    return ordered


def install_modules(kernel: Kernel, modules: Sequence[Module], dest_root: str | os.PathLike[str]) -> list[str]:
    """Copy ``modules`` (decompressed, as ``.ko``) under ``dest_root/lib/modules/<ver>/``.

    Returns the in-image paths (``/lib/modules/<ver>/...ko``) in load order.
    Raises ``NotFoundError`` when a module file is missing.
    """
    base = Path(dest_root) / "lib" / "modules" / kernel.version
    loaded: list[str] = []
    for module in modules:
        source = kernel.modules_dir / module.relpath
        if not source.is_file():
            raise NotFoundError(f"{source} is missing", "the kernel tree is incomplete: fetch it again")
        rel = module.relpath
        for suffix in (".xz", ".zst", ".gz"):
            rel = rel.removesuffix(suffix)
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(decompress(source))
        target.chmod(0o644)
        loaded.append("/" + target.relative_to(dest_root).as_posix())
    return loaded


def decompress(path: Path) -> bytes:
    """The bytes of a module file, decompressed when its name says xz, gzip or zstd."""
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".zst"):
        return run(["zstd", "-dc", str(path)]).stdout
    return path.read_bytes()
