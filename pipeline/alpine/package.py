"""The package record shared by APKINDEX entries, .PKGINFO and the installed db."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bay0.errors import FormatError
from pipeline.alpine.deps import Dependency, Provide, parse_dependencies, parse_provides

# APKINDEX letter -> .PKGINFO key (the same facts under two spellings).
INDEX_FIELDS = {
    "P": "pkgname", "V": "pkgver", "A": "arch", "S": None, "I": "size", "T": "pkgdesc",
    "U": "url", "L": "license", "o": "origin", "m": "maintainer", "t": "builddate",
    "c": "commit", "k": "provider_priority", "D": "depend", "p": "provides",
    "i": "install_if", "r": "replaces", "q": "replaces_priority",
}


@dataclass(frozen=True)
class Package:
    """One package as a repository describes it. ``checksum`` is apk's ``Q1...`` id."""

    name: str
    version: str
    arch: str = ""
    checksum: str = ""
    size: int = 0
    installed_size: int = 0
    description: str = ""
    url: str = ""
    license: str = ""
    origin: str = ""
    maintainer: str = ""
    build_time: int = 0
    commit: str = ""
    provider_priority: int = 0
    replaces_priority: int = 0
    depends: tuple[Dependency, ...] = ()
    provides: tuple[Provide, ...] = ()
    install_if: tuple[Dependency, ...] = ()
    replaces: tuple[Dependency, ...] = ()
    repository: Any = field(default=None, compare=False, repr=False)

    @property
    def nv(self) -> str:
        """``name-version``, apk's usual way of naming a package."""
        return f"{self.name}-{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"


def package_from_index(fields: dict[str, str], *, where: str = "APKINDEX") -> Package:
    """Build a Package from one APKINDEX stanza (letter -> value).

    Raises ``FormatError`` when P:, V: or C: is missing or a number does not parse.
    """
    for letter in "PVC":
        if letter not in fields:
            raise FormatError(f"{where}: an entry lacks {letter}: ({fields.get('P', '?')})")
    try:
        return Package(
            name=fields["P"], version=fields["V"], arch=fields.get("A", ""),
            checksum=fields["C"], size=int(fields.get("S", 0)),
            installed_size=int(fields.get("I", 0)), description=fields.get("T", ""),
            url=fields.get("U", ""), license=fields.get("L", ""), origin=fields.get("o", ""),
            maintainer=fields.get("m", ""), build_time=int(fields.get("t", 0)),
            commit=fields.get("c", ""), provider_priority=int(fields.get("k", 0)),
            replaces_priority=int(fields.get("q", 0)),
            depends=parse_dependencies(fields.get("D", "")),
            provides=parse_provides(fields.get("p", "")),
            install_if=parse_dependencies(fields.get("i", "")),
            replaces=parse_dependencies(fields.get("r", "")),
        )
    except (ValueError, FormatError) as e:
        raise FormatError(f"{where}: bad entry for {fields['P']}-{fields['V']}: {e}") from e


def parse_pkginfo(text: str) -> dict[str, list[str]]:
    """Parse ``.PKGINFO`` (``key = value`` lines; keys may repeat, ``#`` comments)."""
    result: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        if not sep:
            raise FormatError(f".PKGINFO: bad line {line!r}")
        result.setdefault(key.strip(), []).append(value)
    return result
