"""Process actors over the real LMDB store, with a scripted backend standing in for programs.

The scripted backend is the kernel-test fake DESIGN allows: it plays programs that end after
a given time with a given result, launches idempotently by key, and counts launches, so the
tests can check write-ahead, pause/resume/kill and recovery precisely. Real programs are in
tests/test_local_processes.py.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import corra
from corra._errors import InvalidTransition
from corra._runtime import RECORD_CODEC, open_runtime
from corra.actors._lifecycle import Result
from corra.actors._records import ProcessSpec
from corra.persistence import open_store


@attrs.define
class Program:
    key: str
    ends_at: float
    result: Result
    killed: bool = False


class ScriptedBackend:
    """Programs named in ``script`` end after ``seconds`` with ``returncode``; one entry is
    used per attempt. Launch is idempotent by key, as the real backends' are."""

    def __init__(self, script: Mapping[str, list[tuple[float, int]]], max_running: int = 100):
        self.script = {name: list(runs) for name, runs in script.items()}
        self.programs: dict[str, Program] = {}
        self.launches: collections.Counter[str] = collections.Counter()
        self.launch_order: list[str] = []
        self.limiter = trio.CapacityLimiter(max_running)
        self.hang_launch = False
        self.slot_order: list[str] = []

    async def acquire_slot(self, key: str) -> None:
        if key not in self.limiter._borrowers:
            await self.limiter.acquire_on_behalf_of(key)
            self.slot_order.append(key)

    def release_slot(self, key: str) -> None:
        if key in self.limiter._borrowers:
            self.limiter.release_on_behalf_of(key)

    def adopt_slot(self, key: str) -> None:
        if key not in self.limiter._borrowers:
            try:
                self.limiter.acquire_on_behalf_of_nowait(key)
            except trio.WouldBlock:
                self.limiter.total_tokens += 1
                self.limiter.acquire_on_behalf_of_nowait(key)

    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if key not in self.programs:
            name = spec.name or spec.argv[0]
            seconds, code = self.script[name].pop(0)
            now = trio.current_time()
            self.programs[key] = Program(
                key, now + seconds, Result(returncode=code, started_at=now, ended_at=now + seconds)
            )
            self.launches[key] += 1
            self.launch_order.append(name)
        if self.hang_launch:
            await trio.sleep_forever()
        return {"key": key}

    def find(self, key: str) -> dict[str, Any] | None:
        return {"key": key} if key in self.programs else None

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        program = self.programs[handle["key"]]
        await trio.sleep(max(program.ends_at - trio.current_time(), 0))
        return program.result

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        program = self.programs[handle["key"]]
        program.killed = True
        program.ends_at = min(program.ends_at, trio.current_time())
        program.result = attrs.evolve(program.result, returncode=None, signal=15, killed=True)
        await trio.lowlevel.checkpoint()
        return program.result

    async def read_log(self, key: str, stream: str, offset: int, size: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return f"{key} {stream}\n".encode()[offset : offset + size]


def spec(name: str, **fields: Any) -> dict[str, Any]:
    return {"argv": ["prog", name], "name": name, **fields}


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


async def test_a_process_runs_through_its_phases_and_every_transition_is_durable(state):
    backend = ScriptedBackend({"a": [(0.05, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("a"))
        record = await ref.wait()
        assert record.phase == "finished"
        assert record.state.result is not None and record.state.result.returncode == 0
        assert await ref.logs() == f"{record.key} stdout\n".encode()
    async with open_store(state) as store:
        stored = RECORD_CODEC.decode(store.load(record.id))
        assert stored == record
        from corra._runtime import HISTORY_CODEC

        events = [HISTORY_CODEC.decode(raw) for raw in store.history(record.id)]
    assert [(t.event, t.source, t.target) for t in events] == [
        ("submit", "created", "created"),
        ("launch", "created", "launching"),
        ("started", "launching", "running"),
        ("succeed", "running", "finished"),
    ]


async def test_failure_and_transient_rerun_as_a_new_attempt(state):
    backend = ScriptedBackend({"bad": [(0.01, 3)], "flaky": [(0.01, 1), (0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        bad = await rt.spawn_process(spec("bad"))
        flaky = await rt.spawn_process(spec("flaky", restart="transient"))
        bad_record = await bad.wait()
        assert (bad_record.phase, bad_record.state.reason) == ("failed", "exited with 3")
        with trio.fail_after(10):
            flaky_record = await flaky.wait()
        assert (flaky_record.phase, flaky_record.state.attempt) == ("finished", 2)
    assert sorted(backend.launches) == sorted([f"{bad.id}.1", f"{flaky.id}.1", f"{flaky.id}.2"])
    assert set(backend.launches.values()) == {1}


async def test_pause_holds_nothing_and_resume_continues_without_relaunching(state):
    backend = ScriptedBackend({"long": [(0.5, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("long"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        paused = await ref.pause()
        assert (paused.phase, paused.state.paused_from) == ("paused", "running")
        # the paused process is its snapshot and nothing else: no actor, no task, no slot
        assert rt.processes.active == 0
        processes = rt.lookup("/processes")
        assert isinstance(processes, corra.SupervisorRef)
        assert processes.which_children() == []
        assert backend.limiter.borrowed_tokens == 0
        with pytest.raises(InvalidTransition, match="cannot pause in phase 'paused'"):
            await ref.pause()
        resumed = await ref.resume()
        assert resumed.phase == "running"
        with pytest.raises(InvalidTransition, match="cannot resume in phase 'running'"):
            await ref.resume()
        assert (await ref.wait()).phase == "finished"
    assert list(backend.launches.values()) == [1]


async def test_kill_works_from_every_non_terminal_phase(state):
    backend = ScriptedBackend(
        {name: [(100, 0)] for name in ["running", "paused", "waiting", "blocker"]},
        max_running=2,
    )
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        running = await rt.spawn_process(spec("running"))
        paused = await rt.spawn_process(spec("paused"))
        await rt.processes.wait(paused.id, until=lambda r: r.phase == "running")
        await paused.pause()
        blocker = await rt.spawn_process(spec("blocker"))
        waiting = await rt.spawn_process(spec("waiting"))  # no slot: stays created
        await rt.processes.wait(blocker.id, until=lambda r: r.phase == "running")
        assert waiting.record().phase == "created"
        for ref in (waiting, running, paused):
            record = await ref.kill()
            assert record.phase == "killed", record
        assert running.result is not None and running.result.signal == 15
        assert waiting.result is None  # it never ran
        assert backend.programs[f"{paused.id}.1"].killed
        with pytest.raises(InvalidTransition, match="cannot kill in phase 'killed'"):
            await running.kill()
        await blocker.kill()


async def test_slots_are_handed_out_in_submission_order(state):
    names = [f"p{i}" for i in range(6)]
    backend = ScriptedBackend({name: [(0.05, 0)] for name in names}, max_running=2)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        refs = [await rt.spawn_process(spec(name)) for name in names]
        for ref in refs:
            await ref.wait()
    assert backend.slot_order == [ref.id for ref in refs]


async def test_a_named_process_is_never_submitted_twice(state):
    backend = ScriptedBackend({"once": [(0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        first = await rt.spawn_process(spec("once"))
        second = await rt.spawn_process(spec("once"))
        assert first == second
        await first.wait()
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        third = await rt.spawn_process(spec("once"))
        assert third == first and third.record().phase == "finished"
    assert len(backend.launches) == 1


async def test_recovery_reattaches_running_programs_and_settles_unknown_launches(state):
    backend = ScriptedBackend({"running": [(0.3, 0)], "launching": [(0.3, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        running = await rt.spawn_process(spec("running"))
        await rt.processes.wait(running.id, until=lambda r: r.phase == "running")
        backend.hang_launch = True  # the next launch happens, but its record is never written
        launching = await rt.spawn_process(spec("launching"))
        await rt.processes.wait(launching.id, until=lambda r: r.phase == "launching")
        await trio.sleep(0.01)
    backend.hang_launch = False
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        report = rt.recovery
        assert report is not None
        assert sorted(report.resumed) == sorted([running.id, launching.id])
        for ref in (running, launching):
            assert (await rt.processes.wait(ref.id)).phase == "finished"
    # nothing launched twice: the launch during the crash was found by its key
    assert dict(backend.launches) == {f"{running.id}.1": 1, f"{launching.id}.1": 1}


async def test_a_corrupt_record_is_set_aside_and_the_rest_recovered(state):
    backend = ScriptedBackend({"good": [(0.2, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        good = await rt.spawn_process(spec("good"))
    async with open_store(state) as store:
        await store.save("pbroken", b'{"schema": 99, "type": "ProcessRecord", "data": {}}')
        await store.save("pgarbage", b"\x00\xff not json")
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        report = rt.recovery
        assert report is not None
        assert report.resumed == (good.id,)
        assert sorted(pid for pid, _ in report.set_aside) == ["pbroken", "pgarbage"]
        assert (await rt.processes.wait(good.id)).phase == "finished"
        assert [r.id for r in rt.processes.list()] == [good.id]
    async with open_store(state) as store:
        assert sorted(q.process_id for q in store.quarantined()) == ["pbroken", "pgarbage"]


async def test_bad_specs_are_refused_before_anything_is_written(state):
    backend = ScriptedBackend({})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        with pytest.raises(corra.ConfigError, match=r"process.timeout: got 'soon'"):
            await rt.spawn_process(spec("x", timeout="soon"))
        with pytest.raises(corra.ConfigError, match=r"backend: got 'mars'"):
            await rt.spawn_process(spec("y", backend="mars"))
        assert rt.processes.list() == []


async def test_a_second_runtime_on_the_same_state_dir_is_refused(state):
    async with open_runtime(state_dir=state, backends={"local": ScriptedBackend({})}):
        with pytest.raises(corra.ConfigError, match="another corra runtime"):
            async with open_runtime(state_dir=state, backends={"local": ScriptedBackend({})}):
                pass


# -- races and failures found in review ---------------------------------------------------


async def test_a_kill_arriving_while_a_pause_is_written_still_kills(state):
    backend = ScriptedBackend({"long": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("long"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.pause)
            await trio.testing.wait_all_tasks_blocked()  # the pause is being written
            with trio.fail_after(5):
                record = await ref.kill()
            nursery.cancel_scope.cancel()
        assert record.phase == "killed"


async def test_a_rerun_killed_during_its_backoff_does_not_block_the_queue(state):
    backend = ScriptedBackend({"flaky": [(0.01, 1), (0.01, 0)], "other": [(0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        flaky = await rt.spawn_process(spec("flaky", restart="transient"))
        await rt.processes.wait(flaky.id, until=lambda r: r.state.attempt == 2)
        await flaky.pause()
        await flaky.resume()  # its actor sleeps the retry backoff
        await trio.sleep(0.1)
        await flaky.kill()  # interrupts the backoff
        other = await rt.spawn_process(spec("other"))
        with trio.fail_after(5):
            assert (await other.wait()).phase == "finished"
        assert rt.processes._admission == {"local": {}}


class FailingLaunch(ScriptedBackend):
    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        raise corra.BackendError("fork refused")


async def test_a_step_that_keeps_failing_fails_the_process_and_frees_its_slot(state):
    backend = FailingLaunch({"a": [(0.01, 0)]}, max_running=1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        a = await rt.spawn_process(spec("a"))
        with trio.fail_after(30):
            record = await a.wait()
        assert (record.phase, record.state.reason) == ("failed", "launching: fork refused")
        assert backend.limiter.borrowed_tokens == 0


class CrashingWait(ScriptedBackend):
    async def wait(self, handle: Mapping[str, Any]) -> Result:
        raise KeyError("record")  # a bug, or a malformed handle


async def test_an_unexpected_error_fails_the_process_instead_of_stranding_it(state):
    backend = CrashingWait({"a": [(0.01, 0)]}, max_running=1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        a = await rt.spawn_process(spec("a"))
        with trio.fail_after(5):
            record = await a.wait()
        assert record.phase == "failed"
        assert record.state.reason == "internal error in running: KeyError('record')"
        assert backend.limiter.borrowed_tokens == 0
        with trio.fail_after(5):
            await rt.processes.wait_idle()  # and its actor is gone
