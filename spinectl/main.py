"""Entry point: builds the typer app from one module per command group.

Errors are mapped to exit codes here and nowhere else; nothing below calls sys.exit.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback

import click
import typer

from bay0.errors import SpineError, StorageError
from spinectl.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}

# Each module defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "spinectl.cmd_keys",
    "spinectl.cmd_image",
    "spinectl.cmd_inventory",
    "spinectl.cmd_disk",
    "spinectl.cmd_build",
    "spinectl.cmd_vm",
)

app = typer.Typer(
    name="spinectl",
    help="Operate Alpine Spine appliances offline: keys, signed pods, inventories, Spines, disks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Echo tool commands and show tracebacks."),
) -> None:
    if debug:
        os.environ["SPINE_DEBUG"] = "1"


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _debug() -> bool:
    return os.environ.get("SPINE_DEBUG") == "1" or "--debug" in sys.argv[1:3]


def _fail(message: str, hint: str = "") -> None:
    line = f"spinectl: error: {message}"
    if hint:
        line += f" (hint: {hint})"
    print(line.replace("\n", " "), file=sys.stderr)


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="spinectl", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", "nothing was changed")
        return EXIT_USAGE
    except click.exceptions.ClickException as e:
        _fail(e.format_message(), "see spinectl --help")
        return e.exit_code if e.exit_code else EXIT_USAGE
    except SpineError as e:
        if _debug():
            traceback.print_exc(limit=None)
        _fail(e.message, e.hint)
        return exit_code_for(e)
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            return _internal(e)
        storage = StorageError(f"{e.filename or 'output'}: {e.strerror}",
                               "free space or fix the disk, then run the command again")
        _fail(storage.message, storage.hint)
        return exit_code_for(storage)
    except KeyboardInterrupt:
        _fail("interrupted", "nothing half-written was left; run the command again")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into exit 1
        return _internal(e)
    return result if isinstance(result, int) else 0


def _internal(e: BaseException) -> int:
    if _debug():
        traceback.print_exc()
    _fail(f"internal error: {type(e).__name__}: {e}", "rerun with --debug and report it")
    return EXIT_INTERNAL


def main() -> None:
    sys.exit(run_cli())
