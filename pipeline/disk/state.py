"""Boot-control and the v0.1 persist keyfile on a disk's ``spine_state`` partition.

The record format and the slot transitions are bay0's (``bay0/formats/bootctl.py``);
this module only moves bytes: it reads both copies, and writes the one that
``plan_write`` chooses with a synchronous write, so each step is durable before the
next one starts.
"""

from __future__ import annotations

import os

from bay0.errors import DiskError, FormatError
from bay0.formats import bootctl
from pipeline.disk.layout import STATE, Layout


def _open(path: str, write: bool) -> int:
    flags = (os.O_RDWR | os.O_DSYNC) if write else os.O_RDONLY
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise DiskError(f"{path}: cannot open ({e.strerror})",
                        "check permissions (root) and that the device is attached") from e


def read_region(layout: Layout) -> bytes:
    fd = _open(layout.path, write=False)
    try:
        return os.pread(fd, bootctl.REGION_SIZE, layout.parts[STATE].start)
    finally:
        os.close(fd)


def read_bootctl(layout: Layout) -> bootctl.BootControl:
    """The current boot-control state. Raises ``DiskError`` when neither copy is valid."""
    try:
        return bootctl.read_region(read_region(layout))[0]
    except FormatError as e:
        raise DiskError(f"{layout.path}: {e.message}", e.hint) from e


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    os.fsync(fd)


def write_bootctl(layout: Layout, new: bootctl.BootControl) -> bootctl.BootControl:
    """Durably write ``new`` over the older copy; returns the state as written (seq bumped)."""
    region = read_region(layout)
    offset, record = bootctl.plan_write(region, new)
    fd = _open(layout.path, write=True)
    try:
        _pwrite_all(fd, record, layout.parts[STATE].start + offset)
    finally:
        os.close(fd)
    return bootctl.decode(record)


def initialise(layout: Layout, bc: bootctl.BootControl, keyfile: bytes) -> None:
    """Write both boot-control copies and the persist keyfile (provisioning only)."""
    fd = _open(layout.path, write=True)
    try:
        start = layout.parts[STATE].start
        _pwrite_all(fd, bootctl.initial_region(bc), start)
        _pwrite_all(fd, bootctl.check_keyfile(keyfile), start + bootctl.KEYFILE_OFFSET)
    finally:
        os.close(fd)
