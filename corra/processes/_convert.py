"""The two converters of a spec: the wire's, for input, and the snapshot's, for the store.

WIRE (`parse_process_spec`): input from outside (a job file, an HTTP body, the command line)
becomes a `ProcessSpec` only here. Types are strict (no ``"1"`` for a number, no string for a
list), unknown keys are refused, and the ``<backend> = { ... }`` table is structured into the
options class the backend's plug-in declares. Every error names the field path, the value
(an env's values never) and what was expected (DESIGN invariant 6). The values themselves
are checked once, by the classes (`ProcessSpec`, the plug-in's options class).

SNAPSHOT (`configure_snapshot`, for the record codecs of `corra._runtime`): a stored spec is
written as the wire takes it (its options as the table named after its backend, every field
included) and read back with strict types but WITHOUT the classes' value checks: the spec
passed them when it came in, and a check that a newer corra adds must not make an old record
unreadable (set aside as corrupt). A stored handle is written as `handle_data` says and read
back as the handle class of its record's backend (the codec is told them), or as the JSON
value it is for a backend without one.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from corra._errors import ConfigError
from corra.processes._backend import handle_data
from corra.processes._lifecycle import ProcessState, Result
from corra.processes._record import ProcessRecord, Transition
from corra.processes._registry import installed
from corra.processes._spec import ProcessSpec, options_table, table_name
from corra.processes._spec_content import options_problem, shown, shown_tables

#: The fields of `ProcessSpec` that the wire carries under their own names (``options`` is
#: carried as the table named after the backend).
SPEC_FIELDS = tuple(field.name for field in attrs.fields(ProcessSpec) if field.name != "options")


def wire_fields() -> list[str]:
    """Every key a spec's table may have: `SPEC_FIELDS`, then the options tables of the
    installed backends that have options."""
    return [*SPEC_FIELDS, *(p.name for p in installed.plugins.values() if p.options)]


# The wire -----------------------------------------------------------------------------------


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _strict(kind: type) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"got {value!r}, expected {_KIND_NAMES[kind]}")
        return value

    return structure


def _structure_strings(value: Any, _type: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"got {value!r}, expected a list of strings")
    for index, part in enumerate(value):
        if not isinstance(part, str):
            raise TypeError(f"got {part!r} at [{index}], expected a string")
    return tuple(value)


def _structure_table(value: Any, _type: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"got {value!r}, expected a table of string values")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"got {key!r} = {item!r}, expected string keys and values")
    return dict(value)


def _structure_env(value: Any, _type: Any) -> dict[str, str]:
    # As _structure_table, but an env's values are never shown (they are secrets).
    if not isinstance(value, Mapping):
        raise TypeError(f"got {shown('env', value)}, expected a table of NAME = value strings")
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"got the name {key!r}, expected string names")
        if not isinstance(item, str):
            raise TypeError(f"got {key!r} = {shown('env', item)}, expected string values")
    return dict(value)


def _structure_literal(value: Any, type_: Any) -> Any:
    choices = typing.get_args(type_)
    if value not in choices or type(value) is not type(choices[0]):
        raise TypeError(f"got {value!r}, expected one of {list(choices)}")
    return value


def _make_wire() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_strings)
    converter.register_structure_hook_func(lambda t: t == dict[str, str], _structure_table)
    converter.register_structure_hook_func(
        lambda t: typing.get_origin(t) is Literal, _structure_literal
    )
    return converter


class _Wire:
    """The wire converter, with one structure function of `ProcessSpec` per options table
    name (made when first needed: the plug-ins are found lazily)."""

    def __init__(self) -> None:
        self.converter = _make_wire()
        self._specs: dict[str | None, Callable[[Any, Any], ProcessSpec]] = {}
        self._tables: frozenset[str] | None = None

    def tables(self) -> frozenset[str]:
        """The names of the options tables: the installed backends that have options."""
        if self._tables is None:
            self._tables = frozenset(p.name for p in installed.plugins.values() if p.options)
        return self._tables

    def spec_function(self, table: str | None) -> Callable[[Any, Any], ProcessSpec]:
        function = self._specs.get(table)
        if function is None:
            overrides = {"env": override(struct_hook=_structure_env)}
            if table is None:
                overrides["options"] = override(omit=True)
            else:
                options = installed.get(table).options
                overrides["options"] = override(
                    rename=table, struct_hook=self.options_hook(table, options)
                )
            function = make_dict_structure_fn(ProcessSpec, self.converter, **overrides)
            self._specs[table] = function
        return function

    def options_hook(self, table: str, options: type) -> Callable[[Any, Any], Any]:
        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, Mapping):
                raise TypeError(f"got {shown_tables(value)}, expected a table")
            problem = options_problem(table, value)  # (before the class's own checks)
            if problem is not None:
                raise ConfigError(problem)
            return self.converter.structure(dict(value), options)

        return structure


_wire = _Wire()


def parse_process_spec(data: Any, where: str = "process") -> ProcessSpec:
    """Structure untrusted input into a `ProcessSpec`.

    Raises:
        ConfigError: naming ``where``, the field, the value and what was expected.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of fields, got {shown_tables(data)}")
    if "argv" not in data:
        raise ConfigError(f"{where}.argv: missing; expected a non-empty list of strings")
    data = dict(data)
    table = None
    tables = _wire.tables()
    if not tables.isdisjoint(data):  # (most specs have no options table)
        own = data.get("backend", "local")
        for name in tables:
            if name != own and name in data and data[name] == {}:
                del data[name]  # (an empty table of another backend says nothing: see below)
        present = sorted(tables.intersection(data))
        table = own if own in present else next(iter(present), None)
    try:
        return _wire.spec_function(table)(data, ProcessSpec)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        messages = cattrs.transform_error(exc, format_exception=_describe)
        raise ConfigError("; ".join(_field_message(where, m, table) for m in messages)) from None


