"""The lifecycle table, walked by Hypothesis against a model written from the rules."""

from __future__ import annotations

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from corra._errors import InvalidTransition
from corra._runtime import HISTORY_CODEC, RECORD_CODEC
from corra.processes._lifecycle import (
    _PLAIN,
    ACTIVE,
    EFFECTS,
    KEEPS_RESULT,
    PHASES,
    RERUN_REASON,
    TABLE,
    TERMINAL,
    ProcessState,
    Result,
    _with_effect,
    advance,
    after_exit,
    allowed,
    backs_off,
    needs_recovery,
)
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec import ProcessSpec

EVENTS = sorted({event for (_, event) in TABLE})


def model_next(phase: str, paused_from: str | None, event: str) -> str | None:
    """Where ``event`` takes ``phase``, per the module's rules; None when it is illegal."""
    if phase in TERMINAL:
        return "created" if event == "rerun" else None  # (Rule 10)
    if event == "rerun":
        return None
    if event == "pause":
        return "paused" if phase in ("created", "launching", "running") else None
    if event == "resume":
        return paused_from if phase == "paused" else None
    if event == "kill":
        return "killing" if phase != "killing" else None
    moves = {
        ("created", "launch"): "launching",
        ("launching", "started"): "running",
        ("running", "succeed"): "finished",
        ("launching", "fail"): "failed",
        ("running", "fail"): "failed",
        ("launching", "retry"): "created",
        ("running", "retry"): "created",
        ("killing", "killed"): "killed",
    }
    return moves.get((phase, event))


class LifecycleWalk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ProcessState()
        self.clock = 0.0

    @rule(
        event=st.sampled_from(EVENTS),
        reason=st.none() | st.text(max_size=5),
        by=st.sampled_from(["user", "host"]),
    )
    def fire(self, event: str, reason: str | None, by: str) -> None:
        before = self.state
        expected = model_next(before.phase, before.paused_from, event)
        self.clock += 1
        if expected is None:
            with pytest.raises(InvalidTransition) as info:
                advance(before, event, at=self.clock, process="p", reason=reason, by=by)  # type: ignore[arg-type]
            assert (info.value.phase, info.value.event) == (before.phase, event)
            assert self.state is before  # nothing changed
            return
        after = advance(before, event, at=self.clock, process="p", reason=reason, by=by)  # type: ignore[arg-type]
        assert after.phase == expected
        assert after.updated_at == self.clock
        assert after.attempt == before.attempt + (1 if event in ("retry", "rerun") else 0)
        if event == "pause":
            assert (after.paused_from, after.paused_by) == (before.phase, by)
        self.state = after

    @invariant()
    def paused_by_only_while_paused(self) -> None:
        assert (self.state.paused_by is not None) == (self.state.phase == "paused")

    @invariant()
    def needs_recovery_while_active_or_paused_by_the_host(self) -> None:
        state = self.state
        expected = state.phase in ACTIVE or (state.phase == "paused" and state.paused_by == "host")
        assert needs_recovery(state) == expected

    @invariant()
    def paused_from_only_while_paused(self) -> None:
        assert (self.state.paused_from is not None) == (self.state.phase == "paused")

    @invariant()
    def allowed_matches_the_model(self) -> None:
        state = self.state
        legal = [e for e in EVENTS if model_next(state.phase, state.paused_from, e) is not None]
        assert sorted(allowed(state.phase)) == legal


TestLifecycleWalk = LifecycleWalk.TestCase
TestLifecycleWalk.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_every_phase_is_reachable_and_terminal_ones_accept_only_a_rerun():
    targets = {target for target in TABLE.values() if target is not None} | {"created"}
    assert targets | {"paused"} == set(PHASES)
    for phase in TERMINAL:
        assert allowed(phase) == ["rerun"]


@pytest.mark.parametrize("phase", sorted(TERMINAL))
def test_a_rerun_starts_a_new_attempt_without_backoff_and_clears_the_last_run(phase):
    ended = ProcessState(
        phase=phase,
        attempt=2,
        handle={"pid": 1},
        reason="exited with 3",
        result=Result(returncode=3),
        updated_at=1.0,
        started_at=0.5,
    )
    after = advance(ended, "rerun", at=2.0)
    assert after == ProcessState(phase="created", attempt=3, reason=RERUN_REASON, updated_at=2.0)
    assert needs_recovery(after) and not backs_off(after)
    retried = advance(ProcessState(phase="running"), "retry", at=1.0, reason="attempt 1: x")
    assert backs_off(retried)  # (a retry waits for its backoff; a rerun does not)
    assert "rerun" in KEEPS_RESULT


