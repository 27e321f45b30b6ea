"""Records as bytes and back: a versioned JSON envelope around cattrs-structured attrs values.

A record on disk is compact JSON::

    {"schema": 3, "type": "ProcessState", "data": {...}}

``schema`` is the version of the record's layout. A reader knows one current version; older
records are upgraded one step at a time by the codec's migrations before they are structured;
newer ones are refused (a newer corra wrote them). Whatever is wrong with a record, `decode`
raises `CorruptRecord` with a message that says what, naming the field path for bad data: a
record read from disk is input from outside, validated at the edge like any other.

A codec may be given a hand-written encoder of the ``data`` of its hottest records
(``fast_encoder``, made by the codec from its converter, and owned by it with whatever it
keeps): it must write exactly the text the converter and `json.dumps` would (the tests of its
owner compare them), and may decline a value it does not expect by returning None, which then
takes the converter's way. Decoding always takes the converter's way, with all its checks.

Each codec has its own `cattrs.Converter`, configured by the small functions below; the global
converter is never touched. Beyond what cattrs does by itself (frozen attrs classes, Literal,
tuples, enums by value, dict[str, str], Optional), they make primitives strict (no ``"1"`` for
an int, no ``5`` for a string), carry ``datetime`` as ISO 8601 (float seconds since the epoch
are accepted when reading), ``Path`` as a string, and tag unions of attrs classes with a
``"_type"`` field naming the class.
"""

from __future__ import annotations

import datetime
import json
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import cattrs
from cattrs.v import format_exception

from corra._errors import CorruptRecord

T = TypeVar("T")

#: The key of the tag that says which class of a union a value is.
TAG = "_type"

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class _Invalid(ValueError):
    """A value refused by one of our hooks; its message is shown as is."""


