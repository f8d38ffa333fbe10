"""Put a kernel and a chosen subset of its modules into a root tree.

The kernel comes from an Alpine package (already installed in the root), a Debian
package (``pipeline.kernel.fetch_kernel``: extracted once into the cache, depmod run),
or a vmlinuz + ``lib/modules/<release>`` on the host. The module closure is
``pipeline.kernel``'s (the same code picks the initramfs modules); this module copies
the chosen files and rebuilds the index with ``depmod -b`` for that subset.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from bay0.errors import NotFoundError, ValidationError
from pipeline import kernel as kernel_mod
from pipeline.run import run

# Files depmod and modprobe read besides modules.dep (kept as they are).
KEPT_INDEXES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def find_kernel(root: Path, *, where: str) -> kernel_mod.Kernel:
    """The one kernel under ``root`` (``lib/modules/<release>`` + a ``boot/vmlinuz*``).

    Alpine names its image ``vmlinuz-<flavour>`` (``vmlinuz-lts``), Debian
    ``vmlinuz-<release>``. Raises ``NotFoundError`` / ``ValidationError``.
    """
    modules = root / "lib/modules"
    releases = sorted(p.name for p in modules.glob("*") if p.is_dir()) if modules.is_dir() else []
    if len(releases) != 1:
        found = ", ".join(releases) or "none"
        raise ValidationError(f"{where}: expected one kernel under lib/modules, found {found}",
                              "install exactly one kernel package")
    release = releases[0]
    images = sorted(p for p in (root / "boot").glob("vmlinuz*") if p.is_file() and not p.is_symlink()) \
        if (root / "boot").is_dir() else []
    exact = [p for p in images if p.name == f"vmlinuz-{release}"]
    if not (exact or images):
        raise NotFoundError(f"{where}: no boot/vmlinuz* for kernel {release}", "check the kernel package")
    if not (modules / release / "modules.dep").exists():
        run(["depmod", "-b", str(root), release])
    return kernel_mod.Kernel(release, (exact or images)[0], root)


def host_kernel(vmlinuz: Path, modules_dir: Path) -> kernel_mod.Kernel:
    """A kernel given as files on the host: ``modules_dir`` must be ``.../lib/modules/<release>``."""
    if modules_dir.parent.name != "modules" or modules_dir.parent.parent.name != "lib":
        raise ValidationError(f"kernel.modules_dir: {modules_dir} is not a .../lib/modules/<release> directory",
                              "point it at the release directory")
    kernel = kernel_mod.Kernel(modules_dir.name, vmlinuz, modules_dir.parent.parent.parent)
    if not (modules_dir / "modules.dep").exists():
        raise NotFoundError(f"{modules_dir}/modules.dep is missing", "run depmod -b on that tree first")
    return kernel


def install_kernel(source: kernel_mod.Kernel, root: Path, modules: Sequence[str] | None) -> str:
    """Copy ``source``'s image to ``root/boot/vmlinuz-<release>`` and its modules (all, or the
    closure of ``modules``) into ``root/lib/modules/<release>``, then rebuild the index there.

    Raises ``ValidationError`` naming a module the kernel does not have.
    """
    release = source.version
    boot = root / "boot"
    boot.mkdir(mode=0o755, exist_ok=True)
    image = boot / f"vmlinuz-{release}"
    if source.vmlinuz.resolve() != image.resolve():
        shutil.copyfile(source.vmlinuz, image)
        image.chmod(0o644)
    target = root / "lib/modules" / release
    if modules is None:
        if source.modules_dir.resolve() != target.resolve():
            shutil.copytree(source.modules_dir, target, symlinks=True, dirs_exist_ok=True)
    else:
        try:
            chosen = kernel_mod.module_closure(source, modules)
        except NotFoundError as e:
            raise ValidationError(f"kernel.modules: {e.message}", e.hint) from e
        staged = root / "lib/modules" / f".{release}.subset"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for name in KEPT_INDEXES:
            if (source.modules_dir / name).exists():
                shutil.copyfile(source.modules_dir / name, staged / name)
        kernel_mod.install_modules(source, chosen, staged / "_root")
        shutil.copytree(staged / "_root/lib/modules" / release, staged, dirs_exist_ok=True)
        shutil.rmtree(staged / "_root")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    for name in ("build", "source"):  # Debian's links into linux-headers, never present
        if (target / name).is_symlink():
            (target / name).unlink()
    run(["depmod", "-b", str(root), release])
    return release
