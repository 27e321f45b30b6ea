"""Programs as batch-scheduler jobs (Slurm first), on this machine or behind SSH.

`SchedulerBackend` is the process actors' backend for a `Scheduler`: it owns what is the same
for every scheduler. It speaks to each host through a `Transport`.

Rule 1: write-ahead and idempotent. The run dir is ``<work root>/<key>``; before submitting,
a launch looks for the key (the ``job_id`` file the job script writes when it starts, then the
scheduler's queue by job name), so a runtime killed between ``sbatch`` and its snapshot finds
the job on restart and does not submit it again.

Rule 2: polling is batched: one poller per host asks about every watched job in one queue
command per ``poll_interval`` (jobs that left the queue: one more command for all of them,
then their exit records). Submissions and polls share a token bucket per host (by default a
burst of 30, then 2 per second, like Slurm's own rate limiter).

Rule 3: a paused process holds nothing here: its job keeps its place in the queue; with
``hold_on_pause`` a pending job is also held, and released on resume.

Rule 4: what the backend writes on a host is its user's only: directories 0700, files 0600,
the job script (which exports the env) 0700.

Rule 5: while a job is pending, its process's note (`BackendContext.notes`) says so with the
scheduler's reason (``pending: Resources``); it is cleared once the job runs.

Rule 6: the status files of the watched jobs (the running ones first, at most
`STATUS_DIRS`) are read in the poll's own command (`Scheduler.poll_status`), never in one of
their own, and handed to `BackendContext.statuses`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from corra._errors import (
    BackendError,
    ConfigError,
    HostUnavailable,
    LaunchFailed,
    ProgramLost,
    RemotePathError,
    TransportError,
)
from corra.backends import _staging
from corra.backends._follow import StatusReports
from corra.backends._pollers import HostPollers, check_key
from corra.backends._shared import TokenBucket
from corra.backends.scheduler import JobStatus
from corra.backends.slurm import Slurm, SlurmOptions
from corra.backends.transport import Transport
from corra.chaperone._rundir import RESULT_FILE
from corra.processes._backend import (
    RESULT_STREAM,
    Capabilities,
    EffectKey,
    LaunchRequest,
    MemoryNotes,
    Notes,
    Statuses,
    optional_field,
)
from corra.processes._lifecycle import Result

logger = logging.getLogger("corra.batch")

#: What a kill writes in the run dir before it cancels the job: ``{"grace": seconds}``, the
#: grace the job script gives the program (`corra.chaperone.batch_job`).
KILL_FILE = "kill.json"
#: Run dirs whose status files one poll reads, at most (Rule 6).
STATUS_DIRS = 500
#: Polls after which a job that neither the queue, the scheduler's memory nor an exit record
#: knows is lost.
LOST_AFTER_POLLS = 3


@attrs.frozen
class BatchHost:
    """One host with a scheduler, as the backend needs it."""

    name: str
    transport: Transport
    work_root: str | None = None
    """Where run dirs go (default ``~/.corra/jobs`` on the host)."""
    poll_interval: float = 10.0
    submit_rate: float = 2.0
    submit_burst: int = 30
    python: str = "python3"
    """The host's Python 3 (3.6 or newer), which verifies inputs and finds outputs, and the
    nodes' (as the job finds it on its PATH), which runs each job's program under
    `corra.chaperone.batch_job`."""


@attrs.frozen
class JobHandle:
    """A job submitted for a key, kept in the process snapshot (its stored form unchanged
    from the JSON objects of before: `find` gives no output fields)."""

    host: str
    key: str
    run_dir: str
    job_id: str
    array: bool
    """The job is an array (``array`` option): its exit records are one per task."""
    hold_on_pause: bool
    """Hold the job while it is pending and its process paused (`SchedulerBackend.pause`)."""
    outputs: tuple[str, ...] = optional_field(())
    """Globs of the files fetched home after the exit (`corra.backends._staging`)."""
    outputs_to: str | None = optional_field(None)
    work_dir: str | None = optional_field(None)


@attrs.define
class _Watch:
    job_id: str
    run_dir: str
    array: bool
    key: EffectKey
    note: str | None = None
    """The note last set for ``key`` (Rule 5)."""
    running: bool = False
    """The last poll saw the job running (its status file is read first: Rule 6)."""
    event: trio.Event = attrs.field(factory=trio.Event)
    result: Result | None = None
    error: BaseException | None = None
    misses: int = 0


class _Host:
    def __init__(self, config: BatchHost) -> None:
        self.config = config
        self.transport = config.transport
        self.bucket = TokenBucket(config.submit_rate, config.submit_burst)
        self.work_root: str | None = None
        self.lock = trio.Lock()
        self.watches: dict[str, list[_Watch]] = {}
        self.wake = trio.Event()


class SchedulerBackend(HostPollers):
    """Jobs on the given hosts through ``scheduler``, in `open_host_pollers`."""

    capabilities = Capabilities(
        slots=True,
        hosts=True,
        staging=True,
        pause_hooks=True,
        waits_for_host=True,
        log_size=True,
        shell_env=True,
        status=True,
    )
    handle_type = JobHandle

    def __init__(
        self,
        hosts: Mapping[str, BatchHost],
        scheduler: Slurm | None = None,
        notes: Notes | None = None,
        statuses: Statuses | None = None,
    ) -> None:
        self.scheduler = scheduler or Slurm()
        self._hosts = {name: _Host(config) for name, config in hosts.items()}
        self.notes = MemoryNotes() if notes is None else notes
        self._reports = StatusReports(statuses)

    def host(self, name: object) -> _Host:
        host: _Host = super().host(name)
        return host

    # -- slots: the scheduler queues; nothing to bound here ------------------------------

    async def acquire_slot(self, key: EffectKey) -> None:
        await trio.lowlevel.checkpoint()

    # -- paths ---------------------------------------------------------------------------

    async def _root(self, host: _Host) -> str:
        if host.work_root is None:
            async with host.lock:
                if host.work_root is None:
                    root = host.config.work_root
                    if root is None or not posixpath.isabs(root):
                        home = await host.transport.run(
                            ["sh", "-c", 'printf "%s" "$HOME"'], check=True
                        )
                        root = posixpath.join(
                            home.stdout.decode(), root or posixpath.join(".corra", "jobs")
                        )
                    await host.transport.mkdir(root)
                    host.work_root = root
        return host.work_root

    async def _run_dir(self, host: _Host, key: str) -> str:
        return posixpath.join(await self._root(host), check_key(key))

    async def _read(self, host: _Host, path: str) -> bytes | None:
        if await host.transport.stat(path) is None:
            return None
        return await host.transport.read_range(path, 0, 1 << 20)

    # -- the Backend protocol --------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> JobHandle:
        host = self.host(request.host)
        options: SlurmOptions = request.options or SlurmOptions()  # (typed by the converter)
        key = str(request.key)
        run_dir = await self._run_dir(host, key)
        existing = await self._find(host, key, run_dir)
        if existing is not None:
            return self._handle(host, key, run_dir, existing, options, request)
        work_dir = request.cwd or posixpath.join(run_dir, "work")
        try:
            script = self.scheduler.render(
                key,
                request.argv,
                run_dir=run_dir,
                work_dir=work_dir,
                options=options,
                env=request.environment(),
                timeout=request.limits.timeout,
                kill_grace=request.limits.kill_grace,
                python=host.config.python,
            )
        except ConfigError as exc:  # (before anything is written on the host)
            raise LaunchFailed(f"{key} on {host.config.name}: {exc}") from exc
        await host.transport.mkdir(run_dir)
        if request.inputs:  # (not submitted yet: nothing runs in the work dir)
            await _staging.upload(
                host.transport, host.config.python, work_dir, dict(request.inputs), host.config.name
            )
        script_path = posixpath.join(run_dir, "job.sh")
        await host.transport.write_file(script_path, script.encode(), mode=0o700)
        await host.bucket.take()
        try:
            job_id = await self.scheduler.submit(host.transport, script_path, run_dir)
        except TransportError:
            raise  # the submission may have happened: the launch's retry looks for it by key
        except BackendError as exc:
            raise LaunchFailed(f"{key} on {host.config.name}: {exc}") from exc
        return self._handle(host, key, run_dir, job_id, options, request)

    def _handle(
        self,
        host: _Host,
        key: str,
        run_dir: str,
        job_id: str,
        options: SlurmOptions,
        request: LaunchRequest | None = None,
    ) -> JobHandle:
        return JobHandle(
            host=host.config.name,
            key=key,
            run_dir=run_dir,
            job_id=job_id,
            array=options.array is not None,
            hold_on_pause=options.hold_on_pause,
            **({} if request is None else _staging.output_fields(request, run_dir)),
        )

    async def _find(self, host: _Host, key: str, run_dir: str) -> str | None:
        if await host.transport.stat(run_dir) is None:
            # The run dir is made before every submission: without one, none happened.
            return None
        recorded = await self._read(host, posixpath.join(run_dir, "job_id"))
        if recorded is None:
            names = await host.transport.listdir(run_dir)
            first = next((name for name in names if name.startswith("job_id.")), None)
            if first is not None and not first.endswith(".tmp"):
                recorded = await self._read(host, posixpath.join(run_dir, first))
        if recorded and recorded.strip().isdigit():
            return recorded.strip().decode()
        await host.bucket.take()
        return await self.scheduler.find(host.transport, key)

    async def find(self, key: EffectKey, host_name: str | None = None) -> JobHandle | None:
        """The job submitted with ``key`` (on ``host_name``, else any host), or None."""
        for host in self.hosts_for(host_name):
            run_dir = await self._run_dir(host, str(key))
            job_id = await self._find(host, str(key), run_dir)
            if job_id is not None:
                return self._handle(host, str(key), run_dir, job_id, SlurmOptions())
        return None

    async def wait(self, handle: JobHandle) -> Result:
        host = self.host(handle.host)
        watch = _Watch(handle.job_id, handle.run_dir, handle.array, EffectKey.parse(handle.key))
        await self._watch(host, watch.job_id, watch)
        assert watch.result is not None
        await _staging.retrieve_outputs(host.transport, host.config.python, handle)
        return watch.result

    async def _poller(self, host: _Host) -> None:
        while True:
            if not host.watches:
                host.wake = trio.Event()
                await host.wake.wait()
            await host.bucket.take()
            job_ids = sorted(host.watches)
            try:
                await self._poll(host, job_ids)
            except (TransportError, BackendError) as exc:
                if isinstance(exc, HostUnavailable):
                    for watches in host.watches.values():
                        for watch in watches:
                            watch.error = exc
                            watch.event.set()
                    host.watches.clear()
                else:
                    logger.warning("host %s: poll failed: %s", host.config.name, exc)
            await trio.sleep(host.config.poll_interval)

    async def _poll(self, host: _Host, job_ids: list[str]) -> None:
        queued, reports = await self.scheduler.poll_status(
            host.transport, job_ids, _status_dirs(host), host.config.python
        )
        for run_dir, found in reports.items():
            self._reports.report(run_dir, found)
        for job_id, status in queued.items():
            self._note(host.watches.get(job_id, ()), status)
        gone = [job_id for job_id in job_ids if job_id not in queued]
        if not gone:
            return
        await host.bucket.take()
        finals = await self.scheduler.final_statuses(host.transport, gone)
        for job_id in gone:
            watches = host.watches.get(job_id, [])
            if not watches:
                continue
            first = watches[0]
            records = await self._exit_records(host, first.run_dir, first.array)
            status = finals.get(job_id)
            if status is None and not records:
                first.misses += 1
                if first.misses >= LOST_AFTER_POLLS:
                    lost = ProgramLost(
                        f"job {job_id} on {host.config.name}: neither the queue, the "
                        "scheduler nor an exit record knows it"
                    )
                    for watch in watches:
                        watch.error = lost
                        watch.event.set()
                continue
            result = await self._result(host, first.run_dir, status, records)
            for watch in watches:
                watch.result = result
                watch.event.set()

    def _note(self, watches: Sequence[_Watch], status: JobStatus) -> None:
        """Rule 5: the note of a job's process, from its status in the queue."""
        text = None
        if status.state == "pending":
            text = "pending" if status.reason is None else f"pending: {status.reason}"
        for watch in watches:
            watch.running = status.state == "running"
            if watch.note != text:
                watch.note = text
                self.notes.set(watch.key, text)

    async def _exit_records(self, host: _Host, run_dir: str, array: bool) -> list[dict[str, Any]]:
        if not array:
            raw = await self._read(host, posixpath.join(run_dir, "exit.json"))
            records = [raw] if raw else []
        else:
            names = await host.transport.listdir(run_dir)
            records = [
                await self._read(host, posixpath.join(run_dir, name))
                for name in names
                if name.startswith("exit.") and name.endswith(".json")
            ]
        out = []
        for raw in records:
            with contextlib.suppress(ValueError):
                if raw:
                    out.append(json.loads(raw))
        return out

    async def _result(
        self,
        host: _Host,
        run_dir: str,
        status: JobStatus | None,
        records: list[dict[str, Any]],
    ) -> Result:
        codes = [record.get("returncode") for record in records]
        worst = max((code for code in codes if isinstance(code, int)), default=None)
        started = min((r["started_at"] for r in records if "started_at" in r), default=None)
        ended = max((r["ended_at"] for r in records if "ended_at" in r), default=None)
        if status is not None:  # (a job killed before its script wrote its record)
            started = status.started_at if started is None else started
            ended = status.ended_at if ended is None else ended
        sizes = {}
        for stream in ("stdout", "stderr"):
            sizes[stream] = sum(size for _, size in await self._log_files(host, run_dir, stream))
        signals = [r["signal"] for r in records if isinstance(r.get("signal"), int)]
        returncode, signal, error = worst, max(signals, default=None), None
        timed_out = False
        killed = any(record.get("killed") is True for record in records)
        if status is not None:
            if status.state != "completed" and returncode == 0:
                returncode = None
            if returncode is None and signal is None and status.state == "failed":
                # (not after a record's signal: the job then exits 128 + n, as a shell does)
                returncode = status.exit_code
            signal = status.signal if signal is None else signal
            timed_out = status.state == "timeout"
            killed = killed or status.state == "cancelled"
            if status.state in ("node_fail", "preempted", "out_of_memory"):
                error = f"slurm: {status.raw.lower()}"
            elif status.state in ("timeout", "cancelled") and returncode is None and signal is None:
                signal = 15 if status.state == "cancelled" else 9
        if any(record.get("timed_out") is True for record in records):
            returncode, signal, timed_out = None, 15, True  # the spec's timeout, in the script
        return Result(
            returncode=returncode,
            signal=signal,
            started_at=float(started) if started is not None else None,
            ended_at=float(ended) if ended is not None else None,
            stdout_bytes=sizes["stdout"],
            stderr_bytes=sizes["stderr"],
            timed_out=timed_out,
            killed=killed,
            error=error,
        )

    async def kill(self, handle: JobHandle, grace: float) -> Result | None:
        """Cancel the job; its script ends the program's group (SIGTERM, ``grace``, SIGKILL;
        the cluster's ``KillWait`` caps the grace). The result once the job has left the
        queue, or None if it was lost (there is nothing left to end)."""
        host = self.host(handle.host)
        with contextlib.suppress(RemotePathError):  # (no run dir: no script reads it)
            await host.transport.write_file(
                posixpath.join(handle.run_dir, KILL_FILE), json.dumps({"grace": grace}).encode()
            )
        await host.bucket.take()
        await self.scheduler.cancel(host.transport, handle.job_id, handle.key)
        # (long enough for the polls that find a lost job lost, whatever the grace)
        settle = max(30.0, (LOST_AFTER_POLLS + 1) * host.config.poll_interval)
        with trio.move_on_after(grace + settle):
            try:
                return await self.wait(handle)
            except ProgramLost:
                return None
        raise BackendError(f"job {handle.job_id} on {host.config.name}: still queued after scancel")

    async def pause(self, handle: JobHandle) -> None:
        """Hold a pending job if its options ask for it (a running job runs on)."""
        if handle.hold_on_pause:
            host = self.host(handle.host)
            queued = await self.scheduler.poll(host.transport, [handle.job_id])
            status = queued.get(handle.job_id)
            if status is not None and status.state == "pending":
                await self.scheduler.hold(host.transport, handle.job_id)

    async def resume(self, handle: JobHandle) -> None:
        """Release a job that `pause` held."""
        if handle.hold_on_pause:
            host = self.host(handle.host)
            with contextlib.suppress(BackendError):
                await self.scheduler.release(host.transport, handle.job_id)

    async def remove(self, key: EffectKey, host_name: str | None = None) -> None:
        """Remove the run dir of ``key``'s job (its script, logs and exit records) on its
        host (on every host for None).

        Raises:
            TransportError: a host cannot be reached.
        """
        for host in self.hosts_for(host_name):
            await host.transport.remove(await self._run_dir(host, str(key)), recursive=True)

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host_name: str | None = None
    ) -> bytes:
        if stream == RESULT_STREAM:
            return await self._read_value(key, offset, size, host_name)
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        for host in self.hosts_for(host_name):
            files = await self._log_files(host, await self._run_dir(host, str(key)), stream)
            out = b""
            for path, length in files:  # an array's tasks, one after another, as one log
                if offset >= length:
                    offset -= length
                    continue
                out += await host.transport.read_range(path, offset, size - len(out))
                offset = 0
                if len(out) >= size:
                    break
            if files:
                return out
        return b""

    async def _read_value(
        self, key: EffectKey, offset: int, size: int, host_name: str | None
    ) -> bytes:
        """The program's value (``$CORRA_RESULT``: the run dir's ``result.json``, which an
        array's tasks share) from ``offset``; b"" where there is none."""
        for host in self.hosts_for(host_name):
            path = posixpath.join(await self._run_dir(host, str(key)), RESULT_FILE)
            if await host.transport.stat(path) is not None:
                return await host.transport.read_range(path, offset, size)
        return b""

    async def log_size(
        self, key: EffectKey, stream: str, host_name: str | None = None
    ) -> int | None:
        """How many bytes of ``stream`` (all of an array's tasks) there are now; None before
        the run dir has any."""
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        for host in self.hosts_for(host_name):
            files = await self._log_files(host, await self._run_dir(host, str(key)), stream)
            if files:
                return sum(size for _, size in files)
        return None

    async def _log_files(self, host: _Host, run_dir: str, stream: str) -> list[tuple[str, int]]:
        """The files of ``stream`` in the run dir, with their sizes: ``stdout``, or an array's
        ``stdout.<task>`` in task order (none if the run dir has none yet)."""
        path = posixpath.join(run_dir, stream)
        info = await host.transport.stat(path)
        if info is not None:
            return [(path, info.size)]
        if await host.transport.stat(run_dir) is None:
            return []
        tasks = sorted(
            int(suffix)
            for name in await host.transport.listdir(run_dir)
            if name.startswith(f"{stream}.") and (suffix := name[len(stream) + 1 :]).isdigit()
        )
        files = []
        for task in tasks:
            task_path = f"{path}.{task}"
            task_info = await host.transport.stat(task_path)
            if task_info is not None:
                files.append((task_path, task_info.size))
        return files


def _status_dirs(host: _Host) -> list[str]:
    """The run dirs whose status files a poll reads (Rule 6): the watched jobs', those seen
    running first (the others: pending, or gone since, whose last lines count too)."""
    watched = [watches[0] for watches in host.watches.values() if watches]
    watched.sort(key=lambda watch: not watch.running)
    return sorted({watch.run_dir for watch in watched[:STATUS_DIRS]})
