"""The Slurm backend against a real single-node Slurm (tests/_slurm.py), on a local transport."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import _slurm
import attrs
import pytest
import trio
from _requests import request

from corra._errors import LaunchFailed, ProgramLost
from corra.backends._pollers import open_host_pollers
from corra.backends.batch import BatchHost, SchedulerBackend
from corra.backends.slurm import Slurm, SlurmOptions
from corra.backends.transport import LocalTransport
from corra.processes._convert import parse_options

pytestmark = pytest.mark.slow


@attrs.frozen
class JobSpec:
    argv: tuple[str, ...]
    host: str = "cluster"
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    name: str | None = None
    options: SlurmOptions = attrs.field(factory=SlurmOptions)
    inputs: dict[str, str] = attrs.field(factory=dict)
    outputs: tuple[str, ...] = ()
    outputs_dir: str | None = None


@contextlib.asynccontextmanager
async def backend_for(
    cluster: _slurm.SlurmCluster, root: Path, poll_interval: float = 0.5, **options: float
) -> AsyncIterator[SchedulerBackend]:
    transport = LocalTransport(env={"SLURM_CONF": str(cluster.conf)})
    host = BatchHost(
        name="cluster",
        transport=transport,
        work_root=str(root),
        poll_interval=poll_interval,
        **options,  # type: ignore[arg-type]
    )
    async with open_host_pollers(SchedulerBackend({"cluster": host}, Slurm())) as backend:
        yield backend


async def test_jobs_complete_fail_and_are_found_by_key(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    async with backend_for(slurm, tmp_path) as backend:
        ok = await backend.launch(
            request("j1.1", JobSpec(argv=("sh", "-c", "echo hello $CORRA_ATTEMPT")))
        )
        bad = await backend.launch(
            request("j2.1", JobSpec(argv=("sh", "-c", "echo no >&2; exit 3")))
        )
        again = await backend.launch(request("j1.1", JobSpec(argv=("sh", "-c", "echo hello"))))
        assert again.job_id == ok.job_id  # found by key: not submitted twice
        result = await backend.wait(ok)
        assert result.returncode == 0 and result.ok
        assert await backend.read_log("j1.1", "stdout", 0, 100) == b"hello 1\n"
        failed = await backend.wait(bad)
        assert failed.returncode == 3
        assert await backend.read_log("j2.1", "stderr", 0, 100) == b"no\n"
        found = await backend.find("j1.1")
        assert found is not None and found.job_id == ok.job_id
        assert await backend.find("never.1") is None


async def test_cancel_and_hold_release(slurm: _slurm.SlurmCluster, tmp_path: Path) -> None:
    async with backend_for(slurm, tmp_path) as backend:
        long = await backend.launch(request("j3.1", JobSpec(argv=("sleep", "60"))))
        with trio.fail_after(20):
            while "RUNNING" not in slurm.run("squeue", "-h", "-j", long.job_id, "-o", "%T"):
                await trio.sleep(0.2)
        result = await backend.kill(long, grace=1)
        assert result is not None and result.killed and result.returncode is None

        options = SlurmOptions(hold_on_pause=True, extra=("--begin=now+60",))
        pending = await backend.launch(request("j4.1", JobSpec(argv=("true",), options=options)))
        await backend.pause(pending)
        reason = slurm.run("squeue", "-h", "-j", pending.job_id, "-o", "%r").strip()
        assert reason in ("JobHeldUser", "JobHeldAdmin")  # admin when we are root
        await backend.resume(pending)
        reason = slurm.run("squeue", "-h", "-j", pending.job_id, "-o", "%r").strip()
        assert not reason.startswith("JobHeld")
        await backend.kill(pending, grace=0)


def _running(pid: int) -> bool:
    """Whether the process runs (a zombie does not: it waits for a reaper that is not ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_a_kill_ends_a_program_that_ignores_term_after_the_grace(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    # The grace (2 s) is below the cluster's KillWait (5 s): the job script escalates.
    pid_file = tmp_path / "program.pid"
    script = (
        f"trap '' TERM; echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; exec sleep 60"
    )
    async with backend_for(slurm, tmp_path / "runs") as backend:
        job = await backend.launch(request("k1.1", JobSpec(argv=("sh", "-c", script))))
        with trio.fail_after(30):
            while not pid_file.exists():
                await trio.sleep(0.1)
        pid = int(pid_file.read_text())
        started = trio.current_time()
        with trio.fail_after(30):
            result = await backend.kill(job, grace=2)
        assert trio.current_time() - started >= 1.8, "no grace before SIGKILL"
        assert not _running(pid), "kill returned while the program runs"
        assert result is not None and result.killed and not result.ok
        assert result.returncode is None


async def test_a_kill_ends_what_the_program_left_in_its_group(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    # The program ends at the SIGTERM; its child ignores it, and would run on out of
    # Slurm's sight once its parent is gone.
    pid_file = tmp_path / "child.pid"
    script = (
        "(trap '' TERM; exec sleep 60) & "
        f"echo $! > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"
    )
    async with backend_for(slurm, tmp_path / "runs") as backend:
        job = await backend.launch(request("k4.1", JobSpec(argv=("sh", "-c", script))))
        with trio.fail_after(30):
            while not pid_file.exists():
                await trio.sleep(0.1)
        child = int(pid_file.read_text())
        with trio.fail_after(30):
            result = await backend.kill(job, grace=10)
        assert not _running(child), "kill returned while the program's child runs"
        assert result is not None and result.killed and not result.ok


async def test_a_kill_after_a_loss_cleans_up_without_an_error(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    async with backend_for(slurm, tmp_path) as backend:
        job = await backend.launch(request("k2.1", JobSpec(argv=("sleep", "60"))))
        with trio.fail_after(20):
            while "RUNNING" not in slurm.run("squeue", "-h", "-j", job.job_id, "-o", "%T"):
                await trio.sleep(0.2)
        await trio.to_thread.run_sync(slurm.forget_every_job)
        with pytest.raises(ProgramLost):
            await backend.wait(job)
        with trio.fail_after(30):
            result = await backend.kill(job, grace=0.5)
        assert result is None or not result.ok


async def test_a_program_ended_by_a_signal_reports_the_signal(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    async with backend_for(slurm, tmp_path) as backend:
        job = await backend.launch(request("k3.1", JobSpec(argv=("sh", "-c", "kill -9 $$"))))
        result = await backend.wait(job)
        assert result.signal == 9 and result.returncode is None, result
        assert not result.killed and not result.ok


async def test_an_array_runs_every_task(slurm: _slurm.SlurmCluster, tmp_path: Path) -> None:
    async with backend_for(slurm, tmp_path) as backend:
        spec = JobSpec(
            argv=("sh", "-c", 'echo task $SLURM_ARRAY_TASK_ID; [ "$SLURM_ARRAY_TASK_ID" != 2 ]'),
            options=SlurmOptions(array="0-3"),
        )
        handle = await backend.launch(request("j5.1", spec))
        result = await backend.wait(handle)
        assert result.returncode == 1  # task 2 failed: the array failed
        outputs = sorted(p.name for p in (tmp_path / "j5.1").glob("stdout.*"))
        assert outputs == ["stdout.0", "stdout.1", "stdout.2", "stdout.3"]
        assert sorted(p.name for p in (tmp_path / "j5.1").glob("exit.*.json")) == [
            f"exit.{n}.json" for n in range(4)
        ]


async def test_inputs_are_sent_before_the_submission_and_outputs_fetched_after(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    (local / "data").mkdir(parents=True)
    (local / "data" / "a.txt").write_text("alpha\n")
    (local / "data" / "b.txt").write_text("beta\n")
    (local / "script.sh").write_text("cat data/*.txt | tr a-z A-Z > out/all.txt; echo x > no.log\n")
    spec = JobSpec(
        argv=("sh", "-c", "mkdir -p out && sh script.sh"),
        inputs={"script.sh": str(local / "script.sh"), "data": str(local / "data")},
        outputs=("out/*.txt", "../*"),
        outputs_dir=str(tmp_path / "fetched"),
    )
    async with backend_for(slurm, tmp_path / "runs") as backend:
        handle = await backend.launch(request("j7.1", spec))
        assert sorted(p.name for p in (tmp_path / "runs" / "j7.1" / "work" / "data").iterdir()) == [
            "a.txt",
            "b.txt",
        ]
        result = await backend.wait(handle)
        assert result.returncode == 0
    fetched = sorted(
        str(path.relative_to(tmp_path / "fetched")) for path in (tmp_path / "fetched").rglob("*")
    )
    assert fetched == ["out", "out/all.txt"]  # nothing from outside the work dir
    assert (tmp_path / "fetched" / "out" / "all.txt").read_text() == "ALPHA\nBETA\n"


async def test_an_input_that_leaves_the_work_dir_fails_the_launch_before_submitting(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    (tmp_path / "f").write_text("x")
    async with backend_for(slurm, tmp_path / "runs") as backend:
        with pytest.raises(LaunchFailed, match="leaves the work dir"):
            await backend.launch(
                request("j8.1", JobSpec(argv=("true",), inputs={"../f": str(tmp_path / "f")}))
            )
        with pytest.raises(LaunchFailed, match="no such local file"):
            await backend.launch(
                request("j9.1", JobSpec(argv=("true",), inputs={"f": "/nonexistent"}))
            )
        assert backend.scheduler.calls.get("sbatch", 0) == 0


async def test_one_squeue_per_interval_for_a_hundred_jobs(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    async with backend_for(slurm, tmp_path, poll_interval=1.0, submit_rate=100) as backend:
        held = SlurmOptions(extra=("--hold",))
        handles = [
            await backend.launch(request(f"j6-{n}.1", JobSpec(argv=("true",), options=held)))
            for n in range(100)
        ]
        calls = backend.scheduler.calls
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(backend.wait, handle)
            await trio.sleep(0.5)
            before = calls.get("squeue", 0)
            await trio.sleep(3.0)
            polls = calls.get("squeue", 0) - before
            assert 2 <= polls <= 4  # one per second, whatever the number of jobs
            slurm.run("scancel", *[handle.job_id for handle in handles])
        assert calls.get("sbatch") == 100


def test_slurm_options_are_validated() -> None:
    options = parse_options(
        SlurmOptions, {"partition": "debug", "cpus_per_task": 2, "time": "1:00"}, "slurm"
    )
    assert options.directives() == ["--partition=debug", "--time=1:00", "--cpus-per-task=2"]
    for table, message in (
        ({"cpus_per_task": 0}, r"slurm\.cpus_per_task: got 0"),
        ({"time": "soon"}, r"slurm\.time: got 'soon'"),
        ({"extra": ["--x=1\n#SBATCH --y"]}, r"slurm\.extra\[0\]"),
        ({"partition": "a b"}, r"slurm\.partition"),
        ({"bogus": 1}, r"slurm: unknown field\(s\) bogus"),
    ):
        with pytest.raises(Exception, match=message):
            parse_options(SlurmOptions, table, "slurm")


def test_a_script_quotes_every_word() -> None:
    script = Slurm().render(
        "k.1",
        ["printf", "%s", "a b", "$(rm -rf /)"],
        run_dir="/r",
        work_dir="/r/work",
        options=SlurmOptions(),
    )
    assert "printf %s 'a b' '$(rm -rf /)'" in script
