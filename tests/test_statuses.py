"""Statuses: a program appends JSON lines to ``$CORRA_STATUS`` and corra shows the latest
(`corra.chaperone._status` reads them, `corra.processes._statuses` keeps them).

The reader's rules on bytes, the environment every chaperone and wrapper gives, and the
runtime's keeping of them (coalesced, in the background), checked on real files and real
programs under the local backend; the remote backends have theirs in
``test_statuses_remote.py``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from corra.backends.local import LocalBackend
from corra.chaperone import _rundir, _status, _wrapper, batch_job, task_job
from corra.persistence import open_store
from corra.processes._backend import EffectKey, LaunchRequest, MemoryStatuses
from corra.processes._statuses import (
    FLUSH_PAUSE,
    ProgramStatus,
    StoredStatuses,
    merged,
    summary,
)

SHOW_ENV = ["sh", "-c", 'printf "%s\\n%s\\n" "$CORRA_STATUS" "$CORRA_RESULT"']


def line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


# -- the reader (Rules 1-3 of corra.chaperone._status) --------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"not json", "not JSON: 'not json'"),
        (b"[1, 2]", "not a JSON object: '[1, 2]'"),
        (b'{"progress": 1.5}', "progress: expected a number from 0 to 1, got '1.5'"),
        (b'{"progress": -0.1}', "progress: expected a number from 0 to 1"),
        (b'{"progress": true}', "progress: expected a number from 0 to 1, got 'True'"),
        (b'{"progress": "40%"}', "progress: expected a number from 0 to 1"),
        (b'{"progress": NaN}', "progress: expected a number from 0 to 1, got 'nan'"),
        (b'{"message": 4}', "message: expected a string, got '4'"),
        (b'{"m": "' + b"x" * 5000 + b'"}', "a line of 5009 bytes (at most 4096)"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_a_line_that_is_no_status_is_refused_saying_why(text: bytes, why: str):
    value, refusal = _status.check_line(text)
    assert value is None and refusal is not None and refusal.startswith(why)


def test_a_status_keeps_the_keys_it_has_besides_progress_and_message():
    value, refusal = _status.check_line(b'{"progress": 1, "message": "done", "files": [1, 2]}')
    assert value == {"progress": 1, "message": "done", "files": [1, 2]} and refusal is None
    assert _status.check_line(b"{}") == ({}, None)


def test_the_newest_line_wins_and_a_refused_one_after_it_is_said():
    first, second = {"progress": 0.1}, {"progress": 0.2, "message": "two"}
    assert _status.latest(line(first) + line(second)) == (second, None)
    value, refusal = _status.latest(line(first) + b"oops\n\n   \n")
    assert value == first and refusal == "not JSON: 'oops'"
    # (a refusal older than the newest good line is over)
    assert _status.latest(b"oops\n" + line(second)) == (second, None)
    # (only complete lines, until the program has ended)
    assert _status.latest(line(first) + b'{"progress": 0.3}') == (first, None)
    assert _status.latest(line(first) + b'{"progress": 0.3}', final=True) == (
        {"progress": 0.3},
        None,
    )
    assert _status.latest(b"") == (None, None)


@given(
    st.lists(st.one_of(st.binary(max_size=30), st.dictionaries(st.text(max_size=5), st.integers())))
)
def test_whatever_a_program_writes_the_reader_answers_and_never_raises(items: list):
    data = b"".join(item + b"\n" if isinstance(item, bytes) else line(item) for item in items)
    value, refusal = _status.latest(data, final=True)
    assert value is None or isinstance(value, dict)
    assert refusal is None or isinstance(refusal, str)


def test_only_the_end_of_a_long_file_is_read_and_a_cut_line_is_no_line(tmp_path: Path):
    path = tmp_path / "status.jsonl"
    assert _status.read_tail(str(path)) is None  # (none yet)
    # A long last-but-one line, cut by the window: its tail must not be read as a line.
    tail_of_a_line = b' "progress": 0.5}'
    data = (
        line({"progress": 0.1}) * 2000 + b'{"x": "' + b"y" * _status.TAIL + b'",' + tail_of_a_line
    )
    path.write_bytes(data + b"\n" + line({"progress": 0.9}))
    size, value, refusal = _status.read_tail(str(path))
    assert (size, value, refusal) == (path.stat().st_size, {"progress": 0.9}, None)
    assert _status.read_tail(str(path), since=size) == (size, None, None)  # (unchanged)


def test_the_status_file_is_named_alike_everywhere():
    run_dir = "/runs/p1.1"
    expected = {"CORRA_RESULT": "/runs/p1.1/result.json", "CORRA_STATUS": "/runs/p1.1/status.jsonl"}
    assert _rundir.data_environment(run_dir) == expected
    assert _wrapper.data_environment(run_dir) == expected
    assert _status.STATUS_FILE == _rundir.STATUS_FILE == _wrapper.STATUS_FILE
    assert _rundir.RESULT_FILE == _wrapper.RESULT_FILE
    # (shipped to hosts and run by their python3 -c: the oldest a host may have)
    ast.parse(_status.source(), feature_version=(3, 6))


def test_a_host_s_report_of_run_dirs(tmp_path: Path):
    quiet, said = tmp_path / "a.1", tmp_path / "b.1"
    quiet.mkdir(), said.mkdir()
    (said / "status.jsonl").write_bytes(line({"progress": 0.5}) + b"[]\n")
    command = [sys.executable, "-I", "-S", "-c", _status.source(), str(quiet), str(said)]
    report = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    assert report == {
        str(said): {
            "size": (said / "status.jsonl").stat().st_size,
            "value": {"progress": 0.5},
            "error": "not a JSON object: '[]'",
        }
    }


# -- where the program learns of the file ------------------------------------------------


@pytest.mark.parametrize("chaperone", ["shared", "own"])
async def test_a_local_program_is_told_where_its_status_and_result_go(
    tmp_path: Path, chaperone: str
):
    async with LocalBackend(tmp_path / "runs", chaperone=chaperone) as backend:  # type: ignore[arg-type]
        key = EffectKey("p1", 1)
        handle = await backend.launch(LaunchRequest(key, tuple(SHOW_ENV)))
        await backend.wait(handle)
        run_dir = Path(handle.run_dir)
        shown = (run_dir / "stdout").read_text().split()
        assert shown == [str(run_dir / "status.jsonl"), str(run_dir / "result.json")]


def test_a_batch_job_s_program_is_told_where_its_status_goes(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = [sys.executable, "-I", "-S", "-c", batch_job.source(), str(run_dir), "", "1.0"]
    done = subprocess.run([*command, "untimed", *SHOW_ENV], capture_output=True, check=True)
    assert done.stdout.decode().split() == [
        str(run_dir / "status.jsonl"),
        str(run_dir / "result.json"),
    ]


def test_a_hyperqueue_task_s_program_is_told_where_its_status_goes(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "HQ_JOB_ID": "1", "HQ_TASK_ID": "0", "HQ_INSTANCE_ID": "0"}
    done = subprocess.run(task_job.argv(run_dir, 1.0, None, SHOW_ENV), env=env, check=True)
    assert done.returncode == 0
    assert (run_dir / "stdout").read_text().split() == [
        str(run_dir / "status.jsonl"),
        str(run_dir / "result.json"),
    ]


# -- keeping them (corra.processes._statuses) ----------------------------------------------


def test_a_status_is_the_latest_of_the_newest_attempt():
    key, at = EffectKey("p", 2), 5.0
    first = merged(None, key, {"progress": 0.5}, None, at)
    assert first == ProgramStatus({"progress": 0.5}, None, 2, at)
    assert merged(first, key, {"progress": 0.5}, None, 6.0) is None  # (nothing new)
    refused = merged(first, key, None, "not JSON: 'x'", 6.0)
    assert refused == ProgramStatus({"progress": 0.5}, "not JSON: 'x'", 2, 6.0)
    assert merged(first, EffectKey("p", 1), {"progress": 0.9}, None, 6.0) is None  # (older)
    assert merged(first, EffectKey("p", 3), None, "why", 6.0) == ProgramStatus(None, "why", 3, 6.0)
    with pytest.raises(TypeError, match="must be a dict or None"):
        merged(None, key, [1], None, at)
    with pytest.raises(TypeError, match="EffectKey"):
        merged(None, "p.1", {}, None, at)  # type: ignore[arg-type]


def test_a_status_in_a_few_words():
    assert summary({"progress": 0.4, "message": "step 4\nof 10"}, None) == "40% step 4 of 10"
    assert summary({"progress": 1}, None) == "100%"
    assert summary({"files": 3}, None) == '{"files":3}'
    assert summary(None, "not JSON: 'x'") == "(refused: not JSON: 'x')"
    assert summary({"message": "x" * 50}, None, 10) == "x" * 9 + "\u2026"
    assert ProgramStatus.decode(ProgramStatus({"a": 1}, "e", 1, 2.0).encode()) == ProgramStatus(
        {"a": 1}, "e", 1, 2.0
    )
    assert ProgramStatus.decode(b"garbage") is None


def test_memory_statuses_keep_the_value_a_refusal_does_not_replace():
    statuses = MemoryStatuses()
    key = EffectKey("p", 1)
    statuses.set(key, {"progress": 0.5})
    statuses.set(key, None, "not JSON")
    assert statuses.statuses[key] == ({"progress": 0.5}, "not JSON")


async def test_a_chatty_backend_costs_the_store_one_write_per_pause(tmp_path: Path):
    from corra.processes._lifecycle import ProcessState
    from corra.processes._record import ProcessRecord
    from corra.processes._spec import ProcessSpec

    record = ProcessRecord("p", ProcessSpec(argv=("true",)), ProcessState(phase="running"), 1.0)
    async with open_store(tmp_path, durable=False) as store, trio.open_nursery() as nursery:
        statuses = StoredStatuses(store)
        await nursery.start(statuses.run, lambda process_id: record)
        with statuses.subscribe() as feed:
            started = trio.current_time()
            for number in range(10_000):
                statuses.set(EffectKey("p", 1), {"progress": number / 10_000})
                if number % 100 == 0:
                    await trio.lowlevel.checkpoint()
            await trio.sleep(FLUSH_PAUSE * 2)
            elapsed = trio.current_time() - started
            changed = await feed.take()
        assert changed == {"p": statuses.latest("p")}  # (coalesced: the latest only)
        assert statuses.writes <= elapsed / FLUSH_PAUSE + 2
        assert ProgramStatus.decode(store.status("p")).value == {"progress": 0.9999}
        nursery.cancel_scope.cancel()


# -- a real program under the local backend, through the API and the command line -----------

#: A program that says how far it is: a status, a refused line, 10,000 statuses as fast as it
#: can, then "done"; each step once its gate (a file in GATES) is there. Any attempt but the
#: first says nothing, and ends once the gate ``rerun`` is there.
PROGRAM = """
import json, os, sys, time
gates, path = sys.argv[1], os.environ["CORRA_STATUS"]
def wait(name):
    while not os.path.exists(os.path.join(gates, name)):
        time.sleep(0.02)
