"""Workflows in Python: ``@corra.workflow`` turns an ``async def`` into a job, requested by name
like a job file's (see docs/workflows.md, "Workflows in Python").

```python
@corra.workflow
async def pipeline(ctx, samples: int):
    prep = await ctx.step("prepare", ["python3", "prepare.py", str(samples)])
    work = await ctx.gather(*(ctx.step(f"work[{i}]", ["python3", "work.py", item])
                              for i, item in enumerate(prep.result["items"])))
    return {"done": len(work)}
```

Here are the job (`PythonJob`: the function, its params from its signature) and what a step
gives back (`StepResult`); a run of one is driven by `corra.workflows._replay`: the function is
called, and called again from the top after a crash, each step's recorded end returned by its
name.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, overload

import attrs

from corra._errors import ConfigError, WorkflowError
from corra.processes._spec import NAME_PATTERN

#: A step's name in a Python workflow: a name, and any number of ``[...]`` (an index, a key).
STEP_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}(?:\[[A-Za-z0-9_-]{1,64}\])*")
#: The types a param's annotation may convert a text (``--param KEY=VALUE``) to.
_KINDS: Final[dict[Any, str]] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}
_NAMES: Final = {kind.__name__: kind for kind in _KINDS}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a param that has none: a request must give it.
REQUIRED: Final = _Required()

WorkflowFunction = Callable[..., Awaitable[Any]]


@attrs.frozen
class StepResult:
    """How a step ended, as ``await ctx.step(...)`` gives it.

    Attributes:
        name: the step's name.
        phase: ``finished``, ``failed`` or ``killed`` (a step that did not finish raises
            `corra.StepFailed`, which carries this).
        result: the JSON value its program wrote to ``$CORRA_RESULT`` (None if none).
        reason: why it failed or was killed.
        process_id: the id of its process (``corra show ID``, ``corra logs ID``).
    """

    name: str
    phase: str
    result: Any = None
    reason: str | None = None
    process_id: str | None = None


@attrs.frozen
class PythonJob:
    """A `corra.workflow` function, as a job a runtime runs by name.

    Attributes:
        name: requested by it (a process name's pattern).
        function: ``async def f(ctx, **params)``.
        params: each param's default (`REQUIRED` when it has none), in signature order.
        kinds: each param's annotated type, when one of bool, int, float, str, list, dict: a
            text given for it (``--param KEY=VALUE``) is read as one.
        description: free text, shown by listings (the function's docstring's first line by
            default).
    """

    name: str
    function: WorkflowFunction = attrs.field(repr=False)
    params: Mapping[str, Any]
    kinds: Mapping[str, type] = attrs.field(factory=dict, repr=False)
    description: str = ""

    async def __call__(self, ctx: Any, **params: Any) -> Any:
        return await self.function(ctx, **params)

    @property
    def module(self) -> str:
        return str(getattr(self.function, "__module__", "?"))

    @property
    def qualname(self) -> str:
        return str(getattr(self.function, "__qualname__", self.name))

    def data(self) -> dict[str, Any]:
        """The frozen copy a run keeps (and ``GET /v1/jobs`` shows): what names the function,
        not its code."""
        return {
            "kind": "python",
            "name": self.name,
            "description": self.description,
            "module": self.module,
            "qualname": self.qualname,
            "params": {k: v for k, v in self.params.items() if v is not REQUIRED},
            "required": [k for k, v in self.params.items() if v is REQUIRED],
        }

    def apply_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The params of a run: the defaults, overridden by ``given``; a text given for a
        param annotated (or defaulting to) bool, int, float, list or dict is read as one.

        Raises:
            WorkflowError: an unknown param, a required one missing, a value of the wrong
                type, or one that is not JSON (each naming the param).
        """
        job = self.name
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise WorkflowError(
                f"job {job!r}: unknown param(s) {', '.join(map(repr, unknown))}; "
                f"its params: {', '.join(map(repr, self.params)) or 'none'}"
            )
        missing = [k for k, v in self.params.items() if v is REQUIRED and k not in given]
        if missing:
            raise WorkflowError(
                f"job {job!r}: param(s) {', '.join(map(repr, missing))} required (no default)"
            )
        values = {}
        for key, default in self.params.items():
            value = given.get(key, default)
            kind = self.kinds.get(key)
            if kind is None and default is not REQUIRED and type(default) in _KINDS:
                kind = type(default)
            values[key] = _converted(job, key, value, kind) if key in given else value
            try:
                json.dumps(values[key], allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise WorkflowError(f"job {job!r}: param {key!r}: not JSON ({exc})") from None
        return values


def _converted(job: str, key: str, value: Any, kind: type | None) -> Any:
    if kind is None:
        return value
    if isinstance(value, str) and kind is not str:
        with contextlib.suppress(ValueError):  # (refused below, as a string)
            value = json.loads(value)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is kind:
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise WorkflowError(f"job {job!r}: param {key!r}: got {shown}, expected {_KINDS[kind]}")


@overload
def workflow(function: WorkflowFunction, /) -> PythonJob: ...


@overload
def workflow(
    *, name: str | None = None, description: str | None = None
) -> Callable[[WorkflowFunction], PythonJob]: ...


def workflow(
    function: WorkflowFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> PythonJob | Callable[[WorkflowFunction], PythonJob]:
    """Make an ``async def f(ctx, ...)`` a job: ``@corra.workflow`` or
    ``@corra.workflow(name="...", description="...")``. Register it with a runtime
    (``rt.workflows.define_python(job)``), then start runs of it by name.

    Its params are its parameters after ``ctx``, keyword-able, each with its default if it
    has one (else a run must give it) and its annotation (bool, int, float, str, list or
    dict) to read a ``--param KEY=VALUE`` text as.

    Raises:
        ConfigError: not an ``async def``, no ``ctx`` parameter, ``*args``/``**kwargs`` or
            positional-only params, a default that is not JSON, or a bad name.
    """
    if function is None:
        return lambda f: _make(f, name, description)
    return _make(function, name, description)


def _make(function: Any, name: str | None, description: str | None) -> PythonJob:
    where = f"workflow {getattr(function, '__qualname__', function)!r}"
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(f"{where}: expected an async def function (async def f(ctx, ...))")
    name = function.__name__ if name is None else name
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{where}: name: got {name!r}, expected 1 to 128 letters, digits and _.@+- "
            "(starting with a letter or digit)"
        )
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise ConfigError(f"{where}: its first parameter must be the context (ctx)")
    hints = _hints(function)
    params: dict[str, Any] = {}
    kinds: dict[str, type] = {}
    for parameter in parameters[1:]:
        if parameter.kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            raise ConfigError(
                f"{where}: param {parameter.name!r}: expected a named parameter "
                "(no *args, **kwargs or positional-only ones: a run passes params by name)"
            )
        default = parameter.default
        if default is inspect.Parameter.empty:
            default = REQUIRED
        else:
            try:
                json.dumps(default, allow_nan=False)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}: param {parameter.name!r}: its default {default!r} is not JSON"
                ) from None
        params[parameter.name] = default
        kind = hints.get(parameter.name)
        if kind in _KINDS:
            kinds[parameter.name] = kind
    if description is None:
        doc = inspect.getdoc(function) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else ""
    return PythonJob(name, function, params, kinds, description)


