"""SSH: hosts, the pool actor (one per user, host and port), and the SSH transport.

Re-exports only, looked up when first used: the ssh plug-in is declared (and its handle
class named) in every process that lists the installed backends, while asyncssh, cryptography
and trio-asyncio (a third of the modules of a runtime, which every full garbage collection
walks) are needed only once a host is reached.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# asyncssh names cryptography's DSA classes when imported, which cryptography >= 47
# deprecates: eight lines of warnings in every program that uses corra, about nothing its
# user can change. This package is the only importer of asyncssh in corra.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")

if TYPE_CHECKING:
    from corra.backends._shared import TokenBucket as TokenBucket
    from corra.backends.ssh._config import HostConfig as HostConfig
    from corra.backends.ssh._config import LoginSettings as LoginSettings
    from corra.backends.ssh._config import PoolSettings as PoolSettings
    from corra.backends.ssh._config import host_table as host_table
    from corra.backends.ssh._config import parse_host as parse_host
    from corra.backends.ssh._handle import RemoteHandle as RemoteHandle
    from corra.backends.ssh._pool import Lease as Lease
    from corra.backends.ssh._pool import PoolHandle as PoolHandle
    from corra.backends.ssh._pool import PoolRegistry as PoolRegistry
    from corra.backends.ssh._pool import PoolStatistics as PoolStatistics
    from corra.backends.ssh._pool import SshPool as SshPool
    from corra.backends.ssh._programs import SshProgramBackend as SshProgramBackend
    from corra.backends.ssh._transport import SshTransport as SshTransport
    from corra.backends.transport import join_inside as join_inside

_EXPORTS = {
    "TokenBucket": "corra.backends._shared",
    "HostConfig": "corra.backends.ssh._config",
    "LoginSettings": "corra.backends.ssh._config",
    "PoolSettings": "corra.backends.ssh._config",
    "host_table": "corra.backends.ssh._config",
    "parse_host": "corra.backends.ssh._config",
    "RemoteHandle": "corra.backends.ssh._handle",
    "Lease": "corra.backends.ssh._pool",
    "PoolHandle": "corra.backends.ssh._pool",
    "PoolRegistry": "corra.backends.ssh._pool",
    "PoolStatistics": "corra.backends.ssh._pool",
    "SshPool": "corra.backends.ssh._pool",
    "SshProgramBackend": "corra.backends.ssh._programs",
    "SshTransport": "corra.backends.ssh._transport",
    "join_inside": "corra.backends.transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # (found once)
    return value
