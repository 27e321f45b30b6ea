"""What the service remembers of the transitions it saw: the recent ones, numbered (for
``GET /v1/events``), how many of each event (for ``/metrics``), and how many processes are in
each phase (a scan of the store at start, then kept up to date by the transitions)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import trio

from corra.api._wire import event_json
from corra.processes._lifecycle import PHASES, TERMINAL
from corra.processes._record import ProcessRecord, Transition

logger = logging.getLogger("corra.api")

#: How many transitions ``GET /v1/events`` can replay.
RETAINED_EVENTS = 10_000


class EventLog:
    """The last `RETAINED_EVENTS` transitions, numbered from 1 in the order they happened.

    Readers wait on `changed` (replaced at every append), so one log serves any number of
    followers without a queue each.
    """

    def __init__(self, retained: int = RETAINED_EVENTS) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=retained)
        self.last_seq = 0
        self.changed = trio.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        """Transitions by event since the service started."""

    def append(self, record: ProcessRecord, transition: Transition) -> None:
        self.last_seq += 1
        self._events.append(event_json(self.last_seq, record, transition))
        self.counts[transition.event] += 1
        self.changed.set()
        self.changed = trio.Event()

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The retained events numbered above ``seq``, oldest first."""
        if seq >= self.last_seq:
            return []
        missing = self.last_seq - seq
        if missing >= len(self._events):
            return list(self._events)
        return list(self._events)[-missing:]


class PhaseCounts:
    """Processes per phase: seeded by a scan of the store, then moved by the transitions.

    Transitions that arrive before the scan is in are kept and replayed on it, skipping
    those the scan already saw (by the record's time), so none is counted twice.
    Terminal processes are only counted; the others are kept by id. A terminal process
    moves again only when it is rerun or removed: its transition names the phase it left
    (``source``), whose count goes down.
    """

    def __init__(self) -> None:
        self.seeded = False
        self._pending: list[tuple[ProcessRecord, Transition | None]] = []
        self._live: dict[str, str] = {}
        self._terminal: collections.Counter[str] = collections.Counter()

    def apply(self, record: ProcessRecord, transition: Transition | None = None) -> None:
        """Count ``record``'s new phase (``transition``: the one that moved it there; a
        ``remove`` takes it out)."""
        if not self.seeded:
            self._pending.append((record, transition))
            return
        self._move(record, transition)

    def seed(self, records: Iterable[ProcessRecord]) -> None:
        seen: dict[str, float] = {}
        for record in records:
            seen[record.id] = record.state.updated_at
            self._move(record, None)
        for record, transition in self._pending:
            if transition is not None and transition.event == "remove":
                if record.id in seen:  # (else the scan came after it: never counted)
                    self._move(record, transition)
            elif seen.get(record.id, -1.0) < record.state.updated_at:
                self._move(record, transition)
        self._pending = []
        self.seeded = True

    def _move(self, record: ProcessRecord, transition: Transition | None) -> None:
        process_id, phase = record.id, record.phase
        event = None if transition is None else transition.event
        if event == "remove":
            if phase in TERMINAL:
                self._terminal[phase] -= 1
            else:
                self._live.pop(process_id, None)
            return
        if event == "rerun":  # (it leaves its terminal phase)
            self._terminal[transition.source] -= 1  # type: ignore[union-attr]
        if phase in TERMINAL:
            self._live.pop(process_id, None)
            self._terminal[phase] += 1
        else:
            self._live[process_id] = phase

    def counts(self) -> Iterator[tuple[str, int]]:
        """``(phase, processes)`` for every phase, zeros included."""
        live = collections.Counter(self._live.values())
        for phase in PHASES:
            yield phase, live[phase] + self._terminal[phase]