def parse_options(options: type, table: Any, where: str) -> Any:
    """A backend's ``options`` class from its table, as the wire structures it in a spec
    (for plug-in authors and tests; a spec's table is structured by `parse_process_spec`).

    Raises:
        ConfigError: naming ``where`` (``process.slurm``, say), the field, the value and
            what was expected.
    """
    parent, _, name = where.rpartition(".")
    try:
        return _wire.options_hook(name, options)(table, options)
    except (ClassValidationError, ForbiddenExtraKeysError, ConfigError, TypeError) as exc:
        lines = []
        for message in cattrs.transform_error(exc, format_exception=_describe):
            text, _, path = message.rpartition(" @ $")
            line = _field_message(parent, f"{text} @ $.{name}{path}", None)
            lines.append(line.removeprefix("."))
        raise ConfigError("; ".join(lines)) from None


def _describe(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, (ConfigError, TypeError)):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        if exc.cl is ProcessSpec:
            return f"unknown field(s) {extra}; expected some of: {', '.join(wire_fields())}"
        known = sorted(field.name for field in attrs.fields(exc.cl))
        return f"unknown field(s) {', '.join(extra)}; expected some of {', '.join(known)}"
    if isinstance(exc, KeyError):
        return "missing"
    return f"{type(exc).__name__}: {exc}"


def _field_message(where: str, message: str, table: str | None) -> str:
    # cattrs reports "<message> @ $.timeout"; we say "process.timeout: <message>". A check
    # of a class itself (path "$", or the options table's) starts with its field path.
    text, _, path = message.rpartition(" @ $")
    if table is not None and (path == ".options" or path.startswith((".options.", ".options["))):
        path = f".{table}{path.removeprefix('.options')}"
    parent, _, last = path.rpartition(".")
    if not path:
        return f"{where}: {text}" if text.startswith("unknown field") else f"{where}.{text}"
    if text.startswith((f"{last}.", f"{last}:", f"{last}[")):
        return f"{where}{parent}.{text}"
    return f"{where}{path}: {text}"


