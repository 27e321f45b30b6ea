"""The schemas of the HTTP API's OpenAPI document (`corra.api._openapi`): what a process,
its spec, result, history, log entries, events and errors look like on the wire.

The bounds stated here are the ones the edge enforces (`corra.processes._spec`,
`corra.processes._spec_content`); schemathesis fuzzes the service from them. A spec's
properties follow the fields of `ProcessSpec` (`SPEC_FIELDS`: a field without a schema here
fails at import), its backends and their options tables the installed plug-ins.
"""

from __future__ import annotations

import typing
from typing import Any

import attrs

from corra.api._limits import MAX_BATCH
from corra.processes._backend import BackendPlugin
from corra.processes._convert import SPEC_FIELDS
from corra.processes._lifecycle import PHASES
from corra.processes._registry import installed
from corra.processes._spec import MAX_OUTPUT_LIMIT, MAX_SECONDS, NAME_PATTERN, RESTART_POLICIES
from corra.processes._spec_content import (
    ENV_NAME_PATTERN,
    HIDDEN,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
)


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


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
    "name": nullable({**_NAME, "description": "unique; submitting it again is a no-op"}),
    "cwd": nullable(
        {**_ABSOLUTE, "description": "working directory (default: its own in the state dir)"}
    ),
    "env": {
        **_TEXTS,
        "description": "variables added (names without '='; for backend slurm, names "
        f"matching {ENV_NAME_PATTERN.pattern}); answers show each value as {HIDDEN!r} "
        "unless asked with show_env=true",
    },
    "timeout": nullable(
        {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": MAX_SECONDS}
    ),
    "restart": {"type": "string", "enum": list(RESTART_POLICIES)},
    "max_attempts": {"type": "integer", "minimum": 1},
    "kill_grace": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
    "memory_limit": nullable({"type": "integer", "minimum": 1}),
    "pids_limit": nullable({"type": "integer", "minimum": 1}),
    "output_limit": nullable(
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

#: Where a program runs, and what it stages: the fields a backend's capabilities allow.
_PLACEMENT = {
    "host": {**_NAME, "description": "a host the service was started with"},
    "inputs": {**_TEXTS, "description": "remote path (relative) = absolute local path"},
    "outputs": {"type": "array", "items": _TEXT, "description": "globs to fetch"},
    "outputs_dir": nullable(_ABSOLUTE),
}
#: The same, as the service keeps them (every field, defaults included).
_STORED_PLACEMENT = {
    "host": nullable(_NAME),
    "inputs": _STRINGS,
    "outputs": {"type": "array", "items": {"type": "string"}},
    "outputs_dir": nullable({"type": "string"}),
}

_OPTION_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _option_schema(annotation: Any) -> dict[str, Any]:
    """The schema of one field of a backend's options class, from its type."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(arguments) == 1 and len(typing.get_args(annotation)) == 2:  # X | None
        return nullable(_option_schema(arguments[0]))
    if typing.get_origin(annotation) is tuple:
        return {"type": "array", "items": _option_schema(arguments[0])}
    return {"type": _OPTION_TYPES[annotation]} if annotation in _OPTION_TYPES else {}


def _options_schema(plugin: BackendPlugin) -> dict[str, Any]:
    """A backend's ``<name> = { ... }`` table, from the fields of its options class."""
    fields = attrs.fields(attrs.resolve_types(plugin.options))  # type: ignore[arg-type]
    return {
        "type": "object",
        "additionalProperties": False,
        "description": f"the options of backend {plugin.name} (backend {plugin.name} only)",
        "properties": {field.name: _option_schema(field.type) for field in fields},
    }


def _spec_properties(plugins: list[BackendPlugin], *, stored: bool) -> dict[str, Any]:
    """The properties of a spec run by one of ``plugins``, field by field in the order of
    `ProcessSpec` (`SPEC_FIELDS`), then their options tables."""
    capabilities = [plugin.capabilities for plugin in plugins]
    allowed = {
        "host": any(c.hosts for c in capabilities),
        **dict.fromkeys(("inputs", "outputs", "outputs_dir"), any(c.staging for c in capabilities)),
    }
    fields = {
        **_COMMON,
        "backend": {"type": "string", "enum": [plugin.name for plugin in plugins]},
        **(_STORED_PLACEMENT if stored else _PLACEMENT),
    }
    properties = {name: fields[name] for name in SPEC_FIELDS if stored or allowed.get(name, True)}
    for plugin in plugins:
        if plugin.options is not None:
            properties[plugin.name] = _options_schema(plugin)
    return properties


_PLUGINS = list(installed.plugins.values())
_LOCAL_PLUGINS = [plugin for plugin in _PLUGINS if not plugin.capabilities.hosts]
_REMOTE_PLUGINS = [plugin for plugin in _PLUGINS if plugin.capabilities.hosts]

_LOCAL_SPEC = {
    "type": "object",
    "description": "A program on this machine.",
    "required": ["argv"],
    "additionalProperties": False,
    "properties": _spec_properties(_LOCAL_PLUGINS, stored=False),
    "example": {"argv": ["sh", "-c", "echo hello"], "name": "hello", "labels": {"k": "v"}},
}

_REMOTE_SPEC = {
    "type": "object",
    "description": "A program on a host the service knows (ssh), or a Slurm job there.",
    "required": ["argv", "backend", "host"],
    "additionalProperties": False,
    "properties": _spec_properties(_REMOTE_PLUGINS, stored=False),
}

_SPEC = {
    "description": "What to run, and how: the fields of a job file's [[process]] table.",
    "oneOf": [ref("LocalSpec"), ref("RemoteSpec")],
}

#: A spec as the service keeps it (every field, defaults included).
_STORED_SPEC = {
    "type": "object",
    "required": ["argv"],
    "properties": _spec_properties(_PLUGINS, stored=True),
}

_RESULT = {
    "type": "object",
    "description": "How a run ended, what it cost, what it wrote.",
    "required": ["returncode", "signal", "started_at", "ended_at"],
    "properties": {
        "returncode": nullable({"type": "integer"}),
        "signal": nullable({"type": "integer"}),
        "started_at": nullable(_TIME),
        "ended_at": nullable(_TIME),
        "utime": {"type": "number"},
        "stime": {"type": "number"},
        "maxrss_kb": nullable(
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
        "error": nullable({"type": "string"}),
        "value": nullable(
            {
                "description": "the JSON value the program wrote to $CORRA_RESULT (any JSON "
                "value; null also when it wrote none, or when it is kept in value_file: "
                "has_value tells these apart)"
            }
        ),
        "has_value": {
            "type": "boolean",
            "description": "the program wrote a value and it was taken (in value, or in "
            "value_file)",
        },
        "value_file": nullable(
            {
                "type": "string",
                "description": "where a value of more than 64 KiB (JSON) is kept, on the "
                "service's machine (up to 16 MiB)",
            }
        ),
        "value_error": nullable(
            {
                "type": "string",
                "description": "why the value written was refused (not JSON, too large); the "
                "exit still decides how the process ended",
            }
        ),
    },
}

_STATUS = {
    "type": "object",
    "description": "what the program said last of how far it is: the newest JSON line it "
    "appended to $CORRA_STATUS that was not refused (coalesced: only the latest is kept; "
    "an ended attempt keeps its last one, a rerun starts with none)",
    "required": ["value", "error", "attempt", "at"],
    "properties": {
        "value": nullable(
            {
                "type": "object",
                "description": "the line as written; progress (0 to 1) and message are "
                "checked, other keys kept",
                "properties": {
                    "progress": {"type": "number", "minimum": 0, "maximum": 1},
                    "message": {"type": "string"},
                },
                "examples": [{"progress": 0.4, "message": "step 4 of 10"}],
            }
        ),
        "error": nullable(
            {
                "type": "string",
                "description": "why a line newer than value was refused (not a JSON object, "
                "longer than 4096 bytes, a progress not in [0, 1], a message not a string)",
            }
        ),
        "attempt": {"type": "integer", "minimum": 1},
        "at": {"type": "number", "description": "when corra saw it (epoch seconds)"},
    },
}

_PROCESS_FIELDS = {
    "id": {"type": "string"},
    "name": {"type": "string", "description": "its name, else its id"},
    "phase": {"type": "string", "enum": list(PHASES)},
    "attempt": {"type": "integer", "minimum": 1},
    "returncode": nullable({"type": "integer"}),
    "signal": nullable({"type": "integer"}),
    "reason": nullable({"type": "string", "description": "why it failed, paused or died"}),
    "created_at": _TIME,
    "updated_at": _TIME,
    "started_at": nullable(_TIME),
    "ended_at": nullable(_TIME),
    "labels": _STRINGS,
    "argv": {"type": "array", "items": {"type": "string"}},
    "result": nullable(_RESULT),
    "paused_from": nullable({"type": "string", "enum": [*PHASES, None]}),
    "recorded": nullable(
        {
            "type": "object",
            "description": "what the program's chaperone recorded, where no runtime watches "
            "the process (a paused one): an exit not yet collected",
            "required": ["state", "collected", "returncode", "signal", "ended_at", "summary"],
            "properties": {
                "state": {"type": "string", "enum": ["running", "exited", "lost", "unknown"]},
                "collected": {"type": "boolean"},
                "returncode": nullable({"type": "integer"}),
                "signal": nullable({"type": "integer"}),
                "ended_at": nullable(_TIME),
                "summary": {"type": "string"},
            },
        }
    ),
    "status": nullable(_STATUS),
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
        "reason": nullable({"type": "string"}),
        "result": {
            **_RESULT,
            "description": "a rerun's: the result of the attempt before, which it cleared",
        },
    },
}

_NOTE = {
    "type": "object",
    "description": "what the backend says of where the current attempt's program is (a job "
    "pending for resources, a pod the scheduler cannot place), while it is launching or "
    "running; never in the history",
    "required": ["text", "attempt", "at"],
    "properties": {
        "text": {"type": "string", "examples": ["pending: Resources"]},
        "attempt": {"type": "integer", "minimum": 1},
        "at": {"type": "number", "description": "when the backend said it (epoch seconds)"},
    },
}

_DETAIL = {
    "type": "object",
    "required": [*_PROCESS_FIELDS, "spec", "handle", "note", "history"],
    "properties": {
        **_PROCESS_FIELDS,
        "spec": _STORED_SPEC,
        "handle": nullable({"type": "object", "description": "the backend's record"}),
        "note": nullable(_NOTE),
        "history": {"type": "array", "items": ref("Transition")},
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

_EVENT_GAP = {
    "type": "object",
    "description": "The first line of a stream whose `since` the service cannot continue "
    "from without a gap (events after it are not kept: the service restarted, or more than "
    "it keeps happened since); everything it keeps follows.",
    "required": ["gap", "since", "next_seq", "reason"],
    "properties": {
        "gap": {"type": "boolean", "enum": [True]},
        "since": {"type": "integer"},
        "next_seq": {"type": "integer", "description": "the number of the next line's event"},
        "reason": {"type": "string"},
    },
}

_EVENT = {
    "type": "object",
    "description": "One line of the NDJSON event stream: a process's transition, or (event "
    "`status`, source and target its phase) its program's new status, at most one per "
    "process per second.",
    "required": ["seq", "at", "id", "name", "event", "source", "target", "attempt", "reason"],
    "properties": {
        "seq": {
            "type": "integer",
            "minimum": 1,
            "description": "never given twice in one state dir, across services",
        },
        "at": _TIME,
        "id": {"type": "string"},
        "name": {"type": "string"},
        "event": {"type": "string"},
        "source": {"type": "string", "enum": list(PHASES)},
        "target": {"type": "string", "enum": list(PHASES)},
        "attempt": {"type": "integer", "minimum": 1},
        "reason": nullable({"type": "string"}),
        "status": _STATUS,
    },
}

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "a code: not_found, invalid, ..."},
        "message": {"type": "string", "description": "what went wrong, naming the field"},
        "phase": {"type": "string", "enum": list(PHASES), "description": "for a 409"},
        "fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "spec_changed: the fields in which the spec differs from the process's",
        },
        "id": {"type": "string", "description": "spec_changed: the process that has the name"},
    },
}

