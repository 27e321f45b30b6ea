"""The HyperQueue task wrapper (`corra.chaperone.task_job`), run as a HyperQueue worker runs
it: the command of `task_job.argv`, ``HQ_JOB_ID`` and ``HQ_TASK_ID`` in its environment, real
programs in its process group."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corra.chaperone import task_job

#: What a worker's environment says of the task (HyperQueue sets these).
HQ_ENV = {"HQ_JOB_ID": "17", "HQ_TASK_ID": "0", "HQ_INSTANCE_ID": "0"}
#: The python3 a worker node has, rather than this venv's (None where there is none).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
#: Ignores TERM (so do its children: an ignored signal stays ignored across exec), says ready.
IGNORES_TERM = ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done']
#: Starts a child that ignores TERM (its pid in ``child``), notes the TERM it gets itself in
#: ``got`` and runs on, says ready.
GROUP_THAT_IGNORES_TERM = [
    "sh",
    "-c",
    "sh -c 'trap \"\" TERM; exec sleep 60' & echo $! > child; "
    'trap "echo term > got" TERM; echo ready; while :; do sleep 0.05; done',
]
#: Starts a child (its pid in ``child``), says ready, sleeps.
GROUP = ["sh", "-c", "sleep 60 & echo $! > child; echo ready; exec sleep 60"]


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(params=["source", "library"])
def start(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Start]:
    """Start a wrapper as a worker would (its cwd: ``tmp_path``); killed at the end. Each
    test twice: the source in the command, and the wrapper shipped (as the backend runs it)."""
    started: list[subprocess.Popen[bytes]] = []
    library = task_job.ship(tmp_path / ".corra") if request.param == "library" else None

    def start(
        run_dir: Path,
        program: list[str],
        *,
        grace: float = 1.0,
        timeout: float | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        wrapper = subprocess.Popen(
            task_job.argv(run_dir, grace, timeout, program, python=python, library=library),
            env={**os.environ, **HQ_ENV, **(env or {})},
            cwd=tmp_path,
            stdin=subprocess.PIPE,  # (never closed: a program that read it would hang)
            stderr=subprocess.PIPE,
            umask=0,  # the modes come from the wrapper
        )
        started.append(wrapper)
        return wrapper

    yield start
    for wrapper in started:  # (a test that failed: its program's group, then its wrapper)
        if wrapper.poll() is None:
            children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
            for pid in children.read_text().split() if children.exists() else ():
                with contextlib.suppress(OSError):
                    os.killpg(int(pid), signal.SIGKILL)
        wrapper.kill()
        wrapper.communicate()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


def finish(wrapper: subprocess.Popen[bytes]) -> tuple[int, str]:
    """The wrapper's status and stderr, once it has exited."""
    _, stderr = wrapper.communicate(timeout=30)
    return wrapper.returncode, stderr.decode()


