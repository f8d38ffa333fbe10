"""Value objects inside a persona: image record, ceilings, network, mounts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from bay0.errors import ValidationError
from bay0.formats.inventory._base import (
    BLOCK,
    CPU_MAX_RE,
    CPU_PERIOD_RANGE,
    CPU_QUOTA_MIN,
    EGRESS_PROTOCOLS,
    FILE_RE,
    HEX64_RE,
    IDENTITY_FIELDS,
    MEMORY_MIN,
    PIDS_MAX,
    RESERVED_PERSIST_DIRS,
    RESERVED_TARGETS,
    SALT_RE,
    SOURCE_PART_RE,
    TARGET_PART_RE,
    _bool,
    _fail,
    _int,
    _list,
    _split,
    _str,
    _with_extra,
    context,
)

# --- image identity ----------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """A pod image as the inventory pins it: file name plus verity identity."""

    file: str
    size: int
    sha256: str
    data_size: int
    hash_offset: int
    root_hash: str
    salt: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _str(self.file, "image.file", FILE_RE, "a plain file name (letters, digits, ._+-)")
        _str(self.sha256, "image.sha256", HEX64_RE, "64 lowercase hex digits")
        _str(self.root_hash, "image.root_hash", HEX64_RE, "64 lowercase hex digits")
        _str(self.salt, "image.salt", SALT_RE, "lowercase hex of at most 256 bytes")
        for name in ("size", "data_size", "hash_offset"):
            value = _int(getattr(self, name), f"image.{name}", BLOCK, 2**62)
            if value % BLOCK:
                _fail(f"image.{name}", f"{value} is not a multiple of {BLOCK}")
        if self.hash_offset < self.data_size:
            _fail("image.hash_offset", "lies inside the data area")
        if self.size <= self.hash_offset:
            _fail("image.size", "leaves no room for the verity tree after hash_offset")

    @classmethod
    def from_identity(cls, file: str, identity: Any) -> ImageRecord:
        """Pin ``identity`` (an ImageIdentity or anything with its fields)."""
        values = {name: getattr(identity, name) for name in IDENTITY_FIELDS}
        for name in ("sha256", "root_hash", "salt"):
            if isinstance(values[name], bytes):
                values[name] = values[name].hex()
            values[name] = str(values[name]).lower()
        return cls(file=file, **values)

    @classmethod
    def from_dict(cls, data: Any) -> ImageRecord:
        known, extra = _split(data, "image", ("file", *IDENTITY_FIELDS))
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        known = {name: getattr(self, name) for name in ("file", *IDENTITY_FIELDS)}
        return _with_extra(self.extra, known)


# --- ceilings ----------------------------------------------------------------------


def parse_cpu_max(text: Any, where: str = "cpu_max") -> tuple[int, int]:
    """Split a ``"QUOTA PERIOD"`` cpu.max value into integers (validated)."""
    match = CPU_MAX_RE.fullmatch(_str(text, where))
    if not match:
        _fail(where, f"{text!r} is not \"QUOTA PERIOD\" in microseconds (e.g. \"50000 100000\")")
    quota, period = int(match[1]), int(match[2])
    low, high = CPU_PERIOD_RANGE
    if not low <= period <= high:
        _fail(where, f"period {period} is outside {low}..{high}")
    if quota < CPU_QUOTA_MIN:
        _fail(where, f"quota {quota} is below the kernel minimum {CPU_QUOTA_MIN}", "raise --cpu")
    if quota > period * 4096:
        _fail(where, f"quota {quota} is more than 4096 CPUs", "lower --cpu")
    return quota, period


@dataclass(frozen=True)
class Ceilings:
    """cgroup v2 limits: ``cpu_max`` as written to cpu.max, memory in bytes, pids."""

    cpu_max: str
    memory_max: int
    pids_max: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        parse_cpu_max(self.cpu_max)
        _int(self.memory_max, "memory_max", MEMORY_MIN, 2**62)
        if self.memory_max % BLOCK:
            _fail("memory_max", f"{self.memory_max} is not a multiple of {BLOCK} bytes")
        _int(self.pids_max, "pids_max", 1, PIDS_MAX)

    @property
    def cpus(self) -> Fraction:
        """The CPU share as an exact fraction (quota / period)."""
        quota, period = parse_cpu_max(self.cpu_max)
        return Fraction(quota, period)

    @classmethod
    def from_dict(cls, data: Any, where: str = "ceilings") -> Ceilings:
        known, extra = _split(data, where, ("cpu_max", "memory_max", "pids_max"))
        with context(where):
            return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        known = {"cpu_max": self.cpu_max, "memory_max": self.memory_max, "pids_max": self.pids_max}
        return _with_extra(self.extra, known)


# --- network -----------------------------------------------------------------------


@dataclass(frozen=True)
class EgressRule:
    """One allowed outgoing flow: destination network, protocol, port."""

    dest: str
    proto: str
    port: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(_str(self.dest, "dest"), strict=True)
        except ValueError as e:
            _fail("dest", f"{self.dest!r} is not a network in CIDR form ({e})")
        if "/" not in self.dest or str(net) != self.dest:
            _fail("dest", f"{self.dest!r} must be written as {str(net)!r}")
        if self.proto not in EGRESS_PROTOCOLS:
            _fail("proto", f"{self.proto!r} is not one of {', '.join(EGRESS_PROTOCOLS)}")
        _int(self.port, "port", 1, 65535)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.dest)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EgressRule:
        known, extra = _split(data, where, ("dest", "proto", "port"))
        with context(where):
            return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra(self.extra, {"dest": self.dest, "proto": self.proto, "port": self.port})


def _check_address(address: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        iface = ipaddress.ip_interface(_str(address, "address"))
    except ValueError as e:
        _fail("address", f"{address!r} is not an address with prefix ({e})")
    if "/" not in address or str(iface) != address:
        _fail("address", f"{address!r} must be written as {str(iface)!r} (with its prefix)")
    ip = iface.ip
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        _fail("address", f"{ip} is not a unicast host address")
    net = iface.network
    if net.num_addresses > 2 and ip in (net.network_address, net.broadcast_address):
        _fail("address", f"{ip} is the network or broadcast address of {net}")
    return iface


@dataclass(frozen=True)
class Network:
    """An explicit network policy: a veth with ``address``; egress allowlist, default deny."""

    address: str
    egress: tuple[EgressRule, ...] = ()
    gateway: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        iface = _check_address(self.address)
        if self.gateway is not None:
            try:
                gw = ipaddress.ip_address(_str(self.gateway, "gateway"))
            except ValueError as e:
                _fail("gateway", f"{self.gateway!r} is not an address ({e})")
            if gw not in iface.network or gw == iface.ip or str(gw) != self.gateway:
                _fail("gateway", f"{self.gateway} is not another host of {iface.network}")
        if not isinstance(self.egress, tuple):
            _fail("egress", "must be a tuple of EgressRule")
        seen: set[tuple[str, str, int]] = set()
        for index, rule in enumerate(self.egress):
            if not isinstance(rule, EgressRule):
                _fail(f"egress[{index}]", "must be an EgressRule")
            if rule.network.version != iface.version:
                _fail(f"egress[{index}]", f"{rule.dest} is not IPv{iface.version} like the address")
            key = (rule.dest, rule.proto, rule.port)
            if key in seen:
                _fail(f"egress[{index}]", f"duplicate rule {rule.dest}:{rule.proto}:{rule.port}")
            seen.add(key)

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)

    @classmethod
    def from_value(cls, data: Any) -> Network | None:
        """``"none"`` → None (loopback only); an object → Network."""
        if data == "none":
            return None
        if not isinstance(data, dict):
            _fail("network", f"must be \"none\" or an object, not {data!r}")
        known, extra = _split(data, "network", ("address", "egress"), ("gateway",))
        with context("network"):
            rules = _list(known["egress"], "egress")
            egress = tuple(EgressRule.from_dict(r, f"egress[{i}]") for i, r in enumerate(rules))
            return cls(known["address"], egress, known.get("gateway"), extra)

    def to_dict(self) -> dict[str, Any]:
        known = {
            "address": self.address,
            "gateway": self.gateway,
            "egress": [rule.to_dict() for rule in self.egress],
        }
        return _with_extra(self.extra, known)


# --- mounts ------------------------------------------------------------------------


def check_mount_source(source: Any, where: str = "source") -> str:
    """Validate a path relative to /persist that cannot escape it.

    Refused: absolute paths, empty/``.``/``..`` components, components starting
    with ``.``, ``-`` or ``~``, backslashes, NUL and other characters outside
    ``[A-Za-z0-9._+-]``, and bay0's reserved top-level directories.
    """
    _str(source, where)
    if source.startswith("/"):
        _fail(where, f"{source!r} is absolute; give a path relative to /persist")
    bad = next((c for c in source if c in "\\\0" or not c.isprintable()), None)
    if bad is not None:
        _fail(where, f"{source!r} contains {bad!r}; it could escape /persist")
    parts = source.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            _fail(where, f"{source!r} has a {part or 'empty'!r} component; it escapes /persist")
        if not SOURCE_PART_RE.fullmatch(part):
            _fail(where, f"{source!r}: component {part!r} looks like a link or option; "
                  "use letters, digits and ._+- not starting with . - ~")
    if parts[0] in RESERVED_PERSIST_DIRS:
        _fail(where, f"/persist/{parts[0]} is reserved for bay0")
    if len(source) > 1024 or len(parts) > 16:
        _fail(where, "is too long (at most 1024 bytes and 16 components)")
    return source


def check_mount_target(target: Any, where: str = "target") -> str:
    """Validate an absolute, normalized path inside the persona (not /, /proc, /dev, /sys).

    ``/`` itself is refused by the empty-component rule.
    """
    _str(target, where)
    if not target.startswith("/"):
        _fail(where, f"{target!r} is not an absolute path")
    parts = target[1:].split("/")
    for part in parts:
        if part in ("", ".", "..") or not TARGET_PART_RE.fullmatch(part):
            _fail(where, f"{target!r}: component {part!r} is not a plain name")
    for reserved in RESERVED_TARGETS:
        if target == reserved or target.startswith(reserved + "/"):
            _fail(where, f"{target} is set up by bay0 and cannot be a bind mount")
    if len(target) > 1024:
        _fail(where, "is too long (at most 1024 bytes)")
    return target


@dataclass(frozen=True)
class Mount:
    """A bind mount of /persist/SOURCE at TARGET; read-only and noexec unless declared."""

    source: str
    target: str
    rw: bool = False
    exec: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_mount_source(self.source)
        check_mount_target(self.target)
        _bool(self.rw, "rw")
        _bool(self.exec, "exec")
        if self.exec and not self.rw:
            # Code that the persona may run but not write comes from outside its
            # verified image; if it is fixed it belongs in the image (see the doc).
            raise ValidationError(
                f"exec on a read-only mount ({self.source}:{self.target})",
                "put fixed code in the pod image, or declare the mount :rw:exec",
            )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Mount:
        known, extra = _split(data, where, ("source", "target", "rw", "exec"))
        with context(where):
            return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        known = {"source": self.source, "target": self.target, "rw": self.rw, "exec": self.exec}
        return _with_extra(self.extra, known)
