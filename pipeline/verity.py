"""dm-verity on files: append a hash tree, verify an image, read its superblock.

The bytes are defined in ``bay0.formats.verity``; this module does the I/O and
the parallelism. Hashing the data (level 0) is nearly the whole cost, so it is
split into ranges hashed by forked worker processes, one per usable core: threads
do not scale here because hashlib holds the GIL between 4 KiB updates, and the
per-block Python work then serialises (measured: 2 threads = 1 thread). Workers
hash straight from a read-only mapping of their range; small inputs are hashed
in-process through one reused 1 MiB ``preadv`` buffer, which stays in L2.
"""

from __future__ import annotations

import errno
import mmap
import multiprocessing
import os
import uuid as uuid_module
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path

from bay0.errors import CorruptionError, DiskError, FormatError, NotFoundError
from bay0.formats.verity import (
    BLOCK_SIZE,
    DIGEST_SIZE,
    Geometry,
    Superblock,
    VerityParams,
    assemble_hash_area,
    build_levels,
    first_mismatch,
    hash_blocks,
    pack_superblock,
    parse_superblock,
    root_hash_of,
    tree_geometry,
    tree_root,
)

Progress = Callable[[int], None]
PathLike = str | os.PathLike[str]

READ_BYTES = 1 << 20  # fits L2 next to the hash state, so pread's copy is hashed from cache
TASK_BYTES = 32 << 20  # one unit of work per worker; also the progress granularity
PARALLEL_MIN_BYTES = 2 * TASK_BYTES  # below this, forking costs more than it saves

CORRUPT_HINT = "the image is damaged or is not the one recorded: rebuild or fetch it again"


def append_tree(
    path: PathLike, *, salt: bytes, uuid: str | None = None, progress: Progress | None = None
) -> VerityParams:
    """Append the verity superblock and hash tree to ``path`` and return its parameters.

    The file's current size (a multiple of 4096) becomes ``data_size`` and
    ``hash_offset``. The data bytes are never written; if writing the tree fails
    the file is truncated back to its data. Raises ``FormatError`` (size, salt,
    uuid), ``NotFoundError`` and ``DiskError``.
    """
    path = Path(path)
    size = _file_size(path)
    if size == 0 or size % BLOCK_SIZE:
        raise FormatError(
            f"{path} is {size} bytes, not a positive multiple of {BLOCK_SIZE}",
            "pad the data to a 4096-byte boundary before adding a verity tree",
        )
    sb = Superblock(
        uuid=uuid or str(uuid_module.uuid4()), data_blocks=size // BLOCK_SIZE, salt=salt
    )
    pack_superblock(sb)  # fail on a bad salt or uuid before hashing a gigabyte
    digests = b"".join(d for _, d in _data_digests(path, 0, size, salt, progress))
    levels = build_levels(digests, salt)
    _append(path, size, assemble_hash_area(sb, levels))
    return VerityParams(
        data_size=size,
        hash_offset=size,
        root_hash=tree_root(digests, levels, salt),
        salt=salt.hex(),
        uuid=str(uuid_module.UUID(sb.uuid)),
    )


def verify_image(
    path: PathLike, params: VerityParams, *, offset: int = 0, progress: Progress | None = None
) -> None:
    """Check every block of the verity image at byte ``offset`` of ``path`` against ``params``.

    The tree is checked top down from the root hash, then the data, so a damaged
    hash block is named as such and never blamed on the data below it. Raises
    ``CorruptionError`` naming the first bad hash block or data block (or the
    superblock, or a truncated image), ``NotFoundError`` and ``DiskError``.
    """
    path = Path(path)
    salt = params.salt_bytes
    geometry = tree_geometry(params.data_blocks)
    area = _read_area(path, offset + params.hash_offset, geometry.area_size)
    check_superblock(path, area[:BLOCK_SIZE], params, offset)
    expected = verified_level0(path, area, geometry, params, offset)
    # closing(): on the first bad block, stop the workers now rather than at garbage collection.
    with closing(_data_digests(path, offset, params.data_size, salt, progress)) as chunks:
        for start, digests in chunks:
            _check_data(path, expected, start, digests, offset)


def _check_data(path: Path, expected: memoryview, start: int, digests: bytes, offset: int) -> None:
    first = start // BLOCK_SIZE
    bad = first_mismatch(
        digests, expected[first * DIGEST_SIZE : first * DIGEST_SIZE + len(digests)]
    )
    if bad is not None:
        block = first + bad
        raise CorruptionError(
            f"{path}: data block {block} (byte {offset + block * BLOCK_SIZE}) "
            "does not match its verity hash",
            CORRUPT_HINT,
        )


