"""The store's secondary indexes (`corra.persistence._indexes`): they follow every save,
delete and set-aside in the same transaction; their counts move with them (never a scan); a
page walks them in order from a position that stays right while processes are written; a
store of an older format gets them built once."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
import trio

from corra._errors import ConfigError, NameTaken, StoreError
from corra.persistence import IndexRange, group_prefix, open_store, open_store_readonly


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def terms(process_id: str, phase: str, order: int, *labels: str) -> list[tuple[str, bytes, bytes]]:
    """Terms as a process domain would make them: creation order, phase, labels."""
    position = b"%08d" % order + process_id.encode()
    out = [("created", b"", position), ("phase", phase.encode(), position)]
    out += [("label", label.encode(), position) for label in labels]
    return out


def phase_range(*phases: str) -> list[IndexRange]:
    return [IndexRange("phase", group_prefix(phase.encode())) for phase in phases]


def ids(page) -> list[str]:
    return [process_id for process_id, _ in page.items]


async def test_indexes_follow_saves_deletes_and_set_asides(state_dir):
    async with open_store(state_dir) as store:
        assert store.has_indexes()
        await store.save("a", b"a1", indexes=terms("a", "created", 1, "team=x"))
        await store.save("b", b"b1", indexes=terms("b", "running", 2, "team=x", "gpu=1"))
        await store.save("c", b"c1", indexes=terms("c", "running", 3))
        assert store.index_counts("phase") == {b"created": 1, b"running": 2}
        assert store.index_counts("label") == {b"team=x": 2, b"gpu=1": 1}
        assert store.index_counts("created") == {b"": 3}
        page = store.index_page(phase_range("running"), limit=10)
        assert page.items == [("b", b"b1"), ("c", b"c1")] and page.next_position is None
        # the next save replaces the terms: a moves from created to running
        await store.save("a", b"a2", indexes=terms("a", "running", 1, "team=x"))
        assert store.index_counts("phase") == {b"running": 3}
        assert ids(store.index_page(phase_range("running"), limit=10)) == ["a", "b", "c"]
        # None keeps the last terms, an empty sequence removes them
        await store.save("a", b"a3")
        assert store.index_terms("a") == tuple(terms("a", "running", 1, "team=x"))
        await store.save("c", b"c2", indexes=[])
        assert store.index_terms("c") == ()
        assert store.index_counts("phase") == {b"running": 2}
        await store.save("c", b"c3", indexes=terms("c", "running", 3))
        await store.set_aside("b", b"b1", "corrupt")
        await store.delete("a")
        assert store.index_counts("phase") == {b"running": 1}
        assert store.index_counts("label") == {}
        assert ids(store.index_page([IndexRange("created", b"\x00")], limit=10)) == ["c"]
    with open_store_readonly(state_dir) as reader:  # the same seen by a reader
        assert reader.has_indexes()
        assert reader.index_counts("phase") == {b"running": 1}
        assert ids(reader.index_page(phase_range("running"), limit=10)) == ["c"]


async def test_a_refused_save_changes_no_index(state_dir):
    async with open_store(state_dir) as store:
        await store.claim_name("job", "owner")
        with pytest.raises(NameTaken):
            await store.save("p", b"x", name="job", indexes=terms("p", "running", 1))
        assert store.index_counts("phase") == {}
        with pytest.raises(ConfigError, match="holds NUL or SOH"):
            await store.save("p", b"x", indexes=[("label", b"a\x00b", b"1")])
        with pytest.raises(ConfigError, match="holds NUL or SOH"):
            await store.save("p", b"x", indexes=[("label", b"a", b"1\x01")])
        with pytest.raises(ConfigError, match="longer than 511"):
            await store.save("p", b"x", indexes=[("label", b"k", b"1" * 600)])
        with pytest.raises(TypeError, match="must be bytes"):
            await store.save("p", b"x", indexes=[("label", "k", b"1")])  # type: ignore[list-item]
        assert store.load("p") is None


async def test_pages_merge_groups_in_order_and_filter_by_terms(state_dir):
    async with open_store(state_dir, durable=False) as store:
        for number in range(20):
            phase = ("created", "running", "finished")[number % 3]
            labels = ["even=1"] if number % 2 == 0 else []
            process = f"p{number:02}"
            await store.save(
                process, process.encode(), indexes=terms(process, phase, number, *labels)
            )
        active = phase_range("created", "running")
        expected = [f"p{n:02}" for n in range(20) if n % 3 != 2]
        seen = []
        after = None
        while True:
            page = store.index_page(active, after=after, limit=4)
            seen += ids(page)
            assert len(page.items) <= 4
            if page.next_position is None:
                break
            after = page.next_position
        assert seen == expected
        # accept sees the candidate's terms: the other filters are checked without a decode
        even = store.index_page(
            active, limit=100, accept=lambda found: ("label", b"even=1", found[0][2]) in found
        )
        assert ids(even) == [p for p in expected if int(p[1:]) % 2 == 0]
        # bounds on the position
        bounded = store.index_page(
            [IndexRange("created", b"\x00", low=b"%08d" % 5, high=b"%08d" % 8)],
            limit=100,
        )
        assert ids(bounded) == ["p05", "p06", "p07"]


async def test_a_position_stays_right_while_processes_are_written(state_dir):
    async with open_store(state_dir, durable=False) as store:
        for number in range(10):
            process = f"p{number:02}"
            await store.save(process, b"x", indexes=terms(process, "running", number))
        first = store.index_page(phase_range("running"), limit=3)
        assert ids(first) == ["p00", "p01", "p02"]
        # meanwhile: the last one returned is deleted, one before and one after it move
        # out, and new ones are written before and after the position
        await store.delete("p02")
        await store.save("p01", b"x", indexes=terms("p01", "finished", 1))
        await store.save("p04", b"x", indexes=terms("p04", "finished", 4))
        await store.save("q00", b"x", indexes=terms("q00", "running", 0))
        await store.save("q99", b"x", indexes=terms("q99", "running", 99))
        rest = store.index_page(phase_range("running"), after=first.next_position, limit=100)
        assert ids(rest) == ["p03", "p05", "p06", "p07", "p08", "p09", "q99"]


async def test_counts_follow_many_concurrent_saves(state_dir):
    async with open_store(state_dir, durable=False) as store:

        async def life(number: int) -> None:
            process = f"p{number:03}"
            for phase in ("created", "running", "finished" if number % 4 else "failed"):
                await store.save(process, b"x", indexes=terms(process, phase, number))

        async with trio.open_nursery() as nursery:
            for number in range(200):
                nursery.start_soon(life, number)
        assert store.index_counts("phase") == {b"finished": 150, b"failed": 50}


async def test_saves_of_one_process_in_one_transaction_move_its_entries_once(state_dir):
    async with open_store(state_dir, durable=False) as store:
        await store.save("gone", b"x", indexes=terms("gone", "running", 0, "team=x"))
        # queued together: the writer takes them in one transaction (or a few: either way
        # the entries end as the last write of each process gave them)
        store.save_nowait("p", b"1", indexes=terms("p", "created", 1, "team=x"))
        store.save_nowait("p", b"2", indexes=terms("p", "running", 1, "team=x"))
        store.save_nowait("gone", b"y", indexes=terms("gone", "finished", 0, "team=x"))
        last = store.save_nowait("p", b"3", indexes=terms("p", "failed", 1, "team=x"))
        await store.delete("gone")
        assert last.done and last.error is None
        assert store.index_terms("p") == tuple(terms("p", "failed", 1, "team=x"))
        assert store.index_terms("gone") == ()
        assert store.index_counts("phase") == {b"failed": 1}
        assert store.index_counts("label") == {b"team=x": 1}
        assert ids(store.index_page(phase_range("created", "running"), limit=10)) == []


async def test_a_failed_transaction_leaves_the_writers_memory_of_terms_as_the_disk(
    state_dir, monkeypatch
):
    from corra.persistence import _indexes

    flush = _indexes.flush
    failures = [lmdb.Error("injected")]

    def failing_flush(txn, databases):
        flush(txn, databases)  # (the entries are written in the transaction, then it fails)
        if failures:
            raise failures.pop()

    async with open_store(state_dir, durable=False) as store:
        await store.save("p", b"1", indexes=terms("p", "created", 1))
        monkeypatch.setattr(_indexes, "flush", failing_flush)
        with pytest.raises(StoreError, match="injected"):
            await store.save("p", b"2", indexes=terms("p", "running", 1))
        assert store.index_counts("phase") == {b"created": 1}
        await store.save("p", b"3", indexes=terms("p", "finished", 1))
        assert store.index_counts("phase") == {b"finished": 1}
        assert ids(store.index_page(phase_range("created", "running"), limit=10)) == []
        # and once more from the writer's memory of what it committed
        await store.save("p", b"4", indexes=terms("p", "created", 1))
        assert store.index_counts("phase") == {b"created": 1}


def make_format_2(state_dir: Path) -> None:
    """Turn a closed store into one a corra of format 2 wrote: no secondary indexes."""
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            for name in (b"terms", b"index", b"counts"):
                txn.drop(env.open_db(name, txn=txn), delete=True)
            txn.put(b"format", b"2", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


def stored_format(state_dir: Path) -> bytes:
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=16, readonly=True)
    try:
        with env.begin() as txn:
            return txn.get(b"format", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


async def test_an_older_store_is_indexed_once(state_dir):
    async with open_store(state_dir) as store:
        for number, phase in enumerate(["running", "paused", "finished"]):
            process = f"p{number}"
            await store.save(process, phase.encode(), active=phase == "running")
    assert stored_format(state_dir) == b"3"
    make_format_2(state_dir)
    with open_store_readonly(state_dir) as reader:  # read-only: no indexes, no error
        assert not reader.has_indexes() and reader.has_active_index()
        with pytest.raises(StoreError, match="no complete indexes"):
            reader.index_counts("phase")
        assert reader.index_terms("p0") == ()
    described = []

    def describe(snapshot: bytes) -> tuple[bool, list[tuple[str, bytes, bytes]]]:
        described.append(snapshot)
        number = len(described)
        return snapshot == b"running", terms(f"p{number - 1}", snapshot.decode(), number)

    async with open_store(state_dir) as store:
        assert not store.has_indexes()  # created empty by the writer: not complete
        with pytest.raises(StoreError, match="no complete indexes"):
            store.index_page(phase_range("running"), limit=1)
        with pytest.raises(StoreError, match="division by zero"):
            await store.rebuild_indexes(lambda raw: (1 / 0 > 0, []))  # nothing written
        assert not store.has_indexes()
        assert await store.rebuild_indexes(describe) == 1
        assert store.has_indexes()
        assert store.index_counts("phase") == {b"running": 1, b"paused": 1, b"finished": 1}
        assert [process for process, _ in store.scan_active()] == ["p0"]
    assert stored_format(state_dir) == b"3"
    async with open_store(state_dir) as store:  # once: a store of format 3 is not read again
        assert store.has_indexes()
    assert len(described) == 3


async def test_a_newer_format_is_refused(state_dir):
    async with open_store(state_dir):
        pass
    env = lmdb.open(str(state_dir / "state.lmdb"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"4", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="newer than this corra knows"):
        async with open_store(state_dir):
            pass
