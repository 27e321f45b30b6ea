"""The SSH pool actor: every use of one (user, host, port) in a runtime goes through it.

A step of a process *leases* a connection (`PoolHandle.lease`), uses one channel at a time on
it, and gives it back when the step ends. The pool decides how many connections exist, when
new logins happen and when connections go away.

Rule 1: bounded. At most ``max_connections`` connections, at most ``channels_per_connection``
leases on each (one channel each at a time, so the server's MaxSessions is never reached). A
channel the server refuses lowers that connection's limit to what it carried then.

Rule 2: logins are budgeted. Every new connection first takes a token from the runtime's
login budget (`TokenBucket`, shared by all pools), so a thousand processes starting at once
cause ``max_connections`` logins, not a thousand, and never a burst the server (MaxStartups)
or the site's intrusion detection would punish.

Rule 3: connections are rotated and refreshed. A connection older than its ``max_age``
(jittered) takes no new leases and closes when its last lease ends; one idle for
``idle_timeout`` is closed; one the server closed is dropped when noticed. New ones are made
on demand, within the budget.

Rule 4: failed connects back off exponentially with full jitter; after ``unavailable_after``
failures in a row the host is *unavailable*: waiting and new leases fail at once with
`HostUnavailable` while the pool keeps probing (in the background, within the budget) and
announces the host's return (`PoolHandle.wait_available`). A host key that known_hosts does not
vouch for is refused (`HostKeyRefused`), never retried blindly.

Rule 5: operations are retried inside the pool: a refused channel, or a connection that broke
under a retry-safe operation, is retried on another lease (`PoolHandle.run`); the user sees
only an error that retrying cannot cure.

The actor handles messages (lease requests, releases, statistics); a background task makes
connections and another keeps them tidy. asyncssh runs on the asyncio loop the runtime opened
with trio-asyncio; every call into it goes through `aio_as_trio` here and in the transport,
and asyncssh's exceptions never leave this package.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncssh
import attrs
import trio
import trio_asyncio

from corra._errors import (
    ActorStopped,
    ConnectionFailed,
    HostKeyRefused,
    HostUnavailable,
    MailboxFull,
    TransportError,
)
from corra.actors import Actor, ChildSpec, SupervisorRef
from corra.actors._actor import Ref
from corra.backends._shared import TokenBucket
from corra.backends.ssh import _hostkeys
from corra.backends.ssh._config import HostConfig

logger = logging.getLogger("corra.ssh")

#: Errors of asyncssh and the OS that mean "the connection is gone or could not be made".
DROPPED = (
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    ConnectionError,
    BrokenPipeError,
    EOFError,
    OSError,
)


@attrs.frozen
class PoolStatistics:
    """A pool's counters, from `PoolHandle.statistics`."""

    host: str
    connections: int
    """Open now."""
    leases: int
    """Held now."""
    waiting: int
    """Lease requests waiting for capacity."""
    logins: int
    """Connections made (successful logins) since the pool started."""
    connect_failures: int
    refusals: int
    """Channels the server refused."""
    rotations: int
    """Connections retired for their age."""
    idle_closed: int
    dropped: int
    """Connections found closed by the server or broken under an operation."""
    retries: int
    """Operations retried inside the pool."""
    leases_total: int
    available: bool


class _Connection:
    __slots__ = (
        "channel_limit",
        "conn",
        "id",
        "in_flight",
        "last_used",
        "opened_at",
        "retire_at",
        "retiring",
    )

    def __init__(self, number: int, conn: Any, now: float, max_age: float, limit: int) -> None:
        self.id = number
        self.conn = conn
        self.opened_at = now
        self.retire_at = now + max_age * random.uniform(0.9, 1.0)
        self.in_flight = 0
        self.channel_limit = limit
        self.last_used = now
        self.retiring = False

    @property
    def closed(self) -> bool:
        return bool(self.conn.is_closed())

    def free(self) -> bool:
        return not self.retiring and self.in_flight < self.channel_limit and not self.closed


