"""The ``[[job]]`` tables of a job file, validated whole before anything runs.

Every problem is found, and all are raised at once, one line each naming the file, the job,
the step and the field (``jobs.toml: job 'pipeline' step 'work'.argv[2]: ...``; a job or a
step without a valid name is named by its index, ``job[0]``, ``step[1]``). What is checked:
unknown fields, the names (their pattern, duplicates), a ``needs`` naming no step, a cycle
(named in order: ``a -> b -> a``, each step needing the one before it), each ``${...}``'s
syntax (with its column), a reference to a param the job does not have or a step that is not
upstream, ``${item}`` outside a fan-out step, a ``${...}`` in a field other than argv, env
values and cwd, and the process fields themselves, as the wire takes a ``[[process]]`` table
(with the templates left in as text).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from corra._errors import ConfigError
from corra.processes._convert import parse_process_spec, wire_fields
from corra.processes._spec import NAME_PATTERN
from corra.processes._spec_content import shown_tables
from corra.workflows._definition import STEP_NAME_PATTERN, JobDefinition, StepDefinition
from corra.workflows._expressions import Template, has_template, parse_template
from corra.workflows._syntax import NAME

JOB_FIELDS = ("name", "description", "params", "result", "step")
STEP_FIELDS = ("name", "needs", "for_each", "when", "continue_on_failure")
#: The process fields whose strings may hold ``${...}`` (env: its values).
TEMPLATED = ("argv", "env", "cwd")
#: The tables that a step's own merge into ``[defaults]``' (as a ``[[process]]``'s do).
MERGED_TABLES = ("env", "labels")


def merge_defaults(defaults: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` over ``defaults``, its ``env`` and ``labels`` merged into theirs."""
    merged = {**defaults, **table}
    for key in MERGED_TABLES:
        if isinstance(defaults.get(key), dict) and isinstance(table.get(key), dict):
            merged[key] = {**defaults[key], **table[key]}
    return merged


def parse_jobs(
    tables: object,
    where: str = "<job file>",
    *,
    defaults: Mapping[str, Any] | None = None,
    hosts: Collection[str] | None = None,
) -> dict[str, JobDefinition]:
    """The jobs of a ``[[job]]`` array, by name, in file order.

    Args:
        tables: the array (a list of tables), as the TOML parser gives it.
        where: the file, which every error names first.
        defaults: the ``[defaults]`` table, applied to every step (as to a ``[[process]]``).
        hosts: the ``[hosts.NAME]`` a step's ``host`` may name (None: not checked).

    Raises:
        ConfigError: every problem found, one per line.
    """
    errors: list[str] = []
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: job: expected [[job]] tables, got {shown_tables(tables)}")
    defaults = {key: value for key, value in (defaults or {}).items() if key != "name"}
    jobs: dict[str, JobDefinition] = {}
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        label = f"{where}: job[{index}]"
        if not isinstance(table, dict):
            errors.append(f"{label}: expected a table, got {shown_tables(table)}")
            continue
        name = table.get("name")
        if name is None:
            errors.append(f"{label}.name: missing; every job needs a name")
        elif not isinstance(name, str) or not NAME_PATTERN.match(name):
            errors.append(f"{label}.name: got {name!r}, expected {NAME_PATTERN.pattern}")
        elif name in seen:
            errors.append(f"{label}.name: {name!r} is the name of job[{seen[name]}] already")
        else:
            seen[name] = index
            label = f"{where}: job {name!r}"
        job = _Job(label, table, defaults, hosts, errors).parse()
        if job is not None and seen.get(name) == index:
            jobs[job.name] = job
    if errors:
        raise ConfigError("\n".join(errors))
    return jobs


