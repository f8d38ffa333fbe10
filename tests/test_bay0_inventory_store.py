"""Inventory import from a staging directory into /persist/spine, and loading it back.

Real pods (mksquashfs + verity via pipeline.image), real inventories written and
signed by spinectl's own service code, real Ed25519 keys. Every refusal leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bay0 import inventory_store as store_mod
from bay0.errors import (
    BadSignatureError,
    ExpiredError,
    FormatError,
    IdentityMismatchError,
    NotFoundError,
    RollbackError,
    UnknownKeyError,
)
from bay0.formats import minisign
from bay0.inventory_store import Store, import_stage
from tests.conftest import require_tool

NOW = int(time.time())


@pytest.fixture(scope="module")
def pods(tmp_path_factory) -> Path:
    require_tool("mksquashfs")
    from pipeline.image import build_image

    root = tmp_path_factory.mktemp("pods")
    for name, size in (("web", 3000), ("db", 70000)):
        tree = root / f"{name}-tree" / "bin"
        tree.mkdir(parents=True)
        (tree / "app").write_bytes(f"#!/bin/sh\necho {name}\n".encode() + os.urandom(size))
        build_image(tree.parent, root / f"{name}.img")
    return root


@pytest.fixture(scope="module")
def keys() -> dict[str, minisign.SecretKey]:
    return {"ops": minisign.SecretKey.generate(), "intruder": minisign.SecretKey.generate()}


@pytest.fixture
def world(tmp_path, pods, keys):
    """A trust-root dir, an empty /persist/spine and a staging dir builder."""
    trusted = tmp_path / "etc/spine/keys"
    trusted.mkdir(parents=True)
    (trusted / "ops.pub").write_text(keys["ops"].public_key.to_text())
    store = Store(str(tmp_path / "persist/spine"), str(trusted), clock=lambda: NOW)
    return tmp_path, store


def stage(tmp_path: Path, pods: Path, key: minisign.SecretKey, *, version: int,
          personas=("web",), images=None, now: int = NOW, days: int = 30) -> Path:
    """Write a signed inventory (spinectl's service code) plus its pods into a stage dir."""
    from spinectl import inventory as service

    st = tmp_path / f"stage-{version}-{len(os.listdir(tmp_path))}"
    (st / "pods").mkdir(parents=True)
    doc = st / "inventory.json"
    service.create(doc, now=now)
    for name in personas:
        shutil.copy(pods / f"{name}.img", st / "pods" / f"{name}.img")
        service.add_persona(doc, service.PersonaOptions(
            name=name, image=str(st / "pods" / f"{name}.img"), cpu="0.5", memory="256M", pids=64,
            command="/bin/app -f"))
    service.sign(doc, key, version=version, now=now, expires_days=days)
    for name, source in (images or {}).items():  # swap pod files after signing
        shutil.copy(source, st / "pods" / f"{name}.img")
    return st


def snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = os.readlink(path).encode() if path.is_symlink() else (
            path.read_bytes() if path.is_file() else b"<dir>")
    return out


def test_import_then_load(world, pods, keys):
    tmp, store = world
    st = stage(tmp, pods, keys["ops"], version=3, personas=("web", "db"))
    result = import_stage(store, str(st))
    assert (result.imported, result.version) == (True, 3)
    loaded = store.load()
    assert loaded.inventory.version == 3 and loaded.key_id == keys["ops"].key_id_hex
    assert store.floor() == 3
    for persona in loaded.inventory.personas:
        path = loaded.pod_path(persona)
        assert Path(path).read_bytes() == (pods / persona.image.file).read_bytes()
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    root = Path(store.root)
    assert os.readlink(root / "current") == "inventories/3"
    assert sorted(os.listdir(root / "pods")) == sorted(
        f"{p.image.sha256}.img" for p in loaded.inventory.personas)
    again = import_stage(store, str(st))
    assert (again.imported, again.reason) == (False, "version 3 is already installed")


def test_newer_import_replaces_and_collects_garbage(world, pods, keys):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=1, personas=("web", "db"))))
    result = import_stage(store, str(stage(tmp, pods, keys["ops"], version=2, personas=("db",))))
    assert result.imported and store.load().inventory.version == 2
    root = Path(store.root)
    assert os.listdir(root / "inventories") == ["2"]
    assert len(os.listdir(root / "pods")) == 1


def test_nothing_staged(world):
    tmp, store = world
    (tmp / "empty").mkdir()
    assert import_stage(store, str(tmp / "empty")).reason == "nothing staged"
    with pytest.raises(NotFoundError, match="no inventory has been imported yet"):
        store.load()


def _tamper(st: Path) -> None:
    doc = st / "inventory.json"
    doc.write_bytes(doc.read_bytes().replace(b'"pids_max":64', b'"pids_max":99'))


def _swap_pod(other: str):
    def swap(st: Path, pods: Path) -> None:
        shutil.copy(pods / f"{other}.img", st / "pods/web.img")
    return swap


def _flip_data_byte(st: Path, pods: Path) -> None:
    """Same size, same verity header: only the sha256 (full read) can tell."""
    path = st / "pods/web.img"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))


