"""bay0 marks its slot good on a real spine_state image written by the Python bootctl."""

from __future__ import annotations

import pytest

from bay0 import bootmark
from bay0.errors import FormatError, SlotStateError
from bay0.formats import bootctl

H1, H2 = "a" * 64, "b" * 64


def booted(last: str = "B") -> bootctl.BootControl:
    bc = bootctl.BootControl()
    bc = bootctl.activate(bc, "A", version="1.0", root_hash=H1, salt="00" * 32,
                          data_size=4096 * 10, hash_offset=4096 * 10)
    bc = bootctl.mark_good(bc, "A")
    bc = bootctl.activate(bc, "B", version="2.0", root_hash=H2, salt="11" * 32,
                          data_size=4096 * 20, hash_offset=4096 * 20)
    return bootctl.consume_try(bc, last)


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "spine_state.img"
    path.write_bytes(bootctl.initial_region(booted()).ljust(bootctl.STATE_MIN_SIZE, b"\0"))
    return path


def test_marks_the_booted_slot_in_the_other_copy(state):
    before = state.read_bytes()
    result = bootmark.mark_slot_good(str(state), "B")
    after = state.read_bytes()
    bc, index = bootctl.read_region(after[:bootctl.REGION_SIZE])
    assert bc.slot("B").good and bc.slot("B").tries_left == bootctl.DEFAULT_TRIES and bc.seq == 1
    assert (result.written, result.seq, result.reason) == (1, 1, "marked")
    assert after[:4096] == before[:4096]  # copy 0 untouched: a torn write could not hurt
    assert after[8192:] == before[8192:]  # keyfile area and the rest untouched
    assert bootmark.mark_slot_good(str(state), "B").reason == "slot B is already good"
    assert state.read_bytes() == after


def test_a_good_slot_is_confirmed_again_after_each_boot_spent_a_try(tmp_path):
    bc = bootctl.mark_good(booted("B"), "B")
    path = tmp_path / "state"
    path.write_bytes(bootctl.initial_region(bootctl.consume_try(bc, "B")).ljust(bootctl.STATE_MIN_SIZE, b"\0"))
    result = bootmark.mark_slot_good(str(path), "B")
    after = bootctl.read_region(path.read_bytes()[:bootctl.REGION_SIZE])[0]
    assert result.reason == "marked" and after.slot("B").tries_left == bootctl.DEFAULT_TRIES


def test_root_device_is_found_through_mountinfo_and_sysfs(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("1 0 254:0 / / ro,nodev - squashfs /dev/mapper/spine_root ro\n"
                         "2 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n")
    uevent = tmp_path / "sys/dev/block/254:0/uevent"
    (uevent.parent / "dm").mkdir(parents=True)
    uevent.write_text("MAJOR=254\nMINOR=0\nDEVNAME=dm-0\nDEVTYPE=disk\n")
    uuid = uevent.parent / "dm/uuid"
    uuid.write_text("CRYPT-PLAIN-persist\n")
    with pytest.raises(FileNotFoundError, match=r"the root \(254:0\) is not on a dm-verity device"):
        bootmark.root_device(str(mountinfo), str(tmp_path / "sys"), "/dev")
    uuid.write_text("CRYPT-VERITY-0123456789abcdef-spine_root\n")
    assert bootmark.root_device(str(mountinfo), str(tmp_path / "sys"), "/dev") == "/dev/dm-0"
    uevent.unlink()
    with pytest.raises(FileNotFoundError, match=r"the root \(254:0\) is not on a block device"):
        bootmark.root_device(str(mountinfo), str(tmp_path / "sys"), "/dev")
    mountinfo.write_text("2 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n")
    with pytest.raises(FileNotFoundError, match="no root mount"):
        bootmark.root_device(str(mountinfo), str(tmp_path / "sys"), "/dev")


@pytest.mark.parametrize("size", [0, 4096, 3 * 65536, 3 * 65536 + 8192])
def test_read_through_reads_every_byte_in_steps(tmp_path, size):
    path = tmp_path / "root.img"
    path.write_bytes(bytes(size))
    steps = bootmark.read_through(str(path), chunk=65536)
    count = 0
    with pytest.raises(StopIteration) as end:
        while True:
            next(steps)
            count += 1
    assert end.value.value == size
    assert count == -(-size // 65536)  # one step per chunk read


def test_read_through_fails_on_a_missing_device(tmp_path):
    with pytest.raises(FileNotFoundError):
        next(bootmark.read_through(str(tmp_path / "absent")))


def test_torn_write_leaves_the_old_decision(state):
    bootmark.mark_slot_good(str(state), "B")
    data = bytearray(state.read_bytes())
    data[4096 + 100] ^= 0xFF  # the new copy is damaged after the fact
    state.write_bytes(bytes(data))
    bc, index = bootctl.read_region(bytes(data[:bootctl.REGION_SIZE]))
    assert index == 0 and not bc.slot("B").good and bc.slot("B").tries_left == 2


def test_refuses_a_slot_that_did_not_boot(state):
    before = state.read_bytes()
    with pytest.raises(SlotStateError, match="the last boot was B, not A"):
        bootmark.mark_slot_good(str(state), "A")
    assert state.read_bytes() == before


def test_refuses_a_blank_state(tmp_path):
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(bootctl.STATE_MIN_SIZE))
    with pytest.raises(FormatError, match="no valid boot-control record"):
        bootmark.mark_slot_good(str(blank), "A")
    assert blank.read_bytes() == bytes(bootctl.STATE_MIN_SIZE)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_marker_waits_for_uptime_and_a_healthy_window():
    clock = Clock()
    marker = bootmark.BootMarker("A", 120, window=30, clock=clock)
    clock.t = 100
    assert not marker.due(True)  # too early
    clock.t = 110
    assert not marker.due(False)  # a persona is unhealthy: the window restarts at 110
    clock.t = 125
    assert not marker.due(True)  # uptime reached, but only 15 s healthy
    clock.t = 140
    assert marker.due(True)
    marker.done = True
    assert not marker.due(True)


def test_marker_can_only_be_lowered_and_needs_a_slot():
    clock = Clock()
    marker = bootmark.BootMarker("B", 120, clock=clock)
    marker.lower(500)
    assert marker.good_after == 120
    marker.lower(5)
    clock.t = 5
    assert marker.good_after == 5 and marker.due(True)
    assert bootmark.BootMarker(None, 0, clock=clock).done


def test_uptime_is_boottime():
    assert bootmark.uptime() > 0
