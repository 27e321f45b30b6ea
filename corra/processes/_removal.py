"""Removal: a terminal process goes completely, and a crash never leaves half of it.

What a process is: its record, history and name in the store, and what its programs left
behind (a run dir and logs per attempt, here or on a host, and the logs brought home), which
its backend removes (`Backend.remove`). They cannot go in one transaction, so they go in
this order:

1. the tombstone: the record moves to the store's quarantine, with `REMOVING` as its
   reason (`RecordStore.set_aside`: one transaction). From here on the process is gone
   for every reader (no record under its id, nor under its name), and no event can reach
   it (it had no actor, and a rerun finds no record);
2. the values kept as files (`corra.processes._values`) go, then the backend removes each
   attempt's run dir and logs (idempotent);
3. the rest, in one transaction (`RecordStore.delete`): history, name, tombstone.

A crash before 1 leaves the process whole; after it, the process is gone, and the next
runtime's recovery finishes 2 and 3 from the tombstone (`finish_removals`). So does a
removal whose backend could not remove everything now (a host that does not answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from corra._errors import BackendError, ConfigError, CorruptRecord
from corra.processes._backend import Backend, EffectKey
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._record import ProcessRecord
from corra.processes._values import remove_values

logger = logging.getLogger("corra.process")

#: The reason of a removal's tombstone in the store's quarantine (step 1).
REMOVING = "removing (corra rm): the removal of this process is finished by recovery"


async def bury(
    store: RecordStore, record: ProcessRecord, removed: Callable[[ProcessRecord], None]
) -> bool:
    """Step 1 for ``record``'s process (terminal, without an actor): its tombstone, then
    ``removed`` is told that it is gone for readers. Returns False if it was gone already.
    Shielded: once asked, the tombstone is written and told.

    Raises:
        StoreError: the tombstone could not be written (nothing was removed).
    """
    with trio.CancelScope(shield=True):
        raw = store.load(record.id)
        if raw is None:
            return False
        await store.set_aside(record.id, raw, REMOVING)
        removed(record)
        return True


async def finish(
    store: RecordStore,
    record: ProcessRecord,
    backend_for: Callable[..., Backend],
    results_dir: Path | None = None,
) -> bool:
    """Steps 2 and 3 for a buried process (shielded: once begun, it goes to its end).
    Returns False if its backend could not remove everything now (the next recovery
    finishes it)."""
    with trio.CancelScope(shield=True):
        return await _finish(store, record, backend_for, results_dir)


async def _finish(
    store: RecordStore,
    record: ProcessRecord,
    backend_for: Callable[..., Backend],
    results_dir: Path | None,
) -> bool:
    """Steps 2 and 3 of a removal whose tombstone is written."""
    try:
        await trio.to_thread.run_sync(remove_values, results_dir, record.id, record.state.attempt)
        backend = backend_for(record.spec)
        for attempt in range(1, record.state.attempt + 1):
            await backend.remove(EffectKey(record.id, attempt), record.spec.host)
    except (BackendError, ConfigError, OSError) as exc:
        logger.warning(
            "process %s (%s): removed, but not yet its run dirs and logs (the next start "
            "of a runtime on this state dir finishes it): %s",
            record.id,
            record.name,
            exc,
        )
        return False
    # Its one name, if any, is its spec's (claimed at submission): only that is looked at.
    await store.delete(record.id, names=() if record.spec.name is None else (record.spec.name,))
    return True


async def finish_removals(
    store: RecordStore,
    codec: RecordCodec,
    backend_for: Callable[..., Backend],
    results_dir: Path | None = None,
) -> int:
    """Finish the removals that a crash (or a host that did not answer) interrupted:
    every tombstone in the store's quarantine. Returns how many it finished."""
    finished = 0
    tombstones = await trio.to_thread.run_sync(store.quarantined)
    for entry in tombstones:
        if entry.reason != REMOVING:
            continue
        try:
            record: ProcessRecord = codec.decode(entry.raw)
        except CorruptRecord as exc:  # (then only the store's part can go)
            logger.error(
                "process %s: removing, but its record is corrupt: %s", entry.process_id, exc
            )
            await store.delete(entry.process_id)
            continue
        if await finish(store, record, backend_for, results_dir):
            logger.info("process %s (%s): its removal is finished", record.id, record.name)
            finished += 1
    return finished
