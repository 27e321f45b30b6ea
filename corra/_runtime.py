"""The embedded runtime: the actor kernel, the state store, the backends and the processes.

`corra.actors.open_runtime` is the kernel alone. This module composes it with what processes
need, which the kernel must not know about (DESIGN: ``actors`` knows nothing of backends).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from corra._errors import ConfigError, CorraError
from corra._statedir import make_state_dir, open_private
from corra.actors import SupervisorRef
from corra.actors import _runtime as kernel
from corra.actors._specs import SupervisorFlags, SupervisorSpec
from corra.persistence import Codec, open_store
from corra.processes._backend import (
    Backend,
    BackendContext,
    MemoryNotes,
    MemoryStatuses,
    Notes,
    Statuses,
)
from corra.processes._convert import (
    configure_history,
    configure_snapshot,
    parse_process_spec,
    spec_options_as_tables,
)
from corra.processes._fast_json import RecordEncoder, transition_encoder
from corra.processes._lifecycle import ProcessState, Result
from corra.processes._manager import ProcessManager
from corra.processes._migrations import record_1_to_2
from corra.processes._notes import StoredNotes
from corra.processes._port import ProcessPort
from corra.processes._record import ProcessRecord, Transition
from corra.processes._recovery import RecoveryReport
from corra.processes._registry import installed
from corra.processes._retention import check_count
from corra.processes._spec import (
    DEFAULT_OUTPUT_LIMIT,
    ProcessSpec,
    check_output_limit,
    check_seconds,
)
from corra.processes._statuses import ProgramStatus, StoredStatuses, statuses_of
from corra.processes._values import RESULTS_DIR, result_value
from corra.workflows._manager import WorkflowManager

if TYPE_CHECKING:
    from corra._remote import HostConfig, LoginSettings, RemoteBackends

#: Under the state dir: held (flock) by the one runtime that uses it; holds its pid.
RUNTIME_LOCK = "runtime.lock"

#: The state directory when none is given: ``$CORRA_STATE_DIR``, else ``./.corra``.
STATE_DIR_ENV = "CORRA_STATE_DIR"


def _record_codec(handles: Mapping[str, type]) -> Codec[ProcessRecord]:
    return Codec(
        ProcessRecord,
        schema=3,
        migrations={1: record_1_to_2, 2: spec_options_as_tables},
        configure=functools.partial(configure_snapshot, handles=handles),
        fast_encoder=RecordEncoder,
    )


#: The record codec of backends without handle classes (their handles are JSON values, as
#: tests' and benchmarks' backends' are).
RECORD_CODEC: Codec[ProcessRecord] = _record_codec({})


def record_codec(handles: Mapping[str, type | None]) -> Codec[ProcessRecord]:
    """The codec of process records whose handles are of the classes ``handles`` gives by
    backend name (a runtime's: its backends' `Backend.handle_type`; None for a backend
    without one). The handles of other backends are JSON values, stored and read back as
    they are. A codec owns its converter and what its encoder keeps: a new one for typed
    handles, else `RECORD_CODEC`.
    """
    typed = {name: cls for name, cls in handles.items() if cls is not None}
    return _record_codec(typed) if typed else RECORD_CODEC


HISTORY_CODEC: Codec[Transition] = Codec(
    Transition, schema=1, configure=configure_history, fast_encoder=transition_encoder
)

#: The processes supervisor: one_for_one over process actors, which are temporary (a
#: crashed process actor is brought back by the next recovery, never in a tight loop).
PROCESSES_FLAGS = SupervisorFlags(strategy="one_for_one", intensity=100, period=10.0)
#: Run actors are temporary (a run that fails says so in its record): nothing restarts.
WORKFLOWS_FLAGS = SupervisorFlags(strategy="one_for_one", intensity=100, period=10.0)


def default_state_dir() -> Path:
    """``$CORRA_STATE_DIR`` if set, else ``./.corra``."""
    return Path(os.environ.get(STATE_DIR_ENV) or ".corra")


class Runtime(kernel.Runtime):
    """What `open_runtime` yields: the kernel's runtime, plus processes with a state dir."""

    _processes: ProcessManager | None = None
    remote: RemoteBackends | None = None
    """The hosts, their transports and pools, and the backends with hosts (`corra._remote`),
    if any."""
    recovery: RecoveryReport | None = None
    state_dir: Path | None = None
    _workflows: WorkflowManager | None = None

    @property
    def workflows(self) -> WorkflowManager:
        """The workflow runs (`corra.workflows.WorkflowManager`).

        Raises:
            ConfigError: the runtime was opened without a state dir.
        """
        if self._workflows is None:
            raise ConfigError("workflows need a state dir: open_runtime(state_dir=...)")
        return self._workflows

    @property
    def processes(self) -> ProcessManager:
        """The process manager.

        Raises:
            ConfigError: the runtime was opened without a state dir.
        """
        if self._processes is None:
            raise ConfigError("processes need a state dir: open_runtime(state_dir=...)")
        return self._processes

    async def spawn_process(
        self, spec: ProcessSpec | Sequence[str] | dict[str, Any], **fields: Any
    ) -> ProcessRef:
        """Submit a process (a spec, an argv list, or spec fields) and return its ref once
        the submission is durable. A process with a known ``name`` is not submitted twice.
        """
        if isinstance(spec, ProcessSpec):
            if fields:
                raise ConfigError("spawn_process: pass fields or a ProcessSpec, not both")
            parsed = spec
        elif isinstance(spec, dict):
            parsed = parse_process_spec({**spec, **fields})
        elif isinstance(spec, (str, bytes)):
            raise ConfigError(
                f"argv: got {spec!r}, expected a list of strings (a command line is never "
                "split by a shell: pass ['sh', '-c', ...] for one)"
            )
        else:
            parsed = parse_process_spec({"argv": list(spec), **fields})
        submitted = await self.processes.submit(parsed)
        return ProcessRef(self.processes, submitted.record.id)


