"""Process actors over the real LMDB store, with a scripted backend standing in for programs.

The scripted backend is the kernel-test fake DESIGN allows: it plays programs that end after
a given time with a given result, launches idempotently by key, and counts launches, so the
tests can check write-ahead, pause/resume/kill and recovery precisely. Real programs are in
tests/test_local_processes.py.
"""

from __future__ import annotations

import collections
import contextlib
import gc
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
import corra.processes._actor
from corra._errors import InvalidTransition
from corra._runtime import RECORD_CODEC, open_runtime
from corra.actors._specs import Backoff
from corra.persistence import open_store
from corra.processes._backend import BackendBase, Capabilities, EffectKey, LaunchRequest
from corra.processes._lifecycle import ACTIVE, Result
from corra.processes._spec import ProcessSpec


@attrs.define
class Program:
    key: str
    ends_at: float
    result: Result
    killed: bool = False


class ScriptedBackend(BackendBase):
    """Programs named in ``script`` end after ``seconds`` with ``returncode``; one entry is
    used per attempt. Launch is idempotent by key, as the real backends' are."""

    capabilities = Capabilities(slots=True)

    def __init__(self, script: Mapping[str, list[tuple[float, int]]], max_running: int = 100):
        self.script = {name: list(runs) for name, runs in script.items()}
        self.programs: dict[str, Program] = {}
        self.launches: collections.Counter[str] = collections.Counter()
        self.launch_order: list[str] = []
        self.limiter = trio.CapacityLimiter(max_running)
        self.hang_launch = False
        self.hang_before_launch = False
        self.slot_order: list[str] = []

    async def acquire_slot(self, key: EffectKey) -> None:
        if key not in self.limiter._borrowers:
            await self.limiter.acquire_on_behalf_of(key)
            self.slot_order.append(key.process_id)

    def try_acquire_slot(self, key: EffectKey) -> bool:
        if key not in self.limiter._borrowers:
            try:
                self.limiter.acquire_on_behalf_of_nowait(key)
            except trio.WouldBlock:
                return False
            self.slot_order.append(key.process_id)
        return True

    def release_slot(self, key: EffectKey) -> None:
        if key in self.limiter._borrowers:
            self.limiter.release_on_behalf_of(key)

    def adopt_slot(self, key: EffectKey) -> None:
        if key not in self.limiter._borrowers:
            try:
                self.limiter.acquire_on_behalf_of_nowait(key)
            except trio.WouldBlock:
                self.limiter.total_tokens += 1
                self.limiter.acquire_on_behalf_of_nowait(key)

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        key = str(request.key)
        await trio.lowlevel.checkpoint()
        if self.hang_before_launch:
            await trio.sleep_forever()  # a crash before the program exists
        if key not in self.programs:
            name = request.name or request.argv[0]
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

    async def find(self, key: EffectKey, host: str | None = None) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return {"key": str(key)} if str(key) in self.programs else None

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

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        return f"{key} {stream}\n".encode()[offset : offset + size]


class SlotWaitingBackend(ScriptedBackend):
    """Never a slot at once (`try_acquire_slot`): every process is durable as created before
    it queues for a slot, and as launching before its launch (two writes where a free slot
    makes one)."""

    def try_acquire_slot(self, key: EffectKey) -> bool:
        return False


BACKENDS = [ScriptedBackend, SlotWaitingBackend]


def spec(name: str, **fields: Any) -> dict[str, Any]:
    return {"argv": ["prog", name], "name": name, **fields}


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.mark.parametrize("backend_type", BACKENDS)
async def test_a_process_runs_through_its_phases_and_every_transition_is_durable(
    state, backend_type
):
    backend = backend_type({"a": [(0.05, 0)]})
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
        journal = rt.processes._journal
        assert not journal._active and not journal._watches and not journal._unconfirmed
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


@pytest.mark.parametrize("backend_type", BACKENDS)
async def test_slots_are_handed_out_in_submission_order(state, backend_type):
    names = [f"p{i}" for i in range(6)]
    backend = backend_type({name: [(0.05, 0)] for name in names}, max_running=2)
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


