"""Retention: terminal processes that ended long ago, or beyond the newest so many, are
removed, in bounded batches.

`prune` removes (`ProcessManager.remove`, crash-safe) every terminal process that ended
before a moment, and every one but the ``keep`` that ended last; `retain` prunes now and
then, for a runtime's ``retain_finished`` and ``retain_count``. Both select from the store's
end index (`to_prune`), which decodes no record; the removals go ``batch`` at a time, with a
pause between batches, so that a prune of many never holds up the event loop, or the
store's writer, for long.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from corra._errors import ConfigError, CorraError, InvalidTransition, NoSuchProcess
from corra.processes._listing import Selection, read, read_records
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._record import ProcessRecord
from corra.processes._terms import ENDED, ended_at

logger = logging.getLogger("corra.process")

#: Processes a prune removes before it lets others write, and how long it lets them.
PRUNE_BATCH = 100
PRUNE_PAUSE = 0.01
#: Ids read per page of the end index by `to_prune`.
_PAGE = 1000


def check_retention(ended_before: float | None, keep: int | None) -> None:
    """Check what a prune is given (at least one of the two).

    Raises:
        ConfigError: neither, or one that is not a time >= 0 or a count >= 0.
    """
    if ended_before is None and keep is None:
        raise ConfigError("prune: give ended_before (a time), keep (a count), or both")
    if ended_before is not None and (
        isinstance(ended_before, bool)
        or not isinstance(ended_before, int | float)
        or not ended_before >= 0
        or ended_before == float("inf")
    ):
        raise ConfigError(f"ended_before: got {ended_before!r}, expected epoch seconds >= 0")
    if keep is not None:
        check_count("keep", keep)


def check_count(name: str, value: object) -> None:
    """Raise `ConfigError` naming ``name`` unless ``value`` is a count of processes to keep
    (an integer >= 0): `corra prune --keep`, `retain_count`, ``?keep=``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: got {value!r}, expected an integer >= 0")


def to_prune(
    store: RecordStore, codec: RecordCodec, ended_before: float | None, keep: int | None
) -> tuple[list[str], int]:
    """The ids of the terminal processes a prune removes, in the order of their end (a
    process killed before it ran ended at its last transition): those that ended before
    ``ended_before``, and all but the ``keep`` that ended last; and how many of the first
    ones the count selects (both select a start of the same order: the longer one is
    the answer). A walk of the store's end index, which decodes no record (a store without
    indexes is read whole). Blocking (run it in a worker thread): a prune of many must not
    hold the event loop, nor the interpreter's lock for long."""
    indexed = store.has_indexes()  # (a read of the store's format: once, not per page)
    before = []
    if ended_before is not None:
        before = _ids(store, codec, indexed, Selection(ended_before=ended_before))
    beyond = 0
    if keep is not None:
        if indexed:
            beyond = max(0, store.index_counts(ENDED).get(b"", 0) - keep)
            everything = Selection(ended_after=0.0)
            oldest = _ids(store, codec, indexed, everything, beyond) if beyond else []
        else:
            oldest = _ids(store, codec, indexed, Selection(ended_after=0.0))
            beyond = max(0, len(oldest) - keep)
            del oldest[beyond:]
        if len(oldest) > len(before):
            return oldest, beyond
    return before, beyond


def _ids(
    store: RecordStore,
    codec: RecordCodec,
    indexed: bool,
    selection: Selection,
    limit: int | None = None,
) -> list[str]:
    """The ids ``selection`` selects, in its order (at most ``limit``): from the indexes
    where the store has them (``indexed``), else from its records."""
    found: list[str] = []
    cursor = None
    while limit is None or len(found) < limit:
        size = _PAGE if limit is None else min(_PAGE, limit - len(found))
        if indexed:
            page, cursor = read(store, selection, cursor, size)
            found.extend(process_id for process_id, _ in page.items)
        else:
            records, cursor, _ = read_records(store, codec, selection, cursor, size)
            found.extend(record.id for record in records)
        if cursor is None:
            break
    return found


async def prune(
    store: RecordStore,
    codec: RecordCodec,
    get: Callable[[str], ProcessRecord],
    remove: Callable[[str], Awaitable[ProcessRecord]],
    ended_before: float | None,
    keep: int | None = None,
    *,
    batch: int = PRUNE_BATCH,
) -> int:
    """Remove every terminal process that ended before ``ended_before`` (epoch seconds),
    and every one but the ``keep`` that ended last (None: no such rule), with ``remove``,
    ``batch`` at a time; returns how many it removed. A process rerun or removed meanwhile
    is left alone (``get`` reads it again first). A checkpoint.

    Raises:
        ConfigError: as `check_retention`.
    """
    check_retention(ended_before, keep)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    found, beyond = await trio.to_thread.run_sync(to_prune, store, codec, ended_before, keep)
    removed = 0
    for start in range(0, len(found), batch):
        for place, process_id in enumerate(found[start : start + batch], start):
            try:
                record = get(process_id)
                if not record.state.terminal:
                    continue
                if place >= beyond and not (
                    ended_before is not None and ended_at(record) < ended_before
                ):
                    continue
                await remove(process_id)
            except (NoSuchProcess, InvalidTransition):
                continue
            removed += 1
        await trio.sleep(PRUNE_PAUSE)
    return removed


async def retain(
    prune: Callable[[float | None, int | None], Awaitable[int]],
    clock: Callable[[], float],
    seconds: float | None,
    keep: int | None = None,
    *,
    every: float,
) -> None:
    """``prune`` what ended more than ``seconds`` ago and all but the ``keep`` that ended
    last (None: no such rule), now and every ``every`` seconds, until cancelled; a failed
    round is logged, and the next one tries again."""
    while True:
        ended_before = None if seconds is None else max(0.0, clock() - seconds)
        try:
            removed = await prune(ended_before, keep)
        except CorraError as exc:
            logger.warning("pruning the processes kept too long failed: %s", exc)
        else:
            if removed:
                logger.info("pruned %d process(es) kept too long", removed)
        await trio.sleep(every)
