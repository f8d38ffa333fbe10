"""Provision → boot through OVMF: `pipeline.disk.provision` lays the disk out and writes
the ESP (with our UKI), the signed Spine into slot A and boot control; standard UEFI
firmware then boots EFI/BOOT/BOOTX64.EFI with no menu and no input."""

from __future__ import annotations

import pytest

from bay0.formats.minisign import SecretKey
from pipeline import qemu, spine, uki
from pipeline.disk.layout import LayoutSpec, read_layout
from pipeline.disk.provision import ProvisionRequest, provision
from tests.conftest import require_tool
from tests.e2e import vmdisk
from tests.e2e.conftest import APPEND

pytestmark = pytest.mark.qemu


def test_provisioned_disk_boots_the_uki_through_ovmf_to_ready(alpine, boot_kit, e2e_dir) -> None:
    require_tool("objcopy", "mkfs.fat", "mcopy", "cryptsetup", "mkfs.ext4")
    kernel, initrd = boot_kit
    root = vmdisk.build_test_root(alpine, e2e_dir / "root-provisioned", label="prov")
    artifact = spine.pack(root, e2e_dir / "test.spine", version="1.0.0-test", secret_key=SecretKey.generate())
    esp_tree = e2e_dir / "esp-tree"
    (esp_tree / "EFI" / "BOOT").mkdir(parents=True)
    uki.build_uki(kernel.vmlinuz, initrd, APPEND, esp_tree / uki.ESP_BOOT_PATH, version="1.0.0-test")

    spec = LayoutSpec(esp_mib=64, slot_mib=8, state_mib=1, stage_mib=8, persist_min_mib=40)
    disk = e2e_dir / "provisioned.img"
    with open(disk, "wb") as f:
        f.truncate(spec.minimum_bytes)
    provision(str(disk), ProvisionRequest(spec, artifact=artifact, esp_tree=esp_tree))
    assert read_layout(str(disk)).parts  # the layout reads back

    result = qemu.boot(qemu.VmConfig(disk=disk, ovmf=True, timeout=300,
                                     console_log=e2e_dir / "ovmf.console"))
    print(f"\n[ovmf] {result.outcome} after {result.wall_seconds:.1f}s wall")
    assert result.outcome == qemu.POWEROFF
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    persist = result.lines("bay0-double: persist")[0]
    assert {"nodev", "nosuid", "noexec"} <= set(persist.split()[-1].split(","))
    assert "Shell>" not in result.console and "Boot Manager" not in result.console
    disk.unlink()
