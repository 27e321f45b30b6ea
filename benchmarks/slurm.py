"""Suite ``slurm``: `SchedulerBackend` with `Slurm`, on a real single-node Slurm.

The suite starts its own cluster (as the tests do, `tests._slurm`: munged, slurmctld and
slurmd on free ports in a scratch dir, nothing written outside it) on first use, and stops it
(every job cancelled, the daemons stopped by their pids) and removes the scratch dir when the
interpreter exits. Where no cluster can be started (Slurm or munge not installed) the suite
skips: it prints the reason on stderr and measures nothing. corra talks to the cluster
through a `LocalTransport` whose environment names the cluster's ``slurm.conf``, as
``tests/test_slurm.py`` does. Every job is submitted held (``--hold``), so that the node runs
nothing and the figures are the queue's and corra's alone.

- ``squeue_per_poll_1``, ``squeue_per_poll_100``, ``squeue_per_poll_1000``: ``squeue`` calls
  per poll interval that corra's poller makes while that many held jobs (submitted through
  corra once, before the rounds and outside them; 1,000 take about 10 s) are watched by as
  many `SchedulerBackend.wait` tasks (``poll_interval`` 0.5 s). Each round opens a backend,
  starts the waits, skips the first poll (it may start before every watch is in), then times
  the next 8 polls (4 with ``--quick``) with the ``squeue`` count of `Slurm.calls`, from the
  start of one ``squeue`` to the start of the 8th after it: calls per interval = polls /
  (elapsed / poll_interval). No launch runs meanwhile (a launch may also run ``squeue``, to
  find its key). The poller sleeps a whole interval after each poll, so the figure is a
  little under 1 (the ``squeue`` itself takes its time). Aim: <= 1, whatever the number of
  jobs. The baseline is one ``squeue`` per watched job per interval, what a watcher per job
  does, so the ratio is about the number of jobs.
- ``submit_throughput``: held jobs per second submitted one after another through corra
  (``launch``: run dir, job script, ``sbatch --parsable``) vs a plain loop of
  ``sbatch --parsable`` of one job script written beforehand, rendered by the same `Slurm`
  with the same options, through the same `LocalTransport`, so that the only difference is
  corra's own work per job (look for the key, make the run dir, render and write the
  script). The host's submission token bucket is opened wide (`SUBMIT_RATE`): with
  `BatchHost`'s defaults (a burst of 30, then 2 submissions per second, like Slurm's own rate
  limiter) corra would submit 200 jobs in about 85 s, slower than the loop by design. Goal:
  0.8. Each side cancels its jobs after its round, outside the figure; a corra round also
  checks that it ran one ``sbatch`` per launch and no other Slurm command.

Run it as ``python -m benchmarks --suite slurm`` (about 2 minutes; ``--quick``: 4 polls per
round instead of 8 and 100 jobs per throughput round instead of 200, about 1 minute; the 1,000
held jobs are the same in both). It needs ``slurm-wlm`` and ``munge`` (``apt-get install
slurm-wlm munge``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from benchmarks._harness import Benchmark, Options
from corra.backends._pollers import open_host_pollers
from corra.backends.batch import BatchHost, JobHandle, SchedulerBackend
from corra.backends.slurm import Slurm, SlurmOptions
from corra.backends.transport import LocalTransport
from corra.processes._backend import EffectKey, LaunchRequest
from tests import _slurm

#: Seconds between polls while jobs are watched.
POLL_INTERVAL = 0.5
#: Submissions per second (and burst) of the host's token bucket: wide open, see the docstring.
SUBMIT_RATE = 100_000
#: Every job is submitted held, so that the node runs nothing.
HELD = SlurmOptions(extra=("--hold",))

_CLUSTER: list[_slurm.SlurmCluster] = []
_KEYS = itertools.count()
_HELD_JOBS: list[JobHandle] = []
"""The held jobs that the ``squeue_per_poll_*`` benchmarks watch (their handles)."""


def job() -> LaunchRequest:
    """A held ``true`` on the cluster, under a key never used before: every launch submits."""
    return LaunchRequest(key=new_key(), argv=("true",), host="cluster", options=HELD)


def cluster() -> _slurm.SlurmCluster:
    """The suite's cluster, started on first use."""
    if not _CLUSTER:
        reason = _slurm.unavailable()
        if reason is not None:
            raise RuntimeError(f"suite slurm needs Slurm: {reason}")
        # munged wants every directory above its socket searchable by all (mkdtemp's is 0700)
        scratch = Path(tempfile.mkdtemp(prefix="corra-bench-slurm-"))
        scratch.chmod(0o755)
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # runs after the stop
        started = time.perf_counter()
        running = _slurm.SlurmCluster(scratch).start()
        atexit.register(running.stop)
        print(
            f"slurm suite: cluster up in {time.perf_counter() - started:.1f} s ({scratch})",
            file=sys.stderr,
        )
        _CLUSTER.append(running)
    return _CLUSTER[0]


def transport() -> LocalTransport:
    return LocalTransport(env={"SLURM_CONF": str(cluster().conf)})


def backend() -> contextlib.AbstractAsyncContextManager[SchedulerBackend]:
    """A backend for the suite's cluster (``async with``), its bucket wide open."""
    host = BatchHost(
        name="cluster",
        transport=transport(),
        work_root=str(cluster().scratch / "jobs"),
        poll_interval=POLL_INTERVAL,
        submit_rate=SUBMIT_RATE,
        submit_burst=SUBMIT_RATE,
    )
    return open_host_pollers(SchedulerBackend({"cluster": host}, Slurm()))


