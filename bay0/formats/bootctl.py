"""Boot-control records on the raw ``spine_state`` partition (format 1).

Two 4096-byte text copies (copy 0 at byte 0, copy 1 at byte 4096), each with a
sequence number and a sha256 over its body. Readers take the valid copy with the
highest sequence; writers overwrite the other copy. The busybox reader/writer in
``initramfs/lib/bootctl.sh`` produces the same bytes; see
``docs/implementation/format-bootctl.md``.

Pure code: bytes and values in, values or errors out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

from bay0.errors import FormatError, SlotStateError, ValidationError

FORMAT_VERSION = 1
HEADER = f"SPINEBC {FORMAT_VERSION}"
RECORD_SIZE = 4096
COPY_OFFSETS = (0, RECORD_SIZE)
REGION_SIZE = 2 * RECORD_SIZE
KEYFILE_OFFSET = 65536
KEYFILE_SIZE = 512
STATE_MIN_SIZE = 1024 * 1024
PAD_BYTE = b"\n"
SLOT_NAMES = ("A", "B")
SLOT_KEYS = ("version", "root_hash", "salt", "data_size", "hash_offset", "priority", "tries", "good")
BODY_LINES = 3 + len(SLOT_NAMES) * len(SLOT_KEYS)  # header, seq, last_boot, slot lines
SEQ_LIMIT = 10**18  # decimals have at most 18 digits: busybox sh arithmetic never overflows
PRIORITY_MAX = 15
TRIES_MAX = 15
DEFAULT_TRIES = 3
ACTIVE_PRIORITY = 2  # activate(): the new slot gets 2, the other at most 1

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SALT = re.compile(r"(?:[0-9a-f]{2}){0,256}")
_VERSION = re.compile(r"[A-Za-z0-9._+~-]{1,64}")
_BODY_CHARS = re.compile(rb"[A-Za-z0-9._+~= \n-]*")
_REPROVISION = "re-initialise boot control with `spinectl provision`"


@dataclass(frozen=True)
class Slot:
    """One slot's verity parameters and boot state; ``Slot()`` is the empty slot.

    Raises ValidationError for values format 1 cannot carry.
    """

    version: str = ""
    root_hash: str = ""
    salt: str = ""
    data_size: int = 0
    hash_offset: int = 0
    priority: int = 0
    tries_left: int = 0
    good: bool = False

    def __post_init__(self) -> None:
        problem = _slot_problem(self)
        if problem:
            raise ValidationError(f"boot-control slot: {problem}",
                                  "take the slot's values from a verified Spine manifest")

    @property
    def empty(self) -> bool:
        """True when the slot holds no image (no root hash): never bootable."""
        return self.root_hash == ""

    @property
    def bootable(self) -> bool:
        return self.priority > 0 and (self.good or self.tries_left > 0)

    def to_dict(self) -> dict:
        return {
            "version": self.version or None,
            "root_hash": self.root_hash or None,
            "salt": self.salt,
            "data_size": self.data_size,
            "hash_offset": self.hash_offset,
            "priority": self.priority,
            "tries_left": self.tries_left,
            "good": self.good,
        }


def _slot_problem(s: Slot) -> str | None:
    if not all(isinstance(v, str) for v in (s.version, s.root_hash, s.salt)):
        return "version, root_hash and salt must be strings"
    if s.empty:
        rest = (s.version, s.salt, s.data_size, s.hash_offset, s.priority, s.tries_left, s.good)
        if rest != ("", "", 0, 0, 0, 0, False) or not isinstance(s.good, bool):
            return "an empty slot (no root hash) must have every other field at its default"
        return None
    checks = [
        (_VERSION.fullmatch(s.version), f"version {s.version!r} is not 1-64 of [A-Za-z0-9._+~-]"),
        (_HEX64.fullmatch(s.root_hash), "root_hash is not 64 lowercase hex digits"),
        (_SALT.fullmatch(s.salt), "salt is not lowercase hex of at most 256 bytes"),
        (_is_int(s.data_size) and 0 < s.data_size < SEQ_LIMIT and s.data_size % 4096 == 0,
         f"data_size {s.data_size!r} is not a positive multiple of 4096"),
        (_is_int(s.hash_offset) and s.data_size <= s.hash_offset < SEQ_LIMIT
         and s.hash_offset % 4096 == 0,
         f"hash_offset {s.hash_offset!r} is not a multiple of 4096 at or after data_size"),
        (_is_int(s.priority) and 0 <= s.priority <= PRIORITY_MAX,
         f"priority {s.priority!r} is not 0-{PRIORITY_MAX}"),
        (_is_int(s.tries_left) and 0 <= s.tries_left <= TRIES_MAX,
         f"tries_left {s.tries_left!r} is not 0-{TRIES_MAX}"),
        (isinstance(s.good, bool), "good is not a bool"),
    ]
    return next((msg for ok, msg in checks if not ok), None)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


EMPTY_SLOT = Slot()


@dataclass(frozen=True)
class BootControl:
    """The whole boot-control state: ``slots`` is ``(A, B)``; ``last_boot`` is A, B or None.

    Raises ValidationError for values format 1 cannot carry.
    """

    seq: int = 0
    last_boot: str | None = None
    slots: tuple[Slot, Slot] = field(default=(EMPTY_SLOT, EMPTY_SLOT))

    def __post_init__(self) -> None:
        if not (_is_int(self.seq) and 0 <= self.seq < SEQ_LIMIT):
            raise ValidationError(f"boot-control seq {self.seq!r} is out of range", _REPROVISION)
        if self.last_boot not in (None, *SLOT_NAMES):
            raise ValidationError(f"boot-control last_boot {self.last_boot!r} is not A, B or None")
        if not (isinstance(self.slots, tuple) and len(self.slots) == 2
                and all(isinstance(s, Slot) for s in self.slots)):
            raise ValidationError("boot-control slots must be a tuple of two Slot values")

    def slot(self, name: str) -> Slot:
        """The slot called ``name``; raises SlotStateError for an unknown name."""
        return self.slots[_index(name)]

    def with_slot(self, name: str, slot: Slot) -> BootControl:
        slots = list(self.slots)
        slots[_index(name)] = slot
        return replace(self, slots=(slots[0], slots[1]))

    def to_dict(self) -> dict:
        order = boot_order(self)
        return {
            "seq": self.seq,
            "last_boot": self.last_boot,
            "slots": {n: s.to_dict() for n, s in zip(SLOT_NAMES, self.slots, strict=True)},
            "next_boot": order[0] if order else None,
            "boot_order": order,
        }


def _index(name: object) -> int:
    if name not in SLOT_NAMES:
        raise SlotStateError(f"unknown slot {name!r}: slots are A and B", "name slot A or B")
    return SLOT_NAMES.index(name)  # type: ignore[arg-type]


def other(name: str) -> str:
    """The other slot's name; raises SlotStateError for an unknown name."""
    return SLOT_NAMES[1 - _index(name)]


