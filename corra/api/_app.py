"""The HTTP API of a runtime: an ASGI app (Starlette, on trio through anyio).

`open_api` gives an `Api` for a runtime with a state dir: its ``app`` serves the endpoints of
`corra.api._openapi.OPENAPI`, and a task of its own follows the runtime's transitions (for
``/v1/events`` and ``/metrics``). Every endpoint but ``/v1/health`` wants the bearer token.

Errors are JSON, ``{"error": CODE, "message": TEXT}`` (``"phase"`` too for a 409): a body
that is not JSON 400, a spec that is not valid 422 (the message names the field), an unknown
process 404, a transition the phase forbids 409, a body above `MAX_BODY` 413, one that has not
come whole within `BODY_TIMEOUT` 408 (the connection closes), a bad query parameter 400 (naming
it, its value and its bounds). A handler never lets an error of corra's through as a 500; the
catch-all that logs and answers 500 is there for bugs. A client that goes away before its
request is in is logged as that (499), not as an error.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import corra
from corra._errors import (
    ActorError,
    BackendError,
    ConfigError,
    CorraError,
    InvalidTransition,
    NameTaken,
    NoSuchProcess,
    NoSuchRun,
    StoreError,
)
from corra.api import _metrics
from corra.api._cache import TerminalCache
from corra.api._events import NUMBERS_FILE, EventLog, follow_statuses, publish_status
from corra.api._limits import MAX_BATCH, MAX_BODY
from corra.api._openapi import OPENAPI
from corra.api._requests import (
    ApiError,
    boolean,
    check_paths,
    epoch_seconds,
    integer,
    known_only,
    listing_params,
    page_params,
    parse_json,
    read_body,
    single,
)
from corra.api._streams import closing_send, first_of, log_json, ndjson_stream
from corra.api._value import value_response
from corra.api._wire import record_json, transition_json, view_json
from corra.api._workflows import WorkflowRoutes
from corra.backends.recorded import recorded
from corra.processes._convert import parse_process_spec
from corra.processes._manager import MAX_LOG_OFFSET
from corra.processes._query import ProcessQuery
from corra.processes._record import ProcessRecord
from corra.processes._registry import installed
from corra.processes._spec_content import shown_tables
from corra.processes._statuses import StatusFeed

logger = logging.getLogger("corra.api")

#: The largest ``since`` of ``/v1/events`` (like a log offset: what JSON carries exactly).
MAX_SEQ = MAX_LOG_OFFSET
#: ``kill?wait=false`` answers once the process is killing, or after this many seconds.
KILL_ACCEPTED_TIMEOUT = 10.0
#: The bounds of ``keep`` of ``POST /v1/processes:prune``.
_KEEP = {"minimum": 0, "maximum": 10**12}
#: Paths served without the token.
OPEN_PATHS = frozenset({"/v1/health"})


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="corra"'} if status == 401 else None
    if status == 408:
        headers = {"Connection": "close"}  # (the rest of the body is not waited for)
    return JSONResponse(
        {"error": code, "message": message, **extra}, status_code=status, headers=headers
    )


def _corra_error(exc: CorraError) -> ApiError:
    """corra's errors as HTTP ones."""
    if isinstance(exc, (NoSuchProcess, NoSuchRun)):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, InvalidTransition):
        return ApiError(409, "invalid_transition", str(exc), phase=exc.phase)
    if isinstance(exc, NameTaken):
        return ApiError(409, "name_taken", str(exc))
    if isinstance(exc, ConfigError):
        return ApiError(422, "invalid", str(exc))
    if isinstance(exc, BackendError):
        return ApiError(502, "backend", str(exc))
    if isinstance(exc, (StoreError, ActorError)):
        return ApiError(503, "unavailable", str(exc))
    return ApiError(503, "unavailable", str(exc))


