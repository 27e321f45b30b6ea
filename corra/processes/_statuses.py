"""Statuses: what a program says of how far it is (``{"progress": 0.4, "message": "step 4 of
10"}``, appended as JSON lines to ``$CORRA_STATUS``), shown by ``corra ps``, ``corra show``,
``corra run`` and the API, and published on ``GET /v1/events``.

Backends follow their programs' status files, each the cheapest way it has (a local run dir
is read by the runtime; a host's in its poll; `corra.chaperone._status` reads them all), and
hand what they read to `BackendContext.statuses` (`corra.processes._backend.Statuses`).
Like a note (`corra.processes._notes`), a status is not a transition: never in a history,
never written by a lifecycle's save, and setting one never waits. Rules:

Rule 1. Coalesced: a process has one status, its current attempt's latest; setting another
        replaces it (a status of an older attempt than the one held is dropped). The store
        is written in the background (`StoredStatuses.run`): one transaction for all the
        statuses that changed meanwhile, at most every `FLUSH_PAUSE` seconds, so a chatty
        program costs the store one write per pause, whatever it writes.
Rule 2. A status whose latest line was refused keeps the value of the line before, and
        ``error`` says why (`corra.chaperone._status`); a good line later clears it.
Rule 3. An ended attempt keeps its last status (``corra show`` says "last status"), shown
        only beside the record of that attempt (`statuses_of`): a rerun or a retry starts
        with none. Removing the process removes it.
Rule 4. Subscribers (``/v1/events``) get the statuses that changed, coalesced per process
        (`StatusFeed`): a reader that takes them once a second gets at most one per process
        per second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import trio

from corra._errors import CorraError
from corra.processes._backend import EffectKey, check_status
from corra.processes._ports import RecordStore
from corra.processes._record import ProcessRecord

logger = logging.getLogger("corra.process")

#: Seconds between two writes of statuses (Rule 1).
FLUSH_PAUSE = 0.25


@attrs.frozen
class ProgramStatus:
    """The latest status of one attempt of a process, as stored and shown."""

    value: Mapping[str, Any] | None
    """The newest line that was not refused (a JSON object), or None."""
    error: str | None
    """Why the newest line after ``value`` was refused, or None (Rule 2)."""
    attempt: int
    at: float
    """When it was seen (epoch seconds)."""

    @property
    def progress(self) -> float | None:
        """The value's ``progress`` (0 to 1), if it has one."""
        progress = None if self.value is None else self.value.get("progress")
        return float(progress) if isinstance(progress, int | float) else None

    @property
    def message(self) -> str | None:
        message = None if self.value is None else self.value.get("message")
        return message if isinstance(message, str) else None

    def summary(self) -> str:
        """In a few words (`summary`)."""
        return summary(self.value, self.error)

    def json(self) -> dict[str, Any]:
        """As ``corra show --json``, ``GET /v1/processes`` and ``/v1/events`` give it."""
        return {
            "value": None if self.value is None else dict(self.value),
            "error": self.error,
            "attempt": self.attempt,
            "at": self.at,
        }

    def encode(self) -> bytes:
        return json.dumps(self.json(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> ProgramStatus | None:
        """The status stored as ``raw``; None for bytes that are not one (never an error: a
        status is not worth failing a read for)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            value, error = data["value"], data["error"]
            if value is not None and not isinstance(value, dict):
                return None
            return cls(value, None if error is None else str(error), int(data["attempt"]),
                       float(data["at"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None


def summary(value: Mapping[str, Any] | None, error: str | None, width: int | None = None) -> str:
    """A status in a few words: ``40% step 4 of 10`` (its value's JSON if it has neither
    progress nor message; why a line was refused if there is no value), cut to ``width``
    characters."""
    words = []
    progress = None if value is None else value.get("progress")
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        words.append(f"{math.floor(progress * 100)}%")
    message = None if value is None else value.get("message")
    if isinstance(message, str) and message.strip():
        words.append(" ".join(message.split()))
    if not words and value:
        words.append(json.dumps(dict(value), separators=(",", ":")))
    if not words and error:
        words.append(f"(refused: {error})")
    text = " ".join(words)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text


def statuses_of(
    store: Any,
    records: list[ProcessRecord],
    latest: Callable[[str], ProgramStatus | None] | None = None,
) -> list[ProgramStatus | None]:
    """The status of each record's current attempt (Rule 3), or None: from ``latest`` (a live
    runtime's memory, ahead of the store), else from the store, in one read transaction."""
    found: list[ProgramStatus | None] = [
        None if latest is None else latest(record.id) for record in records
    ]
    missing = [index for index, status in enumerate(found) if status is None]
    if missing:
        try:
            raws = store.statuses_of([records[index].id for index in missing])
        except CorraError:  # (a status is not worth failing a read for)
            raws = [None] * len(missing)
        for index, raw in zip(missing, raws, strict=True):
            found[index] = ProgramStatus.decode(raw)
    return [
        status if status is not None and status.attempt == record.state.attempt else None
        for record, status in zip(records, found, strict=True)
    ]


def merged(
    previous: ProgramStatus | None, key: EffectKey, value: Any, error: Any, at: float
) -> ProgramStatus | None:
    """What ``set(key, value, error)`` makes of ``previous``: the new status, or None if
    nothing changes (an older attempt, nothing said, the same as before). Rules 1 and 2."""
    check_status(key, value, error)
    if previous is not None and previous.attempt > key.attempt:
        return None
    if value is None:
        if error is None:
            return None
        if previous is not None and previous.attempt == key.attempt:
            value = previous.value
    if (
        previous is not None
        and previous.attempt == key.attempt
        and previous.value == value
        and previous.error == error
    ):
        return None
    return ProgramStatus(value, error, key.attempt, at)


class StatusFeed:
    """The statuses that changed since a subscriber last took them, the latest per process
    (Rule 4): `StoredStatuses.subscribe`."""

    def __init__(self) -> None:
        self._changed: dict[str, ProgramStatus] = {}
        self._event = trio.Event()

    def put(self, process_id: str, status: ProgramStatus) -> None:
        self._changed[process_id] = status
        self._event.set()

    def pop(self, process_id: str) -> ProgramStatus | None:
        """Take the change of one process now, if there is one (its end comes: its last
        status goes first)."""
        return self._changed.pop(process_id, None)

    async def take(self) -> dict[str, ProgramStatus]:
        """Wait until a status changed; every change since the last take, by process id.
        A checkpoint."""
        await self._event.wait()
        self._event = trio.Event()
        changed, self._changed = self._changed, {}
        return changed


class StoredStatuses:
    """The runtime's `corra.processes._backend.Statuses`: statuses written to the store in
    the background, by `run` (see the module doc).

    Args:
        store: where statuses are kept.
        clock: when a status was seen (epoch seconds).
    """

    def __init__(self, store: RecordStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        # The latest status of the processes whose programs run, by id (a cache: the store
        # has them too); an ended one's goes at the next flush.
        self._latest: dict[str, ProgramStatus] = {}
        self._pending: dict[str, ProgramStatus] = {}
        self._feeds: set[StatusFeed] = set()
        self._wake = trio.Event()
        self._records: Callable[[str], ProcessRecord] | None = None
        self.writes = 0
        """Store transactions written (for tests and metrics)."""

    def set(
        self, key: EffectKey, value: Mapping[str, Any] | None, error: str | None = None
    ) -> None:
        """`corra.processes._backend.Statuses.set`: never blocks (a status not in memory is
        read from the store: one LMDB read, a few microseconds)."""
        process_id = key.process_id
        previous = self._latest.get(process_id)
        if previous is None:
            with contextlib.suppress(CorraError):
                previous = ProgramStatus.decode(self._store.status(process_id))
        status = merged(previous, key, value, error, self._clock())
        if status is None:
            return
        self._latest[process_id] = self._pending[process_id] = status
        for feed in self._feeds:
            feed.put(process_id, status)
        self._wake.set()

    def latest(self, process_id: str) -> ProgramStatus | None:
        """The latest status of a process whose program runs (or ended a moment ago, its
        last status not written yet), from memory; None if none is here: the store has it
        (`statuses_of`)."""
        return self._latest.get(process_id)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[StatusFeed]:
        """A `StatusFeed` of the statuses set while the block runs."""
        feed = StatusFeed()
        self._feeds.add(feed)
        try:
            yield feed
        finally:
            self._feeds.discard(feed)

    async def run(
        self,
        records: Callable[[str], ProcessRecord],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write the statuses until cancelled, then what is left (shielded). ``records``: a
        process's newest record by id (`corra.processes._manager.ProcessManager.get`)."""
        self._records = records
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                await self.flush()
                await trio.sleep(FLUSH_PAUSE)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write what changed since the last flush (of processes that still have that
        attempt). A checkpoint."""
        self._wake = trio.Event()
        pending, self._pending = self._pending, {}
        writes: dict[str, bytes | None] = {}
        ended = []
        for process_id, status in pending.items():
            record = self._record(process_id)
            if record is None or record.state.attempt != status.attempt:
                self._latest.pop(process_id, None)
                continue
            writes[process_id] = status.encode()
            if record.state.terminal:  # (its last: kept in the store, not here)
                ended.append(process_id)
        if not writes:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._store.put_statuses(writes)
            self.writes += 1
        except CorraError as exc:  # (a status is not worth more: the next one comes)
            logger.warning("statuses of %d process(es) not written: %s", len(writes), exc)
        # (after the write: until it is in the store, readers find it here)
        for process_id in ended:
            if process_id not in self._pending:
                self._latest.pop(process_id, None)

    def _record(self, process_id: str) -> ProcessRecord | None:
        if self._records is None:
            return None
        try:
            return self._records(process_id)
        except CorraError:  # (gone, or its record cannot be read)
            return None
