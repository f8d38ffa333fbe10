"""Write a verity image into a slot and verify the read-back bytes while it streams.

A writer thread streams the image with aligned O_DIRECT writes (and an ``fdatasync``
every ``SYNC_EVERY`` bytes); as each chunk lands, a reader thread reads it back from
the medium (O_DIRECT, so never from the page cache) and the calling thread hashes its
data blocks. When the write is done and synced, the tree is rebuilt from the
read-back data and must reproduce the signed root hash, and the read-back hash area
must equal the rebuilt one byte for byte (the kernel will check those blocks at
runtime). Writing and verifying overlap, so the whole flash costs about one write.

Nothing waits for the hasher but the reader, and only once ``READ_AHEAD`` chunks of
read-back data are waiting to be hashed: the writer never waits, so the medium stays
busy. The pool of read-back buffers grows only while hashing lags (on a slow medium
it stays at one or two chunks).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable

from bay0.errors import CorruptionError, DiskError
from bay0.formats.verity import (
    BLOCK_SIZE,
    DIGEST_SIZE,
    VerityParams,
    assemble_hash_area,
    build_levels,
    first_mismatch,
    parse_superblock,
    tree_geometry,
    tree_root,
)
from bay0.formats.verity import hash_blocks as hash_data_blocks
from pipeline.disk import blockio

HINT = "the medium did not keep what was written: try another device; the slot stays invalid"
READ_AHEAD = 16  # chunks read back but not yet hashed, at most (16 x 8 MiB)
SYNC_EVERY = 64 * 1024 * 1024  # bytes written between two fdatasync calls


class _Stopped(Exception):
    """The verifying side gave up: the writer stops at the next chunk."""


def _reader(dest: str) -> tuple[int, bool]:
    try:
        return os.open(dest, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC), True
    except OSError:
        return os.open(dest, os.O_RDONLY | os.O_CLOEXEC), False


class _Writer(threading.Thread):
    """Streams ``length`` bytes of ``src`` into ``dest`` and announces each written chunk.

    The queue of written chunks is unbounded (it holds positions, not data): the
    writer never waits for the verifying side, only stops when ``stop`` is set.
    """

    def __init__(self, src: str, dest: str, dest_offset: int, length: int) -> None:
        super().__init__(name="spine-writer", daemon=True)
        self.src, self.dest, self.offset, self.length = src, dest, dest_offset, length
        self.chunks: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()
        self.stop = threading.Event()

    def _written(self, pos: int, n: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.chunks.put((pos, n))

    def run(self) -> None:
        try:
            blockio.stream_copy(self.src, self.dest, dest_offset=self.offset, length=self.length,
                                chunk_done=self._written, sync_every=SYNC_EVERY)
            self.chunks.put(None)
        except BaseException as e:  # handed to the verifying thread, which re-raises it
            self.chunks.put(e)


class _ReadBack(threading.Thread):
    """Reads each written chunk back into a free buffer while the caller hashes earlier ones.

    Buffers are made when none is free, up to ``buffers``; then the reader waits for
    the hasher to hand one back.
    """

    def __init__(self, dest: str, dest_offset: int, written: queue.Queue, buffers: int) -> None:
        super().__init__(name="spine-readback", daemon=True)
        self.dest, self.offset, self.written, self.buffers = dest, dest_offset, written, buffers
        self.maps: list[mmap.mmap] = []
        self.free: queue.Queue[int] = queue.Queue()
        self.ready: queue.Queue[tuple[int, int, int] | BaseException | None] = queue.Queue()

    def _buffer(self) -> int:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            if len(self.maps) >= self.buffers:
                return self.free.get()
        self.maps.append(mmap.mmap(-1, blockio.CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        return len(self.maps) - 1

    def run(self) -> None:
        try:
            fd, direct = _reader(self.dest)
            try:
                while (item := self.written.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    pos, n = item
                    index = self._buffer()
                    with memoryview(self.maps[index]) as view:
                        _read_back(fd, direct, self.dest, view, self.offset + pos, n)
                    self.ready.put((pos, n, index))
            finally:
                os.close(fd)
            self.ready.put(None)
        except BaseException as e:  # handed to the hashing thread, which re-raises it
            self.ready.put(e)

    def close(self) -> None:
        for m in self.maps:
            m.close()


def write_verified(
    src: str,
    dest: str,
    *,
    dest_offset: int,
    length: int,
    params: VerityParams,
    progress: Callable[[int], None] | None = None,
    on_written: Callable[[], None] | None = None,
) -> None:
    """Write the image and check it read back against ``params`` (the signed root hash).

    Three stages overlap: the writer, the read-back, and hashing (this thread).
    Raises ``DiskError`` (I/O) or ``CorruptionError`` naming the first bad block.
    """
    salt = params.salt_bytes
    writer = _Writer(src, dest, dest_offset, length)
    reader = _ReadBack(dest, dest_offset, writer.chunks, READ_AHEAD)
    digests, area = bytearray(), bytearray()
    writer.start()
    reader.start()
    try:
        while (item := reader.ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            pos, n, index = item
            with memoryview(reader.maps[index])[:n] as chunk:
                _collect(chunk, pos, params, salt, digests, area)
            reader.free.put(index)
            if progress:
                progress(n)
    finally:
        _drain(writer, reader)
    if on_written:
        on_written()
    _check(bytes(digests), bytes(area), params, salt)


def _drain(writer: _Writer, reader: _ReadBack) -> None:
    """Stop both threads whatever happened (an error leaves them blocked on queues)."""
    writer.stop.set()  # after an error the rest of the image need not be written
    while writer.is_alive() or reader.is_alive():
        for q in (writer.chunks, reader.ready):
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
        for index in range(len(reader.maps)):
            reader.free.put(index)
        writer.join(timeout=0.05)
        reader.join(timeout=0.05)
    reader.close()


def _read_back(fd: int, direct: bool, dest: str, view: memoryview, at: int, n: int) -> None:
    if not direct:
        os.posix_fadvise(fd, at, n, os.POSIX_FADV_DONTNEED)
    try:
        with view[:n] as target:
            got = os.preadv(fd, [target], at)
    except OSError as e:
        if e.errno == errno.EINVAL and direct:
            raise DiskError(f"{dest}: cannot read back with O_DIRECT", HINT) from e
        raise DiskError(f"{dest}: read-back failed at byte {at} ({e.strerror})", HINT) from e
    if got != n:
        raise DiskError(f"{dest}: short read-back at byte {at}", HINT)


def _collect(chunk: memoryview, pos: int, params: VerityParams, salt: bytes,
             digests: bytearray, area: bytearray) -> None:
    end = pos + len(chunk)
    if pos < params.data_size:
        with chunk[: min(end, params.data_size) - pos] as data:
            digests += hash_data_blocks(data, salt)
    if end > params.hash_offset:
        with chunk[max(pos, params.hash_offset) - pos:] as tree:
            area += tree


def _check(digests: bytes, area: bytes, params: VerityParams, salt: bytes) -> None:
    levels = build_levels(digests, salt) if len(digests) > DIGEST_SIZE else []
    root = tree_root(digests, levels, salt)
    geometry = tree_geometry(params.data_blocks)
    expected = assemble_hash_area(parse_superblock(area[:BLOCK_SIZE]), levels) if levels else None
    if root != params.root_hash:
        if levels:
            start = geometry.level_starts[0] * BLOCK_SIZE
            stored = area[start:start + len(digests)]
            bad = first_mismatch(digests, stored)
            if bad is not None:
                raise CorruptionError(f"data block {bad} does not match its hash", HINT)
        raise CorruptionError("the read-back image does not reproduce the signed root hash", HINT)
    if expected is not None and area[: len(expected)] != expected:
        bad = next(i for i in range(0, len(expected), BLOCK_SIZE)
                   if area[i:i + BLOCK_SIZE] != expected[i:i + BLOCK_SIZE]) // BLOCK_SIZE
        raise CorruptionError(f"hash block {bad} of the verity tree is corrupt", HINT)
