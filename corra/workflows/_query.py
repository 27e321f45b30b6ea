"""Reads of workflow runs, with a runtime (`WorkflowManager`) or without one (a store opened
read-only: ``corra runs`` and ``corra show RUN`` on a state dir no service holds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corra._errors import ConfigError, NoSuchRun
from corra.processes._spec_content import HIDDEN
from corra.processes._statuses import ProgramStatus, statuses_of
from corra.workflows._definition import JobDefinition, job_data
from corra.workflows._runs import (
    RUN_ID,
    RUN_PHASES,
    RUN_PREFIX,
    RunRecord,
    StepEntry,
    name_key,
    run_key,
    steps_prefix,
)


def shown_job(job: JobDefinition) -> dict[str, Any]:
    """A job's definition as ``corra jobs`` and ``GET /v1/jobs`` show it: its fields as
    given (`job_data`), but every env value hidden (they are secrets to corra)."""
    data = job_data(job)
    for step in data.get("steps", []):
        process = step.get("process") or {}
        if isinstance(process.get("env"), dict):
            process["env"] = dict.fromkeys(process["env"], HIDDEN)
    return data


class RunQuery:
    """Runs and their steps, as the store has them.

    Args:
        store: a `corra.persistence.Store` or `corra.persistence.StoreReader`.
    """

    def __init__(
        self, store: Any, latest: Callable[[str], ProgramStatus | None] | None = None
    ) -> None:
        self.store = store
        self._latest = latest
        """A live runtime's statuses, ahead of the store (`StoredStatuses.latest`)."""

    def get(self, run: str) -> RunRecord:
        """The run whose id or name is ``run``.

        Raises:
            NoSuchRun: there is none.
        """
        if not isinstance(run, str) or not run:
            raise NoSuchRun(f"run: got {run!r}, expected a run id or name")
        raw = self.store.entry(run_key(run)) if RUN_ID.fullmatch(run) else None
        if raw is None and len(run.encode("utf-8", "surrogateescape")) <= 256:
            owner = self.store.entry(name_key(run))
            raw = None if owner is None else self.store.entry(run_key(owner.decode()))
        if raw is None:
            raise NoSuchRun(f"no run has the id or name {run!r}")
        return RunRecord.decode(raw)

    def find(self, run: str) -> RunRecord | None:
        try:
            return self.get(run)
        except NoSuchRun:
            return None

    def list(
        self,
        *,
        phase: str | None = None,
        job: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """The runs (of ``job``, in ``phase``), oldest first, from the one after the run id
        ``after``, at most ``limit``.

        Raises:
            ConfigError: ``phase`` is not a run's phase.
        """
        if phase is not None and phase not in RUN_PHASES:
            raise ConfigError(f"phase: got {phase!r}, expected one of {', '.join(RUN_PHASES)}")
        start = None if after is None else run_key(after)
        found: list[RunRecord] = []
        while limit is None or len(found) < limit:
            batch = self.store.entries(RUN_PREFIX, after=start, limit=256)
            for _, raw in batch:
                run = RunRecord.decode(raw)
                if (phase is None or run.phase == phase) and (job is None or run.job == job):
                    found.append(run)
                    if limit is not None and len(found) >= limit:
                        break
            if len(batch) < 256:
                break
            start = batch[-1][0]
        return found

    def steps(self, run_id: str) -> dict[str, StepEntry]:
        """The entries of the run's steps, by key, in key order."""
        entries = (StepEntry.decode(raw) for _, raw in self.store.entries(steps_prefix(run_id)))
        return {entry.key: entry for entry in entries}

    def detail(
        self, run: RunRecord, process: Callable[[str], Any | None] = lambda name: None
    ) -> dict[str, Any]:
        """The run and its steps, as ``corra show RUN --json`` and ``GET /v1/runs/{id}``
        give them: its steps in the order of its definition (a fan-out's items after it, in
        item order), each with its entry (``pending``: nothing decided yet), and, while its
        process runs, that process's phase and latest status (``process(name)``: its record,
        or None)."""
        entries = self.steps(run.id)
        running: list[tuple[dict[str, Any], Any]] = []

        def step(entry: StepEntry) -> dict[str, Any]:
            data = entry.json()
            if entry.phase == "submitted" and entry.process is not None:
                record = process(entry.process)
                if record is not None:
                    data["process_id"] = record.id
                    data["process_phase"] = record.phase
                    running.append((data, record))
            return data

        items: dict[str, list[StepEntry]] = {}
        for entry in entries.values():
            if entry.index is not None:
                items.setdefault(entry.step, []).append(entry)
        names = [step.get("name") for step in run.definition.get("steps", [])]
        # (then the steps the definition does not name: a Python run's, in key order)
        names += [entry.key if entry.index is None else entry.step for entry in entries.values()]
        steps: list[dict[str, Any]] = []
        for name in dict.fromkeys(names):
            if not isinstance(name, str):
                continue
            entry = entries.get(name)
            if entry is None:
                if name in items:  # (a Python run's item without a parent entry)
                    ordered = sorted(items[name], key=lambda item: item.index or 0)
                    steps.extend(step(item) for item in ordered)
                    continue
                steps.append({"key": name, "step": name, "phase": "pending"})
                continue
            steps.append(step(entry))
            for item in sorted(items.get(name, ()), key=lambda item: item.index or 0):
                steps.append(step(item))
        if running:  # (their programs' latest statuses, in one read)
            found = statuses_of(self.store, [record for _, record in running], self._latest)
            for (data, _), status in zip(running, found, strict=True):
                if status is not None:
                    data["status"] = status.json()
        return {**run.json(), "steps": steps}
