"""The ``hyperqueue`` backend: each attempt one HyperQueue job of one task, which runs the
program under corra's task wrapper (`corra.chaperone.task_job`) in the attempt's run dir.

Rule 1, nothing runs twice, without a list by name (HyperQueue has none): the wrapper claims
the run dir (``claim.json``, created exclusively) before the program starts, and a task that
finds a claim runs nothing. A launch looks for the run dir's ``job_id`` (written once the
submission answered) and the claim before it submits; a resubmission after a crash between
the two is harmless. A kill of a task that has not claimed yet claims in its place, so it can
never start the program afterwards.

Rule 2, one request per server per interval: a poller per server asks for every watched job
in one ``poll``; a job that is over is read from its run dir's exit record. A job the server
no longer knows, or a server whose uid changed, without an exit record: the program is lost.

Rule 3: every call into HyperQueue's client runs in a helper process of its own per server
(`corra.backends.hyperqueue._client`), never on a thread of the runtime (the client holds
the GIL while it waits).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from corra._errors import BackendError, ConfigError, HostUnavailable, LaunchFailed, ProgramLost
from corra._statedir import make_private_dirs, read_private, write_private
from corra.backends._follow import StatusFollower, following, open_status_follower
from corra.backends._pollers import HostPollers, check_key, open_host_pollers
from corra.backends.hyperqueue._client import HqHelper
from corra.backends.hyperqueue._options import HyperQueueOptions
from corra.backends.hyperqueue._servers import Server, servers_of
from corra.chaperone import task_job
from corra.chaperone._rundir import RESULT_FILE, STATUS_FILE
from corra.processes._backend import (
    RESULT_STREAM,
    BackendContext,
    Capabilities,
    EffectKey,
    LaunchRequest,
    Notes,
)
from corra.processes._lifecycle import Result

logger = logging.getLogger("corra.backend.hyperqueue")
#: The files of a run dir that `HyperQueueBackend.read_log` reads, by stream.
READABLE: Final = {"stdout": "stdout", "stderr": "stderr", RESULT_STREAM: RESULT_FILE}

#: Polls after which a job that neither the server nor an exit record knows is lost.
LOST_AFTER_POLLS: Final = 3
#: The job id file of a run dir, written once the submission answered.
JOB_ID_FILE: Final = "job_id"
#: Seconds a kill waits for the wrapper's exit record beyond the grace.
KILL_SETTLE: Final = 30.0
#: Seconds past a kill's grace after which a job still without an exit record is cancelled
#: through the server (``hq``), where the host names a binary.
CANCEL_AFTER: Final = 5.0
#: Seconds an ``hq job cancel`` may take.
CANCEL_PATIENCE: Final = 30.0
#: Jobs forgotten by the server per poll, at most (the rest at the next polls).
FORGET_BATCH: Final = 50
#: Job states that are over.
OVER: Final = frozenset({"finished", "failed", "canceled"})
#: The run root's directory of the task wrapper, shipped once (`task_job.ship`) and imported
#: by every task (its bytecode cached there): no key starts with a dot.
LIBRARY_DIR: Final = ".corra"


@attrs.frozen
class HqHandle:
    """The job of one attempt: where it was submitted and where its run dir is."""

    host: str
    key: str
    run_dir: str
    job_id: int
    server_uid: str
    """The uid of the server the job went to: another uid there means a new server, which
    knows nothing of the job (and may reuse its id)."""


@attrs.define
class _Watch:
    handle: HqHandle
    job_id: int
    event: trio.Event = attrs.field(factory=trio.Event)
    result: Result | None = None
    error: BaseException | None = None
    misses: int = 0
    note: str | None = None


class HyperQueueBackend(HostPollers):
    """Programs as HyperQueue tasks on the servers that are hosts (see the module)."""

    capabilities = Capabilities(hosts=True, waits_for_host=True, log_size=True, status=True)
    handle_type = HqHandle

    def __init__(
        self, servers: Mapping[str, Server], notes: Notes, follower: StatusFollower | None = None
    ) -> None:
        self._hosts = dict(servers)
        self._notes = notes
        self._follower = follower  # (of the run dirs' status files, while waited for)

    # -- hosts ---------------------------------------------------------------------------

    def check(self, request: LaunchRequest) -> None:
        server: Server = self.host(request.host)
        check_key(str(request.key))
        if request.inputs or request.outputs:
            raise ConfigError(
                "inputs/outputs: the hyperqueue backend stages no files; put them in the run "
                f"root the workers share ({server.run_root})"
            )
        why = _unwritable(server.run_root)
        if why is not None:
            raise ConfigError(
                f"hosts.{server.name}.hyperqueue.run_root: {server.run_root}: {why}; expected a "
                "directory corra can write, on a file system that the workers share"
            )

    async def helper(self, server: Server) -> HqHelper:
        """The helper of the server to submit to (a new allocation if need be).

        Raises:
            HostUnavailable: the server does not answer.
        """
        helper = await server.connect()
        assert helper is not None
        return helper

    async def wait_available(self, name: str) -> None:
        server: Server = self.host(name)
        pause = 0.5
        while True:
            server.lost_server()
            with contextlib.suppress(HostUnavailable):
                await server.connect(request=server.allocations is None)
                return
            await trio.sleep(pause)
            pause = min(30.0, pause * 2)

    def _run_dir(self, server: Server, key: str) -> Path:
        return server.run_root / check_key(key)

    # -- launch and find -------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> HqHandle:
        server: Server = self.host(request.host)
        key = str(request.key)
        run_dir = self._run_dir(server, key)
        helper = await self.helper(server)
        found = self._recorded(server, key, run_dir)
        if found is not None:
            return found
        options: HyperQueueOptions = request.options or HyperQueueOptions()
        make_private_dirs(run_dir)
        if server.library is None:  # (once per runtime: the checks cost a launch 5 syscalls)
            try:
                server.library = task_job.ship(server.run_root / LIBRARY_DIR)
            except OSError as exc:
                raise LaunchFailed(f"{key} on {server.name}: the task wrapper: {exc}") from exc
        work_dir = Path(request.cwd) if request.cwd else run_dir / "work"
        if request.cwd is None:
            make_private_dirs(work_dir)
        job = {
            "name": f"corra-{key}",
            "args": task_job.argv(
                str(run_dir),
                request.limits.kill_grace,
                request.limits.timeout,
                list(request.argv),
                python=server.options.python,
                library=server.library,
            ),
            "env": request.environment(),
            "cwd": str(work_dir),
            "stdout": None,
            "stderr": str(run_dir / "wrapper.stderr"),
            "cpus": options.cpus,
            "resources": dict(options.resources),
            "min_time": options.time_request,
        }
        await server.bucket.take()
        try:
            answer = await helper.call("submit", job=job)
        except BackendError as exc:
            if isinstance(exc, HostUnavailable):
                raise
            raise LaunchFailed(f"{key} on {server.name}: {exc}") from exc
        job_id = int(answer["job_id"])
        assert server.uid is not None
        # (not synced: a job id lost is found again in the claim, or resubmitted harmlessly)
        recorded = {"job_id": job_id, "server_uid": server.uid}
        write_private(run_dir / JOB_ID_FILE, json.dumps(recorded).encode())
        return HqHandle(server.name, key, str(run_dir), job_id, server.uid)

    def _recorded(self, server: Server, key: str, run_dir: Path) -> HqHandle | None:
        """The handle of the job already submitted for ``key``: its run dir's job id, else
        its claim's."""
        recorded = _read_json(run_dir / JOB_ID_FILE) or {}
        job_id, uid = recorded.get("job_id"), recorded.get("server_uid")
        if not isinstance(job_id, int):
            # (the server's uid unknown: "" is not checked against the server's)
            claim = _read_json(run_dir / task_job.CLAIM_FILE) or {}
            job_id, uid = claim.get("job_id"), ""
            job_id = int(job_id) if str(job_id).isdigit() else None
        if job_id is None:
            return None
        return HqHandle(server.name, key, str(run_dir), job_id, uid if isinstance(uid, str) else "")

    async def find(self, key: EffectKey, host: str | None = None) -> HqHandle | None:
        for server in self.hosts_for(host):
            run_dir = self._run_dir(server, str(key))
            if not run_dir.is_dir():
                continue
            found = self._recorded(server, str(key), run_dir)
            if found is not None:
                return found
        return None

    # -- wait ------------------------------------------------------------------------------

    async def wait(self, handle: HqHandle) -> Result:
        path = Path(handle.run_dir, STATUS_FILE)
        waiting = functools.partial(self._wait, handle)
        return await following(self._follower, EffectKey.parse(handle.key), path, waiting)

    async def _wait(self, handle: HqHandle) -> Result:
        server: Server = self.host(handle.host)
        done = _result(Path(handle.run_dir))
        if done is not None:
            return done
        watch = _Watch(handle, handle.job_id)
        await self._watch(server, handle.job_id, watch)
        assert watch.result is not None
        return watch.result

    async def _poller(self, server: Server) -> None:
        while True:
            if not server.watches:
                server.wake = trio.Event()
                await server.wake.wait()
            try:
                await self._poll(server)
            except HostUnavailable as exc:
                server.lost_server()
                for watches in server.watches.values():
                    for watch in watches:
                        watch.error = exc
                        watch.event.set()
                server.watches.clear()
            except BackendError as exc:
                logger.warning("server %s: poll failed: %s", server.name, exc)
            await trio.sleep(server.options.poll_interval)

    async def _poll(self, server: Server) -> None:
        helper = await server.connect(request=False)
        if helper is None:  # (allocation mode: the last allocation is over)
            self._allocation_over(server)
            return
        uid = server.uid
        job_ids = sorted(server.watches)
        answer = await helper.call("poll", job_ids=job_ids)
        states: dict[str, Any] = answer["jobs"]
        over: list[int] = []
        for job_id in job_ids:
            watches = server.watches.get(job_id, [])
            if not watches:
                continue
            first = watches[0]
            run_dir = Path(first.handle.run_dir)
            # (a replaced server's answer about this id is about another job)
            replaced = first.handle.server_uid not in ("", uid)
            state = None if replaced else (states.get(str(job_id)) or {}).get("state")
            if state is not None and state not in OVER:
                # (not over: queued, or running once its wrapper has claimed the run dir)
                claimed = (run_dir / task_job.CLAIM_FILE).exists()
                self._note(watches, None if claimed else "waiting for a worker")
                continue
            result = _result(run_dir)
            if result is not None:
                self._settle(watches, result=result)
                if not replaced:
                    over.append(job_id)
            elif replaced:
                self._settle(
                    watches,
                    error=ProgramLost(
                        f"job {job_id} on {server.name}: the server was replaced (uid "
                        f"{first.handle.server_uid} is now {uid}) and no exit record is there"
                    ),
                )
            elif state is None:
                first.misses += 1
                if first.misses >= LOST_AFTER_POLLS:
                    self._settle(
                        watches,
                        error=ProgramLost(
                            f"job {job_id} on {server.name}: neither the server nor an exit "
                            "record knows it"
                        ),
                    )
            else:
                self._over(server, job_id, watches, state)
                over.append(job_id)
        # (forgotten a few at a time: the client forgets one job per request, and the helper
        # serves nothing else meanwhile, submissions included)
        server.forgotten.extend(over)
        if server.forgotten:
            batch, server.forgotten = (
                server.forgotten[:FORGET_BATCH],
                server.forgotten[FORGET_BATCH:],
            )
            with contextlib.suppress(BackendError):
                await helper.call("forget", job_ids=batch)

    def _allocation_over(self, server: Server) -> None:
        """The host's allocation is over: what has no exit record is lost with it."""
        assert server.allocations is not None
        number = server.allocations.current()
        name = server.allocations.name(number)
        why = server.allocations.over(number) or "ended"
        for job_id, watches in list(server.watches.items()):
            result = _result(Path(watches[0].handle.run_dir))
            if result is not None:
                self._settle(watches, result=result)
            else:
                self._settle(
                    watches,
                    error=ProgramLost(
                        f"job {job_id} on {server.name}: allocation {name} is over ({why}) "
                        "and the task left no exit record"
                    ),
                )

    def _over(self, server: Server, job_id: int, watches: list[_Watch], state: str) -> None:
        """A job over without an exit record: another task claimed the run dir (watch that
        one), or the wrapper never ran or died."""
        claim = _read_json(Path(watches[0].handle.run_dir) / task_job.CLAIM_FILE) or {}
        claimant = str(claim.get("job_id", ""))
        if claimant.isdigit() and int(claimant) != job_id:
            for watch in watches:  # (a resubmission found the first task's claim)
                watch.job_id = int(claimant)
                server.watches.setdefault(int(claimant), []).append(watch)
            server.watches.pop(job_id, None)
            return
        self._settle(
            watches,
            error=ProgramLost(
                f"job {job_id} on {server.name} is {state} without an exit record: its "
                "task wrapper did not run or was killed (see wrapper.stderr in "
                f"{watches[0].handle.run_dir})"
            ),
        )

    def _settle(
        self, watches: list[_Watch], *, result: Result | None = None, error: Exception | None = None
    ) -> None:
        self._note(watches, None)
        for watch in watches:
            watch.result, watch.error = result, error
            watch.event.set()

    def _note(self, watches: list[_Watch], text: str | None) -> None:
        for watch in watches:
            if watch.note != text:
                watch.note = text
                self._notes.set(EffectKey.parse(watch.handle.key), text)

    # -- kill, logs, removal ---------------------------------------------------------------

    async def kill(self, handle: HqHandle, grace: float) -> Result | None:
        """Ask the task's wrapper to end the program (``kill.json``: SIGTERM to its group,
        SIGKILL after ``grace``); a task that has not started yet is claimed in its place and
        never runs it. The result once the wrapper recorded the exit."""
        run_dir = Path(handle.run_dir)
        with contextlib.suppress(FileNotFoundError):
            write_private(run_dir / task_job.KILL_FILE, json.dumps({"grace": grace}).encode())
        server: Server = self.host(handle.host)
        if _claim_for_kill(run_dir):
            await self._cancel(server, handle)  # (out of the queue: it would run nothing)
            return _result(run_dir)
        cancelled = False
        with trio.move_on_after(grace + KILL_SETTLE):
            try:
                with trio.move_on_after(grace + CANCEL_AFTER):
                    return await self.wait(handle)
                # (the wrapper did not end it: the server's cancel, where it can)
                cancelled = await self._cancel(server, handle)
                return await self.wait(handle)
            except ProgramLost:
                return None
        raise BackendError(
            f"job {handle.job_id} on {handle.host}: no exit record {grace + KILL_SETTLE:.0f} s "
            "after the kill request" + (" and the server's cancel" if cancelled else "")
        )

    async def _cancel(self, server: Server, handle: HqHandle) -> bool:
        """Cancel the job through the server (``hq job cancel``) where the host names an
        ``hq`` binary; whether it was asked. A failure is logged: the run dir's kill request
        stands."""
        if server.options.hq is None or server.helper is None:
            return False
        command = [
            server.options.hq,
            "--server-dir",
            str(server.helper.server_dir),
            "job",
            "cancel",
            str(handle.job_id),
        ]
        try:
            with trio.fail_after(CANCEL_PATIENCE):
                done = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False
                )
        except (OSError, trio.TooSlowError) as exc:
            logger.warning("host %s: %s: %s", server.name, " ".join(command), exc)
            return False
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip()[-300:]
            logger.warning(
                "host %s: %s exited %d: %s", server.name, " ".join(command), done.returncode, said
            )
        return True

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        path = self._log_path(key, stream, host)
        return b"" if path is None else _read_range(path, offset, size)

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        path = self._log_path(key, stream, host)
        return None if path is None else path.stat().st_size

    def _log_path(self, key: EffectKey, stream: str, host: str | None) -> Path | None:
        name = READABLE.get(stream)  # (``result``: the program's value, $CORRA_RESULT)
        if name is None:
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        for server in self.hosts_for(host):
            path = self._run_dir(server, str(key)) / name
            if path.is_file():
                return path
        return None

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        for server in self.hosts_for(host):
            shutil.rmtree(self._run_dir(server, str(key)), ignore_errors=True)
        await trio.lowlevel.checkpoint()


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(FileNotFoundError, ValueError, ConfigError):
        data = json.loads(read_private(path))
        return data if isinstance(data, dict) else None
    return None


