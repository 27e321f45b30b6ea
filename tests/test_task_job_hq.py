"""The HyperQueue task wrapper under a real HyperQueue server and worker (the wheel's
`LocalCluster`, in a process of its own: its client holds the GIL while it waits): what the
worker gives the task, what it says of the program's status, and how it stops a task (SIGINT,
then SIGKILL to the wrapper's group a second later)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corra.chaperone import task_job

pytestmark = pytest.mark.slow

#: Runs the task (argv[2], JSON) on a local cluster, as one job (or, "twice", as two, submitted
#: at once: a resubmission). "wait", "twice": until the jobs end, then prints whether they
#: succeeded and HyperQueue's errors; "stop": until a line on stdin, then stops the cluster (as
#: a worker's end does), and lives on a while for the worker's late SIGKILL.
CLUSTER = """
import json, sys, time
from hyperqueue import Job, LocalCluster
from hyperqueue.cluster import WorkerConfig

server_dir, command, cwd, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
with LocalCluster(server_dir=server_dir) as cluster:
    cluster.start_worker(WorkerConfig(cores=2))
    client = cluster.client()
    submitted = []
    for _ in range(2 if mode == "twice" else 1):
        job = Job()
        job.program(command, cwd=cwd, stdout=cwd + "/hq.stdout", stderr=cwd + "/hq.stderr")
        submitted.append(client.submit(job))
    if mode in ("wait", "twice"):
        ok = client.wait_for_jobs(submitted, raise_on_error=False)
        failed = {}
        for job in submitted:
            failed.update({str(t): c.error for t, c in client.get_failed_tasks(job).items()})
        print(json.dumps({"ok": ok, "failed": failed}), flush=True)
    else:
        sys.stdin.readline()
time.sleep(2.0)  # (past the worker's SIGKILL, one second after its SIGINT)
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:  # (a test that failed: the cluster stops its task first)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
            process.communicate("stop\n", timeout=10)
        process.kill()
        process.communicate()


def run_task(
    started: list[subprocess.Popen[str]],
    tmp_path: Path,
    program: list[str],
    mode: str,
    *,
    grace: float = 1.0,
) -> subprocess.Popen[str]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    # (shipped, as the backend runs it: the source in the command is test_task_job.py's too)
    library = task_job.ship(tmp_path / ".corra")
    command = task_job.argv(run_dir, grace, None, program, python=sys.executable, library=library)
    arguments = [str(tmp_path / "server"), json.dumps(command), str(tmp_path), mode]
    process = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # (the wait's progress bar)
        text=True,
    )
    started.append(process)
    return process


def test_a_task_runs_the_program_once_and_hyperqueue_sees_its_status(
    cluster: list[subprocess.Popen[str]], tmp_path: Path
):
    program = ["sh", "-c", 'echo "$HQ_JOB_ID/$HQ_TASK_ID" in "$PWD"; exit 3']
    process = run_task(cluster, tmp_path, program, "wait")
    stdout, _ = process.communicate(timeout=60)
    answer = json.loads(stdout.splitlines()[-1])  # (after the server's table)
    assert answer["ok"] is False
    assert answer["failed"] == {"0": "Program terminated with exit code 3."}
    run_dir = tmp_path / "run"
    assert (run_dir / "stdout").read_text() == f"1/0 in {tmp_path}\n"
    record = json.loads((run_dir / task_job.EXIT_FILE).read_text())
    assert record["returncode"] == 3 and record["killed"] is False
    claim = json.loads((run_dir / task_job.CLAIM_FILE).read_text())
    assert claim["job_id"] == "1" and claim["task_id"] == "0"
    assert (tmp_path / "hq.stdout").read_text() == ""  # (the program's output is corra's)


def test_a_resubmitted_task_runs_nothing(cluster: list[subprocess.Popen[str]], tmp_path: Path):
    # (two jobs of one attempt, on a worker with room for both at once: the program runs once)
    program = ["sh", "-c", f'echo "$HQ_JOB_ID" >> {tmp_path}/ledger; sleep 0.2']
    process = run_task(cluster, tmp_path, program, "twice")
    stdout, _ = process.communicate(timeout=60)
    assert json.loads(stdout.splitlines()[-1]) == {"ok": True, "failed": {}}
    ran = (tmp_path / "ledger").read_text().split()
    assert len(ran) == 1
    claim = json.loads((tmp_path / "run" / task_job.CLAIM_FILE).read_text())
    assert claim["job_id"] == ran[0]
    assert json.loads((tmp_path / "run" / task_job.EXIT_FILE).read_text())["returncode"] == 0


def test_hyperqueue_s_stop_ends_the_program_s_group_within_its_second(
    cluster: list[subprocess.Popen[str]], tmp_path: Path
):
    # (a program that ignores TERM, with a grace of a minute: HyperQueue SIGKILLs the wrapper
    # one second after its SIGINT, so the wrapper must be done by then)
    program = [
        "sh",
        "-c",
        f'trap "" TERM; echo $$ > {tmp_path}/leader; sleep 600 & echo $! > {tmp_path}/child; '
        "echo ready; while :; do sleep 0.05; done",
    ]
    process = run_task(cluster, tmp_path, program, "stop", grace=60.0)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 30
    while not (run_dir / "stdout").exists() or (run_dir / "stdout").read_text() != "ready\n":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    wrapper = json.loads((run_dir / task_job.CLAIM_FILE).read_text())["pid"]
    leader, child = (int((tmp_path / name).read_text()) for name in ("leader", "child"))
    assert process.stdin is not None
    process.stdin.write("stop\n")
    process.stdin.flush()
    process.communicate(timeout=30)
    record = json.loads((run_dir / task_job.EXIT_FILE).read_text())
    assert record["signal"] == signal.SIGKILL and record["killed"] is False
    assert record["ended_at"] - record["started_at"] < 60.0
    for pid in (wrapper, leader, child):
        assert gone(pid), f"{pid} outlived the task"


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
