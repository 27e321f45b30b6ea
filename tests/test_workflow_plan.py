"""The planner (`corra.workflows._plan`) on random DAGs (Hypothesis): order respected, each
step decided once, a failure stops what is downstream (and everything not yet started), and
the run ends as its steps say."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corra.workflows import parse_jobs, upstream
from corra.workflows._plan import Expand, Fail, Skip, Submit, plan
from corra.workflows._runs import StepEntry


@st.composite
def dags(draw: Any) -> tuple[Any, dict[str, bool], list[int]]:
    count = draw(st.integers(1, 9))
    steps = []
    fails: dict[str, bool] = {}
    for index in range(count):
        name = f"s{index}"
        needs = sorted(draw(st.sets(st.integers(0, index - 1), max_size=3))) if index else []
        table: dict[str, Any] = {"name": name, "argv": ["true"], "needs": [f"s{n}" for n in needs]}
        if draw(st.booleans()) and draw(st.booleans()):
            table["continue_on_failure"] = True
        if draw(st.integers(0, 5)) == 0:
            table["when"] = "${false}"
        if draw(st.integers(0, 4)) == 0:
            table["for_each"] = draw(st.lists(st.integers(0, 9), max_size=3))
        steps.append(table)
        fails[name] = draw(st.integers(0, 4)) == 0
    order = draw(st.lists(st.integers(0, 1000), min_size=40, max_size=40))
    job = parse_jobs([{"name": "dag", "step": steps}], "<hypothesis>")["dag"]
    return job, fails, order


@settings(max_examples=300, deadline=None)
@given(dags())
def test_random_dags(case: tuple[Any, dict[str, bool], list[int]]) -> None:
    job, fails, order = case
    steps = {step.name: step for step in job.steps}
    entries: dict[str, StepEntry] = {}
    running: list[str] = []  # keys of submitted, unended steps (items too)
    decided: list[str] = []
    hard_failure = False
    at = 0.0
    for turn in range(200):
        at += 1
        result = plan(job, {}, entries, upstream=lambda name: upstream(job, name))
        if result.outcome is not None:
            break
        for action in result.actions:
            name = action.step
            assert name not in decided, f"{name} decided twice"
            decided.append(name)
            assert not hard_failure, "nothing starts after a failure"
            for need in steps[name].needs:  # order: every need has ended, satisfied
                phase = _status(entries, need)
                assert phase in ("finished", "skipped") or (
                    phase in ("failed", "killed") and steps[need].continue_on_failure
                ), (name, need, phase)
            if isinstance(action, Skip):
                entries[name] = StepEntry(name, name, "skipped", at)
            elif isinstance(action, Fail):
                entries[name] = StepEntry(name, name, "failed", at)
            elif isinstance(action, Expand):
                entries[name] = StepEntry(name, name, "expanded", at, count=len(action.items))
                for index in range(len(action.items)):
                    key = f"{name}[{index}]"
                    entries[key] = StepEntry(key, name, "submitted", at, index=index)
                    running.append(key)
            else:
                assert isinstance(action, Submit)
                entries[name] = StepEntry(name, name, "submitted", at)
                running.append(name)
        if not result.actions:
            assert running, "no action, no outcome and nothing running: stuck"
            key = running.pop(order[turn % len(order)] % len(running))
            step = entries[key].step
            phase = "failed" if fails[step] else "finished"
            entries[key] = StepEntry(key, step, phase, at, index=entries[key].index)
            if phase == "failed" and not steps[step].continue_on_failure:
                hard_failure = True
    else:
        raise AssertionError("the run never ended")
    assert not running, "the run ended with steps running"
    outcome = result.outcome
    if hard_failure:
        assert outcome.phase == "failed" and outcome.reason
    else:
        assert outcome.phase == "finished", outcome
        assert set(decided) == set(steps), "every step was decided"


def _status(entries: dict[str, StepEntry], name: str) -> str:
    entry = entries[name]
    if entry.phase != "expanded":
        return entry.phase
    phases = {entries[f"{name}[{i}]"].phase for i in range(entry.count or 0)}
    if "submitted" in phases:
        return "running"  # (a step after it may start only if it failed without cof)
    return "failed" if "failed" in phases else "finished"
