"""Statuses of programs on the remote backends, through the whole runtime: a real sshd, a
real single-node Slurm, a real HyperQueue server. The hosts' status files are read in the
poll each backend makes anyway: no command of their own (counted here).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _slurm
import _sshd
import pytest
import trio
from test_conformance_hyperqueue import HOST as HQ_HOST
from test_conformance_hyperqueue import server_host
from test_slurm_processes import cluster, here  # noqa: F401 - (the fixture)

from corra._runtime import ProcessRef, Runtime, open_runtime
from corra.processes._statuses import ProgramStatus

pytestmark = pytest.mark.slow

DONE = {"progress": 1, "message": "done"}


def ticker(gate: Path) -> list[str]:
    """A program that says ``tick N`` (and a progress) every 0.1 s until ``gate`` is there,
    then ``done``, and ends."""
    tick = '{"progress": 0.%d, "message": "tick %d"}\\n'
    return [
        "sh",
        "-c",
        f'i=0; while [ ! -e "{gate}" ]; do i=$((i+1)); '
        f"printf '{tick}' $((i % 10)) $i >> \"$CORRA_STATUS\"; sleep 0.1; done; "
        f'echo \'{{"progress": 1, "message": "done"}}\' >> "$CORRA_STATUS"',
    ]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir that the sshd's test user can read (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corra-statuses-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def statuses(runtime: Runtime, refs: list[ProcessRef]) -> list[ProgramStatus | None]:
    return [ref.status() for ref in refs]


def ticks(runtime: Runtime, refs: list[ProcessRef]) -> list[int] | None:
    """The tick each program said last, or None while one has said none yet."""
    found = []
    for status in statuses(runtime, refs):
        if status is None or status.message is None or not status.message.startswith("tick "):
            return None
        found.append(int(status.message.split()[1]))
    return found


async def eventually(check: Any, what: str, within: float = 60) -> Any:
    with trio.move_on_after(within):
        while True:
            found = check()
            if found:
                return found
            await trio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within} s")


async def test_ssh_programs_statuses_come_with_the_status_poll_and_no_exec_of_their_own(
    sshd: _sshd.Sshd, tmp_path: Path, shared_dir: Path
) -> None:
    gate = shared_dir / "gate"
    root = f"corra-tests/statuses-{os.getpid()}-{time.monotonic_ns()}"
    host = sshd.host_config("far", work_root=root)
    async with open_runtime(
        state_dir=tmp_path / "state", hosts={"far": host}, remote_poll_interval=0.3
    ) as runtime:
        refs = [
            await runtime.spawn_process(ticker(gate), name=f"t{n}", backend="ssh", host="far")
            for n in range(8)
        ]
        first = await eventually(lambda: ticks(runtime, refs), "a status of every program")
        assert runtime.remote is not None
        backend: Any = runtime.remote.backends["ssh"]
        (pool,) = runtime.remote.registry.handles()
        leases, polls = (await pool.statistics()).leases_total, backend.polls("far")
        await trio.sleep(2.0)
        leases = (await pool.statistics()).leases_total - leases
        polls = backend.polls("far") - polls
        later = ticks(runtime, refs)
        assert later is not None and all(b > a for a, b in zip(first, later, strict=True))
        # Eight programs saying something ten times a second: one exec per poll, all told.
        assert 3 <= polls <= 2.0 / 0.3 + 2
        assert leases <= polls + 1, (leases, polls)

        gate.touch()
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert {record.phase for record in records} == {"finished"}
        assert [status and status.value for status in statuses(runtime, refs)] == [DONE] * 8


async def test_slurm_jobs_statuses_come_with_the_queue_poll(
    cluster: _slurm.SlurmCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    host = here(cluster, tmp_path / "jobs", poll_interval=0.5)
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as runtime:
        refs = [
            await runtime.spawn_process(ticker(gate), name=f"j{n}", backend="slurm", host="here")
            for n in range(2)  # (as many as the single node runs at once)
        ]
        first = await eventually(lambda: ticks(runtime, refs), "a status of every job")
        assert runtime.remote is not None
        scheduler: Any = runtime.remote.backends["slurm"].scheduler
        calls = dict(scheduler.calls)
        await trio.sleep(2.0)
        later = ticks(runtime, refs)
        assert later is not None and all(b > a for a, b in zip(first, later, strict=True))
        made = {name: count - calls.get(name, 0) for name, count in scheduler.calls.items()}
        # (only the queue's polls, which read the statuses too)
        assert not any(count for name, count in made.items() if name != "squeue"), made
        assert 2 <= made["squeue"] <= 2.0 / 0.5 + 2

        gate.touch()
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert {record.phase for record in records} == {"finished"}
        assert [status and status.value for status in statuses(runtime, refs)] == [DONE] * 2


async def test_hyperqueue_tasks_statuses_are_followed_in_the_shared_run_root(
    hq_server: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    host = server_host(hq_server.server_dir, run_root=tmp_path / "hq-runs")
    async with open_runtime(
        state_dir=tmp_path / "state", hosts={HQ_HOST: host}, status_interval=0.2
    ) as runtime:
        refs = [
            await runtime.spawn_process(
                ticker(gate), name=f"h{n}", backend="hyperqueue", host=HQ_HOST
            )
            for n in range(3)
        ]
        first = await eventually(lambda: ticks(runtime, refs), "a status of every task")
        later = await eventually(
            lambda: (
                (found := ticks(runtime, refs))
                and all(b > a for a, b in zip(first, found, strict=True))
            ),
            "newer statuses",
        )
        assert later
        gate.touch()
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert {record.phase for record in records} == {"finished"}
        assert [status and status.value for status in statuses(runtime, refs)] == [DONE] * 3
