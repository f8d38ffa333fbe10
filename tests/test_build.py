"""Pod builds from the Alpine fixtures: reproducible, cached, and refusing bad input cleanly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.build import build_pod
from pipeline.cache import ArtifactCache
from pipeline.image import read_identity
from pipeline.recipe import load_recipe, recipes_dir
from pipeline.run import run
from tests.conftest import require_tool

ISO = "@fixtures/v3.19/iso-repo/x86_64"
BUSYBOX = "busybox-1.36.1-r15.apk"

POD = """
kind = "pod"
name = "hello"
version = "1.0"
source_date_epoch = 1704067200
packages = {packages}

[alpine]
release = "v3.19"
keys = "{keys}"
repositories = [{{ name = "iso", index = "{repo}/APKINDEX.tar.gz", packages = ["{repo}"] }}]

[[file]]
path = "/etc/hello.txt"
content = "{greeting}"

[pod]
entrypoint = ["/bin/busybox", "cat", "/etc/hello.txt"]
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    """Every test gets its own cache directory: never the user's, never another test's."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SPINE_CACHE", str(path))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return path


def write_recipe(where: Path, *, packages: str = '["busybox", "alpine-baselayout-data"]',
                 keys: str = "@fixtures/keys", repo: str = ISO, greeting: str = "hello") -> Path:
    path = where / "hello.toml"
    path.write_text(POD.format(packages=packages, keys=keys, repo=repo, greeting=greeting))
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_two_pod_builds_are_bit_identical(tmp_path: Path, alpine: Path) -> None:
    require_tool("mksquashfs")
    recipe = load_recipe(write_recipe(tmp_path))
    one = build_pod(recipe, tmp_path / "one.img", cache=False)
    two = build_pod(recipe, tmp_path / "two.img", cache=False)
    assert (tmp_path / "one.img").read_bytes() == (tmp_path / "two.img").read_bytes()
    assert one.identity == two.identity == read_identity(tmp_path / "one.img")
    assert not one.cached and not two.cached
    assert leftovers(tmp_path) == []


def test_image_verifies_with_veritysetup_and_carries_the_persona(tmp_path: Path, alpine: Path) -> None:
    require_tool("veritysetup", "unsquashfs")
    result = build_pod(load_recipe(write_recipe(tmp_path)), tmp_path / "pod.img", cache=False)
    ident = result.identity
    run(["veritysetup", "verify", f"--hash-offset={ident.hash_offset}", str(tmp_path / "pod.img"),
         str(tmp_path / "pod.img"), ident.root_hash])
    text = run(["unsquashfs", "-cat", str(tmp_path / "pod.img"), "etc/hello.txt"]).stdout
    assert text == b"hello"
    persona = run(["unsquashfs", "-cat", str(tmp_path / "pod.img"), "etc/spine/persona.json"]).stdout
    assert b'"entrypoint": [' in persona and b'"busybox"' in persona
    names = {p["name"]: p for p in result.packages}
    assert names["busybox"]["origin"] == "alpine" and names["busybox"]["checksum"].startswith("Q1")
    assert set(names) == {"busybox", "musl", "alpine-baselayout-data"}


def test_warm_build_comes_from_the_cache_and_a_change_misses_it(tmp_path: Path, alpine: Path) -> None:
    require_tool("mksquashfs")
    recipe = load_recipe(write_recipe(tmp_path))
    cold = build_pod(recipe, tmp_path / "cold.img")
    warm = build_pod(recipe, tmp_path / "warm.img")
    assert not cold.cached and warm.cached
    assert cold.input_digest == warm.input_digest
    assert (tmp_path / "cold.img").read_bytes() == (tmp_path / "warm.img").read_bytes()
    changed = load_recipe(write_recipe(tmp_path, greeting="changed"))
    other = build_pod(changed, tmp_path / "changed.img")
    assert not other.cached and other.identity.root_hash != cold.identity.root_hash


def test_epoch_from_the_environment_changes_the_image(tmp_path: Path, alpine: Path, monkeypatch) -> None:
    require_tool("mksquashfs")
    recipe = load_recipe(write_recipe(tmp_path))
    default = build_pod(recipe, tmp_path / "a.img", cache=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
    moved = build_pod(recipe, tmp_path / "b.img", cache=False)
    assert default.identity.root_hash != moved.identity.root_hash


def test_shipped_personas_build(tmp_path: Path, alpine: Path, spinectl) -> None:
    require_tool("mksquashfs")
    for path in sorted((recipes_dir() / "personas").glob("*.toml")):
        out = tmp_path / f"{path.stem}.img"
        r = spinectl("build", "pod", "--recipe", str(path), "-o", str(out), "--json")
        assert r.code == 0, r.err
        assert '"kind": "pod"' in r.out and out.stat().st_size % 4096 == 0


# ------------------------------------------------------------------ bad input


def run_bad(spinectl, recipe: Path, out: Path, code: int, *needles: str) -> None:
    r = spinectl("build", "pod", "--recipe", str(recipe), "-o", str(out))
    lines = r.err.strip().splitlines()
    assert r.code == code, r.err
    assert len(lines) == 1 and lines[0].startswith("spinectl: error: "), r.err
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in r.err
    assert not out.exists()
    assert leftovers(out.parent) == []


def copy_repo(alpine: Path, dest: Path) -> Path:
    dest.mkdir()
    src = alpine / "v3.19/iso-repo/x86_64"
    for name in ("APKINDEX.tar.gz", BUSYBOX, "musl-1.2.4_git20230717-r4.apk",
                 "alpine-baselayout-data-3.4.3-r2.apk"):
        shutil.copyfile(src / name, dest / name)
    return dest


def test_package_with_one_byte_changed(tmp_path: Path, alpine: Path, spinectl) -> None:
    repo = copy_repo(alpine, tmp_path / "repo")
    apk = repo / BUSYBOX
    data = bytearray(apk.read_bytes())
    data[len(data) // 2] ^= 0x01
    apk.write_bytes(bytes(data))
    run_bad(spinectl, write_recipe(tmp_path, repo=str(repo)), tmp_path / "out.img", 4, "busybox")


def test_index_signed_by_an_unknown_key(tmp_path: Path, alpine: Path, spinectl) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(alpine / "keys/alpine-devel@lists.alpinelinux.org-4a6a0840.rsa.pub", keys)
    run_bad(spinectl, write_recipe(tmp_path, keys=str(keys)), tmp_path / "out.img", 4)


def test_unknown_package(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = write_recipe(tmp_path, packages='["busybox", "no-such-package"]')
    run_bad(spinectl, recipe, tmp_path / "out.img", 11, "no-such-package")


def test_missing_dependency(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = write_recipe(tmp_path, packages='["busybox>=9"]')
    run_bad(spinectl, recipe, tmp_path / "out.img", 11, "busybox>=9")


def test_conflicting_packages(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = write_recipe(tmp_path, packages='["busybox", "!musl"]')
    run_bad(spinectl, recipe, tmp_path / "out.img", 11, "musl")


def test_recipe_with_an_unknown_key(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = write_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace('version = "1.0"', 'version = "1.0"\nflavour = "x"'))
    run_bad(spinectl, recipe, tmp_path / "out.img", 3, "hello.toml: flavour: unknown key")


def test_recipe_with_a_type_error(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = write_recipe(tmp_path, packages='["busybox", "musl", "zlib", 7]')
    run_bad(spinectl, recipe, tmp_path / "out.img", 3, "packages[3]: expected a string, got 7")


def test_existing_output_is_kept(tmp_path: Path, alpine: Path, spinectl) -> None:
    out = tmp_path / "out.img"
    out.write_bytes(b"keep me")
    r = spinectl("build", "pod", "--recipe", str(write_recipe(tmp_path)), "-o", str(out))
    assert r.code == 5 and out.read_bytes() == b"keep me"


def test_spine_recipe_refused_by_build_pod(tmp_path: Path, alpine: Path, spinectl) -> None:
    r = spinectl("build", "pod", "--recipe", str(recipes_dir() / "spine-test.toml"), "-o", str(tmp_path / "x"))
    assert r.code == 2 and "spine recipe" in r.err


# ------------------------------------------------------------------ the cache


def test_cache_info_and_clear(tmp_path: Path, alpine: Path, spinectl, private_cache: Path) -> None:
    require_tool("mksquashfs")
    build_pod(load_recipe(write_recipe(tmp_path)), tmp_path / "a.img")
    r = spinectl("cache", "info", "--json")
    assert r.code == 0 and str(private_cache) in r.out and '"artifacts"' in r.out
    r = spinectl("cache", "clear")
    assert r.code == 0 and "cleared" in r.out
    assert not build_pod(load_recipe(write_recipe(tmp_path)), tmp_path / "b.img").cached


def test_cache_is_size_bounded(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "bounded", size_limit=300_000)
    blob = tmp_path / "blob"
    for i in range(8):
        blob.write_bytes(os.urandom(100_000))
        cache.put_file(ArtifactCache.key("test", i), blob)
    volume = cache._cache.volume()
    assert volume < 600_000
    assert cache.has(ArtifactCache.key("test", 7))  # the newest survives
    assert not cache.has(ArtifactCache.key("test", 0))  # the oldest went first
    cache.close()


def test_cache_round_trip(tmp_path: Path) -> None:
    with ArtifactCache(tmp_path / "c") as cache:
        src = tmp_path / "src"
        src.write_bytes(b"x" * 100_000)
        key = ArtifactCache.key("thing", {"a": 1})
        assert not cache.get_file(key, tmp_path / "dest")
        cache.put_file(key, src)
        assert cache.get_file(key, tmp_path / "dest") and (tmp_path / "dest").read_bytes() == src.read_bytes()
        cache.put_json(key + ":meta", {"b": [1, 2]})
        assert cache.get_json(key + ":meta") == {"b": [1, 2]}
        assert ArtifactCache.key("thing", {"a": 1}) != ArtifactCache.key("thing", {"a": 2})


# ------------------------------------------------------------------ build spine (fast paths)

SPINE_TAIL = """
[bay0]
[trust]
keys = ["{keys}"]
"""


def spine_recipe(where: Path, trust: Path) -> Path:
    path = write_recipe(where)
    text = path.read_text().replace('kind = "pod"', 'kind = "spine"')
    text = text[: text.index("[pod]")] + SPINE_TAIL.format(keys=trust)
    path.write_text(text)
    return path


def test_build_spine_recipe_error_comes_before_the_key(tmp_path: Path, alpine: Path, spinectl) -> None:
    recipe = spine_recipe(tmp_path, tmp_path)
    recipe.write_text(recipe.read_text().replace("[bay0]", "[bay0]\npyhton = \"/usr/bin/python3\""))
    r = spinectl("build", "spine", "--recipe", str(recipe), "--key", str(tmp_path / "absent.key"),
                 "-o", str(tmp_path / "x.spine"))
    assert r.code == 3 and "bay0.pyhton: unknown key" in r.err
    assert not (tmp_path / "x.spine").exists()


def test_build_spine_without_trust_keys(tmp_path: Path, alpine: Path, spinectl) -> None:
    from spinectl.keys import generate

    key = generate("signer", tmp_path / "k", None)
    (tmp_path / "empty").mkdir()
    recipe = spine_recipe(tmp_path, tmp_path / "empty")
    out = tmp_path / "x.spine"
    r = spinectl("build", "spine", "--recipe", str(recipe), "--key", str(key.secret_path), "-o", str(out))
    assert r.code == 6 and "no trust-root public keys" in r.err and "--trust-key" in r.err
    assert not out.exists() and leftovers(tmp_path) == []
    # --trust-key supplies one; the build then stops at the missing Python runtime.
    r = spinectl("build", "spine", "--recipe", str(recipe), "--key", str(key.secret_path), "-o", str(out),
                 "--trust-key", str(key.public_path))
    assert r.code == 6 and "bay0's Python runtime is missing" in r.err, r.err
    assert not out.exists() and leftovers(tmp_path) == []


def test_full_disk_is_a_storage_error(tmp_path: Path, alpine: Path, spinectl) -> None:
    from tests.conftest import require_root

    require_root()
    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)])
    try:
        out = small / "pod.img"
        r = spinectl("build", "pod", "--recipe", str(write_recipe(tmp_path)), "-o", str(out))
        assert r.code == 12 and "No space left on device" in r.err, r.err
        assert list(small.iterdir()) == []
    finally:
        run(["umount", str(small)])


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, alpine: Path, private_cache: Path) -> None:
    require_tool("mksquashfs")
    recipe = load_recipe(write_recipe(tmp_path))
    first = build_pod(recipe, tmp_path / "a.img")
    values = list((private_cache / "artifacts").rglob("*.val"))
    assert values
    for value in values:
        data = bytearray(value.read_bytes())
        data[100] ^= 0xFF
        value.write_bytes(bytes(data))
    again = build_pod(recipe, tmp_path / "b.img")
    assert not again.cached
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    assert again.identity == first.identity


def test_borrowed_debian_closure_is_planned_with_its_reason(tmp_path: Path, alpine: Path) -> None:
    from pipeline.rootfs import plan_rootfs

    require_tool("apt-cache")
    path = write_recipe(tmp_path)
    path.write_text(path.read_text().replace("[pod]", '[[debian]]\npackages = ["libargon2-1"]\n'
                                             'reason = "test"\nresolve = true\n\n[pod]'))
    with ArtifactCache(tmp_path / "memo") as memo:
        plan = plan_rootfs(load_recipe(path), memo=memo)
        again = plan_rootfs(load_recipe(path), memo=memo)
    names = [p.candidate.package for p in plan.debian]
    assert "libargon2-1" in names and "libc6" in names
    assert all(p.reason == "test" and len(p.candidate.sha256) == 64 for p in plan.debian)
    assert again.inputs() == plan.inputs()
