"""Hand-written JSON of the hottest records: a process's record and its history entries.

A process writes a snapshot of its record and a history entry at every transition (three
and four over a lifecycle). Written the converter's way (unstructure, then ``json.dumps``),
they cost about 20 and 4 µs each, against 3 and 1 here (6 for a spec's first record, 12
through the converter): about 45 µs more per process, a fifth of a whole lifecycle over a
backend whose programs end at once (issue 12: interleaved measurements;
``benchmarks.process.corra_lifecycles``). These write the same text directly:

- a record's spec, id and creation time never change: their text is written once per spec
  and kept by the encoder (`RecordEncoder`, one per codec); the spec's by a function
  generated from the class's fields and the converter's hooks (`spec_writer`);
- a state, its result and a transition are written field by field, in the classes' order,
  with json's own string and number formatting; a typed handle as `handle_data` gives it,
  which is what the converter writes for it too.

They handle the types the classes declare; anything else (a subclass, a value of another
type, a float json refuses) makes them return None, and the codec takes the converter's way.
tests/test_codec.py checks that both ways agree.
"""

from __future__ import annotations

import json
import json.encoder
import math
import typing
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import cattrs

from corra.processes._backend import handle_data
from corra.processes._convert import SPEC_FIELDS
from corra.processes._lifecycle import PHASES, Event, ProcessState, Result
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec import ProcessSpec


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


def _json_boolean(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise _Unusual


def _is_number(value: object) -> bool:
    """An int or a finite float (what json writes as ``repr``; not a bool)."""
    kind = type(value)
    return kind is int or (kind is float and value - value == 0.0)  # type: ignore[operator]


def _json_number(value: object) -> str:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Unusual  # the converter's way raises json's error for it
        return float.__repr__(value)  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    raise _Unusual


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _json_string,
    int: int.__repr__,
    float: _json_number,
    bool: _json_boolean,
    type(None): lambda _: "null",
}


def _handle_json(handle: object) -> str:
    """A handle as the converter writes it (`handle_data`: a typed handle's stored fields,
    or JSON values as they are)."""
    if handle is None or type(handle) is dict:
        return _plain_json(handle)  # (JSON values: as they are)
    return _plain_json(handle_data(handle))


def _plain_json(value: object) -> str:
    """A ``dict[str, Any]`` of JSON values, as the converter would pass it on."""
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
        f'"stdout_dropped":{out_dropped!r},"stderr_dropped":{err_dropped!r}'
        f"{_value_json(result)}}}"
    )


def _value_json(result: Result) -> str:
    """The value fields of a result, each only when set (`_convert.configure_result`)."""
    value, has_value, value_file, value_error = (
        result.value,
        result.has_value,
        result.value_file,
        result.value_error,
    )
    if value is None and has_value is False and value_file is None and value_error is None:
        return ""  # (most results: no value)
    parts = []
    if value is not None:
        try:
            parts.append(f'"value":{_json_value(value)}')
        except ValueError:  # (a float json refuses: the converter's way says so)
            raise _Unusual from None
    if has_value is not False:
        parts.append(f'"has_value":{_json_boolean(has_value)}')
    if value_file is not None:
        parts.append(f'"value_file":{_json_text(value_file)}')
    if value_error is not None:
        parts.append(f'"value_error":{_json_text(value_error)}')
    return "," + ",".join(parts)


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
        f'"handle":{_handle_json(state.handle)},'
        f'"reason":{_json_optional_text(state.reason)},'
        f'"result":{_result_json(state.result)},'
        f'"updated_at":{updated_at!r},'
        f'"started_at":{"null" if started_at is None else repr(started_at)}}}'
    )


def _json_optional_number(value: object) -> str:
    return "null" if value is None else _json_number(value)


def _json_strings(value: object) -> str:
    if type(value) is not tuple:
        raise _Unusual
    return f"[{','.join([_json_text(item) for item in value])}]"


def _json_string_table(value: object) -> str:
    if type(value) is not dict:
        raise _Unusual
    if not value:
        return "{}"
    return f"{{{','.join([f'{_json_text(k)}:{_json_text(v)}' for k, v in value.items()])}}}"


#: How a spec's field of each declared type is written, as the converter writes a value of
#: it: an expression of the field's value ``{0}`` (in the generated writer, `spec_writer`).
_FIELD_JSON: dict[object, str] = {
    str: "_json_text({0})",
    str | None: '("null" if {0} is None else _json_text({0}))',
    int: "_json_number({0})",
    float: "_json_number({0})",
    int | None: '("null" if {0} is None else _json_number({0}))',
    float | None: '("null" if {0} is None else _json_number({0}))',
    tuple[str, ...]: "_json_strings({0})",
    dict[str, str]: "_json_string_table({0})",
}


