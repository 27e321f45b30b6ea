"""The helper program: HyperQueue's Python client, spoken to in JSON lines.

Run as ``python -m corra.backends.hyperqueue._helper SERVER_DIR``, one per server. It reads one
request a line on stdin and writes one answer a line on stdout, in order, each carrying the
request's ``id`` (docs: design15.md section 3)::

    {"id": 1, "op": "poll", "job_ids": [4, 5]}
    {"id": 1, "ok": {"uid": "k1nGfg", "jobs": {"4": {"state": "finished"}}}}
    {"id": 2, "error": {"kind": "unavailable", "message": "..."}}

Operations: ``hello``, ``submit``, ``poll``, ``failed``, ``forget``. Error kinds:
``unavailable`` (no server at the dir, connection refused or lost, another version),
``refused`` (the server refused the request), ``bad_request`` (the line itself is wrong).
Every answer but ``hello``'s carries the ``uid`` of the server that gave it, so a server
restarted at the same dir (its job ids start again from 1) cannot pass for the old one.

What the wheel (0.27) does, measured:

- ``wait_for_jobs``' callback gets ``{job_id: {"finished", "failed", "total", "completed"}}``
  (counts of tasks, and whether the job is over). It tells waiting from over, not waiting
  from running: a job not over is ``waiting`` here (the task wrapper's claim says running).
  A callback that raises at once makes the wait one request (one write, one read on the
  socket, for 299 ids too); ids the server does not know are missing, not an error.
- A lost connection raises a plain ``Exception("TakoError(...)")``; anything the server
  refuses (a resource string it cannot parse, a forget of a job not over) a
  ``RuntimeError``. After a lost connection the next request connects again.
- A resource amount of 0 or below makes the server's thread divide by zero and the server
  dies (the process lives on): such amounts are refused here, before they reach it.
- Messages carry a Rust stack trace when ``RUST_BACKTRACE`` is set: it is turned off and cut.

Nothing but answers goes to stdout: the real stdout is kept for them and fd 1 is pointed at
stderr, so whatever the Rust library or tqdm print cannot corrupt the protocol.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
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


class _Stop(Exception):
    """Raised by the poll's callback: one status answer is all a poll wants."""


def _message(exc: BaseException) -> str:
    """The exception's message, without the Rust stack trace anyhow appends."""
    text = str(exc).split("\n\nStack backtrace:", 1)[0].strip()
    return text or type(exc).__name__


class Server:
    """The connection to one server, made on first use and again after it was lost."""

    def __init__(self, server_dir: str) -> None:
        self.server_dir = server_dir
        self.uid: str | None = None
        self._connection: Any = None

    def access(self) -> dict[str, Any]:
        """The server's access record (``hq-current/access.json``), or unavailable."""
        path = Path(self.server_dir, "hq-current", "access.json")
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            message = f"no HyperQueue server at {self.server_dir}: {exc}"
            raise RequestError(UNAVAILABLE, message) from exc
        if not isinstance(record, dict):
            raise RequestError(UNAVAILABLE, f"{path}: not an access record")
        return record

    def connection(self) -> Any:
        if self._connection is None:
            from hyperqueue.ffi.client import ClientConnection

            try:
                connection = ClientConnection(self.server_dir)
            except Exception as exc:
                raise RequestError(UNAVAILABLE, _message(exc)) from exc
            # Read after connecting: the uid of the server this connection talks to (a server
            # started at the dir in between would be a new uid with a refused connection).
            self.uid = self.access().get("server_uid")
            self._connection = connection
        return self._connection

    def call(self, request: Callable[[Any], Any]) -> Any:
        """``request(connection)``, its failure classified; a lost connection is dropped."""
        connection = self.connection()
        try:
            return request(connection)
        except _Stop:
            raise
        except RuntimeError as exc:
            raise RequestError(REFUSED, _message(exc)) from exc
        except Exception as exc:
            self._connection = None
            raise RequestError(UNAVAILABLE, f"connection lost: {_message(exc)}") from exc


# -- validation (one place, at this edge: the server dies of some wrong values) --------------


def _bad(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, message)


