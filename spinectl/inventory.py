"""Inventory files on disk: create, edit, sign and verify (the I/O around bay0's pure schema).

Files: ``FILE`` (canonical JSON) and ``FILE.minisig``. Every edit goes through
``editing()``: lock the directory, finish or roll back an interrupted sign, load and
validate, let the caller replace the (immutable) inventory, then write atomically.
An edit that changes the bytes deletes ``FILE.minisig`` first, so a changed
document is never paired with a stale signature (it is simply unsigned until
``sign``).

Signing writes a two-file transaction (see docs/implementation/format-inventory.md):
``FILE.minisig.new`` then ``FILE.new`` (both fsynced), then the commit point
``rename(FILE.minisig.new, FILE.minisig)``, then ``rename(FILE.new, FILE)``.
``recover()`` rolls back when ``FILE.minisig.new`` still exists and rolls forward
when only ``FILE.new`` is left, so a crash leaves the old pair or the new pair.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from bay0.atomic import fsync_dir, write_atomic
from bay0.errors import ExistsError, FormatError, NotFoundError, UsageError, ValidationError
from bay0.formats import minisign
from bay0.formats.inventory import (
    CPU_PERIOD_DEFAULT,
    IDENTITY_FIELDS,
    Ceilings,
    EgressRule,
    ImageRecord,
    Inventory,
    Mount,
    Network,
    Persona,
    Restart,
    Shell,
    User,
    check_identity,
    context,
    parse_inventory,
    verify_signed,
)
from pipeline.image import read_identity
from spinectl.keys import signature_path, signing_time

DAY = 86_400
DEFAULT_EXPIRES_DAYS = 90
DEFAULT_UID = 1000
NEW_SUFFIX = ".new"


@dataclass
class Draft:
    """The inventory being edited; assign a new (validated) ``Inventory`` to change it."""

    inventory: Inventory


@dataclass(frozen=True)
class VerifyReport:
    inventory: Inventory
    key_id: str
    pods_checked: tuple[str, ...]


def pending_paths(path: Path) -> tuple[Path, Path]:
    """The ``FILE.new`` and ``FILE.minisig.new`` of an unfinished sign."""
    sig = signature_path(path)
    return path.with_name(path.name + NEW_SUFFIX), sig.with_name(sig.name + NEW_SUFFIX)


def _directory(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def recover(path: Path) -> str | None:
    """Finish (``"completed"``) or undo (``"rolled back"``) an interrupted sign; else None."""
    new_doc, new_sig = pending_paths(path)
    if new_sig.exists():  # the commit point was not reached: the old pair stands
        new_sig.unlink()
        new_doc.unlink(missing_ok=True)
        fsync_dir(_directory(path))
        return "rolled back"
    if new_doc.exists():  # the new signature is in place: put its document beside it
        os.replace(new_doc, path)
        fsync_dir(_directory(path))
        return "completed"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize spinectl processes editing inventories in one directory."""
    directory = _directory(path)
    if not directory.is_dir():
        raise NotFoundError(f"directory {directory} does not exist", "create it first")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise UsageError(
                f"another spinectl is editing an inventory in {directory}", "wait and retry"
            ) from e
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(path: Path, what: str = "inventory") -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(
            f"{what} {path} does not exist", "create it with spinectl inventory create"
        ) from e
    except IsADirectoryError as e:
        raise UsageError(f"{path} is a directory", "give the inventory file") from e


