"""Where `corra.processes._query.ProcessQuery` reads: a `Source`.

- `LiveSource`: a live runtime's `ProcessManager` (the API). The records of active processes
  in memory may be ahead of the store; only a paused process's program may run unwatched
  (the actors of the others know better than any file).
- `StateDirSource`: a state dir read without a runtime (``corra ps``, ``show`` and ``logs``
  when no service runs; opened by `corra._readonly`). A record may say ``running`` of a
  program that ended long ago (no runtime collected its exit): what its chaperone recorded
  says more, and says when its output is complete. Output is read through the `Backend`
  protocol of the record's backend, opened read-only by the caller.

Nothing here names a backend: what a chaperone recorded is read through the reader the caller
passes (`corra.backends.recorded.recorded`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from corra.processes._backend import EffectKey
from corra.processes._journal import find_record
from corra.processes._lifecycle import ACTIVE
from corra.processes._listing import (
    Selection,
    decode_stepwise,
    phase_counts,
    read_records,
    read_undecoded,
)
from corra.processes._manager import ProcessManager
from corra.processes._ports import RecordCodec
from corra.processes._record import ProcessRecord, Transition
from corra.processes._statuses import ProgramStatus


class Recorded(Protocol):
    """What the chaperone of a process's current attempt recorded
    (`corra.backends.recorded.Recorded`)."""

    @property
    def state(self) -> str: ...

    def json(self) -> dict[str, Any]: ...


#: What the chaperone of a record's program recorded, read from the state dir (blocking);
#: None if the record has no program that nobody may watch.
RecordedReader = Callable[[ProcessRecord], "Recorded | None"]


class Source(Protocol):
    """Where a `ProcessQuery` reads: a live manager, or a state dir without a runtime."""

    @property
    def store(self) -> Any:
        """The store it reads (for what only the store keeps: notes)."""

    def get(self, id_or_name: str) -> ProcessRecord:
        """The record of the process with this id, else this name; `NoSuchProcess` if none."""

    async def page(
        self, selection: Selection, cursor: str | None, limit: int
    ) -> tuple[list[ProcessRecord], str | None, int]:
        """One page of records (`corra.processes._listing.read_records`): the records, the
        next cursor, how many of the page could not be read."""

    async def phase_counts(self) -> dict[str, int]:
        """Processes per phase (every phase), from the store's counts."""

    def current(self, record: ProcessRecord) -> ProcessRecord:
        """``record`` as the source knows it now (a scan may lag behind memory)."""

    def history(self, record: ProcessRecord) -> list[Transition]:
        """The record's transitions, oldest first."""

    def history_page(
        self, record: ProcessRecord, after: int | None, limit: int
    ) -> tuple[list[tuple[int, Transition]], bool]:
        """Up to ``limit`` of the record's transitions after the sequence number ``after``,
        with their numbers, and whether more follow (`corra.persistence.Store.history_page`:
        only those are read and decoded)."""

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        """Per record, what its chaperone recorded where that says more than the record."""

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        """Whether ``attempt``'s log grows no more."""

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        """Up to ``size`` bytes of ``attempt``'s ``stream`` from ``offset``."""

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        """How many bytes of ``attempt``'s ``stream`` there are now (None: cannot tell)."""

    def latest_status(self, process_id: str) -> ProgramStatus | None:
        """A status newer than the store's, if the source has one (a live runtime's)."""


