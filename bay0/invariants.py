"""The machine's invariants, checked at boot and before every watchdog ping.

1. ``/`` is mounted read-only from a dm-verity device (its device-mapper UUID starts
   with ``CRYPT-VERITY-``, which veritysetup sets, and the block device is read-only).
2. ``/persist`` is mounted ``nodev,nosuid,noexec``.
3. Nothing is mounted that the allowlist below does not name, each allowed mount has
   its expected filesystem type and flags, and no mount point is mounted twice (a
   second mount would hide the first).

The parsing and checking are pure (text and a lookup function in, violations out);
``check_system`` reads /proc/self/mountinfo and /sys. Any violation reboots.
"""

from __future__ import annotations

from bay0.errors import FormatError
from bay0.frozen import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # kept off the boot path (see bay0.frozen)
    from collections.abc import Callable, Iterable

VERITY_UUID_PREFIX = "CRYPT-VERITY-"
POD_MOUNT_DIR = "/run/bay0/pods"
_NAME = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"


class MountEntry(Frozen):
    """One line of /proc/self/mountinfo (proc(5))."""

    __slots__ = ("mount_id", "parent_id", "device", "root", "mount_point", "options", "fstype",
                 "source", "super_options")

    def __init__(self, mount_id: int, parent_id: int, device: str, root: str, mount_point: str,
                 options: frozenset[str], fstype: str, source: str,
                 super_options: frozenset[str]) -> None:
        # device is "major:minor"; options are the per-mount ones (ro, nodev, nosuid, ...)
        self._set(mount_id=mount_id, parent_id=parent_id, device=device, root=root,
                  mount_point=mount_point, options=options, fstype=fstype, source=source,
                  super_options=super_options)

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


class Rule(Frozen):
    """An allowed mount: where (exact path or regex), which types, which flags."""

    __slots__ = ("where", "fstypes", "flags", "verity")

    def __init__(self, where: str, fstypes: frozenset[str], flags: frozenset[str],
                 verity: bool = False) -> None:
        self._set(where=where, fstypes=fstypes, flags=flags, verity=verity)

    def matches(self, mount_point: str) -> bool:
        if self.where.startswith("^"):
            import re  # only for the pods' rule: re stays off the boot path

            return re.fullmatch(self.where[1:], mount_point) is not None
        return self.where == mount_point


def _rule(where: str, fstypes: str, flags: str = "", verity: bool = False) -> Rule:
    return Rule(where, frozenset(fstypes.split()), frozenset(flags.split()), verity)


# What the initramfs hands over and what bay0 mounts itself; nothing else may exist.
ALLOWED = (
    _rule("/", "squashfs", "ro", verity=True),
    _rule("/proc", "proc", "nodev nosuid noexec"),
    _rule("/sys", "sysfs", "nodev nosuid noexec"),
    _rule("/dev", "devtmpfs", "nosuid"),
    _rule("/run", "tmpfs", "nodev nosuid"),
    _rule("/tmp", "tmpfs", "nodev nosuid noexec"),
    _rule("/persist", "ext4", "nodev nosuid noexec"),
    _rule("/sys/fs/cgroup", "cgroup2", "nodev nosuid noexec"),
    _rule("/mnt/stage", "ext4", "ro nodev nosuid noexec"),
    _rule(f"^{POD_MOUNT_DIR}/{_NAME}", "squashfs", "ro nodev nosuid", verity=True),
)
REQUIRED = ("/", "/persist")


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` = space, ``\\134`` = backslash)."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo; raises ``FormatError`` naming the bad line."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(MountEntry(
                mount_id=int(fields[0]), parent_id=int(fields[1]), device=fields[2],
                root=unescape(fields[3]), mount_point=unescape(fields[4]),
                options=frozenset(fields[5].split(",")), fstype=fields[sep + 1],
                source=unescape(fields[sep + 2]),
                super_options=frozenset(fields[sep + 3].split(",")) if len(fields) > sep + 3 else frozenset(),
            ))
        except (ValueError, IndexError) as e:
            raise FormatError(f"mountinfo line {number} does not parse: {line!r}",
                              "is /proc mounted?") from e
    return entries


def check_mounts(entries: Iterable[MountEntry], dm_uuid: Callable[[str], str | None],
                 device_read_only: Callable[[str], bool],
                 allowed: tuple[Rule, ...] = ALLOWED) -> list[str]:
    """Every violation of the invariants in ``entries``, one line each (empty: all good).

    ``dm_uuid(device)`` returns the device-mapper UUID of a ``major:minor`` (None when it
    is not a dm device); ``device_read_only(device)`` whether the block device is ro.
    """
    problems: list[str] = []
    seen: dict[str, MountEntry] = {}
    for entry in entries:
        where = entry.mount_point
        if where in seen:
            problems.append(f"{where} is mounted twice ({seen[where].fstype}, then {entry.fstype})")
        seen[where] = entry
        rule = next((r for r in allowed if r.matches(where)), None)
        if rule is None:
            problems.append(f"unexpected mount {where} ({entry.fstype} from {entry.source})")
            continue
        problems += _check_entry(entry, rule, dm_uuid, device_read_only)
    for where in REQUIRED:
        if where not in seen:
            problems.append(f"{where} is not mounted")
    return problems


def _check_entry(entry: MountEntry, rule: Rule, dm_uuid: Callable[[str], str | None],
                 device_read_only: Callable[[str], bool]) -> list[str]:
    where = entry.mount_point
    if entry.fstype not in rule.fstypes:
        return [f"{where} is {entry.fstype}, expected {'/'.join(sorted(rule.fstypes))}"]
    problems = []
    missing = sorted(rule.flags - entry.options)
    if missing:
        problems.append(f"{where} is mounted without {','.join(missing)}")
    if rule.verity:
        uuid = dm_uuid(entry.device)
        if uuid is None:
            problems.append(f"{where} is not on device-mapper (device {entry.device}, {entry.source})")
        elif not uuid.startswith(VERITY_UUID_PREFIX):
            problems.append(f"{where} is on a device-mapper device that is not dm-verity (uuid {uuid!r})")
        elif not device_read_only(entry.device):
            problems.append(f"{where} is on a writable block device ({entry.device})")
    return problems


# ---- the system side ------------------------------------------------------------------


def sys_dm_uuid(device: str, sysfs: str = "/sys") -> str | None:
    """The dm UUID of block device ``major:minor`` from sysfs, None if not device-mapper."""
    try:
        with open(f"{sysfs}/dev/block/{device}/dm/uuid", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def read_uevent(path: str) -> dict[str, str]:
    """The ``KEY=value`` lines of a sysfs ``uevent`` file. Raises ``OSError``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return dict(line.rstrip("\n").partition("=")[::2] for line in f)


def sys_read_only(device: str, sysfs: str = "/sys") -> bool:
    """Whether block device ``major:minor`` is read-only (sysfs ``ro`` attribute)."""
    try:
        with open(f"{sysfs}/dev/block/{device}/ro", encoding="utf-8") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def check_system(mountinfo: str = "/proc/self/mountinfo", sysfs: str = "/sys") -> list[str]:
    """Check the running system; returns violations (an unreadable mountinfo is one)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            entries = parse_mountinfo(f.read())
    except (OSError, FormatError) as e:
        return [f"cannot read the mount table: {e}"]
    return check_mounts(entries, lambda d: sys_dm_uuid(d, sysfs), lambda d: sys_read_only(d, sysfs))
