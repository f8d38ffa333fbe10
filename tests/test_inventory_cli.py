"""spinectl inventory end to end: real pod images (mksquashfs), real keys, stock minisign."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bay0.formats import canonical, minisign
from spinectl import inventory as service
from tests.conftest import require_tool

PERSONA = ["--cpu", "0.5", "--memory", "256M", "--pids", "64", "--command", "/bin/app -f"]


@pytest.fixture(scope="module")
def pods(tmp_path_factory) -> Path:
    """Two small real pod images (squashfs + verity) with different content."""
    require_tool("mksquashfs")
    from pipeline.image import build_image

    root = tmp_path_factory.mktemp("pods")
    for name in ("web", "db"):
        tree = root / f"{name}-tree" / "bin"
        tree.mkdir(parents=True)
        (tree / "app").write_text(f"#!/bin/sh\necho {name}\n")
        build_image(tree.parent, root / f"{name}.img")
    return root


@pytest.fixture
def ws(spinectl, pods, tmp_path):
    """A work dir with pods, a key pair and an inventory holding persona web."""
    for name in ("web.img", "db.img"):
        shutil.copy(pods / name, tmp_path / name)
    # Key files written directly: test scratch may live inside the repository, where
    # `spinectl keys generate` rightly refuses to put a private key.
    (tmp_path / "keys").mkdir()
    for name in ("ops", "intruder"):
        key = minisign.SecretKey.generate()
        (tmp_path / f"keys/{name}.key").write_text(key.to_text(None))
        (tmp_path / f"keys/{name}.pub").write_text(key.public_key.to_text())
    (tmp_path / "trusted").mkdir()
    shutil.copy(tmp_path / "keys/ops.pub", tmp_path / "trusted/ops.pub")
    assert spinectl("inventory", "create", "inv.json").code == 0
    r = spinectl("inventory", "add", "inv.json", "--name", "web", "--image", "web.img", *PERSONA)
    assert r.code == 0, r.err
    return tmp_path


def sign(spinectl, *extra: str):
    return spinectl("inventory", "sign", "inv.json", "--key", "keys/ops.key", *extra)


def verify(spinectl, *extra: str):
    return spinectl("inventory", "verify", "inv.json", "--pubkey", "trusted", *extra)


def test_full_operator_flow(spinectl, ws: Path) -> None:
    r = spinectl("inventory", "add", "inv.json", "--name", "db", "--image", "db.img",
                 "--cpu", "0.25", "--memory", "64M", "--pids", "32", "--command", "/bin/app",
                 "--address", "10.0.0.3/24", "--gateway", "10.0.0.1",
                 "--egress", "10.0.0.1/32:tcp:5432", "--egress", "fd00::/64:udp:53",
                 "--seccomp", "network-service", "--mount", "db/data:/var/lib/db:rw",
                 "--user", "2000:2001", "--env", "LANG=C", "--restart", "always")
    assert r.code == 3 and "fd00::/64 is not IPv4" in r.err  # one bad rule: nothing written
    r = spinectl("inventory", "add", "inv.json", "--name", "db", "--image", "db.img",
                 "--cpu", "0.25", "--memory", "64M", "--pids", "32", "--command", "/bin/app",
                 "--address", "10.0.0.3/24", "--gateway", "10.0.0.1",
                 "--egress", "10.0.0.1/32:tcp:5432", "--seccomp", "network-service",
                 "--mount", "db/data:/var/lib/db:rw", "--user", "2000:2001", "--env", "LANG=C",
                 "--restart", "always")
    assert r.code == 0, r.err
    assert spinectl("inventory", "shell", "add", "inv.json", "tier", "--cpu", "1",
                    "--memory", "1G", "--pids", "256").code == 0
    assert spinectl("inventory", "update", "inv.json", "--name", "db", "--shell", "tier").code == 0
    listing = json.loads(spinectl("inventory", "list", "inv.json", "--json").out)
    assert listing["version"] == 0 and listing["signed"] is False
    assert [p["name"] for p in listing["personas"]] == ["web", "db"]
    db = json.loads(spinectl("inventory", "show", "inv.json", "db", "--json").out)
    assert db["ceilings"] == {"cpu_max": "25000 100000", "memory_max": 64 << 20, "pids_max": 32}
    assert db["user"] == {"uid": 2000, "gid": 2001} and db["shell"] == "tier"
    assert db["mounts"] == [{"source": "db/data", "target": "/var/lib/db", "rw": True,
                             "exec": False}]
    assert db["network"]["egress"] == [{"dest": "10.0.0.1/32", "proto": "tcp", "port": 5432}]
    from pipeline.image import read_identity

    ident = read_identity(ws / "db.img")
    assert db["image"] == {"file": "db.img", **ident.to_dict()}

    r = sign(spinectl, "--expires-days", "30")
    assert r.code == 0, r.err and "version 1" in r.out
    data = (ws / "inv.json").read_bytes()
    assert canonical.is_canonical(data)
    r = verify(spinectl, "--pods", ".", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["version"] == 1 and report["key_id"] and len(report["pods"]) == 2
    listing = json.loads(spinectl("inventory", "list", "inv.json", "--json").out)
    assert listing["signed"] is True and listing["expires"] - listing["created"] == 30 * 86400


def test_stock_minisign_accepts_and_is_accepted(spinectl, ws: Path) -> None:
    require_tool("minisign")
    assert sign(spinectl).code == 0
    ok = subprocess.run(["minisign", "-Vm", "inv.json", "-p", "keys/ops.pub"], cwd=ws,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "version:1" in ok.stdout, ok.stderr
    # A stock-minisign key and signature over the same canonical bytes.
    subprocess.run(["minisign", "-G", "-W", "-p", "mk.pub", "-s", "mk.key"], cwd=ws,
                   check=True, capture_output=True)
    subprocess.run(["minisign", "-S", "-s", "mk.key", "-m", "inv.json", "-x", "stock.minisig"],
                   cwd=ws, check=True, capture_output=True)
    os.replace(ws / "stock.minisig", ws / "inv.json.minisig")
    r = spinectl("inventory", "verify", "inv.json", "--pubkey", "mk.pub")
    assert r.code == 0, r.err


def test_sign_bumps_version_monotonically(spinectl, ws: Path) -> None:
    assert sign(spinectl).code == 0 and sign(spinectl).code == 0
    assert json.loads(spinectl("inventory", "list", "inv.json", "--json").out)["version"] == 2
    r = sign(spinectl, "--version", "2")
    assert r.code == 2 and "not above the current version 2" in r.err
    assert sign(spinectl, "--version", "40").code == 0
    assert verify(spinectl, "--floor", "40").code == 0


def test_edit_drops_the_signature_and_failed_edit_keeps_it(spinectl, ws: Path) -> None:
    assert sign(spinectl).code == 0
    before = (ws / "inv.json").read_bytes()
    r = spinectl("inventory", "update", "inv.json", "--name", "web", "--mount", "x:/x:exec")
    assert r.code == 3 and "persona web: mounts[0]: exec on a read-only mount" in r.err
    assert (ws / "inv.json").read_bytes() == before and (ws / "inv.json.minisig").exists()
    assert verify(spinectl).code == 0
    assert spinectl("inventory", "update", "inv.json", "--name", "web", "--pids", "65").code == 0
    assert not (ws / "inv.json.minisig").exists()
    r = verify(spinectl)
    assert r.code == 6 and "inv.json.minisig does not exist" in r.err


def test_update_image_rereads_identity(spinectl, ws: Path) -> None:
    old = json.loads(spinectl("inventory", "show", "inv.json", "web", "--json").out)
    assert spinectl("inventory", "update", "inv.json", "--name", "web", "--image", "db.img").code == 0
    new = json.loads(spinectl("inventory", "show", "inv.json", "web", "--json").out)
    assert new["image"]["file"] == "db.img" and new["image"]["root_hash"] != old["image"]["root_hash"]
    assert new["ceilings"] == old["ceilings"] and new["command"] == old["command"]


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--cpu", "0.5", "--memory", "1G", "--command", "/bin/a"], 3, "missing ceiling --pids"),
        (["--memory", "1G", "--pids", "3", "--command", "/bin/a"], 3, "missing ceiling --cpu"),
        ([*PERSONA, "--mount", "../etc:/etc"], 3, "escapes /persist"),
        ([*PERSONA, "--mount", "/etc:/etc"], 3, "is absolute"),
        ([*PERSONA, "--seccomp", "unconfined"], 3, "unknown profile 'unconfined'"),
        ([*PERSONA, "--network", "host"], 2, "only \"none\" is a mode"),
        ([*PERSONA, "--network", "none", "--address", "10.0.0.2/24"], 2, "contradicts"),
        ([*PERSONA, "--egress", "10.0.0.1/32:tcp:80"], 2, "need --address"),
        ([*PERSONA, "--address", "10.0.0.2/24", "--egress", "10.0.0.1:80"], 2, "DEST/PREFIX"),
        ([*PERSONA, "--user", "0:0"], 3, "user.uid: 0 is outside"),
        ([*PERSONA, "--shell", "nope"], 3, "shell: 'nope' is not defined"),
        (["--cpu", "0.001", "--memory", "1G", "--pids", "3", "--command", "/a"], 3, "kernel min"),
        (["--cpu", "1/2", "--memory", "1G", "--pids", "3", "--command", "/a"], 2, "CPUs"),
        (["--cpu", "1", "--memory", "lots", "--pids", "3", "--command", "/a"], 2, "not a size"),
    ],
)
def test_bad_persona_input(spinectl, ws: Path, args, code: int, fragment: str) -> None:
    before = (ws / "inv.json").read_bytes()
    r = spinectl("inventory", "add", "inv.json", "--name", "api", "--image", "web.img", *args)
    assert r.code == code and fragment in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "hint:" in r.err
    assert (ws / "inv.json").read_bytes() == before


def test_purge_bumps_the_generation(spinectl, ws: Path) -> None:
    assert sign(spinectl).code == 0
    assert spinectl("inventory", "purge", "inv.json", "web").code == 0
    assert spinectl("inventory", "purge", "inv.json", "web").code == 0
    assert not (ws / "inv.json.minisig").exists()
    assert json.loads(spinectl("inventory", "show", "inv.json", "web", "--json").out)["purge"] == 2
    assert spinectl("inventory", "update", "inv.json", "--name", "web", "--pids", "9").code == 0
    assert json.loads(spinectl("inventory", "show", "inv.json", "web", "--json").out)["purge"] == 2
    assert spinectl("inventory", "purge", "inv.json", "nope").code == 6


def test_names_exist_or_not(spinectl, ws: Path) -> None:
    r = spinectl("inventory", "add", "inv.json", "--name", "web", "--image", "web.img", *PERSONA)
    assert r.code == 5 and "persona web already exists" in r.err
    assert spinectl("inventory", "remove", "inv.json", "nope").code == 6
    assert spinectl("inventory", "show", "inv.json", "nope").code == 6
    assert spinectl("inventory", "update", "inv.json", "--name", "nope", "--pids", "1").code == 6
    r = spinectl("inventory", "add", "inv.json", "--name", "api", "--image", "gone.img", *PERSONA)
    assert r.code == 6 and "gone.img does not exist" in r.err
    (ws / "junk.img").write_bytes(b"\0" * 8192)
    r = spinectl("inventory", "add", "inv.json", "--name", "api", "--image", "junk.img", *PERSONA)
    assert r.code == 3 and "junk.img" in r.err
    assert spinectl("inventory", "remove", "inv.json", "web").code == 0
    assert json.loads(spinectl("inventory", "list", "inv.json", "--json").out)["personas"] == []


def test_shells_budget_and_membership(spinectl, ws: Path) -> None:
    assert spinectl("inventory", "shell", "add", "inv.json", "tier", "--cpu", "0.5",
                    "--memory", "256M", "--pids", "64").code == 0
    r = spinectl("inventory", "shell", "add", "inv.json", "tier", "--cpu", "1")
    assert r.code == 5
    r = spinectl("inventory", "shell", "add", "inv.json", "t2", "--cpu", "1", "--memory", "1G")
    assert r.code == 3 and "shell t2: budget: missing ceiling --pids" in r.err
    assert spinectl("inventory", "update", "inv.json", "--name", "web", "--shell", "tier").code == 0
    r = spinectl("inventory", "update", "inv.json", "--name", "web", "--cpu", "0.6")
    assert r.code == 3 and "shell tier: over budget: cpu of web sums to 0.6 > 0.5 CPUs" in r.err
    r = spinectl("inventory", "shell", "add", "inv.json", "tier", "--cpu", "0.5",
                 "--memory", "128M", "--pids", "64", "--force")
    assert r.code == 3 and "over budget: memory" in r.err
    r = spinectl("inventory", "shell", "remove", "inv.json", "tier")
    assert r.code == 2 and "still holds web" in r.err
    assert spinectl("inventory", "update", "inv.json", "--name", "web", "--no-shell").code == 0
    assert spinectl("inventory", "shell", "remove", "inv.json", "tier").code == 0


def test_create_never_overwrites_without_force(spinectl, ws: Path) -> None:
    assert sign(spinectl).code == 0
    r = spinectl("inventory", "create", "inv.json")
    assert r.code == 5 and "--force" in r.err
    assert verify(spinectl).code == 0
    assert spinectl("inventory", "create", "inv.json", "--force").code == 0
    assert not (ws / "inv.json.minisig").exists()
    assert json.loads(spinectl("inventory", "list", "inv.json", "--json").out)["personas"] == []


@pytest.mark.parametrize(
    "setup, code, fragment",
    [
        (lambda ws: None, 4, "below the accepted floor 5"),
        (lambda ws: (ws / "trusted/ops.pub").unlink() or shutil.copy(
            ws / "keys/intruder.pub", ws / "trusted/x.pub"), 4, "not trusted"),
        (lambda ws: (ws / "inv.json").write_bytes(
            (ws / "inv.json").read_bytes().replace(b'"pids_max":64', b'"pids_max":65')), 4,
         "does not match the data"),
        (lambda ws: shutil.copy(ws / "db.img", ws / "web.img"), 4, "persona web: image"),
        (lambda ws: (ws / "web.img").unlink(), 6, "web.img does not exist"),
    ],
    ids=["rollback", "unknown-key", "tampered", "swapped-pod", "missing-pod"],
)
def test_verify_refuses(spinectl, ws: Path, setup, code: int, fragment: str) -> None:
    assert sign(spinectl).code == 0
    setup(ws)
    r = verify(spinectl, "--floor", "5" if fragment.startswith("below") else "1", "--pods", ".")
    assert r.code == code and fragment in r.err, r.err


def test_verify_refuses_expired(spinectl, ws: Path) -> None:
    assert sign(spinectl, "--expires-days", "1").code == 0
    expires = json.loads(spinectl("inventory", "list", "inv.json", "--json").out)["expires"]
    assert verify(spinectl, "--at", str(expires - 1)).code == 0
    r = verify(spinectl, "--at", str(expires))
    assert r.code == 4 and "expired" in r.err


# --- crash consistency of the FILE + FILE.minisig pair ---------------------------------


def _pair(ws: Path) -> tuple[bytes, bytes]:
    return (ws / "inv.json").read_bytes(), (ws / "inv.json.minisig").read_bytes()


@pytest.mark.parametrize("crash_at, expect", [(1, "old"), (2, "new")])
def test_sign_crash_leaves_old_or_new_pair(spinectl, ws: Path, monkeypatch, crash_at, expect):
    """Crash at the commit rename (1) or after it (2); the next command sees one whole pair."""
    assert sign(spinectl).code == 0
    old = _pair(ws)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        if str(src).endswith(".new"):  # the two publishing renames, not write_atomic's own
            calls.append(dst)
        if str(src).endswith(".new") and len(calls) == crash_at:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(service.os, "replace", crashing_replace)
    assert sign(spinectl).code == 130
    monkeypatch.setattr(service.os, "replace", real_replace)
    assert len(list(ws.glob("*.new"))) == (2 if expect == "old" else 1)
    r = verify(spinectl, "--json")  # recovery runs first
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == (1 if expect == "old" else 2)
    assert (_pair(ws) == old) == (expect == "old")
    assert not list(ws.glob("*.new"))


def test_sign_crash_while_writing_keeps_old_pair(spinectl, ws: Path, monkeypatch) -> None:
    assert sign(spinectl).code == 0
    old = _pair(ws)
    real_write = service.write_atomic

    def failing_write(path, data, **kw):
        if str(path).endswith("inv.json.new"):
            raise OSError(28, "No space left on device")
        return real_write(path, data, **kw)

    monkeypatch.setattr(service, "write_atomic", failing_write)
    assert sign(spinectl).code == 12  # storage error: a full disk, named as such
    monkeypatch.setattr(service, "write_atomic", real_write)
    assert verify(spinectl).code == 0 and _pair(ws) == old
    assert not list(ws.glob("*.new"))


def test_concurrent_edit_is_refused(spinectl, ws: Path) -> None:
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = spinectl("inventory", "update", "inv.json", "--name", "web", "--pids", "2")
        assert r.code == 2 and "another spinectl is editing" in r.err
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "text, expected",
    [("0.5", "50000 100000"), ("2", "200000 100000"), ("0.01", "1000 100000"),
     (" 1.25 ", "125000 100000")],
)
def test_parse_cpu(text: str, expected: str) -> None:
    assert service.parse_cpu(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "0.000001", "nan", "inf", "1e400x", "1/2"])
def test_parse_cpu_rejects(text: str) -> None:
    from bay0.errors import UsageError

    with pytest.raises(UsageError):
        service.parse_cpu(text)


@pytest.mark.parametrize(
    "text, expected",
    [("256M", 256 << 20), ("1G", 1 << 30), ("512MiB", 512 << 20), ("4096", 4096),
     ("64k", 64 << 10)],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert service.parse_memory(text) == expected


def test_parse_mount_egress_user() -> None:
    m = service.parse_mount("data:/data:rw:exec")
    assert (m.source, m.target, m.rw, m.exec) == ("data", "/data", True, True)
    assert not service.parse_mount("data:/data").rw
    e = service.parse_egress("fd00::/64:udp:53")
    assert (e.dest, e.proto, e.port) == ("fd00::/64", "udp", 53)
    assert service.parse_user("1000") == (1000, 1000)
    assert service.parse_user("1000:2000") == (1000, 2000)


def test_real_process_gives_one_line_and_exit_code(spinectl_proc, tmp_path: Path) -> None:
    (tmp_path / "inv.json").write_bytes(b'{"format":"spine-inventory/9"}')
    r = spinectl_proc("inventory", "list", "inv.json")
    assert r.returncode == 3 and b"Traceback" not in r.stderr
    assert r.stderr.decode().strip() == (
        "spinectl: error: unsupported inventory format spine-inventory/9 "
        "(hint: upgrade spinectl/bay0)"
    )
