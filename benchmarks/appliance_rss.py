"""bay0's resident memory on the booted appliance with three personas running.

Used by ``benchmarks/launch.py --appliance``: builds the test Spine (cached), one pod,
a signed inventory of three personas, provisions a disk with them staged, boots it in
QEMU (TCG, direct kernel boot) and reads bay0's own RSS from its ``persona.start``
events (``bay0_rss_kib``, read from /proc/self/status by bay0 itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bay0.formats import minisign
from bay0.log import parse_line
from pipeline import build, initramfs, qemu, spine
from pipeline.disk.layout import LayoutSpec
from pipeline.disk.provision import ProvisionRequest, provision
from pipeline.image import build_image
from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import load_recipe
from spinectl import inventory as service

PERSONAS = ("rss-a", "rss-b", "rss-c")


def measure(work: Path) -> float:
    """MiB of bay0's RSS once the third persona has started."""
    work.mkdir(parents=True, exist_ok=True)
    key = minisign.SecretKey.generate()
    (work / "op.pub").write_text(key.public_key.to_text())
    recipe = load_recipe(PROJECT_ROOT / "pipeline" / "recipes" / "spine-test.toml")
    build.build_spine(recipe.with_trust_keys(recipe.trust_keys + (work / "op.pub",)), key,
                      work / "rss.spine", force=True)
    art = spine.open_spine(work / "rss.spine", [key.public_key])
    tree = work / "pod-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "proc", "dev", "tmp"):
        (tree / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox"), tree / "bin" / "busybox")
    (work / "pods").mkdir(exist_ok=True)
    build_image(tree, work / "pods" / "app.img", force=True)
    doc = work / "inventory.json"
    for stale in (doc, work / "inventory.json.minisig"):
        stale.unlink(missing_ok=True)
    service.create(doc)
    for name in PERSONAS:
        service.add_persona(doc, service.PersonaOptions(
            name=name, image=str(work / "pods" / "app.img"), command="/bin/busybox sleep 3600",
            cpu="0.2", memory="32M", pids=16))
    service.sign(doc, key)
    spec = LayoutSpec(esp_mib=40, slot_mib=64, state_mib=1, stage_mib=16, persist_min_mib=40)
    disk = work / "rss.img"
    with open(disk, "wb") as f:
        f.truncate(spec.minimum_bytes)
    provision(str(disk), ProvisionRequest(spec, artifact=art, stage_files={
        "inventory.json": doc, "inventory.json.minisig": work / "inventory.json.minisig",
        "pods/app.img": work / "pods" / "app.img"}))
    kernel, initrd = initramfs.cached_test_initramfs()
    result = qemu.boot(qemu.VmConfig(disk=disk, kernel=kernel.vmlinuz, initrd=initrd,
                                     append="console=ttyS0 quiet panic=-1", timeout=400),
                       stop_when=rf"event=persona.start name={PERSONAS[-1]}\b")
    starts = [e for e in map(parse_line, result.lines("bay0: event="))
              if e.get("event") == "persona.start" and e.get("bay0_rss_kib")]
    if len(starts) < len(PERSONAS):
        raise SystemExit(f"appliance: only {len(starts)} persona(s) started ({result.outcome}):\n"
                         + result.console[-3000:])
    return max(int(e["bay0_rss_kib"]) for e in starts) / 1024
