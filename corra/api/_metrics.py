"""``GET /metrics``: the runtime in Prometheus text, names prefixed ``corra_``.

Everything is read when scraped (nothing is kept in prometheus_client's global registry: each
service has its own), except the transitions, which the service counts as they happen, and
the commit latency histogram, which it samples then.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import corra
from corra.api._events import EventLog

logger = logging.getLogger("corra.api")

#: Content type of the Prometheus text format that `render` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long a scrape waits for the SSH pools' statistics (each is a call to its actor).
POOL_STATISTICS_TIMEOUT = 2.0


class CommitLatency:
    """The store's commit latency, sampled: after a transition, if the store committed since
    the last look, the latency of its last commit is observed (the store keeps the last one
    only, so commits between two transitions count once)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._commits = 0
        self.histogram = Histogram(
            "corra_snapshot_commit_latency_seconds",
            "Seconds from the start of a store write transaction to the end of its commit "
            "(fsync included); sampled at transitions",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=None,
        )

    def sample(self) -> None:
        statistics = self.statistics()
        if statistics is not None and statistics.commits != self._commits:
            self._commits = statistics.commits
            self.histogram.observe(statistics.last_commit_latency)

    def statistics(self) -> Any:
        method = getattr(self._store, "statistics", None)
        if method is None:
            return None
        try:
            return method()
        except corra.CorraError:  # closed (the service is stopping)
            return None


@attrs.frozen
class RemoteFigures:
    """What a scrape gathered from the remote backends (asynchronously, before rendering)."""

    pools: tuple[Any, ...] = ()
    """`PoolStatistics` of every SSH pool that answered in time."""
    polls: tuple[tuple[str, int], ...] = ()
    """``(host, status polls)`` of the ssh backend."""
    scheduler_commands: tuple[tuple[str, str, int], ...] = ()
    """``(scheduler, command, calls)`` of the batch backend."""


async def gather_remote(runtime: Any) -> RemoteFigures:
    """The remote backends' figures (none without remote hosts). A checkpoint."""
    remote = getattr(runtime, "remote", None)
    if remote is None:
        await trio.lowlevel.checkpoint()
        return RemoteFigures()
    pools = []
    with trio.move_on_after(POOL_STATISTICS_TIMEOUT):
        for handle in remote.registry.handles():
            try:
                pools.append(await handle.statistics())
            except corra.CorraError as exc:  # its actor is restarting: skip it this time
                logger.debug("metrics: no statistics from a pool: %s", exc)
    polls = []
    ssh = remote.backends.get("ssh")
    counter = getattr(ssh, "polls", None)
    if counter is not None:
        for host in sorted(remote.hosts):
            try:
                polls.append((host, int(counter(host))))
            except (corra.CorraError, LookupError, TypeError):
                continue
    commands = []
    batch = remote.backends.get("slurm")
    scheduler = getattr(batch, "scheduler", None)
    calls = getattr(scheduler, "calls", None)
    if isinstance(calls, dict):
        name = str(getattr(scheduler, "name", "slurm"))
        commands = [(name, str(command), int(count)) for command, count in sorted(calls.items())]
    return RemoteFigures(tuple(pools), tuple(polls), tuple(commands))


