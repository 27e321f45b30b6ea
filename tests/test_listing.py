"""Listings read from the store's indexes (`corra.processes._listing`): a page decodes the
records it returns and no other; filters combine; pages stay right while processes are
written; a store without indexes (an older corra's, read without a runtime) lists the same."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from test_store_indexes import make_format_2

from corra._errors import ConfigError
from corra._runtime import HISTORY_CODEC, RECORD_CODEC, open_runtime
from corra.persistence import open_store_readonly
from corra.processes._backend import BackendBase, EffectKey, LaunchRequest
from corra.processes._lifecycle import Result
from corra.processes._listing import Selection, decode_stepwise, read_undecoded
from corra.processes._query import ProcessQuery
from corra.processes._retention import to_prune
from corra.processes._sources import StateDirSource


class InstantBackend(BackendBase):
    """Programs that end at once: ``fail`` with 1, anything else with 0."""

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"key": str(request.key), "fail": request.argv[0] == "fail"}

    async def find(self, key: EffectKey, host: str | None = None) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return None

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        await trio.lowlevel.checkpoint()
        return Result(returncode=1 if handle["fail"] else 0)

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        await trio.lowlevel.checkpoint()
        return Result(signal=15, killed=True)

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""


class CountingCodec:
    """A codec that counts what it decodes."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self.decoded = 0

    def encode(self, value: Any) -> bytes:
        return self._codec.encode(value)

    def decode(self, raw: bytes) -> Any:
        self.decoded += 1
        return self._codec.decode(raw)


def team(index: int) -> str:
    return "a" if index % 2 else "b"


def instant_runtime(state_dir: Path) -> Any:
    """A runtime (not durable) of ``state_dir`` whose programs end at once (`InstantBackend`)."""
    return open_runtime(state_dir=state_dir, durable=False, backends={"local": InstantBackend()})


async def fill(runtime: Any, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        labels = {"team": team(index), **({"gpu": "1"} if index % 5 == 0 else {})}
        argv = ["fail"] if index % 3 == 0 else ["ok"]
        ref = await runtime.spawn_process(argv, name=f"job{index:03}", labels=labels)
        await ref.wait()


async def every_page(query: ProcessQuery, selection: Selection, limit: int) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = await query.list(selection, cursor=cursor, limit=limit)
        assert len(page.items) <= limit
        names += [view.record.name for view in page.items]
        if page.next_cursor is None:
            return names
        cursor = page.next_cursor


SELECTIONS = [
    Selection(),
    Selection(phases=("failed",)),
    Selection(phases=("failed", "finished")),
    Selection(labels=(("team", "a"),)),
    Selection(labels=(("team", "a"), ("gpu", "1"))),
    Selection(phases=("failed",), labels=(("gpu", "1"),)),
    Selection(name="job01"),
    Selection(name="job0", phases=("finished",), labels=(("team", "b"),)),
    Selection(labels=(("team", "c"),)),
    # name globs: walked from their literal start, the rest matched on the index terms
    Selection(name="job0[1-3]?"),
    Selection(name="job*5", phases=("failed",)),
    Selection(name="*7"),
    Selection(name="job0?3", labels=(("team", "a"),)),
    Selection(name="job[!0]*"),
    Selection(name="nojob*"),
]


def named(selector: str, name: str) -> bool:
    """A name prefix, or a glob (with ``*``, ``?`` or ``[``) of the whole name."""
    if any(wildcard in selector for wildcard in "*?["):
        return fnmatch.fnmatchcase(name, selector)
    return name.startswith(selector)


def expected(selection: Selection, count: int) -> list[str]:
    out = []
    for index in range(count):
        phase = "failed" if index % 3 == 0 else "finished"
        labels = {"team": team(index), **({"gpu": "1"} if index % 5 == 0 else {})}
        name = f"job{index:03}"
        if selection.phases and phase not in selection.phases:
            continue
        if any(labels.get(key) != value for key, value in selection.labels):
            continue
        if selection.name is not None and not named(selection.name, name):
            continue
        out.append(name)
    return out  # (creation order is name order here)


def truth(records: list[Any], selection: Selection) -> list[str]:
    """What ``selection`` lists of ``records`` (all of them, decoded), in its order."""

    def ended(record: Any) -> float | None:
        if record.phase not in ("finished", "failed", "killed"):
            return None
        result = record.state.result
        return result.ended_at if result and result.ended_at else record.state.updated_at

    def within(at: float | None, low: float | None, high: float | None) -> bool:
        if at is None:
            return low is None and high is None
        return (low is None or at >= low) and (high is None or at < high)

    chosen = [
        record
        for record in records
        if (not selection.phases or record.phase in selection.phases)
        and all(record.spec.labels.get(key) == value for key, value in selection.labels)
        and (selection.name is None or named(selection.name, record.name))
        and within(record.created_at, selection.created_after, selection.created_before)
        and (
            not selection.ended
            or within(ended(record), selection.ended_after, selection.ended_before)
        )
    ]
    if selection.name is not None:
        chosen.sort(key=lambda record: (record.name, record.created_at, record.id))
    elif selection.ended:
        chosen.sort(key=lambda record: (ended(record), record.created_at, record.id))
    else:
        chosen.sort(key=lambda record: (record.created_at, record.id))
    return [record.name for record in chosen]


def timed_selections(records: list[Any]) -> list[Selection]:
    """Selections by creation and end time, with times of ``records`` (in creation order)."""
    created = [record.created_at for record in records]
    ended = sorted(record.state.updated_at for record in records)
    return [
        Selection(created_after=created[20]),
        Selection(created_before=created[33], phases=("failed",)),
        Selection(created_after=created[5], created_before=created[40], labels=(("team", "a"),)),
        Selection(ended_after=ended[30]),
        Selection(ended_before=ended[10], labels=(("team", "b"),)),
        Selection(ended_after=ended[3], ended_before=ended[50], name="job0"),
        Selection(ended_after=ended[3], ended_before=ended[50], name="job*[13]"),
        Selection(ended_after=ended[0], created_before=created[12], phases=("finished",)),
    ]


async def test_time_bounds_select_by_creation_and_end(tmp_path):
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 60)
        manager = runtime.processes
        records = manager.list()
        codec = CountingCodec(manager._journal.codec)
        manager._journal.codec = codec
        query = ProcessQuery.of_manager(manager, lambda record: None)
        for selection in timed_selections(records):
            for limit in (3, 100):
                codec.decoded = 0
                names = await every_page(query, selection, limit)
                assert names == truth(records, selection), (selection, limit)
                assert 0 < len(names) < 60 and codec.decoded == len(names), selection
    with open_store_readonly(tmp_path) as store:
        assert store.has_indexes()
    make_format_2(tmp_path)  # the same from a store read whole
    with open_store_readonly(tmp_path) as store:
        query = ProcessQuery(
            StateDirSource(store, RECORD_CODEC, HISTORY_CODEC, lambda r: None, None)
        )  # type: ignore[arg-type]
        for selection in timed_selections(records):
            assert await every_page(query, selection, 7) == truth(records, selection)
    with pytest.raises(ConfigError, match="created_after"):
        Selection(created_after=-1.0)


