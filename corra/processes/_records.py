"""What a process is made of on disk and on the wire: its spec, its record, its history.

Input from outside (a job file, an HTTP body, the command line) becomes a `ProcessSpec` only
through `parse_process_spec`, which checks types strictly and names the field path, the value
and what was expected in every error (DESIGN invariant 6).
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

from corra._errors import ConfigError
from corra.processes._lifecycle import PHASES, Event, Phase, ProcessState, Result
from corra.processes._spec_content import (
    content_fits,
    content_problem,
    env_name_problem,
    shown,
    shown_tables,
)

RestartPolicy: TypeAlias = Literal["temporary", "transient", "permanent"]
RESTART_POLICIES = ("temporary", "transient", "permanent")
BACKENDS = ("local", "ssh", "slurm")
#: The backends whose programs run on a named host (``host``), with files sent and fetched.
REMOTE_BACKENDS = ("ssh", "slurm")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
#: The longest duration, in seconds, that any spec field or setting may give: 10 years. No
#: one waits longer, and every wait must fit the clocks it is handed to (epoll takes
#: milliseconds as a C int: 24.8 days), which the chaperone clamps its waits to.
MAX_SECONDS = 315_360_000


class _SpecError(ConfigError):
    """A value check that failed inside attrs validation (the message is the whole story)."""


def _name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(NAME_PATTERN.match(value)))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _argv(value: Any) -> bool:
    if not isinstance(value, tuple) or not all(isinstance(part, str) for part in value):
        return False
    return (
        len(value) > 0
        and all(part and "\0" not in part for part in value[:1])
        and all("\0" not in part for part in value)
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


#: The most an ``output_limit`` may be (1 TiB), and what None gives when the runtime says nothing.
MAX_OUTPUT_LIMIT = 1 << 40
DEFAULT_OUTPUT_LIMIT = 1 << 30


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


def _option(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(part, str) for part in value)
    return isinstance(value, (str, int, float, bool)) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def _options(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and _option(item) for key, item in value.items()
    )


def _env(value: Any) -> bool:
    return _table(value) and all(
        key and "=" not in key and "\0" not in key + val for key, val in value.items()
    )


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
        backend: where the program runs: ``local``, ``ssh`` (a remote program under the
            chaperone) or ``slurm`` (a Slurm job).
        host: for ``ssh`` and ``slurm``, the name of the host (a ``[hosts.NAME]`` table).
        inputs: for ``ssh`` and ``slurm``, files to send before the launch: remote path
            (relative to the work dir) = local file or directory.
        outputs: for ``ssh`` and ``slurm``, globs (relative to the work dir) of the files to
            fetch into ``outputs_dir`` after the exit.
        outputs_dir: the local directory the outputs are fetched into.
        slurm: for ``slurm``, the job's ``#SBATCH`` options (`corra.backends.slurm`).
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
    slurm: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        # Every field checked when the value is built (and so by evolve too): one check of
        # the whole rather than a validator per field (a spec is built for every
        # submission); the first field that fails, in order, is named.
        if _spec_is_valid(self):
            return
        for name, (check, expected) in _CHECKS.items():
            value = getattr(self, name)
            if not check(value):
                raise _SpecError(f"{name}: got {shown(name, value)}, expected {expected}")
        problem = content_problem(self)
        if problem is not None:
            raise _SpecError(problem)
        _check_placement(self)


def _check_placement(spec: ProcessSpec) -> None:
    """The fields that belong to some backends only: where the program runs decides."""
    remote = spec.backend in REMOTE_BACKENDS
    if remote and spec.host is None:
        raise _SpecError(
            f"host: missing; backend {spec.backend!r} runs the program on a host: name one of "
            "the [hosts.NAME] tables"
        )
    if not remote:
        for field in ("host", "inputs", "outputs", "outputs_dir"):
            value = getattr(spec, field)
            if value:
                raise _SpecError(
                    f"{field}: got {shown(field, value)}, expected nothing for backend "
                    f"{spec.backend!r} (only backends {list(REMOTE_BACKENDS)} have it)"
                )
    if spec.slurm and spec.backend != "slurm":
        raise _SpecError(
            f"slurm: got {shown('slurm', spec.slurm)}, expected nothing for backend "
            f"{spec.backend!r} (only backend 'slurm' has it)"
        )
    if remote and spec.cwd is not None and not spec.cwd.startswith("/"):
        raise _SpecError(
            f"cwd: got {shown('cwd', spec.cwd)}, expected an absolute path on the host for "
            f"backend {spec.backend!r} (or nothing: the program's own work dir there)"
        )
    if spec.outputs and not spec.outputs_dir:
        raise _SpecError(
            f"outputs_dir: missing; outputs {shown('outputs', list(spec.outputs))} need a "
            "local directory to be fetched into"
        )
    problem = env_name_problem(spec)
    if problem is not None:
        raise _SpecError(problem)


#: Per field of `ProcessSpec`, in order: what a valid value passes, and its description.
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
    "backend": (lambda v: v in BACKENDS, f"one of {list(BACKENDS)}"),
    "host": (_name, f"a host name matching {NAME_PATTERN.pattern}, or nothing"),
    "inputs": (
        _files,
        "a table of remote path = local path (remote paths relative, without '..')",
    ),
    "outputs": (_globs, "a list of globs relative to the work dir, without '..'"),
    "outputs_dir": (_cwd, "a local directory path without NUL bytes, or nothing"),
    "slurm": (_options, "a table of Slurm options (strings, numbers, booleans, lists)"),
}


def _spec_is_valid(spec: ProcessSpec) -> bool:
    """True only if every check of `_CHECKS` passes (defaults recognised without a call)."""
    name, cwd, env, timeout = spec.name, spec.cwd, spec.env, spec.timeout
    memory, pids, labels, attempts = (
        spec.memory_limit,
        spec.pids_limit,
        spec.labels,
        spec.max_attempts,
    )
    return bool(
        _argv(spec.argv)
        and (name is None or _name(name))
        and (cwd is None or _cwd(cwd))
        and ((type(env) is dict and not env) or _env(env))
        and (timeout is None or _seconds_or_none(timeout))
        and spec.restart in RESTART_POLICIES
        and type(attempts) is int
        and attempts >= 1
        and _seconds(spec.kill_grace)
        and (memory is None or _positive_or_none(memory))
        and (pids is None or _positive_or_none(pids))
        and (spec.output_limit is None or _output_limit(spec.output_limit))
        and ((type(labels) is dict and not labels) or _table(labels))
        and spec.backend in BACKENDS
        and (
            (
                spec.backend == "local"
                and spec.host is None
                and type(spec.inputs) is dict
                and not spec.inputs
                and spec.outputs == ()
                and spec.outputs_dir is None
                and type(spec.slurm) is dict
                and not spec.slurm
            )
            or _remote_spec_is_valid(spec)
        )
        and content_fits(spec)
    )


def _remote_spec_is_valid(spec: ProcessSpec) -> bool:
    """The remote fields' checks, and where they belong (the slow way; `_check_placement`)."""
    if not (
        _name(spec.host)
        and _files(spec.inputs)
        and _globs(spec.outputs)
        and _cwd(spec.outputs_dir)
        and _options(spec.slurm)
    ):
        return False
    try:
        _check_placement(spec)
    except _SpecError:
        return False
    return True


