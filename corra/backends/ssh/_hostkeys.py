"""Host keys are always checked, whatever ``~/.ssh/config`` says.

asyncssh reads OpenSSH's config, where ``UserKnownHostsFile none`` means no file of known
keys; asyncssh then accepts any key without a word. corra ignores that setting for the hosts
it matches and checks their keys against ``~/.ssh/known_hosts`` (a host table's
``known_hosts`` names another file); a key not found there is refused (`HostKeyRefused`), and
the message says why. ``StrictHostKeyChecking`` is not read by asyncssh: a key that is not
known is refused whatever it says (corra never adds keys), so ``no`` turns nothing off
either. A host table cannot turn checking off: ``known_hosts = "none"`` is refused
(`corra.backends.ssh.parse_host`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh
import trio
import trio_asyncio

from corra.backends.ssh._config import HostConfig

logger = logging.getLogger("corra.ssh")

IGNORED_NONE = (
    "~/.ssh/config says `UserKnownHostsFile none` for this host, which would turn off "
    "host-key checking: corra ignores it and checks against ~/.ssh/known_hosts (add the "
    "host's key there, or set known_hosts = PATH in its [hosts.NAME] table)"
)


def config_turns_checking_off(host: HostConfig) -> bool:
    """Whether ``~/.ssh/config`` leaves asyncssh no known_hosts for ``host`` (blocking: it
    reads the config; run it in a thread). Always False for a host that names its file."""
    if host.known_hosts is not None:
        return False
    options = host.connect_options()
    probe = asyncssh.SSHClientConnectionOptions(
        host=host.hostname or host.name,
        port=options.get("port", ()),
        username=options.get("username", ()),
        config=(),  # ~/.ssh/config, as asyncssh.connect reads it (the default here is none)
        client_keys=None,  # (not needed to read the setting: do not load them)
    )
    return probe.known_hosts is None


async def connect(host: HostConfig, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """`asyncssh.connect` to ``host`` with its host key checked (see the module doc).

    Raises:
        asyncssh.HostKeyNotVerifiable: the key is not known (with why, if the config's
            setting was ignored); and whatever `asyncssh.connect` raises.
    """
    options = host.connect_options()
    ignored = await trio.to_thread.run_sync(config_turns_checking_off, host)
    if ignored:
        logger.warning("host %s: %s", host.name, IGNORED_NONE)
        options["known_hosts"] = []  # asyncssh: ~/.ssh/known_hosts, or no key trusted
    aio_connect = trio_asyncio.aio_as_trio(asyncssh.connect, loop=loop)
    try:
        return await aio_connect(host.hostname or host.name, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        if ignored:
            raise asyncssh.HostKeyNotVerifiable(f"{exc.reason}; {IGNORED_NONE}") from exc
        raise
