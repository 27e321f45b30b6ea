"""Process actors over the real LMDB store, with a scripted backend standing in for programs.

The scripted backend is the kernel-test fake DESIGN allows: it plays programs that end after
a given time with a given result, launches idempotently by key, and counts launches, so the
tests can check write-ahead, pause/resume/kill and recovery precisely. Real programs are in
tests/test_local_processes.py.
"""

from __future__ import annotations

import collections
import contextlib
import random
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import corra
import corra._runtime
import corra.actors._process
from corra._errors import InvalidTransition
from corra._runtime import RECORD_CODEC, open_runtime
from corra.actors._lifecycle import ACTIVE, Result
from corra.actors._records import ProcessSpec
from corra.actors._specs import Backoff
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
        # recovery reads the records indexed as active: these were, when they got corrupt
        raw = b'{"schema": 99, "type": "ProcessRecord", "data": {}}'
        await store.save("pbroken", raw, active=True)
        await store.save("pgarbage", b"\x00\xff not json", active=True)
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


# -- the active index: recovery reads active records only ----------------------------------


def indexed_and_active(store) -> tuple[set[str], set[str]]:
    """In one read transaction: the ids in the store's ``active`` index, and the ids whose
    snapshot says active."""
    environment = store._environment()
    databases = environment.databases

    def read(txn):
        indexed = {key.decode() for key, _ in txn.cursor(db=databases.active)}
        active = {
            key.decode()
            for key, raw in txn.cursor(db=databases.snapshots)
            if RECORD_CODEC.decode(raw).phase in ACTIVE
        }
        return indexed, active

    return environment.read(read)


def indexed(rt) -> set[str]:
    return {process_id for process_id, _ in rt.processes._store.scan_active()}


class CountingCodec:
    """The record codec, counting the records it decodes."""

    def __init__(self) -> None:
        self.decoded: list[str] = []

    def encode(self, value: Any) -> bytes:
        return RECORD_CODEC.encode(value)

    def decode(self, raw: bytes) -> Any:
        record = RECORD_CODEC.decode(raw)
        self.decoded.append(record.id)
        return record


