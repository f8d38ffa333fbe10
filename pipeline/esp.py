"""The ESP payload of a Spine: its own kernel and an initramfs built from its own tree,
joined into a UKI at ``EFI/BOOT/BOOTX64.EFI`` (see uki.py and boot.md).

The Spine's signature is verified before anything is taken from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bay0.errors import ExistsError
from bay0.formats import minisign
from pipeline import initramfs, uki
from pipeline import spine as spine_mod
from pipeline.qemu import DEFAULT_APPEND


def build_esp_tree(
    spine_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    trusted: Sequence[minisign.PublicKey],
    *,
    append: str = DEFAULT_APPEND,
    force: bool = False,
) -> Path:
    """Write ``out_dir/EFI/BOOT/BOOTX64.EFI`` for the Spine at ``spine_path``; return the UKI.

    Raises what ``open_spine`` raises (signature first), ``ExistsError`` (no ``force``),
    ``ToolError`` (unsquashfs, objcopy).
    """
    art = spine_mod.open_spine(spine_path, trusted)
    target = Path(out_dir) / uki.ESP_BOOT_PATH
    if target.exists() and not force:
        raise ExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".esp-build-", dir=target.parent) as tmp:
        kernel, initrd = initramfs.build_from_spine_image(art.path, Path(tmp) / "initrd")
        uki.build_uki(kernel.vmlinuz, initrd, append, Path(tmp) / "uki.efi",
                      version=art.manifest.spine_version)
        shutil.move(Path(tmp) / "uki.efi", target)
    return target
