"""`status`, `mark-good`, `mark-bad` on an attached disk (offline)."""

from __future__ import annotations

from typing import Any

from bay0.errors import SlotStateError
from bay0.formats import bootctl
from pipeline.disk import state
from pipeline.disk.layout import PARTITION_ORDER, read_layout

SLOT_CHOICES = ("booted", "other", "A", "B")


def resolve_slot(bc: bootctl.BootControl, which: str) -> str:
    """Turn ``booted``/``other``/``A``/``B`` into a slot name, or raise ``SlotStateError``."""
    choice = which if which in ("booted", "other") else which.upper()
    if choice in bootctl.SLOT_NAMES:
        return choice
    if choice not in ("booted", "other"):
        raise SlotStateError(f"unknown slot {which!r}", "use booted, other, A or B")
    if bc.last_boot is None:
        raise SlotStateError("no slot has booted from this disk yet, so 'booted' means nothing",
                             "name the slot: --slot A or --slot B")
    return bc.last_boot if choice == "booted" else bootctl.other(bc.last_boot)


def mark(disk: str, which: str, *, good: bool) -> tuple[str, bootctl.BootControl]:
    """Mark a slot good or bad; every check happens before the single durable write."""
    layout = read_layout(disk)
    bc = state.read_bootctl(layout)
    slot = resolve_slot(bc, which)
    new = bootctl.mark_good(bc, slot) if good else bootctl.mark_bad(bc, slot)
    return slot, state.write_bootctl(layout, new)


def status(disk: str) -> dict[str, Any]:
    """The documented status document (docs/implementation/disks.md)."""
    layout = read_layout(disk)
    bc = state.read_bootctl(layout)
    doc = bc.to_dict()
    slots = {}
    for name, slot in zip(bootctl.SLOT_NAMES, bc.slots, strict=True):
        info = slot.to_dict()
        info["empty"] = slot.empty
        info["bootable"] = slot.bootable
        info["partition_size"] = layout.slot(name).size
        slots[name] = info
    doc["slots"] = slots
    doc["never_marked_good"] = not any(s.good for s in bc.slots)
    doc["layout"] = {
        "device": layout.path,
        "size": layout.size,
        "ok": True,
        "partitions": {n: {"number": layout.parts[n].number, "start": layout.parts[n].start,
                           "size": layout.parts[n].size} for n in PARTITION_ORDER},
    }
    return doc
