"""Where the time of a local program goes in a runtime: a diagnostic for ``local_programs_*``.

Not a suite (nothing is compared against a baseline here). ``python -m
benchmarks.process_breakdown [--programs N] [--rounds R]`` runs ``true`` through
``open_runtime`` by 1 and 8 submitters, as ``local_programs_c1`` and ``local_programs_c8``
do, in four variants (durable store or not, cgroups or not:
``LocalBackend(cgroups="off")``, passed in as the runtime's backend), in interleaved
rounds, and prints the medians of:

- ``programs/s``;
- ``launch``: `Backend.launch` as the process actor sees it: the zygote forks a chaperone,
  which claims the run dir, creates a cgroup and joins it, spawns the program, leaves the
  cgroup, writes program.pid and reports on its pipe;
- ``wait``: `Backend.wait`, until the chaperone's exit message (event-driven: a pipe);
- ``commit``: time the store's writer thread spent in write transactions (the commit and, for
  a durable store, its fsyncs), per program; ``commits`` per program (4 transitions each, fewer
  when group commit batches concurrent ones, or when one write carries two of them);
- ``waited``: durable writes per program that its submitter or its process actor waited for,
  one after the other (``Store.save``; a write in the background, ``Store.save_nowait``, is not
  waited for);
- ``spawn``: ``spawn_process`` (the submission's durable write and the actor's start);
- ``loop CPU``: CPU time of the event loop's thread per program (actors, supervisor, codec,
  the backend's work on the loop), against the wall time per program.

``--floor`` prints instead, without corra, the floor of any runtime that makes its launch
intent durable before the launch: bare ``trio.run_process(["true"])`` after one durable LMDB
commit, and between two, as ratios to bare ``trio.run_process`` (`floor_run`).

Only the store is instrumented from outside (wrappers around ``Store._commit`` and
``Store.save`` in this interpreter); nothing in corra is changed. The backend is wrapped to time
it (every method of the `Backend` protocol passed on).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time
from collections.abc import Mapping
from typing import Any

import lmdb
import trio

from benchmarks.process import kept_scratch
from corra._runtime import open_runtime
from corra.backends.local import LocalBackend
from corra.persistence import _store
from corra.processes._backend import BackendBase, EffectKey, LaunchRequest
from corra.processes._lifecycle import Result

_COMMITS: list[float] = []
_original_commit = _store.Store._commit
_WAITED: list[int] = [0]
_original_save = _store.Store.save


def _timed_commit(self: _store.Store, batch: list[Any]) -> None:
    started = time.perf_counter()
    try:
        _original_commit(self, batch)
    finally:
        _COMMITS.append(time.perf_counter() - started)


async def _counted_save(self: _store.Store, *args: Any, **kwargs: Any) -> None:
    _WAITED[0] += 1
    await _original_save(self, *args, **kwargs)


class TimedBackend(BackendBase):
    """`LocalBackend`, with the time of every launch and wait written down."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    async def acquire_slot(self, key: EffectKey) -> None:
        await self.inner.acquire_slot(key)

    def try_acquire_slot(self, key: EffectKey) -> bool:
        return self.inner.try_acquire_slot(key)

    def release_slot(self, key: EffectKey) -> None:
        self.inner.release_slot(key)

    def adopt_slot(self, key: EffectKey) -> None:
        self.inner.adopt_slot(key)

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await self.inner.launch(request)
        finally:
            self.times["launch"].append(time.perf_counter() - started)

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        return await self.inner.log_size(key, stream, host)

    async def find(self, key: EffectKey, host: str | None = None) -> dict[str, Any] | None:
        return await self.inner.find(key, host)

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        started = time.perf_counter()
        try:
            return await self.inner.wait(handle)
        finally:
            self.times["wait"].append(time.perf_counter() - started)

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        return await self.inner.kill(handle, grace)

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        return await self.inner.read_log(key, stream, offset, size, host)


async def one_run(count: int, concurrency: int, durable: bool, cgroups: str) -> dict[str, float]:
    """``count`` programs of ``true``; per-program figures in milliseconds, and programs/s."""
    state_dir = await trio.to_thread.run_sync(kept_scratch, "breakdown-")
    inner = LocalBackend(state_dir / "runs", max_running=8, cgroups=cgroups)  # type: ignore[arg-type]
    backend = TimedBackend(inner)
    spawns: list[float] = []
    async with (
        inner,
        open_runtime(state_dir=state_dir, durable=durable, backends={"local": backend}) as runtime,
    ):
        await (await runtime.spawn_process(["true"])).wait()  # zygote, cgroup parents
        backend.times.clear()
        _COMMITS.clear()
        _WAITED[0] = 0
        numbers = itertools.count()

        async def worker() -> None:
            while next(numbers) < count:
                started = time.perf_counter()
                ref = await runtime.spawn_process(["true"])
                spawns.append(time.perf_counter() - started)
                record = await ref.wait()
                if record.phase != "finished":
                    raise RuntimeError(f"true did not finish: {record}")

        started, cpu = time.perf_counter(), time.thread_time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        commits = list(_COMMITS)
        waited = _WAITED[0]
    return {
        "programs/s": count / wall,
        "wall": wall / count * 1e3,
        "launch": statistics.mean(backend.times["launch"]) * 1e3,
        "wait": statistics.mean(backend.times["wait"]) * 1e3,
        "commit": sum(commits) / count * 1e3,
        "commits": len(commits) / count,
        "waited": waited / count,
        "spawn": statistics.mean(spawns) * 1e3,
        "loop CPU": cpu / count * 1e3,
    }


