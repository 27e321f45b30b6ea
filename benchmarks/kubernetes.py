"""Suite ``kubernetes``: `KubernetesBackend` on a real control plane (kube-apiserver 1.20.2).

The suite starts its own cluster on first use (`benchmarks._kube_cluster`: etcd, apiserver,
controller-manager, scheduler and corra's stand-in node, by ``scripts/kube-test-cluster.sh``
in a scratch dir, as the tests do) and stops it (by its pids) and removes the scratch dir when
the interpreter exits. Where the control plane cannot be had (not built on this machine, and
not buildable) the suite skips: it prints the reason on stderr and measures nothing. corra is
opened as the runtime opens it (`corra.testing.open_plugin`, a host with ``transport =
"kubernetes"``), or as a whole durable runtime (the latency).

- ``api_requests_per_minute_1``, ``_100``, ``_1000``: API requests per minute while corra
  watches that many Jobs (launched through corra once, before the rounds and outside them;
  1,000 take about a minute, and the Job controller a few more to make their pods), each
  awaited by a `KubernetesBackend.wait` task. Every Job's pod has a node selector no node
  matches (`NOWHERE`), so it stays Pending (unschedulable): the stand-in node could not run
  1,000 pods (it offers 110, as a kubelet does by default), and Kubernetes 1.20 has no
  ``suspend``. Such Jobs are watched as running ones are: corra lists and watches them and
  their pods all the same. (A running pod adds one request of its own, the long-lived
  ``follow`` of its log; see the note below.) The apiserver counts the requests, on its
  ``/metrics`` (``apiserver_request_total``), read before and after the window by a client of
  the suite's own: the metric has no label for the client, so only the series that can be
  corra's are summed (JSON requests for Jobs and pods, not cluster-wide, not ``pods/status``:
  the controllers and scheduler speak protobuf, the stand-in node watches cluster-wide and
  writes statuses; with nothing of corra open they stay still). corra's own count
  (`Cluster.requests`) is printed beside it, with the split by kind, how long a relist took
  and the longest stall of corra's event loop. The watch's resync is `RESYNC` (5 s, the
  default is 300 s): at the default a window of a few minutes would see no request at all
  once the watch is open; with 5 s it sees one relist and one watch of each kind per period,
  4 requests, whatever the number of Jobs. Each round opens a backend, starts the waits,
  and counts from the middle of the period after the first relist to the middle of the 6th
  period after it (3 with ``--quick``): every list and every watch (which the apiserver counts
  once it ends, at the next relist) in between is counted once. The period is the resync
  plus the relist itself, which grows with the number of Jobs, so the figure falls a little
  as the number grows. Aim: at most 1.2 times 4 requests per period (the goal of the issue:
  the 1,000 figure at most 1.2 times the 1 figure). The baseline is what a poller per Job
  makes: one GET per Job per period (`RESYNC`).
- ``submit_throughput``: Jobs per second launched one after another through corra
  (`KubernetesBackend.launch`: its intent and then its handle written durably, the create,
  the log shipping task started) vs a plain loop of lightkube ``create`` of the same
  manifests (`job_manifest`, with the same options) through a client opened the same way
  (`open_cluster`: corra's client settings and request hooks). The host's write token bucket
  is opened wide (`benchmarks._kube_cluster.WIDE_OPEN`): with its defaults (a burst of 20,
  then 10 writes per second) corra would submit 200 Jobs in about 18 s, slower than the loop
  by design. The first launch and the first create (the client's connection, corra's watch)
  are outside the figure. The pods stay Pending (`NOWHERE`); each round starts and ends with
  an empty namespace (outside the figure), so that no round pays for the Job controller's
  work of another. Goal: 0.8. A corra round checks that it made one create per launch and
  prints what else it asked (a GET of a Job its watch had not seen yet, by a log shipping
  task).
- ``status_latency_p50``, ``_p99``: milliseconds from a program's end to the change of its
  process's record to finished (the return of ``ProcessRef.wait``), through a durable runtime
  (`corra.open_runtime` with the cluster as a host), for 40 programs (20 with ``--quick``)
  that each end 3 s + 0.1 s x their index after they start (their ends spread out), run by
  the stand-in node as ``sh -c 'sleep S; date +%s.%N > MARKS/$CORRA_PROCESS_ID'``: the program
  writes the wall-clock time it ends at, in nanoseconds, on the same machine. Pods' own
  timestamps have whole seconds only. On stderr, the medians of the parts: to corra's watch
  (the node's and the apiserver's part: the node reaps the program and patches the pod's
  status), to the backend's result (logs home, result written), to the record (the runtime's
  durable transition). The baseline is the least any watcher gets: the same programs in Jobs
  created by a plain lightkube loop, the moment a plain lightkube watch of their pods sees
  the container terminated. Report only (the issue sets no goal).

Found while writing this suite: a running pod's log is followed by one HTTP/1.1 request that
stays open while it runs, and lightkube's httpx client allowed 100 connections: with 104
pods running (sleeps on the stand-in node, launched through the backend), the next launch
failed after 10 s with ``PoolTimeout`` (as would every delete and relist). Fixed in
`corra.backends.kubernetes._client` (``LIMITS``: no bound on connections), with
``tests/test_kube_client.py::test_requests_go_through_while_more_than_a_hundred_streams_are_open``.

Run it as ``python -m benchmarks --suite kubernetes`` (about 17 minutes; ``--quick``: 3
resync periods per round instead of 6, 100 Jobs per throughput round instead of 200 and 20
programs per latency round instead of 40, about 12 minutes; the 1,000 watched Jobs are
the same in both). It needs the control plane built by ``scripts/kube-test-cluster.sh build``
(once per machine, about 6 minutes; ``make test`` does it) and ``etcd-server``.

Figures, on 2 cores shared with other work (two helpers' tests), the apiserver on loopback,
``python -m benchmarks --suite kubernetes`` (git bf8f817, 2026-12-07 21:09 UTC)::

    benchmark                     corra  baseline  unit           ratio  goal or aim  verdict
    api_requests_per_minute_1      47.9        12  requests/min    0.25  aim <= 57.6  ok
    api_requests_per_minute_100    47.4     1,200  requests/min   25.31  aim <= 57.6  ok
    api_requests_per_minute_1000   41.5    12,000  requests/min  289.35  aim <= 57.6  ok
    submit_throughput               106       181  jobs/s          0.59  >= 0.80      MISS
    status_latency_p50              152      14.1  ms              0.09  -            -
    status_latency_p99              198      29.8  ms              0.15  -            -

(at f80bca1: 47.8, 47, 39.5 requests/min; 0.50; p50 154 ms, p99 314 ms).

- Requests: 4 per resync period with 1, 100 and 1,000 Jobs (a list and a watch of each kind),
  by the apiserver's count and by corra's alike, nothing else: the 1,000 figure is 0.87 times
  the 1 figure (goal <= 1.2). Per minute it falls with the number because a relist of 1,000
  Jobs and their pods takes about a second, and the event loop stalls after it: a relist
  wakes every wait and every log shipping task whose Job or pods changed.
- Submission: 0.59, a MISS. corra took 7.4 to 11.3 ms per launch against 5.5 ms per create.
  Measured apart (``corra_submit`` and ``plain_submit`` interleaved, with each part of
  ``launch`` timed): the create itself takes 0.4 ms longer beside corra's watch (the
  apiserver, on the same 2 cores, serves the watch's events of every new Job and pod); the
  durable intent (a directory, a file, its fsync, a rename) 0.7 to 0.9 ms, 0.3 ms of it the
  fsync, the rest the file system's metadata work, which is slow on this machine (an
  ``open(O_CREAT)`` 0.1 to 0.3 ms); the handle's unsynced write 0.2 to 0.3 ms; starting the
  attempt's log shipping and the watch's events 0.1 to 0.8 ms. With the intent unsynced and
  the handle written in the background (neither acceptable: the issue asks for the intent
  durable before the create) the ratio was still 0.54 to 0.80 (median about 0.7), and
  corra's process used 2.2 to 3 ms of CPU per launch against 1.15 ms for the plain loop.
- Latency: the medians of a round's parts were 24 ms from the program's end to corra's
  watch (what the baseline's watch gets too: the node's reaping and patch, the apiserver),
  120 ms from there to the backend's result (the log shipping, by its code: its stream ends
  before the watch says the container ended, so it looks again every 0.1 s and asks once
  more, to be sure the log is complete), 6 to 8 ms to the record (the durable transition).
"""

