"""The run actor: one workflow run driven to its end, every decision durable before its effect.

One actor per running run, under the ``/workflows`` supervisor (a paused or ended run has
none: it is its record and its steps' entries). Its loop:

1. settle: each step whose process has ended gets its ending entry (phase, reason, result),
   made durable with the next write (the process's record says the same after a crash; the
   entries are kept in a `corra.workflows._book.StepBook`);
2. plan (`corra.workflows._plan.plan`; only when a change may have changed the plan) and make
   it durable: every step it decides is written as an entry (``submitted`` with its
   process's name, ``skipped``, a fan-out's ``expanded`` with its items' ``submitted``
   entries, or ``failed``), all in one transaction with the ending entries, before any
   process is submitted;
3. submit the processes of the steps written ``submitted`` (concurrently: their writes share
   group commits). `corra.processes.ProcessManager.submit` is idempotent by name, and a
   step's process is named after the run and the step (`process_name`): a step recorded but
   not submitted when the runtime crashed is submitted on recovery, and one that was
   submitted is found, never submitted again;
4. when the plan says the run has ended, write its outcome; else wait for a step's process to
   end, or for a request.

Pause and kill are requests (`Pause`, `Kill`), taken between two rounds of the loop. A pause
is durable first, then the actor ends (with ``steps``: the steps' running processes are
paused too, and resumed with the run). A kill is durable first, then every step's process
that has not ended is killed, and the actor ends once their entries say how they ended.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from corra._errors import ConfigError, CorraError, NoSuchProcess
from corra.actors._actor import Actor
from corra.processes._record import ProcessRecord
from corra.workflows._book import FLUSH_AFTER, FLUSH_COUNT, StepBook
from corra.workflows._definition import (
    JobDefinition,
    job_from_data,
    step_items,
    step_spec,
    topological_order,
    upstream,
)
from corra.workflows._faults import crash_point
from corra.workflows._plan import Expand, Fail, Plan, Skip, Submit, context, plan
from corra.workflows._runs import (
    RunRecord,
    StepEntry,
    instance_key,
    process_name,
)

logger = logging.getLogger("corra.workflow")


@attrs.frozen
class Pause:
    steps: bool = False
    """Pause the steps' running processes too."""


@attrs.frozen
class Kill:
    pass


