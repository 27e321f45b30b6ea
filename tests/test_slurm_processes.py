"""Slurm jobs through the whole runtime (``backend = "slurm"``), against a real single-node
Slurm (tests/_slurm.py): on this machine (``transport = "local"``), and behind the loopback
sshd (tests/_sshd.py).

Every test cancels what it left in the queue (the `cluster` fixture), whatever its outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _slurm
import _sshd
import pytest
import trio

from corra._errors import ConfigError
from corra._runtime import ProcessRef, open_runtime
from corra.backends.slurm import SlurmSettings
from corra.backends.ssh import HostConfig
from corra.processes._notes import Note
from corra.processes._query import ProcessQuery

pytestmark = pytest.mark.slow

CORRA = [sys.executable, "-m", "corra.cli"]


def queue(cluster: _slurm.SlurmCluster) -> list[str]:
    """The ids of every job in the queue (an array once, by its job id), any user's."""
    out = cluster.run("squeue", "-h", "-o", "%F")
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def job_field(cluster: _slurm.SlurmCluster, job_id: str, field: str) -> str:
    """One ``Field=value`` of ``scontrol show job -o`` for the job (its first task's)."""
    line = cluster.run("scontrol", "show", "job", "-o", job_id).splitlines()[0]
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    return fields[field]


def squeue_state(cluster: _slurm.SlurmCluster, job_id: str) -> tuple[str, str] | None:
    """(state, reason) of a queued job, or None once it left the queue."""
    out = cluster.run("squeue", "-h", "-j", job_id, "-o", "%T|%r").strip()
    if not out:
        return None
    state, _, reason = out.splitlines()[0].partition("|")
    return state, reason


def jobs_under(cluster: _slurm.SlurmCluster, root: Path) -> set[str]:
    """Every job slurmctld knows (queued, or ended within MinJobAge) whose output goes
    under ``root``."""
    jobs = set()
    for line in cluster.run("scontrol", "show", "job", "-o").splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("StdOut", "").startswith(f"{root}/"):
            jobs.add(fields.get("ArrayJobId") or fields["JobId"])
    return jobs