from __future__ import annotations

import functools
import itertools
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from benchmarks import _kube_cluster as kube
from benchmarks._harness import Benchmark, Options
from corra import open_runtime
from corra.backends.kubernetes import PLUGIN, KubeHandle, KubernetesBackend, KubernetesOptions
from corra.backends.kubernetes._attempts import AttemptFiles
from corra.backends.kubernetes._client import open_cluster
from corra.backends.kubernetes._manifest import job_manifest
from corra.backends.kubernetes._watch import NamespaceWatch
from corra.processes._backend import EffectKey, LaunchRequest
from corra.testing import open_plugin

#: Seconds between two relists of corra's watch while Jobs are watched (default: 300).
RESYNC = 5.0
#: Requests corra makes per resync: a list and a watch, of Jobs and of pods.
PER_RESYNC = 4
#: A node selector no node matches: the Jobs' pods stay Pending (unschedulable).
NOWHERE = KubernetesOptions(node_selector={"corra.bench/node": "nowhere"})
#: Namespaces: the watched Jobs, the submissions, the latency rounds.
WATCHED, SUBMITTED, LATENCY = "bench-watched", "bench-submitted", "bench-latency"
#: Seconds a latency round's first program sleeps; each next one sleeps `STAGGER` more.
FIRST_END, STAGGER = 3.0, 0.1

