"""The API's log reads of Slurm jobs (a real single-node Slurm): a read without ``follow``
ends at the size the cluster's files had when it began, an array's tasks counted as one log."""

from __future__ import annotations

from pathlib import Path

import _slurm
import pytest
import trio
from test_api import log_lines, serving, submit, wait_for

from corra.backends.slurm import SlurmSettings
from corra.backends.ssh import HostConfig

pytestmark = pytest.mark.slow


def here(cluster: _slurm.SlurmCluster, work_root: Path) -> HostConfig:
    return HostConfig(
        name="here",
        transport="local",
        env={"SLURM_CONF": str(cluster.conf)},
        options={"slurm": SlurmSettings(work_root=str(work_root), poll_interval=0.5)},
    )


async def test_a_slurm_log_read_without_follow_ends_at_the_size_the_cluster_gave(
    slurm: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    options = {"hosts": {"here": here(slurm, tmp_path / "jobs")}}
    async with serving(tmp_path / "state", options) as served:
        http, manager = served.http, served.runtime.processes
        script = "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); sleep 0.05; done"
        job = await submit(http, ["sh", "-c", script], backend="slurm", host="here")
        await wait_for(http, job["id"], "running")
        with trio.fail_after(60):
            while not (await manager.log_size(manager.get(job["id"]), "stdout") or 0) > 20:
                await trio.sleep(0.1)
        entries = await log_lines(http, job["id"])  # while it writes
        after = await manager.log_size(manager.get(job["id"]), "stdout")
        assert entries and after is not None and entries[-1]["next_offset"] <= after
        text = "".join(entry["text"] for entry in entries)
        assert text == "".join(f"line {i}\n" for i in range(text.count("\n")))

        array = await submit(
            http,
            ["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"'],
            backend="slurm",
            host="here",
            slurm={"array": "0-2"},
        )
        await wait_for(http, array["id"], "finished")
        logs = "".join(entry["text"] for entry in await log_lines(http, array["id"]))
        assert sorted(logs.splitlines()) == ["task 0", "task 1", "task 2"]
        assert await manager.log_size(manager.get(array["id"]), "stdout") == len(logs)
        await http.post(f"/v1/processes/{job['id']}/kill")
