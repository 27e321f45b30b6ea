"""The state store: one LMDB environment, written by one thread with group commit.

Rule 1: the event loop never waits on the disk. Every write is queued for the writer thread,
which takes all the writes that are waiting, applies them in one write transaction, commits it
(one fsync for all of them), and then wakes their tasks through the trio token.

Rule 2: a write that fails on purpose (`NameTaken`) fails alone: it is checked before it
changes anything, and the rest of its batch commits. A write that LMDB or the OS refuses
fails its whole batch with `StoreError`; the writer thread carries on with the next batch.

Rule 3: a full map is not an error: the writer doubles the map and applies the same batch
again. A full disk is not one yet either: the writer keeps room allocated for the store
(`corra.persistence._reserve`), so that program output filling the disk does not stop it.

Rule 4: writes are applied in the order they were queued. A save may name an earlier one
(``after``) that it must not outlive: if that one failed, this one fails too, before it changes
anything, so a later snapshot never lands beside a hole in the history.

The layout, the keys and the reads are in `corra.persistence._lmdb`.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import lmdb
import trio

from corra._errors import ConfigError, StoreError
from corra.persistence import _indexes
from corra.persistence._indexes import IndexTerm, encode_terms
from corra.persistence._keyed_writes import KeyedWrites
from corra.persistence._lmdb import (
    Environment,
    Reads,
    key_of,
    lmdb_path,
    make_store_dir,
    open_for_reading,
    open_for_writing,
    opening,
    process_key,
    require_bytes,
    store_error,
    take_writer_lock,
)
from corra.persistence._reserve import DiskReserve
from corra.persistence._writes import (
    ClaimName,
    Delete,
    PendingSave,
    RebuildActiveIndex,
    RebuildIndexes,
    SetAside,
    Stop,
    Write,
    call_soon,
    wake_all,
)
from corra.persistence._writes import next_batch as _next_batch


@attrs.frozen
class StoreStatistics:
    """What the writer has done since the store was opened, and how full the map is."""

    commits: int
    """Write transactions committed."""
    records_written: int
    """Writes applied and committed (a write that failed is not counted)."""
    largest_batch: int
    """The most writes committed in one transaction."""
    mean_batch: float
    """Writes per committed transaction."""
    last_commit_latency: float
    """Seconds from the start of the last transaction to the end of its commit (fsync
    included)."""
    map_size: int
    """Bytes of the memory map, the most the data file can grow to before the map grows."""
    map_used: int
    """Bytes of the map in use."""
    map_growths: int
    """Times the writer grew the map since the store was opened."""


# The store -------------------------------------------------------------------------------


class Store(Reads, KeyedWrites):
    """The state store, opened by `open_store`; its writes go through one writer thread.

    Every write is async and a checkpoint. It is checked, then queued, and returns once its
    transaction has committed (and, for a durable store, reached the disk). Cancellation:
    a write cancelled before it is queued is not made; one cancelled while it waits for
    the disk is still made (it is queued, and closing the store drains the queue), the
    task just does not learn how it went. Writes queued together commit together: a
    thousand tasks saving at once cost a few fsyncs, not a thousand.

    Reads are sync and run in a read transaction of their own (see `Reads`).
    """

    def __init__(self, path: Path, *, durable: bool, map_size: int, readonly: bool) -> None:
        self.path = path
        self.durable = durable
        self.readonly = readonly
        self._initial_map_size = map_size
        self._queue: queue.SimpleQueue[Write | Stop] = queue.SimpleQueue()
        self._open: Environment | None = None
        self._accepting = False
        self._failure: BaseException | None = None
        self._commits = 0
        self._records_written = 0
        self._largest_batch = 0
        self._last_commit_latency = 0.0
        self._map_growths = 0
        self._writer_lock: int | None = None
        self._reserve: DiskReserve | None = None
        self._final_statistics: StoreStatistics | None = None

    def __repr__(self) -> str:
        return f"<Store {self.path}{' read-only' if self.readonly else ''}>"

    def _environment(self) -> Environment:
        if self._open is None:
            raise StoreError(f"the store at {self.path} is not open")
        return self._open

    # writes, on the loop

    async def save(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transition: bytes | None = None,
        transitions: Sequence[bytes] = (),
        name: str | None = None,
        active: bool | None = None,
        after: PendingSave | None = None,
        shielded: bool = False,
        indexes: Sequence[IndexTerm] | bytes | None = None,
    ) -> None:
        """In one transaction: make ``snapshot`` the latest snapshot of ``process_id``;
        append ``transition`` (or each of ``transitions``, in order) to its history; claim
        ``name`` for it; put ``process_id`` in the ``active`` index (``active=True``) or take
        it out (``active=False``; None leaves the index as it is); make ``indexes`` its terms
        in the secondary indexes (`corra.persistence._indexes`, encoded by `encode_terms`
        or not; None: keep the last ones, empty: none). Returns once all of it is
        durable; a checkpoint (see the class for cancellation; ``shielded``: once queued, it
        returns only when the write is done, as if in a shielded cancel scope, and a
        cancellation is delivered at the next checkpoint).

        ``after``: an earlier save (`save_nowait`) that this one must not outlive: if it
        failed, this one fails too, without writing anything.

        Raises:
            NameTaken: ``name`` belongs to another process; nothing of this save was written.
            StoreError: the transaction failed (nothing of it was written), or ``after``
                failed, or the store is closed or read-only.
            ConfigError: ``process_id`` or ``name`` cannot be a key (empty, a NUL, too long).
            TypeError: ``snapshot`` or a transition is not bytes, ``active`` not a bool.
        """
        write = self._save_write(
            process_id, snapshot, transition, transitions, name, active, after, indexes
        )
        write.shielded = shielded
        # `_submit`, inlined: a save is what every transition of every process waits for.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.readonly or not self._accepting:
            self._check_accepting()
        self._queue.put(write)
        write.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(write._abandon)
        if write.error is not None:
            raise write.error

    def save_nowait(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transition: bytes | None = None,
        transitions: Sequence[bytes] = (),
        name: str | None = None,
        active: bool | None = None,
        after: PendingSave | None = None,
        indexes: Sequence[IndexTerm] | bytes | None = None,
    ) -> PendingSave:
        """Queue the same save as `save` and return at once, without waiting for it: the
        writer commits it in order with the others. Watch ``done`` and ``error`` on what it
        returns, or name it as ``after`` of a later save, which then fails if it failed.

        Raises:
            StoreError: the store is closed or read-only (nothing was queued).
            ConfigError, TypeError: as `save`.
        """
        write = self._save_write(
            process_id, snapshot, transition, transitions, name, active, after, indexes
        )
        self._check_accepting()
        self._queue.put(write)
        return write

    def _save_write(
        self,
        process_id: str,
        snapshot: bytes,
        transition: bytes | None,
        transitions: Sequence[bytes],
        name: str | None,
        active: bool | None,
        after: PendingSave | None,
        indexes: Sequence[IndexTerm] | bytes | None = None,
    ) -> PendingSave:
        if active is not None and type(active) is not bool:
            raise TypeError(f"active must be a bool or None, not {type(active).__name__}")
        if after is not None:
            if type(after) is not PendingSave:
                raise TypeError(f"after must be a PendingSave or None, not {type(after).__name__}")
            if after.done and after.error is None:
                after = None  # committed already: nothing to wait for
        if transition is not None:
            if transitions:
                raise TypeError("pass transition or transitions, not both")
            entries: tuple[bytes, ...] = (require_bytes(transition, "transition"),)
        elif type(transitions) is list or type(transitions) is tuple:
            entries = tuple(transitions)
            for entry in entries:
                if type(entry) is not bytes:
                    require_bytes(entry, "transition")
        elif isinstance(transitions, (bytes, str)):
            raise TypeError("transitions must be a sequence of bytes, not a single value")
        else:
            entries = tuple(transitions)
            for entry in entries:
                require_bytes(entry, "transition")
        return PendingSave(
            process_key(process_id),
            snapshot if type(snapshot) is bytes else require_bytes(snapshot, "snapshot"),
            entries,
            None if name is None else key_of(name, "name"),
            active,
            after,
            indexes if indexes is None or type(indexes) is bytes else encode_terms(indexes),
        )

    async def claim_name(self, name: str, process_id: str) -> str:
        """The process the name belongs to: its owner if it has one already, else
        ``process_id``, now its owner. Makes submitting the same named job twice idempotent.
        Returns once the claim is durable; a checkpoint.

        Raises:
            StoreError: the transaction failed, or the store is closed or read-only.
        """
        result: str = await self._submit(ClaimName(key_of(name, "name"), process_key(process_id)))
        return result

    async def set_aside(self, process_id: str, raw: bytes, reason: str) -> None:
        """Move a record that cannot be decoded to quarantine: ``raw`` is kept there with
        the reason, and the snapshot of ``process_id`` is removed (its history and names
        stay, so that a named job is not run again under a new id). A checkpoint.

        Raises:
            StoreError: the transaction failed, or the store is closed or read-only.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a string, not {type(reason).__name__}")
        await self._submit(SetAside(process_key(process_id), require_bytes(raw, "raw"), reason))

    async def delete(self, process_id: str, *, names: Sequence[str] | None = None) -> None:
        """Remove every trace of ``process_id``: snapshot, history, names, quarantine entry,
        index entries (and counts). A checkpoint. ``names``: the names it may own, if the
        caller knows them (only those are looked at, and removed if it owns them); None:
        every name is read to find its own, which takes the writer a while in a store of
        many.

        Raises:
            StoreError: the transaction failed, or the store is closed or read-only.
        """
        keys = None if names is None else tuple(key_of(name, "name") for name in names)
        await self._submit(Delete(process_key(process_id), keys))

    async def rebuild_active_index(self, is_active: Callable[[bytes], bool]) -> int:
        """Rebuild the ``active`` index from every snapshot: an id is in it if and only if
        ``is_active(snapshot)``; then `has_active_index` is True. For a store written by a
        corra that kept no index; returns how many ids are in it. A checkpoint.

        One write transaction (no save slips between the scan and the index) that reads
        every snapshot: other writes wait. ``is_active`` runs in the writer thread and should
        not raise (say True for a snapshot that cannot be decoded, so that a scan of the
        active ones sets it aside): if it does, the transaction fails, with its batch.

        Raises:
            StoreError: the transaction failed (nothing of it was written), or the store is
                closed or read-only.
        """
        if not callable(is_active):
            raise TypeError(f"is_active must be callable, not {type(is_active).__name__}")
        result: int = await self._submit(RebuildActiveIndex(is_active))
        return result

    async def rebuild_indexes(
        self, describe: Callable[[bytes], tuple[bool, Sequence[IndexTerm]]]
    ) -> int:
        """Build the ``active`` index and the secondary indexes from every snapshot, as
        `rebuild_active_index` does (its notes hold): ``describe(snapshot)`` says whether it
        is active and gives its terms. Then `has_indexes` is True. Returns how many ids are
        active. A checkpoint; `StoreError` as `rebuild_active_index`."""
        if not callable(describe):
            raise TypeError(f"describe must be callable, not {type(describe).__name__}")
        result: int = await self._submit(RebuildIndexes(describe))
        return result

    def _check_accepting(self) -> None:
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")
        if not self._accepting:
            raise StoreError(f"the store at {self.path} is closed")

    async def _submit(self, write: Write) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_accepting()
        self._queue.put(write)
        await write.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def statistics(self) -> StoreStatistics:
        """A snapshot of the writer's counters and of the map (as it was at the close, once
        the store is closed)."""
        if self._final_statistics is not None:
            return self._final_statistics
        environment = self._environment()
        try:
            info = environment.env.info()
            page_size = environment.env.stat()["psize"]
        except lmdb.Error as exc:
            raise StoreError(f"the store at {self.path} is closed") from exc
        return StoreStatistics(
            commits=self._commits,
            records_written=self._records_written,
            largest_batch=self._largest_batch,
            mean_batch=self._records_written / self._commits if self._commits else 0.0,
            last_commit_latency=self._last_commit_latency,
            map_size=info["map_size"],
            map_used=(info["last_pgno"] + 1) * page_size,
            map_growths=self._map_growths,
        )

    # the writer thread

    def _serve(
        self, token: trio.lowlevel.TrioToken, opened: trio.Event, stopped: trio.Event
    ) -> None:
        """The writer thread: open, commit batches until told to stop, close."""
        try:
            try:
                if self.readonly:
                    self._open = opening(self.path, lambda: open_for_reading(self.path))
                else:
                    self._open = opening(self.path, self._open_for_writing)
            except BaseException as exc:
                self._failure = exc
            call_soon(token, opened.set)
            if self._open is None:
                return
            backlog: collections.deque[Write] = collections.deque()
            try:
                self._commit_until_stopped(token, backlog)
            except BaseException as exc:  # a bug here must not leave tasks waiting forever
                self._failure = exc
                self._accepting = False
                self._fail_all(token, backlog, exc)
            finally:
                self._close_environment()
        finally:
            call_soon(token, stopped.set)

    def _open_for_writing(self) -> Environment:
        make_store_dir(self.path)
        lock = take_writer_lock(self.path)
        try:
            environment = open_for_writing(
                self.path, durable=self.durable, map_size=self._initial_map_size
            )
        except BaseException:
            os.close(lock)
            raise
        self._writer_lock = lock
        self._reserve = DiskReserve(environment.env, self.path)
        return environment

    def _commit_until_stopped(
        self, token: trio.lowlevel.TrioToken, backlog: collections.deque[Write]
    ) -> None:
        stopping = False
        while True:
            if not backlog and not stopping:
                stopping = self._take(self._queue.get(), backlog)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                stopping = self._take(item, backlog) or stopping
            if not backlog:
                if stopping:
                    return
                continue
            batch = _next_batch(backlog)
            self._commit(batch)
            call_soon(token, wake_all, batch)

    @staticmethod
    def _take(item: Write | Stop, backlog: collections.deque[Write]) -> bool:
        if isinstance(item, Stop):
            return True
        backlog.append(item)
        return False

    def _commit(self, batch: list[Write]) -> None:
        environment = self._environment()
        databases = environment.databases
        started = time.perf_counter()
        try:
            while True:
                for write in batch:
                    write.result = write.error = None
                _indexes.begin(databases)  # (forget a transaction that failed)
                try:
                    with environment.env.begin(write=True) as txn:
                        for write in batch:
                            try:
                                write.result = write.apply(txn, databases)
                            except StoreError as exc:  # refused before it changed anything
                                write.error = exc
                        _indexes.flush(txn, databases)
                    _indexes.committed(databases)
                    break
                except lmdb.MapFullError:
                    self._grow(environment)
                except lmdb.MapResizedError:
                    environment.resize(0)
        except Exception as exc:
            message = f"writing to the store at {self.path} failed: {exc}"
            for write in batch:
                write.result = None
                write.error = store_error(message, exc)
            return
        finally:
            if self._reserve is not None:
                self._reserve.top_up()
        written = sum(1 for write in batch if write.error is None)
        self._last_commit_latency = time.perf_counter() - started
        self._commits += 1
        self._records_written += written
        self._largest_batch = max(self._largest_batch, written)

    def _grow(self, environment: Environment) -> None:
        environment.resize(environment.env.info()["map_size"] * 2)
        self._map_growths += 1

    def _fail_all(
        self,
        token: trio.lowlevel.TrioToken,
        backlog: collections.deque[Write],
        cause: BaseException,
    ) -> None:
        pending = list(backlog)
        backlog.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Write):
                pending.append(item)
        for write in pending:
            write.error = store_error(f"the store writer at {self.path} failed: {cause}", cause)
        call_soon(token, wake_all, pending)

    def _refuse_leftovers(self) -> None:
        """After the writer thread is gone: fail any write that slipped into the queue."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Write):
                item.error = StoreError(f"the store at {self.path} is closed")
                item.wake()

    def _close_environment(self) -> None:
        environment = self._open
        if environment is None:
            return
        try:
            if not self.durable and not self.readonly:
                environment.env.sync(True)  # a clean close is durable either way
            self._final_statistics = self.statistics()
        except (lmdb.Error, StoreError):
            pass  # everything is committed; only the flush or the figures failed
        finally:
            environment.close()
            if self._reserve is not None:
                self._reserve.close()
                self._reserve = None
            if self._writer_lock is not None:
                os.close(self._writer_lock)
                self._writer_lock = None


@asynccontextmanager
async def open_store(
    state_dir: str | os.PathLike[str],
    *,
    durable: bool = True,
    map_size: int = 64 << 20,
    readonly: bool = False,
) -> AsyncIterator[Store]:
    """Open the store in ``<state_dir>/state.lmdb`` (created if missing, unless
    ``readonly``), with its writer thread; leaving closes it.

    Args:
        durable: each commit is fsynced before its writers return. Without it a commit
            survives a crash of the process, not of the machine (a clean close flushes).
        map_size: bytes of the memory map to start with; it doubles whenever it is full.
        readonly: open an existing store only to read it; writes raise `StoreError`.

    Leaving the context commits every write queued before it, then stops the writer
    thread and closes LMDB; this is shielded from cancellation. No thread outlives it.

    Raises:
        StoreError: the store cannot be opened (missing when ``readonly``, written by a
            newer corra, open for writing by another process, or LMDB failed).
        ConfigError: its directory is another user's or writable by others, or its lock
            file is a symbolic link (`corra._statedir`).
    """
    if isinstance(map_size, bool) or not isinstance(map_size, int) or map_size <= 0:
        raise ConfigError(f"map_size: got {map_size!r}, expected a positive number of bytes")
    store = Store(lmdb_path(state_dir), durable=durable, map_size=map_size, readonly=readonly)
    opened, stopped = trio.Event(), trio.Event()
    thread = threading.Thread(
        target=store._serve,
        args=(trio.lowlevel.current_trio_token(), opened, stopped),
        name=f"corra-store {store.path}",
        daemon=True,
    )

    async def stop() -> None:
        # The thread's last act is to wake us, so join() does not block the loop.
        with trio.CancelScope(shield=True):
            store._accepting = False
            store._queue.put(Stop())
            await stopped.wait()
            thread.join()
            store._refuse_leftovers()

    thread.start()
    try:
        await opened.wait()
    except BaseException:
        await stop()  # cancelled while LMDB opens: stop the thread once it has opened
        raise
    if store._failure is not None:
        await stop()
        failure = store._failure
        if isinstance(failure, StoreError | ConfigError):  # (ConfigError: a refused dir)
            raise failure
        raise store_error(f"cannot open the store at {store.path}: {failure}", failure)
    store._accepting = True
    try:
        yield store
    finally:
        await stop()
