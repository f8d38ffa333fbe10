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

The launches run in a separate process shaped like bay0: it imports bay0's own
modules (``bay0.main``, ``bay0.supervisor``, ``bay0.persona``) and nothing of the
benchmark's (argparse, tarfile, the build pipeline, statistics), and never unpacked
the root. Our launcher forks that process, and a fork costs in proportion to what the
forking process has resident (page tables copied, pages faulted again), so launching
from this script's own process measured about 1 MiB of someone else's memory with
every launch.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"
MEASURE = "--measure"  # internal: argv[1] of the bay0-shaped process that launches


def extract_rootfs(dest):  # noqa: ANN001, ANN201 - Path in, Path out (pathlib stays out of the measuring process)
    """The Alpine 3.19 minirootfs unpacked under ``dest``."""
    import tarfile

    from pipeline.paths import alpine_fixtures

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


def time_ours(spec, launch) -> float:  # noqa: ANN001 - bay0.persona's PersonaSpec and launch
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


def measure(root: str, bwrap: str, runs: int) -> None:
    """The launches, in this bay0-shaped process: raw times and CPU totals on stdout."""
    import bay0.main  # noqa: F401 - bay0's own imports: the process our launcher forks
    import bay0.supervisor  # noqa: F401
    from bay0.persona import PersonaSpec, launch
    from bay0.sys.cgroup import cgroup2_mount

    spec = PersonaSpec(name=f"bench-{os.getpid()}", root=root, argv=("/bin/true",), uid=65534, gid=65534,
                       cgroup_parent=str(cgroup2_mount()))
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", root, "/",
            "--dev", "/dev", "--proc", "/proc", "/bin/true"]
    for _ in range(3):  # warm caches, page in both programs
        time_ours(spec, launch)
        time_bwrap(argv)
    times: dict[str, list[float]] = {"ours": [], "bwrap": []}
    cpu = {"ours": 0.0, "bwrap": 0.0}
    for run in range(runs):
        for which_one in (("ours", "bwrap") if run % 2 else ("bwrap", "ours")):
            before = cpu_seconds()
            times[which_one].append(time_ours(spec, launch) if which_one == "ours" else time_bwrap(argv))
            cpu[which_one] += cpu_seconds() - before
    for name in ("ours", "bwrap"):
        print(name, cpu[name], *times[name])


def main() -> None:
    import argparse
    import statistics
    import tempfile
    from pathlib import Path

    from pipeline.run import which

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
        out = subprocess.run([sys.executable, __file__, MEASURE, str(root), which("bwrap"), str(args.runs)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
    results = {}
    for line in out.splitlines():
        name, cpu, *times = line.split()
        results[name] = (float(cpu), [float(t) for t in times])
    (ours_cpu, ours), (bwrap_cpu, theirs) = results["ours"], results["bwrap"]
    ours_ms, theirs_ms = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    print(f"runs={args.runs}")
    print(f"ours_median_ms={ours_ms:.2f} ours_min_ms={min(ours) * 1000:.2f}")
    print(f"bwrap_median_ms={theirs_ms:.2f} bwrap_min_ms={min(theirs) * 1000:.2f}")
    # CPU per launch hardly depends on what else the machine runs; wall time does.
    print(f"ours_cpu_ms={ours_cpu / args.runs * 1000:.2f} bwrap_cpu_ms={bwrap_cpu / args.runs * 1000:.2f}")
    print(f"launch_vs_bwrap={ours_ms / theirs_ms:.2f}")
    if not args.no_appliance:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from appliance_rss import measure as measure_rss

        rss = measure_rss(Path(os.environ.get("TMPDIR", "/var/tmp")) / "spine-bench-rss")
        print(f"bay0_rss_mib={rss:.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == [MEASURE]:
        measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
