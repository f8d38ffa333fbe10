"""spinectl vm: refuses contradictions before starting QEMU; boots an image to READY."""

from __future__ import annotations

import json

import pytest


def test_initrd_without_kernel_is_a_usage_error(spinectl, tmp_path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 4096)
    result = spinectl("vm", str(disk), "--initrd", str(disk))
    assert result.code == 2
    assert "--initrd needs --kernel" in result.err


def test_kernel_and_ovmf_contradict(spinectl, tmp_path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 4096)
    result = spinectl("vm", str(disk), "--kernel", str(disk), "--ovmf")
    assert result.code == 2 and "contradict" in result.err


def test_missing_disk_is_not_found(spinectl, tmp_path) -> None:
    result = spinectl("vm", str(tmp_path / "nope.img"), "--kernel", str(tmp_path / "k"))
    assert result.code == 6 and "does not exist" in result.err


@pytest.mark.qemu
def test_spinectl_vm_boots_a_disk_to_ready(spinectl_proc, boot_kit, disk) -> None:
    kernel, initrd = boot_kit
    proc = spinectl_proc("vm", str(disk.path), "--kernel", str(kernel.vmlinuz), "--initrd", str(initrd),
                         "--append", "console=ttyS0 quiet panic=-1", "--timeout", "180", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert report["outcome"] == "poweroff" and report["ready_slot"] == "A"
