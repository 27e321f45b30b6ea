"""What the records and the command line say when no runtime watches a program, and what a
runtime waits for: the start time of a running program, the exit record of a program whose
runtime was killed (read, never collected, by `corra ps`, `show` and `logs -f`), and a
`corra run` that waits for its own processes only, never for the leftovers it recovers.

Real programs, a real `corra run` killed with SIGKILL, and `corra` itself as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import trio
from test_api import serving, submit, wait_for
from test_local_processes import CORRA, corra

from corra._runtime import open_runtime


def show_json(state: Path, process: str) -> dict:
    shown = corra(state, "show", "--json", process)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


# -- started_at -------------------------------------------------------------------------------


async def test_started_at_is_in_the_record_while_the_program_runs(tmp_path):
    state = tmp_path / "state"
    before = time.time()
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(["sleep", "30"], name="sleeper")
        record = await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        started = record.state.started_at
        assert started is not None and before <= started <= time.time()
        assert started == record.state.handle.started_at

        # `corra show --json` reads the state dir (the running record is written in the
        # background: wait until it is there), and says when it started.
        with trio.fail_after(30):
            while (shown := await trio.to_thread.run_sync(show_json, state, "sleeper"))[
                "phase"
            ] != "running":
                await trio.sleep(0.05)
        assert shown["started_at"] == started
        assert shown["result"] is None

        # Kept through pause and resume.
        paused = await ref.pause()
        assert paused.state.started_at == started
        resumed = await ref.resume()
        assert resumed.state.started_at == started
        killed = await ref.kill()
        assert killed.state.started_at == started


def test_started_at_follows_the_current_attempt():
    from corra.processes._lifecycle import ProcessState, Result, advance

    state = advance(ProcessState(), "launch", at=1.0)
    assert state.started_at is None
    state = advance(state, "started", at=2.0, handle={"pid": 5, "started_at": 1.5})
    assert state.started_at == 1.5  # the chaperone's, not the transition's time
    for event in ("pause", "resume"):
        state = advance(state, event, at=3.0)
        assert state.started_at == 1.5
    state = advance(state, "retry", at=4.0, result=Result(returncode=1, started_at=1.5))
    assert state.started_at is None  # a new attempt, not started yet
    state = advance(advance(state, "launch", at=5.0), "started", at=6.0, handle={"pid": 6})
    assert state.started_at is None  # (a handle without a start: a queued batch job)
    state = advance(state, "succeed", at=8.0, result=Result(returncode=0, started_at=6.5))
    assert state.started_at == 6.5  # the exit record knows
    for bad in ("soon", float("nan"), True):
        started = advance(
            advance(ProcessState(), "launch", at=1.0), "started", at=2.0, handle={"started_at": bad}
        )
        assert started.started_at is None


async def test_started_at_is_in_the_api_pause_and_resume_replies(tmp_path):
    async with serving(tmp_path / "state") as served:
        http = served.http
        await submit(http, ["sleep", "30"], name="sleeper")
        running = await wait_for(http, "sleeper", "running")
        assert running["started_at"] is not None
        paused = await http.post("/v1/processes/sleeper/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["started_at"] == running["started_at"]
        resumed = await http.post("/v1/processes/sleeper/resume")
        assert resumed.json()["started_at"] == running["started_at"]
        killed = await http.post("/v1/processes/sleeper/kill")
        assert killed.json()["started_at"] == running["started_at"]


# -- a runtime killed with SIGKILL leaves programs behind --------------------------------------


def start_run(state: Path, *argv: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CORRA, "--state-dir", str(state), "run", "--name", name, "--", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until_running(state: Path, name: str, runner: subprocess.Popen[bytes]) -> dict:
    """The record of ``name`` once `corra show` says it runs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert runner.poll() is None, "corra run ended early"
        shown = corra(state, "show", "--json", name)
        if shown.returncode == 0 and json.loads(shown.stdout)["phase"] == "running":
            return json.loads(shown.stdout)
        time.sleep(0.05)
    raise AssertionError(f"{name} never ran")


def kill_9(runner: subprocess.Popen[bytes]) -> None:
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)


