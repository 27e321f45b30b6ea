"""Retention: terminal processes that ended long ago are removed, in bounded batches.

`prune` removes (`ProcessManager.remove`, crash-safe) every terminal process that ended
before a moment; `retain` prunes now and then, for a runtime's ``retain_finished``. The
selection reads the records in a worker thread; the removals go ``batch`` at a time, with a
pause between batches, so that a prune of many never holds up the event loop, or the
store's writer, for long.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from corra._errors import CorraError, InvalidTransition, NoSuchProcess
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._record import ProcessRecord
from corra.processes._removal import ended_before
from corra.processes._terms import ended_at

logger = logging.getLogger("corra.process")

#: Processes a prune removes before it lets others write, and how long it lets them.
PRUNE_BATCH = 100
PRUNE_PAUSE = 0.01


async def prune(
    store: RecordStore,
    codec: RecordCodec,
    get: Callable[[str], ProcessRecord],
    remove: Callable[[str], Awaitable[ProcessRecord]],
    moment: float,
    *,
    batch: int = PRUNE_BATCH,
) -> int:
    """Remove every terminal process that ended before ``moment`` (epoch seconds), with
    ``remove``, ``batch`` at a time; returns how many it removed. A process rerun or
    removed meanwhile is left alone (``get`` reads it again first). A checkpoint."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    found = await trio.to_thread.run_sync(ended_before, store, codec, moment)
    removed = 0
    for start in range(0, len(found), batch):
        for process_id in found[start : start + batch]:
            try:
                record = get(process_id)
                if not record.state.terminal or ended_at(record) >= moment:
                    continue
                await remove(process_id)
            except (NoSuchProcess, InvalidTransition):
                continue
            removed += 1
        await trio.sleep(PRUNE_PAUSE)
    return removed


async def retain(
    prune: Callable[[float], Awaitable[int]],
    clock: Callable[[], float],
    seconds: float,
    *,
    every: float,
) -> None:
    """``prune`` what ended more than ``seconds`` ago, now and every ``every`` seconds,
    until cancelled; a failed round is logged, and the next one tries again."""
    while True:
        try:
            removed = await prune(clock() - seconds)
        except CorraError as exc:
            logger.warning("pruning the processes that ended long ago failed: %s", exc)
        else:
            if removed:
                logger.info("pruned %d process(es) that ended long ago", removed)
        await trio.sleep(every)
