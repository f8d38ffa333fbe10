"""blockio.stream_copy and writeverify.write_verified on plain files: bytes, syncs, bounds, stops."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bay0.errors import CorruptionError, DiskError
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
    real = writeverify._ReadBack.close

    def close(self) -> None:
        sizes.append(len(self.maps))
        real(self)

    monkeypatch.setattr(writeverify._ReadBack, "close", close)
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
