"""Benchmark: build the test Spine cold, then warm, then cold again.

    python benchmarks/build.py [--recipe pipeline/recipes/spine-test.toml] [--runs 5] [--dir DIR]

Cold = an empty cache directory (``SPINE_CACHE``): Alpine packages verified and
installed, Debian packages downloaded and extracted, kernel modules picked, Python
byte-compiled, squashfs, verity tree, signature. Warm = the same build again with
that cache and nothing changed; it is timed ``--runs`` times. A second cold build in
another empty cache must give the same bytes as the first (and the warm ones).
bay0's source is copied once at the start so that edits to the tree during the run
cannot change the inputs. The last two lines are ``reproducible=true|false`` and
``warm_over_cold=X`` (median warm seconds / cold seconds; target <= 0.05).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bay0.formats.minisign import SecretKey
from pipeline.build import build_spine
from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import load_recipe, recipes_dir


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def timed_build(recipe, key, out: Path, cache_dir: Path) -> tuple[float, bool]:
    os.environ["SPINE_CACHE"] = str(cache_dir)
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    result = build_spine(recipe, key, out)
    return time.perf_counter() - started, result.cached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=recipes_dir() / "spine-test.toml")
    parser.add_argument("--runs", type=int, default=5, help="warm builds to time")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spine-bench-", dir=args.dir or "/var/tmp"))
    try:
        key = SecretKey.generate()
        pub = work / "bench.pub"
        pub.write_text(key.public_key.to_text())
        source = work / "bay0"
        shutil.copytree(PROJECT_ROOT / "bay0", source, ignore=shutil.ignore_patterns("__pycache__"))
        recipe = load_recipe(args.recipe).with_trust_keys((pub,))
        recipe = dataclasses.replace(recipe, bay0=dataclasses.replace(recipe.bay0, source=source))

        cold, cached = timed_build(recipe, key, work / "cold1.spine", work / "cache1")
        print(f"cold build: {cold:.2f} s (cached={cached})", flush=True)
        warm_times, digests = [], {sha256(work / "cold1.spine")}
        for i in range(args.runs):
            seconds, cached = timed_build(recipe, key, work / "warm.spine", work / "cache1")
            warm_times.append(seconds)
            digests.add(sha256(work / "warm.spine"))
            print(f"warm build {i + 1}: {seconds:.3f} s (cached={cached})", flush=True)
        cold2, _ = timed_build(recipe, key, work / "cold2.spine", work / "cache2")
        digests.add(sha256(work / "cold2.spine"))
        print(f"second cold build: {cold2:.2f} s", flush=True)
        size = (work / "cold1.spine").stat().st_size
        warm = statistics.median(warm_times)
        print(f"spine_size_mib={size / 2**20:.1f} cold_s={cold:.2f} cold2_s={cold2:.2f} warm_median_s={warm:.3f}")
        print(f"reproducible={'true' if len(digests) == 1 else 'false'}")
        print(f"warm_over_cold={warm / cold:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
