"""Put a kernel and a chosen subset of its modules into a root tree.

The kernel comes from an Alpine package (already installed in the root), a Debian
package (borrowed, extracted aside), or a vmlinuz + ``lib/modules/<release>`` on the
host. Only the modules a recipe names, plus everything they depend on according to
``modules.dep``, are kept; ``depmod -b`` then rewrites the index for that subset.
Debian's kernel package ships no ``modules.dep``, so one is generated first.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bay0.errors import NotFoundError, ValidationError
from pipeline.run import run

KO_SUFFIX = re.compile(r"\.ko(\.(gz|xz|zst))?$")
# Files depmod and modprobe read besides modules.dep (kept as they are).
KEPT_INDEXES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


@dataclass(frozen=True)
class KernelTree:
    """Where a kernel release lives: its image and its modules directory."""

    release: str
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>


def module_name(path: str) -> str:
    """``kernel/drivers/md/dm-verity.ko.xz`` -> ``dm_verity`` (modprobe's normal form)."""
    return KO_SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def find_kernel(root: Path, *, where: str) -> KernelTree:
    """The one kernel release under ``root`` (``boot/vmlinuz*`` + ``lib/modules/<release>``).

    Raises ``NotFoundError`` when there is none, ``ValidationError`` when there are several.
    """
    releases = sorted(p for p in (root / "lib/modules").glob("*") if p.is_dir()) \
        if (root / "lib/modules").is_dir() else []
    if not releases:
        raise NotFoundError(f"{where}: no lib/modules/<release> directory", "check the kernel package")
    if len(releases) > 1:
        names = ", ".join(p.name for p in releases)
        raise ValidationError(f"{where}: several kernel releases ({names})", "keep one kernel")
    release = releases[0].name
    images = sorted((root / "boot").glob("vmlinuz*")) if (root / "boot").is_dir() else []
    exact = [p for p in images if p.name == f"vmlinuz-{release}"]
    chosen = exact or [p for p in images if not p.is_symlink()]
    if not chosen:
        raise NotFoundError(f"{where}: no boot/vmlinuz* for kernel {release}", "check the kernel package")
    return KernelTree(release, chosen[0], releases[0])


def ensure_depmod(modules_dir: Path) -> None:
    """Generate ``modules.dep`` where the package shipped none (Debian)."""
    if not (modules_dir / "modules.dep").exists():
        base = modules_dir.parent.parent.parent  # <base>/lib/modules/<release>
        run(["depmod", "-b", str(base), modules_dir.name])


def read_dependencies(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (its path, the paths it needs) from ``modules.dep``."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            table[module_name(path)] = (path, deps.split())
    return table


def builtin_modules(modules_dir: Path) -> set[str]:
    builtin = modules_dir / "modules.builtin"
    return {module_name(p) for p in builtin.read_text().split()} if builtin.exists() else set()


def select_modules(modules_dir: Path, wanted: Sequence[str], *, release: str) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``wanted`` and their dependency closure.

    Built-in modules are accepted and need no file. Raises ``ValidationError`` naming a
    module the kernel does not have.
    """
    table = read_dependencies(modules_dir)
    builtin = builtin_modules(modules_dir)
    by_path = {path: deps for path, deps in table.values()}
    chosen: set[str] = set()
    for i, name in enumerate(wanted):
        normal = name.replace("-", "_")
        if normal in builtin and normal not in table:
            continue
        if normal not in table:
            raise ValidationError(f"kernel.modules[{i}]: kernel {release} has no module {name!r}",
                                  "check the name with modinfo, or drop it from the recipe")
        todo = [table[normal][0]]
        while todo:
            path = todo.pop()
            if path not in chosen:
                chosen.add(path)
                todo.extend(by_path.get(path, []))
    return sorted(chosen)


def install_kernel(source: KernelTree, root: Path, modules: Sequence[str] | None) -> str:
    """Copy ``source``'s image to ``root/boot`` and its modules (all, or a closure) into
    ``root/lib/modules/<release>``; rebuild the module index there. Returns the release."""
    ensure_depmod(source.modules_dir)
    release = source.release
    boot = root / "boot"
    boot.mkdir(mode=0o755, exist_ok=True)
    image = boot / f"vmlinuz-{release}"
    if source.vmlinuz.resolve() != image.resolve():
        shutil.copy2(source.vmlinuz, image)
    target = root / "lib/modules" / release
    if modules is None:
        if source.modules_dir.resolve() != target.resolve():
            shutil.copytree(source.modules_dir, target, symlinks=True, dirs_exist_ok=True)
    else:
        paths = select_modules(source.modules_dir, modules, release=release)
        staged = target.parent / f".{release}.subset"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for name in KEPT_INDEXES:
            if (source.modules_dir / name).exists():
                shutil.copy2(source.modules_dir / name, staged / name)
        for rel in paths:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.modules_dir / rel, staged / rel)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    _drop_dangling_links(target)
    run(["depmod", "-b", str(root), release])
    return release


def _drop_dangling_links(modules_dir: Path) -> None:
    # Debian's build/source links point into linux-headers, which a Spine never has.
    for name in ("build", "source"):
        link = modules_dir / name
        if link.is_symlink():
            link.unlink()
