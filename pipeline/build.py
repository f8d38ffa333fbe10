"""Build a signed Spine or a pod image from a recipe, through the artifact cache.

    plan (verify indexes, resolve, ask apt)  ->  input digest  ->  cache hit?
        no:  assemble rootfs -> mksquashfs -> verity tree -> store the sealed image
        yes: take the sealed image from the cache
    then: Spine = image + signed manifest + footer;  pod = the image itself

The cache key covers every input: recipe bytes, resolved Alpine checksums, the Debian
files apt would use, trees and files the recipe copies, the bay0 source, trust keys,
the epoch, tool versions and the pipeline's own code. Nothing is written at the output
path unless the whole build succeeds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bay0.atomic import atomic_output
from bay0.errors import ExistsError, StorageError, UsageError
from bay0.formats import minisign
from bay0.formats.spine import Manifest, build_id_for
from bay0.formats.verity import ImageIdentity, VerityParams
from pipeline import spine as spine_mod
from pipeline.cache import ArtifactCache, digest_inputs
from pipeline.image import file_sha256, seal
from pipeline.recipe import Recipe
from pipeline.rootfs import Plan, alpine_release, assemble_rootfs, inside, plan_rootfs
from pipeline.run import run
from pipeline.squashfs import make_squashfs

PIPELINE_DIR = Path(__file__).resolve().parent
# The code whose behaviour shapes the image: a change to any of it is a new input.
PIPELINE_SOURCES = ("recipe.py", "rootfs.py", "rootfs_kernel.py", "build.py", "squashfs.py",
                    "image.py", "verity.py", "debian.py", "alpine")
BUILD_FORMAT = 1

Progress = Callable[[str, int, int], None]  # (what is happening, steps done, steps in all)
SPINE_STEPS = ("resolve packages", "install Alpine packages", "borrow Debian packages",
               "install the kernel", "write files and accounts", "install bay0",
               "byte-compile Python", "make the squashfs", "append the verity tree", "sign the manifest")
POD_STEPS = ("resolve packages", "install Alpine packages", "borrow Debian packages",
             "install the kernel", "write files and accounts", "make the squashfs",
             "append the verity tree", "write the image")


@dataclass(frozen=True)
class BuildResult:
    """What a build produced. ``cached`` says the sealed image came from the cache."""

    out: Path
    kind: str
    cached: bool
    input_digest: str
    identity: ImageIdentity
    packages: tuple[dict[str, Any], ...]
    seconds: float
    manifest: Manifest | None = None
    persona: dict[str, Any] | None = None


class _Steps:
    def __init__(self, names: tuple[str, ...], progress: Progress | None) -> None:
        self.names, self.progress, self.done = names, progress, 0

    def __call__(self, label: str) -> None:
        if label in self.names:
            self.done = self.names.index(label)
        if self.progress:
            self.progress(label, self.done, len(self.names))

    def finish(self) -> None:
        if self.progress:
            self.progress("done", len(self.names), len(self.names))


def tool_versions(recipe: Recipe) -> dict[str, str]:
    first = run(["mksquashfs", "-version"]).stdout.decode(errors="replace").splitlines()
    versions = {"mksquashfs": first[0] if first else "?",
                "python": sys.version.split()[0]}
    if recipe.kernel is not None:
        versions["depmod"] = run(["depmod", "--version"]).stdout.decode(errors="replace").strip()
    return versions


def pipeline_digest() -> str:
    digest = hashlib.sha256()
    for name in PIPELINE_SOURCES:
        path = PIPELINE_DIR / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                digest.update(f.relative_to(PIPELINE_DIR).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def input_digest(plan: Plan) -> str:
    return digest_inputs({"format": BUILD_FORMAT, "kind": plan.recipe.kind, "inputs": plan.inputs(),
                          "tools": tool_versions(plan.recipe), "pipeline": pipeline_digest()})


def _open_cache(cache: ArtifactCache | bool | None) -> ArtifactCache | None:
    if cache is False:
        return None
    return ArtifactCache() if cache is None or cache is True else cache


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ExistsError(f"{out} already exists")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory", "create it first, or choose another -o")


def persona_document(recipe: Recipe, packages: list[dict[str, Any]], alpine: str) -> dict[str, Any]:
    """What a pod image says about itself in /etc/spine/persona.json (informative)."""
    pod = recipe.pod
    assert pod is not None
    return {"format": "spine-persona/1", "name": recipe.name, "version": recipe.version,
            "entrypoint": list(pod.entrypoint), "user": pod.user, "workdir": pod.workdir,
            "env": dict(pod.env), "network": pod.network,
            "suggested_ceilings": dict(pod.ceilings), "alpine_release": alpine,
            "recipe_digest": recipe.digest, "packages": packages}


def _make_image(plan: Plan, work: Path, digest: str, steps: _Steps) -> tuple[Path, dict[str, Any]]:
    """Assemble, squash and seal; return the sealed image and what to remember about it."""
    root = work / "root"
    result = assemble_rootfs(plan, root, build_id=digest[:32], step=steps)
    packages = [p.to_dict() for p in result.packages]
    alpine = alpine_release(root, plan.recipe)
    meta: dict[str, Any] = {"packages": packages, "alpine_release": alpine,
                            "kernel_release": result.kernel_release}
    if plan.recipe.kind == "pod":
        meta["persona"] = persona_document(plan.recipe, packages, alpine)
        doc = inside(root, "/etc/spine/persona.json")
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(json.dumps(meta["persona"], indent=1, sort_keys=True) + "\n")
        os.utime(doc.parent, (plan.epoch, plan.epoch))
    steps("make the squashfs")
    image = work / "image"
    make_squashfs(root, image, epoch=plan.epoch, all_root=plan.recipe.kind == "pod",
                  compression=plan.recipe.compression)
    shutil.rmtree(root)
    steps("append the verity tree")
    params = seal(image)
    meta.update(verity=params.to_dict(), image_size=image.stat().st_size, image_sha256=file_sha256(image))
    return image, meta


def _sealed_image(plan: Plan, cache: ArtifactCache | None, work: Path, steps: _Steps
                  ) -> tuple[Path, dict[str, Any], str, bool]:
    digest = input_digest(plan)
    key = ArtifactCache.key(f"{plan.recipe.kind}-image", digest)
    if cache is not None:
        meta = cache.get_json(key + ":meta")
        image = work / "image"
        if meta is not None and cache.get_file(key, image):
            if file_sha256(image) == meta["image_sha256"]:
                return image, meta, digest, True
            image.unlink()  # a damaged cache entry: rebuild it rather than sign it
    image, meta = _make_image(plan, work, digest, steps)
    if cache is not None:
        cache.put_file(key, image)
        cache.put_json(key + ":meta", meta)
    return image, meta, digest, False


def _identity(meta: dict[str, Any]) -> ImageIdentity:
    params = VerityParams.from_dict(meta["verity"])
    return ImageIdentity(size=meta["image_size"], sha256=meta["image_sha256"], data_size=params.data_size,
                         hash_offset=params.hash_offset, root_hash=params.root_hash, salt=params.salt)


def _write_spine(image: Path, meta: dict[str, Any], out: Path, *, plan: Plan, digest: str,
                 key: minisign.SecretKey, force: bool) -> Manifest:
    """The sealed image + signed manifest + footer (format-spine.md), atomically at ``out``."""
    recipe = plan.recipe
    params = VerityParams.from_dict(meta["verity"])
    manifest = Manifest(
        spine_version=recipe.version,
        build_id=build_id_for(params.root_hash, recipe.version, recipe.digest),
        image_size=meta["image_size"], image_sha256=meta["image_sha256"], verity=params.to_dict(),
        created=plan.epoch, alpine_release=meta["alpine_release"], recipe_digest=recipe.digest,
        contents=tuple(meta["packages"]),
        extra={"recipe_name": recipe.name, "input_digest": digest,
               "kernel_release": meta.get("kernel_release") or ""},
    )
    with atomic_output(out, overwrite=force) as tmp:
        os.replace(image, tmp)  # the work directory sits beside ``out``: a rename
        spine_mod.append_signed_manifest(tmp, manifest, key)
    return manifest


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


@contextmanager
def _storage_errors(out: Path) -> Iterator[None]:
    """A full or failing disk under the work directory is the host's problem, said so."""
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError(f"building {out.name} failed: {e.strerror} in {out.parent}",
                           "free some space (or fix the disk) and build again; nothing was left at the output") from e


