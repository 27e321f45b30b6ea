"""What the text of a `ProcessSpec` may hold: strings UTF-8 can carry, sizes within limits,
and env values that are never shown.

A spec is stored as JSON, answered over HTTP and printed by the command line. A string that
UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``, which both JSON's escapes and
Python allow) would be accepted and then break every reader of the record; an unbounded one
would pin memory in every list of processes. So both are refused when the spec is built, with
the field named.

Env values are secrets as often as not: no message here (nor any error of `ProcessSpec`) shows
one, and `hide_env` is how every surface (``corra show``, the API) shows an env by default.

These functions take a spec whose fields have the declared types already (its type checks
come first); they do not import `ProcessSpec`, which imports them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

#: A whole spec, as JSON in UTF-8, at most this many bytes (the API's body limit too).
MAX_SPEC_BYTES = 1 << 20
MAX_LABELS = 64
MAX_LABEL_KEY = 128
"""Characters of one label's key."""
MAX_LABEL_VALUE = 1024
"""Characters of one label's value."""
#: The env names a shell can set (``export NAME=...``): what backends whose programs start
#: through a shell accept (`corra.processes._backend.Capabilities.shell_env`).
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What an env value shows as wherever values are not asked for explicitly.
HIDDEN = "***"

# The JSON of a string is at most this many bytes per character (``\u0001``), plus its
# quotes and separator; everything but the strings (field names, numbers) fits in the slack.
_BYTES_PER_CHARACTER = 6
_BYTES_PER_STRING = 4
_BYTES_PER_OTHER_VALUE = 32
_SLACK = 2048
_SHOWN = 60
"""Characters of a value's repr an error shows, at most."""


def hide_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with every value replaced by `HIDDEN` (the names stay)."""
    return dict.fromkeys(env, HIDDEN)


def abbreviated(value: object, limit: int = _SHOWN) -> str:
    """``repr(value)``, cut after ``limit`` characters with its size said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        size = f"{len(value)} characters"
    elif isinstance(value, Mapping | list | tuple):
        size = f"{len(value)} items"
    else:
        size = f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def shown(field: str, value: object) -> str:
    """How an error shows the value of ``field``: abbreviated, and an env without values."""
    if field == "env":
        if isinstance(value, Mapping):
            return abbreviated(hide_env(value))
        return f"{_kind(value)} (not shown)"
    return abbreviated(value)


def shown_tables(value: object) -> str:
    """Input tables (a process's, a list of them) as errors show them: abbreviated, and
    every ``env`` in them without its values."""
    return abbreviated(_without_env_values(value))


