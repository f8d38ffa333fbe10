"""Canonical JSON: the one byte form of every signed document.

Sorted keys, UTF-8 (no ASCII escaping), no insignificant whitespace, integers only
(floats are ambiguous across implementations), no duplicate keys when parsing.
Signatures are always checked over the bytes as received; ``is_canonical`` lets a
verifier insist that those bytes are also the canonical form.
"""

from __future__ import annotations

import json
from typing import Any

from bay0.errors import FormatError


def _check(value: Any, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise FormatError(f"{where}: floats are not allowed in signed documents", "use integers")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"{where}: object keys must be strings", "fix the document")
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise FormatError(f"{where}: {type(value).__name__} is not JSON", "fix the document")


def dumps(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises ``FormatError`` for floats and non-JSON values."""
    _check(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate key {key!r} in JSON document", "remove the repeated key")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise FormatError(f"{name} is not allowed in signed documents", "use a finite integer")


def _reject_float(text: str) -> Any:
    raise FormatError(f"float {text} is not allowed in signed documents", "use an integer")


def loads(data: bytes) -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, no floats, no NaN/Infinity.

    Raises ``FormatError`` naming the problem.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"document is not UTF-8 (byte {e.start})", "re-create it") from e
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_reject_float,
        )
    except json.JSONDecodeError as e:
        raise FormatError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          "re-create the document with spinectl") from e


def is_canonical(data: bytes) -> bool:
    """True when ``data`` is exactly the canonical encoding of what it parses to."""
    try:
        return dumps(loads(data)) == data
    except FormatError:
        return False
