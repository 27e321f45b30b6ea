"""A helper request's fields, validated once, at this edge, and turned into HyperQueue's
job description (one job, one task, ``max_fails`` 1, HyperQueue's default ``crash_limit``).

Validated here because the server dies of some wrong values: a resource amount of 0 or below
makes its thread divide by zero (measured with the wheel 0.27), and the process lives on with
no server in it. Strings HyperQueue parses itself ("2 compact", "all"; "0" it refuses).
"""

from __future__ import annotations

import datetime
from typing import Any

UNAVAILABLE = "unavailable"
REFUSED = "refused"
BAD_REQUEST = "bad_request"
MAX_JOB_ID = 2**32 - 1  # HyperQueue's job ids are u32


class RequestError(Exception):
    """A request that gets an error answer of ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def bad(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, message)


def _string(value: Any, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise bad(f"{field}: expected a string without NUL, got {value!r}")
    return value


def _amount(value: Any, field: str) -> int | float | str:
    """A resource amount: a positive number, or a string HyperQueue parses ("2 compact")."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad(f"{field}: expected a positive number or a string, got {value!r}")
    if isinstance(value, str):
        if not value.strip():
            raise bad(f"{field}: expected a positive number or a string, got {value!r}")
        return value
    if not value > 0 or value != value or value == float("inf"):
        raise bad(f"{field}: expected a positive amount, got {value!r}")
    return value


def job_ids(request: dict[str, Any]) -> list[int]:
    ids = request.get("job_ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_JOB_ID for i in ids
    ):
        raise bad(f"job_ids: expected a list of job ids, got {ids!r}")
    return list(dict.fromkeys(ids))


def job_description(job: Any) -> Any:
    """The JobDescription of a submit's ``job``: one task, ``max_fails`` 1."""
    from hyperqueue.ffi.protocol import JobDescription, ResourceRequest, TaskDescription
    from hyperqueue.output import StdioDef

    if not isinstance(job, dict):
        raise bad(f"job: expected an object, got {job!r}")
    args = job.get("args")
    if not isinstance(args, list) or not args:
        raise bad(f"job.args: expected a non-empty list of strings, got {args!r}")
    argv = [_string(arg, f"job.args[{i}]") for i, arg in enumerate(args)]
    env = job.get("env") or {}
    if not isinstance(env, dict):
        raise bad(f"job.env: expected an object of strings, got {env!r}")
    environment = {_string(k, "job.env"): _string(v, f"job.env.{k}") for k, v in env.items()}
    resources = job.get("resources") or {}
    if not isinstance(resources, dict) or "cpus" in resources:
        raise bad(f"job.resources: expected an object of amounts (not cpus), got {resources!r}")
    amounts = {
        _string(k, "job.resources"): _amount(v, f"job.resources.{k}") for k, v in resources.items()
    }
    min_time = job.get("min_time")
    if min_time is not None:
        if isinstance(min_time, bool) or not isinstance(min_time, int | float) or not min_time >= 0:
            raise bad(f"job.min_time: expected seconds or null, got {min_time!r}")
        min_time = datetime.timedelta(seconds=min(min_time, 1e9))
    stdio = {}
    for stream in ("stdout", "stderr"):
        path = _string(job.get(stream), f"job.{stream}", optional=True)
        stdio[stream] = StdioDef.from_path(path) if path is not None else None
    request = ResourceRequest(
        cpus=_amount(job.get("cpus", 1), "job.cpus"), resources=amounts, min_time=min_time
    )
    task = TaskDescription(
        id=0,
        args=argv,
        cwd=_string(job.get("cwd"), "job.cwd", optional=True),
        stdin=None,
        env=environment,
        dependencies=(),
        task_dir=False,
        priority=0,
        resource_request=(request,),
        crash_limit=None,  # HyperQueue's default
        **stdio,
    )
    name = _string(job.get("name"), "job.name")
    return JobDescription(name=name, tasks=[task], max_fails=1)