def _unwritable(root: Path) -> str | None:
    """Why corra could not make run dirs under ``root`` (its nearest existing ancestor is
    not a directory it may write), or None."""
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def _claim_for_kill(run_dir: Path) -> bool:
    """Claim the run dir for a kill, and record the kill, if no task claimed it: whether
    it did (then no task will ever run the program)."""
    now = time.time()
    try:  # (whole and exclusive, as a task's own claim: `task_job.claim`)
        if not task_job.claim(str(run_dir), {"killed_before_start": True, "claimed_at": now}):
            return False
    except FileNotFoundError:
        return False
    record = {
        "returncode": None,
        "signal": None,
        "started_at": None,
        "ended_at": now,
        "timed_out": False,
        "killed": True,
        "error": "killed before it started",
    }
    write_private(run_dir / task_job.EXIT_FILE, json.dumps(record).encode(), sync=True)
    return True


def _result(run_dir: Path) -> Result | None:
    """The result of the wrapper's exit record in ``run_dir``, or None while there is none."""
    record = _read_json(run_dir / task_job.EXIT_FILE)
    if record is None:
        return None
    sizes = {}
    for stream in ("stdout", "stderr"):
        try:
            sizes[stream] = (run_dir / stream).stat().st_size
        except FileNotFoundError:
            sizes[stream] = 0
    timed_out = record.get("timed_out") is True
    returncode = record.get("returncode")
    signal = record.get("signal")
    if timed_out and returncode is None and signal is None:
        signal = 15
    return Result(
        returncode=returncode if isinstance(returncode, int) else None,
        signal=signal if isinstance(signal, int) else None,
        started_at=_seconds(record.get("started_at")),
        ended_at=_seconds(record.get("ended_at")),
        stdout_bytes=sizes["stdout"],
        stderr_bytes=sizes["stderr"],
        timed_out=timed_out,
        killed=record.get("killed") is True,
        error=record.get("error") if isinstance(record.get("error"), str) else None,
    )


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@contextlib.asynccontextmanager
async def open_hyperqueue(context: BackendContext) -> AsyncIterator[HyperQueueBackend]:
    """The backend; its helper processes and pollers owned by the block."""
    servers = servers_of(context)
    try:
        interval = context.status_interval
        async with open_status_follower(context.statuses, interval) as follower:
            backend = HyperQueueBackend(servers, context.notes, follower)
            async with open_host_pollers(backend):
                yield backend
    finally:
        with trio.CancelScope(shield=True):
            for server in servers.values():
                await server.aclose()