class _Guard:
    """The token and the body limit, before any route (a plain ASGI wrapper: cheaper than
    a Starlette middleware, and it leaves streaming responses alone)."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], token: str, stopping: trio.Event
    ) -> None:
        self.app = app
        self._token = token.encode()
        self._stopping = stopping

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self._stopping.is_set():
                send = closing_send(send)
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Mapping[str, Any]) -> Response | None:
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
        if scope["path"] not in OPEN_PATHS and not self._authorized(authorization):
            message = (
                "missing bearer token (Authorization: Bearer ...; the token is in the state "
                "dir's api-token file)"
                if authorization is None
                else "the bearer token is not this service's"
            )
            return _error(401, "unauthorized", message)
        if length is not None:
            try:
                too_big = int(length) > MAX_BODY
            except ValueError:
                return _error(400, "bad_request", "content-length: not an integer")
            if too_big:
                return _error(413, "too_large", f"the body is over {MAX_BODY} bytes")
        return None

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)


class Api:
    """The API of one runtime (see `open_api`)."""

    def __init__(self, runtime: Any, *, token: str) -> None:
        if not token:
            raise ConfigError("token: empty; the API needs a bearer token")
        self.runtime = runtime
        self.manager = runtime.processes
        self.query = ProcessQuery.of_manager(
            self.manager, functools.partial(recorded, runtime.state_dir)
        )
        self.events = EventLog(numbers=Path(runtime.state_dir) / NUMBERS_FILE)
        self.status_feed: StatusFeed | None = None  # (`follow_statuses`'s)
        self.commits = _metrics.CommitLatency(self.manager.store)
        self.stopping = trio.Event()
        """Set when the service stops: streams end, so that their clients reconnect."""
        # ``GET /v1/processes/{id}`` of terminal processes, by id (bounded by bytes).
        self._terminal = TerminalCache()
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/backends", self.backends, methods=["GET"]),
            Route("/v1/processes", self._processes, methods=["GET", "POST"]),
            Route("/v1/processes:batch", self.create_processes, methods=["POST"]),
            Route("/v1/processes:counts", self.count_processes, methods=["GET"]),
            Route("/v1/processes:prune", self.prune_processes, methods=["POST"]),
            Route("/v1/processes/{id}", self._process, methods=["GET", "DELETE"]),
            Route("/v1/processes/{id}/pause", self.pause_process, methods=["POST"]),
            Route("/v1/processes/{id}/resume", self.resume_process, methods=["POST"]),
            Route("/v1/processes/{id}/kill", self.kill_process, methods=["POST"]),
            Route("/v1/processes/{id}/rerun", self.rerun_process, methods=["POST"]),
            Route("/v1/processes/{id}/logs", self.process_logs, methods=["GET"]),
            Route("/v1/processes/{id}/history", self.process_history, methods=["GET"]),
            Route("/v1/processes/{id}/value", self.process_value, methods=["GET"]),
            Route("/v1/events", self.event_stream, methods=["GET"]),
            *WorkflowRoutes(runtime.workflows).routes(),
        ]
        starlette = Starlette(
            routes=routes,
            exception_handlers={
                ApiError: self._api_error,
                CorraError: self._corra_error,
                ClientDisconnect: self._client_gone,
                HTTPException: self._http_error,
                Exception: self._crash,
            },
        )
        self.app = _Guard(starlette, token, self.stopping)
        """The ASGI app."""

    def drop_cached(self, process_id: str) -> None:
        """Forget the JSON kept of a terminal process (its last status came)."""
        self._terminal.drop(process_id)

    def stop(self) -> None:
        """End the streams (the service stops; their clients will reconnect)."""
        self.stopping.set()

    # -- transitions -----------------------------------------------------------------------

    async def follow_transitions(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Record every transition (events, commit latencies); runs until cancelled.
        Subscribed when it has started."""
        with self.manager.subscribe(buffer=1 << 16) as transitions:
            task_status.started()
            async for record, transition in transitions:
                if transition.event in ("rerun", "remove"):  # (it changed, or is gone)
                    self._terminal.drop(record.id)
                ending = self.status_feed is not None and record.state.terminal
                last = self.status_feed.pop(record.id) if ending else None  # (its end last)
                if last is not None:
                    await publish_status(self, record, last)
                if self.events.full:  # (once per RESERVED_NUMBERS events)
                    await trio.to_thread.run_sync(self.events.reserve)
                self.events.append(record, transition)
                self.commits.sample()

    # -- endpoints -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": corra.__version__})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def metrics(self, request: Request) -> Response:
        try:  # (the counts the store keeps as processes move: no scan)
            phases: dict[str, int] | None = await self.query.phase_counts()
        except CorraError as exc:
            logger.warning("cannot count the processes per phase: %s", exc)
            phases = None
        text = await _metrics.render(self.runtime, self.events, phases, self.commits)
        return Response(text, media_type=_metrics.CONTENT_TYPE)

    async def backends(self, request: Request) -> Response:
        return JSONResponse(installed.describe())

    async def _processes(self, request: Request) -> Response:
        # (one route for both methods, so that a 405 there names both in its Allow header)
        if request.method == "POST":
            return await self.create_process(request)
        return await self.list_processes(request)

    async def create_process(self, request: Request) -> Response:
        data = parse_json(await read_body(request))
        spec = parse_process_spec(data, "process")
        check_paths(spec)
        submitted = await self.manager.submit(spec)
        record = submitted.record
        if submitted.changed:
            fields = list(submitted.changed)
            raise ApiError(
                409,
                "spec_changed",
                f"process {record.name!r} ({record.id}) exists with another spec: "
                f"{', '.join(fields)} differ; it keeps its own (remove it to submit this one, "
                "or rerun it with `corra run --rerun changed`)",
                fields=fields,
                id=record.id,
            )
        return JSONResponse(
            record_json(record),
            status_code=201 if submitted.created else 200,
            headers={"Location": f"/v1/processes/{record.id}"},
        )

    async def prune_processes(self, request: Request) -> Response:
        query = request.query_params
        known_only(query, "ended_before", "keep")
        moment = epoch_seconds(query, "ended_before")
        keep = None if single(query, "keep") is None else integer(query, "keep", 0, **_KEEP)
        if moment is None and keep is None:
            raise ApiError(400, "bad_request", "give ended_before (epoch seconds), keep, or both")
        removed = await self.manager.prune(moment, keep=keep)
        return JSONResponse({"removed": removed})

    async def create_processes(self, request: Request) -> Response:
        data = parse_json(await read_body(request))
        items = data.get("processes") if isinstance(data, dict) else None
        if not isinstance(items, list) or set(data) != {"processes"}:
            raise ConfigError(
                f'body: got {shown_tables(data)}, expected {{"processes": [spec, ...]}}'
            )
        if not 1 <= len(items) <= MAX_BATCH:
            raise ConfigError(f"processes: got {len(items)} specs, expected 1 to {MAX_BATCH}")
        specs, problems = [], []
        for index, item in enumerate(items):  # (every spec checked before any is written)
            try:
                specs.append(parse_process_spec(item, f"processes[{index}]"))
                check_paths(specs[-1], f"processes[{index}]")
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))
        submitted = await self.manager.submit_many(specs)
        items = []
        for each in submitted:
            item = {**record_json(each.record), "created": each.created}
            if each.changed:  # (another spec under the name: it keeps its own)
                item["changed"] = list(each.changed)
            items.append(item)
        return JSONResponse({"items": items})

    async def list_processes(self, request: Request) -> Response:
        selection, cursor, limit = listing_params(request.query_params)
        try:
            page = await self.query.list(selection, cursor=cursor, limit=limit)
        except ConfigError as exc:  # (a cursor that is not one of this listing's)
            raise ApiError(400, "bad_request", str(exc)) from None
        items = [record_json(view.record, view.recorded, view.status) for view in page.items]
        return JSONResponse({"items": items, "next_cursor": page.next_cursor})

    async def process_history(self, request: Request) -> Response:
        known_only(request.query_params, "limit", "cursor")
        cursor, limit = page_params(request.query_params)
        record = self._lookup(request.path_params["id"])
        try:
            page = await trio.to_thread.run_sync(
                functools.partial(self.query.history_page, record, cursor=cursor, limit=limit)
            )
        except ConfigError as exc:  # (a cursor that is not one of a history's)
            raise ApiError(400, "bad_request", str(exc)) from None
        items = [transition_json(transition) for transition in page.items]
        return JSONResponse({"items": items, "next_cursor": page.next_cursor})

    async def process_value(self, request: Request) -> Response:
        known_only(request.query_params)
        return await value_response(self._lookup(request.path_params["id"]))

    async def _process(self, request: Request) -> Response:
        if request.method == "DELETE":
            return await self.delete_process(request)
        return await self.get_process(request)

    async def delete_process(self, request: Request) -> Response:
        known_only(request.query_params, "kill")
        kill = boolean(request.query_params, "kill", False)
        process_id = self._lookup(request.path_params["id"]).id
        try:
            record = await self.manager.remove(process_id, kill=kill)
        finally:
            self._terminal.drop(process_id)  # (now, not when its event comes round)
        return JSONResponse(record_json(record))

    async def count_processes(self, request: Request) -> Response:
        known_only(request.query_params)
        return JSONResponse({"phases": await self.query.phase_counts()})

    async def get_process(self, request: Request) -> Response:
        known_only(request.query_params, "show_env")
        key = request.path_params["id"]
        if boolean(request.query_params, "show_env", False):
            # (asked for: never cached, so that the cache holds no env value)
            view = await self.query.show(self._lookup(key))
            return JSONResponse(view_json(view, show_env=True))
        body = self._terminal.get(key)  # (by id only: a name is resolved by the manager)
        if body is None:
            record = self._lookup(key)
            body = self._terminal.get(record.id)
            if body is None:
                body = JSONResponse(view_json(await self.query.show(record))).body
                if record.state.terminal:
                    self._remember_terminal(record, body)
        return Response(body, media_type="application/json")

    async def pause_process(self, request: Request) -> Response:
        known_only(request.query_params)
        record = await self.manager.pause(self._lookup(request.path_params["id"]).id)
        return JSONResponse(record_json(record))

    async def resume_process(self, request: Request) -> Response:
        known_only(request.query_params)
        record = await self.manager.resume(self._lookup(request.path_params["id"]).id)
        return JSONResponse(record_json(record))

    async def rerun_process(self, request: Request) -> Response:
        known_only(request.query_params)
        process_id = self._lookup(request.path_params["id"]).id
        try:
            record = await self.manager.rerun(process_id)
        finally:
            self._terminal.drop(process_id)  # (now, not when its event comes round)
        return JSONResponse(record_json(record))

    async def kill_process(self, request: Request) -> Response:
        known_only(request.query_params, "wait")
        wait = boolean(request.query_params, "wait", True)
        record = await self.manager.kill(self._lookup(request.path_params["id"]).id, wait=wait)
        if not wait:
            # Answer once the kill is on its way (durable as killing), not merely asked for;
            # a step in the middle of an effect (a launch) finishes it first.
            with trio.move_on_after(KILL_ACCEPTED_TIMEOUT):
                record = await self.manager.wait(
                    record.id, until=lambda r: r.phase == "killing" or r.state.terminal
                )
        return JSONResponse(record_json(record), status_code=200 if record.state.terminal else 202)

    async def process_logs(self, request: Request) -> Response:
        query = request.query_params
        known_only(query, "stream", "offset", "attempt", "follow")
        record = self._lookup(request.path_params["id"])
        self.manager.backend_for(record.spec)  # (a 4xx now, not an empty 200 stream later)
        stream = single(query, "stream") or "stdout"
        if stream not in ("stdout", "stderr"):
            raise ApiError(
                400, "bad_request", f"stream: got {stream!r}, expected 'stdout' or 'stderr'"
            )
        offset = integer(query, "offset", 0, minimum=0, maximum=MAX_LOG_OFFSET)
        current = record.state.attempt
        attempt = integer(query, "attempt", current, minimum=1, maximum=current)
        follow = boolean(query, "follow", False)
        end = None if follow else await self.query.log_end(record, stream, attempt)
        entries = self.query.follow_logs(
            record.id,
            stream=stream,
            attempt=attempt,
            offset=offset,
            follow=follow,
            stopping=self.stopping,
            end=end,
        )
        return ndjson_stream(log_json(entries), f"logs of {record.id}")

    async def event_stream(self, request: Request) -> Response:
        query = request.query_params
        known_only(query, "follow", "since")
        follow = boolean(query, "follow", False)
        since = integer(query, "since", 0, minimum=0, maximum=MAX_SEQ)
        return ndjson_stream(self._events(since, follow), "events")

    async def _events(self, seq: int, follow: bool) -> AsyncIterator[dict[str, Any]]:
        gap = self.events.gap(seq)
        if gap is not None:  # (said, never silent: then everything that is kept)
            yield gap
            seq = 0
        while True:
            changed = self.events.changed
            batch = self.events.since(seq)
            for event in batch:
                seq = event["seq"]
                yield event
            if not follow or self.stopping.is_set():
                return
            if not batch:
                await first_of(changed, self.stopping)

    # -- helpers ---------------------------------------------------------------------------

    def _lookup(self, key: str) -> ProcessRecord:
        """The process that ``key`` (an id or a name from a URL) names; `NoSuchProcess` (404)
        also for a key that no process could have (too long, a NUL byte)."""
        try:
            return self.query.get(key)
        except NoSuchProcess:
            raise
        except ConfigError as exc:
            raise NoSuchProcess(key[:80], f"no process with this id or name ({exc})") from None

    def _remember_terminal(self, record: ProcessRecord, body: bytes) -> None:
        """Keep the JSON of a terminal process (it never changes again: no event leaves a
        terminal phase, and its history is complete), by id (a name may look like another
        process's id: names are resolved by the manager, which prefers ids); not while its
        program's last status is on its way to the store."""
        statuses = self.manager.statuses
        if statuses is None or statuses.latest(record.id) is None:
            self._terminal.put(record.id, body)

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    async def _corra_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CorraError)
        return await self._api_error(request, _corra_error(exc))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        response = _error(exc.status_code, codes.get(exc.status_code, "bad_request"), exc.detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def _client_gone(self, request: Request, exc: Exception) -> Response:
        # Not an error of the service's: nobody is left to answer (499, as nginx logs it).
        logger.info(
            "%s %s: the client went away before its request was in",
            request.method,
            request.url.path,
        )
        return Response(status_code=499)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", f"internal error: {type(exc).__name__}")


@contextlib.asynccontextmanager
async def open_api(runtime: Any, *, token: str) -> AsyncIterator[Api]:
    """The API of ``runtime`` (opened with a state dir), for the duration of the block; its
    transitions are followed from the moment the block is entered. Leaving it ends the
    streams it serves.

    Raises:
        ConfigError: the token is empty, or the runtime has no state dir.
    """
    api = Api(runtime, token=token)
    await trio.to_thread.run_sync(api.events.open)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: api.follow_transitions(task_status=task_status))
            await nursery.start(follow_statuses, api)
            try:
                yield api
            finally:
                api.stop()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(api.events.close)


# -- streams -------------------------------------------------------------------------------