def _work_dir(out: Path) -> tempfile.TemporaryDirectory:
    # Beside the output, so the finished image is renamed into place, not copied.
    return tempfile.TemporaryDirectory(prefix=f".{out.name}.work-", dir=out.parent)


def _build(recipe: Recipe, kind: str, out: str | os.PathLike[str], *,
           cache: ArtifactCache | bool | None, force: bool, progress: Progress | None,
           publish: Callable[[Path, dict[str, Any], Plan, str, _Steps, Path], Any]) -> BuildResult:
    """The steps both builds share; ``publish`` turns the sealed image into ``out``."""
    if recipe.kind != kind:
        other = "pod" if recipe.kind == "pod" else "spine"
        raise UsageError(f"{recipe.path.name} is a {recipe.kind} recipe", f"use spinectl build {other}")
    started = time.monotonic()
    target = Path(out)
    _check_out(target, force)
    steps = _Steps(SPINE_STEPS if kind == "spine" else POD_STEPS, progress)
    steps("resolve packages")
    store = _open_cache(cache)
    try:
        plan = plan_rootfs(recipe, memo=store)
        with _storage_errors(target), _work_dir(target) as work:
            image, meta, digest, cached = _sealed_image(plan, store, Path(work), steps)
            manifest = publish(image, meta, plan, digest, steps, target)
    finally:
        if store is not None and cache is not store:
            store.close()
    steps.finish()
    return BuildResult(target, kind, cached, digest, _identity(meta), tuple(meta["packages"]),
                       time.monotonic() - started, manifest=manifest,
                       persona=meta.get("persona") if kind == "pod" else None)


