"""The OpenAPI document of the HTTP API, served at ``/openapi.json``.

Written by hand, next to the handlers it describes (`corra.api._app`); the tests fuzz the
service from it with schemathesis, so a handler that answers outside it fails them.
"""

from __future__ import annotations

from typing import Any

import corra
from corra.actors._lifecycle import PHASES
from corra.actors._process import MAX_LOG_OFFSET
from corra.actors._records import (
    BACKENDS,
    MAX_OUTPUT_LIMIT,
    MAX_SECONDS,
    NAME_PATTERN,
    RESTART_POLICIES,
)
from corra.actors._spec_content import (
    ENV_NAME_PATTERN,
    HIDDEN,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Error"))}


_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "string", "pattern": NAME_PATTERN.pattern}
_TIME = {"type": "number", "description": "seconds since the epoch"}

#: A string without NUL bytes (which no argv, path or variable may hold).
_TEXT = {"type": "string", "pattern": "^[^\\u0000]*$"}
_TEXTS = {"type": "object", "additionalProperties": _TEXT}
_ABSOLUTE = {"type": "string", "pattern": "^/[^\\u0000]*$"}

#: The fields every process has, wherever it runs.
_COMMON = {
    "argv": {
        "type": "array",
        "minItems": 1,
        "items": _TEXT,
        "description": "the program (a non-empty string) and its arguments; never a shell "
        "string: ['sh', '-c', '...'] for one",
    },
    "name": _nullable({**_NAME, "description": "unique; submitting it again is a no-op"}),
    "cwd": _nullable(
        {**_ABSOLUTE, "description": "working directory (default: its own in the state dir)"}
    ),
    "env": {
        **_TEXTS,
        "description": "variables added (names without '='; for backend slurm, names "
        f"matching {ENV_NAME_PATTERN.pattern}); answers show each value as {HIDDEN!r} "
        "unless asked with show_env=true",
    },
    "timeout": _nullable(
        {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": MAX_SECONDS}
    ),
    "restart": {"type": "string", "enum": list(RESTART_POLICIES)},
    "max_attempts": {"type": "integer", "minimum": 1},
    "kill_grace": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
    "memory_limit": _nullable({"type": "integer", "minimum": 1}),
    "pids_limit": _nullable({"type": "integer", "minimum": 1}),
    "output_limit": _nullable(
        {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_OUTPUT_LIMIT,
            "description": "bytes kept of each of stdout and stderr; later output is dropped "
            "(default: the service's, 1 GiB unless --output-limit says otherwise)",
        }
    ),
    "labels": {
        "type": "object",
        "maxProperties": MAX_LABELS,
        "propertyNames": {"maxLength": MAX_LABEL_KEY},
        "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
    },
}

_SLURM_OPTIONS = {
    "type": "object",
    "additionalProperties": {
        "oneOf": [
            {"type": "string"},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "array", "items": {"type": "string"}},
        ]
    },
}

_LOCAL_SPEC = {
    "type": "object",
    "description": "A program on this machine.",
    "required": ["argv"],
    "additionalProperties": False,
    "properties": {**_COMMON, "backend": {"type": "string", "enum": ["local"]}},
    "example": {"argv": ["sh", "-c", "echo hello"], "name": "hello", "labels": {"k": "v"}},
}

_REMOTE_SPEC = {
    "type": "object",
    "description": "A program on a host the service knows (ssh), or a Slurm job there.",
    "required": ["argv", "backend", "host"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "backend": {"type": "string", "enum": [b for b in BACKENDS if b != "local"]},
        "host": {**_NAME, "description": "a host the service was started with"},
        "inputs": {**_TEXTS, "description": "remote path (relative) = absolute local path"},
        "outputs": {"type": "array", "items": _TEXT, "description": "globs to fetch"},
        "outputs_dir": _nullable(_ABSOLUTE),
        "slurm": {**_SLURM_OPTIONS, "description": "#SBATCH options (backend slurm only)"},
    },
}

_SPEC = {
    "description": "What to run, and how: the fields of a job file's [[process]] table.",
    "oneOf": [_ref("LocalSpec"), _ref("RemoteSpec")],
}

