"""Workflow runs on a real runtime with real local programs: order, fan-out, skips,
failures, pause, resume, kill, idempotent names, and a runtime that stops in the middle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

import corra
from corra._errors import ConfigError, NoSuchRun
from corra.workflows import parse_jobs

PY = sys.executable


def jobs(text: str, where: str = "test.toml") -> dict:
    import tomllib

    return parse_jobs(tomllib.loads(text)["job"], where)


def ledger_step(name: str, ledger: Path, needs: list[str] | None = None, **extra: str) -> str:
    """A step appending its name (and ${item} if a fan-out) to the ledger file."""
    needs_line = f"needs = {needs!r}\n".replace("'", '"') if needs else ""
    word = '"${item}"' if "for_each" in extra else f'"{name}"'
    lines = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return (
        f'[[job.step]]\nname = "{name}"\n{needs_line}{lines}'
        f'argv = ["sh", "-c", "echo {name}:$1 >> {ledger}", "sh", {word}]\n'
    )


def gate_step(gate: Path, needs: list[str] | None = None) -> str:
    """A step ``wait`` that runs until the file ``gate`` exists."""
    needs_line = f"needs = {needs!r}\n".replace("'", '"') if needs else ""
    loop = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    return f'[[job.step]]\nname = "wait"\n{needs_line}argv = ["sh", "-c", "{loop}"]\n'


async def running(rt: corra.Runtime, name: str) -> None:
    """Until the step process ``name`` exists (its run submits it soon) and runs."""
    with trio.fail_after(20):
        while True:
            try:
                await rt.processes.wait(name, until=lambda r: r.phase == "running")
                return
            except corra.NoSuchProcess:
                await trio.sleep(0.02)


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


async def test_a_chain_runs_in_order_and_finishes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    text = '[[job]]\nname = "chain"\n' + "".join(
        ledger_step(name, ledger, [before] if before else None)
        for name, before in (("a", None), ("b", "a"), ("c", "b"))
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define(jobs(text))
        run, created = await runs.start("chain")
        assert created and run.phase == "running" and run.id.startswith("r")
        done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason
        assert ledger_lines(ledger) == ["a:a", "b:b", "c:c"]
        steps = runs.step_entries(run.id)
        assert [steps[k].phase for k in ("a", "b", "c")] == ["finished"] * 3
        record = rt.processes.get(f"{run.id}.b")
        assert record.spec.labels["corra.run"] == run.id
        assert record.spec.labels["corra.step"] == "b"


async def test_a_fan_out_runs_each_item_once_then_the_join(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    text = (
        '[[job]]\nname = "fan"\n'
        + ledger_step("work", ledger, for_each='["x", "y", "z"]')
        + ledger_step("join", ledger, ["work"])
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("fan")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        lines = ledger_lines(ledger)
        assert sorted(lines[:3]) == ["work:x", "work:y", "work:z"]
        assert lines[3:] == ["join:join"]
        steps = rt.workflows.step_entries(run.id)
        assert steps["work"].phase == "expanded" and steps["work"].count == 3
        assert {steps[f"work[{i}]"].phase for i in range(3)} == {"finished"}
        assert rt.processes.get(f"{run.id}.work.2").spec.argv[-1] == "z"


async def test_a_failed_step_fails_the_run_and_starts_nothing_after_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    text = (
        '[[job]]\nname = "broken"\n'
        '[[job.step]]\nname = "bad"\nargv = ["sh", "-c", "exit 3"]\n'
        + ledger_step("after", ledger, ["bad"])
        + ledger_step("aside", ledger)
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("broken")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "failed"
        assert done.reason is not None and "'bad'" in done.reason and "3" in done.reason
        assert "after:after" not in ledger_lines(ledger)
        assert "after" not in rt.workflows.step_entries(run.id)


async def test_continue_on_failure_and_when(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    text = (
        '[[job]]\nname = "tolerant"\n'
        '[[job.step]]\nname = "bad"\nargv = ["false"]\ncontinue_on_failure = true\n'
        + ledger_step("cleanup", ledger, ["bad"], when="\"${steps.bad.phase == 'failed'}\"")
        + ledger_step("never", ledger, ["bad"], when="\"${steps.bad.phase == 'finished'}\"")
        + ledger_step("last", ledger, ["never"])
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("tolerant")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        steps = rt.workflows.step_entries(run.id)
        assert steps["bad"].phase == "failed"
        assert steps["never"].phase == "skipped"
        assert steps["last"].phase == "finished"  # (a skipped step does not stop those after)
        assert sorted(ledger_lines(ledger)) == ["cleanup:cleanup", "last:last"]


async def test_a_run_name_makes_a_request_idempotent(tmp_path: Path) -> None:
    text = '[[job]]\nname = "one"\n[[job.step]]\nname = "s"\nargv = ["true"]\n'
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        first, created = await rt.workflows.start("one", name="nightly")
        second, again = await rt.workflows.start("one", name="nightly")
        assert created and not again and second.id == first.id
        assert rt.workflows.get("nightly").id == first.id
        with pytest.raises(NoSuchRun):
            rt.workflows.get("weekly")
        with pytest.raises(ConfigError, match="no job is named 'two'"):
            await rt.workflows.start("two")
        await rt.workflows.wait(first.id)


async def test_pause_stops_new_steps_and_resume_goes_on(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ledger = tmp_path / "ledger"
    text = '[[job]]\nname = "gated"\n' + gate_step(gate) + ledger_step("next", ledger, ["wait"])
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define(jobs(text))
        run, _ = await runs.start("gated")
        await running(rt, f"{run.id}.wait")
        paused = await runs.pause(run.id)
        assert paused.phase == "paused"
        gate.touch()
        await rt.processes.wait(f"{run.id}.wait")  # (the running step goes on, and ends)
        await trio.sleep(0.3)
        assert "next" not in runs.step_entries(run.id) and not ledger.exists()
        assert not runs.running(run.id)  # (a paused run holds nothing but its record)
        resumed = await runs.resume(run.id)
        assert resumed.phase == "running"
        done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason
        assert ledger_lines(ledger) == ["next:next"]


async def test_kill_kills_the_running_steps(tmp_path: Path) -> None:
    text = '[[job]]\nname = "long"\n[[job.step]]\nname = "sleep"\nargv = ["sleep", "60"]\n'
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define(jobs(text))
        run, _ = await runs.start("long")
        await running(rt, f"{run.id}.sleep")
        with trio.fail_after(20):
            await runs.kill(run.id)
            done = await runs.wait(run.id)
        assert done.phase == "killed"
        assert runs.step_entries(run.id)["sleep"].phase == "killed"
        assert rt.processes.get(f"{run.id}.sleep").phase == "killed"


async def test_a_runtime_stopped_mid_run_goes_on_when_reopened(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ledger = tmp_path / "ledger"
    text = (
        '[[job]]\nname = "across"\n'
        + ledger_step("first", ledger)
        + gate_step(gate, ["first"])
        + ledger_step("work", ledger, ["wait"], for_each="[1, 2, 3]")
    )
    state = tmp_path / "state"
    async with corra.open_runtime(state_dir=state) as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("across")
        await running(rt, f"{run.id}.wait")
    gate.touch()  # (its program runs on with no runtime, and ends)
    async with corra.open_runtime(state_dir=state) as rt:
        assert rt.workflows.running(run.id)  # (recovered: no definition needed, its own copy)
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
    assert sorted(ledger_lines(ledger)) == ["first:first", "work:1", "work:2", "work:3"]


def _writes(value: str) -> str:
    """A Python program writing ``value`` (an expression of ``sys.argv``) to $CORRA_RESULT."""
    return f"import json, os, sys; json.dump({value}, open(os.environ['CORRA_RESULT'], 'w'))"


PREPARE = _writes("{'items': [f'i{k}' for k in range(int(sys.argv[1]))]}")
WORK = _writes("{'item': sys.argv[1], 'len': len(sys.argv[1])}")
REPORT = _writes("{'done': json.loads(sys.argv[1])}")
PIPELINE = f"""
[[job]]
name = "pipeline"
params = {{ samples = 3 }}
result = "${{steps.report.result}}"

