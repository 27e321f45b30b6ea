"""Suite ``kernel``: the actor kernel against hand-written trio doing the same work.

Each baseline is what a careful trio programmer would write without corra:

- ``call``: one server task reads ``(message, reply_channel)`` requests from a memory channel
  and answers on the client's reply channel (one per client, reused for every request).
- ``send``: a consumer task counts what arrives on a memory channel; the run ends with one
  request/reply that returns the count, as the corra side ends with one ``call``.
- ``spawn_supervise_stop``: tasks that each open a nursery and wait until cancelled, started
  with ``nursery.start`` (as ``start_child`` returns once the child runs), then cancelled.
- ``idle_memory``: a bare task waiting on its own memory channel, whose send end is kept (as
  the corra side keeps its refs).

Every measurement runs inside its own ``trio.run``.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

import corra
from benchmarks._harness import Benchmark, Options

MAILBOX_CAPACITY = 64
#: The question that ends a stream of one-way messages: "how many did you get?"
HOW_MANY = "how many?"


class Echo(corra.Actor):
    async def handle(self, message: Any) -> Any:
        return message


class Counter(corra.Actor):
    received = 0

    async def handle(self, message: Any) -> Any:
        if message == HOW_MANY:
            return self.received
        self.received += 1
        return None


class Idle(corra.Actor):
    async def handle(self, message: Any) -> Any:
        return None


def _runner(function: Callable[[int], Awaitable[float]], size: int) -> Callable[[], float]:
    return lambda: trio.run(function, size)


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: got {got!r}, expected {expected!r}")


# call ------------------------------------------------------------------------------------


async def corra_call(count: int) -> float:
    """Sequential calls to an echo actor; calls per second."""
    async with corra.open_runtime() as runtime:
        ref = await runtime.spawn(Echo, name="echo", mailbox_capacity=MAILBOX_CAPACITY)
        reply = None
        started = time.perf_counter()
        for number in range(count):
            reply = await ref.call(number)
        elapsed = time.perf_counter() - started
        _check("last reply", reply, count - 1)
    return count / elapsed


async def trio_call(count: int) -> float:
    """Sequential requests to an echo server task; requests per second."""
    request_send, request_receive = trio.open_memory_channel[
        tuple[int, trio.MemorySendChannel[int]]
    ](MAILBOX_CAPACITY)

    async def serve() -> None:
        async with request_receive:
            async for message, reply_channel in request_receive:
                await reply_channel.send(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        reply_send, reply_receive = trio.open_memory_channel[int](1)
        reply = None
        started = time.perf_counter()
        for number in range(count):
            await request_send.send((number, reply_send))
            reply = await reply_receive.receive()
        elapsed = time.perf_counter() - started
        _check("last reply", reply, count - 1)
        await request_send.aclose()
    return count / elapsed


# send ------------------------------------------------------------------------------------


async def corra_send(count: int) -> float:
    """One-way sends to a counting actor, until it has consumed them all; messages per second."""
    async with corra.open_runtime() as runtime:
        ref = await runtime.spawn(Counter, name="counter", mailbox_capacity=MAILBOX_CAPACITY)
        started = time.perf_counter()
        for number in range(count):
            await ref.send(number)
        received = await ref.call(HOW_MANY)
        elapsed = time.perf_counter() - started
        _check("messages consumed", received, count)
    return count / elapsed


async def trio_send(count: int) -> float:
    """Sends on a memory channel to a counting task, until it has consumed them all."""
    Question = tuple[str, trio.MemorySendChannel[int]]
    send_channel, receive_channel = trio.open_memory_channel[int | Question](MAILBOX_CAPACITY)

    async def consume() -> None:
        received = 0
        async with receive_channel:
            async for message in receive_channel:
                if isinstance(message, tuple):
                    await message[1].send(received)
                else:
                    received += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        reply_send, reply_receive = trio.open_memory_channel[int](1)
        started = time.perf_counter()
        for number in range(count):
            await send_channel.send(number)
        await send_channel.send((HOW_MANY, reply_send))
        received = await reply_receive.receive()
        elapsed = time.perf_counter() - started
        _check("messages consumed", received, count)
        await send_channel.aclose()
    return count / elapsed


# spawn + supervise + stop ----------------------------------------------------------------


async def corra_spawn_stop(count: int) -> float:
    """Start idle children of one supervisor, then leave the runtime; actors per second."""
    spec = corra.SupervisorSpec(
        flags=corra.SupervisorFlags(strategy="one_for_one", intensity=1, period=5.0)
    )
    started = time.perf_counter()
    async with corra.open_runtime() as runtime:
        supervisor = await runtime.spawn_supervisor(spec, name="pool")
        for number in range(count):
            await supervisor.start_child(corra.ChildSpec(id=f"a{number}", start=Idle))
        _check("children running", supervisor.count_children().active, count)
    elapsed = time.perf_counter() - started
    return count / elapsed


async def _idle_task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery():
        task_status.started()
        await trio.sleep_forever()


async def trio_spawn_stop(count: int) -> float:
    """Start tasks that each open a nursery and wait, then cancel them; tasks per second."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            await nursery.start(_idle_task)
        nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    return count / elapsed


