"""spinectl inventory: create, edit, list/show, sign and verify the signed inventory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bay0.errors import NotFoundError, UsageError
from bay0.formats.inventory import RESTART_POLICIES, SECCOMP_PROFILES, Inventory, Persona
from spinectl import inventory as service
from spinectl import keys

inventory_app = typer.Typer(
    help="The signed inventory: which personas bay0 runs, with what ceilings and isolation.",
    no_args_is_help=True, add_completion=False,
)
shell_app = typer.Typer(help="Shells: named budgets their personas must fit inside.",
                        no_args_is_help=True, add_completion=False)
inventory_app.add_typer(shell_app, name="shell")

File = Annotated[Path, typer.Argument(help="The inventory file (canonical JSON).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
Days = Annotated[int, typer.Option("--expires-days", help="Days until the inventory expires.")]
Name = Annotated[str, typer.Option("--name", help="Persona name (a-z, 0-9, '-').")]
Image = Annotated[str | None, typer.Option("--image", help="Pod image file (identity is read).")]
Cpu = Annotated[str | None, typer.Option("--cpu", help="CPUs, e.g. 0.5 (→ cpu.max 50000 100000).")]
Memory = Annotated[str | None, typer.Option("--memory", help="Memory ceiling, e.g. 256M, 1G.")]
Pids = Annotated[int | None, typer.Option("--pids", help="Maximum number of tasks.")]
NetNone = Annotated[str | None, typer.Option(
    "--network", help='"none": loopback only (the default); use --address for a policy.')]
Address = Annotated[str | None, typer.Option("--address", help="Address/prefix, e.g. 10.0.0.2/24.")]
Gateway = Annotated[str | None, typer.Option("--gateway", help="Gateway inside the prefix.")]
Egress = Annotated[list[str] | None, typer.Option(
    "--egress", help="Allowed egress DEST/PREFIX:tcp|udp:PORT (repeat); everything else denied.")]
Seccomp = Annotated[str | None, typer.Option(
    "--seccomp", help=f"Seccomp profile: {', '.join(SECCOMP_PROFILES)}.")]
Mounts = Annotated[list[str] | None, typer.Option(
    "--mount", help="Bind mount SRC:TARGET[:rw][:exec] from /persist/SRC (repeat).")]
Command = Annotated[str | None, typer.Option("--command", help='argv, e.g. "/bin/app --port 80".')]
User = Annotated[str | None, typer.Option("--user", help="UID[:GID], non-zero (default 1000:1000).")]
Env = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE (repeat; replaces all).")]
RestartOpt = Annotated[str | None, typer.Option(
    "--restart", help=f"Restart policy: {', '.join(RESTART_POLICIES)}.")]
MaxRestarts = Annotated[int | None, typer.Option("--max-restarts", help="Restarts before purge.")]
Backoff = Annotated[int | None, typer.Option("--backoff", help="Seconds before a restart.")]
ShellName = Annotated[str | None, typer.Option("--shell", help="Shell (tier) to join.")]
NoShell = Annotated[bool, typer.Option("--no-shell", help="Leave the persona's shell.")]


def _out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, sort_keys=True, indent=2))


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _options(name: str, network: str | None, **values: Any) -> service.PersonaOptions:
    if network not in (None, "none"):
        raise UsageError(f"--network {network!r}: only \"none\" is a mode",
                         "for an explicit policy give --address and --egress")
    for key in ("egress", "mounts", "environment"):
        if values[key] is not None:
            values[key] = tuple(values[key])
    return service.PersonaOptions(name=name, network_none=network == "none", **values)


@inventory_app.command("create")
def create_cmd(
    file: File, expires_days: Days = service.DEFAULT_EXPIRES_DAYS,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write an empty, unsigned inventory (version 0)."""
    inv = service.create(file, expires_days=expires_days, force=force)
    _out().print(f"created {escape(str(file))} (unsigned, expires {_when(inv.expires)})")


def _persona_command(apply: Callable[..., Any], verb: str) -> Callable[..., None]:
    """``add`` and ``update`` take the same options; only the service call differs."""

    def command(
        file: File, name: Name, image: Image = None, cpu: Cpu = None, memory: Memory = None,
        pids: Pids = None, network: NetNone = None, address: Address = None,
        gateway: Gateway = None, egress: Egress = None, seccomp: Seccomp = None,
        mount: Mounts = None, command: Command = None, user: User = None, env: Env = None,
        restart: RestartOpt = None, max_restarts: MaxRestarts = None, backoff: Backoff = None,
        shell: ShellName = None, no_shell: NoShell = False,
    ) -> None:
        options = _options(
            name, image=image, cpu=cpu, memory=memory, pids=pids, network=network,
            address=address, gateway=gateway, egress=egress, seccomp=seccomp, mounts=mount,
            command=command, user=user, environment=env, restart=restart,
            max_restarts=max_restarts, backoff=backoff, shell=shell, no_shell=no_shell,
        )
        persona = apply(file, options)
        _out().print(f"{verb} persona {persona.name} (inventory is unsigned until sign)")

    return command


inventory_app.command(
    "add", help="Add a persona from a pod image (--image, --command, --cpu, --memory, --pids required)."
)(_persona_command(service.add_persona, "added"))
inventory_app.command(
    "update", help="Change the given fields of a persona; --image re-reads the pod's identity."
)(_persona_command(service.update_persona, "updated"))


@inventory_app.command("remove")
def remove_cmd(file: File, name: Annotated[str, typer.Argument(help="Persona name.")]) -> None:
    """Remove a persona."""
    service.remove_persona(file, name)
    _out().print(f"removed persona {name} (inventory is unsigned until sign)")