[[job.step]]
name = "prepare"
argv = {json.dumps([PY, "-c", PREPARE, "${params.samples}"])}

[[job.step]]
name = "work"
needs = ["prepare"]
for_each = "${{steps.prepare.result.items}}"
argv = {json.dumps([PY, "-c", WORK, "${item}"])}
restart = "transient"

[[job.step]]
name = "report"
needs = ["work"]
when = "${{steps.prepare.result.items}}"
argv = {json.dumps([PY, "-c", REPORT, "${steps.work.result}"])}
"""


async def test_the_issues_pipeline_passes_results_downstream(tmp_path: Path) -> None:
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(PIPELINE))
        run, _ = await rt.workflows.start("pipeline", {"samples": "2"})
        assert run.params == {"samples": 2}  # (typed as the default is)
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        assert done.result == {"done": [{"item": "i0", "len": 2}, {"item": "i1", "len": 2}]}
        steps = rt.workflows.step_entries(run.id)
        assert steps["prepare"].result == {"items": ["i0", "i1"]}
        assert steps["work[1]"].result == {"item": "i1", "len": 2}


async def test_an_empty_fan_out_finishes_and_when_skips(tmp_path: Path) -> None:
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(PIPELINE))
        run, _ = await rt.workflows.start("pipeline", {"samples": 0})
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
        steps = rt.workflows.step_entries(run.id)
        assert steps["work"].count == 0
        assert steps["report"].phase == "skipped"
        assert done.result is None


async def test_a_run_keeps_the_definition_it_started_with(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ledger = tmp_path / "ledger"
    first = '[[job]]\nname = "v"\n' + gate_step(gate) + ledger_step("old", ledger, ["wait"])
    second = '[[job]]\nname = "v"\n' + gate_step(gate) + ledger_step("new", ledger, ["wait"])
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(first))
        before, _ = await rt.workflows.start("v")
        await running(rt, f"{before.id}.wait")
        rt.workflows.define(jobs(second))  # (as `corra serve --jobs` on SIGHUP)
        after, _ = await rt.workflows.start("v")
        gate.touch()
        assert (await rt.workflows.wait(before.id)).phase == "finished"
        assert (await rt.workflows.wait(after.id)).phase == "finished"
    assert sorted(ledger_lines(ledger)) == ["new:new", "old:old"]


async def test_a_step_whose_process_is_removed_fails_and_is_not_run_again(tmp_path: Path) -> None:
    text = '[[job]]\nname = "gone"\n[[job.step]]\nname = "sleep"\nargv = ["sleep", "60"]\n'
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("gone")
        await running(rt, f"{run.id}.sleep")
        await rt.processes.remove(f"{run.id}.sleep", kill=True)
        with trio.fail_after(20):
            done = await rt.workflows.wait(run.id)
        assert done.phase == "failed"
        # (its end, killed, may come before its removal: either way, it fails the run)
        assert "was removed" in done.reason or "was killed" in done.reason, done.reason
        await trio.sleep(0.2)
        with pytest.raises(corra.NoSuchProcess):  # (and nothing submitted it again)
            rt.processes.get(f"{run.id}.sleep")


async def test_a_step_whose_result_is_refused_fails_naming_why(tmp_path: Path) -> None:
    text = (
        '[[job]]\nname = "bad-json"\n'
        '[[job.step]]\nname = "prepare"\n'
        'argv = ["sh", "-c", "echo \'{items: 1}\' > $CORRA_RESULT"]\n'
        '[[job.step]]\nname = "work"\nneeds = ["prepare"]\n'
        'for_each = "${steps.prepare.result.items}"\nargv = ["true"]\n'
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("bad-json")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "failed"
        assert "its result was refused" in done.reason and "'prepare'" in done.reason
        assert rt.processes.get(f"{run.id}.prepare").phase == "finished"


async def test_a_tolerant_fan_out_is_waited_for_whole(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    text = (
        '[[job]]\nname = "tolerant-fan"\n'
        '[[job.step]]\nname = "work"\nfor_each = [0, 1]\ncontinue_on_failure = true\n'
        'argv = ["sh", "-c", "if [ $1 = 0 ]; then exit 1; fi; sleep 0.5; echo work >> '
        f'{ledger}", "sh", "${{item}}"]\n' + ledger_step("after", ledger, ["work"])
    )
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        rt.workflows.define(jobs(text))
        run, _ = await rt.workflows.start("tolerant-fan")
        done = await rt.workflows.wait(run.id)
        assert done.phase == "finished", done.reason
    assert ledger_lines(ledger) == ["work", "after:after"]  # (after waited for item 1)