#: A spec as the service keeps it (every field, defaults included).
_STORED_SPEC = {
    "type": "object",
    "required": ["argv"],
    "properties": {
        **_COMMON,
        "backend": {"type": "string", "enum": list(BACKENDS)},
        "host": _nullable(_NAME),
        "inputs": _STRINGS,
        "outputs": {"type": "array", "items": {"type": "string"}},
        "outputs_dir": _nullable({"type": "string"}),
        "slurm": _SLURM_OPTIONS,
    },
}

_RESULT = {
    "type": "object",
    "description": "How a run ended, what it cost, what it wrote.",
    "required": ["returncode", "signal", "started_at", "ended_at"],
    "properties": {
        "returncode": _nullable({"type": "integer"}),
        "signal": _nullable({"type": "integer"}),
        "started_at": _nullable(_TIME),
        "ended_at": _nullable(_TIME),
        "utime": {"type": "number"},
        "stime": {"type": "number"},
        "maxrss_kb": _nullable(
            {"type": "integer", "description": "the program's peak resident set; null: unknown"}
        ),
        "stdout_bytes": {"type": "integer"},
        "stderr_bytes": {"type": "integer"},
        "stdout_dropped": {
            "type": "integer",
            "description": "bytes of stdout dropped past the output limit (about)",
        },
        "stderr_dropped": {"type": "integer"},
        "timed_out": {"type": "boolean"},
        "killed": {"type": "boolean"},
        "error": _nullable({"type": "string"}),
    },
}

_PROCESS_FIELDS = {
    "id": {"type": "string"},
    "name": {"type": "string", "description": "its name, else its id"},
    "phase": {"type": "string", "enum": list(PHASES)},
    "attempt": {"type": "integer", "minimum": 1},
    "returncode": _nullable({"type": "integer"}),
    "signal": _nullable({"type": "integer"}),
    "reason": _nullable({"type": "string", "description": "why it failed, paused or died"}),
    "created_at": _TIME,
    "updated_at": _TIME,
    "started_at": _nullable(_TIME),
    "ended_at": _nullable(_TIME),
    "labels": _STRINGS,
    "argv": {"type": "array", "items": {"type": "string"}},
    "result": _nullable(_RESULT),
    "paused_from": _nullable({"type": "string", "enum": [*PHASES, None]}),
    "recorded": _nullable(
        {
            "type": "object",
            "description": "what the program's chaperone recorded, where no runtime watches "
            "the process (a paused one): an exit not yet collected",
            "required": ["state", "collected", "returncode", "signal", "ended_at", "summary"],
            "properties": {
                "state": {"type": "string", "enum": ["running", "exited", "lost", "unknown"]},
                "collected": {"type": "boolean"},
                "returncode": _nullable({"type": "integer"}),
                "signal": _nullable({"type": "integer"}),
                "ended_at": _nullable(_TIME),
                "summary": {"type": "string"},
            },
        }
    ),
}

_PROCESS = {
    "type": "object",
    "required": list(_PROCESS_FIELDS),
    "properties": _PROCESS_FIELDS,
}

_TRANSITION = {
    "type": "object",
    "required": ["at", "event", "source", "target", "attempt", "reason"],
    "properties": {
        "at": _TIME,
        "event": {"type": "string"},
        "source": {"type": "string", "enum": list(PHASES)},
        "target": {"type": "string", "enum": list(PHASES)},
        "attempt": {"type": "integer", "minimum": 1},
        "reason": _nullable({"type": "string"}),
    },
}

_DETAIL = {
    "type": "object",
    "required": [*_PROCESS_FIELDS, "spec", "handle", "history"],
    "properties": {
        **_PROCESS_FIELDS,
        "spec": _STORED_SPEC,
        "handle": _nullable({"type": "object", "description": "the backend's record"}),
        "history": {"type": "array", "items": _ref("Transition")},
    },
}

_LOG_ENTRY = {
    "type": "object",
    "description": "One line of the NDJSON log stream: the text of bytes offset to "
    "next_offset of the attempt's log (whole UTF-8 characters; invalid bytes become U+FFFD).",
    "required": ["attempt", "offset", "next_offset", "time", "stream", "text"],
    "properties": {
        "attempt": {"type": "integer", "minimum": 1},
        "offset": {"type": "integer", "minimum": 0},
        "next_offset": {"type": "integer", "minimum": 0},
        "time": _TIME,
        "stream": {"type": "string", "enum": ["stdout", "stderr"]},
        "text": {"type": "string"},
    },
}

