"""Suite ``process``: what it costs to keep every process's state on disk.

- ``snapshot_group_commit``: durable snapshots per second through ``Store.save`` from 1,000
  concurrent trio tasks, each saving its own snapshot (about 200 bytes, a process state
  encoded by the codec) over and over. Baseline: the same records written with one durable
  LMDB transaction each, what a store without group commit does. Same disk, same run. Goal:
  20,000 snapshots/s whatever the baseline does (the ratio is reported beside it).
- ``recovery_scan``: seconds to open a store of 10,000 snapshots, all of running processes,
  and decode them all with the codec, as recovery does after a crash (it reads the ``active``
  index and the snapshot of every id in it: with every process active, all of them; paused
  and finished ones it never reads, see ``paused_memory``). Baseline: LMDB opened by hand,
  every value parsed with ``json.loads`` and nothing validated, the least any recovery could
  do. Aim: 2 s.
- ``local_programs_c1``, ``local_programs_c8``: programs of ``true`` per second through a
  durable runtime (``spawn_process`` + ``ref.wait``, a full lifecycle with four transitions,
  every one durable, of which the program waits for three: created, launching and finished,
  or two when the backend offers ``try_acquire_slot``; see ``corra.processes._actor``; a
  chaperone per program), by 1 or 8 concurrent submitters (``max_running=8``).
  Baseline: ``trio.run_process(["true"])`` by as many workers. Goal: 0.8.
- ``local_backend_c1``, ``local_backend_c8``: the `LocalBackend` alone (slot, launch, wait; the
  measurement of ``benchmarks.process_local``) against the same baseline, report only: the
  part of the cost that is the chaperone's, not the runtime's.
- ``lifecycle_vs_plumpy``: processes per second through a three-state lifecycle with a snapshot
  per state: corra's process actors over a backend whose programs end at once, with a
  non-durable runtime (four transitions per process in its history: created, launching,
  running, finished; the backend has a slot free at every submission, so created and
  launching are one write, and three snapshots are written: launching, running, finished),
  against ``plumpy.Process`` subclasses (``run`` -> ``Continue(step2)`` -> finished) that save
  a checkpoint to ``plumpy.InMemoryPersister`` on entering every state (created, running,
  running, finished: four too). Both sides run the processes with `LIFECYCLE_WORKERS`
  concurrent workers, each taking the next process when its last one finished. Goal: 3.
- ``lifecycle_vs_plumpy_durable``: the same with a durable runtime (fsync per group commit)
  against ``plumpy.PicklePersister`` (a pickle file per checkpoint, never fsynced). Report only.
- ``paused_memory``: bytes that 100,000 paused processes add to a runtime: VmRSS of a fresh
  interpreter once ``open_runtime`` has recovered a state dir holding them, minus VmRSS of the
  same code on an empty state dir. Baseline: the same records kept in a dict by the empty
  runtime (what holding paused processes in memory would cost at least). Report only (the aim
  is about zero: paused processes live in LMDB); each round also prints its RssAnon / RssFile
  split on stderr.

Stores live in a scratch directory under ``$CORRA_BENCH_DIR``, by default ``.corra/bench`` in
the current directory (as in ``benchmarks.process_local``: where a runtime's state would be,
and not /tmp, where creating files was found to be slow on some machines). A memory file
system is refused: fsync would cost nothing there. State dirs that runs of programs fill with
run dirs are kept until the interpreter exits (see ``benchmarks.process_local``: on ext4,
inodes deleted in the last minute slow down the next ones created nearby).
"""

from __future__ import annotations

import atexit
import datetime
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import attrs
import lmdb
import trio
import trio.lowlevel

from benchmarks import _process_memory, process_local
from benchmarks._harness import Benchmark, Options
from corra._errors import CorruptRecord
from corra._runtime import RECORD_CODEC, open_runtime
from corra.persistence import Codec, Store, open_store
from corra.processes._lifecycle import Result
from corra.processes._spec import ProcessSpec

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