VARIANTS = [
    ("durable, cgroups", True, "auto"),
    ("durable, no cgroups", True, "off"),
    ("not durable, cgroups", False, "auto"),
    ("not durable, no cgroups", False, "off"),
]


async def floor_run(count: int, concurrency: int, commits: int) -> float:
    """Programs/s of bare ``trio.run_process(["true"])``, each after ``commits`` durable commits.

    The floor of any runtime that writes its intent durably before a launch (write-ahead) and,
    with ``commits=2``, its outcome after the exit: one small LMDB write transaction per commit,
    committed with LMDB's default durability (as corra's durable store), on the same disk as
    the runs, made on the event loop's thread (cheapest at concurrency 1; at 8 it stalls the
    other submitters, as no group commit shares it). Nothing of corra is involved.
    """
    state_dir = await trio.to_thread.run_sync(kept_scratch, "floor-")
    environment = lmdb.open(str(state_dir / "floor.lmdb"), map_size=1 << 26)
    numbers = itertools.count()

    def commit(number: int, attempt: int) -> None:
        with environment.begin(write=True) as transaction:
            transaction.put(b"%d.%d" % (number, attempt), b"x" * 300)

    async def worker() -> None:
        while (number := next(numbers)) < count:
            for attempt in range(commits):
                if attempt == 1:
                    await trio.run_process(["true"])
                commit(number, attempt)  # on the loop's thread: no thread hop at all
            if commits < 2:
                await trio.run_process(["true"])

    started = time.perf_counter()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    finally:
        environment.close()
    return count / (time.perf_counter() - started)


FLOORS = [
    ("trio.run_process", 0),
    ("1 durable commit + run", 1),
    ("commit + run + commit", 2),
]


def floors(count: int, rounds: int) -> None:
    """Print the write-ahead floor (`floor_run`) as ratios to bare ``trio.run_process``."""
    for concurrency in (1, 8):
        samples: dict[str, list[float]] = collections.defaultdict(list)
        for round_number in range(rounds + 1):
            order = FLOORS if round_number % 2 == 0 else FLOORS[::-1]
            for name, commits in order:
                rate = trio.run(floor_run, count, concurrency, commits)
                if round_number:
                    samples[name].append(rate)
        bare = statistics.median(samples[FLOORS[0][0]])
        print(f"\nfloor c{concurrency}: {count} programs, medians of {rounds} rounds")
        for name, _ in FLOORS:
            rate = statistics.median(samples[name])
            print(f"{name:24s}{rate:11.1f}/s   ratio to bare {rate / bare:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.process_breakdown")
    parser.add_argument("--programs", type=int, default=60, help="programs per run (c8: twice)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--floor", action="store_true", help="only the write-ahead floor, without corra"
    )
    args = parser.parse_args()
    if args.floor:
        floors(args.programs * 4, args.rounds)
        return
    _store.Store._commit = _timed_commit  # type: ignore[method-assign]
    _store.Store.save = _counted_save  # type: ignore[method-assign]
    for concurrency in (1, 8):
        count = args.programs * (2 if concurrency > 1 else 1)
        samples: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
        for round_number in range(args.rounds + 1):  # the first round is a warm-up
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]
            for name, durable, cgroups in order:
                figures = trio.run(one_run, count, concurrency, durable, cgroups)
                if round_number:
                    samples[name].append(figures)
        print(f"\nc{concurrency}: {count} programs of `true`, medians of {args.rounds} rounds")
        columns = list(next(iter(samples.values()))[0])
        print(f"{'':24s}" + "".join(f"{column:>11s}" for column in columns))
        for name, _, _ in VARIANTS:
            medians = [statistics.median(s[column] for s in samples[name]) for column in columns]
            print(f"{name:24s}" + "".join(f"{value:11.2f}" for value in medians))
    print("\nall but programs/s, commits and waited are milliseconds per program")


if __name__ == "__main__":
    main()
