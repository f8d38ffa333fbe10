"""Benchmark: launching a trivial persona with the full sandbox against bubblewrap.

    python benchmarks/launch.py [--runs 60] [--rootfs DIR] [--no-appliance]

(root, on the host). Both launch ``/bin/true`` from the same read-only Alpine
minirootfs: ours through ``bay0.persona.launch`` (new PID, mount, UTS, IPC, net and
cgroup namespaces, a fresh cgroup per launch, pivot_root, tmpfs /dev with six nodes,
masked /proc, every capability dropped, no_new_privs, seccomp, unprivileged ids) and
``bwrap --unshare-all --die-with-parent --ro-bind ROOT / --dev /dev --proc /proc``.
A run is launch + wait for exit + clean-up. Runs alternate which one goes first, so
load from anything else on the machine hits both alike. The last line is
``launch_vs_bwrap=X`` with X = median(ours) / median(bwrap) (target <= 1.0); the line
before it gives the CPU time per launch of each (parent plus children), which depends
far less than wall time on the load of the machine. Then (unless ``--no-appliance``)
it boots the test appliance in QEMU with three personas and prints
``bay0_rss_mib=Y``, bay0's resident memory (target <= 30).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bay0.persona import PersonaSpec, launch
from bay0.sys.cgroup import cgroup2_mount
from pipeline.paths import alpine_fixtures
from pipeline.run import which

MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"


def extract_rootfs(dest: Path) -> Path:
    """The Alpine 3.19 minirootfs unpacked under ``dest``."""
    fixtures = alpine_fixtures()
    if fixtures is None:
        sys.exit("benchmark: ../shared/fixtures/alpine is missing (set SPINE_SHARED)")
    with tarfile.open(fixtures / MINIROOTFS) as tar:
        tar.extractall(dest, filter="fully_trusted")
    return dest


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (both launchers' work lands here)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_ours(spec: PersonaSpec) -> float:
    start = time.perf_counter()
    persona = launch(spec)
    status = persona.wait(timeout=10)
    persona.close()
    elapsed = time.perf_counter() - start
    if status.code != 0:
        raise SystemExit(f"benchmark: persona exited with {status}")
    return elapsed


def time_bwrap(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rootfs", type=Path, help="an unpacked root to use instead of the fixture")
    parser.add_argument("--no-appliance", action="store_true",
                        help="skip the QEMU boot that measures bay0's RSS with three personas")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmark: needs root (namespaces, cgroups, mounts)")
    with tempfile.TemporaryDirectory(prefix="launch-bench-", dir="/var/tmp") as tmp:
        root = args.rootfs or extract_rootfs(Path(tmp) / "root")
        spec = PersonaSpec(name="bench", root=str(root), argv=("/bin/true",), uid=65534, gid=65534,
                           cgroup_parent=str(cgroup2_mount()))
        bwrap = [which("bwrap"), "--unshare-all", "--die-with-parent", "--ro-bind", str(root), "/",
                 "--dev", "/dev", "--proc", "/proc", "/bin/true"]
        for _ in range(3):  # warm caches, page in both programs
            time_ours(spec)
            time_bwrap(bwrap)
        ours: list[float] = []
        theirs: list[float] = []
        cpu = {"ours": 0.0, "bwrap": 0.0}
        for run in range(args.runs):
            for which_one in (("ours", "bwrap") if run % 2 else ("bwrap", "ours")):
                before = cpu_seconds()
                if which_one == "ours":
                    ours.append(time_ours(spec))
                else:
                    theirs.append(time_bwrap(bwrap))
                cpu[which_one] += cpu_seconds() - before
    ours_ms, theirs_ms = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    print(f"runs={args.runs}")
    print(f"ours_median_ms={ours_ms:.2f} ours_min_ms={min(ours) * 1000:.2f}")
    print(f"bwrap_median_ms={theirs_ms:.2f} bwrap_min_ms={min(theirs) * 1000:.2f}")
    # CPU per launch hardly depends on what else the machine runs; wall time does.
    print(f"ours_cpu_ms={cpu['ours'] / args.runs * 1000:.2f} bwrap_cpu_ms={cpu['bwrap'] / args.runs * 1000:.2f}")
    print(f"launch_vs_bwrap={ours_ms / theirs_ms:.2f}")
    if not args.no_appliance:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from appliance_rss import measure

        rss = measure(Path(os.environ.get("TMPDIR", "/var/tmp")) / "spine-bench-rss")
        print(f"bay0_rss_mib={rss:.1f}")


if __name__ == "__main__":
    main()
