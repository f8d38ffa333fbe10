"""`spinectl image build|info` and `spinectl spine pack|verify`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bay0.errors import FormatError
from pipeline import image as image_mod
from pipeline import spine as spine_mod
from spinectl import keys as keys_mod

image_app = typer.Typer(help="Build and inspect pod images (squashfs + dm-verity).", no_args_is_help=True)
spine_app = typer.Typer(help="Pack and verify Spine artifacts.", no_args_is_help=True)
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
    app.add_typer(spine_app, name="spine")


def render(data: dict, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)


def is_spine(path: Path) -> bool:
    try:
        spine_mod.read_trailer(path)
    except FormatError:
        return False
    return True


def spine_info(art: spine_mod.SpineArtifact) -> dict:
    m = art.manifest
    info = {
        "kind": "spine",
        "spine_version": m.spine_version,
        "build_id": m.build_id,
        "signer": art.signer,
        "size": art.path.stat().st_size,
        "image_size": art.image_size,
        "sha256": m.image_sha256,
        "packages": len(m.contents),
        "alpine_release": m.alpine_release,
    }
    info.update({k: m.verity[k] for k in ("data_size", "hash_offset", "root_hash", "salt")})
    return info


@image_app.command("build")
def image_build(
    src: Path = typer.Argument(..., help="Root directory of the pod."),
    out: Path = typer.Option(..., "-o", "--output", help="Image file to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing image."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build a reproducible pod image: squashfs + appended dm-verity tree."""
    identity = image_mod.build_image(src, out, force=force)
    render({"path": str(out), **dataclasses.asdict(identity)}, as_json, "pod image")


@image_app.command("info")
def image_info(
    path: Path = typer.Argument(..., help="A pod image or a .spine artifact."),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Trusted key(s) for a .spine."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show an image's identity (a Spine's only after its signature verifies)."""
    if is_spine(path):
        art = spine_mod.open_spine(path, keys_mod.trusted_or_roots(pubkey))
        render(spine_info(art), as_json, f"Spine {art.manifest.spine_version}")
        return
    identity = image_mod.read_identity(path)
    render({"kind": "pod", **dataclasses.asdict(identity)}, as_json, "pod image")


@spine_app.command("pack")
def spine_pack(
    rootfs: Path = typer.Argument(..., help="Root directory of the Spine."),
    version: str = typer.Option(..., "--version", help="Spine version, e.g. 2026.11.0"),
    key: Path = typer.Option(..., "--key", help="Secret key that signs the manifest."),
    out: Path = typer.Option(..., "-o", "--output"),
    force: bool = typer.Option(False, "--force"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pack any root directory into a signed Spine artifact."""
    secret = keys_mod.load_secret_key(key)
    art = spine_mod.pack(rootfs, out, version=version, secret_key=secret, force=force)
    render(spine_info(art), as_json, f"Spine {version}")


@spine_app.command("verify")
def spine_verify(
    path: Path = typer.Argument(...),
    pubkey: Path | None = typer.Option(None, "--pubkey"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify the manifest signature and every block of the image against it."""
    art = spine_mod.open_spine(path, keys_mod.trusted_or_roots(pubkey))
    spine_mod.verify_image(art)
    info = spine_info(art)
    info["verified"] = True
    render(info, as_json, f"Spine {art.manifest.spine_version}: verified")