class Codec(Generic[T]):
    """Encodes values of one attrs type as versioned JSON records, and decodes them back.

    Args:
        root_type: the attrs class of the records; its name is written in every record.
        schema: the current version of the layout (an integer >= 1).
        migrations: ``{version: upgrade}``, where ``upgrade`` turns the ``data`` of a version
            ``version`` record into that of version ``version + 1``. Records older than the
            oldest version with a chain of migrations up to ``schema`` are refused.
        configure: called with the codec's converter once it is configured as above, to add
            the hooks of the owner's types (their stored form).
        fast_encoder: called once with the codec's converter, it gives a faster way to the
            compact JSON text of a value's ``data``, the same text the converter would give;
            None from that means "take the converter's way".
    """

    def __init__(
        self,
        root_type: type[T],
        schema: int,
        *,
        migrations: dict[int, Migration] | None = None,
        configure: Callable[[cattrs.Converter], None] | None = None,
        fast_encoder: Callable[[cattrs.Converter], Callable[[T], str | None]] | None = None,
    ) -> None:
        if not attrs.has(root_type):
            raise TypeError(f"the root type of a codec must be an attrs class, not {root_type!r}")
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise ValueError(f"schema must be an integer >= 1, not {schema!r}")
        self.root_type = root_type
        self.schema = schema
        self.type_name = root_type.__name__
        self._migrations = dict(migrations or {})
        too_new = [version for version in self._migrations if version >= schema]
        if too_new:
            raise ValueError(f"migrations {too_new} start at or after the current schema {schema}")
        self._converter = _make_converter(root_type)
        if configure is not None:
            configure(self._converter)
        self._unstructure = self._converter.get_unstructure_hook(root_type)
        self._structure = self._converter.get_structure_hook(root_type)
        self._encode_data = None if fast_encoder is None else fast_encoder(self._converter)
        # What json.dumps(..., separators=(",", ":"), allow_nan=False) does, without building
        # an encoder per call.
        self._json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        self._head = self._json({"schema": schema, "type": self.type_name, "data": 0})[:-2]

    def __repr__(self) -> str:
        return f"Codec({self.type_name}, schema={self.schema})"

    @property
    def fast_encoder(self) -> Callable[[T], str | None] | None:
        """What ``fast_encoder`` made (None without one): its owner may ask it more than
        `encode` does."""
        return self._encode_data

    @property
    def head(self) -> str:
        """The text every record of `encode` begins with, up to its ``data``."""
        return self._head

    def encode(self, value: T) -> bytes:
        """The record of ``value``: compact JSON, ASCII only.

        Raises:
            TypeError: ``value`` is not an instance of the root type.
            ValueError: ``value`` holds a float JSON cannot carry (nan, infinity).
        """
        if not isinstance(value, self.root_type):
            raise TypeError(f"expected a {self.type_name}, got {type(value).__name__}")
        if self._encode_data is not None:
            data = self._encode_data(value)
            if data is not None:
                return f"{self._head}{data}}}".encode("ascii")
        return self.encode_generic(value)

    def encode_generic(self, value: T) -> bytes:
        """`encode` by the converter's way alone (what ``fast_encoder`` must agree with)."""
        document = {"schema": self.schema, "type": self.type_name, "data": self._unstructure(value)}
        return self._json(document).encode("ascii")

    def decode(self, raw: bytes) -> T:
        """The value in a record, upgraded to the current schema if it is older.

        Raises:
            CorruptRecord: anything wrong with the record; the message says what and where.
        """
        try:
            # Decoded here, not by json.loads, which would also take UTF-16 and UTF-32.
            document = json.loads(str(raw, "utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise CorruptRecord(f"not a JSON record: {exc}") from exc
        data, schema = self._envelope(document)
        for version in range(schema, self.schema):
            try:
                data = self._migrations[version](data)
            except Exception as exc:
                raise CorruptRecord(
                    f"{self.type_name} record: migration from schema {version} to "
                    f"{version + 1} failed: {exc!r}"
                ) from exc
        try:
            return self._structure(data, self.root_type)
        except Exception as exc:
            problems = cattrs.transform_error(exc, path="$.data", format_exception=_describe)
            raise CorruptRecord(f"invalid {self.type_name} record: {'; '.join(problems)}") from exc

    def _envelope(self, document: object) -> tuple[dict[str, Any], int]:
        if not isinstance(document, dict):
            raise CorruptRecord(f"not a record: a JSON {type(document).__name__}, not an object")
        missing = [key for key in ("schema", "type", "data") if key not in document]
        if missing:
            raise CorruptRecord(f"not a record: missing {', '.join(missing)}")
        extra = sorted(set(document) - {"schema", "type", "data"})
        if extra:
            raise CorruptRecord(f"not a record: unexpected keys {extra}")
        schema, data = document["schema"], document["data"]
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise CorruptRecord(f"schema must be an integer, got {schema!r}")
        if document["type"] != self.type_name:
            raise CorruptRecord(
                f"a {document['type']!r} record where a {self.type_name} was expected"
            )
        if schema > self.schema:
            raise CorruptRecord(
                f"{self.type_name} record has schema {schema}, newer than this corra knows "
                f"({self.schema})"
            )
        if schema < self.schema:
            # Bounded by the migrations we have: a corrupt schema of -10**20 must not make
            # us build a range of that size.
            oldest = min(self._migrations, default=self.schema)
            if schema < oldest:
                raise CorruptRecord(
                    f"{self.type_name} record has schema {schema}, older than any this corra "
                    f"can migrate ({oldest} is the oldest)"
                )
            gaps = [v for v in range(schema, self.schema) if v not in self._migrations]
            if gaps:
                raise CorruptRecord(
                    f"{self.type_name} record has schema {schema}, and there is no migration "
                    f"from schema {gaps[-1]} to {gaps[-1] + 1}"
                )
        if not isinstance(data, dict):
            raise CorruptRecord(
                f"invalid {self.type_name} record: expected an object, got {_type_name(data)}"
                " @ $.data"
            )
        return data, schema


def _describe(exc: BaseException, type_: type | None) -> str:
    """Like cattrs' default formatter, but with our hooks' messages and fewer unknowns."""
    if isinstance(exc, _Invalid):
        return str(exc)
    if isinstance(exc, AttributeError) and "object has no attribute" in str(exc):
        return "expected an object"
    description = format_exception(exc, type_)
    if description.startswith("unknown error"):
        return f"invalid value ({exc})"
    return description


# The converter, one small function per concern ---------------------------------------------


def _make_converter(root_type: type) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    _configure_strict_primitives(converter)
    _configure_datetime(converter)
    _configure_path(converter)
    _configure_attrs_unions(converter, root_type)
    return converter


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _configure_strict_primitives(converter: cattrs.Converter) -> None:
    """No coercion: cattrs would otherwise turn 5 into "5" and "5" or 5.9 into 5."""

    def structure_str(value: object, _: type) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_type_name(value)}")
        return value

    def structure_int(value: object, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_type_name(value)}")
        return value

    def structure_float(value: object, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected a number, got {_type_name(value)}")
        return float(value)

    def structure_bool(value: object, _: type) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, got {_type_name(value)}")
        return value

    converter.register_structure_hook(str, structure_str)
    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(float, structure_float)
    converter.register_structure_hook(bool, structure_bool)


def _configure_datetime(converter: cattrs.Converter) -> None:
    """ISO 8601 on the way out; ISO 8601 or float seconds since the epoch (UTC) on the way in."""

    def structure(value: object, _: type) -> datetime.datetime:
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value)
            except ValueError:
                raise _Invalid(f"expected an ISO 8601 date and time, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
            except (ValueError, OverflowError, OSError):
                raise _Invalid(f"seconds since the epoch out of range: {value!r}") from None
        raise _Invalid(f"expected a date and time, got {_type_name(value)}")

    converter.register_unstructure_hook(datetime.datetime, datetime.datetime.isoformat)
    converter.register_structure_hook(datetime.datetime, structure)


def _configure_path(converter: cattrs.Converter) -> None:
    def structure(value: object, _: type) -> Path:
        if not isinstance(value, str):
            raise _Invalid(f"expected a path (a string), got {_type_name(value)}")
        return Path(value)

    converter.register_unstructure_hook(Path, str)
    converter.register_structure_hook(Path, structure)


def _configure_attrs_unions(converter: cattrs.Converter, root_type: type) -> None:
    """Tag every union of two or more attrs classes reachable from ``root_type``."""
    for union in _attrs_unions(root_type):
        _configure_tagged_union(converter, union)


def _configure_tagged_union(converter: cattrs.Converter, union: Any) -> None:
    members = [member for member in typing.get_args(union) if member is not type(None)]
    optional = len(members) < len(typing.get_args(union))
    by_tag = {member.__name__: member for member in members}
    expected = ", ".join(sorted(by_tag))

    def unstructure(value: Any) -> Any:
        if value is None and optional:
            return None
        data = converter.unstructure(value, unstructure_as=type(value))
        data[TAG] = type(value).__name__
        return data

    def structure(value: Any, _: type) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise _Invalid(f"expected an object tagged {TAG!r}, got {_type_name(value)}")
        tag = value.get(TAG)
        if not isinstance(tag, str) or tag not in by_tag:
            raise _Invalid(f"expected {TAG!r} to be one of {expected}, got {tag!r}")
        member = by_tag[tag]
        fields = {key: item for key, item in value.items() if key != TAG}
        return converter.structure(fields, member)

    converter.register_unstructure_hook(union, unstructure)
    converter.register_structure_hook(union, structure)


def _attrs_unions(root_type: type) -> Iterator[Any]:
    """Unions (optional or not) of at least two attrs classes, anywhere under ``root_type``."""
    seen: set[Any] = set()
    pending: list[Any] = [root_type]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if attrs.has(current):
            pending.extend(field.type for field in attrs.fields(attrs.resolve_types(current)))
            continue
        arguments = typing.get_args(current)
        pending.extend(arguments)
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            classes = [argument for argument in arguments if attrs.has(argument)]
            if len(classes) >= 2:
                if len(classes) + (type(None) in arguments) != len(arguments):
                    raise TypeError(f"{current}: a union may mix attrs classes only with None")
                yield current