def test_only_a_terminal_process_can_be_rerun():
    for phase in set(PHASES) - TERMINAL:
        state = ProcessState(phase=phase, paused_from="running" if phase == "paused" else None)
        with pytest.raises(InvalidTransition) as info:
            advance(state, "rerun", at=1.0, process="p1")
        assert info.value.phase == phase


names = st.text(alphabet="abcdefghij-_.", min_size=1, max_size=8).filter(lambda s: s[0].isalnum())
texts = st.text(max_size=10)
results = st.builds(
    Result,
    returncode=st.none() | st.integers(-255, 255),
    signal=st.none() | st.integers(1, 64),
    utime=st.floats(0, 1e6),
    maxrss_kb=st.none() | st.integers(0, 1 << 40),
    timed_out=st.booleans(),
    error=st.none() | texts,
)
records = st.builds(
    ProcessRecord,
    id=st.text(alphabet="abc123", min_size=1, max_size=12),
    spec=st.builds(
        ProcessSpec,
        argv=st.lists(texts.filter(lambda t: "\0" not in t), min_size=1, max_size=3)
        .filter(lambda argv: argv[0] != "")
        .map(tuple),
        name=st.none() | names,
        env=st.dictionaries(names, texts.filter(lambda t: "\0" not in t), max_size=2),
        labels=st.dictionaries(names, texts, max_size=2),
        timeout=st.none() | st.floats(0.1, 1e6),
    ),
    state=st.builds(
        ProcessState,
        phase=st.sampled_from(PHASES),
        attempt=st.integers(1, 100),
        paused_by=st.none() | st.sampled_from(["user", "host"]),
        handle=st.none() | st.dictionaries(names, st.integers() | texts | st.none(), max_size=3),
        reason=st.none() | texts,
        result=st.none() | results,
        updated_at=st.floats(0, 2e9),
    ),
    created_at=st.floats(0, 2e9),
)


@given(records)
@settings(max_examples=200, deadline=None)
def test_records_round_trip_through_the_codec(record):
    assert RECORD_CODEC.decode(RECORD_CODEC.encode(record)) == record


@given(
    st.builds(
        Transition,
        at=st.floats(0, 2e9),
        event=st.sampled_from(EVENTS),
        source=st.sampled_from(PHASES),
        target=st.sampled_from(PHASES),
        attempt=st.integers(1, 10),
        reason=st.none() | texts,
        result=st.none() | results,
    )
)
def test_transitions_round_trip_through_the_codec(transition):
    assert HISTORY_CODEC.decode(HISTORY_CODEC.encode(transition)) == transition


def reference_advance(state, event, *, at, process="?", handle=None, reason=None, result=None):
    """`advance` as it was first written (with attrs.evolve), to check the faster one; since
    issue 12 with who paused (``paused_by``) and the default reason of a pause."""
    import attrs

    key = (state.phase, event)
    if key not in TABLE:
        raise InvalidTransition(process, state.phase, event)
    target = TABLE[key]
    changes: dict = {"updated_at": at}
    if event == "pause":
        changes.update(
            phase="paused",
            paused_from=state.phase,
            paused_by="user",
            reason=reason or "paused on request",
        )
    elif event == "resume":
        changes.update(phase=state.paused_from, paused_from=None, paused_by=None, reason=None)
    elif event == "retry":
        changes.update(
            phase="created", attempt=state.attempt + 1, handle=None, reason=reason, result=result
        )
    elif event == "rerun":
        changes.update(
            phase="created",
            attempt=state.attempt + 1,
            handle=None,
            result=None,
            started_at=None,
            paused_from=None,
            paused_by=None,
            reason=reason or "rerun on request",
        )
    else:
        changes["phase"] = target
        if event == "kill":
            changes.update(paused_from=None, paused_by=None, reason=reason or "killed on request")
        if handle is not None:
            changes["handle"] = handle
        if event != "kill":
            changes["reason"] = reason
        if result is not None:
            changes["result"] = result
    return attrs.evolve(state, **changes)