# --- encoding ---------------------------------------------------------------------


def _body(bc: BootControl) -> bytes:
    lines = [HEADER, f"seq={bc.seq}", f"last_boot={bc.last_boot or '-'}"]
    for name, s in zip(SLOT_NAMES, bc.slots, strict=True):
        values = (s.version, s.root_hash, s.salt, s.data_size, s.hash_offset,
                  s.priority, s.tries_left, int(s.good))
        lines += [f"{name}.{key}={value}" for key, value in zip(SLOT_KEYS, values, strict=True)]
    return ("\n".join(lines) + "\n").encode("ascii")


def encode(bc: BootControl) -> bytes:
    """One 4096-byte record: body lines, ``sum=<sha256 of body>``, newline padding."""
    body = _body(bc)
    text = body + b"sum=" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    return text + PAD_BYTE * (RECORD_SIZE - len(text))


def decode(record: bytes) -> BootControl:
    """Parse one record strictly (unknown or reordered keys are rejected).

    Raises FormatError naming the first problem: size, checksum, padding, key, value.
    """
    if len(record) != RECORD_SIZE:
        raise _bad(f"is {len(record)} bytes, not {RECORD_SIZE}")
    parts = record.split(b"\n", BODY_LINES + 1)
    if len(parts) != BODY_LINES + 2:
        raise _bad(f"has fewer than {BODY_LINES + 1} lines")
    body = b"\n".join(parts[:BODY_LINES]) + b"\n"
    if parts[BODY_LINES] != b"sum=" + hashlib.sha256(body).hexdigest().encode():
        raise _bad("fails its checksum (torn or corrupt write)")
    if parts[BODY_LINES + 1].strip(PAD_BYTE):
        raise _bad("has bytes other than newlines after its checksum line")
    if not _BODY_CHARS.fullmatch(body):
        raise _bad("contains characters outside the format 1 alphabet")
    return _parse(body.decode("ascii").splitlines())