def new_key() -> EffectKey:
    """A key never used before in this run: every launch submits."""
    return EffectKey(f"bench-{next(_KEYS)}", 1)


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        cluster().run("scancel", *job_ids)


def pending_count() -> int:
    return len(cluster().run("squeue", "-h", "-t", "PENDING", "-o", "%i").split())


# -- squeue per poll interval ------------------------------------------------------------


def held_jobs(count: int) -> list[JobHandle]:
    """Exactly ``count`` held jobs in the queue, submitted through corra (not measured)."""
    if len(_HELD_JOBS) != count:
        cancel([handle.job_id for handle in _HELD_JOBS])
        _HELD_JOBS.clear()

        async def submit() -> list[JobHandle]:
            async with backend() as submitter:
                return [await submitter.launch(job()) for _ in range(count)]

        started = time.perf_counter()
        _HELD_JOBS.extend(trio.run(submit))
        print(
            f"slurm suite: {count} held jobs submitted through corra in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        pending = pending_count()
        if pending != count:
            raise RuntimeError(f"expected {count} pending jobs, squeue shows {pending}")
    return list(_HELD_JOBS)


def drop_held_jobs() -> None:
    cancel([handle.job_id for handle in _HELD_JOBS])
    _HELD_JOBS.clear()


async def _squeue_per_interval(handles: list[JobHandle], polls: int) -> float:
    async with backend() as watcher:
        calls = watcher.scheduler.calls

        async def reached(target: int) -> float:
            # a counter corra exposes, with no event to wait on: look every 2 ms
            while calls.get("squeue", 0) < target:  # noqa: ASYNC110
                await trio.sleep(0.002)
            return time.perf_counter()

        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(watcher.wait, handle)
            with trio.fail_after(30 + 4 * polls * POLL_INTERVAL):
                # the first poll may start before every watch is in: count from the second
                first = calls.get("squeue", 0) + 2
                started = await reached(first)
                ended = await reached(first + polls)
            nursery.cancel_scope.cancel()
        return polls / ((ended - started) / POLL_INTERVAL)


def corra_squeue_per_interval(count: int, polls: int) -> float:
    """``squeue`` calls per poll interval while ``count`` held jobs are watched."""
    return trio.run(_squeue_per_interval, held_jobs(count), polls)


# -- submission throughput ------------------------------------------------------------------


async def _corra_submit(count: int) -> tuple[float, list[str]]:
    async with backend() as submitter:
        # the first launch makes the work root: outside the figure, as the loop's script is
        job_ids = [(await submitter.launch(job())).job_id]
        started = time.perf_counter()
        for _ in range(count):
            job_ids.append((await submitter.launch(job())).job_id)
        rate = count / (time.perf_counter() - started)
        calls = submitter.scheduler.calls
        if calls != {"sbatch": count + 1}:
            raise RuntimeError(f"expected one sbatch per launch and nothing else, ran {calls}")
        return rate, job_ids


def corra_submit(count: int) -> float:
    """Held jobs per second, launched one after another through the backend."""
    drop_held_jobs()
    rate, job_ids = trio.run(_corra_submit, count)
    cancel(job_ids)
    return rate


async def _plain_submit(count: int) -> tuple[float, list[str]]:
    run_dir = cluster().scratch / "plain"
    run_dir.mkdir(exist_ok=True)
    script = run_dir / "job.sh"
    script.write_text(
        Slurm().render(
            "plain.1",
            ("true",),
            run_dir=str(run_dir),
            work_dir=str(run_dir / "work"),
            options=HELD,
            env={"CORRA_PROCESS_ID": "plain", "CORRA_PROCESS_NAME": "plain", "CORRA_ATTEMPT": "1"},
        )
    )
    script.chmod(0o755)
    local = transport()
    job_ids = []
    started = time.perf_counter()
    for _ in range(count):
        result = await local.run(["sbatch", "--parsable", str(script)], check=True)
        job_ids.append(result.stdout.decode().strip().split(";")[0])
    return count / (time.perf_counter() - started), job_ids


def plain_submit(count: int) -> float:
    """Held jobs per second from a plain ``sbatch --parsable`` loop."""
    drop_held_jobs()
    rate, job_ids = trio.run(_plain_submit, count)
    cancel(job_ids)
    return rate


def benchmarks(options: Options) -> list[Benchmark]:
    reason = _slurm.unavailable()
    if reason is not None:
        print(f"suite slurm skipped: {reason}", file=sys.stderr)
        return []
    polls = options.size(8, 4)
    submissions = options.size(200, 100)
    watched = [
        Benchmark(
            name=f"squeue_per_poll_{count}",
            unit="squeue/interval",
            corra=functools.partial(corra_squeue_per_interval, count, polls),
            baseline=functools.partial(float, count),
            higher_is_better=False,
            aim=1.0,
            rounds=3,
        )
        for count in (1, 100, 1000)
    ]
    return [
        *watched,
        Benchmark(
            name="submit_throughput",
            unit="jobs/s",
            corra=lambda: corra_submit(submissions),
            baseline=lambda: plain_submit(submissions),
            goal=0.8,
        ),
    ]
