"""The state store: group commit, durability, names, history, quarantine, map growth,
readers in other processes, closing, threads."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from functools import partial
from pathlib import Path

import attrs
import lmdb
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import corra.persistence
from corra._errors import ConfigError, NameTaken, StoreError
from corra.persistence import Codec, Store, open_store, open_store_readonly
from corra.persistence import _store as store_module

REPO = Path(__file__).resolve().parent.parent
#: A realistic encoded process snapshot is about 200 bytes.
SNAPSHOT = b'{"schema":1,"type":"ProcessState","data":{"phase":"running"' + b" " * 140 + b"}}"
GATE = b"gate"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


class Gate:
    """Holds the writer thread inside the transaction of a save of ``GATE`` until opened, so
    that the writes queued meanwhile form the next batch, all of them."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.opened = threading.Event()

    async def hold(self, store: Store, nursery: trio.Nursery) -> None:
        """Start a save of ``GATE``; return once the writer thread is held by it."""
        self.token = trio.lowlevel.current_trio_token()
        nursery.start_soon(store.save, "gate", GATE)
        await self.entered.wait()

    def set(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch):
    gate = Gate()
    original = store_module.PendingSave.apply

    def apply(self, txn, databases):
        if self.snapshot == GATE:
            gate.token.run_sync_soon(gate.entered.set)
            gate.opened.wait(10)
        return original(self, txn, databases)

    monkeypatch.setattr(store_module.PendingSave, "apply", apply)
    yield gate
    gate.set()


async def run_python(script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
    )


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        line += chunk
    return line


def test_public_names_are_pinned():
    names = {name for name in vars(corra.persistence) if not name.startswith("_")}
    assert names == {
        "Codec",
        "CorruptSnapshot",
        "IndexPage",
        "IndexRange",
        "IndexTerm",
        "PendingSave",
        "QuarantinedRecord",
        "SnapshotCounts",
        "Store",
        "StoreReader",
        "StoreStatistics",
        "open_store",
        "open_store_readonly",
        "encode_terms",
        "group_prefix",
        "join_terms",
        "term_template",
    }


def test_persistence_knows_nothing_of_actors_or_backends():
    imported = set()
    for module in (REPO / "corra" / "persistence").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name.startswith(("corra.actors", "corra.backends"))}
    assert "corra" not in imported  # the package root imports the actors


# Round trips -------------------------------------------------------------------------------


async def test_save_load_scan(state_dir):
    async with open_store(state_dir) as store:
        assert store.load("p1") is None
        assert store.history("p1") == []
        assert list(store.scan()) == []
        await store.save("p1", b"one")
        await store.save("p2", b"two")
        await store.save("p1", b"uno")
        assert store.load("p1") == b"uno"
        assert list(store.scan()) == [("p1", b"uno"), ("p2", b"two")]
    assert (state_dir / "state.lmdb" / "data.mdb").is_file()
    async with open_store(state_dir) as store:
        assert store.load("p2") == b"two"


async def test_scan_reads_every_snapshot_across_batches(state_dir):
    count = 2500  # more than two read batches
    async with open_store(state_dir, durable=False) as store:
        async with trio.open_nursery() as nursery:
            for number in range(count):
                nursery.start_soon(store.save, f"p{number:05}", b"%d" % number)
        scanned = list(store.scan())
    assert [process_id for process_id, _ in scanned] == [f"p{n:05}" for n in range(count)]
    assert scanned[1234] == ("p01234", b"1234")


async def test_keys_are_checked_before_anything_is_queued(state_dir):
    async with open_store(state_dir) as store:
        for bad in ("", "a\x00b", "x" * 600, 5, "\ud800"):
            with pytest.raises(ConfigError, match="process_id"):
                await store.save(bad, b"x")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="name"):
            await store.save("p", b"x", name="")
        with pytest.raises(TypeError, match="snapshot must be bytes"):
            await store.save("p", "text")  # type: ignore[arg-type]
        assert store.statistics().commits == 0


async def test_map_size_is_checked(state_dir):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="map_size"):
            async with open_store(state_dir, map_size=bad):  # type: ignore[arg-type]
                pass  # pragma: no cover
    async with open_store(state_dir, map_size=4096) as store:  # too small even to start
        await store.save("p", b"x")


async def test_text_keys_round_trip(state_dir):
    async with open_store(state_dir) as store:
        await store.save("résumé-✓", b"x", name="tâche")
        await store.save("bytes-\udcff", b"y")
        assert store.id_for_name("tâche") == "résumé-✓"
        assert dict(store.scan()) == {"résumé-✓": b"x", "bytes-\udcff": b"y"}


