"""Workflows in Python (`corra.workflow`) through a process boundary: kill -9 of a runtime
at each write-ahead point of a run with a fan-out of 20 (every step once), the HTTP API and
``corra resume --accept``, and ``corra serve --workflows`` replaying a run across services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_workflow_python import PY, gate_argv, running

import corra

# kill -9 of a runtime at each write-ahead point ------------------------------------------

FAN_OUT = 20
SCRIPT = """
import json, sys
import trio
import corra

PY = sys.executable
state, ledger = sys.argv[1], sys.argv[2]
NOTE = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
ITEMS = (
    "import json, os; "
    "json.dump({'items': list(range(%d))}, open(os.environ['CORRA_RESULT'], 'w'))"
)


@corra.workflow
async def fan(ctx):
    prep = await ctx.step("prepare", [PY, "-c", NOTE + "; " + ITEMS, ledger, "prepare"])
    await ctx.gather(*(
        ctx.step(f"work[{i}]", [PY, "-c", NOTE, ledger, f"work-{i}"])
        for i in prep.result["items"]
    ))
    await ctx.step("join", [PY, "-c", NOTE, ledger, "join"])
    return len(prep.result["items"])


async def main():
    async with corra.open_runtime(state_dir=state, max_running=8) as rt:
        rt.workflows.define_python(fan)
        run, _ = await rt.workflows.start("fan", name="nightly")
        done = await rt.workflows.wait(run.id)
        steps = {key: entry.phase for key, entry in rt.workflows.step_entries(run.id).items()}
        print(json.dumps({"phase": done.phase, "result": done.result, "steps": steps}))


trio.run(main)
"""


def run_script(script: Path, state: Path, ledger: Path, crash: str | None) -> Any:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "CORRA_CRASH_AT"}
    if crash is not None:
        env["CORRA_CRASH_AT"] = crash
    return subprocess.run(
        [PY, str(script), str(state), str(ledger)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


@pytest.mark.parametrize(
    "crash",
    [
        "run.started:1",
        "steps.decided:1",  # (prepare recorded, not submitted)
        "steps.decided:9",  # (in the middle of the fan-out's write-ahead)
        "step.submitted:1",
        "step.submitted:12",
        "step.ended:1",  # (prepare's end recorded, the function not told)
        "step.ended:15",
        "run.ended:1",
    ],
)
def test_kill_9_at_a_write_ahead_point_then_run_again(tmp_path: Path, crash: str) -> None:
    import json
    import signal

    script = tmp_path / "fan.py"
    script.write_text(SCRIPT % FAN_OUT)
    state, ledger = tmp_path / "state", tmp_path / "ledger"
    first = run_script(script, state, ledger, crash)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    again = run_script(script, state, ledger, None)
    assert again.returncode == 0, again.stdout + again.stderr
    run = json.loads(again.stdout)
    assert run["phase"] == "finished" and run["result"] == FAN_OUT
    lines = ledger.read_text().split()
    expected = ["prepare", *(f"work-{i}" for i in range(FAN_OUT)), "join"]
    assert sorted(lines) == sorted(expected), "every step ran exactly once"
    assert lines[0] == "prepare" and lines[-1] == "join"
    assert set(run["steps"].values()) == {"finished"} and len(run["steps"]) == FAN_OUT + 2


# the API and the command line ---------------------------------------------------------------


async def test_the_api_requests_a_function_by_name_and_resume_accepts(tmp_path: Path) -> None:
    import subprocess

    from test_api import TOKEN, serving

    gate = tmp_path / "gate"
    version = ["v1"]

    @corra.workflow(description="edited while it waits")
    async def edited(ctx: Any, greeting: str = "hi") -> Any:
        first = await ctx.step("first", ["echo", greeting, version[0]])
        await ctx.step("wait", gate_argv(gate))
        return {"first": first.process_id, "greeting": greeting}

    async with serving(tmp_path / "state") as served:
        http, runs = served.http, served.runtime.workflows
        runs.define_python(edited)
        listed = (await http.get("/v1/jobs")).json()["jobs"]
        assert [job["name"] for job in listed] == ["edited"]
        assert listed[0]["kind"] == "python" and listed[0]["params"] == {"greeting": "hi"}
        bad = await http.post("/v1/jobs/edited/runs", json={"params": {"other": 1}})
        assert bad.status_code == 422 and "unknown param(s) 'other'" in bad.text
        response = await http.post(
            "/v1/jobs/edited/runs", json={"params": {"greeting": "hello"}, "name": "once"}
        )
        assert response.status_code == 201, response.text
        run = response.json()
        assert run["kind"] == "python" and run["params"] == {"greeting": "hello"}
        again = await http.post("/v1/jobs/edited/runs", json={"name": "once"})
        assert again.status_code == 200 and again.json()["id"] == run["id"]
        await running(served.runtime, f"{run['id']}.wait")
        paused = await http.post(f"/v1/runs/{run['id']}/pause")
        assert paused.json()["phase"] == "paused"
        version[0] = "v2"  # (an edit while it is paused: its replay makes another argv)
        await http.post(f"/v1/runs/{run['id']}/resume")
        await runs.wait(run["id"], until=lambda r: r.phase == "paused" and not runs.running(r.id))
        shown = (await http.get(f"/v1/runs/{run['id']}")).json()
        assert shown["reason"].startswith("step 'first': its spec differs")
        assert {step["key"] for step in shown["steps"]} == {"first", "wait"}
        gate.touch()
        command = [PY, "-m", "corra.cli", "--state-dir", str(served.state_dir), "resume"]
        command += [run["id"], "--accept", "--url", served.urls[0], "--token", TOKEN, "--json"]
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(command, capture_output=True, text=True, timeout=60)
        )
        assert done.returncode == 0, done.stdout + done.stderr
        finished = await runs.wait(run["id"])
        assert finished.phase == "finished", finished.reason
        first = served.runtime.processes.get(f"{run['id']}.first")
        assert finished.result == {"first": first.id, "greeting": "hello"}
        assert first.spec.argv == ("echo", "hello", "v1")  # (the recorded step stands)


WORKFLOWS_FILE = """
import sys
import corra

