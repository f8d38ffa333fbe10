"""Disk commands: provision, deploy, flash, mark-good, mark-bad, status."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bay0.errors import SpineError, UsageError
from pipeline import spine as spine_mod
from pipeline.disk import control, device
from pipeline.disk import flash as flash_mod
from pipeline.disk import provision as prov
from pipeline.disk.layout import LayoutSpec, plan_layout, read_layout
from pipeline.disk.stage import write_stage
from spinectl import inventory as inventory_mod
from spinectl import keys as keys_mod

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("provision")(provision)
    app.command("deploy")(deploy)
    app.command("flash")(flash)
    app.command("mark-good")(mark_good)
    app.command("mark-bad")(mark_bad)
    app.command("status")(status)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


def _confirm(infos: list[device.DeviceInfo], yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("provisioning erases devices and needs confirmation, but there is no "
                         "terminal to ask; nothing was written", "pass --yes to confirm")
    table = Table(title="These devices will be ERASED")
    for column in ("device", "model", "serial", "size", "kind"):
        table.add_column(column)
    for i in infos:
        table.add_row(i.path, i.model or "-", i.serial or "-", f"{i.size / 1024**3:.2f} GiB", i.kind)
    err.print(table)
    if not typer.confirm("Erase and provision them?", default=False, err=True):
        raise UsageError("provisioning declined; nothing was written", "pass --yes to skip the question")


def stage_files(inventory: Path, pods: Path, trusted: list) -> dict[str, Path]:
    """Verify the inventory and its pods; return what goes into the staging area."""
    report = inventory_mod.verify(inventory, trusted, pods=pods)
    files = {"inventory.json": inventory,
             "inventory.json.minisig": keys_mod.signature_path(inventory)}
    for persona, pod in zip(report.inventory.personas, report.pods_checked, strict=True):
        files[f"pods/{persona.image.file}"] = Path(pod)
    return files


def provision(
    devices: list[str] = typer.Argument(..., help="Whole-disk devices or image files."),
    spine: Path | None = typer.Option(None, "--spine", help="Signed Spine for slot A."),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Trusted key(s); default keys/."),
    esp: Path | None = typer.Option(None, "--esp", help="Directory copied onto the ESP."),
    inventory: Path | None = typer.Option(None, "--inventory", help="Signed inventory to deploy."),
    pods: Path | None = typer.Option(None, "--pods", help="Directory of the inventory's pods."),
    esp_mib: int = typer.Option(128, "--esp-mib"),
    slot_mib: int = typer.Option(1024, "--slot-mib"),
    state_mib: int = typer.Option(4, "--state-mib"),
    stage_mib: int = typer.Option(512, "--stage-mib"),
    persist_min_mib: int = typer.Option(256, "--persist-min-mib"),
    allow_fixed: bool = typer.Option(False, "--allow-fixed", help="Allow non-removable disks."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Partition, format and write a Spine onto one or more devices, in parallel."""
    if (inventory is None) != (pods is None):
        raise UsageError("--inventory and --pods go together", "pass both or neither")
    spec = LayoutSpec(esp_mib, slot_mib, state_mib, stage_mib, persist_min_mib)
    trusted = keys_mod.trusted_or_roots(pubkey) if (spine or inventory) else []
    artifact = spine_mod.open_spine(spine, trusted) if spine else None
    files = stage_files(inventory, pods, trusted) if inventory and pods else None
    infos = [device.inspect(d) for d in devices]
    for info in infos:
        device.check_target(info, allow_fixed=allow_fixed)
        plan_layout(info.size, spec)
    if len(set(devices)) != len(devices):
        raise UsageError("a device is named twice", "name each device once")
    _confirm(infos, yes)
    request = prov.ProvisionRequest(spec, artifact, esp, files)
    results = _provision_all(devices, request, as_json)
    if as_json:
        print(json.dumps(results, indent=2, sort_keys=True))


def _provision_all(devices: list[str], request: prov.ProvisionRequest, quiet: bool) -> list[dict]:
    with _progress() as bars:
        tasks = {d: bars.add_task(f"{d}: partitioning", total=request.artifact.image_size
                                  if request.artifact else 1) for d in devices}

        def one(disk: str) -> dict:
            task = tasks[disk]
            layout = prov.provision(
                disk, request,
                progress=lambda n: bars.advance(task, n),
                on_step=lambda s: bars.update(task, description=f"{disk}: {s} done"))
            bars.update(task, description=f"{disk}: verified", completed=bars.tasks[task].total)
            return {"device": disk, "status": control.status(layout.path)}

        with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
            futures = [pool.submit(one, d) for d in devices]
            results, errors = [], []
            for future in futures:
                try:
                    results.append(future.result())
                except SpineError as e:
                    errors.append(e)
    if errors:
        raise errors[0]
    return results


