"""What the remote backends share: their hosts by name, and one poller task per host."""

from __future__ import annotations

from typing import Any

import trio

from corra._errors import ConfigError
from corra.processes._backend import BackendBase, LaunchRequest


class HostPollers(BackendBase):
    """A backend with named hosts, each with a poller task while it is open (``async with``).

    Subclasses set ``_hosts`` and define ``_poller(host)``, which runs until cancelled.
    """

    _hosts: dict[str, Any]

    async def _poller(self, host: Any) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        self._poll_nursery = nursery
        for host in self._hosts.values():
            nursery.start_soon(self._poller, host)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._poll_nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc_info)

    async def _watch(self, host: Any, key: str, watch: Any) -> None:
        """Register ``watch`` (with ``event`` and ``error``) under ``host.watches[key]``, wake
        the host's poller, wait until the poller settles it, and raise its error if any."""
        host.watches.setdefault(key, []).append(watch)
        host.wake.set()
        try:
            await watch.event.wait()
        finally:
            watches = host.watches.get(key, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                host.watches.pop(key, None)
        if watch.error is not None:
            raise watch.error

    def check(self, request: LaunchRequest) -> None:
        """At submission: refuse (`ConfigError`) a process on a host this backend lacks."""
        self.host(request.host)

    async def wait_available(self, name: str) -> None:
        """Return once host ``name`` answers again (at once if it never stopped)."""
        waiter = getattr(self.host(name).transport, "wait_available", None)
        if waiter is None:
            await trio.lowlevel.checkpoint()
        else:
            await waiter()

    def hosts_for(self, name: str | None) -> list[Any]:
        """The host called ``name``; every host for None (a key looked for anywhere)."""
        return [self.host(name)] if name is not None else list(self._hosts.values())

    def host(self, name: object) -> Any:
        """The host called ``name``, or `ConfigError` naming the hosts there are."""
        if not isinstance(name, str) or name not in self._hosts:
            raise ConfigError(f"host: got {name!r}, expected one of {sorted(self._hosts)}")
        return self._hosts[name]


def check_key(key: object) -> str:
    """``key``, if it can name a run dir (a file name: no ``/``, no NUL, no leading ``.``).

    Raises:
        ConfigError: it cannot.
    """
    if not isinstance(key, str) or not key or "/" in key or "\0" in key or key.startswith("."):
        raise ConfigError(f"key: got {key!r}, expected a file name")
    return key