async def test_a_page_decodes_its_records_and_no_other(tmp_path):
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 60)
        manager = runtime.processes
        codec = CountingCodec(manager._journal.codec)
        manager._journal.codec = codec
        query = ProcessQuery.of_manager(manager, lambda record: None)
        for selection in SELECTIONS:
            for limit in (1, 7, 100):
                codec.decoded = 0
                names = await every_page(query, selection, limit)
                assert names == expected(selection, 60), (selection, limit)
                assert codec.decoded == len(names), (selection, limit)
        counts = await query.phase_counts()
        assert counts == {**dict.fromkeys(counts, 0), "failed": 20, "finished": 40}
        assert codec.decoded == len(names)  # (counting decodes nothing)
        with pytest.raises(ConfigError, match="cursor"):
            await query.list(cursor="n" + "x", limit=5)
        with pytest.raises(ConfigError, match="limit"):
            await query.list(limit=0)


async def test_pages_stay_right_while_processes_are_written(tmp_path):
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 30)
        query = ProcessQuery.of_manager(runtime.processes, lambda record: None)
        selection = Selection(phases=("finished", "failed"))
        seen: list[str] = []
        cursor = None
        written = 30
        while True:
            page = await query.list(selection, cursor=cursor, limit=4)
            seen += [view.record.name for view in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            if written < 45:  # between pages: new processes, after every position
                await fill(runtime, 3, start=written)
                written += 3
        # nothing repeated, nothing skipped, the new ones at the end
        assert seen == [f"job{index:03}" for index in range(45)]
        assert Counter(seen).most_common(1)[0][1] == 1


async def test_a_deleted_process_leaves_the_listings_and_the_counts(tmp_path):
    # (what `corra rm` stands on: `Store.delete` takes a process out of every index)
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 9)
        manager = runtime.processes
        query = ProcessQuery.of_manager(manager, lambda record: None)
        gone = [manager.get(name).id for name in ("job000", "job004", "job005")]
        for process_id in gone:
            await manager.store.delete(process_id)
        assert await every_page(query, Selection(), 2) == [
            name for name in expected(Selection(), 9) if name not in ("job000", "job004", "job005")
        ]
        assert await every_page(query, Selection(labels=(("gpu", "1"),)), 2) == []
        assert await every_page(query, Selection(name="job00"), 2) == [
            "job001",
            "job002",
            "job003",
            "job006",
            "job007",
            "job008",
        ]
        counts = await query.phase_counts()
        assert (counts["failed"], counts["finished"]) == (2, 4)