def unstructure_spec(spec: ProcessSpec) -> dict[str, Any]:
    """The spec as plain data (JSON, TOML) as the wire takes it: every field, and the
    options table of every installed backend that has options, empty but for the spec's
    own backend's, which holds the options that differ from their defaults. (corra has
    always shown ``slurm = {}`` for every spec; the wire takes an empty table of another
    backend, and ignores it.)"""
    data: dict[str, Any] = {name: getattr(spec, name) for name in SPEC_FIELDS}
    data["argv"] = list(spec.argv)
    data["outputs"] = list(spec.outputs)
    data["env"] = dict(spec.env)
    data["labels"] = dict(spec.labels)
    data["inputs"] = dict(spec.inputs)
    for plugin in installed.plugins.values():
        if plugin.options is not None:
            data[plugin.name] = {}
    if spec.options is not None:
        data[table_name(spec.options)] = options_table(spec.options)
    return data


# The snapshot --------------------------------------------------------------------------------


def configure_snapshot(
    converter: cattrs.Converter, handles: Mapping[str, type] | None = None
) -> None:
    """Make ``converter`` (a record codec's, with strict primitives) write a `ProcessSpec` as
    the wire takes it, every field included, and read it back without its value checks; and
    read a `ProcessRecord`'s handle as the class ``handles`` names for its spec's backend
    (the handles of other backends: JSON values, as they are stored)."""
    configure_result(converter)  # (first: the hooks made below look it up as they are made)
    _configure_spec(converter)
    _configure_handles(converter, dict(handles or {}))


def configure_history(converter: cattrs.Converter) -> None:
    """Make ``converter`` (the history codec's) write a `Transition`'s ``result`` only when
    it has one (a rerun's), so that every other entry is as it always was."""
    configure_result(converter)
    converter.register_unstructure_hook(
        Transition,
        make_dict_unstructure_fn(Transition, converter, result=override(omit_if_default=True)),
    )


#: The fields of a `Result` written only when set (its program's value: issue 16), so that a
#: result without a value is stored as one was before they existed.
_VALUE_FIELDS = ("value", "has_value", "value_file", "value_error")


def configure_result(converter: cattrs.Converter) -> None:
    """Make ``converter`` write a `Result`'s value fields only when they are set."""
    omitted = {name: override(omit_if_default=True) for name in _VALUE_FIELDS}
    converter.register_unstructure_hook(
        Result, make_dict_unstructure_fn(Result, converter, **omitted)
    )


def _configure_spec(converter: cattrs.Converter) -> None:
    fields = _Fields(converter)
    # Each field's own hook, looked up once: a spec is written at every submission, and
    # dispatching each field by its value's type again costs half of writing it.
    types = attrs.fields_dict(attrs.resolve_types(ProcessSpec))
    hooks = tuple((name, converter.get_unstructure_hook(types[name].type)) for name in SPEC_FIELDS)

    def unstructure(spec: ProcessSpec) -> dict[str, Any]:
        data = {name: hook(getattr(spec, name)) for name, hook in hooks}
        if spec.options is not None:
            data[table_name(spec.options)] = converter.unstructure(spec.options)
        return data

    def structure(value: Any, _type: Any) -> ProcessSpec:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        backend = value.get("backend", "local")
        options = installed.get(backend).options if isinstance(backend, str) else None
        if options is None:
            return _unchecked(ProcessSpec, fields.structure(ProcessSpec, value))

        def structure_options(table: Any) -> Any:
            return _unchecked(options, fields.structure(options, table))

        values = fields.structure(ProcessSpec, value, {backend: structure_options})
        values["options"] = values.pop(backend)
        return _unchecked(ProcessSpec, values)

    converter.register_unstructure_hook(ProcessSpec, unstructure)
    converter.register_structure_hook(ProcessSpec, structure)


