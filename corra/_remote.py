"""Remote hosts in a runtime: the asyncio loop for asyncssh, the pools, the remote backends.

`open_remote_backends` is what `corra.open_runtime` enters when it is given hosts (or finds
some remembered in its state dir): it opens the one asyncio loop of the runtime (trio-asyncio),
starts the ``/ssh`` supervisor under which each host's pool actor will run, and yields the
backends ``ssh`` (programs under the remote chaperone) and ``slurm`` (jobs through Slurm), both
reaching their hosts through a `Transport` (the host's pool, or this machine for a host with
``transport = "local"``).

Hosts are remembered in ``<state dir>/hosts.json`` (0600, written whole, atomically), so a later
runtime that recovers remote processes knows how to reach their hosts without the job file;
hosts given again replace what was remembered under the same name.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import trio
import trio_asyncio

from corra._errors import ConfigError
from corra._statedir import read_private, write_private
from corra.actors import ChildSpec, SupervisorFlags, SupervisorRef, SupervisorSpec
from corra.backends.batch import BatchHost, SchedulerBackend
from corra.backends.slurm import Slurm
from corra.backends.ssh import (
    HostConfig,
    LoginSettings,
    PoolRegistry,
    SshProgramBackend,
    SshTransport,
    TokenBucket,
    parse_host,
)
from corra.backends.transport import LocalTransport, Transport
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT

HOSTS_FILE = "hosts.json"
_converter = cattrs.Converter()


def remembered_hosts(state_dir: Path) -> dict[str, HostConfig]:
    """The hosts a runtime on ``state_dir`` was given before (none if the file is absent)."""
    path = state_dir / HOSTS_FILE
    try:
        data = json.loads(read_private(path, what="remembered hosts"))
    except FileNotFoundError:
        return {}
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the remembered hosts: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of hosts, got {type(data).__name__}")
    hosts = {}
    for name, table in data.items():
        try:
            hosts[name] = parse_host(name, table)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return hosts


def remember_hosts(state_dir: Path, hosts: Mapping[str, HostConfig]) -> None:
    """Write ``hosts`` to the state dir, whole (0600 temp file, fsync, rename)."""
    data = {}
    for name, host in sorted(hosts.items()):
        table = _converter.unstructure(host)
        table.pop("name")
        data[name] = {key: value for key, value in table.items() if value is not None}
    document = json.dumps(data, indent=2, sort_keys=True).encode()
    write_private(state_dir / HOSTS_FILE, document, sync=True)


@attrs.frozen
class RemoteBackends:
    """What `open_remote_backends` yields."""

    hosts: dict[str, HostConfig]
    transports: dict[str, Transport]
    registry: PoolRegistry
    backends: dict[str, Any]


@contextlib.asynccontextmanager
async def open_remote_backends(
    root: SupervisorRef,
    hosts: Mapping[str, HostConfig],
    *,
    logins: LoginSettings | None = None,
    poll_interval: float = 1.0,
    logs_dir: Path | None = None,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
) -> AsyncIterator[RemoteBackends]:
    """The remote backends for ``hosts``, for as long as the block runs (see module doc);
    ``output_limit``: the ssh backend's default for specs without one."""
    async with trio_asyncio.open_loop():
        flags = SupervisorFlags(strategy="one_for_one", intensity=10, period=60)
        supervisor = await root.start_child(
            ChildSpec(id="ssh", start=SupervisorSpec(flags=flags), restart="permanent")
        )
        assert isinstance(supervisor, SupervisorRef)
        budget = logins or LoginSettings()
        registry = PoolRegistry(supervisor, TokenBucket(budget.rate, budget.burst))
        transports: dict[str, Transport] = {}
        for name, host in hosts.items():
            if host.transport == "local":
                transports[name] = LocalTransport(env=dict(host.env) if host.env else None)
            else:
                transports[name] = SshTransport(await registry.pool(host))
        ssh = SshProgramBackend(
            dict(hosts),
            transports,
            poll_interval=poll_interval,
            logs_dir=logs_dir,
            output_limit=output_limit,
        )
        batch_hosts = {
            name: BatchHost(
                name=name,
                transport=transports[name],
                work_root=host.slurm.work_root,
                poll_interval=host.slurm.poll_interval,
                submit_rate=host.slurm.submit_rate,
                submit_burst=host.slurm.submit_burst,
                python=host.python,
            )
            for name, host in hosts.items()
        }
        slurm = SchedulerBackend(batch_hosts, Slurm())
        try:
            async with ssh, slurm:
                yield RemoteBackends(
                    hosts=dict(hosts),
                    transports=transports,
                    registry=registry,
                    backends={"ssh": ssh, "slurm": slurm},
                )
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await root.terminate_child("ssh")
                await root.delete_child("ssh")
