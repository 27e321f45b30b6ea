"""What the remote backends share: their hosts by name, and one poller task per host.

A `HostPollers` backend runs its pollers only inside `open_host_pollers`, whose nursery owns
them (and whatever they start) and cancels them when its block ends: no task of a backend
outlives the block that opened it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import trio

from corra._errors import ConfigError
from corra.chaperone import protocol
from corra.processes._backend import BackendBase, LaunchRequest


class HostPollers(BackendBase):
    """A backend with named hosts, each with a poller task while `open_host_pollers` runs it.

    Subclasses set ``_hosts`` and define ``_poller(host)``, which runs until cancelled; a task
    a poller starts that may outlive one poll goes to ``_poll_nursery``.
    """

    _hosts: dict[str, Any]
    _poll_nursery: trio.Nursery | None = None
    """The nursery of `open_host_pollers` while its block runs; None outside it."""

    async def _poller(self, host: Any) -> None:
        raise NotImplementedError

    async def _watch(self, host: Any, key: str, watch: Any) -> None:
        """Register ``watch`` (with ``event`` and ``error``) under ``host.watches[key]``, wake
        the host's poller, wait until the poller settles it, and raise its error if any."""
        assert self._poll_nursery is not None, "a wait needs the pollers: open_host_pollers"
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


B = TypeVar("B", bound=HostPollers)


@contextlib.asynccontextmanager
async def open_host_pollers(backend: B) -> AsyncIterator[B]:
    """``backend``, with a poller task per host for as long as the block runs.

    The pollers, and the tasks they start, run in a nursery of this block; the end of the
    block cancels them, and an error in one of them cancels the block and propagates.
    """
    if backend._poll_nursery is not None:
        raise RuntimeError(f"{type(backend).__name__}: its pollers run already")
    async with trio.open_nursery() as nursery:
        backend._poll_nursery = nursery
        try:
            for host in backend._hosts.values():
                nursery.start_soon(backend._poller, host)
            yield backend
        finally:
            backend._poll_nursery = None
            nursery.cancel_scope.cancel()


def check_key(key: object) -> str:
    """``key``, if it can name a run dir: the one rule of the chaperone and the remote
    helper (`corra.chaperone.protocol.check_key`), which check it again on the host.

    Raises:
        ConfigError: it cannot.
    """
    try:
        return protocol.check_key(key)
    except protocol.Invalid as exc:
        raise ConfigError(str(exc)) from None
