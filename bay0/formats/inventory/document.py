"""The inventory document: personas + shells, cross-entry rules, parsing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from bay0.errors import FormatError
from bay0.formats import canonical
from bay0.formats.inventory._base import (
    FORMAT,
    FORMAT_MAJOR,
    MAX_DOCUMENT_BYTES,
    _fail,
    _int,
    _list,
    _object,
    _split,
    _str,
    _with_extra,
)
from bay0.formats.inventory.persona import Persona, Shell

# --- the document ------------------------------------------------------------------


def check_format(value: Any) -> str:
    """Accept ``spine-inventory/1`` and its minors (``/1.N``); refuse other majors."""
    match = re.fullmatch(r"spine-inventory/([0-9]+)(?:\.[0-9]+)?", _str(value, "inventory: format"))
    if not match:
        raise FormatError(f"not a Spine inventory (format {value!r})", f"expected {FORMAT}")
    if int(match[1]) != FORMAT_MAJOR:
        raise FormatError(f"unsupported inventory format {value}", "upgrade spinectl/bay0")
    return value


def _sum_ceilings(members: Sequence[Persona]) -> tuple[Fraction, int, int]:
    return (
        sum((p.ceilings.cpus for p in members), Fraction(0)),
        sum(p.ceilings.memory_max for p in members),
        sum(p.ceilings.pids_max for p in members),
    )


def _check_budget(shell: Shell, members: Sequence[Persona]) -> None:
    cpus, memory, pids = _sum_ceilings(members)
    names = ", ".join(p.name for p in members)
    budget = shell.budget
    hint = "raise the shell's budget (spinectl inventory shell add --force) or lower a ceiling"
    for what, used, limit in (
        ("cpu", cpus, budget.cpus), ("memory", memory, budget.memory_max),
        ("pids", pids, budget.pids_max),
    ):
        if used > limit:
            shown = (f"{float(used):g} > {float(limit):g} CPUs" if what == "cpu"
                     else f"{used} > {limit}")
            _fail(f"shell {shell.name}", f"over budget: {what} of {names} sums to {shown}", hint)


@dataclass(frozen=True)
class Inventory:
    """The whole document. ``created``/``expires`` are integer seconds since the epoch (UTC)."""

    version: int
    created: int
    expires: int
    personas: tuple[Persona, ...] = ()
    shells: tuple[Shell, ...] = ()
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_format(self.format)
        _int(self.version, "inventory: version", 0, 2**63 - 1)
        _int(self.created, "inventory: created", 0, 2**63 - 1)
        _int(self.expires, "inventory: expires", 0, 2**63 - 1)
        if self.expires <= self.created:
            _fail("inventory: expires", "is not after created", "sign with --expires-days N")
        if not isinstance(self.personas, tuple) or not isinstance(self.shells, tuple):
            _fail("inventory", "personas and shells must be tuples")
        self._check_names()
        self._check_shells()
        self._check_addresses()

    def _check_names(self) -> None:
        for kind, items in (("persona", self.personas), ("shell", self.shells)):
            seen: set[str] = set()
            for item in items:
                if not isinstance(item, Persona if kind == "persona" else Shell):
                    _fail("inventory", f"{kind}s must hold {kind.title()} objects")
                if item.name in seen:
                    _fail(f"{kind} {item.name}", "duplicate name",
                          f"names are unique: remove or rename one {kind}")
                seen.add(item.name)

    def _check_shells(self) -> None:
        shells = {shell.name: shell for shell in self.shells}
        for persona in self.personas:
            if persona.shell is not None and persona.shell not in shells:
                _fail(f"persona {persona.name}: shell", f"{persona.shell!r} is not defined",
                      "add it with spinectl inventory shell add, or drop --shell")
        for shell in self.shells:
            _check_budget(shell, [p for p in self.personas if p.shell == shell.name])

    def _check_addresses(self) -> None:
        seen: dict[str, str] = {}
        for persona in self.personas:
            if persona.network is None:
                continue
            ip = str(persona.network.interface.ip)
            if ip in seen:
                _fail(f"persona {persona.name}: network.address",
                      f"{ip} is already used by persona {seen[ip]}")
            seen[ip] = persona.name

    def persona(self, name: str) -> Persona | None:
        return next((p for p in self.personas if p.name == name), None)

    def shell(self, name: str) -> Shell | None:
        return next((s for s in self.shells if s.name == name), None)

    def with_persona(self, persona: Persona) -> Inventory:
        """Replace the persona of that name in place, or append it (re-validated)."""
        if self.persona(persona.name) is None:
            return replace(self, personas=(*self.personas, persona))
        items = tuple(persona if p.name == persona.name else p for p in self.personas)
        return replace(self, personas=items)

    def without_persona(self, name: str) -> Inventory:
        return replace(self, personas=tuple(p for p in self.personas if p.name != name))

    def with_shell(self, shell: Shell) -> Inventory:
        if self.shell(shell.name) is None:
            return replace(self, shells=(*self.shells, shell))
        return replace(self, shells=tuple(shell if s.name == shell.name else s for s in self.shells))

    def without_shell(self, name: str) -> Inventory:
        return replace(self, shells=tuple(s for s in self.shells if s.name != name))

    @classmethod
    def from_dict(cls, data: Any) -> Inventory:
        """Build and validate. Raises ``FormatError``/``ValidationError``."""
        obj = _object(data, "inventory")
        check_format(obj.get("format"))
        known, extra = _split(obj, "inventory", ("format", "version", "created", "expires",
                                                 "personas", "shells"))
        personas = _list(known["personas"], "inventory: personas")
        shells = _list(known["shells"], "inventory: shells")
        return cls(
            version=known["version"], created=known["created"], expires=known["expires"],
            personas=tuple(Persona.from_dict(p, f"personas[{i}]") for i, p in enumerate(personas)),
            shells=tuple(Shell.from_dict(s, f"shells[{i}]") for i, s in enumerate(shells)),
            format=known["format"], extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        known = {
            "format": self.format, "version": self.version,
            "created": self.created, "expires": self.expires,
            "personas": [p.to_dict() for p in self.personas],
            "shells": [s.to_dict() for s in self.shells],
        }
        return _with_extra(self.extra, known)

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes (what gets signed)."""
        return canonical.dumps(self.to_dict())


def parse_inventory(data: bytes, *, require_canonical: bool = False) -> Inventory:
    """Parse and validate inventory bytes.

    Raises ``FormatError`` (not JSON, too large, floats, duplicate keys, unknown major
    format, not canonical when ``require_canonical``) or ``ValidationError``.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError(f"inventory is {len(data)} bytes, over {MAX_DOCUMENT_BYTES}",
                          "split the deployment or drop unused personas")
    obj = canonical.loads(data)
    if require_canonical and canonical.dumps(obj) != data:
        raise FormatError("inventory bytes are not canonical JSON",
                          "re-sign it with spinectl inventory sign (it writes canonical JSON)")
    return Inventory.from_dict(obj)
