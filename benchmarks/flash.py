"""Flash a 1 GiB Spine onto a loop device, side by side with dd.

    python benchmarks/flash.py [--size-mib 1024] [--runs 3] [--workdir DIR]

Ours = the whole `flash` transition (invalidate, O_DIRECT write, fsync, drop caches,
read back and verify every block against the signed root hash, activate). dd =
`dd bs=4M oflag=direct conv=fsync` of the same bytes to the same slot (write only).
Last line: ``flash_vs_dd=X`` (our median / dd's median; target <= 1.3). Needs root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bay0.formats import minisign  # noqa: E402
from pipeline import spine  # noqa: E402
from pipeline.disk import flash, provision  # noqa: E402
from pipeline.disk.layout import LayoutSpec, read_layout  # noqa: E402

MIB = 1024 * 1024


def make_spine(work: Path, size_mib: int, key: minisign.SecretKey) -> Path:
    out = work / f"bench-{size_mib}.spine"
    root = work / "bench-root"
    root.mkdir(parents=True, exist_ok=True)
    blob = root / "blob"
    if not blob.exists() or blob.stat().st_size != size_mib * MIB:
        with open(blob, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
    spine.pack(root, out, version="bench", secret_key=key, epoch=0, force=True)
    return out


def loop_attach(image: Path) -> str:
    return subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()


def time_dd(art: spine.SpineArtifact, dev: str, offset: int) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={art.path}", f"of={dev}", "bs=4M", "oflag=direct,seek_bytes",
                    "iflag=count_bytes", f"count={art.image_size}", f"seek={offset}",
                    "conv=fsync,notrunc", "status=none"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "spine-bench-flash")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/flash.py needs root (loop devices)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    key = minisign.SecretKey.generate()
    spine_path = make_spine(args.workdir, args.size_mib, key)
    art = spine.open_spine(spine_path, [key.public_key])
    slot_mib = args.size_mib + 64
    disk = args.workdir / "disk.img"
    with open(disk, "wb") as f:  # allocated up front: neither side pays for sparse blocks
        os.posix_fallocate(f.fileno(), 0, (2 * slot_mib + 512) * MIB)
    dev = loop_attach(disk)
    try:
        spec = LayoutSpec(esp_mib=40, slot_mib=slot_mib, state_mib=1, stage_mib=16, persist_min_mib=40)
        provision.provision(dev, provision.ProvisionRequest(spec))
        for _ in range(2):  # untimed: both slots once, so neither side pays first-write costs
            flash.flash(dev, spine_path, [key.public_key])
        ours, dds = [], []
        for run in range(args.runs):
            start = time.perf_counter()
            plan, _ = flash.flash(dev, spine_path, [key.public_key])
            ours.append(time.perf_counter() - start)
            offset = read_layout(dev).slot(plan.slot).start
            dds.append(time_dd(art, dev, offset))
            print(f"run {run + 1}: flash (write+verify) {ours[-1]:.2f} s, dd (write) {dds[-1]:.2f} s")
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        disk.unlink(missing_ok=True)
    ratio = statistics.median(ours) / statistics.median(dds)
    print(f"median: flash {statistics.median(ours):.2f} s, dd {statistics.median(dds):.2f} s "
          f"({art.image_size / MIB:.0f} MiB)")
    print(f"flash_vs_dd={ratio:.2f}")


if __name__ == "__main__":
    main()
