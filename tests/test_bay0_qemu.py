"""The real bay0 as PID 1 of the real test Spine, in QEMU (TCG): READY, a verified
inventory imported from the staging partition, personas attached through loop +
dm-verity and launched, restart with backoff then purge, mark-good after the uptime,
and a wedged bay0 reset by the i6300esb watchdog.

The Spine is built from pipeline/recipes/spine-test.toml with a throwaway trust root
(the repository's keys/ holds none); boots are direct kernel boots with the cached test
initramfs. Three boots, about four minutes of TCG time in all.
"""

from __future__ import annotations

import shutil

import pytest

from bay0.formats import minisign
from bay0.log import parse_line
from pipeline import qemu
from pipeline.run import run
from tests.conftest import require_tool

pytestmark = [pytest.mark.qemu, pytest.mark.slow]
APPEND = "console=ttyS0 quiet panic=-1"


@pytest.fixture(scope="module")
def kit(tmp_path_factory, alpine):
    """(kernel, initrd, spine image, identity, signing key) for the test Spine."""
    require_tool("qemu-system-x86_64", "mksquashfs", "mkfs.ext4", "sfdisk", "apt-get", "dpkg-deb")
    from pipeline import build, initramfs
    from pipeline.paths import PROJECT_ROOT
    from pipeline.recipe import load_recipe

    work = tmp_path_factory.mktemp("bay0-qemu")
    key = minisign.SecretKey.generate()
    (work / "keys").mkdir()
    (work / "keys/test.pub").write_text(key.public_key.to_text())
    text = (PROJECT_ROOT / "pipeline/recipes/spine-test.toml").read_text()
    text = text.replace('keys = ["@keys"]', f'keys = ["{work}/keys"]')
    (work / "spine-test.toml").write_text(text)
    result = build.build_spine(load_recipe(work / "spine-test.toml"), key, work / "test.spine")
    image = work / "spine.img"
    with open(work / "test.spine", "rb") as src, open(image, "wb") as out:
        out.write(src.read(result.identity.size))
    kernel, initrd = initramfs.cached_test_initramfs()
    return kernel, initrd, image, result.identity, key, work


def stage_image(kit, version: int, personas: list[tuple[str, str, dict]]) -> bytes:
    """An ext4 staging filesystem: inventory ``version`` signed by the trust root + one pod."""
    from pipeline.image import build_image
    from spinectl import inventory as service

    *_, key, work = kit
    stage = work / f"stage-{version}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "pods").mkdir(parents=True)
    tree = work / "pod-tree"
    if not tree.exists():
        for d in ("bin", "proc", "dev", "tmp", "data"):
            (tree / d).mkdir(parents=True)
        shutil.copy(shutil.which("busybox"), tree / "bin/busybox")
    build_image(tree, stage / "pods/app.img", force=True)
    doc = stage / "inventory.json"
    service.create(doc)
    for name, script, options in personas:
        values = {"cpu": "0.5", "memory": "64M", "pids": 32, **options}
        service.add_persona(doc, service.PersonaOptions(
            name=name, image=str(stage / "pods/app.img"), command=f"/bin/busybox sh -c '{script}'",
            **values))
    service.sign(doc, key, version=version)
    fs = work / f"stage-{version}.ext4"
    fs.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-d", str(stage), str(fs), "16M"])
    return fs.read_bytes()


@pytest.fixture(scope="module")
def disk(kit):
    from tests.e2e import vmdisk

    _, _, image, ident, _, work = kit
    slot = ident.size // (1 << 20) + 2
    layout = (("SPINE_ESP", 16), ("spine_a", slot), ("spine_b", slot), ("spine_state", 1),
              ("spine_stage", 16), ("persist", 40))
    d = vmdisk.make_disk(work / "disk.img", layout=layout)
    vmdisk.provision(d, image, ident)
    return d


def boot(kit, disk, append: str, stop_when: str | None, timeout: float = 200,
         **fields) -> qemu.VmResult:
    kernel, initrd, *_, work = kit
    cfg = qemu.VmConfig(disk=disk.path, kernel=kernel.vmlinuz, initrd=initrd,
                        append=f"{APPEND} {append}", timeout=timeout,
                        console_log=work / f"console-{len(list(work.glob('console-*')))}.txt",
                        **fields)
    return qemu.boot(cfg, stop_when=stop_when)


def events(result: qemu.VmResult, name: str) -> list[dict]:
    return [e for e in map(parse_line, result.lines("bay0: event=")) if e.get("event") == name]


