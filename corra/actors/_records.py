"""What a process is made of on disk and on the wire: its spec, its record, its history.

Input from outside (a job file, an HTTP body, the command line) becomes a `ProcessSpec` only
through `parse_process_spec`, which checks types strictly and names the field path, the value
and what was expected in every error (DESIGN invariant 6).
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from corra._errors import ConfigError
from corra.actors._lifecycle import Phase, ProcessState

RestartPolicy: TypeAlias = Literal["temporary", "transient", "permanent"]
RESTART_POLICIES = ("temporary", "transient", "permanent")
BACKENDS = ("local",)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


class _SpecError(ConfigError):
    """A value check that failed inside attrs validation (the message is the whole story)."""


def _check(predicate: Callable[[Any], bool], expected: str) -> Any:
    """An attrs validator: ``expected`` says what a valid value looks like."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not predicate(value):
            raise _SpecError(f"{attribute.name}: got {value!r}, expected {expected}")

    return validate


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
    return value is None or (_number(value) and math.isfinite(value) and value > 0)


def _seconds(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value >= 0


def _positive_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _cwd(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value != "" and "\0" not in value)


def _table(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
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
        env: variables added to the runtime's environment.
        timeout: seconds the program may run before it is killed (None: no limit).
        restart: ``temporary`` never reruns the program; ``transient`` reruns it after a
            failure; ``permanent`` reruns it after any exit (a service). Each rerun is a new
            attempt, up to ``max_attempts``.
        max_attempts: how many attempts a transient or permanent process gets.
        kill_grace: seconds between SIGTERM and SIGKILL when killing.
        memory_limit: bytes, where cgroups allow (None: no limit).
        pids_limit: processes and threads, where cgroups allow.
        labels: free-form tags for filtering.
        backend: where the program runs.
    """

    argv: tuple[str, ...] = attrs.field(
        validator=_check(_argv, "a non-empty list of strings without NUL bytes")
    )
    name: str | None = attrs.field(
        default=None,
        validator=_check(_name, f"a name matching {NAME_PATTERN.pattern}"),
    )
    cwd: str | None = attrs.field(
        default=None,
        validator=_check(_cwd, "a directory path without NUL bytes, or nothing"),
    )
    env: dict[str, str] = attrs.field(
        factory=dict,
        validator=_check(_env, "NAME = value pairs, names without '=' or NUL"),
    )
    timeout: float | None = attrs.field(
        default=None,
        validator=_check(_seconds_or_none, "seconds > 0, or nothing"),
    )
    restart: RestartPolicy = attrs.field(
        default="temporary",
        validator=_check(lambda v: v in RESTART_POLICIES, f"one of {list(RESTART_POLICIES)}"),
    )
    max_attempts: int = attrs.field(
        default=3,
        validator=_check(
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"
        ),
    )
    kill_grace: float = attrs.field(
        default=10.0,
        validator=_check(_seconds, "seconds >= 0"),
    )
    memory_limit: int | None = attrs.field(
        default=None,
        validator=_check(_positive_or_none, "bytes > 0, or nothing"),
    )
    pids_limit: int | None = attrs.field(
        default=None,
        validator=_check(_positive_or_none, "an integer > 0, or nothing"),
    )
    labels: dict[str, str] = attrs.field(
        factory=dict,
        validator=_check(_table, "a table of string values"),
    )
    backend: str = attrs.field(
        default="local",
        validator=_check(lambda v: v in BACKENDS, f"one of {list(BACKENDS)}"),
    )


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

    def structure_literal(value: Any, type_: Any) -> Any:
        choices = typing.get_args(type_)
        if value not in choices or type(value) is not type(choices[0]):
            raise TypeError(f"got {value!r}, expected one of {list(choices)}")
        return value

    converter.register_structure_hook_func(
        lambda t: typing.get_origin(t) is Literal, structure_literal
    )
    return converter


_wire = _make_wire_converter()


def parse_process_spec(data: Any, where: str = "process") -> ProcessSpec:
    """Structure untrusted input into a `ProcessSpec`.

    Raises:
        ConfigError: naming ``where``, the field, the value and what was expected.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of fields, got {data!r}")
    if "argv" not in data:
        raise ConfigError(f"{where}.argv: missing; expected a non-empty list of strings")
    try:
        return _wire.structure(dict(data), ProcessSpec)
    except _SpecError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        messages = cattrs.transform_error(exc, format_exception=_describe)
        raise ConfigError("; ".join(_field_message(where, m) for m in messages)) from None


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
    return data