class _Job:
    """The checks of one ``[[job]]`` table, which append their errors to ``errors``."""

    def __init__(
        self,
        label: str,
        table: dict[str, Any],
        defaults: Mapping[str, Any],
        hosts: Collection[str] | None,
        errors: list[str],
    ) -> None:
        self.label = label
        self.table = table
        self.defaults = defaults
        self.hosts = hosts
        self.errors = errors
        self.failed = False

    def error(self, message: str) -> None:
        self.errors.append(message)
        self.failed = True

    def parse(self) -> JobDefinition | None:
        table, label = self.table, self.label
        unknown = sorted(set(table) - set(JOB_FIELDS))
        if unknown:
            self.error(
                f"{label}: unknown field(s) {unknown}; expected some of {', '.join(JOB_FIELDS)}"
            )
        description = table.get("description", "")
        if not isinstance(description, str):
            self.error(f"{label}.description: got {description!r}, expected a string")
        params = self.params(table.get("params", {}))
        steps = self.steps(table.get("step"))
        result = self.template(table.get("result"), f"{label}.result")
        # (checked on, even if a field failed: every error of the file is found at once)
        job = JobDefinition(
            name=str(table.get("name")),
            params=params,
            steps=steps,
            result=result,
            description=description,
        )
        self.needs(job)
        self.references(job)
        return None if self.failed else job

    def params(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            self.error(f"{self.label}.params: expected a table, got {shown_tables(params)}")
            return {}
        for key, value in params.items():
            if not NAME.fullmatch(key):
                self.error(
                    f"{self.label}.params: got the name {key!r}, expected a name matching "
                    f"{NAME.pattern}"
                )
            elif not _json_value(value):
                self.error(
                    f"{self.label}.params.{key}: got {value!r}, expected a JSON value "
                    "(a string, a number, true or false, a list or a table of them)"
                )
        return params

    def template(self, value: Any, label: str, single: bool = False) -> Any:
        """``value`` parsed as a template, if it is a string; None, with its error, if it
        does not parse (or is not one ``${...}`` where ``single``)."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(f"{label}: got {value!r}, expected a string with ${{...}}")
            return None
        try:
            template = parse_template(value)
        except ConfigError as exc:
            self.error(f"{label}: {exc}")
            return None
        if single and not template.single:
            self.error(f"{label}: got {value!r}, expected one ${{...}} expression and no text")
            return None
        return template

    def steps(self, tables: Any) -> tuple[StepDefinition, ...]:
        """The steps whose names are valid (the others' errors are reported)."""
        label = self.label
        if tables is None or tables == []:
            self.error(f"{label}: no [[job.step]] tables; a job needs at least one step")
            return ()
        if not isinstance(tables, list):
            self.error(f"{label}.step: expected [[job.step]] tables, got {shown_tables(tables)}")
            return ()
        steps = []
        seen: dict[str, int] = {}
        for index, table in enumerate(tables):
            step_label = f"{label} step[{index}]"
            if not isinstance(table, dict):
                self.error(f"{step_label}: expected a table, got {shown_tables(table)}")
                continue
            name = table.get("name")
            if name is None:
                self.error(f"{step_label}.name: missing; every step needs a name")
            elif not isinstance(name, str) or not STEP_NAME_PATTERN.match(name):
                self.error(f"{step_label}.name: got {name!r}, expected {STEP_NAME_PATTERN.pattern}")
            elif name in seen:
                self.error(f"{step_label}.name: {name!r} is the name of step[{seen[name]}] already")
            else:
                seen[name] = index
                step_label = f"{label} step {name!r}"
            step = self.step(step_label, table)
            if seen.get(name) == index:
                steps.append(step)
        return tuple(steps)

    def step(self, label: str, table: dict[str, Any]) -> StepDefinition:
        process_fields = [field for field in wire_fields() if field != "name"]
        unknown = sorted(set(table) - {*STEP_FIELDS, *process_fields})
        if unknown:
            self.error(
                f"{label}: unknown field(s) {unknown}; expected some of {', '.join(STEP_FIELDS)}"
                f", and a process's: {', '.join(process_fields)}"
            )
        needs = table.get("needs", [])
        if not isinstance(needs, list) or not all(isinstance(need, str) for need in needs):
            self.error(f"{label}.needs: got {needs!r}, expected a list of step names")
            needs = []
        for need in {need for need in needs if needs.count(need) > 1}:
            self.error(f"{label}.needs: {need!r} is named more than once")
        for_each = table.get("for_each")
        if isinstance(for_each, list) and not _json_value(for_each):
            self.error(f"{label}.for_each: got {for_each!r}, expected a list of JSON values")
        elif not isinstance(for_each, list):
            for_each = self.template(for_each, f"{label}.for_each", single=True)
        when = self.template(table.get("when"), f"{label}.when", single=True)
        keep_going = table.get("continue_on_failure", False)
        if not isinstance(keep_going, bool):
            self.error(f"{label}.continue_on_failure: got {keep_going!r}, expected true or false")
        given = {key: value for key, value in table.items() if key in process_fields}
        process = merge_defaults(self.defaults, given)
        self.process(label, process)
        if "for_each" in table and for_each is None:
            for_each = []  # (it failed: the job is not kept, but its steps are checked on)
        return StepDefinition(
            name=str(table.get("name")),
            process=process,
            needs=tuple(needs),
            for_each=for_each,
            when=when,
            continue_on_failure=keep_going,
        )

    def process(self, label: str, process: dict[str, Any]) -> None:
        """Check the step's process fields: no ``${...}`` but in argv, env values and cwd,
        where each must parse; then the fields as a ``[[process]]``'s."""
        checked = dict(process)
        for field, value in process.items():
            if field == "env" and isinstance(value, dict):
                for key, item in value.items():
                    if has_template(key):
                        self.error(f"{label}.env: the name {key!r}; ${{...}} may not stand there")
                    if isinstance(item, str):
                        self.template(item, f"{label}.env.{key}")
            elif field in TEMPLATED:
                for path, text in _strings(field, value):
                    self.template(text, f"{label}.{path}")
            else:
                for path, text in _strings(field, value):
                    if has_template(text):
                        self.error(
                            f"{label}.{path}: got {text!r}; ${{...}} may stand only in argv, "
                            "env values and cwd"
                        )
                        checked.pop(field, None)  # (one error for it, not the wire's too)
        try:
            spec = parse_process_spec(checked, label)
        except ConfigError as exc:
            self.error(str(exc))
            return
        if self.hosts is not None and spec.host is not None and spec.host not in self.hosts:
            self.error(
                f"{label}.host: got {spec.host!r}, expected one of the [hosts.NAME] tables "
                f"{sorted(self.hosts)}"
            )

    def needs(self, job: JobDefinition) -> None:
        """Report each ``needs`` naming no step, and each cycle."""
        names = [step.name for step in job.steps]
        known = set(names)
        for step in job.steps:
            for need in step.needs:
                if need not in known:
                    self.error(
                        f"{self.label} step {step.name!r}.needs: no step {need!r} in the job "
                        f"(its steps: {', '.join(map(repr, names))})"
                    )
        for cycle in _cycles(job):
            self.error(
                f"{self.label} step {cycle[0]!r}.needs: a cycle: {' -> '.join(cycle)} "
                "(each step needs the one before it)"
            )

    def references(self, job: JobDefinition) -> None:
        """Report each ``${...}`` naming a param the job does not have, a step that is not
        upstream of its step, or ``item`` where there is none."""
        needs = {step.name: step.needs for step in job.steps}
        names = frozenset(needs)
        for step in job.steps:
            label = f"{self.label} step {step.name!r}"
            for field, template in _templates(step):
                for source, references in template.part_references():
                    for kind, name in sorted(references, key=str):
                        above = _upstream_of(needs, step.name, name)
                        problem = self.reference(job, kind, name, above, step, field)
                        if problem is not None:
                            self.error(f"{label}.{field}: {source}: {problem}")
        if job.result is not None:
            for source, references in job.result.part_references():
                for kind, name in sorted(references, key=str):
                    if kind == "item":
                        problem = "there is no item: the job's result is not a step's"
                    else:
                        problem = self.reference(job, kind, name, name in names, None, "")
                    if problem is not None:
                        self.error(f"{self.label}.result: {source}: {problem}")

    def reference(
        self,
        job: JobDefinition,
        kind: str,
        name: str | None,
        above: bool,
        step: StepDefinition | None,
        field: str,
    ) -> str | None:
        """What is wrong with a reference (``above``: whether ``name`` is upstream)."""
        if kind == "params" and name not in job.params:
            known = ", ".join(map(repr, job.params)) or "none"
            return f"the job has no param {name!r} (its params: {known})"
        if kind == "steps" and not above:
            if step is not None and name == step.name:
                return f"step {name!r} cannot use its own result"
            if name not in [other.name for other in job.steps]:
                return f"the job has no step {name!r}"
            return f"step {name!r} is not upstream of this step (add it to needs)"
        if kind == "item" and step is not None:
            if field == "for_each":
                return "there is no item yet: for_each gives the items"
            if field == "when":
                return "there is no item in when: it decides for the whole step, before its items"
            if step.for_each is None:
                return "there is no item: the step has no for_each"
        return None


def _upstream_of(needs: Mapping[str, tuple[str, ...]], step: str, other: str | None) -> bool:
    """Whether ``other`` is upstream of ``step``: found from ``step``'s needs, the nearest
    first (most references are to a step it needs itself: one look, where `upstream`'s
    whole set would cost a long chain's length at each step)."""
    seen: set[str] = set()
    pending = list(needs.get(step, ()))
    while pending:
        if other in pending:
            return True
        seen.update(pending)
        pending = [n for name in pending for n in needs.get(name, ()) if n not in seen]
    return False


def _templates(step: StepDefinition) -> Iterator[tuple[str, Template]]:
    """The templates of a step that parse (the others' errors are reported), with their
    field paths."""
    process = step.process
    fields: list[tuple[str, Any]] = []
    if isinstance(process.get("argv"), list):
        fields.extend((f"argv[{index}]", word) for index, word in enumerate(process["argv"]))
    if isinstance(process.get("env"), dict):
        fields.extend((f"env.{key}", value) for key, value in process["env"].items())
    fields.append(("cwd", process.get("cwd")))
    for field, text in fields:
        if isinstance(text, str):
            try:
                template = parse_template(text)
            except ConfigError:
                continue  # (reported by the step's checks)
            yield field, template
    if isinstance(step.for_each, Template):
        yield "for_each", step.for_each
    if step.when is not None:
        yield "when", step.when


def _strings(path: str, value: Any) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` (keys of tables aside), with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(f"{path}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(f"{path}[{index}]", item)


def _cycles(job: JobDefinition) -> list[list[str]]:
    """Each cycle of ``needs`` once, in the order the steps would run, from its first step
    in file order."""
    needs = {step.name: step.needs for step in job.steps}
    needs = {name: [need for need in after if need in needs] for name, after in needs.items()}
    position = {step.name: index for index, step in enumerate(job.steps)}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: dict[frozenset[str], list[str]] = {}
    for root in needs:
        if root in state:
            continue
        # Depth first, without recursion (a chain of thousands of steps is a valid job).
        path: list[str] = [root]
        pending = [iter(needs[root])]
        state[root] = 1
        while path:
            need = next(pending[-1], None)
            if need is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(need) == 1:
                # The path from `need` holds steps each needing the next: reversed, each
                # needs the one before it.
                loop = list(reversed(path[path.index(need) :]))
                start = min(range(len(loop)), key=lambda i: position[loop[i]])
                loop = loop[start:] + loop[:start]
                cycles.setdefault(frozenset(loop), [*loop, loop[0]])
            elif need not in state:
                state[need] = 1
                path.append(need)
                pending.append(iter(needs[need]))
    return list(cycles.values())


def _json_value(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(map(_json_value, value))
    if isinstance(value, dict):
        return all(isinstance(key, str) and _json_value(item) for key, item in value.items())
    return False
