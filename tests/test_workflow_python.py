"""Workflows in Python (`corra.workflow`) on a real runtime with real local programs: the
issue's pipeline, replay after a stop (finished steps are not run again), an edit between two
runtimes (the run pauses naming the step; resume with accept goes on), failures in a gather,
a function that raises or returns no JSON, kill, params, and the API's paths."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import corra
from corra._errors import StepFailed, WorkflowError
from corra.workflows import PythonJob

PY = sys.executable


def writes(value: str, ledger: Path | None = None) -> str:
    """A Python program writing ``value`` (an expression of ``sys.argv``) to $CORRA_RESULT,
    after appending its argv[1] to ``ledger``."""
    note = f"open({str(ledger)!r}, 'a').write(sys.argv[1] + '\\n'); " if ledger else ""
    return f"import json, os, sys; {note}json.dump({value}, open(os.environ['CORRA_RESULT'], 'w'))"


PREPARE = writes("{'items': [f'i{k}' for k in range(int(sys.argv[1]))]}")


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


def gate_argv(gate: Path) -> list[str]:
    return ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]


async def running(rt: corra.Runtime, name: str) -> None:
    """Until the step process ``name`` exists and runs."""
    with trio.fail_after(30):
        while True:
            try:
                await rt.processes.wait(name, until=lambda r: r.phase == "running")
                return
            except corra.NoSuchProcess:
                await trio.sleep(0.02)


def make_pipeline(ledger: Path) -> PythonJob:
    work_program = writes("{'item': sys.argv[1], 'len': len(sys.argv[1])}", ledger)

    @corra.workflow
    async def pipeline(ctx: Any, samples: int) -> dict[str, Any]:
        """The issue's pipeline."""
        prep = await ctx.step("prepare", [PY, "-c", PREPARE, str(samples)])
        work = await ctx.gather(
            *(
                ctx.step(f"work[{i}]", [PY, "-c", work_program, item])
                for i, item in enumerate(prep.result["items"])
            )
        )
        return {"done": len(work), "results": [w.result for w in work]}

    return pipeline


