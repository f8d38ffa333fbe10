"""The demo: the operator flow end to end, on embedded defaults.

Runs the same commands an operator would type, printing each one first, in a work
directory outside the repository (private keys never land in the tree).
"""

from __future__ import annotations

import os
import shlex
import sys
import tarfile
from pathlib import Path

from rich.console import Console

from pipeline.paths import alpine_fixtures, cache_dir
from spinectl.main import run_cli

console = Console()


class DemoFailed(Exception):
    pass


def step(*args: str) -> None:
    console.print(f"[bold cyan]$ spinectl {shlex.join(args)}[/]")
    code = run_cli(list(args))
    if code != 0:
        raise DemoFailed(f"spinectl {args[0]} exited {code}")


def minirootfs_tree(work: Path) -> Path:
    """A small persona root from the real Alpine minirootfs."""
    fixtures = alpine_fixtures()
    if fixtures is None:
        raise DemoFailed("no Alpine minirootfs available (set SPINE_SHARED)")
    root = work / "pod-root"
    if not root.exists():
        tarball = fixtures / "minirootfs" / "alpine-minirootfs-3.19.4-x86_64.tar.gz"
        with tarfile.open(tarball) as tar:
            tar.extractall(root, filter="tar")
    return root


def run_demo(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    keys = work / "keys"
    if not (keys / "operator.key").exists():
        step("keys", "generate", "--name", "operator", "--dir", str(keys), "--no-passphrase")
    pod = work / "pods" / "shell.img"
    pod.parent.mkdir(exist_ok=True)
    step("image", "build", str(minirootfs_tree(work)), "-o", str(pod), "--force")
    step("image", "info", str(pod))
    spine = work / "demo.spine"
    step("spine", "pack", str(minirootfs_tree(work)), "--version", "2026.11.0",
         "--key", str(keys / "operator.key"), "-o", str(spine), "--force")
    step("spine", "verify", str(spine), "--pubkey", str(keys / "operator.pub"))


def main() -> None:
    work = Path(os.environ.get("SPINE_DEMO_DIR") or cache_dir() / "demo")
    console.print(f"[bold]Alpine Spine demo[/] in {work}")
    try:
        run_demo(work)
    except DemoFailed as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        sys.exit(1)
    console.print("[bold green]demo finished[/]")


if __name__ == "__main__":
    main()
