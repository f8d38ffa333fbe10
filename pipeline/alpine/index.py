"""APKINDEX.tar.gz: a signature member, then a tar with DESCRIPTION and APKINDEX.

APKINDEX is stanzas of ``X:value`` lines separated by blank lines (see
package.py for the letters). The signature covers the compressed second member.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from bay0.errors import FormatError
from pipeline.alpine.apk import split_signed
from pipeline.alpine.keys import Keyring
from pipeline.alpine.package import Package, package_from_index


@dataclass(frozen=True)
class Index:
    description: str
    packages: tuple[Package, ...]
    key_name: str


def parse_index_text(text: str, *, where: str = "APKINDEX", repository=None) -> list[Package]:
    """Parse APKINDEX text into packages (in file order). Raises ``FormatError``."""
    packages = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line:
                continue
            letter, sep, value = line.partition(":")
            if not sep or len(letter) != 1:
                raise FormatError(f"{where}: bad line {line[:60]!r}")
            fields[letter] = value
        if fields:
            pkg = package_from_index(fields, where=where)
            if repository is not None:
                object.__setattr__(pkg, "repository", repository)
            packages.append(pkg)
    return packages


def read_index(data: bytes, keyring: Keyring, *, where: str, repository=None) -> Index:
    """Verify and parse an APKINDEX.tar.gz.

    Raises ``UnknownKeyError``/``BadSignatureError`` (signature), ``CorruptionError``
    (broken gzip) or ``FormatError`` (no APKINDEX inside, bad stanza).
    """
    key_name, member, _end = split_signed(data, keyring, f"index {where}")
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(member.content), mode="r:") as tar:
            for entry in tar:
                if entry.isfile() and entry.name in ("APKINDEX", "DESCRIPTION"):
                    files[entry.name] = tar.extractfile(entry).read().decode("utf-8")
    except (tarfile.TarError, UnicodeDecodeError) as e:
        raise FormatError(f"index {where}: does not parse ({e})") from e
    if "APKINDEX" not in files:
        raise FormatError(f"index {where}: no APKINDEX member")
    packages = parse_index_text(files["APKINDEX"], where=where, repository=repository)
    return Index(files.get("DESCRIPTION", "").strip(), tuple(packages), key_name)