class ProcessRef:
    """A handle on one process by id; valid across pauses, resumes and runtimes."""

    __slots__ = ("_manager", "id")

    def __init__(self, manager: ProcessManager, process_id: str) -> None:
        self._manager = manager
        self.id = process_id

    def __repr__(self) -> str:
        return f"<ProcessRef {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProcessRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def record(self) -> ProcessRecord:
        """The current record (spec, phase, attempt, result). Never blocks."""
        return self._manager.get(self.id)

    @property
    def state(self) -> ProcessState:
        return self.record().state

    @property
    def result(self) -> Result | None:
        return self.record().state.result

    async def value(self) -> Any:
        """The value its program wrote to ``$CORRA_RESULT``, as its latest result keeps it
        (`corra.result_value`; a large one's file read in a worker thread): None if there
        is no result yet, no value (``result.has_value`` says) or a refused one
        (``result.value_error`` says why).

        Raises:
            ValueGone: the file of a large value is gone.
        """
        result = self.result
        if result is None or result.value_file is None:
            return result_value(result)
        return await trio.to_thread.run_sync(result_value, result)

    def status(self) -> ProgramStatus | None:
        """What the current attempt's program said last of how far it is (its latest line
        of ``$CORRA_STATUS``: `corra.processes._statuses`), or None. Never blocks."""
        manager = self._manager
        latest = None if manager.statuses is None else manager.statuses.latest
        return statuses_of(manager.store, [self.record()], latest)[0]

    async def pause(self) -> ProcessRecord:
        return await self._manager.pause(self.id)

    async def resume(self) -> ProcessRecord:
        return await self._manager.resume(self.id)

    async def kill(self) -> ProcessRecord:
        return await self._manager.kill(self.id)

    async def wait(self) -> ProcessRecord:
        """Wait until the process is terminal. A checkpoint."""
        return await self._manager.wait(self.id)

    async def logs(self, stream: str = "stdout", offset: int = 0, size: int = 1 << 20) -> bytes:
        """Up to ``size`` bytes of the current attempt's output from ``offset``."""
        return await self._manager.read_log(self.id, stream, offset, size)


async def _known_hosts(
    state_dir: Path, hosts: Mapping[str, HostConfig] | None
) -> dict[str, HostConfig]:
    """The hosts remembered in the state dir, updated with ``hosts`` (and remembered so)."""
    from corra._remote import remember_hosts, remembered_hosts

    remembered = await trio.to_thread.run_sync(remembered_hosts, state_dir)
    known = {**remembered, **(hosts or {})}
    if known != remembered:
        await trio.to_thread.run_sync(remember_hosts, state_dir, known)
    return known


@attrs.frozen
class OpenBackends:
    """What `open_backends` yields: the backends by name, and the hosts if there are any."""

    backends: dict[str, Backend]
    remote: RemoteBackends | None


