"""The helper program: HyperQueue's Python client, spoken to in JSON lines.

Run as ``python -m corra.backends.hyperqueue._helper SERVER_DIR``, one per server. It reads one
request a line on stdin and writes one answer a line on stdout, in order, each carrying the
request's ``id``::

    {"id": 1, "op": "poll", "job_ids": [4, 5]}
    {"id": 1, "ok": {"uid": "k1nGfg", "jobs": {"4": {"state": "finished"}}}}
    {"id": 2, "error": {"kind": "unavailable", "message": "..."}}

Operations: ``hello``, ``submit``, ``poll``, ``failed``, ``forget``. Error kinds:
``unavailable`` (no server at the dir, connection refused or lost, another version),
``refused`` (the server refused the request), ``bad_request`` (the line itself is wrong).
Every answer carries the ``uid`` of the server that gave it, so a server started again at
the same dir (its job ids start again from 1) cannot pass for the old one.

What the wheel (0.27) does, measured:

- ``wait_for_jobs``' callback gets ``{job_id: {"finished", "failed", "total", "completed"}}``
  (counts of tasks, and whether the job is over). It tells waiting from over, not waiting
  from running: a job not over is ``waiting`` here (the task wrapper's claim says running).
  A callback that raises at once makes the wait one request (one write, one read on the
  socket, for 299 ids too); ids the server does not know are missing, not an error.
- A lost connection raises a plain ``Exception("TakoError(...)")``; anything the server
  refuses (a resource string it cannot parse, a forget of a job not over) a
  ``RuntimeError``. After a lost connection the next request connects again.
- A resource amount of 0 or below kills the server: `_requests` refuses such requests.
- Messages carry a Rust stack trace when ``RUST_BACKTRACE`` is set: it is turned off and cut.

Nothing but answers goes to stdout: the real stdout is kept for them and fd 1 is pointed at
stderr, so whatever the Rust library or tqdm print cannot corrupt the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corra.backends.hyperqueue._requests import (
    REFUSED,
    UNAVAILABLE,
    RequestError,
    bad,
    job_description,
    job_ids,
)


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
            try:
                from hyperqueue.ffi.client import ClientConnection
            except ImportError as exc:
                message = f"{sys.executable} has no hyperqueue: pip install 'corra[hyperqueue]'"
                raise RequestError(REFUSED, f"{message} ({exc})") from exc
            before = self._uid()
            try:
                connection = ClientConnection(self.server_dir)
            except Exception as exc:
                raise RequestError(UNAVAILABLE, _message(exc)) from exc
            # The uid of the server connected to: the access record read before and after
            # connecting names the same server, or one started at the dir in between.
            if self._uid() != before:
                raise RequestError(UNAVAILABLE, "a server started at the dir while connecting")
            self.uid, self._connection = before, connection
        return self._connection

    def _uid(self) -> str | None:
        try:
            return self.access().get("server_uid")
        except RequestError:
            return None

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
    description = job_description(request.get("job"))
    job_id = server.call(lambda connection: connection.submit_job(description))
    return {"uid": server.uid, "job_id": int(job_id)}


def poll(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    ids = job_ids(request)
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
    ids = job_ids(request)
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
    for job_id in job_ids(request):
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
            raise bad(f"not a JSON line: {exc}") from exc
        if not isinstance(request, dict):
            raise bad("a request is a JSON object")
        request_id = request.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            request_id = None
            raise bad("id: expected an integer")
        operation = OPERATIONS.get(request.get("op"))  # type: ignore[arg-type]
        if operation is None:
            raise bad(f"op: expected one of {sorted(OPERATIONS)}, got {request.get('op')!r}")
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
