"""The run of a `corra.workflow` function: called, and called again from the top after a crash
or a resume, each step's recorded end returned by its name.

A step (`StepContext.step`) is durable before its effect, as a job file's step is
(`corra.workflows._actor`): its entry is written ``submitted`` (its process's name, and the
digest of its spec) before its process is submitted; submission is idempotent by the
process's name (`step_process_name`); its ending entry (phase, reason, result value) is
written once the process has ended, before the function gets it. On a replay, a step whose
entry has ended returns at once (nothing is run), one that is only submitted waits for its
process (submitted now if the runtime stopped before it was). A step whose spec is not the one
recorded (another digest) pauses the run, its reason naming the step and the fields; a
``resume`` with ``accept`` keeps the recorded step as it is.

The actor (`PythonRunActor`, under ``/workflows`` as the job runs' actor is) runs the function
in a task of its own and takes requests (`Pause`, `Kill`) in its main loop: a pause or a kill
is durable first, then the function is cancelled (its steps' processes go on, or are killed).
A run whose function this runtime does not know (recovered by a runtime without it) waits,
running, its reason naming the function, until `WorkflowManager.define_python` brings it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from corra._errors import (
    ConfigError,
    InvalidTransition,
    NoSuchProcess,
    StepFailed,
)
from corra.actors._actor import Actor
from corra.processes._convert import SPEC_FIELDS, parse_process_spec, unstructure_spec
from corra.processes._record import ProcessRecord
from corra.processes._spec import ProcessSpec
from corra.processes._values import VALUE_LIMIT
from corra.workflows._actor import Kill, Pause, exit_text, guarded
from corra.workflows._faults import crash_point
from corra.workflows._python import PythonJob, StepResult, step_parts, step_process_name
from corra.workflows._runs import RunRecord, StepEntry

logger = logging.getLogger("corra.workflow")


def spec_data(spec: ProcessSpec) -> dict[str, Any]:
    """The spec as its digest sees it: its wire form without the empty options tables of the
    other backends (installing a backend changes no digest)."""
    data = unstructure_spec(spec)
    return {k: v for k, v in data.items() if k in SPEC_FIELDS or v != {}}


def spec_digest(spec: ProcessSpec) -> str:
    """A step's spec, digested: sha256 of its canonical JSON."""
    text = json.dumps(spec_data(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class StepContext:
    """What a workflow function gets as ``ctx``: `step`, `gather`, `params`, `run_id`."""

    def __init__(self, actor: PythonRunActor, run: RunRecord) -> None:
        self._actor = actor
        self._job = run.job
        self._used: set[str] = set()
        self.run_id: str = run.id
        """The run's id."""
        self.params: Mapping[str, Any] = dict(run.params)
        """The run's params (as the function gets them)."""

    async def step(
        self, name: str, spec: Sequence[str] | Mapping[str, Any], /, **fields: Any
    ) -> StepResult:
        """Run one step: a process of ``spec`` (an argv, or a table of `[[process]]` fields:
        any backend, host, options), with ``fields`` over it; its result once it has ended.

        ``name`` is the step's, unique in the run (``prepare``, ``work[3]``): its record is
        found by it on a replay.

        Raises:
            StepFailed: the step failed or was killed (its `StepResult` in ``.result``).
            ConfigError: a bad name, a name used twice in the run, or a bad spec.
        """
        process = step_process_name(self.run_id, name)
        if name in self._used:
            raise ConfigError(f"step {name!r}: used twice in this run (a step's name is its key)")
        self._used.add(name)
        data: dict[str, Any]
        if isinstance(spec, Mapping):
            data = dict(spec)
        elif isinstance(spec, (list, tuple)):
            data = {"argv": list(spec)}
        else:
            raise ConfigError(f"step {name!r}: got {spec!r}, expected an argv or a table of fields")
        data.update(fields)
        if "name" in data:
            raise ConfigError(f"step {name!r}: name: a step's process is named after the step")
        made = parse_process_spec(data, where=f"step {name!r}")
        base, _ = step_parts(name)
        made = attrs.evolve(
            made,
            name=process,
            labels={
                **made.labels,
                "corra.run": self.run_id,
                "corra.job": self._job,
                "corra.step": base,
            },
        )
        return await self._actor.run_step(name, made)

    async def gather(self, *awaitables: Awaitable[Any]) -> list[Any]:
        """Await ``awaitables`` (steps, or coroutines that run steps) concurrently; their
        results in order. When steps fail, the others still run to their end, then the first
        failure (in the order given) is raised; another exception cancels the others' waits
        (their processes go on) and is raised."""
        results: list[Any] = [None] * len(awaitables)
        errors: list[BaseException | None] = [None] * len(awaitables)

        async def one(index: int, awaitable: Awaitable[Any], scope: trio.CancelScope) -> None:
            try:
                results[index] = await awaitable
            except StepFailed as exc:
                errors[index] = exc
            except Exception as exc:
                errors[index] = exc
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for index, awaitable in enumerate(awaitables):
                nursery.start_soon(one, index, awaitable, nursery.cancel_scope)
        others = [e for e in errors if e is not None and not isinstance(e, StepFailed)]
        if others:
            raise others[0]
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]
        return results


class PythonRunActor(Actor):
    """Drives the run ``run_id`` of a `PythonJob` (see the module doc)."""

    def __init__(self, manager: Any, run_id: str) -> None:
        # (``manager``: the `corra.workflows.WorkflowManager`, not imported: it imports this)
        self._manager = manager
        self._id = run_id
        self._wake = trio.Event()
        self._lock = trio.Lock()  # (the run's record: the function's end, a pause, a kill)
        self._function_scope: trio.CancelScope | None = None
        self._function_done = False
        self._entries: dict[str, StepEntry] = {}

    def interrupt(self) -> None:
        self._wake.set()

    async def handle(self, msg: Any) -> Any:
        runs = self._manager
        async with self._lock:
            run = runs.get(self._id)
            if isinstance(msg, Pause):
                if run.terminal or run.phase == "paused":
                    return run
                run = await runs.write_run(
                    run, phase="paused", reason="paused by user", paused_steps=msg.steps
                )
            elif isinstance(msg, Kill):
                if run.terminal:
                    return run
                run = await runs.write_run(run, phase="killed", reason="killed by user")
            else:
                raise ConfigError(f"a run actor takes Pause or Kill, not {msg!r}")
        self._cancel_function()
        if isinstance(msg, Kill):
            await self._each_running(lambda name: runs.processes.kill(name, wait=False))
        else:
            if msg.steps:
                await self._each_running(self._pause_step)
            self.stop()
        return run

    async def _each_running(self, action: Callable[[str], Any]) -> None:
        for entry in self._manager.step_entries(self._id).values():
            if entry.phase == "submitted" and entry.process is not None:
                found = self._manager.processes_find(entry.process)
                if found is not None and not found.state.terminal:
                    # (paused, or ending, since it was looked at: nothing to do)
                    with contextlib.suppress(NoSuchProcess, ConfigError, InvalidTransition):
                        await action(entry.process)

    async def _pause_step(self, name: str) -> None:
        if self._manager.processes.get(name).phase != "paused":
            await self._manager.processes.pause(name)

    def _cancel_function(self) -> None:
        if self._function_scope is not None:
            self._function_scope.cancel()

    async def main(self) -> None:
        await guarded(self._manager, self._id, self._drive)

    async def _drive(self) -> None:
        runs = self._manager
        job = await self._function()
        if job is not None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._call, job)
                while not self._function_done and not self.stopping:
                    await self._wait()
                    if self.has_mail:
                        await self.handle_waiting()
                nursery.cancel_scope.cancel()
        run = runs.get(self._id)
        if run.phase == "killed":
            await self._settle_killed()
        elif run.phase == "paused" and run.paused_steps:
            # (a step submitted while the pause was being made)
            await self._each_running(self._pause_step)

    async def _wait(self) -> None:
        if not self.has_mail:
            await self._wake.wait()
        self._wake = trio.Event()

    async def _function(self) -> PythonJob | None:
        """The function to run, once this runtime knows it (None: the run is not running,
        or the actor stops)."""
        runs = self._manager
        runs.definition_waiters.add(self.interrupt)  # (before a look: none is missed)
        try:
            while True:
                if self.has_mail:
                    await self.handle_waiting()
                run = runs.get(self._id)
                if run.phase != "running" or self.stopping:
                    return None
                job = runs.jobs.get(run.job)
                if isinstance(job, PythonJob):
                    if run.reason is not None and run.reason.startswith("waiting for"):
                        await runs.write_run(run, reason=None)
                    return job
                frozen = run.definition
                reason = (
                    f"waiting for its function {frozen.get('module')}.{frozen.get('qualname')} "
                    f"(workflow {run.job!r}) to be defined in this runtime"
                )
                if run.reason != reason:
                    await runs.write_run(run, reason=reason)
                await self._wait()
        finally:
            runs.definition_waiters.discard(self.interrupt)

    async def _call(self, job: PythonJob) -> None:
        """Call the function (from the top), and write how it ended."""
        runs = self._manager
        run = runs.get(self._id)
        self._entries = runs.step_entries(self._id)
        ctx = StepContext(self, run)
        phase, reason, value = "failed", None, None
        with trio.CancelScope() as scope:
            self._function_scope = scope
            try:
                value = await job(ctx, **run.params)
                phase, reason = "finished", _not_a_result(value)
                if reason is not None:
                    phase, value = "failed", None
            except StepFailed as exc:
                reason = str(exc)
            except Exception as exc:
                logger.warning("workflow run %s: its function raised", self._id, exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
            # As a job's run, it ends once nothing of it runs: the steps whose waits the
            # function left (a gather that an exception cut short) end first.
            await self._settle_left()
        if not scope.cancelled_caught:
            async with self._lock:
                run = runs.get(self._id)
                if run.phase == "running":
                    await runs.write_run(run, phase=phase, reason=reason, result=value)
                    crash_point("run.ended")
        self._function_done = True
        self._wake.set()

    # a step ----------------------------------------------------------------------------

    async def run_step(self, name: str, spec: ProcessSpec) -> StepResult:
        """`StepContext.step`'s durable part (see the module doc)."""
        runs = self._manager
        assert spec.name is not None
        digest = spec_digest(spec)
        entry = self._entries.get(name)
        if entry is None:
            base, index = step_parts(name)
            entry = StepEntry(
                name, base, "submitted", runs.clock(), index=index, process=spec.name, digest=digest
            )
            await self._write(entry)
            crash_point("steps.decided")
            entry = await self._submit(entry, spec)
        elif entry.digest is not None and entry.digest != digest:
            await self._diverged(entry, spec, digest)
        elif entry.phase == "submitted" and runs.processes_find(spec.name) is None:
            entry = await self._submit(entry, spec)  # (recorded; the runtime stopped before)
        if not entry.ended:
            record = await runs.processes.wait(spec.name)
            entry = self._ending(entry, record)
            await self._write(entry)
            crash_point("step.ended")
        result = StepResult(
            name, entry.phase, runs.load_result(entry), entry.reason, entry.process_id
        )
        if entry.phase != "finished":
            raise StepFailed(name, result, entry.reason)
        return result

    async def _write(self, entry: StepEntry) -> None:
        await self._manager.write_steps(self._id, [entry])
        self._entries[entry.key] = entry

    async def _submit(self, entry: StepEntry, spec: ProcessSpec) -> StepEntry:
        try:
            await self._manager.processes.submit(spec)
        except ConfigError as exc:  # (its backend refuses it: a failed step, as a job's)
            entry = attrs.evolve(entry, phase="failed", at=self._manager.clock(), reason=str(exc))
            await self._write(entry)
            return entry
        crash_point("step.submitted")
        return entry

    def _ending(self, entry: StepEntry, record: ProcessRecord) -> StepEntry:
        if entry.ended:
            return entry
        runs = self._manager
        result = record.state.result
        value, value_file = runs.result_of(record)
        reason = record.state.reason
        if reason is None and result is not None and record.phase != "finished":
            reason = exit_text(result)
        return attrs.evolve(
            entry,
            phase=record.phase,  # type: ignore[arg-type]
            at=runs.clock(),
            reason=reason,
            result=value,
            result_file=value_file,
            process_id=record.id,
        )

    async def _diverged(self, entry: StepEntry, spec: ProcessSpec, digest: str) -> None:
        """Pause the run: the step's spec is not the one recorded. Never returns (the
        function is cancelled)."""
        runs = self._manager
        assert entry.process is not None
        recorded = runs.processes_find(entry.process)
        if recorded is None:
            fields = "unknown: its process is removed"
        else:
            old, new = spec_data(recorded.spec), spec_data(spec)
            fields = ", ".join(k for k in sorted({*old, *new}) if old.get(k) != new.get(k))
        reason = (
            f"step {entry.key!r}: its spec differs from the one recorded (fields: {fields}); "
            "resume with accept to keep the recorded step"
        )
        async with self._lock:
            run = runs.get(self._id)
            if run.phase == "running":
                await self._write(attrs.evolve(entry, proposed=digest))
                await runs.write_run(run, phase="paused", reason=reason)
        self._cancel_function()
        await trio.sleep_forever()

    async def _settle_left(self) -> None:
        """Wait for the steps the function left running, and write how they ended; one
        recorded but never submitted (cut short in between) is written ``skipped``."""
        runs = self._manager
        endings: list[StepEntry] = []

        async def settle(entry: StepEntry) -> None:
            assert entry.process is not None
            try:
                record = await runs.processes.wait(entry.process)
            except NoSuchProcess:
                reason = "not submitted: the function had ended"
                endings.append(attrs.evolve(entry, phase="skipped", at=runs.clock(), reason=reason))
                return
            endings.append(self._ending(entry, record))

        async with trio.open_nursery() as nursery:
            for entry in self._entries.values():
                if entry.phase == "submitted":
                    nursery.start_soon(settle, entry)
        if endings:
            await runs.write_steps(self._id, endings)

    async def _settle_killed(self) -> None:
        """A killed run: kill its steps' processes that still run, write how each ended,
        then leave the active index."""
        runs = self._manager
        entries = runs.step_entries(self._id)
        open_entries = [e for e in entries.values() if e.phase == "submitted"]
        endings: list[StepEntry] = []

        async def settle(entry: StepEntry) -> None:
            assert entry.process is not None
            record = runs.processes_find(entry.process)
            if record is None:
                endings.append(attrs.evolve(entry, phase="killed", at=runs.clock()))
                return
            if not record.state.terminal:
                with contextlib.suppress(NoSuchProcess, ConfigError):
                    await runs.processes.kill(entry.process, wait=False)
                record = await runs.processes.wait(entry.process)
            endings.append(self._ending(entry, record))

        async with trio.open_nursery() as nursery:
            for entry in open_entries:
                nursery.start_soon(settle, entry)
        if endings:
            await runs.write_steps(self._id, endings)
        await runs.write_run(runs.get(self._id), active=False)


def _not_a_result(value: Any) -> str | None:
    """Why ``value`` cannot be a run's result (None: it can)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"its function returned {type(value).__name__}, not a JSON value ({exc})"
    if len(text) > VALUE_LIMIT:
        return (
            f"its function returned {len(text)} bytes of JSON, more than a run's result may "
            f"take ({VALUE_LIMIT}); return a smaller value (a path, a summary)"
        )
    return None