def _string(value: Any, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise _bad(f"{field}: expected a string without NUL, got {value!r}")
    return value


def _amount(value: Any, field: str) -> int | float | str:
    """A resource amount: a positive number, or a string HyperQueue parses ("2 compact")."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(f"{field}: expected a positive number or a string, got {value!r}")
    if isinstance(value, str):
        if not value.strip():
            raise _bad(f"{field}: expected a positive number or a string, got {value!r}")
        return value
    if not value > 0 or value != value or value == float("inf"):
        raise _bad(f"{field}: expected a positive amount, got {value!r}")
    return value


def _job_ids(request: dict[str, Any]) -> list[int]:
    ids = request.get("job_ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_JOB_ID for i in ids
    ):
        raise _bad(f"job_ids: expected a list of job ids, got {ids!r}")
    return list(dict.fromkeys(ids))


def _job(job: Any) -> Any:
    """The JobDescription of a submit's ``job``: one task, ``max_fails`` 1."""
    from hyperqueue.ffi.protocol import JobDescription, ResourceRequest, TaskDescription
    from hyperqueue.output import StdioDef

    if not isinstance(job, dict):
        raise _bad(f"job: expected an object, got {job!r}")
    args = job.get("args")
    if not isinstance(args, list) or not args:
        raise _bad(f"job.args: expected a non-empty list of strings, got {args!r}")
    argv = [_string(arg, f"job.args[{i}]") for i, arg in enumerate(args)]
    env = job.get("env") or {}
    if not isinstance(env, dict):
        raise _bad(f"job.env: expected an object of strings, got {env!r}")
    environment = {_string(k, "job.env"): _string(v, f"job.env.{k}") for k, v in env.items()}
    resources = job.get("resources") or {}
    if not isinstance(resources, dict) or "cpus" in resources:
        raise _bad(f"job.resources: expected an object of amounts (not cpus), got {resources!r}")
    amounts = {
        _string(k, "job.resources"): _amount(v, f"job.resources.{k}") for k, v in resources.items()
    }
    min_time = job.get("min_time")
    if min_time is not None:
        if (
            isinstance(min_time, bool)
            or not isinstance(min_time, int | float)
            or not 0 <= min_time < 1e9
        ):
            raise _bad(f"job.min_time: expected seconds or null, got {min_time!r}")
        min_time = datetime.timedelta(seconds=min_time)
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


# -- operations ---------------------------------------------------------------------------


def _state(counts: dict[str, Any]) -> str:
    """A one-task job's state from the wait's counts."""
    if not counts.get("completed"):
        return "waiting"  # queued or running: the counts do not tell
    if counts.get("failed"):
        return "failed"
    if counts.get("finished", 0) >= counts.get("total", 1):
        return "finished"
    return "canceled"  # over, neither finished nor failed


def hello(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    server.connection()
    record = server.access()
    return {
        "uid": record.get("server_uid"),
        "version": record.get("version"),
        "server_dir": server.server_dir,
    }


def submit(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    description = _job(request.get("job"))
    job_id = server.call(lambda connection: connection.submit_job(description))
    return {"uid": server.uid, "job_id": int(job_id)}


def poll(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    ids = _job_ids(request)
    seen: list[dict[int, dict[str, Any]]] = []

    def once(jobs: dict[int, dict[str, Any]]) -> None:
        seen.append(jobs)
        raise _Stop

    with contextlib.suppress(_Stop):
        server.call(lambda connection: connection.wait_for_jobs(ids, once))
    if not seen:  # never measured otherwise; an empty answer would read as "all unknown"
        raise RequestError(REFUSED, "the server gave no status for the jobs")
    jobs = {str(job_id): {"state": _state(counts)} for job_id, counts in seen[0].items()}
    return {"uid": server.uid, "jobs": jobs}


def failed(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    ids = _job_ids(request)
    found = server.call(lambda connection: connection.get_failed_tasks(ids))
    tasks = {
        str(job_id): next(iter(by_task.values())).error
        for job_id, by_task in found.items()
        if by_task
    }
    return {"uid": server.uid, "tasks": tasks}


def forget(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    """Forget the jobs that are over; others (unknown, or not over) are left as they are."""
    forgotten = []
    for job_id in _job_ids(request):
        try:
            server.call(lambda connection, job_id=job_id: connection.forget_job(job_id))
        except RequestError as exc:
            if exc.kind != REFUSED:  # "Cannot forget job N": not over, or not known
                raise
        else:
            forgotten.append(job_id)
    return {"uid": server.uid, "forgotten": forgotten}


OPERATIONS: dict[str, Callable[[Server, dict[str, Any]], dict[str, Any]]] = {
    "hello": hello,
    "submit": submit,
    "poll": poll,
    "failed": failed,
    "forget": forget,
}


def answer(server: Server, line: bytes) -> dict[str, Any]:
    """The answer to one request line; never raises (but for the interpreter's own exits)."""
    request_id = None
    try:
        try:
            request = json.loads(line)
        except ValueError as exc:
            raise _bad(f"not a JSON line: {exc}") from exc
        if not isinstance(request, dict):
            raise _bad("a request is a JSON object")
        request_id = request.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            request_id = None
            raise _bad("id: expected an integer")
        operation = OPERATIONS.get(request.get("op"))  # type: ignore[arg-type]
        if operation is None:
            raise _bad(f"op: expected one of {sorted(OPERATIONS)}, got {request.get('op')!r}")
        return {"id": request_id, "ok": operation(server, request)}
    except RequestError as exc:
        return {"id": request_id, "error": {"kind": exc.kind, "message": exc.message}}
    except Exception as exc:  # a bug here must not end the helper: the request is refused
        return {
            "id": request_id,
            "error": {"kind": REFUSED, "message": f"{type(exc).__name__}: {exc}"},
        }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m corra.backends.hyperqueue._helper SERVER_DIR", file=sys.stderr)
        return 2
    # Backtraces cost time and only clutter messages; read by the Rust side when it errs.
    os.environ["RUST_BACKTRACE"] = "0"
    os.environ["RUST_LIB_BACKTRACE"] = "0"
    # corra ends the helper by closing its stdin; a ^C meant for corra is not for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    server = Server(args[0])
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        answers.write(json.dumps(answer(server, line), separators=(",", ":")) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