def kill_program(record: dict) -> None:
    """End a program a test left behind (its whole group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record["handle"]["pid"], signal.SIGKILL)


def test_corra_run_waits_for_its_own_processes_not_for_leftovers(tmp_path):
    state = tmp_path / "state"
    runner = start_run(state, "sleep", "30", name="leftover")
    leftover = wait_until_running(state, "leftover", runner)
    kill_9(runner)
    try:
        began = time.monotonic()
        done = corra(state, "run", "--name", "echo", "--", "echo", "hi", timeout=30)
        took = time.monotonic() - began
        assert done.returncode == 0, done.stdout + done.stderr
        assert took < 5, f"corra run took {took:.1f}s: it waited for the leftover"
        assert "echo: finished: exited with 0" in done.stdout
        assert "1 other process(es) recovered" in done.stdout, done.stdout
        assert "keep running" in done.stdout
        assert corra(state, "logs", "echo").stdout == "hi\n"

        # Its status is the one-off's, whatever the leftover does.
        failing = corra(state, "run", "--", "sh", "-c", "exit 3", timeout=30)
        assert failing.returncode == 1, failing.stdout + failing.stderr

        # A job file too waits for its own processes only.
        jobs = tmp_path / "jobs.toml"
        jobs.write_text('[[process]]\nname = "quick"\nargv = ["echo", "quick"]\n')
        began = time.monotonic()
        job = corra(state, "run", str(jobs), timeout=30)
        took = time.monotonic() - began
        assert job.returncode == 0, job.stdout + job.stderr
        assert took < 5, f"corra run took {took:.1f}s: it waited for the leftover"
        assert "done: 1 finished" in job.stdout
        # The leftover is still running, under its chaperone, for the next runtime.
        assert show_json(state, "leftover")["phase"] == "running"
        assert os.path.exists(f"/proc/{leftover['handle']['pid']}")
    finally:
        kill_program(leftover)


def test_read_only_commands_report_the_exit_no_runtime_collected(tmp_path):
    state = tmp_path / "state"
    go = tmp_path / "go"
    script = f"echo start; while [ ! -e {go} ]; do sleep 0.05; done; echo end; exit 3"
    runner = start_run(state, "sh", "-c", script, name="orphan")
    orphan = wait_until_running(state, "orphan", runner)
    kill_9(runner)
    try:
        # Followed while it runs, with no runtime: it ends when the program does.
        follower = subprocess.Popen(
            [*CORRA, "--state-dir", str(state), "logs", "-f", "orphan"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        assert follower.poll() is None, follower.communicate()
        go.touch()
        try:
            out, err = follower.communicate(timeout=30)
        finally:
            follower.kill()  # (before the fix, it followed forever)
            follower.wait()
        assert follower.returncode == 0, err
        assert out == "start\nend\n"

        store = state / "state.lmdb" / "data.mdb"
        before = store.read_bytes()
        listing = corra(state, "ps")
        assert listing.returncode == 0, listing.stderr
        (row,) = [line for line in listing.stdout.splitlines() if " orphan " in line]
        assert "exited 3, not yet collected" in row

        shown = show_json(state, "orphan")
        assert shown["phase"] == "running"  # as the record says: nobody collected it
        assert shown["recorded"] == {
            "state": "exited",
            "collected": False,
            "returncode": 3,
            "signal": None,
            "ended_at": shown["recorded"]["ended_at"],
            "summary": "exited 3, not yet collected",
        }
        assert shown["recorded"]["ended_at"] >= shown["started_at"]
        (item,) = json.loads(corra(state, "ps", "--json").stdout)["items"]
        assert item["recorded"] == shown["recorded"]
        human = corra(state, "show", "orphan").stdout
        assert "program: exited 3, not yet collected" in human
        assert corra(state, "logs", "-f", "orphan", timeout=30).stdout == "start\nend\n"
        assert store.read_bytes() == before, "a read-only command wrote the store"

        # The next runtime collects it.
        assert corra(state, "run", "--", "true").returncode == 0
        collected = show_json(state, "orphan")
        assert (collected["phase"], collected["returncode"]) == ("failed", 3)
        assert collected["recorded"] is None
    finally:
        go.touch()
        kill_program(orphan)


async def test_the_api_reports_an_exit_while_paused(tmp_path):
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; exit 0"
    async with serving(tmp_path / "state") as served:
        http = served.http
        await submit(http, ["sh", "-c", script], name="napper")
        await wait_for(http, "napper", "running")
        paused = (await http.post("/v1/processes/napper/pause")).json()
        assert paused["phase"] == "paused"
        shown = (await http.get("/v1/processes/napper")).json()
        assert shown["recorded"]["state"] == "running"
        go.touch()
        with trio.fail_after(30):
            while shown["recorded"]["state"] != "exited":
                await trio.sleep(0.05)
                shown = (await http.get("/v1/processes/napper")).json()
        assert shown["phase"] == "paused"
        assert shown["recorded"]["summary"] == "exited 0, not yet collected"
        (item,) = (await http.get("/v1/processes")).json()["items"]
        assert item["recorded"] == shown["recorded"]
        await http.post("/v1/processes/napper/resume")
        finished = await wait_for(http, "napper", "finished")
        assert finished["recorded"] is None


def test_recorded_of_a_remote_program_is_its_complete_shipped_logs_else_unknown(tmp_path):
    from corra.backends import recorded as recorded_module
    from corra.backends.recorded import recorded
    from corra.backends.ssh import _shipped
    from corra.processes._convert import parse_process_spec
    from corra.processes._lifecycle import ProcessState
    from corra.processes._record import ProcessRecord

    assert recorded_module.COMPLETE_FILE == _shipped.COMPLETE_FILE
    spec = parse_process_spec({"argv": ["true"], "backend": "ssh", "host": "cluster"})
    state = ProcessState(phase="running", handle={"host": "cluster", "run_dir": "/r/p1.1"})
    record = ProcessRecord("p1", spec, state, 0.0)
    found = recorded(tmp_path, record)
    assert found is not None and found.state == "unknown"
    mirror = tmp_path / "remote-logs" / "cluster" / "p1.1"
    mirror.mkdir(parents=True)
    (mirror / "stdout").write_bytes(b"partial")
    assert recorded(tmp_path, record).state == "unknown"  # shipping, not whole yet
    (mirror / "complete.json").write_text('{"stdout": 7, "stderr": 0}')
    found = recorded(tmp_path, record)
    assert found is not None and found.state == "exited"
    assert found.json()["summary"] == "exited, not yet collected"
    # Nothing to say of a process with no program, or a terminal one.
    assert recorded(tmp_path, ProcessRecord("p1", spec, ProcessState(), 0.0)) is None
    done = ProcessState(phase="finished", handle=state.handle)
    assert recorded(tmp_path, ProcessRecord("p1", spec, done, 0.0)) is None


async def test_logs_without_follow_stop_at_the_output_there_was_when_they_began(tmp_path):
    """`corra logs` read from the state dir (no service) of a program that writes faster than
    its reader reads: the read ends at the size the log had when it began."""
    from corra.processes._convert import parse_process_spec
    from corra.processes._lifecycle import ProcessState
    from corra.processes._query import ProcessQuery
    from corra.processes._record import ProcessRecord

    log = tmp_path / "stdout"
    log.write_bytes(b"x" * 200_000)
    spec = parse_process_spec({"argv": ["true"]})
    record = ProcessRecord("p1", spec, ProcessState(phase="running"), 0.0)

    class FasterWriter:  # (a source whose program writes twice what each read takes)
        def get(self, id_or_name: str) -> ProcessRecord:
            return record

        async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
            return False

        async def read_log(self, record, stream, offset, size, attempt):  # type: ignore[no-untyped-def]
            assert offset < 10_000_000, "the read never ends"
            with log.open("rb") as file:
                file.seek(offset)
                data = file.read(size)
            with log.open("ab") as file:
                file.write(b"y" * (2 * len(data)))
            return data

        async def log_size(self, record, stream, attempt):  # type: ignore[no-untyped-def]
            return log.stat().st_size

    query = ProcessQuery(FasterWriter())  # type: ignore[arg-type]

    async def read(offset: int) -> tuple[bytes, int]:
        end = await query.log_end(record, "stdout", 1)
        entries = query.follow_logs(
            "p1", stream="stdout", attempt=1, offset=offset, follow=False, end=end
        )
        read = [entry async for entry in entries]
        return b"".join(entry.data for entry in read), read[-1].next_offset

    data, reached = await read(1000)
    assert reached == 200_000
    assert data == b"x" * 199_000
    # a read goes on from there, with what came meanwhile
    assert (await read(200_000))[1] > 200_000
