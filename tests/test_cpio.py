"""The reproducible newc writer, checked against GNU cpio."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bay0.errors import FormatError
from pipeline import cpio
from tests.conftest import require_tool


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "modules").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF fake busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "init").write_text("#!/bin/sh\necho hi\n")
    (root / "init").chmod(0o755)
    (root / "lib" / "a.so").write_bytes(b"x" * 5)
    os.link(root / "lib" / "a.so", root / "lib" / "b.so")
    (root / "empty").write_bytes(b"")
    return root


def test_same_tree_same_bytes_whatever_the_mtimes(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    two = make_tree(tmp_path / "two")
    for path in (two / "init", two / "lib" / "a.so"):
        os.utime(path, (12345, 12345))
    assert cpio.pack(cpio.entries_from_tree(one)) == cpio.pack(cpio.entries_from_tree(two))


def test_mtime_comes_from_source_date_epoch(monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    data = cpio.pack([cpio.Entry("f", stat.S_IFREG | 0o644, data=b"x")])
    assert cpio.unpack(data)[0].name == "f"
    assert int(data[6 + 8 * 5 : 6 + 8 * 6], 16) == 1700000000


def test_members_are_sorted_aligned_and_end_with_a_trailer(tmp_path: Path) -> None:
    data = cpio.pack(cpio.entries_from_tree(make_tree(tmp_path / "t")))
    names = [e.name for e in cpio.unpack(data)]
    assert names == sorted(names, key=str.encode)
    assert names[0] == "bin" and "bin/busybox" in names
    assert len(data) % 4 == 0
    assert b"TRAILER!!!" in data[-128:]


def test_gnu_cpio_extracts_what_we_wrote(tmp_path: Path) -> None:
    require_tool("cpio")
    src = make_tree(tmp_path / "src")
    archive = tmp_path / "a.cpio"
    cpio.write_archive(archive, cpio.entries_from_tree(src))
    dest = tmp_path / "dest"
    dest.mkdir()
    with archive.open("rb") as f:
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], stdin=f, cwd=dest, check=True)
    assert (dest / "bin" / "busybox").read_bytes() == b"\x7fELF fake busybox"
    assert os.readlink(dest / "bin" / "sh") == "busybox"
    assert stat.S_IMODE((dest / "init").stat().st_mode) == 0o755
    assert (dest / "lib" / "a.so").read_bytes() == b"xxxxx"
    assert (dest / "lib" / "b.so").read_bytes() == b"xxxxx"
    assert (dest / "lib" / "a.so").stat().st_ino == (dest / "lib" / "b.so").stat().st_ino
    assert (dest / "empty").read_bytes() == b""


def test_hard_links_carry_data_once(tmp_path: Path) -> None:
    data = cpio.pack(cpio.entries_from_tree(make_tree(tmp_path / "t")))
    assert data.count(b"xxxxx") == 1
    linked = [e for e in cpio.unpack(data) if e.name in ("lib/a.so", "lib/b.so")]
    assert [e.data for e in linked] == [b"xxxxx", b"xxxxx"]
    assert linked[0].link_group == linked[1].link_group is not None


def test_device_nodes_need_no_root() -> None:
    require_tool("cpio")
    console = cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    data = cpio.pack([cpio.Entry("dev", stat.S_IFDIR | 0o755), console])
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True).stdout
    assert listing.startswith(b"drwxr-xr-x") and b"\ncrw-------" in listing
    assert cpio.unpack(data)[1].rdev == (5, 1)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    entries = cpio.entries_from_tree(make_tree(tmp_path / "t"))
    a = cpio.write_archive(tmp_path / "a.gz", entries, compress="gzip").read_bytes()
    b = cpio.write_archive(tmp_path / "b.gz", entries, compress="gzip").read_bytes()
    assert a == b
    assert gzip.decompress(a) == cpio.pack(entries)


@pytest.mark.parametrize("name", ["/abs", "a/../b", ""])
def test_bad_member_names_are_refused(name: str) -> None:
    with pytest.raises(FormatError):
        cpio.Entry(name, stat.S_IFREG | 0o644)


def test_duplicate_names_are_refused() -> None:
    entry = cpio.Entry("x", stat.S_IFREG | 0o644)
    with pytest.raises(FormatError, match="duplicate"):
        cpio.pack([entry, entry])


def test_unknown_compression_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="compression"):
        cpio.write_archive(tmp_path / "x", [], compress="lz4")
    assert not (tmp_path / "x").exists()


def test_garbage_is_not_an_archive() -> None:
    with pytest.raises(FormatError, match="newc"):
        cpio.unpack(b"\x1f\x8b" + b"\0" * 200)
