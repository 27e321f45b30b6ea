"""The conformance kit against the hyperqueue backend, on a real HyperQueue server and worker
(the wheel's LocalCluster, in a process of its own: tests/_hq.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from corra.backends.hyperqueue import HyperQueueHostOptions
from corra.backends.ssh import HostConfig
from corra.processes._registry import Registry
from corra.testing import BackendConformance, Opener, open_plugin

HOST = "hq"


def server_host(server_dir: Path, run_root: Path | None = None, **options) -> HostConfig:
    """A HyperQueue server as a ``[hosts.NAME]`` with ``transport = "hyperqueue"``."""
    settings = HyperQueueHostOptions(
        server_dir=str(server_dir),
        run_root=None if run_root is None else str(run_root),
        poll_interval=0.2,
        **options,
    )
    return HostConfig(name=HOST, transport="hyperqueue", options={"hyperqueue": settings})


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def lose(handle) -> None:
    """The task's node dies: its wrapper and its program are SIGKILLed, no exit record."""
    claim = json.loads((Path(handle.run_dir) / "claim.json").read_text())
    wrapper = int(claim["pid"])
    programs = children(wrapper)
    # The wrapper first: killed after its program, it could still record the program's end
    # (found by CI under load).
    with contextlib.suppress(ProcessLookupError):
        os.kill(wrapper, signal.SIGKILL)
    for child in programs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)


class TestHyperQueueConformance(BackendConformance):
    patience = 20.0

    @pytest.fixture
    def plugin(self):
        return Registry().get("hyperqueue")

    @pytest.fixture
    def host(self) -> str:
        return HOST

    @pytest.fixture
    def open_backend(self, plugin, tmp_path, hq_server) -> Opener:
        hosts = {HOST: server_host(hq_server.server_dir)}
        return lambda: open_plugin(plugin, tmp_path, hosts=hosts)

    @pytest.fixture
    def lose_program(self):
        async def lose_it(backend, handle) -> None:
            # (the wrapper claims before the program starts: wait for the claim)
            import trio

            claim = Path(handle.run_dir) / "claim.json"
            with trio.fail_after(20):
                while not claim.exists():
                    await trio.sleep(0.05)
            lose(handle)

        return lose_it
