"""How the run actor writes (`corra.workflows._book`), with real local programs: a fan-out's
items' endings gather into few transactions, none of them is lost, readers see them once the
run is quiet, and a failed item still fails the run once its fan-out has ended."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio

import corra
from corra.workflows import parse_jobs
from corra.workflows._book import FLUSH_AFTER


def jobs(text: str) -> dict[str, Any]:
    return parse_jobs(tomllib.loads(text)["job"], "test.toml")


def fan_out(count: int, argv: str, after: str = "") -> str:
    return (
        '[[job]]\nname = "fan"\n'
        f'[[job.step]]\nname = "work"\nfor_each = {list(range(count))}\nargv = {argv}\n' + after
    )


async def ended_process(rt: corra.Runtime, name: str) -> None:
    """Until the process ``name`` exists (its run submits it soon) and has ended."""
    while True:
        try:
            await rt.processes.wait(name)
            return
        except corra.NoSuchProcess:
            await trio.sleep(0.02)


async def test_a_fan_outs_endings_take_few_transactions_and_none_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with corra.open_runtime(state_dir=tmp_path / "state", max_running=8) as rt:
        runs = rt.workflows
        writes: list[int] = []
        write_steps = runs.write_steps

        async def counted(run_id: str, entries: Any) -> None:
            writes.append(len(entries))
            await write_steps(run_id, entries)

        monkeypatch.setattr(runs, "write_steps", counted)
        runs.define(
            jobs(
                fan_out(
                    200,
                    '["true"]',
                    '[[job.step]]\nname = "join"\nneeds = ["work"]\nargv = ["true"]\n',
                )
            )
        )
        run, _ = await runs.start("fan")
        with trio.fail_after(120):
            done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason
        steps = runs.step_entries(run.id)  # (the store's, not the actor's)
        assert [steps[f"work[{i}]"].phase for i in range(200)] == ["finished"] * 200
        assert steps["join"].phase == "finished"
        # 202 entries decided (the fan-out's, its 200 items', the join's) and 201 ended: the
        # items' endings did not take a transaction each (they gather until the join is
        # decided, or the run is quiet a moment: here 3 transactions in all, on a quiet
        # machine).
        assert sum(writes) == 202 + 201
        assert len(writes) < 40, writes


async def test_an_ended_item_is_in_the_store_once_the_run_is_quiet(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    argv = f'["sh", "-c", "if [ $0 = 1 ]; then {wait}; fi", "${{item}}"]'
    async with corra.open_runtime(state_dir=tmp_path / "state") as rt:
        runs = rt.workflows
        runs.define(jobs(fan_out(2, argv)))
        run, _ = await runs.start("fan")
        with trio.fail_after(30):
            await ended_process(rt, f"{run.id}.work.0")
            ended = trio.current_time()
            while runs.step_entries(run.id)["work[0]"].phase != "finished":
                await trio.sleep(0.02)
        # (written once the run was quiet for FLUSH_AFTER s; a loaded machine may take longer)
        assert trio.current_time() - ended < FLUSH_AFTER + 5
        assert runs.step_entries(run.id)["work[1]"].phase == "submitted"
        gate.touch()
        with trio.fail_after(30):
            done = await runs.wait(run.id)
        assert done.phase == "finished", done.reason


async def test_a_failed_item_fails_the_run_once_its_fan_out_has_ended(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    argv = f'["sh", "-c", "echo $0 >> {ledger}; [ $0 != 2 ] || exit 3", "${{item}}"]'
    join = f'argv = ["sh", "-c", "echo join >> {ledger}"]\n'
    after = f'[[job.step]]\nname = "join"\nneeds = ["work"]\n{join}'
    async with corra.open_runtime(state_dir=tmp_path / "state", max_running=2) as rt:
        runs = rt.workflows
        runs.define(jobs(fan_out(6, argv, after)))
        run, _ = await runs.start("fan")
        with trio.fail_after(60):
            done = await runs.wait(run.id)
        assert done.phase == "failed"
        assert done.reason is not None and "'work[2]'" in done.reason and "3" in done.reason
        steps = runs.step_entries(run.id)
        assert steps["work[2]"].phase == "failed"
        assert "join" not in steps
        # (the other items ran on: a failed item stops what follows, not its siblings)
        assert sorted(ledger.read_text().split()) == [str(i) for i in range(6)]
        assert {steps[f"work[{i}]"].phase for i in (0, 1, 3, 4, 5)} == {"finished"}