def load(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate (no signature check). Raises ``NotFoundError``, ``FormatError``."""
    path = Path(path)
    recover(path)
    return parse_inventory(_read(path))


def is_signed(path: str | os.PathLike[str]) -> bool:
    return signature_path(Path(path)).exists()


def _drop_signature(path: Path) -> None:
    sig = signature_path(path)
    if sig.exists():
        sig.unlink()
        fsync_dir(_directory(path))


@contextlib.contextmanager
def editing(path: str | os.PathLike[str]) -> Iterator[Draft]:
    """Load, let the caller change ``draft.inventory``, then write it back atomically.

    Nothing is written when the body raises or leaves the bytes unchanged. A change
    removes ``FILE.minisig`` before the new document replaces the old one.
    Raises ``NotFoundError``, ``FormatError``/``ValidationError``, ``UsageError``.
    """
    path = Path(path)
    with _locked(path):
        recover(path)
        old = _read(path)
        draft = Draft(parse_inventory(old))
        yield draft
        if not isinstance(draft.inventory, Inventory):
            raise TypeError("draft.inventory must be an Inventory")
        new = draft.inventory.to_bytes()
        if new != old:
            _drop_signature(path)
            write_atomic(path, new, mode=0o644, overwrite=True)


def _check_days(days: int) -> int:
    if not 1 <= days <= 3660:
        raise UsageError(f"--expires-days {days} is outside 1..3660", "give a number of days")
    return days


def create(
    path: str | os.PathLike[str], *, expires_days: int = DEFAULT_EXPIRES_DAYS,
    force: bool = False, now: int | None = None,
) -> Inventory:
    """Write an empty, unsigned inventory (version 0). Raises ``ExistsError`` without force."""
    path = Path(path)
    now = int(time.time()) if now is None else now
    inventory = Inventory(version=0, created=now, expires=now + _check_days(expires_days) * DAY)
    with _locked(path):
        if path.exists() and not force:
            raise ExistsError(f"{path} already exists")
        for stale in (*pending_paths(path), signature_path(path)):
            stale.unlink(missing_ok=True)
        write_atomic(path, inventory.to_bytes(), mode=0o644, overwrite=force)
    return inventory


def image_record(image: str | os.PathLike[str]) -> ImageRecord:
    """Pin a pod image: its file name plus the identity read from the file."""
    path = Path(image)
    if not path.is_file():
        raise NotFoundError(f"pod image {path} does not exist", "build it with spinectl image build")
    return ImageRecord.from_identity(path.name, _identity(path))


def _identity(path: Path) -> Any:
    """read_identity with the file named in any format error."""
    try:
        return read_identity(path)
    except FormatError as e:
        if str(path) in e.message:
            raise
        raise FormatError(f"pod image {path}: {e.message}", e.hint) from e


def sign(
    path: str | os.PathLike[str], secret_key: minisign.SecretKey, *,
    expires_days: int = DEFAULT_EXPIRES_DAYS, version: int | None = None,
    now: int | None = None,
) -> Inventory:
    """Bump the version, set created/expires, and write FILE + FILE.minisig as one step.

    ``version`` (optional) must exceed the current one: it lets an operator jump past
    the floor of devices after recreating a file. Raises ``UsageError`` for a
    version that does not increase, plus what ``editing`` raises.
    """
    path = Path(path)
    now = int(time.time()) if now is None else now
    days = _check_days(expires_days)
    with _locked(path):
        recover(path)
        current = parse_inventory(_read(path))
        new_version = current.version + 1 if version is None else version
        if new_version <= current.version:
            raise UsageError(
                f"--version {new_version} is not above the current version {current.version}",
                "versions only increase (devices refuse rollbacks)",
            )
        signed = replace(current, version=new_version, created=now, expires=now + days * DAY)
        data = signed.to_bytes()
        comment = (
            f"timestamp:{signing_time()}\tfile:{path.name}\tsize:{len(data)}"
            f"\tkey:{secret_key.key_id_hex}\tversion:{new_version}"
        )
        _commit_pair(path, data, secret_key.sign(data, comment))
    return signed


def _commit_pair(path: Path, data: bytes, signature: bytes) -> None:
    new_doc, new_sig = pending_paths(path)
    write_atomic(new_sig, signature, mode=0o644, overwrite=True)
    write_atomic(new_doc, data, mode=0o644, overwrite=True)
    os.replace(new_sig, signature_path(path))  # commit point (see the module docstring)
    fsync_dir(_directory(path))
    os.replace(new_doc, path)
    fsync_dir(_directory(path))


def verify(
    path: str | os.PathLike[str], trusted: list[minisign.PublicKey], *, floor: int = 0,
    now: int | None = None, pods: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Verify FILE against FILE.minisig with bay0's own function; optionally the pods.

    Raises what ``verify_inventory`` raises, ``NotFoundError`` (missing signature or
    pod), ``IdentityMismatchError`` (a pod differs from its entry).
    """
    path = Path(path)
    recover(path)
    data = _read(path)
    signature = _read(signature_path(path), "signature")
    now = int(time.time()) if now is None else now
    inventory, verified = verify_signed(data, signature, trusted, floor=floor, now=now)
    checked: list[str] = []
    if pods is not None:
        checked = [check_pod(persona, Path(pods)) for persona in inventory.personas]
    return VerifyReport(inventory, verified.key_id_hex, tuple(checked))


def check_pod(persona: Persona, pods: Path) -> str:
    """Compare the pod file named by ``persona`` in ``pods`` with its entry; return its path."""
    image = pods / persona.image.file
    if not image.is_file():
        raise NotFoundError(
            f"persona {persona.name}: pod image {image} does not exist",
            "copy the pod next to the others or fix --pods",
        )
    check_identity(persona, _identity(image), fields=IDENTITY_FIELDS)
    return str(image)


# --- persona and shell edits from command-line values -------------------------------


@dataclass(frozen=True)
class PersonaOptions:
    """What the operator passed; None/empty means "not given" (keep the old value)."""

    name: str
    image: str | None = None
    cpu: str | None = None
    memory: str | None = None
    pids: int | None = None
    network_none: bool = False
    address: str | None = None
    gateway: str | None = None
    egress: tuple[str, ...] | None = None
    seccomp: str | None = None
    mounts: tuple[str, ...] | None = None
    command: str | None = None
    user: str | None = None
    environment: tuple[str, ...] | None = None
    restart: str | None = None
    max_restarts: int | None = None
    backoff: int | None = None
    shell: str | None = None
    no_shell: bool = False


def add_persona(path: str | os.PathLike[str], options: PersonaOptions) -> Persona:
    """Add a new persona. Raises ``ExistsError`` (name taken), ``UsageError``, ``ValidationError``."""
    with editing(path) as draft:
        if draft.inventory.persona(options.name) is not None:
            raise ExistsError(
                f"persona {options.name} already exists", "use spinectl inventory update"
            )
        persona = options_to_persona(options, None)
        draft.inventory = draft.inventory.with_persona(persona)
    return persona


def update_persona(path: str | os.PathLike[str], options: PersonaOptions) -> Persona:
    """Change the given fields of an existing persona (re-reads the image if given)."""
    with editing(path) as draft:
        existing = draft.inventory.persona(options.name)
        if existing is None:
            raise NotFoundError(f"persona {options.name} is not in the inventory",
                                "add it with spinectl inventory add")
        persona = options_to_persona(options, existing)
        draft.inventory = draft.inventory.with_persona(persona)
    return persona


def purge_persona(path: str | os.PathLike[str], name: str) -> Persona:
    """Bump the persona's purge generation: bay0 purges it once when it applies the inventory."""
    with editing(path) as draft:
        persona = draft.inventory.persona(name)
        if persona is None:
            raise NotFoundError(f"persona {name} is not in the inventory", "see inventory list")
        persona = replace(persona, purge=persona.purge + 1)
        draft.inventory = draft.inventory.with_persona(persona)
    return persona


def remove_persona(path: str | os.PathLike[str], name: str) -> None:
    with editing(path) as draft:
        if draft.inventory.persona(name) is None:
            raise NotFoundError(f"persona {name} is not in the inventory", "see inventory list")
        draft.inventory = draft.inventory.without_persona(name)


def add_shell(
    path: str | os.PathLike[str], name: str, *, cpu: str | None, memory: str | None,
    pids: int | None, force: bool = False,
) -> Shell:
    """Add (or with ``force`` replace) a shell budget; members must still fit."""
    with editing(path) as draft:
        if draft.inventory.shell(name) is not None and not force:
            raise ExistsError(f"shell {name} already exists")
        with context(f"shell {name}"):
            shell = Shell(name, ceilings_from_options(cpu, memory, pids, None, "budget"))
        draft.inventory = draft.inventory.with_shell(shell)
    return shell


def remove_shell(path: str | os.PathLike[str], name: str) -> None:
    """Remove an empty shell. Raises ``NotFoundError``, ``UsageError`` (it has members)."""
    with editing(path) as draft:
        if draft.inventory.shell(name) is None:
            raise NotFoundError(f"shell {name} is not in the inventory", "see inventory list")
        members = [p.name for p in draft.inventory.personas if p.shell == name]
        if members:
            raise UsageError(f"shell {name} still holds {', '.join(members)}",
                             "move them out first (update --no-shell) or remove them")
        draft.inventory = draft.inventory.without_shell(name)


def parse_cpu(text: str) -> str:
    """``--cpu 0.5`` → ``"50000 100000"`` (cpu.max quota/period, exact decimal)."""
    try:
        cpus = Decimal(text.strip())
    except InvalidOperation as e:
        raise UsageError(f"--cpu {text!r} is not a number of CPUs", "e.g. --cpu 0.5") from e
    quota = cpus * CPU_PERIOD_DEFAULT
    if not cpus.is_finite() or cpus <= 0 or quota != quota.to_integral_value():
        raise UsageError(f"--cpu {text!r} is not a positive multiple of 0.00001 CPU",
                         "e.g. --cpu 0.5 or --cpu 2")
    return f"{int(quota)} {CPU_PERIOD_DEFAULT}"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str) -> int:
    """``256M``/``256MiB``/``1G``/``1048576`` → bytes (binary units)."""
    match = re.fullmatch(r"([0-9]{1,15})\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"--memory {text!r} is not a size", "e.g. --memory 256M or 1G")
    return int(match[1]) * _UNITS[match[2].upper()]


def parse_mount(text: str) -> Mount:
    """``SRC:TARGET[:rw][:exec]`` (also ``:ro``/``:noexec``) → Mount."""
    source, _, rest = text.partition(":")
    target, _, flags = rest.partition(":")
    rw = exec_ = False
    for flag in filter(None, flags.split(":")):
        if flag not in ("rw", "ro", "exec", "noexec"):
            raise UsageError(f"--mount {text!r}: unknown flag {flag!r}", "use rw, ro, exec, noexec")
        rw = {"rw": True, "ro": False}.get(flag, rw)
        exec_ = {"exec": True, "noexec": False}.get(flag, exec_)
    if not source or not target:
        raise UsageError(f"--mount {text!r} is not SRC:TARGET[:rw][:exec]", "e.g. data:/data:rw")
    return Mount(source, target, rw, exec_)


def parse_egress(text: str) -> EgressRule:
    """``DEST/PREFIX:PROTO:PORT`` → EgressRule (IPv6 destinations work too)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise UsageError(f"--egress {text!r} is not DEST/PREFIX:PROTO:PORT",
                         "e.g. --egress 10.0.0.1/32:tcp:80")
    return EgressRule(parts[0], parts[1], int(parts[2]))


def parse_user(text: str) -> tuple[int, int]:
    """``UID[:GID]`` → (uid, gid); gid defaults to uid."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise UsageError(f"--user {text!r} is not UID[:GID]", "e.g. --user 1000:1000")
    return int(uid), int(gid or uid)


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r} is not KEY=VALUE", "e.g. --env LANG=C.UTF-8")
        env[key] = value
    return env