@contextlib.asynccontextmanager
async def open_backends(
    root: SupervisorRef,
    state_dir: Path,
    hosts: Mapping[str, HostConfig],
    *,
    names: Collection[str] | None = None,
    logins: LoginSettings | None = None,
    max_running: int | None = None,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    poll_interval: float = 1.0,
    notes: Notes | None = None,
    processes: ProcessPort | None = None,
    statuses: Statuses | None = None,
    status_interval: float = 1.0,
) -> AsyncIterator[OpenBackends]:
    """The installed backends (`corra.processes._registry.installed`; only ``names`` if
    given), each opened through its plug-in for as long as the block runs. Backends with hosts
    are opened only when there are ``hosts``, after the hosts' transports (`corra._remote`).
    ``notes``: where they say where their programs are (None: kept in memory, for nobody);
    ``statuses``: where they hand what their programs say of how far they are (None: kept in
    memory), looked at every ``status_interval`` seconds where they are read here;
    ``processes``: the port to the runtime's processes, bound once its manager is open (None:
    one that is never bound).

    Raises:
        ConfigError: a plug-in cannot be loaded, or a name is not an installed backend, or a
            backend's capabilities are not those its plug-in declares.
    """
    plugins = installed.plugins
    if names is not None:
        plugins = {name: installed.get(name) for name in sorted(names)}
    async with contextlib.AsyncExitStack() as stack:
        links = None
        if hosts:
            from corra._remote import open_hosts

            links = await stack.enter_async_context(open_hosts(root, hosts, logins=logins))
        context = BackendContext(
            state_dir=state_dir,
            supervisor=root,
            hosts=dict(hosts),
            transport=None if links is None else links.transports.__getitem__,
            max_running=max_running,
            output_limit=output_limit,
            poll_interval=poll_interval,
            notes=MemoryNotes() if notes is None else notes,
            processes=ProcessPort() if processes is None else processes,
            statuses=MemoryStatuses() if statuses is None else statuses,
            status_interval=status_interval,
        )
        backends: dict[str, Backend] = {}
        for name, plugin in plugins.items():
            if plugin.capabilities.hosts and not hosts:
                continue
            backend = await stack.enter_async_context(plugin.open(context))
            if backend.capabilities != plugin.capabilities:
                raise ConfigError(
                    f"backend {name!r}: its plug-in declares {plugin.capabilities}, but the "
                    f"backend it opens has {backend.capabilities}"
                )
            if backend.handle_type is not plugin.handle:
                raise ConfigError(
                    f"backend {name!r}: its plug-in declares handles of {plugin.handle}, but "
                    f"the backend it opens returns {backend.handle_type}"
                )
            backends[name] = backend
        remote = None
        if links is not None:
            from corra._remote import RemoteBackends

            remote = RemoteBackends(
                hosts=links.hosts,
                transports=links.transports,
                registry=links.registry,
                backends={
                    name: backend
                    for name, backend in backends.items()
                    if plugins[name].capabilities.hosts
                },
            )
        yield OpenBackends(backends, remote)