def test_personas_run_and_the_slot_is_marked_good_after_the_uptime(kit, disk):
    disk.write_at("spine_stage", 0, stage_image(kit, 1, [
        ("web", "while true; do echo alive; sleep 5; done", {"user": "1000:1000",
                                                               "mounts": ("webdata:/data:rw",)}),
        ("job", "echo done", {"user": "1001:1001"}),
    ]))
    result = boot(kit, disk, "spine.good_after=25", r"event=slot\.good ")
    assert result.outcome == qemu.MATCHED, result.console[-3000:]
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    assert events(result, "stage.import")[0]["version"] == "1"
    assert {e["name"] for e in events(result, "persona.start")} == {"web", "job"}
    assert {"name": "web", "line": "alive", "event": "persona.output"} in events(result, "persona.output")
    assert events(result, "persona.stopped")[0]["clean"] == "true"
    good = events(result, "slot.good")[0]
    assert good["slot"] == "A" and float(good["uptime"]) >= 25
    verified = events(result, "root.verified")[0]  # the whole root read through dm-verity first
    assert verified["device"].startswith("/dev/dm-") and int(verified["bytes"]) == disk.state().slot("A").data_size
    lines = result.lines("bay0: event=")
    assert lines.index(next(x for x in lines if "event=root.verified" in x)) < \
        lines.index(next(x for x in lines if "event=slot.good" in x))
    assert not result.lines("bay0: VIOLATION")
    assert disk.state().slot("A").good and disk.state().slot("A").tries_left == 3  # refilled


def test_a_failing_persona_is_restarted_with_backoff_then_purged(kit, disk):
    disk.write_at("spine_stage", 0, stage_image(kit, 2, [
        ("web", "while true; do echo alive; sleep 5; done", {"user": "1000:1000"}),
        ("flaky", "echo failing; exit 3", {"user": "1001:1001", "max_restarts": 1, "backoff": 1}),
    ]))
    result = boot(kit, disk, "", r"event=persona\.purge name=flaky")
    assert result.outcome == qemu.MATCHED, result.console[-3000:]
    assert events(result, "stage.import")[0]["version"] == "2"
    assert [e["delay"] for e in events(result, "persona.restart")] == ["1"]
    assert events(result, "persona.purge")[0]["reason"] == "failed 2 times in a row (max_restarts 1)"


def test_a_wedged_bay0_is_reset_by_the_watchdog_and_says_so_next_boot(kit, disk):
    result = boot(kit, disk, "spine.watchdog=4 spine.test.wedge=1", r"last_reset=watchdog",
                  timeout=150, no_reboot=False)
    assert result.outcome == qemu.MATCHED, result.console[-3000:]
    first, second = events(result, "watchdog.open")[:2]
    assert first["timeout"] == "4" and first["identity"] == "i6300ESB timer"
    assert first["last_reset"] == "other" and events(result, "test.wedge")
    assert (second["last_reset"], second["boot_status"]) == ("watchdog", "0x20")


def test_balloon_bomb_and_hog_hit_their_own_ceilings_while_web_answers(kit, disk):
    disk.write_at("spine_stage", 0, stage_image(kit, 3, [
        ("web", "i=0; while true; do i=$((i+1)); echo alive $i; sleep 2; done", {"user": "1000:1000"}),
        ("balloon", "x=0123456789; while true; do x=$x$x; done",
         {"user": "1001:1001", "max_restarts": 0}),
        ("bomb", "f() { f | f & }; f; sleep 1000", {"user": "1002:1002"}),
        ("hog", "while true; do :; done", {"user": "1003:1003", "cpu": "0.2"}),
    ]))
    result = boot(kit, disk, "", r'line="alive 15"')
    assert result.outcome == qemu.MATCHED, result.console[-3000:]
    memory = [e for e in events(result, "persona.memory_event") if e["name"] == "balloon"]
    assert any(int(e.get("oom_kill", 0)) >= 1 for e in memory), result.console[-3000:]
    pids = [e for e in events(result, "persona.pids_event") if e["name"] == "bomb"]
    assert pids and int(pids[0]["max"]) >= 1
    assert events(result, "persona.purge")[0]["name"] == "balloon"
    assert not [e for e in events(result, "persona.exit") if e["name"] == "web"]
    hog = [e for e in events(result, "persona.cpu_throttled") if e["name"] == "hog"]
    assert hog and all(float(e["share"]) <= 0.25 for e in hog), hog
    done = events(result, "startup.done")[0]
    print(f"\nbay0 startup.done uptime={done['uptime']} rss_kib={done['rss_kib']}")


def test_a_tampered_staged_inventory_is_refused_and_nothing_changes(kit, disk, tmp_path):
    fs = tmp_path / "stage.ext4"
    fs.write_bytes(stage_image(kit, 50, [("web", "sleep 1000", {"user": "1000:1000"})]))
    debugfs_path = tmp_path / "inventory.json"
    run(["debugfs", "-R", f"dump /inventory.json {debugfs_path}", str(fs)])
    tampered = debugfs_path.read_bytes().replace(b'"pids_max":32', b'"pids_max":33')
    debugfs_path.write_bytes(tampered)
    run(["debugfs", "-w", "-R", "rm /inventory.json", str(fs)])
    run(["debugfs", "-w", "-R", f"write {debugfs_path} /inventory.json", str(fs)])
    disk.write_at("spine_stage", 0, fs.read_bytes())
    result = boot(kit, disk, "", r"event=startup\.done")
    assert result.outcome == qemu.MATCHED, result.console[-3000:]
    refused = events(result, "stage.refused")[0]
    assert refused["kind"] == "BadSignatureError", refused
    loaded = events(result, "inventory.loaded") or events(result, "inventory.none")
    assert loaded and loaded[0].get("version") != "50"
