"""The inventory on the device: import from the staging partition, load from /persist.

Layout under ``/persist/spine`` (a directory the inventory reserves for bay0)::

    inventories/<version>/inventory.json (+ .minisig)   one directory per accepted version
    current -> inventories/<version>                     symlink, swapped atomically
    pods/<sha256>.img                                    pod images, named by content
    inventory.floor                                      the highest version ever accepted

Import (``import_steps``), only when the staged inventory verifies against the
Spine's trust-root keys (``/etc/spine/keys``) with ``floor`` and ``now`` and is newer
than the floor: every pod it names is checked at O(1) cost first (size, verity
superblock, root hash from the top hash block), then copied to ``pods/`` while its
sha256 is computed and compared; only when every pod is in place is the inventory
directory written and ``current`` swapped, then the floor raised and what the new
inventory does not name removed. A crash at any point leaves the old inventory with
all its pods, or the new one with all of its. Anything refused leaves /persist as it
was (a half-copied pod is deleted).

Load (``load``) verifies ``current`` again (signature, floor, expiry) every boot.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from bay0.atomic import fsync_dir, write_atomic
from bay0.errors import FormatError, IdentityMismatchError, NotFoundError, VerificationError
from bay0.invariants import read_uevent

STORE = "/persist/spine"
KEYS = "/etc/spine/keys"
STAGE = "/mnt/stage"
STAGE_PARTNAME = "spine_stage"
INVENTORY = "inventory.json"
SIGNATURE = "inventory.json.minisig"
MAX_SIGNATURE_BYTES = 16384
CHUNK = 4 << 20  # bytes copied per step (the main loop pings the watchdog in between)
BLOCK = 4096


@dataclass(frozen=True)
class HeaderIdentity:
    """What a pod's header says about it, read at O(1) cost (no sha256)."""

    size: int
    data_size: int
    hash_offset: int
    root_hash: str
    salt: str


@dataclass(frozen=True)
class Loaded:
    """A verified inventory and where its pods are."""

    inventory: Any  # bay0.formats.inventory.Inventory
    key_id: str
    pods: str

    def pod_path(self, persona: Any) -> str:
        return pod_path(self.pods, persona)


@dataclass(frozen=True)
class ImportResult:
    """What an import did: ``imported`` and the version, or why nothing happened."""

    imported: bool
    version: int | None
    reason: str


def pod_path(pods: str, persona: Any) -> str:
    """Where a persona's image lives under ``pods`` (named by its sha256)."""
    return os.path.join(pods, f"{persona.image.sha256}.img")


# ---- reading what is trusted -----------------------------------------------------------


def load_trusted_keys(directory: str = KEYS) -> list[Any]:
    """The trust-root public keys (``*.pub``); raises ``NotFoundError`` when there is none."""
    from bay0.formats import minisign

    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".pub"))
    except OSError as e:
        raise NotFoundError(f"trust-root keys: cannot read {directory}: {e.strerror}",
                            "the Spine must ship keys/*.pub in /etc/spine/keys") from e
    keys = []
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            keys.append(minisign.PublicKey.parse(f.read(4096)))
    if not keys:
        raise NotFoundError(f"no trust-root keys in {directory}",
                            "the Spine must ship keys/*.pub in /etc/spine/keys")
    return keys


def read_header_identity(fd: int, record: Any) -> HeaderIdentity:
    """The O(1) identity of the open image ``fd``, read where ``record`` says the tree is.

    Reads two blocks: the verity superblock at ``record.hash_offset`` and the top hash
    block, whose salted hash is the root hash. Raises ``FormatError`` (no superblock).
    """
    from bay0.formats import verity

    size = os.fstat(fd).st_size
    block = os.pread(fd, BLOCK, record.hash_offset)
    sb = verity.parse_superblock(block)
    geometry = verity.tree_geometry(sb.data_blocks)
    top = record.hash_offset + geometry.level_starts[-1] * BLOCK if geometry.levels else 0
    root = verity.root_hash_of(os.pread(fd, BLOCK, top).ljust(BLOCK, b"\0"), sb.salt)
    return HeaderIdentity(size, sb.data_blocks * BLOCK, record.hash_offset, root, sb.salt.hex())