def say(text):
    with open(path, "a") as status:
        status.write(text)
if os.environ["CORRA_ATTEMPT"] != "1":
    wait("rerun")
    sys.exit(0)
say(json.dumps({"progress": 0.25, "message": "step 1 of 4"}) + "\\n")
wait("a")
say("not json\\n")
wait("b")
with open(path, "a") as status:
    for number in range(10000):
        value = {"progress": number / 10000, "message": "line " + str(number)}
        status.write(json.dumps(value) + "\\n")
        status.flush()
    status.write(json.dumps({"progress": 1, "message": "done"}) + "\\n")
"""


def program(tmp_path: Path) -> tuple[list[str], Path]:
    """The argv of `PROGRAM` and its gates."""
    gates = tmp_path / "gates"
    gates.mkdir()
    script = tmp_path / "says.py"
    script.write_text(PROGRAM)
    return [sys.executable, str(script), str(gates)], gates


async def until(condition, what: str, seconds: float = 30):
    with trio.move_on_after(seconds):
        while True:
            value = await condition()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")


async def test_the_api_shows_a_local_program_s_latest_status_and_publishes_it(tmp_path: Path):
    from test_api import serving, stream, submit, wait_for

    argv, gates = program(tmp_path)
    async with serving(tmp_path / "state", {"status_interval": 0.1}) as served:
        http = served.http
        process_id = (await submit(http, argv, name="says"))["id"]

        async def status():
            return (await http.get(f"/v1/processes/{process_id}")).json()["status"]

        first = await until(status, "the first status")
        assert first["value"] == {"progress": 0.25, "message": "step 1 of 4"}
        assert first["error"] is None and first["attempt"] == 1
        listed = (await http.get("/v1/processes")).json()["items"]
        assert [item["status"]["value"] for item in listed] == [first["value"]]

        (gates / "a").touch()
        refused = await until(
            lambda: _with(status, lambda found: found["error"] is not None), "the refusal"
        )
        assert refused["value"] == first["value"] and refused["error"] == "not JSON: 'not json'"

        (gates / "b").touch()
        finished = await wait_for(http, "says", "finished")
        done = {"progress": 1, "message": "done"}
        assert finished["status"]["value"] == done and finished["status"]["error"] is None

        # Coalesced: 10,000 lines cost the store and the subscribers a few writes and events.
        events = await stream(served, "/v1/events")
        said = [event for event in events if event["event"] == "status"]
        assert all(event["id"] == process_id for event in said)
        assert said[0]["status"]["value"] == first["value"] and said[0]["source"] == "running"
        assert said[-1]["status"]["value"] == done
        assert len(said) <= 8, [event["status"] for event in said]
        assert served.runtime.processes.statuses.writes <= 40
        # (a process's last status comes before its end)
        ended = next(e for e in events if e["event"] != "status" and e["target"] == "finished")
        assert said[-1]["seq"] < ended["seq"]

        # A rerun starts with none: the last attempt's is not the new one's.
        assert (await http.post("/v1/processes/says/rerun")).status_code in (200, 202)
        again = (await http.get("/v1/processes/says")).json()
        assert again["attempt"] == 2 and again["status"] is None
        (gates / "rerun").touch()
        assert (await wait_for(http, "says", "finished"))["status"] is None


async def _with(read, check):
    found = await read()
    return found if found is not None and check(found) else None


async def test_corra_ps_and_show_give_the_last_status(tmp_path: Path):
    from _cli import corra

    state = tmp_path / "state"
    argv = [
        "sh",
        "-c",
        'echo \'{"progress": 0.4, "message": "step 4 of 10"}\' >> "$CORRA_STATUS"; '
        'echo \'{"progress": 7}\' >> "$CORRA_STATUS"; '
        # (an unterminated last line counts once the program has ended)
        'printf \'%s\' \'{"progress": 0.5, "message": "half"}\' >> "$CORRA_STATUS"',
    ]
    done = await corra(state, "run", "--name", "says", "--", *argv)
    assert done.returncode == 0, done.stderr
    ps = await corra(state, "ps", "-a")
    header, row = ps.stdout.decode().splitlines()[:2]
    assert "STATUS" in header.split()
    assert row[header.index("STATUS") :].startswith("50% half")
    shown = (await corra(state, "show", "says")).stdout.decode()
    assert "last status: 50% half (at " in shown
    as_json = json.loads((await corra(state, "show", "says", "--json")).stdout)
    assert as_json["status"]["value"] == {"progress": 0.5, "message": "half"}
    assert as_json["status"]["error"] is None
    listed = json.loads((await corra(state, "ps", "-a", "--json")).stdout)["items"]
    assert listed[0]["status"] == as_json["status"]


async def test_a_status_line_refused_last_is_said_beside_the_good_one(tmp_path: Path):
    from _cli import corra

    state = tmp_path / "state"
    argv = [
        "sh",
        "-c",
        'echo \'{"message": "ok"}\' > "$CORRA_STATUS"; echo \'{"progress": 2}\' >> "$CORRA_STATUS"',
    ]
    assert (await corra(state, "run", "--name", "s", "--", *argv)).returncode == 0
    shown = (await corra(state, "show", "s")).stdout.decode()
    assert "last status: ok (at " in shown
    assert "a later line was refused: progress: expected a number from 0 to 1, got '2'" in shown


def test_corra_run_s_live_display_shows_a_running_program_s_status():
    import io

    from corra.cli._run import Progress
    from corra.processes._lifecycle import ProcessState
    from corra.processes._record import ProcessRecord, Transition
    from corra.processes._spec import ProcessSpec

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    said = {"p1": ProgramStatus({"progress": 0.4, "message": "step 4 of 10"}, None, 1, 1.0)}
    out = Terminal()
    display = Progress(out, said.get)
    for process_id, name in (("p1", "says"), ("p2", "quiet")):
        state = ProcessState(phase="running", attempt=1, updated_at=1.0)
        record = ProcessRecord(process_id, ProcessSpec(argv=("true",), name=name), state, 1.0)
        display.update(record, Transition(1.0, "started", "launching", "running", 1))
    lines = out.getvalue().split("\x1b[J")[-1].splitlines()
    assert lines[0] == "running 2"
    says = next(text for text in lines if "says" in text)
    quiet = next(text for text in lines if "quiet" in text)
    assert says.endswith("s  40% step 4 of 10") and quiet.endswith("s")


async def test_status_events_are_one_per_process_per_second_and_bounded_in_all(autojump_clock):
    from types import SimpleNamespace

    from corra.api._events import STATUS_EVENT_RATE, EventLog, follow_statuses
    from corra.processes._lifecycle import ProcessState
    from corra.processes._record import ProcessRecord
    from corra.processes._spec import ProcessSpec

    class NoStore:  # (nothing stored before: every process starts without a status)
        def status(self, process_id: str) -> None:
            return None

    def record(process_id: str) -> ProcessRecord:
        state = ProcessState(phase="running", attempt=1, updated_at=1.0)
        return ProcessRecord(process_id, ProcessSpec(argv=("true",)), state, 1.0)

    statuses = StoredStatuses(NoStore(), clock=trio.current_time)  # type: ignore[arg-type]
    events = EventLog()
    events.reserve()  # (numbers in memory: no file, no worker thread on virtual time)
    api = SimpleNamespace(
        manager=SimpleNamespace(statuses=statuses, get=record),
        events=events,
        drop_cached=lambda process_id: None,
        status_feed=None,
    )

    def said() -> list[dict]:
        return [event for event in events.since(0) if event["event"] == "status"]

    many = int(STATUS_EVENT_RATE * 10)  # (ten seconds' worth of status events at once)
    async with trio.open_nursery() as nursery:
        await nursery.start(follow_statuses, api)
        for number in range(many):
            statuses.set(EffectKey(f"p{number}", 1), {"progress": 0.1})
        await trio.sleep(0.1)
        assert len(said()) == many  # (each process's first, at once)
        for step in range(1, 4):  # (a chatty one: its latest only, once the pause is over)
            statuses.set(EffectKey("p0", 1), {"progress": step / 10})
            await trio.sleep(1.0)
        assert len(said()) == many
        await trio.sleep(10.0 - 3.0)
        assert len(said()) == many + 1
        assert said()[-1]["status"]["value"] == {"progress": 0.3}
        nursery.cancel_scope.cancel()
