"""Helpers for disk tests: small signed Spines, provisioned image files, loop devices."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bay0.formats import bootctl, minisign
from pipeline import spine
from pipeline.disk.layout import STATE, LayoutSpec, read_layout

SMALL = LayoutSpec(esp_mib=40, slot_mib=16, state_mib=1, stage_mib=16, persist_min_mib=40)
SMALL_ARGS = ["--esp-mib", "40", "--slot-mib", "16", "--state-mib", "1", "--stage-mib", "16",
              "--persist-min-mib", "40"]
DISK_BYTES = 200 * 1024 * 1024


def make_spine(tmp: Path, key: minisign.SecretKey, version: str, *, random_mib: int = 0) -> Path:
    root = tmp / f"root-{version}"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "release").write_text(f"version={version}\n")
    if random_mib:
        (root / "blob").write_bytes(os.urandom(random_mib * 1024 * 1024))
    out = tmp / f"{version}.spine"
    spine.pack(root, out, version=version, secret_key=key, epoch=1700000000, force=True)
    return out


def blank_disk(path: Path, size: int = DISK_BYTES) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def region_digest(disk: str, slot: str) -> str:
    """sha256 of a slot partition and of the boot-control region (to prove they are untouched)."""
    layout = read_layout(disk)
    digest = hashlib.sha256()
    with open(disk, "rb") as f:
        for part in (layout.slot(slot), layout.parts[STATE]):
            f.seek(part.start)
            digest.update(f.read(part.size if part.name != STATE else bootctl.REGION_SIZE))
    return digest.hexdigest()


def slot_digest(disk: str, slot: str) -> str:
    """sha256 of a slot partition's bytes alone."""
    part = read_layout(disk).slot(slot)
    with open(disk, "rb") as f:
        f.seek(part.start)
        return hashlib.sha256(f.read(part.size)).hexdigest()


@contextlib.contextmanager
def loop_device(image: Path, *, read_only: bool = False, offset: int = 0,
                size: int = 0) -> Iterator[str]:
    argv = ["losetup", "-f", "--show"]
    if read_only:
        argv.append("-r")
    if offset:
        argv += ["-o", str(offset)]
    if size:
        argv += ["--sizelimit", str(size)]
    dev = subprocess.run([*argv, str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
