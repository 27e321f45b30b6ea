"""What a run does next, decided from its definition and its steps' entries alone (pure).

The run actor (`corra.workflows._actor`) asks `plan` after every change it made durable, and
does what it says: each `Action` is made durable as a step's entry before its effect (a
process submitted), so a run that a crash interrupted decides the same again from the same
entries and submits nothing twice. The rules:

Rule 1. A step is ready once each step it ``needs`` has ended and is *satisfied*: finished,
        or skipped (as Argo's DAGs: a skipped step does not stop those after it, which see
        its phase and a null result), or failed with ``continue_on_failure``.
Rule 2. A ready step whose ``when`` is false is skipped; one whose ``for_each`` gives a list
        expands into one item per element (``work[0]``, ``work[1]``, ...; none for an empty
        list: the step has finished, with the result ``[]``); a ``when`` or ``for_each``
        that cannot be evaluated, or a ``for_each`` that is not a list, fails the step
        without a process, with the reason.
Rule 3. A step that failed (or was killed) without ``continue_on_failure`` fails the run:
        nothing more is started; once no step runs any more, the run has failed, naming the
        step. A fan-out step has failed when one of its items has (the others run on).
Rule 4. Once every step has ended and none failed the run, it has finished, with its result:
        the job's ``result`` template, rendered, else the result of its last step in the
        file (null if it was skipped).

A step's result, as later steps see it (``${steps.NAME.result}``), is its process's result
value; a fan-out step's is the list of its items' results, in item order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from corra._errors import ConfigError
from corra.workflows._definition import JobDefinition, StepDefinition, topological_order
from corra.workflows._runs import StepEntry, instance_key

StepStatus: TypeAlias = Literal["pending", "running", "finished", "failed", "killed", "skipped"]
_SATISFIED = frozenset({"finished", "skipped"})
_FAILED = frozenset({"failed", "killed"})


@attrs.frozen
class Submit:
    """Submit the process of a step (``index`` None) or of one item of a fan-out step."""

    step: str
    index: int | None = None
    item: Any = None

    @property
    def key(self) -> str:
        return instance_key(self.step, self.index)


@attrs.frozen
class Skip:
    step: str
    reason: str


@attrs.frozen
class Expand:
    """Record a fan-out step's items (then submit each, `Submit` with its index)."""

    step: str
    items: tuple[Any, ...]


@attrs.frozen
class Fail:
    """The step fails without a process (its ``when`` or ``for_each`` could not be had)."""

    step: str
    reason: str


Action: TypeAlias = Submit | Skip | Expand | Fail


@attrs.frozen
class Outcome:
    """How the run ended (Rules 3 and 4)."""

    phase: Literal["finished", "failed"]
    reason: str | None = None
    result: Any = None


@attrs.frozen
class Plan:
    actions: tuple[Action, ...] = ()
    outcome: Outcome | None = None
    """Set once the run has ended; then there are no actions."""


def step_status(step: StepDefinition, entries: Mapping[str, StepEntry]) -> StepStatus:
    """Where ``step`` is: pending (nothing decided), running (its process, or one of its
    items', has not ended), or how it ended (a fan-out step has failed, or was killed, as
    soon as one of its items has, whether or not the others run on; one that continues on
    failure has ended once all of its items have)."""
    entry = entries.get(step.name)
    if entry is None:
        return "pending"
    if entry.phase != "expanded":
        return "running" if entry.phase == "submitted" else entry.phase
    running = False
    failed: StepStatus | None = None
    for index in range(entry.count or 0):
        item = entries.get(instance_key(step.name, index))
        if item is None or not item.ended:
            running = True
        elif item.phase in _FAILED and failed is None:
            failed = item.phase  # type: ignore[assignment]
    if failed is not None and not step.continue_on_failure:
        return failed  # (Rule 3: at once)
    if running:
        return "running"  # (with continue_on_failure: those after it wait for every item)
    return failed or "finished"


def step_result(
    step: StepDefinition, entries: Mapping[str, StepEntry], load: Callable[[StepEntry], Any]
) -> Any:
    """The result of ``step`` as later steps see it (see the module doc)."""
    entry = entries.get(step.name)
    if entry is None:
        return None
    if entry.phase == "expanded":
        return [
            _loaded(entries.get(instance_key(step.name, index)), load)
            for index in range(entry.count or 0)
        ]
    return _loaded(entry, load)