def ceilings_from_options(
    cpu: str | None, memory: str | None, pids: int | None, old: Ceilings | None, where: str
) -> Ceilings:
    """Build ceilings; with no ``old`` every one of cpu, memory, pids is required."""
    for flag, value in (("--cpu", cpu), ("--memory", memory), ("--pids", pids)):
        if value is None and old is None:
            raise ValidationError(f"{where}: missing ceiling {flag}",
                                  "cpu, memory and pids are all required, e.g. "
                                  "--cpu 0.5 --memory 256M --pids 64")
    return Ceilings(
        cpu_max=parse_cpu(cpu) if cpu is not None else old.cpu_max,
        memory_max=parse_memory(memory) if memory is not None else old.memory_max,
        pids_max=pids if pids is not None else old.pids_max,
    )


def _network(o: PersonaOptions, old: Network | None) -> Network | None:
    explicit = o.address is not None or o.gateway is not None or o.egress is not None
    if o.network_none and explicit:
        raise UsageError("--network none contradicts --address/--gateway/--egress",
                         "give one or the other")
    if o.network_none or not explicit:
        return None if o.network_none else old
    address = o.address or (old.address if old else None)
    if address is None:
        raise UsageError("--gateway/--egress need --address", "e.g. --address 10.0.0.2/24")
    with context("network"):
        egress = (tuple(parse_egress(e) for e in o.egress) if o.egress is not None
                  else old.egress if old else ())
        gateway = o.gateway if o.gateway is not None else old.gateway if old else None
        return Network(address, egress, gateway or None)


