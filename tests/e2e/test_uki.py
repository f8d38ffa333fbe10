"""The UEFI path: OVMF boots the UKI from the disk's ESP with no menu and no input."""

from __future__ import annotations

import pytest

from pipeline import qemu, uki
from tests.conftest import require_tool
from tests.e2e import vmdisk
from tests.e2e.conftest import APPEND

pytestmark = pytest.mark.qemu

LAYOUT = (("SPINE_ESP", 32), ("spine_a", 12), ("spine_b", 12), ("spine_state", 1), ("persist", 40))


def test_ovmf_boots_the_uki_from_the_esp_to_ready(boot_kit, test_image, e2e_dir) -> None:
    require_tool("objcopy", "mkfs.fat", "mcopy")
    kernel, initrd = boot_kit
    image, ident = test_image
    disk = vmdisk.make_disk(e2e_dir / "uki-disk.img", layout=LAYOUT)
    vmdisk.provision(disk, image, ident)
    payload = uki.build_uki(kernel.vmlinuz, initrd, APPEND, e2e_dir / "uki.efi", version="test")
    offset, size = disk.parts["SPINE_ESP"]
    esp = uki.make_esp_image(payload, e2e_dir / "esp.img", size=size)
    uki.write_esp_into(disk.path, offset, esp, partition_size=size)

    result = qemu.boot(qemu.VmConfig(disk=disk.path, ovmf=True, timeout=300,
                                     console_log=e2e_dir / "uki.console"))
    print(f"\n[ovmf] {result.outcome} after {result.wall_seconds:.1f}s wall")
    assert result.outcome == qemu.POWEROFF
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    assert "Shell>" not in result.console and "Boot Manager" not in result.console
    disk.path.unlink()