def check_header(fd: int, persona: Any) -> None:
    """Raise ``IdentityMismatchError`` (or ``FormatError``) when the image is not the
    one ``persona`` pins, comparing size, data size, hash offset, salt and root hash."""
    from bay0.formats.inventory import O1_IDENTITY_FIELDS, check_identity

    try:
        identity = read_header_identity(fd, persona.image)
    except FormatError as e:
        raise IdentityMismatchError(f"persona {persona.name}: image has no valid verity "
                                    f"superblock at {persona.image.hash_offset}: {e.message}",
                                    "deploy the pod the inventory names") from e
    check_identity(persona, identity, fields=O1_IDENTITY_FIELDS)


class Store:
    """bay0's inventory store under ``root`` (``/persist/spine``)."""

    def __init__(self, root: str = STORE, keys_dir: str = KEYS, *, clock=time.time) -> None:
        self.root = root
        self.keys_dir = keys_dir
        self.clock = clock
        self.pods = os.path.join(root, "pods")

    # -- floor and current --

    def floor(self) -> int:
        """The highest version ever accepted (0 when none); raises ``FormatError``."""
        try:
            with open(os.path.join(self.root, "inventory.floor"), "rb") as f:
                text = f.read(64).decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise FormatError(f"{self.root}/inventory.floor holds {text!r}, not a version",
                              "the floor is bay0's record of the last accepted version")
        return int(text)

    def raise_floor(self, version: int) -> None:
        """Record ``version`` as the floor when it is above the current one."""
        if version > self.floor():
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(self.root, "inventory.floor"), f"{version}\n".encode(),
                         mode=0o600, overwrite=True)

    def _verify(self, directory: str, floor: int) -> tuple[Any, Any]:
        from bay0.formats.inventory import verify_signed

        data = _read(os.path.join(directory, INVENTORY), 1 << 20)
        signature = _read(os.path.join(directory, SIGNATURE), MAX_SIGNATURE_BYTES)
        keys = load_trusted_keys(self.keys_dir)
        return verify_signed(data, signature, keys, floor=floor, now=int(self.clock()))

    def load(self) -> Loaded:
        """Verify and return the current inventory; raises ``NotFoundError`` (none
        imported), ``VerificationError`` and ``FormatError`` subclasses."""
        current = os.path.join(self.root, "current")
        if not os.path.isdir(current):
            raise NotFoundError("no inventory has been imported yet",
                                "deploy one: spinectl deploy writes the staging partition")
        inventory, verified = self._verify(current, self.floor())
        self.raise_floor(inventory.version)  # heals a crash between swap and floor
        return Loaded(inventory, verified.key_id_hex, self.pods)

    # -- import --

    def import_steps(self, stage: str) -> Generator[None, None, ImportResult]:
        """Import the inventory staged under ``stage``, yielding between chunks of work.

        Returns (via StopIteration) an ``ImportResult``; raises ``VerificationError`` /
        ``FormatError`` subclasses, ``NotFoundError`` (a pod missing) with /persist
        untouched.
        """
        if not os.path.exists(os.path.join(stage, INVENTORY)):
            return ImportResult(False, None, "nothing staged")
        floor = self.floor()
        inventory, _ = self._verify(stage, floor)
        if inventory.version == floor and self._current_ok(floor):
            return ImportResult(False, inventory.version, f"version {floor} is already installed")
        os.makedirs(self.pods, mode=0o700, exist_ok=True)
        for persona in inventory.personas:
            yield from self._import_pod(stage, persona)
        self._commit(stage, inventory.version)
        self.raise_floor(inventory.version)
        self._collect_garbage(inventory)
        return ImportResult(True, inventory.version, "imported")

    def _current_ok(self, floor: int) -> bool:
        try:
            return self._verify(os.path.join(self.root, "current"), floor)[0].version == floor
        except (VerificationError, FormatError, NotFoundError, OSError):
            return False

    def _import_pod(self, stage: str, persona: Any) -> Generator[None, None, None]:
        target = pod_path(self.pods, persona)
        if os.path.exists(target):
            with _open_ro(target) as fd:
                check_header(fd, persona)  # content-named: same sha256, same bytes
            return
        source = os.path.join(stage, "pods", persona.image.file)
        try:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise NotFoundError(f"persona {persona.name}: pod {persona.image.file} is not staged "
                                f"({e.strerror})", "deploy the inventory with its pods") from e
        try:
            check_header(src, persona)
            yield from _copy_checked(src, target, persona)
        finally:
            os.close(src)

    def _commit(self, stage: str, version: int) -> None:
        directory = os.path.join(self.root, "inventories", str(version))
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.makedirs(directory, mode=0o700)
        for name, limit in ((INVENTORY, 1 << 20), (SIGNATURE, MAX_SIGNATURE_BYTES)):
            write_atomic(os.path.join(directory, name), _read(os.path.join(stage, name), limit),
                         mode=0o600)
        fsync_dir(os.path.dirname(directory))
        link = os.path.join(self.root, ".current.tmp")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join("inventories", str(version)), link)
        os.replace(link, os.path.join(self.root, "current"))  # the commit point
        fsync_dir(self.root)

    def _collect_garbage(self, inventory: Any) -> None:
        keep = {f"{p.image.sha256}.img" for p in inventory.personas}
        for name in os.listdir(self.pods):
            if name not in keep:
                _remove(os.path.join(self.pods, name))
        versions = os.path.join(self.root, "inventories")
        for name in os.listdir(versions):
            if name != str(inventory.version):
                shutil.rmtree(os.path.join(versions, name), ignore_errors=True)


