"""Removing a remote process (a real sshd): its run dir on the host goes, and so do the logs
brought home into the state dir."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import _sshd
import pytest
from test_api import serving, submit, wait_for

pytestmark = pytest.mark.slow


async def test_delete_of_a_remote_process_removes_its_run_dirs_there_and_its_logs_here(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    host = sshd.host_config("far", work_root=f"corra-tests/rm-{os.getpid()}")
    options = {"hosts": {"far": host}, "remote_poll_interval": 0.3}
    async with serving(state, options) as served:
        http = served.http
        argv = ["sh", "-c", "echo far; exit 1"]
        created = await submit(http, argv, name="remote", backend="ssh", host="far")
        await wait_for(http, "remote", "failed")
        await http.post("/v1/processes/remote/rerun")
        await wait_for(http, "remote", "failed")
        keys = [f"{created['id']}.{attempt}" for attempt in (1, 2)]
        brought_home = [state / "remote-logs" / "far" / key for key in keys]
        for copy in brought_home:
            assert (copy / "stdout").read_bytes() == b"far\n"
        manager = served.runtime.processes
        backend = manager.backend_for(manager.get("remote").spec)
        remote = backend.host("far")
        run_dirs = [posixpath.join(remote.work_root, key) for key in keys]
        for run_dir in run_dirs:
            assert await remote.transport.stat(posixpath.join(run_dir, "stdout")) is not None

        removed = await http.delete("/v1/processes/remote")
        assert removed.status_code == 200, removed.text
        for copy in brought_home:
            assert not copy.exists()
        for run_dir in run_dirs:
            assert await remote.transport.stat(run_dir) is None
        assert (await http.get("/v1/processes/remote")).status_code == 404
        assert manager.store.quarantined() == []


async def test_delete_of_a_slurm_job_removes_its_run_dir(slurm, tmp_path: Path) -> None:
    from test_api_slurm import here

    jobs = tmp_path / "jobs"
    options = {"hosts": {"here": here(slurm, jobs)}}
    async with serving(tmp_path / "state", options) as served:
        http = served.http
        job = await submit(http, ["sh", "-c", "echo batch"], backend="slurm", host="here")
        await wait_for(http, job["id"], "finished")
        run_dirs = [p for p in jobs.iterdir() if p.name.startswith(f"{job['id']}.")]
        assert [p.name for p in run_dirs] == [f"{job['id']}.1"]
        assert (run_dirs[0] / "stdout").read_text() == "batch\n"
        removed = await http.delete(f"/v1/processes/{job['id']}")
        assert removed.status_code == 200, removed.text
        assert not run_dirs[0].exists()
        assert (await http.get(f"/v1/processes/{job['id']}")).status_code == 404
