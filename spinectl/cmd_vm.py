"""spinectl vm IMAGE_OR_DEVICE: boot a disk image (or an attached drive) in QEMU.

An operator tries an image before flashing it; the end-to-end tests boot through the
same runner (``pipeline.qemu``). OVMF from the disk's ESP by default (the path real
firmware takes), or direct kernel boot with ``--kernel``/``--initrd``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from bay0.errors import DiskError, ToolError, UsageError
from pipeline import qemu


def _mounted_sources() -> set[str]:
    try:
        with open("/proc/mounts") as f:
            return {line.split()[0] for line in f}
    except OSError:
        return set()


def _refuse_mounted(device: Path) -> None:
    """A block device in use by this host would be corrupted by a guest writing to it."""
    if not qemu.disk_is_block_device(device):
        return
    real = os.path.realpath(device)
    busy = sorted(m for m in _mounted_sources() if m.startswith(real))
    if busy:
        raise DiskError(f"{device} is in use on this host ({', '.join(busy)})",
                        "unmount it first, or pass --snapshot to keep the guest's writes in memory")


def vm_cmd(
    disk: Annotated[Path, typer.Argument(help="Disk image file or block device to boot.")],
    kernel: Annotated[Path | None, typer.Option("--kernel", help="Direct kernel boot: this kernel.")] = None,
    initrd: Annotated[Path | None, typer.Option("--initrd", help="Initramfs for --kernel.")] = None,
    append: Annotated[str, typer.Option("--append", help="Kernel command line for --kernel.")] = qemu.DEFAULT_APPEND,
    ovmf: Annotated[bool, typer.Option("--ovmf", help="Boot through OVMF from the ESP (default without --kernel).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before the VM is killed (0: no limit).")] = 600.0,
    memory: Annotated[int, typer.Option("--memory", help="Guest memory in MiB.")] = 512,
    cpus: Annotated[int, typer.Option("--cpus", min=1, max=16, help="Guest CPUs.")] = 2,
    snapshot: Annotated[bool, typer.Option("--snapshot", help="Discard the guest's disk writes.")] = False,
    allow_reboot: Annotated[bool, typer.Option("--allow-reboot", help="Let the guest reboot instead of ending the VM.")] = False,
    until: Annotated[str | None, typer.Option("--until", help="Stop when a console line matches this regex.")] = None,
    console_log: Annotated[Path | None, typer.Option("--console-log", help="Also write the console here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON at the end.")] = False,
) -> None:
    """Boot DISK in QEMU (TCG): virtio disk, i6300esb watchdog, serial console on stdout."""
    if initrd is not None and kernel is None:
        raise UsageError("--initrd needs --kernel", "pass --kernel too, or drop --initrd to boot from the ESP")
    if kernel is not None and ovmf:
        raise UsageError("--kernel and --ovmf contradict each other", "choose direct boot or firmware boot")
    if timeout < 0 or memory < 64:
        raise UsageError("--timeout must be >= 0 and --memory >= 64", "see spinectl vm --help")
    if not snapshot:
        _refuse_mounted(disk)
    cfg = qemu.VmConfig(
        disk=disk, kernel=kernel, initrd=initrd, append=append, ovmf=kernel is None,
        memory_mib=memory, cpus=cpus, timeout=timeout or 10**9, no_reboot=not allow_reboot,
        snapshot=snapshot, console_log=console_log, echo=not json_out,
        interactive=sys.stdin.isatty() and not json_out,
    )
    result = qemu.boot(cfg, stop_when=until)
    ready = [line.split("slot=", 1)[1] for line in result.lines("bay0: READY slot=")]
    if json_out:
        typer.echo(json.dumps({"outcome": result.outcome, "wall_seconds": round(result.wall_seconds, 2),
                               "ready_slot": ready[-1] if ready else None}, sort_keys=True))
    else:
        typer.echo(f"vm: {result.outcome} after {result.wall_seconds:.1f}s", err=True)
    if result.outcome == qemu.TIMEOUT:
        raise ToolError(f"the VM did not finish within {timeout:g}s", "raise --timeout, or use --until")


def register(app: typer.Typer) -> None:
    """Add ``spinectl vm`` to the root app."""
    app.command("vm")(vm_cmd)
