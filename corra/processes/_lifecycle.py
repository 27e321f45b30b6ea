"""The process lifecycle: phases, events, the transition table and every rule around it.
No trio, no I/O.

Rules, in the manner of h11:

Rule 1. A process is in exactly one phase. ``finished``, ``failed`` and ``killed`` are
        terminal: no event leaves them but a user's ``rerun`` (Rule 10).
Rule 2. Every change of phase is an event looked up in `TABLE`; a pair that is not in the
        table raises `InvalidTransition` and changes nothing.
Rule 3. ``pause`` remembers the phase it left (``paused_from``) and who paused
        (``paused_by``: a user, or corra because the host stopped answering), and ``resume``
        returns there, so a resumed process continues at the step that was next.
Rule 4. ``kill`` is allowed from every non-terminal phase, ``paused`` included.
Rule 5. ``retry`` starts a new attempt from ``created``; the attempt number is part of every
        effect's idempotency key (``<process id>.<attempt>``), so a retried launch is a new
        program and a replayed one is the same program.
Rule 6. The state is a frozen value; `advance` returns a new one and never mutates.
Rule 7. What an event does beside moving the phase is data too (`EFFECTS`): the fields it
        clears, and the reason it gives when it is given none.
Rule 8. A process needs recovery (an actor, after a crash too) while it has work to do: in an
        `ACTIVE` phase, or paused by its host, which corra resumes by itself when the host
        answers again (`needs_recovery`). The store's ``active`` index holds exactly those.
Rule 9. After a program's exit, the spec's restart policy decides between ``retry``,
        ``succeed`` and ``fail`` (`after_exit`).
Rule 10. ``rerun`` (asked for by a user, never decided by corra) starts a terminal process
        again as a new attempt from ``created``, keeping its history: the transition keeps
        the result it clears (`KEEPS_RESULT`). Unlike a ``retry``'s, its attempt waits for
        no backoff, only for a slot (`backs_off`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import attrs

from corra._errors import InvalidTransition

Phase: TypeAlias = Literal[
    "created", "launching", "running", "paused", "killing", "finished", "failed", "killed"
]
Event: TypeAlias = Literal[
    "launch", "started", "succeed", "fail", "retry", "pause", "resume", "kill", "killed", "rerun"
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
    **{(phase, "rerun"): "created" for phase in TERMINAL},
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
    value: Any = None
    """The JSON value the program wrote to ``$CORRA_RESULT``, decoded; None also when there
    is none, or when it is kept in `value_file` (`has_value` tells these apart)."""
    has_value: bool = False
    """The program wrote a value, and it was taken: in `value` (a JSON ``null`` too), or in
    `value_file`. False: it wrote none (or an empty file), or it was refused
    (`value_error`). `corra.result_value` (`corra.processes._values`) gives it, wherever it is."""
    value_file: str | None = None
    """Where a value larger than the record takes is kept (`corra.processes._values`): the
    absolute path of a file in the state dir (``results/<key>.json``)."""
    value_error: str | None = None
    """Why the value the program wrote was refused (not JSON, too large). A refused value
    does not change how the process ended: its exit decides."""

    @property
    def ok(self) -> bool:
        """True for a clean exit with return code 0."""
        return self.returncode == 0 and self.error is None and not self.timed_out


#: Who paused a process: a user (it stays paused until resumed by hand), or corra because
#: its host stopped answering (resumed by corra when the host answers again).
PausedBy: TypeAlias = Literal["user", "host"]


@attrs.frozen
class ProcessState:
    """Where a process is. Snapshotted whole at every transition.

    Attributes:
        phase: the phase users see (`PHASES`).
        attempt: 1 for the first run, one more for every ``retry``.
        paused_from: the phase ``resume`` returns to, while paused.
        paused_by: who paused it (`PausedBy`), while paused.
        handle: the backend's record of the launched program, once launched: an instance of
            its handle class (`corra.processes._backend.Backend.handle_type`), or JSON
            values for a backend without one.
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
    paused_by: PausedBy | None = None
    handle: Any = None
    reason: str | None = None
    result: Result | None = None
    updated_at: float = 0.0
    started_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


@attrs.frozen
class Effect:
    """What an event does to a state beside moving its phase (Rule 7)."""

    takes: frozenset[str] = frozenset({"handle", "result"})
    """Which of the ``handle`` and ``result`` given with the event replace the state's."""
    clears: frozenset[str] = frozenset()
    """Fields set back to their defaults, unless the event takes a value for them."""
    new_attempt: bool = False
    """The attempt number goes up by one (Rule 5)."""
    pauses: bool = False
    """``paused_from`` and ``paused_by`` are set (Rule 3)."""
    starts: bool = False
    """The handle it takes says when the program started (``started_at``)."""
    default_reason: str | None = None
    """The reason when the event is given none (or an empty one)."""


#: The reason of a ``rerun`` (Rule 10), or how a rerun's own reason starts (one with a new
#: spec says so): `backs_off` tells a rerun from a ``retry`` by it.
RERUN_REASON = "rerun on request"

#: The effects of the events that do more than move the phase and take what they are given.
EFFECTS: dict[Event, Effect] = {
    "started": Effect(starts=True),
    "retry": Effect(
        takes=frozenset({"result"}),  # (the attempt before's, for the record)
        clears=frozenset({"handle", "result", "started_at"}),
        new_attempt=True,
    ),
    "pause": Effect(takes=frozenset(), pauses=True, default_reason="paused on request"),
    "resume": Effect(takes=frozenset(), clears=frozenset({"paused_from", "paused_by", "reason"})),
    "kill": Effect(
        clears=frozenset({"paused_from", "paused_by"}), default_reason="killed on request"
    ),
    "rerun": Effect(
        takes=frozenset(),
        clears=frozenset({"handle", "result", "started_at", "paused_from", "paused_by"}),
        new_attempt=True,
        default_reason=RERUN_REASON,
    ),
}
#: The events whose history entry keeps the result the event clears (Rule 10): a rerun
#: replaces the state's result of the attempt before, which only the history then has.
KEEPS_RESULT: frozenset[Event] = frozenset({"rerun"})

