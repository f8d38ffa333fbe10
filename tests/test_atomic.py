from __future__ import annotations

import os
from pathlib import Path

import pytest

from bay0.atomic import atomic_output, write_atomic
from bay0.errors import ExistsError


def test_write_and_refuse_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    write_atomic(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one" and (target.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ExistsError):
        write_atomic(target, b"two")
    write_atomic(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two"


class Boom(Exception):
    pass


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["big"]

    def fail_fsync(fd: int) -> None:
        raise Boom

    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(Boom):
        write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["big"]


def test_atomic_output_refuses_before_any_work(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.write_bytes(b"keep")
    ran = False
    with pytest.raises(ExistsError), atomic_output(target):
        ran = True
    assert not ran and target.read_bytes() == b"keep"
