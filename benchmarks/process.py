"""Suite ``process``: what it costs to keep every process's state on disk.

- ``snapshot_group_commit``: durable snapshots per second through ``Store.save`` from 1,000
  concurrent trio tasks, each saving its own snapshot (about 200 bytes, a process state
  encoded by the codec) over and over. Baseline: the same records written with one durable
  LMDB transaction each, what a store without group commit does. Same disk, same run. Goal:
  20,000 snapshots/s whatever the baseline does (the ratio is reported beside it).
- ``recovery_scan``: seconds to open a store of 10,000 snapshots and decode them all with the
  codec, as recovery does after a crash. Baseline: LMDB opened by hand, every value parsed
  with ``json.loads`` and nothing validated, the least any recovery could do. Aim: 2 s.

Stores live in a scratch directory under ``$CORRA_BENCH_DIR``, by default ``.corra/bench`` in
the current directory (as in ``benchmarks.process_local``: where a runtime's state would be,
and not /tmp, where creating files was found to be slow on some machines). A memory file
system is refused: fsync would cost nothing there.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import attrs
import lmdb
import trio

from benchmarks._harness import Benchmark, Options
from corra.persistence import Codec, open_store

TASKS = 1000
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})


# A realistic snapshot --------------------------------------------------------------------


@attrs.frozen
class Spec:
    argv: tuple[str, ...]
    cwd: str
    host: str | None = None


@attrs.frozen
class ProcessState:
    phase: Literal["created", "launching", "running", "paused", "finished"]
    spec: Spec
    attempt: int
    key: str
    started: datetime.datetime | None = None
    pid: int | None = None


CODEC = Codec(ProcessState, 1)


def snapshot(number: int) -> bytes:
    """The encoded state of process ``number``: about 200 bytes."""
    state = ProcessState(
        phase="running",
        spec=Spec(
            argv=("python", "sim.py", f"{number:05}.toml"),
            cwd=f"/home/ana/runs/{number:05}",
            host="login1",
        ),
        attempt=1,
        key=f"p{number:08x}-1",
        started=datetime.datetime(2025, 3, 1, 12, 0, number % 60, tzinfo=datetime.UTC),
        pid=40_000 + number,
    )
    return CODEC.encode(state)


# Scratch space on a real disk ------------------------------------------------------------


def _file_system_type(path: Path) -> str | None:
    """The type of the file system ``path`` is on, from /proc/mounts (None if unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved, best, kind = path.resolve(), -1, None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = Path(fields[1].replace("\\040", " "))
        if resolved.is_relative_to(mount_point) and len(mount_point.parts) > best:
            best, kind = len(mount_point.parts), fields[2]
    return kind


@functools.cache
def scratch_root() -> Path:
    root = Path(os.environ.get("CORRA_BENCH_DIR") or Path(".corra", "bench"))
    root.mkdir(parents=True, exist_ok=True)
    kind = _file_system_type(root)
    if kind in MEMORY_FILE_SYSTEMS:
        raise RuntimeError(f"{root} is on {kind}: fsync would cost nothing there")
    print(f"process suite: stores in {root} ({kind or 'unknown file system'})", file=sys.stderr)
    return root


@contextmanager
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="corra-bench-", dir=scratch_root()))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: got {got!r}, expected {expected!r}")


# snapshot_group_commit -------------------------------------------------------------------


async def corra_group_commit(saves_per_task: int) -> float:
    """1,000 tasks, each saving its own snapshot ``saves_per_task`` times; snapshots/s."""
    records = [snapshot(number) for number in range(TASKS)]

    async def keep_saving(store, number: int) -> None:
        for _ in range(saves_per_task):
            await store.save(f"p{number:05}", records[number])

    with scratch() as directory:
        async with open_store(directory, durable=True) as store:
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for number in range(TASKS):
                    nursery.start_soon(keep_saving, store, number)
            elapsed = time.perf_counter() - started
            statistics = store.statistics()
            _check("snapshots written", statistics.records_written, TASKS * saves_per_task)
    return TASKS * saves_per_task / elapsed


def lmdb_transaction_per_snapshot(count: int) -> float:
    """The same records, one durable LMDB transaction each; snapshots/s."""
    records = [(f"p{number:05}".encode(), snapshot(number % TASKS)) for number in range(count)]
    with scratch() as directory:
        env = lmdb.open(str(directory / "state.lmdb"), map_size=64 << 20, sync=True, metasync=True)
        try:
            started = time.perf_counter()
            for key, record in records:
                with env.begin(write=True) as txn:
                    txn.put(key, record)
            elapsed = time.perf_counter() - started
            _check("snapshots written", env.stat()["entries"], min(count, TASKS))
        finally:
            env.close()
    return count / elapsed


# recovery_scan ---------------------------------------------------------------------------


@functools.cache
def recovery_store(count: int) -> Path:
    """A store of ``count`` snapshots, written once per run of the suite."""
    directory = Path(tempfile.mkdtemp(prefix="corra-bench-recovery-", dir=scratch_root()))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)

    async def fill() -> None:
        async with open_store(directory, durable=False) as store, trio.open_nursery() as nursery:
            for number in range(count):
                nursery.start_soon(store.save, f"p{number:05}", snapshot(number))

    trio.run(fill)
    return directory


def corra_recovery(count: int) -> float:
    """Open the store and decode every snapshot with the codec (in a worker thread, as the
    runtime does); seconds."""
    directory = recovery_store(count)

    async def recover() -> float:
        started = time.perf_counter()
        async with open_store(directory) as store:
            records, corrupt = await trio.to_thread.run_sync(store.scan_decoded, CODEC)
            elapsed = time.perf_counter() - started
        _check("snapshots decoded", (len(records), len(corrupt)), (count, 0))
        return elapsed

    return trio.run(recover)


def lmdb_json_recovery(count: int) -> float:
    """Open LMDB by hand and json.loads every snapshot, validating nothing; seconds."""
    directory = recovery_store(count)
    started = time.perf_counter()
    env = lmdb.open(str(directory / "state.lmdb"), max_dbs=8, readonly=True, lock=True)
    try:
        with env.begin() as txn:
            snapshots = env.open_db(b"snapshots", txn=txn, create=False)
            decoded = [json.loads(value) for _, value in txn.cursor(db=snapshots)]
        elapsed = time.perf_counter() - started
    finally:
        env.close()
    _check("snapshots parsed", len(decoded), count)
    return elapsed


def _in_trio(function: Callable[[int], Awaitable[float]], size: int) -> Callable[[], float]:
    return lambda: trio.run(function, size)


def _plain(function: Callable[[int], float], size: int) -> Callable[[], float]:
    return lambda: function(size)


def benchmarks(options: Options) -> list[Benchmark]:
    saves_per_task = options.size(40, 10)
    baseline_snapshots = options.size(1000, 300)
    recovered = options.size(10_000, 2_000)
    return [
        Benchmark(
            name="snapshot_group_commit",
            unit="snapshots/s",
            corra=_in_trio(corra_group_commit, saves_per_task),
            baseline=_plain(lmdb_transaction_per_snapshot, baseline_snapshots),
            aim=20_000,
            rounds=5,
        ),
        Benchmark(
            name="recovery_scan",
            unit="s",
            corra=_plain(corra_recovery, recovered),
            baseline=_plain(lmdb_json_recovery, recovered),
            higher_is_better=False,
            aim=2.0,
            rounds=5,
        ),
    ]
