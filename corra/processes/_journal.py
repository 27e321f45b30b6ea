"""The journal of processes: every transition is made durable, then published.

A transition (`Journal.transition`) is one step of the lifecycle (`advance`), written to the
store with its history entry (`Journal.persist`), and then published: to memory (the records
of the processes that have an actor), to the tasks waiting on the process (`Journal.wait`) and
to the subscribers (`Journal.subscribe`). Write-ahead: nothing is published before it is
durable, except a save in the background, whose loss in a crash is safe.

A process's saves commit in order; a save in the background that failed is written again,
first, with the next save of the process, so the history stays complete and in order. The
store's ``active`` index follows `needs_recovery` of the last durable snapshot, and its
secondary indexes the terms of the last durable record (`corra.processes._terms`).

Readers of a store (the manager, the command line without a runtime) find records with
`find_record` and `sorted_records`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import trio

from corra._errors import NoSuchProcess
from corra.processes._lifecycle import ACTIVE, KEEPS_RESULT, Event, advance, needs_recovery
from corra.processes._ports import PendingSave, RecordCodec, RecordStore
from corra.processes._record import ProcessRecord, Transition
from corra.processes._terms import TermsEncoder

logger = logging.getLogger("corra.process")

Step = tuple[ProcessRecord, Transition]


class Journal:
    """Transitions of processes: made durable in ``store``, then published.

    Args:
        store: where records and their history live.
        codec: records as bytes (`corra._runtime.record_codec`, of the runtime's backends).
        history_codec: history entries as bytes (`corra._runtime.HISTORY_CODEC`).
        clock: the time of a transition (epoch seconds).
    """

    def __init__(
        self,
        store: RecordStore,
        codec: RecordCodec,
        history_codec: RecordCodec,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self.codec = codec
        self.history_codec = history_codec
        self.clock = clock
        # The newest record of every process that has an actor (or is about to).
        self._active: dict[str, ProcessRecord] = {}
        # Per process, what `wait` waits on: set at its next transition or actor end.
        self._watches: dict[str, _Watch] = {}
        # Per process, its save in the background and its encoded history entries, until a
        # later save of the process shows how it went.
        self._unconfirmed: dict[str, tuple[PendingSave, list[bytes]]] = {}
        self._terms = TermsEncoder()
        self._subscribers: list[trio.MemorySendChannel[Step]] = []

    @property
    def store(self) -> RecordStore:
        return self._store

    # -- memory ----------------------------------------------------------------------------

    def latest(self, process_id: str) -> ProcessRecord | None:
        """The newest record of a process that has an actor, from memory; else None."""
        return self._active.get(process_id)

    def hold(self, record: ProcessRecord) -> None:
        """Keep ``record`` in memory: its process gets an actor."""
        self._active[record.id] = record

    def release(self, process_id: str) -> None:
        """Its actor ended: forget the process's record, and wake its waiters."""
        record = self._active.pop(process_id, None)
        unconfirmed = self._unconfirmed.get(process_id)
        if unconfirmed is not None and unconfirmed[0].done and unconfirmed[0].error is None:
            del self._unconfirmed[process_id]
        self._wake(process_id, record)

    # -- writing ---------------------------------------------------------------------------

    async def transition(
        self, record: ProcessRecord, event: Event, *, background: bool = False, **changes: Any
    ) -> ProcessRecord:
        """``record`` after ``event`` (`advance`), durable (unless in the ``background``) and
        published. ``changes``: what `advance` takes (``reason``, ``handle``, ...).

        Raises:
            InvalidTransition: the lifecycle has no such move (nothing is written).
            StoreError: the write failed (nothing is published).
        """
        now = self.clock()
        state = advance(record.state, event, at=now, process=record.id, **changes)
        new = ProcessRecord(record.id, record.spec, state, record.created_at)
        transition = Transition(
            now,
            event,
            record.state.phase,
            state.phase,
            state.attempt,
            state.reason,
            record.state.result if event in KEEPS_RESULT else None,
        )
        was_indexed, indexed = needs_recovery(record.state), needs_recovery(state)
        entering = None if was_indexed is indexed else indexed
        await self.persist([(new, transition)], entering=entering, background=background)
        return new

    async def persist(
        self,
        steps: list[Step],
        *,
        entering: bool | None,
        name: str | None = None,
        background: bool = False,
    ) -> None:
        """Write the last record of ``steps`` and every step's transition, in one save.

        ``entering``: True if the process enters the store's ``active`` index with it, False
        if it leaves it, None if it stays in or out (the index follows durable snapshots
        only: a save that changes it is never in the background). ``name``: the name the
        save claims (`NameTaken` if another process has it).

        Awaited (the default), it returns once all of it is durable. In the ``background``,
        it returns at once and the write commits with the next group. Either way the
        process's saves commit in order, and a save never outlives an earlier one that
        failed: it fails too, and the next save of the process writes the history entries of
        both. One save at most per process is in the background; a second one is awaited.
        """
        record = steps[-1][0]
        process_id = record.id
        snapshot = self.codec.encode(record)
        terms = self._terms.encode(record)
        if len(steps) == 1:
            entries = [self.history_codec.encode(steps[0][1])]
        else:
            entries = [self.history_codec.encode(transition) for _, transition in steps]
        if entering is not None:
            background = False
        earlier = self._unconfirmed.pop(process_id, None)
        after = None
        if earlier is not None:
            if not earlier[0].done:
                after = earlier[0]
                background = False
            elif earlier[0].error is not None:
                entries = earlier[1] + entries  # never written: write them now, in order
        if background:
            write = self._store.save_nowait(
                process_id, snapshot, transitions=entries, active=entering, indexes=terms
            )
            self._unconfirmed[process_id] = (write, entries)
        else:
            try:
                # Shielded: once asked, the write happens anyway (the store commits what it
                # was given), so memory must not be left behind the disk.
                await self._store.save(
                    process_id,
                    snapshot,
                    transitions=entries,
                    name=name,
                    active=entering,
                    after=after,
                    shielded=True,
                    indexes=terms,
                )
            except BaseException:
                if earlier is not None:
                    self._unconfirmed[process_id] = earlier
                raise
        self._publish(steps)

    def _publish(self, steps: list[Step]) -> None:
        """The newest record to memory, then to the waiters and subscribers."""
        record = steps[-1][0]
        process_id = record.id
        if process_id in self._active or record.state.phase in ACTIVE:
            self._active[process_id] = record
        if self._subscribers or logger.isEnabledFor(logging.INFO):
            self._announce(steps)
        self._wake(process_id, record)

    def _announce(self, steps: list[Step]) -> None:
        """Log the transitions and hand them to the subscribers."""
        for step, transition in steps:
            logger.info(
                "process %s (%s): %s -> %s%s",
                step.id,
                step.name,
                transition.source,
                transition.target,
                f" ({transition.reason})" if transition.reason else "",
            )
            for channel in self._subscribers:
                try:
                    channel.send_nowait((step, transition))
                except trio.WouldBlock:
                    logger.warning("a slow subscriber lost a transition of %s", step.id)
                except trio.BrokenResourceError:
                    pass

    def _wake(self, process_id: str, record: ProcessRecord | None) -> None:
        """Wake the waiters of this process, handing them ``record``."""
        watch = self._watches.pop(process_id, None)
        if watch is not None:
            watch.wake(record)

    def removed(self, record: ProcessRecord) -> None:
        """``record``'s process is removed (`corra.processes._removal`): forget it, tell the
        subscribers (a ``remove`` transition, never stored), and wake its waiters (who
        find it no more)."""
        process_id = record.id
        self._active.pop(process_id, None)
        self._unconfirmed.pop(process_id, None)
        now = self.clock()
        phase, attempt = record.state.phase, record.state.attempt
        step = (record, Transition(now, "remove", phase, phase, attempt, "removed on request"))
        if self._subscribers or logger.isEnabledFor(logging.INFO):
            self._announce([step])
        self._wake(process_id, None)

    # -- following -------------------------------------------------------------------------

    async def wait(
        self,
        record: ProcessRecord,
        condition: Callable[[ProcessRecord], bool],
        reread: Callable[[str], ProcessRecord],
    ) -> ProcessRecord:
        """Wait until ``condition(record)`` holds for the process's newest record, and return
        that. A checkpoint. Wakes at the process's transitions and at the end of its actor
        (`release`); ``reread`` reads the record from the store when neither hands it one.
        """
        process_id = record.id
        parked = False
        while not condition(record):
            watch = self._watches.get(process_id)
            if watch is None:
                watch = self._watches[process_id] = _Watch()
            try:
                await watch.wait()
            except BaseException:
                if not watch.tasks and self._watches.get(process_id) is watch:
                    del self._watches[process_id]  # nothing stays behind a cancelled wait
                raise
            parked = True
            # The newest record: from memory while it is active, else the one that woke us
            # (published after it was durable; reading it back from the store is needless).
            record = self._active.get(process_id) or watch.record or reread(process_id)
        if not parked:
            await trio.lowlevel.checkpoint()
        return record

    @contextlib.contextmanager
    def subscribe(self, buffer: int = 1024) -> Iterator[trio.MemoryReceiveChannel[Step]]:
        """Every transition from now on, as ``(record, transition)``. Slow readers that let
        the buffer fill up lose events (counted in the log), never slow processes down."""
        send, receive = trio.open_memory_channel[Step](buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)
            send.close()


class _Watch:
    """What the waiters of one process wait for (once): its next change, and the record
    after it (None: its actor ended)."""

    __slots__ = ("record", "tasks")

    def __init__(self) -> None:
        self.tasks: list[trio.lowlevel.Task] = []
        self.record: ProcessRecord | None = None

    async def wait(self) -> None:
        task = trio.lowlevel.current_task()
        tasks = self.tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self, record: ProcessRecord | None) -> None:
        self.record = record
        for task in self.tasks:
            trio.lowlevel.reschedule(task)
        self.tasks = []


# -- reading a store -------------------------------------------------------------------------


def find_record(store: Any, codec: RecordCodec, id_or_name: str) -> ProcessRecord:
    """A record from the store by id, else by name (any store or read-only reader).

    Raises:
        NoSuchProcess: neither names a process.
        CorruptRecord: its record cannot be decoded.
    """
    raw = store.load(id_or_name)
    if raw is None:
        named = store.id_for_name(id_or_name)
        raw = store.load(named) if named is not None else None
    if raw is None:
        raise NoSuchProcess(id_or_name, "no process with this id or name")
    record: ProcessRecord = codec.decode(raw)
    return record


def sorted_records(store: Any, codec: RecordCodec) -> tuple[list[ProcessRecord], int]:
    """Every decodable record, oldest first, and how many could not be decoded."""
    records, corrupt = store.scan_decoded(codec)
    ordered = sorted(records.values(), key=lambda record: (record.created_at, record.id))
    return ordered, len(corrupt)
