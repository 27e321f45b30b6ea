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