# Group commit ------------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_saves(state_dir):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            for number in range(1000):
                nursery.start_soon(store.save, f"p{number}", SNAPSHOT)
        statistics = store.statistics()
        assert sum(1 for _ in store.scan()) == 1000
    assert statistics.records_written == 1000
    # Typically 3 to 10 commits here; the bound leaves room for a slow, loaded machine.
    assert statistics.commits <= 100, statistics
    assert statistics.largest_batch >= 50, statistics
    assert statistics.mean_batch == 1000 / statistics.commits
    assert statistics.last_commit_latency > 0


async def test_a_waiting_batch_commits_in_one_transaction(state_dir, gate):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for number in range(10):
                nursery.start_soon(store.save, f"p{number}", SNAPSHOT)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        statistics = store.statistics()
    assert (statistics.commits, statistics.largest_batch, statistics.records_written) == (2, 10, 11)


# Durability --------------------------------------------------------------------------------

READ_ONE = """
import sys
from corra.persistence import open_store_readonly
with open_store_readonly(sys.argv[1]) as reader:
    print(reader.load(sys.argv[2]).decode(), reader.history(sys.argv[2]), reader.id_for_name("n"))
"""


async def test_once_save_returns_another_process_sees_it(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p1", b"first", transition=b"t0", name="n")
        done = await run_python(READ_ONE, str(state_dir), "p1")
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().split() == ["first", "[b't0']", "p1"]


WRITE_THEN_WAIT = """
import sys, trio
from corra.persistence import open_store

async def main():
    async with open_store(sys.argv[1]) as store:
        async with trio.open_nursery() as nursery:
            for number in range(200):
                nursery.start_soon(store.save, f"p{number}", b"%d" % number)
        print("saved", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_killed_writer_loses_nothing_it_acknowledged(state_dir):
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITE_THEN_WAIT, str(state_dir)], stdout=subprocess.PIPE, cwd=REPO
    )
    assert process.stdout is not None
    with trio.fail_after(30):
        assert await read_line(process.stdout) == b"saved\n"
    process.kill()  # SIGKILL: no close, no drain, no flush
    await process.wait()
    await process.stdout.aclose()
    # The kernel released the writer lock with the process: we can write here now.
    async with open_store(state_dir) as store:
        assert {process_id: raw for process_id, raw in store.scan()} == {
            f"p{number}": b"%d" % number for number in range(200)
        }
        await store.save("after", b"x")


async def test_not_durable_still_survives_a_clean_close(state_dir):
    async with open_store(state_dir, durable=False) as store:
        await store.save("p1", b"x")
    with open_store_readonly(state_dir) as reader:
        assert reader.load("p1") == b"x"


# Names -------------------------------------------------------------------------------------


async def test_claim_name_is_idempotent(state_dir):
    async with open_store(state_dir) as store:
        assert await store.claim_name("nightly", "p1") == "p1"
        assert await store.claim_name("nightly", "p2") == "p1"
        assert await store.claim_name("nightly", "p1") == "p1"
        assert store.id_for_name("nightly") == "p1"
        assert store.id_for_name("weekly") is None


async def test_save_with_a_taken_name_fails_alone(state_dir, gate):
    async with open_store(state_dir) as store:
        await store.save("owner", b"o", name="job")
        await store.save("owner", b"o2", name="job")  # its own name: fine
        outcomes: dict[str, object] = {}

        async def save(process_id: str, name: str | None) -> None:
            try:
                await store.save(process_id, b"mine", transition=b"t", name=name)
            except NameTaken as exc:
                outcomes[process_id] = exc
            else:
                outcomes[process_id] = "ok"

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            nursery.start_soon(save, "a", "a-job")
            nursery.start_soon(save, "thief", "job")
            nursery.start_soon(save, "b", None)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert outcomes["a"] == outcomes["b"] == "ok"
        assert isinstance(outcomes["thief"], NameTaken)
        assert "'job' belongs to process 'owner'" in str(outcomes["thief"])
        assert store.load("thief") is None  # nothing of the failed save was written
        assert store.history("thief") == []
        assert store.id_for_name("job") == "owner"
        assert store.id_for_name("a-job") == "a"
        assert store.statistics().largest_batch == 2  # a and b, in one transaction


# History -----------------------------------------------------------------------------------


async def test_history_keeps_order_and_apart(state_dir):
    async with open_store(state_dir) as store:
        for number in range(300):  # more than one byte of sequence number
            await store.save("a", b"s%d" % number, transition=b"t%d" % number)
        await store.save("ab", b"x", transition=b"other")
        await store.save("a", b"last")  # no transition: history unchanged
        assert store.history("a") == [b"t%d" % number for number in range(300)]
        assert store.history("ab") == [b"other"]
        assert store.history("b") == []


async def test_a_history_page_starts_after_its_sequence_number_and_says_if_more_follow(
    state_dir,
):
    async with open_store(state_dir) as store:
        for number in range(300):
            await store.save("a", b"s", transition=b"t%d" % number)
        await store.save("ab", b"x", transition=b"other")
        first, more = store.history_page("a", limit=10)
        assert first == [(number, b"t%d" % number) for number in range(10)] and more
        page, more = store.history_page("a", after=first[-1][0], limit=10)
        assert [entry for _, entry in page] == [b"t%d" % n for n in range(10, 20)] and more
        assert store.history_page("a", after=289, limit=10) == (
            [(number, b"t%d" % number) for number in range(290, 300)],
            False,
        )
        assert store.history_page("a", after=299, limit=10) == ([], False)
        assert store.history_page("a", after=2**64 - 1, limit=10) == ([], False)
        assert store.history_page("ab") == ([(0, b"other")], False)  # (not a's, nor b's)
        assert store.history_page("b", limit=5) == ([], False)


async def test_load_named_reads_the_owner_and_snapshot_of_each_name(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p1", b"one", name="first")
        await store.save("p2", b"two", name="second")
        await store.claim_name("orphan", "p9")  # (a name whose owner has no snapshot)
        assert store.load_named(["second", "missing", "first", "orphan"]) == [
            ("p2", b"two"),
            None,
            ("p1", b"one"),
            None,
        ]
        assert store.load_named([]) == []


async def test_transitions_in_one_batch_follow_queue_order(state_dir, gate):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for number in range(20):
                # Queue in order: each save is queued before the next task starts.
                nursery.start_soon(partial(store.save, "p", b"s", transition=b"%d" % number))
                await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert store.history("p") == [b"%d" % number for number in range(20)]


async def test_one_save_appends_several_transitions_in_order(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p", b"s1", transitions=[b"submit", b"launch"], active=True)
        await store.save("p", b"s2", transitions=(b"started",))
        await store.save("p", b"s3", transitions=[])
        assert store.history("p") == [b"submit", b"launch", b"started"]
        assert store.load("p") == b"s3"
        with pytest.raises(TypeError, match="not both"):
            await store.save("p", b"x", transition=b"a", transitions=[b"b"])
        with pytest.raises(TypeError, match="not a single value"):
            await store.save("p", b"x", transitions=b"ab")
        with pytest.raises(TypeError, match="transition must be bytes"):
            await store.save("p", b"x", transitions=[b"a", "b"])
        assert store.history("p") == [b"submit", b"launch", b"started"]


async def test_the_next_history_number_is_remembered_across_batches_and_deletes(state_dir):
    async with open_store(state_dir) as store:
        for number in range(3):
            await store.save("p", b"s", transitions=[b"%da" % number, b"%db" % number])
        await store.delete("p")
        await store.save("p", b"s", transition=b"again")  # a new history, from 0
        assert store.history("p") == [b"again"]
        environment = store._environment()
        key = environment.read(
            lambda txn: next(iter(txn.cursor(db=environment.databases.history)))
        )[0]
        assert key == b"p\x00" + (0).to_bytes(8, "big")
    async with open_store(state_dir) as store:  # a new writer reads where it left off
        await store.save("p", b"s", transition=b"then")
        assert store.history("p") == [b"again", b"then"]


async def test_save_nowait_commits_in_order_with_the_rest(state_dir, gate):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            pending = store.save_nowait("p", b"running", transitions=[b"started"], active=True)
            assert not pending.done and pending.error is None
            nursery.start_soon(partial(store.save, "p", b"finished", transition=b"succeed"))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert pending.done and pending.error is None
        assert store.load("p") == b"finished"
        assert store.history("p") == [b"started", b"succeed"]
        assert [key for key, _ in store.scan_active()] == ["p"]
        # one that is done and committed is no longer waited for
        await store.save("p", b"again", after=pending)


@pytest.mark.parametrize("same_batch", [True, False])
async def test_a_save_after_a_failed_one_fails_too_and_writes_nothing(
    state_dir, gate, monkeypatch, same_batch
):
    gated_apply = store_module.PendingSave.apply

    def apply(self, txn, databases):
        if self.snapshot == b"doomed":
            raise StoreError("injected")
        return gated_apply(self, txn, databases)

    monkeypatch.setattr(store_module.PendingSave, "apply", apply)
    async with open_store(state_dir) as store:
        await store.save("p", b"launching", transition=b"launch")
        async with trio.open_nursery() as nursery:
            if same_batch:
                await gate.hold(store, nursery)
            pending = store.save_nowait("p", b"doomed", transition=b"started")
            if not same_batch:
                while not pending.done:
                    await trio.sleep(0.001)
            if same_batch:

                async def open_gate() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # once the next save is queued
                    gate.set()

                nursery.start_soon(open_gate)
            with pytest.raises(StoreError, match="an earlier save of 'p' failed"):
                await store.save("p", b"finished", transition=b"succeed", after=pending)
        assert pending.done and isinstance(pending.error, StoreError)
        assert store.load("p") == b"launching"  # neither was written: no hole in the history
        assert store.history("p") == [b"launch"]
        with pytest.raises(TypeError, match="after must be a PendingSave"):
            await store.save("p", b"x", after=object())  # type: ignore[arg-type]


async def test_a_shielded_save_waits_for_its_write_when_cancelled(state_dir, gate):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            done: list[str] = []

            async def save(process_id: str, shielded: bool) -> None:
                with trio.CancelScope() as scope:
                    scopes[process_id] = scope
                    await store.save(process_id, b"x", shielded=shielded)
                    done.append(process_id)
                    await trio.lowlevel.checkpoint()  # where the cancellation is delivered
                    done.append("never")

            scopes: dict[str, trio.CancelScope] = {}
            nursery.start_soon(save, "shielded", True)
            nursery.start_soon(save, "plain", False)
            await trio.testing.wait_all_tasks_blocked()
            for scope in scopes.values():
                scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # the shielded one still waits for its write
            gate.set()
        assert done == ["shielded"]
        assert store.load("shielded") == store.load("plain") == b"x"  # both were written


# Quarantine, delete ------------------------------------------------------------------------


async def test_set_aside_quarantines_the_record(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p1", b"\xffgarbage", transition=b"t", name="job")
        await store.set_aside("p1", b"\xffgarbage", "not a JSON record")
        assert store.load("p1") is None
        assert list(store.scan()) == []
        [record] = store.quarantined()
        assert (record.process_id, record.raw, record.reason) == (
            "p1",
            b"\xffgarbage",
            "not a JSON record",
        )
        assert record.time > 0
        assert store.history("p1") == [b"t"]  # kept, as is the name
        assert store.id_for_name("job") == "p1"


async def test_delete_removes_every_trace(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p", b"x", transition=b"t1", name="one")
        await store.save("p", b"x", transition=b"t2", name="two")
        await store.save("pq", b"y", transition=b"u", name="three")
        await store.set_aside("p", b"x", "test")
        await store.delete("p")
        assert store.load("p") is None
        assert store.history("p") == []
        assert store.id_for_name("one") is None
        assert store.id_for_name("two") is None
        assert store.quarantined() == []
        assert store.load("pq") == b"y"
        assert store.history("pq") == [b"u"]
        assert store.id_for_name("three") == "pq"
        await store.delete("never-was")


async def test_delete_with_the_names_it_may_own_reads_only_those(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p", b"x", transition=b"t", name="one")
        await store.save("q", b"y", transition=b"u", name="two")
        await store.delete("p", names=["one", "two", "unknown"])  # (two is q's: it stays)
        assert store.load("p") is None and store.history("p") == []
        assert store.id_for_name("one") is None and store.id_for_name("two") == "q"
        await store.delete("q", names=[])  # (none: its name stays claimed)
        assert store.load("q") is None and store.id_for_name("two") == "q"


@attrs.frozen
class Snapshot:
    phase: str
    attempt: int


async def test_a_corrupt_snapshot_does_not_break_the_scan(state_dir):
    codec = Codec(Snapshot, 1)
    async with open_store(state_dir) as store:
        await store.save("good", codec.encode(Snapshot("running", 1)))
        await store.save("garbage", b"\x00\x01")
        await store.save("newer", b'{"schema":9,"type":"Snapshot","data":{}}')
        await store.save("wrong", b'{"schema":1,"type":"Snapshot","data":{"phase":1}}')
        assert len(list(store.scan())) == 4
        records, corrupt = store.scan_decoded(codec)
        assert records == {"good": Snapshot("running", 1)}
        reasons = {snapshot.process_id: snapshot.reason for snapshot in corrupt}
        assert reasons.keys() == {"garbage", "newer", "wrong"}
        assert "newer than this corra knows" in reasons["newer"]
        assert "@ $.data.phase" in reasons["wrong"]
        for snapshot in corrupt:
            await store.set_aside(snapshot.process_id, snapshot.raw, snapshot.reason)
        assert store.scan_decoded(codec) == ({"good": Snapshot("running", 1)}, [])
        assert {record.process_id for record in store.quarantined()} == reasons.keys()


# The active index --------------------------------------------------------------------------


def active_ids(store) -> list[str]:
    return [process_id for process_id, _ in store.scan_active()]


def counts(store) -> tuple[int, int]:
    counted = store.counts()
    assert counted.inactive == counted.snapshots - counted.active
    return counted.snapshots, counted.active


def make_format_1(state_dir: Path) -> None:
    """Turn a closed store into one a corra of format 1 wrote: no ``active`` database."""
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"active", txn=txn), delete=True)
            txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


async def test_the_active_index_follows_saves_set_aside_and_delete(state_dir):
    async with open_store(state_dir) as store:
        assert store.has_active_index()
        assert active_ids(store) == [] and counts(store) == (0, 0)
        await store.save("b", b"b1", active=True)
        await store.save("a", b"a1", transition=b"t", name="job", active=True)
        await store.save("c", b"c1", active=False)
        await store.save("d", b"d1")  # None: not in the index
        assert list(store.scan_active()) == [("a", b"a1"), ("b", b"b1")]  # id order
        assert counts(store) == (4, 2)
        await store.save("a", b"a2")  # None leaves the index alone
        await store.save("b", b"b2", active=False)
        await store.save("c", b"c2", active=True)
        assert list(store.scan_active()) == [("a", b"a2"), ("c", b"c2")]
        await store.save("c", b"c3", active=True)  # twice is once
        assert counts(store) == (4, 2)
        await store.set_aside("a", b"a2", "corrupt")
        await store.delete("c")
        assert active_ids(store) == [] and counts(store) == (2, 0)
        await store.save("b", b"b3", active=True)
    async with open_store(state_dir) as store:
        assert list(store.scan_active()) == [("b", b"b3")]
    with open_store_readonly(state_dir) as reader:
        assert reader.has_active_index()
        assert list(reader.scan_active()) == [("b", b"b3")]
        assert counts(reader) == (2, 1)


async def test_a_refused_save_changes_no_index(state_dir):
    async with open_store(state_dir) as store:
        await store.claim_name("job", "owner")
        with pytest.raises(NameTaken):
            await store.save("p", b"x", name="job", active=True)
        assert active_ids(store) == [] and counts(store) == (0, 0)
        with pytest.raises(TypeError, match="active must be a bool"):
            await store.save("p", b"x", active=1)  # type: ignore[arg-type]


async def test_scan_active_reads_only_indexed_snapshots_across_batches(state_dir, monkeypatch):
    monkeypatch.setattr(corra.persistence._lmdb, "_SCAN_BATCH", 4)
    async with open_store(state_dir, durable=False) as store:
        async with trio.open_nursery() as nursery:
            for number in range(30):
                save = partial(store.save, active=number % 3 == 0)
                nursery.start_soon(save, f"p{number:02}", b"%d" % number)
        expected = [(f"p{n:02}", b"%d" % n) for n in range(0, 30, 3)]
        assert list(store.scan_active()) == expected
        assert counts(store) == (30, 10)
        # an id that leaves the index between two batches is not yielded
        scan = store.scan_active()
        assert [next(scan) for _ in range(4)] == expected[:4]
        await store.save("p12", b"12", active=False)
        await store.save("p15", b"15", active=False)
        assert list(scan) == expected[6:]


async def test_a_store_without_the_index_opens_and_rebuilds_it(state_dir):
    async with open_store(state_dir) as store:
        for process_id, phase in [("a", b"running"), ("b", b"paused"), ("c", b"running")]:
            await store.save(process_id, phase, transition=b"t", active=phase == b"running")
    make_format_1(state_dir)
    with open_store_readonly(state_dir) as reader:  # read-only: no index, no error
        assert not reader.has_active_index()
        assert counts(reader) == (3, 0)
        with pytest.raises(StoreError, match="no index of active snapshots"):
            list(reader.scan_active())
    async with open_store(state_dir) as store:
        assert not store.has_active_index()  # the writer created it empty: not complete
        assert counts(store) == (3, 0)
        with pytest.raises(StoreError, match="no index of active snapshots"):
            list(store.scan_active())
        await store.save("d", b"running", active=True)  # kept meanwhile, rebuilt anyway
        assert not store.has_active_index()
        with pytest.raises(StoreError, match=r"writing to the store .* failed: division by zero"):
            await store.rebuild_active_index(lambda raw: 1 / 0 > 0)  # nothing written
        assert not store.has_active_index()
        assert await store.rebuild_active_index(lambda raw: raw == b"running") == 3
        assert store.has_active_index()
        assert active_ids(store) == ["a", "c", "d"]
        assert counts(store) == (4, 3)
    with open_store_readonly(state_dir) as reader:
        assert reader.has_active_index()
        assert active_ids(reader) == ["a", "c", "d"]
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=8, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == b"2"
    env.close()


async def test_a_new_store_has_the_current_format(state_dir):
    async with open_store(state_dir):
        pass
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=8, readonly=True)
    with env.begin() as txn:
        stored = txn.get(b"format", db=env.open_db(b"meta", txn=txn))
    env.close()
    assert stored == str(corra.persistence._lmdb.FORMAT_VERSION).encode() == b"3"


# The map -----------------------------------------------------------------------------------


async def test_a_full_map_grows_and_nothing_fails(state_dir):
    record = os.urandom(5000)
    async with open_store(state_dir, map_size=64 << 10) as store:
        scans = []

        async def scan_in_a_thread() -> None:
            # Reads in another thread while the map is remapped under them.
            while len(scans) < 5 or store.load("p0999") is None:
                scans.append(await trio.to_thread.run_sync(lambda: sum(1 for _ in store.scan())))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(scan_in_a_thread)
            for round_number in range(10):
                async with trio.open_nursery() as writers:
                    for number in range(round_number * 100, round_number * 100 + 100):
                        writers.start_soon(store.save, f"p{number:04}", record)
                assert store.load(f"p{round_number * 100:04}") == record
        statistics = store.statistics()
        assert all(raw == record for _, raw in store.scan())
        assert sum(1 for _ in store.scan()) == 1000
    assert statistics.map_growths >= 5
    assert statistics.map_size >= 5_000_000 > 64 << 10
    assert statistics.map_used <= statistics.map_size
    assert scans == sorted(scans)


READ_WHILE_WRITTEN = """
import json, sys, time
from corra.persistence import open_store_readonly

with open_store_readonly(sys.argv[1]) as reader:
    first_map = reader._open.env.info()["map_size"]
    print("ready", flush=True)
    reads = 0
    deadline = time.monotonic() + 60
    while reader.load("done") is None:
        assert time.monotonic() < deadline, "timed out"
        sum(1 for _ in reader.scan())
        reads += 1
    snapshots = dict(reader.scan())
    print(json.dumps({
        "first_map": first_map,
        "last_map": reader._open.env.info()["map_size"],
        "reads": reads,
        "count": len(snapshots),
        "intact": all(raw == bytes([len(raw) % 256]) * len(raw) for raw in snapshots.values()),
    }))
"""


async def test_a_reader_in_another_process_follows_the_map_growth(state_dir):
    async with open_store(state_dir, map_size=64 << 10) as store:
        await store.save("first", b"\x01")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", READ_WHILE_WRITTEN, str(state_dir)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert process.stdout is not None
        with trio.fail_after(60):
            assert await read_line(process.stdout) == b"ready\n"
            for round_number in range(20):
                async with trio.open_nursery() as writers:
                    for number in range(50):
                        size = 3000 + round_number * 50 + number
                        record = bytes([size % 256]) * size
                        writers.start_soon(store.save, f"p{round_number}-{number}", record)
                await trio.sleep(0.01)  # let the reader read between rounds
            await store.save("done", b"\x01")
            report = json.loads(await read_line(process.stdout))
            assert await process.wait() == 0
        await process.stdout.aclose()
        statistics = store.statistics()
    assert statistics.map_growths >= 4
    assert report["first_map"] < 1 << 20 <= report["last_map"]
    assert report["count"] == 20 * 50 + 2
    assert report["intact"]
    assert report["reads"] > 1


# Opening, closing, failures ----------------------------------------------------------------


async def test_closing_drains_queued_writes_even_when_their_tasks_are_cancelled(state_dir, gate):
    async with open_store(state_dir) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for number in range(100):
                nursery.start_soon(store.save, f"p{number}", SNAPSHOT)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the saves are queued: they happen anyway
        gate.set()
    with open_store_readonly(state_dir) as reader:
        assert sum(1 for _ in reader.scan()) == 101


async def test_a_save_cancelled_before_it_is_queued_writes_nothing(state_dir):
    async with open_store(state_dir) as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.save("p", b"x")
        assert scope.cancelled_caught
        assert store.statistics().commits == 0
        assert store.load("p") is None


async def test_no_thread_outlives_the_store(state_dir):
    # Compared as sets, not counts: trio's idle worker threads left by other tests may exit
    # meanwhile, but no thread may appear.
    before = set(threading.enumerate())
    async with open_store(state_dir) as store:
        await store.save("p", b"x")
        [writer] = set(threading.enumerate()) - before
        assert writer.name.startswith("corra-store")
    assert set(threading.enumerate()) <= before
    with pytest.raises(StoreError):
        async with open_store(state_dir / "missing", readonly=True):
            pass  # pragma: no cover
    assert set(threading.enumerate()) <= before
    with trio.move_on_after(0):  # cancelled while opening
        async with open_store(state_dir):
            pass  # pragma: no cover
    assert set(threading.enumerate()) <= before
    assert not writer.is_alive()


async def test_use_after_close_is_a_store_error(state_dir):
    async with open_store(state_dir) as store:
        await store.save("p", b"x")
    with pytest.raises(StoreError, match="closed"):
        await store.save("p", b"y")
    with pytest.raises(StoreError, match="closed"):
        store.load("p")
    assert store.statistics().records_written == 1  # as it was at the close


async def test_one_writer_at_a_time(state_dir):
    async with open_store(state_dir):
        with pytest.raises(StoreError, match="open for writing elsewhere"):
            async with open_store(state_dir):
                pass  # pragma: no cover
        done = await run_python(
            "import sys, trio; from corra.persistence import open_store\n"
            "async def main():\n"
            "    async with open_store(sys.argv[1]): pass\n"
            "trio.run(main)\n",
            str(state_dir),
        )
        assert done.returncode != 0
        assert b"StoreError" in done.stderr
        assert b"open for writing elsewhere" in done.stderr


async def test_read_only_store(state_dir):
    with pytest.raises(StoreError, match="no store at"):
        async with open_store(state_dir, readonly=True):
            pass  # pragma: no cover
    with pytest.raises(StoreError, match="no store at"), open_store_readonly(state_dir):
        pass  # pragma: no cover
    async with open_store(state_dir) as store:
        await store.save("p", b"x", transition=b"t", name="n")
    async with open_store(state_dir, readonly=True) as store:
        assert store.load("p") == b"x"
        with pytest.raises(StoreError, match="read-only"):
            await store.save("p", b"y")
    with open_store_readonly(state_dir) as reader:
        assert reader.load("p") == b"x"
        assert reader.history("p") == [b"t"]
        assert reader.id_for_name("n") == "p"
        assert list(reader.scan()) == [("p", b"x")]
        assert reader.quarantined() == []
    with pytest.raises(StoreError, match="closed"):
        reader.load("p")


async def test_a_store_from_a_newer_corra_is_refused(state_dir):
    async with open_store(state_dir):
        pass
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="format 99 is newer"):
        async with open_store(state_dir):
            pass  # pragma: no cover
    with pytest.raises(StoreError, match="format 99 is newer"), open_store_readonly(state_dir):
        pass  # pragma: no cover


async def test_an_lmdb_error_fails_its_batch_and_the_writer_carries_on(
    state_dir, gate, monkeypatch
):
    gated_apply = store_module.PendingSave.apply

    def apply(self, txn, databases):
        if self.snapshot == b"boom":
            raise lmdb.DiskError("injected")
        return gated_apply(self, txn, databases)

    monkeypatch.setattr(store_module.PendingSave, "apply", apply)
    async with open_store(state_dir) as store:
        errors: dict[str, BaseException] = {}

        async def save(process_id: str, snapshot: bytes) -> None:
            try:
                await store.save(process_id, snapshot)
            except StoreError as exc:
                errors[process_id] = exc

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for process_id in ("a", "b", "c"):
                nursery.start_soon(save, process_id, b"fine")
            nursery.start_soon(save, "d", b"boom")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert errors.keys() == {"a", "b", "c", "d"}
        assert all(isinstance(error.__cause__, lmdb.DiskError) for error in errors.values())
        assert len({id(error) for error in errors.values()}) == 4  # one exception each
        assert store.load("a") is None  # the batch was rolled back
        await store.save("a", b"fine")  # the writer thread lives on
        assert store.load("a") == b"fine"


async def test_a_bug_in_the_writer_fails_writes_instead_of_hanging(state_dir, monkeypatch):
    def broken(backlog):
        raise RuntimeError("bug")

    monkeypatch.setattr(store_module, "_next_batch", broken)
    before = set(threading.enumerate())
    async with open_store(state_dir) as store:
        with pytest.raises(StoreError, match=r"writer .* failed: bug") as caught:
            await store.save("p", b"x")
        assert isinstance(caught.value.__cause__, RuntimeError)
        with pytest.raises(StoreError, match="closed"):
            await store.save("p", b"x")
    assert set(threading.enumerate()) <= before


# A model ---------------------------------------------------------------------------------

process_ids = st.sampled_from(["p", "q", "pq"])
names = st.sampled_from(["x", "y"])
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("save"),
            process_ids,
            st.binary(max_size=8),
            st.none() | st.binary(max_size=4) | st.lists(st.binary(max_size=4), max_size=3),
            st.none() | names,
            st.none() | st.booleans(),
        ),
        st.tuples(
            st.just("save_nowait"),
            process_ids,
            st.binary(max_size=8),
            st.lists(st.binary(max_size=4), max_size=3),
            st.none() | st.booleans(),
        ),
        st.tuples(st.just("claim"), names, process_ids),
        st.tuples(st.just("set_aside"), process_ids, st.binary(max_size=8), st.text(max_size=5)),
        st.tuples(st.just("delete"), process_ids),
    ),
    max_size=25,
)


class Model:
    def __init__(self) -> None:
        self.snapshots: dict[str, bytes] = {}
        self.history: dict[str, list[bytes]] = {}
        self.names: dict[str, str] = {}
        self.quarantine: dict[str, tuple[bytes, str]] = {}
        self.active: set[str] = set()

    def save(self, process_id, snapshot, transition, name, active) -> bool:
        if name is not None and self.names.setdefault(name, process_id) != process_id:
            return False
        self.snapshots[process_id] = snapshot
        if active is not None:
            (self.active.add if active else self.active.discard)(process_id)
        if isinstance(transition, bytes):
            self.history.setdefault(process_id, []).append(transition)
        elif transition is not None:
            self.history.setdefault(process_id, []).extend(transition)
        return True

    def save_nowait(self, process_id, snapshot, transitions, active) -> None:
        self.save(process_id, snapshot, transitions, None, active)

    def claim(self, name, process_id) -> str:
        return self.names.setdefault(name, process_id)

    def set_aside(self, process_id, raw, reason) -> None:
        self.quarantine[process_id] = (raw, reason)
        self.snapshots.pop(process_id, None)
        self.active.discard(process_id)

    def delete(self, process_id) -> None:
        self.snapshots.pop(process_id, None)
        self.history.pop(process_id, None)
        self.quarantine.pop(process_id, None)
        self.active.discard(process_id)
        self.names = {name: owner for name, owner in self.names.items() if owner != process_id}


@given(operations)
@settings(max_examples=60, deadline=None)
def test_the_store_behaves_like_a_model(operations):
    model = Model()

    async def run(state_dir: str) -> None:
        async with open_store(state_dir, durable=False) as store:
            for kind, *arguments in operations:
                if kind == "save":
                    process_id, snapshot, transition, name, active = arguments
                    saved = model.save(*arguments)
                    entries = (
                        {"transitions": transition}
                        if isinstance(transition, list)
                        else {"transition": transition}
                    )
                    try:
                        await store.save(process_id, snapshot, name=name, active=active, **entries)
                    except NameTaken:
                        assert not saved
                    else:
                        assert saved
                elif kind == "save_nowait":
                    process_id, snapshot, transitions, active = arguments
                    model.save_nowait(*arguments)
                    store.save_nowait(process_id, snapshot, transitions=transitions, active=active)
                elif kind == "claim":
                    assert await store.claim_name(*arguments) == model.claim(*arguments)
                else:
                    getattr(model, kind)(*arguments)
                    await getattr(store, kind)(*arguments)
            # a write after them all: once it is done, so are the saves left in the background
            assert await store.claim_name("x", "p") == model.claim("x", "p")
            assert dict(store.scan()) == model.snapshots
            assert list(store.scan_active()) == sorted(
                (process_id, model.snapshots[process_id]) for process_id in model.active
            )
            counted = store.counts()
            assert (counted.snapshots, counted.active) == (len(model.snapshots), len(model.active))
            for process_id in ("p", "q", "pq"):
                assert store.load(process_id) == model.snapshots.get(process_id)
                assert store.history(process_id) == model.history.get(process_id, [])
            for name in ("x", "y"):
                assert store.id_for_name(name) == model.names.get(name)
            assert {
                record.process_id: (record.raw, record.reason) for record in store.quarantined()
            } == model.quarantine

    with tempfile.TemporaryDirectory() as state_dir:
        trio.run(run, state_dir)
