"""Filesystems written into partitions without mounting anything on the host.

The build host may have no vfat, no device-mapper and no loop partitions: FAT is
made by ``mkfs.fat --offset`` and filled by mtools (``img@@offset``), ext4 by
``mkfs.ext4 -E offset=… -d DIR``, and the LUKS2 header of ``persist`` by
``cryptsetup luksFormat`` on a scratch file whose header area is then copied into
the partition. Opening LUKS and making its filesystem needs dm-crypt, so that
happens on the appliance's first boot (the initramfs), as systemd-repart does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bay0.errors import DiskError
from pipeline.disk.blockio import stream_copy
from pipeline.disk.layout import Part
from pipeline.run import run

LUKS_HEADER_BYTES = 16 * 1024 * 1024


FAT32_MIN_CLUSTERS = 65525 + 1024  # below 65525 clusters it is not FAT32 to firmware


def fat32_cluster_sectors(sectors: int) -> int:
    """Sectors per cluster (1-8) that keep a FAT32 volume above FAT32's cluster minimum.

    Raises ``DiskError`` for a partition too small to hold FAT32 at all.
    """
    per_cluster = 8
    while per_cluster > 1 and sectors // per_cluster < FAT32_MIN_CLUSTERS:
        per_cluster //= 2
    if sectors // per_cluster < FAT32_MIN_CLUSTERS:
        raise DiskError(f"{sectors * 512 // 2**20} MiB is too small for a FAT32 ESP",
                        "give the ESP at least 36 MiB (--esp-mib)")
    return per_cluster


def make_fat(disk: str, part: Part, label: str, sector_size: int = 512) -> None:
    """FAT32 across the whole partition, with a cluster size firmware accepts as FAT32."""
    sectors = part.size // sector_size
    run(["mkfs.fat", "-I", "-F", "32", "-n", label, "-S", str(sector_size),
         "-s", str(fat32_cluster_sectors(sectors)),
         f"--offset={part.start // sector_size}", disk, str(sectors * sector_size // 1024)])


def copy_to_fat(disk: str, part: Part, tree: Path) -> None:
    """Copy the contents of ``tree`` into the FAT filesystem of ``part`` (mtools)."""
    image = f"{disk}@@{part.start}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    entries = sorted(tree.rglob("*"))
    for entry in entries:
        rel = entry.relative_to(tree).as_posix()
        if entry.is_dir():
            run(["mmd", "-i", image, f"::/{rel}"], env=env)
        elif entry.is_file():
            run(["mcopy", "-o", "-i", image, str(entry), f"::/{rel}"], env=env)


def make_ext4(disk: str, part: Part, label: str, tree: Path | None = None) -> None:
    """ext4 across the whole partition, optionally populated from ``tree`` (``-d``)."""
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-b", "4096", "-E",
            f"offset={part.start}", "-O", "^has_journal"]
    if tree is not None:
        argv += ["-d", str(tree)]
    run([*argv, disk, str(part.size // 4096)])


def luks_format(disk: str, part: Part, keyfile: bytes, label: str) -> None:
    """Write a LUKS2 header (keyfile slot, cheap PBKDF) at the start of ``part``.

    The keyfile is 512 random bytes, so a slow password KDF buys nothing; pbkdf2 with
    the minimum iterations keeps first boot fast under emulation. v0.1 keeps the
    keyfile on the same disk: this protects nothing against a physical attacker.
    """
    if part.size < LUKS_HEADER_BYTES * 2:
        raise DiskError(f"partition {part.name} is too small for LUKS2", "give persist more space")
    with tempfile.TemporaryDirectory(prefix="spine-luks-") as tmp:
        header = Path(tmp) / "header"
        key = Path(tmp) / "key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keyfile)
        with open(header, "wb") as f:
            f.truncate(LUKS_HEADER_BYTES + 4 * 1024 * 1024)
        run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", str(key),
             "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--label", label,
             str(header)])
        dump = run(["cryptsetup", "luksDump", "--dump-json-metadata", str(header)])
        offset = int(json.loads(dump.stdout)["segments"]["0"]["offset"])
        stream_copy(str(header), disk, dest_offset=part.start, length=offset)
