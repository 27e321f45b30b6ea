"""The streams of the HTTP API: NDJSON bodies (logs, events) and the service's stop on a
kept-alive connection (`corra.api._app`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from starlette.responses import Response, StreamingResponse

from corra._errors import CorraError
from corra.processes._query import LogEntry

logger = logging.getLogger("corra.api")

NDJSON = "application/x-ndjson"
#: Streams close their connection when they end: a client that sent its next request on it
#: as the service stopped would hold the stop up until the graceful timeout (hypercorn reads
#: no more from a kept-alive connection while it winds down, and never closes it).
STREAM_HEADERS = {"Connection": "close"}


def closing_send(send: Callable[[dict[str, Any]], Awaitable[None]]) -> Any:
    """``send``, with ``Connection: close`` on the response (the service stops: a client must
    not send its next request on this connection; see `STREAM_HEADERS`)."""

    async def closing(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


async def log_json(entries: AsyncGenerator[LogEntry, None]) -> AsyncIterator[dict[str, Any]]:
    async with contextlib.aclosing(entries):
        async for entry in entries:
            yield entry.json()


def ndjson_stream(entries: AsyncIterator[dict[str, Any]], what: str) -> Response:
    return StreamingResponse(_ndjson(entries, what), media_type=NDJSON, headers=STREAM_HEADERS)


async def _ndjson(entries: AsyncIterator[dict[str, Any]], what: str) -> AsyncIterator[bytes]:
    """One JSON line per entry. An error after the headers went out can only end the stream
    early (the client reconnects from its last offset): it is logged."""
    try:
        async for entry in entries:
            yield (json.dumps(entry, ensure_ascii=False) + "\n").encode()
    except CorraError as exc:
        logger.warning("%s: stream ended early: %s", what, exc)
    finally:
        await entries.aclose()  # type: ignore[attr-defined]


async def first_of(*events: trio.Event) -> None:
    """Until one of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)
