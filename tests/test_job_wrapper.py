"""What the scheduler wrappers (`batch_job`, `task_job`) share (`corra.chaperone._wrapper`):
here, its records, written without importing json."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corra.chaperone import _wrapper

FLAT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=())),  # (lone surrogates too: environ has them)
)


@given(st.dictionaries(st.text(), FLAT_VALUES))
def test_records_are_written_as_json_writes_them(record: dict[str, object]):
    # (without importing json, which would cost every task's start about 5 ms)
    assert _wrapper.json_line(record) == json.dumps(record) + "\n"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1], {"a": 1}])
def test_what_a_flat_record_cannot_hold_is_refused(value: object):
    with pytest.raises(ValueError):
        _wrapper.json_line({"value": value})
