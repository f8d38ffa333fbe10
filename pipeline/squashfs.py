"""Reproducible squashfs images with the stock ``mksquashfs``.

Same tree in, same bytes out: fixed creation and file times, sorted entries
(mksquashfs sorts directories itself; ``-reproducible`` is explicit), no xattrs,
and optionally every file owned by root. The output is padded to 4 KiB, which is
what the verity tree appended after it needs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from bay0.errors import FormatError, NotFoundError
from pipeline.run import run

SQUASHFS_MAGIC = b"hsqs"
DEFAULT_EPOCH = 0
COMPRESSOR = "zstd"
BLOCK = 4096


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` when set (reproducible-builds.org), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else DEFAULT_EPOCH


def make_squashfs(
    src_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    all_root: bool = True,
    compression: str = COMPRESSOR,
) -> int:
    """Write a squashfs of ``src_dir`` to ``out`` (replaced) and return its size in bytes.

    Raises ``NotFoundError`` for a missing directory, ``ToolError`` when mksquashfs fails.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise NotFoundError(f"{src} is not a directory", "give the root directory of the image")
    when = source_date_epoch() if epoch is None else epoch
    out_path = Path(out)
    out_path.unlink(missing_ok=True)
    argv = [
        "mksquashfs", str(src), str(out_path),
        "-noappend", "-reproducible", "-no-xattrs", "-quiet", "-no-progress",
        "-comp", compression, "-b", "131072",
        "-mkfs-time", str(when), "-all-time", str(when),
    ]
    if all_root:
        argv.append("-all-root")
    run(argv)
    return out_path.stat().st_size


def squashfs_bytes_used(header: bytes) -> int:
    """Return the filesystem size recorded in a squashfs superblock (``bytes_used``).

    Raises ``FormatError`` when ``header`` is not a squashfs 4.0 superblock.
    """
    if len(header) < 96 or header[:4] != SQUASHFS_MAGIC:
        raise FormatError("not a squashfs image (bad magic)", "build it with spinectl image build")
    major, minor = struct.unpack_from("<HH", header, 28)
    if (major, minor) != (4, 0):
        raise FormatError(f"unsupported squashfs version {major}.{minor}", "use squashfs 4.0")
    (bytes_used,) = struct.unpack_from("<Q", header, 40)
    return bytes_used


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK
