"""Queued processes cost nothing (issue 13): a process waiting for a slot is its snapshot and
its id in the admission queue, no actor, no task, until the admission gives it its slot, in
the order of submission; a pause or kill takes it out of the queue, a resume or a rerun puts
it at the back, and the order holds across a crash of the runtime.

Over the scripted backend of tests/test_processes.py (its slots are a trio limiter), and real
programs through ``corra run`` for the crash.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.lowlevel

import corra.processes._actor
from corra._runtime import HISTORY_CODEC, RECORD_CODEC, open_runtime
from corra.actors._specs import Backoff
from corra.cli._run import Progress
from corra.persistence import open_store
from corra.processes._convert import parse_process_spec
from corra.processes._lifecycle import ProcessState
from corra.processes._record import ProcessRecord, Transition
from corra.processes._recovery import recover
from tests.test_processes import ScriptedBackend, spec

WAITING = 1000


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def _tasks() -> int:
    """How many trio tasks are alive."""
    count, todo = 0, [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


def _events(store, process_id: str) -> list[str]:
    return [HISTORY_CODEC.decode(raw).event for raw in store.history(process_id)]


async def test_a_queued_process_has_no_actor_no_task_and_no_record_in_memory(state):
    names = ["long", *(f"q{n}" for n in range(WAITING))]
    backend = ScriptedBackend({name: [(100, 0)] for name in names}, max_running=1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        long = await rt.spawn_process(spec("long"))
        await manager.wait(long.id, until=lambda r: r.phase == "running")
        before = _tasks()
        for name in names[1:]:
            await rt.spawn_process(spec(name))
        await trio.testing.wait_all_tasks_blocked()
        assert (manager.active, manager.queued) == (1, WAITING)
        # One dispatcher for the backend, nothing per queued process.
        assert _tasks() - before <= 2
        assert len(manager._journal._active) == 1  # only the running one's record
        assert len(manager._actors._supervisor.which_children()) == 1  # /processes
        assert manager.list()[-1].phase == "created"


async def test_queued_processes_get_their_slots_in_submission_order(state):
    names = [f"p{n:02}" for n in range(30)]
    backend = ScriptedBackend({name: [(0.001, 0)] for name in names}, max_running=2)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        refs = [await rt.spawn_process(spec(name)) for name in names]
        with trio.fail_after(10):
            await rt.processes.wait_idle()  # (queued ones count: it waits for all of them)
        assert [rt.processes.get(ref.id).phase for ref in refs] == ["finished"] * len(refs)
    # (the slots' order: two programs launched at once may start in either order)
    assert backend.slot_order == [ref.id for ref in refs]
    assert rt.processes.queued == 0


async def test_pausing_a_queued_process_takes_it_out_and_a_resume_queues_it_at_the_back(state):
    names = ["long", "a", "b", "c"]
    backend = ScriptedBackend({name: [(0.001, 0)] for name in names}, max_running=1)
    backend.script["long"] = [(0.3, 0)]
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        long = await rt.spawn_process(spec("long"))
        a, b, c = [await rt.spawn_process(spec(name)) for name in names[1:]]
        paused = await a.pause()
        assert paused.phase == "paused" and manager.queued == 2
        assert a.id not in manager._actors
        await a.resume()
        assert manager.queued == 3
        with trio.fail_after(10):
            await manager.wait_idle()
        for ref in (long, a, b, c):
            assert (await ref.wait()).phase == "finished"
        assert backend.launch_order == ["long", "b", "c", "a"]
        events = _events(manager.store, a.id)
    assert events == ["submit", "pause", "resume", "launch", "started", "succeed"]


async def test_killing_a_queued_process_ends_it_without_a_launch_and_frees_its_place(state):
    backend = ScriptedBackend({"long": [(0.3, 0)], "a": [(0.001, 0)], "b": [(0.001, 0)]}, 1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        await rt.spawn_process(spec("long"))
        a = await rt.spawn_process(spec("a"))
        b = await rt.spawn_process(spec("b"))
        killed = await a.kill()
        assert killed.phase == "killed" and killed.state.result is None
        assert manager.queued == 1
        with trio.fail_after(10):
            assert (await b.wait()).phase == "finished"
        assert backend.launch_order == ["long", "b"]
        assert _events(manager.store, a.id) == ["submit", "kill", "killed"]


async def test_killing_the_head_while_it_waits_for_its_slot_gives_the_slot_to_the_next(state):
    backend = ScriptedBackend({"long": [(0.2, 0)], "a": [(0.001, 0)], "b": [(0.001, 0)]}, 1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        await rt.spawn_process(spec("long"))
        a = await rt.spawn_process(spec("a"))
        b = await rt.spawn_process(spec("b"))
        await trio.testing.wait_all_tasks_blocked()  # the dispatcher asks a slot for a
        await a.kill()
        with trio.fail_after(10):
            assert (await b.wait()).phase == "finished"
        assert backend.limiter.borrowed_tokens == 0
        assert rt.processes.queued == 0


async def test_a_rerun_queues_behind_the_processes_waiting_already(state):
    names = ["bad", "long", "a", "b"]
    backend = ScriptedBackend({name: [(0.001, 0)] for name in names}, max_running=1)
    backend.script["bad"] = [(0.001, 1), (0.001, 0)]
    backend.script["long"] = [(0.3, 0)]
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        bad = await rt.spawn_process(spec("bad"))
        assert (await bad.wait()).phase == "failed"
        await rt.spawn_process(spec("long"))
        await rt.spawn_process(spec("a"))
        record = await rt.processes.rerun(bad.id)
        assert record.phase == "created" and rt.processes.queued == 2
        await rt.spawn_process(spec("b"))
        with trio.fail_after(10):
            await rt.processes.wait_idle()
        assert (await bad.wait()).phase == "finished"
    assert backend.launch_order == ["bad", "long", "a", "bad", "b"]


async def test_a_retry_waits_its_backoff_without_an_actor_then_queues(state, monkeypatch):
    backoff = Backoff(initial=0.3, factor=1.0, max=0.3)
    monkeypatch.setattr(corra.processes._actor, "RETRY_BACKOFF", backoff)
    backend = ScriptedBackend({"flaky": [(0.001, 1), (0.001, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        flaky = await rt.spawn_process(spec("flaky", restart="transient"))
        record = await manager.wait(flaky.id, until=lambda r: r.state.attempt == 2)
        assert record.phase == "created"
        await trio.testing.wait_all_tasks_blocked()
        assert (manager.active, manager.queued) == (0, 1)  # in its backoff
        with trio.fail_after(10):
            assert (await flaky.wait()).phase == "finished"
        assert manager.queued == 0


async def test_a_pause_during_a_retry_backoff_takes_it_out_of_the_timer(state, monkeypatch):
    backoff = Backoff(initial=0.2, factor=1.0, max=0.2)
    monkeypatch.setattr(corra.processes._actor, "RETRY_BACKOFF", backoff)
    backend = ScriptedBackend({"flaky": [(0.001, 1), (0.001, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        flaky = await rt.spawn_process(spec("flaky", restart="transient"))
        await manager.wait(flaky.id, until=lambda r: r.state.attempt == 2)
        await trio.testing.wait_all_tasks_blocked()
        assert (await flaky.pause()).phase == "paused"
        assert manager.queued == 0
        await trio.sleep(0.3)  # (its backoff would be over: it stays paused)
        assert manager.get(flaky.id).phase == "paused" and manager.queued == 0
        await flaky.resume()
        with trio.fail_after(10):
            assert (await flaky.wait()).phase == "finished"


# -- recovery ----------------------------------------------------------------------------------


class CountingCodec:
    """The records' codec, counting what it decodes."""

    def __init__(self) -> None:
        self.decoded = 0

    def encode(self, value):
        return RECORD_CODEC.encode(value)

    def decode(self, raw: bytes):
        self.decoded += 1
        return RECORD_CODEC.decode(raw)


def _backend(count: int) -> ScriptedBackend:
    """One slot; ``long`` runs long, ``w0000``... and ``late`` end at once."""
    names = [*(f"w{n:04}" for n in range(count)), "late"]
    backend = ScriptedBackend({name: [(0.001, 0)] for name in names}, max_running=1)
    backend.script["long"] = [(100, 0)]
    return backend


async def _queued_behind_one(state, backend: ScriptedBackend, count: int) -> tuple[str, list[str]]:
    """A state dir left with ``long`` running and ``count`` processes waiting for its slot."""
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        long = await rt.spawn_process(spec("long"))
        await rt.processes.wait(long.id, until=lambda r: r.phase == "running")
        waiting = [(await rt.spawn_process(spec(f"w{n:04}"))).id for n in range(count)]
    return long.id, waiting


async def test_recovery_queues_the_waiting_processes_in_order_without_decoding_them(state):
    running, waiting = await _queued_behind_one(state, _backend(300), 300)
    codec = CountingCodec()
    started, queued = [], []

    async def start(record) -> None:
        started.append(record.id)

    async with open_store(state) as store:
        report = await recover(
            store,
            codec,
            start=start,
            queue=queued.extend,
            wait_for_host=lambda record: None,
            has_backend=lambda name: True,
        )
    assert codec.decoded == 1  # the running one's record, and no other
    assert (started, queued) == ([running], waiting)
    assert report.resumed == (running, *waiting)


async def test_after_a_restart_the_recovered_queue_is_admitted_first_and_in_order(state):
    backend = _backend(200)
    long, waiting = await _queued_behind_one(state, backend, 200)
    backend.limiter.total_tokens = 2  # a slot free beside the running one
    backend.slot_order.clear()
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        assert manager.queued == 200  # (recovered; their records are read in the background)
        late = await rt.spawn_process(spec("late"))
        assert manager.get(late.id).phase == "created"  # behind them, though a slot is free
        await manager.kill(long)
        with trio.fail_after(20):
            await manager.wait_idle()
        assert [manager.get(process_id).phase for process_id in waiting] == ["finished"] * 200
    assert backend.slot_order == [*waiting, late.id]
    assert backend.launches[f"{long}.1"] == 1  # reattached, not launched again


async def test_a_corrupt_waiting_record_is_set_aside_when_its_turn_is_read(state):
    backend = _backend(3)
    long, waiting = await _queued_behind_one(state, backend, 3)
    async with open_store(state) as store:
        await store.save(waiting[1], b"\x00\xff not json")  # behind corra's back
    backend.slot_order.clear()
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        await rt.processes.kill(long)
        with trio.fail_after(10):
            await rt.processes.wait_idle()
        assert rt.processes.get(waiting[2]).phase == "finished"
        assert [entry.process_id for entry in rt.processes.store.quarantined()] == [waiting[1]]
    assert backend.slot_order == [waiting[0], waiting[2]]


# -- a crash of the runtime ------------------------------------------------------------------


def _job_file(directory: Path, count: int) -> Path:
    """``count`` programs that each write their name to ``order`` as they start; the first
    one then sleeps, so that the others wait for its slot."""
    tables = []
    for number in range(count):
        seconds = 3 if number == 0 else 0
        script = f"echo q{number} >> {directory / 'order'}; sleep {seconds}"
        tables.append(f'[[process]]\nname = "q{number}"\nargv = ["sh", "-c", "{script}"]\n')
    path = directory / "jobs.toml"
    path.write_text("\n".join(tables))
    return path


def _corra_run(directory: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "corra.cli", "run", "jobs.toml", "--max-running", "1",
         "--state-dir", "state"],
        cwd=directory,
        **popen,
    )  # fmt: skip


def test_queued_processes_keep_their_order_across_a_kill_9_of_the_runtime(tmp_path):
    count = 8
    _job_file(tmp_path, count)
    run = _corra_run(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert run.stdout is not None
        submitted = running = 0
        for line in run.stdout:
            submitted += line.endswith(b": submitted\n")
            running += b"q0: running" in line
            if submitted == count and running:
                break
        assert (submitted, running) == (count, 1)
    finally:
        os.kill(run.pid, signal.SIGKILL)  # q0 runs on under its chaperone
        run.wait()
        run.stdout.close()
    started = time.monotonic()
    again = _corra_run(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = again.communicate(timeout=60)
    assert again.returncode == 0, output.decode()
    assert b"recovered 8 active process(es)" in output
    # Each ran once, in the order they were submitted (q0 was reattached, not run again).
    assert (tmp_path / "order").read_text().split() == [f"q{n}" for n in range(count)]
    assert time.monotonic() - started < 30


# -- corra run's progress ------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_corra_runs_progress_moves_its_counts_and_keeps_names_of_running_ones_only():
    out = _Terminal()
    progress = Progress(out)
    spec_ = parse_process_spec({"argv": ["true"], "name": "job"})

    def step(process_id: str, event: str, source: str, target: str) -> None:
        record = ProcessRecord(process_id, spec_, ProcessState(phase=target), 0.0)
        progress.update(record, Transition(1.0, event, source, target, 1))

    for n in range(WAITING):
        step(f"p{n}", "submit", "created", "created")
    step("p0", "launch", "created", "launching")
    step("p0", "started", "launching", "running")
    step("p0", "started", "launching", "running")  # (seen twice: counted once)
    assert progress.counts == {"created": WAITING - 1, "launching": 0, "running": 1}
    assert list(progress.since) == ["p0"]  # the running one's name, no other
    drawn = out.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()  # (the last drawing)
    assert drawn[0] == f"created {WAITING - 1}  running 1"
    assert drawn[1].startswith("  running job ") and len(drawn) == 2
