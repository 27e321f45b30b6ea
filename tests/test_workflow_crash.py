"""kill -9 of the runtime at each write-ahead point of a workflow run with a fan-out of 50
(`corra.workflows._faults`), then `corra run` again: a ledger shows that every step ran
exactly once, and the run finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CORRA = [sys.executable, "-m", "corra.cli"]
FAN_OUT = 50
RUN_OPTIONS = ("--run-name", "nightly", "--json", "--max-running", "8")


def job_file(tmp_path: Path, ledger: Path) -> Path:
    path = tmp_path / "jobs.toml"
    write = f"echo $1 >> {ledger}"
    path.write_text(
        f"""
[[job]]
name = "fan"

[[job.step]]
name = "prepare"
argv = ["sh", "-c", "{write}", "sh", "prepare"]

[[job.step]]
name = "work"
needs = ["prepare"]
for_each = {list(range(FAN_OUT))}
argv = ["sh", "-c", "{write}", "sh", "work-${{item}}"]

[[job.step]]
name = "join"
needs = ["work"]
argv = ["sh", "-c", "{write}", "sh", "join"]
"""
    )
    return path


def corra_run(state: Path, jobs: Path, crash: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CORRA_CRASH_AT"}
    if crash is not None:
        env["CORRA_CRASH_AT"] = crash
    return subprocess.run(
        [*CORRA, "--state-dir", str(state), "run", str(jobs), "--job", "fan", *RUN_OPTIONS],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


@pytest.mark.parametrize(
    "crash",
    [
        "run.started:1",
        "steps.decided:1",  # (prepare decided, not submitted)
        "steps.decided:2",  # (the 50 items decided, none submitted)
        "step.submitted:1",
        "step.submitted:20",  # (in the middle of the fan-out's submissions)
        "step.ended:1",
        "step.ended:3",
        "run.ended:1",
    ],
)
def test_kill_9_at_a_write_ahead_point_then_run_again(tmp_path: Path, crash: str) -> None:
    state = tmp_path / "state"
    ledger = tmp_path / "ledger"
    jobs = job_file(tmp_path, ledger)
    first = corra_run(state, jobs, crash)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    again = corra_run(state, jobs, None)
    assert again.returncode == 0, again.stdout + again.stderr
    run = json.loads(again.stdout)
    assert run["phase"] == "finished" and run["name"] == "nightly"
    lines = ledger.read_text().split()
    expected = ["prepare", *(f"work-{i}" for i in range(FAN_OUT)), "join"]
    assert sorted(lines) == sorted(expected), "every step ran exactly once"
    assert lines[0] == "prepare" and lines[-1] == "join"
    steps = {step["key"]: step for step in run["steps"]}
    assert steps["work"]["count"] == FAN_OUT
    assert all(steps[f"work[{i}]"]["phase"] == "finished" for i in range(FAN_OUT))