REFUSALS = [
    ("tampered", dict(version=5), lambda st, pods: _tamper(st), BadSignatureError, "does not match"),
    ("rollback", dict(version=1), None, RollbackError, "version 1 is below the accepted floor 4"),
    ("expired", dict(version=5, now=NOW - 40 * 86400), None, ExpiredError, "expired at"),
    ("unknown key", dict(version=5, key="intruder"), None, UnknownKeyError, "untrusted key"),
    ("swapped image", dict(version=5), _swap_pod("db"), IdentityMismatchError, "persona web: image"),
    ("same header, other bytes", dict(version=5), _flip_data_byte, IdentityMismatchError,
     "staged pod web.img has sha256"),
    ("missing pod", dict(version=5), lambda st, pods: (st / "pods/web.img").unlink(), NotFoundError,
     "pod web.img is not staged"),
]


@pytest.mark.parametrize(("case", "options", "damage", "error", "fragment"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusals_leave_the_store_untouched(world, pods, keys, case, options, damage, error, fragment):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=4, personas=("db",))))
    before = snapshot(Path(store.root))
    options = dict(options)
    key = keys[options.pop("key", "ops")]
    st = stage(tmp, pods, key, **options)
    if damage is not None:
        damage(st, pods)
    with pytest.raises(error) as info:
        import_stage(store, str(st))
    if fragment == "untrusted key":
        assert key.key_id_hex in info.value.message
    else:
        assert fragment in info.value.message
    assert snapshot(Path(store.root)) == before
    assert store.load().inventory.version == 4


def test_load_refuses_what_expired_since_import(world, pods, keys):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=2, days=1)))
    store.clock = lambda: NOW + 2 * 86400
    with pytest.raises(ExpiredError):
        store.load()


def test_load_refuses_a_current_tampered_on_persist(world, pods, keys):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=2)))
    _tamper(Path(store.root) / "current")
    with pytest.raises(BadSignatureError):
        store.load()


def test_load_refuses_below_the_floor_and_heals_a_lagging_floor(world, pods, keys):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=2)))
    floor = Path(store.root) / "inventory.floor"
    floor.write_text("1\n")  # crash between the swap and the floor write
    assert store.load().inventory.version == 2 and store.floor() == 2
    floor.write_text("9\n")
    with pytest.raises(RollbackError):
        store.load()
    floor.write_text("nine")
    with pytest.raises(FormatError, match="inventory.floor holds 'nine'"):
        store.floor()


def test_a_crash_at_the_commit_point_keeps_the_old_inventory(world, pods, keys, monkeypatch):
    tmp, store = world
    import_stage(store, str(stage(tmp, pods, keys["ops"], version=2, personas=("db",))))
    st = stage(tmp, pods, keys["ops"], version=3, personas=("web",))
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("/current"):
            raise OSError(5, "simulated power loss")
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        import_stage(store, str(st))
    monkeypatch.setattr(store_mod.os, "replace", real_replace)
    loaded = store.load()
    assert loaded.inventory.version == 2
    assert all(os.path.exists(loaded.pod_path(p)) for p in loaded.inventory.personas)
    assert import_stage(store, str(st)).imported  # and the retry completes


def test_import_yields_between_chunks(world, pods, keys, monkeypatch):
    tmp, store = world
    monkeypatch.setattr(store_mod, "CHUNK", 4096)
    st = stage(tmp, pods, keys["ops"], version=1, personas=("db",))
    steps = sum(1 for _ in store.import_steps(str(st)))
    assert steps >= (pods / "db.img").stat().st_size // 4096


def test_missing_trust_roots(world, pods, keys, tmp_path):
    _, store = world
    store.keys_dir = str(tmp_path / "nokeys")
    with pytest.raises(NotFoundError, match="trust-root keys: cannot read"):
        import_stage(store, str(stage(tmp_path, pods, keys["ops"], version=1)))
    (tmp_path / "nokeys").mkdir()
    with pytest.raises(NotFoundError, match="no trust-root keys in"):
        store_mod.load_trusted_keys(str(tmp_path / "nokeys"))


def test_find_partition(tmp_path):
    sysfs = tmp_path / "sys"
    for node, name in (("vda", None), ("vda5", "spine_stage"), ("vda6", "persist")):
        (sysfs / "class/block" / node).mkdir(parents=True)
        text = f"DEVNAME={node}\n" + (f"PARTNAME={name}\n" if name else "")
        (sysfs / "class/block" / node / "uevent").write_text(text)
    assert store_mod.find_partition(sysfs=str(sysfs)) == "/dev/vda5"
    assert store_mod.find_partition("nothing", sysfs=str(sysfs)) is None
    (sysfs / "class/block/sdb1").mkdir()
    (sysfs / "class/block/sdb1/uevent").write_text("DEVNAME=sdb1\nPARTNAME=spine_stage\n")
    with pytest.raises(FormatError, match="partition spine_stage found 2 times"):
        store_mod.find_partition(sysfs=str(sysfs))
