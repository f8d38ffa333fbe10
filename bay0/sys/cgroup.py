"""cgroup v2: one directory per persona, its ceilings, its events, and cgroup.kill.

A ceiling that cannot be set is an error, never a silent "unlimited": a persona
without its memory or pids ceiling is a containment failure (bay0 reboots).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bay0.errors import SpineError


class CgroupError(SpineError):
    """A cgroup could not be made, limited, killed or removed (containment failure)."""

    default_hint = "bay0 needs cgroup v2 mounted with cpu, memory and pids delegated"


@dataclass(frozen=True)
class Ceilings:
    """Resource ceilings, named as in the inventory (``bay0.formats.inventory.Ceilings``,
    which is accepted wherever this is); ``None`` leaves a resource unlimited (tests only).
    """

    cpu_max: str | None = None  # as written to cpu.max: "QUOTA PERIOD" or "max PERIOD"
    memory_max: int | None = None  # bytes
    pids_max: int | None = None


def ceiling_writes(ceilings: object) -> list[tuple[str, str]]:
    """The (file, value) writes that apply ``ceilings``, in order."""
    out: list[tuple[str, str]] = []
    cpu, memory, pids = (getattr(ceilings, a, None) for a in ("cpu_max", "memory_max", "pids_max"))
    if cpu is not None:
        out.append(("cpu.max", str(cpu)))
    if memory is not None:
        out += [("memory.max", str(memory)), ("memory.swap.max", "0"), ("memory.oom.group", "1")]
    if pids is not None:
        out.append(("pids.max", str(pids)))
    return out


def needed_controllers(ceilings: object) -> set[str]:
    """The controllers ``ceilings`` need."""
    return {file.split(".")[0] for file, _ in ceiling_writes(ceilings)}


def cgroup2_mount() -> Path:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    raise CgroupError("cgroup v2 is not mounted")


def own_cgroup() -> Path:
    """The cgroup v2 directory this process lives in."""
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("0::"):
                return cgroup2_mount() / line[3:].strip().lstrip("/")
    raise CgroupError("this process is in no cgroup v2 hierarchy")


def available_controllers(parent: Path) -> set[str]:
    """Controllers a child of ``parent`` can use (``parent/cgroup.subtree_control``)."""
    try:
        return set((parent / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()


def enable_controllers(parent: Path, names: set[str]) -> None:
    """Delegate ``names`` to the children of ``parent``; raises ``CgroupError``."""
    try:
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{n}" for n in sorted(names)))
    except OSError as e:
        raise CgroupError(f"cannot enable {sorted(names)} in {parent}: {e.strerror}") from e


def read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file such as ``memory.events`` or ``cgroup.events``."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class Cgroup:
    """One persona's cgroup directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: Path | str, name: str, ceilings: object | None) -> Cgroup:
        """Make ``parent/name`` and apply ``ceilings``; raises ``CgroupError`` (nothing left behind)."""
        if ceilings is not None:
            missing = needed_controllers(ceilings) - available_controllers(Path(parent))
            if missing:
                raise CgroupError(f"cgroup {parent} does not delegate {', '.join(sorted(missing))}")
        path = os.path.join(parent, name)  # one Path below, not two: this runs at every launch
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from e
        group = cls(Path(path))
        try:
            for file, value in (ceiling_writes(ceilings) if ceilings else []):
                group.write(file, value)
        except CgroupError:
            group.remove()
            raise
        return group

    def write(self, file: str, value: str) -> None:
        """Write ``value`` to one control file; raises ``CgroupError``."""
        try:
            fd = os.open(self.path / file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise CgroupError(f"cannot set {file}={value} in {self.path}: {e.strerror}") from e

    def open_dir(self) -> int:
        """An fd on the cgroup directory (for clone3's CLONE_INTO_CGROUP and openat)."""
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def pids(self) -> list[int]:
        """Processes in this cgroup."""
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def events(self, file: str = "memory.events") -> dict[str, int]:
        """Counters from ``memory.events``, ``pids.events`` or ``cgroup.events`` (empty if absent)."""
        try:
            return read_keyed(self.path / file)
        except FileNotFoundError:
            return {}

    def populated(self) -> bool:
        """Whether any process is left in the cgroup."""
        return self.events("cgroup.events").get("populated", 0) == 1

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (``cgroup.kill``, Linux 5.14); raises ``CgroupError``."""
        if (self.path / "cgroup.kill").exists():
            self.write("cgroup.kill", "1")
            return
        for pid in self.pids():  # older kernels: best effort, the PID namespace does the rest
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir once empty (retrying while exiting tasks leave); raises ``CgroupError``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {self.path}: {e.strerror}") from e
                time.sleep(0.001)
