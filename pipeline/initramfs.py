"""Assemble the initramfs: busybox, the boot modules, veritysetup/cryptsetup/mkfs.ext4
with their libraries, and the /init from ``initramfs/``.

Inputs are trees, not packages: a static busybox, an extracted kernel (``Kernel``) and a
"tool root" holding the dynamically linked tools and their libraries (for the test
recipe, extracted Debian packages; for production, the Spine's own Alpine tree, so the
same binaries serve both). The output is a reproducible newc cpio (``pipeline.cpio``),
gzip-compressed by default.

In-image layout (format version ``LAYOUT_VERSION``):

- ``/init``, ``/lib/spine/*.sh`` — the scripts from ``initramfs/``;
- ``/bin/busybox`` and one symlink per applet;
- ``/sbin/veritysetup``, ``/sbin/cryptsetup``, ``/sbin/mkfs.ext4`` (mke2fs) and the
  ELF closure of each at the paths the tool root has them (interpreter included);
- ``/lib/modules/<ver>/...ko`` (decompressed) with a ``modules.dep`` for that subset,
  and ``/etc/spine-init/modules``: the load order, one in-image path per line;
- ``/dev/console`` (5:1), so the kernel gives /init a console before devtmpfs exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import NotFoundError, SpineError
from pipeline import cpio, debian, elf
from pipeline.kernel import (
    BOOT_MODULES,
    Kernel,
    fetch_kernel,
    install_modules,
    module_closure,
    read_modules_dep,
)
from pipeline.kernel import describe as describe_kernel
from pipeline.paths import PROJECT_ROOT, cache_dir
from pipeline.run import run

LAYOUT_VERSION = 1
INIT_SOURCE = PROJECT_ROOT / "initramfs"

# In-image path -> path inside the tool root.
DEFAULT_TOOLS = {
    "/sbin/veritysetup": "/sbin/veritysetup",
    "/sbin/cryptsetup": "/sbin/cryptsetup",
    "/sbin/mkfs.ext4": "/sbin/mke2fs",
}

# Debian packages of the test recipe's initramfs (production: Alpine's equivalents).
TEST_PACKAGES = ("busybox-static", "cryptsetup-bin", "e2fsprogs")

# Applets /init, boot.sh and bootctl.sh use. They are always linked; the rest come from
# ``busybox --list-full`` when the binary runs on this host, or from the applet links the
# tool root already has (Alpine's busybox is linked against musl and may not run here).
REQUIRED_APPLETS = (
    "bin/sh", "bin/cat", "bin/dd", "bin/echo", "bin/grep", "bin/mkdir", "bin/mount",
    "bin/umount", "bin/rm", "bin/mv", "bin/sed", "bin/sleep", "bin/sync", "bin/uname",
    "bin/readlink", "bin/od", "bin/ln", "bin/ls", "usr/bin/awk", "usr/bin/basename",
    "usr/bin/dirname", "usr/bin/cut", "usr/bin/head", "usr/bin/tail", "usr/bin/tr",
    "usr/bin/wc", "usr/bin/cmp", "usr/bin/sha256sum", "sbin/insmod", "sbin/modprobe",
    "sbin/poweroff", "sbin/switch_root", "sbin/watchdog",
)


@dataclass(frozen=True)
class InitramfsSpec:
    """Everything an initramfs is made of (see the module docstring for the layout)."""

    kernel: Kernel
    busybox: Path
    tool_root: Path
    tools: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOOLS))
    modules: tuple[str, ...] = BOOT_MODULES
    init_dir: Path = INIT_SOURCE


def stage(spec: InitramfsSpec, root: Path) -> None:
    """Lay the initramfs tree out under ``root`` (an empty directory).

    Raises ``NotFoundError`` for a missing input (busybox, tool, library, module,
    ``init``), ``FormatError`` for a broken ELF file.
    """
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "sysroot",
              "etc/spine-init", "lib/spine"):
        _mkdir(root / d)
    _install_scripts(spec.init_dir, root)
    if not spec.busybox.is_file():
        raise NotFoundError(f"{spec.busybox} is missing", "fetch or build the initramfs inputs first")
    _install_tools(spec, root)
    _copy(spec.busybox, root / "bin" / "busybox", 0o755)
    for applet in _applets(spec):
        link = root / applet
        if not link.exists() and not link.is_symlink():
            _mkdir(link.parent)
            link.symlink_to(os.path.relpath(root / "bin" / "busybox", link.parent))
    modules = module_closure(spec.kernel, spec.modules)
    order = install_modules(spec.kernel, modules, root)
    for directory, _dirs, _files in os.walk(root / "lib" / "modules"):
        os.chmod(directory, 0o755)
    (root / "etc" / "spine-init" / "modules").write_text("".join(p + "\n" for p in order))
    # modules.dep for the subset, so /init can load them all with one modprobe.
    run(["depmod", "-b", str(root), spec.kernel.version])


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)


def _copy(source: Path, target: Path, mode: int) -> None:
    if not source.is_file():
        raise NotFoundError(f"{source} is missing", "fetch or build the initramfs inputs first")
    _mkdir(target.parent)
    if target.is_symlink() or target.exists():
        target.unlink()  # never write through a link (an applet link points at busybox)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _install_scripts(init_dir: Path, root: Path) -> None:
    _copy(init_dir / "init", root / "init", 0o755)
    for script in sorted((init_dir / "lib").glob("*.sh")):
        _copy(script, root / "lib" / "spine" / script.name, 0o644)


def _applets(spec: InitramfsSpec) -> list[str]:
    """Applet paths (relative) to link to /bin/busybox."""
    found = set(REQUIRED_APPLETS)
    try:
        listing = run([str(spec.busybox), "--list-full"]).stdout.decode().split()
    except SpineError:  # a musl or foreign-arch busybox cannot run on this host
        listing = _tree_applets(spec.tool_root)
    found.update(a for a in listing if a and not a.startswith("/") and ".." not in a.split("/"))
    return sorted(found)


def _tree_applets(root: Path) -> list[str]:
    """The links to busybox a root tree already has (Alpine installs one per applet)."""
    links = []
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin"):
        base = root / directory
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            if entry.is_symlink() and os.readlink(entry).endswith("busybox"):
                links.append(f"{directory}/{entry.name}")
    return links


def _dynamic_busybox(spec: InitramfsSpec) -> list[str]:
    """Alpine's busybox is linked against musl: its libraries must come along."""
    info = elf.parse(spec.busybox.read_bytes(), name=str(spec.busybox))
    if info is None or (info.interpreter is None and not info.needed):
        return []  # static (Debian's busybox-static): nothing else to bring
    try:
        rel = spec.busybox.resolve().relative_to(spec.tool_root.resolve())
    except ValueError:
        raise NotFoundError(f"{spec.busybox} is dynamically linked but not inside the tool root",
                            "use a static busybox, or the one in the tool root") from None
    return ["/" + rel.as_posix()]


