"""blockio.stream_copy and writeverify.write_verified on plain files: bytes, syncs, bounds, stops."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bay0.errors import CorruptionError, DiskError
from bay0.formats.verity import BLOCK_SIZE
from pipeline.disk import blockio, writeverify
from pipeline.verity import append_tree

CHUNK = 64 * 1024
OFFSET = 1024 * 1024


@pytest.fixture
def image(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(blockio, "CHUNK", CHUNK)
    path = tmp_path / "image"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    params = append_tree(path, salt=os.urandom(32))
    return path, params


def blank(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def chunks(path: Path) -> int:
    return -(-path.stat().st_size // CHUNK)


def test_write_verified_writes_the_image_at_the_offset(image, tmp_path) -> None:
    path, params = image
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params)
    with open(dest, "rb") as f:
        assert f.read(OFFSET) == bytes(OFFSET)
        assert f.read(path.stat().st_size) == path.read_bytes()


def test_stream_copy_syncs_every_so_many_bytes(image, tmp_path, monkeypatch) -> None:
    path, _ = image
    real, calls = os.fdatasync, []
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))

    def syncs(every: int | None) -> int:
        calls.clear()
        dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
        blockio.stream_copy(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                            sync_every=every)
        with open(dest, "rb") as f:
            f.seek(OFFSET)
            assert f.read(path.stat().st_size) == path.read_bytes()
        return len(calls)

    unsynced = syncs(None)  # 0 with O_DIRECT; one per chunk on a filesystem without it
    n = chunks(path)
    assert syncs(4 * CHUNK) == (n // 4 if unsynced == 0 else n)


def test_a_short_source_is_refused_before_anything_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(blockio, "CHUNK", CHUNK)  # a chunk-by-chunk copy would write 16 first
    src = tmp_path / "short"
    src.write_bytes(os.urandom(1024 * 1024))
    dest = blank(tmp_path / "disk", 4 * 1024 * 1024)
    with pytest.raises(DiskError, match="ended after 1048576 of 2097152 bytes"):
        blockio.stream_copy(str(src), dest, dest_offset=0, length=2 * 1024 * 1024)
    assert Path(dest).read_bytes() == bytes(4 * 1024 * 1024)


def test_a_source_truncated_while_it_is_copied_fails_cleanly(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(blockio, "CHUNK", CHUNK)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(1024 * 1024))
    dest = blank(tmp_path / "disk", 2 * 1024 * 1024)

    def cut(pos: int, n: int) -> None:  # the mapped pages past 2 chunks disappear
        if pos == 0:
            os.truncate(src, 2 * CHUNK)

    with pytest.raises(DiskError, match=f"write failed at byte {2 * CHUNK} "):
        blockio.stream_copy(str(src), dest, dest_offset=0, length=1024 * 1024, chunk_done=cut)


def _track_pool(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = writeverify._HashPool.close

    def close(self) -> None:
        sizes.append(self.created)
        real(self)

    monkeypatch.setattr(writeverify._HashPool, "close", close)
    return sizes


def test_the_writer_runs_ahead_of_a_slow_hasher_and_the_read_back_pool_stays_bounded(
        image, tmp_path, monkeypatch) -> None:
    path, params = image
    monkeypatch.setattr(writeverify, "READ_AHEAD", 3)
    real_hash = writeverify.hash_data_blocks
    monkeypatch.setattr(writeverify, "hash_data_blocks",
                        lambda data, salt: (time.sleep(0.004), real_hash(data, salt))[1])
    hashed, at_fsync = [0], []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (at_fsync.append(hashed[0]), real_fsync(fd)))
    sizes = _track_pool(monkeypatch)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params, progress=lambda n: hashed.__setitem__(0, hashed[0] + 1))
    assert hashed[0] == chunks(path)
    assert sizes == [3]  # grew to READ_AHEAD, never beyond
    assert at_fsync and at_fsync[-1] < chunks(path) // 2  # the writer did not wait for hashing


def test_the_read_back_pool_stays_small_when_hashing_keeps_up(image, tmp_path, monkeypatch) -> None:
    path, params = image
    real = blockio._Target.pwrite_all
    monkeypatch.setattr(blockio._Target, "pwrite_all",
                        lambda self, data, offset: (time.sleep(0.01), real(self, data, offset))[1])
    sizes = _track_pool(monkeypatch)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params)
    assert sizes and sizes[0] <= 2


def test_the_writer_stops_when_the_read_back_fails(image, tmp_path, monkeypatch) -> None:
    path, params = image
    writes = []
    real = blockio._Target.pwrite_all

    def slow(self, data, offset):
        writes.append(offset)
        time.sleep(0.005)
        return real(self, data, offset)

    def failing(*args) -> None:
        raise DiskError("read-back failed at byte 0 (Input/output error)", writeverify.HINT)

    monkeypatch.setattr(blockio._Target, "pwrite_all", slow)
    monkeypatch.setattr(writeverify, "_read_back", failing)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(DiskError, match="read-back failed"):
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert len(writes) < chunks(path) // 4
    assert not [t for t in threading.enumerate() if t.name in ("spine-writer", "spine-readback")]


def test_a_flipped_bit_on_the_medium_names_its_block(image, tmp_path, monkeypatch) -> None:
    path, params = image
    real = blockio._Target.pwrite_all

    def flipping(self, data, offset):
        if offset == OFFSET + CHUNK:  # the second chunk: data blocks 16..31
            buf = bytearray(data)
            buf[3 * 4096 + 11] ^= 0x10
            data = memoryview(buf)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", flipping)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(CorruptionError, match="data block 19 "):
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)


def _offsets_written(monkeypatch, delay: float = 0.0) -> list[int]:
    offsets: list[int] = []
    real = blockio._Target.pwrite_all

    def tracking(self, data, offset):
        offsets.append(offset)
        time.sleep(delay)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", tracking)
    return offsets


def test_the_tree_goes_first_and_progress_counts_every_byte(image, tmp_path, monkeypatch) -> None:
    path, params = image
    offsets = _offsets_written(monkeypatch)
    done: list[int] = []
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params, progress=done.append)
    tree_chunk = params.hash_offset // CHUNK * CHUNK
    assert offsets == [OFFSET + tree_chunk, *range(OFFSET, OFFSET + tree_chunk, CHUNK)]
    assert sum(done) == path.stat().st_size


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x01]))


def test_a_tree_damaged_on_the_medium_stops_the_flash_early(image, tmp_path, monkeypatch) -> None:
    path, params = image
    level0 = params.hash_offset + BLOCK_SIZE * 2  # superblock, level 1, then level 0
    offsets = _offsets_written(monkeypatch, delay=0.005)
    real = blockio._Target.pwrite_all

    def damaging(self, data, offset):
        if offset - OFFSET <= level0 < offset - OFFSET + len(data):
            buf = bytearray(data)
            buf[level0 - (offset - OFFSET) + 100] ^= 0x01
            data = memoryview(buf)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", damaging)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(CorruptionError, match=f"^{dest}: verity hash block 0 of level 0 ") as e:
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert e.value.hint == writeverify.HINT
    assert len(offsets) < chunks(path) // 4  # found with the first chunk, not at the end


def test_a_data_block_damaged_in_the_spine_file_is_blamed_on_the_file(image, tmp_path) -> None:
    path, params = image
    _flip(path, 5 * BLOCK_SIZE + 7)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(CorruptionError, match=f"^{path}: data block 5 does not match") as e:
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert e.value.hint == writeverify.SOURCE_HINT


def test_a_tree_damaged_in_the_spine_file_is_blamed_on_the_file(image, tmp_path) -> None:
    path, params = image
    _flip(path, params.hash_offset + BLOCK_SIZE * 3 + 1)  # level 0, block 1
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(CorruptionError, match=f"^{path}: verity hash block 1 of level 0 "
                                              rf"\(byte {params.hash_offset + BLOCK_SIZE * 3}\)") as e:
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert e.value.hint == writeverify.SOURCE_HINT


def _children(monkeypatch) -> list[int]:
    pids: list[int] = []
    real = writeverify._fork

    def fork() -> int:
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(writeverify, "_fork", fork)
    return pids


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):  # a zombie keeps its entry until it is reaped
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_hashing_process_that_dies_fails_the_flash(image, tmp_path, monkeypatch) -> None:
    path, params = image
    monkeypatch.setattr(writeverify, "CHILD_CHECK_MS", 50)
    flag = tmp_path / "killed"
    real_hash = writeverify.hash_data_blocks

    def dying(data, salt):  # the first child to get here dies, once
        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return real_hash(data, salt)
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(writeverify, "hash_data_blocks", dying)
    pids = _children(monkeypatch)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(DiskError, match=r"a hashing process ended early \(killed by signal 9\)"):
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert pids and all(_gone(pid) for pid in pids)


def test_hashers_idle_while_the_medium_is_written_then_hurry(image, tmp_path, monkeypatch) -> None:
    path, params = image
    pids = _children(monkeypatch)
    during: list[int] = []
    real = blockio._Target.pwrite_all

    def sampling(self, data, offset):
        if offset == OFFSET + 20 * CHUNK:
            during.extend(os.sched_getscheduler(pid) for pid in pids)
        return real(self, data, offset)

    after: list[int] = []
    real_hurry = writeverify._HashPool.hurry

    def hurry(self) -> None:
        real_hurry(self)
        after.extend(os.sched_getscheduler(pid) for pid in pids)

    monkeypatch.setattr(blockio._Target, "pwrite_all", sampling)
    monkeypatch.setattr(writeverify._HashPool, "hurry", hurry)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params)
    assert len(pids) == writeverify._workers()
    assert during == [os.SCHED_IDLE] * len(pids)
    assert after == [os.SCHED_OTHER] * len(pids)


def test_hashers_ignore_ctrl_c_and_are_reaped_after_the_flash(image, tmp_path, monkeypatch) -> None:
    path, params = image
    pids = _children(monkeypatch)
    real = blockio._Target.pwrite_all

    def interrupting(self, data, offset):
        if offset == OFFSET + 10 * CHUNK:  # what a terminal's Ctrl-C sends the process group
            for pid in pids:
                os.kill(pid, signal.SIGINT)
        return real(self, data, offset)

    monkeypatch.setattr(blockio._Target, "pwrite_all", interrupting)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    writeverify.write_verified(str(path), dest, dest_offset=OFFSET, length=path.stat().st_size,
                               params=params)
    assert pids and all(_gone(pid) for pid in pids)


def test_hashers_that_cannot_start_fail_with_a_hint(image, tmp_path, monkeypatch) -> None:
    path, params = image
    started = _children(monkeypatch)
    real = writeverify._fork
    forks = [0]

    def failing() -> int:  # the second fork hits the process limit
        forks[0] += 1
        if forks[0] == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real()

    monkeypatch.setattr(writeverify, "_fork", failing)
    monkeypatch.setattr(writeverify, "_workers", lambda: 2)
    dest = blank(tmp_path / "disk", 8 * 1024 * 1024)
    with pytest.raises(DiskError, match=r"cannot start the hashing processes \(Resource") as e:
        writeverify.write_verified(str(path), dest, dest_offset=OFFSET,
                                   length=path.stat().st_size, params=params)
    assert "ulimit -u" in e.value.hint
    assert Path(dest).read_bytes() == bytes(8 * 1024 * 1024)  # nothing written
    assert all(_gone(pid) for pid in started)