def _bad(problem: str) -> FormatError:
    return FormatError(f"boot-control record {problem}", _REPROVISION)


def _parse(lines: list[str]) -> BootControl:
    if lines[0] != HEADER:
        raise _bad(f"header {lines[0]!r} is not {HEADER!r}")
    keys = ["seq", "last_boot"] + [f"{n}.{k}" for n in SLOT_NAMES for k in SLOT_KEYS]
    values: dict[str, str] = {}
    for key, line in zip(keys, lines[1:], strict=True):
        got, sep, value = line.partition("=")
        if got != key or not sep:
            raise _bad(f"line {line!r} is not the expected key {key!r}")
        values[key] = value
    last = values["last_boot"]
    if last not in ("-", *SLOT_NAMES):
        raise _bad(f"last_boot {last!r} is not A, B or -")
    try:
        slots = tuple(_parse_slot(name, values) for name in SLOT_NAMES)
        return BootControl(_decimal("seq", values["seq"]), None if last == "-" else last, slots)
    except ValidationError as e:
        raise _bad(f"holds an invalid value ({e.message})") from e


def _parse_slot(name: str, values: dict[str, str]) -> Slot:
    def get(key: str) -> str:
        return values[f"{name}.{key}"]

    good = get("good")
    if good not in ("0", "1"):
        raise _bad(f"{name}.good {good!r} is not 0 or 1")
    return Slot(get("version"), get("root_hash"), get("salt"),
                *(_decimal(f"{name}.{k}", get(k)) for k in SLOT_KEYS[3:7]), good == "1")