def import_stage(store: Store, stage: str) -> ImportResult:
    """Run ``store.import_steps(stage)`` to the end (tests, and callers with no watchdog)."""
    steps = store.import_steps(stage)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _copy_checked(src: int, target: str, persona: Any) -> Generator[None, None, None]:
    """Copy ``src`` beside ``target``, hashing as it goes; publish only if sha256 matches."""
    tmp = target + ".part"
    _remove(tmp)
    digest = hashlib.sha256()
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while chunk := os.pread(src, CHUNK, offset):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            offset += len(chunk)
            yield
        os.fsync(out)
    except BaseException:
        os.close(out)
        _remove(tmp)
        raise
    os.close(out)
    if digest.hexdigest() != persona.image.sha256 or offset != persona.image.size:
        _remove(tmp)
        raise IdentityMismatchError(
            f"persona {persona.name}: staged pod {persona.image.file} has sha256 "
            f"{digest.hexdigest()} ({offset} bytes), the inventory pins {persona.image.sha256}",
            "deploy the pod the inventory names, or update the entry and re-sign")
    os.replace(tmp, target)


def _read(path: str, limit: int) -> bytes:
    try:
        with _open_ro(path) as fd:
            data = os.read(fd, limit + 1)
    except FileNotFoundError as e:
        raise NotFoundError(f"{path} does not exist", "deploy a signed inventory") from e
    if len(data) > limit:
        raise FormatError(f"{path} is larger than {limit} bytes", "this is not an inventory file")
    return data


class _open_ro:  # noqa: N801 - used like open()
    """``with _open_ro(path) as fd``: read-only, never through a final symlink."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


# ---- the staging partition ------------------------------------------------------------


def find_partition(name: str = STAGE_PARTNAME, sysfs: str = "/sys", dev: str = "/dev") -> str | None:
    """``/dev/<node>`` of the one partition whose GPT name is ``name``; None when absent.

    Raises ``FormatError`` when several partitions carry the name (a second disk
    must not be able to stand in for the staging area).
    """
    found = []
    base = os.path.join(sysfs, "class/block")
    for node in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            fields = read_uevent(os.path.join(base, node, "uevent"))
        except OSError:
            continue
        if fields.get("PARTNAME") == name:
            found.append(os.path.join(dev, fields.get("DEVNAME", node)))
    if len(found) > 1:
        raise FormatError(f"partition {name} found {len(found)} times ({', '.join(found)})",
                          "remove the extra disk; bay0 imports only from its own disk")
    return found[0] if found else None


def mount_stage(device: str, target: str = STAGE) -> None:
    """Mount the staging ext4 read-only, nodev, nosuid, noexec (no journal replay)."""
    from bay0.sys import mount as m

    flags = m.MS_RDONLY | m.MS_NODEV | m.MS_NOSUID | m.MS_NOEXEC
    m.mount(device, target, "ext4", flags, "noload")


def unmount_stage(target: str = STAGE) -> None:
    from bay0.sys import mount as m

    try:
        m.umount2(target, 0)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise


def summarize(error: BaseException) -> tuple[str, str]:
    """(message, hint) of any error, for one log line."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message, getattr(error, "hint", "")


__all__: Sequence[str] = (
    "HeaderIdentity", "ImportResult", "Loaded", "Store", "check_header", "find_partition",
    "import_stage", "load_trusted_keys", "mount_stage", "pod_path", "read_header_identity",
    "summarize", "unmount_stage",
)
