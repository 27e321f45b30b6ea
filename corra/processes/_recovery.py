"""Recovery: bring back the processes that a runtime left with work to do.

Only the records in the store's ``active`` index are read (the records that
`needs_recovery`; the journal keeps the index): paused and finished ones are counted, not
decoded. Processes that waited for a slot (``created``) are not decoded either: their ids,
read from the phase index in the order of their submissions, go back to the admission queue
(which reads each record in the background, `corra.processes._admission`). The other active
processes get their actors again (running programs are reattached, launches whose outcome is
unknown are settled by the idempotent launch); processes paused for their host wait for it
again; records that cannot be decoded are set aside and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from corra.persistence import IndexRange, group_prefix
from corra.processes._lifecycle import needs_recovery
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._record import ProcessRecord
from corra.processes._terms import (
    CREATED,
    PHASE,
    IndexTerm,
    creation_position,
    phase_group,
    record_terms,
)

logger = logging.getLogger("corra.process")

#: Ids read from the phase index at once, for the processes waiting for a slot.
WAITING_PAGE = 10_000


@attrs.frozen
class RecoveryReport:
    """What `ProcessManager.recover` found."""

    resumed: tuple[str, ...]
    """The active processes, whose actors it started again or which it queued for a slot
    again (oldest first)."""
    inactive: int
    """Paused and terminal processes: counted, never read (they stay in the store)."""
    set_aside: tuple[tuple[str, str], ...]
    """``(process id, reason)`` of every active record that could not be decoded."""
    waiting_for_host: tuple[str, ...] = ()
    """Processes paused because their host stopped answering: resumed when it answers."""


async def recover(
    store: RecordStore,
    codec: RecordCodec,
    *,
    start: Callable[[ProcessRecord], Awaitable[None]],
    queue: Callable[[list[str]], None],
    wait_for_host: Callable[[ProcessRecord], None],
    has_backend: Callable[[str], bool],
) -> RecoveryReport:
    """Bring back every process that needs recovery (see the module's docstring).

    ``start`` starts the actor of an active process; ``queue`` queues the processes that
    wait for a slot, by id, in the order of their submissions; ``wait_for_host`` makes a process
    paused for its host wait for it; ``has_backend`` says whether a backend (by name) is
    there to wait with (and can: `Capabilities.waits_for_host`).

    A store from a corra that kept no indexes (or no secondary ones) gets them first, once:
    every snapshot is read then (in the writer's transaction).
    """
    if not store.has_indexes():
        logger.info("indexing the processes of the store (once)")
        indexed = await store.rebuild_indexes(lambda raw: _describe(codec, raw))
        logger.info("indexed the processes of the store, %d active", indexed)
    queued = await trio.to_thread.run_sync(_waiting, store)
    skip = {process_id for _, process_id in queued}
    found, stale, corrupt = await trio.to_thread.run_sync(_scan, store, codec, skip)
    for process_id, raw in stale:
        # In the index, yet not active: only a store changed behind corra's back has such
        # a record. Take it out, so that the next recovery does not read it either.
        logger.warning("process %s: not active, but indexed as active; unindexed", process_id)
        await store.save(process_id, raw, active=False)
    set_aside = []
    for process_id, raw, reason in corrupt:
        logger.error("process %s: corrupt record set aside: %s", process_id, reason)
        await store.set_aside(process_id, raw, reason)
        set_aside.append((process_id, reason))
    counts = store.counts()  # before any actor runs, so that nothing moved yet
    waiting = [record for record in found if record.phase == "paused"]
    resumed = [record for record in found if record.phase != "paused"]
    queue([process_id for _, process_id in queued])
    for record in resumed:
        await start(record)
    for record in waiting:
        if has_backend(record.spec.backend):
            wait_for_host(record)
        else:
            logger.warning(
                "process %s: paused for host %s of backend %r, which this runtime lacks "
                "(or which cannot wait for hosts); it waits for a runtime that has it",
                record.id,
                record.spec.host,
                record.spec.backend,
            )
    started = [(creation_position(record), record.id) for record in resumed]
    return RecoveryReport(
        resumed=tuple(process_id for _, process_id in sorted(started + queued)),
        waiting_for_host=tuple(record.id for record in waiting),
        inactive=counts.snapshots - counts.active,
        set_aside=tuple(set_aside),
    )


def _describe(codec: RecordCodec, raw: bytes) -> tuple[bool, tuple[IndexTerm, ...]]:
    """For indexing: whether recovery must read this snapshot (one that needs recovery, or
    one that cannot be decoded, to be set aside), and its index terms (none if it cannot be
    decoded: it is set aside next)."""
    try:
        record: ProcessRecord = codec.decode(raw)
    except Exception:
        return True, ()
    return needs_recovery(record.state), record_terms(record)


def _waiting(store: RecordStore) -> list[tuple[bytes, str]]:
    """In a thread: the creation position and id of every process waiting for a slot, in
    the order of their submissions, from the phase index (no record decoded)."""
    waiting: list[tuple[bytes, str]] = []
    positions: list[bytes] = []

    def position(terms: tuple[IndexTerm, ...]) -> bool:
        # (the creation position is not in the page: each candidate's terms hold it)
        positions.append(next(order for index, _, order in terms if index == CREATED))
        return True

    selected = [IndexRange(PHASE, group_prefix(phase_group("created")))]
    after = None
    while True:
        page = store.index_page(selected, after=after, limit=WAITING_PAGE, accept=position)
        ids = [process_id for process_id, _ in page.items]
        # (accept saw one more than the page holds when more follow)
        waiting.extend(zip(positions[: len(ids)], ids, strict=True))
        positions.clear()
        if page.next_position is None:
            return waiting
        after = page.next_position


def _scan(
    store: RecordStore, codec: RecordCodec, skip: set[str]
) -> tuple[list[ProcessRecord], list[tuple[str, bytes]], list[tuple[str, bytes, str]]]:
    """In a thread: the indexed records that need recovery (but those in ``skip``), oldest
    first; the indexed ones that do not; the corrupt ones, with the reason."""
    found: list[ProcessRecord] = []
    stale: list[tuple[str, bytes]] = []
    corrupt: list[tuple[str, bytes, str]] = []
    for process_id, raw in store.scan_active():
        if process_id in skip:
            continue
        try:
            record: ProcessRecord = codec.decode(raw)
        except Exception as exc:
            corrupt.append((process_id, raw, str(exc)))
            continue
        if needs_recovery(record.state):
            found.append(record)
        else:
            stale.append((process_id, raw))
    found.sort(key=lambda record: (record.created_at, record.id))
    return found, stale, corrupt
