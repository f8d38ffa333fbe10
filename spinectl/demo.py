"""The demo: the whole operator flow on embedded defaults, ending in a booted appliance.

Runs the commands an operator would type, printing each one first, in a work directory
outside the repository (private keys never land in the tree):

keys → build the test Spine (Alpine packages, verified) → build two personas → signed
inventory → ESP payload (UKI) → provision a disk image → boot it in QEMU through OVMF
until bay0 reports READY.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from rich.console import Console

from pipeline.paths import PROJECT_ROOT, alpine_fixtures, cache_dir
from spinectl.main import run_cli

console = Console()
RECIPES = PROJECT_ROOT / "pipeline" / "recipes"
SIZES = ["--esp-mib", "64", "--slot-mib", "96", "--state-mib", "1", "--stage-mib", "64",
         "--persist-min-mib", "64"]
DISK_MIB = 1 + 64 + 2 * 96 + 1 + 64 + 64 + 1
PERSONAS = {
    "httpd": ["--cpu", "0.25", "--memory", "16M", "--pids", "16", "--user", "1080:1080",
              "--command", "/bin/busybox httpd -f -v -p 8080 -h /srv/www",
              "--address", "10.88.0.2/24", "--seccomp", "network-service", "--restart", "always"],
    "checksum-batch": ["--cpu", "0.5", "--memory", "32M", "--pids", "32", "--user", "65534:65534",
                       "--command", "/bin/sh /usr/local/bin/checksum-report", "--seccomp", "batch",
                       "--restart", "on-failure"],
}


class DemoFailed(Exception):
    pass


def step(*args: str) -> None:
    console.print(f"\n[bold cyan]$ spinectl {shlex.join(args)}[/]")
    code = run_cli(list(args))
    if code != 0:
        raise DemoFailed(f"`spinectl {args[0]} {args[1] if len(args) > 1 else ''}` exited {code}")


def run_demo(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    source = "the shared Alpine fixtures" if alpine_fixtures() else (
        os.environ.get("SPINE_ALPINE_MIRROR") or "the official Alpine mirror")
    console.print(f"Alpine packages from {source}; work directory {work}")
    if not Path("keys/operator.key").exists():
        step("keys", "generate", "--name", "operator", "--dir", "keys", "--no-passphrase")
    step("build", "spine", "--recipe", str(RECIPES / "spine-test.toml"), "--key", "keys/operator.key",
         "--trust-key", "keys/operator.pub", "-o", "demo.spine", "--force")
    Path("pods").mkdir(exist_ok=True)
    for name in PERSONAS:
        step("build", "pod", "--recipe", str(RECIPES / "personas" / f"{name}.toml"),
             "-o", f"pods/{name}.img", "--force")
    step("inventory", "create", "inventory.json", "--force")
    for name, options in PERSONAS.items():
        step("inventory", "add", "inventory.json", "--name", name, "--image", f"pods/{name}.img",
             *options)
    step("inventory", "sign", "inventory.json", "--key", "keys/operator.key")
    step("build", "esp", "--spine", "demo.spine", "--pubkey", "keys/operator.pub", "-o", "esp",
         "--force")
    disk = Path("disk.img")
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(DISK_MIB * 1024 * 1024)
    step("provision", str(disk), "--spine", "demo.spine", "--pubkey", "keys/operator.pub",
         "--esp", "esp", "--inventory", "inventory.json", "--pods", "pods", "--yes", *SIZES)
    step("status", str(disk))
    step("vm", str(disk), "--timeout", os.environ.get("SPINE_DEMO_TIMEOUT", "900"),
         "--until", "bay0: READY", "--console-log", "console.log")
    console.print("\n[bold green]bay0 reached READY on the provisioned disk[/] "
                  f"(console in {work / 'console.log'})")


def main() -> None:
    work = Path(os.environ.get("SPINE_DEMO_DIR") or cache_dir() / "demo")
    console.print(f"[bold]Alpine Spine demo[/] in {work}")
    try:
        run_demo(work)
    except DemoFailed as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