_KEYS = itertools.count()
_WATCHED: list[KubeHandle] = []
"""The Jobs that the ``api_requests_per_minute_*`` benchmarks watch (their handles)."""


def new_key(prefix: str = "bench") -> EffectKey:
    """A key never used before in this run: every launch creates a Job."""
    return EffectKey(f"{prefix}-{next(_KEYS)}", 1)


def pending(argv: tuple[str, ...] = ("sleep", "3600")) -> LaunchRequest:
    """A Job whose pod stays Pending (`NOWHERE`), under a new key."""
    return LaunchRequest(key=new_key(), argv=argv, host=kube.HOST, options=NOWHERE)


def state_dir(name: str) -> Path:
    path = kube.scratch() / "state" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def backend(state: str, namespace: str, **options: object) -> Any:
    """The kubernetes backend on the suite's cluster (``async with``), as the runtime opens
    it, its state in the suite's state dir ``state``."""
    hosts = {kube.HOST: kube.host(namespace, **options)}
    return open_plugin(PLUGIN, state_dir(state), hosts=hosts)


# -- API requests per minute while Jobs are watched -------------------------------------


def watched_jobs(count: int) -> list[KubeHandle]:
    """Exactly ``count`` Jobs of one corra instance in `WATCHED`, their pods Pending,
    launched through corra (not measured)."""
    if len(_WATCHED) > count:
        drop_watched()

    async def top_up() -> None:
        async with kube.admin() as client:
            await kube.make_namespace(client, WATCHED)
            started = time.perf_counter()
            async with backend("watched", WATCHED) as launcher:
                while len(_WATCHED) < count:
                    _WATCHED.append(await launcher.launch(pending()))
            launched = time.perf_counter()
            await kube.settled(client, WATCHED, count, patience=60 + count / 5)
            print(
                f"kubernetes suite: {count} watched Jobs: launched through corra in "
                f"{launched - started:.1f} s, all their pods made in "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )

    if len(_WATCHED) < count:
        trio.run(top_up)
    return list(_WATCHED)


def drop_watched() -> None:
    async def drop() -> None:
        async with kube.admin() as client:
            await kube.empty(client, WATCHED)

    if _WATCHED:
        trio.run(drop)
    _WATCHED.clear()


async def _relisted(watch: NamespaceWatch, target: int) -> None:
    # a counter corra exposes, with no event to wait on: look every 5 ms
    while watch.relists < target:  # noqa: ASYNC110
        await trio.sleep(0.005)


