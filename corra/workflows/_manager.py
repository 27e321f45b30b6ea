"""Workflow runs: requested by job name, driven by their actors, recovered after a crash.

`WorkflowManager` keeps the job definitions a runtime knows (`define`: a job file's
``[[job]]`` tables, or ``corra serve --jobs FILE``; `define_python`: ``@corra.workflow``
functions, `corra.workflows._python`), starts runs of them (`start`: the run's
id is the executor's; a run ``name`` makes the request idempotent), and answers for runs:
`get`, `list`, `steps`, `pause`, `resume`, `kill`, `wait`. Each running run has an actor
under ``/workflows`` (`corra.workflows._actor.RunActor`, or
`corra.workflows._replay.PythonRunActor` for a function's); everything it decides is in the
store first (`corra.workflows._runs`). A run keeps the frozen copy of the definition it
started with: defining a job again changes the runs started after, never one started before.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from corra._errors import ActorStopped, ConfigError, NoSuchProcess
from corra.actors._actor import Ref
from corra.actors._specs import ChildSpec
from corra.actors._supervisor import SupervisorRef
from corra.processes._manager import ProcessManager
from corra.processes._record import ProcessRecord
from corra.processes._spec import NAME_PATTERN
from corra.workflows._actor import Kill, Pause, RunActor
from corra.workflows._definition import JobDefinition, apply_params, job_data
from corra.workflows._faults import crash_point
from corra.workflows._python import PythonJob
from corra.workflows._query import RunQuery, shown_job
from corra.workflows._replay import PythonRunActor
from corra.workflows._runs import (
    ACTIVE_PREFIX,
    RunRecord,
    StepEntry,
    active_key,
    name_key,
    new_run_id,
    run_key,
    step_key,
)

_UNSET: Any = object()


class WorkflowManager:
    """Starts, controls and recovers workflow runs (see the module doc).

    Args:
        store: the runtime's store (its ``workflows`` database).
        processes: the runtime's processes: each step is one.
        supervisor: ``/workflows``, under which run actors run.
        clock: epoch seconds.
    """

    def __init__(
        self,
        store: Any,
        processes: ProcessManager,
        supervisor: SupervisorRef,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        statuses = getattr(processes, "statuses", None)
        self.query = RunQuery(store, None if statuses is None else statuses.latest)
        self.processes = processes
        self._supervisor = supervisor
        self.clock = clock
        self.jobs: dict[str, JobDefinition | PythonJob] = {}
        """The job definitions (and workflow functions) runs may be requested of, by name."""
        self.definition_waiters: set[Callable[[], None]] = set()
        """Called when definitions change (the actors of runs whose function is unknown)."""
        self._actors: dict[str, Ref] = {}
        self._changed: dict[str, trio.Event] = {}
        self._run_changed: dict[str, trio.Event] = {}
        self._lock = trio.Lock()

    # definitions ---------------------------------------------------------------------------

    def define(self, jobs: Mapping[str, JobDefinition | PythonJob]) -> None:
        """Make ``jobs`` known (a job of a known name replaces it, for runs started from now
        on: a run keeps the definition it started with)."""
        for name, job in jobs.items():
            if not isinstance(job, (JobDefinition, PythonJob)) or job.name != name:
                raise ConfigError(f"define: {name!r}: got {job!r}, expected a job of that name")
        self.jobs.update(jobs)
        for wake in list(self.definition_waiters):
            wake()

    def define_python(self, *jobs: PythonJob) -> None:
        """Make ``@corra.workflow`` functions known, by their names. A run of one that a
        runtime without it recovered (waiting, its reason naming the function) goes on.

        Raises:
            ConfigError: not a `corra.workflow` function.
        """
        for job in jobs:
            if not isinstance(job, PythonJob):
                raise ConfigError(
                    f"define_python: got {job!r}, expected a @corra.workflow function"
                )
        self.define({job.name: job for job in jobs})

    def job_listing(self) -> list[dict[str, Any]]:
        """The known jobs as ``GET /v1/jobs`` and ``corra jobs`` show them, by name."""
        return [
            job.data() if isinstance(job, PythonJob) else shown_job(job)
            for _, job in sorted(self.jobs.items())
        ]

    # reads -------------------------------------------------------------------------------

    def get(self, run: str) -> RunRecord:
        """The run whose id or name is ``run`` (`RunQuery.get`)."""
        return self.query.get(run)

    def list(self, **selection: Any) -> list[RunRecord]:
        """The runs (`RunQuery.list`)."""
        return self.query.list(**selection)

    def step_entries(self, run_id: str) -> dict[str, StepEntry]:
        """The entries of the run's steps, by key (`RunQuery.steps`)."""
        return self.query.steps(run_id)

    def processes_find(self, name: str) -> ProcessRecord | None:
        try:
            return self.processes.get(name)
        except NoSuchProcess:
            return None

    def result_of(self, record: ProcessRecord) -> tuple[Any, str | None]:
        """A step's process's result value, as a step's entry keeps it: ``(value, None)``,
        or ``(None, file)`` for a value kept in a file."""
        result = record.state.result
        if result is None:
            return None, None
        value_file = getattr(result, "value_file", None)
        if value_file is not None:
            return None, value_file
        return getattr(result, "value", None), None

    def load_result(self, entry: StepEntry) -> Any:
        """A step's result value (read from its file when kept in one).

        Raises:
            ConfigError: the file cannot be read (removed with its process).
        """
        if entry.result_file is None:
            return entry.result
        try:
            return json.loads(Path(entry.result_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the result of step {entry.key!r} was kept in {entry.result_file}, "
                f"which cannot be read: {exc}"
            ) from None

    # writes (the actor's, and the manager's for runs without one) -------------------------

    async def write_run(
        self,
        run: RunRecord,
        *,
        phase: str = _UNSET,
        reason: str | None = _UNSET,
        result: Any = _UNSET,
        paused_steps: bool = _UNSET,
        active: bool | None = None,
    ) -> RunRecord:
        """Make ``run`` with these changes durable. A run that ends (or pauses) leaves the
        active index; ``active`` says so of a killed one whose steps have all ended."""
        changes: dict[str, Any] = {"updated_at": self.clock()}
        for field, value in (
            ("phase", phase),
            ("reason", reason),
            ("result", result),
            ("paused_steps", paused_steps),
        ):
            if value is not _UNSET:
                changes[field] = value
        new = attrs.evolve(run, **changes)
        if active is None:
            active = new.phase in ("running", "killed")
        items: list[tuple[bytes, bytes | None]] = [
            (run_key(new.id), new.encode()),
            (active_key(new.id), b"" if active else None),
        ]
        await self.store.put_entries(items)
        self._notify(new.id, run=True)
        return new

    async def write_steps(self, run_id: str, entries: Sequence[StepEntry]) -> None:
        """Make the steps' entries durable, in one transaction."""
        await self.store.put_entries([(step_key(run_id, e.key), e.encode()) for e in entries])
        self._notify(run_id)

    def _notify(self, run_id: str, *, run: bool = False) -> None:
        for events in (self._changed, self._run_changed) if run else (self._changed,):
            event = events.pop(run_id, None)
            if event is not None:
                event.set()

    async def changed(self, run_id: str, *, steps: bool = True) -> None:
        """Wait until the run or (``steps``) one of its steps' entries changes. A checkpoint.

        Without ``steps`` a fan-out's steps ending one by one wake nobody (each wake would
        read the run's record, with its definition, again)."""
        events = self._changed if steps else self._run_changed
        event = events.get(run_id)
        if event is None:
            event = events[run_id] = trio.Event()
        await event.wait()

    # requests ------------------------------------------------------------------------------

    async def start(
        self,
        job: str | JobDefinition | PythonJob,
        params: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Start a run of ``job`` (a known job's name, or a definition; a `corra.workflow`
        function given is defined, as `define_python` does) with ``params`` over its
        defaults; durable before it returns. A run of ``name`` that exists is returned instead
        (False: not created), whatever its job and params.

        Raises:
            ConfigError: no such job, a param it does not take or of the wrong type, a bad
                name (each naming the field).
        """
        if name is not None and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
            raise ConfigError(
                f"name: got {name!r}, expected 1 to 128 letters, digits and _.@+- "
                "(starting with a letter or digit)"
            )
        async with self._lock:
            if name is not None:
                owner = self.store.entry(name_key(name))
                if owner is not None:
                    return self.get(owner.decode()), False
            if isinstance(job, str):
                definition = self.jobs.get(job)
                if definition is None:
                    known = ", ".join(sorted(self.jobs)) or "none"
                    raise ConfigError(f"job: no job is named {job!r} (known: {known})")
            else:
                definition = job
                if isinstance(job, PythonJob):  # (its runs need it known: a replay calls it)
                    self.define({job.name: job})
            now = self.clock()
            if isinstance(definition, PythonJob):
                values = definition.apply_params(params or {})
                frozen = definition.data()
            else:
                values = apply_params(definition, params or {})
                frozen = job_data(definition)
            run = RunRecord(
                id=new_run_id(),
                job=definition.name,
                definition=frozen,
                params=values,
                created_at=now,
                updated_at=now,
                name=name,
                kind="python" if isinstance(definition, PythonJob) else "job",
            )
            items: list[tuple[bytes, bytes | None]] = [
                (run_key(run.id), run.encode()),
                (active_key(run.id), b""),
            ]
            if name is not None:
                items.append((name_key(name), run.id.encode()))
            await self.store.put_entries(items)
        crash_point("run.started")
        await self._start_actor(run.id)
        return run, True

    async def pause(self, run: str, *, steps: bool = False) -> RunRecord:
        """Stop starting new steps (``steps``: pause the running ones too); the run holds
        nothing but its record until `resume`. A paused or ended run is returned as it is."""
        record = self.get(run)
        answer = await self._ask(record.id, Pause(steps))
        if answer is not None:
            return answer
        record = self.get(record.id)
        if record.phase != "running":
            return record
        return await self.write_run(record, phase="paused", reason="paused by user")

    async def resume(self, run: str, *, accept: bool = False) -> RunRecord:
        """Go on with a paused run (and the steps its pause paused). Another is returned as
        it is.

        A function's run that a step paused (its spec differs from the one recorded) is
        replayed: with ``accept``, the recorded step stands as it is (its result is given,
        nothing runs again) and the new spec counts as its; without, the step pauses the run
        again unless the function makes the recorded spec once more.
        """
        async with self._lock:
            record = self.get(run)
            if record.phase != "paused":
                return record
            steps = record.paused_steps
            if record.kind == "python":
                await self._settle_proposed(record.id, accept)
            record = await self.write_run(record, phase="running", reason=None, paused_steps=False)
        if steps:
            for entry in self.step_entries(record.id).values():
                if entry.phase == "submitted" and entry.process is not None:
                    found = self.processes_find(entry.process)
                    if found is not None and found.phase == "paused":
                        with contextlib.suppress(NoSuchProcess, ConfigError):
                            await self.processes.resume(entry.process)
        while self.running(record.id):  # (the actor that paused it is ending: start anew)
            await self.changed(record.id)
        await self._start_actor(record.id)
        return record

    async def _settle_proposed(self, run_id: str, accept: bool) -> None:
        changed = [
            attrs.evolve(e, digest=e.proposed if accept else e.digest, proposed=None)
            for e in self.step_entries(run_id).values()
            if e.proposed is not None
        ]
        if changed:
            await self.write_steps(run_id, changed)

    async def kill(self, run: str) -> RunRecord:
        """Kill the run's running steps; it ends as killed once they have ended. An ended
        run is returned as it is."""
        record = self.get(run)
        if record.terminal:
            return record
        answer = await self._ask(record.id, Kill())
        if answer is not None:
            return answer
        record = await self.write_run(self.get(record.id), phase="killed", reason="killed by user")
        await self._start_actor(record.id)  # (it kills the steps, and settles them)
        return record

    async def wait(
        self, run: str, *, until: Callable[[RunRecord], bool] | None = None
    ) -> RunRecord:
        """Wait until the run has ended (or ``until(record)`` holds). A checkpoint."""
        condition = until or (lambda record: record.terminal and record.id not in self._actors)
        record = self.get(run)
        while not condition(record):
            await self.changed(record.id, steps=until is not None)
            record = self.get(record.id)
        return record

    async def _ask(self, run_id: str, message: Any) -> RunRecord | None:
        ref = self._actors.get(run_id)
        if ref is None or not ref.alive:
            return None
        try:
            answer: RunRecord = await ref.call(message)
        except ActorStopped:
            return None
        return answer

    # actors --------------------------------------------------------------------------------

    async def _start_actor(self, run_id: str) -> None:
        if run_id in self._actors and self._actors[run_id].alive:
            return
        actor = PythonRunActor if self.get(run_id).kind == "python" else RunActor
        spec = ChildSpec(
            id=run_id,
            start=lambda: actor(self, run_id),
            restart="temporary",
            shutdown="brutal_kill",  # (every decision is durable before its effect)
            mailbox_capacity=16,
        )
        ref = await self._supervisor.start_child(spec)
        assert isinstance(ref, Ref)
        if ref.alive:
            self._actors[run_id] = ref

    def running(self, run_id: str) -> bool:
        """Whether the run has an actor now (it may be killed and still settling)."""
        ref = self._actors.get(run_id)
        return ref is not None and ref.alive

    def actor_ended(self, run_id: str) -> None:
        self._actors.pop(run_id, None)
        self._notify(run_id, run=True)

    async def recover(self) -> int:
        """Start the actor of every run the last runtime left active. Returns how many."""
        active = [
            key[len(ACTIVE_PREFIX) :].decode() for key, _ in self.store.entries(ACTIVE_PREFIX)
        ]
        for run_id in active:
            await self._start_actor(run_id)
        return len(active)
