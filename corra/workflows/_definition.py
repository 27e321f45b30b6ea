"""Job definitions: named jobs of steps, each step a process with ``needs``, ``for_each`` and
``when``; what a run needs of them (params, each step's spec, the order, the result).

A definition is validated once, whole, when it is loaded (`corra.workflows._loading`); here
are the frozen values and the pure functions that a run applies to them. A run keeps its own
copy of the definition it started with, as `job_data` writes it: the fields as they were
given, so that it reads back the same (`job_from_data`) whatever a later corra would say of
the file.

The context of a step's templates is::

    {"params": {...}, "steps": {NAME: {"result": value, "phase": "..."}}, "item": value}

with only the step's upstream steps in ``steps`` and ``item`` only in a step with
``for_each``. A fan-out step's result, downstream, is the list of its items' results, in
the order of its items.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from corra._errors import ConfigError, WorkflowError
from corra.processes._convert import parse_process_spec
from corra.processes._spec import ProcessSpec
from corra.processes._spec_content import hide_env
from corra.workflows._expressions import Template, kind_of, parse_template, to_text

STEP_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: The version of `job_data`'s layout (`job_from_data` reads this one).
DATA_VERSION = 1


@attrs.frozen
class StepDefinition:
    """One step of a job: a process, run when its ``needs`` have finished.

    Attributes:
        name: unique in its job (`STEP_NAME_PATTERN`); a fan-out's items are ``NAME[i]``.
        process: the ``[[process]]`` fields as given (no ``name``; ``[defaults]`` merged in),
            with their ``${...}`` templates in argv, env values and cwd left in.
        needs: the steps that must have finished (or failed, with their
            ``continue_on_failure``) before this one starts.
        for_each: a template that must render to a list, or a list: one process per item.
        when: a template whose truthiness decides whether the step runs (else: skipped).
        continue_on_failure: a failure of this step does not fail the run.
    """

    name: str
    process: Mapping[str, Any] = attrs.field(repr=lambda process: repr(_shown(process)))
    needs: tuple[str, ...] = ()
    for_each: Template | list[Any] | None = None
    when: Template | None = None
    continue_on_failure: bool = False


@attrs.frozen
class JobDefinition:
    """A named job: params with their defaults, and its steps in file order.

    Attributes:
        name: requested by it (a process name's pattern).
        params: each param's default; a request overrides them (`apply_params`).
        steps: in file order.
        result: a template of the job's result; None: the result of `result_step`.
        description: free text, shown by listings.
    """

    name: str
    params: Mapping[str, Any]
    steps: tuple[StepDefinition, ...]
    result: Template | None = None
    description: str = ""

    def step(self, name: str) -> StepDefinition:
        """The step named ``name`` (KeyError if there is none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


# Order -----------------------------------------------------------------------------------


def topological_order(job: JobDefinition) -> tuple[str, ...]:
    """The step names, each after its needs; among steps that could go next, file order first."""
    position = {step.name: index for index, step in enumerate(job.steps)}
    waiting = {step.name: len(set(step.needs)) for step in job.steps}
    needed_by: dict[str, list[str]] = {step.name: [] for step in job.steps}
    for step in job.steps:
        for need in set(step.needs):
            needed_by[need].append(step.name)
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = job.steps[heapq.heappop(ready)].name
        order.append(name)
        for after in needed_by[name]:
            waiting[after] -= 1
            if waiting[after] == 0:
                heapq.heappush(ready, position[after])
    if len(order) != len(job.steps):
        raise WorkflowError(f"job {job.name!r}: its needs make a cycle")
    return tuple(order)


def upstream(job: JobDefinition, step_name: str) -> frozenset[str]:
    """The steps that ``step_name`` needs, directly or through the steps it needs."""
    needs = {step.name: step.needs for step in job.steps}
    found: set[str] = set()
    stack = list(needs[step_name])
    while stack:
        name = stack.pop()
        if name not in found:
            found.add(name)
            stack.extend(needs.get(name, ()))
    return frozenset(found)


def result_step(job: JobDefinition) -> str:
    """The step whose result is the job's when it has no ``result``: the last in file order
    of the steps that no step needs."""
    needed = {need for step in job.steps for need in step.needs}
    return [step.name for step in job.steps if step.name not in needed][-1]


# What a run renders ----------------------------------------------------------------------


def apply_params(job: JobDefinition, given: Mapping[str, Any]) -> dict[str, Any]:
    """The job's params: its defaults, overridden by ``given``. A string given for a param
    whose default is not one (from a command line) is read as the default's type: an
    integer, a number, ``true``/``false``, or a JSON list or table.

    Raises:
        WorkflowError: an unknown param (naming it and the known ones), or a value that is
            not of its default's type.
    """
    unknown = sorted(set(given) - set(job.params))
    if unknown:
        raise WorkflowError(
            f"job {job.name!r}: unknown param(s) {', '.join(map(repr, unknown))}; "
            f"its params: {', '.join(map(repr, job.params)) or 'none'}"
        )
    params = dict(job.params)
    for key, value in given.items():
        params[key] = _param(job.name, key, value, job.params[key])
    return params


_PARAM_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"))


def _param(job: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        with contextlib.suppress(ValueError):  # (refused below, as a string)
            value = json.loads(value)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is kind:
        return value
    expected = dict(_PARAM_KINDS).get(kind, {str: "a string", list: "a list"}.get(kind, "a table"))
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise WorkflowError(
        f"job {job!r}: param {key!r}: got {shown}, expected {expected} (as its default is)"
    )


def render_field(
    job: JobDefinition,
    step: StepDefinition,
    field: str,
    template: Template | str,
    context: Mapping[str, Any],
) -> Any:
    """``template`` (or its text) rendered over ``context``; an error names the job, the
    step and the field.

    Raises:
        WorkflowError: naming ``job 'J' step 'S'.FIELD``, the expression and what it did
            not find (or where it does not parse).
    """
    try:
        if isinstance(template, str):
            template = parse_template(template)
        return template.render(context)
    except WorkflowError as exc:
        raise WorkflowError(f"job {job.name!r} step {step.name!r}.{field}: {exc}") from None


def step_spec(job: JobDefinition, step: StepDefinition, context: Mapping[str, Any]) -> ProcessSpec:
    """The spec of ``step`` (of one item of it, for a fan-out: ``context["item"]``): its
    argv's words, its env's values and its cwd rendered over ``context`` (never through a
    shell; a value that is not a string stands as compact JSON), its other fields as given.
    Its ``name`` is not set: the run names its processes.

    Raises:
        WorkflowError: naming the job, the step and the field (an env's values never).
    """
    process = dict(step.process)
    argv = process.get("argv")
    if isinstance(argv, list):
        process["argv"] = [
            to_text(render_field(job, step, f"argv[{index}]", word, context))
            if isinstance(word, str)
            else word
            for index, word in enumerate(argv)
        ]
    env = process.get("env")
    if isinstance(env, Mapping):
        process["env"] = {
            key: to_text(render_field(job, step, f"env.{key}", value, context))
            if isinstance(value, str)
            else value
            for key, value in env.items()
        }
    if isinstance(process.get("cwd"), str):
        cwd = render_field(job, step, "cwd", process["cwd"], context)
        process["cwd"] = to_text(cwd)
    try:
        return parse_process_spec(process, f"job {job.name!r} step {step.name!r}")
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


def step_items(job: JobDefinition, step: StepDefinition, context: Mapping[str, Any]) -> list[Any]:
    """The items of a fan-out step (its ``for_each``, rendered).

    Raises:
        WorkflowError: it did not render, or not to a list (naming its kind).
    """
    if isinstance(step.for_each, list):
        return list(step.for_each)
    if step.for_each is None:
        raise WorkflowError(f"job {job.name!r} step {step.name!r}: it has no for_each")
    items = render_field(job, step, "for_each", step.for_each, context)
    if not isinstance(items, list):
        raise WorkflowError(
            f"job {job.name!r} step {step.name!r}.for_each: {step.for_each.text} gave "
            f"{kind_of(items)}, expected a list"
        )
    return items


def step_runs(job: JobDefinition, step: StepDefinition, context: Mapping[str, Any]) -> bool:
    """Whether the step runs: its ``when``'s truthiness (True without one).

    Raises:
        WorkflowError: naming the job, the step, ``when`` and what it did not find.
    """
    if step.when is None:
        return True
    return bool(render_field(job, step, "when", step.when, context))


def job_result(job: JobDefinition, context: Mapping[str, Any]) -> Any:
    """The job's result over ``context`` (every step's): its ``result`` rendered, or the
    result of its `result_step`.

    Raises:
        WorkflowError: naming the job, ``result`` and what it did not find.
    """
    if job.result is None:
        return context["steps"].get(result_step(job), {}).get("result")
    try:
        return job.result.render(context)
    except WorkflowError as exc:
        raise WorkflowError(f"job {job.name!r}.result: {exc}") from None


# The stored copy -------------------------------------------------------------------------


def job_data(job: JobDefinition) -> dict[str, Any]:
    """The definition as JSON-able data, its fields as given (templates as their text)."""
    return {
        "version": DATA_VERSION,
        "name": job.name,
        "description": job.description,
        "params": _copy(job.params),
        "result": None if job.result is None else job.result.text,
        "steps": [
            {
                "name": step.name,
                "process": _copy(step.process),
                "needs": list(step.needs),
                "for_each": (
                    step.for_each.text
                    if isinstance(step.for_each, Template)
                    else _copy(step.for_each)
                ),
                "when": None if step.when is None else step.when.text,
                "continue_on_failure": step.continue_on_failure,
            }
            for step in job.steps
        ],
    }


def job_from_data(data: Mapping[str, Any]) -> JobDefinition:
    """The definition `job_data` wrote, as it was (not validated again).

    Raises:
        WorkflowError: data of another layout, or not a definition's.
    """
    if not isinstance(data, Mapping) or data.get("version") != DATA_VERSION:
        version = data.get("version") if isinstance(data, Mapping) else None
        raise WorkflowError(f"a stored job definition of version {version!r}, not {DATA_VERSION}")
    try:
        return JobDefinition(
            name=data["name"],
            params=_copy(data["params"]),
            result=None if data["result"] is None else parse_template(data["result"]),
            description=data["description"],
            steps=tuple(
                StepDefinition(
                    name=step["name"],
                    process=_copy(step["process"]),
                    needs=tuple(step["needs"]),
                    for_each=(
                        parse_template(step["for_each"])
                        if isinstance(step["for_each"], str)
                        else _copy(step["for_each"])
                    ),
                    when=None if step["when"] is None else parse_template(step["when"]),
                    continue_on_failure=step["continue_on_failure"],
                )
                for step in data["steps"]
            ),
        )
    except (KeyError, TypeError) as exc:
        raise WorkflowError(f"a stored job definition without its field {exc}") from None


def _shown(process: Mapping[str, Any]) -> dict[str, Any]:
    # (an env's values are secrets: never in a repr)
    env = process.get("env")
    return {**process, "env": hide_env(env)} if isinstance(env, Mapping) else dict(process)


def _copy(value: Any) -> Any:
    # A deep copy of JSON values, so that a definition shares no mutable data with its input.
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(item) for item in value]
    return value
