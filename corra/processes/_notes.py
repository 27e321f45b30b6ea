"""Notes: what a backend says, in words, of where a launched program is (a job pending for
resources, a pod the scheduler cannot place), shown by ``corra show`` and the API.

A note is not a transition. It is never in a process's history, never in its record, and
never written by a lifecycle's save: `StoredNotes` takes it from the backend without waiting
(`StoredNotes.set`: the latest note of a process wins) and a task of its own writes what
changed to the store's ``notes`` (`corra.persistence.Store.put_notes`), one transaction for
all the notes that came meanwhile. What it keeps, and how long:

Rule 1. A note belongs to one attempt: one for an attempt that is not the process's current
        one, or whose process is not launching or running, is dropped before it is written.
Rule 2. The note of an attempt that ended goes: when the process's actor ends with the
        process neither launching nor running (an exit, a kill, a pause, a retry), its note
        is removed; removing the process (``corra rm``, prune) removes it with the record.
        A runtime that stops keeps the notes of the programs that run on.
Rule 3. A reader shows a note only beside the record of its attempt, launching or running
        (`note_of`), so one that a crash left behind is never shown; the next runtime
        removes such notes as it starts (`StoredNotes.run`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from corra._errors import CorraError
from corra.processes._backend import EffectKey, note_text
from corra.processes._ports import RecordStore
from corra.processes._record import ProcessRecord

logger = logging.getLogger("corra.process")

#: The phases in which a process's current attempt may have a note.
NOTED_PHASES = frozenset({"launching", "running"})
#: Seconds between two writes of notes: a backend that changes its notes often costs the
#: store a transaction this often at most.
FLUSH_PAUSE = 0.1


@attrs.frozen
class Note:
    """The note of one attempt of a process, as stored and shown."""

    text: str
    attempt: int
    at: float
    """When it was set (epoch seconds)."""

    def json(self) -> dict[str, Any]:
        """As ``corra show --json`` and ``GET /v1/processes/{id}`` give it."""
        return {"text": self.text, "attempt": self.attempt, "at": self.at}

    def encode(self) -> bytes:
        return json.dumps(self.json(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Note | None:
        """The note stored as ``raw``; None for bytes that are not one (never an error: a
        note is not worth failing a read for)."""
        try:
            data = json.loads(raw)
            return cls(str(data["text"]), int(data["attempt"]), float(data["at"]))
        except (ValueError, KeyError, TypeError):
            return None


def current(record: ProcessRecord | None, attempt: int) -> bool:
    """Whether ``attempt`` is ``record``'s current attempt, launching or running."""
    return record is not None and record.state.attempt == attempt and record.phase in NOTED_PHASES


def note_of(store: Any, record: ProcessRecord) -> Note | None:
    """The note of ``record``'s current attempt, if it has one (Rule 3). Reads the store only
    for a record that is launching or running."""
    if record.phase not in NOTED_PHASES:
        return None
    raw = store.note(record.id)
    note = None if raw is None else Note.decode(raw)
    return note if note is not None and current(record, note.attempt) else None


#: What is waiting to be written for a process: (attempt, text, when); an attempt of None
#: clears whatever note it has.
_Pending = tuple[int | None, str | None, float]


class StoredNotes:
    """The runtime's `corra.processes._backend.Notes`: notes written to the store in the
    background, by `run` (see the module doc).

    Args:
        store: where notes are kept.
        clock: when a note was set (epoch seconds).
    """

    def __init__(self, store: RecordStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        # What the store holds, by process id: (attempt, text). Loaded by `run`.
        self._stored: dict[str, tuple[int, str]] = {}
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._records: Callable[[str], ProcessRecord] | None = None

    def set(self, key: EffectKey, text: str | None) -> None:
        """`corra.processes._backend.Notes.set`: never blocks."""
        self._pending[key.process_id] = (key.attempt, note_text(key, text), self._clock())
        self._wake.set()

    def ended(self, record: ProcessRecord) -> None:
        """The actor of ``record``'s process ended (Rule 2): its note goes unless its
        attempt is launching or running still (a runtime that stops). Never blocks."""
        if record.phase in NOTED_PHASES:
            return
        process_id = record.id
        if process_id in self._stored or process_id in self._pending:
            self._pending[process_id] = (None, None, 0.0)
            self._wake.set()

    async def run(
        self,
        records: Callable[[str], ProcessRecord],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write the notes until cancelled, then what is left (shielded). First remove the
        notes of attempts that are not current (Rule 3). ``records``: a process's newest
        record by id (`corra.processes._manager.ProcessManager.get`)."""
        self._records = records
        try:
            stored = await trio.to_thread.run_sync(self._store.notes)
            stale = {}
            for process_id, raw in stored:
                note = Note.decode(raw)
                if note is not None and current(self._record(process_id), note.attempt):
                    self._stored[process_id] = (note.attempt, note.text)
                else:
                    stale[process_id] = None
            if stale:
                await self._write(stale)
            task_status.started()
            while True:
                await self._wake.wait()
                await self.flush()
                await trio.sleep(FLUSH_PAUSE)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write what changed since the last flush. A checkpoint."""
        async with self._lock:
            self._wake = trio.Event()
            pending, self._pending = self._pending, {}
            writes: dict[str, bytes | None] = {}
            for process_id, (attempt, text, at) in pending.items():
                stored = self._stored.get(process_id)
                if text is None or attempt is None:
                    if stored is not None and (attempt is None or stored[0] <= attempt):
                        writes[process_id] = None
                        del self._stored[process_id]
                elif stored != (attempt, text) and current(self._record(process_id), attempt):
                    writes[process_id] = Note(text, attempt, at).encode()
                    # (before the write: an end meanwhile must see it, to remove it after)
                    self._stored[process_id] = (attempt, text)
            if writes:
                await self._write(writes)
            else:
                await trio.lowlevel.checkpoint()

    async def _write(self, writes: dict[str, bytes | None]) -> None:
        try:
            await self._store.put_notes(writes)
        except CorraError as exc:  # (a note is not worth more: the next one tries again)
            logger.warning("notes of %d process(es) not written: %s", len(writes), exc)

    def _record(self, process_id: str) -> ProcessRecord | None:
        if self._records is None:
            return None
        try:
            return self._records(process_id)
        except CorraError:  # (gone, or its record cannot be read)
            return None
