"""spinectl keys generate, spinectl sign, spinectl verify (minisign-compatible)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from spinectl import keys

keys_app = typer.Typer(
    help="Signing keys (Ed25519, minisign format).", no_args_is_help=True, add_completion=False
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def _out() -> Console:
    # Created per call: the console must bind the sys.stdout of this invocation.
    return Console(soft_wrap=True, highlight=False)


def _print_json(data: dict) -> None:
    typer.echo(json.dumps(data, sort_keys=True, indent=2))


@keys_app.command("generate")
def generate_cmd(
    name: Annotated[str, typer.Option("--name", help="Key name: writes NAME.pub and NAME.key.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory for the key pair (outside the repository).")
    ],
    no_passphrase: Annotated[
        bool,
        typer.Option(
            "--no-passphrase", help="Write the secret key UNENCRYPTED (explicit opt-out)."
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Generate a key pair; the passphrase comes from SPINE_KEY_PASSPHRASE or a prompt."""
    passphrase = None if no_passphrase else keys.read_passphrase(f"new key {name}", confirm=True)
    made = keys.generate(name, directory, passphrase)
    if json_out:
        _print_json(
            {
                "key_id": made.key_id_hex,
                "public_key": str(made.public_path),
                "secret_key": str(made.secret_path),
                "encrypted": made.encrypted,
            }
        )
        return
    out = _out()
    out.print(made.key_id_hex)
    out.print(f"public key: {escape(str(made.public_path))}")
    state = "encrypted" if made.encrypted else "[bold]UNENCRYPTED[/bold]"
    out.print(f"secret key: {escape(str(made.secret_path))} ({state}, keep it secret)")


def sign_cmd(
    file: Annotated[Path, typer.Argument(help="File to sign.")],
    key: Annotated[Path, typer.Option("--key", help="Secret key file (minisign format).")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing FILE.minisig.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Write FILE.minisig (prehashed Ed25519; the trusted comment names file, size, key)."""
    secret = keys.load_secret_key(key)
    target = keys.sign_file(file, secret, force=force)
    if json_out:
        _print_json({"file": str(file), "signature": str(target), "key_id": secret.key_id_hex})
        return
    _out().print(f"signed {escape(str(file))} with key {secret.key_id_hex}: {escape(str(target))}")


def verify_cmd(
    file: Annotated[Path, typer.Argument(help="File to verify.")],
    pubkey: Annotated[
        Path, typer.Option("--pubkey", help="Trusted public key (.pub) or a directory of them.")
    ],
    signature: Annotated[
        Path | None, typer.Option("--signature", help="Signature file (default FILE.minisig).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Verify FILE against FILE.minisig and trusted keys; fails with exit code 4 if bad."""
    trusted = keys.load_trusted_keys(pubkey)
    verified = keys.verify_file(file, trusted, signature)
    if json_out:
        _print_json(
            {
                "file": str(file),
                "key_id": verified.key_id_hex,
                "algorithm": verified.algorithm,
                "trusted_comment": verified.trusted_comment,
                "fields": verified.fields,
            }
        )
        return
    out = _out()
    out.print(f"good signature on {escape(str(file))} by key {verified.key_id_hex}")
    out.print(f"trusted comment: {escape(verified.trusted_comment)}")


def register(app: typer.Typer) -> None:
    """Add ``keys`` and the top-level ``sign`` and ``verify`` commands to the root app."""
    app.add_typer(keys_app, name="keys")
    app.command("sign")(sign_cmd)
    app.command("verify")(verify_cmd)
