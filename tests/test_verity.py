"""Our verity trees against the real veritysetup: same root hash, same bytes, both verify."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bay0.errors import CorruptionError, DiskError, FormatError, NotFoundError
from bay0.formats.verity import VerityParams, tree_geometry
from pipeline import verity as pv
from pipeline.run import run
from tests.conftest import require_tool

SALT = bytes.fromhex("5a" * 16 + "a5" * 16)
UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"


@pytest.fixture(autouse=True)
def _veritysetup() -> None:
    require_tool("veritysetup")


def make_data(path: Path, blocks: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(blocks * 4096)
    path.write_bytes(data)
    return data


def veritysetup_format(path: Path, size: int, salt: bytes = SALT, uuid: str = UUID) -> str:
    argv = ["veritysetup", "format", path, path, f"--hash-offset={size}"]
    argv += [f"--salt={salt.hex() or '-'}", f"--uuid={uuid}"]
    out = run(argv).stdout.decode()
    return re.search(r"^Root hash:\s*([0-9a-f]{64})", out, re.M).group(1)


def veritysetup_verify(path: Path, params: VerityParams) -> bool:
    argv = ["veritysetup", "verify", path, path, params.root_hash]
    return run([*argv, f"--hash-offset={params.hash_offset}"], check=False).returncode == 0


def twins(tmp_path: Path, blocks: int, salt: bytes = SALT) -> tuple[Path, Path, VerityParams, str]:
    """The same data given a tree by us (ours) and by veritysetup (theirs)."""
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    make_data(ours, blocks, seed=blocks)
    shutil.copyfile(ours, theirs)
    params = pv.append_tree(ours, salt=salt, uuid=UUID)
    return ours, theirs, params, veritysetup_format(theirs, blocks * 4096, salt)


# 1 block: no levels; 128: one full hash block; 129: two levels;
# 16385 (64 MiB + 4 KiB): three levels and the forked parallel path.
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 1000, 16385])
def test_byte_identical_to_veritysetup(tmp_path: Path, blocks: int) -> None:
    ours, theirs, params, root = twins(tmp_path, blocks)
    assert params.root_hash == root
    assert params.data_size == params.hash_offset == blocks * 4096
    assert ours.read_bytes() == theirs.read_bytes()
    assert veritysetup_verify(ours, params)
    pv.verify_image(theirs, params)
    assert pv.read_superblock(theirs, params.hash_offset) == params


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blocks=st.integers(1, 300), salt=st.binary(max_size=256))
def test_any_geometry_and_salt_matches_veritysetup(
    tmp_path: Path, blocks: int, salt: bytes
) -> None:
    _, theirs, params, root = twins(tmp_path, blocks, salt)
    assert params.root_hash == root
    assert params.salt == salt.hex()
    assert pv.read_superblock(theirs, blocks * 4096) == params


def corrupt(path: Path, position: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, position)
        os.pwrite(fd, bytes([byte[0] ^ 0x40]), position)
    finally:
        os.close(fd)


@pytest.mark.parametrize("block", [0, 77, 199])
def test_corrupt_data_block_is_named(tmp_path: Path, block: int) -> None:
    path = tmp_path / "img"
    make_data(path, 200)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    corrupt(path, block * 4096 + 1234)
    corrupt(path, 199 * 4096 + 5)  # a later bad block must not be the one reported
    with pytest.raises(CorruptionError, match=rf"data block {block} \(byte {block * 4096}\)"):
        pv.verify_image(path, params)
    assert not veritysetup_verify(path, params)


def test_corrupt_hash_block_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 16385 // 8)  # 2049 blocks: levels of 17 and 1 blocks
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    geometry = tree_geometry(params.data_blocks)
    level0 = params.hash_offset + geometry.level_range(0)[0]
    corrupt(path, level0 + 3 * 4096 + 100)
    with pytest.raises(
        CorruptionError, match=rf"hash block 3 of level 0 \(byte {level0 + 3 * 4096}\)"
    ):
        pv.verify_image(path, params)
    assert not veritysetup_verify(path, params)


def test_corrupt_top_block_or_wrong_root_fails_against_the_root(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 129)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    wrong = VerityParams.from_dict({**params.to_dict(), "root_hash": "00" * 32})
    with pytest.raises(CorruptionError, match="top verity hash block .* does not match root hash"):
        pv.verify_image(path, wrong)
    corrupt(path, params.hash_offset + 4096 + 4000)  # the zero padding of the top block
    with pytest.raises(CorruptionError, match="top verity hash block"):
        pv.verify_image(path, params)
    assert not veritysetup_verify(path, params)


def test_single_block_image_checks_data_against_the_root(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 1)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    assert pv.read_superblock(path, 4096) == params
    corrupt(path, 10)
    with pytest.raises(CorruptionError, match=r"data block 0 \(byte 0\)"):
        pv.verify_image(path, params)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("data_size", "records data blocks 3, expected 2"),
        ("salt", "records salt"),
        ("uuid", "uuid"),
    ],
)
def test_superblock_disagreeing_with_params_is_reported(tmp_path: Path, field, message) -> None:
    path = tmp_path / "img"
    make_data(path, 3)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    other = {"data_size": 8192, "salt": "00", "uuid": "00000000-0000-4000-8000-000000000000"}
    with pytest.raises(CorruptionError, match=message):
        pv.verify_image(path, VerityParams.from_dict({**params.to_dict(), field: other[field]}))


def test_damaged_superblock_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 3)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    corrupt(path, params.hash_offset)
    with pytest.raises(CorruptionError, match="superblock at byte 12288: no verity superblock"):
        pv.verify_image(path, params)
    with pytest.raises(FormatError, match="no verity superblock"):
        pv.read_superblock(path, params.hash_offset)
    os.truncate(path, params.hash_offset + 4096)
    with pytest.raises(CorruptionError, match="truncated"):
        pv.verify_image(path, params)


def test_image_at_an_offset_inside_a_device(tmp_path: Path) -> None:
    image, device = tmp_path / "img", tmp_path / "device"
    make_data(image, 300)
    params = pv.append_tree(image, salt=SALT, uuid=UUID)
    device.write_bytes(os.urandom(1 << 20) + image.read_bytes() + os.urandom(8192))
    pv.verify_image(device, params, offset=1 << 20)
    assert pv.read_superblock(device, params.hash_offset, offset=1 << 20) == params
    corrupt(device, (1 << 20) + 5 * 4096)
    with pytest.raises(CorruptionError, match=rf"data block 5 \(byte {(1 << 20) + 5 * 4096}\)"):
        pv.verify_image(device, params, offset=1 << 20)


def test_read_superblock_refuses_a_wrong_offset(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 4)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    with pytest.raises(FormatError, match="no verity superblock"):
        pv.read_superblock(path, 4096)
    with pytest.raises(FormatError, match="ends before it"):
        pv.read_superblock(path, params.hash_offset + (1 << 20))


def test_progress_reports_bytes_hashed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pv, "TASK_BYTES", 64 << 10)
    path = tmp_path / "img"
    make_data(path, 40)
    seen: list[int] = []
    params = pv.append_tree(path, salt=SALT, uuid=UUID, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 40 * 4096 and len(seen) == 3
    seen.clear()
    pv.verify_image(path, params, progress=seen.append)
    assert seen[-1] == 40 * 4096


def test_work_is_spread_over_worker_processes(tmp_path: Path, monkeypatch) -> None:
    record = tmp_path / "pids"
    original = pv.hash_blocks

    def recording(data, salt):  # forked workers inherit this patch
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # so one worker cannot finish every task before the other starts
        return original(data, salt)

    monkeypatch.setattr(pv, "hash_blocks", recording)
    parallel(monkeypatch)
    path, twin = tmp_path / "img", tmp_path / "twin"
    make_data(path, 256)
    shutil.copyfile(path, twin)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    pids = set(record.read_text().split())
    assert len(pids) >= 2 and str(os.getpid()) not in pids
    assert params.root_hash == veritysetup_format(twin, 256 * 4096)


def parallel(monkeypatch) -> None:
    """Force the forked-worker path on a small file: 64 KiB tasks, no size threshold."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores")
    monkeypatch.setattr(pv, "TASK_BYTES", 64 << 10)
    monkeypatch.setattr(pv, "PARALLEL_MIN_BYTES", 0)


