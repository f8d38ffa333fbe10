"""The staging area (`spine_stage`, ext4): a signed inventory and its pods for bay0 to import.

Written whole with ``mkfs.ext4 -d`` (nothing is mounted on the host). Layout, read
by bay0 at boot::

    /inventory.json
    /inventory.json.minisig
    /pods/<file named by the inventory entry>
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bay0.errors import DiskError
from pipeline.disk.filesystems import make_ext4
from pipeline.disk.layout import STAGE, Layout

STAGE_OVERHEAD = 8 * 1024 * 1024  # ext4 metadata headroom


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_tree(root: Path, files: Mapping[str, Path]) -> int:
    """Lay ``files`` (relative path → source) out under ``root``; return their total size."""
    total = 0
    for rel, source in sorted(files.items()):
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise DiskError(f"bad staging path {rel!r}", "this is a bug: report it")
        _place(Path(source), root / rel)
        total += Path(source).stat().st_size
    return total


def write_stage(layout: Layout, files: Mapping[str, Path]) -> None:
    """Replace the staging filesystem with exactly ``files``. Raises ``DiskError`` if too big."""
    part = layout.parts[STAGE]
    with tempfile.TemporaryDirectory(prefix="spine-stage-") as tmp:
        root = Path(tmp) / "stage"
        root.mkdir()
        total = build_tree(root, files)
        if total + STAGE_OVERHEAD > part.size:
            raise DiskError(
                f"the inventory and pods ({total / 2**20:.1f} MiB) do not fit the staging "
                f"partition ({part.size / 2**20:.1f} MiB)",
                "deploy fewer pods, or re-provision with a larger --stage-mib")
        make_ext4(layout.path, part, "spine_stage", root)
