"""Streaming large images onto devices and partitions: aligned, direct, durable.

Writes go through O_DIRECT (as ``dd oflag=direct`` does), straight from a read-only
mapping of the source file: the kernel takes the source's page-cache pages as the
write buffer, so nothing is copied through user space. Where the filesystem refuses
O_DIRECT (tmpfs) the writes fall back to buffered I/O. The caller gets progress
callbacks per chunk, optional intermediate ``fdatasync`` calls and a final fsync; the
read-back that verifies the slot lives in ``writeverify.py``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Callable, Iterator

from bay0.errors import DiskError

CHUNK = 8 * 1024 * 1024  # large aligned writes; a multiple of every logical block size


class _Target:
    """A write fd that starts with O_DIRECT and falls back to buffered I/O on EINVAL."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.direct = True
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self.direct = False
            self.fd = self._open_buffered()

    def _open_buffered(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise DiskError(f"{self.path}: cannot open for writing ({e.strerror})",
                            "check that the device is attached, writable, and you are root") from e

    def pwrite_all(self, data: memoryview, offset: int) -> None:
        while data:
            try:
                written = os.pwrite(self.fd, data, offset)
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                os.close(self.fd)  # this filesystem refuses O_DIRECT: go buffered
                self.direct, self.fd = False, self._open_buffered()
                continue
            data, offset = data[written:], offset + written

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def _mapped(src: str, length: int) -> Iterator[memoryview]:
    """The first ``length`` bytes of ``src``, mapped read-only (page aligned, as O_DIRECT needs).

    Only the kernel touches the mapping (as a write buffer): a source truncated meanwhile
    makes a write fail with EFAULT instead of raising SIGBUS in this process.
    """
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DiskError(f"{src}: cannot open ({e.strerror})", "check the path and permissions") from e
    try:
        size = os.fstat(fd).st_size
        if size < length:
            raise DiskError(f"{src} ended after {size} of {length} bytes",
                            "the Spine file is truncated: copy it again")
        if not length:
            yield memoryview(b"")
            return
        try:
            mapping = mmap.mmap(fd, length, prot=mmap.PROT_READ)
        except OSError as e:
            raise DiskError(f"{src}: cannot map it for reading ({e.strerror})",
                            "copy the Spine file to a local filesystem") from e
    finally:
        os.close(fd)
    mapping.madvise(mmap.MADV_SEQUENTIAL)
    view = memoryview(mapping)
    try:
        yield view
    finally:
        view.release()
        with contextlib.suppress(BufferError):  # a slice held by an error's traceback:
            mapping.close()                     # the map goes when that does


def stream_copy(
    src: str,
    dest: str,
    *,
    dest_offset: int,
    length: int,
    progress: Callable[[int], None] | None = None,
    chunk_done: Callable[[int, int], None] | None = None,
    sync_every: int | None = None,
    first: int = 0,
) -> None:
    """Copy the first ``length`` bytes of ``src`` to ``dest`` at ``dest_offset``, then fsync.

    Chunks go in order from the one holding byte ``first`` to the end, then from the
    start (a verity image's tree first, so its data can be checked as it streams).
    ``chunk_done(pos, n)`` is called after each chunk reached the medium (O_DIRECT) or
    the page cache (buffered fallback; the reader then drops it before reading back).
    ``sync_every`` (bytes) adds an ``fdatasync`` whenever that much was written since
    the last one, so no flush (the final fsync included) has much to push: a device with
    a large volatile cache (a loop device's backing file) otherwise takes one long flush
    at the end, and reads queued behind it wait for all of it.

    Raises ``DiskError`` on any I/O error (short source, device gone, out of space);
    a source shorter than ``length`` is refused before anything is written.
    """
    start = min(first, length) // CHUNK * CHUNK
    order = [*range(start, length, CHUNK), *range(0, start, CHUNK)]
    pos = 0
    with _mapped(src, length) as source:
        target = _Target(dest)
        unsynced = 0
        try:
            for pos in order:
                want = min(CHUNK, length - pos)
                target.pwrite_all(source[pos:pos + want], dest_offset + pos)
                unsynced += want
                if not target.direct or (sync_every and unsynced >= sync_every):
                    os.fdatasync(target.fd)  # buffered: so a read-back sees the medium, not memory
                    unsynced = 0
                if chunk_done:
                    chunk_done(pos, want)
                if progress:
                    progress(want)
            os.fsync(target.fd)
        except OSError as e:
            raise DiskError(f"{dest}: write failed at byte {dest_offset + pos} ({e.strerror})",
                            "check the device (dmesg); the slot stays invalid until a flash succeeds") from e
        finally:
            target.close()
