"""Suite ``hyperqueue``: `HyperQueueBackend` on a real HyperQueue server and worker.

The suite starts its own server and worker on first use (`tests._hq.start_server`: the wheel's
``LocalCluster`` in a process of its own, on a scratch server dir, the worker with as many
cores as this process may use) and stops it (by its pid) and removes the scratch dir when the
interpreter exits. Where the ``hyperqueue`` wheel is missing the suite skips: it prints the
reason on stderr and measures nothing. corra is opened as the runtime opens it
(`corra.testing.open_plugin`, a host with ``transport = "hyperqueue"`` whose table names the
server dir), its poll interval `POLL_INTERVAL`, its submission token bucket opened wide
(`SUBMIT_RATE`; the host's defaults, 1,000 per second after a burst of 1,000, would not
throttle these 1,000 tasks either).

- ``tasks_per_second``: 1,000 ``true`` tasks (200 with ``--quick``) from the first launch to
  the last result. corra: each task a trio task that launches then waits, all at once, as the
  1,000 process actors of a runtime given 1,000 processes would (the helper answers one
  request at a time, so the submissions queue there, while the worker runs the first tasks);
  each task runs ``true`` under corra's task wrapper (`corra.chaperone.task_job`, shipped
  once into the run root and imported by a ``python3 -I -S -c`` launcher, as the backend
  runs it). The helper is started, and has said hello, before the clock starts (a
  runtime's helper lives as long as it does), as the baseline's client has connected.
  Baseline: the wheel's own client (``hyperqueue.Client``) submits 1,000 jobs of one ``true``
  task each (as corra does: one job per attempt), no output files, then ``wait_for_jobs``
  for them all; in a process of its own (the client holds the GIL while it waits), timed
  inside it, once connected. Same server, same worker. Goal: 0.8. ``wait_for_jobs`` looks
  once a second (measured: 10, 50 and 200 tasks all take 1.02 to 1.09 s), so the baseline's
  figure is its time rounded up to about the next second: this favours corra, whose poller
  looks every `POLL_INTERVAL`. On stderr, per round, where the time goes, measured: the
  tasks' CPU (the worker's reaped children: the server process's ``cutime + cstime`` in
  ``/proc``; wrapper and ``true`` for corra, ``true`` alone for the baseline), the server's
  and worker's own CPU, corra's process CPU and the helper's, per task; how the machine's
  CPUs spent the round (``/proc/stat``: ours, other processes', idle); the helper's requests
  by kind, with their round trip (the wait for the helper not in it); when the last
  submission returned. The baseline's round also times one job of 1,000 tasks (a task array,
  what HyperQueue is made for), as a second reference, outside its figure. Once, before the
  first round: the wrapper alone, ``true`` under it 40 times one after another, against
  ``true`` alone.
- ``tasks_per_second_no_wrapper``: report only, a diagnostic. The same, but each task runs
  `no_wrapper`'s ``sh`` line instead of the task wrapper: the program, then an exit record
  of its status, all the backend reads of a task (no claim, no kill, no timeout): what the
  backend costs apart from the wrapper, the ratio a wrapper that cost nothing would give.
- ``status_requests_per_interval_1``, ``_100``, ``_1000``: ``poll`` requests per poll interval
  (`HqHelper.polls`; one poll is one request to the server, for every watched job) while
  corra watches that many queued tasks, each awaited by a `HyperQueueBackend.wait` task. The
  tasks ask for a resource no worker has (`QUEUED`: ``gpus = 1``), so they stay queued (the
  server keeps them until it stops); they are launched through corra once, before the rounds
  and outside them (1,000 take a few seconds). Each round opens a backend, starts the waits,
  skips the first poll (it may start before every watch is in), then times the next 8 polls
  (4 with ``--quick``), from the start of one to the start of the 8th after it: requests per
  interval = polls / (elapsed / poll_interval). The poller sleeps a whole interval after each
  poll, so the figure is a little under 1. Aim: <= 1, whatever the number of tasks. The
  baseline is one status request per watched task per interval (a watcher per task), as
  suite ``slurm``'s ``squeue_per_poll``: the ratio is about the number of tasks.

Run it as ``python -m benchmarks --suite hyperqueue`` (about 6 minutes; ``--quick``: 200 tasks
per throughput round instead of 1,000, 4 polls per round instead of 8, about 1.5 minutes; the
1,000 queued tasks are the same in both). It needs the ``hyperqueue`` wheel (the ``test``
extra). With ``--quick`` the baseline's figure is mostly its one-second tick (200 tasks take
1.0 s).

Figures, on 2 cores (quiet: no other tests beside it), ``python -m benchmarks --suite
hyperqueue`` (git f2cdb58, 2026-12-07 21:55 UTC: the wrapper shipped once into the run root,
started with posix_spawnp, ended without Python's teardown)::

    benchmark                          corra  baseline  unit                ratio  goal     verdict
    tasks_per_second                     125       441  tasks/s              0.28  >= 0.80  MISS
    tasks_per_second_no_wrapper          249       303  tasks/s              0.82  -        -
    status_requests_per_interval_1     0.993         1  requests/interval    1.01  aim <= 1 ok
    status_requests_per_interval_100   0.988       100  requests/interval  101.21  aim <= 1 ok
    status_requests_per_interval_1000  0.965     1,000  requests/interval 1036.23  aim <= 1 ok

(at fa16085, with the wrapper's source in every task's argv and other tests beside it: 0.19,
0.80; the same status figures).

- Throughput: 0.28, a MISS, and the task wrapper is what costs it. corra took 6.4 to 8.7 s
  for 1,000 tasks, the baseline 2.2 to 2.3 s. The tasks' CPU was 8.2 to 10.2 ms per task
  under the wrapper against 1.2 to 1.4 ms for ``true`` alone: at least 4.1 to 5.1 s of the 2
  cores for the tasks alone, twice the baseline's whole time, so no ratio above about 0.5 can
  be had here with a Python process per task, whatever the rest does. The wrapper alone,
  outside HyperQueue: 8.7 ms wall, 8.0 ms of CPU per ``true`` (``true`` alone: 0.8 ms, 0.7
  ms), about 6 ms of it the interpreter's own start (``python3 -I -S -c pass``; at fa16085,
  with its source compiled by every task, 21.6 ms). The rest, per task: corra's process 0.7
  to 1.8 ms of CPU, the helper 0.2 ms, the server and worker 0.9 to 1.7 ms against 0.7 to
  0.9 ms for the baseline's tasks. The 1,000 submissions went through the helper one at a
  time, the last one 1.1 to 2.5 s after the start, while the worker ran the first tasks.
- Without the wrapper (``tasks_per_second_no_wrapper``): 0.82 (0.80 at fa16085), corra 4.0
  to 4.2 s against 3.2 to 3.4 s, the tasks' CPU 2.0 ms per task. There the submissions took most of
  the time: the last returned 2.2 to 2.6 s after the start (1.4 to 1.6 ms per round
  trip to the helper, one at a time, and corra's run dir work between them); and a poll's
  ``forget`` of the jobs over (one request to the server per job, as the wheel's client has
  no other) held the helper 19 to 44 ms each at fa16085, the submissions waiting behind it
  (since: 50 jobs forgotten per poll at most).
- Status requests: one poll per interval, 0.96 to 0.99 whatever the number of watched tasks
  (a poll of 1,000 job ids takes 4 to 5 ms); the baseline, a request per task, is 1 to 1,000.
  While tasks end, each poll is followed by a ``forget`` of those over (above): two helper
  requests per interval, the ``forget`` one server request per job that ended.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from benchmarks._harness import Benchmark, Options
from corra.backends.hyperqueue import PLUGIN, HqHandle, HyperQueueHostOptions, HyperQueueOptions
from corra.backends.ssh import HostConfig
from corra.chaperone import task_job
from corra.processes._backend import EffectKey, LaunchRequest
from corra.testing import open_plugin
from tests import _hq

#: The server's ``[hosts.NAME]``.
HOST = "hq"
#: Seconds between two polls of the server while tasks are watched.
POLL_INTERVAL = 0.5
#: Submissions per second (and burst) of the host's token bucket: wide open, see above.
SUBMIT_RATE = 100_000
#: Tasks that stay queued: no worker has a GPU.
QUEUED = HyperQueueOptions(resources={"gpus": 1})
#: Clock ticks per second of /proc's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")

#: A request's op, at the start of its line (`HqHelper.call` writes ``{"id": N, "op": ...``).
_OP = re.compile(rb'"op": "(\w+)"')

_SERVER: list[_hq.HqServer] = []
_KEYS = itertools.count()
_QUEUED: list[HqHandle] = []
"""The queued tasks that the ``status_requests_per_interval_*`` benchmarks watch."""
_WRAPPER_MEASURED: list[bool] = []
"""Whether `wrapper_alone` has measured the wrapper (once, before the first corra round)."""

#: The baseline's program: the wheel's client, submitting and waiting in a process of its own.
#: Argv: server dir, server pid, task count, cwd. Prints one JSON line of figures.
_BASELINE = """
import json, sys, time
from hyperqueue import Client, Job

