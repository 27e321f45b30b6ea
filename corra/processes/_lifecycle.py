"""The process lifecycle: phases, events and the transition table. No trio, no I/O.

Rules, in the manner of h11:

Rule 1. A process is in exactly one phase. ``finished``, ``failed`` and ``killed`` are
        terminal: no event leaves them.
Rule 2. Every change of phase is an event looked up in `TABLE`; a pair that is not in the
        table raises `InvalidTransition` and changes nothing.
Rule 3. ``pause`` remembers the phase it left (``paused_from``) and ``resume`` returns there,
        so a resumed process continues at the step that was next.
Rule 4. ``kill`` is allowed from every non-terminal phase, ``paused`` included.
Rule 5. ``retry`` starts a new attempt from ``created``; the attempt number is part of every
        effect's idempotency key (``<process id>.<attempt>``), so a retried launch is a new
        program and a replayed one is the same program.
Rule 6. The state is a frozen value; `advance` returns a new one and never mutates.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

import attrs

from corra._errors import InvalidTransition

Phase: TypeAlias = Literal[
    "created", "launching", "running", "paused", "killing", "finished", "failed", "killed"
]
Event: TypeAlias = Literal[
    "launch", "started", "succeed", "fail", "retry", "pause", "resume", "kill", "killed"
]

PHASES: tuple[Phase, ...] = (
    "created",
    "launching",
    "running",
    "paused",
    "killing",
    "finished",
    "failed",
    "killed",
)
TERMINAL: frozenset[Phase] = frozenset({"finished", "failed", "killed"})
#: Phases in which a process has (or is about to have) work to do: not paused, not terminal.
ACTIVE: frozenset[Phase] = frozenset({"created", "launching", "running", "killing"})
PAUSABLE: frozenset[Phase] = frozenset({"created", "launching", "running"})

#: (phase, event) -> next phase. ``resume`` is the one event whose target is not fixed: it
#: returns to ``paused_from`` (Rule 3), written here as ``None``.
TABLE: dict[tuple[Phase, Event], Phase | None] = {
    ("created", "launch"): "launching",
    ("launching", "started"): "running",
    ("running", "succeed"): "finished",
    ("launching", "fail"): "failed",
    ("running", "fail"): "failed",
    ("launching", "retry"): "created",
    ("running", "retry"): "created",
    **{(phase, "pause"): "paused" for phase in PAUSABLE},
    ("paused", "resume"): None,
    **{(phase, "kill"): "killing" for phase in ("created", "launching", "running", "paused")},
    ("killing", "killed"): "killed",
}


@attrs.frozen
class Result:
    """What a program's run left behind: how it ended, what it cost, what it wrote."""

    returncode: int | None = None
    signal: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    utime: float = 0.0
    stime: float = 0.0
    maxrss_kb: int | None = None
    """The program's own peak resident set (its cgroup's peak, or wait4's where that is
    surely the program's); None where unknown."""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    timed_out: bool = False
    killed: bool = False
    error: str | None = None
    stdout_dropped: int = 0
    """Bytes of stdout past the output limit, dropped (as counted by the chaperone's checks:
    a lower bound)."""
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        """True for a clean exit with return code 0."""
        return self.returncode == 0 and self.error is None and not self.timed_out


@attrs.frozen
class ProcessState:
    """Where a process is. Snapshotted whole at every transition.

    Attributes:
        phase: the phase users see (`PHASES`).
        attempt: 1 for the first run, one more for every ``retry``.
        paused_from: the phase ``resume`` returns to, while paused.
        handle: the backend's record of the launched program (JSON-able), once launched.
        reason: why the process failed, was paused or killed, in words.
        result: how the program ended, once it did.
        updated_at: when the last transition happened (epoch seconds).
        started_at: when the current attempt's program started (epoch seconds), from the
            moment that is known: the handle of its start (a backend whose ``running``
            covers a queued job, like Slurm's, knows it only from the exit record), then
            kept through pause and resume, and taken from the result once there is one.
            None before the program runs; a ``retry`` clears it (a new attempt).
    """

    phase: Phase = "created"
    attempt: int = 1
    paused_from: Phase | None = None
    handle: dict[str, Any] | None = None
    reason: str | None = None
    result: Result | None = None
    updated_at: float = 0.0
    started_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


def allowed(phase: Phase) -> list[Event]:
    """The events that ``phase`` accepts, in table order."""
    return [event for (source, event) in TABLE if source == phase]


def advance(
    state: ProcessState,
    event: Event,
    *,
    at: float,
    process: str = "?",
    handle: dict[str, Any] | None = None,
    reason: str | None = None,
    result: Result | None = None,
) -> ProcessState:
    """The state after ``event``; raises `InvalidTransition` (and changes nothing) if the
    table has no such move."""
    key = (state.phase, event)
    if key not in TABLE:
        raise InvalidTransition(process, state.phase, event)
    target = TABLE[key]
    # Built field by field rather than with attrs.evolve: this runs at every transition.
    phase, attempt, paused_from = state.phase, state.attempt, state.paused_from
    new_handle, new_result, started_at = state.handle, state.result, state.started_at
    if event == "pause":
        phase, paused_from = "paused", state.phase
    elif event == "resume":
        assert state.paused_from is not None
        phase, paused_from, reason = state.paused_from, None, None
    elif event == "retry":
        phase, attempt, new_handle, new_result = "created", state.attempt + 1, None, result
        started_at = None
    else:
        assert target is not None
        phase = target
        if event == "kill":
            paused_from, reason = None, reason or "killed on request"
        if handle is not None:
            new_handle = handle
            if event == "started":
                started_at = _started_at(handle, started_at)
        if result is not None:
            new_result = result
            if result.started_at is not None:
                started_at = result.started_at
        # (a reason describes the latest transition only: every event but kill sets it)
    return ProcessState(phase, attempt, paused_from, new_handle, reason, new_result, at, started_at)


def _started_at(handle: dict[str, Any], known: float | None) -> float | None:
    """The start time a launch's handle carries (local and SSH programs: the chaperone's
    clock when it started the program), else ``known``."""
    value = handle.get("started_at")
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return known