def exit_record(run_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((run_dir / task_job.EXIT_FILE).read_text())
    assert set(record) == {"returncode", "signal", "started_at", "ended_at", "timed_out", "killed"}
    return record


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def wait_ready(run_dir: Path) -> None:
    """Until the program has said ``ready`` in its stdout."""
    deadline = time.monotonic() + 20
    while not (run_dir / "stdout").exists() or (run_dir / "stdout").read_bytes() != b"ready\n":
        assert time.monotonic() < deadline, "the program never said ready"
        time.sleep(0.01)


def child_of(tmp_path: Path) -> int:
    deadline = time.monotonic() + 20
    while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text().strip():
        assert time.monotonic() < deadline, "the program never started its child"
        time.sleep(0.01)
    return int((tmp_path / "child").read_text())


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie that init has not reaped yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill(run_dir: Path, grace: float) -> None:
    """corra's kill request, written whole as corra writes it."""
    (run_dir / "kill.tmp").write_text(json.dumps({"grace": grace}))
    (run_dir / "kill.tmp").rename(run_dir / task_job.KILL_FILE)


PYTHONS = [
    pytest.param(sys.executable, id="venv"),
    pytest.param(
        SYSTEM_PYTHON,
        id="system",
        marks=pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no python3 in /usr/bin or /bin"),
    ),
]


@pytest.mark.parametrize("python", PYTHONS)
def test_the_program_s_status_and_output_land_in_the_run_dir(
    start: Start, run_dir: Path, tmp_path: Path, python: str
):
    # (cat reads stdin: /dev/null, or it would wait for the wrapper's open stdin forever)
    program = ["sh", "-c", 'cat; echo out "$HQ_JOB_ID"; pwd; echo err >&2; exit 3']
    wrapper = start(run_dir, program, python=python)
    assert finish(wrapper) == (3, "")
    assert (run_dir / "stdout").read_text() == f"out 17\n{tmp_path}\n"
    assert (run_dir / "stderr").read_text() == "err\n"
    record = exit_record(run_dir)
    assert record["returncode"] == 3 and record["signal"] is None
    assert record["killed"] is False and record["timed_out"] is False
    assert isinstance(record["started_at"], float) and isinstance(record["ended_at"], float)
    assert record["started_at"] <= record["ended_at"]
    claim = json.loads((run_dir / task_job.CLAIM_FILE).read_text())
    assert claim["job_id"] == "17" and claim["task_id"] == "0" and claim["instance_id"] == "0"
    assert claim["host"] == os.uname().nodename and claim["pid"] == wrapper.pid
    assert claim["claimed_at"] <= record["started_at"]
    names = {task_job.CLAIM_FILE, task_job.EXIT_FILE, "stdout", "stderr"}
    assert {path.name for path in run_dir.iterdir()} == names  # no temp file left
    assert {name: mode(run_dir / name) for name in names} == dict.fromkeys(names, 0o600)


def test_the_source_is_self_contained():
    # (what a worker's python runs: _escalation's and _wrapper's text first, no package)
    source = task_job.source()
    order = [source.index(text) for text in ("class Escalation", "class Job(", "def claim(")]
    assert order == sorted(order)
    ast.parse(source, feature_version=(3, 6))  # (the oldest python3 a worker may have)
    compile(source, "task", "exec")


@pytest.mark.parametrize("shipped", [False, True], ids=["source", "library"])
def test_a_task_s_start_imports_little(run_dir: Path, tmp_path: Path, shipped: bool):
    # (every task starts a python: json, re and enum would cost each about 10 ms of CPU, os 1.2)
    library = task_job.ship(tmp_path / ".corra") if shipped else None
    command = task_job.argv(run_dir, 1.0, None, ["true"], library=library)
    command[1:1] = ["-X", "importtime"]
    finished = subprocess.run(command, env={**os.environ, **HQ_ENV}, capture_output=True)
    assert finished.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in finished.stderr.decode().splitlines()}
    assert "posix" in imported and "errno" in imported  # (the import times were seen)
    assert not {"os", "json", "re", "enum", "contextlib", "hashlib"} & imported


def test_a_second_task_of_the_run_dir_runs_nothing(start: Start, run_dir: Path, tmp_path: Path):
    program = ["sh", "-c", f"echo ran >> {tmp_path / 'ledger'}; echo once"]
    assert finish(start(run_dir, program)) == (0, "")
    first = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    # (a resubmission, after corra crashed before it recorded the first job's id)
    assert finish(start(run_dir, program, env={"HQ_JOB_ID": "18"})) == (0, "")
    assert (tmp_path / "ledger").read_text() == "ran\n"
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == first


