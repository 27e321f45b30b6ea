"""The hyperqueue backend as users drive it, against a real HyperQueue server and worker (the
wheel's LocalCluster in a process of its own: tests/_hq.py): `corra run`, `logs`, `show`,
kill while queued and while running, timeout, a server replaced under running tasks, many
tasks polled in batches, and kill -9 of `corra run` with tasks in flight."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import _hq
import pytest
import trio
from _cli import CORRA, corra, records_of, toml
from test_conformance_hyperqueue import HOST, server_host

from corra._runtime import open_runtime
from corra.chaperone import task_job


def job_file(path: Path, server_dir: Path, processes: list[dict[str, Any]], **host: Any) -> Path:
    """A job file with the server as host ``hq`` and ``processes`` (backend, host filled in)."""
    table = {"server_dir": str(server_dir), "poll_interval": 0.2, **host}
    lines = [f"[hosts.{HOST}]", f"hyperqueue = {toml(table)}"]
    for process in processes:
        lines.append("[[process]]")
        for field, value in {"backend": "hyperqueue", "host": HOST, **process}.items():
            lines.append(f"{field} = {toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def eventually(check: Any, within: float = 30) -> Any:
    with trio.fail_after(within):
        while True:
            found = check()
            if found:
                return found
            await trio.sleep(0.05)


async def test_programs_complete_or_fail_with_their_exit_code_and_their_output(
    hq_server: Any, tmp_path: Path
) -> None:
    processes = [
        {"name": "hello", "argv": ["sh", "-c", "echo one; echo two >&2"]},
        {"name": "three", "argv": ["sh", "-c", "echo failing; exit 3"]},
        {"name": "nosuch", "argv": ["/nonexistent/program"]},
    ]
    jobs = job_file(tmp_path / "job.toml", hq_server.server_dir, processes)
    state = tmp_path / "state"
    done = await corra(state, "run", "--json", str(jobs))
    records = records_of(done)
    assert done.returncode == 1, records
    hello = records["hello"]
    assert (hello["phase"], hello["returncode"]) == ("finished", 0), hello
    assert (await corra(state, "logs", "hello")).stdout == b"one\n"
    assert (await corra(state, "logs", "hello", "--stderr")).stdout == b"two\n"
    three = records["three"]
    assert (three["phase"], three["returncode"], three["reason"]) == ("failed", 3, "exited with 3")
    assert (await corra(state, "logs", "three")).stdout == b"failing\n"
    nosuch = records["nosuch"]
    assert (nosuch["phase"], nosuch["returncode"]) == ("failed", 127), nosuch
    # The wrapper was shipped once into the run root, and compiled once by the worker's python.
    library = state / "hyperqueue" / HOST / ".corra"
    module = library / f"{task_job.module_name()}.py"
    assert module.read_text() == task_job.source()
    [bytecode] = (library / "__pycache__").iterdir()
    assert bytecode.name.startswith(f"{task_job.module_name()}.")
    modes = [path.stat().st_mode & 0o777 for path in (library, module, bytecode.parent, bytecode)]
    assert modes == [0o700, 0o600, 0o700, 0o600]


async def test_kill_while_queued_runs_nothing_and_kill_while_running_ends_the_group(
    hq_server: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    hosts = {HOST: server_host(hq_server.server_dir)}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        # No worker has a GPU: the task waits in the queue.
        queued = await runtime.spawn_process(
            {
                "argv": ["touch", str(marker)],
                "backend": "hyperqueue",
                "host": HOST,
                "hyperqueue": {"resources": {"gpus": 1}},
            }
        )
        running = await runtime.spawn_process(
            {
                "argv": ["sh", "-c", "trap '' TERM; echo started; sleep 60 & wait"],
                "backend": "hyperqueue",
                "host": HOST,
                "kill_grace": 1,
            }
        )
        await eventually(lambda: running.state.phase == "running")
        with trio.fail_after(30):
            while b"started" not in await running.logs():
                await trio.sleep(0.05)
            killed = await queued.kill()
        assert killed.state.phase == "killed", killed
        with trio.fail_after(30):
            killed = await running.kill()
        assert killed.state.phase == "killed", killed
        assert killed.state.result is not None and killed.state.result.killed
    assert not marker.exists()


async def test_a_timeout_ends_the_program_and_says_so(hq_server: Any, tmp_path: Path) -> None:
    processes = [{"name": "slow", "argv": ["sleep", "60"], "timeout": 1, "kill_grace": 1}]
    jobs = job_file(tmp_path / "job.toml", hq_server.server_dir, processes)
    done = await corra(tmp_path / "state", "run", "--json", str(jobs))
    slow = records_of(done)["slow"]
    assert slow["phase"] == "failed", slow
    assert slow["result"]["timed_out"] is True, slow


async def test_logs_are_read_while_the_program_runs(hq_server: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    hosts = {HOST: server_host(hq_server.server_dir)}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        ref = await runtime.spawn_process(
            {
                "argv": ["sh", "-c", f"echo first; while [ ! -e {go} ]; do sleep 0.05; done"],
                "backend": "hyperqueue",
                "host": HOST,
            }
        )
        with trio.fail_after(30):
            while await ref.logs() != b"first\n":
                await trio.sleep(0.05)
        assert ref.state.phase == "running"
        go.touch()
        record = await ref.wait()
    assert record.state.phase == "finished", record


async def test_a_server_replaced_under_running_tasks_loses_them_and_they_rerun(
    fresh_hq_server: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    hosts = {HOST: server_host(fresh_hq_server.server_dir)}
    program = f'echo "$CORRA_ATTEMPT" >> {ledger}; [ "$CORRA_ATTEMPT" -gt 1 ] || sleep 60'
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        ref = await runtime.spawn_process(
            {
                "argv": ["sh", "-c", program],
                "backend": "hyperqueue",
                "host": HOST,
                "restart": "transient",
                "max_attempts": 2,
            }
        )
        await eventually(lambda: ledger.exists() and ledger.read_text() == "1\n")
        fresh_hq_server.stop()
        # (a new server in the same server dir: another uid, job ids from 1 again)
        replacement = _hq.start_server(fresh_hq_server.server_dir.parent, cores=2)
        try:
            with trio.fail_after(60):
                record = await ref.wait()
        finally:
            replacement.stop()
    assert record.state.phase == "finished", record
    assert record.state.attempt == 2
    assert ledger.read_text() == "1\n2\n"


async def test_two_hundred_tasks_are_polled_in_batches(hq_server: Any, tmp_path: Path) -> None:
    hosts = {HOST: server_host(hq_server.server_dir)}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        started = trio.current_time()
        refs = [
            await runtime.spawn_process({"argv": ["true"], "backend": "hyperqueue", "host": HOST})
            for _ in range(200)
        ]
        with trio.fail_after(120):
            records = [await ref.wait() for ref in refs]
        elapsed = trio.current_time() - started
        backend = runtime.remote.backends["hyperqueue"] if runtime.remote else None
        assert backend is not None
        polls = backend.host(HOST).helper.polls
    assert all(record.state.phase == "finished" for record in records)
    # One poll per interval (0.2 s) for all of them, not one per task.
    assert polls <= elapsed / 0.2 + 3, (polls, elapsed)


async def test_kill_9_of_corra_run_with_tasks_in_flight_runs_each_program_once(
    hq_server: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    processes = [
        {"name": f"p{number}", "argv": ["sh", "-c", f"echo p{number} >> {ledger}; sleep 1"]}
        for number in range(50)
    ]
    jobs = job_file(tmp_path / "job.toml", hq_server.server_dir, processes)
    state = tmp_path / "state"
    first = await trio.lowlevel.open_process(
        [*CORRA, "run", "--state-dir", str(state), str(jobs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: ledger.exists() and len(ledger.read_text().split()) >= 5, 60)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    done = await corra(state, "run", "--json", str(jobs), within=180)
    records = records_of(done)
    assert done.returncode == 0, records
    assert all(record["phase"] == "finished" for record in records.values())
    ran = ledger.read_text().split()
    assert sorted(ran) == sorted(f"p{number}" for number in range(50)), ran


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"cpus": 0}, "hyperqueue.cpus: got 0"),
        ({"resources": {"gpus": "lots"}}, "hyperqueue.resources.gpus: got 'lots'"),
        ({"time_request": "soon"}, "hyperqueue.time_request: got 'soon'"),
        ({"nodes": 2}, "hyperqueue"),
    ],
)
async def test_a_bad_table_is_refused_at_submission_naming_its_field(
    hq_server: Any, tmp_path: Path, table: dict[str, Any], said: str
) -> None:
    processes = [{"name": "bad", "argv": ["true"], "hyperqueue": table}]
    jobs = job_file(tmp_path / "job.toml", hq_server.server_dir, processes)
    done = await corra(tmp_path / "state", "run", str(jobs))
    assert done.returncode != 0
    assert said in done.stderr.decode(), done.stderr
    assert "Traceback" not in done.stderr.decode()


async def test_a_run_root_library_others_may_write_is_refused_and_nothing_runs(
    hq_server: Any, tmp_path: Path
) -> None:
    # (every task imports the wrapper there, under a name anyone can tell)
    run_root = tmp_path / "runs"
    (run_root / ".corra").mkdir(parents=True)
    (run_root / ".corra").chmod(0o777)
    marker = tmp_path / "ran"
    processes = [{"name": "p", "argv": ["touch", str(marker)]}]
    jobs = job_file(tmp_path / "job.toml", hq_server.server_dir, processes, run_root=str(run_root))
    done = await corra(tmp_path / "state", "run", "--json", str(jobs))
    record = records_of(done)["p"]
    assert done.returncode != 0 and record["phase"] == "failed", record
    assert "group or others may write it (mode 777)" in record["reason"], record
    assert not marker.exists() and list((run_root / ".corra").iterdir()) == []


async def test_a_run_root_corra_cannot_write_is_refused_at_submission(
    hq_server: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    processes = [{"name": "nowhere", "argv": ["true"]}]
    jobs = job_file(
        tmp_path / "job.toml", hq_server.server_dir, processes, run_root=str(blocker / "runs")
    )
    done = await corra(tmp_path / "state", "run", str(jobs))
    said = done.stderr.decode()
    assert done.returncode != 0
    assert "hosts.hq.hyperqueue.run_root" in said and "not a directory" in said, said


async def test_a_kill_also_cancels_through_the_server_where_an_hq_binary_is_named(
    hq_server: Any, tmp_path: Path
) -> None:
    # The wheel ships no hq binary and none can be fetched here: a script in its place
    # records the command line corra runs (what the real one would be given).
    calls = tmp_path / "calls"
    hq = tmp_path / "hq"
    hq.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    hq.chmod(0o700)
    hosts = {HOST: server_host(hq_server.server_dir, hq=str(hq))}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        queued = await runtime.spawn_process(
            {
                "argv": ["true"],
                "backend": "hyperqueue",
                "host": HOST,
                "hyperqueue": {"resources": {"gpus": 1}},
            }
        )
        await eventually(lambda: queued.state.phase == "running")
        with trio.fail_after(30):
            killed = await queued.kill()
        assert killed.state.phase == "killed"
        job_id = killed.state.handle.job_id
    assert calls.read_text() == f"--server-dir {hq_server.server_dir} job cancel {job_id}\n"
