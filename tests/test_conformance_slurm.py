"""The conformance kit (`corra.testing`) against the slurm backend: jobs on a real
single-node Slurm (tests/_slurm.py), submitted through a local transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _slurm
import pytest
import trio

from corra.backends.slurm import SlurmSettings
from corra.backends.ssh import HostConfig
from corra.backends.transport import LocalTransport
from corra.processes._backend import Backend, BackendPlugin
from corra.processes._registry import installed
from corra.testing import BackendConformance, Opener, open_plugin

pytestmark = pytest.mark.slow


class TestSlurmConformance(BackendConformance):
    #: Below the cluster's ``KillWait`` (tests/slurm/slurm-single-node.sh), which caps the
    #: grace: the job's wrapper honours any grace up to it.
    kill_grace = 2.0

    @pytest.fixture
    def plugin(self) -> BackendPlugin:
        return installed.get("slurm")

    @pytest.fixture
    def host(self) -> str:
        return "cluster"

    @pytest.fixture
    def open_backend(
        self, plugin: BackendPlugin, host: str, slurm: _slurm.SlurmCluster, tmp_path: Path
    ) -> Opener:
        env = {"SLURM_CONF": str(slurm.conf)}
        config = HostConfig(
            name=host,
            transport="local",
            env=env,
            options={
                "slurm": SlurmSettings(
                    poll_interval=0.5,
                    submit_rate=100.0,
                    submit_burst=100,
                    work_root=str(tmp_path / "jobs"),
                )
            },
        )
        return lambda: open_plugin(
            plugin,
            tmp_path / "state",
            hosts={host: config},
            transport=lambda name: LocalTransport(env=env),
        )

    @pytest.fixture
    def lose_program(self, slurm: _slurm.SlurmCluster) -> Any:
        async def lose(backend: Backend, handle: Any) -> None:
            await trio.to_thread.run_sync(slurm.forget_every_job)

        return lose
