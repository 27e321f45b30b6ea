"""Records written by an older corra decode as the records of today (`corra._runtime`)."""

from __future__ import annotations

import json

import pytest

from corra._errors import CorruptRecord
from corra._runtime import RECORD_CODEC
from corra.processes._lifecycle import ProcessState, needs_recovery
from corra.processes._migrations import record_1_to_2
from corra.processes._record import ProcessRecord
from corra.processes._spec import ProcessSpec

HOST_REASON = "host unavailable: gpu1: gpu1: unavailable after 5 failed connects"


def schema_1(phase: str, reason: str | None, paused_from: str | None = None) -> bytes:
    """A record as corra wrote it at schema 1: no ``paused_by``, in the order of then."""
    record = ProcessRecord(
        "p1",
        ProcessSpec(argv=("true",)),
        ProcessState(phase=phase, paused_from=paused_from, reason=reason),  # type: ignore[arg-type]
        1.0,
    )
    document = json.loads(RECORD_CODEC.encode_generic(record))
    del document["data"]["state"]["paused_by"]
    document["schema"] = 1
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("phase", "reason", "paused_from", "paused_by"),
    [
        ("paused", HOST_REASON, "launching", "host"),
        ("paused", "paused on request", "running", "user"),
        ("paused", None, "running", "user"),
        ("paused", "host unavailable (a user's own words)", "running", "user"),
        ("running", None, None, None),
        ("failed", "host unavailable: h: down", None, None),
    ],
)
def test_a_schema_1_record_says_who_paused_it(phase, reason, paused_from, paused_by):
    record = RECORD_CODEC.decode(schema_1(phase, reason, paused_from))
    assert record.state.paused_by == paused_by
    assert (record.phase, record.state.reason) == (phase, reason)  # what users see: unchanged


def test_a_schema_1_host_pause_needs_recovery_and_a_user_pause_does_not():
    host = RECORD_CODEC.decode(schema_1("paused", HOST_REASON, "launching"))
    user = RECORD_CODEC.decode(schema_1("paused", "paused on request", "running"))
    assert needs_recovery(host.state) and not needs_recovery(user.state)


def test_the_migration_keeps_the_key_order_of_the_converter():
    upgraded = record_1_to_2(json.loads(schema_1("paused", HOST_REASON, "launching"))["data"])
    today = RECORD_CODEC.decode(schema_1("running", None))
    written = json.loads(RECORD_CODEC.encode_generic(today))
    assert list(upgraded["state"]) == list(written["data"]["state"])


@pytest.mark.parametrize("state", [None, 5, "paused", []])
def test_a_damaged_schema_1_record_is_left_for_the_converter_to_refuse(state):
    raw = json.dumps(
        {"schema": 1, "type": "ProcessRecord", "data": {"id": "p", "state": state}}
    ).encode()
    with pytest.raises(CorruptRecord, match="invalid ProcessRecord record"):
        RECORD_CODEC.decode(raw)