def test_a_task_run_again_after_its_worker_was_lost_runs_nothing_and_fails(
    start: Start, run_dir: Path, tmp_path: Path
):
    # (HyperQueue runs a task again when its worker is lost: the program was lost with it)
    program = ["sh", "-c", f"echo ran >> {tmp_path / 'ledger'}"]
    assert finish(start(run_dir, program)) == (0, "")
    (run_dir / task_job.EXIT_FILE).unlink()  # (as if the worker had died with the program)
    status, stderr = finish(start(run_dir, program, env={"HQ_INSTANCE_ID": "1"}))
    assert status == task_job.FAILED
    assert "claimed by an earlier run of this task (instance 0), which was lost" in stderr
    assert (tmp_path / "ledger").read_text() == "ran\n"
    assert not (run_dir / task_job.EXIT_FILE).exists()


@pytest.mark.parametrize("round_", range(5))
def test_tasks_that_start_at_once_run_the_program_once(
    start: Start, run_dir: Path, tmp_path: Path, round_: int
):
    program = ["sh", "-c", f"echo $HQ_JOB_ID >> {tmp_path / 'ledger'}"]
    wrappers = [start(run_dir, program, env={"HQ_JOB_ID": str(job)}) for job in range(6)]
    assert [finish(wrapper) for wrapper in wrappers] == [(0, "")] * 6
    ran = (tmp_path / "ledger").read_text().split()
    assert len(ran) == 1
    assert json.loads((run_dir / task_job.CLAIM_FILE).read_text())["job_id"] == ran[0]
    assert exit_record(run_dir)["returncode"] == 0


#: Claims RUN_DIR (argv[1]) the moment GO (argv[2]) exists; prints whether it did.
CLAIMER = """
import os, sys
from corra.chaperone import task_job
while not os.path.exists(sys.argv[2]):
    pass
print(task_job.claim(sys.argv[1], {"job_id": str(os.getpid())}))
"""


@pytest.mark.parametrize("round_", range(3))
def test_claims_made_at_the_same_moment_have_one_winner(run_dir: Path, tmp_path: Path, round_: int):
    go = tmp_path / "go"
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(run_dir), str(go)], stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    time.sleep(0.3)  # (until they spin: the real processes' start)
    go.touch()
    said = [claimer.communicate(timeout=30)[0].decode().strip() for claimer in claimers]
    assert sorted(said) == ["False", "False", "False", "True"]
    winner = claimers[said.index("True")].pid
    assert json.loads((run_dir / task_job.CLAIM_FILE).read_text()) == {"job_id": str(winner)}
    assert [path.name for path in run_dir.iterdir()] == [task_job.CLAIM_FILE]


def test_a_claim_by_corra_s_kill_leaves_the_task_nothing_to_do(
    start: Start, run_dir: Path, tmp_path: Path
):
    claim = {"killed_before_start": True, "claimed_at": time.time()}
    assert task_job.claim(str(run_dir), claim)  # (what corra's kill of a queued task does)
    assert not task_job.claim(str(run_dir), {"job_id": "1"})
    assert finish(start(run_dir, ["sh", "-c", f"echo ran > {tmp_path / 'ledger'}"])) == (0, "")
    assert not (tmp_path / "ledger").exists()
    assert {path.name for path in run_dir.iterdir()} == {task_job.CLAIM_FILE}
    assert json.loads((run_dir / task_job.CLAIM_FILE).read_text()) == claim


def test_a_kill_before_the_start_runs_nothing(start: Start, run_dir: Path, tmp_path: Path):
    kill(run_dir, 5.0)
    wrapper = start(run_dir, ["sh", "-c", f"echo ran > {tmp_path / 'ledger'}"])
    assert finish(wrapper) == (128 + signal.SIGTERM, "")
    assert not (tmp_path / "ledger").exists()
    record = exit_record(run_dir)
    assert record["killed"] is True and record["signal"] == signal.SIGTERM
    assert record["returncode"] is None and record["timed_out"] is False
    assert json.loads((run_dir / task_job.CLAIM_FILE).read_text())["job_id"] == "17"
    assert (run_dir / "stdout").read_bytes() == b"" and mode(run_dir / "exit.json") == 0o600