@attrs.frozen
class ProcessRecord:
    """A process as snapshotted: its id, spec and state (DESIGN: ``{schema, state}``)."""

    id: str
    spec: ProcessSpec
    state: ProcessState
    created_at: float

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def key(self) -> str:
        """The idempotency key of the current attempt's effects."""
        return f"{self.id}.{self.state.attempt}"


@attrs.frozen
class Transition:
    """One entry of a process's append-only history."""

    at: float
    event: str
    source: Phase
    target: Phase
    attempt: int
    reason: str | None = None


def _strict(kind: type) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"got {value!r}, expected {_KIND_NAMES[kind]}")
        return value

    return structure


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _make_wire_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def structure_argv(value: Any, _type: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"got {value!r}, expected a list of strings")
        for index, part in enumerate(value):
            if not isinstance(part, str):
                raise TypeError(f"got {part!r} at [{index}], expected a string")
        return tuple(value)

    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], structure_argv)

    def structure_table(value: Any, _type: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise TypeError(f"got {value!r}, expected a table of string values")
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                raise TypeError(f"got {key!r} = {item!r}, expected string keys and values")
        return dict(value)

    converter.register_structure_hook_func(lambda t: t == dict[str, str], structure_table)

    def structure_env(value: Any, _type: Any) -> dict[str, str]:
        # As structure_table, but an env's values are never shown (they are secrets).
        if not isinstance(value, Mapping):
            raise TypeError(f"got {shown('env', value)}, expected a table of NAME = value strings")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"got the name {key!r}, expected string names")
            if not isinstance(item, str):
                raise TypeError(f"got {key!r} = {shown('env', item)}, expected string values")
        return dict(value)

    def structure_options(value: Any, _type: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise TypeError(f"got {value!r}, expected a table of options")
        for key, item in value.items():
            if not isinstance(key, str) or not (
                isinstance(item, (str, int, float, bool))
                or (isinstance(item, (list, tuple)) and all(isinstance(p, str) for p in item))
            ):
                raise TypeError(
                    f"got {key!r} = {item!r}, expected a string, number, boolean or list of strings"
                )
        return {key: list(item) if isinstance(item, tuple) else item for key, item in value.items()}

    converter.register_structure_hook_func(lambda t: t == dict[str, Any], structure_options)

    def structure_literal(value: Any, type_: Any) -> Any:
        choices = typing.get_args(type_)
        if value not in choices or type(value) is not type(choices[0]):
            raise TypeError(f"got {value!r}, expected one of {list(choices)}")
        return value

    converter.register_structure_hook_func(
        lambda t: typing.get_origin(t) is Literal, structure_literal
    )
    converter.register_structure_hook(
        ProcessSpec,
        make_dict_structure_fn(ProcessSpec, converter, env=override(struct_hook=structure_env)),
    )
    return converter


_wire = _make_wire_converter()


def parse_process_spec(data: Any, where: str = "process") -> ProcessSpec:
    """Structure untrusted input into a `ProcessSpec`.

    Raises:
        ConfigError: naming ``where``, the field, the value and what was expected.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of fields, got {shown_tables(data)}")
    if "argv" not in data:
        raise ConfigError(f"{where}.argv: missing; expected a non-empty list of strings")
    try:
        fields = _plain_fields(data)
        if fields is not None:  # the types are right: the class's own checks are the rest
            return ProcessSpec(**fields)
        return _wire.structure(dict(data), ProcessSpec)
    except _SpecError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        messages = cattrs.transform_error(exc, format_exception=_describe)
        raise ConfigError("; ".join(_field_message(where, m) for m in messages)) from None


def _plain_str(value: Any) -> Any:
    if type(value) is not str:
        raise _Unusual
    return value


def _plain_optional_str(value: Any) -> Any:
    if value is not None and type(value) is not str:
        raise _Unusual
    return value


def _plain_int(value: Any) -> Any:
    if type(value) is not int:
        raise _Unusual
    return value


def _plain_optional_int(value: Any) -> Any:
    if value is not None and type(value) is not int:
        raise _Unusual
    return value


def _plain_float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)  # as the converter's strict hook does
    raise _Unusual


def _plain_optional_float(value: Any) -> Any:
    return None if value is None else _plain_float(value)


def _plain_restart(value: Any) -> Any:
    # A Literal: the converter refuses what is not one of its values before the class's
    # checks run, and so reports it first.
    if type(value) is not str or value not in RESTART_POLICIES:
        raise _Unusual
    return value


def _plain_argv(value: Any) -> Any:
    if type(value) is not list and type(value) is not tuple:
        raise _Unusual
    for part in value:
        if type(part) is not str:
            raise _Unusual
    return tuple(value)


def _plain_table(value: Any) -> Any:
    if type(value) is not dict:
        raise _Unusual
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            raise _Unusual
    return dict(value)


def _plain_options(value: Any) -> Any:
    if type(value) is not dict:
        raise _Unusual
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            raise _Unusual
        if kind is list:
            for part in item:
                if type(part) is not str:
                    raise _Unusual
        elif kind is not str and kind is not int and kind is not bool and kind is not float:
            raise _Unusual
    return {key: list(item) if type(item) is list else item for key, item in value.items()}


_PLAIN_FIELDS: dict[str, Callable[[Any], Any]] = {
    "argv": _plain_argv,
    "name": _plain_optional_str,
    "cwd": _plain_optional_str,
    "env": _plain_table,
    "timeout": _plain_optional_float,
    "restart": _plain_restart,
    "max_attempts": _plain_int,
    "kill_grace": _plain_float,
    "memory_limit": _plain_optional_int,
    "pids_limit": _plain_optional_int,
    "output_limit": _plain_optional_int,
    "labels": _plain_table,
    "backend": _plain_str,
    "host": _plain_optional_str,
    "inputs": _plain_table,
    "outputs": _plain_argv,
    "outputs_dir": _plain_optional_str,
    "slurm": _plain_options,
}


def _plain_fields(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The arguments of `ProcessSpec` for input whose every value has exactly the type the
    converter would make of it (what nearly all input is), converted as it would; None
    for anything else, which then takes the converter's way (and its error messages)."""
    if type(data) is not dict:
        return None
    try:
        return {key: _PLAIN_FIELDS[key](value) for key, value in data.items()}
    except (_Unusual, KeyError):
        return None


def _describe(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, (_SpecError, TypeError)):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        fields = ", ".join(f.name for f in attrs.fields(ProcessSpec))
        return f"unknown field(s) {sorted(exc.extra_fields)}; expected some of: {fields}"
    if isinstance(exc, KeyError):
        return "missing"
    return f"{type(exc).__name__}: {exc}"


def _field_message(where: str, message: str) -> str:
    # cattrs reports "<message> @ $.timeout"; we say "process.timeout: <message>". A value
    # check that failed in the class itself (path "$") already starts with the field name.
    text, _, path = message.rpartition(" @ $")
    if not path:
        return f"{where}.{text}" if text.split(":")[0].isidentifier() else f"{where}: {text}"
    return f"{where}{path}: {text}"


def unstructure_spec(spec: ProcessSpec) -> dict[str, Any]:
    """The spec as plain data (JSON, TOML), omitting nothing."""
    data: dict[str, Any] = _wire.unstructure(spec)
    data["argv"] = list(spec.argv)
    data["outputs"] = list(spec.outputs)
    return data


# Hand-written encoders of the hot records --------------------------------------------------
#
# A process writes a snapshot and a history entry at every transition; the converter's way
# (unstructure, then json.dumps) is most of the loop's cost of a short process. These write the
# same text directly: field by field, in the classes' order, with json's own string and number
# formatting. They handle the types the classes declare; anything else (a subclass, a value of
# another type, a float json refuses) makes them return None, and the codec takes the
# converter's way. tests/test_codec.py checks that both ways agree.


class _Unusual(Exception):
    """A value these encoders do not handle; the converter's way takes over."""


def _refuse(value: object) -> Any:
    raise _Unusual


_json_string = json.encoder.encode_basestring_ascii  # the C function json.dumps uses
_json_value = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_refuse).encode


