"""Processes as JSON: what ``corra ps --json`` and ``corra show --json`` print, and what the
HTTP API returns. One place, so that the command line and the API never disagree.

Imports nothing heavier than attrs: the command line uses it on every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from corra.processes._backend import handle_data
from corra.processes._convert import unstructure_spec
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec_content import hide_env

if TYPE_CHECKING:
    from corra.processes._notes import Note
    from corra.processes._query import ProcessView
    from corra.processes._statuses import ProgramStatus


def record_json(
    record: ProcessRecord,
    recorded: dict[str, Any] | None = None,
    status: ProgramStatus | None = None,
) -> dict[str, Any]:
    """A record as users see it in JSON (``corra ps --json``, ``GET /v1/processes``).

    ``recorded``: what the program's chaperone recorded, where no runtime watches the process
    (`corra.backends.recorded.Recorded.json`); None where one does, or there is no program.
    ``status``: what its current attempt's program said last of how far it is
    (`corra.processes._statuses`), where the reader looked it up.
    """
    state = record.state
    result = state.result
    return {
        "id": record.id,
        "name": record.name,
        "phase": state.phase,
        "attempt": state.attempt,
        "returncode": result.returncode if result else None,
        "signal": result.signal if result else None,
        "reason": state.reason,
        "created_at": record.created_at,
        "updated_at": state.updated_at,
        # The current attempt's start, from the moment it is known (a running program's
        # too); after a retry, until the new attempt starts, the last result's.
        "started_at": state.started_at
        if state.started_at is not None
        else (result.started_at if result else None),
        "ended_at": result.ended_at if result else None,
        "labels": dict(record.spec.labels),
        "argv": list(record.spec.argv),
        "result": attrs.asdict(result) if result else None,
        "paused_from": state.paused_from,
        "recorded": recorded,
        "status": None if status is None else status.json(),
    }


def transition_json(transition: Transition) -> dict[str, Any]:
    """One entry of a process's history (a rerun's with the result of the attempt before,
    which it cleared)."""
    data = {
        "at": transition.at,
        "event": transition.event,
        "source": transition.source,
        "target": transition.target,
        "attempt": transition.attempt,
        "reason": transition.reason,
    }
    if transition.result is not None:
        data["result"] = attrs.asdict(transition.result)
    return data


def detail_json(
    record: ProcessRecord,
    history: list[Transition],
    recorded: dict[str, Any] | None = None,
    *,
    note: Note | None = None,
    status: ProgramStatus | None = None,
    show_env: bool = False,
) -> dict[str, Any]:
    """A record with its spec, its backend handle, its backend's note (`Note`, or None), its
    program's status (`record_json`) and its history (``corra show --json``, ``GET
    /v1/processes/{id}``); the env's values are hidden unless ``show_env``."""
    data = record_json(record, recorded, status)
    data["spec"] = unstructure_spec(record.spec)
    if not show_env:
        data["spec"]["env"] = hide_env(record.spec.env)
    data["handle"] = handle_data(record.state.handle)
    data["note"] = None if note is None else note.json()
    data["history"] = [transition_json(transition) for transition in history]
    return data


def view_json(view: ProcessView, *, show_env: bool = False) -> dict[str, Any]:
    """`detail_json` of a view that `corra.processes._query.ProcessQuery.show` gave."""
    assert view.history is not None
    return detail_json(
        view.record,
        view.history,
        view.recorded,
        note=view.note,
        status=view.status,
        show_env=show_env,
    )


def status_event_json(seq: int, record: ProcessRecord, status: ProgramStatus) -> dict[str, Any]:
    """A status update as ``GET /v1/events`` streams it: ``"event": "status"``, the process
    staying in its phase (``source`` and ``target`` are its phase)."""
    return {
        "seq": seq,
        "at": status.at,
        "id": record.id,
        "name": record.name,
        "event": "status",
        "source": record.phase,
        "target": record.phase,
        "attempt": status.attempt,
        "reason": None,
        "status": status.json(),
    }


def event_json(seq: int, record: ProcessRecord, transition: Transition) -> dict[str, Any]:
    """One transition as ``GET /v1/events`` streams it."""
    return {
        "seq": seq,
        "at": transition.at,
        "id": record.id,
        "name": record.name,
        "event": transition.event,
        "source": transition.source,
        "target": transition.target,
        "attempt": transition.attempt,
        "reason": transition.reason,
    }
