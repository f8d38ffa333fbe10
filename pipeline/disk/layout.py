"""The GPT layout of a Spine disk. The only module that imports ``parted``.

Partition names are the contract (``docs/implementation/interfaces.md``). Works on
block devices (USB drives, loop devices) and on plain image files; everything is
1 MiB aligned. parted's exceptions are translated into ``DiskError`` here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import parted

from bay0.errors import DiskError, NotFoundError
from bay0.formats.bootctl import STATE_MIN_SIZE

MIB = 1024 * 1024
ESP, SLOT_A, SLOT_B, STATE, STAGE, PERSIST = (
    "SPINE_ESP", "spine_a", "spine_b", "spine_state", "spine_stage", "persist")
PARTITION_ORDER = (ESP, SLOT_A, SLOT_B, STATE, STAGE, PERSIST)
SLOT_PARTITIONS = {"A": SLOT_A, "B": SLOT_B}
GPT_TAIL = MIB  # room for the backup GPT at the end, keeps the last partition aligned
ESP_MIN_MIB = 36  # FAT32 needs 65525 clusters; one 512-byte sector per cluster at the least
PROVISION_HINT = "provision it first: spinectl provision DEVICE --spine X.spine"


@dataclass(frozen=True)
class LayoutSpec:
    """Partition sizes in MiB; ``persist`` takes the rest (at least ``persist_min_mib``)."""

    esp_mib: int = 128
    slot_mib: int = 1024
    state_mib: int = 4
    stage_mib: int = 512
    persist_min_mib: int = 256

    def __post_init__(self) -> None:
        for name in ("esp_mib", "slot_mib", "stage_mib", "persist_min_mib"):
            if getattr(self, name) < 8:
                raise DiskError(f"{name.replace('_mib', '')} size must be at least 8 MiB",
                                "choose larger partition sizes")
        if self.esp_mib < ESP_MIN_MIB:
            raise DiskError(f"the ESP must be at least {ESP_MIN_MIB} MiB to be FAT32",
                            f"use --esp-mib {ESP_MIN_MIB} or more")
        if self.state_mib * MIB < STATE_MIN_SIZE:
            raise DiskError("state partition must be at least 1 MiB", "use --state-mib 1 or more")

    @property
    def minimum_bytes(self) -> int:
        fixed = self.esp_mib + 2 * self.slot_mib + self.state_mib + self.stage_mib
        return (1 + fixed + self.persist_min_mib) * MIB + GPT_TAIL


@dataclass(frozen=True)
class Part:
    name: str
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes


@dataclass(frozen=True)
class Layout:
    path: str
    size: int
    sector_size: int
    parts: dict[str, Part]

    def slot(self, slot: str) -> Part:
        return self.parts[SLOT_PARTITIONS[slot]]


def plan_layout(device_size: int, spec: LayoutSpec) -> list[tuple[str, int, int]]:
    """Pure: (name, start, size) in bytes for every partition. Raises ``DiskError`` if too small."""
    if device_size < spec.minimum_bytes:
        raise DiskError(
            f"device too small: the layout needs {spec.minimum_bytes // MIB} MiB, "
            f"the device has {device_size // MIB} MiB",
            "use a larger device or smaller --slot-mib/--stage-mib/--esp-mib")
    sizes = {ESP: spec.esp_mib, SLOT_A: spec.slot_mib, SLOT_B: spec.slot_mib,
             STATE: spec.state_mib, STAGE: spec.stage_mib}
    plan, start = [], MIB
    for name in PARTITION_ORDER[:-1]:
        plan.append((name, start, sizes[name] * MIB))
        start += sizes[name] * MIB
    persist = (device_size - GPT_TAIL - start) // MIB * MIB
    plan.append((PERSIST, start, persist))
    return plan


@contextlib.contextmanager
def _quiet_parted() -> Iterator[None]:
    """libparted shells out to udevadm on commit and prints to fds 1/2; keep our output clean."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _translate(path: str, e: Exception) -> DiskError:
    return DiskError(f"{path}: partition table error: {e}", "check the device; re-provision it")


def _device(path: str) -> parted.Device:
    if not Path(path).exists():
        raise NotFoundError(f"{path} does not exist", "check the device path (lsblk)")
    try:
        return parted.getDevice(path)
    except Exception as e:  # parted raises its own IOException/DeviceException
        raise _translate(path, e) from e


def write_layout(path: str, spec: LayoutSpec) -> Layout:
    """Write a fresh GPT with the Spine layout on ``path`` (destroys the old table)."""
    device = _device(path)
    size = device.length * device.sectorSize
    plan = plan_layout(size, spec)
    try:
        disk = parted.freshDisk(device, "gpt")
        for name, start, length in plan:
            geometry = parted.Geometry(device=device, start=start // device.sectorSize,
                                       length=length // device.sectorSize)
            fs = parted.FileSystem(type="fat32", geometry=geometry) if name == ESP else None
            part = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geometry)
            disk.addPartition(part, constraint=parted.Constraint(exactGeom=geometry))
            part.set_name(name)
            if name == ESP:
                part.setFlag(parted.PARTITION_BOOT)  # on GPT: the EFI System type GUID
        with _quiet_parted():
            disk.commit()
    except DiskError:
        raise
    except Exception as e:
        raise _translate(path, e) from e
    return read_layout(path)


def read_layout(path: str) -> Layout:
    """Read and check the Spine layout on ``path``.

    Raises ``NotFoundError`` (no such path) or ``DiskError`` (no GPT, or partitions missing).
    """
    device = _device(path)
    try:
        disk = parted.newDisk(device)
    except Exception as e:
        raise DiskError(f"{path} lacks the Spine layout (no partition table: {e})",
                        PROVISION_HINT) from e
    if disk.type != "gpt":
        raise DiskError(f"{path} lacks the Spine layout ({disk.type} table, not GPT)",
                        PROVISION_HINT)
    parts: dict[str, Part] = {}
    for p in disk.partitions:
        name = p.name or ""
        if name in PARTITION_ORDER:
            if name in parts:
                raise DiskError(f"{path} has two partitions named {name}", PROVISION_HINT)
            parts[name] = Part(name, p.number, p.geometry.start * device.sectorSize,
                               p.geometry.length * device.sectorSize)
    missing = [n for n in PARTITION_ORDER if n not in parts]
    if missing:
        raise DiskError(f"{path} lacks the Spine layout (missing: {', '.join(missing)})",
                        PROVISION_HINT)
    return Layout(path, device.length * device.sectorSize, device.sectorSize, parts)