@pytest.mark.parametrize("backend_type", BACKENDS)
async def test_recovery_reattaches_running_programs_and_settles_unknown_launches(
    state, backend_type
):
    backend = backend_type({"running": [(0.3, 0)], "launching": [(0.3, 0)]})
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

            async def pause() -> None:  # (it did not take: the process is killed, a 409)
                with pytest.raises(corra.InvalidTransition) as refused:
                    await ref.pause()
                assert refused.value.phase == "killed"

            nursery.start_soon(pause)
            await trio.testing.wait_all_tasks_blocked()  # the pause is being written
            with trio.fail_after(5):
                record = await ref.kill()
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
        assert rt.processes.queued == 0  # nobody left in the queue


class FailingLaunch(ScriptedBackend):
    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
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
    return {process_id for process_id, _ in rt.processes.store.scan_active()}


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
        counts = rt.processes.store.counts()
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
    # The first runs long enough to be active still when the runtime stops, however slow
    # the five submissions are on a loaded machine; the rest wait behind it for the slot.
    scripts = {name: [(2.0 if name == "q0" else 0.05, 0)] for name in names}
    backend = ScriptedBackend(scripts, max_running=1)
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
        store = rt.processes.store
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
    monkeypatch.setattr(corra.processes._actor, "RETRY_BACKOFF", backoff)
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
        store = rt.processes.store
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


# -- how many durable writes a process waits for --------------------------------------------