server_dir, server_pid, count, cwd = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def server_cpu():
    fields = open(f"/proc/{server_pid}/stat").read().rsplit(")", 1)[1].split()
    return [int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])]

def machine():
    times = [int(field) for field in open("/proc/stat").readline().split()[1:9]]
    return [sum(times) - times[3] - times[4], times[3] + times[4]]

def job(tasks):
    job = Job(default_workdir=cwd, max_fails=1)
    for _ in range(tasks):
        job.program(["true"], stdout=None, stderr=None)
    return job

def run(jobs, tasks):
    before, cpu, machine_before = server_cpu(), time.process_time(), machine()
    started = time.perf_counter()
    submitted = [client.submit(job(tasks)) for _ in range(jobs)]
    if not client.wait_for_jobs(submitted, raise_on_error=False):
        raise SystemExit("some task failed")
    elapsed = time.perf_counter() - started
    cpu, after, machine_after = time.process_time() - cpu, server_cpu(), machine()
    for done in submitted:
        client.forget(done)
    return {"elapsed": elapsed, "client_cpu": cpu,
            "server_ticks": after[0] - before[0], "task_ticks": after[1] - before[1],
            "busy_ticks": machine_after[0] - machine_before[0],
            "idle_ticks": machine_after[1] - machine_before[1]}

