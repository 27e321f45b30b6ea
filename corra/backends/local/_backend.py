"""`LocalBackend`: programs on this machine, each under a detached chaperone.

Rule 1: a key is launched once. The chaperone's claim on the run dir is exclusive, so a launch
retried after a crash (or twice at once, by two backends, of either kind) finds the first one
and returns its handle.

Rule 2: a launch that could not start the program raises `LaunchFailed`, and keeps doing so when
retried with the same key: a program whose argv[0] cannot be executed has a claimed run dir
whose ``exit.json`` carries the error (so recovery sees it too); a missing cwd claims nothing.

Rule 3: the event loop never waits on the disk or on a process. Disk work happens in the
chaperone or in a worker thread (which also connects to the shared chaperone, and starts it);
the runtime learns that a program ended from the shared chaperone's connection, or from an own
chaperone's pipe (programs this backend launched) or from a pidfd on it (programs found by key).
What runs on the loop is non-blocking pipe and socket I/O and reads of /proc.

Rule 4: programs outlive the backend and its runtime. Closing the backend (or its runtime
dying) closes the connections; chaperones keep running their programs, enforcing their
timeouts and kills, and writing their exit records. Programs of a chaperone that died without
writing their exit records are lost (`ProgramLost`), and `kill` ends what is left of them from
their pid files (`corra.backends.local._orphans`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Literal

import trio

from corra._errors import BackendError, ConfigError, LaunchFailed, ProgramLost
from corra._statedir import check_directory, make_private_dirs
from corra.backends._exits import ExitRecord, Valueless, result_of
from corra.backends._follow import DEFAULT_INTERVAL, StatusFollower, following
from corra.backends.local import _cgroups
from corra.backends.local._cgroups import CgroupSupport
from corra.backends.local._clients import ChaperoneClient, OwnClient
from corra.backends.local._orphans import kill_orphaned, spec_grace
from corra.backends.local._rundirs import (
    POLL_FIRST,
    POLL_MAX,
    Handle,
    Status,
    chaperone_alive,
    check_key,
    exit_record,
    file_size,
    find_launch,
    log_file,
    pread,
    read_status,
    remove_run_dir,
)
from corra.backends.local._shared import SharedClient
from corra.backends.local._slots import Slots, SlotStatistics
from corra.chaperone import _rundir
from corra.processes._backend import (
    RESULT_STREAM,
    BackendBase,
    Capabilities,
    EffectKey,
    LaunchRequest,
    Statuses,
)
from corra.processes._lifecycle import Result
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, check_output_limit, check_seconds

ChaperoneKind = Literal["shared", "own"]


class LocalBackend(BackendBase):
    """Programs on this machine, one run dir each under ``root`` (`corra.processes._backend.
    Backend`: a `LaunchRequest` in, a `Handle` out, a `Result` at the end).

    Args:
        root: where run dirs go (``root/<key>``); created on first launch.
        max_running: the slot limit (`acquire_slot`); default 4 per CPU.
        cgroups: "auto" uses what `cgroups` found (kill through ``cgroup.kill``, memory and pids
            limits); "off" uses none (kill reaches the process group only).
        chaperone: "shared" (one chaperone for the root, started on first use and shared with
            every backend on the root) or "own" (a chaperone per program: slower to launch,
            but a chaperone that is killed loses one program, not all).
        output_limit: bytes kept of each stream of a program whose request gives none (1 GiB).
        statuses: where the status lines of the programs it waits for go (their run dirs'
            ``status.jsonl``, looked at every ``status_interval`` seconds); None: not followed.

    Use it as ``async with LocalBackend(root) as backend:``: the connection to the shared
    chaperone runs its tasks in the block's nursery, and is closed at its end. Programs are
    not: they outlive the backend, by design.
    """

    capabilities = Capabilities(slots=True, log_size=True, status=True)
    handle_type = Handle

    def __init__(
        self,
        root: Path | str,
        *,
        max_running: int | None = None,
        cgroups: Literal["auto", "off"] = "auto",
        chaperone: ChaperoneKind = "shared",
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        statuses: Statuses | None = None,
        status_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        check_output_limit("output_limit", output_limit)
        check_seconds("status_interval", status_interval, positive=True)
        self._follower = None if statuses is None else StatusFollower(statuses, status_interval)
        self._following = trio.CancelScope()
        self.output_limit = output_limit
        self._valueless = Valueless()  # (programs that wrote no value: `read_log`)
        if max_running is None:
            max_running = 4 * (os.cpu_count() or 1)
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ConfigError(f"max_running: expected a positive int, got {max_running!r}")
        if cgroups not in ("auto", "off"):
            raise ConfigError(f"cgroups: expected 'auto' or 'off', got {cgroups!r}")
        if chaperone not in ("shared", "own"):
            raise ConfigError(f"chaperone: expected 'shared' or 'own', got {chaperone!r}")
        self.root = Path(root).absolute()
        self.chaperone: ChaperoneKind = chaperone
        self._cgroup_suffix = _cgroups.cgroup_suffix(str(self.root))
        self._cgroups = _cgroups.detect_here() if cgroups == "auto" else _cgroups.OFF
        self._prepared = False
        self._preparing = trio.Lock()
        self._launching: dict[str, trio.Event] = {}
        self._shared = SharedClient(self.root, self._prepare)
        self._own = OwnClient(self.root)
        self._launcher: ChaperoneClient = self._shared if chaperone == "shared" else self._own
        self._slots = Slots(max_running)
        self._closed = False
        self._tasks: contextlib.AsyncExitStack | None = None

    @property
    def cgroups(self) -> CgroupSupport:
        """What cgroups do for programs here (after the first launch: what really worked)."""
        return self._cgroups

    async def __aenter__(self) -> LocalBackend:
        async with contextlib.AsyncExitStack() as stack:
            self._shared.nursery = await stack.enter_async_context(trio.open_nursery())
            if self._follower is not None:
                await self._shared.nursery.start(self._follow)
            self._tasks = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tasks is not None, "LocalBackend: __aexit__ without __aenter__"
        try:
            await self.aclose()
        finally:
            tasks, self._tasks = self._tasks, None
            handled = await tasks.__aexit__(*exc_info)
        return handled

    async def _follow(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._follower is not None
        with self._following:
            await self._follower.run(task_status=task_status)

    async def aclose(self) -> None:
        """Close the connection to the shared chaperone and the pipes of own ones, and stop
        following status files. Running programs and their chaperones are not touched. A
        checkpoint."""
        self._closed = True
        self._following.cancel()
        self._own.close()
        self._shared.close()
        await trio.lowlevel.checkpoint()

    def _client_of(self, handle: Handle) -> ChaperoneClient:
        """Who watches ``handle``'s program: the kind of chaperone its handle names, whatever
        this backend launches with."""
        return self._shared if handle.shared else self._own

    # launching ----------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> Handle:
        """Start the program of ``request.key``, once: if the key was launched before (by this
        runtime or one before a crash), return that launch's handle instead.

        Returns once the program runs (its pid is known). Cancelling it leaves the launch to
        finish or not; launching the key again tells which.

        Raises:
            ConfigError: ``request`` is not a `LaunchRequest`.
            LaunchFailed: the program could not be started: cwd missing, argv[0] not found or
                not executable (also recorded in ``exit.json``'s ``error``, so a later launch of
                the same key raises again).
            BackendError: the chaperone could not be reached or started (worth a retry).
        """
        if not isinstance(request, LaunchRequest):
            raise ConfigError(f"request: expected a LaunchRequest, got {request!r}")
        key = check_key(str(request.key))
        if self._closed:
            raise BackendError("the backend is closed")
        while key in self._launching:
            await self._launching[key].wait()
        self._launching[key] = done = trio.Event()
        try:
            await self._prepare()
            document = self._document(key, request)
            handle = await self._launcher.launch(key, document, request.environment())
            return handle if handle is not None else await self._existing(key)
        finally:
            del self._launching[key]
            done.set()

    async def _prepare(self) -> None:
        if self._prepared:
            return
        async with self._preparing:
            if not self._prepared:
                self._cgroups = await trio.to_thread.run_sync(self._prepare_sync, self._cgroups)
                self._prepared = True

    def _prepare_sync(self, support: CgroupSupport) -> CgroupSupport:
        try:
            make_private_dirs(self.root)
            check_directory(self.root, "runs dir")
        except ConfigError as exc:
            raise LaunchFailed(str(exc)) from None
        if support.layout == "off":
            return support
        support = _cgroups.prepare(support)
        _cgroups.sweep(support, self.root, self._cgroup_suffix)
        return support

    def _document(self, key: str, request: LaunchRequest) -> dict[str, Any]:
        """The spec as the chaperone needs it, resolved against this runtime (its ``env`` is
        the client's: what goes on top of the runtime's environment differs by kind)."""
        limits = request.limits
        entries, notes = self._cgroups.entries(
            key + self._cgroup_suffix, limits.memory, limits.pids
        )
        return {
            "key": key,
            "argv": list(request.argv),
            "cwd": None if request.cwd is None else os.path.abspath(request.cwd),
            "timeout": limits.timeout,
            "kill_grace": limits.kill_grace,
            "memory_limit": limits.memory,
            "pids_limit": limits.pids,
            "output_limit": self.output_limit if limits.output is None else limits.output,
            "cgroups": entries,
            "cgroup_notes": notes,
        }

    async def _existing(self, key: str) -> Handle:
        """The handle of an earlier launch of ``key``, once its program is started (or not)."""
        delay = POLL_FIRST
        while True:
            handle = await trio.to_thread.run_sync(find_launch, self.root, key)
            if handle is None:
                raise BackendError(f"{key}: claimed but without a chaperone.pid")
            if handle.pid is not None:
                return handle
            record = await trio.to_thread.run_sync(exit_record, handle)
            if record is not None and record.error is not None:
                raise LaunchFailed(f"{key}: {record.error}")
            if record is not None or not chaperone_alive(handle):
                return handle  # never started, or lost: wait() tells which
            await trio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    # looking ------------------------------------------------------------------------------

    async def find(self, key: EffectKey, host: str | None = None) -> Handle | None:
        """The handle of ``key``'s launch, from its pid files; None if it was never launched.
        Reads in a worker thread."""
        return await trio.to_thread.run_sync(find_launch, self.root, str(key))

    def exit_record(self, handle: Handle) -> ExitRecord | None:
        """How the program ended, or None while it has not (or it is lost). Blocking.

        Raises:
            BackendError: exit.json is there but not an exit record.
        """
        return exit_record(handle)

    def status(self, handle: Handle) -> Status:
        """``exited`` (there is an exit record), ``running`` (its chaperone runs) or ``lost``
        (its chaperone is gone, or its pid is another process's now, and left no record)."""
        return read_status(handle)

    def log_path(self, handle: Handle, stream: str) -> Path:
        if stream not in _rundir.STREAMS:
            raise ConfigError(f"stream: expected 'stdout' or 'stderr', got {stream!r}")
        return Path(handle.run_dir) / stream

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of the program's ``stream`` from byte ``offset`` (fewer at the
        end; empty before the program wrote anything). Reads in a worker thread."""
        path = log_file(self.root, str(key), stream)
        if path is None:
            return b""
        if stream == RESULT_STREAM and self._valueless.take(str(key)):
            await trio.lowlevel.checkpoint()  # (no worker thread: about 0.1 ms of every end)
            return b""
        return await trio.to_thread.run_sync(pread, path, offset, size)

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        """Remove the run dir of ``key`` (its logs, pid files and exit record are in it)."""
        await trio.to_thread.run_sync(remove_run_dir, self.root, str(key))

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int:
        """How many bytes of ``stream`` the program of ``key`` has written (0 before any)."""
        path = log_file(self.root, str(key), stream)
        if path is None:
            return 0
        return await trio.to_thread.run_sync(file_size, path)

    # waiting and killing --------------------------------------------------------------------

    async def wait(self, handle: Handle) -> Result:
        """Wait for the program to end; its result (`wait_record`'s, as a `Result`).

        Raises:
            ProgramLost: the chaperone is gone and left no exit record.
        """
        return result_of(self._valueless.note(handle.key, await self.wait_record(handle)))

    async def wait_record(self, handle: Handle) -> ExitRecord:
        """Wait for the program to end; its exit record, all of it (exit.json exists by then).

        Woken by the shared chaperone's message, by an own chaperone's pipe for programs this
        backend launched, else by a pidfd on the own chaperone; it polls (with backoff) only
        where there are no pidfds. A checkpoint; cancelling it leaves the program alone, and a
        later wait picks up where it stopped.

        While it waits, the program's status file is followed (`StatusFollower`), and read
        once more once it has ended.

        Raises:
            ProgramLost: the chaperone is gone and left no exit record.
        """
        path = os.path.join(handle.run_dir, _rundir.STATUS_FILE)
        waiting = functools.partial(self._client_of(handle).wait, handle)
        return await following(self._follower, EffectKey.parse(handle.key), path, waiting)

    async def kill(self, handle: Handle, grace: float | None = None) -> Result | None:
        """Kill the program (`kill_record`); its result, or None if it was lost."""
        record = await self.kill_record(handle, grace)
        return None if record is None else result_of(self._valueless.note(handle.key, record))

    async def kill_record(self, handle: Handle, grace: float | None = None) -> ExitRecord | None:
        """Kill the program: SIGTERM to its group, SIGKILL after ``grace`` seconds (None: the
        request's ``kill_grace``), and its cgroup with it.

        The chaperone does it (so a kill survives a runtime crash half-way) and records
        ``killed``; if the chaperone is gone, the runtime kills the group itself. Returns the
        exit record once there is one, or None if the program was lost (and is now gone).
        Cancelling the wait leaves the kill under way.
        """
        if grace is not None:
            check_seconds("grace", grace, positive=False)
        client = self._client_of(handle)
        if await client.kill(handle, grace):
            with contextlib.suppress(ProgramLost):
                return await client.wait(handle)
        record = await trio.to_thread.run_sync(exit_record, handle)
        if record is not None:
            return record
        if grace is None:
            grace = await trio.to_thread.run_sync(spec_grace, handle)
        await kill_orphaned(handle, grace, self._cgroup_paths(handle.key))
        return None

    def _cgroup_paths(self, key: str) -> list[str]:
        """Where this backend would have put the cgroups of ``key``."""
        return _cgroups.paths(self._cgroups, key + self._cgroup_suffix)

    # slots --------------------------------------------------------------------------------

    async def acquire_slot(self, key: EffectKey) -> None:
        """Wait for one of ``max_running`` slots, first come first served; at once if ``key``
        holds one already. A checkpoint; cancelling it gives up the place in the queue."""
        await self._slots.acquire(key)

    def try_acquire_slot(self, key: EffectKey) -> bool:
        """Take a slot at once if one is free and nobody is queued (True), else False: the
        caller queues with `acquire_slot`. Never waits."""
        return self._slots.try_acquire(key)

    def release_slot(self, key: EffectKey) -> None:
        """Give ``key``'s slot to the next in line (nothing if it holds none)."""
        self._slots.release(key)

    def adopt_slot(self, key: EffectKey) -> None:
        """Count ``key`` as running without waiting, even above the limit (for programs found
        running at recovery)."""
        self._slots.adopt(key)

    def slot_statistics(self) -> SlotStatistics:
        return self._slots.statistics()