class LiveSource:
    """A live runtime's manager as a `Source`."""

    def __init__(self, manager: ProcessManager, recorded: RecordedReader) -> None:
        self._manager = manager
        self._recorded = recorded

    @property
    def store(self) -> Any:
        return self._manager.store

    def latest_status(self, process_id: str) -> ProgramStatus | None:
        statuses = self._manager.statuses
        return None if statuses is None else statuses.latest(process_id)

    def get(self, id_or_name: str) -> ProcessRecord:
        return self._manager.get(id_or_name)

    async def page(
        self, selection: Selection, cursor: str | None, limit: int
    ) -> tuple[list[ProcessRecord], str | None, int]:
        # (corrupt records are left out, and set aside by the recovery). The index is walked
        # in a thread (a selective filter may walk many entries); the page is decoded here, a
        # few records per step: in a thread, decoding held the interpreter's lock against
        # the loop, and 8 clients listing at once stalled it.
        manager = self._manager
        items, following, corrupt = await trio.to_thread.run_sync(
            read_undecoded, manager.store, manager.codec, selection, cursor, limit
        )
        records, unreadable = await decode_stepwise(manager.codec, items)
        return records, following, corrupt + unreadable

    async def phase_counts(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return phase_counts(self._manager.store, self._manager.codec)

    def current(self, record: ProcessRecord) -> ProcessRecord:
        if record.phase in ACTIVE:
            return self._manager.get(record.id)  # (memory can be ahead of the disk)
        return record

    def history(self, record: ProcessRecord) -> list[Transition]:
        return self._manager.history(record)

    def history_page(
        self, record: ProcessRecord, after: int | None, limit: int
    ) -> tuple[list[tuple[int, Transition]], bool]:
        return _history_page(self._manager.store, self._manager.history_codec, record, after, limit)

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        # Only a paused process's program may run unwatched (it may have ended meanwhile:
        # resume collects it); the actors of the others know better.
        if not any(record.phase == "paused" for record in records):
            await trio.lowlevel.checkpoint()
            return [None] * len(records)
        return await trio.to_thread.run_sync(
            _read_recorded, self._recorded, [r if r.phase == "paused" else None for r in records]
        )

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        await trio.lowlevel.checkpoint()
        return record.state.attempt > attempt or record.state.terminal

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        return await self._manager.read_log(record, stream, offset, size, attempt=attempt)

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        return await self._manager.log_size(record, stream, attempt=attempt)


class StateDirSource:
    """A state dir read without a runtime, as a `Source` (see `corra._readonly`).

    Args:
        store: the store, opened read-only (`corra.persistence.open_store_readonly`).
        codec: the records' codec; ``history_codec``: the transitions'.
        recorded: what a chaperone recorded of a record's program.
        backend: the backend of a record, opened read-only (for its ``read_log`` and
            ``log_size``).
    """

    def __init__(
        self,
        store: Any,
        codec: RecordCodec,
        history_codec: RecordCodec,
        recorded: RecordedReader,
        backend: Callable[[ProcessRecord], Awaitable[Any]],
    ) -> None:
        self._store = store
        self._codec = codec
        self._history_codec = history_codec
        self._recorded = recorded
        self._backend = backend

    @property
    def store(self) -> Any:
        return self._store

    def latest_status(self, process_id: str) -> ProgramStatus | None:
        return None  # (no runtime: the store has the latest)

    def get(self, id_or_name: str) -> ProcessRecord:
        return find_record(self._store, self._codec, id_or_name)

    async def page(
        self, selection: Selection, cursor: str | None, limit: int
    ) -> tuple[list[ProcessRecord], str | None, int]:
        return await trio.to_thread.run_sync(
            read_records, self._store, self._codec, selection, cursor, limit
        )

    async def phase_counts(self) -> dict[str, int]:
        return await trio.to_thread.run_sync(phase_counts, self._store, self._codec)

    def current(self, record: ProcessRecord) -> ProcessRecord:
        return record

    def history(self, record: ProcessRecord) -> list[Transition]:
        return [self._history_codec.decode(raw) for raw in self._store.history(record.id)]

    def history_page(
        self, record: ProcessRecord, after: int | None, limit: int
    ) -> tuple[list[tuple[int, Transition]], bool]:
        return _history_page(self._store, self._history_codec, record, after, limit)

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        # No runtime watches any of them (or one that does is not asked): every program of a
        # current attempt may have ended unseen.
        return await trio.to_thread.run_sync(_read_recorded, self._recorded, list(records))

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        if record.state.attempt > attempt or record.phase not in ACTIVE:
            await trio.lowlevel.checkpoint()
            return True
        # Its record may say running long after its program ended: its chaperone knows.
        found = await trio.to_thread.run_sync(self._recorded, record)
        return found is not None and found.state in ("exited", "lost")

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        backend = await self._backend(record)
        key = EffectKey(record.id, attempt)
        data: bytes = await backend.read_log(key, stream, offset, size, record.spec.host)
        return data

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        backend = await self._backend(record)
        size: int | None = await backend.log_size(
            EffectKey(record.id, attempt), stream, record.spec.host
        )
        return size


def _read_recorded(
    reader: RecordedReader, records: Sequence[ProcessRecord | None]
) -> list[dict[str, Any] | None]:
    """Per record (None: not asked), what its chaperone recorded, as JSON."""
    out: list[dict[str, Any] | None] = []
    for record in records:
        found = None if record is None else reader(record)
        out.append(None if found is None else found.json())
    return out


def _history_page(
    store: Any, codec: RecordCodec, record: ProcessRecord, after: int | None, limit: int
) -> tuple[list[tuple[int, Transition]], bool]:
    entries, more = store.history_page(record.id, after=after, limit=limit)
    return [(number, codec.decode(raw)) for number, raw in entries], more
