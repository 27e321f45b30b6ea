"""Remote hosts in a runtime: the asyncio loop for asyncssh, the pools, a transport per host.

`open_hosts` is what `corra.open_runtime` enters when it is given hosts (or finds some
remembered in its state dir), before it opens the backends that have hosts: it opens the one
asyncio loop of the runtime (trio-asyncio), starts the ``/ssh`` supervisor under which each
host's pool actor runs, and yields a `Transport` per host (the host's pool, or this machine for
a host with ``transport = "local"``), which the backends reach their hosts through
(`corra.processes._backend.BackendContext.transport`). A host with ``transport =
"kubernetes"`` (a cluster) has none: no command is ever run there.

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
import trio
import trio_asyncio

from corra._errors import ConfigError
from corra._statedir import read_private, write_private
from corra.actors import ChildSpec, SupervisorFlags, SupervisorRef, SupervisorSpec
from corra.backends.ssh import (
    HostConfig,
    LoginSettings,
    PoolRegistry,
    SshTransport,
    TokenBucket,
    host_table,
    parse_host,
)
from corra.backends.transport import LocalTransport, Transport

HOSTS_FILE = "hosts.json"


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
    data = {name: host_table(host) for name, host in sorted(hosts.items())}
    document = json.dumps(data, indent=2, sort_keys=True).encode()
    write_private(state_dir / HOSTS_FILE, document, sync=True)


@attrs.frozen
class RemoteHosts:
    """What `open_hosts` yields: the hosts, a transport to each, and the pools behind them."""

    hosts: dict[str, HostConfig]
    transports: dict[str, Transport]
    registry: PoolRegistry


@attrs.frozen
class RemoteBackends:
    """A runtime's hosts (`RemoteHosts`) and the backends that reach them, by name."""

    hosts: dict[str, HostConfig]
    transports: dict[str, Transport]
    registry: PoolRegistry
    backends: dict[str, Any]


@contextlib.asynccontextmanager
async def open_hosts(
    root: SupervisorRef, hosts: Mapping[str, HostConfig], *, logins: LoginSettings | None = None
) -> AsyncIterator[RemoteHosts]:
    """A transport to each of ``hosts``, for as long as the block runs (see module doc)."""
    async with trio_asyncio.open_loop():
        flags = SupervisorFlags(strategy="one_for_one", intensity=10, period=60)
        supervisor = await root.start_child(
            ChildSpec(id="ssh", start=SupervisorSpec(flags=flags), restart="permanent")
        )
        assert isinstance(supervisor, SupervisorRef)
        try:
            budget = logins or LoginSettings()
            registry = PoolRegistry(supervisor, TokenBucket(budget.rate, budget.burst))
            transports: dict[str, Transport] = {}
            for name, host in hosts.items():
                if not host.runs_commands:
                    continue  # (a cluster: its backend reaches it through its own client)
                if host.transport == "local":
                    transports[name] = LocalTransport(env=dict(host.env) if host.env else None)
                else:
                    transports[name] = SshTransport(await registry.pool(host))
            yield RemoteHosts(hosts=dict(hosts), transports=transports, registry=registry)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await root.terminate_child("ssh")
                await root.delete_child("ssh")