def test_a_kill_terminates_the_group_then_kills_it_after_its_grace(
    start: Start, run_dir: Path, tmp_path: Path
):
    wrapper = start(run_dir, GROUP_THAT_IGNORES_TERM, grace=60.0)
    wait_ready(run_dir)
    child = child_of(tmp_path)
    sent = time.monotonic()
    kill(run_dir, 0.5)  # (its grace, not the spec's 60 s)
    assert finish(wrapper) == (128 + signal.SIGKILL, "")
    assert time.monotonic() - sent >= 0.5
    assert (tmp_path / "got").read_text() == "term\n"  # TERM first
    record = exit_record(run_dir)
    assert record["signal"] == signal.SIGKILL and record["returncode"] is None
    assert record["killed"] is True and record["timed_out"] is False
    assert gone(child)  # (it ignored TERM too: the group's SIGKILL ended it)


def test_a_second_kill_may_shorten_the_grace(start: Start, run_dir: Path):
    wrapper = start(run_dir, IGNORES_TERM, grace=60.0)
    wait_ready(run_dir)
    kill(run_dir, 30.0)
    with pytest.raises(subprocess.TimeoutExpired):
        wrapper.wait(timeout=1.0)  # TERM went, and was ignored: the grace runs
    sent = time.monotonic()
    kill(run_dir, 0.0)
    assert finish(wrapper) == (128 + signal.SIGKILL, "")
    assert time.monotonic() - sent < 10.0
    assert exit_record(run_dir)["killed"] is True


def test_the_timeout_ends_the_program_with_the_spec_s_grace(start: Start, run_dir: Path):
    wrapper = start(run_dir, IGNORES_TERM, grace=0.3, timeout=0.5)
    began = time.monotonic()
    assert finish(wrapper) == (128 + signal.SIGKILL, "")
    assert time.monotonic() - began >= 0.8
    record = exit_record(run_dir)
    assert record["timed_out"] is True and record["killed"] is False
    assert record["signal"] == signal.SIGKILL
    assert record["ended_at"] - record["started_at"] >= 0.8


def test_a_program_that_ends_within_its_timeout_did_not_time_out(start: Start, run_dir: Path):
    assert finish(start(run_dir, ["true"], timeout=30.0)) == (0, "")
    assert exit_record(run_dir)["timed_out"] is False


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_the_scheduler_s_kill_ends_the_group(
    start: Start, run_dir: Path, tmp_path: Path, number: int
):
    wrapper = start(run_dir, GROUP, grace=5.0)
    wait_ready(run_dir)
    child = child_of(tmp_path)
    wrapper.send_signal(number)
    assert finish(wrapper) == (128 + signal.SIGTERM, "")  # (TERM to the group, whichever came)
    record = exit_record(run_dir)
    assert record["signal"] == signal.SIGTERM and record["killed"] is False
    assert gone(child)


def test_hyperqueue_s_stop_is_over_within_its_second(start: Start, run_dir: Path, tmp_path: Path):
    # (HyperQueue stops a task with SIGINT, and SIGKILLs the wrapper a second later: the
    # program's group must be gone and the record written by then, whatever the grace; the
    # orphaned child's zombie, where init does not reap, must not hold the wrapper up)
    wrapper = start(run_dir, GROUP_THAT_IGNORES_TERM, grace=60.0)
    wait_ready(run_dir)
    child = child_of(tmp_path)
    sent = time.monotonic()
    wrapper.send_signal(signal.SIGINT)
    assert finish(wrapper) == (128 + signal.SIGKILL, "")
    assert time.monotonic() - sent < 1.0
    assert (tmp_path / "got").read_text() == "term\n"
    assert exit_record(run_dir)["signal"] == signal.SIGKILL
    assert gone(child)