async def _requests_per_minute(handles: list[KubeHandle], periods: int) -> float:
    relists: list[float] = []
    stalls = [0.0]
    relist = NamespaceWatch._relist

    async def timed_relist(watch: NamespaceWatch) -> tuple[str, str]:
        started = time.perf_counter()
        try:
            return await relist(watch)
        finally:
            relists.append(time.perf_counter() - started)

    async def ticker() -> None:
        # how long the event loop kept a 10 ms sleep waiting, at most
        while True:
            started = time.perf_counter()
            await trio.sleep(0.01)
            stalls[0] = max(stalls[0], time.perf_counter() - started - 0.01)

    NamespaceWatch._relist = timed_relist  # type: ignore[method-assign]
    try:
        async with (
            kube.admin() as client,
            backend("watched", WATCHED, resync=RESYNC) as watcher,
            trio.open_nursery() as nursery,
        ):
            for handle in handles:
                nursery.start_soon(watcher.wait, handle)
            watch = await watcher.watch(kube.HOST)
            cluster = await watcher.cluster(kube.HOST)
            with trio.fail_after(60 + periods * RESYNC * 4):
                # from the middle of one resync period to the middle of another: every
                # relist (a list of each kind) and every watch (counted by the apiserver
                # once it ends, at the next relist) in between is counted once
                await _relisted(watch, watch.relists + 1)
                await trio.sleep(RESYNC / 2)
                first = watch.relists
                server_before = await kube.corra_requests(client)
                client_before = Counter(cluster.requests)
                relists.clear()
                nursery.start_soon(ticker)
                started = time.perf_counter()
                await _relisted(watch, first + periods)
                await trio.sleep(RESYNC / 2)
                elapsed = time.perf_counter() - started
                server = await kube.corra_requests(client) - server_before
                corra = Counter(cluster.requests) - client_before
            nursery.cancel_scope.cancel()
    finally:
        NamespaceWatch._relist = relist  # type: ignore[method-assign]
    per_minute = server.total() * 60 / elapsed
    print(
        f"kubernetes suite: {len(handles)} Jobs watched for {elapsed:.1f} s ({periods} "
        f"resyncs): {per_minute:.1f} requests/min at the apiserver {dict(sorted(server.items()))}"
        f", corra counted {corra.total() * 60 / elapsed:.1f}/min {dict(sorted(corra.items()))}; "
        f"a relist took {statistics.median(relists):.2f} s (median), the event loop stalled "
        f"{stalls[0]:.2f} s at most",
        file=sys.stderr,
    )
    return per_minute


def corra_requests_per_minute(count: int, periods: int) -> float:
    """API requests per minute, counted by the apiserver, while ``count`` Jobs are watched."""
    return trio.run(_requests_per_minute, watched_jobs(count), periods)


def poller_requests_per_minute(count: int) -> float:
    """What a poller per Job makes: one GET per Job per `RESYNC`."""
    return count * 60 / RESYNC


# -- submission throughput ----------------------------------------------------------------


def _submitted_rate(side: Callable[[int], Any], count: int) -> float:
    """Run one submission round (``side``: Jobs per second), then empty `SUBMITTED`
    (outside the figure) so that no round pays for the Job controller's work of another."""

    async def round_() -> float:
        async with kube.admin() as client:
            await kube.make_namespace(client, SUBMITTED)
            await kube.empty(client, SUBMITTED)
            rate = await side(count)
            await kube.empty(client, SUBMITTED)
            return rate

    drop_watched()
    return trio.run(round_)


_ROUNDS = itertools.count()