_BACKEND_FIELD = {
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string", "description": "as the plug-in's attrs class annotates it"},
        "default": {"description": "absent: the field must be given"},
        "doc": {"type": "string"},
    },
}

_BACKEND = {
    "type": "object",
    "description": "an installed backend (a plug-in under the corra.backends entry points)",
    "required": ["name", "description", "capabilities", "options", "host_options"],
    "properties": {
        "name": {"type": "string", "description": "the spec's `backend`"},
        "description": {"type": "string"},
        "capabilities": {
            "type": "object",
            "description": "what of the optional part of the backend protocol it implements",
            "additionalProperties": {"type": "boolean"},
        },
        "options": {
            "type": "array",
            "description": "the fields of a process's `<name> = {...}` table",
            "items": ref("BackendField"),
        },
        "host_options": {
            "type": "array",
            "description": "the fields of a host's `[hosts.NAME.<name>]` table",
            "items": ref("BackendField"),
        },
    },
}


_BATCH = {
    "type": "object",
    "required": ["processes"],
    "additionalProperties": False,
    "properties": {
        "processes": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH,
            "items": ref("ProcessSpec"),
        }
    },
}

_SUBMITTED = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "description": "one per spec, in order: its process, and whether it was created",
            "items": {
                "type": "object",
                "required": [*_PROCESS_FIELDS, "created"],
                "properties": {
                    **_PROCESS_FIELDS,
                    "created": {
                        "type": "boolean",
                        "description": "false: a process of this name existed (it is that one)",
                    },
                },
            },
        }
    },
}


#: The document's ``components.schemas``.
SCHEMAS: dict[str, Any] = {
    "ProcessBatch": _BATCH,
    "Submitted": _SUBMITTED,
    "ProcessSpec": _SPEC,
    "LocalSpec": _LOCAL_SPEC,
    "RemoteSpec": _REMOTE_SPEC,
    "Process": _PROCESS,
    "ProcessDetail": _DETAIL,
    "Note": _NOTE,
    "Status": _STATUS,
    "Result": _RESULT,
    "Transition": _TRANSITION,
    "LogEntry": _LOG_ENTRY,
    "Event": _EVENT,
    "EventGap": _EVENT_GAP,
    "Error": _ERROR,
    "Backend": _BACKEND,
    "BackendField": _BACKEND_FIELD,
}