def _decimal(key: str, text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise _bad(f"{key} {text!r} is not a canonical decimal of at most 18 digits")
    return int(text)


# --- the two-copy region ------------------------------------------------------------


def read_region(region: bytes) -> tuple[BootControl, int]:
    """The valid copy with the highest seq and its index (a tie picks copy 0).

    ``region`` is at least the first 8192 bytes of ``spine_state``.
    Raises FormatError when the region is short or neither copy is valid.
    """
    if len(region) < REGION_SIZE:
        raise _bad(f"region is {len(region)} bytes, shorter than {REGION_SIZE}")
    found: list[tuple[BootControl, int]] = []
    problems = []
    for index, offset in enumerate(COPY_OFFSETS):
        try:
            found.append((decode(region[offset:offset + RECORD_SIZE]), index))
        except FormatError as e:
            problems.append(f"copy {index}: {e.message}")
    if not found:
        raise FormatError("no valid boot-control record (" + "; ".join(problems) + ")",
                          _REPROVISION)
    # max() keeps the first of equal keys, so copy 0 wins a tie.
    return max(found, key=lambda item: item[0].seq)


def plan_write(region: bytes, new_bc: BootControl) -> tuple[int, bytes]:
    """Where and what to write for ``new_bc``: the copy the reader did not pick.

    The record carries seq = current seq + 1 (``new_bc.seq`` is ignored), so a
    complete write wins and a torn one leaves the current copy in charge.
    Raises FormatError when the region holds no valid copy or seq is exhausted.
    """
    current, index = read_region(region)
    if current.seq + 1 >= SEQ_LIMIT:
        raise FormatError("boot-control sequence number is exhausted", _REPROVISION)
    return COPY_OFFSETS[1 - index], encode(replace(new_bc, seq=current.seq + 1))


def initial_region(bc: BootControl) -> bytes:
    """8192 bytes for provisioning: both copies hold ``bc`` (same seq, copy 0 wins)."""
    record = encode(bc)
    return record + record


def check_keyfile(data: bytes) -> bytes:
    """The persist keyfile bytes; raises FormatError when short or all zero (unprovisioned)."""
    if len(data) != KEYFILE_SIZE or data.count(0) == KEYFILE_SIZE:
        raise FormatError("the persist keyfile in spine_state is missing or blank", _REPROVISION)
    return data


# --- transitions (pure: each returns a new BootControl) -------------------------------


def boot_order(bc: BootControl) -> list[str]:
    """Slots the initramfs tries, in order: priority > 0 and (good or tries left),
    highest priority first, a tie goes to A."""
    candidates = [(n, s) for n, s in zip(SLOT_NAMES, bc.slots, strict=True) if s.bootable]
    return [n for n, _ in sorted(candidates, key=lambda item: -item[1].priority)]


def next_boot(bc: BootControl) -> str | None:
    """The slot the initramfs would boot next, or None when nothing is bootable."""
    order = boot_order(bc)
    return order[0] if order else None


def consume_try(bc: BootControl, name: str) -> BootControl:
    """Record a boot attempt of ``name``: one try fewer (never below 0); last_boot = name.

    Every boot spends a try, a good slot's too: a good slot's tries count the boots
    since bay0 last confirmed it (``mark_good`` refills them), so a good slot that
    stops reaching a stable uptime runs out of tries like a trial slot; it stays
    bootable, but ``last_chance`` then tells the initramfs to read it end to end first.
    Raises SlotStateError for an unknown slot or one that is not bootable.
    """
    slot = bc.slot(name)
    if not slot.bootable:
        raise SlotStateError(f"slot {name} is not bootable (priority {slot.priority}, "
                             f"tries {slot.tries_left}, good {int(slot.good)})",
                             "boot a slot from boot_order()")
    tries = max(slot.tries_left - 1, 0)
    return replace(bc.with_slot(name, replace(slot, tries_left=tries)), last_boot=name)


def last_chance(bc: BootControl, name: str) -> bool:
    """True when ``name``, after ``consume_try``, has no try left: the boot now under way
    is its last before it leaves the boot order (trial) or keeps booting unconfirmed
    (good). The initramfs reads such a slot end to end through dm-verity before using
    it, so a corrupt image is caught there instead of restarting the machine.
    """
    return bc.slot(name).tries_left == 0


def mark_good(bc: BootControl, name: str) -> BootControl:
    """Mark ``name`` good and refill its tries to ``DEFAULT_TRIES`` (bay0 does this once
    the booted slot has run stably and was read end to end; so does `spinectl mark-good`).

    Raises SlotStateError for an unknown, empty or marked-bad (priority 0) slot.
    """
    slot = _require_image(bc, name, "good")
    if slot.priority == 0:
        raise SlotStateError(f"cannot mark slot {name} good: it is marked bad (priority 0)",
                             f"flash slot {name} again to re-activate it")
    return bc.with_slot(name, replace(slot, good=True, tries_left=DEFAULT_TRIES))


def mark_bad(bc: BootControl, name: str) -> BootControl:
    """Take ``name`` out of the boot order: priority 0, tries 0, not good (image kept).

    Raises SlotStateError for an unknown or empty slot.
    """
    slot = _require_image(bc, name, "bad")
    return bc.with_slot(name, replace(slot, priority=0, tries_left=0, good=False))


def invalidate(bc: BootControl, name: str) -> BootControl:
    """Empty ``name`` before its partition is overwritten.

    Raises SlotStateError for an unknown slot or the slot that would boot next.
    """
    bc.slot(name)
    if next_boot(bc) == name:
        raise SlotStateError(f"slot {name} is the slot that would boot next",
                             f"flash slot {other(name)}, or mark slot {name} bad first")
    return bc.with_slot(name, EMPTY_SLOT)


def activate(bc: BootControl, name: str, *, version: str, root_hash: str, salt: str,
             data_size: int, hash_offset: int, tries: int = DEFAULT_TRIES) -> BootControl:
    """Point boot control at a freshly written, verified image in ``name``.

    The slot gets priority 2 (the other slot at most 1), ``tries`` tries and good = false.
    Raises SlotStateError for an unknown slot or tries outside 1-15, ValidationError
    for bad verity parameters.
    """
    bc.slot(name)
    if not (_is_int(tries) and 1 <= tries <= TRIES_MAX):
        raise SlotStateError(f"cannot activate slot {name} with {tries!r} tries",
                             f"give 1-{TRIES_MAX} tries")
    new = Slot(version, root_hash, salt, data_size, hash_offset, ACTIVE_PRIORITY, tries, False)
    peer = bc.slot(other(name))
    peer = replace(peer, priority=min(peer.priority, ACTIVE_PRIORITY - 1))
    return bc.with_slot(name, new).with_slot(other(name), peer)


def _require_image(bc: BootControl, name: str, mark: str) -> Slot:
    slot = bc.slot(name)
    if slot.empty:
        raise SlotStateError(f"cannot mark slot {name} {mark}: it is empty (no image)",
                             f"flash an image into slot {name} first")
    return slot
