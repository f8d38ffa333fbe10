"""The QEMU half of the suite: fault injection against the booted appliance.

Two boots, each as short as the case allows (TCG, direct kernel boot):

1. torn boot-control — the e2e test image (tests/e2e/vmdisk: busybox root with the
   bay0 test double) on a disk whose newer boot-control copy was torn after its first
   sector: the initramfs must fall back to the older copy, boot slot A, and write the
   next state whole.
2. wedged bay0 — the real test Spine (pipeline/recipes/spine-test.toml, real bay0)
   with ``spine.test.wedge=1``: after READY bay0 stops pinging and the i6300esb must
   reset the VM.

The persona cases (escape battery in the guest, pids.max, memory.max, cpu.max, reboot
persistence) need bay0 to launch personas from an inventory; ``persona_gap()`` names
what is missing while it is, and those cases are reported as not run with that reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.hostile.world import Observation

PERSONA_CASES = ("escape/memfd-exec", "exhaust/fork-bomb-pids-max", "exhaust/memory-balloon",
                 "exhaust/cpu-hog", "persist/reboot", "guest/escape-battery")
NO_HOOK = {
    "fault/persist-wrong-flags": "no way to inject it into a real boot: initramfs/init always mounts "
                                 "/persist nodev,nosuid,noexec and has no test hook; bay0's refusal is "
                                 "proven on the host (tests/test_bay0_invariants.py, tests/test_bay0_main.py)",
    "fault/root-writable": "no way to inject it into a real boot: the root is squashfs on dm-verity "
                           "(cannot be read-write) and initramfs/init has no hook to mount another root; "
                           "bay0's refusal is proven on the host (tests/test_bay0_invariants.py)",
}
WEDGE_TIMEOUT = 6  # spine.watchdog: the smallest the i6300esb keeps exactly (seconds)


def persona_gap() -> str | None:
    """Why bay0 cannot run personas in the guest yet, or None when it can."""
    missing = [m for m in ("bay0.supervisor", "bay0.inventory_store") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"bay0 PID 1 cannot launch personas yet: {', '.join(m.replace('.', '/') + '.py' for m in missing)} "
                "missing; bay0/main.py's Warden has no persona code")
    source = Path(importlib.util.find_spec("bay0.main").origin).read_text()
    if "supervisor" not in source:
        return "bay0/main.py does not start the supervisor: no persona runs in the guest"
    return "the hostile pod boot is not written yet (tests/hostile/guest.py)"


def qemu_available() -> str | None:
    """Why QEMU boots cannot run here, or None."""
    for tool in ("qemu-system-x86_64", "mksquashfs", "sfdisk", "veritysetup"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"missing tool {tool}"
    from pipeline.paths import alpine_fixtures

    if alpine_fixtures() is None:
        return "../shared/fixtures/alpine is missing"
    return None


def torn_boot_control(work: Path) -> Observation:
    """Tear the newer boot-control copy after one sector; A must boot from the older copy."""
    from bay0.formats import bootctl as bcf
    from pipeline import initramfs, qemu
    from pipeline.paths import alpine_fixtures
    from tests.e2e import vmdisk
    from tests.e2e.conftest import APPEND

    image, ident = vmdisk.build_test_image(alpine_fixtures(), work)
    disk = vmdisk.make_disk(work / "torn.img")
    vmdisk.provision(disk, image, ident)
    region = disk.read("spine_state", 0, bcf.REGION_SIZE)
    old, _ = bcf.read_region(region)
    offset, record = bcf.plan_write(region, bcf.mark_bad(old, "A"))  # would send the boot to B
    disk.write_at("spine_state", offset, record[:512])  # power lost after the first sector
    kernel, initrd = initramfs.cached_test_initramfs()
    result = qemu.boot(qemu.VmConfig(disk=disk.path, kernel=kernel.vmlinuz, initrd=initrd, append=APPEND,
                                     timeout=180, console_log=work / "torn.console"))
    after = disk.state()
    ready = "bay0: READY slot=A" in result.lines("bay0: ")
    expected = bcf.consume_try(old, "A")
    ok = result.outcome == qemu.POWEROFF and ready and after == expected
    detail = (f"outcome={result.outcome} ready_on_A={ready} state_after_is_old_minus_one_try={after == expected} "
              f"({result.wall_seconds:.0f}s)")
    return Observation("ok" if ok else "broken", detail, result.console)


def _spine_disk(work: Path) -> Path:
    """Build the test Spine (real bay0) with a throwaway key and provision a disk image with it."""
    from bay0.formats import minisign
    from pipeline.build import build_spine
    from pipeline.recipe import load_recipe
    from pipeline.run import run

    key_dir = work / "keys"
    key_dir.mkdir()
    secret = minisign.SecretKey.generate()
    (key_dir / "op.pub").write_text(secret.public_key().to_text())
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "pipeline/recipes/spine-test.toml")
    recipe = recipe.with_trust_keys((*recipe.trust_keys, key_dir / "op.pub"))
    spine = work / "test.spine"
    build_spine(recipe, secret, spine)
    disk = work / "spine-disk.img"
    with open(disk, "wb") as f:
        f.truncate(700 << 20)
    run([shutil.which("spinectl") or "spinectl", "provision", str(disk), "--spine", str(spine),
         "--pubkey", str(key_dir / "op.pub"), "--esp-mib", "16", "--slot-mib", "128", "--state-mib", "4",
         "--stage-mib", "32", "--persist-min-mib", "64", "-y"])
    return disk


def wedged_bay0(work: Path) -> Observation:
    """Real bay0 with spine.test.wedge=1: READY, then silence, then a watchdog reset."""
    from pipeline import initramfs, qemu
    from tests.e2e.conftest import APPEND

    disk = _spine_disk(work)
    kernel, initrd = initramfs.cached_test_initramfs()
    append = f"{APPEND} spine.test.wedge=1 spine.watchdog={WEDGE_TIMEOUT}"
    result = qemu.boot(qemu.VmConfig(disk=disk, kernel=kernel.vmlinuz, initrd=initrd, append=append,
                                     timeout=300, snapshot=True, console_log=work / "wedge.console"))
    ready = any(line.startswith("bay0: READY") for line in result.lines("bay0: "))
    ok = result.outcome == qemu.WATCHDOG and ready
    return Observation("ok" if ok else "broken",
                       f"outcome={result.outcome} ready_first={ready} ({result.wall_seconds:.0f}s)", result.console)


GUEST_RUNS: dict[str, Callable[[Path], Observation]] = {
    "fault/torn-boot-control": torn_boot_control,
    "fault/wedged-bay0": wedged_bay0,
}


def run_all() -> tuple[dict[str, Observation], dict[str, str]]:
    """Boot what can be booted: (observations, {case: reason it was not run})."""
    skips: dict[str, str] = dict(NO_HOOK)
    gap = persona_gap()
    for name in PERSONA_CASES:
        skips[name] = gap or "not written"
    found: dict[str, Observation] = {}
    missing = qemu_available()
    for name, fn in GUEST_RUNS.items():
        if missing:
            skips[name] = missing
            continue
        work = Path(tempfile.mkdtemp(prefix="hostile-guest-", dir="/var/tmp"))
        try:
            found[name] = fn(work)
        except Exception as e:  # noqa: BLE001 - a broken boot is a failed case, with its reason
            found[name] = Observation("error", f"{type(e).__name__}: {e}", repr(e))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return found, skips
