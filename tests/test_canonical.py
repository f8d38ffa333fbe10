from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bay0.errors import FormatError
from bay0.formats import canonical

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_is_canonical(value) -> None:
    data = canonical.dumps(value)
    assert canonical.loads(data) == value
    assert canonical.is_canonical(data)


def test_sorted_compact_utf8() -> None:
    assert canonical.dumps({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":1.5}', "float"),
        (b'{"a":NaN}', "NaN"),
        (b"\xff", "not UTF-8"),
        (b"{", "not valid JSON"),
    ],
)
def test_strict_parse_rejects(data: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        canonical.loads(data)


def test_non_canonical_bytes_are_detected() -> None:
    assert not canonical.is_canonical(b'{"b":1, "a":2}')
    with pytest.raises(FormatError):
        canonical.dumps({"x": 0.5})