def _restart(o: PersonaOptions, old: Restart) -> Restart:
    return Restart(
        policy=o.restart if o.restart is not None else old.policy,
        max_restarts=o.max_restarts if o.max_restarts is not None else old.max_restarts,
        backoff=o.backoff if o.backoff is not None else old.backoff,
    )


def options_to_persona(o: PersonaOptions, old: Persona | None) -> Persona:
    """Merge command-line values over ``old`` (None for a new persona) and validate."""
    with context(f"persona {o.name}"):
        if old is None and o.image is None:
            raise UsageError(f"persona {o.name}: --image is required", "give the pod image file")
        if old is None and o.command is None:
            raise UsageError(f"persona {o.name}: --command is required", 'e.g. --command "/bin/app"')
        ceilings = ceilings_from_options(
            o.cpu, o.memory, o.pids, old.ceilings if old else None, "ceilings")
        user = (User(*parse_user(o.user)) if o.user else old.user if old
                else User(DEFAULT_UID, DEFAULT_UID))
        values = {
            "image": image_record(o.image) if o.image is not None else old.image,
            "ceilings": ceilings,
            "command": tuple(shlex.split(o.command)) if o.command is not None else old.command,
            "user": user,
            "network": _network(o, old.network if old else None),
            "seccomp": o.seccomp or (old.seccomp if old else "default"),
            "mounts": (tuple(_mounts(o.mounts)) if o.mounts is not None
                       else old.mounts if old else ()),
            "environment": (parse_env(o.environment) if o.environment is not None
                            else dict(old.environment) if old else {}),
            "restart": _restart(o, old.restart if old else Restart()),
            "shell": None if o.no_shell else o.shell or (old.shell if old else None),
        }
    extra, purge = (old.extra, old.purge) if old else ({}, 0)
    return Persona(name=o.name, extra=extra, purge=purge, **values)


def _mounts(items: tuple[str, ...]) -> Iterator[Mount]:
    for index, item in enumerate(items):
        with context(f"mounts[{index}]"):
            yield parse_mount(item)
