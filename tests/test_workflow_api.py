"""Workflows through the HTTP API and the command line: jobs, runs, their control, and every
bad input a 4xx (or a usage error) naming the field."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from corra._jobfile import parse_job_text
from tests.test_api import serving

PY = sys.executable
CORRA = [PY, "-m", "corra.cli"]

HELLO = (
    "import json, os, sys; json.dump({'said': 'hello ' + sys.argv[1], 'n': int(sys.argv[2])}, "
    "open(os.environ['CORRA_RESULT'], 'w'))"
)
JOBS = f"""
[[job]]
name = "greet"
description = "says hello, then waits for a gate"
params = {{ who = "world", n = 2 }}

[[job.step]]
name = "hello"
argv = {json.dumps([PY, "-c", HELLO, "${params.who}", "${params.n}"])}

[[job.step]]
name = "gate"
needs = ["hello"]
argv = ["sh", "-c", "while [ ! -e \\"$GATE\\" ]; do sleep 0.05; done"]
env = {{ GATE = "${{params.who}}.gate" }}
cwd = "GATEDIR"
"""


async def wait_run(http: httpx.AsyncClient, run: str, *phases: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            data = (await http.get(f"/v1/runs/{run}")).json()
            if data["phase"] in phases:
                return data
            await trio.sleep(0.05)


async def test_jobs_and_runs_through_the_api(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    job_file = parse_job_text(JOBS.replace("GATEDIR", str(gates)))
    async with serving(tmp_path / "state") as served:
        served.runtime.workflows.define(job_file.jobs)
        http = served.http
        jobs = (await http.get("/v1/jobs")).json()["jobs"]
        assert [job["name"] for job in jobs] == ["greet"]
        assert jobs[0]["params"] == {"who": "world", "n": 2}
        assert jobs[0]["steps"][1]["process"]["env"] == {"GATE": "***"}  # (never shown)

        created = await http.post("/v1/jobs/greet/runs", json={"params": {"who": "ada"}})
        assert created.status_code == 201, created.text
        run = created.json()
        assert created.headers["location"] == f"/v1/runs/{run['id']}"
        assert run["params"] == {"who": "ada", "n": 2} and run["phase"] == "running"

        named = await http.post("/v1/jobs/greet/runs", json={"name": "daily"})
        again = await http.post("/v1/jobs/greet/runs", json={"name": "daily", "params": {}})
        assert named.status_code == 201 and again.status_code == 200
        assert again.json()["id"] == named.json()["id"]

        paused = await http.post(f"/v1/runs/{run['id']}/pause")
        assert paused.status_code == 200 and paused.json()["phase"] == "paused"
        resumed = await http.post(f"/v1/runs/{run['id']}/resume")
        assert resumed.json()["phase"] == "running"
        (gates / "ada.gate").touch()
        done = await wait_run(http, run["id"], "finished", "failed")
        assert done["phase"] == "finished", done
        steps = {step["key"]: step for step in done["steps"]}
        assert steps["hello"]["result"] == {"said": "hello ada", "n": 2}

        killed = await http.post(f"/v1/runs/{named.json()['id']}/kill")
        assert killed.status_code in (200, 202)
        assert (await wait_run(http, "daily", "killed"))["phase"] == "killed"

        listed = (await http.get("/v1/runs", params={"limit": 1})).json()
        assert len(listed["runs"]) == 1 and listed["next_cursor"] is not None
        rest = (await http.get("/v1/runs", params={"cursor": listed["next_cursor"]})).json()
        assert len(rest["runs"]) == 1 and rest["next_cursor"] is None
        finished = (await http.get("/v1/runs", params={"phase": "finished"})).json()["runs"]
        assert [r["id"] for r in finished] == [run["id"]]


async def test_bad_requests_name_what_is_wrong(tmp_path: Path) -> None:
    job_file = parse_job_text(JOBS.replace("GATEDIR", str(tmp_path)))
    async with serving(tmp_path / "state") as served:
        served.runtime.workflows.define(job_file.jobs)
        http = served.http
        cases = [
            ("/v1/jobs/nope/runs", {}, 404, "no job is named 'nope'"),
            ("/v1/jobs/greet/runs", {"params": {"age": 3}}, 422, "age"),
            ("/v1/jobs/greet/runs", {"params": {"n": "many"}}, 422, "n"),
            ("/v1/jobs/greet/runs", {"params": []}, 422, "params"),
            ("/v1/jobs/greet/runs", {"nme": "x"}, 422, "body"),
            ("/v1/jobs/greet/runs", {"name": "bad name!"}, 422, "name"),
        ]
        for path, body, status, words in cases:
            response = await http.post(path, json=body)
            assert response.status_code == status, (body, response.text)
            assert words in response.json()["message"], (body, response.text)
        response = await http.post("/v1/jobs/greet/runs", content=b"{not json")
        assert response.status_code == 400
        for path in ("/v1/runs/r0nope", "/v1/runs/r0nope/pause", "/v1/runs/r0nope/kill"):
            method = http.get if path.count("/") == 3 else http.post
            response = await method(path)
            assert response.status_code == 404, (path, response.text)
        response = await http.get("/v1/runs", params={"phase": "asleep"})
        assert response.status_code == 422 and "phase" in response.json()["message"]


def corra(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CORRA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=120
    )


def test_the_command_line_runs_a_job_and_shows_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "ada.gate").touch()
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS.replace("GATEDIR", str(tmp_path)))
    done = corra(state, "run", str(jobs), "--job", "greet", "--param", "who=ada", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout)
    assert run["phase"] == "finished" and run["result"] is None  # (its last step's: none)
    assert "hello: finished" in done.stderr and f"run {run['id']}: finished" in done.stderr

    shown = corra(state, "show", run["id"])
    assert shown.returncode == 0, shown.stderr
    assert "[+] hello: finished" in shown.stdout and "[+] gate: finished" in shown.stdout
    listed = corra(state, "runs")
    assert run["id"] in listed.stdout and "greet" in listed.stdout
    jobs_listed = corra(state, "jobs", str(jobs))
    assert jobs_listed.stdout.startswith("greet: hello, gate")

    bad = corra(state, "run", str(jobs), "--job", "greet", "--param", "n=lots")
    assert bad.returncode == 2 and "n" in bad.stderr and "lots" in bad.stderr
    missing = corra(state, "run", str(jobs), "--job", "nope")
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr
    stray = corra(state, "run", str(jobs), "--param", "n=1")
    assert stray.returncode == 2 and "--job" in stray.stderr
    nothing = corra(state, "show", "neither")
    assert nothing.returncode != 0 and "neither" in nothing.stderr


def test_a_failed_run_exits_non_zero(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nname = "bad"\n[[job.step]]\nname = "no"\nargv = ["false"]\n')
    done = corra(tmp_path / "state", "run", str(jobs), "--job", "bad")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 'no' failed" in done.stdout


def test_serve_jobs_and_the_command_line_against_it(tmp_path: Path) -> None:
    from test_api_service import Service

    state = tmp_path / "state"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS.replace("GATEDIR", str(tmp_path)))
    with Service(state, "--jobs", str(jobs)) as service:
        try:
            listed = corra(state, "jobs")
            assert listed.returncode == 0, listed.stderr
            assert listed.stdout.startswith("greet: hello, gate")
            with service.client() as http:
                created = http.post("/v1/jobs/greet/runs", json={"name": "first"})
            assert created.status_code == 201, created.text
            paused = corra(state, "pause", "first", "--steps")
            assert paused.returncode == 0, paused.stderr
            assert "paused" in paused.stdout and "paused too" in paused.stdout
            resumed = corra(state, "resume", "first")
            assert resumed.returncode == 0 and "running" in resumed.stdout
            killed = corra(state, "kill", "first")
            assert killed.returncode == 0, killed.stderr
            deadline = time.monotonic() + 30
            while "killed" not in corra(state, "runs", "--phase", "killed").stdout:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # SIGHUP: the file again, with a second job (the first run is not touched)
            jobs.write_text(
                jobs.read_text()
                + '\n[[job]]\nname = "more"\n[[job.step]]\nname = "s"\nargv = ["true"]\n'
            )
            service.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while "more" not in corra(state, "jobs").stdout:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            shown = corra(state, "show", "first", "--json")
            assert json.loads(shown.stdout)["phase"] == "killed"
        finally:
            service.stop()


async def test_a_running_steps_status_is_in_its_run(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    says = 'echo \'{"progress": 0.5, "message": "half"}\' >> $CORRA_STATUS'
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    text = (
        '[[job]]\nname = "says"\n[[job.step]]\nname = "slow"\n'
        f"argv = {json.dumps(['sh', '-c', f'{says}; {wait}'])}\n"
    )
    async with serving(tmp_path / "state") as served:
        served.runtime.workflows.define(parse_job_text(text).jobs)
        run = (await served.http.post("/v1/jobs/says/runs")).json()
        with trio.fail_after(30):
            while True:
                step = (await served.http.get(f"/v1/runs/{run['id']}")).json()["steps"][0]
                if step.get("status"):
                    break
                await trio.sleep(0.1)
        assert step["status"]["value"] == {"progress": 0.5, "message": "half"}
        assert step["process_phase"] == "running"
        from corra.cli._workflows import tree_lines

        detail = (await served.http.get(f"/v1/runs/{run['id']}")).json()
        assert "[>] slow: running  50% half" in "\n".join(tree_lines(detail))
        gate.touch()
        await wait_run(served.http, run["id"], "finished")
