"""Boot-control format 1: encoding, strict decoding, the two-copy region, transitions,
and torn writes (property tests)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bay0.errors import FormatError, SlotStateError, ValidationError
from bay0.formats import bootctl as bcf
from bay0.formats.bootctl import BootControl, Slot

H1, H2 = "1" * 64, "2f" * 32
IMG = dict(root_hash=H1, salt="ab" * 32, data_size=8192, hash_offset=8192)


def slot(priority=1, tries=0, good=False, root_hash=H1, version="1.0") -> Slot:
    return Slot(version, root_hash, "ab" * 32, 8192, 8192, priority, tries, good)


def state(a: Slot = bcf.EMPTY_SLOT, b: Slot = bcf.EMPTY_SLOT, seq=0, last=None) -> BootControl:
    return BootControl(seq, last, (a, b))


def seal(body: str) -> bytes:
    """A record with a correct checksum around any body text (to test the parser)."""
    raw = body.encode()
    text = raw + b"sum=" + hashlib.sha256(raw).hexdigest().encode() + b"\n"
    return text + b"\n" * (4096 - len(text))


GOOD = state(slot(2, 3), slot(1, 0, True, H2, "0.9"), seq=7, last="B")


# --- encoding and strict decoding -------------------------------------------------------


def test_record_layout_is_text_then_checksum_then_newline_padding() -> None:
    record = bcf.encode(GOOD)
    assert len(record) == 4096
    lines = record.decode().split("\n")
    assert lines[:3] == ["SPINEBC 1", "seq=7", "last_boot=B"]
    assert lines[3:11] == [
        "A.version=1.0", f"A.root_hash={H1}", f"A.salt={'ab' * 32}", "A.data_size=8192",
        "A.hash_offset=8192", "A.priority=2", "A.tries=3", "A.good=0",
    ]
    assert lines[18] == "B.good=1"
    body = record[: record.index(b"sum=")]
    assert lines[19] == "sum=" + hashlib.sha256(body).hexdigest()
    assert set(lines[20:]) == {""}


@pytest.mark.parametrize("bc", [GOOD, BootControl(), state(slot(15, 15), seq=10**18 - 1, last="A")])
def test_decode_inverts_encode(bc: BootControl) -> None:
    assert bcf.decode(bcf.encode(bc)) == bc
    assert bcf.encode(bcf.decode(bcf.encode(bc))) == bcf.encode(bc)


def _body(**changes: str) -> str:
    lines = bcf.encode(GOOD).decode().split("\n")[:19]
    out = []
    for line in lines:
        key = line.split("=")[0] if "=" in line else line
        out.append(changes.get(key, line) if key in changes else line)
    return "\n".join(out) + "\n"


BAD_RECORDS = {
    "short": bcf.encode(GOOD)[:4095],
    "long": bcf.encode(GOOD) + b"\n",
    "bit flip in body": bcf.encode(GOOD).replace(b"seq=7", b"seq=8"),
    "junk in padding": bcf.encode(GOOD)[:-1] + b"\x00",
    "zeros": bytes(4096),
    "header version 2": seal(_body(**{"SPINEBC 1": "SPINEBC 2"})),
    "unknown key": seal(_body(**{"A.good": "A.colour=red"})),
    "reordered keys": seal(_body(**{"seq": "last_boot=B", "last_boot": "seq=7"})),
    "leading zero": seal(_body(seq="seq=07")),
    "19 digits": seal(_body(seq="seq=" + "1" * 19)),
    "priority 16": seal(_body(**{"A.priority": "A.priority=16"})),
    "good 2": seal(_body(**{"A.good": "A.good=2"})),
    "last_boot C": seal(_body(last_boot="last_boot=C")),
    "uppercase hash": seal(_body(**{"A.root_hash": "A.root_hash=" + "A" * 64})),
    "odd salt": seal(_body(**{"A.salt": "A.salt=abc"})),
    "bad version char": seal(_body(**{"A.version": "A.version=1/0"})),
    "empty version": seal(_body(**{"A.version": "A.version="})),
    "unaligned data_size": seal(_body(**{"A.data_size": "A.data_size=4097"})),
    "hash before data": seal(_body(**{"A.hash_offset": "A.hash_offset=4096"})),
    "empty slot with priority": seal(_body(**{"A.root_hash": "A.root_hash="})),
    "missing sum": bcf.encode(GOOD).replace(b"sum=", b"sun="),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_decode_rejects(name: str) -> None:
    with pytest.raises(FormatError, match="boot-control record") as info:
        bcf.decode(BAD_RECORDS[name])
    assert info.value.hint


@pytest.mark.parametrize("kwargs, match", [
    (dict(root_hash="", priority=1), "empty slot"),
    (dict(root_hash=None), "strings"),
    (dict(root_hash=H1, version=""), "version"),
    (dict(root_hash=H1, version="v", data_size=0), "data_size"),
    (dict(root_hash=H1, version="v", data_size=4096, hash_offset=4096, priority=16), "priority"),
    (dict(root_hash=H1, version="v", data_size=4096, hash_offset=4096, tries_left=-1), "tries"),
    (dict(root_hash=H1, version="v", data_size=4096, hash_offset=4096, good=1), "good"),
])
def test_slot_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Slot(**kwargs)


def test_boot_control_validation() -> None:
    with pytest.raises(ValidationError, match="seq"):
        BootControl(seq=10**18)
    with pytest.raises(ValidationError, match="last_boot"):
        BootControl(last_boot="C")


# --- the two-copy region -------------------------------------------------------------------


def region(first: bytes, second: bytes) -> bytes:
    return first + second


def test_reader_takes_the_highest_valid_seq_and_ties_go_to_copy_0() -> None:
    old, new = replace(GOOD, seq=3), replace(GOOD, seq=4, last_boot="A")
    assert bcf.read_region(region(bcf.encode(old), bcf.encode(new))) == (new, 1)
    assert bcf.read_region(region(bcf.encode(new), bcf.encode(old))) == (new, 0)
    tie = replace(new, seq=3)
    assert bcf.read_region(region(bcf.encode(old), bcf.encode(tie))) == (old, 0)
    assert bcf.read_region(region(bytes(4096), bcf.encode(old))) == (old, 1)
    assert bcf.read_region(bcf.initial_region(GOOD) + b"rest of partition") == (GOOD, 0)


def test_no_valid_copy_is_a_format_error_naming_both() -> None:
    with pytest.raises(FormatError, match=r"no valid boot-control record \(copy 0: .*copy 1: "):
        bcf.read_region(region(bytes(4096), BAD_RECORDS["bit flip in body"]))
    with pytest.raises(FormatError, match="shorter"):
        bcf.read_region(bytes(8191))


def test_plan_write_targets_the_other_copy_with_the_next_seq() -> None:
    reg = bcf.initial_region(GOOD)
    offset, record = bcf.plan_write(reg, replace(GOOD, seq=0, last_boot="A"))
    assert offset == 4096
    assert bcf.decode(record) == replace(GOOD, seq=8, last_boot="A")
    reg = reg[:4096] + record
    offset, record = bcf.plan_write(reg, GOOD)
    assert offset == 0 and bcf.decode(record).seq == 9


def test_keyfile_check() -> None:
    assert bcf.check_keyfile(b"k" * 512) == b"k" * 512
    for bad in (bytes(512), b"k" * 511):
        with pytest.raises(FormatError, match="keyfile"):
            bcf.check_keyfile(bad)
    assert (bcf.KEYFILE_OFFSET, bcf.KEYFILE_SIZE, bcf.STATE_MIN_SIZE) == (65536, 512, 1 << 20)


# --- boot order and transitions -------------------------------------------------------------

E = bcf.EMPTY_SLOT


@pytest.mark.parametrize("a, b, order", [
    (E, E, []),
    (slot(2, 3), E, ["A"]),
    (E, slot(1, 0, True), ["B"]),
    (slot(1, 0, True), slot(2, 3), ["B", "A"]),
    (slot(2, 0, True), slot(1, 3), ["A", "B"]),
    (slot(1, 1), slot(1, 1), ["A", "B"]),          # tie goes to A
    (slot(2, 0, False), slot(1, 0, True), ["B"]),  # out of tries, not good
    (slot(0, 3, True), slot(1, 1), ["B"]),         # priority 0 never boots
])
def test_boot_order(a: Slot, b: Slot, order: list[str]) -> None:
    bc = state(a, b)
    assert bcf.boot_order(bc) == order
    assert bcf.next_boot(bc) == (order[0] if order else None)
    assert bc.to_dict()["boot_order"] == order


@pytest.mark.parametrize("before, name, after", [
    (state(slot(2, 3), slot(1, 0, True)), "A", state(slot(2, 2), slot(1, 0, True), last="A")),
    (state(slot(2, 1), E), "A", state(slot(2, 0), E, last="A")),
    # good slots spend tries too (boots since bay0 last confirmed them), never below 0
    (state(slot(2, 0, True), E, last="B"), "A", state(slot(2, 0, True), E, last="A")),
    (state(slot(1, 5, True), slot(2, 0)), "A", state(slot(1, 4, True), slot(2, 0), last="A")),
    (state(slot(1, 1, True), slot(2, 0)), "A", state(slot(1, 0, True), slot(2, 0), last="A")),
])
def test_consume_try(before: BootControl, name: str, after: BootControl) -> None:
    assert bcf.consume_try(before, name) == after


@pytest.mark.parametrize("before, name, last", [
    (state(slot(2, 3), E), "A", False),
    (state(slot(2, 1), E), "A", True),           # a trial slot's last try
    (state(slot(2, 3, True), E), "A", False),
    (state(slot(2, 1, True), E), "A", True),     # a good slot unconfirmed for 3 boots
    (state(slot(2, 0, True), E), "A", True),
])
def test_last_chance_after_the_try_is_spent(before: BootControl, name: str, last: bool) -> None:
    assert bcf.last_chance(bcf.consume_try(before, name), name) is last


def test_a_good_slot_that_stops_being_confirmed_stays_bootable_and_gets_read_in_full() -> None:
    bc = state(slot(2, bcf.DEFAULT_TRIES, True), slot(1, 0, True))
    chances = []
    for _ in range(bcf.DEFAULT_TRIES + 2):  # boots that never reach mark-good
        bc = bcf.consume_try(bc, bcf.boot_order(bc)[0])
        chances.append(bcf.last_chance(bc, "A"))
    assert bcf.boot_order(bc) == ["A", "B"]
    assert chances == [False] * (bcf.DEFAULT_TRIES - 1) + [True] * 3
    assert bcf.mark_good(bc, "A").slot("A").tries_left == bcf.DEFAULT_TRIES


@pytest.mark.parametrize("bc, name, match", [
    (state(slot(2, 0), slot(1, 0, True)), "A", "slot A is not bootable"),
    (state(E, slot(1, 0, True)), "A", "slot A is not bootable"),
    (state(slot(0, 3), slot(1, 0, True)), "A", "slot A is not bootable"),
    (GOOD, "C", "unknown slot 'C'"),
])
def test_consume_try_refuses(bc: BootControl, name: str, match: str) -> None:
    with pytest.raises(SlotStateError, match=match):
        bcf.consume_try(bc, name)


def test_mark_good_and_bad() -> None:
    bc = state(slot(2, 2), slot(1, 0, True))
    # marking good refills the tries: they count boots since the last confirmation
    assert bcf.mark_good(bc, "A") == state(slot(2, bcf.DEFAULT_TRIES, True), slot(1, 0, True))
    bad = bcf.mark_bad(bc, "A")
    assert bad == state(slot(0, 0), slot(1, 0, True))
    assert bcf.boot_order(bad) == ["B"]
    assert bcf.mark_bad(bad, "A") == bad  # idempotent
    assert bcf.boot_order(bcf.mark_bad(bad, "B")) == []


@pytest.mark.parametrize("fn, bc, name, match", [
    (bcf.mark_good, state(E, slot()), "A", "cannot mark slot A good: it is empty"),
    (bcf.mark_good, state(slot(0, 0), slot()), "A", "cannot mark slot A good: it is marked bad"),
    (bcf.mark_bad, state(slot(), E), "B", "cannot mark slot B bad: it is empty"),
    (bcf.mark_good, GOOD, "b", "unknown slot 'b'"),
    (bcf.mark_bad, GOOD, None, "unknown slot None"),
    (bcf.invalidate, state(slot(2, 3), E), "A", "slot A is the slot that would boot next"),
    (bcf.invalidate, GOOD, "X", "unknown slot"),
])
def test_transitions_refuse(fn, bc: BootControl, name, match: str) -> None:
    with pytest.raises(SlotStateError, match=match) as info:
        fn(bc, name)
    assert info.value.hint


def test_invalidate_empties_the_slot_and_takes_it_out_of_the_order() -> None:
    bc = state(slot(1, 0, True), slot(2, 0))  # B out of tries: A boots next
    out = bcf.invalidate(bc, "B")
    assert out == state(slot(1, 0, True), E) and out.slot("B").empty
    assert bcf.invalidate(out, "B") == out


@pytest.mark.parametrize("before, a_prio_after", [
    (state(slot(1, 0, True), E), 1),
    (state(slot(2, 0, True), E), 1),   # normalised: new slot 2, other at most 1
    (state(slot(0, 0), E), 0),         # a bad slot stays out
    (state(E, E), 0),
])
def test_activate(before: BootControl, a_prio_after: int) -> None:
    out = bcf.activate(before, "B", version="2.0", **IMG)
    assert out.slot("B") == Slot("2.0", H1, "ab" * 32, 8192, 8192, 2, 3, False)
    assert out.slot("A").priority == a_prio_after
    assert bcf.next_boot(out) == "B"


def test_activate_refuses_bad_input() -> None:
    with pytest.raises(SlotStateError, match="0 tries"):
        bcf.activate(GOOD, "B", version="2", tries=0, **IMG)
    with pytest.raises(SlotStateError, match="unknown slot"):
        bcf.activate(GOOD, "C", version="2", **IMG)
    with pytest.raises(ValidationError, match="root_hash"):
        bcf.activate(GOOD, "B", version="2", **{**IMG, "root_hash": "xyz"})


def test_flash_sequence_then_boots_then_falls_back() -> None:
    bc = state(slot(1, 0, True), E, last="A")
    bc = bcf.activate(bcf.invalidate(bc, "B"), "B", version="2.0", **IMG)
    for expected_tries in (2, 1, 0):
        assert bcf.next_boot(bc) == "B"
        bc = bcf.consume_try(bc, "B")
        assert bc.slot("B").tries_left == expected_tries
    assert bcf.boot_order(bc) == ["A"]
    assert bcf.boot_order(bcf.mark_good(bcf.activate(bc, "B", version="2.0", **IMG), "B")) == ["B", "A"]


# --- torn writes (property tests) ------------------------------------------------------------

hexes = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def full_slots(draw) -> Slot:
    data_size = draw(st.integers(1, 2**40)) * 4096
    return Slot(
        version=draw(st.from_regex(r"[A-Za-z0-9._+~-]{1,64}", fullmatch=True)),
        root_hash=draw(hexes),
        salt=draw(st.sampled_from(["", "ab" * 32, "0f" * 256])),
        data_size=data_size,
        hash_offset=data_size + draw(st.integers(0, 4)) * 4096,
        priority=draw(st.integers(0, 15)),
        tries_left=draw(st.integers(0, 15)),
        good=draw(st.booleans()),
    )


slots = st.one_of(st.just(bcf.EMPTY_SLOT), full_slots())
states = st.builds(BootControl, seq=st.integers(0, 10**12), last_boot=st.sampled_from([None, "A", "B"]),
                   slots=st.tuples(slots, slots))
TRANSITIONS = ["consume_try", "mark_good", "mark_bad", "invalidate", "activate"]


def apply(bc: BootControl, op: str, name: str) -> BootControl:
    """Apply a transition; a refused one leaves the state as it was."""
    try:
        if op == "activate":
            return bcf.activate(bc, name, version="9.9", **IMG)
        return getattr(bcf, op)(bc, name)
    except SlotStateError:
        return bc


def tear_prefix(old: bytes, new: bytes, cut: int) -> bytes:
    return new[:cut] + old[cut:]


def tear_sectors(old: bytes, new: bytes, mask: int) -> bytes:
    """The disk may persist 512-byte sectors of a 4 KiB write in any order."""
    return b"".join((new if mask >> i & 1 else old)[i * 512:(i + 1) * 512] for i in range(8))


def write_torn(reg: bytes, offset: int, record: bytes, torn) -> bytes:
    return reg[:offset] + torn(reg[offset:offset + 4096], record) + reg[offset + 4096:]


@settings(max_examples=100, deadline=None)
@given(states, states, st.sampled_from(TRANSITIONS), st.sampled_from("AB"),
       st.lists(st.integers(0, 4096), min_size=8, max_size=8), st.integers(0, 255),
       st.booleans())
def test_torn_write_yields_old_or_new_state(other_copy, bc, op, name, cuts, mask, junk) -> None:
    # The copy to be overwritten holds an older state, or junk that never was a record.
    older = bytes(range(256)) * 16 if junk else bcf.encode(replace(other_copy, seq=0))
    current = replace(bc, seq=bc.seq + 1)
    reg = bcf.encode(current) + older if name == "A" else older + bcf.encode(current)
    old_state, _ = bcf.read_region(reg)
    offset, record = bcf.plan_write(reg, apply(old_state, op, name))
    new_state = bcf.decode(record)
    assert new_state.seq == old_state.seq + 1
    tears = [lambda o, n, c=c: tear_prefix(o, n, c) for c in [*range(0, 4097, 512), *cuts]]
    tears.append(lambda o, n: tear_sectors(o, n, mask))
    for torn in tears:
        seen, _ = bcf.read_region(write_torn(reg, offset, record, torn))
        assert seen in (old_state, new_state)
    assert bcf.read_region(write_torn(reg, offset, record, lambda o, n: n))[0] == new_state


@settings(max_examples=60, deadline=None)
@given(states, st.lists(st.tuples(st.sampled_from(TRANSITIONS), st.sampled_from("AB"),
                                  st.integers(0, 4096)), min_size=1, max_size=12))
def test_a_run_of_torn_and_whole_writes_never_loses_the_state(bc, steps) -> None:
    reg = bcf.initial_region(bc)
    for op, name, cut in steps:
        before, _ = bcf.read_region(reg)
        offset, record = bcf.plan_write(reg, apply(before, op, name))
        reg = write_torn(reg, offset, record, lambda o, n, c=cut: tear_prefix(o, n, c))
        assert bcf.read_region(reg)[0] in (before, bcf.decode(record))


@settings(max_examples=40, deadline=None)
@given(states, st.integers(0, 4095), st.integers(0, 4095), st.integers(1, 255))
def test_both_copies_corrupt_is_a_format_error(bc, at0, at1, flip) -> None:
    record = bytearray(bcf.encode(bc))
    first, second = bytearray(record), bytearray(record)
    first[at0] ^= flip
    second[at1] ^= flip
    with pytest.raises(FormatError, match="no valid boot-control record"):
        bcf.read_region(bytes(first + second))
