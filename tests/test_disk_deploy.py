"""`deploy` and `provision --inventory`: the staging area bay0 imports from (real ext4)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from bay0.formats import minisign
from pipeline.disk.layout import STAGE, read_layout
from tests.conftest import require_tool
from tests.diskkit import SMALL_ARGS, blank_disk, make_spine

PERSONA = ["--cpu", "0.25", "--memory", "64M", "--pids", "32", "--command", "/bin/app"]


@pytest.fixture
def ws(spinectl, tmp_path) -> Path:
    require_tool("mksquashfs", "mkfs.ext4", "debugfs")
    from pipeline.image import build_image

    key = minisign.SecretKey.generate()
    (tmp_path / "ops.key").write_text(key.to_text(None))
    (tmp_path / "ops.pub").write_text(key.public_key.to_text())
    pods = tmp_path / "pods"
    pods.mkdir()
    for name in ("web", "job"):
        tree = tmp_path / f"{name}-tree" / "bin"
        tree.mkdir(parents=True)
        (tree / "app").write_text(f"#!/bin/sh\necho {name}\n")
        build_image(tree.parent, pods / f"{name}.img")
    spine = make_spine(tmp_path, key, "1.0")
    assert spinectl("inventory", "create", "inv.json").code == 0
    for name in ("web", "job"):
        r = spinectl("inventory", "add", "inv.json", "--name", name, "--image",
                     str(pods / f"{name}.img"), *PERSONA)
        assert r.code == 0, r.err
    assert spinectl("inventory", "sign", "inv.json", "--key", "ops.key").code == 0
    disk = blank_disk(tmp_path / "disk.img")
    r = spinectl("provision", str(disk), "--spine", str(spine), "--pubkey", "ops.pub", "--yes",
                 *SMALL_ARGS)
    assert r.code == 0, r.err
    return tmp_path


def stage_files(disk: Path, scratch: Path) -> dict[str, str]:
    """sha256 of every file in the staging ext4, read with debugfs (nothing mounted)."""
    part = read_layout(str(disk)).parts[STAGE]
    image = scratch / "stage.ext4"
    with open(disk, "rb") as src, open(image, "wb") as dst:
        src.seek(part.start)
        dst.write(src.read(part.size))
    out = {}
    for directory in ("", "pods"):
        listing = subprocess.run(["debugfs", "-R", f"ls -p /{directory}", str(image)],
                                 capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            fields = line.split("/")
            if len(fields) < 7 or not fields[2].startswith("100"):
                continue  # not a regular file
            name = f"{directory}/{fields[5]}".lstrip("/")
            dump = scratch / "dump"
            subprocess.run(["debugfs", "-R", f"dump /{name} {dump}", str(image)], check=True,
                           capture_output=True)
            out[name] = hashlib.sha256(dump.read_bytes()).hexdigest()
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deploy_writes_inventory_and_pods(spinectl, ws: Path, tmp_path) -> None:
    r = spinectl("deploy", "disk.img", "--inventory", "inv.json", "--pods", "pods",
                 "--pubkey", "ops.pub")
    assert r.code == 0, r.err
    files = stage_files(ws / "disk.img", tmp_path)
    assert files == {
        "inventory.json": sha(ws / "inv.json"),
        "inventory.json.minisig": sha(ws / "inv.json.minisig"),
        "pods/web.img": sha(ws / "pods/web.img"),
        "pods/job.img": sha(ws / "pods/job.img"),
    }


@pytest.mark.parametrize(
    "case, code, fragment",
    [
        ("tampered", 4, "signature"),
        ("missing-pod", 6, "does not exist"),
        ("swapped-pod", 4, "differs"),
        ("unknown-key", 4, "not trusted"),
        ("no-layout", 8, "lacks the Spine layout"),
    ],
)
def test_deploy_refusals_leave_the_stage_untouched(case, code, fragment, spinectl, ws: Path,
                                                    tmp_path) -> None:
    disk, pubkey = "disk.img", "ops.pub"
    if case == "tampered":
        (ws / "inv.json").write_bytes((ws / "inv.json").read_bytes().replace(b'"web"', b'"wob"'))
    elif case == "missing-pod":
        (ws / "pods/job.img").unlink()
    elif case == "swapped-pod":
        shutil.copy(ws / "pods/web.img", ws / "pods/job.img")
    elif case == "unknown-key":
        other = minisign.SecretKey.generate()
        (ws / "other.pub").write_text(other.public_key.to_text())
        pubkey = "other.pub"
    elif case == "no-layout":
        disk = str(blank_disk(ws / "blank.img"))
    before = stage_files(ws / "disk.img", tmp_path)
    r = spinectl("deploy", disk, "--inventory", "inv.json", "--pods", "pods", "--pubkey", pubkey)
    assert r.code == code, r.err
    assert fragment in r.err and len(r.err.strip().splitlines()) == 1
    assert stage_files(ws / "disk.img", tmp_path) == before


def test_provision_with_inventory(spinectl, ws: Path, tmp_path) -> None:
    disk = blank_disk(ws / "second.img")
    r = spinectl("provision", str(disk), "--spine", "1.0.spine", "--pubkey", "ops.pub",
                 "--inventory", "inv.json", "--pods", "pods", "--yes", *SMALL_ARGS)
    assert r.code == 0, r.err
    assert set(stage_files(disk, tmp_path)) == {"inventory.json", "inventory.json.minisig",
                                               "pods/web.img", "pods/job.img"}


def test_deploy_too_big_for_the_stage(spinectl, ws: Path) -> None:
    with open(ws / "pods/web.img", "ab") as f:  # a pod larger than the 16 MiB staging area
        f.truncate(20 * 1024 * 1024)
    r = spinectl("deploy", "disk.img", "--inventory", "inv.json", "--pods", "pods",
                 "--pubkey", "ops.pub")
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1
