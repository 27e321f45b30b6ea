"""`corra ps` as a user of docker ps expects it: the active processes and counts per phase by
default, everything with -a, ids with -q, pages with --limit and --cursor, filters that
combine; the same from the state dir and through the service."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from test_api_service import Service, corra
from test_cli_control import wait_phase

pytestmark = pytest.mark.slow

JOBS = """
[[process]]
name = "fetch-a"
argv = ["true"]
labels = { stage = "fetch", team = "a" }

[[process]]
name = "fetch-b"
argv = ["false"]
labels = { stage = "fetch", team = "b" }

[[process]]
name = "train-a"
argv = ["true"]
labels = { stage = "train", team = "a" }

[[process]]
name = "train-b"
argv = ["sh", "-c", "exit 3"]
labels = { stage = "train", team = "b" }
"""


def ps(state, *args: str) -> str:
    done = corra(state, "ps", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def listing(state, *args: str) -> tuple[list[str], str | None]:
    found = json.loads(ps(state, "--json", *args))
    assert list(found) == ["items", "next_cursor"]
    return [item["name"] for item in found["items"]], found["next_cursor"]


def check_listings(state) -> None:
    """What every reader of ``state`` (a state dir, or through its service) lists: the four
    processes of `JOBS`, ended, and ``nap``, running."""
    everything = ["fetch-a", "fetch-b", "train-a", "train-b", "nap"]
    # the default: the active processes, then the counts of every phase
    table = ps(state).splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "PHASE"]
    assert [row.split()[1] for row in table[1:-2]] == ["nap"]
    assert table[-2:] == ["", "5 processes: 1 running, 2 finished, 2 failed"]
    assert listing(state, "-a") == (everything, None)
    # ids only, in the same order
    ids = ps(state, "-aq").split()
    assert len(ids) == 5 and all(process.startswith("p") for process in ids)
    shown = json.loads(corra(state, "show", ids[1], "--json").stdout)
    assert shown["name"] == "fetch-b"
    # filters: labels all of them, phases any of them, a name prefix or glob (in name order)
    assert listing(state, "-a", "-l", "team=b", "-l", "stage=train") == (["train-b"], None)
    assert listing(state, "-l", "team=b") == ([], None)  # (the default: active ones only)
    assert listing(state, "--phase", "failed", "--phase", "running") == (
        ["fetch-b", "train-b", "nap"],
        None,
    )
    assert listing(state, "-a", "--name", "train") == (["train-a", "train-b"], None)
    assert listing(state, "--name", "train") == ([], None)  # (none of them is active)
    # a name glob: the whole name matches it
    assert listing(state, "-a", "--name", "*-b") == (["fetch-b", "train-b"], None)
    assert listing(state, "-a", "--name", "?rain-[ab]") == (["train-a", "train-b"], None)
    assert listing(state, "-a", "--name", "train*", "--phase", "failed") == (["train-b"], None)
    # pages: --limit, and --cursor goes on from the next_cursor it printed
    first, cursor = listing(state, "-a", "--limit", "2")
    assert first == everything[:2] and cursor is not None
    second, cursor = listing(state, "-a", "--limit", "2", "--cursor", cursor)
    assert second == everything[2:4] and cursor is not None
    assert listing(state, "-a", "--cursor", cursor) == (everything[4:], None)
    limited = ps(state, "-a", "--limit", "2").splitlines()
    assert len(limited) == 1 + 2 + 3 and limited[-1].startswith("(more: --cursor ")
    refused = corra(state, "ps", "--limit", "0")
    assert refused.returncode == 2 and "expected an integer >= 1" in refused.stderr
    # times: how long ago, or a date; an end time lists the terminal ones by their end
    ended, _ = listing(state, "--ended-after", "1h")
    assert sorted(ended) == sorted(everything[:4]) and len(ended) == 4
    assert listing(state, "--ended-before", "2000-01-01") == ([], None)
    assert listing(state, "-a", "--created-after", "1h", "-l", "team=a") == (
        ["fetch-a", "train-a"],
        None,
    )
    assert listing(state, "-a", "--created-before", "1h") == ([], None)
    bad = corra(state, "ps", "--ended-after", "yesterday")
    assert bad.returncode == 2 and "how long ago (90s, 30m, 12h, 7d)" in bad.stderr


def test_ps_from_the_state_dir_and_through_the_service(tmp_path):
    state = tmp_path / "state"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS)
    ran = corra(state, "run", str(jobs))
    assert ran.returncode == 1, ran.stderr  # (two of them failed)
    with Service(state) as service:
        submitted = corra(state, "submit", "--name", "nap", "--", "sleep", "3600")
        assert submitted.returncode == 0, submitted.stderr
        wait_phase(service, "nap", "running")
        check_listings(state)  # through the service
        service.stop()
    check_listings(state)  # from the state dir (nap's program goes on under its chaperone)
    with Service(state) as service:
        assert corra(state, "kill", "nap").returncode == 0
        service.stop()


def test_when_reads_durations_dates_and_epoch_seconds():
    from corra.cli._parser import when

    now = 1_800_000_000.0
    assert when("90s", now) == now - 90
    assert when("30m", now) == now - 1800
    assert when("1.5h", now) == now - 5400
    assert when("7d", now) == now - 7 * 86400
    assert when("1796371200", now) == 1796371200.0
    assert when("2026-12-01T08:30+00:00", now) == 1796113800.0
    assert when("2026-12-01", now) == datetime(2026, 12, 1).timestamp()
    for text in ("yesterday", "-5m", "nan", ""):
        with pytest.raises(Exception, match="how long ago"):
            when(text, now)
