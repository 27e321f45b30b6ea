"""What the service remembers of the transitions it saw: the recent ones, numbered (for
``GET /v1/events``) and how many of each event (for ``/metrics``; the processes per phase are
the store's counts)."""

from __future__ import annotations

import collections
import logging
from typing import Any

import trio

from corra.api._wire import event_json
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
