"""Admission: processes wait for a slot of their backend in submission order, as ids.

A process waiting for a slot (``created``) is, like a paused one, its snapshot and nothing
else: no record in memory, no actor, no task. What waits is its place in a queue: its id and
its attempt (the key of the slot it asks for), one FIFO per backend. One dispatcher task per
backend (started in the manager's nursery when its backend first has a process queued) asks
the backend for a slot for its head (`Backend.acquire_slot`), and hands it, slot held, to the
manager (``admit``), which reads its record then and starts its actor. So a slot goes out in
the order processes were queued, a freed slot wakes one task, and 100,000 queued processes
cost a dict entry each.

A retry waits for its backoff first, also without a task: a heap of due times, and one timer
task that queues each process at its time (at the back, as a submission then would).

After a restart, recovery hands over the ids of the processes that waited, in the order they
were submitted, without reading their records (`recovered`): they wait in an intake, ahead of
everything queued later, until a sorting task has read their records (a batch at a time, in a
thread: `Resolve`) and moved each to its backend's queue; meanwhile every backend counts as
busy, so that no submission takes a slot before them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from corra.processes._backend import Backend, EffectKey

logger = logging.getLogger("corra.process")

#: ``admit(key)``: the process of ``key`` has its slot: start it (True), or it waits for it no
#: more (False: the slot goes back).
Admit = Callable[[EffectKey], Awaitable[bool]]
#: Where a process waits: its backend, its attempt, and its retry's backoff (seconds; 0: none).
Place = tuple[str, int, float]
#: ``resolve(ids)``: where each of these processes waits, read from its record (None: it
#: waits no more, or its record cannot be read).
Resolve = Callable[[Sequence[str]], Awaitable[list[Place | None]]]
#: How many recovered processes the sorting task reads at once.
SORT_BATCH = 1000


class Admission:
    """The processes that wait for a slot (or for a retry's backoff), by backend, in order.

    Args:
        backends: the backends by name.
        admit: called by a dispatcher with the key of its head once the slot is held; the
            process has left the queue then (`waiting` counts it until ``admit`` returns).
        resolve: where recovered processes wait (`recovered`).
        nursery: where the dispatchers, the timer and the sorting run.
        idle: called whenever nothing waits any more.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        admit: Admit,
        resolve: Resolve,
        nursery: trio.Nursery,
        idle: Callable[[], None],
    ) -> None:
        self._backends = backends
        self._admit = admit
        self._resolve = resolve
        self._nursery = nursery
        self._idle = idle
        # Recovered processes not sorted yet (None), and those queued after them (their
        # place), in order: ahead of every queue while it holds any.
        self._intake: dict[str, Place | None] = {}
        # Per backend: process id -> attempt, in the order they queued (a dict keeps it).
        self._queues: dict[str, dict[str, int]] = {}
        # Per backend: set when its empty queue gets a process (its dispatcher sleeps on it).
        self._arrived: dict[str, trio.Event] = {}
        # Per backend: the head whose slot its dispatcher asks for, and the scope to cut
        # that short when the head leaves.
        self._asking: dict[str, tuple[str, trio.CancelScope]] = {}
        # Retries in their backoff: (due, process id, backend, attempt), and id -> due.
        self._later: list[tuple[float, str, str, int]] = []
        self._due: dict[str, float] = {}
        self._timer: trio.Event | None = None  # set to wake the timer (None: not started)
        self._admitting = 0  # taken from a queue, being started by ``admit``

    @property
    def waiting(self) -> int:
        """How many processes wait: for a slot, for a backoff, or being admitted."""
        queued = sum(map(len, self._queues.values()))
        return queued + len(self._intake) + len(self._due) + self._admitting

    def queued(self, backend: str) -> bool:
        """Whether any process waits for a slot of ``backend`` (then a new one queues too)."""
        return bool(self._intake) or bool(self._queues.get(backend))

    def __contains__(self, process_id: str) -> bool:
        return (
            process_id in self._intake
            or process_id in self._due
            or any(process_id in queue for queue in self._queues.values())
        )

    def enqueue(self, key: EffectKey, backend: str, *, delay: float = 0.0) -> None:
        """Queue the process of ``key`` for a slot of ``backend``, at the back; after
        ``delay`` seconds (a retry's backoff) if given. Never blocks; a process queued
        already keeps its place."""
        process_id = key.process_id
        if process_id in self:
            return
        if self._intake:  # (behind the recovered ones)
            self._intake[process_id] = (backend, key.attempt, delay)
            return
        self._place(process_id, (backend, key.attempt, delay))

    def recovered(self, process_ids: Sequence[str]) -> None:
        """Queue these processes, which waited for a slot when the last runtime stopped, in
        this order and ahead of any queued later; their records are read in the background
        (see the module's docstring)."""
        if not process_ids:
            return
        intake = self._intake
        if not intake:
            self._nursery.start_soon(self._sort, name="admission: recovered")
        later = list(intake.items())  # (none while recovery runs: it comes first)
        intake.clear()
        intake.update(dict.fromkeys(process_ids))
        intake.update(later)

    def _place(self, process_id: str, place: Place) -> None:
        backend, attempt, delay = place
        if delay > 0:
            due = trio.current_time() + delay
            self._due[process_id] = due
            heapq.heappush(self._later, (due, process_id, backend, attempt))
            if self._timer is None:
                self._timer = trio.Event()
                self._nursery.start_soon(self._wake_retries)
            elif self._later[0][0] == due:
                self._timer.set()  # (it sleeps until a later one)
            return
        queue = self._queues.get(backend)
        if queue is None:
            if backend not in self._backends:
                logger.warning(
                    "process %s: waits for a slot of backend %r, which this runtime lacks; "
                    "it waits for a runtime that has it",
                    process_id,
                    backend,
                )
                return
            queue = self._queues[backend] = {}
            self._arrived[backend] = trio.Event()
            self._nursery.start_soon(self._dispatch, backend, queue, name=f"admission {backend}")
        queue[process_id] = attempt
        if len(queue) == 1:
            self._arrived[backend].set()

    def leave(self, process_id: str, backend: str) -> None:
        """Take the process out of the queue (paused, killed); nothing if it is not in it."""
        if process_id in self._intake:
            del self._intake[process_id]
        elif self._due.pop(process_id, None) is None:
            queue = self._queues.get(backend)
            if queue is None or queue.pop(process_id, None) is None:
                return
            asking = self._asking.get(backend)
            if asking is not None and asking[0] == process_id:
                asking[1].cancel()  # (the slot it asked for goes to the next one)
        if not self.waiting:
            self._idle()

    async def _dispatch(self, name: str, queue: dict[str, int]) -> None:
        """Hand out ``name``'s slots to its queue's head, one at a time, until cancelled."""
        backend = self._backends[name]
        while True:
            if not queue:
                arrived = self._arrived[name] = trio.Event()
                await arrived.wait()
                continue
            process_id, attempt = next(iter(queue.items()))
            key = EffectKey(process_id, attempt)
            with trio.CancelScope() as scope:
                self._asking[name] = (process_id, scope)
                try:
                    await backend.acquire_slot(key)
                except Exception:  # (a backend's bug: the queue waits, and asks again)
                    logger.exception("backend %s: a slot for %s", name, process_id)
                    await trio.sleep(1.0)
                    continue
                finally:
                    del self._asking[name]
            if scope.cancelled_caught:
                continue  # it left while it waited: the backend took no slot for it
            if queue.get(process_id) != attempt:
                backend.release_slot(key)  # it left as its slot came
                continue
            del queue[process_id]
            self._admitting += 1
            try:
                if not await self._admit(key):
                    backend.release_slot(key)
            except Exception:
                # (a process the manager could not start stays created in the store: the
                # next runtime's recovery queues it again)
                logger.exception("process %s: its admission failed", process_id)
                backend.release_slot(key)
            finally:
                self._admitting -= 1
            if not self.waiting:
                self._idle()

    async def _sort(self) -> None:
        """Move the intake's processes to their queues, in order, reading the records of the
        recovered ones a batch at a time."""
        intake = self._intake
        while intake:
            batch = list(itertools.islice(intake.items(), SORT_BATCH))
            unknown = [process_id for process_id, place in batch if place is None]
            try:
                places = dict(zip(unknown, await self._resolve(unknown), strict=True))
            except Exception:  # (the store failing: they wait, and are read again)
                logger.exception("reading the records of %d queued processes", len(unknown))
                await trio.sleep(1.0)
                continue
            for process_id, place in batch:
                if process_id not in intake or intake[process_id] is not place:
                    continue  # it left meanwhile (and may be queued again, behind)
                del intake[process_id]
                place = place or places[process_id]
                if place is not None:
                    self._place(process_id, place)
        if not self.waiting:
            self._idle()

    async def _wake_retries(self) -> None:
        """Queue each retry whose backoff is over, at its time, until cancelled."""
        later, due = self._later, self._due
        while True:
            now = trio.current_time()
            while later and later[0][0] <= now:
                at, process_id, backend, attempt = heapq.heappop(later)
                if due.get(process_id) == at:  # (else it left meanwhile)
                    del due[process_id]
                    self.enqueue(EffectKey(process_id, attempt), backend)
            self._timer = trio.Event()
            with trio.move_on_at(later[0][0] if later else math.inf):
                await self._timer.wait()
