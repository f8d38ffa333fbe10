"""Disks: layout, provision, flash, mark-good/bad, status — on image files and loop devices."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bay0.errors import DiskError
from bay0.formats import minisign
from pipeline.disk import device
from pipeline.disk.layout import PARTITION_ORDER, LayoutSpec, plan_layout, read_layout
from tests.conftest import require_root, require_tool
from tests.diskkit import (
    SMALL_ARGS,
    blank_disk,
    loop_device,
    make_spine,
    region_digest,
    slot_digest,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    require_tool("mksquashfs", "mkfs.fat", "mkfs.ext4", "cryptsetup", "mcopy")
    tmp = tmp_path_factory.mktemp("diskkit")
    key = minisign.SecretKey.generate()
    pub = tmp / "op.pub"
    pub.write_text(key.public_key.to_text())
    v1 = make_spine(tmp, key, "1.0")
    v2 = make_spine(tmp, key, "2.0", random_mib=2)
    big = make_spine(tmp, key, "big", random_mib=20)
    stranger = minisign.SecretKey.generate()
    foreign = make_spine(tmp / "x", stranger, "9.9") if (tmp / "x").mkdir() is None else None
    return {"key": key, "pub": pub, "v1": v1, "v2": v2, "big": big, "foreign": foreign, "tmp": tmp}


@pytest.fixture
def disk(kit, tmp_path, spinectl) -> str:
    image = blank_disk(tmp_path / "disk.img")
    r = spinectl("provision", str(image), "--spine", str(kit["v1"]), "--pubkey", str(kit["pub"]),
                 "--yes", *SMALL_ARGS)
    assert r.code == 0, r.err
    return str(image)


def status(spinectl, disk: str) -> dict:
    r = spinectl("status", disk, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_plan_layout_is_aligned_and_refuses_small_devices() -> None:
    plan = plan_layout(4 * 1024**3, LayoutSpec())
    assert [name for name, _, _ in plan] == list(PARTITION_ORDER)
    assert all(start % (1 << 20) == 0 and size % (1 << 20) == 0 for _, start, size in plan)
    assert all(a[1] + a[2] == b[1] for a, b in zip(plan, plan[1:], strict=False))
    with pytest.raises(DiskError, match="device too small"):
        plan_layout(1024**3, LayoutSpec())


def test_provision_layout_is_readable_by_sfdisk_and_parted(disk: str, kit, spinectl) -> None:
    table = json.loads(subprocess.run(["sfdisk", "--json", disk], check=True,
                                      capture_output=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert [p["name"] for p in table["partitions"]] == list(PARTITION_ORDER)
    assert table["partitions"][0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    printed = subprocess.run(["parted", "-s", disk, "unit", "MiB", "print"], check=True,
                             capture_output=True, text=True).stdout
    assert "spine_a" in printed and "persist" in printed
    doc = status(spinectl, disk)
    assert doc["next_boot"] == "A" and doc["boot_order"] == ["A"]
    assert doc["slots"]["A"]["tries_left"] == 3 and doc["slots"]["A"]["good"] is False
    assert doc["slots"]["B"]["root_hash"] is None and doc["never_marked_good"]
    # The filesystems are real: FAT on the ESP, ext4 staging, a LUKS2 header on persist.
    layout = read_layout(disk)
    subprocess.run(["mdir", "-i", f"{disk}@@{layout.parts['SPINE_ESP'].start}", "::/"],
                   check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    with open(disk, "rb") as f:
        f.seek(layout.parts["persist"].start)
        assert f.read(6) == b"LUKS\xba\xbe"


def test_flash_b_then_mark_good_then_flash_a(disk: str, kit, spinectl) -> None:
    r = spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["slot"] == "B"
    doc = status(spinectl, disk)
    assert doc["next_boot"] == "B" and doc["boot_order"] == ["B", "A"]
    assert doc["slots"]["B"]["version"] == "2.0" and doc["slots"]["B"]["tries_left"] == 3
    assert not doc["slots"]["B"]["good"]
    assert spinectl("mark-good", disk, "--slot", "B").code == 0
    assert status(spinectl, disk)["slots"]["B"]["good"]
    r = spinectl("flash", disk, str(kit["v1"]), "--pubkey", str(kit["pub"]))
    assert r.code == 0, r.err
    doc = status(spinectl, disk)
    assert doc["next_boot"] == "A" and doc["slots"]["B"]["good"]
    assert spinectl("mark-bad", disk, "--slot", "A").code == 0
    assert status(spinectl, disk)["boot_order"] == ["B"]


@pytest.mark.parametrize(
    "case, code, fragment",
    [
        ("not-a-spine", 3, "not a Spine"),
        ("foreign-key", 4, "not trusted"),
        ("too-big", 8, "larger than slot"),
        ("no-layout", 8, "lacks the Spine layout"),
        ("active-slot", 9, "would boot now"),
        ("missing-device", 6, "does not exist"),
        ("unknown-slot", 9, "unknown slot"),
    ],
)
def test_flash_refusals_leave_active_slot_untouched(case, code, fragment, disk, kit, spinectl,
                                                    tmp_path) -> None:
    target, spine_file, extra = disk, str(kit["v2"]), []
    if case == "not-a-spine":
        spine_file = str(kit["pub"])
    elif case == "foreign-key":
        spine_file = str(kit["foreign"])
    elif case == "too-big":
        spine_file = str(kit["big"])
    elif case == "no-layout":
        target = str(blank_disk(tmp_path / "blank.img"))
    elif case == "active-slot":
        extra = ["--slot", "A"]
    elif case == "missing-device":
        target = str(tmp_path / "nope.img")
    elif case == "unknown-slot":
        extra = ["--slot", "C"]
    before = region_digest(disk, "A")
    r = spinectl("flash", target, spine_file, "--pubkey", str(kit["pub"]), *extra)
    assert r.code == code, r.err
    assert fragment in r.err and len(r.err.strip().splitlines()) == 1
    assert region_digest(disk, "A") == before


def test_flash_refuses_without_any_trusted_key(disk, kit, spinectl, monkeypatch, tmp_path) -> None:
    from spinectl import keys as keys_mod

    empty = tmp_path / "nokeys"
    empty.mkdir()
    monkeypatch.setattr(keys_mod, "trust_keys_dir", lambda: empty)
    before = region_digest(disk, "A")
    r = spinectl("flash", disk, str(kit["v2"]))
    assert r.code == 2 and "no trusted public key" in r.err
    assert region_digest(disk, "A") == before


def test_flash_refuses_read_only_and_mounted(disk, kit, spinectl, tmp_path) -> None:
    require_root()
    before = slot_digest(disk, "A")
    with loop_device(Path(disk), read_only=True) as ro:
        r = spinectl("flash", ro, str(kit["v2"]), "--pubkey", str(kit["pub"]))
        assert r.code == 8 and "read-only" in r.err
    layout = read_layout(disk)
    part = layout.slot("B")
    spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"]))  # B now holds a squashfs
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(Path(disk), read_only=True, offset=part.start, size=part.size) as slot_dev:
        subprocess.run(["mount", "-t", "squashfs", "-o", "ro", slot_dev, mnt], check=True)
        try:
            # Make B the slot flash would target: mark A good, B bad → default target is B.
            assert spinectl("mark-bad", disk, "--slot", "B").code == 0
            r = spinectl("flash", disk, str(kit["v1"]), "--pubkey", str(kit["pub"]), "--slot", "B")
            assert r.code == 8 and "mounted" in r.err, r.err
        finally:
            subprocess.run(["umount", mnt], check=False)
    assert slot_digest(disk, "A") == before
    assert status(spinectl, disk)["slots"]["A"]["version"] == "1.0"


def test_provision_on_a_loop_device(kit, spinectl, tmp_path) -> None:
    require_root()
    image = blank_disk(tmp_path / "usb.img")
    with loop_device(image) as dev:
        r = spinectl("provision", dev, "--spine", str(kit["v1"]), "--pubkey", str(kit["pub"]),
                     "--yes", *SMALL_ARGS)
        assert r.code == 0, r.err
        assert status(spinectl, dev)["next_boot"] == "A"
        r = spinectl("flash", dev, str(kit["v2"]), "--pubkey", str(kit["pub"]))
        assert r.code == 0, r.err
    assert status(spinectl, str(image))["next_boot"] == "B"


def test_provision_several_devices_in_parallel(kit, spinectl, tmp_path) -> None:
    images = [str(blank_disk(tmp_path / f"d{i}.img")) for i in range(3)]
    r = spinectl("provision", *images, "--spine", str(kit["v2"]), "--pubkey", str(kit["pub"]),
                 "--yes", "--json", *SMALL_ARGS)
    assert r.code == 0, r.err
    results = json.loads(r.out)
    assert [x["device"] for x in results] == images
    assert all(x["status"]["slots"]["A"]["version"] == "2.0" for x in results)


@pytest.mark.parametrize(
    "case, code, fragment",
    [
        ("too-small", 8, "device too small"),
        ("missing", 6, "does not exist"),
        ("not-confirmed", 2, "needs confirmation"),
        ("inventory-without-pods", 2, "go together"),
    ],
)
def test_provision_refusals(case, code, fragment, kit, spinectl, tmp_path) -> None:
    image = blank_disk(tmp_path / "d.img", 100 * 1024 * 1024 if case == "too-small" else 200 << 20)
    target = str(tmp_path / "nope.img") if case == "missing" else str(image)
    extra = [] if case == "not-confirmed" else ["--yes"]
    if case == "inventory-without-pods":
        extra.append("--inventory=x.json")
    r = spinectl("provision", target, "--spine", str(kit["v1"]), "--pubkey", str(kit["pub"]),
                 *extra, *SMALL_ARGS)
    assert r.code == code, r.err
    assert fragment in r.err
    if case != "missing":  # not even a partition table was written
        with open(image, "rb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)


def test_provision_refuses_a_mounted_device(kit, spinectl, tmp_path) -> None:
    require_root()
    require_tool("mkfs.ext4")
    image = blank_disk(tmp_path / "d.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt = tmp_path / "m"
    mnt.mkdir()
    with loop_device(image) as dev:
        subprocess.run(["mount", "-o", "ro", dev, mnt], check=True)
        try:
            for target in (dev, str(image)):
                r = spinectl("provision", target, "--spine", str(kit["v1"]), "--pubkey",
                             str(kit["pub"]), "--yes", *SMALL_ARGS)
                assert r.code == 8 and "mounted" in r.err, r.err
        finally:
            subprocess.run(["umount", mnt], check=False)


def test_system_disk_and_fixed_disks_are_refused() -> None:
    root = next((line.split()[0] for line in open("/proc/mounts") if line.split()[1] == "/"), "")
    if root.startswith("/dev/") and Path(root).exists():
        info = device.inspect(root.rstrip("0123456789") if root[-1].isdigit() and
                              not root.startswith("/dev/vd") else root)
        assert info.holds_root
        with pytest.raises(DiskError, match="running system's root"):
            device.check_target(info, allow_fixed=True)
    fixed = device.DeviceInfo("/dev/sdz", "fixed", 8 << 30, model="X", serial="1")
    with pytest.raises(DiskError, match="fixed"):
        device.check_target(fixed)
    device.check_target(fixed, allow_fixed=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["mark-good", "--slot", "B"], "empty"),
        (["mark-good", "--slot", "Q"], "unknown slot"),
        (["mark-good"], "no slot has booted"),
        (["mark-bad", "--slot", "other"], "no slot has booted"),
    ],
)
def test_mark_refusals_touch_nothing(args, fragment, disk, spinectl) -> None:
    before = region_digest(disk, "A")
    r = spinectl(args[0], disk, *args[1:])
    assert r.code == 9, r.err
    assert fragment in r.err
    assert region_digest(disk, "A") == before


KILLER = r"""
import os, signal, sys
from pipeline.disk import blockio, flash
from bay0.formats import minisign
disk, spine, pub, step, kill_at = sys.argv[1:6]
blockio.CHUNK = 64 * 1024
written = 0
def progress(n):
    global written
    written += n
    if int(kill_at) and written >= int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