# memory per idle actor -------------------------------------------------------------------


async def _traced_bytes() -> int:
    """Bytes allocated and still alive, once every task has settled."""
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def corra_idle_memory(count: int) -> float:
    """Bytes per idle actor (its ref kept), by tracemalloc."""
    tracemalloc.start()
    try:
        async with corra.open_runtime() as runtime:
            # Warm up: the first actors of a class fill caches that the rest share.
            warm = [await runtime.spawn(Idle) for _ in range(16)]
            before = await _traced_bytes()
            refs = [await runtime.spawn(Idle) for _ in range(count)]
            after = await _traced_bytes()
            _check("actors spawned", len(refs) + len(warm), count + 16)
    finally:
        tracemalloc.stop()
    return (after - before) / count


async def _wait_for_message(receive_channel: trio.MemoryReceiveChannel[int]) -> None:
    async with receive_channel:
        await receive_channel.receive()


async def trio_idle_memory(count: int) -> float:
    """Bytes per task waiting on its own memory channel (send end kept), by tracemalloc."""
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:

            def spawn() -> trio.MemorySendChannel[int]:
                send_channel, receive_channel = trio.open_memory_channel[int](MAILBOX_CAPACITY)
                nursery.start_soon(_wait_for_message, receive_channel)
                return send_channel

            warm = [spawn() for _ in range(16)]
            before = await _traced_bytes()
            senders = [spawn() for _ in range(count)]
            after = await _traced_bytes()
            _check("tasks spawned", len(senders) + len(warm), count + 16)
            nursery.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    return (after - before) / count


def benchmarks(options: Options) -> list[Benchmark]:
    calls = options.size(20_000, 2_000)
    messages = options.size(50_000, 5_000)
    actors = options.size(10_000, 1_000)
    idle = options.size(2_000, 500)
    return [
        Benchmark(
            name="call",
            unit="calls/s",
            corra=_runner(corra_call, calls),
            baseline=_runner(trio_call, calls),
            goal=0.5,
        ),
        Benchmark(
            name="send",
            unit="msgs/s",
            corra=_runner(corra_send, messages),
            baseline=_runner(trio_send, messages),
            goal=0.5,
        ),
        Benchmark(
            name="spawn_supervise_stop",
            unit="actors/s",
            corra=_runner(corra_spawn_stop, actors),
            baseline=_runner(trio_spawn_stop, actors),
            goal=0.5,
            rounds=5,
        ),
        Benchmark(
            name="idle_memory",
            unit="B/actor",
            corra=_runner(corra_idle_memory, idle),
            baseline=_runner(trio_idle_memory, idle),
            higher_is_better=False,
            aim=5120,
            rounds=3,
        ),
    ]
