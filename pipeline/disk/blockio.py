"""Streaming large images onto devices and partitions: aligned, direct, durable.

Writes go through O_DIRECT with a page-aligned buffer (as ``dd oflag=direct`` does),
falling back to buffered writes where the filesystem refuses O_DIRECT (tmpfs).
The caller gets progress callbacks per chunk and a final fsync; the read-back that
verifies the slot lives in ``writeverify.py``.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

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


def stream_copy(
    src: str,
    dest: str,
    *,
    dest_offset: int,
    length: int,
    progress: Callable[[int], None] | None = None,
    chunk_done: Callable[[int, int], None] | None = None,
) -> None:
    """Copy the first ``length`` bytes of ``src`` to ``dest`` at ``dest_offset``, then fsync.

    ``chunk_done(pos, n)`` is called after each chunk reached the medium (O_DIRECT) or
    the page cache (buffered fallback; the reader then drops it before reading back).

    Raises ``DiskError`` on any I/O error (short source, device gone, out of space).
    """
    target = _Target(dest)
    buffer = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT requires
    view = memoryview(buffer)
    done = 0
    try:
        with open(src, "rb", buffering=0) as source:
            while done < length:
                want = min(CHUNK, length - done)
                got = source.readinto(view[:want])
                if got != want:
                    raise DiskError(f"{src} ended after {done + (got or 0)} of {length} bytes",
                                    "the Spine file is truncated: copy it again")
                target.pwrite_all(view[:want], dest_offset + done)
                if not target.direct:
                    os.fdatasync(target.fd)  # so a read-back sees the medium, not memory
                if chunk_done:
                    chunk_done(done, want)
                done += want
                if progress:
                    progress(want)
        os.fsync(target.fd)
    except OSError as e:
        raise DiskError(f"{dest}: write failed at byte {dest_offset + done} ({e.strerror})",
                        "check the device (dmesg); the slot stays invalid until a flash succeeds") from e
    finally:
        view.release()
        buffer.close()
        target.close()
