"""`flash`: write a Spine into a slot of an attached disk, in an order that survives power loss.

Decide first, act second (RAUC's install.c): ``plan_flash`` is pure and picks the
target slot or refuses; ``execute`` carries the plan out, each step durable before
the next one starts:

1. invalidate the target in boot-control (it can no longer be chosen),
2. stream the image into the slot partition (aligned direct writes, fsync) while
3. reading each written chunk back from the medium and checking every block against
   the signed verity root hash (``writeverify``),
4. activate: priority above the other slot, tries 3, not good.

Killed anywhere, the disk still boots the slot it booted before, and the target is
invalid until a later flash completes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bay0.errors import DiskError, SlotStateError
from bay0.formats import bootctl, minisign
from pipeline import spine as spine_mod
from pipeline.disk import device, state
from pipeline.disk.layout import SLOT_PARTITIONS, Layout, Part, read_layout
from pipeline.disk.writeverify import write_verified

STEPS = ("invalidate", "write", "verify", "activate")
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class FlashPlan:
    layout: Layout
    slot: str
    part: Part
    artifact: spine_mod.SpineArtifact
    tries: int = bootctl.DEFAULT_TRIES


def default_target(bc: bootctl.BootControl) -> str:
    """The inactive slot: the one that would not boot next (A on a disk with nothing bootable)."""
    current = bootctl.next_boot(bc)
    return "A" if current is None else bootctl.other(current)


def plan_flash(layout: Layout, bc: bootctl.BootControl, artifact: spine_mod.SpineArtifact,
               slot: str | None = None, tries: int = bootctl.DEFAULT_TRIES) -> FlashPlan:
    """Pure: choose and check the target slot. Raises ``SlotStateError`` or ``DiskError``."""
    target = default_target(bc) if slot is None else slot.upper()
    if target not in SLOT_PARTITIONS:
        raise SlotStateError(f"unknown slot {slot!r}", "use --slot A or --slot B")
    if bootctl.next_boot(bc) == target:
        raise SlotStateError(f"slot {target} is the slot that would boot now",
                             f"flash slot {bootctl.other(target)} (the default picks it)")
    part = layout.slot(target)
    if artifact.image_size > part.size:
        raise DiskError(
            f"the Spine image ({artifact.image_size / 2**20:.1f} MiB) is larger than slot "
            f"{target} ({part.size / 2**20:.1f} MiB)",
            "build a smaller Spine or re-provision with a larger --slot-mib")
    return FlashPlan(layout, target, part, artifact, tries)


def execute(plan: FlashPlan, *, progress: Callable[[int], None] | None = None,
            on_step: StepHook | None = None) -> bootctl.BootControl:
    """Carry out ``plan``; returns the final boot-control state. Raises ``CorruptionError``
    (read-back mismatch: the slot stays invalid), ``DiskError``."""
    layout, slot, art = plan.layout, plan.slot, plan.artifact
    step = on_step or (lambda name: None)
    state.write_bootctl(layout, bootctl.invalidate(state.read_bootctl(layout), slot))
    step("invalidate")
    write_verified(str(art.path), layout.path, dest_offset=plan.part.start,
                   length=art.image_size, params=art.verity, progress=progress,
                   on_written=lambda: step("write"))
    step("verify")
    v = art.verity
    activated = bootctl.activate(
        state.read_bootctl(layout), slot, version=art.manifest.spine_version,
        root_hash=v.root_hash, salt=v.salt, data_size=v.data_size, hash_offset=v.hash_offset,
        tries=plan.tries)
    final = state.write_bootctl(layout, activated)
    step("activate")
    return final


def check_slot_free(info: device.DeviceInfo, part: Part) -> None:
    mounts = info.mounted_in(part.start, part.start + part.size, part.number)
    if mounts:
        raise DiskError(f"{info.path}: partition {part.name} is mounted at {', '.join(mounts)}",
                        f"unmount it first: umount {' '.join(mounts)}")


def flash(
    disk: str,
    spine_path: str | Path,
    trusted: Sequence[minisign.PublicKey],
    *,
    slot: str | None = None,
    tries: int = bootctl.DEFAULT_TRIES,
    progress: Callable[[int], None] | None = None,
    on_step: StepHook | None = None,
    on_plan: Callable[[FlashPlan], None] | None = None,
) -> tuple[FlashPlan, bootctl.BootControl]:
    """Verify ``spine_path`` against ``trusted`` keys, then flash it into ``disk``.

    Nothing is written before the signature verifies and the plan is accepted.
    """
    info = device.inspect(disk)
    if info.holds_root:
        device.check_target(info)
    if info.read_only:
        raise DiskError(f"{disk} is read-only", "check the write-protect switch or permissions")
    artifact = spine_mod.open_spine(spine_path, trusted)
    layout = read_layout(disk)
    plan = plan_flash(layout, state.read_bootctl(layout), artifact, slot, tries)
    check_slot_free(info, plan.part)
    if on_plan:
        on_plan(plan)
    return plan, execute(plan, progress=progress, on_step=on_step)
