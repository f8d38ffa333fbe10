"""apk dependency atoms: ``[!]name[op version]`` as found in D:, p:, i:, r: and world.

Operators: ``=``, ``<``, ``>``, ``<=``, ``>=``, ``~`` (fuzzy: version prefix),
``><`` (the package checksum, e.g. ``busybox><Q1...``), and ``!`` in front for a
conflict. A ``provides`` entry is ``name`` or ``name=version``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from bay0.errors import FormatError
from pipeline.alpine import version as v

# A name is anything up to the first operator character (command names such as
# "cmd:kdevelop!" contain "!"); only a leading "!" means "conflict".
_ATOM = re.compile(r"^(?P<neg>!?)(?P<name>[^<>=~\s]+)(?:(?P<op>[<>=~]+)(?P<ver>\S+))?$")

_OP_MASKS = {
    "=": v.EQUAL,
    "<": v.LESS,
    ">": v.GREATER,
    "<=": v.LESS | v.EQUAL,
    ">=": v.GREATER | v.EQUAL,
    "=<": v.LESS | v.EQUAL,
    "=>": v.GREATER | v.EQUAL,
    "~": v.EQUAL,
    "=~": v.EQUAL,
    "~=": v.EQUAL,
    "><": v.LESS | v.GREATER,
}


@dataclass(frozen=True)
class Dependency:
    """One dependency atom. ``mask`` is apk's LESS/EQUAL/GREATER bit set."""

    name: str
    op: str = ""
    version: str | None = None
    conflict: bool = False

    @property
    def mask(self) -> int:
        return _OP_MASKS[self.op] if self.op else v.UNCOMPARABLE

    @property
    def fuzzy(self) -> bool:
        return "~" in self.op

    @property
    def by_checksum(self) -> bool:
        return self.op == "><"

    def matches(self, pkg_version: str | None, checksum: str | None = None) -> bool:
        """Does a candidate offering ``pkg_version`` satisfy the version part?

        Conflicts are not inverted here; the caller decides what a match means.
        An unversioned provide (``None``) matches every operator, as in apk.
        """
        if not self.op:
            return True
        if self.by_checksum:
            return checksum is not None and checksum == self.version
        return bool(v.compare(pkg_version, self.version, fuzzy=self.fuzzy) & self.mask)

    def __str__(self) -> str:
        text = ("!" if self.conflict else "") + self.name
        return text + (self.op + (self.version or "") if self.op else "")


@functools.lru_cache(maxsize=65536)
def parse_dependency(text: str) -> Dependency:
    """Parse one atom; raises ``FormatError`` when it is not one.

    Cached: an index repeats the same atoms (``so:libc.musl-x86_64.so.1``)
    thousands of times, and Dependency is immutable.
    """
    match = _ATOM.match(text.strip())
    if not match or (match["op"] and match["op"] not in _OP_MASKS):
        raise FormatError(f"bad apk dependency {text!r}", "expected [!]name[op version]")
    op = match["op"] or ""
    if op and not match["op"] == "><" and not v.is_valid(match["ver"]):
        raise FormatError(f"bad version in apk dependency {text!r}")
    return Dependency(match["name"], op, match["ver"], bool(match["neg"]))


@functools.lru_cache(maxsize=65536)
def parse_dependencies(text: str) -> tuple[Dependency, ...]:
    """Parse a space separated list (a D:/p:/i:/r: value)."""
    return tuple(parse_dependency(atom) for atom in text.split())


@dataclass(frozen=True)
class Provide:
    """What a package provides besides its own name: ``name`` or ``name=version``."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}={self.version}"


@functools.lru_cache(maxsize=65536)
def parse_provides(text: str) -> tuple[Provide, ...]:
    """Parse a p: value; raises ``FormatError`` on an operator other than ``=``."""
    result = []
    for atom in text.split():
        name, sep, ver = atom.partition("=")
        if not name or any(c in name for c in "<>~") or (sep and not ver):
            raise FormatError(f"bad apk provide {atom!r}", "expected name or name=version")
        result.append(Provide(name, ver if sep else None))
    return tuple(result)
