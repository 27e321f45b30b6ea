"""SSH: hosts, the pool actor (one per user, host and port), and the SSH transport."""

# ruff: noqa: E402 - the filter must be in place before asyncssh is first imported
import warnings

# asyncssh names cryptography's DSA classes when imported, which cryptography >= 47
# deprecates: eight lines of warnings in every program that uses corra, about nothing its
# user can change. This package is the only importer of asyncssh in corra.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")

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