def _json_text(value: object) -> str:
    if type(value) is not str:
        raise _Unusual
    return _json_string(value)


def _json_optional_text(value: object) -> str:
    return "null" if value is None else _json_text(value)


def _json_number(value: object) -> str:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Unusual  # the converter's way raises json's error for it
        return float.__repr__(value)  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    raise _Unusual


def _json_optional_number(value: object) -> str:
    return "null" if value is None else _json_number(value)


def _json_boolean(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise _Unusual


def _table_json(value: object) -> str:
    if type(value) is not dict:
        raise _Unusual
    if not value:
        return "{}"
    parts = []
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            raise _Unusual
        parts.append(f"{_json_string(key)}:{_json_string(item)}")
    return f"{{{','.join(parts)}}}"


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _json_string,
    int: int.__repr__,
    float: _json_number,
    bool: _json_boolean,
    type(None): lambda _: "null",
}


def _plain_json(value: object) -> str:
    """A ``dict[str, Any]`` of JSON values (a handle), as the converter would pass it on."""
    if value is None:
        return "null"
    if type(value) is not dict:
        raise _Unusual
    parts = []
    for key, item in value.items():
        scalar = _SCALARS.get(type(item))
        if type(key) is not str or scalar is None:
            break
        parts.append(f"{_json_string(key)}:{scalar(item)}")
    else:
        return f"{{{','.join(parts)}}}"
    try:  # nested values: json's encoder, refusing what json.dumps would not take either
        return _json_value(value)
    except ValueError:
        raise _Unusual from None


