"""The full test Spine (slow): bit-identical twice, signed manifest, bay0 runnable in its root."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bay0.formats.minisign import SecretKey
from pipeline.build import build_spine
from pipeline.recipe import load_recipe, recipes_dir
from pipeline.run import run
from pipeline.spine import open_spine
from tests.conftest import PROJECT_ROOT, require_root, require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory) -> Iterator[Path]:
    """Room for two Spines and their trees, on a filesystem that allows exec (for chroot)."""
    path = tmp_path_factory.mktemp("spine")
    st = shutil.disk_usage(path)
    if st.free > 2 * 1024**3 and not _noexec(path):
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="spine-build-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _noexec(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_NOEXEC)


@pytest.fixture(scope="module")
def built(big_dir: Path, shared: Path):
    require_tool("mksquashfs", "apt-get", "dpkg-deb", "depmod")
    key = SecretKey.generate()
    pub = big_dir / "test.pub"
    pub.write_text(key.public_key.to_text())
    # Pin bay0's source for the two builds: the tree may be edited while the test runs.
    source = big_dir / "bay0"
    shutil.copytree(PROJECT_ROOT / "bay0", source, ignore=shutil.ignore_patterns("__pycache__"))
    recipe = load_recipe(recipes_dir() / "spine-test.toml").with_trust_keys((pub,))
    recipe = dataclasses.replace(recipe, bay0=dataclasses.replace(recipe.bay0, source=source))
    first = build_spine(recipe, key, big_dir / "one.spine", cache=False)
    second = build_spine(recipe, key, big_dir / "two.spine", cache=False)
    return key, first, second, big_dir


def differing_paths(one: Path, two: Path, where: Path) -> list[str]:
    """Unpack both Spines and name the paths whose type, mode, owner or content differ."""
    trees = []
    for spine in (one, two):
        dest = where / f"diff-{spine.stem}"
        shutil.rmtree(dest, ignore_errors=True)
        run(["unsquashfs", "-q", "-d", str(dest), str(spine)])
        trees.append(dest)
    out = []
    names = sorted({p.relative_to(t).as_posix() for t in trees for p in t.rglob("*")})
    for name in names:
        a, b = (t / name for t in trees)
        if not (a.is_symlink() or a.exists()) or not (b.is_symlink() or b.exists()):
            out.append(f"{name}: only in one")
            continue
        sa, sb = a.lstat(), b.lstat()
        if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
            out.append(f"{name}: mode/owner")
        elif a.is_symlink() and os.readlink(a) != os.readlink(b):
            out.append(f"{name}: link target")
        elif a.is_file() and not a.is_symlink() and a.read_bytes() != b.read_bytes():
            out.append(f"{name}: content")
    return out


def test_two_cold_builds_are_bit_identical(built) -> None:
    _, first, second, where = built
    assert not first.cached and not second.cached
    one, two = where / "one.spine", where / "two.spine"
    if one.read_bytes() != two.read_bytes():
        pytest.fail(f"the two builds differ: {differing_paths(one, two, where)[:20]}")


def test_manifest_lists_every_package_and_is_signed(built) -> None:
    key, first, _, where = built
    art = open_spine(where / "one.spine", [key.public_key])
    m = art.manifest
    assert m.alpine_release == "3.19.1" and m.spine_version == "0.1.0-test"
    assert m.recipe_digest == load_recipe(recipes_dir() / "spine-test.toml").digest
    by_name = {p["name"]: p for p in m.contents}
    assert by_name["busybox"]["origin"] == "alpine" and by_name["busybox"]["checksum"].startswith("Q1")
    for borrowed in ("python3.11-minimal", "python3-cryptography", "cryptsetup-bin"):
        entry = by_name[borrowed]
        assert entry["origin"] == "debian" and len(entry["checksum"]) == 64 and entry["reason"]
    assert any(name.startswith("linux-image-") for name in by_name)
    assert all({"name", "version", "checksum", "origin"} <= set(p) for p in m.contents)


def test_root_tree_layout(built) -> None:
    _, first, _, where = built
    require_tool("unsquashfs")
    listing = run(["unsquashfs", "-l", "-d", "", str(where / "one.spine")]).stdout.decode()
    paths = set(listing.split())
    for path in ("/sbin/bay0", "/usr/lib/bay0/bay0/__init__.py", "/etc/spine/keys/test.pub",
                 "/etc/spine/release", "/persist", "/mnt/stage", "/usr/bin/python3",
                 "/sbin/veritysetup", "/sbin/cryptsetup", "/bin/busybox", "/lib/apk/db/installed"):
        assert path in paths, path
    assert any(p.startswith("/usr/lib/bay0/bay0/__pycache__/") for p in paths)
    assert any(p.startswith("/boot/vmlinuz-") for p in paths)
    assert any(p.endswith("/dm-verity.ko") for p in paths)
    assert not any(p.startswith("/usr/share/doc/") for p in paths)
    with open(where / "one.spine", "rb") as f:  # the recipe's compressor (squashfs ids: lz4 = 5)
        assert int.from_bytes(f.read(96)[20:22], "little") == 5


def test_prefetch_list_names_what_bay0_reads_first(built, tmp_path) -> None:
    # /init reads these into the page cache while /persist unlocks (initramfs prefetch)
    _, _, _, where = built
    listing = set(run(["unsquashfs", "-l", "-d", "", str(where / "one.spine")]).stdout.decode().split())
    run(["unsquashfs", "-q", "-d", str(tmp_path / "x"), str(where / "one.spine"), "etc/spine/prefetch"])
    paths = (tmp_path / "x/etc/spine/prefetch").read_text().splitlines()
    assert paths[0] == "usr/bin/python3.11"  # the interpreter itself, symlinks resolved
    assert all("/" + p in listing for p in paths)  # every entry is a file of the image
    assert "lib/x86_64-linux-gnu/libc.so.6" in paths and "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in paths
    for module in ("main", "log", "watchdog", "invariants", "pid1"):
        assert f"usr/lib/bay0/bay0/__pycache__/{module}.cpython-311.pyc" in paths
    assert "usr/lib/python3.11/encodings/__pycache__/aliases.cpython-311.pyc" in paths
    assert not any("cryptography" in p or "/supervisor." in p for p in paths)  # only the boot path


def test_bay0_imports_in_the_spine_root(built) -> None:
    _, _, _, where = built
    require_root()
    root = where / "root"
    run(["unsquashfs", "-q", "-d", str(root), str(where / "one.spine")])
    probe = ("import sys; sys.path.insert(0, '/usr/lib/bay0'); import bay0.formats.minisign; "
             "from cryptography.hazmat.primitives.asymmetric import ed25519; "
             "ed25519.Ed25519PrivateKey.generate(); print('ok')")
    proc = subprocess.run(["chroot", str(root), "/usr/bin/python3", "-I", "-c", probe],
                          capture_output=True, check=False, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == b"ok", proc.stderr
    release = (root / "etc/spine/release").read_text()
    assert "version=0.1.0-test\n" in release and "alpine=3.19.1\n" in release
    # The manifest's Alpine packages are exactly what the installed database records.
    db = {}
    for stanza in (root / "lib/apk/db/installed").read_text().split("\n\n"):
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if line[1:2] == ":")
        if "P" in fields:
            db[fields["P"]] = (fields["V"], fields["C"])
    manifest = open_spine(where / "one.spine", [built[0].public_key]).manifest
    listed = {p["name"]: (p["version"], p["checksum"]) for p in manifest.contents if p["origin"] == "alpine"}
    assert listed == db


def test_esp_payload_is_built_from_the_spines_own_kernel_and_tree(built, spinectl) -> None:
    """`spinectl build esp`: the signature first, then a UKI whose sections hold the Spine's
    kernel and an initramfs with the /init of initramfs/ (the demo boots it through OVMF)."""
    require_tool("objcopy", "unsquashfs")
    key, first, _, where = built
    other = SecretKey.generate()
    (where / "other.pub").write_text(other.public_key.to_text())
    refused = where / "esp-refused"
    r = spinectl("build", "esp", "--spine", str(first.out), "--pubkey", str(where / "other.pub"),
                 "-o", str(refused))
    assert r.code == 4 and "not trusted" in r.err and not refused.exists()
    out = where / "esp"
    r = spinectl("build", "esp", "--spine", str(first.out), "--pubkey", str(where / "test.pub"),
                 "-o", str(out), "--append", "console=ttyS0 spine.test=esp")
    assert r.code == 0, r.err
    uki = out / "EFI" / "BOOT" / "BOOTX64.EFI"
    sections = run(["objdump", "-h", str(uki)]).stdout.decode()
    assert all(name in sections for name in (".linux", ".initrd", ".cmdline", ".osrel"))
    assert b"spine.test=esp" in uki.read_bytes()
    r = spinectl("build", "esp", "--spine", str(first.out), "--pubkey", str(where / "test.pub"),
                 "-o", str(out))
    assert r.code == 5 and "already exists" in r.err
