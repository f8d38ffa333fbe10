"""Root tree pieces: bay0's layout, byte-compiling, excludes, accounts, times, trust keys."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bay0.errors import NotFoundError, ValidationError
from bay0.formats.minisign import SecretKey
from pipeline.recipe import parse_recipe
from pipeline.rootfs import (
    MOUNT_POINTS,
    Plan,
    apply_excludes,
    clamp_times,
    compile_python,
    exists_in_root,
    inside,
    install_bay0,
    read_trust_keys,
    write_accounts,
)

SPINE = """
kind = "spine"
name = "t"
version = "1"
packages = []
[alpine]
release = "v3.19"
keys = "."
repositories = [{ name = "x", index = "recipe.toml", packages = ["."] }]
[bay0]
source = "bay0src"
[trust]
keys = ["k.pub"]
[[group]]
name = "svc"
gid = 900
[[user]]
name = "svc"
uid = 900
gid = 900
home = "/srv"
"""


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    (tmp_path / "recipe.toml").write_text(SPINE)
    (tmp_path / "bay0src/formats").mkdir(parents=True)
    (tmp_path / "bay0src/__init__.py").write_text("")
    (tmp_path / "bay0src/main.py").write_text("def main():\n    return 0\n")
    (tmp_path / "bay0src/formats/__init__.py").write_text("")
    (tmp_path / "bay0src/__pycache__").mkdir()
    (tmp_path / "bay0src/__pycache__/stale.pyc").write_bytes(b"stale")
    (tmp_path / "k.pub").write_text(SecretKey.generate().public_key.to_text())
    recipe = parse_recipe(SPINE.encode(), label="recipe.toml", base=tmp_path)
    return Plan(recipe, None, [], [], None, 1704067200, read_trust_keys(recipe.trust_keys))


def test_bay0_is_installed_as_interfaces_md_says(tmp_path: Path, plan: Plan) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_text("")
    os.symlink("python3.11", root / "usr/bin/python3")
    install_bay0(plan, root, {"version": "1", "build_id": "ab", "alpine": "3.19.1"})
    assert (root / "usr/lib/bay0/bay0/main.py").is_file()
    assert not (root / "usr/lib/bay0/bay0/__pycache__").exists()
    launcher = (root / "sbin/bay0").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -IS\n") and "bay0.main import main" in launcher
    assert (root / "sbin/bay0").stat().st_mode & 0o777 == 0o755
    assert [p.name for p in (root / "etc/spine/keys").iterdir()] == ["k.pub"]
    assert (root / "etc/spine/release").read_text() == "version=1\nbuild_id=ab\nalpine=3.19.1\n"
    for name in MOUNT_POINTS:
        assert (root / name).is_dir(), name
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_bay0_needs_its_python(tmp_path: Path, plan: Plan) -> None:
    with pytest.raises(NotFoundError, match="bay0's Python runtime is missing: /usr/bin/python3"):
        install_bay0(plan, tmp_path / "empty", {})


def test_trust_keys_must_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("untrusted comment: x\nnot base64\n")
    with pytest.raises(ValidationError, match="bad.pub: not a minisign public key"):
        read_trust_keys([bad])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no trust-root public keys"):
        read_trust_keys([tmp_path / "empty"])


def test_compile_is_unchecked_hash_and_reproducible(tmp_path: Path) -> None:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    outputs = []
    for n in (1, 2):
        root = tmp_path / f"r{n}"
        lib = root / f"usr/lib/python{version}"
        lib.mkdir(parents=True)
        (lib / "mod.py").write_text("X = {'a', 'b', 'c'}\ndef f():\n    return frozenset(X)\n")
        os.utime(lib / "mod.py", (n, n))  # different mtimes must not matter
        compile_python(root, [f"/usr/lib/python{version}"])
        (pyc,) = (lib / "__pycache__").iterdir()
        data = pyc.read_bytes()
        assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, never checked
        outputs.append(data)
    assert outputs[0] == outputs[1]


def test_excludes_accounts_and_times(tmp_path: Path, plan: Plan) -> None:
    root = tmp_path / "root"
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "usr/share/doc/pkg/README").write_text("x")
    (root / "usr/lib/keep").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsvc:x:1:1::/:/bin/sh\n")
    assert apply_excludes(root, ["/usr/share/doc/*"]) == 1
    assert (root / "usr/share/doc").is_dir() and not any((root / "usr/share/doc").iterdir())
    write_accounts(plan.recipe, root)
    assert (root / "etc/passwd").read_text() == (
        "root:x:0:0:root:/root:/bin/sh\nsvc:x:900:900::/srv:/sbin/nologin\n")
    assert (root / "etc/group").read_text() == "svc:x:900:\n"
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o640
    os.symlink("/nowhere", root / "dangling")
    clamp_times(root, 1000)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert os.lstat(os.path.join(dirpath, name)).st_mtime <= 1000


def test_paths_stay_inside_the_root(tmp_path: Path) -> None:
    assert inside(tmp_path, "/a/b") == tmp_path / "a/b"
    with pytest.raises(ValidationError, match="leaves the image"):
        inside(tmp_path, "/a/../../etc")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").write_text("")
    os.symlink("/usr/bin/python3.11", tmp_path / "usr/bin/python3")  # absolute: resolved in the root
    assert exists_in_root(tmp_path, "/usr/bin/python3")
    os.symlink("/etc/hostname", tmp_path / "hostlink")  # exists on the host, not in the root
    assert not exists_in_root(tmp_path, "/hostlink")
