"""`spinectl build spine|pod` (recipes -> signed Spine / pod image) and `spinectl cache info|clear`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pipeline import build as build_mod
from pipeline import cache as cache_mod
from pipeline.esp import build_esp_tree
from pipeline.qemu import DEFAULT_APPEND
from pipeline.recipe import load_recipe
from spinectl import keys as keys_mod

build_app = typer.Typer(help="Build Spines and pod images from recipes (pipeline/recipes/).",
                        no_args_is_help=True)
cache_app = typer.Typer(help="The build cache (downloads and artifacts keyed by input digests).",
                        no_args_is_help=True)
out_console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(build_app, name="build")
    app.add_typer(cache_app, name="cache")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[build_mod.Progress | None]:
    """A rich progress bar on stderr fed by the build's step callback (terminals only)."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("build", total=None)

        def update(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        yield update


def _summary(result: build_mod.BuildResult) -> dict:
    ident = result.identity
    info = {
        "path": str(result.out), "kind": result.kind, "cached": result.cached,
        "seconds": round(result.seconds, 2), "input_digest": result.input_digest,
        "size": ident.size, "sha256": ident.sha256, "root_hash": ident.root_hash, "salt": ident.salt,
        "data_size": ident.data_size, "hash_offset": ident.hash_offset,
        "packages": list(result.packages),
    }
    if result.manifest is not None:
        info.update(spine_version=result.manifest.spine_version, build_id=result.manifest.build_id,
                    alpine_release=result.manifest.alpine_release)
    if result.persona is not None:
        info["persona"] = {k: v for k, v in result.persona.items() if k != "packages"}
    return info


def _render(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    table = Table(title=f"{info['kind']} built" + (" (from the cache)" if info["cached"] else ""),
                  show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in ("path", "spine_version", "build_id", "alpine_release", "size", "root_hash", "salt",
                "hash_offset", "sha256", "input_digest", "seconds"):
        if key in info:
            table.add_row(key, str(info[key]))
    origins = [p["origin"] for p in info["packages"]]
    table.add_row("packages", f"{origins.count('alpine')} Alpine, {origins.count('debian')} Debian")
    out_console.print(table)
    if "persona" in info:
        out_console.print("persona (suggested for the inventory):")
        out_console.print_json(json.dumps(info["persona"], sort_keys=True))


def _cache(no_cache: bool) -> bool | None:
    return False if no_cache else None


@build_app.command("spine")
def build_spine(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Spine recipe (e.g. pipeline/recipes/spine-test.toml)."),
    key: Path = typer.Option(..., "--key", "-k", help="Secret key that signs the manifest."),
    out: Path = typer.Option(..., "-o", "--output", help="The .spine file to write."),
    trust_key: list[Path] = typer.Option([], "--trust-key", help="Extra trust-root public key (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Skip the artifact cache (downloaded packages are still reused)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build a signed Spine: rootfs -> reproducible squashfs -> verity -> signed manifest."""
    parsed = load_recipe(recipe)
    if trust_key:
        parsed = parsed.with_trust_keys(parsed.trust_keys + tuple(trust_key))
    secret = keys_mod.load_secret_key(key)
    with progress_bar(not as_json) as progress:
        result = build_mod.build_spine(parsed, secret, out, cache=_cache(no_cache), force=force,
                                       progress=progress)
    _render(_summary(result), as_json)


@build_app.command("pod")
def build_pod(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Pod recipe (e.g. pipeline/recipes/personas/httpd.toml)."),
    out: Path = typer.Option(..., "-o", "--output", help="The pod image to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Skip the artifact cache (downloaded packages are still reused)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build a persona image from Alpine packages, files and an entrypoint."""
    parsed = load_recipe(recipe)
    with progress_bar(not as_json) as progress:
        result = build_mod.build_pod(parsed, out, cache=_cache(no_cache), force=force, progress=progress)
    _render(_summary(result), as_json)


@build_app.command("esp")
def build_esp(
    spine: Path = typer.Option(..., "--spine", help="The signed Spine whose kernel and tree to use."),
    out: Path = typer.Option(..., "-o", "--output", help="Directory to fill (EFI/BOOT/BOOTX64.EFI)."),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Trusted key(s); default keys/."),
    append: str = typer.Option(DEFAULT_APPEND, "--append", help="Kernel command line in the UKI."),
    force: bool = typer.Option(False, "--force", help="Replace an existing UKI."),
) -> None:
    """Build the ESP payload (a UKI: the Spine's kernel + its initramfs + command line)."""
    target = build_esp_tree(spine, out, keys_mod.trusted_or_roots(pubkey), append=append,
                            force=force)
    typer.echo(f"{target} ({target.stat().st_size / 2**20:.1f} MiB)", err=True)


@cache_app.command("info")
def cache_info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Where the cache is and what it holds."""
    info = cache_mod.cache_info()
    if as_json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
        return
    table = Table(title=f"cache: {info.directory}")
    for column in ("store", "entries", "MiB"):
        table.add_column(column)
    for store in info.stores:
        table.add_row(store.name, str(store.entries), f"{store.size_bytes / 2**20:.1f}")
    table.add_row("total", "", f"{info.size_bytes / 2**20:.1f}")
    out_console.print(table)


@cache_app.command("clear")
def cache_clear(as_json: bool = typer.Option(False, "--json")) -> None:
    """Empty the cache (downloads and artifacts); the next build is a cold one."""
    removed = cache_mod.clear_cache()
    if as_json:
        print(json.dumps({"removed": removed}))
    else:
        out_console.print(f"cache cleared: {removed} entries removed")
