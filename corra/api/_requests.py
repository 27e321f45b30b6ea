"""What a request brings to the HTTP API, checked at the edge: its body (size, time, JSON),
its query parameters (known, single, bounded), and `ApiError`, the error a check answers with.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import trio
from starlette.requests import Request

from corra._errors import ConfigError
from corra.api._limits import BODY_TIMEOUT, DEFAULT_LIMIT, MAX_BODY, MAX_LIMIT
from corra.processes._lifecycle import PHASES
from corra.processes._listing import Selection
from corra.processes._spec import ProcessSpec
from corra.processes._spec_content import abbreviated


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message, **extra}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# -- request parsing -----------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    """The body, refusing (413) one above `MAX_BODY` even without a content-length, and
    (408) one that has not come whole within `BODY_TIMEOUT`.

    Raises:
        ClientDisconnect: the client went away before its body was in.
    """
    chunks = []
    size = 0
    with trio.move_on_after(BODY_TIMEOUT):
        async with contextlib.aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > MAX_BODY:
                    raise ApiError(413, "too_large", f"the body is over {MAX_BODY} bytes")
                chunks.append(chunk)
        return b"".join(chunks)
    raise ApiError(
        408,
        "timeout",
        f"the body did not come within {BODY_TIMEOUT:g} s ({size} bytes came); "
        f"a body may take at most {BODY_TIMEOUT:g} s",
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "bad_request", "the body is empty; expected a JSON object")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None


def check_paths(spec: ProcessSpec, where: str = "process") -> None:
    """Local paths must be absolute: the service's working directory means nothing to a
    client."""
    if spec.backend == "local" and spec.cwd is not None and not os.path.isabs(spec.cwd):
        raise ConfigError(f"{where}.cwd: got {spec.cwd!r}, expected an absolute path")
    if spec.outputs_dir is not None and not os.path.isabs(spec.outputs_dir):
        raise ConfigError(
            f"{where}.outputs_dir: got {spec.outputs_dir!r}, expected an absolute path"
        )
    for remote, local in spec.inputs.items():
        if not os.path.isabs(local):
            raise ConfigError(
                f"{where}.inputs.{remote}: got {local!r}, expected an absolute local path"
            )


def known_only(query: Any, *names: str) -> None:
    for name in query:
        if name not in names:
            expected = f"some of {list(names)}" if names else "none"
            raise ApiError(400, "bad_request", f"{name}: unknown parameter; expected {expected}")


def single(query: Any, name: str) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"{name}: given {len(values)} times, expected once")
    return values[0] if values else None


def epoch_seconds(query: Any, name: str) -> float | None:
    """A time query parameter: seconds since the epoch (a number >= 0), or None if absent."""
    text = single(query, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < 1e11):  # (NaN and infinities fail too)
        shown = abbreviated(text, 40)
        raise ApiError(400, "bad_request", f"{name}: got {shown}, expected epoch seconds >= 0")
    return value


def integer(query: Any, name: str, default: int, *, minimum: int, maximum: int) -> int:
    """An integer query parameter, within its bounds (every one has both: a number past
    what a file offset or a C integer holds must never reach the code that reads logs)."""
    text = single(query, name)
    if text is None:
        return default
    bounds = f"an integer >= {minimum} and <= {maximum}"
    shown = abbreviated(text, 40)
    digits = text[1:] if text[:1] in "+-" else text
    if not (text.isascii() and digits.isdigit()):
        raise ApiError(400, "bad_request", f"{name}: got {shown}, expected {bounds}")
    if len(digits.lstrip("0")) > len(str(maximum)):  # (out of range: no need to convert it)
        raise ApiError(400, "bad_request", f"{name}: got {shown}, expected {bounds}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ApiError(400, "bad_request", f"{name}: got {value}, expected {bounds}")
    return value


def boolean(query: Any, name: str, default: bool) -> bool:
    text = single(query, name)
    if text is None:
        return default
    if text in ("true", "false"):
        return text == "true"
    raise ApiError(400, "bad_request", f"{name}: got {text!r}, expected true or false")


def page_params(query: Any) -> tuple[str | None, int]:
    """The ``cursor`` and ``limit`` of a request for a page."""
    return single(query, "cursor"), integer(
        query, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT
    )


_TIMES = ("created_after", "created_before", "ended_after", "ended_before")


def listing_params(query: Any) -> tuple[Selection, str | None, int]:
    """What ``GET /v1/processes`` asks for: the selection, the cursor and the limit."""
    known_only(query, "phase", "name", "label", "limit", "cursor", *_TIMES)
    phases = tuple(query.getlist("phase"))
    for phase in phases:
        if phase not in PHASES:
            raise ApiError(400, "bad_request", f"phase: got {phase!r}, expected one of {PHASES}")
    labels = []
    for label in query.getlist("label"):
        key, equals, value = label.partition("=")
        if not equals or not key:
            raise ApiError(400, "bad_request", f"label: got {label!r}, expected KEY=VALUE")
        labels.append((key, value))
    bounds = {field: epoch_seconds(query, field) for field in _TIMES}
    name = single(query, "name")
    selection = Selection(phases=phases, labels=tuple(labels), name=name, **bounds)
    return (selection, *page_params(query))