def read_superblock(path: PathLike, hash_offset: int, *, offset: int = 0) -> VerityParams:
    """Read the verity parameters of the image at ``offset`` whose tree starts at ``hash_offset``.

    The root hash is recomputed from the top block alone (O(1)); it is only as
    trustworthy as the file, so compare it with a signed record before use.
    Raises ``FormatError`` (no or bad superblock), ``NotFoundError`` and ``DiskError``.
    """
    path = Path(path)
    with _open(path, os.O_RDONLY) as fd:
        sb = parse_superblock(_pread_block(fd, path, offset + hash_offset))
        data_size = sb.data_blocks * BLOCK_SIZE
        if data_size > hash_offset:
            raise FormatError(
                f"{path}: verity superblock claims {data_size} bytes of data before byte {hash_offset}",
                "pass the hash offset the image was built with",
            )
        geometry = tree_geometry(sb.data_blocks)
        top = offset + (
            hash_offset + geometry.level_starts[-1] * BLOCK_SIZE if geometry.levels else 0
        )
        root = root_hash_of(_pread_block(fd, path, top), sb.salt)
    return VerityParams(
        data_size=data_size,
        hash_offset=hash_offset,
        root_hash=root,
        salt=sb.salt.hex(),
        uuid=sb.uuid,
    )


def _data_digests(
    path: Path, offset: int, size: int, salt: bytes, progress: Progress | None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(start, digests)`` for consecutive ranges of the data, in order."""
    tasks = [(start, min(TASK_BYTES, size - start)) for start in range(0, size, TASK_BYTES)]
    workers = min(len(os.sched_getaffinity(0)), len(tasks))
    done = 0
    for start, digests in _run_tasks(path, offset, tasks, salt, workers):
        done += len(digests) // DIGEST_SIZE * BLOCK_SIZE
        if progress is not None:
            progress(done)
        yield start, digests


def _run_tasks(
    path: Path, offset: int, tasks: list[tuple[int, int]], salt: bytes, workers: int
) -> Iterator[tuple[int, bytes]]:
    if workers < 2 or sum(n for _, n in tasks) < PARALLEL_MIN_BYTES:
        for start, length in tasks:
            yield start, _hash_range_checked(path, offset + start, length, salt)
        return
    # fork, not spawn: workers need nothing but this function, and start in milliseconds.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [
            pool.submit(_hash_range_mapped, str(path), offset + s, n, salt) for s, n in tasks
        ]
        try:
            for (start, length), future in zip(tasks, futures, strict=True):
                yield start, _translate(path, offset + start, length, future.result)
        finally:
            for future in futures:
                future.cancel()


def _hash_range_checked(path: Path, start: int, length: int, salt: bytes) -> bytes:
    return _translate(path, start, length, lambda: _hash_range(str(path), start, length, salt))


def _translate(path: Path, start: int, length: int, call: Callable[[], bytes]) -> bytes:
    """Turn a worker's plain exceptions (they cross a pipe) into the project's errors."""
    try:
        return call()
    except EOFError as e:
        raise CorruptionError(
            f"{path}: image is truncated, data ends before byte {start + length}", CORRUPT_HINT
        ) from e
    except BrokenProcessPool as e:
        raise CorruptionError(
            f"{path}: a hashing worker died (was the image cut short while being read?)",
            "make sure nothing else writes to the image, then retry",
        ) from e
    except OSError as e:
        raise _os_error(path, e, "read") from e


def _hash_range(path: str, start: int, length: int, salt: bytes) -> bytes:
    """Digests of the blocks in ``[start, start + length)`` of ``path`` (in-process, pread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        view = memoryview(bytearray(min(READ_BYTES, length)))
        parts = []
        for pos in range(start, start + length, len(view)):
            chunk = view[: min(len(view), start + length - pos)]
            _read_into(fd, chunk, pos)
            parts.append(hash_blocks(chunk, salt))
        return b"".join(parts)
    finally:
        os.close(fd)


def _hash_range_mapped(path: str, start: int, length: int, salt: bytes) -> bytes:
    """Like ``_hash_range`` but hashes straight from the page cache (runs in a worker).

    Mapping saves pread's copy, about a tenth of the CPU time. A file cut short
    while mapped raises SIGBUS, which kills only this worker (reported by the pool).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.lseek(fd, 0, os.SEEK_END) < start + length:
            raise EOFError(start + length)
        base = start - start % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with mmap.mmap(fd, start + length - base, flags, mmap.PROT_READ, offset=base) as mapped:
            view = memoryview(mapped)
            try:
                return hash_blocks(view[start - base :], salt)
            finally:
                view.release()
    finally:
        os.close(fd)


def _read_into(fd: int, view: memoryview, pos: int) -> None:
    """Fill ``view`` from ``pos``; raise ``EOFError`` at end of file (short reads are retried)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], pos + got)
        if n == 0:
            raise EOFError(pos + got)
        got += n