@pytest.fixture
def cluster(slurm: _slurm.SlurmCluster) -> Iterator[_slurm.SlurmCluster]:
    """The session's Slurm; jobs that the test left in the queue are cancelled after it."""
    before = set(queue(slurm))
    yield slurm
    leftover = [job_id for job_id in queue(slurm) if job_id not in before]
    if leftover:  # (not checked: a job may end between squeue and scancel)
        subprocess.run(["scancel", *leftover], env=slurm.env, capture_output=True, timeout=60)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir that every user may write in (pytest's are 0700): run dirs of jobs that
    run as the sshd's test user, and ledgers."""
    path = Path(tempfile.mkdtemp(prefix="corra-slurm-processes-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def here(cluster: _slurm.SlurmCluster, work_root: Path, **settings: object) -> HostConfig:
    """The cluster as a host on this machine."""
    options: dict[str, object] = {"work_root": str(work_root), "poll_interval": 0.5}
    options.update(settings)
    return HostConfig(
        name="here",
        transport="local",
        env={"SLURM_CONF": str(cluster.conf)},
        options={"slurm": SlurmSettings(**options)},  # type: ignore[arg-type]
    )


async def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Poll ``condition()`` (sync) every 0.2 s until it is true."""
    with trio.move_on_after(seconds):
        while not condition():
            await trio.sleep(0.2)
        return
    raise AssertionError(f"{what}: not within {seconds} s")


def job_id_of(ref: ProcessRef) -> str:
    handle = ref.state.handle
    assert handle is not None, ref.state
    return str(handle.job_id)


# -- through open_runtime, on this machine ------------------------------------------------


async def test_a_job_finishes_and_one_fails_with_its_exit_code(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ok = await runtime.spawn_process(
            ["sh", "-c", 'echo "hello $CORRA_PROCESS_NAME $CORRA_ATTEMPT"; echo warm >&2'],
            name="ok",
            backend="slurm",
            host="here",
        )
        bad = await runtime.spawn_process(
            ["sh", "-c", "echo no >&2; exit 3"], name="bad", backend="slurm", host="here"
        )
        with trio.fail_after(60):
            done = await ok.wait()
            failed = await bad.wait()
        assert done.phase == "finished", done.state.reason
        assert done.state.attempt == 1
        assert done.state.result is not None and done.state.result.returncode == 0
        assert done.state.result.started_at is not None and done.state.result.ended_at
        assert await ok.logs() == b"hello ok 1\n"
        assert await ok.logs("stderr") == b"warm\n"
        assert await ok.logs(offset=6) == b"ok 1\n"
        assert done.state.result.stdout_bytes == len(b"hello ok 1\n")

        assert failed.phase == "failed"
        assert failed.state.result is not None and failed.state.result.returncode == 3
        assert failed.state.reason == "exited with 3"
        assert await bad.logs("stderr") == b"no\n"

        # The job carries the idempotency key in its name; Slurm agrees on how it ended.
        job_id = job_id_of(ok)
        assert job_field(cluster, job_id, "JobName") == f"corra-{ok.id}.1"
        assert job_field(cluster, job_id, "JobState") == "COMPLETED"
        assert job_field(cluster, job_id_of(bad), "ExitCode") == "3:0"


async def test_killing_a_running_job_cancels_it(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", "echo started; sleep 120"], name="long", backend="slurm", host="here"
        )
        with trio.fail_after(30):
            await runtime.processes.wait(ref.id, until=lambda r: r.phase == "running")
        job_id = job_id_of(ref)
        await until(lambda: (squeue_state(cluster, job_id) or ("",))[0] == "RUNNING", "job running")
        stdout = tmp_path / "jobs" / f"{ref.id}.1" / "stdout"
        await until(lambda: stdout.exists() and stdout.read_bytes() == b"started\n", "started")
        with trio.fail_after(60):
            record = await ref.kill()
        assert record.phase == "killed", record.state.reason
        events = [t.event for t in runtime.processes.history(ref.id)]
        assert events[-2:] == ["kill", "killed"], events
        result = record.state.result
        assert result is not None and result.killed and not result.ok
        assert squeue_state(cluster, job_id) is None
        assert job_field(cluster, job_id, "JobState") == "CANCELLED"
        assert await ref.logs() == b"started\n"


async def test_a_lost_job_fails_its_process_as_lost(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    # Its actor kills what is left of a lost program before it ends the attempt: that kill
    # must clean up, not raise the loss again.
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sleep", "120"], name="doomed", backend="slurm", host="here"
        )
        with trio.fail_after(30):
            await runtime.processes.wait(ref.id, until=lambda r: r.phase == "running")
        job_id = job_id_of(ref)
        await until(lambda: (squeue_state(cluster, job_id) or ("",))[0] == "RUNNING", "job running")
        await trio.to_thread.run_sync(cluster.forget_every_job)
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "failed", record.state.reason
        assert record.state.reason is not None and record.state.reason.startswith("lost: ")


async def test_pausing_a_pending_job_holds_it_and_resuming_releases_it(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    # A job that takes the whole node keeps ours pending (Reason=Resources).
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 120"
    ).strip()
    await until(
        lambda: (squeue_state(cluster, blocker) or ("",))[0] == "RUNNING", "blocker running"
    )
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        manager = runtime.processes
        ref = await runtime.spawn_process(
            ["sh", "-c", "echo ran"],
            name="held",
            backend="slurm",
            host="here",
            slurm={"hold_on_pause": True},
        )
        doomed = await runtime.spawn_process(
            ["sh", "-c", "echo never"],
            name="doomed",
            backend="slurm",
            host="here",
            slurm={"hold_on_pause": True},
        )
        with trio.fail_after(30):
            await manager.wait(ref.id, until=lambda r: r.phase == "running")
            await manager.wait(doomed.id, until=lambda r: r.phase == "running")
        job_id = job_id_of(ref)
        await until(lambda: squeue_state(cluster, job_id) == ("PENDING", "Resources"), "pending")

        with trio.fail_after(30):
            record = await ref.pause()
        assert record.phase == "paused" and record.state.paused_from == "running"
        state, reason = squeue_state(cluster, job_id) or ("gone", "")
        # `scontrol hold` is an admin hold when run by root (corra's user here), a user
        # hold otherwise: either way Slurm will not start the job.
        held = "JobHeldAdmin" if os.getuid() == 0 else "JobHeldUser"
        assert (state, reason) == ("PENDING", held)
        assert job_field(cluster, job_id, "Priority") == "0"

        # A paused, held job is cancelled by a kill.
        with trio.fail_after(30):
            await doomed.pause()
        assert squeue_state(cluster, job_id_of(doomed)) == ("PENDING", held)
        assert manager.active == 0  # a paused process holds nothing, not even an actor
        with trio.fail_after(30):
            record = await doomed.kill()
        assert record.phase == "killed"
        assert record.state.result is not None and record.state.result.killed
        assert job_field(cluster, job_id_of(doomed), "JobState") == "CANCELLED"

        # The node frees up: the held job still does not start.
        cluster.run("scancel", blocker)
        await until(lambda: squeue_state(cluster, blocker) is None, "blocker gone")
        await trio.sleep(2)
        assert squeue_state(cluster, job_id) == ("PENDING", held)
        assert not (tmp_path / "jobs" / f"{ref.id}.1" / "job_id").exists()

        with trio.fail_after(30):
            await ref.resume()
            record = await ref.wait()
        assert record.phase == "finished", record.state.reason
        assert record.state.attempt == 1
        assert await ref.logs() == b"ran\n"
        events = [transition.event for transition in manager.history(ref.id)]
        assert events.count("pause") == 1 and events.count("resume") == 1, events
        assert events.count("started") == 1, events


async def test_a_pending_jobs_reason_is_its_process_note_until_the_job_runs(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    # A job that takes the whole node keeps ours pending (Reason=Resources).
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 120"
    ).strip()
    await until(
        lambda: (squeue_state(cluster, blocker) or ("",))[0] == "RUNNING", "blocker running"
    )
    gate = tmp_path / "gate"
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        manager = runtime.processes
        query = ProcessQuery.of_manager(manager, lambda record: None)
        ref = await runtime.spawn_process(
            ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.1; done; echo ran'],
            backend="slurm",
            host="here",
        )

        async def note() -> Note | None:
            return (await query.show(ref.id)).note

        # (Slurm may say "pending" for a moment, before it names the reason)
        with trio.fail_after(30):
            while (shown := await note()) is None or shown.text != "pending: Resources":
                await trio.sleep(0.2)
        assert shown.attempt == 1
        assert squeue_state(cluster, job_id_of(ref)) == ("PENDING", "Resources")
        assert ref.record().phase == "running"  # (a note, never a transition)
        assert [t.event for t in manager.history(ref.id)] == ["submit", "launch", "started"]

        cluster.run("scancel", blocker)
        await until(
            lambda: (squeue_state(cluster, job_id_of(ref)) or ("",))[0] == "RUNNING",
            "our job running",
        )
        with trio.fail_after(30):
            while (await note()) is not None or manager.store.note(ref.id) is not None:
                await trio.sleep(0.2)
        assert ref.record().phase == "running"
        gate.touch()
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", record.state.reason
        assert await ref.logs() == b"ran\n"


async def test_an_array_job_finishes(cluster: _slurm.SlurmCluster, tmp_path: Path) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"'],
            name="array",
            backend="slurm",
            host="here",
            slurm={"array": "0-2"},
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", record.state.reason
        assert record.state.result is not None and record.state.result.returncode == 0
        run_dir = tmp_path / "jobs" / f"{ref.id}.1"
        for task in range(3):
            assert (run_dir / f"stdout.{task}").read_text() == f"task {task}\n"
            assert json.loads((run_dir / f"exit.{task}.json").read_text())["returncode"] == 0
        job_id = job_id_of(ref)
        assert squeue_state(cluster, job_id) is None


async def test_an_array_job_whose_task_fails_fails(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", 'exit "$SLURM_ARRAY_TASK_ID"'],
            name="array",
            backend="slurm",
            host="here",
            slurm={"array": "0-2"},
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "failed"
        assert record.state.result is not None and record.state.result.returncode == 2
        assert record.state.reason == "exited with 2"


async def test_an_array_jobs_logs_are_read_back(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"'],
            name="array",
            backend="slurm",
            host="here",
            slurm={"array": "0-2"},
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", record.state.reason
        assert record.state.result is not None
        logs = await ref.logs()
        assert sorted(logs.decode().splitlines()) == ["task 0", "task 1", "task 2"]
        assert record.state.result.stdout_bytes == len(logs)


async def test_a_jobs_inputs_are_sent_and_its_outputs_fetched(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("some data\n")
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", "cat data.txt && tr a-z A-Z < data.txt > out.txt"],
            name="files",
            backend="slurm",
            host="here",
            inputs={"data.txt": str(data)},
            outputs=["out.txt"],
            outputs_dir=str(tmp_path / "results"),
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", (record.state.reason, await ref.logs("stderr"))
        assert await ref.logs() == b"some data\n"
        assert (tmp_path / "results" / "out.txt").read_text() == "SOME DATA\n"


async def test_a_jobs_timeout_is_enforced_or_refused(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        try:
            ref = await runtime.spawn_process(
                ["sleep", "8"], name="limited", backend="slurm", host="here", timeout=2
            )
        except ConfigError:
            return  # refused at the edge: the user learns that it would not be enforced
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "failed", (record.phase, record.state.result)
        assert record.state.result is not None and record.state.result.timed_out


@pytest.mark.timeout(300)
async def test_a_job_past_its_time_limit_fails_as_timed_out(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    host = here(cluster, tmp_path / "jobs", poll_interval=1.0)
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sleep", "300"], name="slow", backend="slurm", host="here", slurm={"time": "1"}
        )
        # Slurm looks at time limits every 30 s, then signals and waits KillWait (5 s).
        with trio.fail_after(200):
            record = await ref.wait()
        job_id = job_id_of(ref)
        assert job_field(cluster, job_id, "JobState") == "TIMEOUT"
        assert record.phase == "failed"
        result = record.state.result
        assert result is not None and result.timed_out and not result.ok
        assert not result.killed
        assert record.state.reason == "timed out"
        # Slurm signalled the job: it wrote no exit record; Slurm's ExitCode says 0:15.
        assert result.returncode is None and result.signal in (9, 15), result
        assert b"DUE TO TIME LIMIT" in await ref.logs("stderr")
        # ... and its times come from Slurm: it ran about its minute.
        assert result.started_at is not None and result.ended_at is not None, result
        assert 50 <= result.ended_at - result.started_at <= 200, result


# -- what reaches the job script's shell, and who may read it --------------------------------

#: Values a shell would do something with, if they reached it unquoted.
AWKWARD = {
    "QUOTES": 'it\'s "quoted"',
    "SUBSTITUTION": "$(touch pwned-substitution)",
    "BACKTICKS": "`touch pwned-backticks`",
    "NEWLINES": "one\ntwo\n",
    "SPACES": "  a  b  ",
    "DOLLARS": "$HOME ${HOME} $1",
    "GLOB": "*",
    "BACKSLASHES": "a\\b\\n",
    "SEMICOLON": "x; touch pwned-semicolon",
    "EMPTY": "",
}


async def test_env_names_a_shell_cannot_set_are_refused_at_submission(
    cluster: _slurm.SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # (where sbatch runs, and a job would start)
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        for name in ("X;touch pwned;Y", "A-B"):
            with pytest.raises(ConfigError) as caught:
                await runtime.spawn_process(
                    ["true"], backend="slurm", host="here", env={"TOKEN": "x", name: "1"}
                )
            message = str(caught.value)
            assert message.startswith("process.env."), message
            assert f"got the name {name!r}, expected a name matching [A-Za-z_][A-Za-z0-9_]*" in (
                message
            )
        assert runtime.processes.list() == []
    assert jobs_under(cluster, tmp_path / "jobs") == set()
    assert not list(tmp_path.rglob("pwned*"))


async def test_env_values_argv_and_cwd_reach_the_program_verbatim(
    cluster: _slurm.SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    host = here(cluster, tmp_path / "jobs")
    cwd = tmp_path / "work dir $(touch pwned-cwd) 'q' `x`"
    report = (
        "import json, os, sys; names = sys.argv[1].split(',');"
        "print(json.dumps({'env': {n: os.environ.get(n) for n in names},"
        " 'argv': sys.argv[2:], 'cwd': os.getcwd()}))"
    )
    argv = [sys.executable, "-c", report, ",".join(AWKWARD), *AWKWARD.values()]
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            argv, name="verbatim", backend="slurm", host="here", env=AWKWARD, cwd=str(cwd)
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", (record.state.reason, await ref.logs("stderr"))
        assert json.loads(await ref.logs()) == {
            "env": AWKWARD,
            "argv": list(AWKWARD.values()),
            "cwd": str(cwd),
        }
    assert not list(tmp_path.rglob("pwned*"))


async def test_the_job_script_that_exports_the_env_is_readable_by_its_user_only(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs"  # made by corra
    host = here(cluster, jobs)
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", "umask; touch mine"],
            name="private",
            backend="slurm",
            host="here",
            env={"TOKEN": "s3cr3t"},
        )
        with trio.fail_after(60):
            record = await ref.wait()
        assert record.phase == "finished", record.state.reason
        job_umask = (await ref.logs()).decode().strip()
    run_dir = jobs / f"{ref.id}.1"
    script = run_dir / "job.sh"
    assert "export TOKEN=s3cr3t\n" in script.read_text()  # the file with the secret ...

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    assert mode(script) == 0o700  # ... is its user's only
    for directory in (jobs, run_dir, run_dir / "work"):
        assert mode(directory) == 0o700, directory
    for name in ("job_id", "exit.json"):
        assert mode(run_dir / name) == 0o600, name
    # The program itself runs with the job's umask (its files are its business).
    ours = os.umask(0o22)
    os.umask(ours)
    assert job_umask == f"{ours:04o}"  # (sbatch passes the submitter's on)
    assert mode(run_dir / "work" / "mine") == 0o666 & ~int(job_umask, 8)


# -- kill -9 of `corra run` with 30 jobs in flight ------------------------------------------


def test_thirty_jobs_survive_a_kill_9_of_corra_run_and_each_runs_once(
    cluster: _slurm.SlurmCluster, tmp_path: Path, shared_dir: Path
) -> None:
    state = tmp_path / "state"
    ledger = shared_dir / "ledger"
    names = [f"j{number:02d}" for number in range(30)]
    program = ["sh", "-c", 'echo "$CORRA_PROCESS_NAME" >> "$LEDGER"; sleep 1']
    lines = [
        "[hosts.here]",
        'transport = "local"',
        f'env = {{ SLURM_CONF = "{cluster.conf}" }}',
        "",
        "[hosts.here.slurm]",
        "poll_interval = 0.5",
        # a slow start, so that the kill finds jobs running, pending and not yet submitted
        "submit_rate = 4",
        "submit_burst = 4",
        f'work_root = "{shared_dir / "jobs"}"',
        "",
    ]
    for name in names:
        lines += [
            "[[process]]",
            f'name = "{name}"',
            'backend = "slurm"',
            'host = "here"',
            f"argv = {json.dumps(program)}",
            f'env = {{ LEDGER = "{ledger}" }}',
            "",
        ]
    jobs = tmp_path / "jobs.toml"
    jobs.write_text("\n".join(lines))
    command = [*CORRA, "--state-dir", str(state), "run", str(jobs)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (ledger.exists() and len(ledger.read_text().split()) >= 2):
            assert time.monotonic() < deadline, "no job started"
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        if first.stderr:
            first.stderr.close()
    started = len(ledger.read_text().split())
    submitted = len(jobs_under(cluster, shared_dir / "jobs"))
    assert started < 30 and submitted < 30, (started, submitted)

    started_at = time.monotonic()
    again = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=110, check=False
    )
    elapsed = time.monotonic() - started_at
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recovered" in again.stderr
    records = json.loads(again.stdout[again.stdout.index("[") :])
    assert [(r["name"], r["phase"], r["attempt"]) for r in records] == [
        (name, "finished", 1) for name in names
    ], again.stderr
    assert sorted(ledger.read_text().split()) == names, "each job ran exactly once"
    job_ids = jobs_under(cluster, shared_dir / "jobs")
    assert len(job_ids) == 30, "one job per process"
    assert not job_ids & set(queue(cluster)), "no job left in the queue"
    assert elapsed < 100, elapsed


# -- through the SSH pool to the loopback sshd -----------------------------------------------


def _cluster_accepts(cluster: _slurm.SlurmCluster, user: str, directory: Path) -> str | None:
    """Why ``user`` cannot submit to the cluster here, or None."""
    if os.getuid() == 0 and shutil.which("su") is None:
        return "su is missing: cannot check that the sshd's user may submit jobs"
    if os.getuid() != 0:
        return None  # the sshd's user is us: the cluster runs our jobs
    command = f"SLURM_CONF={cluster.conf} sbatch --parsable -o /dev/null --wrap true"
    completed = subprocess.run(
        ["su", user, "-s", "/bin/sh", "-c", command],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0 or not completed.stdout.strip().isdigit():
        return f"the cluster refuses jobs from {user}: {completed.stdout}{completed.stderr}"
    return None


async def test_a_job_through_the_ssh_pool_finishes_within_the_pool_size(
    cluster: _slurm.SlurmCluster, sshd: _sshd.Sshd, shared_dir: Path, tmp_path: Path
) -> None:
    reason = _cluster_accepts(cluster, sshd.user, shared_dir)
    if reason is not None:
        pytest.skip(reason)
    logins_before = sshd.logins()
    host = sshd.host_config(
        "far",
        env={"SLURM_CONF": str(cluster.conf)},
        pool={"max_connections": 2},
        options={"slurm": SlurmSettings(poll_interval=0.5, work_root=str(shared_dir / "jobs"))},
    )
    async with open_runtime(state_dir=tmp_path / "state", hosts={"far": host}) as runtime:
        refs = [
            await runtime.spawn_process(
                ["sh", "-c", 'echo "$CORRA_PROCESS_NAME on $(id -un)"; sleep 1'],
                name=f"s{number}",
                backend="slurm",
                host="far",
            )
            for number in range(4)
        ]
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert [record.phase for record in records] == ["finished"] * 4, [
            record.state.reason for record in records
        ]
        for number, ref in enumerate(refs):
            assert await ref.logs() == f"s{number} on {sshd.user}\n".encode()
            assert job_field(cluster, job_id_of(ref), "UserId").startswith(f"{sshd.user}(")
            # What SFTP made is its user's only, as on this machine.
            run_dir = shared_dir / "jobs" / f"{ref.id}.1"
            for path, mode in ((shared_dir / "jobs", 0o700), (run_dir, 0o700)):
                assert path.stat().st_mode & 0o777 == mode, path
            assert (run_dir / "job.sh").stat().st_mode & 0o777 == 0o700
        (pool,) = runtime.remote.registry.handles()
        statistics = await pool.statistics()
    logins = sshd.logins() - logins_before
    assert statistics.connect_failures == 0
    assert logins == statistics.logins
    assert logins <= host.pool.max_connections + statistics.rotations


async def test_a_connection_dropped_under_sbatch_does_not_submit_twice(
    cluster: _slurm.SlurmCluster,
    sshd_factory: _sshd.SshdFactory,
    shared_dir: Path,
    tmp_path: Path,
) -> None:
    server = sshd_factory.start(name="slurm-dropped-sbatch")
    reason = _cluster_accepts(cluster, server.user, shared_dir)
    if reason is not None:
        pytest.skip(reason)
    # An sbatch that submits, notes it, then takes 3 s to answer: time to drop the connection.
    shim = shared_dir / "shim"
    shim.mkdir()
    submitted = shared_dir / "submitted"
    real = shutil.which("sbatch")
    (shim / "sbatch").write_text(
        f'#!/bin/sh\nout=$({real} "$@") || exit $?\necho "$out" >> {submitted}\n'
        'sleep 3\necho "$out"\n'
    )
    (shim / "sbatch").chmod(0o755)
    ledger = shared_dir / "ledger"
    host = server.host_config(
        "far",
        env={"SLURM_CONF": str(cluster.conf), "PATH": f"{shim}:{os.environ['PATH']}"},
        pool={"max_connections": 1, "backoff_initial": 0.1},
        options={"slurm": SlurmSettings(poll_interval=0.5, work_root=str(shared_dir / "jobs"))},
    )
    async with open_runtime(state_dir=tmp_path / "state", hosts={"far": host}) as runtime:
        ref = await runtime.spawn_process(
            ["sh", "-c", f'echo "$CORRA_PROCESS_NAME" >> {ledger}'],
            name="once",
            backend="slurm",
            host="far",
        )
        await until(submitted.exists, "sbatch submitted")
        for pid in server.connection_pids():
            server.kill_connection(pid)
        with trio.fail_after(60):
            record = await ref.wait()
        await until(
            lambda: not jobs_under(cluster, shared_dir / "jobs") & set(queue(cluster)), "jobs ended"
        )
    assert record.phase == "finished", record.state.reason
    assert len(submitted.read_text().split()) == 1, "sbatch ran once"
    assert ledger.read_text().split() == ["once"], "the program ran once"
