"""The built-in backends as plug-ins: ``local``, ``ssh`` and ``slurm``.

They register under the ``corra.backends`` entry-point group (pyproject.toml), exactly as a
third-party backend does; the runtime finds them there and never by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from corra.processes._backend import BackendContext, BackendPlugin, Capabilities

#: Under the state dir: the run dirs of local programs (one per attempt).
LOCAL_RUNS = "runs"
#: Under the state dir: the logs of remote programs, shipped home while they run.
REMOTE_LOGS = "remote-logs"


@contextlib.asynccontextmanager
async def open_local(context: BackendContext) -> AsyncIterator[Any]:
    """Local programs under chaperones, run dirs in ``<state dir>/runs``."""
    from corra.backends.local_process import LocalProcessBackend

    backend = LocalProcessBackend(
        context.state_dir / LOCAL_RUNS,
        max_running=context.max_running,
        output_limit=context.output_limit,
    )
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()


def _transports(context: BackendContext) -> dict[str, Any]:
    assert context.transport is not None, "a backend with hosts needs the hosts' transports"
    return {name: context.transport(name) for name in context.hosts}


@contextlib.asynccontextmanager
async def open_ssh(context: BackendContext) -> AsyncIterator[Any]:
    """Programs on hosts under the remote chaperone, logs shipped to ``remote-logs``."""
    from corra.backends.ssh import SshProgramBackend

    async with SshProgramBackend(
        dict(context.hosts),
        _transports(context),
        poll_interval=context.poll_interval,
        logs_dir=context.state_dir / REMOTE_LOGS,
        output_limit=context.output_limit,
    ) as backend:
        yield backend


@contextlib.asynccontextmanager
async def open_slurm(context: BackendContext) -> AsyncIterator[Any]:
    """Slurm jobs on hosts, submitted and polled through the hosts' transports."""
    from corra.backends.batch import BatchHost, SchedulerBackend
    from corra.backends.slurm import Slurm

    transports = _transports(context)
    hosts = {
        name: BatchHost(
            name=name,
            transport=transports[name],
            work_root=host.slurm.work_root,
            poll_interval=host.slurm.poll_interval,
            submit_rate=host.slurm.submit_rate,
            submit_burst=host.slurm.submit_burst,
            python=host.python,
        )
        for name, host in context.hosts.items()
    }
    async with SchedulerBackend(hosts, Slurm()) as backend:
        yield backend


def _local_handle() -> type:
    from corra.backends.local import Handle

    return Handle


def _slurm_options() -> tuple[type, type]:
    from corra.backends.slurm import SlurmOptions
    from corra.backends.ssh import SlurmSettings

    return SlurmOptions, SlurmSettings


LOCAL = BackendPlugin(
    name="local",
    open=open_local,
    handle=_local_handle(),
    capabilities=Capabilities(slots=True, log_size=True),
    description="programs on this machine, each under a chaperone (cgroups where allowed)",
)

# The handles of ssh and slurm are still JSON-able mappings (typed handles: issue 12).
SSH = BackendPlugin(
    name="ssh",
    open=open_ssh,
    handle=None,
    capabilities=Capabilities(
        slots=True, hosts=True, staging=True, waits_for_host=True, log_size=True
    ),
    description="programs on a host over SSH, under the remote chaperone",
)

SLURM = BackendPlugin(
    name="slurm",
    open=open_slurm,
    handle=None,
    options=_slurm_options()[0],
    host_options=_slurm_options()[1],
    capabilities=Capabilities(
        slots=True,
        hosts=True,
        staging=True,
        pause_hooks=True,
        waits_for_host=True,
        log_size=True,
        shell_env=True,
    ),
    description="Slurm jobs on a host's cluster, submitted with sbatch and polled with squeue",
)