class _Ticket:
    """A lease request, from the lessee's task to the pool and back."""

    __slots__ = ("abandoned", "connection", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.connection: _Connection | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class _CountRetry:
    """Tells the pool that an operation was retried (for its statistics)."""

    __slots__ = ()


@attrs.frozen
class _Release:
    ticket: _Ticket
    broken: bool = False
    refused: bool = False


def _enter_loop(loop: Any) -> None:
    """Make ``loop`` this task's asyncio loop (asyncio code finds its loop through this
    context variable; a task started before the loop was opened has none)."""
    if loop is not None and trio_asyncio.current_loop.get() is None:
        trio_asyncio.current_loop.set(loop)


def asyncio_loop() -> Any:
    """The runtime's trio-asyncio loop, captured where it is open (the pools' tasks may have
    been started outside it)."""
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("SSH needs the runtime's asyncio loop (trio_asyncio.open_loop)")
    return loop


class SshPool(Actor):
    """The pool of one host. Spawn it under a supervisor; use it through `PoolHandle`."""

    def __init__(
        self,
        host: HostConfig,
        budget: TokenBucket,
        *,
        loop: Any = None,
        connect: Callable[[HostConfig], Awaitable[Any]] | None = None,
        wait_closed: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.settings = host.pool
        self.budget = budget
        self._loop = loop
        self._connect = connect or self._asyncssh_connect
        self._wait_closed = wait_closed or self._asyncssh_wait_closed
        self._connections: list[_Connection] = []
        self._waiting: deque[_Ticket] = deque()
        self._numbers = itertools.count(1)
        self._wake_connector = trio.Event()
        self._connecting = False
        self._failures = 0
        self._last_error = "none yet"
        self.available = True
        self._available_event = trio.Event()
        self._available_event.set()
        self._counts = dict.fromkeys(
            (
                "logins",
                "connect_failures",
                "refusals",
                "rotations",
                "idle_closed",
                "dropped",
                "retries",
                "leases_total",
            ),
            0,
        )

    async def _asyncssh_connect(self, host: HostConfig) -> Any:
        return await _hostkeys.connect(host, self._loop)

    async def _asyncssh_wait_closed(self, conn: Any) -> None:
        await trio_asyncio.aio_as_trio(conn.wait_closed, loop=self._loop)()

    # -- the actor -----------------------------------------------------------------------

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._background()

    @contextlib.asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        _enter_loop(self._loop)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._connector)
                nursery.start_soon(self._tidy)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                error = ConnectionFailed(self.host.address, "the pool stopped")
                for ticket in self._waiting:
                    ticket.error = error
                    ticket.event.set()
                self._waiting.clear()
                for connection in self._connections:
                    await self._close(connection)
                self._connections.clear()

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, _Ticket):
            self._counts["leases_total"] += 1
            if not self.available:
                msg.error = HostUnavailable(
                    self.host.address, self._unavailable_reason(), self.settings.on_unavailable
                )
                msg.event.set()
                return None
            self._waiting.append(msg)
            self._dispatch()
        elif isinstance(msg, _Release):
            self._release(msg)
        elif isinstance(msg, _CountRetry):
            self._counts["retries"] += 1
        elif msg == "statistics":
            return self.statistics()
        elif msg == "wait_available":
            return self._available_event
        else:
            raise TypeError(f"{self.host.address}: unknown pool message {msg!r}")
        return None

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            host=self.host.address,
            connections=len(self._connections),
            leases=sum(connection.in_flight for connection in self._connections),
            waiting=sum(1 for ticket in self._waiting if not ticket.abandoned),
            available=self.available,
            **self._counts,
        )

    # -- leases --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand free capacity to waiting tickets, oldest first; ask for a connection if
        some still wait."""
        while self._waiting and self._waiting[0].abandoned:
            self._waiting.popleft()
        while self._waiting:
            usable = [connection for connection in self._connections if connection.free()]
            if not usable:
                break
            connection = min(usable, key=lambda c: (c.in_flight, -c.opened_at))
            ticket = self._waiting.popleft()
            if ticket.abandoned:
                continue
            connection.in_flight += 1
            ticket.connection = connection
            ticket.event.set()
        if any(not ticket.abandoned for ticket in self._waiting):
            self._wake_connector.set()

    def _release(self, release: _Release) -> None:
        connection = release.ticket.connection
        if connection is None or connection not in self._connections:
            return
        connection.in_flight -= 1
        connection.last_used = trio.current_time()
        if release.refused and not release.broken:
            self._counts["refusals"] += 1
            # The server's MaxSessions is lower than ours: carry no more than it took.
            connection.channel_limit = max(1, min(connection.channel_limit, connection.in_flight))
        if release.broken or connection.closed:
            self._counts["dropped"] += 1
            self._discard(connection)
        elif connection.retiring and connection.in_flight == 0:
            self._discard(connection)
        self._dispatch()

    def _discard(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
        connection.conn.close()  # asyncssh closes in the background; nothing to await here

    async def _close(self, connection: _Connection) -> None:
        connection.conn.close()
        with trio.move_on_after(2), contextlib.suppress(Exception):
            await self._wait_closed(connection.conn)

    # -- connections ---------------------------------------------------------------------

    def _wanted(self) -> bool:
        if not any(not ticket.abandoned for ticket in self._waiting):
            return False
        if any(connection.free() for connection in self._connections):
            return False
        live = [c for c in self._connections if not c.retiring and not c.closed]
        return len(live) < self.settings.max_connections

    async def _connector(self) -> None:
        """Makes one connection at a time, when tickets wait and there is room for one."""
        while True:
            if self.available and not self._wanted():
                self._wake_connector = trio.Event()
                await self._wake_connector.wait()
                continue
            await self.budget.take()
            if self.available and not self._wanted():
                continue  # demand went away while we waited for the budget
            try:
                with trio.fail_after(self.settings.connect_timeout):
                    conn = await self._connect(self.host)
            except asyncssh.HostKeyNotVerifiable as exc:
                self._fail_waiting(HostKeyRefused(self.host.address, f"host key refused: {exc}"))
                continue
            except (asyncssh.PermissionDenied, asyncssh.KeyImportError) as exc:
                self._fail_waiting(ConnectionFailed(self.host.address, f"login refused: {exc}"))
                await trio.sleep(self._backoff(1))
                continue
            except (asyncssh.Error, OSError, trio.TooSlowError, ValueError) as exc:
                await self._connect_failed(exc)
                continue
            self._counts["logins"] += 1
            self._failures = 0
            now = trio.current_time()
            connection = _Connection(
                next(self._numbers),
                conn,
                now,
                self.settings.max_age,
                self.settings.channels_per_connection,
            )
            self._connections.append(connection)
            if not self.available:
                logger.info("%s: available again", self.host.address)
                self.available = True
                self._available_event.set()
            self._dispatch()

    async def _connect_failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._counts["connect_failures"] += 1
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.warning(
            "%s: connect failed (%d in a row): %s", self.host.address, self._failures, reason
        )
        self._last_error = reason
        if self._failures >= self.settings.unavailable_after and self.available:
            logger.warning("%s: unavailable after %d failures", self.host.address, self._failures)
            self.available = False
            self._available_event = trio.Event()
            self._fail_waiting(
                HostUnavailable(
                    self.host.address, self._unavailable_reason(), self.settings.on_unavailable
                )
            )
        await trio.sleep(self._backoff(self._failures))

    def _unavailable_reason(self) -> str:
        return f"unavailable after {self._failures} failed connects (last: {self._last_error})"

    def _backoff(self, failures: int) -> float:
        settings = self.settings
        ceiling = min(settings.backoff_max, settings.backoff_initial * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never zero, never more

    def _fail_waiting(self, error: TransportError) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            ticket.error = error
            ticket.event.set()

    async def _tidy(self) -> None:
        """Rotation, idle closing and noticing connections the server closed."""
        period = max(0.05, min(1.0, self.settings.idle_timeout / 4, self.settings.max_age / 10))
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in list(self._connections):
                if connection.closed:
                    self._counts["dropped"] += 1
                    self._discard(connection)
                elif not connection.retiring and now >= connection.retire_at:
                    connection.retiring = True
                    self._counts["rotations"] += 1
                    if connection.in_flight == 0:
                        self._discard(connection)
                elif (
                    connection.in_flight == 0
                    and now - connection.last_used >= self.settings.idle_timeout
                ):
                    self._counts["idle_closed"] += 1
                    self._discard(connection)
            self._dispatch()


class PoolHandle:
    """How the rest of the runtime uses a pool: leases, retried operations, statistics.

    Holds a way to find the pool's current incarnation, so it keeps working across restarts
    of the pool actor by its supervisor.
    """

    def __init__(
        self, host: HostConfig, current: Callable[[], Ref | None], *, loop: Any = None
    ) -> None:
        self.host = host
        self._current = current
        self.loop = loop
        self._cached: Ref | None = None

    def _ref(self) -> Ref:
        ref = self._cached
        if ref is None or not ref.alive:
            ref = self._cached = self._current()
        if ref is None:
            raise ConnectionFailed(self.host.address, "its pool is not running (restarting?)")
        return ref

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """A connection for one step; given back when the block ends."""
        ref = self._ref()
        ticket = _Ticket()
        try:
            await ref.send(ticket)
        except ActorStopped as exc:
            raise ConnectionFailed(self.host.address, "its pool stopped") from exc
        try:
            await ticket.event.wait()
        except BaseException:
            ticket.abandoned = True
            if ticket.connection is not None:
                await _give_back(ref, _Release(ticket))
            raise
        if ticket.error is not None:
            raise ticket.error
        assert ticket.connection is not None
        lease = Lease(ticket.connection.conn, self.host.address)
        try:
            yield lease
        finally:
            await _give_back(ref, _Release(ticket, broken=lease.broken, refused=lease.refused))

    async def statistics(self) -> PoolStatistics:
        statistics: PoolStatistics = await self._ref().call("statistics")
        return statistics

    async def wait_available(self) -> None:
        """Return once the host is available (at once if it is)."""
        while True:
            event: trio.Event = await self._ref().call("wait_available")
            await event.wait()
            statistics = await self.statistics()
            if statistics.available:
                return

    async def run(self, operation: Callable[[Any], Awaitable[Any]], *, retry_safe: bool) -> Any:
        """``operation(connection)`` on a leased connection, retried inside the pool.

        A channel the server refused is always retried (nothing ran); a connection that broke
        during the operation is retried only when ``retry_safe``, else `ConnectionFailed`.
        """
        retries = self.host.pool.operation_retries
        _enter_loop(self.loop)
        for attempt in itertools.count():
            async with self.lease() as lease:
                try:
                    call = trio_asyncio.aio_as_trio(operation, loop=self.loop)
                    return await call(lease.connection)
                except asyncssh.ChannelOpenError as exc:
                    # "open failed" on a live connection is the server's MaxSessions; on a
                    # closed one the connection is gone. Either way nothing ran.
                    lease.refused = True
                    lease.broken = bool(lease.connection.is_closed())
                    failure: BaseException = exc
                    safe = True
                except DROPPED as exc:
                    lease.broken = True
                    failure = exc
                    safe = retry_safe
            if not safe or attempt >= retries:
                raise ConnectionFailed(
                    self.host.address, f"{type(failure).__name__}: {failure}"
                ) from failure
            with contextlib.suppress(ActorStopped, MailboxFull, ConnectionFailed):
                self._ref().send_nowait(_CountRetry())
            await trio.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")


class Lease:
    """One connection for one step. Mark it ``broken`` if it failed under you."""

    __slots__ = ("broken", "connection", "host", "refused")

    def __init__(self, connection: Any, host: str) -> None:
        self.connection = connection
        self.host = host
        self.broken = False
        self.refused = False


async def _give_back(ref: Ref, release: _Release) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(ActorStopped):
        await ref.send(release)


class PoolRegistry:
    """One pool actor per (user, host, port) in a runtime, under the ``/ssh`` supervisor,
    all sharing one login budget."""

    def __init__(self, supervisor: SupervisorRef, budget: TokenBucket, *, loop: Any = None) -> None:
        self.supervisor = supervisor
        self.budget = budget
        self.loop = loop if loop is not None else asyncio_loop()
        self._handles: dict[tuple[str | None, str, int | None], PoolHandle] = {}
        self._lock = trio.Lock()

    async def pool(self, host: HostConfig) -> PoolHandle:
        """The pool for ``host``, started on first use."""
        key = (host.user, host.hostname or host.name, host.port)
        handle = self._handles.get(key)
        if handle is not None:
            return handle
        async with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                child_id = f"{host.user or ''}@{host.hostname or host.name}:{host.port or ''}"
                spec = ChildSpec(
                    id=child_id,
                    start=lambda: SshPool(host, self.budget, loop=self.loop),
                    restart="permanent",
                )
                await self.supervisor.start_child(spec)
                handle = PoolHandle(host, lambda: self._current(child_id), loop=self.loop)
                self._handles[key] = handle
        return handle

    def _current(self, child_id: str) -> Ref | None:
        for child in self.supervisor.which_children():
            if child.id == child_id and isinstance(child.ref, Ref):
                return child.ref
        return None

    def handles(self) -> list[PoolHandle]:
        return list(self._handles.values())