async def test_the_issues_pipeline_end_to_end(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    pipeline = make_pipeline(ledger)
    assert pipeline.name == "pipeline" and pipeline.description == "The issue's pipeline."
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define_python(pipeline)
        run, created = await rt.workflows.start("pipeline", {"samples": "3"})
        assert created and run.kind == "python" and run.params == {"samples": 3}
        assert run.definition["qualname"].endswith("pipeline")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result == {
            "done": 3,
            "results": [{"item": f"i{k}", "len": 2} for k in range(3)],
        }
        assert sorted(ledger_lines(ledger)) == ["i0", "i1", "i2"]
        steps = rt.workflows.step_entries(run.id)
        assert set(steps) == {"prepare", "work[0]", "work[1]", "work[2]"}
        assert steps["work[2]"].step == "work" and steps["work[2]"].index == 2
        assert all(entry.phase == "finished" and entry.digest for entry in steps.values())
        record = rt.processes.get(f"{run.id}.work.2")  # (work[2]'s process)
        assert record.spec.argv[-1] == "i2"
        assert record.spec.labels == {
            "corra.run": run.id,
            "corra.job": "pipeline",
            "corra.step": "work",
        }
        listed = {job["name"]: job for job in rt.workflows.job_listing()}
        assert listed["pipeline"]["kind"] == "python" and listed["pipeline"]["required"] == [
            "samples"
        ]


async def test_params_are_checked_and_converted(tmp_path: Path) -> None:
    @corra.workflow(name="typed", description="params")
    async def function(ctx: Any, count: int, scale: float = 1.0, tags: list = [], label="x") -> Any:  # noqa: B006
        return {
            "count": count,
            "scale": scale,
            "tags": tags,
            "label": label,
            "seen": dict(ctx.params),
        }

    assert function.name == "typed" and function.params["scale"] == 1.0
    with pytest.raises(WorkflowError, match="param\\(s\\) 'count' required"):
        function.apply_params({})
    with pytest.raises(WorkflowError, match="unknown param\\(s\\) 'other'"):
        function.apply_params({"count": 1, "other": 2})
    with pytest.raises(WorkflowError, match="param 'count': got 'many', expected an integer"):
        function.apply_params({"count": "many"})
    assert function.apply_params({"count": "2", "scale": "3", "tags": '["a"]'}) == {
        "count": 2,
        "scale": 3.0,
        "tags": ["a"],
        "label": "x",
    }
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define_python(function)
        run, _ = await rt.workflows.start("typed", {"count": 4})
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result["seen"] == {"count": 4, "scale": 1.0, "tags": [], "label": "x"}


def test_what_the_decorator_refuses() -> None:
    def plain(ctx: Any) -> None:
        pass

    async def no_ctx() -> None:
        pass

    async def star(ctx: Any, *args: Any) -> None:
        pass

    async def not_json(ctx: Any, value: object = object()) -> None:
        pass

    with pytest.raises(corra.ConfigError, match="expected an async def"):
        corra.workflow(plain)
    with pytest.raises(corra.ConfigError, match="first parameter must be the context"):
        corra.workflow(no_ctx)
    with pytest.raises(corra.ConfigError, match="param 'args'"):
        corra.workflow(star)
    with pytest.raises(corra.ConfigError, match="param 'value': its default"):
        corra.workflow(not_json)
    with pytest.raises(corra.ConfigError, match="name: got 'a b'"):
        corra.workflow(name="a b")(star)


async def test_a_stopped_runtime_replays_the_function_and_runs_no_step_again(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    bodies: list[str] = []
    note = writes("sys.argv[1]", ledger)

    @corra.workflow
    async def across(ctx: Any) -> Any:
        bodies.append(ctx.run_id)
        first = await ctx.step("first", [PY, "-c", note, "first"])
        await ctx.step("wait", gate_argv(gate))
        items = await ctx.gather(
            *(ctx.step(f"item[{i}]", [PY, "-c", note, f"item{i}"]) for i in range(3))
        )
        return [first.result, *(item.result for item in items)]

    state = tmp_path / "state"
    async with corra.open_runtime(state_dir=state) as rt:
        rt.workflows.define_python(across)
        run, _ = await rt.workflows.start("across")
        await running(rt, f"{run.id}.wait")
    gate.touch()  # (its program runs on with no runtime, and ends)
    async with corra.open_runtime(state_dir=state) as rt:
        # Recovered by a runtime that does not know the function: it waits, saying so.
        waiting = await rt.workflows.wait(
            run.id, until=lambda r: r.reason is not None and "waiting for its function" in r.reason
        )
        assert waiting.phase == "running" and "across" in (waiting.reason or "")
        rt.workflows.define_python(across)
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result == ["first", "item0", "item1", "item2"]
    assert bodies == [run.id, run.id]  # (the body ran twice: once per runtime)
    assert sorted(ledger_lines(ledger)) == ["first", "item0", "item1", "item2"]


async def test_an_edited_function_pauses_the_run_and_accept_goes_on(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    note = writes("sys.argv[1]", ledger)
    version = ["v1"]

    @corra.workflow
    async def edited(ctx: Any) -> Any:
        first = await ctx.step("first", [PY, "-c", note, f"first-{version[0]}"])
        await ctx.step("wait", gate_argv(gate))
        last = await ctx.step("last", [PY, "-c", note, f"last-{version[0]}"])
        return [first.result, last.result]

    state = tmp_path / "state"
    async with corra.open_runtime(state_dir=state) as rt:
        rt.workflows.define_python(edited)
        run, _ = await rt.workflows.start("edited")
        await running(rt, f"{run.id}.wait")
    version[0] = "v2"  # (an edit of the function between two runtimes: first's argv changes)
    gate.touch()
    async with corra.open_runtime(state_dir=state) as rt:
        runs = rt.workflows
        runs.define_python(edited)
        paused = await runs.wait(run.id, until=lambda r: r.phase == "paused")
        assert paused.reason is not None
        assert (
            "step 'first': its spec differs from the one recorded (fields: argv)" in paused.reason
        )
        assert runs.step_entries(run.id)["first"].proposed is not None
        again = await runs.resume(run.id)  # (without accept: the same edit pauses it again)
        assert again.phase == "running"
        paused = await runs.wait(
            run.id, until=lambda r: r.phase == "paused" and not runs.running(r.id)
        )
        assert "step 'first'" in (paused.reason or "")
        await runs.resume(run.id, accept=True)
        done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason
        # The recorded step stands as recorded; the steps after it run the edited code.
        assert done.result == ["first-v1", "last-v2"]
        assert runs.step_entries(run.id)["first"].proposed is None
    assert ledger_lines(ledger) == ["first-v1", "last-v2"]


async def test_a_failed_step_in_a_gather_lets_the_others_end(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    note = writes("sys.argv[1]", ledger)
    slow = f"import time; time.sleep(0.3); {note}"

    @corra.workflow
    async def fan(ctx: Any, catch: bool = False) -> Any:
        steps = [
            ctx.step("work[0]", [PY, "-c", slow, "a"]),
            ctx.step("work[1]", ["sh", "-c", "exit 3"]),
            ctx.step("work[2]", [PY, "-c", slow, "c"]),
        ]
        try:
            await ctx.gather(*steps)
        except StepFailed as exc:
            if not catch:
                raise
            assert exc.result.phase == "failed"
            return {"failed": exc.step, "reason": exc.result.reason}
        return "never"

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define_python(fan)
        run, _ = await rt.workflows.start("fan")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "failed"
        assert done.reason == "step 'work[1]' failed: exited with 3"
        steps = rt.workflows.step_entries(run.id)
        assert [steps[f"work[{i}]"].phase for i in range(3)] == ["finished", "failed", "finished"]
        assert sorted(ledger_lines(ledger)) == ["a", "c"]  # (the others ran to their end)
        caught, _ = await rt.workflows.start("fan", {"catch": True})
        done = await rt.workflows.wait(caught.id)
        assert done.phase == "finished", done.reason
        assert done.result == {"failed": "work[1]", "reason": "exited with 3"}


async def test_a_function_that_raises_or_returns_no_json_fails_the_run(tmp_path: Path) -> None:
    @corra.workflow
    async def raises(ctx: Any) -> Any:
        await ctx.step("ok", ["true"])
        raise ValueError("boom")

    @corra.workflow
    async def unjsonable(ctx: Any) -> Any:
        return {1, 2}

    @corra.workflow
    async def twice(ctx: Any) -> Any:
        await ctx.step("same", ["true"])
        await ctx.step("same", ["true"])

    @corra.workflow
    async def bad_spec(ctx: Any) -> Any:
        await ctx.step("spec", {"argv": ["true"], "restart": "sometimes"})

    @corra.workflow
    async def bad_name(ctx: Any) -> Any:
        await ctx.step("a.b", ["true"])

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define_python(raises, unjsonable, twice, bad_spec, bad_name)
        reasons = {}
        for name in ("raises", "unjsonable", "twice", "bad_spec", "bad_name"):
            run, _ = await runs.start(name)
            done = await runs.wait(run.id)
            assert done.phase == "failed"
            reasons[name] = done.reason
        assert reasons["raises"] == "ValueError: boom"
        assert "returned set, not a JSON value" in reasons["unjsonable"]
        assert "step 'same': used twice in this run" in reasons["twice"]
        assert "step 'spec'" in reasons["bad_spec"] and "restart" in reasons["bad_spec"]
        assert "step 'a.b': expected a name" in reasons["bad_name"]


async def test_kill_and_pause_of_a_function_run(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ledger = tmp_path / "ledger"
    note = writes("sys.argv[1]", ledger)

    @corra.workflow
    async def long(ctx: Any) -> Any:
        await ctx.step("sleep", ["sleep", "60"])

    @corra.workflow
    async def gated(ctx: Any) -> Any:
        await ctx.step("wait", gate_argv(gate))
        return (await ctx.step("next", [PY, "-c", note, "next"])).result

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define_python(long, gated)
        run, _ = await runs.start("long")
        await running(rt, f"{run.id}.sleep")
        with trio.fail_after(20):
            await runs.kill(run.id)
            done = await runs.wait(run.id)
        assert done.phase == "killed"
        assert runs.step_entries(run.id)["sleep"].phase == "killed"
        assert rt.processes.get(f"{run.id}.sleep").phase == "killed"

        run, _ = await runs.start("gated")
        await running(rt, f"{run.id}.wait")
        paused = await runs.pause(run.id)
        assert paused.phase == "paused"
        gate.touch()
        await rt.processes.wait(f"{run.id}.wait")  # (the running step goes on, and ends)
        await trio.sleep(0.3)
        assert not runs.running(run.id) and "next" not in runs.step_entries(run.id)
        await runs.resume(run.id)
        done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result == "next"
        assert runs.step_entries(run.id)["wait"].phase == "finished"


async def test_a_step_of_a_table_with_fields_and_a_function_started_as_itself(
    tmp_path: Path,
) -> None:
    @corra.workflow
    async def table(ctx: Any, word: str) -> Any:
        program = writes("[os.environ['WORD'], os.getcwd()]")
        step = await ctx.step(
            "env", {"argv": [PY, "-c", program], "env": {"WORD": word}}, cwd=str(tmp_path)
        )
        return step.result

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        run, _ = await rt.workflows.start(table, {"word": "hi"})  # (defined as it starts)
        assert "table" in rt.workflows.jobs
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result == ["hi", str(tmp_path)]
        assert rt.processes.get(f"{run.id}.env").spec.env == {"WORD": "hi"}


def test_step_names_and_their_process_names() -> None:
    from corra.workflows._python import step_parts, step_process_name

    assert step_process_name("r1", "work[3]") == "r1.work.3"
    assert step_process_name("r1", "shard[eu-1][2]") == "r1.shard.eu-1.2"
    assert step_parts("work[3]") == ("work", 3)
    assert step_parts("shard[eu-1]") == ("shard[eu-1]", None)
    assert step_parts("grid[1][2]") == ("grid[1][2]", None)
    assert step_parts("prepare") == ("prepare", None)
    # No name has a dot, so two names never make one process name (work[3] and work.3).
    for bad in ("work.3", "work[3", "work[]", "3work", "work[a.b]", "", "x" * 65):
        with pytest.raises(corra.ConfigError, match="expected a name"):
            step_process_name("r1", bad)
    with pytest.raises(corra.ConfigError, match="too long"):
        step_process_name("r1", "x" * 60 + "[" + "y" * 64 + "][z]")


async def test_a_run_ends_once_the_steps_its_function_left_have(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    slow = f"import time; time.sleep(1); {writes('sys.argv[1]', ledger)}"

    @corra.workflow
    async def buggy(ctx: Any) -> Any:
        async def later() -> None:
            await ctx.step("quick", ["true"])
            raise RuntimeError("bug")

        await ctx.gather(ctx.step("slow", [PY, "-c", slow, "slow"]), later())

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define_python(buggy)
        run, _ = await rt.workflows.start("buggy")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "failed" and done.reason == "RuntimeError: bug"
        # The gather's wait for slow was cancelled; the run ended only once slow had.
        assert rt.workflows.step_entries(run.id)["slow"].phase == "finished"
        assert ledger_lines(ledger) == ["slow"]


async def test_pause_with_steps_and_the_tree_of_a_function_run(tmp_path: Path) -> None:
    from corra.cli._workflows import tree_lines

    gate = tmp_path / "gate"

    @corra.workflow
    async def held(ctx: Any) -> Any:
        await ctx.gather(*(ctx.step(f"work[{i}]", gate_argv(gate)) for i in range(2)))
        return "done"

    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define_python(held)
        run, _ = await runs.start("held")
        for i in range(2):
            await running(rt, f"{run.id}.work.{i}")
        paused = await runs.pause(run.id, steps=True)
        assert paused.phase == "paused" and paused.paused_steps
        for i in range(2):
            assert rt.processes.get(f"{run.id}.work.{i}").phase == "paused"
        lines = tree_lines(runs.query.detail(runs.get(run.id), rt.processes.get))
        assert lines[0] == f"held ({run.id}): paused"
        assert lines[1].strip().startswith("[*] work: expanded")  # (its items under it)
        assert lines[2].strip() == "[=] work[0]: paused"
        gate.touch()
        await runs.resume(run.id)
        done = await runs.wait(run.id)
        assert done.phase == "finished" and done.result == "done", done.reason