def _without_env_values(value: object) -> object:
    if isinstance(value, Mapping):
        return {
            key: (
                (hide_env(item) if isinstance(item, Mapping) else HIDDEN)
                if key == "env"
                else _without_env_values(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_without_env_values(item) for item in value]
    return value


def key_shown(key: str) -> str:
    """A table's key as part of a field path (``env.HOME``); quoted if it needs it."""
    if key and key.isprintable() and not any(c.isspace() for c in key) and len(key) <= _SHOWN:
        return key
    return abbreviated(key)


def _kind(value: object) -> str:
    return f"a value of type {type(value).__name__}"


def _texts(spec: Any) -> Iterator[tuple[str, str, object, str]]:
    """Every string of the spec: (field, what: ``item``/``key``/``value``/``""``, its index
    or key, the string)."""
    for index, part in enumerate(spec.argv):
        yield "argv", "item", index, part
    for field in ("name", "cwd"):
        text = getattr(spec, field)
        if text is not None:
            yield field, "", None, text
    for field in ("env", "labels"):
        for key, item in getattr(spec, field).items():
            yield field, "key", key, key
            yield field, "value", key, item
    if spec.host is not None:
        yield "host", "", None, spec.host
    for key, item in spec.inputs.items():
        yield "inputs", "key", key, key
        yield "inputs", "value", key, item
    for index, part in enumerate(spec.outputs):
        yield "outputs", "item", index, part
    if spec.outputs_dir is not None:
        yield "outputs_dir", "", None, spec.outputs_dir
    for field, text in _option_texts(spec.options):
        yield spec.backend, "value", field, text  # (a table named after the backend)


def _option_texts(options: object) -> Iterator[tuple[str, str]]:
    """The strings of a backend's options object: (its field, the string)."""
    if options is None:
        return
    for field in attrs.fields(type(options)):
        item = getattr(options, field.name)
        if isinstance(item, str):
            yield field.name, item
        elif isinstance(item, tuple | list):
            for part in item:
                if isinstance(part, str):
                    yield field.name, part


def content_fits(spec: Any) -> bool:
    """True if every string of ``spec`` can be encoded as UTF-8 and no limit is exceeded:
    what `content_problem` finds nothing in, fast (a spec is built for every submission:
    the strings are gathered and checked by C loops, not one by one)."""
    labels = spec.labels
    if labels and (
        len(labels) > MAX_LABELS
        or max(map(len, labels)) > MAX_LABEL_KEY
        or max(map(len, labels.values())) > MAX_LABEL_VALUE
    ):
        return False
    env, inputs, options = spec.env, spec.inputs, spec.options
    texts = [*spec.argv, *env, *env.values(), *labels, *labels.values(), *spec.outputs]
    if inputs:
        texts += [*inputs, *inputs.values()]
    for text in (spec.name, spec.cwd, spec.host, spec.outputs_dir):
        if text is not None:
            texts.append(text)
    fields = 0
    if options is not None:
        fields = len(attrs.fields(type(options)))
        texts += [text for _, text in _option_texts(options)]
    if not all(map(str.isascii, texts)) and not all(map(_encodes, texts)):
        return False
    bound = (
        _SLACK
        + sum(map(len, texts)) * _BYTES_PER_CHARACTER
        + len(texts) * _BYTES_PER_STRING
        + fields * _BYTES_PER_OTHER_VALUE
    )
    # Only a large spec is measured exactly (its JSON written out once).
    return bound <= MAX_SPEC_BYTES or json_size(spec) <= MAX_SPEC_BYTES


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def json_size(value: Any) -> int:
    """Bytes of ``value`` (a spec, or one field's value) as compact JSON in UTF-8."""
    data = attrs.asdict(value) if attrs.has(type(value)) else value
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode())


def content_problem(spec: Any) -> str | None:
    """What is wrong with the text of ``spec`` (naming the field path, the value, shown
    abbreviated and without env values, and the limit), or None."""
    for field, what, where, text in _texts(spec):
        if text.isascii():
            continue
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            return _not_utf8(field, what, where, text, exc.start)
    labels = spec.labels
    if len(labels) > MAX_LABELS:
        return f"labels: got {len(labels)} labels, expected at most {MAX_LABELS}"
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY:
            return (
                f"labels: got the key {abbreviated(key)}, expected keys of at most "
                f"{MAX_LABEL_KEY} characters"
            )
        if len(value) > MAX_LABEL_VALUE:
            return (
                f"labels.{key_shown(key)}: got {abbreviated(value)}, expected at most "
                f"{MAX_LABEL_VALUE} characters"
            )
    size = json_size(spec)
    if size > MAX_SPEC_BYTES:
        fields = attrs.fields(type(spec))
        largest = max(fields, key=lambda field: json_size(getattr(spec, field.name))).name
        value = getattr(spec, largest)
        if largest == "options":  # (a table named after the backend, on the wire)
            largest = spec.backend
        return (
            f"{largest}: got {shown(largest, value)}, which makes the spec "
            f"{size} bytes as JSON; expected a whole spec of at most {MAX_SPEC_BYTES} bytes "
            "(1 MiB)"
        )
    return None


def _not_utf8(field: str, what: str, where: object, text: str, index: int) -> str:
    expected = (
        f"text that UTF-8 can encode (found a lone surrogate {text[index]!r} at index {index})"
    )
    if field == "env":
        assert isinstance(where, str)
        if what == "key":
            return f"env: got the name {abbreviated(where)}, expected {expected}"
        return f"env.{key_shown(where)}: got a value (not shown), expected {expected}"
    if what == "item":
        path = f"{field}[{where}]"
    elif what == "value":
        assert isinstance(where, str)
        path = f"{field}.{key_shown(where)}"
    else:
        path = field
    if what == "key":
        return f"{field}: got the key {abbreviated(text)}, expected {expected}"
    return f"{path}: got {abbreviated(text)}, expected {expected}"


def options_problem(name: str, table: Mapping[Any, Any]) -> str | None:
    """What UTF-8 cannot encode in a backend's options table (keys, strings and strings in
    lists), named as ``<name>.<key>``; None if nothing. (Checked on the table as it comes,
    before the backend's options class checks its values.)"""
    for key, item in table.items():
        if isinstance(key, str) and not _encodes(key):
            return _not_utf8(name, "key", key, key, _bad_index(key))
        for text in [item] if isinstance(item, str) else item if isinstance(item, list) else ():
            if isinstance(text, str) and not _encodes(text):
                return _not_utf8(name, "value", key, text, _bad_index(text))
    return None


def _bad_index(text: str) -> int:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return exc.start
    return -1


def env_name_problem(spec: Any) -> str | None:
    """The first env name a shell cannot set, or None (for a backend that sets the env
    through a shell)."""
    for name in spec.env:
        if not ENV_NAME_PATTERN.fullmatch(name):
            return (
                f"env.{key_shown(name)}: got the name {abbreviated(name)}, expected a name "
                f"matching {ENV_NAME_PATTERN.pattern} for backend {spec.backend!r} (its job "
                "script sets the variables through a shell)"
            )
    return None