async def test_the_active_index_follows_transitions(state):
    backend = ScriptedBackend({"long": [(0.5, 0)], "quick": [(0.01, 0)], "doomed": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        long = await rt.spawn_process(spec("long"))
        assert indexed(rt) == {long.id}  # created is active
        await rt.processes.wait(long.id, until=lambda r: r.phase == "running")
        await long.pause()
        assert indexed(rt) == set()  # a paused process leaves it
        quick = await rt.spawn_process(spec("quick"))
        doomed = await rt.spawn_process(spec("doomed"))
        assert indexed(rt) == {quick.id, doomed.id}
        await quick.wait()
        assert indexed(rt) == {doomed.id}  # so does a finished one
        await long.resume()
        assert indexed(rt) == {long.id, doomed.id}  # resume enters it again
        await doomed.kill()
        assert indexed(rt) == {long.id}
        await long.wait()
        assert indexed(rt) == set()
        counts = rt.processes._store.counts()
        assert (counts.snapshots, counts.active) == (3, 0)


async def test_recovery_decodes_only_the_active_records(state, monkeypatch):
    backend = ScriptedBackend(
        {"done": [(0.01, 0)], "paused": [(100, 0)], "running": [(0.3, 0)], "killed": [(100, 0)]}
    )
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        done = await rt.spawn_process(spec("done"))
        paused = await rt.spawn_process(spec("paused"))
        killed = await rt.spawn_process(spec("killed"))
        running = await rt.spawn_process(spec("running"))
        await done.wait()
        await killed.kill()
        await rt.processes.wait(paused.id, until=lambda r: r.phase == "running")
        await paused.pause()
        await rt.processes.wait(running.id, until=lambda r: r.phase == "running")
    async with open_store(state) as store:
        # a paused process whose record got corrupt: recovery must not even read it
        await store.save("pcorrupt", b"\x00\xff not json", active=False)
    codec = CountingCodec()
    monkeypatch.setattr(corra._runtime, "RECORD_CODEC", codec)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert codec.decoded == [running.id]
        assert rt.recovery == corra.RecoveryReport(resumed=(running.id,), inactive=4, set_aside=())
        assert (await rt.processes.wait(running.id)).phase == "finished"
        assert rt.processes.get(paused.id).phase == "paused"  # read on demand
    async with open_store(state) as store:
        assert store.quarantined() == []
        assert store.load("pcorrupt") == b"\x00\xff not json"


async def test_recovery_starts_the_active_processes_oldest_first(state):
    names = [f"q{i}" for i in range(5)]
    backend = ScriptedBackend({name: [(0.05, 0)] for name in names}, max_running=1)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        refs = [await rt.spawn_process(spec(name)) for name in names]
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert rt.recovery is not None
        records = [rt.processes.get(ref.id) for ref in refs]
        oldest_first = sorted(records, key=lambda record: (record.created_at, record.id))
        assert list(rt.recovery.resumed) == [record.id for record in oldest_first]
        for ref in refs:
            await rt.processes.wait(ref.id)


def make_format_1(state) -> None:
    """Turn a closed store into one a corra of format 1 wrote: no ``active`` database."""
    import lmdb

    env = lmdb.open(str(state / "state.lmdb"), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"active", txn=txn), delete=True)
            txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


async def test_a_store_without_the_index_is_indexed_once_and_recovered(state, monkeypatch):
    backend = ScriptedBackend({"done": [(0.01, 0)], "paused": [(100, 0)], "running": [(0.3, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        done = await rt.spawn_process(spec("done"))
        paused = await rt.spawn_process(spec("paused"))
        running = await rt.spawn_process(spec("running"))
        await done.wait()
        await rt.processes.wait(paused.id, until=lambda r: r.phase == "running")
        await paused.pause()
        await rt.processes.wait(running.id, until=lambda r: r.phase == "running")
    async with open_store(state) as store:
        await store.save("pgarbage", b"\x00\xff not json")
    make_format_1(state)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        store = rt.processes._store
        assert store.has_active_index()
        assert rt.recovery == corra.RecoveryReport(
            resumed=(running.id,),
            inactive=2,
            set_aside=(("pgarbage", rt.recovery.set_aside[0][1]),),  # unreadable: read, set aside
        )
        assert indexed(rt) == {running.id}
        assert (await rt.processes.wait(running.id)).phase == "finished"
        resumed = await rt.processes.resume(paused.id)
        assert indexed(rt) == {paused.id} and resumed.phase == "running"
    codec = CountingCodec()
    monkeypatch.setattr(corra._runtime, "RECORD_CODEC", codec)
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        # indexed now: only the active record is read
        assert codec.decoded == [paused.id]
        assert rt.recovery == corra.RecoveryReport(resumed=(paused.id,), inactive=2, set_aside=())
        await rt.processes.kill(paused.id)


async def test_a_record_indexed_as_active_that_is_not_is_unindexed(state):
    backend = ScriptedBackend({"done": [(0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        done = await rt.spawn_process(spec("done"))
        await done.wait()
    async with open_store(state) as store:
        await store.save(done.id, store.load(done.id), active=True)  # behind corra's back
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert rt.recovery == corra.RecoveryReport(resumed=(), inactive=1, set_aside=())
        assert indexed(rt) == set()
        assert rt.processes.get(done.id).phase == "finished"


@pytest.mark.parametrize("seed", range(4))
async def test_after_random_transitions_the_index_holds_exactly_the_active_ids(
    state, seed, monkeypatch
):
    backoff = Backoff(initial=0.01, factor=1.0, max=0.01)
    monkeypatch.setattr(corra.actors._process, "RETRY_BACKOFF", backoff)
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(12)]
    backend = ScriptedBackend(
        {
            name: [(rng.choice([0.0, 0.01, 0.05, 100]), rng.choice([0, 0, 1])) for _ in range(3)]
            for name in names
        },
        max_running=3,
    )
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        store = rt.processes._store
        ids: list[str] = []
        for _ in range(60):
            action = rng.choice(["spawn", "pause", "resume", "kill", "sleep", "sleep"])
            with trio.fail_after(10):
                if action == "spawn" and len(ids) == len(names):
                    action = "sleep"
                if action == "spawn":
                    restart = rng.choice(["temporary", "transient"])
                    ref = await rt.spawn_process(spec(names[len(ids)], restart=restart))
                    ids.append(ref.id)
                elif action == "sleep" or not ids:
                    await trio.sleep(rng.choice([0, 0.005, 0.02]))
                else:
                    with contextlib.suppress(InvalidTransition):
                        await getattr(rt.processes, action)(rng.choice(ids))
            index, active = indexed_and_active(store)
            assert index == active, action
        for process_id in ids:
            with contextlib.suppress(InvalidTransition):
                await rt.processes.kill(process_id, wait=False)
        await rt.processes.wait_idle()
        assert indexed_and_active(store) == (set(), set())
        counts = store.counts()
        assert (counts.snapshots, counts.active) == (len(ids), 0)