@inventory_app.command("purge")
def purge_cmd(file: File, name: Annotated[str, typer.Argument(help="Persona name.")]) -> None:
    """Ask bay0 to purge a persona once (kill, unmount, wipe scratch) and start it fresh."""
    persona = service.purge_persona(file, name)
    _out().print(f"persona {name}: purge generation {persona.purge} "
                 "(inventory is unsigned until sign)")


def _summary(persona: Persona) -> dict[str, Any]:
    net = persona.network
    return {
        "name": persona.name, "shell": persona.shell, "cpu_max": persona.ceilings.cpu_max,
        "memory_max": persona.ceilings.memory_max, "pids_max": persona.ceilings.pids_max,
        "network": "none" if net is None else net.address, "seccomp": persona.seccomp,
        "image": persona.image.file, "root_hash": persona.image.root_hash,
    }


def _header(inv: Inventory, signed: bool) -> dict[str, Any]:
    return {"format": inv.format, "version": inv.version, "created": inv.created,
            "expires": inv.expires, "signed": signed}


@inventory_app.command("list")
def list_cmd(file: File, json_out: Json = False) -> None:
    """List personas and shells."""
    inv, signed = service.load(file), service.is_signed(file)
    if json_out:
        _print_json({**_header(inv, signed), "personas": [_summary(p) for p in inv.personas],
                     "shells": [s.to_dict() for s in inv.shells]})
        return
    out = _out()
    state = "signed" if signed else "UNSIGNED"
    out.print(f"{escape(str(file))}: version {inv.version}, {state}, expires {_when(inv.expires)}")
    table = Table("persona", "shell", "cpu", "memory", "pids", "network", "seccomp", "image")
    for p in inv.personas:
        s = _summary(p)
        table.add_row(p.name, p.shell or "-", f"{float(p.ceilings.cpus):g}", str(s["memory_max"]),
                      str(s["pids_max"]), s["network"], p.seccomp, escape(p.image.file))
    out.print(table)
    for shell in inv.shells:
        b = shell.budget
        out.print(f"shell {shell.name}: cpu {float(b.cpus):g}, memory {b.memory_max}, "
                  f"pids {b.pids_max}")


@inventory_app.command("show")
def show_cmd(
    file: File, name: Annotated[str, typer.Argument(help="Persona name.")], json_out: Json = False
) -> None:
    """Show one persona's full entry."""
    persona = service.load(file).persona(name)
    if persona is None:
        raise NotFoundError(f"persona {name} is not in {file}", "see spinectl inventory list")
    if json_out:
        _print_json(persona.to_dict())
        return
    out = _out()
    for key, value in sorted(persona.to_dict().items()):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out.print(f"{key}: {escape(str(text))}")


@inventory_app.command("sign")
def sign_cmd(
    file: File,
    key: Annotated[Path, typer.Option("--key", help="Secret key (minisign format).")],
    expires_days: Days = service.DEFAULT_EXPIRES_DAYS,
    version: Annotated[int | None, typer.Option(
        "--version", help="Explicit new version (must increase; default current + 1).")] = None,
    json_out: Json = False,
) -> None:
    """Bump the version, set expires, and write FILE + FILE.minisig together."""
    secret = keys.load_secret_key(key)
    inv = service.sign(file, secret, expires_days=expires_days, version=version)
    if json_out:
        _print_json({**_header(inv, True), "key_id": secret.key_id_hex})
        return
    _out().print(f"signed {escape(str(file))}: version {inv.version}, key {secret.key_id_hex}, "
                 f"expires {_when(inv.expires)}")


@inventory_app.command("verify")
def verify_cmd(
    file: File,
    pubkey: Annotated[Path, typer.Option("--pubkey", help="Trusted .pub or a directory.")],
    floor: Annotated[int, typer.Option("--floor", help="Refuse versions below this.")] = 0,
    pods: Annotated[Path | None, typer.Option(
        "--pods", help="Directory of pod images: check every persona's identity.")] = None,
    at: Annotated[int | None, typer.Option(
        "--at", help="Check expiry at this epoch time instead of now.")] = None,
    json_out: Json = False,
) -> None:
    """Verify like bay0 does: signature, canonical form, schema, floor, expiry (and pods)."""
    trusted = keys.load_trusted_keys(pubkey)
    report = service.verify(file, trusted, floor=floor, now=at, pods=pods)
    inv = report.inventory
    if json_out:
        _print_json({**_header(inv, True), "key_id": report.key_id,
                     "personas": [p.name for p in inv.personas], "pods": list(report.pods_checked)})
        return
    pods_note = f", {len(report.pods_checked)} pod(s) match" if pods is not None else ""
    _out().print(f"good inventory {escape(str(file))}: version {inv.version}, "
                 f"{len(inv.personas)} persona(s), key {report.key_id}, "
                 f"expires {_when(inv.expires)}{pods_note}")


@shell_app.command("add")
def shell_add_cmd(
    file: File, name: Annotated[str, typer.Argument(help="Shell name.")],
    cpu: Cpu = None, memory: Memory = None, pids: Pids = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing budget.")] = False,
) -> None:
    """Add a shell budget (--cpu, --memory, --pids all required)."""
    service.add_shell(file, name, cpu=cpu, memory=memory, pids=pids, force=force)
    _out().print(f"shell {name} set (inventory is unsigned until sign)")


@shell_app.command("remove")
def shell_remove_cmd(file: File, name: Annotated[str, typer.Argument(help="Shell name.")]) -> None:
    """Remove an empty shell."""
    service.remove_shell(file, name)
    _out().print(f"removed shell {name} (inventory is unsigned until sign)")


def register(app: typer.Typer) -> None:
    """Add the ``inventory`` command group to the root app."""
    app.add_typer(inventory_app, name="inventory")
