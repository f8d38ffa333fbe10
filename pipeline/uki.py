"""The UEFI payload: a unified kernel image (UKI) on the ESP as ``EFI/BOOT/BOOTX64.EFI``.

systemd's EFI stub (``linuxx64.efi.stub`` from systemd-boot-efi) with the kernel,
initramfs, command line and an os-release added as PE sections by ``objcopy``. Standard
UEFI firmware boots the removable-media path ``EFI/BOOT/BOOTX64.EFI`` with no boot
entry, no menu and no interaction; the stub hands the embedded kernel its initramfs
and command line.

Section placement: each new section starts after the stub's last section (and after the
previous new one), rounded up to the stub's SectionAlignment, so no two overlap
whatever the sizes. The ESP is a FAT image built with ``mkfs.fat`` and ``mtools``
(nothing is mounted: the build host may have no vfat driver), then written into the
``SPINE_ESP`` partition by the disk code or by ``write_esp_into``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bay0.atomic import write_atomic
from bay0.errors import DiskError, FormatError, NotFoundError
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


def make_esp_image(uki: str | os.PathLike[str], out: str | os.PathLike[str], *, size: int) -> Path:
    """A FAT image of ``size`` bytes holding ``uki`` at ``EFI/BOOT/BOOTX64.EFI``.

    FAT32 when the size allows it (>= 64 MiB), FAT16 below. Raises ``DiskError`` when
    the UKI does not fit, ``ToolError`` when mkfs.fat or mtools fail.
    """
    uki_size = Path(uki).stat().st_size
    if uki_size + 2 * 1024 * 1024 > size:
        raise DiskError(f"the UKI ({uki_size} bytes) does not fit an ESP of {size} bytes",
                        "make the SPINE_ESP partition larger")
    target = Path(out)
    with tempfile.TemporaryDirectory(prefix=".esp-", dir=target.parent) as tmp:
        image = Path(tmp) / "esp.img"
        with open(image, "wb") as f:
            f.truncate(size)
        fat = "32" if size >= 64 * 1024 * 1024 else "16"
        run(["mkfs.fat", "-F", fat, "-n", "SPINE_ESP", "--invariant", str(image)])
        env = {"MTOOLS_SKIP_CHECK": "1"}
        run(["mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT"], env=env)
        run(["mcopy", "-i", str(image), str(uki), "::/" + ESP_BOOT_PATH], env=env)
        os.replace(image, target)
    return target


def write_esp_into(disk: str | os.PathLike[str], offset: int, esp_image: str | os.PathLike[str],
                   *, partition_size: int) -> None:
    """Copy an ESP image into a disk (file or device) at ``offset``; fsync before return.

    Raises ``DiskError`` when the image is larger than the partition.
    """
    data = Path(esp_image).read_bytes()
    if len(data) > partition_size:
        raise DiskError(f"ESP image ({len(data)} bytes) is larger than the partition ({partition_size})",
                        "build the ESP image with the partition's size")
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def list_esp(esp_image: str | os.PathLike[str]) -> list[str]:
    """The files on an ESP image (mtools), for checks and tests."""
    out = run(["mdir", "-i", str(esp_image), "-/", "-b", "::/"], env={"MTOOLS_SKIP_CHECK": "1"})
    return sorted(line.strip().removeprefix("::/") for line in out.stdout.decode().splitlines() if line.strip())
