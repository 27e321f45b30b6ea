"""Measurements for suite ``process`` (local programs): `LocalBackend` against bare trio.

Each figure is programs per second of ``true``, launched and waited for, by ``concurrency``
workers that each take the next program as soon as their last one ended:

- corra: ``acquire_slot``, ``launch`` (a request to the root's shared chaperone, which claims
  the run dir by renaming a spare one into place, spawns the program in a cgroup of its own and
  answers on the backend's connection), ``wait`` (the exit record on the same connection, sent
  once exit.json is in place, before it is made durable), ``release_slot``;
- baseline: ``trio.run_process(["true"])``.

Every measurement runs in its own ``trio.run``, with a fresh root under ``$CORRA_BENCH_DIR``
(default ``.corra/bench`` in the current directory, where a runtime's state would be). Roots are
removed when the interpreter exits, not between rounds: on ext4 without a journal (as on the
machines this was written on) every inode deleted in the last minutes (up to five, while its
inode table block is not written back) makes the next inode allocation in its group slower
(``recently_deleted``), so deleting one round's run dirs would slow the next round down; /tmp
there was slow for the same reason (a file took 1-1.5 ms to create, against 0.04 ms elsewhere
on the disk). For the same reason a run that starts minutes after another one pays for that
one's cleanup (the shared chaperone makes its run dirs ahead of need, but they cost CPU all
the same): leave a few minutes between runs.

The suite is not registered here: `benchmarks` builds it from these functions.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from corra.backends.local import LocalBackend
from corra.processes._backend import EffectKey, LaunchRequest

TRUE = ("true",)


_ROOTS: list[str] = []


def _scratch() -> str:
    parent = os.environ.get("CORRA_BENCH_DIR") or os.path.join(".corra", "bench")
    os.makedirs(parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="local-", dir=parent)
    if not _ROOTS:
        atexit.register(_remove_roots)
    _ROOTS.append(root)
    return root


def _remove_roots() -> None:
    while _ROOTS:
        shutil.rmtree(_ROOTS.pop(), ignore_errors=True)


async def _run_workers(
    count: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> float:
    numbers = itertools.count()

    async def worker() -> None:
        while (number := next(numbers)) < count:
            await one(number)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


async def corra_local_true(count: int, concurrency: int, **backend_options: object) -> float:
    """``true`` through `LocalBackend` (launch, wait, with a slot); programs per second."""
    root = await trio.to_thread.run_sync(_scratch)
    async with LocalBackend(root, **backend_options) as backend:  # type: ignore[arg-type]
        # Warm-up outside the figure: starts the shared chaperone, creates the cgroup parents.
        await backend.wait(await backend.launch(LaunchRequest(EffectKey("warm-up", 1), TRUE)))

        async def one(number: int) -> None:
            key = EffectKey(str(number), 1)
            await backend.acquire_slot(key)
            try:
                result = await backend.wait(await backend.launch(LaunchRequest(key, TRUE)))
            finally:
                backend.release_slot(key)
            if result.returncode != 0:
                raise RuntimeError(f"true failed: {result}")

        return await _run_workers(count, concurrency, one)


async def trio_run_process_true(count: int, concurrency: int) -> float:
    """``true`` through ``trio.run_process``; programs per second."""

    async def one(number: int) -> None:
        await trio.run_process(["true"])

    return await _run_workers(count, concurrency, one)


def corra_local(count: int, concurrency: int, **backend_options: object) -> Callable[[], float]:
    """A measurement (for `benchmarks._harness.Benchmark`) of `corra_local_true`."""
    return lambda: trio.run(lambda: corra_local_true(count, concurrency, **backend_options))


def trio_local(count: int, concurrency: int) -> Callable[[], float]:
    """A measurement (for `benchmarks._harness.Benchmark`) of `trio_run_process_true`."""
    return lambda: trio.run(trio_run_process_true, count, concurrency)


def medians(count: int = 200, rounds: int = 5, **backend_options: object) -> dict[str, float]:
    """Medians of interleaved rounds at concurrency 1 and 8, and their ratios (corra / trio)."""
    figures: dict[str, float] = {}
    for concurrency in (1, 8):
        corra_rounds, trio_rounds = [], []
        sides = [
            (corra_rounds, corra_local(count, concurrency, **backend_options)),
            (trio_rounds, trio_local(count, concurrency)),
        ]
        for _, measurement in sides:
            measurement()  # warm-up, discarded
        for round_number in range(rounds):
            for samples, measurement in sides if round_number % 2 == 0 else sides[::-1]:
                samples.append(measurement())
        corra_figure = statistics.median(corra_rounds)
        trio_figure = statistics.median(trio_rounds)
        figures[f"corra_c{concurrency}"] = corra_figure
        figures[f"trio_c{concurrency}"] = trio_figure
        figures[f"ratio_c{concurrency}"] = corra_figure / trio_figure
    return figures


if __name__ == "__main__":
    for cgroups in ("auto", "off"):
        for name, value in medians(cgroups=cgroups).items():
            print(f"cgroups={cgroups:<4}  {name:>10}  {value:10.2f}")
