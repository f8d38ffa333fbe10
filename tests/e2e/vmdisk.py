"""Test helpers for end-to-end boots: a tiny test root, its verity image, a GPT disk.

Until ``pipeline/disk`` is the way to provision, the disk is laid out with ``sfdisk``
(partition names are the contract, see interfaces.md) and boot control is written with
the Python format code. ``/sbin/bay0`` in the test root is a TEST DOUBLE, not bay0: a
busybox sh script that prints the READY line bay0 prints, reports its mounts, and
powers off so that each boot ends by itself.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bay0.formats import bootctl as bcf
from bay0.formats.verity import ImageIdentity
from pipeline.image import build_image
from pipeline.run import run

MIB = 1024 * 1024
MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"

BAY0_TEST_DOUBLE = """#!/bin/sh
# TEST DOUBLE for bay0 (tests/e2e only): prints bay0's READY line and powers off.
slot=unknown
for arg in "$@"; do
	case $arg in --slot=*) slot=${arg#--slot=} ;; esac
done
echo "bay0-double: root $(awk '$2 == "/" {print $1, $3, $4}' /proc/mounts)"
echo "bay0-double: persist $(awk '$2 == "/persist" {print $1, $3, $4}' /proc/mounts)"
echo "bay0: READY slot=$slot"
sync
# bay0double=wedge on the kernel command line: arm the watchdog, then stop feeding
# it, as a wedged bay0 would (the runner must report a watchdog reset).
if grep -q "bay0double=wedge" /proc/cmdline; then
	watchdog -T 2 -t 3600 /dev/watchdog
	echo "bay0-double: wedged"
	while :; do sleep 3600; done
fi
# bay0double=idle: hang without ever opening the watchdog, as a bay0 stuck before it
# gets that far would (the watchdog /init armed must still reset the machine).
if grep -q "bay0double=idle" /proc/cmdline; then
	echo "bay0-double: idle"
	while :; do sleep 3600; done
fi
poweroff -f
"""


def build_test_root(alpine: Path, dest: Path, *, label: str = "test") -> Path:
    """Alpine minirootfs + the bay0 test double + the mount points bay0 expects."""
    dest.mkdir(parents=True)
    with tarfile.open(alpine / MINIROOTFS) as tar:
        tar.extractall(dest, filter="tar")
    for d in ("proc", "sys", "dev", "run", "tmp", "persist", "mnt/stage"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    bay0 = dest / "sbin" / "bay0"
    bay0.write_text(BAY0_TEST_DOUBLE)
    bay0.chmod(0o755)
    (dest / "etc" / "spine").mkdir(parents=True, exist_ok=True)
    (dest / "etc" / "spine" / "release").write_text(f"version={label}\n")
    return dest


def build_test_image(alpine: Path, workdir: Path, *, label: str = "test") -> tuple[Path, ImageIdentity]:
    root = build_test_root(alpine, workdir / f"root-{label}", label=label)
    image = workdir / f"{label}.img"
    return image, build_image(root, image)


@dataclass
class TestDisk:
    path: Path
    parts: dict[str, tuple[int, int]]  # name -> (offset, size) in bytes

    def write_at(self, name: str, offset: int, data: bytes) -> None:
        start, size = self.parts[name]
        assert offset + len(data) <= size
        with open(self.path, "r+b") as f:
            f.seek(start + offset)
            f.write(data)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        start, size = self.parts[name]
        with open(self.path, "rb") as f:
            f.seek(start + offset)
            return f.read(size - offset if length is None else length)

    def state(self) -> bcf.BootControl:
        return bcf.read_region(self.read("spine_state", 0, bcf.REGION_SIZE))[0]

    def set_state(self, bc: bcf.BootControl) -> None:
        self.write_at("spine_state", 0, bcf.initial_region(bc))

    def corrupt(self, name: str, block: int) -> None:
        """Flip every byte of one 4096-byte block of a slot's data area."""
        data = self.read(name, block * 4096, 4096)
        self.write_at(name, block * 4096, bytes(b ^ 0xFF for b in data))


LAYOUT = (("SPINE_ESP", 16), ("spine_a", 12), ("spine_b", 12), ("spine_state", 1), ("persist", 40))


def make_disk(path: Path, *, layout=LAYOUT) -> TestDisk:
    """A sparse GPT disk image with the named partitions (sizes in MiB)."""
    total = (2 + sum(size for _, size in layout)) * MIB
    with open(path, "wb") as f:
        f.truncate(total)
    lines = ["label: gpt", "unit: sectors"]
    start = MIB // 512
    parts = {}
    for name, size in layout:
        lines.append(f"start={start}, size={size * MIB // 512}, name={name}")
        parts[name] = (start * 512, size * MIB)
        start += size * MIB // 512
    run(["sfdisk", "--quiet", str(path)], input=("\n".join(lines) + "\n").encode())
    table = json.loads(run(["sfdisk", "--json", str(path)]).stdout)["partitiontable"]["partitions"]
    assert [p["name"] for p in table] == [name for name, _ in layout]
    return TestDisk(path, parts)


def provision(disk: TestDisk, image: Path, ident: ImageIdentity, *, slots=("A", "B"), tries: int = 3) -> None:
    """Write ``image`` into ``slots`` and point boot control at them (first slot wins)."""
    bc = bcf.BootControl()
    for name in reversed(slots):  # the last activated gets the higher priority
        disk.write_at(f"spine_{name.lower()}", 0, image.read_bytes())
        bc = bcf.activate(bc, name, version="test", root_hash=ident.root_hash, salt=ident.salt,
                          data_size=ident.data_size, hash_offset=ident.hash_offset, tries=tries)
    disk.set_state(bc)
    disk.write_at("spine_state", bcf.KEYFILE_OFFSET, os.urandom(bcf.KEYFILE_SIZE))
