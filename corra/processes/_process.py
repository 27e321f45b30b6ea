"""Process actors: a program driven through its lifecycle, every transition durable first.

One actor per active process, under the ``/processes`` supervisor. The actor runs a loop of
steps, one per phase (``created`` waits for a slot, ``launching`` launches, ``running`` waits
for the exit, ``killing`` kills); each step ends with a transition that is durable in the store
before the next step starts (write-ahead), and every effect carries the idempotency key
``<process id>.<attempt>``, so a step replayed after a crash finds the effect it already had
instead of repeating it.

What a process waits for. An intent (``launching``, ``killing``) and an end (``finished``,
``failed``, ``killed``, ``paused``) are durable before the actor goes on, and a terminal record
before `ProcessManager.wait` reports it. Two writes are spared: a process submitted while its
backend has a slot free (`Backend.try_acquire_slot`) is durable as ``launching`` at once, both
transitions in its history (one durable write instead of two before its launch); and
``running`` is written in the background, not waited for (a crash that loses it leaves the
process ``launching``, which recovery settles by the idempotent launch: the program is found by
its key, not started again). A process's writes commit in order; a write that failed is
written again, first, with the next one (`ProcessManager._persist`), so the history stays
complete and in order.

Pause and kill are requests to the actor. They take effect between steps: a wait (for a slot,
for the exit) is interrupted, an effect in progress (a launch) is not. A paused process is its
snapshot and nothing else: its actor ends, and `ProcessManager.resume` starts a fresh one at the
step that was next. Pausing a running program does not stop the program; it stops watching it
(the chaperone keeps recording), and resume collects what happened meanwhile.

A host that stops answering (`HostUnavailable` from a remote backend) pauses the processes
that need it, with the reason ``host unavailable: NAME: ...`` (or fails them, if the host's
policy says so). Such a process stays in the store's active index, and a task of the manager
waits for the host (`Backend.wait_available`) and resumes it; a later runtime's recovery finds
it there and waits for the host again.

The actor knows the backend only through the `Backend` protocol below; which backends exist is
decided above this package.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs
import trio

from corra._errors import (
    ActorStopped,
    BackendError,
    ConfigError,
    HostUnavailable,
    InvalidTransition,
    LaunchFailed,
    NameTaken,
    NoSuchProcess,
    ProgramLost,
    StoreError,
)
from corra.actors._actor import Actor, Ref
from corra.actors._specs import Backoff, ChildSpec
from corra.actors._supervisor import SupervisorRef
from corra.processes._lifecycle import (
    ACTIVE,
    PAUSABLE,
    Event,
    ProcessState,
    Result,
    advance,
    allowed,
)
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec import ProcessSpec

logger = logging.getLogger("corra.process")

#: Delay before attempt n+1 of a transient or permanent process.
RETRY_BACKOFF = Backoff(initial=1.0, factor=2.0, max=60.0)
#: The most output one `read_log` returns, whatever it is asked for.
MAX_LOG_READ = 16 << 20
#: The largest log offset a read may start at: the largest integer JSON carries exactly
#: (8 PiB, far beyond any log; a file offset stops at 2**63 - 1).
MAX_LOG_OFFSET = 2**53 - 1
#: Transient trouble in a step (the store, the backend) is retried this often, then the
#: process fails with the reason.
STEP_RETRIES = 5
#: The start of the ``reason`` of a process paused because its host stopped answering.
HOST_UNAVAILABLE = "host unavailable"
#: Between two attempts to learn whether a host answers again, when asking failed.
HOST_RETRY_DELAY = 5.0


def paused_for_host(state: ProcessState) -> bool:
    """Whether ``state`` is a pause that corra made because the host stopped answering (and
    that it ends by itself when the host answers again)."""
    return (
        state.phase == "paused"
        and state.reason is not None
        and state.reason.startswith(f"{HOST_UNAVAILABLE}: ")
    )


class Backend(Protocol):
    """Where programs run, as a process actor needs it. Handles are JSON-able mappings.

    Optional: ``try_acquire_slot(key) -> bool``, which takes a slot if one is free now and
    nobody waits for one (never blocks). With it, a process submitted while a slot is free
    is durable as launching at once: one durable write fewer before its launch.

    Optional: ``async pause(handle)`` and ``async resume(handle)``, told after a pause of a
    launched program is durable, and before its resume is (e.g. to hold a queued job and
    release it); a failure of either is logged, never fails the process.

    Optional: ``async log_size(key, stream, host) -> int | None``, how many bytes of the
    output `read_log` can read there are now (None: it cannot tell now); without it, a read
    of the output there is goes on for as long as the program writes.

    Optional, for backends with hosts (``host`` is the spec's): ``async wait_available(host)``,
    which returns once the host answers again after `HostUnavailable`; without it, a process
    whose host is unavailable fails. ``check_spec(spec)``, which refuses (`ConfigError`) a
    spec the backend cannot run, at submission (an unknown host, bad options).
    """

    async def acquire_slot(self, key: str) -> None:
        """Wait (in submission order) until another program may run."""

    def release_slot(self, key: str) -> None:
        """Give the slot of ``key`` back; a no-op if it holds none."""

    def adopt_slot(self, key: str) -> None:
        """Count a program that runs already (reattached), even above the limit."""

    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        """Start the program, once per key: a second call returns the first's handle."""

    async def find(self, key: str, host: str | None = None) -> dict[str, Any] | None:
        """The handle of a program launched with ``key`` (on ``host``), or None."""

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        """Wait for the program's exit. Raises `ProgramLost`."""

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        """SIGTERM its group, SIGKILL after ``grace``; the result once it is gone."""

    async def read_log(
        self, key: str, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of the output of the program launched with ``key``."""


class PendingSave(Protocol):
    """A save queued without waiting (`corra.persistence.PendingSave`)."""

    @property
    def done(self) -> bool: ...

    @property
    def error(self) -> BaseException | None: ...


class Store(Protocol):
    """The part of `corra.persistence.Store` that processes use."""

    async def save(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transition: bytes | None = None,
        transitions: Sequence[bytes] = (),
        name: str | None = None,
        active: bool | None = None,
        after: Any = None,
        shielded: bool = False,
    ) -> None: ...

    def save_nowait(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transitions: Sequence[bytes] = (),
        active: bool | None = None,
    ) -> PendingSave: ...

    def load(self, process_id: str) -> bytes | None: ...

    def history(self, process_id: str) -> list[bytes]: ...

    def id_for_name(self, name: str) -> str | None: ...

    def scan(self) -> Iterator[tuple[str, bytes]]: ...

    def scan_decoded(self, codec: Any) -> tuple[dict[str, Any], list[Any]]: ...

    def scan_active(self) -> Iterator[tuple[str, bytes]]: ...

    def has_active_index(self) -> bool: ...

    def counts(self) -> SnapshotCounts: ...

    async def rebuild_active_index(self, is_active: Callable[[bytes], bool]) -> int: ...

    async def set_aside(self, process_id: str, raw: bytes, reason: str) -> None: ...


class SnapshotCounts(Protocol):
    @property
    def snapshots(self) -> int: ...

    @property
    def active(self) -> int: ...


class Codec(Protocol):
    def encode(self, value: Any) -> bytes: ...

    def decode(self, raw: bytes) -> Any: ...


@attrs.frozen
class RecoveryReport:
    """What `ProcessManager.recover` found."""

    resumed: tuple[str, ...]
    """The active processes, whose actors it started again (oldest first)."""
    inactive: int
    """Paused and terminal processes: counted, never read (they stay in the store)."""
    set_aside: tuple[tuple[str, str], ...]
    """``(process id, reason)`` of every active record that could not be decoded."""
    waiting_for_host: tuple[str, ...] = ()
    """Processes paused because their host stopped answering: resumed when it answers."""


_ids = itertools.count()


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_last_stamp: tuple[int, str] = (-1, "")
_pid_part: tuple[int, str] = (-1, "")


def new_process_id() -> str:
    """Short, unique, sortable by creation: ``p`` + time in ms (base 36) + pid + counter."""
    global _last_stamp, _pid_part
    milliseconds = int(time.time() * 1000)
    if milliseconds != _last_stamp[0]:
        _last_stamp = (milliseconds, _base36(milliseconds))
    pid = os.getpid()
    if pid != _pid_part[0]:
        _pid_part = (pid, f"{_base36(pid % 1296):0>2}")
    high, low = divmod(next(_ids) % 46656, 36)
    high, middle = divmod(high, 36)
    return f"p{_last_stamp[1]}{_pid_part[1]}{_DIGITS[high]}{_DIGITS[middle]}{_DIGITS[low]}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def describe(result: Result | None) -> str:
    """How a run ended, in words (a failure's ``reason``)."""
    if result is None:
        return "no result"
    if result.error:
        return result.error
    if result.timed_out:
        return "timed out"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exited with {result.returncode}"


def find_record(store: Any, codec: Codec, id_or_name: str) -> ProcessRecord:
    """A record from the store by id, else by name (any store or read-only reader).

    Raises:
        NoSuchProcess: neither names a process.
        CorruptRecord: its record cannot be decoded.
    """
    raw = store.load(id_or_name)
    if raw is None:
        named = store.id_for_name(id_or_name)
        raw = store.load(named) if named is not None else None
    if raw is None:
        raise NoSuchProcess(id_or_name, "no process with this id or name")
    record: ProcessRecord = codec.decode(raw)
    return record


def sorted_records(store: Any, codec: Codec) -> tuple[list[ProcessRecord], int]:
    """Every decodable record, oldest first, and how many could not be decoded."""
    records, corrupt = store.scan_decoded(codec)
    ordered = sorted(records.values(), key=lambda record: (record.created_at, record.id))
    return ordered, len(corrupt)


class _ProcessActor(Actor):
    """Drives one process through its steps until it is terminal or paused.

    It drives itself (`Actor.main`): one task per process, which takes its requests (pause,
    kill) between steps, and whose waits (for a slot, a backoff, the program's exit) a
    request interrupts; an effect (a launch, a kill, a write) never is.

    An interruption cancels the actor's own cancel scope (its cell's: one scope per process,
    not one per wait), and only while the actor waits; the actor then goes on with the
    request in a fresh scope, shielded from the cancelled one, which its supervisor's
    termination cancels from then on. A request that arrives just as a wait ends is taken at
    the next checkpoint, which `_after_wait` places before any effect.
    """

    def __init__(self, manager: ProcessManager, record: ProcessRecord) -> None:
        self.manager = manager
        self.record = record
        self.request: Literal["pause", "kill"] | None = None
        self.waiting = False  # in a wait that a request may cut short
        self.interrupted = False  # a request cancelled the current scope

    @property
    def id(self) -> str:
        return self.record.id

    async def main(self) -> None:
        try:
            await self._drive_until_done()
        finally:
            self.manager._actor_ended(self)

    async def _drive_until_done(self) -> None:
        try:
            await self._drive()
            return
        except BaseException as exc:
            if not (self.interrupted and _only_cancelled(exc)) or self._cell.terminating:
                raise
        self.interrupted = False
        scope = trio.CancelScope(shield=True)
        self._cell.replace_scope(scope)
        with scope:
            await self._drive_until_done()

    def interrupt(self) -> None:
        # A request arrived (or a stop): cut the current wait short, if any.
        if self.waiting and not self.interrupted:
            self.interrupted = True
            self._cell.scope.cancel()

    def _must_not_wait(self) -> bool:
        """A request (or a stop) is pending already: take it instead of waiting."""
        cell = self._cell
        return self.request is not None or bool(len(cell.mailbox)) or cell.stop_requested

    async def _after_wait(self) -> None:
        """Right after a wait: an interruption that came as the wait ended is taken here,
        before anything else (a checkpoint in a cancelled scope raises)."""
        self.waiting = False
        if self.interrupted:
            await trio.lowlevel.checkpoint()

    async def handle(self, msg: Any) -> str:
        if msg not in ("pause", "kill"):
            raise ConfigError(f"process {self.id}: unknown request {msg!r}")
        if self.request != "kill":
            self.request = msg
        return self.record.phase

    async def _drive(self) -> None:
        failures = 0
        cell = self._cell
        mailbox = cell.mailbox
        while not cell.stop_requested:
            if len(mailbox):
                await self.handle_waiting()
            state = self.record.state
            if state.terminal:
                break
            if state.phase == "paused" and self.request != "kill":
                break  # (a kill that arrived while the pause was being written goes on)
            try:
                if self.request == "kill" and state.phase != "killing":
                    await self._advance("kill", reason="killed on request")
                elif self.request == "pause" and state.phase in PAUSABLE:
                    await self._advance("pause", reason="paused on request")
                else:
                    await self._step(state)
                failures = 0
            except HostUnavailable as exc:
                if state.phase in PAUSABLE and self.manager._may_wait_for_host(self.record, exc):
                    await self._advance(
                        "pause",
                        reason=f"{HOST_UNAVAILABLE}: {self.record.spec.host}: {exc}",
                        keep_indexed=True,
                    )
                    self.manager._wait_for_host(self.record)
                elif "fail" in allowed(state.phase):
                    await self._give_up(f"{state.phase}: {exc}")
                else:  # (killing: the kill waits for the host)
                    await self._retry_later(HOST_RETRY_DELAY)
            except (BackendError, StoreError) as exc:
                # Transient trouble (a full disk, a refused fork): retry the step, which is
                # idempotent, a few times; then give up with the reason.
                failures += 1
                logger.warning("process %s: %s step failed: %s", self.id, state.phase, exc)
                if failures >= STEP_RETRIES and "fail" in allowed(state.phase):
                    await self._give_up(f"{state.phase}: {exc}")
                else:
                    await self._retry_later(min(2**failures * 0.1, 10))
            except Exception as exc:
                # A bug or an input the edge let through: never leave the process active
                # without an actor (nobody would ever move it on).
                logger.exception("process %s: %s step crashed", self.id, state.phase)
                if "fail" not in allowed(state.phase):
                    raise
                await self._give_up(f"internal error in {state.phase}: {exc!r}")

    async def _retry_later(self, seconds: float) -> None:
        """Wait before a step is tried again; a request (pause, kill) cuts the wait short."""
        if self._must_not_wait():
            return
        self.waiting = True
        try:
            await trio.sleep(seconds)
        finally:
            await self._after_wait()

    async def _give_up(self, reason: str) -> None:
        """Fail the process, leaving nothing behind: its slot, and any program its key
        launched."""
        backend = self.manager.backend_for(self.record.spec)
        backend.release_slot(self.id)
        with contextlib.suppress(Exception):
            handle = self.record.state.handle or await backend.find(
                self.record.key, self.record.spec.host
            )
            if handle is not None:
                await backend.kill(handle, self.record.spec.kill_grace)
        await self._advance("fail", reason=reason)

    async def _step(self, state: ProcessState) -> None:
        phase = state.phase
        if phase == "launching":
            await self._launch()
        elif phase == "running":
            await self._wait_for_exit(state)
        elif phase == "created":
            await self._wait_for_slot(state)
        elif phase == "killing":
            await self._kill(state)

    async def _wait_for_slot(self, state: ProcessState) -> None:
        if self._must_not_wait():
            self.manager._dequeue(self.record)
            return
        self.waiting = True
        try:
            if state.attempt > 1:
                self.manager._dequeue(self.record)  # a rerun queues after its backoff
                await trio.sleep(RETRY_BACKOFF.delay(state.attempt - 1))
            await self.manager._admit(self.record)
        finally:
            self.manager._dequeue(self.record)
            await self._after_wait()
        await self._advance("launch")

    async def _launch(self) -> None:
        backend = self.manager.backend_for(self.record.spec)
        backend.adopt_slot(self.id)
        try:
            handle = await backend.launch(self.record.key, self.record.spec)
        except LaunchFailed as exc:
            backend.release_slot(self.id)
            await self._end_attempt(Result(error=str(exc)))
            return
        # Not awaited: a crash that loses this record leaves the process launching, and
        # recovery finds the program by its key (`_launch` again, which is idempotent).
        await self._advance("started", handle=handle, background=True)

    async def _wait_for_exit(self, state: ProcessState) -> None:
        backend = self.manager.backend_for(self.record.spec)
        assert state.handle is not None
        backend.adopt_slot(self.id)
        if self._must_not_wait():
            return
        self.waiting = True
        try:
            result = await backend.wait(state.handle)
        except ProgramLost as exc:
            await self._after_wait()
            # The program may outlive its chaperone: kill what is left of it, so a rerun
            # never runs beside it.
            with trio.CancelScope(shield=True):
                await backend.kill(state.handle, self.record.spec.kill_grace)
            backend.release_slot(self.id)
            await self._end_attempt(None, lost=f"lost: {exc}")
            return
        finally:
            if self.waiting:
                await self._after_wait()
        backend.release_slot(self.id)
        await self._end_attempt(result)

    async def _kill(self, state: ProcessState) -> None:
        # Reached from every phase; a launch whose record was not written yet is found by
        # its key, so a program launched just before a crash is killed too.
        backend = self.manager.backend_for(self.record.spec)
        spec = self.record.spec
        handle = state.handle or await backend.find(self.record.key, spec.host)
        result = None
        if handle is not None:
            result = await backend.kill(handle, self.record.spec.kill_grace)
        backend.release_slot(self.id)
        await self._advance("killed", result=result)

    async def _end_attempt(self, result: Result | None, *, lost: str | None = None) -> None:
        spec = self.record.spec
        attempt = self.record.state.attempt
        ok = result is not None and result.ok and lost is None
        reason = lost or describe(result)
        rerun = spec.restart == "permanent" or (spec.restart == "transient" and not ok)
        if rerun and attempt < spec.max_attempts:
            await self._advance("retry", reason=f"attempt {attempt}: {reason}", result=result)
        elif ok:
            await self._advance("succeed", result=result)
        else:
            await self._advance("fail", reason=reason, result=result)

    async def _advance(
        self,
        event: Event,
        *,
        background: bool = False,
        keep_indexed: bool = False,
        **changes: Any,
    ) -> None:
        if event == "pause":
            # A paused process holds nothing, not even a slot; resume adopts one again.
            self.manager.backend_for(self.record.spec).release_slot(self.id)
        record = await self.manager._transition(
            self.record, event, background=background, keep_indexed=keep_indexed, **changes
        )
        self.record = record
        if event == "pause" and not keep_indexed:
            await self.manager._tell_backend(record, "pause")


def _only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation (or a group of nothing else)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


def _absolute_paths(spec: ProcessSpec) -> ProcessSpec:
    """A relative local path (a local program's ``cwd``, the local side of ``inputs``,
    ``outputs_dir``) means relative to where the process was submitted, not to where a later
    runtime happens to run. (A remote ``cwd`` is a path on the host, absolute already.)"""
    changes: dict[str, Any] = {}
    if spec.backend == "local" and spec.cwd is not None and not os.path.isabs(spec.cwd):
        changes["cwd"] = os.path.abspath(spec.cwd)
    if spec.inputs and not all(os.path.isabs(local) for local in spec.inputs.values()):
        changes["inputs"] = {
            remote: os.path.abspath(local) for remote, local in spec.inputs.items()
        }
    if spec.outputs_dir is not None and not os.path.isabs(spec.outputs_dir):
        changes["outputs_dir"] = os.path.abspath(spec.outputs_dir)
    return attrs.evolve(spec, **changes) if changes else spec


class ProcessManager:
    """Submits, controls and recovers processes; owns nothing but the active ones' actors.

    Records live in the store: a paused or finished process costs no memory here.
    """

    def __init__(
        self,
        *,
        store: Store,
        codec: Codec,
        history_codec: Codec,
        backends: Mapping[str, Backend],
        supervisor: SupervisorRef,
        clock: Callable[[], float] = time.time,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._store = store
        self._codec = codec
        self._history_codec = history_codec
        self._backends = dict(backends)
        self._supervisor = supervisor
        self._clock = clock
        self._actors: dict[str, Ref] = {}
        self._active: dict[str, ProcessRecord] = {}
        # Per process, what `wait` waits on: set at its next transition or actor end.
        self._watches: dict[str, _Watch] = {}
        self._idle = trio.Event()  # set when the last actor ends
        # Per process, its save in the background (`_persist`) and its encoded history
        # entries, until a later save of the process shows how it went.
        self._unconfirmed: dict[str, tuple[PendingSave, list[bytes]]] = {}
        self._subscribers: list[trio.MemorySendChannel[tuple[ProcessRecord, Transition]]] = []
        self._control = trio.Lock()
        # Per backend, the processes waiting for a slot, in submission order; the head's
        # event is set.
        self._admission: dict[str, dict[str, trio.Event]] = {}
        # Where the manager's own tasks run (the waits for hosts); None: no such tasks, and a
        # process whose host is unavailable fails instead of pausing.
        self._nursery = nursery
        # Per (backend, host) that is unavailable, the processes paused until it answers.
        self._host_paused: dict[tuple[str, str], set[str]] = {}

    # -- reading ---------------------------------------------------------------------------

    def backend_for(self, spec: ProcessSpec) -> Backend:
        try:
            return self._backends[spec.backend]
        except KeyError:
            raise ConfigError(
                f"backend: got {spec.backend!r}, expected one of {sorted(self._backends)}"
            ) from None

    def get(self, id_or_name: str) -> ProcessRecord:
        """The process's current record, by id or name.

        Raises:
            NoSuchProcess: there is none.
        """
        record = self._active.get(id_or_name)
        if record is not None:
            return record
        record = find_record(self._store, self._codec, id_or_name)
        return self._active.get(record.id) or record

    def list(self) -> list[ProcessRecord]:
        """Every readable process record, oldest first (corrupt ones are left out; recovery
        sets them aside)."""
        return sorted_records(self._store, self._codec)[0]

    @property
    def store(self) -> Store:
        """The store the processes live in (for its statistics; write through the manager)."""
        return self._store

    def history(self, process: str | ProcessRecord) -> list[Transition]:
        """The process's transitions, oldest first, as durable in the store (a transition
        written in the background may not be there yet). ``process``: its id or name, or
        its record (no lookup then).

        Raises:
            NoSuchProcess: there is none.
        """
        record = process if isinstance(process, ProcessRecord) else self.get(process)
        return [self._history_codec.decode(raw) for raw in self._store.history(record.id)]

    async def read_log(
        self,
        id_or_name: str | ProcessRecord,
        stream: str,
        offset: int,
        size: int,
        *,
        attempt: int | None = None,
    ) -> bytes:
        """Output of the process's current attempt (or of ``attempt``), from ``offset``.
        ``id_or_name`` may be the record itself (no lookup then)."""
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        for field, value in (("offset", offset), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{field}: got {value!r}, expected an integer >= 0")
        if offset > MAX_LOG_OFFSET:
            raise ConfigError(f"offset: got {offset}, expected at most {MAX_LOG_OFFSET}")
        size = min(size, MAX_LOG_READ)
        record = id_or_name if isinstance(id_or_name, ProcessRecord) else self.get(id_or_name)
        key = record.key if attempt is None else f"{record.id}.{attempt}"
        backend = self.backend_for(record.spec)
        return await backend.read_log(key, stream, offset, size, record.spec.host)

    async def log_size(
        self, record: ProcessRecord, stream: str, *, attempt: int | None = None
    ) -> int | None:
        """How many bytes of output the process's current attempt (or ``attempt``) has now, as
        `read_log` counts them; None if its backend cannot tell (now, or ever). A checkpoint."""
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        key = record.key if attempt is None else f"{record.id}.{attempt}"
        log_size = getattr(self.backend_for(record.spec), "log_size", None)
        if log_size is None:
            await trio.lowlevel.checkpoint()
            return None
        return await log_size(key, stream, record.spec.host)

    @property
    def active(self) -> int:
        """How many processes have an actor now."""
        return len(self._actors)

    # -- writing ---------------------------------------------------------------------------

    async def submit(self, spec: ProcessSpec) -> ProcessRecord:
        """Record a new process and start it; durable before it returns. A checkpoint.

        A spec with a ``name`` that exists already returns that process instead: submitting
        the same job file twice never duplicates a process.

        When the backend has a slot free now (`Backend.try_acquire_slot`) and nobody waits
        for one, the process is launching from the start: its submission and its intent to
        launch are one durable write (both transitions in its history), and the launch
        follows without another.
        """
        backend = self.backend_for(spec)
        check_spec = getattr(backend, "check_spec", None)
        if check_spec is not None:
            check_spec(spec)
        spec = _absolute_paths(spec)
        if spec.name is not None:
            existing = self._existing(spec.name)
            if existing is not None:
                await trio.lowlevel.checkpoint()
                return existing
        now = self._clock()
        process_id = new_process_id()
        record = ProcessRecord(
            id=process_id, spec=spec, state=ProcessState(updated_at=now), created_at=now
        )
        steps = [(record, Transition(now, "submit", "created", "created", 1))]
        try_acquire = getattr(backend, "try_acquire_slot", None)
        slot = (
            try_acquire is not None
            and not self._admission.get(spec.backend)
            and try_acquire(process_id)
        )
        if slot:
            record = ProcessRecord(
                process_id, spec, advance(record.state, "launch", at=now, process=process_id), now
            )
            steps.append((record, Transition(now, "launch", "created", "launching", 1)))
        try:
            await self._persist(steps, entering=True, name=spec.name)
        except NameTaken:
            assert spec.name is not None
            if slot:
                backend.release_slot(process_id)
            existing = self._existing(spec.name)
            if existing is None:
                owner = self._store.id_for_name(spec.name)
                raise NameTaken(
                    f"name {spec.name!r} belongs to process {owner}, whose record cannot be "
                    "read (set aside as corrupt?); the name stays taken so that nothing runs "
                    "twice: choose another name"
                ) from None
            return existing
        except BaseException:
            if slot:
                backend.release_slot(process_id)
            raise
        await self._start_actor(record)
        return record

    def _existing(self, name: str) -> ProcessRecord | None:
        process_id = self._store.id_for_name(name)
        if process_id is None:
            return None
        raw = self._store.load(process_id)
        return None if raw is None else self._codec.decode(raw)

    async def pause(self, id_or_name: str) -> ProcessRecord:
        """Pause between steps; returns once the pause is durable (the record, paused).

        Raises:
            InvalidTransition: the process is paused, killing or terminal; or the pause did
                not take effect (``phase`` says where the process went instead): a kill came
                first, or came while the pause was written and went on, or the program ended.
        """
        record = self.get(id_or_name)
        if record.phase not in PAUSABLE:
            raise InvalidTransition(record.id, record.phase, "pause")
        ref = self._actors.get(record.id)
        if ref is not None:
            try:
                await ref.call("pause")
            except ActorStopped:
                ref = None
        if ref is None:
            async with self._control:
                record = self.get(record.id)
                if record.phase not in PAUSABLE or record.id in self._actors:
                    raise InvalidTransition(record.id, record.phase, "pause")
                record = await self._transition(record, "pause", reason="paused on request")
                await self._tell_backend(record, "pause")
                return record
        # Returns once the actor is gone too: a paused process holds nothing.
        record = await self.wait(
            record.id, until=lambda r: r.phase not in PAUSABLE and r.id not in self._actors
        )
        if record.phase != "paused":
            raise InvalidTransition(record.id, record.phase, "pause")
        return record

    async def resume(self, id_or_name: str) -> ProcessRecord:
        """Continue a paused process at the step that was next, in a fresh actor.

        Raises:
            InvalidTransition: it is not paused.
        """
        async with self._control:
            record = self.get(id_or_name)
            if record.phase == "paused" and not paused_for_host(record.state):
                # Before the resume is durable: a crash in between leaves a paused process
                # whose job runs, never a running one whose job stays held.
                await self._tell_backend(record, "resume")
            record = await self._transition(record, "resume")
            await self._start_actor(record)
        return record

    async def _tell_backend(self, record: ProcessRecord, hook: Literal["pause", "resume"]) -> None:
        """Call the backend's optional ``pause``/``resume`` with the program's handle."""
        handle = record.state.handle
        method = getattr(self.backend_for(record.spec), hook, None)
        if method is None or handle is None:
            return
        try:
            await method(handle)
        except (BackendError, ConfigError) as exc:
            logger.warning("process %s: the backend's %s failed: %s", record.id, hook, exc)

    async def kill(self, id_or_name: str, *, wait: bool = True) -> ProcessRecord:
        """Kill from any non-terminal phase (TERM, then KILL after the grace).

        Raises:
            InvalidTransition: it is terminal already.
        """
        record = self.get(id_or_name)
        if record.state.terminal:
            raise InvalidTransition(record.id, record.phase, "kill")
        ref = self._actors.get(record.id)
        if ref is not None:
            try:
                await ref.call("kill")
            except ActorStopped:
                ref = None  # it ended meanwhile: decide again below
        if ref is None:
            async with self._control:
                record = self.get(record.id)
                if record.state.terminal:
                    return record
                if record.phase != "killing":
                    record = await self._transition(record, "kill", reason="killed on request")
                await self._start_actor(record)
        if not wait:
            return self.get(record.id)
        record = await self.wait(
            record.id, until=lambda r: r.state.terminal or r.id not in self._actors
        )
        if not record.state.terminal:
            return await self.kill(record.id)  # its actor ended first: take over
        return record

    async def wait(
        self, id_or_name: str, *, until: Callable[[ProcessRecord], bool] | None = None
    ) -> ProcessRecord:
        """Wait until the process is terminal (or ``until(record)`` holds). A checkpoint.

        Wakes only at this process's transitions and at the end of its actor (``until`` may
        look at `active`), not at every other process's.
        """
        condition = until or _is_terminal
        record = self.get(id_or_name)
        process_id = record.id
        parked = False
        while not condition(record):
            watch = self._watches.get(process_id)
            if watch is None:
                watch = self._watches[process_id] = _Watch()
            try:
                await watch.wait()
            except BaseException:
                if not watch.tasks and self._watches.get(process_id) is watch:
                    del self._watches[process_id]  # nothing stays behind a cancelled wait
                raise
            parked = True
            # The newest record: from memory while it is active, else the one that woke us
            # (published after it was durable; reading it back from the store is needless).
            record = self._active.get(process_id) or watch.record or self.get(process_id)
        if not parked:
            await trio.lowlevel.checkpoint()
        return record

    async def wait_idle(self) -> None:
        """Wait until no process has an actor (all are paused or terminal). A checkpoint."""
        while self._actors:
            await self._idle.wait()
        await trio.lowlevel.checkpoint()

    @contextlib.contextmanager
    def subscribe(
        self, buffer: int = 1024
    ) -> Iterator[trio.MemoryReceiveChannel[tuple[ProcessRecord, Transition]]]:
        """Every transition from now on, as ``(record, transition)``. Slow readers that let
        the buffer fill up lose events (counted in the log), never slow processes down."""
        send, receive = trio.open_memory_channel[tuple[ProcessRecord, Transition]](buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    # -- recovery --------------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Bring back every process that was active when the last runtime stopped.

        Only the active processes' records are read (the store's ``active`` index, which
        `_persist` keeps): paused and finished ones are counted, not decoded. Running
        programs are reattached (their actor waits on the existing handle), launches whose
        outcome is unknown are settled by the idempotent launch, and active records that
        cannot be decoded are set aside and reported.

        A store from a corra that kept no index gets one first, once: every snapshot is read
        then (in the writer's transaction).
        """
        if not self._store.has_active_index():
            logger.info("indexing the active processes of the store (once)")
            indexed = await self._store.rebuild_active_index(self._needs_recovery)
            logger.info("indexed %d active process(es)", indexed)
        resumed, stale, corrupt = await trio.to_thread.run_sync(self._scan_for_recovery)
        for process_id, raw in stale:
            # In the index, yet not active: only a store changed behind corra's back has such
            # a record. Take it out, so that the next recovery does not read it either.
            logger.warning("process %s: not active, but indexed as active; unindexed", process_id)
            await self._store.save(process_id, raw, active=False)
        set_aside = []
        for process_id, raw, reason in corrupt:
            logger.error("process %s: corrupt record set aside: %s", process_id, reason)
            await self._store.set_aside(process_id, raw, reason)
            set_aside.append((process_id, reason))
        counts = self._store.counts()  # before any actor runs, so that nothing moved yet
        waiting = [record for record in resumed if record.phase == "paused"]
        resumed = [record for record in resumed if record.phase != "paused"]
        for record in resumed:
            await self._start_actor(record)
        for record in waiting:
            if record.spec.backend in self._backends:
                self._wait_for_host(record)
            else:
                logger.warning(
                    "process %s: paused for host %s of backend %r, which this runtime lacks; "
                    "it waits for a runtime that has it",
                    record.id,
                    record.spec.host,
                    record.spec.backend,
                )
        return RecoveryReport(
            resumed=tuple(record.id for record in resumed),
            waiting_for_host=tuple(record.id for record in waiting),
            inactive=counts.snapshots - counts.active,
            set_aside=tuple(set_aside),
        )

    def _needs_recovery(self, raw: bytes) -> bool:
        """For indexing: whether recovery must read this snapshot (an active record, or one
        that cannot be decoded, to be set aside)."""
        try:
            record: ProcessRecord = self._codec.decode(raw)
            return record.phase in ACTIVE or paused_for_host(record.state)
        except Exception:
            return True

    def _scan_for_recovery(
        self,
    ) -> tuple[list[ProcessRecord], list[tuple[str, bytes]], list[tuple[str, bytes, str]]]:
        """In a thread: the active records, oldest first; the indexed ones that are not
        active; the corrupt ones, with the reason."""
        resumed: list[ProcessRecord] = []
        stale: list[tuple[str, bytes]] = []
        corrupt: list[tuple[str, bytes, str]] = []
        for process_id, raw in self._store.scan_active():
            try:
                record: ProcessRecord = self._codec.decode(raw)
            except Exception as exc:
                corrupt.append((process_id, raw, str(exc)))
                continue
            if record.phase in ACTIVE or paused_for_host(record.state):
                resumed.append(record)
            else:
                stale.append((process_id, raw))
        resumed.sort(key=lambda record: (record.created_at, record.id))
        return resumed, stale, corrupt

    # -- hosts that stop answering ---------------------------------------------------------

    def _may_wait_for_host(self, record: ProcessRecord, error: HostUnavailable) -> bool:
        """Whether a process whose host is unavailable pauses until it answers (else it
        fails): the host's policy, and a backend and a manager that can wait for it."""
        backend = self.backend_for(record.spec)
        return (
            getattr(error, "policy", "pause") == "pause"
            and record.spec.host is not None
            and self._nursery is not None
            and hasattr(backend, "wait_available")
        )

    def _wait_for_host(self, record: ProcessRecord) -> None:
        """Resume ``record`` (paused for its host) once its host answers again."""
        assert record.spec.host is not None
        if self._nursery is None:
            return
        key = (record.spec.backend, record.spec.host)
        waiting = self._host_paused.get(key)
        if waiting is None:
            waiting = self._host_paused[key] = set()
            self._nursery.start_soon(self._resume_when_available, key)
        waiting.add(record.id)

    async def _resume_when_available(self, key: tuple[str, str]) -> None:
        backend_name, host = key
        backend: Any = self._backends[backend_name]
        while True:
            try:
                await backend.wait_available(host)
                break
            except ConfigError as exc:  # the host is gone from the configuration
                waiting = self._host_paused.pop(key, set())
                logger.error(
                    "host %s: %s; %d process(es) stay paused until resumed by hand",
                    host,
                    exc,
                    len(waiting),
                )
                return
            except Exception as exc:  # asking failed: ask again later, never give up
                logger.warning("host %s: cannot learn whether it answers: %s", host, exc)
                await trio.sleep(HOST_RETRY_DELAY)
        waiting = self._host_paused.pop(key, set())
        logger.info("host %s answers again: resuming %d process(es)", host, len(waiting))
        for process_id in sorted(waiting):
            try:
                async with self._control:
                    record = self.get(process_id)
                    if not paused_for_host(record.state):
                        continue  # resumed or killed by hand meanwhile
                    record = await self._transition(record, "resume")
                    await self._start_actor(record)
            except (NoSuchProcess, InvalidTransition, StoreError) as exc:
                logger.warning("process %s: not resumed after its host: %s", process_id, exc)

    # -- internals -------------------------------------------------------------------------

    def _enqueue(self, record: ProcessRecord) -> None:
        """Take a place in the queue for a slot (in submission order: never blocks)."""
        queue = self._admission.setdefault(record.spec.backend, {})
        if record.id not in queue:
            queue[record.id] = trio.Event()
            if len(queue) == 1:
                queue[record.id].set()

    def _dequeue(self, record: ProcessRecord) -> None:
        """Leave the queue (admitted, paused, killed); wake the next in line."""
        queue = self._admission.get(record.spec.backend)
        if queue is None or queue.pop(record.id, None) is None:
            return
        if queue:
            next(iter(queue.values())).set()

    async def _admit(self, record: ProcessRecord) -> None:
        """Wait for this process's turn, then for a slot of its backend.

        The backend's own queue is FIFO too, but processes reach it from their own tasks in
        whatever order trio schedules them; this queue is filled synchronously at submission,
        and only its head waits for the backend, so a transition wakes one task, not all.
        """
        self._enqueue(record)
        await self._admission[record.spec.backend][record.id].wait()
        await self.backend_for(record.spec).acquire_slot(record.id)

    async def _start_actor(self, record: ProcessRecord) -> None:
        if record.id in self._actors:
            await trio.lowlevel.checkpoint()
            return
        if record.phase == "created" and record.state.attempt == 1:
            self._enqueue(record)
        self._active[record.id] = record
        spec = ChildSpec(
            id=record.id,
            start=lambda: _ProcessActor(self, self._active.get(record.id, record)),
            restart="temporary",
            # Its effects are idempotent and its writes shielded: stopping it at once loses
            # nothing (the next runtime goes on from its last durable record).
            shutdown="brutal_kill",
            mailbox_capacity=4,
        )
        try:
            # No round trip through the supervisor, no wait for the actor's start (it only
            # builds the actor): the common case, whenever the supervisor is idle.
            ref = self._supervisor.start_child_nowait(spec)
        except trio.WouldBlock:
            started = await self._supervisor.start_child(spec)
            assert isinstance(started, Ref)
            ref = started
        if ref.alive:  # it may have run to its end already
            self._actors[record.id] = ref

    def _actor_ended(self, actor: _ProcessActor) -> None:
        process_id = actor.id
        if self._actors.get(process_id) == actor.ref:
            del self._actors[process_id]
        record = self._active.pop(process_id, None)
        unconfirmed = self._unconfirmed.get(process_id)
        if unconfirmed is not None and unconfirmed[0].done and unconfirmed[0].error is None:
            del self._unconfirmed[process_id]
        self._wake(process_id, record)
        if not self._actors:
            self._idle.set()
            self._idle = trio.Event()

    async def _transition(
        self,
        record: ProcessRecord,
        event: Event,
        *,
        background: bool = False,
        keep_indexed: bool = False,
        **changes: Any,
    ) -> ProcessRecord:
        now = self._clock()
        state = advance(record.state, event, at=now, process=record.id, **changes)
        new = ProcessRecord(record.id, record.spec, state, record.created_at)
        source, target = record.state.phase, state.phase
        transition = Transition(now, event, source, target, state.attempt, changes.get("reason"))
        was_active, active = source in ACTIVE, target in ACTIVE
        entering = None if was_active is active else active
        if keep_indexed and entering is False:
            entering = None  # (a pause for the host: recovery must find it, and wait too)
        await self._persist([(new, transition)], entering=entering, background=background)
        return new

    async def _persist(
        self,
        steps: list[tuple[ProcessRecord, Transition]],
        *,
        entering: bool | None,
        name: str | None = None,
        background: bool = False,
    ) -> None:
        """Write the last record of ``steps`` and every step's transition, in one save.

        ``entering``: True if the process enters the active phases with it, False if it
        leaves them, None if it stays in or out (the store's ``active`` index is then left
        as it is: it follows the last durable snapshot, whose activeness is the one before
        ``steps`` — a save in the background never changes it).

        Awaited (the default), it returns once all of it is durable. In the ``background``,
        it returns at once and the write commits with the next group: for a record whose
        loss in a crash is safe (``running``: recovery from ``launching`` finds the program
        by its key). Either way the process's saves commit in order, and a save never
        outlives an earlier one that failed: it fails too, and the next save of the process
        writes the history entries of both (so the history stays complete and in order).
        One save at most per process is in the background; a second one is awaited.

        The record is published (memory, waiters, subscribers) once it is durable, or at once
        for a save in the background.
        """
        record = steps[-1][0]
        process_id = record.id
        snapshot = self._codec.encode(record)
        if len(steps) == 1:
            entries = [self._history_codec.encode(steps[0][1])]
        else:
            entries = [self._history_codec.encode(transition) for _, transition in steps]
        if entering is not None:
            background = False  # (the index follows durable snapshots only)
        earlier = self._unconfirmed.pop(process_id, None)
        after = None
        if earlier is not None:
            if not earlier[0].done:
                after = earlier[0]
                background = False
            elif earlier[0].error is not None:
                entries = earlier[1] + entries  # never written: write them now, in order
        if background:
            write = self._store.save_nowait(
                process_id, snapshot, transitions=entries, active=entering
            )
            self._unconfirmed[process_id] = (write, entries)
        else:
            try:
                # Shielded: once asked, the write happens anyway (the store commits what it
                # was given), so memory must not be left behind the disk.
                await self._store.save(
                    process_id,
                    snapshot,
                    transitions=entries,
                    name=name,
                    active=entering,
                    after=after,
                    shielded=True,
                )
            except BaseException:
                if earlier is not None:
                    self._unconfirmed[process_id] = earlier
                raise
        if process_id in self._active or record.state.phase in ACTIVE:
            self._active[process_id] = record
        if self._subscribers or logger.isEnabledFor(logging.INFO):
            self._announce(steps)
        watch = self._watches.pop(process_id, None)
        if watch is not None:
            watch.wake(record)

    def _announce(self, steps: list[tuple[ProcessRecord, Transition]]) -> None:
        """Log the transitions and hand them to the subscribers."""
        for step, transition in steps:
            logger.info(
                "process %s (%s): %s -> %s%s",
                step.id,
                step.name,
                transition.source,
                transition.target,
                f" ({transition.reason})" if transition.reason else "",
            )
            for channel in self._subscribers:
                try:
                    channel.send_nowait((step, transition))
                except trio.WouldBlock:
                    logger.warning("a slow subscriber lost a transition of %s", step.id)
                except trio.BrokenResourceError:
                    pass

    def _wake(self, process_id: str, record: ProcessRecord | None) -> None:
        """Wake the waiters of this process, handing them ``record``."""
        watch = self._watches.pop(process_id, None)
        if watch is not None:
            watch.wake(record)


class _Watch:
    """What the waiters of one process wait for (once): its next change, and the record
    after it (None: its actor ended)."""

    __slots__ = ("record", "tasks")

    def __init__(self) -> None:
        self.tasks: list[trio.lowlevel.Task] = []
        self.record: ProcessRecord | None = None

    async def wait(self) -> None:
        task = trio.lowlevel.current_task()
        tasks = self.tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self, record: ProcessRecord | None) -> None:
        self.record = record
        for task in self.tasks:
            trio.lowlevel.reschedule(task)
        self.tasks = []


def _is_terminal(record: ProcessRecord) -> bool:
    return record.state.terminal
