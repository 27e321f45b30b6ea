"""The store's writes, as command objects: each is queued, applied by the writer thread in
one write transaction with the others of its batch, and awaited by one task (or none).

A write's ``apply`` changes the store, or raises a `StoreError` subclass before changing
anything to fail alone (`corra.persistence._store`, Rule 2).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import lmdb
import trio

from corra._errors import NameTaken, StoreError
from corra.persistence._indexes import IndexTerm, rebuild, remove_terms, set_terms
from corra.persistence._lmdb import (
    INDEXES_FORMAT,
    SEQUENCE_BYTES,
    Databases,
    history_prefix,
    mark_active_index_complete,
    text,
)

#: Limits on one write transaction, so that a burst of writes cannot outgrow LMDB's
#: dirty-page limit; what is left over goes into the next transaction.
MAX_BATCH_WRITES: Final = 10_000
MAX_BATCH_BYTES: Final = 64 << 20


class Write:
    """One queued write: applied by the writer thread, awaited by one task (or none)."""

    __slots__ = ("done", "error", "result", "shielded", "task")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.shielded = False

    async def wait(self) -> None:
        """Until the writer is done with this write, or the task is cancelled (unless
        ``shielded``: then cancellation waits for the write, as in a shielded scope)."""
        # `wake` runs on the loop, which is ours until we park: it cannot come first.
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abandon)

    def _abandon(self, _: object) -> trio.lowlevel.Abort:
        if self.shielded:
            return trio.lowlevel.Abort.FAILED  # delivered at the task's next checkpoint
        self.task = None  # cancelled: the write still happens, nobody hears of it
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        """On the loop: the writer is done with it; let the waiting task, if any, go on."""
        self.done = True
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)
            self.task = None

    def size(self) -> int:
        return 0

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> Any:
        """Change the store; raise a `StoreError` subclass before changing anything to fail
        this write alone."""
        raise NotImplementedError


def _claim(txn: lmdb.Transaction, databases: Databases, name: bytes, process: bytes) -> bytes:
    owner = txn.get(name, db=databases.names)
    if owner is None:
        txn.put(name, process, db=databases.names)
        return process
    return owner


#: Processes whose next history sequence number the writer remembers, at most (then it
#: forgets them all and reads them again as needed): about 1.5 MB, where 100,000 queued
#: processes (one save each) kept 11 MB.
_REMEMBERED_SEQUENCES: Final = 10_000


def _next_history_sequence(txn: lmdb.Transaction, databases: Databases, process: bytes) -> int:
    """The sequence number of the next history entry of ``process``.

    Remembered from the last save of the process by this writer (the only one: the writer
    lock), else read: the last key below prefix + 1. A remembered number may run ahead of
    the store after a transaction that failed, which leaves a gap in the numbers, never a
    clash: entries keep their order.
    """
    remembered = databases.next_history.get(process)
    if remembered is not None:
        return remembered
    prefix = history_prefix(process)
    cursor = txn.cursor(db=databases.history)
    found = cursor.prev() if cursor.set_range(process + b"\x01") else cursor.last()
    if found and cursor.key().startswith(prefix):
        return int.from_bytes(cursor.key()[len(prefix) :], "big") + 1
    return 0


class PendingSave(Write):
    """A save queued by `Store.save_nowait` (and, inside the store, by `Store.save`).

    ``done`` turns true on the loop once the writer is done with it; then ``error`` is None if
    it committed, else the reason it did not (nothing of it was written).
    """

    __slots__ = ("active", "after", "name", "process", "snapshot", "terms", "transitions")

    def __init__(
        self,
        process: bytes,
        snapshot: bytes,
        transitions: tuple[bytes, ...],
        name: bytes | None,
        active: bool | None = None,
        after: PendingSave | None = None,
        terms: bytes | None = None,
    ) -> None:
        # (Write.__init__ inlined: one of these is made at every transition)
        self.task = None
        self.result = None
        self.error = None
        self.done = False
        self.shielded = False
        self.process = process
        self.snapshot = snapshot
        self.transitions = transitions
        self.name = name
        self.active = active
        self.after = after
        self.terms = terms  # (encoded: `corra.persistence._indexes.encode_terms`)

    def size(self) -> int:
        return len(self.snapshot) + sum(len(entry) for entry in self.transitions)

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> None:
        after = self.after
        if after is not None and after.error is not None:
            raise StoreError(
                f"an earlier save of {text(self.process)!r} failed, so this one is not made: "
                f"{after.error}"
            )
        if self.name is not None:
            owner = _claim(txn, databases, self.name, self.process)
            if owner != self.process:
                raise NameTaken(
                    f"name {text(self.name)!r} belongs to process {text(owner)!r} already"
                )
        txn.put(self.process, self.snapshot, db=databases.snapshots)
        if self.active is True:
            txn.put(self.process, b"", db=databases.active)
        elif self.active is False:
            txn.delete(self.process, db=databases.active)
        if self.terms is not None:
            set_terms(databases, self.process, self.terms)
        if self.transitions:
            process = self.process
            sequence = _next_history_sequence(txn, databases, process)
            prefix = history_prefix(process)
            history = databases.history
            for entry in self.transitions:
                txn.put(prefix + sequence.to_bytes(SEQUENCE_BYTES, "big"), entry, db=history)
                sequence += 1
            remembered = databases.next_history
            if len(remembered) >= _REMEMBERED_SEQUENCES:
                remembered.clear()
            remembered[process] = sequence


class ClaimName(Write):
    __slots__ = ("name", "process")

    def __init__(self, name: bytes, process: bytes) -> None:
        super().__init__()
        self.name = name
        self.process = process

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> str:
        return text(_claim(txn, databases, self.name, self.process))


class SetAside(Write):
    __slots__ = ("entry", "process")

    def __init__(self, process: bytes, raw: bytes, reason: str) -> None:
        super().__init__()
        self.process = process
        entry = {"raw": base64.b64encode(raw).decode(), "reason": reason, "time": time.time()}
        self.entry = json.dumps(entry, separators=(",", ":")).encode()

    def size(self) -> int:
        return len(self.entry)

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> None:
        txn.put(self.process, self.entry, db=databases.quarantine)
        txn.delete(self.process, db=databases.snapshots)
        txn.delete(self.process, db=databases.active)
        txn.delete(self.process, db=databases.notes)
        txn.delete(self.process, db=databases.statuses)
        remove_terms(databases, self.process)


class Delete(Write):
    __slots__ = ("names", "process")

    def __init__(self, process: bytes, names: tuple[bytes, ...] | None = None) -> None:
        super().__init__()
        self.process = process
        self.names = names

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> None:
        txn.delete(self.process, db=databases.snapshots)
        txn.delete(self.process, db=databases.active)
        txn.delete(self.process, db=databases.quarantine)
        txn.delete(self.process, db=databases.notes)
        txn.delete(self.process, db=databases.statuses)
        remove_terms(databases, self.process)
        databases.next_history.pop(self.process, None)  # its history starts again at 0
        prefix = history_prefix(self.process)
        cursor = txn.cursor(db=databases.history)
        if cursor.set_range(prefix):
            while cursor.key().startswith(prefix) and cursor.delete():
                pass
        if self.names is not None:  # (the names it may own, known: only those are read)
            owned = [n for n in self.names if txn.get(n, db=databases.names) == self.process]
        else:
            # Names are keyed by name: finding this process's ones reads them all (a reverse
            # index would cost every claim a second write).
            names = txn.cursor(db=databases.names)
            owned = [name for name, owner in names if owner == self.process]
        for name in owned:
            txn.delete(name, db=databases.names)


class PutNotes(Write):
    """Notes set (bytes) or removed (None), by process key: of no process's save, and never
    failing alone (a note of a process that is gone is kept, as any key: its reader shows
    no note without a record). ``database``: ``notes``, or ``statuses`` (kept alike)."""

    __slots__ = ("database", "notes")

    def __init__(
        self, notes: tuple[tuple[bytes, bytes | None], ...], database: str = "notes"
    ) -> None:
        super().__init__()
        self.notes = notes
        self.database = database

    def size(self) -> int:
        return sum(len(value or b"") for _, value in self.notes)

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> None:
        db = getattr(databases, self.database)
        for process, value in self.notes:
            if value is None:
                txn.delete(process, db=db)
            else:
                txn.put(process, value, db=db)


class PutEntries(Write):
    """Entries of the ``workflows`` database set (bytes) or removed (None), all in one
    transaction, in order: what the layer above processes makes durable at once."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[bytes, bytes | None], ...]) -> None:
        super().__init__()
        self.items = items

    def size(self) -> int:
        return sum(len(key) + len(value or b"") for key, value in self.items)

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> None:
        database = databases.workflows
        for key, value in self.items:
            if value is None:
                txn.delete(key, db=database)
            else:
                txn.put(key, value, db=database)


