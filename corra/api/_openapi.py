"""The OpenAPI document of the HTTP API, served at ``/openapi.json``.

Written by hand, next to the handlers it describes (`corra.api._app`); the tests fuzz the
service from it with schemathesis, so a handler that answers outside it fails them.
"""

from __future__ import annotations

from typing import Any

import corra
from corra.api import _openapi_workflows as _workflows
from corra.api._limits import MAX_BATCH
from corra.api._schemas import SCHEMAS, json_content, nullable, ref
from corra.processes._lifecycle import PHASES
from corra.processes._manager import MAX_LOG_OFFSET
from corra.processes._spec_content import HIDDEN

_SIDES = {"after": "at or after", "before": "before"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref("Error"))}


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the process's id or name",
    "schema": {"type": "string", "minLength": 1},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _page_of(schema: str) -> dict[str, Any]:
    """The answer of a paged read: ``{"items": [...], "next_cursor": ...}``."""
    return {
        "description": "a page; next_cursor is null on the last",
        "content": json_content(
            {
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {"type": "array", "items": ref(schema)},
                    "next_cursor": nullable({"type": "string"}),
                },
            }
        ),
    }


_BAD_QUERY = _error("a query parameter is not valid (the message names it)")
_UNAUTHORIZED = _error("no token, or not this service's")
_NOT_FOUND = _error("no process with this id or name")
_CONFLICT = _error("the process's phase does not allow it (`phase` says which it is in)")
_UNAVAILABLE = _error("the store or an actor could not serve it now; try again")
_BACKEND = _error("where the program runs failed (a host did not answer ...)")


#: What a client can do next with the process an answer names (OpenAPI links).
_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
    for name, operation in (
        ("GetProcess", "getProcess"),
        ("PauseProcess", "pauseProcess"),
        ("ResumeProcess", "resumeProcess"),
        ("KillProcess", "killProcess"),
        ("ProcessLogs", "processLogs"),
        ("ProcessHistory", "processHistory"),
    )
}