def _install_tools(spec: InitramfsSpec, root: Path) -> None:
    programs = sorted(set(spec.tools.values()) | set(_dynamic_busybox(spec)))
    for path in elf.closure(spec.tool_root, programs):
        if path in programs:
            continue  # the tools themselves go to their in-image paths below
        source = elf.resolve_in_root(spec.tool_root, path)
        real = "/" + source.relative_to(spec.tool_root).as_posix()
        mode = 0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644
        _copy(source, root / real.lstrip("/"), mode)
        if real != path:  # keep links as links (ld.so is reached as /lib64/... and by soname)
            link = root / path.lstrip("/")
            _mkdir(link.parent)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(root / real.lstrip("/"), link.parent))
    for image_path, tool_path in spec.tools.items():
        _copy(elf.resolve_in_root(spec.tool_root, tool_path), root / image_path.lstrip("/"), 0o755)


def extra_entries() -> list[cpio.Entry]:
    """Members that need no root to create: the initial console."""
    return [cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]


def build_initramfs(spec: InitramfsSpec, out: str | os.PathLike[str], *, compress: str = "gzip") -> Path:
    """Stage and pack the initramfs into ``out`` (written atomically). Same inputs, same bytes.

    Raises what ``stage`` raises, and ``FormatError`` for an unknown compression.
    """
    target = Path(out)
    # Stage beside the output, not in /tmp: the tree is tens of MiB and /tmp may be small.
    with tempfile.TemporaryDirectory(prefix=".spine-initramfs-", dir=target.parent) as tmp:
        root = Path(tmp) / "root"
        _mkdir(root)
        stage(spec, root)
        entries = cpio.entries_from_tree(root) + extra_entries()
        return cpio.write_archive(target, entries, compress=compress)


