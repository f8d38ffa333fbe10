"""A persona (one contained service) and a shell (a tier budget)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bay0.formats.inventory._base import (
    ENV_KEY_RE,
    ID_MAX,
    MAX_BACKOFF,
    MAX_RESTARTS,
    NAME_RE,
    RESTART_POLICIES,
    SECCOMP_PROFILES,
    _fail,
    _int,
    _list,
    _split,
    _str,
    _with_extra,
    context,
)
from bay0.formats.inventory.fields import Ceilings, ImageRecord, Mount, Network

# --- persona -----------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    """What bay0 does when the persona's process exits (backoff in whole seconds)."""

    policy: str = "on-failure"
    max_restarts: int = 5
    backoff: int = 2
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.policy not in RESTART_POLICIES:
            _fail("policy", f"{self.policy!r} is not one of {', '.join(RESTART_POLICIES)}")
        _int(self.max_restarts, "max_restarts", 0, MAX_RESTARTS)
        _int(self.backoff, "backoff", 0, MAX_BACKOFF)

    @classmethod
    def from_dict(cls, data: Any) -> Restart:
        known, extra = _split(data, "restart", ("policy", "max_restarts", "backoff"))
        with context("restart"):
            return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        known = {"policy": self.policy, "max_restarts": self.max_restarts, "backoff": self.backoff}
        return _with_extra(self.extra, known)


@dataclass(frozen=True)
class User:
    """The unprivileged uid/gid the persona runs as (never 0, never (uid_t)-1)."""

    uid: int
    gid: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _int(self.uid, "user.uid", 1, ID_MAX)
        _int(self.gid, "user.gid", 1, ID_MAX)

    @classmethod
    def from_dict(cls, data: Any) -> User:
        known, extra = _split(data, "user", ("uid", "gid"))
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra(self.extra, {"uid": self.uid, "gid": self.gid})


def _check_command(command: Any) -> None:
    if not isinstance(command, tuple) or not command:
        _fail("command", "must be a non-empty argv list", "pass --command \"/path/to/prog args\"")
    for index, arg in enumerate(command):
        _str(arg, f"command[{index}]")
        if "\0" in arg:
            _fail(f"command[{index}]", "contains NUL")
    if not command[0].startswith("/"):
        _fail("command[0]", f"{command[0]!r} is not an absolute path (bay0 does no PATH lookup)")
    if sum(len(a.encode()) + 1 for a in command) > 131072:
        _fail("command", "is longer than 128 KiB")


def _check_environment(env: Any) -> None:
    if not isinstance(env, dict):
        _fail("environment", "must be an object of strings")
    if len(env) > 256:
        _fail("environment", "has more than 256 variables")
    for key, value in env.items():
        _str(key, "environment", ENV_KEY_RE, "a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        _str(value, f"environment.{key}")
        if "\0" in value:
            _fail(f"environment.{key}", "contains NUL")


@dataclass(frozen=True)
class Persona:
    """One contained service: its pinned image, ceilings, isolation and supervision."""

    name: str
    image: ImageRecord
    ceilings: Ceilings
    command: tuple[str, ...]
    user: User
    network: Network | None = None  # None = "none": own netns with loopback only
    seccomp: str = "default"
    mounts: tuple[Mount, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    restart: Restart = field(default_factory=Restart)
    shell: str | None = None
    # Purge generation: when it exceeds the one bay0 last applied, bay0 purges the
    # persona once (cgroup.kill, unmount, detach, wipe scratch) before starting it again.
    purge: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _str(self.name, "persona", NAME_RE, "a name (a-z, 0-9, '-', at most 63, like a DNS label)")
        with context(f"persona {self.name}"):
            self._check_fields()

    def _check_fields(self) -> None:
        for attr, cls in (("image", ImageRecord), ("ceilings", Ceilings), ("restart", Restart),
                          ("user", User)):
            if not isinstance(getattr(self, attr), cls):
                _fail(attr, f"must be a {cls.__name__}")
        if self.network is not None and not isinstance(self.network, Network):
            _fail("network", "must be a Network or None (\"none\")")
        _check_command(self.command)
        if self.seccomp not in SECCOMP_PROFILES:
            _fail("seccomp", f"unknown profile {self.seccomp!r}",
                  f"use one of: {', '.join(SECCOMP_PROFILES)}")
        if not isinstance(self.mounts, tuple):
            _fail("mounts", "must be a tuple of Mount")
        targets: set[str] = set()
        for index, mount in enumerate(self.mounts):
            if not isinstance(mount, Mount):
                _fail(f"mounts[{index}]", "must be a Mount")
            if mount.target in targets:
                _fail(f"mounts[{index}]", f"target {mount.target} is mounted twice")
            targets.add(mount.target)
        _check_environment(self.environment)
        _int(self.purge, "purge", 0, 2**31 - 1)
        if self.shell is not None:
            _str(self.shell, "shell", NAME_RE, "a shell name")

    @classmethod
    def from_dict(cls, data: Any, where: str = "persona") -> Persona:
        required = ("name", "image", "ceilings", "command", "user", "network", "seccomp", "restart")
        known, extra = _split(data, where, required, ("mounts", "environment", "shell", "purge"))
        name = _str(known["name"], f"{where}: name", NAME_RE, "a name (a-z, 0-9, '-')")
        with context(f"persona {name}"):
            mounts = _list(known.get("mounts", []), "mounts")
            command = _list(known["command"], "command")
            values = {
                "image": ImageRecord.from_dict(known["image"]),
                "user": User.from_dict(known["user"]),
                "ceilings": Ceilings.from_dict(known["ceilings"]),
                "network": Network.from_value(known["network"]),
                "restart": Restart.from_dict(known["restart"]),
                "mounts": tuple(Mount.from_dict(m, f"mounts[{i}]") for i, m in enumerate(mounts)),
            }
        return cls(
            name=name, command=tuple(command),
            seccomp=known["seccomp"], environment=known.get("environment", {}),
            shell=known.get("shell"), purge=known.get("purge", 0), extra=extra, **values,
        )

    def to_dict(self) -> dict[str, Any]:
        known = {
            "name": self.name,
            "image": self.image.to_dict(),
            "ceilings": self.ceilings.to_dict(),
            "command": list(self.command),
            "user": self.user.to_dict(),
            "network": "none" if self.network is None else self.network.to_dict(),
            "seccomp": self.seccomp,
            "mounts": [m.to_dict() for m in self.mounts],
            "environment": dict(self.environment),
            "restart": self.restart.to_dict(),
            "shell": self.shell,
            "purge": self.purge,
        }
        return _with_extra(self.extra, known)


@dataclass(frozen=True)
class Shell:
    """A tier: a named budget that the sum of its personas' ceilings must fit inside."""

    name: str
    budget: Ceilings
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _str(self.name, "shell", NAME_RE, "a name (a-z, 0-9, '-', at most 63)")
        if not isinstance(self.budget, Ceilings):
            _fail(f"shell {self.name}: budget", "must be a Ceilings")

    @classmethod
    def from_dict(cls, data: Any, where: str = "shell") -> Shell:
        known, extra = _split(data, where, ("name", "budget"))
        name = _str(known["name"], f"{where}: name", NAME_RE, "a name (a-z, 0-9, '-')")
        with context(f"shell {name}"):
            return cls(name, Ceilings.from_dict(known["budget"], "budget"), extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra(self.extra, {"name": self.name, "budget": self.budget.to_dict()})
