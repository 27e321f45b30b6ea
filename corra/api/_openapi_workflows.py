"""The OpenAPI paths and schemas of the workflow endpoints (`corra.api._workflows`), merged
into `corra.api._openapi.OPENAPI`."""

from __future__ import annotations

from typing import Any

from corra.api._schemas import json_content, nullable, ref
from corra.workflows._runs import RUN_PHASES

_ANY: dict[str, Any] = {}
"""Any JSON value (a result, a param)."""


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref("Error"))}


_UNAUTHORIZED = _error("no token, or not this service's")
_BAD_QUERY = _error("a query parameter is not valid (the message names it)")
_NO_RUN = _error("no run with this id or name")
_UNAVAILABLE = _error("the store or an actor could not serve it now; try again")

_RUN_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the run's id or name",
    "schema": {"type": "string", "minLength": 1},
}

_STEP = {
    "type": "object",
    "required": ["key", "step", "phase"],
    "properties": {
        "key": {"type": "string", "description": "the step's name; an item's: work[3]"},
        "step": {"type": "string"},
        "phase": {
            "type": "string",
            "enum": [
                "pending",
                "submitted",
                "expanded",
                "finished",
                "failed",
                "killed",
                "skipped",
            ],
        },
        "at": {"type": "number", "description": "when the entry was written (epoch s)"},
        "index": nullable({"type": "integer"}),
        "process": nullable({"type": "string", "description": "its process's name"}),
        "process_id": nullable({"type": "string"}),
        "process_phase": {"type": "string", "description": "while it runs: its process's"},
        "count": nullable({"type": "integer", "description": "a fan-out's items"}),
        "reason": nullable({"type": "string"}),
        "result": _ANY,
        "result_file": nullable({"type": "string"}),
        "digest": nullable({"type": "string", "description": "a function's step: its spec's"}),
        "proposed": nullable(
            {"type": "string", "description": "the other spec's digest that paused the run"}
        ),
    },
}

_RUN = {
    "type": "object",
    "required": ["id", "job", "params", "phase", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "name": nullable({"type": "string"}),
        "job": {"type": "string"},
        "kind": {"type": "string", "enum": ["job", "python"]},
        "params": {"type": "object"},
        "phase": {"type": "string", "enum": list(RUN_PHASES)},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "reason": nullable({"type": "string"}),
        "result": _ANY,
        "paused_steps": {"type": "boolean"},
    },
}

_RUN_DETAIL = {
    "allOf": [
        ref("Run"),
        {
            "type": "object",
            "required": ["steps"],
            "properties": {"steps": {"type": "array", "items": ref("Step")}},
        },
    ]
}

_JOB = {
    "type": "object",
    "required": ["name"],
    "description": "a job's definition, its fields as given; a Python workflow's (kind "
    "python): its function's module and qualname, and its required params",
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "params": {"type": "object"},
        "steps": {"type": "array", "items": {"type": "object"}},
        "kind": {"type": "string", "enum": ["python"]},
        "module": {"type": "string"},
        "qualname": {"type": "string"},
        "required": {"type": "array", "items": {"type": "string"}},
    },
}

SCHEMAS: dict[str, Any] = {"Run": _RUN, "RunDetail": _RUN_DETAIL, "Step": _STEP, "Job": _JOB}


def _detail(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref("RunDetail"))}


def _control(verb: str, summary: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": f"{verb}Run",
        "parameters": [_RUN_ID],
        "responses": {
            "200": _detail(f"{verb}: the run"),
            "400": _BAD_QUERY,
            "401": _UNAUTHORIZED,
            "404": _NO_RUN,
            "503": _UNAVAILABLE,
            **(extra or {}),
        },
    }


PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "get": {
            "summary": "The job definitions runs may be requested of (corra serve --jobs)",
            "operationId": "listJobs",
            "responses": {
                "200": {
                    "description": "the jobs",
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["jobs"],
                            "properties": {"jobs": {"type": "array", "items": ref("Job")}},
                        }
                    ),
                },
                "400": _BAD_QUERY,
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/v1/jobs/{name}/runs": {
        "post": {
            "summary": "Request a run of a job: params over its defaults, and an optional "
            "name (a second request of a name returns its run, 200)",
            "operationId": "createRun",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "description": "the job's name",
                    "schema": {"type": "string", "minLength": 1},
                }
            ],
            "requestBody": {
                "required": False,
                "content": json_content(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"params": {"type": "object"}, "name": {"type": "string"}},
                    }
                ),
            },
            "responses": {
                "201": _detail("the new run"),
                "200": _detail("the run that has this name already"),
                "400": _error("the body is not JSON"),
                "401": _UNAUTHORIZED,
                "404": _error("no job with this name"),
                "408": _error("the body did not come in time"),
                "413": _error("the body is too large"),
                "422": _error("a field is not valid (the message names it)"),
                "503": _UNAVAILABLE,
            },
        }
    },
    "/v1/runs": {
        "get": {
            "summary": "The runs, oldest first, a page at a time",
            "operationId": "listRuns",
            "parameters": [
                {
                    "name": "phase",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": list(RUN_PHASES)},
                },
                {"name": "job", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                },
            ],
            "responses": {
                "200": {
                    "description": "a page; next_cursor is null on the last",
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["runs", "next_cursor"],
                            "properties": {
                                "runs": {"type": "array", "items": ref("Run")},
                                "next_cursor": nullable({"type": "string"}),
                            },
                        }
                    ),
                },
                "400": _BAD_QUERY,
                "401": _UNAUTHORIZED,
                "422": _error("phase is not a run's phase"),
            },
        }
    },
    "/v1/runs/{id}": {
        "get": {
            "summary": "A run and its steps (phases, results, reasons)",
            "operationId": "getRun",
            "parameters": [_RUN_ID],
            "responses": {
                "200": _detail("the run"),
                "400": _BAD_QUERY,
                "401": _UNAUTHORIZED,
                "404": _NO_RUN,
            },
        }
    },
    "/v1/runs/{id}/pause": {
        "post": {
            **_control("pause", "Start no new step (steps=true: pause the running ones too)"),
            "parameters": [
                _RUN_ID,
                {
                    "name": "steps",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                },
            ],
        }
    },
    "/v1/runs/{id}/resume": {
        "post": {
            **_control(
                "resume",
                "Go on with a paused run (accept=true: a function's step whose spec differs "
                "from the recorded one stands as recorded)",
            ),
            "parameters": [
                _RUN_ID,
                {
                    "name": "accept",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                },
            ],
        }
    },
    "/v1/runs/{id}/kill": {
        "post": _control(
            "kill",
            "Kill its running steps; killed once they have ended",
            {"202": _detail("killed, its steps not all ended yet")},
        )
    },
}