def spec_writer(converter: cattrs.Converter) -> Callable[[ProcessSpec], str]:
    """A function that writes a `ProcessSpec` as ``converter`` does (its unstructure hook for
    the class, then ``json.dumps`` without spaces), generated once per converter as cattrs
    generates its own: a field of a type in `_FIELD_JSON` (or a ``Literal`` of strings) is
    written directly, any other through the converter's hook for its type, and a spec with
    a backend's options table through the converter whole. A value of another type than its
    field's: `_Unusual` (the codec then takes the converter's way).
    """
    types = attrs.fields_dict(attrs.resolve_types(ProcessSpec))
    namespace: dict[str, Any] = {
        "_json_text": _json_text,
        "_json_number": _json_number,
        "_json_strings": _json_strings,
        "_json_string_table": _json_string_table,
        "_converted_json": _converted_json,
        "_whole": converter.get_unstructure_hook(ProcessSpec),
    }
    parts = []
    for number, name in enumerate(SPEC_FIELDS):
        type_ = types[name].type
        expression = _FIELD_JSON.get(type_)
        if expression is None and typing.get_origin(type_) is typing.Literal:
            expression = _FIELD_JSON[str]
        if expression is None:
            namespace[f"_hook{number}"] = converter.get_unstructure_hook(type_)
            expression = f"_converted_json(_hook{number}, {{0}})"
        value = expression.format(f"spec.{name}")
        parts.append(f"{json.dumps(name)}:{{{value}}}")
    body = ",".join(parts)  # (JSON names, expressions in double quotes: no single quote)
    source = (
        "def write_spec(spec):\n"
        "    if spec.options is not None:\n"
        "        return _converted_json(_whole, spec)\n"
        f"    return f'{{{{{body}}}}}'\n"
    )
    exec(compile(source, "<corra spec_writer>", "exec"), namespace)
    writer: Callable[[ProcessSpec], str] = namespace["write_spec"]
    return writer


def _converted_json(hook: Callable[[Any], Any], value: object) -> str:
    try:
        return _json_value(hook(value))
    except ValueError:
        raise _Unusual from None  # (a float json refuses: the converter's way says so)


class RecordEncoder:
    """The ``data`` of a `ProcessRecord` as the codec's converter would write it, or None.

    Per live spec, it keeps the JSON around the state of its process's record
    (``{"id":...,"spec":{...},"state":`` and ``,"created_at":...}``), the spec's part written
    by the converter itself. Keyed by the spec's identity (specs hold dicts: they are not
    hashable), each entry is dropped when its spec is collected; a spec shared by two
    processes is simply written again. A spec is frozen, but its ``env`` and ``labels`` are
    dicts: code that changed one in place after submission would not see the change on disk
    (nothing in corra does; specs are built from input and never changed).

    Args:
        converter: the codec's converter (`corra.persistence.Codec` passes it).
    """

    def __init__(self, converter: cattrs.Converter) -> None:
        self._spec_json = spec_writer(converter)
        self._texts: dict[int, tuple[weakref.ref[ProcessSpec], str, float, str, str]] = {}

    def __call__(self, record: ProcessRecord) -> str | None:
        try:
            if type(record) is not ProcessRecord:
                raise _Unusual
            head, tail = self._around_state(record)
            return f"{head}{_state_json(record.state)}{tail}"
        except (_Unusual, KeyError, TypeError):  # (KeyError: not a phase; TypeError: unhashable)
            return None

    def head(self, process_id: str, spec: ProcessSpec) -> str | None:
        """The text a record of ``process_id`` and ``spec`` begins with, up to its state
        (``{"id":...,"spec":{...},"state":``), or None; not kept (for a record that is not
        written: `corra.processes._settled`)."""
        try:
            if type(spec) is not ProcessSpec:
                raise _Unusual
            return f'{{"id":{_json_text(process_id)},"spec":{self._spec_json(spec)},"state":'
        except (_Unusual, TypeError):
            return None

    def _around_state(self, record: ProcessRecord) -> tuple[str, str]:
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
        if type(spec) is not ProcessSpec or not _is_number(created_at):
            raise _Unusual
        head = f'{{"id":{_json_text(record.id)},"spec":{self._spec_json(spec)},"state":'
        tail = f',"created_at":{created_at!r}}}'
        texts = self._texts
        reference = weakref.ref(spec, lambda _, key=key: texts.pop(key, None))
        texts[key] = (reference, record.id, created_at, head, tail)
        return head, tail

    def __len__(self) -> int:
        """How many specs' texts it keeps."""
        return len(self._texts)


#: The JSON of each event name.
_EVENT_JSON: dict[object, str] = {event: f'"{event}"' for event in typing.get_args(Event)}


def transition_encoder(converter: cattrs.Converter) -> Callable[[Transition], str | None]:
    """The ``data`` of a `Transition` as the converter would write it, or None."""
    del converter  # (every field is written by hand)

    def encode(transition: Transition) -> str | None:
        try:
            if type(transition) is not Transition or transition.result is not None:
                raise _Unusual  # (a rerun's kept result: the converter's way, rare)
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

    return encode
