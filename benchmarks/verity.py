"""Benchmark: our dm-verity tree builder against `veritysetup format`, same data, same work.

    python benchmarks/verity.py [--size-mib 1024] [--runs 3] [--dir DIR]

Both tools build the full tree of one data file in place (superblock + tree
appended at ``hash_offset = data size``) and fsync it; before every timed run the
file is cut back to its data and the page cache is already warm, so neither pays
for disk reads or for the other's dirty pages. Runs alternate which tool goes
first, so load from anything else on the machine hits both alike. Each run checks
that the root hashes and the written trees are identical. The last line is
``verity_speedup=X`` with X = median(veritysetup) / median(ours).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline.run import run
from pipeline.verity import append_tree

SALT = hashlib.sha256(b"alpine-spine verity benchmark").digest()
UUID = "5b1c4d2e-0f3a-4b6c-8d7e-9f0a1b2c3d4e"
CHUNK = 16 << 20


def make_data(path: Path, size: int) -> None:
    """Random-ish data, fast: one random chunk, re-stamped per 4 KiB block for every chunk."""
    chunk = bytearray(os.urandom(CHUNK))
    with open(path, "wb") as f:
        for index in range(0, size, CHUNK):
            stamp = index.to_bytes(8, "little")
            for block in range(0, CHUNK, 4096 * 64):  # enough variety without slowing setup
                chunk[block : block + 8] = stamp
            f.write(chunk[: min(CHUNK, size - index)])
    os.sync()


def reset(path: Path, size: int) -> None:
    os.truncate(path, size)
    os.sync()


def tree_digest(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        f.seek(size)
        return hashlib.sha256(f.read()).hexdigest()


def cpu_seconds() -> float:
    """User + system time of this process and its reaped children (workers, veritysetup)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def time_ours(path: Path, size: int) -> tuple[float, float, str, str]:
    reset(path, size)
    cpu, start = cpu_seconds(), time.perf_counter()
    params = append_tree(path, salt=SALT, uuid=UUID)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return elapsed, cpu, params.root_hash, tree_digest(path, size)


def time_veritysetup(path: Path, size: int) -> tuple[float, float, str, str]:
    reset(path, size)
    argv = ["veritysetup", "format", path, path, f"--hash-offset={size}"]
    argv += [f"--salt={SALT.hex()}", f"--uuid={UUID}"]
    cpu, start = cpu_seconds(), time.perf_counter()
    out = run(argv).stdout.decode()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    match = re.search(r"^Root hash:\s*([0-9a-f]{64})", out, re.M)
    if match is None:
        sys.exit(f"cannot find the root hash in veritysetup's output:\n{out}")
    return elapsed, cpu, match.group(1), tree_digest(path, size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch directory (default: /var/tmp)"
    )
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="verity-bench-", dir=args.dir or "/var/tmp") as tmp:
        path = Path(tmp) / "data.img"
        make_data(path, size)
        time_veritysetup(path, size)  # warm-up: page cache, libraries, worker start
        time_ours(path, size)
        ours, theirs, cpu_ours, cpu_vs = [], [], [], []
        for i in range(args.runs):
            pair = (time_ours, time_veritysetup) if i % 2 == 0 else (time_veritysetup, time_ours)
            results = {fn: fn(path, size) for fn in pair}
            (t_ours, c_ours, root_ours, tree_ours) = results[time_ours]
            (t_vs, c_vs, root_vs, tree_vs) = results[time_veritysetup]
            if (root_ours, tree_ours) != (root_vs, tree_vs):
                sys.exit(f"run {i + 1}: MISMATCH root {root_ours} vs {root_vs}")
            ours.append(t_ours)
            theirs.append(t_vs)
            cpu_ours.append(c_ours)
            cpu_vs.append(c_vs)
            print(
                f"run {i + 1}: ours {t_ours:.3f} s ({c_ours:.2f} cpu-s)  "
                f"veritysetup {t_vs:.3f} s ({c_vs:.2f} cpu-s)  load {os.getloadavg()[0]:.2f}  "
                f"root {root_ours[:16]}… equal"
            )
    m_ours, m_vs = statistics.median(ours), statistics.median(theirs)
    print(f"{args.size_mib} MiB, {len(os.sched_getaffinity(0))} cores, {args.runs} runs")
    print(
        f"median cpu-s: ours {statistics.median(cpu_ours):.2f}  "
        f"veritysetup {statistics.median(cpu_vs):.2f} (wall time is what counts; cpu-s "
        "shows how much other load on the machine can erase the parallel gain)"
    )
    print(
        f"median: ours {m_ours:.3f} s ({args.size_mib / m_ours:.0f} MiB/s)  "
        f"veritysetup {m_vs:.3f} s ({args.size_mib / m_vs:.0f} MiB/s)"
    )
    print(f"verity_speedup={m_vs / m_ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