def _control(verb: str, summary: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses = {
        "200": {
            "description": f"{verb}: the record",
            "content": json_content(ref("Process")),
            "links": _LINKS,
        },
        "400": _BAD_QUERY,
        "401": _UNAUTHORIZED,
        "404": _NOT_FOUND,
        "409": _CONFLICT,
        "502": _BACKEND,
        "503": _UNAVAILABLE,
    }
    responses.update(extra or {})
    return {
        "summary": summary,
        "operationId": f"{verb}Process",
        "parameters": [_ID],
        "responses": responses,
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "corra",
        "version": corra.__version__,
        "description": "Run programs and keep them running. Every operation but /v1/health "
        "wants `Authorization: Bearer TOKEN` (the token is in the state dir's api-token).",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/health": {
            "get": {
                "summary": "Whether the service answers (no token needed)",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {
                        "description": "it does",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["status", "version"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["ok"]},
                                    "version": {"type": "string"},
                                },
                            }
                        ),
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "the OpenAPI document",
                        "content": json_content({"type": "object"}),
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "The runtime in Prometheus text (names prefixed corra_)",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/backends": {
            "get": {
                "summary": "The installed backends: capabilities and options (as `corra "
                "backends --json`)",
                "operationId": "backends",
                "responses": {
                    "200": {
                        "description": "every installed backend, by name",
                        "content": json_content({"type": "array", "items": ref("Backend")}),
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/processes": {
            "post": {
                "summary": "Submit a process (a process with this name already: that one)",
                "operationId": "createProcess",
                "requestBody": {"required": True, "content": json_content(ref("ProcessSpec"))},
                "responses": {
                    "201": {
                        "description": "submitted (durable); Location names it",
                        "content": json_content(ref("Process")),
                        "links": _LINKS,
                    },
                    "200": {
                        "description": "a process with this name exists: it, unchanged",
                        "content": json_content(ref("Process")),
                        "links": _LINKS,
                    },
                    "400": _error("the body is not a JSON document"),
                    "401": _UNAUTHORIZED,
                    "408": _error("the body did not come whole within 60 s"),
                    "409": _error(
                        "a process has the name with another spec (spec_changed: `fields` "
                        "names the fields that differ), or the name is taken by a process "
                        "whose record is unreadable (name_taken)"
                    ),
                    "413": _error("the body is over 1 MiB"),
                    "422": _error("the spec is not valid (the message names the field)"),
                    "502": _BACKEND,
                    "503": _UNAVAILABLE,
                },
            },
            "get": {
                "summary": "Processes, a page at a time: oldest first (by name with a name "
                "prefix or glob); only the page's records are read",
                "operationId": "listProcesses",
                "parameters": [
                    {
                        **_query(
                            "phase",
                            {"type": "array", "items": {"type": "string", "enum": list(PHASES)}},
                            "only processes in this phase (repeat: in any of them)",
                        ),
                        "style": "form",
                        "explode": True,
                    },
                    _query(
                        "name",
                        {"type": "string"},
                        "only processes whose name starts with this, or, if it holds *, ? or "
                        "[...], whose whole name matches it as a glob: train-*-7, job?, "
                        "run[0-3] (listed by name)",
                    ),
                    {
                        **_query(
                            "label",
                            {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
                            "only processes with this label, KEY=VALUE (repeat: all of them)",
                        ),
                        "style": "form",
                        "explode": True,
                    },
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        "items per page",
                    ),
                    _query(
                        "cursor",
                        {"type": "string"},
                        "the next_cursor of the previous page (with the same filters)",
                    ),
                    *(
                        _query(
                            f"{what}_{side}",
                            {"type": "number", "minimum": 0},
                            f"only processes {what} {_SIDES[side]} this time (epoch seconds)"
                            + (": terminal ones, listed by their end" if what == "ended" else ""),
                        )
                        for what in ("created", "ended")
                        for side in ("after", "before")
                    ),
                ],
                "responses": {
                    "200": _page_of("Process"),
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                },
            },
        },
        "/v1/processes:batch": {
            "post": {
                "summary": f"Submit up to {MAX_BATCH} processes at once, in order (each of a "
                "name that exists already: that one)",
                "operationId": "createProcesses",
                "requestBody": {"required": True, "content": json_content(ref("ProcessBatch"))},
                "responses": {
                    "200": {
                        "description": "every spec was checked, then each submitted (durable)",
                        "content": json_content(ref("Submitted")),
                    },
                    "400": _error("the body is not a JSON document"),
                    "401": _UNAUTHORIZED,
                    "408": _error("the body did not come whole within 60 s"),
                    "409": _error("a name is taken by a process whose record is unreadable"),
                    "413": _error("the body is over 1 MiB"),
                    "422": _error(
                        "a spec is not valid, or two have one name (the message names each, "
                        "as processes[INDEX].FIELD); nothing was submitted"
                    ),
                    "502": _BACKEND,
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/v1/processes:counts": {
            "get": {
                "summary": "How many processes there are in each phase (kept by the store: "
                "no scan)",
                "operationId": "countProcesses",
                "responses": {
                    "200": {
                        "description": "every phase, zeros too",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["phases"],
                                "properties": {
                                    "phases": {
                                        "type": "object",
                                        "required": list(PHASES),
                                        "properties": {
                                            phase: {"type": "integer", "minimum": 0}
                                            for phase in PHASES
                                        },
                                        "additionalProperties": False,
                                    }
                                },
                            }
                        ),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/processes:prune": {
            "post": {
                "summary": "Remove every terminal process that ended before ended_before, and "
                "every one but the keep that ended last (give one or both), as DELETE does, in "
                "bounded batches (corra prune, corra serve --retain-finished/--retain-count)",
                "operationId": "pruneProcesses",
                "parameters": [
                    {
                        "name": "ended_before",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0},
                        "description": "epoch seconds",
                    },
                    {
                        "name": "keep",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "how many of the terminal processes that ended last to keep",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "how many it removed",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["removed"],
                                "properties": {"removed": {"type": "integer", "minimum": 0}},
                            }
                        ),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/v1/processes/{id}": {
            "get": {
                "summary": "One process: its record, spec, backend handle, its backend's note "
                "on where its program is, and its history (the env's values hidden unless "
                "show_env=true)",
                "operationId": "getProcess",
                "parameters": [
                    _ID,
                    _query(
                        "show_env",
                        {"type": "boolean", "default": False},
                        f"show the values of the spec's env (else each is {HIDDEN!r})",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the process",
                        "content": json_content(ref("ProcessDetail")),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Remove a terminal process completely: record, history, name, run "
                "dirs and logs (here and brought home from its host); 409 while it is active, "
                "unless kill=true",
                "operationId": "deleteProcess",
                "parameters": [
                    _ID,
                    _query(
                        "kill",
                        {"type": "boolean", "default": False},
                        "kill an active process first (else it is refused with 409)",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "removed: its last record",
                        "content": json_content(ref("Process")),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _CONFLICT,
                    "502": _BACKEND,
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/v1/processes/{id}/pause": {
            "post": _control("pause", "Pause between steps (returns once it is paused)")
        },
        "/v1/processes/{id}/resume": {
            "post": _control("resume", "Continue a paused process where it was")
        },
        "/v1/processes/{id}/rerun": {
            "post": _control(
                "rerun",
                "Start a terminal process again as a new attempt, keeping its history (409 "
                "while it is not terminal, naming its phase)",
            )
        },
        "/v1/processes/{id}/kill": {
            "post": {
                **_control(
                    "kill",
                    "Kill it: SIGTERM to its group, SIGKILL after kill_grace",
                    {
                        "202": {
                            "description": "wait=false: killing, not dead yet",
                            "content": json_content(ref("Process")),
                        }
                    },
                ),
                "parameters": [
                    _ID,
                    _query(
                        "wait",
                        {"type": "boolean", "default": True},
                        "answer once it is dead (else at once, 202)",
                    ),
                ],
            }
        },
        "/v1/processes/{id}/logs": {
            "get": {
                "summary": "Its output as NDJSON entries, from a byte offset; follow=true "
                "streams until it is terminal and its log is drained",
                "operationId": "processLogs",
                "parameters": [
                    _ID,
                    _query(
                        "stream",
                        {"type": "string", "enum": ["stdout", "stderr"], "default": "stdout"},
                        "which output",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": MAX_LOG_OFFSET, "default": 0},
                        "the byte to start at (an entry's next_offset, to resume)",
                    ),
                    _query(
                        "attempt",
                        {"type": "integer", "minimum": 1},
                        "whose log (default: the current attempt); pass it with offset",
                    ),
                    _query(
                        "follow",
                        {"type": "boolean", "default": False},
                        "keep streaming new output, through later attempts, until terminal",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "one LogEntry per line",
                        "content": {"application/x-ndjson": {"schema": ref("LogEntry")}},
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/processes/{id}/history": {
            "get": {
                "summary": "Its transitions, oldest first, a page at a time (only the page's "
                "entries are read, however long the history)",
                "operationId": "processHistory",
                "parameters": [
                    _ID,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        "items per page",
                    ),
                    _query("cursor", {"type": "string"}, "the next_cursor of the previous page"),
                ],
                "responses": {
                    "200": _page_of("Transition"),
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/processes/{id}/value": {
            "get": {
                "summary": "The JSON value its program wrote to $CORRA_RESULT, as it wrote it, "
                "wherever the service keeps it (a value over 64 KiB is in a file of the "
                "state dir: its record has value_file instead)",
                "operationId": "processValue",
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": "the value (any JSON value, null too)",
                        "content": {"application/json": {"schema": {"nullable": True}}},
                    },
                    "401": _UNAUTHORIZED,
                    "404": _error(
                        "no such process (not_found), or it has no value (no_value: no "
                        "result yet, none written, or refused, as the message says)"
                    ),
                    "410": _error("its value's file is gone (value_gone)"),
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Transitions and status updates as NDJSON: the retained ones after "
                "`since`, then (with follow=true) each as it happens",
                "operationId": "events",
                "parameters": [
                    _query(
                        "follow",
                        {"type": "boolean", "default": False},
                        "keep streaming until the service stops",
                    ),
                    _query(
                        "since",
                        {"type": "integer", "minimum": 0, "maximum": MAX_LOG_OFFSET, "default": 0},
                        "the seq of the last event seen (numbers are never given twice in "
                        "a state dir; one the service cannot continue from without a gap "
                        "is answered with an EventGap line first)",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "one Event per line (an EventGap first, if events "
                        "after `since` are not kept)",
                        "content": {
                            "application/x-ndjson": {
                                "schema": {"oneOf": [ref("Event"), ref("EventGap")]}
                            }
                        },
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        **_workflows.PATHS,
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {**SCHEMAS, **_workflows.SCHEMAS},
    },
}
