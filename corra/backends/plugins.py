"""The built-in backends as plug-ins: ``local``, ``ssh`` and ``slurm``.

They register under the ``corra.backends`` entry-point group (pyproject.toml), exactly as a
third-party backend does; the runtime finds them there and never by name. Each ``open_...``
owns its backend's tasks for as long as its block runs; its capabilities and its handle class
are those its backend class declares (the runtime checks that they agree).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from corra.backends._pollers import open_host_pollers
from corra.backends.batch import BatchHost, JobHandle, SchedulerBackend
from corra.backends.local import Handle, LocalBackend, open_local
from corra.backends.slurm import Slurm, SlurmOptions, SlurmSettings
from corra.backends.ssh import RemoteHandle, SshProgramBackend
from corra.processes._backend import BackendContext, BackendPlugin

#: Under the state dir: the logs of remote programs, shipped home while they run.
REMOTE_LOGS = "remote-logs"


def _command_hosts(context: BackendContext) -> dict[str, Any]:
    """The hosts that run commands (not clusters: ``transport = "kubernetes"``)."""
    return {name: host for name, host in context.hosts.items() if host.runs_commands}


def _transports(context: BackendContext) -> dict[str, Any]:
    assert context.transport is not None, "a backend with hosts needs the hosts' transports"
    return {name: context.transport(name) for name in _command_hosts(context)}


@contextlib.asynccontextmanager
async def open_ssh(context: BackendContext) -> AsyncIterator[SshProgramBackend]:
    """Programs on hosts under the remote chaperone, logs shipped to ``remote-logs``."""
    backend = SshProgramBackend(
        _command_hosts(context),
        _transports(context),
        poll_interval=context.poll_interval,
        logs_dir=context.state_dir / REMOTE_LOGS,
        output_limit=context.output_limit,
        statuses=context.statuses,
    )
    async with open_host_pollers(backend):
        yield backend


@contextlib.asynccontextmanager
async def open_slurm(context: BackendContext) -> AsyncIterator[SchedulerBackend]:
    """Slurm jobs on hosts, submitted and polled through the hosts' transports."""
    transports = _transports(context)
    hosts = {}
    for name, host in _command_hosts(context).items():
        settings: SlurmSettings = host.options_for("slurm")  # (its [hosts.NAME.slurm] table)
        hosts[name] = BatchHost(
            name=name,
            transport=transports[name],
            work_root=settings.work_root,
            poll_interval=settings.poll_interval,
            submit_rate=settings.submit_rate,
            submit_burst=settings.submit_burst,
            python=host.python,
        )
    backend = SchedulerBackend(hosts, Slurm(), context.notes, context.statuses)
    async with open_host_pollers(backend):
        yield backend


LOCAL = BackendPlugin(
    name="local",
    open=open_local,
    handle=Handle,
    capabilities=LocalBackend.capabilities,
    description="programs on this machine, each under a chaperone (cgroups where allowed)",
)

SSH = BackendPlugin(
    name="ssh",
    open=open_ssh,
    handle=RemoteHandle,
    capabilities=SshProgramBackend.capabilities,
    description="programs on a host over SSH, under the remote chaperone",
)

SLURM = BackendPlugin(
    name="slurm",
    open=open_slurm,
    handle=JobHandle,
    options=SlurmOptions,
    host_options=SlurmSettings,
    capabilities=SchedulerBackend.capabilities,
    description="Slurm jobs on a host's cluster, submitted with sbatch and polled with squeue",
)