def verified_level0(
    path: PathLike, area: memoryview, geometry: Geometry, params: VerityParams, offset: int,
    *, area_digests: memoryview | None = None, hint: str = CORRUPT_HINT,
) -> memoryview:
    """Check the hash levels of ``area`` top down; return the trusted digests of the data blocks.

    ``area_digests`` holds the salted digest of every block of ``area`` when they are
    computed already (``flash`` hashes each block as it is read back); else the levels
    are hashed here. Raises ``CorruptionError`` naming the first bad hash block.
    """
    salt = params.salt_bytes

    def hashed(start: int, end: int) -> bytes | memoryview:
        if area_digests is None:
            return hash_blocks(area[start:end], salt)
        return area_digests[start // BLOCK_SIZE * DIGEST_SIZE : end // BLOCK_SIZE * DIGEST_SIZE]

    if geometry.levels == 0:
        return memoryview(bytes.fromhex(params.root_hash))
    top_start, top_end = geometry.level_range(geometry.levels - 1)
    if bytes(hashed(top_start, top_end)).hex() != params.root_hash:
        raise CorruptionError(
            f"{path}: top verity hash block (byte {offset + params.hash_offset + top_start}) "
            f"does not match root hash {params.root_hash}",
            hint,
        )
    for level in reversed(range(geometry.levels - 1)):
        start, end = geometry.level_range(level)
        parent = geometry.level_range(level + 1)[0]
        stored = area[parent : parent + geometry.level_blocks[level] * DIGEST_SIZE]
        bad = first_mismatch(hashed(start, end), stored)
        if bad is not None:
            where = offset + params.hash_offset + start + bad * BLOCK_SIZE
            raise CorruptionError(
                f"{path}: verity hash block {bad} of level {level} (byte {where}) is corrupted",
                hint,
            )
    start = geometry.level_range(0)[0]
    return area[start : start + geometry.data_blocks * DIGEST_SIZE]


def check_superblock(path: PathLike, block: memoryview, params: VerityParams, offset: int,
                     *, hint: str = CORRUPT_HINT) -> None:
    """The superblock must parse and record the data block count, salt and uuid of ``params``."""
    where = offset + params.hash_offset
    try:
        sb = parse_superblock(bytes(block))
    except FormatError as e:
        raise CorruptionError(
            f"{path}: verity superblock at byte {where}: {e}", hint
        ) from e
    recorded = (sb.data_blocks, sb.salt.hex(), str(uuid_module.UUID(sb.uuid)))
    expected = (params.data_blocks, params.salt, str(uuid_module.UUID(params.uuid)))
    for name, got, want in zip(("data blocks", "salt", "uuid"), recorded, expected, strict=True):
        if got != want:
            raise CorruptionError(
                f"{path}: verity superblock at byte {where} records {name} {got}, expected {want}",
                hint,
            )


def _read_area(path: Path, pos: int, size: int) -> memoryview:
    truncated = CorruptionError(
        f"{path}: image is truncated, the verity tree ends at byte {pos + size}", CORRUPT_HINT
    )
    with _open(path, os.O_RDONLY) as fd:
        try:
            if os.lseek(fd, 0, os.SEEK_END) < pos + size:  # before allocating `size` bytes
                raise truncated
            view = memoryview(bytearray(size))
            _read_into(fd, view, pos)
        except EOFError as e:
            raise truncated from e
        except OSError as e:
            raise _os_error(path, e, "read") from e
    return view


def _pread_block(fd: int, path: Path, pos: int) -> bytes:
    try:
        block = os.pread(fd, BLOCK_SIZE, pos)
    except OSError as e:
        raise _os_error(path, e, "read") from e
    if len(block) != BLOCK_SIZE:
        raise FormatError(
            f"{path}: no verity block at byte {pos}, the file ends before it",
            "pass the hash offset the image was built with",
        )
    return block


def _append(path: Path, size: int, area: bytes) -> None:
    """Write ``area`` at ``size`` and fsync; on any failure cut the file back to ``size``."""
    with _open(path, os.O_WRONLY) as fd:
        try:
            if os.fstat(fd).st_size != size:
                raise DiskError(f"{path} changed size while its verity tree was computed")
            view = memoryview(area)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], size + done)
            os.fsync(fd)
        except BaseException as e:
            os.ftruncate(fd, size)
            os.fsync(fd)
            if isinstance(e, OSError):
                raise _os_error(path, e, "write") from e
            raise


class _open:
    """``os.open`` as a context manager that reports failures as project errors."""

    def __init__(self, path: Path, flags: int) -> None:
        self.path, self.flags = path, flags

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, self.flags | os.O_CLOEXEC)
        except OSError as e:
            raise _os_error(self.path, e, "open") from e
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _file_size(path: Path) -> int:
    with _open(path, os.O_RDONLY) as fd:
        return os.lseek(fd, 0, os.SEEK_END)  # also right for block devices, unlike st_size


def _os_error(path: Path, e: OSError, action: str) -> Exception:
    if e.errno == errno.ENOENT:
        return NotFoundError(f"{path} does not exist", "check the image path")
    if e.errno == errno.EIO:
        return CorruptionError(f"{path}: I/O error during {action}", "the medium is failing")
    return DiskError(f"cannot {action} {path}: {e.strerror}", "check permissions and free space")
