"""The shared chaperone of a root, as the local backend talks to it: `SharedClient`.

One long-lived ``python -I -S .../corra/chaperone --serve``, which the first backend to need
it starts, detached, launches every program of the root as its own child, in one event loop.
The client keeps one connection to it (a Unix socket in the root, JSON lines): launch requests
and their replies, and an ``exited`` message with the exit record when a program ends,
dispatched by one reader task to whoever waits, by key. The reader and the writer run in the
backend's nursery (DESIGN invariant 1): a broken connection ends them quietly, and any other
error in them propagates out of the backend.

A shared chaperone adds a fraction of a millisecond to a launch, where an own one costs an
interpreter's start, but if it is killed every program it watches is lost. Programs get the
runtime's environment as it is at the launch (sent again whenever it changed) and its umask as
it was when the client connected. The chaperone keeps running its programs when the connection
closes, and leaves by itself once it has had no program and no connection for a few seconds
(`IDLE_EXIT`); a client that finds it gone starts a new one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from corra._errors import BackendError, LaunchFailed
from corra.backends._exits import ExitRecord
from corra.backends.local._connection import (
    Connection,
    Disconnected,
    Waiter,
    connect_or_start,
    environ_copy,
    environ_now,
)
from corra.backends.local._rundirs import (
    Handle,
    chaperone_alive,
    handle_from,
    poll_until_exit,
    record_or_lost,
)
from corra.chaperone._shared import IDLE_EXIT as _IDLE_EXIT

#: Seconds the shared chaperone stays without programs and connections (tests shorten it).
IDLE_EXIT = _IDLE_EXIT
#: How often a request is sent again when the shared chaperone went away while it was asked.
_ATTEMPTS = 3


class SharedClient:
    """The root's shared chaperone, for a `LocalBackend` (see the module doc).

    Args:
        root: the run dirs' root, where the chaperone's socket and pid file are.
        prepare: makes the root (and the cgroups' parents) ready; awaited before the first
            connection, which may start the chaperone.
    """

    def __init__(self, root: Path, prepare: Callable[[], Awaitable[None]]) -> None:
        self.root = root
        self.prepare = prepare
        self.nursery: trio.Nursery | None = None
        """Where the connection's reader and writer run: the backend's (`LocalBackend`)."""
        self.connected: Connection | None = None
        self.closed = False
        self._connecting = trio.Lock()
        self._exits: dict[str, dict[str, Any]] = {}  # exit records nobody has waited for yet

    async def launch(
        self, key: str, document: dict[str, Any], env: Mapping[str, str]
    ) -> Handle | None:
        # The environment on top of which ``env`` goes was sent with the hello (and again
        # whenever it changed since).
        document = {**document, "env": dict(env)}
        for _ in range(_ATTEMPTS):
            connection = await self._connection()
            try:
                if environ_now() != connection.environ:
                    environ = environ_copy()
                    await connection.request({"op": "env", "env": dict(os.environ)})
                    connection.environ = environ
                reply = await connection.request({"op": "launch", "key": key, "spec": document})
            except Disconnected:
                continue  # retried: the claim tells whether it got as far as the program
            break
        else:
            raise BackendError(f"{key}: the shared chaperone kept going away during the launch")
        op = reply.get("op")
        if op in ("started", "claimed") and reply.get("program") is not None:
            connection.watched.add(key)  # it tells us of the exit unasked
            claim = {"pid": connection.pid, "start": connection.start, "shared": True}
            return handle_from(key, self.root / key, claim, reply["program"])
        if op == "claimed":
            return None
        if op in ("failed", "invalid"):
            raise LaunchFailed(f"{key}: {reply.get('error')}")
        raise BackendError(f"{key}: unexpected reply from the shared chaperone: {reply!r}")

    async def wait(self, handle: Handle) -> ExitRecord:
        key = handle.key
        while True:
            record = self._exits.pop(key, None)
            if record is not None:
                await trio.lowlevel.checkpoint()
                return ExitRecord.from_json(record)
            connection = await self._connection_of(handle)
            if connection is None:
                self._exits.pop(key, None)
                if chaperone_alive(handle):  # not this root's (any more): watch its files
                    return await poll_until_exit(handle)
                return await record_or_lost(handle)
            if key in self._exits:
                continue  # it came while we connected
            waiter = Waiter()
            connection.exits.setdefault(key, []).append(waiter)
            try:
                if key not in connection.watched:
                    reply = await connection.request({"op": "watch", "key": key})
                    if reply.get("op") != "watching":
                        # Not running there: ended (exit.json is in place) or never started.
                        self._exits.pop(key, None)
                        return await record_or_lost(handle)
                    connection.watched.add(key)
                await waiter.event.wait()
            except Disconnected:
                continue
            finally:
                waiters = connection.exits.get(key)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del connection.exits[key]
            if waiter.message is not None:
                return ExitRecord.from_json(waiter.message["record"])
            # The connection broke: ask again (a new chaperone, if this one died).

    async def kill(self, handle: Handle, grace: float | None) -> bool:
        for _ in range(_ATTEMPTS):
            connection = await self._connection_of(handle)
            if connection is None:
                return False
            try:
                reply = await connection.request({"op": "kill", "key": handle.key, "grace": grace})
            except Disconnected:
                continue
            if reply.get("op") == "killing":
                connection.watched.add(handle.key)
                return True
            return False
        return False

    def close(self) -> None:
        self.closed = True
        connection, self.connected = self.connected, None
        if connection is not None:
            connection.close()

    async def _connection_of(self, handle: Handle) -> Connection | None:
        """The connection to the shared chaperone that runs ``handle``'s program; None if that
        chaperone is gone, or is not the one serving this root (another root's, or one that
        is leaving, its programs done)."""
        connection = self.connected
        if connection is not None and connection.alive and connection.serves(handle):
            return connection
        if not chaperone_alive(handle):
            return None
        connection = await self._connection()
        return connection if connection.serves(handle) else None

    async def _connection(self) -> Connection:
        """Our connection to the root's shared chaperone, (re)connecting (and starting one)
        in a worker thread if need be."""
        connection = self.connected
        if connection is not None and connection.alive:
            return connection
        async with self._connecting:
            connection = self.connected
            if connection is not None and connection.alive:
                return connection
            if self.closed:
                raise BackendError("the backend is closed")
            if self.nursery is None:
                raise BackendError(
                    "the shared chaperone's connection needs a nursery: use the backend as "
                    "`async with LocalBackend(...)`"
                )
            await self.prepare()
            sock, hello = await trio.to_thread.run_sync(connect_or_start, self.root, IDLE_EXIT)
            if self.closed:
                sock.close()
                raise BackendError("the backend is closed")
            self.connected = Connection(sock, hello, self._exits.__setitem__, self.nursery)
            return self.connected
