"""The UEFI payload: a unified kernel image (UKI) on the ESP as ``EFI/BOOT/BOOTX64.EFI``.

systemd's EFI stub (``linuxx64.efi.stub`` from systemd-boot-efi) with the kernel,
initramfs, command line and an os-release added as PE sections by ``objcopy``. Standard
UEFI firmware boots the removable-media path ``EFI/BOOT/BOOTX64.EFI`` with no boot
entry, no menu and no interaction; the stub hands the embedded kernel its initramfs
and command line.

Section placement: each new section starts after the stub's last section (and after the
previous new one), rounded up to the stub's SectionAlignment, so no two overlap
whatever the sizes. The ESP itself (FAT32 in the ``SPINE_ESP`` partition, filled with
mtools: nothing is mounted) is written by ``pipeline/disk/filesystems.py``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import FormatError, NotFoundError
from pipeline.run import run

STUB_CANDIDATES = (
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    "/lib/systemd/boot/efi/linuxx64.efi.stub",
)
ESP_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
UKI_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StubLayout:
    end: int  # first VMA after the stub's last section
    alignment: int


def find_stub() -> Path:
    """The systemd EFI stub; raises ``NotFoundError`` naming the package when absent."""
    for path in STUB_CANDIDATES:
        if Path(path).is_file():
            return Path(path)
    raise NotFoundError("systemd's EFI stub linuxx64.efi.stub is missing",
                        "install it: apt-get install systemd-boot-efi")


def stub_layout(stub: Path) -> StubLayout:
    """Where the stub's sections end and how new sections must be aligned (objdump).

    Raises ``FormatError`` when objdump does not describe a PE image.
    """
    headers = run(["objdump", "-h", str(stub)]).stdout.decode()
    private = run(["objdump", "-p", str(stub)]).stdout.decode()
    end = 0
    for match in re.finditer(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s", headers, re.M):
        end = max(end, int(match.group(3), 16) + int(match.group(2), 16))
    align = re.search(r"^SectionAlignment\s+([0-9a-f]+)", private, re.M)
    base = re.search(r"^ImageBase\s+([0-9a-f]+)", private, re.M)
    if not end or align is None or base is None:
        raise FormatError(f"{stub} does not look like a PE EFI stub", "reinstall systemd-boot-efi")
    return StubLayout(end=end, alignment=int(align.group(1), 16))


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def os_release(version: str) -> str:
    return (f'NAME="Alpine Spine"\nID=alpine-spine\nVERSION_ID={version}\n'
            f'PRETTY_NAME="Alpine Spine {version}"\n')


def build_uki(
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    cmdline: str,
    out: str | os.PathLike[str],
    *,
    version: str = "0",
    stub: Path | None = None,
) -> Path:
    """Join stub + os-release + command line + kernel + initramfs into one EFI binary.

    ``out`` is replaced atomically. Raises ``NotFoundError`` for a missing input,
    ``FormatError`` for a foreign stub, ``ToolError`` when objcopy fails.
    """
    stub = stub or find_stub()
    for path in (Path(kernel), Path(initrd)):
        if not path.is_file():
            raise NotFoundError(f"{path} does not exist", "build the kernel and initramfs first")
    layout = stub_layout(stub)
    target = Path(out)
    with tempfile.TemporaryDirectory(prefix=".uki-", dir=target.parent) as tmp:
        osrel = Path(tmp) / "os-release"
        osrel.write_text(os_release(version))
        cmd = Path(tmp) / "cmdline"
        cmd.write_bytes(cmdline.strip().encode())
        argv = ["objcopy"]
        vma = layout.end
        for name, path in ((".osrel", osrel), (".cmdline", cmd), (".linux", Path(kernel)),
                           (".initrd", Path(initrd))):
            vma = _align(vma, layout.alignment)
            argv += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
            vma += path.stat().st_size
        built = Path(tmp) / "uki.efi"
        run([*argv, str(stub), str(built)])
        write_atomic(target, built.read_bytes(), overwrite=True)
    return target
