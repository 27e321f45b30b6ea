"""HyperQueue inside a Slurm allocation that corra makes, on the real single-node Slurm of
tests/_slurm.py: a few hundred short tasks packed into one allocation, which ends itself
once idle; an allocation that ends under running tasks loses them, and transient ones rerun
in the next allocation corra requests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _slurm
import pytest
import trio

from corra._runtime import open_runtime
from corra.backends.hyperqueue import HyperQueueHostOptions
from corra.backends.slurm import SlurmSettings
from corra.backends.ssh import HostConfig

ALLOCATED = "packed"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the Slurm job reaches (as the cluster's jobs run: not a 0700 tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="corra-hq-allocation-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def hosts(cluster: _slurm.SlurmCluster, shared: Path, **allocation: Any) -> dict[str, HostConfig]:
    slurm = HostConfig(
        name="cluster",
        transport="local",
        env={"SLURM_CONF": str(cluster.conf)},
        options={"slurm": SlurmSettings(work_root=str(shared / "slurm"), poll_interval=0.5)},
    )
    table = {"slurm_host": "cluster", "cpus": 2, "idle_time": 3, **allocation}
    packed = HostConfig(
        name=ALLOCATED,
        transport="hyperqueue",
        options={
            "hyperqueue": HyperQueueHostOptions(
                allocation=table, run_root=str(shared / "runs"), poll_interval=0.2
            )
        },
    )
    return {"cluster": slurm, ALLOCATED: packed}


async def test_a_few_hundred_tasks_run_in_one_allocation_that_ends_once_idle(
    slurm: _slurm.SlurmCluster, shared: Path
) -> None:
    ledger = shared / "ledger"
    async with open_runtime(state_dir=shared / "state", hosts=hosts(slurm, shared)) as runtime:
        refs = [
            await runtime.spawn_process(
                {
                    "argv": ["sh", "-c", f'echo "$CORRA_PROCESS_ID" >> {ledger}'],
                    "backend": "hyperqueue",
                    "host": ALLOCATED,
                }
            )
            for _ in range(300)
        ]
        with trio.fail_after(240):
            records = [await ref.wait() for ref in refs]
        assert all(record.state.phase == "finished" for record in records)
        assert sorted(ledger.read_text().split()) == sorted(ref.id for ref in refs)
        # One allocation, a process of the runtime: a Slurm job, which ends itself once idle.
        allocation = runtime.processes.get(f"hq-{ALLOCATED}-allocation-1")
        assert allocation.spec.backend == "slurm"
        with trio.fail_after(60):
            ended = await runtime.processes.wait(allocation.id)
        assert ended.state.phase == "finished", ended
        with pytest.raises(Exception, match="allocation-2"):
            runtime.processes.get(f"hq-{ALLOCATED}-allocation-2")


async def test_an_allocation_that_ends_under_a_task_loses_it_and_the_next_reruns_it(
    slurm: _slurm.SlurmCluster, shared: Path
) -> None:
    ledger = shared / "ledger"
    program = f'echo "$CORRA_ATTEMPT" >> {ledger}; [ "$CORRA_ATTEMPT" -gt 1 ] || sleep 300'
    async with open_runtime(state_dir=shared / "state", hosts=hosts(slurm, shared)) as runtime:
        ref = await runtime.spawn_process(
            {
                "argv": ["sh", "-c", program],
                "backend": "hyperqueue",
                "host": ALLOCATED,
                "restart": "transient",
                "max_attempts": 2,
            }
        )
        with trio.fail_after(120):
            while not (ledger.exists() and ledger.read_text() == "1\n"):
                await trio.sleep(0.1)
        # Someone cancels the allocation's Slurm job.
        await runtime.processes.kill(f"hq-{ALLOCATED}-allocation-1")
        with trio.fail_after(180):
            record = await ref.wait()
        assert record.state.phase == "finished", record
        assert record.state.attempt == 2
        assert ledger.read_text() == "1\n2\n"
        assert runtime.processes.get(f"hq-{ALLOCATED}-allocation-2").spec.backend == "slurm"