async def _corra_submit(count: int) -> float:
    spent = Counter[str]()  # seconds in the attempts' durable writes, and in the watch's events
    write, apply = AttemptFiles._write, NamespaceWatch._apply

    def timed(function: Callable[..., None], what: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            function(*args, **kwargs)
            spent[what] += time.perf_counter() - started

        return call

    AttemptFiles._write = timed(write, "writes")  # type: ignore[method-assign]
    NamespaceWatch._apply = timed(apply, "watch events")  # type: ignore[method-assign]
    try:
        async with backend(f"submit-{next(_ROUNDS)}", SUBMITTED) as submitter:
            # the first launch opens the client and the watch: outside the figure, as the
            # plain loop's first create
            await submitter.launch(pending())
            cluster = await submitter.cluster(kube.HOST)
            before = Counter(cluster.requests)
            spent.clear()
            started = time.perf_counter()
            for _ in range(count):
                await submitter.launch(pending())
            elapsed = time.perf_counter() - started
            made = Counter(cluster.requests) - before
    finally:
        AttemptFiles._write, NamespaceWatch._apply = write, apply  # type: ignore[method-assign]
    per_launch = ", ".join(f"{what} {spent[what] / count * 1000:.1f} ms" for what in spent)
    print(
        f"kubernetes suite: {count} launches, {elapsed / count * 1000:.1f} ms each, of which "
        f"{per_launch}; requests: {dict(made)}",
        file=sys.stderr,
    )
    if made["POST jobs"] != count:
        raise RuntimeError(f"expected one create per launch, made {dict(made)}")
    return count / elapsed


def corra_submit(count: int) -> float:
    """Jobs per second launched one after another through the backend (`launch`)."""
    return _submitted_rate(_corra_submit, count)


async def _plain_submit(count: int) -> float:
    options = attrs.evolve(NOWHERE, image="busybox")  # (corra's: the host's default image)
    manifests = [
        job_manifest(pending(), options, instance="corra-plain", namespace=SUBMITTED)
        for _ in range(count + 1)
    ]
    async with open_cluster(kube.host(SUBMITTED)) as cluster:  # (corra's client and settings)
        await cluster.client.create(Job.from_dict(manifests[0]))
        started = time.perf_counter()
        for manifest in manifests[1:]:
            await cluster.client.create(Job.from_dict(manifest))
        return count / (time.perf_counter() - started)


def plain_submit(count: int) -> float:
    """Jobs per second from a plain loop of lightkube creates of the same manifests."""
    return _submitted_rate(_plain_submit, count)


# -- latency from a pod's status change to corra's record -----------------------------------


def program(marks: Path, index: int) -> tuple[str, ...]:
    """A program that ends `FIRST_END` + ``index`` x `STAGGER` seconds after it starts (the
    ends of a round spread out: latency, not a burst's throughput, is measured) and writes
    the time it ends at (wall clock, nanoseconds) into ``marks``, named by its process id."""
    seconds = FIRST_END + index * STAGGER
    return ("sh", "-c", f'sleep {seconds:.1f}; date +%s.%N > {marks}/"$CORRA_PROCESS_ID"')


def _ended(marks: Path, process_id: str) -> float:
    return float((marks / process_id).read_text())


def _terminated(pod: dict[str, Any]) -> str | None:
    """The process id of ``pod`` (from its environment) if its container has terminated."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not any((status.get("state") or {}).get("terminated") for status in statuses):
        return None
    env = pod["spec"]["containers"][0].get("env") or []
    return next((var["value"] for var in env if var["name"] == "CORRA_PROCESS_ID"), None)


def _marks() -> Path:
    (kube.scratch() / "marks").mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(dir=kube.scratch() / "marks"))


async def _latency_round(side: Callable[[Path, int], Any], count: int) -> list[float]:
    async with kube.admin() as client:
        await kube.make_namespace(client, LATENCY)
        await kube.empty(client, LATENCY)
        latencies = await side(_marks(), count)
        await kube.empty(client, LATENCY)
    return latencies


async def _corra_latency(marks: Path, count: int) -> list[float]:
    """Seconds from each program's end to its record's change to finished (the return of
    ``ref.wait``), through a durable runtime. On stderr, how they split at two moments: when
    corra's watch got the pod's terminated status (timed by a wrapper of
    `NamespaceWatch._apply`) and when the backend gave the result (a wrapper of
    `KubernetesBackend.wait`)."""
    seen: dict[str, float] = {}
    given: dict[str, float] = {}
    apply, wait = NamespaceWatch._apply, KubernetesBackend.wait

    def timed_apply(watch: NamespaceWatch, kind: Any, event: str, obj: dict[str, Any]) -> None:
        process_id = _terminated(obj) if kind is not Job else None
        if process_id is not None:
            seen.setdefault(process_id, time.time())
        apply(watch, kind, event, obj)

    async def timed_wait(backend: KubernetesBackend, handle: KubeHandle) -> Any:
        result = await wait(backend, handle)
        given.setdefault(EffectKey.parse(handle.key).process_id, time.time())
        return result

    recorded: dict[str, float] = {}

    async def record(ref: Any) -> None:
        await ref.wait()
        recorded[ref.id] = time.time()

    hosts = {kube.HOST: kube.host(LATENCY)}
    NamespaceWatch._apply = timed_apply  # type: ignore[method-assign]
    KubernetesBackend.wait = timed_wait  # type: ignore[method-assign]
    try:
        async with (
            open_runtime(state_dir=state_dir(f"latency-{marks.name}"), hosts=hosts) as runtime,
            trio.open_nursery() as nursery,
        ):
            for index in range(count):
                spec = {"argv": list(program(marks, index)), "backend": "kubernetes"}
                ref = await runtime.spawn_process(spec, host=kube.HOST)
                nursery.start_soon(record, ref)
    finally:
        NamespaceWatch._apply = apply  # type: ignore[method-assign]
        KubernetesBackend.wait = wait  # type: ignore[method-assign]
    ended = {process_id: _ended(marks, process_id) for process_id in recorded}
    if not len(seen) == len(given) == count:
        raise RuntimeError(f"of {count} pods, {len(seen)} seen ended, {len(given)} results")
    parts = [("program's end", ended), ("corra's watch", seen), ("backend's result", given)]
    split = ", ".join(
        f"{statistics.median(later[p] - earlier[p] for p in ended) * 1000:.0f} ms to {name}"
        for (_, earlier), (name, later) in itertools.pairwise([*parts, ("record", recorded)])
    )
    print(f"kubernetes suite: {count} programs, medians: {split}", file=sys.stderr)
    return [recorded[p] - ended[p] for p in ended]


async def _plain_latency(marks: Path, count: int) -> list[float]:
    """Seconds from each program's end to a plain lightkube watch of the pods seeing its
    container terminated, the Jobs created by a plain loop (the same manifests as corra's)."""
    seen: dict[str, float] = {}
    labels = {"corra.bench/plain": "latency"}
    requests = [
        LaunchRequest(key=new_key("plain"), argv=program(marks, index), host=kube.HOST)
        for index in range(count)
    ]
    async with kube.admin() as client, trio.open_nursery() as nursery:

        async def follow(task_status: trio.TaskStatus[None]) -> None:
            listed = client.list(Pod, namespace=LATENCY, labels=labels)
            _ = [pod async for pod in listed]
            version = listed.resourceVersion
            task_status.started()
            watched = client.watch(Pod, namespace=LATENCY, labels=labels, resource_version=version)
            async for _event, pod in watched:
                process_id = _terminated(pod.to_dict())
                if process_id is not None:
                    seen.setdefault(process_id, time.time())
                    if len(seen) == count:
                        return

        await nursery.start(follow)
        options = KubernetesOptions(image="busybox", pod_template={"metadata": {"labels": labels}})
        for request in requests:
            manifest = job_manifest(request, options, instance="corra-plain", namespace=LATENCY)
            await client.create(Job.from_dict(manifest))
    return [seen[p] - _ended(marks, p) for p in seen]


def latency(side: Callable[[Path, int], Any], count: int, quantile: int) -> float:
    """The ``quantile`` percentile (milliseconds) of a round's latencies."""
    drop_watched()
    latencies = trio.run(_latency_round, side, count)
    return statistics.quantiles(latencies, n=100, method="inclusive")[quantile - 1] * 1000


def benchmarks(options: Options) -> list[Benchmark]:
    reason = kube.unavailable()
    if reason is not None:
        print(f"suite kubernetes skipped: {reason}", file=sys.stderr)
        return []
    periods = options.size(6, 3)
    submissions = options.size(200, 100)
    programs = options.size(40, 20)
    watched = [
        Benchmark(
            name=f"api_requests_per_minute_{count}",
            unit="requests/min",
            corra=functools.partial(corra_requests_per_minute, count, periods),
            baseline=functools.partial(poller_requests_per_minute, count),
            higher_is_better=False,
            aim=1.2 * PER_RESYNC * 60 / RESYNC,
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
        *(
            Benchmark(
                name=f"status_latency_p{quantile}",
                unit="ms",
                corra=functools.partial(latency, _corra_latency, programs, quantile),
                baseline=functools.partial(latency, _plain_latency, programs, quantile),
                higher_is_better=False,
                rounds=3,
            )
            for quantile in (50, 99)
        ),
    ]
