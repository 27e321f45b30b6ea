"""Programs on remote hosts: the chaperone, sent over SSH, runs them there.

For process actors this is the backend named ``"ssh"`` (a spec's ``host`` names the host). It
speaks to each host through a `Transport` (the host's pool actor, or the local machine for a
host with ``transport = "local"``) and to the chaperone through its remote helper
(`corra.chaperone.remote_helper`), which runs with the host's own ``python3 -I -S``.

Rule 1: nothing to install. On first use of a host the backend probes its ``python3`` (no
python3 is a clear `LaunchFailed`), uploads the `corra.chaperone` package into
``~/.corra/lib/<digest>/chaperone/`` (once per content: the digest changes when it does) and
makes its work root (``~/.corra/runs`` unless the host says ``work_root``).

Rule 2: a key is launched once, remotely too: the run dir is ``<work root>/<key>`` and the
chaperone's exclusive claim on it decides; a replayed launch answers with the first one's
handle. `find` asks the host, so recovery settles a launch whose reply was lost.

Rule 3: no channel stays open while a program runs. A launch is one exec (answered once the
program started); waits are served by one poller per host that asks about *every* watched run
dir in one exec per ``poll_interval``; logs are read by byte range from the spooled files, so
a reader that reconnects resumes at its offset. A connection that drops costs nothing: the
chaperone keeps running and recording, and the next poll finds what happened.

Rule 4: logs are shipped home while a program is watched, when the backend has a ``logs_dir``.
The status reply carries each run dir's stdout/stderr sizes, so the poller knows which files
grew without another exec, and fetches what the local copy lacks (`LocalLogs`, at most
``SHIP_CHUNK`` bytes per file per poll, so one chatty program cannot starve the others), up to
the program's output limit and never past it (the remote chaperone cuts the files back to it,
but between its checks a file may be longer). The local copy's size is the saved offset: a
runtime that restarts resumes from it, no byte lost, none twice. Once a program has exited
the rest of its logs comes home before its wait returns, and `read_log` serves from the local
copy (no connection needed) whenever it covers the range. A fetch that fails is logged and
tried again at the next poll; it never fails a wait.

Rule 5: a host that is unavailable (its pool gave up for now) raises `HostUnavailable` from
every operation; the process layer pauses the process (or fails it, per the host's
``on_unavailable``) and resumes it when the host answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from corra._errors import (
    BackendError,
    ConfigError,
    HostUnavailable,
    LaunchFailed,
    ProgramLost,
    TransportError,
)
from corra.backends import _staging
from corra.backends._exits import ExitRecord, Valueless, result_of
from corra.backends._follow import StatusReports
from corra.backends._pollers import HostPollers, check_key
from corra.backends._shared import json_reply
from corra.backends.ssh._config import HostConfig
from corra.backends.ssh._handle import RemoteHandle
from corra.backends.ssh._hosts import PACKAGE, Host, Watch, library, settle
from corra.backends.ssh._shipped import STREAMS, LocalLogs
from corra.backends.transport import Transport
from corra.chaperone._rundir import RESULT_FILE
from corra.processes._backend import (
    RESULT_STREAM,
    Capabilities,
    EffectKey,
    LaunchRequest,
    Statuses,
)
from corra.processes._lifecycle import Result
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, check_output_limit, check_seconds

logger = logging.getLogger("corra.ssh")

#: Run dirs asked about per status exec (keeps the command line far below ARG_MAX).
STATUS_BATCH = 200
#: Longest time a kill waits for the exit record beyond the grace period.
KILL_SETTLE = 10.0
#: Most bytes of one log file shipped per poll while its program runs, and per fetch.
SHIP_CHUNK = 1 << 20
#: Log files one host's poller fetches at once.
SHIP_PARALLEL = 8
#: Tries at the rest of an exited program's logs (one poll interval apart) before its wait
#: returns without them (`read_log` then reads the remote file).
SHIP_ATTEMPTS = 3


class SshProgramBackend(HostPollers):
    """Programs on the hosts it was given, in `open_host_pollers` (one poller per host).

    ``transports`` maps each host name to its `Transport` (an `SshTransport` over the host's
    pool, or a `LocalTransport`). With ``logs_dir``, the logs of watched programs are shipped
    to ``<logs_dir>/<host name>/<key>/stdout|stderr`` (see the module doc); without it, logs
    stay on the hosts and `read_log` reads them there. ``output_limit`` is the bytes kept of
    each stream of a program whose spec gives none.
    """

    capabilities = Capabilities(
        slots=True, hosts=True, staging=True, waits_for_host=True, log_size=True, status=True
    )
    handle_type = RemoteHandle

    def __init__(
        self,
        hosts: Mapping[str, HostConfig],
        transports: Mapping[str, Transport],
        *,
        poll_interval: float = 1.0,
        max_running: int = 64,
        logs_dir: Path | str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        statuses: Statuses | None = None,
    ) -> None:
        check_seconds("poll_interval", poll_interval, positive=True)
        check_output_limit("output_limit", output_limit)
        self._output_limit, self._reports = output_limit, StatusReports(statuses)
        self._hosts = {
            name: Host(config, transports[name], poll_interval) for name, config in hosts.items()
        }
        self._digest, self._files = library()
        self._slots = trio.Semaphore(max_running)
        self._held: set[EffectKey] = set()
        self._logs = LocalLogs(Path(logs_dir)) if logs_dir is not None else None
        self._valueless = Valueless()  # (programs whose records said: no value)

    def host(self, name: object) -> Host:
        host: Host = super().host(name)
        return host

    # -- slots: a bound on remote programs at once --------------------------------------

    async def acquire_slot(self, key: EffectKey) -> None:
        if key not in self._held:
            await self._slots.acquire()
            self._held.add(key)

    def try_acquire_slot(self, key: EffectKey) -> bool:
        if key not in self._held:
            try:
                self._slots.acquire_nowait()  # (never ahead of a waiter: it holds the value)
            except trio.WouldBlock:
                return False
            self._held.add(key)
        return True

    def release_slot(self, key: EffectKey) -> None:
        if key in self._held:
            self._held.discard(key)
            self._slots.release()

    def adopt_slot(self, key: EffectKey) -> None:
        if key not in self._held:
            self._held.add(key)
            with contextlib.suppress(trio.WouldBlock):
                self._slots.acquire_nowait()

    # -- set-up of a host ------------------------------------------------------------------

    async def _ready(self, host: Host) -> None:
        if host.lib_dir is not None:
            return
        async with host.setup_lock:
            if host.lib_dir is not None:
                return
            probe = await host.transport.run(
                [
                    host.config.python,
                    "-I",
                    "-S",
                    "-c",
                    "import os, sys; print(sys.version_info[0], sys.version_info[1], "
                    "os.path.expanduser('~'))",
                ]
            )
            if probe.returncode != 0:
                detail = probe.stderr.decode(errors="replace").strip()[-300:]
                raise LaunchFailed(
                    f"host {host.config.name}: cannot run {host.config.python!r} there "
                    f"(exit status {probe.returncode}{': ' + detail if detail else ''}); corra "
                    "needs a python3 (3.6 or newer, standard library only) on the host"
                )
            major, minor, home = probe.stdout.decode().split(maxsplit=2)
            if (int(major), int(minor)) < (3, 6):
                raise LaunchFailed(
                    f"host {host.config.name}: {host.config.python} is {major}.{minor}; corra "
                    "needs 3.6 or newer"
                )
            home = home.strip()
            lib_dir = posixpath.join(home, ".corra", "lib", self._digest)
            last = list(self._files)[-1]
            present = await host.transport.stat(posixpath.join(lib_dir, last))
            if present is None or present.size != len(self._files[last]):
                await host.transport.mkdir(posixpath.join(lib_dir, PACKAGE))
                for name, data in self._files.items():
                    await host.transport.write_file(posixpath.join(lib_dir, name), data)
            root = host.config.work_root or posixpath.join(home, ".corra", "runs")
            if not posixpath.isabs(root):
                root = posixpath.join(home, root)
            await host.transport.mkdir(root)
            host.work_root = root
            host.lib_dir = lib_dir

    def _run_dir(self, host: Host, key: str) -> str:
        assert host.work_root is not None
        check_key(key)
        return posixpath.join(host.work_root, key)

    # -- the Backend protocol ------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> RemoteHandle:
        host = self.host(request.host)
        await self._ready(host)
        key = str(request.key)
        run_dir = self._run_dir(host, key)
        limits = request.limits
        document = {
            "key": key,
            "argv": list(request.argv),
            "cwd": request.cwd,
            "env": request.environment(),
            "timeout": limits.timeout,
            "kill_grace": limits.kill_grace,
            "memory_limit": None,
            "pids_limit": None,
            "output_limit": self._output_limit if limits.output is None else limits.output,
            "cgroups": [],
            "cgroup_notes": [],
        }
        if request.inputs:
            (status,) = await self._status(host, [run_dir])
            if status.get("state") == "absent":  # never upload under a program that runs
                await _staging.upload(
                    host.transport,
                    host.config.python,
                    request.cwd or posixpath.join(run_dir, "work"),
                    dict(request.inputs),
                    host.config.name,
                )
        result = await host.transport.run(
            [*host.helper, "launch", run_dir], stdin=json.dumps(document).encode(), check=True
        )
        reply = json_reply(result.stdout, f"host {host.config.name}: the remote helper")
        status = reply.get("status")
        if status in ("started", "claimed") and reply.get("handle"):
            return RemoteHandle.of(
                host.config.name,
                key,
                reply["handle"],
                **_staging.output_fields(request, run_dir),
                output_limit=document["output_limit"],
            )
        if status in ("failed", "invalid"):
            raise LaunchFailed(f"{key} on {host.config.name}: {reply.get('error')}")
        raise BackendError(f"{key} on {host.config.name}: unexpected reply {reply!r}")

    async def find(self, key: EffectKey, host_name: str | None = None) -> RemoteHandle | None:
        """The handle of ``key``'s program (on ``host_name``, else on any host), or None."""
        for host in self.hosts_for(host_name):
            await self._ready(host)
            (status,) = await self._status(host, [self._run_dir(host, str(key))])
            if status.get("handle"):
                return RemoteHandle.of(host.config.name, str(key), status["handle"])
        return None

    async def _status(self, host: Host, run_dirs: list[str]) -> list[dict[str, Any]]:
        result = await host.transport.run([*host.helper, "status", *run_dirs], check=True)
        host.polls += 1
        statuses = json_reply(result.stdout, f"host {host.config.name}: the remote helper")
        if not isinstance(statuses, list) or len(statuses) != len(run_dirs):
            raise BackendError(f"host {host.config.name}: a status reply that does not fit")
        self._reports.report_entries(run_dirs, statuses)  # (their status files' ends, if any)
        return statuses

    async def wait(self, handle: RemoteHandle) -> Result:
        host = self.host(handle.host)
        await self._ready(host)
        watch = Watch(handle.run_dir, self._limit_of(handle))
        await self._watch(host, watch.run_dir, watch)
        result = self._settled(host, watch.status or {})
        await _staging.retrieve_outputs(host.transport, host.config.python, handle)
        return result

    def _limit_of(self, handle: RemoteHandle) -> int:
        """The output limit ``handle``'s program was launched with (else this backend's)."""
        limit = handle.output_limit
        return limit if limit is not None and limit > 0 else self._output_limit

    def _settled(self, host: Host, status: Mapping[str, Any]) -> Result:
        if status.get("state") == "exited":
            record = ExitRecord.from_json(status.get("record"))
            return result_of(self._valueless.note(posixpath.basename(status["dir"]), record))
        raise ProgramLost(
            f"{status.get('dir')} on {host.config.name}: the chaperone is gone and left no "
            "exit record"
        )

    async def _poller(self, host: Host) -> None:
        """One status exec per interval for every watched run dir of the host."""
        while True:
            if not host.watches:
                host.wake = trio.Event()
                await host.wake.wait()
            run_dirs = list(host.watches)
            try:
                statuses: list[dict[str, Any]] = []
                for start in range(0, len(run_dirs), STATUS_BATCH):
                    statuses += await self._status(host, run_dirs[start : start + STATUS_BATCH])
            except HostUnavailable as exc:
                for watches in host.watches.values():
                    for watch in watches:
                        watch.error = exc
                        watch.event.set()
                host.watches.clear()
                continue
            except (TransportError, BackendError) as exc:
                logger.warning("host %s: status poll failed: %s", host.config.name, exc)
                statuses = []
            if self._logs is not None and self._logs.ships(host.config.name):
                await self._ship_running(host, statuses)
            for status in statuses:
                if status.get("state") not in ("exited", "lost"):
                    continue
                if self._logs is None or not self._logs.ships(host.config.name):
                    settle(host, status)
                elif status["dir"] not in host.finishing:
                    host.finishing.add(status["dir"])
                    self._poll_nursery.start_soon(self._finish, host, status)
            await trio.sleep(host.poll_interval)

    # -- log shipping ----------------------------------------------------------------------

    async def _ship_running(self, host: Host, statuses: list[dict[str, Any]]) -> None:
        """Ship up to `SHIP_CHUNK` new bytes of each log file of the running programs (at most
        `SHIP_PARALLEL` fetches at once); a failure is logged and left for the next poll."""
        limiter = trio.CapacityLimiter(SHIP_PARALLEL)

        async def one(status: dict[str, Any]) -> None:
            try:
                limit = self._watched_limit(host, status)
                await self._ship(host, status, limit, budget=SHIP_CHUNK, limiter=limiter)
            except (BackendError, OSError) as exc:
                logger.warning(
                    "host %s: shipping the logs of %s failed (next poll tries again): %s",
                    host.config.name,
                    status.get("dir"),
                    exc,
                )

        async with trio.open_nursery() as nursery:
            for status in statuses:
                if status.get("state") == "running" and isinstance(status.get("sizes"), dict):
                    nursery.start_soon(one, status)

    def _watched_limit(self, host: Host, status: Mapping[str, Any]) -> int:
        watches = host.watches.get(status["dir"])
        return watches[0].limit if watches else self._output_limit

    async def _ship(
        self,
        host: Host,
        status: Mapping[str, Any],
        limit: int,
        *,
        budget: int | None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> bool:
        """Fetch what the local copies of the run dir's logs lack of the sizes in ``status``,
        never past ``limit`` bytes per file (at most ``budget`` bytes per file per call; all
        when None), in `SHIP_CHUNK` reads, each appended at once; whether the copies now
        reach those sizes (or the limit). Raises what a fetch or a write raises (what was
        appended before stays: it is the new offset)."""
        assert self._logs is not None
        name, run_dir = host.config.name, status["dir"]
        key = posixpath.basename(run_dir)
        sizes = status.get("sizes")
        if not isinstance(sizes, dict):  # a helper that does not report sizes
            return False
        whole = True
        for stream in STREAMS:
            target = sizes.get(stream)
            if not isinstance(target, int):
                continue
            target = min(target, limit)  # past it: bytes the chaperone is about to cut
            offset = await self._logs.size(name, key, stream)
            end = target if budget is None else min(target, offset + budget)
            while offset < end:
                if limiter is not None:
                    async with limiter:
                        data = await self._fetch(host, run_dir, stream, offset, end - offset)
                else:
                    data = await self._fetch(host, run_dir, stream, offset, end - offset)
                if not data:
                    break
                offset = await self._logs.append(name, key, stream, offset, data)
            whole = whole and offset >= target
        return whole

    async def _fetch(self, host: Host, run_dir: str, stream: str, offset: int, size: int) -> bytes:
        path = posixpath.join(run_dir, stream)
        return await host.transport.read_range(path, offset, min(size, SHIP_CHUNK))

    async def _finish(self, host: Host, status: dict[str, Any]) -> None:
        """Ship the rest of an exited (or lost) program's logs, mark the copies whole (exited
        only), then settle its waits; a failing fetch is tried `SHIP_ATTEMPTS` times, then the
        waits settle without the rest (`read_log` falls back to the remote file)."""
        assert self._logs is not None
        run_dir = status["dir"]
        try:
            for attempt in range(1, SHIP_ATTEMPTS + 1):
                try:
                    limit = self._watched_limit(host, status)
                    whole = await self._ship(host, status, limit, budget=None)
                    if whole and status.get("state") == "exited":
                        await self._logs.complete(
                            host.config.name, posixpath.basename(run_dir), status["sizes"]
                        )
                    break
                except (BackendError, OSError) as exc:
                    logger.warning(
                        "host %s: shipping the rest of the logs of %s failed (try %d of %d): %s",
                        host.config.name,
                        run_dir,
                        attempt,
                        SHIP_ATTEMPTS,
                        exc,
                    )
                    if attempt < SHIP_ATTEMPTS:
                        await trio.sleep(host.poll_interval)
        finally:
            host.finishing.discard(run_dir)
        self._logs.forget(host.config.name, posixpath.basename(run_dir))
        settle(host, status)

    async def kill(self, handle: RemoteHandle, grace: float) -> Result | None:
        host = self.host(handle.host)
        await self._ready(host)
        run_dir = handle.run_dir
        await host.transport.run([*host.helper, "kill", repr(float(grace)), run_dir], check=True)
        with trio.move_on_after(grace + KILL_SETTLE):
            while True:
                (status,) = await self._status(host, [run_dir])
                if status.get("state") == "exited":
                    await self._ship_rest(host, status, self._limit_of(handle))
                    return self._settled(host, status)
                if status.get("state") in ("lost", "absent"):
                    return None
                await trio.sleep(min(0.2, host.poll_interval))
        raise BackendError(f"{run_dir} on {host.config.name}: still running after the kill")

    async def _ship_rest(self, host: Host, status: dict[str, Any], limit: int) -> None:
        """After a kill: the rest of the logs, once, and the copies marked whole; a failure
        is only logged (`read_log` falls back to the remote file)."""
        if self._logs is None or not self._logs.ships(host.config.name):
            return
        key = posixpath.basename(status["dir"])
        try:
            if await self._ship(host, status, limit, budget=None):
                await self._logs.complete(host.config.name, key, status["sizes"])
        except (BackendError, OSError) as exc:
            logger.warning(
                "host %s: shipping the rest of the logs of %s failed: %s",
                host.config.name,
                status["dir"],
                exc,
            )

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host_name: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of ``stream`` of the program of ``key`` from ``offset`` (on
        ``host_name``, else on the first host that has its run dir); none if it has none.

        From the local copy when it covers the range (or is whole), with no connection to
        the host; else from the remote file (where the local copy lags, or was never made);
        else, if the remote file is gone or the host cannot be reached, what the local copy
        has. ``result``: the program's value, from the run dir (none if its record said so)."""
        if stream not in STREAMS and stream != RESULT_STREAM:
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        name = check_key(str(key))  # (its run dir, and its logs' directory)
        if stream == RESULT_STREAM and self._valueless.take(name):
            return b""
        file = RESULT_FILE if stream == RESULT_STREAM else stream  # (a value is never shipped)
        for host in self.hosts_for(host_name):
            local: bytes | None = None
            if file in STREAMS and self._logs is not None and self._logs.ships(host.config.name):
                try:
                    found = await self._logs.read(host.config.name, name, stream, offset, size)
                except OSError as exc:
                    logger.warning("%s: cannot read the local copy: %s", name, exc)
                    found = None
                if found is not None:
                    local, covers = found
                    if covers:
                        return local
            try:
                await self._ready(host)
                path = posixpath.join(self._run_dir(host, name), file)
                if await host.transport.stat(path) is not None:
                    return await host.transport.read_range(path, offset, size)
            except TransportError:
                if local is None:
                    raise
            if local is not None:
                return local
        return b""

    async def remove(self, key: EffectKey, host_name: str | None = None) -> None:
        """Remove the run dir of ``key`` on its host (on every host for None) and the logs
        brought home from there.

        Raises:
            TransportError: a host cannot be reached (what is here is removed already).
        """
        name = check_key(str(key))
        for host in self.hosts_for(host_name):
            if self._logs is not None and self._logs.ships(host.config.name):
                await self._logs.remove(host.config.name, name)
            await self._ready(host)
            await host.transport.remove(self._run_dir(host, name), recursive=True)

    async def log_size(
        self, key: EffectKey, stream: str, host_name: str | None = None
    ) -> int | None:
        """How many bytes of ``stream`` the program of ``key`` has written, as its host says;
        None if the host cannot say now (its file is gone, or it does not answer)."""
        if stream not in STREAMS:
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        name = check_key(str(key))
        for host in self.hosts_for(host_name):
            try:
                await self._ready(host)
                info = await host.transport.stat(posixpath.join(self._run_dir(host, name), stream))
            except TransportError:
                return None
            if info is not None:
                return info.size
        return None

    def polls(self, host_name: str) -> int:
        """Status execs made for ``host_name`` so far."""
        return self.host(host_name).polls
