"""The API of a runtime with a remote host (a real sshd): remote processes are submitted,
followed and counted like local ones, and /metrics shows the host's pool."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import _sshd
import pytest
import trio
from test_api import log_lines, serving, submit, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir that the sshd's test user can write in (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corra-api-remote-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_remote_process_through_the_api_and_the_pool_in_metrics(
    sshd: _sshd.Sshd, tmp_path: Path, shared_dir: Path
) -> None:
    host = sshd.host_config("far", work_root=f"corra-tests/api-{os.getpid()}")
    options = {"hosts": {"far": host}, "remote_poll_interval": 0.3}
    async with serving(tmp_path / "state", options) as served:
        http = served.http
        script = "for i in 1 2 3; do echo far $i; sleep 0.3; done"
        await submit(http, ["sh", "-c", script], name="remote", backend="ssh", host="far")
        entries = await log_lines(http, "remote", follow="true")
        assert "".join(entry["text"] for entry in entries) == "far 1\nfar 2\nfar 3\n"
        record = await wait_for(http, "remote", "finished")
        assert record["spec"]["host"] == "far" and record["returncode"] == 0

        unknown = await http.post(
            "/v1/processes", json={"argv": ["true"], "backend": "ssh", "host": "near"}
        )
        assert unknown.status_code == 422 and "host: got 'near'" in unknown.json()["message"]

        text = (await http.get("/metrics")).text
        address = f"{sshd.user}@{sshd.host}:{sshd.port}"
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
        assert float(samples[f'corra_ssh_logins_total{{host="{address}"}}']) >= 1
        assert f'corra_ssh_connections{{host="{address}"}}' in samples
        assert float(samples['corra_scheduler_polls_total{backend="ssh",host="far"}']) >= 1
        assert float(samples['corra_processes{phase="finished"}']) == 1


async def test_a_remote_log_read_without_follow_ends_at_the_size_the_host_gave(
    sshd: _sshd.Sshd, tmp_path: Path, shared_dir: Path
) -> None:
    host = sshd.host_config("far", work_root=f"corra-tests/api-size-{os.getpid()}")
    options = {"hosts": {"far": host}, "remote_poll_interval": 0.3}
    async with serving(tmp_path / "state", options) as served:
        http, manager = served.http, served.runtime.processes
        script = "i=0; while [ $i -lt 40 ]; do echo far $i; i=$((i+1)); sleep 0.05; done"
        await submit(http, ["sh", "-c", script], name="remote", backend="ssh", host="far")
        await wait_for(http, "remote", "running")
        with trio.fail_after(30):
            while not (await manager.log_size(manager.get("remote"), "stdout") or 0) > 20:
                await trio.sleep(0.05)
        entries = await log_lines(http, "remote")  # while it writes
        after = await manager.log_size(manager.get("remote"), "stdout")
        assert entries and after is not None and entries[-1]["next_offset"] <= after
        text = "".join(entry["text"] for entry in entries)
        assert text == "".join(f"far {i}\n" for i in range(text.count("\n")))
        await wait_for(http, "remote", "finished")
        whole = "".join(f"far {i}\n" for i in range(40))
        assert await manager.log_size(manager.get("remote"), "stdout") == len(whole)
        assert "".join(entry["text"] for entry in await log_lines(http, "remote")) == whole
