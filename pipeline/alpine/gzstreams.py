"""Split concatenated gzip members, keeping each member's compressed bytes.

apk v2 files are 2 or 3 gzip members back to back; signatures and checksums
cover the compressed bytes of one member, so we must know where each ends.
We inflate the raw deflate data ourselves (wbits=-15) so that a corrupted
member still yields its boundary when it can, and the caller can report the
check that failed (the signature) instead of a bare zlib error.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from bay0.errors import CorruptionError, FormatError

_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class Member:
    """One gzip member: its compressed bytes and what they inflate to."""

    compressed: bytes
    content: bytes
    crc_ok: bool


def _header_length(data: bytes, start: int, what: str) -> int:
    if data[start : start + 3] != b"\x1f\x8b\x08" or len(data) < start + 10:
        raise FormatError(f"{what}: not a gzip stream at byte {start}")
    flags = data[start + 3]
    pos = start + 10
    if flags & _FEXTRA:
        (extra,) = struct.unpack_from("<H", data, pos)
        pos += 2 + extra
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = data.find(b"\0", pos)
            if end < 0:
                raise FormatError(f"{what}: truncated gzip header")
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos - start


def read_member(data: bytes, start: int, what: str) -> tuple[Member, int]:
    """Inflate the gzip member at ``start``; return it and the offset after it.

    Raises ``FormatError`` when there is no gzip header there and
    ``CorruptionError`` when the deflate data is broken or truncated.
    """
    body = start + _header_length(data, start, what)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        content = inflater.decompress(memoryview(data)[body:])
    except zlib.error as e:
        raise CorruptionError(f"{what}: gzip data is corrupt ({e})") from e
    if not inflater.eof:
        raise CorruptionError(f"{what}: gzip stream is truncated")
    end = len(data) - len(inflater.unused_data) + 8
    if end > len(data):
        raise CorruptionError(f"{what}: gzip trailer is truncated")
    crc, size = struct.unpack_from("<II", data, end - 8)
    crc_ok = crc == zlib.crc32(content) and size == len(content) & 0xFFFFFFFF
    return Member(bytes(data[start:end]), content, crc_ok), end


def inflate_whole(data: bytes, what: str) -> bytes:
    """Inflate one gzip member that spans all of ``data`` (CRC checked).

    Raises ``CorruptionError`` when it does not inflate or its CRC is wrong.
    """
    member, _end = read_member(data, 0, what)
    if not member.crc_ok:
        raise CorruptionError(f"{what}: gzip CRC does not match")
    return member.content