def _spec_json(spec: ProcessSpec) -> str:
    if type(spec) is not ProcessSpec:
        raise _Unusual
    argv = spec.argv
    if type(argv) is not tuple:
        raise _Unusual
    return (
        f'{{"argv":[{",".join([_json_text(part) for part in argv])}],'
        f'"name":{_json_optional_text(spec.name)},'
        f'"cwd":{_json_optional_text(spec.cwd)},'
        f'"env":{_table_json(spec.env)},'
        f'"timeout":{_json_optional_number(spec.timeout)},'
        f'"restart":{_json_text(spec.restart)},'
        f'"max_attempts":{_json_number(spec.max_attempts)},'
        f'"kill_grace":{_json_number(spec.kill_grace)},'
        f'"memory_limit":{_json_optional_number(spec.memory_limit)},'
        f'"pids_limit":{_json_optional_number(spec.pids_limit)},'
        f'"output_limit":{_json_optional_number(spec.output_limit)},'
        f'"labels":{_table_json(spec.labels)},'
        f'"backend":{_json_text(spec.backend)},'
        f'"host":{_json_optional_text(spec.host)},'
        f'"inputs":{_table_json(spec.inputs)},'
        f'"outputs":{_strings_json(spec.outputs)},'
        f'"outputs_dir":{_json_optional_text(spec.outputs_dir)},'
        f'"slurm":{_options_json(spec.slurm)}}}'
    )