class RecordingStore:
    """The runtime's store, with every save written down as (how, phase, events)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.saves: list[tuple[str, str, list[str]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _note(self, how: str, snapshot: bytes, transitions: Any) -> None:
        from corra._runtime import HISTORY_CODEC

        events = [HISTORY_CODEC.decode(entry).event for entry in transitions]
        self.saves.append((how, RECORD_CODEC.decode(snapshot).phase, events))

    async def save(self, process_id: str, snapshot: bytes, **options: Any) -> None:
        self._note("waited", snapshot, options.get("transitions", ()))
        await self.store.save(process_id, snapshot, **options)

    def save_nowait(self, process_id: str, snapshot: bytes, **options: Any) -> Any:
        self._note("background", snapshot, options.get("transitions", ()))
        return self.store.save_nowait(process_id, snapshot, **options)


async def history_of(state, process_id: str) -> list[str]:
    from corra._runtime import HISTORY_CODEC

    async with open_store(state) as store:
        return [HISTORY_CODEC.decode(raw).event for raw in store.history(process_id)]


@pytest.mark.parametrize("backend_type", BACKENDS)
async def test_a_process_waits_for_two_durable_writes_when_a_slot_is_free(state, backend_type):
    backend = backend_type({"a": [(0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        store = rt.processes.store
        rt.processes._journal._store = recording = RecordingStore(store)
        ref = await rt.spawn_process(spec("a"))
        # Write-ahead: the intent is durable before anything is launched.
        assert backend.launches == {}
        first = "launching" if backend_type is ScriptedBackend else "created"
        assert RECORD_CODEC.decode(store.load(ref.id)).phase == first
        assert (await ref.wait()).phase == "finished"
    if backend_type is ScriptedBackend:
        # submission and the intent to launch are one write; running is not waited for
        assert recording.saves == [
            ("waited", "launching", ["submit", "launch"]),
            ("background", "running", ["started"]),
            ("waited", "finished", ["succeed"]),
        ]
    else:
        assert recording.saves == [
            ("waited", "created", ["submit"]),
            ("waited", "launching", ["launch"]),
            ("background", "running", ["started"]),
            ("waited", "finished", ["succeed"]),
        ]
    assert await history_of(state, ref.id) == ["submit", "launch", "started", "succeed"]


async def test_a_crash_between_the_merged_write_and_the_launch_launches_once(state):
    backend = ScriptedBackend({"a": [(0.01, 0)]})
    backend.hang_before_launch = True
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("a"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "launching")
        await trio.sleep(0.01)  # the actor is in the launch, which never gets to the program
        assert RECORD_CODEC.decode(rt.processes.store.load(ref.id)).phase == "launching"
    assert backend.launches == {}  # the runtime went away before the program existed
    backend.hang_before_launch = False
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert rt.recovery is not None and rt.recovery.resumed == (ref.id,)
        assert (await rt.processes.wait(ref.id)).phase == "finished"
    assert dict(backend.launches) == {f"{ref.id}.1": 1}
    assert await history_of(state, ref.id) == ["submit", "launch", "started", "succeed"]


class NeverCommitted:
    """What a save in the background is when the runtime dies before its commit."""

    done = False
    error = None


class LosingStore(RecordingStore):
    """Loses every save in the background, as a crash before their commit would."""

    def save_nowait(self, process_id: str, snapshot: bytes, **options: Any) -> Any:
        self._note("lost", snapshot, options.get("transitions", ()))
        return NeverCommitted()


async def test_a_lost_running_record_is_recovered_from_launching_without_relaunching(state):
    backend = ScriptedBackend({"a": [(0.3, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        rt.processes._journal._store = losing = LosingStore(rt.processes.store)
        ref = await rt.spawn_process(spec("a"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        assert losing.saves[-1] == ("lost", "running", ["started"])
        assert RECORD_CODEC.decode(losing.load(ref.id)).phase == "launching"
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert rt.recovery is not None and rt.recovery.resumed == (ref.id,)
        # found by its key: the launch of the recovery returns the running program's handle
        assert (await rt.processes.wait(ref.id)).phase == "finished"
    assert dict(backend.launches) == {f"{ref.id}.1": 1}
    assert await history_of(state, ref.id) == ["submit", "launch", "started", "succeed"]


@pytest.mark.parametrize("seconds", [0.0, 0.05])
async def test_a_failed_write_in_the_background_is_written_again_in_order(
    state, seconds, monkeypatch
):
    from corra._errors import StoreError
    from corra.persistence import _store as store_module

    original = store_module.PendingSave.apply
    failed: list[bytes] = []

    def apply(self, txn, databases):
        if not failed and any(b'"event":"started"' in entry for entry in self.transitions):
            failed.append(self.process)
            raise StoreError("injected: the disk is full")
        return original(self, txn, databases)

    monkeypatch.setattr(store_module.PendingSave, "apply", apply)
    backend = ScriptedBackend({"a": [(seconds, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("a"))
        with trio.fail_after(10):
            record = await ref.wait()
        assert record.phase == "finished"
        assert not rt.processes._journal._unconfirmed
    assert failed == [ref.id.encode()]
    # the entry of the failed write is written by the next one (which, if it was queued
    # behind the failed one, failed too and was retried), before its own
    assert await history_of(state, ref.id) == ["submit", "launch", "started", "succeed"]
    assert dict(backend.launches) == {f"{ref.id}.1": 1}


async def test_a_cancelled_wait_leaves_nothing_behind(state):
    backend = ScriptedBackend({"long": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("long"))
        with trio.move_on_after(0.01):
            await ref.wait()
        assert rt.processes._journal._watches == {}
        await ref.kill()


# -- requests that interrupt a wait -----------------------------------------------------------


class RequestAsItEnds(ScriptedBackend):
    """Sends a request to the process actor just as the program's exit is reported: the wait
    is over, but the actor has not moved on yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request: Any = None
        self.killed_effects: list[str] = []

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        result = await super().wait(handle)
        if self.request is not None:
            request, self.request = self.request, None
            request()
        return result

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        try:
            return await super().launch(request)
        except trio.Cancelled:
            self.killed_effects.append(str(request.key))
            raise