def on_step(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
flash.flash(disk, spine, [minisign.PublicKey.parse(open(pub).read())],
            progress=progress, on_step=on_step)
"""


def _killed_flash(disk: str, kit, step: str, kill_at: int = 0) -> int:
    proc = subprocess.run([sys.executable, "-c", KILLER, disk, str(kit["v2"]), str(kit["pub"]),
                           step, str(kill_at)], cwd=ROOT, capture_output=True)
    return proc.returncode


@pytest.mark.parametrize("step", ["invalidate", "write", "verify", "activate"])
def test_flash_killed_at_every_step(step, disk, kit, spinectl) -> None:
    before = slot_digest(disk, "A")
    assert _killed_flash(disk, kit, step) == -signal.SIGKILL
    doc = status(spinectl, disk)
    assert slot_digest(disk, "A") == before
    assert doc["slots"]["A"]["version"] == "1.0"
    if step == "activate":  # the last step is durable: the new slot is in charge
        assert doc["next_boot"] == "B"
    else:
        assert doc["next_boot"] == "A" and doc["slots"]["B"]["root_hash"] is None
    r = spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"]),
                 *(["--slot", "A"] if step == "activate" else []))
    assert r.code == 0, r.err


def test_flash_killed_mid_write_at_random_offsets(disk, kit, spinectl) -> None:
    size = kit["v2"].stat().st_size
    rng = random.Random(1234)
    slot_a = read_layout(disk).slot("A")
    with open(disk, "rb") as f:
        f.seek(slot_a.start)
        a_bytes = f.read(slot_a.size)
    for kill_at in sorted(rng.randrange(1, size) for _ in range(4)):
        assert _killed_flash(disk, kit, "-", kill_at) == -signal.SIGKILL
        doc = status(spinectl, disk)
        assert doc["next_boot"] == "A" and doc["slots"]["B"]["root_hash"] is None
        with open(disk, "rb") as f:
            f.seek(slot_a.start)
            assert f.read(slot_a.size) == a_bytes
    assert spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"])).code == 0
    assert status(spinectl, disk)["next_boot"] == "B"


def test_corrupt_read_back_leaves_the_slot_invalid(disk, kit, spinectl, monkeypatch) -> None:
    from pipeline.disk import blockio

    real = blockio._Target.pwrite_all

    def flipping(self, data, offset):  # the medium keeps one wrong bit of data block 5
        start = read_layout(disk).slot("B").start
        if offset == start:
            buf = bytearray(data)
            buf[5 * 4096 + 7] ^= 1
            data = memoryview(buf)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", flipping)
    r = spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"]))
    assert r.code == 4 and "data block 5" in r.err, r.err
    doc = status(spinectl, disk)
    assert doc["next_boot"] == "A" and doc["slots"]["B"]["root_hash"] is None


def test_corrupt_hash_tree_read_back_is_caught(disk, kit, spinectl, monkeypatch) -> None:
    from pipeline.disk import blockio

    real = blockio._Target.pwrite_all
    art_tree = kit["v2"]
    from pipeline import spine as spine_mod

    params = spine_mod.open_spine(art_tree, [kit["key"].public_key]).verity

    def flipping(self, data, offset):  # one bit of the last hash block goes wrong
        start = read_layout(disk).slot("B").start
        end = start + params.hash_offset + 2 * 4096
        if offset <= end < offset + len(data):
            buf = bytearray(data)
            buf[end - offset + 3] ^= 1
            data = memoryview(buf)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", flipping)
    r = spinectl("flash", disk, str(kit["v2"]), "--pubkey", str(kit["pub"]))
    assert r.code == 4 and ("hash block" in r.err or "data block" in r.err), r.err
    assert status(spinectl, disk)["next_boot"] == "A"


def test_esp_payload_is_a_fat32_firmware_can_read(kit, spinectl, tmp_path) -> None:
    require_tool("fsck.fat", "mcopy")
    esp = tmp_path / "esp" / "EFI" / "BOOT"
    esp.mkdir(parents=True)
    payload = os.urandom(3 * 1024 * 1024)
    (esp / "BOOTX64.EFI").write_bytes(payload)
    image = blank_disk(tmp_path / "d.img")
    r = spinectl("provision", str(image), "--esp", str(tmp_path / "esp"), "--yes", *SMALL_ARGS)
    assert r.code == 0, r.err
    part = read_layout(str(image)).parts["SPINE_ESP"]
    fat = tmp_path / "esp.fat"
    with open(image, "rb") as src:
        src.seek(part.start)
        fat.write_bytes(src.read(part.size))
    check = subprocess.run(["fsck.fat", "-n", "-v", str(fat)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    total = int(check.stdout.rsplit("/", 1)[1].split()[0])  # "... 6147/80628 clusters"
    assert total >= 65525, "fewer clusters than FAT32 allows: firmware would misread it"
    out = tmp_path / "back.efi"
    subprocess.run(["mcopy", "-i", str(fat), "::/EFI/BOOT/BOOTX64.EFI", str(out)], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    assert out.read_bytes() == payload


def test_too_small_esp_is_refused_before_writing(spinectl, tmp_path) -> None:
    image = blank_disk(tmp_path / "d.img")
    args = list(SMALL_ARGS)
    args[args.index("--esp-mib") + 1] = "20"
    r = spinectl("provision", str(image), "--yes", *args)
    assert r.code == 8 and "at least 36 MiB" in r.err
    with open(image, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