def _strings_json(value: object) -> str:
    if type(value) is not tuple:
        raise _Unusual
    return f"[{','.join([_json_text(part) for part in value])}]"


def _options_json(value: object) -> str:
    if type(value) is not dict:
        raise _Unusual
    if not value:
        return "{}"
    return _plain_json(value)


class _RecordTexts:
    """Per live spec, the JSON around the state of its process's record (``{"id":...,
    "spec":{...},"state":`` and ``,"created_at":...}``), written once: a process's id, spec
    and creation time never change, and its record is written at every transition. Keyed
    by the spec's identity (specs hold dicts: they are not hashable), each entry dropped when
    its spec is collected; a spec shared by two processes is simply written again."""

    def __init__(self) -> None:
        self._texts: dict[int, tuple[weakref.ref[ProcessSpec], str, float, str, str]] = {}

    def __call__(self, record: ProcessRecord) -> tuple[str, str]:
        spec = record.spec
        key = id(spec)
        entry = self._texts.get(key)
        if (
            entry is not None
            and entry[1] is record.id
            and entry[2] is record.created_at
            and entry[0]() is spec
        ):
            return entry[3], entry[4]
        created_at = record.created_at
        if not _is_number(created_at):
            raise _Unusual
        # (the spec is frozen, its dicts are not: see `record_texts`)
        head = f'{{"id":{_json_text(record.id)},"spec":{_spec_json(spec)},"state":'
        tail = f',"created_at":{created_at!r}}}'
        texts = self._texts
        reference = weakref.ref(spec, lambda _, key=key: texts.pop(key, None))
        texts[key] = (reference, record.id, created_at, head, tail)
        return head, tail

    def __len__(self) -> int:
        return len(self._texts)


#: The record texts of the encoder. A spec is frozen, but its ``env`` and ``labels`` are
#: dicts: code that changed one in place after submission would not see the change on disk
#: (nothing in corra does; specs are built from input and never changed).
record_texts = _RecordTexts()


def _is_number(value: object) -> bool:
    """An int or a finite float (what json writes as ``repr``; not a bool)."""
    kind = type(value)
    return kind is int or (kind is float and value - value == 0.0)  # type: ignore[operator]