def _configure_handles(converter: cattrs.Converter, handles: dict[str, type]) -> None:
    # The record is structured by one function per handle class (made when first needed, and
    # kept by this converter), chosen by the backend its stored spec names. A handle is read
    # as a stored spec is, without its class's checks.
    converter.register_unstructure_hook(
        ProcessState,
        make_dict_unstructure_fn(
            ProcessState, converter, handle=override(unstruct_hook=handle_data)
        ),
    )
    if not handles:
        return
    fields = _Fields(converter)
    untyped = make_dict_structure_fn(ProcessRecord, converter)
    typed: dict[type, Callable[[Any, Any], ProcessRecord]] = {}

    def record_function(handle_type: type) -> Callable[[Any, Any], ProcessRecord]:
        function = typed.get(handle_type)
        if function is None:

            def structure_handle(value: Any, _type: Any) -> Any:
                if value is None:
                    return None
                return _unchecked(handle_type, fields.structure(handle_type, value))

            state = make_dict_structure_fn(
                ProcessState, converter, handle=override(struct_hook=structure_handle)
            )
            function = make_dict_structure_fn(
                ProcessRecord, converter, state=override(struct_hook=state)
            )
            typed[handle_type] = function
        return function

    def structure(value: Any, _type: Any) -> ProcessRecord:
        spec = value.get("spec") if isinstance(value, dict) else None
        backend = spec.get("backend", "local") if isinstance(spec, dict) else None
        handle_type = handles.get(backend) if isinstance(backend, str) else None
        function = untyped if handle_type is None else record_function(handle_type)
        return function(value, ProcessRecord)

    converter.register_structure_hook(ProcessRecord, structure)


class _Fields:
    """The fields of attrs classes structured one by one with a converter's hooks (the
    class is not called: its checks are the edge's)."""

    def __init__(self, converter: cattrs.Converter) -> None:
        self._converter = converter
        self._hooks: dict[type, list[tuple[str, Any, Callable[[Any, Any], Any], bool]]] = {}

    def _fields(self, cls: type) -> list[tuple[str, Any, Callable[[Any, Any], Any], bool]]:
        hooks = self._hooks.get(cls)
        if hooks is None:
            hooks = [
                (
                    field.name,
                    field.type,
                    self._converter.get_structure_hook(field.type),
                    field.default is attrs.NOTHING,
                )
                for field in attrs.fields(attrs.resolve_types(cls))
                if field.name != "options" or cls is not ProcessSpec
            ]
            self._hooks[cls] = hooks
        return hooks

    def structure(
        self, cls: type, data: Any, tables: Mapping[str, Callable[[Any], Any]] | None = None
    ) -> dict[str, Any]:
        """The structured values of the fields of ``cls`` in ``data`` (a dict), and of the
        keys of ``tables`` (their tables, ``{}`` if absent) by their functions.

        Raises:
            ClassValidationError: every field that failed, with its path.
        """
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        errors: list[Exception] = []
        for name, type_, hook, required in self._fields(cls):
            if name not in data:
                if required:
                    errors.append(_at(KeyError(name), name, type_, cls))
                continue
            try:
                values[name] = hook(data[name], type_)
            except Exception as exc:
                errors.append(_at(exc, name, type_, cls))
        for name, structure in (tables or {}).items():
            try:
                values[name] = structure(data.get(name, {}))
            except Exception as exc:
                errors.append(_at(exc, name, dict, cls))
        extra = set(data) - {name for name, *_ in self._fields(cls)} - set(tables or ())
        if extra:
            errors.append(ForbiddenExtraKeysError("", cls, extra))
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        return values


def _at(exc: Exception, name: str, type_: Any, cls: type) -> Exception:
    exc.__notes__ = [
        *getattr(exc, "__notes__", []),
        AttributeValidationNote(
            f"Structuring class {cls.__name__} @ attribute {name}", name, type_
        ),
    ]
    return exc


def _unchecked(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the frozen attrs class ``cls`` with ``values``, defaults for the rest,
    built without its validators and checks (a stored value: see the module doc)."""
    instance = object.__new__(cls)
    for field in attrs.fields(cls):
        if field.name in values:
            value = values[field.name]
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            value = field.default.factory()  # type: ignore[attr-defined]
        else:
            value = field.default
        object.__setattr__(instance, field.name, value)
    return instance


def spec_options_as_tables(data: dict[str, Any]) -> dict[str, Any]:
    """Record migration, schema 2 to 3: a spec's options live in a table named after its
    backend, and only there. Until schema 2 every spec had a ``slurm`` table (empty but for
    Slurm jobs), whatever its backend; a Slurm job's table stays (its missing fields take
    their defaults when read), the others go. A record it does not recognise is left for the
    converter to refuse, with the converter's error."""
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return data
    table = spec.pop("slurm", {})
    if spec.get("backend") == "slurm":
        spec["slurm"] = table
    elif table:
        raise ValueError(f"a spec of backend {spec.get('backend')!r} with slurm options")
    return data