@contextlib.contextmanager
def lock_state_dir(state_dir: Path) -> Any:
    """Hold the state dir's runtime lock: one runtime per state dir.

    Raises:
        ConfigError: another runtime holds it (its pid is named), or the state dir or
            its lock is refused (`corra._statedir`: another user's, writable by others, a
            symbolic link) or cannot be created.
    """
    make_state_dir(state_dir)
    path = state_dir / RUNTIME_LOCK
    try:
        fd = open_private(path, os.O_RDWR | os.O_CREAT, what="runtime lock")
    except OSError as exc:
        raise ConfigError(f"runtime lock {path}: cannot open it: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"state dir {state_dir}: another corra runtime (pid {holder}) is using it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def open_runtime(
    *,
    state_dir: str | os.PathLike[str] | None = None,
    flags: SupervisorFlags = kernel.ROOT_FLAGS,
    max_running: int | None = None,
    durable: bool = True,
    recover: bool = True,
    backends: dict[str, Backend] | None = None,
    hosts: Mapping[str, HostConfig] | None = None,
    logins: LoginSettings | None = None,
    remote_poll_interval: float = 1.0,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    retain_finished: float | None = None,
    retain_count: int | None = None,
    status_interval: float = 1.0,
) -> AsyncIterator[Runtime]:
    """Run a corra runtime for the duration of the block.

    Without ``state_dir`` it is the actor kernel alone. With one, it also opens the state
    store there, recovers the processes the last runtime left active (``recover``), and
    offers `Runtime.spawn_process`. Leaving the block stops every actor in reverse order;
    programs keep running under their chaperones, and the next runtime on the same state dir
    reattaches them.

    Args:
        state_dir: where state lives (see `default_state_dir`); None for no processes.
        flags: the root supervisor's flags.
        max_running: programs that may run at once (default: 4 per CPU).
        durable: fsync every commit (the default); False trades safety for speed.
        recover: bring back the last runtime's active processes on start.
        backends: replace the installed backends (`open_backends`: every plug-in registered
            under ``corra.backends``, those with hosts only when there are hosts); for tests
            and embedding.
        hosts: remote hosts by name (`corra.backends.ssh.HostConfig`, as a job file's
            ``[hosts.NAME]`` tables give them). They are remembered in the state dir, so a
            later runtime reaches the hosts of the processes it recovers without being given
            them again; given again, a host replaces what was remembered under its name.
        logins: the login budget all hosts share (default: one login per 5 s, burst 3).
        remote_poll_interval: seconds between two status polls of a host's programs.
        output_limit: bytes kept of each of a program's stdout and stderr when its spec sets
            no ``output_limit`` (default 1 GiB, at most 1 TiB); later output is dropped and
            the result counts it. Remote logs brought home stop at the same limit.
        retain_finished: remove terminal processes this many seconds after they ended,
            checked every minute (or tenth of it) in the background, in bounded batches
            (`ProcessManager.retain`); None (the default) keeps them.
        retain_count: keep at most this many terminal processes: the others are removed,
            those that ended first, as ``retain_finished`` removes them (either rule removes
            a process); None (the default): no such limit.
        status_interval: seconds between two looks at the status files of running programs
            that this machine can read (local and HyperQueue run dirs; a host's are read in
            its status poll, at ``remote_poll_interval``).

    Raises:
        ConfigError: another runtime uses the state dir, or a setting is not valid, or the
            state dir cannot be created or is refused (another user's, writable by others, a
            linked ``runtime.lock``: `corra._statedir`).
        RestartIntensityExceeded: the root supervisor gave up.
    """
    check_seconds("remote_poll_interval", remote_poll_interval, positive=True)
    check_seconds("status_interval", status_interval, positive=True)
    check_output_limit("output_limit", output_limit)
    if retain_finished is not None:
        check_seconds("retain_finished", retain_finished, positive=True)
    if retain_count is not None:
        check_count("retain_count", retain_count)
    async with kernel.open_runtime(flags=flags, runtime_type=Runtime) as rt:
        assert isinstance(rt, Runtime)
        if state_dir is None:
            yield rt
            return
        path = Path(state_dir)
        with lock_state_dir(path):
            async with (
                open_store(path, durable=durable) as store,
                contextlib.AsyncExitStack() as stack,
            ):
                notes = StoredNotes(store)
                statuses = StoredStatuses(store)
                port = ProcessPort()
                if backends is None:
                    opened = await stack.enter_async_context(
                        open_backends(
                            rt.root,
                            path,
                            await _known_hosts(path, hosts),
                            logins=logins,
                            max_running=max_running,
                            output_limit=output_limit,
                            poll_interval=remote_poll_interval,
                            notes=notes,
                            processes=port,
                            statuses=statuses,
                            status_interval=status_interval,
                        )
                    )
                    backends = opened.backends
                    rt.remote = opened.remote
                elif hosts:
                    raise ConfigError("open_runtime: pass hosts or backends, not both")
                supervisor = await rt.spawn_supervisor(
                    SupervisorSpec(flags=PROCESSES_FLAGS), name="processes"
                )
                nursery = await stack.enter_async_context(trio.open_nursery())
                manager = ProcessManager(
                    store=store,
                    codec=record_codec(
                        {name: backend.handle_type for name, backend in backends.items()}
                    ),
                    history_codec=HISTORY_CODEC,
                    backends=backends,
                    supervisor=supervisor,
                    nursery=nursery,
                    notes=notes,
                    results_dir=Path(os.path.abspath(path)) / RESULTS_DIR,  # noqa: ASYNC240
                    statuses=statuses,
                )
                rt._processes = manager
                port.bind(manager, parse_process_spec)
                rt.state_dir = path
                workflows = WorkflowManager(
                    store,
                    manager,
                    await rt.spawn_supervisor(
                        SupervisorSpec(flags=WORKFLOWS_FLAGS), name="workflows"
                    ),
                )
                rt._workflows = workflows
                try:
                    if recover:
                        rt.recovery = await manager.recover()
                        await workflows.recover()
                    if retain_finished is not None or retain_count is not None:
                        # (checked every minute, or ten times in the retention if shorter)
                        every = min(60.0, (retain_finished or 600.0) / 10)
                        nursery.start_soon(
                            functools.partial(manager.retain, every=every),
                            retain_finished,
                            retain_count,
                        )
                    yield rt
                finally:
                    nursery.cancel_scope.cancel()  # (the manager's waits for hosts)
                    # Run actors ask processes, and both write to the store: stop them, in
                    # that order, before it closes.
                    with trio.CancelScope(shield=True), contextlib.suppress(CorraError):
                        await rt.root.terminate_child("workflows")
                    with trio.CancelScope(shield=True), contextlib.suppress(CorraError):
                        await rt.root.terminate_child("processes")
