"""``GET /v1/events`` across services of one state dir: numbers are never given twice, and a
client that resumes with the last one it saw continues without a gap, or is told of it."""

from __future__ import annotations

import json

import pytest
from test_api import serving, stream, submit, wait_for

from corra.api._events import NUMBERS_FILE, RESERVED_NUMBERS, EventLog
from corra.processes._lifecycle import ProcessState
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec import ProcessSpec


async def run_one(served, name: str) -> list[dict]:
    await submit(served.http, ["true"], name=name)
    await wait_for(served.http, name, "finished")
    return await stream(served, "/v1/events")


async def test_a_client_resumes_across_a_restart_without_a_gap(tmp_path):
    async with serving(tmp_path) as served:
        first = await run_one(served, "before")
    seen = first[-1]["seq"]
    numbers = json.loads((tmp_path / NUMBERS_FILE).read_text())
    assert numbers == {"reserved": RESERVED_NUMBERS, "given": seen}
    assert (tmp_path / NUMBERS_FILE).stat().st_mode & 0o777 == 0o600
    async with serving(tmp_path) as served:
        after = await run_one(served, "after")
        assert after[0]["seq"] == RESERVED_NUMBERS + 1  # (never a number given before)
        resumed = await stream(served, "/v1/events", {"since": str(seen)})
        assert resumed == after and "gap" not in resumed[0]  # (nothing was given in between)
        # One that missed the last event of the service before is told, then gets the rest.
        gap, *rest = await stream(served, "/v1/events", {"since": str(seen - 1)})
        assert gap["gap"] is True and gap["since"] == seen - 1 and rest == after
        assert "the service restarted" in gap["reason"]


async def test_after_a_service_that_did_not_stop_cleanly_old_positions_get_a_gap(tmp_path):
    async with serving(tmp_path) as served:
        seen = (await run_one(served, "before"))[-1]["seq"]
    # As a service killed with SIGKILL leaves it: its block reserved, what it gave unknown.
    (tmp_path / NUMBERS_FILE).write_text(json.dumps({"reserved": RESERVED_NUMBERS}))
    async with serving(tmp_path) as served:
        after = await run_one(served, "after")
        assert after[0]["seq"] == RESERVED_NUMBERS + 1
        gap, *rest = await stream(served, "/v1/events", {"since": str(seen)})
        assert gap["gap"] is True and gap["next_seq"] == RESERVED_NUMBERS + 1 and rest == after


@pytest.mark.parametrize("content", ["not json", '{"reserved": "x"}', "[]"])
async def test_an_unreadable_numbers_file_starts_after_any_number_given(tmp_path, content):
    (tmp_path / NUMBERS_FILE).write_text(content)
    async with serving(tmp_path) as served:
        after = await run_one(served, "p")
        assert after[0]["seq"] > 10**15  # (the clock's microseconds: above any block)


def test_events_beyond_what_is_kept_are_said_missing(tmp_path):
    log = EventLog(retained=3, numbers=tmp_path / NUMBERS_FILE)
    log.open()
    record = ProcessRecord("p1", ProcessSpec(argv=("true",)), ProcessState(updated_at=1.0), 1.0)
    for number in range(5):
        log.append(record, Transition(float(number), "submit", "created", "created", 1))
    assert [event["seq"] for event in log.since(0)] == [3, 4, 5]
    assert log.gap(0) is None and log.gap(2) is None and log.gap(5) is None
    assert "only the last 3 events are kept" in log.gap(1)["reason"]
    assert "no event here had that number" in log.gap(6)["reason"]


def test_numbers_are_reserved_before_they_are_given(tmp_path):
    path = tmp_path / NUMBERS_FILE
    log = EventLog(numbers=path)
    log.open()
    assert json.loads(path.read_text())["reserved"] == RESERVED_NUMBERS
    log.last_seq = log.reserved  # (every number of the block given)
    assert log.full
    log.reserve()
    assert json.loads(path.read_text())["reserved"] == 2 * RESERVED_NUMBERS
