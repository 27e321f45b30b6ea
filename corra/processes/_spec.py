"""What a process is: its `ProcessSpec`, and the value checks every spec passes once.

A spec is checked when it is built (`ProcessSpec.__attrs_post_init__`), whoever builds it: the
wire converter (`corra.processes._convert.parse_process_spec`, which checks the types of the
input first and names field paths), or Python code. The first field that fails, in order, is
named, with its value (an env's values never) and what was expected.

The spec names no backend. Its ``backend`` is looked up among the installed plug-ins
(`corra.processes._registry.installed`), whose `Capabilities` say whether a ``host``,
``inputs`` and ``outputs`` belong, and whose ``options`` class types the spec's ``options``
(the ``<backend> = { ... }`` table of a job file or an API body).

A stored spec is read back without these checks (`corra.processes._convert`): it passed them
when it came in, and a check added later must not make it unreadable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import attrs

from corra._errors import ConfigError
from corra.processes._backend import BackendPlugin, Capabilities
from corra.processes._registry import installed
from corra.processes._spec_content import (
    abbreviated,
    content_fits,
    content_problem,
    env_name_problem,
    shown,
)

RestartPolicy: TypeAlias = Literal["temporary", "transient", "permanent"]
RESTART_POLICIES = ("temporary", "transient", "permanent")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
#: The longest duration, in seconds, that any spec field or setting may give: 10 years. No
#: one waits longer, and every wait must fit the clocks it is handed to (epoll takes
#: milliseconds as a C int: 24.8 days), which the chaperone clamps its waits to.
MAX_SECONDS = 315_360_000
#: The most an ``output_limit`` may be (1 TiB), and what None gives when the runtime says nothing.
MAX_OUTPUT_LIMIT = 1 << 40
DEFAULT_OUTPUT_LIMIT = 1 << 30


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(NAME_PATTERN.match(value)))


def _argv(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) > 0
        and all(isinstance(part, str) and "\0" not in part for part in value)
        and value[0] != ""
    )


def _seconds_or_none(value: Any) -> bool:
    return value is None or (_number(value) and 0 < value <= MAX_SECONDS)  # (not NaN)


def _seconds(value: Any) -> bool:
    return _number(value) and 0 <= value <= MAX_SECONDS


def seconds_expected(*, positive: bool) -> str:
    """What a duration must be, in words (every error about one says it so)."""
    return f"seconds {'>' if positive else '>='} 0 and at most {MAX_SECONDS} (10 years)"


def check_seconds(
    name: str, value: object, *, positive: bool = False, optional: bool = False
) -> None:
    """Raise `ConfigError` naming ``name`` unless ``value`` is a duration corra takes: a
    number of seconds >= 0 (> 0 if ``positive``) and at most `MAX_SECONDS`; or None, where
    ``optional``. (NaN and infinities are refused: neither is within the bounds.)"""
    if value is None:
        if optional:
            return
    elif _seconds_or_none(value) if positive else _seconds(value):
        return
    raise ConfigError(f"{name}: got {value!r}, expected {seconds_expected(positive=positive)}")


def _positive_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _output_limit(value: Any) -> bool:
    return value is None or (_positive_or_none(value) and value <= MAX_OUTPUT_LIMIT)


def check_output_limit(name: str, value: object, *, optional: bool = False) -> None:
    """Raise `ConfigError` naming ``name`` unless ``value`` is a valid output limit (or None,
    where ``optional``)."""
    if not _output_limit(value) or (value is None and not optional):
        raise ConfigError(
            f"{name}: got {value!r}, expected bytes > 0 and <= {MAX_OUTPUT_LIMIT} (1 TiB)"
        )


def _cwd(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value != "" and "\0" not in value)


def _table(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    )


def _relative_path(value: Any) -> bool:
    """A relative POSIX path that stays inside its directory (no ``..``, not absolute)."""
    return (
        isinstance(value, str)
        and value != ""
        and "\0" not in value
        and not value.startswith("/")
        and ".." not in value.split("/")
    )


def _files(value: Any) -> bool:
    return _table(value) and all(
        _relative_path(key) and item and "\0" not in item for key, item in value.items()
    )


def _globs(value: Any) -> bool:
    return isinstance(value, tuple) and all(_relative_path(part) for part in value)


def _env(value: Any) -> bool:
    return _table(value) and all(
        key and "=" not in key and "\0" not in key + val for key, val in value.items()
    )


def _backend(value: Any) -> bool:
    installed.get(value)  # (its own error: the installed backends, named)
    return True


#: Per field of `ProcessSpec` but ``options``, in order: what a valid value passes, and its
#: description. (``options``' class depends on the backend: `_check_placement`.)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "argv": (_argv, "a non-empty list of strings without NUL bytes"),
    "name": (_name, f"a name matching {NAME_PATTERN.pattern}"),
    "cwd": (_cwd, "a directory path without NUL bytes, or nothing"),
    "env": (
        _env,
        "NAME = value strings, names non-empty and without '=' or NUL, values without NUL",
    ),
    "timeout": (_seconds_or_none, f"{seconds_expected(positive=True)}, or nothing"),
    "restart": (lambda v: v in RESTART_POLICIES, f"one of {list(RESTART_POLICIES)}"),
    "max_attempts": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "an integer >= 1",
    ),
    "kill_grace": (_seconds, seconds_expected(positive=False)),
    "memory_limit": (_positive_or_none, "bytes > 0, or nothing"),
    "pids_limit": (_positive_or_none, "an integer > 0, or nothing"),
    "output_limit": (_output_limit, f"bytes > 0 and <= {MAX_OUTPUT_LIMIT} (1 TiB), or nothing"),
    "labels": (_table, "a table of string values"),
    "backend": (_backend, "an installed backend"),
    "host": (_name, f"a host name matching {NAME_PATTERN.pattern}, or nothing"),
    "inputs": (
        _files,
        "a table of remote path = local path (remote paths relative, without '..')",
    ),
    "outputs": (_globs, "a list of globs relative to the work dir, without '..'"),
    "outputs_dir": (_cwd, "a local directory path without NUL bytes, or nothing"),
}


@attrs.frozen
class ProcessSpec:
    """What to run, and how. Everything a job file's ``[[process]]`` table may say.

    Attributes:
        argv: the program and its arguments (never a shell string).
        name: unique among processes; a job file identifies its processes by it.
        cwd: working directory; None gives the process its own directory in the state dir.
        env: variables added to the runtime's environment. Their values are secrets to
            corra: no error, no ``repr`` and no answer shows them unless asked to.
        timeout: seconds the program may run before it is killed (None: no limit).
        restart: ``temporary`` never reruns the program; ``transient`` reruns it after a
            failure; ``permanent`` reruns it after any exit (a service). Each rerun is a new
            attempt, up to ``max_attempts``.
        max_attempts: how many attempts a transient or permanent process gets.
        kill_grace: seconds between SIGTERM and SIGKILL when killing.
        memory_limit: bytes, where cgroups allow (None: no limit).
        pids_limit: processes and threads, where cgroups allow.
        output_limit: bytes kept of each of stdout and stderr (at most 1 TiB); later output
            is dropped, and the result counts it. None: the runtime's default (1 GiB).
        labels: free-form tags for filtering.
        backend: where the program runs: an installed backend (``corra backends``), such as
            ``local``, ``ssh`` (a remote program under the chaperone) or ``slurm``.
        host: for a backend with hosts, the name of the host (a ``[hosts.NAME]`` table).
        inputs: for a backend that stages files, files to send before the launch: remote
            path (relative to the work dir) = local file or directory.
        outputs: for a backend that stages files, globs (relative to the work dir) of the
            files to fetch into ``outputs_dir`` after the exit.
        outputs_dir: the local directory the outputs are fetched into.
        options: the backend's own options, an instance of its plug-in's ``options`` class
            (e.g. `corra.backends.slurm.SlurmOptions`); a job file or an API body gives them
            as a table named after the backend (``slurm = { ... }``). None for a backend
            without options; its defaults when the backend has some and none are given.
    """

    argv: tuple[str, ...]
    name: str | None = None
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict, repr=lambda env: shown("env", env))
    timeout: float | None = None
    restart: RestartPolicy = "temporary"
    max_attempts: int = 3
    kill_grace: float = 10.0
    memory_limit: int | None = None
    pids_limit: int | None = None
    output_limit: int | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    backend: str = "local"
    host: str | None = None
    inputs: dict[str, str] = attrs.field(factory=dict)
    outputs: tuple[str, ...] = ()
    outputs_dir: str | None = None
    options: Any = None

    def __attrs_post_init__(self) -> None:
        # Every field checked when the value is built (and so by evolve too), in order; a
        # field left at its default (or an empty table) is valid: a spec is built for every
        # submission, and most fields of most specs are left so.
        if not _fields_pass(self):  # (then the first field that fails, in order, is named)
            for name, check, expected, default, table in _CHECKED_FIELDS:
                value = getattr(self, name)
                if value is default or (table and type(value) is dict and not value):
                    continue
                if not check(value):
                    raise ConfigError(f"{name}: got {shown(name, value)}, expected {expected}")
        plugin = installed.get(self.backend)
        if self.options is None and plugin.options is not None:
            object.__setattr__(self, "options", plugin.options())
        elif self.options is not None and not attrs.has(type(self.options)):
            raise _options_expected(self, plugin)
        if not content_fits(self):
            problem = content_problem(self)
            if problem is not None:
                raise ConfigError(problem)
        _check_placement(self, plugin)


#: `_CHECKS` with each field's default, and whether it is a table (built after the class:
#: its fields give them).
_CHECKED_FIELDS = [
    (
        name,
        check,
        expected,
        attrs.fields_dict(ProcessSpec)[name].default,
        isinstance(attrs.fields_dict(ProcessSpec)[name].default, attrs.Factory),  # type: ignore[arg-type]
    )
    for name, (check, expected) in _CHECKS.items()
]


def _fields_checker() -> Callable[[ProcessSpec], bool]:
    """Whether every field passes its check of `_CHECKS` (one left at its default, or an
    empty table, without a call): one expression, generated once from `_CHECKED_FIELDS` as
    attrs generates ``__init__`` (a spec is built for every submission, and a loop over the
    fields took a sixth of a spec's submission)."""
    namespace: dict[str, Any] = {}
    terms = []
    for number, (name, check, _, default, table) in enumerate(_CHECKED_FIELDS):
        namespace[f"check{number}"], namespace[f"default{number}"] = check, default
        value = f"spec.{name}"
        passes = (
            f"type({value}) is dict and not {value}" if table else f"{value} is default{number}"
        )
        terms.append(f"({passes} or check{number}({value}))")
    source = (
        "def fields_pass(spec):\n    return bool(\n        " + "\n        and ".join(terms) + ")\n"
    )
    exec(compile(source, "<corra ProcessSpec checks>", "exec"), namespace)
    checker: Callable[[ProcessSpec], bool] = namespace["fields_pass"]
    return checker


_fields_pass = _fields_checker()


def options_table(options: object) -> dict[str, Any]:
    """A backend's options as a table: the fields that differ from their defaults (how
    answers and errors show them; a stored spec keeps every field)."""
    table = {}
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[attr-defined]
        if value != default:
            table[field.name] = list(value) if isinstance(value, tuple) else value
    return table


def table_name(options: object) -> str:
    """The name of the table ``options`` come from: the backend whose class they are."""
    for plugin in installed.plugins.values():
        if plugin.options is type(options):
            return plugin.name
    return "options"


def _options_expected(spec: ProcessSpec, plugin: BackendPlugin) -> ConfigError:
    expected = plugin.options.__name__ if plugin.options is not None else "none"
    return ConfigError(
        f"options: got {abbreviated(spec.options)}, expected the options of backend "
        f"{spec.backend!r} ({expected})"
    )


def _having(capability: str) -> list[str]:
    return [
        plugin.name
        for plugin in installed.plugins.values()
        if getattr(plugin.capabilities, capability)
    ]


#: The fields that only the backends with a capability take.
_PLACED = (
    ("host", "hosts"),
    ("inputs", "staging"),
    ("outputs", "staging"),
    ("outputs_dir", "staging"),
)


def _check_placement(spec: ProcessSpec, plugin: BackendPlugin) -> None:
    """The fields that belong to some backends only: its plug-in's capabilities decide."""
    capabilities = plugin.capabilities
    if capabilities.hosts and spec.host is None:
        raise ConfigError(
            f"host: missing; backend {spec.backend!r} runs the program on a host: name one of "
            "the [hosts.NAME] tables"
        )
    placed = spec.host or spec.inputs or spec.outputs or spec.outputs_dir  # (mostly none)
    for field, capability in _PLACED if placed else ():
        value = getattr(spec, field)
        if value and not getattr(capabilities, capability):
            raise ConfigError(
                f"{field}: got {shown(field, value)}, expected nothing for backend "
                f"{spec.backend!r} (only backends {_having(capability)} have it)"
            )
    options = spec.options
    if options is not None and type(options) is not plugin.options:
        name = table_name(options)
        if plugin.options is not None or name == "options":  # (no backend's options)
            raise _options_expected(spec, plugin)
        raise ConfigError(
            f"{name}: got {shown(name, options_table(options))}, expected nothing for backend "
            f"{spec.backend!r} (only backend {name!r} has it)"
        )
    if capabilities.hosts and spec.cwd is not None and not spec.cwd.startswith("/"):
        raise ConfigError(
            f"cwd: got {shown('cwd', spec.cwd)}, expected an absolute path on the host for "
            f"backend {spec.backend!r} (or nothing: the program's own work dir there)"
        )
    if spec.outputs and not spec.outputs_dir:
        raise ConfigError(
            f"outputs_dir: missing; outputs {shown('outputs', list(spec.outputs))} need a "
            "local directory to be fetched into"
        )
    if capabilities.shell_env:
        problem = env_name_problem(spec)
        if problem is not None:
            raise ConfigError(problem)


def changed_fields(old: ProcessSpec, new: ProcessSpec) -> tuple[str, ...]:
    """The fields in which ``new`` differs from ``old``, in the class's order (the options
    by the name of their table, as a job file writes them); empty if they are the same."""
    changed = []
    for field in attrs.fields(ProcessSpec):
        name = field.name
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            if name == "options":
                name = table_name(after if after is not None else before)
            changed.append(name)
    return tuple(changed)


def absolute_paths(spec: ProcessSpec, capabilities: Capabilities) -> ProcessSpec:
    """A relative local path (a local program's ``cwd``, the local side of ``inputs``,
    ``outputs_dir``) means relative to where the process was submitted, not to where a later
    runtime happens to run. (A ``cwd`` on a host is a path there, absolute already.)"""
    changes: dict[str, Any] = {}
    if not capabilities.hosts and spec.cwd is not None and not os.path.isabs(spec.cwd):
        changes["cwd"] = os.path.abspath(spec.cwd)
    if spec.inputs and not all(os.path.isabs(local) for local in spec.inputs.values()):
        changes["inputs"] = {
            remote: os.path.abspath(local) for remote, local in spec.inputs.items()
        }
    if spec.outputs_dir is not None and not os.path.isabs(spec.outputs_dir):
        changes["outputs_dir"] = os.path.abspath(spec.outputs_dir)
    return attrs.evolve(spec, **changes) if changes else spec
