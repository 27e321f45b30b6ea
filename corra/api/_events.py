"""What the service remembers of the transitions it saw: the recent ones, numbered (for
``GET /v1/events``) and how many of each event (for ``/metrics``; the processes per phase are
the store's counts). Also the programs' status updates (``"event": "status"``), coalesced:
at most one per process per `STATUS_EVENT_PAUSE`, and `STATUS_EVENT_RATE` per second in all,
so that they never crowd the transitions out of what is retained (`follow_statuses`)."""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from typing import Any

import trio

from corra._errors import CorraError
from corra._statedir import write_private
from corra.api._wire import event_json, status_event_json
from corra.processes._record import ProcessRecord, Transition
from corra.processes._statuses import ProgramStatus

logger = logging.getLogger("corra.api")

#: How many transitions ``GET /v1/events`` can replay.
RETAINED_EVENTS = 10_000
#: Event numbers a service reserves at a time in its state dir (`EventLog.reserve`).
RESERVED_NUMBERS = 100_000
#: Where, in the state dir: ``{"reserved": N, "given": G}``, G once the service stopped.
NUMBERS_FILE = "events.json"
#: Seconds between two status events of one process, at least: a program that writes its
#: status a thousand times a second costs subscribers one event per process this often.
STATUS_EVENT_PAUSE = 1.0
#: Status events per second, at most, whatever the number of processes (more processes: a
#: longer pause), so that they never take more than a fifth of `RETAINED_EVENTS` in 10 s.
STATUS_EVENT_RATE = RETAINED_EVENTS / 50


class EventLog:
    """The last `RETAINED_EVENTS` transitions, numbered in the order they happened.

    Numbers are never given twice in one state dir, across services: a service reserves a
    block of numbers (durably, in `NUMBERS_FILE`) before it gives any of them, and starts
    after the last block of the one before; stopping, it writes the last number it gave,
    so that the next one knows that the rest of that block was never given. A client that
    resumes with the last number it saw therefore either continues without a gap, or is
    told that events are missing (`gap`): never silently.

    Readers wait on `changed` (replaced at every append), so one log serves any number of
    followers without a queue each.
    """

    def __init__(self, retained: int = RETAINED_EVENTS, numbers: Path | None = None) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=retained)
        self._numbers = numbers
        self.last_seq = 0
        self.reserved = 0
        """The last number reserved; none above it is given before it is reserved."""
        self._first_own = 1  # the first number this service gives
        self._previous_given: int | None = 0  # the last the service before gave (None: unknown)
        self.changed = trio.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        """Transitions by event since the service started."""

    def open(self) -> None:
        """Continue after the numbers of the services before (blocking: a file's read and
        write; before any `append`). A file that cannot be read is started after by the
        clock's microseconds, so that no number can be given again."""
        if self._numbers is None:
            return
        try:
            previous = json.loads(self._numbers.read_bytes())
            reserved, given = int(previous["reserved"]), previous.get("given")
            given = None if given is None else int(given)
        except FileNotFoundError:
            reserved, given = 0, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: %s; event numbers start from the clock's", self._numbers, exc)
            reserved, given = int(time.time() * 1_000_000), None
        self.last_seq = self.reserved = reserved
        self._first_own, self._previous_given = reserved + 1, given
        self.reserve()

    def reserve(self) -> None:
        """Reserve the next block of numbers, durably (blocking: a file's write)."""
        if self._numbers is not None:
            write_private(self._numbers, _numbers_json(self.reserved + RESERVED_NUMBERS), sync=True)
        self.reserved += RESERVED_NUMBERS

    def close(self) -> None:
        """The service stops: write the last number given (blocking)."""
        if self._numbers is not None:
            given = self.last_seq
            write_private(self._numbers, _numbers_json(self.reserved, given), sync=True)

    @property
    def full(self) -> bool:
        """Every reserved number is given: `reserve` before the next `append`."""
        return self.last_seq >= self.reserved

    def append(self, record: ProcessRecord, transition: Transition) -> None:
        assert self.last_seq < self.reserved, "event numbers given before they were reserved"
        self.last_seq += 1
        self._events.append(event_json(self.last_seq, record, transition))
        self.counts[transition.event] += 1
        self.changed.set()
        self.changed = trio.Event()

    def append_status(self, record: ProcessRecord, status: ProgramStatus) -> None:
        """A status update of ``record``'s program, numbered as transitions are."""
        assert self.last_seq < self.reserved, "event numbers given before they were reserved"
        self.last_seq += 1
        self._events.append(status_event_json(self.last_seq, record, status))
        self.changed.set()
        self.changed = trio.Event()

    def gap(self, seq: int) -> dict[str, Any] | None:
        """What a client that saw the events up to ``seq`` has missed for good, as the
        stream's first line (``{"gap": true, ...}``), or None if nothing (or ``seq`` is 0:
        a client that saw none)."""
        first = self._events[0]["seq"] if self._events else self.last_seq + 1
        if seq == 0 or first - 1 <= seq <= self.last_seq:
            return None
        if seq > self.last_seq:
            return _gap(seq, first, "no event here had that number")
        given = self._previous_given
        if first == self._first_own and given is not None and seq >= given:
            return None  # (the service before gave none after it: the rest was never given)
        if first > self._first_own:
            reason = f"only the last {self._events.maxlen} events are kept"
        else:
            reason = "the service restarted (the events of the one before are not kept)"
        return _gap(seq, first, reason)

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The retained events numbered above ``seq``, oldest first."""
        if seq >= self.last_seq:
            return []
        missing = self.last_seq - seq
        if missing >= len(self._events):
            return list(self._events)
        return list(self._events)[-missing:]


def _numbers_json(reserved: int, given: int | None = None) -> bytes:
    return json.dumps({"reserved": reserved, "given": given}).encode() + b"\n"


def _gap(seq: int, first: int, reason: str) -> dict[str, Any]:
    return {
        "gap": True,
        "since": seq,
        "next_seq": first,
        "reason": f"events after {seq} are missing: {reason}; list the processes to catch up",
    }


async def follow_statuses(api: Any, *, task_status: trio.TaskStatus[None]) -> None:
    """Publish the statuses of ``api``'s runtime as events (`publish_status`), the latest of
    each process that changed, at most every `STATUS_EVENT_PAUSE`; runs until cancelled.
    Subscribed when it has started (``api.status_feed``: `Api.follow_transitions` takes a
    process's last status from it before its terminal event)."""
    statuses = api.manager.statuses
    if statuses is None:
        task_status.started()
        return
    with statuses.subscribe() as feed:
        api.status_feed = feed
        task_status.started()
        try:
            while True:
                changed = await feed.take()
                for process_id, status in changed.items():
                    try:
                        record = api.manager.get(process_id)
                    except CorraError:  # (removed meanwhile)
                        continue
                    await publish_status(api, record, status)
                await trio.sleep(max(STATUS_EVENT_PAUSE, len(changed) / STATUS_EVENT_RATE))
        finally:
            api.status_feed = None


async def publish_status(api: Any, record: ProcessRecord, status: ProgramStatus) -> None:
    """One status event of ``record``'s program (none for another attempt's status), and the
    JSON kept of a terminal process forgotten (it changed)."""
    api.drop_cached(record.id)
    if record.state.attempt == status.attempt:
        if api.events.full:
            await trio.to_thread.run_sync(api.events.reserve)
        api.events.append_status(record, status)