def build_spine(recipe: Recipe, key: minisign.SecretKey, out: str | os.PathLike[str], *,
                cache: ArtifactCache | bool | None = None, force: bool = False,
                progress: Progress | None = None) -> BuildResult:
    """Build the signed Spine of ``recipe`` at ``out``; nothing is left there on failure.

    Raises ``ExistsError`` (``out`` exists, no ``force``), the Alpine reader's
    verification errors (``BadSignatureError``, ``UnknownKeyError``, ``CorruptionError``),
    ``UnknownPackageError``/``MissingDependencyError``/``PackageConflictError``,
    ``NotFoundError``, ``ToolError`` and ``CacheError``.
    """
    def publish(image, meta, plan, digest, steps, target):
        steps("sign the manifest")
        return _write_spine(image, meta, target, plan=plan, digest=digest, key=key, force=force)

    return _build(recipe, "spine", out, cache=cache, force=force, progress=progress,
                  publish=publish)


def build_pod(recipe: Recipe, out: str | os.PathLike[str], *, cache: ArtifactCache | bool | None = None,
              force: bool = False, progress: Progress | None = None) -> BuildResult:
    """Build the pod image of ``recipe`` at ``out``; nothing is left there on failure.

    Raises what ``build_spine`` raises (less the signing key).
    """
    def publish(image, meta, plan, digest, steps, target):
        steps("write the image")
        with atomic_output(target, overwrite=force) as tmp:
            os.replace(image, tmp)
        return None

    return _build(recipe, "pod", out, cache=cache, force=force, progress=progress,
                  publish=publish)
