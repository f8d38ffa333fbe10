"""Boot time to `bay0: READY` under QEMU TCG, side by side with a bare baseline.

    python benchmarks/boot.py [--runs 3]

Both boots use the same kernel and the same initramfs (the test recipe's), booted
directly (no firmware) from the same provisioned disk with the test Spine and the real
bay0. Ours runs the whole chain: modules, boot control (a try spent and saved), the
slot opened with dm-verity (every block it reads is hashed; the slot has tries left,
so it is not read end to end first: that happens on a slot's last try, or on every
boot with --full-verify), LUKS2 /persist, switch_root, Python bay0 checking its
invariants and opening the watchdog. The baseline appends one file to the initramfs (an
/init that prints the READY line at once), so the kernel, the archive it unpacks and
the machine are identical. Time = seconds from QEMU's start to the READY line (wall),
and the guest's own uptime where it printed one.

Last line: ``bay0_overhead=X`` (our median / the baseline's; target <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bay0.formats import minisign  # noqa: E402
from pipeline import build, cpio, initramfs, qemu, spine  # noqa: E402
from pipeline.disk.layout import LayoutSpec  # noqa: E402
from pipeline.disk.provision import ProvisionRequest, provision  # noqa: E402
from pipeline.paths import PROJECT_ROOT  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402

APPEND = "console=ttyS0 quiet panic=-1"
READY = r"bay0: READY slot="
BASELINE_INIT = b'#!/bin/sh\nread up idle < /proc/uptime\necho "bay0: READY slot=A uptime=$up"\npoweroff -f\n'


def baseline_initrd(initrd: Path, out: Path) -> Path:
    """The same initramfs with a one-file overlay: the kernel unpacks both, later wins."""
    overlay = cpio.write_archive(out.with_suffix(".overlay"), [
        cpio.Entry("init", stat.S_IFREG | 0o755, data=BASELINE_INIT)], compress="gzip")
    with open(out, "wb") as f:
        f.write(initrd.read_bytes())
        f.write(overlay.read_bytes())
    return out


def guest_uptime(console: str) -> float | None:
    match = re.search(r"bay0: (?:event=start .*?uptime=|READY slot=A uptime=)([0-9.]+)", console)
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full-verify", action="store_true",
                        help="read the slot end to end on every boot (spine.verify=full)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "spine-bench-boot")
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = minisign.SecretKey.generate()
    (work / "op.pub").write_text(key.public_key.to_text())
    recipe = load_recipe(PROJECT_ROOT / "pipeline" / "recipes" / "spine-test.toml")
    recipe = recipe.with_trust_keys(recipe.trust_keys + (work / "op.pub",))
    build.build_spine(recipe, key, work / "test.spine")
    art = spine.open_spine(work / "test.spine", [key.public_key])
    spec = LayoutSpec(esp_mib=40, slot_mib=64, state_mib=1, stage_mib=16, persist_min_mib=40)
    disk = work / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(spec.minimum_bytes)
    provision(str(disk), ProvisionRequest(spec, artifact=art, tries=15))
    kernel, initrd = initramfs.cached_test_initramfs()
    base = baseline_initrd(initrd, work / "baseline.cpio.gz")
    first = qemu.boot(qemu.VmConfig(disk=disk, kernel=kernel.vmlinuz, initrd=initrd,
                                    append=APPEND, timeout=600), stop_when=READY)
    if first.outcome != qemu.MATCHED:
        sys.exit(f"the first boot did not reach READY ({first.outcome}):\n{first.console[-2000:]}")
    times: dict[str, list[float]] = {"bay0": [], "baseline": []}
    uptimes: dict[str, list[float]] = {"bay0": [], "baseline": []}
    for run in range(args.runs):
        for name, rd in (("bay0", initrd), ("baseline", base)):
            append = APPEND + (" spine.verify=full" if args.full_verify and name == "bay0" else "")
            result = qemu.boot(qemu.VmConfig(disk=disk, kernel=kernel.vmlinuz, initrd=rd,
                                             append=append, timeout=600, snapshot=True),
                               stop_when=READY)
            if result.outcome != qemu.MATCHED or result.matched_at is None:
                sys.exit(f"{name} run {run + 1} ended {result.outcome}:\n{result.console[-2000:]}")
            times[name].append(result.matched_at)
            up = guest_uptime(result.console)
            if up is not None:
                uptimes[name].append(up)
            print(f"run {run + 1} {name}: READY after {result.matched_at:.2f} s wall"
                  + (f", guest uptime {up:.2f} s" if up is not None else ""), flush=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"median wall to READY: bay0 {med['bay0']:.2f} s, baseline {med['baseline']:.2f} s")
    if uptimes["bay0"] and uptimes["baseline"]:
        print(f"median guest uptime at READY: bay0 {statistics.median(uptimes['bay0']):.2f} s, "
              f"baseline {statistics.median(uptimes['baseline']):.2f} s")
    print(f"bay0_overhead={med['bay0'] / med['baseline']:.2f}")


if __name__ == "__main__":
    main()
