"""The workflow endpoints of the HTTP API: job definitions, and their runs.

- ``GET /v1/jobs``: the definitions the service knows (``corra serve --jobs FILE``, and the
  ``@corra.workflow`` functions its runtime was given);
- ``POST /v1/jobs/{name}/runs``: a run, ``{"params": {...}, "name": "..."}`` (both optional):
  201 with the new run, 200 with the run that has the name already;
- ``GET /v1/runs`` (``phase``, ``job``, ``cursor``, ``limit``), ``GET /v1/runs/{id}`` (its
  steps with their phases, results and processes);
- ``POST /v1/runs/{id}/pause`` (``steps=true``: its running steps too), ``/resume``
  (``accept=true``: a function's step whose spec differs stands as recorded), ``/kill``.

Errors as the rest of the API's: a bad body or field 422 naming it, an unknown job or run
404.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from corra._errors import ConfigError, NoSuchProcess
from corra.api._requests import (
    ApiError,
    boolean,
    known_only,
    page_params,
    parse_json,
    read_body,
    single,
)
from corra.processes._spec_content import shown_tables
from corra.workflows import WorkflowManager
from corra.workflows._runs import RunRecord


class WorkflowRoutes:
    """The endpoints above, over a runtime's `WorkflowManager`."""

    def __init__(self, runs: WorkflowManager) -> None:
        self.runs = runs

    def routes(self) -> list[Route]:
        return [
            Route("/v1/jobs", self.list_jobs, methods=["GET"]),
            Route("/v1/jobs/{name}/runs", self.create_run, methods=["POST"]),
            Route("/v1/runs", self.list_runs, methods=["GET"]),
            Route("/v1/runs/{id}", self.get_run, methods=["GET"]),
            Route("/v1/runs/{id}/pause", self.pause_run, methods=["POST"]),
            Route("/v1/runs/{id}/resume", self.resume_run, methods=["POST"]),
            Route("/v1/runs/{id}/kill", self.kill_run, methods=["POST"]),
        ]

    def detail(self, run: RunRecord) -> dict[str, Any]:
        return self.runs.query.detail(run, self._process)

    def _process(self, name: str) -> Any:
        try:
            return self.runs.processes.get(name)
        except NoSuchProcess:
            return None

    async def list_jobs(self, request: Request) -> Response:
        known_only(request.query_params)
        return JSONResponse({"jobs": self.runs.job_listing()})

    async def create_run(self, request: Request) -> Response:
        known_only(request.query_params)
        job = request.path_params["name"]
        if job not in self.runs.jobs:
            known = ", ".join(sorted(self.runs.jobs)) or "none (corra serve --jobs FILE)"
            raise ApiError(404, "not_found", f"no job is named {job!r}; known: {known}")
        body = await read_body(request)
        data = parse_json(body) if body.strip() else {}
        if not isinstance(data, dict) or not set(data) <= {"params", "name"}:
            raise ConfigError(
                f'body: got {shown_tables(data)}, expected {{"params": {{...}}, "name": "..."}} '
                "(both optional)"
            )
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"params: got {shown_tables(params)}, expected a table")
        run, created = await self.runs.start(job, params, name=data.get("name"))
        return JSONResponse(
            self.detail(run),
            status_code=201 if created else 200,
            headers={"Location": f"/v1/runs/{run.id}"},
        )

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        known_only(query, "phase", "job", "cursor", "limit")
        cursor, limit = page_params(query)
        runs = self.runs.query.list(
            phase=single(query, "phase"), job=single(query, "job"), after=cursor, limit=limit + 1
        )
        more = len(runs) > limit
        runs = runs[:limit]
        return JSONResponse(
            {
                "runs": [run.json() for run in runs],
                "next_cursor": runs[-1].id if more else None,
            }
        )

    async def get_run(self, request: Request) -> Response:
        known_only(request.query_params)
        return JSONResponse(self.detail(self.runs.get(request.path_params["id"])))

    async def pause_run(self, request: Request) -> Response:
        known_only(request.query_params, "steps")
        steps = boolean(request.query_params, "steps", False)
        run = await self.runs.pause(request.path_params["id"], steps=steps)
        return JSONResponse(self.detail(run))

    async def resume_run(self, request: Request) -> Response:
        known_only(request.query_params, "accept")
        accept = boolean(request.query_params, "accept", False)
        run = await self.runs.resume(request.path_params["id"], accept=accept)
        return JSONResponse(self.detail(run))

    async def kill_run(self, request: Request) -> Response:
        known_only(request.query_params)
        run = await self.runs.kill(request.path_params["id"])
        return JSONResponse(self.detail(run), status_code=200 if run.terminal else 202)
