"""Suite ``ssh``: the pool actor against raw asyncssh, on a real sshd on loopback.

The suite starts its own sshd (as the tests do, `tests._sshd`: own keys and config, a user
whose shell is /bin/sh) once, and stops it by its pid when the interpreter exits.

- ``pooled_vs_fresh``: ``true`` run one after another through `SshTransport` (a pooled,
  already open connection) vs a fresh asyncssh connection per command (connect, log in, run,
  close), as a tool without a pool does. Commands per second; goal >= 15.
- ``pool_throughput_8``: ``true`` by 8 concurrent workers through the pool (one connection,
  8 channels) vs 8 concurrent ``conn.run`` on one raw asyncssh connection on plain asyncio.
  Commands per second; goal >= 0.8.
- ``logins_500``: logins (counted in sshd's VERBOSE log) that 500 commands by 32 concurrent
  workers cause through the pool (2 connections): report; aim: no more than the pool size.
  The baseline is one login per command (a connection per command).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import trio
import trio_asyncio

from benchmarks._harness import Benchmark, Options
from corra.actors import SupervisorSpec, open_runtime
from corra.backends.ssh import (
    HostConfig,
    PoolHandle,
    PoolRegistry,
    SshTransport,
    TokenBucket,
)
from tests import _sshd

_SERVER: list[_sshd.Sshd] = []


def server() -> _sshd.Sshd:
    """The suite's sshd, started on first use."""
    if not _SERVER:
        reason = _sshd.unavailable()
        if reason is not None:
            raise RuntimeError(f"suite ssh needs an sshd: {reason}")
        factory = _sshd.SshdFactory(Path(tempfile.mkdtemp(prefix="corra-bench-sshd-")))
        atexit.register(factory.close)
        _SERVER.append(factory.start(name="bench"))
    return _SERVER[0]


def host(**settings: Any) -> HostConfig:
    return server().host_config("bench", pool=settings)


def connect_options() -> dict[str, Any]:
    sshd = server()
    return {
        "port": sshd.port,
        "username": sshd.user,
        "client_keys": [str(sshd.client_key)],
        "known_hosts": str(sshd.known_hosts),
    }


@contextlib.asynccontextmanager
async def pool(config: HostConfig) -> AsyncIterator[PoolHandle]:
    async with trio_asyncio.open_loop(), open_runtime() as runtime:
        supervisor = await runtime.spawn_supervisor(SupervisorSpec(), name="ssh")
        registry = PoolRegistry(supervisor, TokenBucket(rate=100, burst=10))
        yield await registry.pool(config)


async def _workers(count: int, concurrency: int, one: Callable[[], Awaitable[object]]) -> float:
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < count:
            done += 1
            await one()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


async def corra_commands(count: int, concurrency: int, max_connections: int) -> float:
    """``true`` through the pool; commands per second."""
    config = host(max_connections=max_connections, channels_per_connection=8)
    async with pool(config) as handle:
        transport = SshTransport(handle)
        await transport.run(["true"], check=True)  # warm-up: the login, outside the figure

        async def one() -> None:
            await transport.run(["true"], check=True)

        return await _workers(count, concurrency, one)


def raw_commands(count: int, concurrency: int) -> float:
    """``true`` on one raw asyncssh connection, ``concurrency`` at once; commands per second."""

    async def main() -> float:
        sshd = server()
        async with asyncssh.connect(sshd.host, **connect_options()) as conn:
            await conn.run("true", check=True)
            done = 0

            async def worker() -> None:
                nonlocal done
                while done < count:
                    done += 1
                    await conn.run("true", check=True)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return count / (time.perf_counter() - started)

    return asyncio.run(main())


def fresh_connections(count: int) -> float:
    """A new asyncssh connection per ``true``; commands per second."""

    async def main() -> float:
        sshd = server()
        started = time.perf_counter()
        for _ in range(count):
            async with asyncssh.connect(sshd.host, **connect_options()) as conn:
                await conn.run("true", check=True)
        return count / (time.perf_counter() - started)

    return asyncio.run(main())


def corra_logins(count: int) -> float:
    """Logins that ``count`` commands by 32 workers cause through a pool of 2 connections."""
    sshd = server()

    async def main() -> float:
        before = sshd.logins()
        async with pool(host(max_connections=2, channels_per_connection=8)) as handle:
            transport = SshTransport(handle)

            async def one() -> None:
                await transport.run(["true"], check=True)

            await _workers(count, 32, one)
        await trio.sleep(0.2)  # sshd writes its log line after the login
        return float(sshd.logins() - before)

    return trio.run(main)


def benchmarks(options: Options) -> list[Benchmark]:
    sequential = options.size(100, 30)
    fresh = options.size(20, 8)
    parallel = options.size(800, 200)
    logins = options.size(500, 200)
    return [
        Benchmark(
            name="pooled_vs_fresh",
            unit="commands/s",
            corra=lambda: trio.run(corra_commands, sequential, 1, 1),
            baseline=lambda: fresh_connections(fresh),
            goal=15.0,
            rounds=5,
        ),
        Benchmark(
            name="pool_throughput_8",
            unit="commands/s",
            corra=lambda: trio.run(corra_commands, parallel, 8, 1),
            baseline=lambda: raw_commands(parallel, 8),
            goal=0.8,
            rounds=5,
        ),
        Benchmark(
            name=f"logins_{logins}",
            unit="logins",
            corra=lambda: corra_logins(logins),
            baseline=lambda: float(logins),
            higher_is_better=False,
            aim=2.0,
            rounds=3,
        ),
    ]
