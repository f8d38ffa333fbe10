"""What a target device is, and whether we may write to it.

Refuses: a missing path, a read-only device, a device that is mounted or holds
mounted partitions (or swap), the disk of the running system's root, and a fixed
(non-removable) disk unless the operator allows it. Image files are always allowed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bay0.errors import DiskError, NotFoundError

SYS_BLOCK = Path("/sys/class/block")


@dataclass(frozen=True)
class DeviceInfo:
    path: str
    kind: str  # "file", "loop", "removable", "fixed"
    size: int
    model: str = ""
    serial: str = ""
    read_only: bool = False
    mounted: tuple[str, ...] = ()  # mount points (or "swap") found on it or its partitions
    holds_root: bool = False
    devnums: tuple[str, ...] = field(default=(), repr=False)
    part_mounts: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)
    # (start, end, mount point) of byte ranges mounted through loop devices backed by us
    loop_mounts: tuple[tuple[int, int, str], ...] = ()

    def mounted_in(self, start: int, end: int, number: int | None = None) -> tuple[str, ...]:
        """Mount points that use bytes in [start, end) of this device (or partition ``number``)."""
        points = list(self.part_mounts.get(number, ())) if number is not None else []
        points += [pt for s, e, pt in self.loop_mounts if s < end and start < e]
        return tuple(points)

    def describe(self) -> str:
        what = " ".join(x for x in (self.model, self.serial) if x) or self.kind
        return f"{self.path} ({what}, {self.size / 1024**3:.2f} GiB)"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _sys_name(st: os.stat_result) -> Path | None:
    link = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return link.resolve() if link.exists() else None


def _whole_disk(sysdir: Path) -> Path:
    return sysdir.parent if (sysdir / "partition").exists() else sysdir


def _devnums(disk: Path) -> tuple[str, ...]:
    nums = [_read(disk / "dev")]
    nums += [_read(child / "dev") for child in disk.iterdir() if (child / "partition").exists()]
    return tuple(n for n in nums if n)


def _mountinfo() -> list[tuple[str, str, str]]:
    """(major:minor, mount point, source) for every mount we can see."""
    rows = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        sep = fields.index("-")
        rows.append((fields[2], fields[4], fields[sep + 2]))
    return rows


def _root_devnum() -> str:
    for devnum, point, _ in _mountinfo():
        if point == "/":
            return devnum
    return ""


def _swaps() -> list[str]:
    return [line.split()[0] for line in _read(Path("/proc/swaps")).splitlines()[1:] if line]


def _loop_mounts(backing: Path) -> tuple[tuple[int, int, str], ...]:
    """Ranges of ``backing`` that are mounted through a loop device (``mount -o loop,offset=``)."""
    found = []
    mounts = _mountinfo()
    for loop in sorted(SYS_BLOCK.glob("loop*")):
        target = _read(loop / "loop" / "backing_file")
        if not target or Path(target) != backing:
            continue
        start = int(_read(loop / "loop" / "offset") or 0)
        limit = int(_read(loop / "loop" / "sizelimit") or 0)
        end = start + limit if limit else 1 << 62
        nums = _devnums(loop)
        found += [(start, end, pt) for devnum, pt, _ in mounts if devnum in nums]
    return tuple(found)


def inspect(path: str) -> DeviceInfo:
    """Describe ``path`` (a block device or an image file). Raises ``NotFoundError``."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise NotFoundError(f"{path} does not exist", "check the device path (lsblk)") from e
    if stat.S_ISREG(st.st_mode):
        loops = _loop_mounts(p.resolve())
        return DeviceInfo(str(p), "file", st.st_size, read_only=not os.access(p, os.W_OK),
                          mounted=tuple(pt for _, _, pt in loops), loop_mounts=loops)
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(f"{path} is neither a block device nor an image file",
                        "give a whole-disk device such as /dev/sdX, or an image file")
    sysdir = _sys_name(st)
    if sysdir is None:
        raise DiskError(f"{path}: no sysfs entry for this block device", "is sysfs mounted?")
    disk = _whole_disk(sysdir)
    if disk != sysdir:
        raise DiskError(f"{path} is a partition, not a whole disk", f"use /dev/{disk.name}")
    nums = _devnums(disk)
    mounted = [point for devnum, point, _ in _mountinfo() if devnum in nums]
    mounted += [pt for _, _, pt in _loop_mounts(p.resolve())]
    names = {disk.name} | {c.name for c in disk.iterdir() if (c / "partition").exists()}
    if any(Path(os.path.realpath(s)).name in names for s in _swaps()):
        mounted.append("swap")
    root = _root_devnum()
    part_mounts: dict[int, tuple[str, ...]] = {}
    for child in disk.iterdir():
        if (child / "partition").exists():
            points = tuple(pt for devnum, pt, _ in _mountinfo() if devnum == _read(child / "dev"))
            if points:
                part_mounts[int(_read(child / "partition"))] = points
    kind = "loop" if disk.name.startswith("loop") else (
        "removable" if _read(disk / "removable") == "1" else "fixed")
    return DeviceInfo(
        path=str(p),
        kind=kind,
        size=int(_read(disk / "size") or 0) * 512,
        model=_read(disk / "device" / "model"),
        serial=_read(disk / "device" / "serial") or _read(disk / "serial"),
        read_only=_read(disk / "ro") == "1",
        mounted=tuple(mounted),
        holds_root=root in nums,
        devnums=nums,
        part_mounts=part_mounts,
        loop_mounts=_loop_mounts(p.resolve()),
    )


def check_target(info: DeviceInfo, *, allow_fixed: bool = False) -> None:
    """Raise ``DiskError`` unless ``info`` is safe to (re)write."""
    if info.holds_root:
        raise DiskError(f"{info.path} holds the running system's root filesystem",
                        "choose another device (lsblk shows which disk is which)")
    if info.mounted:
        raise DiskError(f"{info.path} is in use (mounted at {', '.join(info.mounted)})",
                        f"unmount it first: umount {' '.join(info.mounted)}")
    if info.read_only:
        raise DiskError(f"{info.path} is read-only", "check the write-protect switch or permissions")
    if info.kind == "fixed" and not allow_fixed:
        raise DiskError(f"{info.path} is a fixed (non-removable) disk",
                        "pass --allow-fixed if you really mean this disk")