LEDGER, GATE = {ledger!r}, {gate!r}
NOTE = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"


@corra.workflow
async def across(ctx, word: str = "w"):
    await ctx.step("first", [sys.executable, "-c", NOTE, LEDGER, "first-" + word])
    await ctx.step("wait", ["sh", "-c", "while [ ! -e " + GATE + " ]; do sleep 0.05; done"])
    await ctx.step("last", [sys.executable, "-c", NOTE, LEDGER, "last-" + word])
    return word
"""


@pytest.mark.slow
def test_corra_serve_workflows_replays_across_services(tmp_path: Path) -> None:
    import signal
    import time

    from test_api_service import Service
    from test_api_service import corra as corra_cli

    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    source = tmp_path / "fan_jobs.py"
    source.write_text(WORKFLOWS_FILE.format(ledger=str(ledger), gate=str(gate)))
    state = tmp_path / "state"

    def until(service: Service, path: str, check: Any) -> dict:
        deadline = time.monotonic() + 30
        while True:
            with service.client() as http:
                response = http.get(path)
            if response.status_code == 200 and check(response.json()):
                return response.json()
            assert time.monotonic() < deadline, response.text
            time.sleep(0.1)

    first = Service(state, "--workflows", str(source))
    try:
        with first.client() as http:
            jobs = http.get("/v1/jobs").json()["jobs"]
            assert jobs[0]["name"] == "across" and jobs[0]["module"] == "fan_jobs"
            created = http.post("/v1/jobs/across/runs", json={"params": {"word": "x"}})
        assert created.status_code == 201, created.text
        run = created.json()["id"]
        until(first, f"/v1/processes/{run}.wait", lambda p: p["phase"] == "running")
        listed = corra_cli(state, "jobs")
        assert listed.stdout.startswith('across: python fan_jobs.across  [word="w"]'), listed
    finally:
        first.stop(signal.SIGKILL)
    bare = Service(state)  # (a service without the function: the run waits, not fails)
    try:
        shown = until(bare, f"/v1/runs/{run}", lambda r: "waiting for" in (r["reason"] or ""))
        assert shown["phase"] == "running"
        assert "function fan_jobs.across (workflow 'across')" in shown["reason"]
    finally:
        bare.stop()
    gate.touch()
    again = Service(state, "--workflows", str(source))
    try:
        done = until(again, f"/v1/runs/{run}", lambda r: r["phase"] not in ("running",))
        assert done["phase"] == "finished" and done["result"] == "x", done
    finally:
        again.stop()
    assert ledger.read_text().split() == ["first-x", "last-x"]


def test_load_workflows_errors(tmp_path: Path) -> None:
    from corra.workflows._python import load_workflows

    with pytest.raises(corra.ConfigError, match="no such file"):
        load_workflows(str(tmp_path / "none.py"))
    empty = tmp_path / "empty_jobs.py"
    empty.write_text("x = 1\n")
    with pytest.raises(corra.ConfigError, match=r"no @corra\.workflow function"):
        load_workflows(str(empty))
    broken = tmp_path / "broken_jobs.py"
    broken.write_text("raise RuntimeError('no')\n")
    with pytest.raises(corra.ConfigError, match="importing it raised RuntimeError: no"):
        load_workflows(str(broken))
