"""Mark the booted slot good once the machine has proven itself.

Condition: uptime (CLOCK_BOOTTIME) at least ``good_after`` seconds (default 120; the
kernel command line ``spine.good_after=`` or the inventory's ``good_after`` field can
lower it), and every persona healthy now and throughout the last ``window`` seconds
(any unhealthy observation restarts that window). With no persona at all the Spine
itself is what proved stable, so the slot is marked too.

Every boot spends one of the slot's tries, a good slot's too, and marking refills them
(``bootctl.mark_good``): so bay0 marks on every boot that proves stable, not only the
first. Before it marks, bay0 reads the whole root device through dm-verity
(``read_through``, a chunk per main-loop step), so no slot is confirmed with a block
that was never checked; the initramfs reads a slot end to end only on its last try.

The write goes through the shared boot-control code (``bay0.formats.bootctl``) on the
``spine_state`` partition: read both copies, ``mark_good`` on the valid copy with the
highest sequence, ``plan_write`` picks the other copy and the next sequence number,
``pwrite`` it and ``fsync``; a torn write leaves the current copy in charge. bay0
refuses when boot control says the last boot was another slot.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bay0.errors import SlotStateError

STATE_PARTNAME = "spine_state"
HEALTH_WINDOW = 30.0


READ_CHUNK = 1 << 20


def root_device(mountinfo: str = "/proc/self/mountinfo", sysfs: str = "/sys", dev: str = "/dev") -> str:
    """The dm-verity device node the root filesystem is mounted from (``/dev/dm-N``).

    Raises ``FileNotFoundError`` when ``/`` is not on a dm-verity block device (then
    there is nothing bay0 could read end to end that would prove anything).
    """
    from bay0.invariants import VERITY_UUID_PREFIX, parse_mountinfo, read_uevent, sys_dm_uuid

    with open(mountinfo) as f:
        roots = [e for e in parse_mountinfo(f.read()) if e.mount_point == "/"]
    if not roots:
        raise FileNotFoundError(f"no root mount in {mountinfo}")
    device = roots[-1].device  # the last mount over / is the one in use
    uuid = sys_dm_uuid(device, sysfs)
    if uuid is None or not uuid.startswith(VERITY_UUID_PREFIX):
        raise FileNotFoundError(f"the root ({device}) is not on a dm-verity device")
    try:
        name = read_uevent(f"{sysfs}/dev/block/{device}/uevent").get("DEVNAME")
    except FileNotFoundError:
        raise FileNotFoundError(f"the root ({device}) is not on a block device") from None
    if not name:
        raise FileNotFoundError(f"the root's block device {device} has no DEVNAME")
    return f"{dev}/{name}"


def read_through(path: str, chunk: int = READ_CHUNK):
    """Read ``path`` from its first byte to its end, one ``chunk`` per step (a generator
    for bay0's job loop: it yields after each read and returns the bytes read).

    Through a dm-verity mapping every block is hashed by the kernel as it is read, so
    reaching the end proves the whole image matches the root hash: corruption either
    restarts the machine (--restart-on-corruption) or raises ``OSError`` (EIO) here.
    O_DIRECT keeps the page cache out of it (no cached, already-checked copy answers).
    """
    import mmap

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    buffer = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT requires
    view = memoryview(buffer)
    total = 0
    try:
        while True:
            got = os.preadv(fd, [view], total)
            if got == 0:  # the end (a short read only ends the scan when nothing more comes)
                return total
            total += got
            yield
    finally:
        view.release()
        buffer.close()
        os.close(fd)


def uptime() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class MarkResult:
    """What ``mark_slot_good`` did: ``written`` (copy index) or why not."""

    written: int | None
    seq: int
    reason: str


def mark_slot_good(device: str, slot: str) -> MarkResult:
    """Mark ``slot`` good in the boot control on ``device``.

    Raises ``FormatError`` (no valid copy), ``SlotStateError`` (empty or bad slot, or
    the last boot was the other slot) and ``OSError``; nothing is written then.
    """
    from bay0.formats import bootctl

    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        region = os.pread(fd, bootctl.REGION_SIZE, 0)
        current, _ = bootctl.read_region(region)
        if current.last_boot != slot:
            raise SlotStateError(f"boot control says the last boot was {current.last_boot}, "
                                 f"not {slot}", "refusing to mark a slot bay0 did not boot from")
        marked = bootctl.mark_good(current, slot)
        if marked == current:  # good with its tries full: nothing to write
            return MarkResult(None, current.seq, f"slot {slot} is already good")
        offset, record = bootctl.plan_write(region, marked)
        written = 0
        while written < len(record):
            written += os.pwrite(fd, record[written:], offset + written)
        os.fsync(fd)
        after, index = bootctl.read_region(os.pread(fd, bootctl.REGION_SIZE, 0))
    finally:
        os.close(fd)
    if not after.slot(slot).good:
        raise SlotStateError(f"slot {slot}: the good mark did not read back", "check the disk")
    return MarkResult(index, after.seq, "marked")


class BootMarker:
    """Decides when to mark, from the main loop's ticks; marks at most once."""

    def __init__(self, slot: str | None, good_after: float, *, window: float = HEALTH_WINDOW,
                 clock=uptime) -> None:
        self.slot = slot
        self.good_after = good_after
        self.window = min(window, good_after)
        self.clock = clock
        self.unhealthy_at = clock()
        self.done = slot is None  # nothing to mark without a known slot

    def lower(self, seconds: float) -> None:
        """Accept a smaller ``good_after`` (never a larger one)."""
        if 0 <= seconds < self.good_after:
            self.good_after = seconds
            self.window = min(self.window, seconds)

    def due(self, healthy: bool) -> bool:
        """Record health now; True when the slot should be marked now."""
        now = self.clock()
        if not healthy:
            self.unhealthy_at = now
            return False
        return (not self.done and now >= self.good_after
                and (now - self.unhealthy_at >= self.window or self.window == 0))