_EVENT = {
    "type": "object",
    "description": "One line of the NDJSON event stream: a process's transition.",
    "required": ["seq", "at", "id", "name", "event", "source", "target", "attempt", "reason"],
    "properties": {
        "seq": {"type": "integer", "minimum": 1, "description": "numbered since start"},
        "at": _TIME,
        "id": {"type": "string"},
        "name": {"type": "string"},
        "event": {"type": "string"},
        "source": {"type": "string", "enum": list(PHASES)},
        "target": {"type": "string", "enum": list(PHASES)},
        "attempt": {"type": "integer", "minimum": 1},
        "reason": _nullable({"type": "string"}),
    },
}

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "a code: not_found, invalid, ..."},
        "message": {"type": "string", "description": "what went wrong, naming the field"},
        "phase": {"type": "string", "enum": list(PHASES), "description": "for a 409"},
    },
}

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
    )
}


def _control(verb: str, summary: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses = {
        "200": {
            "description": f"{verb}: the record",
            "content": _json_content(_ref("Process")),
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
                        "content": _json_content(
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
                        "content": _json_content({"type": "object"}),
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
        "/v1/processes": {
            "post": {
                "summary": "Submit a process (a process with this name already: that one)",
                "operationId": "createProcess",
                "requestBody": {"required": True, "content": _json_content(_ref("ProcessSpec"))},
                "responses": {
                    "201": {
                        "description": "submitted (durable); Location names it",
                        "content": _json_content(_ref("Process")),
                        "links": _LINKS,
                    },
                    "200": {
                        "description": "a process with this name exists: it, unchanged",
                        "content": _json_content(_ref("Process")),
                        "links": _LINKS,
                    },
                    "400": _error("the body is not a JSON document"),
                    "401": _UNAUTHORIZED,
                    "408": _error("the body did not come whole within 60 s"),
                    "409": _error("the name is taken by a process whose record is unreadable"),
                    "413": _error("the body is over 1 MiB"),
                    "422": _error("the spec is not valid (the message names the field)"),
                    "502": _BACKEND,
                    "503": _UNAVAILABLE,
                },
            },
            "get": {
                "summary": "Processes, oldest first, a page at a time",
                "operationId": "listProcesses",
                "parameters": [
                    _query("phase", {"type": "string", "enum": list(PHASES)}, "only this phase"),
                    _query("name", {"type": "string"}, "only the process of this name"),
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
                        "the next_cursor of the previous page",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "a page; next_cursor is null on the last",
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["items", "next_cursor"],
                                "properties": {
                                    "items": {"type": "array", "items": _ref("Process")},
                                    "next_cursor": _nullable({"type": "string"}),
                                },
                            }
                        ),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                },
            },
        },
        "/v1/processes/{id}": {
            "get": {
                "summary": "One process: its record, spec, backend handle and history (the "
                "env's values hidden unless show_env=true)",
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
                        "content": _json_content(_ref("ProcessDetail")),
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/processes/{id}/pause": {
            "post": _control("pause", "Pause between steps (returns once it is paused)")
        },
        "/v1/processes/{id}/resume": {
            "post": _control("resume", "Continue a paused process where it was")
        },
        "/v1/processes/{id}/kill": {
            "post": {
                **_control(
                    "kill",
                    "Kill it: SIGTERM to its group, SIGKILL after kill_grace",
                    {
                        "202": {
                            "description": "wait=false: killing, not dead yet",
                            "content": _json_content(_ref("Process")),
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
                        "content": {"application/x-ndjson": {"schema": _ref("LogEntry")}},
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Transitions as NDJSON: the retained ones after `since`, then (with "
                "follow=true) each as it happens",
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
                        "the seq of the last event seen (numbers start again with each "
                        "service: a seq beyond its last one gets all it retained)",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "one Event per line",
                        "content": {"application/x-ndjson": {"schema": _ref("Event")}},
                    },
                    "400": _BAD_QUERY,
                    "401": _UNAUTHORIZED,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "ProcessSpec": _SPEC,
            "LocalSpec": _LOCAL_SPEC,
            "RemoteSpec": _REMOTE_SPEC,
            "Process": _PROCESS,
            "ProcessDetail": _DETAIL,
            "Result": _RESULT,
            "Transition": _TRANSITION,
            "LogEntry": _LOG_ENTRY,
            "Event": _EVENT,
            "Error": _ERROR,
        },
    },
}