def test_parallel_verify_names_the_first_bad_block(tmp_path: Path, monkeypatch) -> None:
    parallel(monkeypatch)
    path = tmp_path / "img"
    make_data(path, 256)
    params = pv.append_tree(path, salt=SALT, uuid=UUID)
    pv.verify_image(path, params)
    corrupt(path, 100 * 4096 + 7)
    corrupt(path, 250 * 4096 + 7)
    with pytest.raises(CorruptionError, match=r"data block 100 \(byte 409600\)"):
        pv.verify_image(path, params)


def die(*args: object) -> bytes:
    os._exit(1)  # what SIGBUS (file cut short under the mapping) or the OOM killer look like


def test_dead_worker_is_reported_not_hung(tmp_path: Path, monkeypatch) -> None:
    parallel(monkeypatch)
    monkeypatch.setattr(pv, "_hash_range_mapped", die)
    path = tmp_path / "img"
    data = make_data(path, 64)
    with pytest.raises(CorruptionError, match="hashing worker died"):
        pv.append_tree(path, salt=SALT)
    assert path.read_bytes() == data


@pytest.mark.parametrize(("size", "message"), [(0, "0 bytes"), (4097, "4097 bytes")])
def test_append_refuses_unaligned_data_and_leaves_it_alone(tmp_path: Path, size, message) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"x" * size)
    with pytest.raises(FormatError, match=message) as info:
        pv.append_tree(path, salt=SALT)
    assert "4096-byte boundary" in info.value.hint
    assert path.read_bytes() == b"x" * size


@pytest.mark.parametrize(
    ("kw", "message"), [({"uuid": "bogus"}, "not a UUID"), ({"salt": bytes(300)}, "salt is 300")]
)
def test_append_refuses_bad_values_before_writing(tmp_path: Path, kw, message) -> None:
    path = tmp_path / "img"
    data = make_data(path, 2)
    with pytest.raises(FormatError, match=message):
        pv.append_tree(path, **{"salt": SALT, **kw})
    assert path.read_bytes() == data


def test_append_generates_a_uuid(tmp_path: Path) -> None:
    path = tmp_path / "img"
    make_data(path, 2)
    params = pv.append_tree(path, salt=SALT)
    assert pv.read_superblock(path, 8192).uuid == params.uuid != UUID


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        pv.append_tree(tmp_path / "nope", salt=SALT)


def test_failed_write_leaves_only_the_data(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "img"
    data = make_data(path, 300)
    real_pwrite = os.pwrite

    def half_then_full(fd, buf, pos):
        if pos > len(data):  # the first write lands; the rest finds the disk full
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, buf[:8192], pos)

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(DiskError, match="No space left on device"):
        pv.append_tree(path, salt=SALT)
    assert path.read_bytes() == data