async def test_a_store_without_indexes_lists_the_same_and_a_runtime_indexes_it(tmp_path):
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 25)

    async def listings() -> list[list[str]]:
        # (as `corra._readonly` opens it; with the codec of these handles, JSON values)
        with open_store_readonly(tmp_path) as store:
            source = StateDirSource(store, RECORD_CODEC, HISTORY_CODEC, lambda r: None, None)  # type: ignore[arg-type]
            query = ProcessQuery(source)
            out = [await every_page(query, selection, 4) for selection in SELECTIONS]
            out.append([f"{k}={v}" for k, v in (await query.phase_counts()).items()])
            return out

    indexed = await listings()
    assert indexed[:-1] == [expected(selection, 25) for selection in SELECTIONS]
    make_format_2(tmp_path)
    assert await listings() == indexed  # read whole, listed alike
    async with instant_runtime(tmp_path):
        pass  # (recovery builds the indexes, once)
    assert await listings() == indexed
    with open_store_readonly(tmp_path) as store:
        assert store.has_indexes()


async def test_a_prune_selects_what_ended_before_a_moment_without_decoding_a_record(tmp_path):
    # A prune of 100,000 reads the ids from the end index: decoding them in a worker thread
    # held the interpreter's lock for seconds, and stalled the service's event loop.
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 30)
        manager = runtime.processes
        records = manager.list()
        moment = sorted(record.state.updated_at for record in records)[20]
        codec = CountingCodec(manager.codec)
        names = {record.id: record.name for record in records}
        oldest = truth(records, Selection(ended_after=0.0))  # (in the order of their ends)

        def selected(ended_before, keep):
            found, _ = to_prune(manager.store, codec, ended_before, keep)
            return [names[process] for process in found]

        found = selected(moment, None)
        assert found == truth(records, Selection(ended_before=moment)) and len(found) == 20
        # all but the 25 that ended last; with a moment too, whichever removes more
        assert selected(None, 25) == oldest[:5]
        assert selected(moment, 25) == found and selected(moment, 5) == oldest[:25]
        assert selected(None, 30) == selected(None, 31) == []
        assert codec.decoded == 0
        assert await manager.prune(moment) == 20
        assert [record.name for record in manager.list()] == [
            name for name in names.values() if name not in found
        ]
        assert await manager.prune(keep=4) == 6
        assert {record.name for record in manager.list()} == set(oldest[-4:])
        with pytest.raises(ConfigError, match="give ended_before"):
            await manager.prune()
        with pytest.raises(ConfigError, match="keep: got -1"):
            await manager.prune(keep=-1)


async def test_a_page_is_decoded_a_few_records_per_step_of_the_event_loop(tmp_path):
    # A service decodes its pages on the loop, between checkpoints: in worker threads, 8
    # clients listing at once held the interpreter's lock against the loop (suite scale's
    # health_while_listing).
    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 45)
        manager = runtime.processes
        items, cursor, corrupt = read_undecoded(
            manager.store, manager.codec, Selection(), None, 100
        )
        assert len(items) == 45 and cursor is None and corrupt == 0
        assert all(type(item) is bytes for item in items)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            ticks = 0
            records, unreadable = await decode_stepwise(
                manager.codec, [*items, b"not a record"], step=10
            )
            nursery.cancel_scope.cancel()
        assert [record.name for record in records] == [f"job{i:03}" for i in range(45)]
        assert unreadable == 1 and ticks >= 4


async def test_the_journals_encoder_gives_what_record_terms_gives_at_every_phase(tmp_path):
    # A save fills a template with its phase (TermsEncoder); a rebuild and the memory index
    # use record_terms: both must give the very same bytes, or a rebuilt store would move
    # every process's entries at its next save.
    import attrs

    from corra.persistence import encode_terms
    from corra.processes._lifecycle import PHASES
    from corra.processes._terms import TermsEncoder, record_terms

    async with instant_runtime(tmp_path) as runtime:
        await fill(runtime, 6)
        records = runtime.processes.list()
    encoder = TermsEncoder(limit=4)  # (evicted as it goes, as with many processes)
    for record in records:
        for phase in (*PHASES, *PHASES):  # (a terminal phase forgets it: encoded again)
            moved = attrs.evolve(record, state=attrs.evolve(record.state, phase=phase))
            assert encoder.encode(moved) == encode_terms(record_terms(moved)), phase