def _loaded(entry: StepEntry | None, load: Callable[[StepEntry], Any]) -> Any:
    return None if entry is None else load(entry)


def context(
    job: JobDefinition,
    params: Mapping[str, Any],
    entries: Mapping[str, StepEntry],
    steps: Any,
    load: Callable[[StepEntry], Any],
) -> dict[str, Any]:
    """What ``${...}`` sees: the params, and the phase and result of each of ``steps``."""
    by_name = {step.name: step for step in job.steps}
    return {
        "params": dict(params),
        "steps": {
            name: {
                "phase": step_status(by_name[name], entries),
                "result": step_result(by_name[name], entries, load),
            }
            for name in steps
        },
    }


def plan(
    job: JobDefinition,
    params: Mapping[str, Any],
    entries: Mapping[str, StepEntry],
    *,
    upstream: Callable[[str], frozenset[str]],
    load: Callable[[StepEntry], Any] = lambda entry: entry.result,
    order: Sequence[str] | None = None,
) -> Plan:
    """What to do next (see the module doc). ``upstream(step)``: the steps ``step`` needs,
    directly or not (`corra.workflows._definition.upstream`); ``load(entry)``: the result
    value of a finished step's entry; ``order``: `topological_order` of ``job``, if the
    caller keeps it (a run plans many times)."""
    steps = {step.name: step for step in job.steps}
    status = {name: step_status(step, entries) for name, step in steps.items()}
    # (a fan-out step has failed once one item has, while others may still run)
    running = any(entry.phase == "submitted" for entry in entries.values())
    if order is None:
        order = topological_order(job)
    for name in order:
        if status[name] in _FAILED and not steps[name].continue_on_failure:
            if running:
                return Plan()  # (Rule 3: the steps that run go on; nothing new starts)
            return Plan(outcome=Outcome("failed", _failure(name, status[name], entries)))
    actions: list[Action] = []
    for name in order:
        step = steps[name]
        if status[name] != "pending" or not all(
            _satisfied(steps[need], status[need]) for need in step.needs
        ):
            continue
        actions.append(_decide(job, step, params, entries, upstream(name), load))
    if actions:
        return Plan(tuple(actions))
    if running or any(value == "pending" for value in status.values()):
        return Plan()
    return Plan(outcome=_finished(job, params, entries, load))


def _satisfied(step: StepDefinition, status: StepStatus) -> bool:
    return status in _SATISFIED or (status in _FAILED and step.continue_on_failure)


def _failure(name: str, status: StepStatus, entries: Mapping[str, StepEntry]) -> str:
    entry = entries.get(name)
    if entry is not None and entry.phase == "expanded":
        for index in range(entry.count or 0):
            item = entries.get(instance_key(name, index))
            if item is not None and item.phase in _FAILED:
                entry = item
                break
    assert entry is not None
    verb = "was killed" if status == "killed" else "failed"
    detail = f": {entry.reason}" if entry.reason else ""
    return f"step {entry.key!r} {verb}{detail}"


def _decide(
    job: JobDefinition,
    step: StepDefinition,
    params: Mapping[str, Any],
    entries: Mapping[str, StepEntry],
    upstream: frozenset[str],
    load: Callable[[StepEntry], Any],
) -> Action:
    values = context(job, params, entries, upstream, load)
    if step.when is not None:
        try:
            go = step.when.render(values)
        except ConfigError as exc:
            return Fail(step.name, f"when: {exc}")
        if not go:
            return Skip(step.name, f"when: {step.when.text} is false")
    if step.for_each is None:
        return Submit(step.name)
    if isinstance(step.for_each, (list, tuple)):
        items: Any = step.for_each
    else:
        try:
            items = step.for_each.render(values)
        except ConfigError as exc:
            return Fail(step.name, f"for_each: {exc}")
        if not isinstance(items, list):
            return Fail(
                step.name,
                f"for_each: {step.for_each.text} is {_kind(items)}, expected a list",
            )
    return Expand(step.name, tuple(items))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _finished(
    job: JobDefinition,
    params: Mapping[str, Any],
    entries: Mapping[str, StepEntry],
    load: Callable[[StepEntry], Any],
) -> Outcome:
    if job.result is None:
        last = job.steps[-1]
        return Outcome("finished", result=step_result(last, entries, load))
    values = context(job, params, entries, [step.name for step in job.steps], load)
    try:
        return Outcome("finished", result=job.result.render(values))
    except ConfigError as exc:
        return Outcome("failed", f"result: {exc}")