async def test_a_request_as_a_wait_ends_is_taken_before_the_next_effect(state):
    backend = RequestAsItEnds({"a": [(0.01, 1), (0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("a", restart="transient"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        actor = rt.processes._actors[ref.id]
        backend.request = lambda: actor.send_nowait("pause")
        paused = await rt.processes.wait(ref.id, until=lambda r: r.phase == "paused")
        # the exit came with the request: the actor took the request, not the exit (which
        # the resumed process finds again: waiting is idempotent)
        assert (paused.state.paused_from, paused.state.attempt) == ("running", 1)
        await rt.processes.wait_idle()
        await ref.resume()
        record = await ref.wait()
        assert (record.phase, record.state.attempt) == ("finished", 2)
    assert backend.killed_effects == []
    assert await history_of(state, ref.id) == [
        "submit",
        "launch",
        "started",
        "pause",
        "resume",
        "retry",
        "launch",
        "started",
        "succeed",
    ]


class SlowKill(ScriptedBackend):
    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        await trio.sleep_forever()  # a program that takes the whole grace to die
        raise AssertionError


async def test_leaving_the_runtime_stops_an_actor_that_goes_on_after_an_interruption(state):
    backend = SlowKill({"a": [(100, 0)]})
    with trio.fail_after(5):
        async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
            ref = await rt.spawn_process(spec("a"))
            await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
            await rt.processes.kill(ref.id, wait=False)  # interrupts the wait for the exit
            await rt.processes.wait(ref.id, until=lambda r: r.phase == "killing")
            await trio.sleep(0.01)  # the actor is in the (shielded) kill, for ever
    # the runtime stopped it all the same; the next one finishes the kill
    backend.__class__ = ScriptedBackend
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        assert (await rt.processes.wait(ref.id)).phase == "killed"


class HostBackend(ScriptedBackend):
    """A scripted backend whose one host can be down: then every launch and wait raises
    `HostUnavailable` (with the host's policy), and `wait_available` waits until it is up.
    It also records the pause and resume it is told of."""

    capabilities = Capabilities(slots=True, pause_hooks=True, waits_for_host=True)

    def __init__(self, *args: Any, policy: str = "pause", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.up = trio.Event()
        self.up.set()
        self.down_now = trio.Event()  # set when the host goes down: waits end with the error
        self.told: list[tuple[str, str]] = []

    def go_down(self) -> None:
        if self.up.is_set():
            self.up = trio.Event()
            self.down_now.set()

    def _check(self) -> None:
        if not self.up.is_set():
            raise corra.HostUnavailable(
                "me@h:22", "unavailable after 5 failed connects", self.policy
            )

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        self._check()
        return await super().launch(request)

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        self._check()
        program = self.programs[handle["key"]]
        with trio.move_on_after(max(program.ends_at - trio.current_time(), 0)):
            await self.down_now.wait()
        self._check()
        return program.result

    async def wait_available(self, host: str) -> None:
        assert host == "h"
        await self.up.wait()

    async def pause(self, handle: Mapping[str, Any]) -> None:
        self.told.append(("pause", handle["key"]))

    async def resume(self, handle: Mapping[str, Any]) -> None:
        self.told.append(("resume", handle["key"]))


def remote(name: str, **fields: Any) -> dict[str, Any]:
    return spec(name, backend="ssh", host="h", **fields)


async def test_an_unavailable_host_pauses_its_processes_which_resume_when_it_answers(
    state, autojump_clock
):
    backend = HostBackend({"r1": [(100, 0)], "r2": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        manager = rt.processes
        running = await rt.spawn_process(remote("r1"))
        await manager.wait(running.id, until=lambda r: r.phase == "running")
        backend.go_down()
        waiting = await rt.spawn_process(remote("r2"))  # its launch meets the host down
        for ref, source in ((running, "running"), (waiting, "launching")):
            record = await manager.wait(ref.id, until=lambda r: r.phase == "paused")
            assert record.state.paused_from == source
            assert record.state.reason == (
                "host unavailable: h: me@h:22: unavailable after 5 failed connects"
            )
            assert record.state.paused_by == "host"
        assert manager.active == 0 and backend.limiter.borrowed_tokens == 0
        assert backend.told == []  # (a pause for the host tells the backend nothing)
        await trio.sleep(60)
        backend.up.set()
        records = [await ref.wait() for ref in (running, waiting)]
    assert [(r.phase, r.state.attempt) for r in records] == [("finished", 1), ("finished", 1)]
    assert set(backend.launches.values()) == {1}


async def test_a_host_pause_outlives_the_runtime_and_the_next_one_resumes_it(state, autojump_clock):
    backend = HostBackend({"r": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        ref = await rt.spawn_process(remote("r"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        backend.go_down()
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "paused")
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        assert rt.recovery is not None
        assert rt.recovery.waiting_for_host == (ref.id,)
        assert rt.recovery.resumed == ()
        await trio.sleep(30)
        assert rt.processes.get(ref.id).phase == "paused"
        backend.up.set()
        record = await rt.processes.wait(ref.id)
    assert (record.phase, list(backend.launches.values())) == ("finished", [1])


async def test_a_host_pause_killed_by_hand_is_not_resumed(state, autojump_clock):
    backend = HostBackend({"r": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        ref = await rt.spawn_process(remote("r"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        backend.go_down()
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "paused")
        kill = await rt.processes.kill(ref.id, wait=False)
        assert kill.phase == "killing"  # the kill waits for the host ...
        backend.up.set()
        record = await ref.wait()  # ... and then kills, and nothing resumes it
        assert record.phase == "killed"
        await trio.sleep(10)
        assert rt.processes.get(ref.id).phase == "killed"


async def test_a_host_whose_policy_is_fail_fails_its_processes(state, autojump_clock):
    backend = HostBackend({"r": [(100, 0)]}, policy="fail")
    backend.go_down()
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        record = await (await rt.spawn_process(remote("r"))).wait()
    assert record.phase == "failed"
    assert record.state.reason.startswith("launching: me@h:22: unavailable")


async def test_a_backend_is_told_of_a_pause_after_it_is_durable_and_a_resume_before(state):
    backend = HostBackend({"r": [(0.5, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend, "ssh": backend}) as rt:
        ref = await rt.spawn_process(remote("r"))
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        await ref.pause()
        key = f"{ref.id}.1"
        assert backend.told == [("pause", key)]
        await ref.resume()
        assert backend.told == [("pause", key), ("resume", key)]
        assert (await ref.wait()).phase == "finished"


# -- submission says whether it created the process ---------------------------------------------


async def test_submit_says_whether_it_created_the_process(state):
    backend = ScriptedBackend({"once": [(100, 0)], "anonymous": [(0.01, 0), (0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        manager = rt.processes
        submissions = []

        async def submit() -> None:
            submissions.append(await manager.submit(ProcessSpec(argv=("prog",), name="once")))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(submit)
        assert sorted(submission.created for submission in submissions) == [False] * 4 + [True]
        assert len({submission.record.id for submission in submissions}) == 1
        await manager.wait(submissions[0].record.id, until=lambda r: r.phase == "running")
        again = await manager.submit(ProcessSpec(argv=("prog",), name="once"))
        assert not again.created and again.record.phase == "running"  # the newest record
        unnamed = [await manager.submit(ProcessSpec(argv=("anonymous",))) for _ in range(2)]
        assert [submission.created for submission in unnamed] == [True, True]
        await manager.kill(again.record.id)


# -- one cancel scope per wait ----------------------------------------------------------------


class GatedLaunch(ScriptedBackend):
    """Launches wait at a gate that the test opens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launching = trio.Event()
        self.gate = trio.Event()

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        self.launching.set()
        await self.gate.wait()
        return await super().launch(request)


async def test_a_request_that_comes_during_an_effect_cuts_the_next_wait_short(
    state, autojump_clock
):
    backend = GatedLaunch({"a": [(100, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        ref = await rt.spawn_process(spec("a"))
        await backend.launching.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.pause)  # the launch is an effect: it goes on
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        paused = ref.record()
        # launched, then paused at once: the wait for the exit never began
        assert (paused.phase, paused.state.paused_from) == ("paused", "running")
        assert trio.current_time() < 1 and backend.launches[f"{ref.id}.1"] == 1
        await ref.kill()


async def test_a_finished_process_leaves_nothing_for_the_cycle_collector(state):
    # (its actor, cell, records and launch request are freed as it ends, by reference
    # counting: a lifecycle that left them in cycles made garbage collection a fifth of it)
    backend = ScriptedBackend({"a": [(0.01, 0)], "b": [(0.01, 0)]})
    async with open_runtime(state_dir=state, backends={"local": backend}) as rt:
        await (await rt.spawn_process(spec("a"))).wait()  # (what is made once, made)
        gc.collect()
        gc.disable()
        try:
            record = await (await rt.spawn_process(spec("b"))).wait()
            await rt.processes.wait_idle()
            assert record.phase == "finished"
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [type(o).__qualname__ for o in gc.garbage if "corra" in type(o).__module__]
            assert left == []
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