class RebuildActiveIndex(Write):
    __slots__ = ("is_active",)

    def __init__(self, is_active: Callable[[bytes], bool]) -> None:
        super().__init__()
        self.is_active = is_active

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> int:
        txn.drop(databases.active, delete=False)
        count = 0
        for key, snapshot in txn.cursor(db=databases.snapshots):
            if self.is_active(snapshot):
                txn.put(key, b"", db=databases.active)
                count += 1
        mark_active_index_complete(txn, databases)
        return count


class RebuildIndexes(Write):
    __slots__ = ("describe",)

    def __init__(self, describe: Callable[[bytes], tuple[bool, Sequence[IndexTerm]]]) -> None:
        super().__init__()
        self.describe = describe

    def apply(self, txn: lmdb.Transaction, databases: Databases) -> int:
        active = rebuild(txn, databases, self.describe)
        mark_active_index_complete(txn, databases, INDEXES_FORMAT)
        return active


def next_batch(backlog: collections.deque[Write]) -> list[Write]:
    """The writes of the next transaction, oldest first, within the limits."""
    batch = [backlog.popleft()]
    size = batch[0].size()
    while backlog and len(batch) < MAX_BATCH_WRITES:
        size += backlog[0].size()
        if size > MAX_BATCH_BYTES:
            break
        batch.append(backlog.popleft())
    return batch


def wake_all(writes: list[Write]) -> None:
    """On the loop: the writer is done with ``writes``."""
    for write in writes:
        write.wake()


def call_soon(token: trio.lowlevel.TrioToken, function: Callable[..., object], *args: Any) -> None:
    """``function(*args)`` on the loop of ``token``, from the writer thread."""
    with contextlib.suppress(trio.RunFinishedError):  # nobody is left to wake
        token.run_sync_soon(function, *args)


class Stop:
    """Queued by close: the writer commits what came before it, then stops."""