client = Client(server_dir)
print(json.dumps({"jobs": run(count, 1), "array": run(1, count)}))
"""


def server() -> _hq.HqServer:
    """The suite's server and worker, started on first use."""
    if not _SERVER:
        reason = _hq.available()
        if reason is not None:
            raise RuntimeError(f"suite hyperqueue needs HyperQueue: {reason}")
        scratch = Path(tempfile.mkdtemp(prefix="corra-bench-hq-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # runs after the stop
        started = time.perf_counter()
        running = _hq.start_server(scratch / "hq", cores=cores())
        atexit.register(running.stop)
        print(
            f"hyperqueue suite: server and a worker of {cores()} cores up in "
            f"{time.perf_counter() - started:.1f} s ({scratch})",
            file=sys.stderr,
        )
        _SERVER.append(running)
    return _SERVER[0]


def cores() -> int:
    """The worker's cores: the CPUs this process may use."""
    return len(os.sched_getaffinity(0))


def scratch(name: str) -> Path:
    """A dir of the suite's scratch dir (made 0700 if need be)."""
    path = server().server_dir.parent.parent / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def backend(state: str) -> Any:
    """The backend on the suite's server (``async with``), as the runtime opens it, its
    state in the suite's state dir ``state``."""
    settings = HyperQueueHostOptions(
        server_dir=str(server().server_dir),
        poll_interval=POLL_INTERVAL,
        submit_rate=SUBMIT_RATE,
        submit_burst=SUBMIT_RATE,
    )
    host = HostConfig(name=HOST, transport="hyperqueue", options={"hyperqueue": settings})
    return open_plugin(PLUGIN, scratch(state), hosts={HOST: host})


def task(options: HyperQueueOptions | None = None) -> LaunchRequest:
    """A ``true`` task under a key never used before: every launch submits."""
    key = EffectKey(f"bench-{next(_KEYS)}", 1)
    return LaunchRequest(key=key, argv=("true",), host=HOST, options=options)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """A process's own CPU (user + system) and its reaped children's, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def machine_ticks() -> tuple[int, int]:
    """The machine's CPU time, all CPUs, in clock ticks: busy, and idle (or waiting for IO)."""
    times = [int(field) for field in Path("/proc/stat").read_text().split()[1:9]]
    return sum(times) - times[3] - times[4], times[3] + times[4]


def per_task_ms(ticks: float, count: int) -> str:
    return f"{ticks / TICKS * 1000 / count:.1f} ms"


# -- tasks per second ---------------------------------------------------------------------


async def _corra_tasks(count: int) -> float:
    requests = [task() for _ in range(count)]
    async with backend("throughput") as hq:
        host = hq.host(HOST)
        helper = await host.connect()  # started and hello'd: outside the figure
        assert helper is not None
        trips: Counter[str] = Counter()
        busy: Counter[str] = Counter()
        exchange = helper._exchange

        async def timed(process: trio.Process, request_id: int, line: bytes) -> dict[str, Any]:
            # one request's round trip through the helper, its wait for the helper not in it
            op = _OP.search(line[:100])
            started = time.perf_counter()
            try:
                return await exchange(process, request_id, line)
            finally:
                name = op.group(1).decode() if op else "?"
                trips[name] += 1
                busy[name] += time.perf_counter() - started

        helper._exchange = timed  # type: ignore[method-assign]
        submitted: list[float] = []

        async def one(request: LaunchRequest) -> None:
            handle = await hq.launch(request)
            submitted.append(time.perf_counter())
            result = await hq.wait(handle)
            if result.returncode != 0:
                raise RuntimeError(f"{request.key}: {result}")

        server_before = cpu_ticks(server().pid)
        helper_before = cpu_ticks(helper.pid)[0] if helper.pid else 0
        cpu, machine_before = time.process_time(), machine_ticks()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(one, request)
        elapsed = time.perf_counter() - started
        cpu, machine_after = time.process_time() - cpu, machine_ticks()
        server_after = cpu_ticks(server().pid)
        helper_cpu = (cpu_ticks(helper.pid)[0] if helper.pid else 0) - helper_before
    shutil.rmtree(scratch("throughput"), ignore_errors=True)  # the run dirs: outside the figure
    task_ticks, server_ticks = (
        server_after[1] - server_before[1],
        server_after[0] - server_before[0],
    )
    ours = (task_ticks + server_ticks + helper_cpu) / TICKS + cpu
    through = ", ".join(
        f"{trips[op]} {op} ({busy[op] / trips[op] * 1000:.1f} ms each)" for op in sorted(trips)
    )
    print(
        f"hyperqueue suite: corra, {count} tasks in {elapsed:.2f} s "
        f"(last submission returned at {max(submitted) - started:.2f} s): tasks' CPU "
        f"{per_task_ms(task_ticks, count)} per task (at least "
        f"{task_ticks / TICKS / cores():.1f} s on {cores()} cores), server and "
        f"worker {per_task_ms(server_ticks, count)}, corra {cpu * 1000 / count:.1f} ms, "
        f"helper {per_task_ms(helper_cpu, count)}; {others(machine_before, machine_after, ours)}"
        f"; through the helper, one at a time: {through}",
        file=sys.stderr,
    )
    return count / elapsed


def others(before: tuple[int, int], after: tuple[int, int], ours: float) -> str:
    """How the machine's CPUs spent a round: ours (seconds), other processes', idle."""
    busy, idle = (after[0] - before[0]) / TICKS, (after[1] - before[1]) / TICKS
    return (
        f"the machine's CPUs meanwhile {busy:.1f} s busy ({ours:.1f} s ours, "
        f"{busy - ours:.1f} s other processes'), {idle:.1f} s idle"
    )


def corra_tasks(count: int, *, wrapper: bool = True) -> float:
    """``true`` tasks per second through corra's backend, launched and awaited; without
    ``wrapper``, each task runs `no_wrapper`'s line instead of corra's task wrapper."""
    if not _WRAPPER_MEASURED:
        wrapper_alone()
        _WRAPPER_MEASURED.append(True)
    if wrapper:
        return trio.run(_corra_tasks, count)
    argv, task_job.argv = task_job.argv, no_wrapper  # (the backend calls task_job.argv)
    try:
        return trio.run(_corra_tasks, count)
    finally:
        task_job.argv = argv


def no_wrapper(run_dir: str, grace: float, timeout: float | None, program: Any, **_: Any) -> Any:
    """In place of `task_job.argv`, for ``tasks_per_second_no_wrapper`` only: the program,
    then its exit status written as the exit record the backend reads, by ``sh``."""
    line = '"$@"; printf \'{"returncode": %d}\' "$?" > "$0/exit.json"'
    return ["sh", "-c", line, run_dir, *program]


def wrapper_alone(runs: int = 40) -> None:
    """Print what the task wrapper costs on its own, outside HyperQueue: ``true`` under it
    (as a worker runs it, with the worker's ``python3``) ``runs`` times one after another,
    against ``true`` alone, each started from here."""
    venv_bin = str(Path(sys.executable).parent)  # first on the worker's PATH (`tests._hq`)
    python = shutil.which("python3", path=os.pathsep.join([venv_bin, os.environ["PATH"]]))
    root = scratch("wrapper")
    library = task_job.ship(str(root / ".corra"))  # (as the backend ships it)

    def wrapped(number: int) -> list[str]:
        run_dir = root / str(number)
        run_dir.mkdir(mode=0o700)
        return task_job.argv(
            str(run_dir), 10.0, None, ["true"], python=python or "python3", library=library
        )

    def each(argv: Callable[[int], list[str]]) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        for number in range(runs):
            subprocess.run(argv(number), check=True, stdin=subprocess.DEVNULL)
        wall = (time.perf_counter() - started) / runs
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return wall * 1000, cpu / runs * 1000

    (wrapped_wall, wrapped_cpu), (plain_wall, plain_cpu) = each(wrapped), each(lambda _: ["true"])
    shutil.rmtree(root, ignore_errors=True)
    print(
        f"hyperqueue suite: the task wrapper alone, {runs} times ``true`` under it: "
        f"{wrapped_wall:.1f} ms wall, {wrapped_cpu:.1f} ms CPU each (``true`` alone: "
        f"{plain_wall:.1f} ms, {plain_cpu:.1f} ms)",
        file=sys.stderr,
    )


def plain_tasks(count: int) -> float:
    """``true`` tasks per second from the wheel's client, 1 job per task, in a process of
    its own (one job of ``count`` tasks printed beside it)."""
    hq = server()
    cwd = scratch("plain")
    completed = subprocess.run(
        [sys.executable, "-c", _BASELINE, str(hq.server_dir), str(hq.pid), str(count), str(cwd)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, TQDM_DISABLE="1", RUST_BACKTRACE="0"),
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the baseline failed: {completed.stderr[-2000:]}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    jobs, array = figures["jobs"], figures["array"]
    ours = (jobs["task_ticks"] + jobs["server_ticks"]) / TICKS + jobs["client_cpu"]
    print(
        f"hyperqueue suite: baseline, {count} jobs of 1 task in {jobs['elapsed']:.2f} s: "
        f"tasks' CPU {per_task_ms(jobs['task_ticks'], count)} per task, server and worker "
        f"{per_task_ms(jobs['server_ticks'], count)}, client "
        f"{jobs['client_cpu'] * 1000 / count:.1f} ms; "
        f"{others((0, 0), (jobs['busy_ticks'], jobs['idle_ticks']), ours)}; "
        f"1 job of {count} tasks in "
        f"{array['elapsed']:.2f} s ({count / array['elapsed']:.0f} tasks/s)",
        file=sys.stderr,
    )
    return count / jobs["elapsed"]


# -- status requests per poll interval ------------------------------------------------------


def queued_tasks(count: int) -> list[HqHandle]:
    """``count`` queued tasks of the suite's (`QUEUED`), launched through corra as needed
    (not measured): the first ``count`` of all launched so far."""
    if len(_QUEUED) < count:

        async def top_up() -> None:
            async with backend("queued") as hq:
                while len(_QUEUED) < count:
                    _QUEUED.append(await hq.launch(task(QUEUED)))

        started = time.perf_counter()
        trio.run(top_up)
        print(
            f"hyperqueue suite: {len(_QUEUED)} queued tasks, launched through corra in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    return _QUEUED[:count]


async def _requests_per_interval(handles: list[HqHandle], polls: int) -> float:
    async with backend("queued") as hq:
        host = hq.host(HOST)

        async def reached(target: int) -> float:
            # a counter corra exposes, with no event to wait on: look every 2 ms
            while host.helper is None or host.helper.polls < target:  # noqa: ASYNC110
                await trio.sleep(0.002)
            return time.perf_counter()

        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(hq.wait, handle)
            with trio.fail_after(30 + 4 * polls * POLL_INTERVAL):
                await reached(1)
                # the first poll may start before every watch is in: count from the second
                first = host.helper.polls + 1
                started = await reached(first)
                ended = await reached(first + polls)
            nursery.cancel_scope.cancel()
        return polls / ((ended - started) / POLL_INTERVAL)


def corra_requests_per_interval(count: int, polls: int) -> float:
    """Status requests per poll interval while ``count`` queued tasks are watched."""
    return trio.run(_requests_per_interval, queued_tasks(count), polls)


def benchmarks(options: Options) -> list[Benchmark]:
    reason = _hq.available()
    if reason is not None:
        print(f"suite hyperqueue skipped: {reason}", file=sys.stderr)
        return []
    tasks = options.size(1000, 200)
    polls = options.size(8, 4)
    watched = [
        Benchmark(
            name=f"status_requests_per_interval_{count}",
            unit="requests/interval",
            corra=functools.partial(corra_requests_per_interval, count, polls),
            baseline=functools.partial(float, count),
            higher_is_better=False,
            aim=1.0,
            rounds=3,
        )
        for count in (1, 100, 1000)
    ]
    return [
        # (first: the queued tasks of the others stay in the server until it stops)
        Benchmark(
            name="tasks_per_second",
            unit="tasks/s",
            corra=functools.partial(corra_tasks, tasks),
            baseline=functools.partial(plain_tasks, tasks),
            goal=0.8,
        ),
        Benchmark(
            name="tasks_per_second_no_wrapper",
            unit="tasks/s",
            corra=functools.partial(corra_tasks, tasks, wrapper=False),
            baseline=functools.partial(plain_tasks, tasks),
            rounds=3,
        ),
        *watched,
    ]
