"""`ProcessManager`: the façade of the process domain.

It submits, pauses, resumes, kills, waits for and reads processes, and starts them
(`corra.processes._active`: an actor each, `corra.processes._actor`, or a place in the queue for
a slot). The parts it is made of each have a module: the journal (every transition durable,
then published), admission (slots in submission order), waiting for hosts that stop
answering, and recovery. Records live in the store: a paused, queued or finished process costs
no memory here but its id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import attrs
import trio

from corra._errors import ActorStopped, ConfigError, InvalidTransition, NameTaken
from corra.actors._supervisor import SupervisorRef
from corra.processes import _removal, _retention, _settled
from corra.processes._active import ActiveProcesses
from corra.processes._actor import tell_backend
from corra.processes._backend import Backend, EffectKey, LaunchRequest
from corra.processes._hosts import HostWaits
from corra.processes._ids import new_process_id
from corra.processes._journal import Journal, Step, find_record, sorted_records
from corra.processes._lifecycle import (
    PAUSABLE,
    RERUN_REASON,
    ProcessState,
    advance,
)
from corra.processes._notes import StoredNotes
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._record import ProcessRecord, Transition
from corra.processes._recovery import RecoveryReport, recover
from corra.processes._requests import effect_key, launch_request
from corra.processes._retention import PRUNE_BATCH
from corra.processes._spec import ProcessSpec, absolute_paths, changed_fields
from corra.processes._statuses import StoredStatuses

#: The most output one `read_log` returns, whatever it is asked for.
MAX_LOG_READ = 16 << 20
#: The largest log offset a read may start at: the largest integer JSON carries exactly
#: (8 PiB, far beyond any log; a file offset stops at 2**63 - 1).
MAX_LOG_OFFSET = 2**53 - 1


@attrs.frozen
class Submission:
    """What `ProcessManager.submit` did."""

    record: ProcessRecord
    """The process: the new one, or the one that had the spec's name already."""
    created: bool
    """True if the submission created it; False if a process had the name already."""
    changed: tuple[str, ...] = ()
    """When a process had the name already: the fields in which the spec submitted differs
    from its spec (`changed_fields`); it kept its own."""