def kept_scratch(prefix: str) -> Path:
    """A fresh directory that stays until the interpreter exits (not removed between rounds)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


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
    """A store of ``count`` snapshots, all active, written once per run of the suite."""
    directory = Path(tempfile.mkdtemp(prefix="corra-bench-recovery-", dir=scratch_root()))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)

    async def fill() -> None:
        async with open_store(directory, durable=False) as store, trio.open_nursery() as nursery:
            for number in range(count):
                save = functools.partial(store.save, active=True)
                nursery.start_soon(save, f"p{number:05}", snapshot(number))

    trio.run(fill)
    return directory


def _decode_active(store: Store) -> tuple[dict[str, ProcessState], list[str]]:
    records, corrupt = {}, []
    for process_id, raw in store.scan_active():
        try:
            records[process_id] = CODEC.decode(raw)
        except CorruptRecord:
            corrupt.append(process_id)
    return records, corrupt


def corra_recovery(count: int) -> float:
    """Open the store and decode every active snapshot with the codec (in a worker thread,
    as the runtime's recovery does); seconds."""
    directory = recovery_store(count)

    async def recover() -> float:
        started = time.perf_counter()
        async with open_store(directory) as store:
            records, corrupt = await trio.to_thread.run_sync(_decode_active, store)
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


# local_programs ---------------------------------------------------------------------------


async def _workers(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    """``count`` calls of ``one`` by ``concurrency`` workers, each taking the next call as soon
    as its last one returned; calls per second."""
    numbers = itertools.count()

    async def worker() -> None:
        while next(numbers) < count:
            await one()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


async def corra_local_programs(count: int, concurrency: int) -> float:
    """``true`` through a durable runtime: ``spawn_process`` then ``wait``; programs/s."""
    state_dir = await trio.to_thread.run_sync(kept_scratch, "local-programs-")
    async with open_runtime(state_dir=state_dir, max_running=8, durable=True) as runtime:
        # Warm-up outside the figure: starts the zygote, creates the cgroup parents.
        await (await runtime.spawn_process(["true"])).wait()

        async def one() -> None:
            record = await (await runtime.spawn_process(["true"])).wait()
            if record.phase != "finished":
                raise RuntimeError(f"true did not finish: {record}")

        return await _workers(count, concurrency, one)


# lifecycle_vs_plumpy ----------------------------------------------------------------------


class NoopBackend:
    """A `corra.processes._ports.Backend` whose programs end at once, successfully: what is left
    of a process lifecycle is the runtime's own work (actors, transitions, snapshots). It has
    no limit on running programs, so a slot is always free (`try_acquire_slot`)."""

    async def acquire_slot(self, key: str) -> None:
        await trio.lowlevel.checkpoint()

    def try_acquire_slot(self, key: str) -> bool:
        return True  # no limit: a slot is always free

    def release_slot(self, key: str) -> None:
        pass

    def adopt_slot(self, key: str) -> None:
        pass

    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"key": key}  # idempotent by key, trivially

    async def find(self, key: str, host: str | None = None) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return {"key": key}

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        await trio.lowlevel.checkpoint()
        return Result(returncode=0)

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        await trio.lowlevel.checkpoint()
        return Result(signal=15, killed=True)

    async def read_log(
        self, key: str, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""


async def corra_lifecycles(count: int, workers: int, durable: bool) -> float:
    """Process lifecycles over `NoopBackend`; processes per second."""
    state_dir = await trio.to_thread.run_sync(kept_scratch, "lifecycles-")
    backends = {"local": NoopBackend()}
    async with open_runtime(state_dir=state_dir, backends=backends, durable=durable) as runtime:
        await (await runtime.spawn_process(["noop"])).wait()  # warm-up, outside the figure

        async def one() -> None:
            record = await (await runtime.spawn_process(["noop"])).wait()
            if record.phase != "finished":
                raise RuntimeError(f"a no-op process did not finish: {record}")

        return await _workers(count, workers, one)


#: Processes in flight at once, on both sides.
LIFECYCLE_WORKERS = 100


def plumpy_lifecycles(count: int, workers: int, persister: Literal["memory", "pickle"]) -> float:
    """``count`` plumpy processes, ``workers`` at a time, on asyncio; processes per second."""
    from benchmarks import _plumpy_lifecycle

    if persister == "memory":
        return _plumpy_lifecycle.in_memory(count, workers)
    return _plumpy_lifecycle.pickled(count, workers, str(kept_scratch("plumpy-pickles-")))


# paused_memory ----------------------------------------------------------------------------

MEMORY_SCRIPT = Path(_process_memory.__file__)


@functools.cache
def paused_state_dir(count: int) -> Path:
    """A state dir holding ``count`` paused processes, written once per run of the suite
    (straight into the store, 10,000 concurrent saves at a time: a few group commits)."""
    directory = kept_scratch("paused-")

    async def fill() -> None:
        async with open_store(directory, durable=False) as store:
            for start in range(0, count, 10_000):
                async with trio.open_nursery() as nursery:
                    for number in range(start, min(start + 10_000, count)):
                        record = _process_memory.paused_record(number)
                        nursery.start_soon(
                            functools.partial(
                                store.save, record.id, RECORD_CODEC.encode(record), active=False
                            )
                        )

    started = time.perf_counter()
    trio.run(fill)
    print(
        f"process suite: {count:,} paused processes written in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return directory


def _fresh_interpreter(mode: str, state_dir: Path, count: int) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-P", str(MEMORY_SCRIPT), mode, str(state_dir), str(count)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{MEMORY_SCRIPT.name} {mode} failed:\n{completed.stderr}")
    figures: dict[str, float] = json.loads(completed.stdout)
    return figures


def _memory_delta(side: str, mode: str, state_dir: Path, count: int, paused: int) -> float:
    """VmRSS of ``mode`` on ``state_dir`` minus that of the empty runtime, both fresh; bytes."""
    empty = _fresh_interpreter("runtime", kept_scratch("empty-"), 0)
    full = _fresh_interpreter(mode, state_dir, count)
    _check(f"{side}: paused processes counted by recovery", full["inactive"], paused)
    _check(f"{side}: empty runtime recovered", empty["inactive"], 0)
    delta = {name: full[name] - empty[name] for name in ("VmRSS", "RssAnon", "RssFile")}
    print(
        f"process suite: paused_memory {side}: VmRSS {delta['VmRSS'] / 1e6:+.1f} MB "
        f"= RssAnon {delta['RssAnon'] / 1e6:+.1f} MB + RssFile {delta['RssFile'] / 1e6:+.1f} MB "
        f"({delta['VmRSS'] / count:+.0f} B/process); open_runtime took "
        f"{full['recovery_s']:.2f} s (empty: {empty['recovery_s']:.2f} s)",
        file=sys.stderr,
    )
    return float(delta["VmRSS"])


def corra_paused_memory(count: int) -> float:
    """Bytes that ``count`` paused processes in the state dir add to a recovered runtime."""
    return _memory_delta("corra", "runtime", paused_state_dir(count), count, count)


def in_memory_paused_memory(count: int) -> float:
    """Bytes that ``count`` paused records kept in a dict add to an empty runtime."""
    return _memory_delta("in-memory", "in-memory", kept_scratch("empty-"), count, 0)


def _in_trio(function: Callable[[int], Awaitable[float]], size: int) -> Callable[[], float]:
    return lambda: trio.run(function, size)


def _plain(function: Callable[[int], float], size: int) -> Callable[[], float]:
    return lambda: function(size)


def _lifecycles(count: int, workers: int, durable: bool) -> Callable[[], float]:
    return lambda: trio.run(corra_lifecycles, count, workers, durable)


def _local_programs(count: int, concurrency: int) -> Callable[[], float]:
    return lambda: trio.run(corra_local_programs, count, concurrency)


def benchmarks(options: Options) -> list[Benchmark]:
    saves_per_task = options.size(40, 10)
    baseline_snapshots = options.size(1000, 300)
    recovered = options.size(10_000, 2_000)
    programs = {1: options.size(60, 20), 8: options.size(120, 40)}
    lifecycles = options.size(500, 200)
    durable_lifecycles = options.size(300, 100)
    paused = options.size(100_000, 10_000)
    local = [
        Benchmark(
            name=f"local_programs_c{concurrency}",
            unit="programs/s",
            corra=_local_programs(count, concurrency),
            baseline=process_local.trio_local(count, concurrency),
            goal=0.8,
        )
        for concurrency, count in programs.items()
    ] + [
        Benchmark(
            name=f"local_backend_c{concurrency}",
            unit="programs/s",
            corra=process_local.corra_local(count, concurrency),
            baseline=process_local.trio_local(count, concurrency),
            rounds=5,
        )
        for concurrency, count in programs.items()
    ]
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
        *local,
        Benchmark(
            name="lifecycle_vs_plumpy",
            unit="processes/s",
            corra=_lifecycles(lifecycles, LIFECYCLE_WORKERS, False),
            baseline=lambda: plumpy_lifecycles(lifecycles, LIFECYCLE_WORKERS, "memory"),
            goal=3.0,
            rounds=5,
        ),
        Benchmark(
            name="lifecycle_vs_plumpy_durable",
            unit="processes/s",
            corra=_lifecycles(durable_lifecycles, LIFECYCLE_WORKERS, True),
            baseline=lambda: plumpy_lifecycles(durable_lifecycles, LIFECYCLE_WORKERS, "pickle"),
            rounds=5,
        ),
        Benchmark(
            name="paused_memory",
            unit="B",
            corra=lambda: corra_paused_memory(paused),
            baseline=lambda: in_memory_paused_memory(paused),
            higher_is_better=False,
            rounds=2,
        ),
    ]
