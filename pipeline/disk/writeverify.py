"""Write a verity image into a slot and verify the read-back bytes while it streams.

A writer thread streams the image with aligned O_DIRECT writes (and an ``fdatasync``
every ``SYNC_EVERY`` bytes), the hash tree first; as each chunk lands, a reader
thread reads it back from the medium (O_DIRECT, so never from the page cache) into
memory shared with child processes that hash every block of it, one child per usable
CPU. As soon as the tree's blocks are hashed it is checked top down against the
signed root hash (as dm-verity reads it), and from then on each answer's data blocks
are checked against the verified level 0. So the check ends a few milliseconds after
the last chunk lands, and a bad block stops the flash where it is found.

Nothing waits for the hashers but the reader, and only once ``READ_AHEAD`` chunks of
read-back data are waiting to be hashed: the writer never waits, so the medium stays
busy. The hashers run at idle CPU priority while the medium is written (the writer,
the reader and the kernel's block workers go first) and at normal priority once the
last chunk is written, when they are all that is left to wait for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import select
import signal
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

from bay0.errors import CorruptionError, DiskError
from bay0.formats.verity import BLOCK_SIZE, DIGEST_SIZE, VerityParams, first_mismatch, tree_geometry
from bay0.formats.verity import hash_blocks as hash_data_blocks
from pipeline.disk import blockio
from pipeline.verity import check_superblock, verified_level0

HINT = "the medium did not keep what was written: try another device; the slot stays invalid"
SOURCE_HINT = "the Spine file is damaged: copy or build it again; the slot stays invalid"
READ_AHEAD = 16  # chunks read back but not yet hashed, at most (16 x 8 MiB)
SYNC_EVERY = 64 * 1024 * 1024  # bytes written between two fdatasync calls
HASH_TASK = 2 * 1024 * 1024  # bytes per hashing task
MAX_HASHERS = 8  # hashing processes, at most (one per usable CPU below that)
CHILD_CHECK_MS = 500  # how long answers may pause before the children are checked

_TASK = struct.Struct("<QQQQ")  # slot, offset in the shared buffers, bytes, first image block
_ANSWER = struct.Struct("<QQQ")  # slot, first image block, blocks; or a sentinel slot:
_END = 2**64 - 1  # the reader read everything back
_FAILED = 2**64 - 2  # the reader stopped: see ``_HashPool.error``


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

    def __init__(self, src: str, dest: str, dest_offset: int, length: int, first: int,
                 done: Callable[[], None]) -> None:
        super().__init__(name="spine-writer", daemon=True)
        self.src, self.dest, self.offset, self.length = src, dest, dest_offset, length
        self.first, self.done = first, done
        self.chunks: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()
        self.stop = threading.Event()

    def _written(self, pos: int, n: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.chunks.put((pos, n))

    def run(self) -> None:
        try:
            blockio.stream_copy(self.src, self.dest, dest_offset=self.offset, length=self.length,
                                chunk_done=self._written, sync_every=SYNC_EVERY, first=self.first)
            self.done()
            self.chunks.put(None)
        except BaseException as e:  # handed to the verifying thread, which re-raises it
            self.chunks.put(e)


class _HashPool:
    """Child processes that hash read-back blocks, over memory shared with this process.

    SHA-256 of every 4 KiB block runs at about 1 GB/s on one core, slower than a fast
    medium writes, so one hashing thread would be the flash's critical path (and
    threads do not help: hashlib holds the GIL between blocks). The children, one
    per usable CPU, are forked before any thread of this call starts. Each reads
    tasks from one shared pipe (so the work balances itself), hashes a range of the
    read-back buffers into the shared digest array (one digest per image block) and
    answers with the range. They ignore SIGINT (the parent cleans up) and exit at
    end of file on the task pipe: when the parent closes it, or dies.

    The read-back buffers are slots of one shared mapping: a slot is touched (and so
    takes memory) only when no used one is free, up to ``slots``; then the reader
    waits for the hashers to free one.
    """

    def __init__(self, slots: int, blocks: int, salt: bytes, workers: int) -> None:
        self.slots, self.created = slots, 0
        self.buffers = mmap.mmap(-1, slots * blockio.CHUNK, flags=mmap.MAP_SHARED)
        self.digests = mmap.mmap(-1, blocks * DIGEST_SIZE, flags=mmap.MAP_SHARED)
        self.free: queue.Queue[int] = queue.Queue()
        self.pending: dict[int, int] = {}  # slot -> tasks not answered yet
        self.error: BaseException | None = None
        self.pids: list[int] = []
        task_r, self.task_w = os.pipe()
        self.answer_r, self.answer_w = os.pipe()
        try:
            for _ in range(workers):
                pid = _fork()
                if pid == 0:
                    os.close(self.task_w)
                    os.close(self.answer_r)
                    _serve(task_r, self.answer_w, self.buffers, self.digests, salt)
                self.pids.append(pid)
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise DiskError(f"cannot start the hashing processes ({e.strerror})",
                                "free memory or raise the process limit (ulimit -u), then flash again"
                                ) from e
            raise
        finally:
            os.close(task_r)

    def slot(self, index: int) -> memoryview:
        return memoryview(self.buffers)[index * blockio.CHUNK:(index + 1) * blockio.CHUNK]

    def take(self) -> int:
        """A free slot; a new one while fewer than ``slots`` exist, else wait for one."""
        try:
            return self.free.get_nowait()
        except queue.Empty:
            if self.created >= self.slots:
                return self.free.get()
        self.created += 1
        return self.created - 1

    def submit(self, index: int, pos: int, n: int) -> None:
        """Hand the blocks of slot ``index`` (image bytes ``pos``..``pos+n``) to the children."""
        starts = range(0, n, HASH_TASK)
        self.pending[index] = len(starts)  # before any answer can arrive
        base = index * blockio.CHUNK
        for start in starts:
            os.write(self.task_w, _TASK.pack(index, base + start, min(HASH_TASK, n - start),
                                             (pos + start) // BLOCK_SIZE))

    def finish(self, error: BaseException | None = None) -> None:
        """Called by the reader when it is done (``error``: why it stopped)."""
        self.error = error
        os.write(self.answer_w, _ANSWER.pack(_FAILED if error else _END, 0, 0))

    def hurry(self) -> None:
        """Normal CPU priority for the children: nothing but them is left to wait for."""
        for pid in self.pids:
            with contextlib.suppress(OSError):  # gone, or not allowed: stay idle-priority
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))

    def answers(self) -> Iterator[tuple[int, int]]:
        """Yield ``(first block, blocks)`` of each answered task until the reader is done
        and every task is answered.

        Raises what stopped the reader, or ``DiskError`` when a child died.
        """
        poller = select.poll()
        poller.register(self.answer_r, select.POLLIN)
        ended = False
        while not ended or self.pending:
            if not poller.poll(CHILD_CHECK_MS):
                self._check_children()
                continue
            for slot, first, blocks in _ANSWER.iter_unpack(os.read(self.answer_r, 64 * _ANSWER.size)):
                if slot == _END:
                    ended = True
                    continue
                if slot == _FAILED:
                    assert self.error is not None
                    raise self.error
                self.pending[slot] -= 1
                if not self.pending[slot]:
                    del self.pending[slot]
                    self.free.put(slot)
                yield first, blocks

    def _check_children(self) -> None:
        for pid in self.pids:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.pids.remove(pid)
                raise DiskError(f"a hashing process ended early ({_how(status)})",
                                "run the flash again; check memory and dmesg if it repeats")

    def close(self) -> None:
        """Unmap the shared memory, end the children (at once: nothing they still do is
        wanted) and reap them in a daemon thread.

        This process unmaps first, so the last child's exit frees the pages (about
        10 ms for 64 MiB) on its own time rather than the caller's.
        """
        for m in (self.buffers, self.digests):
            with contextlib.suppress(BufferError):  # a view held by an error's traceback:
                m.close()                           # the map goes when that does
        os.close(self.task_w)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.close(self.answer_r)
        os.close(self.answer_w)
        if self.pids:
            threading.Thread(target=_reap, args=(self.pids,), name="spine-reaper", daemon=True).start()


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _fork() -> int:
    """``os.fork`` without Python 3.12's warning about other threads (rich's refresher).

    The child only hashes memory and talks through two pipes: it takes no lock that
    another thread of the parent could hold (no logging, no imports, no stdio).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _serve(task_r: int, answer_w: int, buffers: mmap.mmap, digests: mmap.mmap, salt: bytes) -> NoReturn:
    """The child's whole life: hash tasks until end of file, then exit without cleanup."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        low, high = sorted((task_r, answer_w))  # no other descriptor (devices written by other
        os.closerange(3, low)                   # threads) stays open because of this child
        os.closerange(low + 1, high)
        os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
        with contextlib.suppress(OSError):  # where SCHED_IDLE is refused, hash at normal priority
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        data, out = memoryview(buffers), memoryview(digests)
        while task := os.read(task_r, _TASK.size):
            slot, at, n, block = _TASK.unpack(task)
            blocks = n // BLOCK_SIZE
            out[block * DIGEST_SIZE:(block + blocks) * DIGEST_SIZE] = hash_data_blocks(data[at:at + n], salt)
            os.write(answer_w, _ANSWER.pack(slot, block, blocks))
        code = 0
    finally:
        os._exit(code)


class _ReadBack(threading.Thread):
    """Reads each written chunk back into a free slot and hands it to the hashers.

    The bytes of the verity tree are also kept here (``area``), for the top-down check.
    The reader waits only when every slot is waiting to be hashed.
    """

    def __init__(self, dest: str, dest_offset: int, written: queue.Queue, pool: _HashPool,
                 params: VerityParams, area_size: int) -> None:
        super().__init__(name="spine-readback", daemon=True)
        self.dest, self.offset, self.written, self.pool = dest, dest_offset, written, pool
        self.hash_offset = params.hash_offset
        self.area = bytearray(area_size)

    def run(self) -> None:
        try:
            fd, direct = _reader(self.dest)
            try:
                while (item := self.written.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    pos, n = item
                    index = self.pool.take()
                    with self.pool.slot(index) as view:
                        _read_back(fd, direct, self.dest, view, self.offset + pos, n)
                        self._keep_tree(view[:n], pos)
                    self.pool.submit(index, pos, n)
            finally:
                os.close(fd)
            self.pool.finish()
        except BaseException as e:  # handed to the waiting thread, which re-raises it
            self.pool.finish(e)

    def _keep_tree(self, chunk: memoryview, pos: int) -> None:
        start = max(pos, self.hash_offset)
        end = min(pos + len(chunk), self.hash_offset + len(self.area))
        if start < end:
            self.area[start - self.hash_offset:end - self.hash_offset] = chunk[start - pos:end - pos]


class _Checker:
    """Checks hashed blocks as their answers come: the tree once all of it is hashed, then data.

    Data blocks answered before the tree is verified wait in ``backlog``.
    """

    def __init__(self, src: str, dest: str, offset: int, params: VerityParams, digests: memoryview,
                 area: bytearray) -> None:
        self.src, self.dest, self.offset, self.params = src, dest, offset, params
        self.digests, self.area = digests, area
        self.geometry = tree_geometry(params.data_blocks)
        self.area_first = params.hash_offset // BLOCK_SIZE
        self.area_left = len(area) // BLOCK_SIZE
        self.level0: memoryview | None = None
        self.backlog: list[tuple[int, int]] = []

    def answered(self, first: int, blocks: int) -> None:
        end = first + blocks
        self.area_left -= max(0, min(end, self.area_first + len(self.area) // BLOCK_SIZE)
                              - max(first, self.area_first))
        if first < self.params.data_blocks:
            self.backlog.append((first, min(end, self.params.data_blocks)))
        if self.level0 is None and not self.area_left:
            self._check_tree()
        if self.level0 is not None:
            for start, stop in self.backlog:
                self._check_data(start, stop)
            self.backlog.clear()

    def done(self) -> None:
        if self.level0 is None or self.backlog:
            raise CorruptionError("the read-back did not cover the whole image", HINT)

    def _check_tree(self) -> None:
        try:
            self.level0 = self._verified_tree(self.dest, memoryview(self.area), self.offset, HINT,
                                              self.digests[self.area_first * DIGEST_SIZE:])
        except CorruptionError:
            with open(self.src, "rb") as f:
                f.seek(self.params.hash_offset)
                source = f.read(len(self.area))
            if source != self.area:
                raise  # the medium changed the tree
            self._verified_tree(self.src, memoryview(source), 0, SOURCE_HINT, None)  # raises
            raise

    def _verified_tree(self, path: str, area: memoryview, offset: int, hint: str,
                       digests: memoryview | None) -> memoryview:
        check_superblock(path, area[:BLOCK_SIZE], self.params, offset, hint=hint)
        return verified_level0(path, area, self.geometry, self.params, offset, hint=hint,
                               area_digests=digests)

    def _check_data(self, start: int, stop: int) -> None:
        assert self.level0 is not None
        span = slice(start * DIGEST_SIZE, stop * DIGEST_SIZE)
        bad = first_mismatch(self.digests[span], self.level0[span])
        if bad is None:
            return
        block = start + bad
        where = self.offset + block * BLOCK_SIZE
        if self._source_block_ok(block):
            raise CorruptionError(f"{self.dest}: data block {block} (byte {where}) does not match "
                                  "its hash after writing", HINT)
        raise CorruptionError(f"{self.src}: data block {block} does not match its hash", SOURCE_HINT)

    def _source_block_ok(self, block: int) -> bool:
        """Whether the Spine file's own copy of ``block`` matches the verified tree."""
        assert self.level0 is not None
        with open(self.src, "rb") as f:
            f.seek(block * BLOCK_SIZE)
            digest = hashlib.sha256(self.params.salt_bytes + f.read(BLOCK_SIZE)).digest()
        return digest == self.level0[block * DIGEST_SIZE:(block + 1) * DIGEST_SIZE]


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

    Three stages overlap: the writer, the read-back, and hashing (in child processes;
    this thread checks their answers).
    Raises ``DiskError`` (I/O) or ``CorruptionError`` naming the first bad block, on
    the medium or in the Spine file.
    """
    area_size = tree_geometry(params.data_blocks).area_size
    if length < params.hash_offset + area_size:
        raise CorruptionError(f"{src}: the image ends before its verity tree does", SOURCE_HINT)
    pool = _HashPool(READ_AHEAD, -(-length // BLOCK_SIZE), params.salt_bytes, _workers())
    try:
        writer = _Writer(src, dest, dest_offset, length, params.hash_offset, pool.hurry)
        reader = _ReadBack(dest, dest_offset, writer.chunks, pool, params, area_size)
        with memoryview(pool.digests) as digests:
            checker = _Checker(src, dest, dest_offset, params, digests, reader.area)
            writer.start()
            reader.start()
            try:
                _verify(pool, checker, progress)
            finally:
                _drain(writer, reader, pool)
            if on_written:
                on_written()
            checker.done()
    finally:
        pool.close()


def _verify(pool: _HashPool, checker: _Checker, progress: Callable[[int], None] | None) -> None:
    for first, blocks in pool.answers():
        checker.answered(first, blocks)
        if progress:
            progress(blocks * BLOCK_SIZE)


def _workers() -> int:
    return max(1, min(MAX_HASHERS, len(os.sched_getaffinity(0))))


def _drain(writer: _Writer, reader: _ReadBack, pool: _HashPool) -> None:
    """Stop both threads whatever happened (an error leaves them blocked on queues)."""
    writer.stop.set()  # after an error the rest of the image need not be written
    while writer.is_alive() or reader.is_alive():
        with contextlib.suppress(queue.Empty):
            writer.chunks.get_nowait()
        for index in range(pool.slots):
            pool.free.put(index)
        writer.join(timeout=0.05)
        reader.join(timeout=0.05)


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