async def guarded(runs: Any, run_id: str, drive: Callable[[], Awaitable[None]]) -> None:
    """A run actor's main: ``drive``, and an error it did not expect fails the run with its
    reason (a bug, or a store that fails: the run says so rather than hang); then the
    manager is told that the actor ended."""
    try:
        await drive()
    except (trio.Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:
        logger.exception("workflow run %s failed", run_id)
        with trio.CancelScope(shield=True), contextlib.suppress(CorraError):
            run = runs.get(run_id)
            if not run.terminal:
                await runs.write_run(run, phase="failed", reason=f"internal error: {exc}")
    finally:
        runs.actor_ended(run_id)


class RunActor(Actor):
    """Drives the run ``run_id`` (see the module doc)."""

    def __init__(self, manager: Any, run_id: str) -> None:
        # (``manager``: the `corra.workflows._manager.WorkflowManager` that starts it, which
        # imports this module: named here, it would be an import cycle)
        self._manager = manager
        self._id = run_id
        self._wake = trio.Event()
        self._ended: list[tuple[str, ProcessRecord]] = []
        self._watched: set[str] = set()
        # Processes this incarnation has seen: one of them gone was removed (`corra rm`),
        # not left unsubmitted by a crash.
        self._seen: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._job: JobDefinition | None = None
        self._upstream: dict[str, frozenset[str]] = {}
        self._order: Sequence[str] | None = None  # (the job's topological order, once)
        self._book = StepBook({})  # (read when `main` starts: `corra.workflows._book`)
        # Whether `_settle` must look at every submitted step (on start, and once a watch
        # found no process); else only the watches' reports are new: every step the actor
        # submits it watches.
        self._scan = True

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._lifespan()

    def interrupt(self) -> None:
        self._wake.set()

    async def handle(self, msg: Any) -> Any:
        runs = self._manager
        await self._write()  # (what pause and kill read of the steps is the store's)
        run = runs.get(self._id)
        if isinstance(msg, Pause):
            if run.terminal or run.phase == "paused":
                return run
            run = await runs.write_run(
                run, phase="paused", reason="paused by user", paused_steps=msg.steps
            )
            if msg.steps:
                await self._each_running(runs.processes.pause)
            self.stop()
            return run
        if isinstance(msg, Kill):
            if run.terminal:
                return run
            run = await runs.write_run(run, phase="killed", reason="killed by user")
            await self._each_running(lambda name: runs.processes.kill(name, wait=False))
            return run
        raise ConfigError(f"a run actor takes Pause or Kill, not {msg!r}")

    async def _each_running(self, action: Callable[[str], Any]) -> None:
        for entry in self._manager.step_entries(self._id).values():
            if entry.phase == "submitted" and entry.process is not None:
                with contextlib.suppress(NoSuchProcess, ConfigError):
                    await action(entry.process)

    async def main(self) -> None:
        await guarded(self._manager, self._id, self._start)

    async def _start(self) -> None:
        runs = self._manager
        run = runs.get(self._id)
        self._job = job_from_data(run.definition)
        self._job_steps = {step.name: step for step in self._job.steps}
        self._order = topological_order(self._job)
        self._book = StepBook(runs.step_entries(self._id))
        await self._drive(run)

    async def _drive(self, run: RunRecord) -> None:
        runs = self._manager
        while True:
            if self.has_mail:
                await self.handle_waiting()
                run = runs.get(self._id)  # (the only writes of the run but the actor's own)
            if self.stopping:
                return
            if run.phase == "paused" or run.phase in ("finished", "failed"):
                return
            entries = await self._settle(run, self._book.entries)
            if run.phase == "killed":
                await self._write()
                if not any(entry.phase == "submitted" for entry in entries.values()):
                    await runs.write_run(run, active=False)
                    return
            elif self._book.replan:
                self._book.replan = False
                decided = self._plan(run, entries)
                if decided.outcome is not None:
                    await self._write()
                    outcome = decided.outcome
                    await runs.write_run(
                        run, phase=outcome.phase, reason=outcome.reason, result=outcome.result
                    )
                    crash_point("run.ended")
                    return
                if decided.actions:
                    await self._apply(run, entries, decided)
                    continue
            await self._wait()

    def _plan(self, run: RunRecord, entries: dict[str, StepEntry]) -> Plan:
        assert self._job is not None
        return plan(
            self._job,
            run.params,
            entries,
            upstream=self._upstream_of,
            load=self._manager.load_result,
            order=self._order,
        )

    def _upstream_of(self, name: str) -> frozenset[str]:
        found = self._upstream.get(name)
        if found is None:
            assert self._job is not None
            found = self._upstream[name] = upstream(self._job, name)
        return found

    async def _wait(self) -> None:
        if len(self._book.unwritten) >= FLUSH_COUNT:
            await self._write()
        if not self._ended and not self.has_mail:
            if self._book.unwritten:
                with trio.move_on_after(FLUSH_AFTER):
                    await self._wake.wait()
                if not self._wake.is_set():
                    await self._write()
            await self._wake.wait()
        self._wake = trio.Event()

    # settling: the ends of the steps' processes -------------------------------------------

    async def _settle(self, run: RunRecord, entries: dict[str, StepEntry]) -> dict[str, StepEntry]:
        """Make the ending entry of every step whose process has ended (those the watches
        reported, and, on a first look, those found ended; `_write` makes them durable with
        the next write); watch the others. A step recorded but never submitted (the runtime
        stopped in between) is submitted now, or, in a killed run, ends as killed."""
        runs = self._manager
        ended, self._ended = self._ended, []
        done = {key: record for key, record in ended}
        resubmit: list[StepEntry] = []
        killed: list[StepEntry] = []
        scan, self._scan = self._scan, False
        for key, entry in entries.items() if scan else ():
            if entry.phase != "submitted" or key in done or entry.process is None:
                continue
            if entry.process in self._watched:
                continue
            record = runs.processes_find(entry.process)
            if record is None and run.phase == "killed":
                killed.append(attrs.evolve(entry, phase="killed", at=runs.clock()))
            elif record is None and entry.process in self._seen:
                reason = f"its process {entry.process} was removed"
                killed.append(attrs.evolve(entry, phase="failed", at=runs.clock(), reason=reason))
            elif record is None:
                resubmit.append(entry)
            elif record.state.terminal:
                done[key] = record
            else:
                self._watch(key, entry.process)
        writes = [self._ending(entries[key], record) for key, record in done.items()]
        writes += killed
        if writes:
            self._book.take(writes, durable=False)
            entries = self._book.entries
        if resubmit:
            await self._submit(run, entries, resubmit)
        return entries

    def _ending(self, entry: StepEntry, record: ProcessRecord) -> StepEntry:
        result = record.state.result
        value, value_file = self._manager.result_of(record)
        reason = record.state.reason
        phase = record.phase
        if reason is None and result is not None and phase != "finished":
            reason = exit_text(result)
        refused = getattr(result, "value_error", None)
        if phase == "finished" and refused:
            # (a step's result is what those after it read: one refused fails the step,
            # rather than hand them a null that hides why)
            phase, reason = "failed", f"its result was refused: {refused}"
        return attrs.evolve(
            entry,
            phase=phase,  # type: ignore[arg-type]
            at=self._manager.clock(),
            reason=reason,
            result=value,
            result_file=value_file,
            process_id=record.id,
        )

    def _watch(self, key: str, name: str) -> None:
        assert self._nursery is not None
        self._watched.add(name)
        self._seen.add(name)
        self._nursery.start_soon(self._watch_one, key, name)

    async def _watch_one(self, key: str, name: str) -> None:
        try:
            record = await self._manager.processes.wait(name)
        except NoSuchProcess:
            record = None
        self._watched.discard(name)
        if record is not None:
            self._ended.append((key, record))
        else:
            self._scan = True  # (removed meanwhile: `_settle` decides again)
        self._wake.set()

    # applying a plan -------------------------------------------------------------------------

    async def _apply(self, run: RunRecord, entries: dict[str, StepEntry], decided: Plan) -> None:
        runs = self._manager
        at = runs.clock()
        writes: list[StepEntry] = []
        submits: list[StepEntry] = []
        for action in decided.actions:
            if isinstance(action, Skip):
                writes.append(
                    StepEntry(action.step, action.step, "skipped", at, reason=action.reason)
                )
            elif isinstance(action, Fail):
                writes.append(
                    StepEntry(action.step, action.step, "failed", at, reason=action.reason)
                )
            elif isinstance(action, Expand):
                count = len(action.items)
                writes.append(StepEntry(action.step, action.step, "expanded", at, count=count))
                for index in range(count):
                    submits.append(self._intent(action.step, index, at))
            elif isinstance(action, Submit):
                submits.append(self._intent(action.step, None, at))
        await self._write([*writes, *submits])
        crash_point("steps.decided")
        await self._submit(run, self._book.entries, submits)

    def _intent(self, step: str, index: int | None, at: float) -> StepEntry:
        return StepEntry(
            instance_key(step, index),
            step,
            "submitted",
            at,
            index=index,
            process=process_name(self._id, step, index),
        )

    async def _submit(
        self, run: RunRecord, entries: dict[str, StepEntry], submits: list[StepEntry]
    ) -> None:
        """Submit the processes of ``submits`` (entries durable already), concurrently; a
        step whose spec cannot be made, or that its backend refuses, fails without one."""
        assert self._job is not None
        runs = self._manager
        failed: list[StepEntry] = []
        values: dict[str, dict[str, Any]] = {}
        items: dict[str, list[Any]] = {}

        async def submit_one(entry: StepEntry) -> None:
            assert self._job is not None and entry.process is not None
            step = self._job_steps[entry.step]
            if entry.step not in values:  # (once per step, not per item of a fan-out)
                values[entry.step] = context(
                    self._job, run.params, entries, self._upstream_of(entry.step), runs.load_result
                )
            scope = dict(values[entry.step])
            try:
                if entry.index is not None:
                    if entry.step not in items:
                        items[entry.step] = step_items(self._job, step, scope)
                    scope["item"] = items[entry.step][entry.index]
                spec = step_spec(self._job, step, scope)
                spec = attrs.evolve(
                    spec,
                    name=entry.process,
                    labels={
                        **spec.labels,
                        "corra.run": self._id,
                        "corra.job": self._job.name,
                        "corra.step": entry.step,
                    },
                )
                await runs.processes.submit(spec)
                crash_point("step.submitted")
            except (ConfigError, IndexError) as exc:
                failed.append(attrs.evolve(entry, phase="failed", at=runs.clock(), reason=str(exc)))
                return
            self._watch(entry.key, entry.process)

        async with trio.open_nursery() as nursery:
            for entry in submits:
                nursery.start_soon(submit_one, entry)
        if failed:
            await self._write(failed)

    async def _write(self, entries: Sequence[StepEntry] = ()) -> None:
        """Make ``entries`` durable with the book's unwritten ending entries, in one
        transaction; then the book has ``entries``."""
        endings = self._book.written()
        if not endings and not entries:
            return
        await self._manager.write_steps(self._id, [*endings, *entries])
        if endings:
            crash_point("step.ended")
        self._book.take(entries, durable=True)


def exit_text(result: Any) -> str:
    if result.error:
        return str(result.error)
    if result.timed_out:
        return "timed out"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exited with {result.returncode}"
