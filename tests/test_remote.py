"""Hosts in a runtime: remembered in the state dir, pools and remote backends opened for them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import _sshd
import attrs
import pytest
from _requests import request

from corra._remote import remember_hosts, remembered_hosts
from corra._runtime import open_backends
from corra.actors import open_runtime
from corra.backends.ssh import HostConfig, parse_host


def test_hosts_are_remembered_whole(tmp_path: Path) -> None:
    assert remembered_hosts(tmp_path) == {}
    hosts = {
        "a": parse_host("a", {"hostname": "h", "port": 2222, "pool": {"max_connections": 4}}),
        "b": parse_host("b", {"transport": "local", "env": {"SLURM_CONF": "/x"}}),
    }
    remember_hosts(tmp_path, hosts)
    assert remembered_hosts(tmp_path) == hosts
    (tmp_path / "hosts.json").write_text('{"a": {"port": "x"}}')
    with pytest.raises(Exception, match=r"hosts\.json: hosts\.a\.port: got 'x'"):
        remembered_hosts(tmp_path)


@attrs.frozen
class Spec:
    argv: tuple[str, ...]
    host: str
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    timeout: float | None = None
    kill_grace: float = 1.0
    name: str | None = None


async def test_one_runtime_reaches_an_ssh_host_and_this_machine(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    hosts = {
        "far": sshd.host_config(
            "far", work_root=f"corra-tests/remote-{tag}", env={"GREETING": "hello from far"}
        ),
        "near": HostConfig(name="near", transport="local", work_root=str(tmp_path / "near")),
    }
    async with open_runtime() as runtime:
        async with open_backends(
            runtime.root, tmp_path / "state", hosts, names=["ssh"], poll_interval=0.2
        ) as opened:
            remote = opened.remote
            assert remote is not None
            ssh = opened.backends["ssh"]
            for name in ("far", "near"):
                handle = await ssh.launch(
                    request(f"{name}.1", Spec(argv=("sh", "-c", "echo $0 $GREETING"), host=name))
                )
                assert (await ssh.wait(handle)).returncode == 0
            assert (
                await ssh.read_log("far.1", "stdout", 0, 100, host_name="far")
                == b"sh hello from far\n"
            )
            assert await ssh.read_log("near.1", "stdout", 0, 100, host_name="near") == b"sh\n"
            (pool,) = remote.registry.handles()
            assert (await pool.statistics()).logins == 1
        assert runtime.lookup("/ssh") is None  # the pools went with the block