class _Collector(Collector):
    def __init__(
        self,
        runtime: Any,
        events: EventLog,
        phases: Mapping[str, int] | None,
        commits: CommitLatency,
        remote: RemoteFigures,
    ) -> None:
        self.runtime = runtime
        self.events = events
        self.phases = phases
        self.commits = commits
        self.remote = remote

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("corra_info", "The corra serving this", labels=["version"])
        info.add_metric([corra.__version__], 1)
        yield info
        if self.phases is not None:
            processes = GaugeMetricFamily(
                "corra_processes", "Processes in each phase", labels=["phase"]
            )
            for phase, count in self.phases.items():
                processes.add_metric([phase], count)
            yield processes
        transitions = CounterMetricFamily(
            "corra_transitions",
            "Process transitions since the service started, by event",
            labels=["event"],
        )
        for event, count in sorted(self.events.counts.items()):
            transitions.add_metric([event], count)
        yield transitions
        yield GaugeMetricFamily(
            "corra_process_actors",
            "Processes with an actor now (holding a slot, or needing none)",
            value=self.runtime.processes.active,
        )
        yield GaugeMetricFamily(
            "corra_processes_queued",
            "Processes waiting for a slot (or a retry's backoff first), which have no actor",
            value=self.runtime.processes.queued,
        )
        yield from self._store()
        yield from self._mailboxes()
        yield from self._remote()

    def _store(self) -> Iterator[Metric]:
        statistics = self.commits.statistics()
        if statistics is None:
            return
        yield CounterMetricFamily(
            "corra_snapshot_commits",
            "Write transactions the store committed (each holds many snapshots)",
            value=statistics.commits,
        )
        yield CounterMetricFamily(
            "corra_snapshot_records_written",
            "Snapshots and other records written",
            value=statistics.records_written,
        )
        yield GaugeMetricFamily(
            "corra_snapshot_last_commit_latency_seconds",
            "Seconds the last store commit took (fsync included)",
            value=statistics.last_commit_latency,
        )
        yield from self.commits.histogram.collect()
        yield GaugeMetricFamily(
            "corra_store_map_used_bytes", "Bytes of the LMDB map in use", value=statistics.map_used
        )
        yield GaugeMetricFamily(
            "corra_store_map_size_bytes", "Bytes of the LMDB map", value=statistics.map_size
        )

    def _mailboxes(self) -> Iterator[Metric]:
        depth: collections.Counter[str] = collections.Counter()
        deepest: collections.Counter[str] = collections.Counter()
        actors: collections.Counter[str] = collections.Counter()
        for node in self.runtime.walk():
            if node.type != "worker" or node.ref is None:
                continue
            supervisor = node.path.rpartition("/")[0] or "/"
            try:
                statistics = node.ref.statistics()
            except corra.CorraError:
                continue
            actors[supervisor] += 1
            depth[supervisor] += statistics.mailbox_depth
            deepest[supervisor] = max(deepest[supervisor], statistics.mailbox_depth)
        families = (
            ("corra_actors", "Actors running under each supervisor", actors),
            ("corra_mailbox_depth", "Messages waiting in the mailboxes of its actors", depth),
            ("corra_mailbox_depth_max", "The most messages waiting in one of its actors", deepest),
        )
        for name, documentation, values in families:
            family = GaugeMetricFamily(name, documentation, labels=["supervisor"])
            for supervisor, value in sorted(values.items()):
                family.add_metric([supervisor], value)
            yield family

    def _remote(self) -> Iterator[Metric]:
        if self.remote.pools:
            gauges = (
                ("connections", "corra_ssh_connections", "SSH connections open"),
                ("leases", "corra_ssh_leases", "SSH channels leased now"),
                ("waiting", "corra_ssh_lease_waiters", "Lease requests waiting for capacity"),
                ("available", "corra_ssh_host_available", "1 if the host answers, else 0"),
            )
            counters = (
                ("logins", "corra_ssh_logins", "SSH logins (connections made)"),
                ("connect_failures", "corra_ssh_connect_failures", "SSH connects that failed"),
                ("leases_total", "corra_ssh_leased", "SSH channels leased since the pool started"),
                ("dropped", "corra_ssh_connections_dropped", "Connections found broken"),
            )
            for field, name, documentation in gauges:
                gauge = GaugeMetricFamily(name, documentation, labels=["host"])
                for pool in self.remote.pools:
                    gauge.add_metric([pool.host], float(getattr(pool, field)))
                yield gauge
            for field, name, documentation in counters:
                counter = CounterMetricFamily(name, documentation, labels=["host"])
                for pool in self.remote.pools:
                    counter.add_metric([pool.host], float(getattr(pool, field)))
                yield counter
        if self.remote.polls:
            polls = CounterMetricFamily(
                "corra_scheduler_polls",
                "Status polls of remote programs (one per host per interval, for all of them)",
                labels=["backend", "host"],
            )
            for host, count in self.remote.polls:
                polls.add_metric(["ssh", host], count)
            yield polls
        if self.remote.scheduler_commands:
            commands = CounterMetricFamily(
                "corra_scheduler_commands",
                "Batch scheduler commands run (squeue once per host per poll interval)",
                labels=["scheduler", "command"],
            )
            for scheduler, command, count in self.remote.scheduler_commands:
                commands.add_metric([scheduler, command], count)
            yield commands


async def render(
    runtime: Any, events: EventLog, phases: Mapping[str, int] | None, commits: CommitLatency
) -> bytes:
    """The Prometheus text of everything above; ``phases``: processes per phase (the store's
    counts), None to leave them out. A checkpoint."""
    remote = await gather_remote(runtime)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(runtime, events, phases, commits, remote))
    return generate_latest(registry)