def _result_json(result: Result | None) -> str:
    if result is None:
        return "null"
    if type(result) is not Result:
        raise _Unusual
    returncode, signal, started, ended = (
        result.returncode,
        result.signal,
        result.started_at,
        result.ended_at,
    )
    utime, stime, maxrss, out, err = (
        result.utime,
        result.stime,
        result.maxrss_kb,
        result.stdout_bytes,
        result.stderr_bytes,
    )
    out_dropped, err_dropped = result.stdout_dropped, result.stderr_dropped
    if not (
        (returncode is None or _is_number(returncode))
        and (signal is None or _is_number(signal))
        and (started is None or _is_number(started))
        and (ended is None or _is_number(ended))
        and _is_number(utime)
        and _is_number(stime)
        and (maxrss is None or _is_number(maxrss))
        and _is_number(out)
        and _is_number(err)
        and _is_number(out_dropped)
        and _is_number(err_dropped)
    ):
        raise _Unusual
    return (
        f'{{"returncode":{"null" if returncode is None else repr(returncode)},'
        f'"signal":{"null" if signal is None else repr(signal)},'
        f'"started_at":{"null" if started is None else repr(started)},'
        f'"ended_at":{"null" if ended is None else repr(ended)},'
        f'"utime":{utime!r},"stime":{stime!r},'
        f'"maxrss_kb":{"null" if maxrss is None else repr(maxrss)},'
        f'"stdout_bytes":{out!r},"stderr_bytes":{err!r},'
        f'"timed_out":{_json_boolean(result.timed_out)},'
        f'"killed":{_json_boolean(result.killed)},'
        f'"error":{_json_optional_text(result.error)},'
        f'"stdout_dropped":{out_dropped!r},"stderr_dropped":{err_dropped!r}}}'
    )


#: The JSON of each phase (``"created"`` ...), and of no phase.
_PHASE_JSON: dict[object, str] = {phase: f'"{phase}"' for phase in PHASES}
_OPTIONAL_PHASE_JSON: dict[object, str] = {**_PHASE_JSON, None: "null"}
_PAUSED_BY_JSON: dict[object, str] = {"user": '"user"', "host": '"host"', None: "null"}


def _state_json(state: ProcessState) -> str:
    if type(state) is not ProcessState:
        raise _Unusual
    attempt, updated_at, started_at = state.attempt, state.updated_at, state.started_at
    if (
        type(attempt) is not int
        or not _is_number(updated_at)
        or not (started_at is None or _is_number(started_at))
    ):
        raise _Unusual
    return (
        f'{{"phase":{_PHASE_JSON[state.phase]},'
        f'"attempt":{attempt!r},'
        f'"paused_from":{_OPTIONAL_PHASE_JSON[state.paused_from]},'
        f'"paused_by":{_PAUSED_BY_JSON[state.paused_by]},'
        f'"handle":{_plain_json(state.handle)},'
        f'"reason":{_json_optional_text(state.reason)},'
        f'"result":{_result_json(state.result)},'
        f'"updated_at":{updated_at!r},'
        f'"started_at":{"null" if started_at is None else repr(started_at)}}}'
    )


def encode_record_data(record: ProcessRecord) -> str | None:
    """The ``data`` of a `ProcessRecord` as the converter would write it, or None."""
    try:
        if type(record) is not ProcessRecord:
            raise _Unusual
        head, tail = record_texts(record)
        return f"{head}{_state_json(record.state)}{tail}"
    except (_Unusual, KeyError, TypeError):  # (KeyError: not a phase; TypeError: unhashable)
        return None


#: The JSON of each event name.
_EVENT_JSON: dict[object, str] = {event: f'"{event}"' for event in typing.get_args(Event)}


def encode_transition_data(transition: Transition) -> str | None:
    """The ``data`` of a `Transition` as the converter would write it, or None."""
    try:
        if type(transition) is not Transition:
            raise _Unusual
        at, attempt, event, reason = (
            transition.at,
            transition.attempt,
            transition.event,
            transition.reason,
        )
        if not _is_number(at) or type(attempt) is not int:
            raise _Unusual
        return (
            f'{{"at":{at!r},'
            f'"event":{_EVENT_JSON.get(event) or _json_text(event)},'
            f'"source":{_PHASE_JSON[transition.source]},'
            f'"target":{_PHASE_JSON[transition.target]},'
            f'"attempt":{attempt!r},'
            f'"reason":{"null" if reason is None else _json_text(reason)}}}'
        )
    except (_Unusual, KeyError, TypeError):
        return None
