"""The conformance kit (`corra.testing`) against the ssh backend: programs under the remote
chaperone on a real sshd on loopback (tests/_sshd.py), over corra's own connection pool."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import _sshd
import pytest
import trio_asyncio

from corra.actors import SupervisorSpec, open_runtime
from corra.backends.ssh import PoolRegistry, SshTransport, TokenBucket
from corra.processes._backend import Backend, BackendPlugin
from corra.processes._registry import installed
from corra.testing import BackendConformance, Opener, open_plugin

pytestmark = pytest.mark.slow


def _field(handle: Any, name: str) -> Any:
    # TEMPORARY: today's ssh handles are mappings; the seam's are attrs classes.
    return handle[name] if isinstance(handle, Mapping) else getattr(handle, name)


class TestSshConformance(BackendConformance):
    @pytest.fixture
    def plugin(self) -> BackendPlugin:
        return installed.get("ssh")

    @pytest.fixture
    def host(self) -> str:
        return "remote"

    @pytest.fixture
    def open_backend(
        self, plugin: BackendPlugin, host: str, sshd: _sshd.Sshd, tmp_path: Path
    ) -> Opener:
        # The remote user's own dir: sshd's user (corrassh as root) cannot write pytest's tmp.
        root = f"corra-tests/conformance-{os.getpid()}-{time.monotonic_ns()}"
        config = sshd.host_config(host, work_root=root)

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[Backend]:
            # Everything anew, as after a crash: the event loop, the kernel, the pool.
            async with trio_asyncio.open_loop(), open_runtime() as kernel:
                supervisor = await kernel.spawn_supervisor(SupervisorSpec(), name="ssh")
                registry = PoolRegistry(supervisor, TokenBucket(rate=100, burst=10))
                transport = SshTransport(await registry.pool(config))
                async with open_plugin(
                    plugin,
                    tmp_path / "state",
                    supervisor=supervisor,
                    hosts={host: config},
                    transport={host: transport}.__getitem__,
                    poll_interval=0.2,
                ) as backend:
                    yield backend

        return opened

    @pytest.fixture
    def lose_program(self) -> Any:
        async def lose(backend: Backend, handle: Any) -> None:
            # The host is this machine: its chaperone and program die at once, by pid.
            os.kill(_field(handle, "chaperone_pid"), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(_field(handle, "pid"), signal.SIGKILL)

        return lose