def spec_from_root(tree: str | os.PathLike[str], *, modules: tuple[str, ...] | None = None) -> InitramfsSpec:
    """The initramfs made of a Spine's own root tree: its kernel and modules, its busybox
    (Alpine's, musl), its veritysetup/cryptsetup and mke2fs, so the same binaries serve
    both. ``modules`` defaults to every module the tree ships: the Spine's recipe already
    chose them for early boot and for bay0. Raises ``NotFoundError``/``FormatError``
    when the tree lacks a piece.
    """
    root = Path(tree)
    kernel = describe_kernel(root)
    if modules is None:
        modules = tuple(sorted(read_modules_dep(kernel)))
    return InitramfsSpec(kernel=kernel, busybox=root / "bin" / "busybox", tool_root=root, modules=modules)


def build_from_spine_image(image: str | os.PathLike[str], out: str | os.PathLike[str], *,
                           compress: str = "gzip") -> tuple[Kernel, Path]:
    """Unpack a Spine's squashfs (``unsquashfs``; verity tree and trailer are ignored) beside
    ``out`` and build the initramfs from it. Returns the Spine's kernel (the vmlinuz is
    copied next to ``out``) and the initramfs path. Raises ``ToolError`` when unsquashfs fails.
    """
    target = Path(out)
    with tempfile.TemporaryDirectory(prefix=".spine-tree-", dir=target.parent) as tmp:
        tree = Path(tmp) / "root"
        run(["unsquashfs", "-q", "-n", "-d", str(tree), str(image)])
        spec = spec_from_root(tree)
        vmlinuz = target.with_name(target.name + ".vmlinuz")
        _copy(spec.kernel.vmlinuz, vmlinuz, 0o644)
        build_initramfs(spec, target, compress=compress)
    return replace(spec.kernel, vmlinuz=vmlinuz, root=Path()), target


def test_spec(kernel: Kernel | None = None, *, workdir: Path | None = None) -> InitramfsSpec:
    """The test recipe's inputs: Debian's kernel, busybox-static, cryptsetup, e2fsprogs.

    Packages are fetched into the cache and extracted once into ``cache_dir()/initramfs-tools/``
    (keyed by the .deb digests). Raises what ``debian.fetch_debs`` raises.
    """
    kernel = kernel or fetch_kernel()
    debs = debian.fetch_debs(TEST_PACKAGES, resolve_deps=True)
    digest = hashlib.sha256("".join(sorted(debian.recorded_sha256(d) for d in debs)).encode()).hexdigest()
    tool_root = (workdir or cache_dir() / "initramfs-tools") / digest[:24]
    marker = tool_root / ".spine-extracted"
    if not marker.exists():
        shutil.rmtree(tool_root, ignore_errors=True)
        debian.extract(debs, tool_root)
        write_atomic(marker, digest.encode(), overwrite=True)
    return InitramfsSpec(kernel=kernel, busybox=tool_root / "bin" / "busybox", tool_root=tool_root)


def spec_digest(spec: InitramfsSpec, compress: str) -> str:
    """A digest of every input, for caching built initramfs images."""
    h = hashlib.sha256()
    h.update(json.dumps([LAYOUT_VERSION, compress, spec.kernel.deb_sha256, spec.kernel.version,
                         sorted(spec.tools.items()), list(spec.modules), str(spec.tool_root)]).encode())
    for path in sorted([spec.init_dir / "init", *(spec.init_dir / "lib").glob("*.sh"), Path(__file__),
                        Path(cpio.__file__), Path(elf.__file__)]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cached_test_initramfs(*, compress: str = "gzip") -> tuple[Kernel, Path]:
    """The test recipe's kernel and initramfs, built once per distinct input and cached."""
    spec = test_spec()
    out = cache_dir() / "initramfs" / f"{spec_digest(spec, compress)[:32]}.cpio{'.gz' if compress == 'gzip' else ''}"
    if not out.exists():
        _mkdir(out.parent)
        build_initramfs(spec, out, compress=compress)
    return spec.kernel, out
