"""`provision`: lay out a disk, write its ESP, state, staging area, persist header and slot A.

Order (each step durable before the next): partition table → boot-control with both
slots empty and the persist keyfile → ESP → staging area → persist LUKS2 header →
slot A written and read back against the signed root hash → slot A activated.
Killed at any point, the disk is either unbootable (and provision is simply run
again) or complete; it never boots a half-written slot.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bay0.formats import bootctl
from pipeline import spine as spine_mod
from pipeline.disk import filesystems, state
from pipeline.disk.layout import ESP, PERSIST, STAGE, STATE, Layout, LayoutSpec, write_layout
from pipeline.disk.stage import write_stage
from pipeline.disk.writeverify import write_verified


@dataclass(frozen=True)
class ProvisionRequest:
    spec: LayoutSpec
    artifact: spine_mod.SpineArtifact | None = None
    esp_tree: Path | None = None  # files for the ESP (EFI/BOOT/BOOTX64.EFI, ...)
    stage_files: Mapping[str, Path] | None = None  # signed inventory + pods (stage.py)
    tries: int = bootctl.DEFAULT_TRIES


def provision(disk: str, request: ProvisionRequest, *,
              progress: Callable[[int], None] | None = None,
              on_step: Callable[[str], None] | None = None) -> Layout:
    """Provision ``disk`` (already checked by the caller). Returns its layout."""
    step = on_step or (lambda name: None)
    layout = write_layout(disk, request.spec)
    state.initialise(layout, bootctl.BootControl(), secrets.token_bytes(bootctl.KEYFILE_SIZE))
    step("layout")
    filesystems.make_fat(disk, layout.parts[ESP], "SPINE_ESP", layout.sector_size)
    if request.esp_tree is not None:
        filesystems.copy_to_fat(disk, layout.parts[ESP], request.esp_tree)
    step("esp")
    if request.stage_files:
        write_stage(layout, request.stage_files)
    else:
        filesystems.make_ext4(disk, layout.parts[STAGE], "spine_stage")
    step("stage")
    keyfile = read_keyfile(layout)
    filesystems.luks_format(disk, layout.parts[PERSIST], keyfile, "persist")
    step("persist")
    if request.artifact is not None:
        write_slot(layout, "A", request.artifact, tries=request.tries, progress=progress)
        step("slot")
    return layout


def read_keyfile(layout: Layout) -> bytes:
    fd = os.open(layout.path, os.O_RDONLY)
    try:
        start = layout.parts[STATE].start + bootctl.KEYFILE_OFFSET
        return bootctl.check_keyfile(os.pread(fd, bootctl.KEYFILE_SIZE, start))
    finally:
        os.close(fd)


def write_slot(layout: Layout, slot: str, art: spine_mod.SpineArtifact, *, tries: int,
               progress: Callable[[int], None] | None = None) -> bootctl.BootControl:
    """Write, read back and activate ``art`` in ``slot`` of a freshly provisioned disk."""
    part = layout.slot(slot)
    write_verified(str(art.path), layout.path, dest_offset=part.start, length=art.image_size,
                   params=art.verity, progress=progress)
    v = art.verity
    return state.write_bootctl(layout, bootctl.activate(
        state.read_bootctl(layout), slot, version=art.manifest.spine_version,
        root_hash=v.root_hash, salt=v.salt, data_size=v.data_size, hash_offset=v.hash_offset,
        tries=tries))