def test_the_scheduler_s_kill_after_corra_s_request_has_its_grace(start: Start, run_dir: Path):
    # (corra writes kill.json, then cancels the job: the TERM that follows is corra's kill)
    wrapper = start(run_dir, IGNORES_TERM, grace=60.0)
    wait_ready(run_dir)
    kill(run_dir, 0.0)
    wrapper.send_signal(signal.SIGTERM)
    assert finish(wrapper) == (128 + signal.SIGKILL, "")
    assert exit_record(run_dir)["killed"] is True


@pytest.mark.parametrize(
    ("program", "status", "says"),
    [
        (["no-such-program-corra"], 127, "No such file or directory"),
        (["/dev/null"], 126, "Permission denied"),
    ],
)
def test_a_program_that_cannot_start_is_recorded_as_a_shell_says(
    start: Start, run_dir: Path, program: list[str], status: int, says: str
):
    assert finish(start(run_dir, program)) == (status, "")
    record = exit_record(run_dir)
    assert record["returncode"] == status and record["killed"] is False
    assert (run_dir / "stderr").read_text() == f"corra: {program[0]}: {says}\n"


def test_no_run_dir_is_said_and_nothing_runs(start: Start, tmp_path: Path):
    wrapper = start(tmp_path / "gone", ["sh", "-c", f"echo ran > {tmp_path / 'ledger'}"])
    status, stderr = finish(wrapper)
    assert status == task_job.FAILED and not (tmp_path / "ledger").exists()
    assert stderr == f"corra task: {tmp_path / 'gone' / 'claim.json'}: No such file or directory\n"


def test_a_run_dir_removed_under_the_program_is_said(start: Start, run_dir: Path):
    wrapper = start(run_dir, ["sh", "-c", "echo ready; sleep 0.3"])
    wait_ready(run_dir)
    shutil.rmtree(run_dir)
    status, stderr = finish(wrapper)
    assert status == 0  # the program's
    assert stderr.startswith(f"corra: {run_dir / 'exit.json'}: ") and "Traceback" not in stderr


def test_arguments_that_make_no_sense(start: Start, run_dir: Path):
    for grace, timeout in [(-1.0, None), (float("inf"), None), (1.0, 0.0), (1.0, float("nan"))]:
        with pytest.raises(ValueError):
            task_job.argv(run_dir, grace, timeout, ["true"])
    with pytest.raises(ValueError, match="program"):
        task_job.argv(run_dir, 1.0, None, [])
    with pytest.raises(ValueError, match="run_dir"):
        task_job.argv("run", 1.0, None, ["true"])
    with pytest.raises(ValueError, match="library"):
        task_job.argv(run_dir, 1.0, None, ["true"], library="lib")
    command = task_job.argv(run_dir, 1.0, None, ["true"])
    command[command.index("--") - 2] = "-1"  # (GRACE)
    wrapper = subprocess.Popen(command, stderr=subprocess.PIPE)
    status, stderr = finish(wrapper)
    assert status == task_job.FAILED and stderr.startswith("corra task: GRACE")
    command[command.index("--") - 3] = "run"  # (RUN_DIR, relative: the task's cwd's)
    wrapper = subprocess.Popen(command, stderr=subprocess.PIPE, cwd=run_dir.parent)
    status, stderr = finish(wrapper)
    assert status == task_job.FAILED and stderr.startswith("corra task: RUN_DIR")
    assert list(run_dir.iterdir()) == []


def test_output_files_that_cannot_be_made_are_said(start: Start, run_dir: Path, tmp_path: Path):
    (run_dir / "stdout").mkdir()  # (not a file it can open)
    wrapper = start(run_dir, ["sh", "-c", f"echo ran > {tmp_path / 'ledger'}"])
    status, stderr = finish(wrapper)
    assert status == task_job.FAILED and not (tmp_path / "ledger").exists()
    assert stderr == f"corra task: {run_dir / 'stdout'}: Is a directory\n"