def _hints(function: Any) -> dict[str, Any]:
    """The params' annotations, as types where they name one of `_KINDS` (string annotations
    too: ``from __future__ import annotations``)."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # (an annotation that does not resolve: read the texts)
        hints = dict(getattr(function, "__annotations__", {}))
    return {
        key: _NAMES.get(hint, hint) if isinstance(hint, str) else typing.get_origin(hint) or hint
        for key, hint in hints.items()
    }


# Step names ------------------------------------------------------------------------------


def step_parts(name: str) -> tuple[str, int | None]:
    """A step's name in a run's entries: ``work[3]`` is item 3 of ``work`` (a name with one
    numeric index); any other name stands alone."""
    base, bracket, rest = name.partition("[")
    if bracket and rest.endswith("]") and rest[:-1].isdigit() and "[" not in rest:
        return base, int(rest[:-1])
    return name, None


def step_process_name(run_id: str, name: str) -> str:
    """The name of a step's process: ``<run id>.work.3`` for ``work[3]`` (a process name has no
    brackets). Step names have no ``.``, so two step names never give one process name.

    Raises:
        ConfigError: ``name`` is not a step name (`STEP_NAME`), or the process name it gives
            is too long.
    """
    if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
        raise ConfigError(
            f"step {name!r}: expected a name of letters, digits, _ and - (starting with a "
            "letter, at most 64), then any [index] or [key] of them"
        )
    process = f"{run_id}." + name.replace("[", ".").replace("]", "")
    if not NAME_PATTERN.match(process):
        raise ConfigError(f"step {name!r}: too long (its process name {process!r} is)")
    return process


# Loading ---------------------------------------------------------------------------------


def load_workflows(source: str) -> dict[str, PythonJob]:
    """The `corra.workflow` functions at the top level of a Python file (``jobs.py``) or an
    importable module (``my.workflows``), by name (``corra serve --workflows``). A file is
    imported as a module named after it, its directory first on ``sys.path``, as ``python
    FILE`` would: each runtime that imports it gives its functions the same names, which a
    run's frozen copy says.

    Raises:
        ConfigError: the source cannot be imported (its error named), it has no workflow, or
            two have one name.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    where = f"--workflows: {source}"
    try:
        if source.endswith(".py") or "/" in source:
            path = Path(source).resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: no such file")
            name = path.stem
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"{where}: not a Python file")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except ConfigError:
        raise
    except Exception as exc:  # (its own code: said as it is, with where)
        raise ConfigError(f"{where}: importing it raised {type(exc).__name__}: {exc}") from None
    found: dict[str, PythonJob] = {}
    for value in vars(module).values():
        if isinstance(value, PythonJob):
            if value.name in found and found[value.name] is not value:
                raise ConfigError(f"{where}: two workflows are named {value.name!r}")
            found[value.name] = value
    if not found:
        raise ConfigError(f"{where}: no @corra.workflow function at its top level")
    return found