_PLAIN = Effect()


def allowed(phase: Phase) -> list[Event]:
    """The events that ``phase`` accepts, in table order."""
    return [event for (source, event) in TABLE if source == phase]


def advance(
    state: ProcessState,
    event: Event,
    *,
    at: float,
    process: str = "?",
    handle: Any = None,
    reason: str | None = None,
    result: Result | None = None,
    by: PausedBy = "user",
) -> ProcessState:
    """The state after ``event``; raises `InvalidTransition` (and changes nothing) if the
    table has no such move.

    ``handle`` and ``result``, when given, replace the state's; ``reason`` describes this
    transition only (it is not kept from the one before); ``by`` says who pauses (``pause``
    only).
    """
    key = (state.phase, event)
    if key not in TABLE:
        raise InvalidTransition(process, state.phase, event)
    target = TABLE[key]
    effect = EFFECTS.get(event)
    if effect is None:  # (most moves: the phase moves, the handle and result given are taken)
        started_at = state.started_at
        if result is not None and result.started_at is not None:
            started_at = result.started_at
        return ProcessState(
            target,  # type: ignore[arg-type]  # (only resume has none: it has an effect)
            state.attempt,
            state.paused_from,
            state.paused_by,
            state.handle if handle is None else handle,
            reason,
            state.result if result is None else result,
            at,
            started_at,
        )
    return _with_effect(
        state, target, effect, at=at, handle=handle, reason=reason, result=result, by=by
    )


def _with_effect(
    state: ProcessState,
    target: Phase | None,
    effect: Effect,
    *,
    at: float,
    handle: Any,
    reason: str | None,
    result: Result | None,
    by: PausedBy,
) -> ProcessState:
    """`advance` by an event with ``effect`` to ``target`` (None: where the pause left).
    (`advance` moves without one, `_PLAIN`'s way, directly: tests/test_lifecycle.py checks
    that both agree.)"""
    takes, clears = effect.takes, effect.clears
    # Built field by field rather than with attrs.evolve: this runs at every transition.
    if target is None:  # (resume: back where the pause left, Rule 3)
        target = state.paused_from
        assert target is not None
    paused_from = None if "paused_from" in clears else state.paused_from
    paused_by = None if "paused_by" in clears else state.paused_by
    if effect.pauses:
        paused_from, paused_by = state.phase, by
    new_handle = None if "handle" in clears else state.handle
    new_result = None if "result" in clears else state.result
    started_at = None if "started_at" in clears else state.started_at
    if handle is not None and "handle" in takes:
        new_handle = handle
        if effect.starts:
            started_at = _started_at(handle, started_at)
    if result is not None and "result" in takes:
        new_result = result
        if result.started_at is not None and "started_at" not in clears:
            started_at = result.started_at
    if "reason" in clears:
        reason = None
    elif not reason:
        reason = effect.default_reason or reason
    return ProcessState(
        target,
        state.attempt + 1 if effect.new_attempt else state.attempt,
        paused_from,
        paused_by,
        new_handle,
        reason,
        new_result,
        at,
        started_at,
    )


def needs_recovery(state: ProcessState) -> bool:
    """Whether the process has work to do, so that it needs an actor, and a later runtime
    must recover it (Rule 8): it is active, or paused by its host."""
    return state.phase in ACTIVE or state.paused_by == "host"


def backs_off(state: ProcessState) -> bool:
    """Whether a process waiting for a slot waits for a retry's backoff first: a new attempt
    after a ``retry`` does, one after a user's ``rerun`` does not (Rule 10)."""
    return state.attempt > 1 and not (state.reason or "").startswith(RERUN_REASON)


def after_exit(
    restart: str,
    max_attempts: int,
    attempt: int,
    result: Result | None,
    *,
    lost: str | None = None,
) -> tuple[Event, str | None]:
    """What follows the end of attempt ``attempt`` (Rule 9): the event and its reason.

    Args:
        restart: the spec's restart policy: ``temporary`` never reruns, ``transient`` reruns
            after a failure, ``permanent`` after any exit; up to ``max_attempts`` attempts.
        max_attempts: how many attempts the process gets.
        attempt: the attempt that ended.
        result: how its program ended (None: unknown).
        lost: why the program was lost, if it was (its end is then a failure).
    """
    ok = lost is None and result is not None and result.ok
    reason = lost or describe(result)
    rerun = restart == "permanent" or (restart == "transient" and not ok)
    if rerun and attempt < max_attempts:
        return "retry", f"attempt {attempt}: {reason}"
    if ok:
        return "succeed", None
    return "fail", reason


def describe(result: Result | None) -> str:
    """How a run ended, in words (a failure's ``reason``)."""
    if result is None:
        return "no result"
    if result.error:
        return result.error
    if result.timed_out:
        return "timed out"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exited with {result.returncode}"


def handle_field(handle: Any, name: str) -> Any:
    """The field ``name`` of a handle, None if it has none: an attribute of a typed handle,
    a key of one that is JSON values (a backend without a handle class)."""
    if isinstance(handle, Mapping):
        return handle.get(name)
    return getattr(handle, name, None)


def _started_at(handle: Any, known: float | None) -> float | None:
    """The start time a launch's handle carries (local and SSH programs: the chaperone's
    clock when it started the program), else ``known``."""
    value = handle_field(handle, "started_at")
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return known