states = st.builds(
    ProcessState,
    phase=st.sampled_from(PHASES),
    attempt=st.integers(1, 5),
    paused_from=st.none() | st.sampled_from(("created", "launching", "running")),
    handle=st.none() | st.dictionaries(names, st.integers(), max_size=2),
    reason=st.none() | texts,
    result=st.none() | results,
    updated_at=st.floats(0, 10),
)


@given(
    states,
    st.sampled_from(EVENTS),
    st.none() | st.dictionaries(names, st.integers(), max_size=2),
    st.none() | texts,
    st.none() | results,
)
@settings(max_examples=500, deadline=None)
def test_advance_does_what_the_first_version_did(state, event, handle, reason, result):
    if state.phase == "paused" and state.paused_from is None:
        state = ProcessState(phase="paused", paused_from="running")
    try:
        expected = reference_advance(
            state, event, at=99.0, handle=handle, reason=reason, result=result
        )
    except InvalidTransition:
        with pytest.raises(InvalidTransition):
            advance(state, event, at=99.0, handle=handle, reason=reason, result=result)  # type: ignore[arg-type]
        return
    assert advance(state, event, at=99.0, handle=handle, reason=reason, result=result) == expected  # type: ignore[arg-type]


@given(
    states,
    st.sampled_from([event for event in EVENTS if event not in EFFECTS]),
    st.none() | st.dictionaries(names, st.integers(), max_size=2),
    st.none() | texts,
    st.none() | (results.map(lambda r: attrs.evolve(r, started_at=5.0)) | results),
    st.none() | st.floats(0, 10),
)
@settings(max_examples=300, deadline=None)
def test_a_move_without_an_effect_is_the_plain_effects(
    state, event, handle, reason, result, started_at
):
    # (advance takes such moves directly, without reading an Effect: the same state)
    state = attrs.evolve(state, started_at=started_at)
    target = TABLE.get((state.phase, event))
    if (state.phase, event) not in TABLE:
        return
    expected = _with_effect(
        state, target, _PLAIN, at=9.0, handle=handle, reason=reason, result=result, by="user"
    )
    assert advance(state, event, at=9.0, handle=handle, reason=reason, result=result) == expected


@pytest.mark.parametrize(
    ("restart", "attempt", "result", "lost", "expected"),
    [
        ("temporary", 1, Result(returncode=0), None, ("succeed", None)),
        ("temporary", 1, Result(returncode=3), None, ("fail", "exited with 3")),
        ("transient", 1, Result(returncode=3), None, ("retry", "attempt 1: exited with 3")),
        ("transient", 3, Result(returncode=3), None, ("fail", "exited with 3")),
        ("transient", 1, Result(returncode=0), None, ("succeed", None)),
        ("permanent", 1, Result(returncode=0), None, ("retry", "attempt 1: exited with 0")),
        ("permanent", 3, Result(returncode=0), None, ("succeed", None)),
        ("transient", 1, None, "lost: gone", ("retry", "attempt 1: lost: gone")),
        ("temporary", 1, Result(returncode=0), "lost: gone", ("fail", "lost: gone")),
        ("temporary", 1, None, None, ("fail", "no result")),
        ("temporary", 1, Result(signal=9), None, ("fail", "killed by signal 9")),
        ("temporary", 1, Result(returncode=0, timed_out=True), None, ("fail", "timed out")),
    ],
)
def test_after_exit_decides_between_retry_succeed_and_fail(
    restart, attempt, result, lost, expected
):
    assert after_exit(restart, 3, attempt, result, lost=lost) == expected


def test_a_pause_for_the_host_needs_recovery_and_a_pause_by_a_user_does_not():
    running = advance(advance(ProcessState(), "launch", at=1.0), "started", at=2.0, handle={})
    by_host = advance(running, "pause", at=3.0, by="host", reason="host unavailable: h: down")
    by_user = advance(running, "pause", at=3.0)
    assert (by_host.paused_by, by_host.reason) == ("host", "host unavailable: h: down")
    assert (by_user.paused_by, by_user.reason) == ("user", "paused on request")
    assert needs_recovery(running) and needs_recovery(by_host) and not needs_recovery(by_user)
    for paused in (by_host, by_user):
        assert advance(paused, "resume", at=4.0).paused_by is None
        assert advance(paused, "kill", at=4.0).paused_by is None
