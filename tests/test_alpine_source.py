"""Package sources (local mirror directory, HTTP mirror) and the shared cache."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bay0.errors import NotFoundError
from pipeline.alpine import ApkCache, RepositorySpec, open_repositories
from pipeline.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def mirror(alpine, tmp_path_factory) -> Path:
    """An official-layout mirror (<root>/v3.19/main/x86_64) made of the iso-repo files."""
    root = tmp_path_factory.mktemp("mirror")
    arch_dir = root / "v3.19" / "main" / "x86_64"
    arch_dir.mkdir(parents=True)
    for item in (alpine / "v3.19/iso-repo/x86_64").iterdir():
        os.symlink(item, arch_dir / item.name)
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(mirror):
    handler = functools.partial(_Quiet, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_mirror_layout_paths():
    spec = RepositorySpec.mirror("https://dl-cdn.alpinelinux.org/alpine", "v3.19", "community")
    assert spec.index == "https://dl-cdn.alpinelinux.org/alpine/v3.19/community/x86_64/APKINDEX.tar.gz"
    assert spec.package_dirs == ("https://dl-cdn.alpinelinux.org/alpine/v3.19/community/x86_64",)
    assert spec.remote
    local = RepositorySpec.mirror("/srv/alpine", "v3.19", "main")
    assert local.index == "/srv/alpine/v3.19/main/x86_64/APKINDEX.tar.gz" and not local.remote


def test_local_mirror_directory(alpine, mirror):
    repos = open_repositories([RepositorySpec.mirror(mirror, "v3.19", "main")], alpine / "keys",
                              cache=False)
    pkg = repos.find("busybox")
    assert repos.fetch(pkg).checksum == pkg.checksum


def test_http_mirror_goes_through_the_same_path_and_is_cached(alpine, http_mirror, tmp_path):
    server, url = http_mirror
    cache = ApkCache(tmp_path / "cache")
    spec = RepositorySpec.mirror(url, "v3.19", "main")
    repos = open_repositories([spec], alpine / "keys", cache=cache)
    pkg = repos.find("musl")
    assert repos.fetch(pkg).checksum == pkg.checksum
    server.shutdown()                 # offline now: the index and the package come from the cache
    again = open_repositories([spec], alpine / "keys", cache=cache)
    assert again.fetch(again.find("musl")).checksum == pkg.checksum


def test_missing_package_file_names_the_places_tried(alpine, tmp_path):
    spec = RepositorySpec.local(alpine / "v3.19/index/main/x86_64/APKINDEX.tar.gz",
                                [tmp_path], name="main")
    repos = open_repositories([spec], alpine / "keys", cache=False)
    with pytest.raises(NotFoundError, match=rf"package zlib-1.3.1-r0 is in the index of main but not at {tmp_path}"):
        repos.fetch(repos.find("zlib"))


def test_missing_index(alpine, tmp_path, http_mirror):
    with pytest.raises(NotFoundError, match="does not exist"):
        open_repositories([RepositorySpec.mirror(tmp_path, "v3.19", "main")], alpine / "keys",
                          cache=False)
    _server, url = http_mirror
    with pytest.raises(NotFoundError, match="HTTP 404"):
        open_repositories([RepositorySpec.mirror(url, "v9.99", "main")], alpine / "keys",
                          cache=False)


CHILD = """
import sys
from pipeline.alpine import ApkCache, RepositorySpec, open_repositories
spec = RepositorySpec.mirror(sys.argv[1], "v3.19", "main")
repos = open_repositories([spec], sys.argv[2], cache=ApkCache(sys.argv[3]))
for name in ("busybox", "musl", "zlib", "libcrypto3", "apk-tools"):
    pkg = repos.find(name)
    assert repos.fetch(pkg).checksum == pkg.checksum
print("ok")
"""


def test_two_processes_share_one_cache(alpine, http_mirror, tmp_path):
    _server, url = http_mirror
    argv = [sys.executable, "-c", CHILD, url, str(alpine / "keys"), str(tmp_path / "cache")]
    procs = [subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "ok"
    cache = ApkCache(tmp_path / "cache")
    assert cache.get("apk:" + "Q1AYNx2pLOAHRYZQgv3nM8TNtvRWY=") is not None  # busybox bytes


def test_present_only_pairs_a_full_index_with_the_packages_at_hand(alpine):
    """The fixture recipe: iso-repo as is, plus index/main limited to the apks we have."""
    main = RepositorySpec.local(alpine / "v3.19/index/main/x86_64/APKINDEX.tar.gz",
                                [alpine / "v3.19/extra/x86_64", alpine / "v3.19/iso-repo/x86_64"],
                                name="main", present_only=True)
    iso = RepositorySpec.local(alpine / "v3.19/iso-repo/x86_64/APKINDEX.tar.gz", name="iso-repo")
    repos = open_repositories([iso, main], alpine / "keys", cache=False)
    assert len(repos.repositories[1].packages) == 52 + 82
    resolved = repos.resolve(["busybox", "coreutils", "sqlite-libs", "libcrypto3"])
    assert next(p for p in resolved if p.name == "busybox").version == "1.36.1-r15"
    for pkg in resolved:
        assert repos.fetch(pkg).checksum == pkg.checksum