def deploy(
    disk: str = typer.Argument(...),
    inventory: Path = typer.Option(..., "--inventory"),
    pods: Path = typer.Option(..., "--pods"),
    pubkey: Path | None = typer.Option(None, "--pubkey"),
) -> None:
    """Put a signed inventory and its pods into the staging area of a provisioned disk."""
    trusted = keys_mod.trusted_or_roots(pubkey)
    files = stage_files(inventory, pods, trusted)
    info = device.inspect(disk)
    if info.read_only or info.holds_root:
        device.check_target(info, allow_fixed=True)
    layout = read_layout(disk)
    write_stage(layout, files)
    err.print(f"deployed {len(files) - 2} pod(s) and the inventory to {disk}")


def flash(
    disk: str = typer.Argument(..., help="The attached appliance disk (device or image file)."),
    spine: Path = typer.Argument(..., help="The signed Spine artifact."),
    slot: str | None = typer.Option(None, "--slot", help="A or B (default: the inactive slot)."),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Trusted key(s); default keys/."),
    tries: int = typer.Option(3, "--tries", help="Boot attempts before falling back."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a Spine into a slot: invalidate, write, read back and verify, then activate."""
    trusted = keys_mod.trusted_or_roots(pubkey)
    bars = _progress()
    task = bars.add_task(f"{disk}: flashing", total=None, visible=False)
    started: list[bool] = []

    def planned(plan: flash_mod.FlashPlan) -> None:
        bars.start()  # only once every check has passed: errors stay one line
        started.append(True)
        bars.update(task, total=plan.artifact.image_size, visible=True,
                    description=f"{disk}: slot {plan.slot}")

    try:
        plan, final = flash_mod.flash(
            disk, spine, trusted, slot=slot, tries=tries, on_plan=planned,
            progress=lambda n: bars.advance(task, n),
            on_step=lambda s: bars.update(task, description=f"{disk}: {s} done"))
    finally:
        if started:
            bars.stop()
    result = {"device": disk, "slot": plan.slot, "version": plan.artifact.manifest.spine_version,
              "status": final.to_dict()}
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        err.print(f"slot {plan.slot} now holds Spine {result['version']} "
                  f"(tries {plan.tries}, not yet good); next boot: {result['status']['next_boot']}")


def _mark(disk: str, slot: str, good: bool, as_json: bool) -> None:
    name, final = control.mark(disk, slot, good=good)
    if as_json:
        print(json.dumps({"device": disk, "slot": name, "status": final.to_dict()}, indent=2))
    else:
        err.print(f"slot {name} marked {'good' if good else 'bad'}; "
                  f"boot order: {' → '.join(final.to_dict()['boot_order']) or 'none (power off)'}")


def mark_good(
    disk: str = typer.Argument(...),
    slot: str = typer.Option("booted", "--slot", help="booted, other, A or B."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Mark a slot good (offline): it stays in the boot order, with its tries refilled."""
    _mark(disk, slot, True, as_json)


def mark_bad(
    disk: str = typer.Argument(...),
    slot: str = typer.Option(..., "--slot", help="booted, other, A or B."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Take a slot out of the boot order (offline)."""
    _mark(disk, slot, False, as_json)


def status(
    disk: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Layout check, per-slot state, and what the initramfs would boot next."""
    doc = control.status(disk)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    table = Table(title=f"{disk}: boot control (seq {doc['seq']})")
    for column in ("slot", "version", "root hash", "priority", "tries", "good", "bootable"):
        table.add_column(column)
    for name, s in doc["slots"].items():
        table.add_row(name, s["version"] or "(empty)", (s["root_hash"] or "-")[:16],
                      str(s["priority"]), str(s["tries_left"]), "yes" if s["good"] else "no",
                      "yes" if s["bootable"] else "no")
    Console().print(table)
    order = " → ".join(doc["boot_order"]) or "nothing bootable: the appliance powers off"
    Console().print(f"next boot: {doc['next_boot'] or '-'}    boot order: {order}"
                    f"    last booted: {doc['last_boot'] or '-'}")
    if doc["never_marked_good"]:
        Console().print("[yellow]no slot has ever been marked good[/]")
