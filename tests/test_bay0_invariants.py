"""Mount-table parsing and the invariant checks (pure), plus the real host as a negative."""

from __future__ import annotations

import pytest

from bay0 import invariants
from bay0.errors import FormatError

GOOD = """\
20 1 254:0 / / ro,nodev,relatime - squashfs /dev/mapper/spine_root ro,errors=continue
21 20 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=1000k,nr_inodes=250,mode=755
22 20 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
23 20 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
24 20 0:22 / /run rw,nosuid,nodev,relatime - tmpfs run rw,mode=755
25 20 254:1 / /persist rw,nosuid,nodev,noexec,relatime - ext4 /dev/mapper/persist rw
26 20 0:23 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,size=65536k,mode=1777
27 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
28 20 253:3 / /mnt/stage ro,nosuid,nodev,noexec,relatime - ext4 /dev/vda5 ro
29 24 254:2 / /run/bay0/pods/web ro,nosuid,nodev,relatime - squashfs /dev/mapper/pod-web ro
"""
DM = {"254:0": "CRYPT-VERITY-0f1e2d3c4b5a69788796a5b4c3d2e1f0-spine_root",
      "254:1": "CRYPT-LUKS2-aaaa-persist",
      "254:2": "CRYPT-VERITY-00112233445566778899aabbccddeeff-pod-web"}
RO = {"254:0", "254:2"}


def check(text: str, dm=DM, ro=RO) -> list[str]:
    return invariants.check_mounts(invariants.parse_mountinfo(text), dm.get, lambda d: d in ro)


def replace_line(mount_point: str, new: str | None) -> str:
    lines = [ln for ln in GOOD.splitlines() if f" {mount_point} " not in ln]
    return "\n".join(lines + ([new] if new else [])) + "\n"


def test_parse_mountinfo_fields_and_escapes():
    text = GOOD + r"30 20 0:30 /sub /mnt/a\040b rw,nosuid shared:5 master:2 - tmpfs my\134src rw" + "\n"
    entries = invariants.parse_mountinfo(text)
    root = entries[0]
    assert (root.mount_id, root.parent_id, root.device, root.mount_point) == (20, 1, "254:0", "/")
    assert root.read_only and root.fstype == "squashfs" and root.source == "/dev/mapper/spine_root"
    assert "errors=continue" in root.super_options
    last = entries[-1]
    assert (last.root, last.mount_point, last.fstype, last.source) == ("/sub", "/mnt/a b", "tmpfs", "my\\src")
    assert last.options == {"rw", "nosuid"}


@pytest.mark.parametrize("bad", ["garbage", "1 2 3:4 / / rw - ", "x 1 0:1 / / rw - proc proc rw"])
def test_parse_mountinfo_refuses_bad_lines(bad):
    with pytest.raises(FormatError, match="mountinfo line 1 does not parse"):
        invariants.parse_mountinfo(bad)


def test_a_good_system_has_no_violations():
    assert check(GOOD) == []


CASES = [
    # (mount point, replacement line or None, expected violation)
    ("/", "20 1 254:0 / / rw,nodev - squashfs /dev/mapper/spine_root rw", "/ is mounted without ro"),
    ("/", "20 1 8:2 / / ro - squashfs /dev/vda2 ro", "/ is not on device-mapper (device 8:2, /dev/vda2)"),
    ("/", "20 1 254:1 / / ro - squashfs /dev/mapper/persist ro", "/ is on a device-mapper device that is not dm-verity"),
    ("/", "20 1 254:0 / / ro - ext4 /dev/mapper/spine_root ro", "/ is ext4, expected squashfs"),
    ("/", None, "/ is not mounted"),
    ("/persist", "25 20 254:1 / /persist rw,nosuid,nodev - ext4 /dev/mapper/persist rw",
     "/persist is mounted without noexec"),
    ("/persist", "25 20 254:1 / /persist rw - ext4 /dev/mapper/persist rw",
     "/persist is mounted without nodev,noexec,nosuid"),
    ("/persist", None, "/persist is not mounted"),
    ("/mnt/stage", "28 20 253:3 / /mnt/stage rw,nosuid,nodev,noexec - ext4 /dev/vda5 rw",
     "/mnt/stage is mounted without ro"),
    ("/proc", "22 20 0:20 / /proc rw,nosuid - proc proc rw", "/proc is mounted without nodev,noexec"),
    ("/run/bay0/pods/web", "29 24 254:2 / /run/bay0/pods/web ro,nosuid,nodev - squashfs /dev/loop0 ro",
     "/run/bay0/pods/web is on a device-mapper device that is not dm-verity"),
]


@pytest.mark.parametrize(("where", "line", "expected"), CASES)
def test_each_broken_invariant_is_named(where, line, expected):
    dm = dict(DM, **{"254:2": "CRYPT-LUKS2-x"}) if where.startswith("/run/bay0") else DM
    problems = check(replace_line(where, line), dm=dm)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("extra", [
    "40 20 0:40 / /mnt/usb rw,nosuid,nodev,noexec - vfat /dev/sdb1 rw",
    "40 24 0:40 / /run/bay0/pods/Bad_Name ro,nosuid,nodev - squashfs /dev/mapper/x ro",
    "40 23 0:40 / /sys/kernel/debug rw,nosuid,nodev,noexec - debugfs debugfs rw",
    "40 21 0:40 / /dev/pts rw,nosuid,noexec - devpts devpts rw",
])
def test_unexpected_mounts_are_violations(extra):
    problems = check(GOOD + extra + "\n")
    assert len(problems) == 1 and problems[0].startswith("unexpected mount "), problems


def test_a_mount_over_an_allowed_one_is_a_violation():
    hiding = "40 25 0:40 / /persist rw,nosuid,nodev,noexec - ext4 /dev/vdb1 rw"
    assert check(GOOD + hiding + "\n") == ["/persist is mounted twice (ext4, then ext4)"]


def test_a_writable_verity_device_is_refused():
    problems = check(GOOD, ro={"254:2"})
    assert problems == ["/ is on a writable block device (254:0)"]


def test_sysfs_lookups(tmp_path):
    dm = tmp_path / "dev/block/254:0/dm"
    dm.mkdir(parents=True)
    (dm / "uuid").write_text("CRYPT-VERITY-abc-spine_root\n")
    (tmp_path / "dev/block/254:0/ro").write_text("1\n")
    assert invariants.sys_dm_uuid("254:0", str(tmp_path)) == "CRYPT-VERITY-abc-spine_root"
    assert invariants.sys_read_only("254:0", str(tmp_path))
    assert invariants.sys_dm_uuid("8:0", str(tmp_path)) is None
    assert not invariants.sys_read_only("8:0", str(tmp_path))


def test_check_system_on_files(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(GOOD)
    for device, uuid in DM.items():
        node = tmp_path / "sys/dev/block" / device
        (node / "dm").mkdir(parents=True)
        (node / "dm/uuid").write_text(uuid + "\n")
        (node / "ro").write_text("1\n" if device in RO else "0\n")
    assert invariants.check_system(str(info), str(tmp_path / "sys")) == []
    assert invariants.check_system(str(tmp_path / "missing"))[0].startswith("cannot read the mount table")


def test_this_build_host_is_not_a_spine():
    """The real host root is ext4/overlay on a plain disk: bay0 must refuse it."""
    problems = invariants.check_system()
    assert any(p.startswith("/ ") for p in problems), problems