class ProcessManager:
    """Submits, controls and recovers processes; owns nothing but the active ones' actors.

    Args:
        store: where records and their history live (`corra.persistence.Store`).
        codec: records as bytes; ``history_codec``: history entries as bytes.
        backends: the backends by name.
        supervisor: where the process actors run (``/processes``).
        clock: the time of a transition (epoch seconds).
        nursery: where the admission's tasks (a dispatcher of slots per backend, the timer of
            retries), the waits for unavailable hosts and the writer of ``notes`` run.
        notes: the notes its backends set (`corra.processes._notes`), if they have a place.
        results_dir: where values too large for their record are kept
            (`corra.processes._values`); None: such values are refused.
        statuses: the statuses its backends set (`corra.processes._statuses`), likewise.
    """

    def __init__(
        self,
        *,
        store: RecordStore,
        codec: RecordCodec,
        history_codec: RecordCodec,
        backends: Mapping[str, Backend],
        supervisor: SupervisorRef,
        nursery: trio.Nursery,
        clock: Callable[[], float] = time.time,
        notes: StoredNotes | None = None,
        results_dir: Path | None = None,
        statuses: StoredStatuses | None = None,
    ) -> None:
        self._backends = dict(backends)
        self._results_dir = results_dir
        self._journal = Journal(store, codec, history_codec, clock)
        self._hosts = HostWaits(self._backends, nursery, self._resume_for_host)
        # Decisions that read a record and then write it (pause or kill without an actor,
        # resume, an admission) are taken one at a time.
        self._control = trio.Lock()
        self._actors = ActiveProcesses(
            supervisor=supervisor,
            journal=self._journal,
            backends=self._backends,
            backend_for=self.backend_for,
            hosts=self._hosts,
            nursery=nursery,
            control=self._control,
            ended=None if notes is None else notes.ended,
            results_dir=results_dir,
        )
        self.statuses = statuses
        for writer in (notes, statuses):  # (each writes in the background)
            if writer is not None:
                nursery.start_soon(writer.run, self.get)

    # -- reading ---------------------------------------------------------------------------

    def backend_for(self, spec: ProcessSpec) -> Backend:
        """The backend of ``spec``.

        Raises:
            ConfigError: this runtime has no backend of that name.
        """
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
        journal = self._journal
        record = journal.latest(id_or_name)
        if record is not None:
            return record
        record = find_record(journal.store, journal.codec, id_or_name)
        return journal.latest(record.id) or record

    def list(self) -> list[ProcessRecord]:
        """Every readable process record, oldest first (corrupt ones are left out; recovery
        sets them aside)."""
        return sorted_records(self._journal.store, self._journal.codec)[0]

    @property
    def codec(self) -> RecordCodec:
        """The records' codec (to decode what is read from `store`)."""
        return self._journal.codec

    @property
    def store(self) -> RecordStore:
        """The store the processes live in (for its statistics; write through the manager)."""
        return self._journal.store

    def history(self, process: str | ProcessRecord) -> list[Transition]:
        """The process's transitions, oldest first, as durable in the store (a transition
        written in the background may not be there yet). ``process``: its id or name, or
        its record (no lookup then).

        Raises:
            NoSuchProcess: there is none.
        """
        record = process if isinstance(process, ProcessRecord) else self.get(process)
        return [self.history_codec.decode(raw) for raw in self.store.history(record.id)]

    @property
    def history_codec(self) -> RecordCodec:
        """The history entries' codec (to decode what `store` holds of a history)."""
        return self._journal.history_codec

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
        key = effect_key(record) if attempt is None else EffectKey(record.id, attempt)
        backend = self.backend_for(record.spec)
        return await backend.read_log(key, stream, offset, size, record.spec.host)

    async def log_size(
        self, record: ProcessRecord, stream: str, *, attempt: int | None = None
    ) -> int | None:
        """How many bytes of output the process's current attempt (or ``attempt``) has now, as
        `read_log` counts them; None if its backend cannot tell (now, or ever). A checkpoint."""
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        key = effect_key(record) if attempt is None else EffectKey(record.id, attempt)
        return await self.backend_for(record.spec).log_size(key, stream, record.spec.host)

    @property
    def active(self) -> int:
        """How many processes have an actor now."""
        return len(self._actors)

    @property
    def queued(self) -> int:
        """How many processes wait for a slot (or for a retry's backoff before that): none
        of them has an actor."""
        return self._actors.queued

    # -- writing ---------------------------------------------------------------------------

    async def submit(self, spec: ProcessSpec) -> Submission:
        """Record a new process and start it; durable before it returns. A checkpoint.

        A spec with a ``name`` that exists already returns that process instead
        (``created`` False, and the fields whose values differ in ``changed``): submitting
        the same job file twice never duplicates a process, and of concurrent submissions of
        one name exactly one creates it.

        When the backend has a slot free now (`Backend.try_acquire_slot`) and nobody waits
        for one, the process is launching from the start: its submission and its intent to
        launch are one durable write (both transitions in its history), and the launch
        follows without another.

        Raises:
            ConfigError: no such backend, or the backend refuses the spec.
            NameTaken: the name belongs to a process whose record cannot be read.
            StoreError: the write failed.
        """
        record, request, backend = self._checked(spec)
        return await self._create(record, request, backend)

    async def submit_many(self, specs: Sequence[ProcessSpec]) -> list[Submission]:
        """`submit` each spec, in order, once every one of them has been checked: a spec that
        its backend refuses (or a name given twice) fails the whole call before anything is
        written. A checkpoint.

        Raises:
            ConfigError: a spec is refused (its index named), or two specs have one name.
            NameTaken, StoreError: as `submit` (the specs before it are submitted).
        """
        names: dict[str, int] = {}
        checked = []
        for index, spec in enumerate(specs):
            if spec.name is not None and names.setdefault(spec.name, index) != index:
                raise ConfigError(
                    f"processes[{index}].name: {spec.name!r} is given by "
                    f"processes[{names[spec.name]}] already"
                )
            try:
                checked.append(self._checked(spec))
            except ConfigError as exc:
                raise ConfigError(f"processes[{index}]: {exc}") from None
        return [await self._create(*item) for item in checked]

    def _checked(self, spec: ProcessSpec) -> tuple[ProcessRecord, LaunchRequest, Backend]:
        """A new record of ``spec``, its launch request, and its backend, which accepts it."""
        backend = self.backend_for(spec)
        spec = absolute_paths(spec, backend.capabilities)
        now = self._journal.clock()
        record = ProcessRecord(
            id=new_process_id(), spec=spec, state=ProcessState(updated_at=now), created_at=now
        )
        request = launch_request(record)
        backend.check(request)
        return record, request, backend

    async def _create(
        self, record: ProcessRecord, request: LaunchRequest, backend: Backend
    ) -> Submission:
        """`submit`'s writing part: ``record``, unless its name exists already."""
        spec, process_id, now = record.spec, record.id, record.created_at
        if spec.name is not None:
            existing = self._existing(spec.name)
            if existing is not None:
                await trio.lowlevel.checkpoint()
                return Submission(existing, False, changed_fields(existing.spec, spec))
        key = request.key
        steps: list[Step] = [(record, Transition(now, "submit", "created", "created", 1))]
        slot = not self._actors.queued_for(spec.backend) and backend.try_acquire_slot(key)
        if slot:
            record = ProcessRecord(
                process_id, spec, advance(record.state, "launch", at=now, process=process_id), now
            )
            steps.append((record, Transition(now, "launch", "created", "launching", 1)))
        try:
            await self._journal.persist(steps, entering=True, name=spec.name)
        except NameTaken:
            assert spec.name is not None
            if slot:
                backend.release_slot(key)
            existing = self._existing(spec.name)
            if existing is None:
                owner = self._journal.store.id_for_name(spec.name)
                raise NameTaken(
                    f"name {spec.name!r} belongs to process {owner}, whose record cannot be "
                    "read (set aside as corrupt?); the name stays taken so that nothing runs "
                    "twice: choose another name"
                ) from None
            return Submission(existing, False, changed_fields(existing.spec, spec))
        except BaseException:
            if slot:
                backend.release_slot(key)
            raise
        await self._actors.start(record, request)
        return Submission(record, created=True)

    def named(self, spec: ProcessSpec) -> Submission | None:
        """What `submit` would answer for ``spec`` if a process has its name already (that
        process, with the fields in which ``spec`` differs from its spec), without writing
        anything; None if none has (or ``spec`` has no name).

        Raises:
            ConfigError: no such backend.
        """
        if spec.name is None:
            return None
        existing = self._existing(spec.name)
        if existing is None:
            return None
        spec = absolute_paths(spec, self.backend_for(spec).capabilities)
        return Submission(existing, False, changed_fields(existing.spec, spec))

    def settled(self, specs: Sequence[ProcessSpec]) -> list[_settled.Settled | None]:
        """Per spec, the process named as it is, if it is over with this very spec, told from
        its stored bytes without decoding them (`corra.processes._settled`); None: ask `named`.

        Raises:
            ConfigError: no such backend.
        """
        journal = self._journal
        capabilities = lambda spec: self.backend_for(spec).capabilities  # noqa: E731
        return _settled.find(journal.store, journal.codec, specs, capabilities, journal.latest)

    def _existing(self, name: str) -> ProcessRecord | None:
        """The newest record of the process named ``name``, if there is one."""
        journal = self._journal
        process_id = journal.store.id_for_name(name)
        if process_id is None:
            return None
        record = journal.latest(process_id)
        if record is not None:
            return record
        raw = journal.store.load(process_id)
        return None if raw is None else journal.codec.decode(raw)

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
                record = await self._journal.transition(record, "pause")
                self._actors.leave(record)  # (if it was queued)
                await tell_backend(self.backend_for(record.spec), record, "pause")
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
            if record.state.paused_by == "user":
                # Before the resume is durable: a crash in between leaves a paused process
                # whose job runs, never a running one whose job stays held.
                await tell_backend(self.backend_for(record.spec), record, "resume")
            record = await self._journal.transition(record, "resume")
            await self._actors.start(record)
        return record

    async def _resume_for_host(self, process_id: str) -> None:
        """Resume a process paused for its host (which answers again), unless it was resumed
        or killed by hand meanwhile."""
        async with self._control:
            record = self.get(process_id)
            if record.state.paused_by != "host":
                return
            record = await self._journal.transition(record, "resume")
            await self._actors.start(record)

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
                    record = await self._journal.transition(record, "kill")
                self._actors.leave(record)  # (if it was queued)
                await self._actors.start(record)
        if not wait:
            return self.get(record.id)
        record = await self.wait(
            record.id, until=lambda r: r.state.terminal or r.id not in self._actors
        )
        if not record.state.terminal:
            return await self.kill(record.id)  # its actor ended first: take over
        return record

    async def rerun(self, id_or_name: str, *, spec: ProcessSpec | None = None) -> ProcessRecord:
        """Start a terminal process again as a new attempt, keeping its history (its last
        result stays in the history entry of the rerun); returns once that is durable. The
        new attempt waits for a slot in the order of submissions. ``spec``: a new spec for
        it (of the same name), checked as a submission's; the rerun's reason names the
        fields that changed.

        Raises:
            NoSuchProcess: there is none.
            InvalidTransition: it is not terminal (``phase`` says where it is).
            ConfigError: ``spec`` has another name, or its backend refuses it.
        """
        record = self.get(id_or_name)
        reason = None
        if spec is not None:
            if spec.name != record.spec.name:
                raise ConfigError(
                    f"name: got {spec.name!r}, expected {record.spec.name!r} (the process's)"
                )
            backend = self.backend_for(spec)
            spec = absolute_paths(spec, backend.capabilities)
            backend.check(launch_request(attrs.evolve(record, spec=spec)))
            changed = changed_fields(record.spec, spec)
            if changed:
                reason = f"{RERUN_REASON}, with a new spec: {', '.join(changed)} changed"
        if not record.state.terminal:
            raise InvalidTransition(record.id, record.phase, "rerun")
        if record.id in self._actors:  # (its actor ends just after its last transition)
            await self.wait(record.id, until=lambda r: r.id not in self._actors)
        async with self._control:
            record = self.get(record.id)
            if not record.state.terminal or record.id in self._actors:
                raise InvalidTransition(record.id, record.phase, "rerun")
            if spec is not None:
                record = attrs.evolve(record, spec=spec)
            record = await self._journal.transition(record, "rerun", reason=reason)
            await self._actors.start(record)
        return record

    async def remove(self, id_or_name: str, *, kill: bool = False) -> ProcessRecord:
        """Remove a terminal process completely: its record, history and name, and its
        run dirs and logs, here and on its host (`corra.processes._removal`: a crash
        in the middle leaves the process whole or gone, never half of it). ``kill``: kill
        an active process first (else it is refused). Returns its last record.

        Raises:
            NoSuchProcess: there is none.
            InvalidTransition: it is not terminal, and ``kill`` is False (``phase`` says
                where it is).
        """
        record = self.get(id_or_name)
        if not record.state.terminal:
            if not kill:
                raise InvalidTransition(record.id, record.phase, "remove")
            record = await self.kill(record.id)
        if record.id in self._actors:  # (its actor ends just after its last transition)
            await self.wait(record.id, until=lambda r: r.id not in self._actors)
        async with self._control:
            record = self.get(record.id)
            if not record.state.terminal or record.id in self._actors:
                raise InvalidTransition(record.id, record.phase, "remove")
            journal = self._journal
            buried = await _removal.bury(journal.store, record, journal.removed)
        if buried:  # (outside the lock: a host may take its time)
            await _removal.finish(journal.store, record, self.backend_for, self._results_dir)
        return record

    async def prune(
        self,
        ended_before: float | None = None,
        *,
        keep: int | None = None,
        batch: int = PRUNE_BATCH,
    ) -> int:
        """Remove every terminal process that ended before ``ended_before`` (epoch seconds)
        and every one but the ``keep`` that ended last (give one or both), ``batch`` at a
        time (`corra.processes._retention.prune`); returns how many.

        Raises:
            ConfigError: neither given, or a bad value (`_retention.check_retention`).
        """
        journal = self._journal
        return await _retention.prune(
            journal.store, journal.codec, self.get, self.remove, ended_before, keep, batch=batch
        )

    async def retain(
        self, seconds: float | None, keep: int | None = None, *, every: float = 60.0
    ) -> None:
        """Prune, every ``every`` seconds, the terminal processes that ended more than
        ``seconds`` ago and all but the ``keep`` that ended last (the runtime's
        ``retain_finished`` and ``retain_count``); runs until cancelled."""
        _retention.check_retention(seconds, keep)

        async def prune(ended_before: float | None, keep: int | None) -> int:
            return await self.prune(ended_before, keep=keep)

        await _retention.retain(prune, self._journal.clock, seconds, keep, every=every)

    async def wait(
        self, id_or_name: str, *, until: Callable[[ProcessRecord], bool] | None = None
    ) -> ProcessRecord:
        """Wait until the process is terminal (or ``until(record)`` holds). A checkpoint.

        Wakes only at this process's transitions and at the end of its actor (``until`` may
        look at `active`), not at every other process's.
        """
        return await self._journal.wait(self.get(id_or_name), until or _is_terminal, self.get)

    async def wait_idle(self) -> None:
        """Wait until no process has an actor and none is queued (all are paused or
        terminal). A checkpoint."""
        await self._actors.wait_idle()

    def subscribe(
        self, buffer: int = 1024
    ) -> AbstractContextManager[trio.MemoryReceiveChannel[tuple[ProcessRecord, Transition]]]:
        """Every transition from now on, as ``(record, transition)``. Slow readers that let
        the buffer fill up lose events (counted in the log), never slow processes down."""
        return self._journal.subscribe(buffer)

    # -- recovery --------------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Bring back every process that was active when the last runtime stopped, and make
        those paused for their hosts wait for them again (`corra.processes._recovery`)."""
        journal = self._journal
        await _removal.finish_removals(
            journal.store, journal.codec, self.backend_for, self._results_dir
        )
        return await recover(
            self._journal.store,
            self._journal.codec,
            start=self._actors.start,
            queue=self._actors.recovered,
            wait_for_host=self._hosts.wait_for,
            has_backend=self._waits_for_hosts,
        )

    def _waits_for_hosts(self, name: str) -> bool:
        backend = self._backends.get(name)
        return backend is not None and backend.capabilities.waits_for_host


def _is_terminal(record: ProcessRecord) -> bool:
    return record.state.terminal
