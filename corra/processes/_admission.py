"""Admission: processes wait for a slot of their backend in submission order.

The backend's own queue is FIFO too, but processes reach it from their own tasks in whatever
order trio schedules them. This queue is filled synchronously at submission, and only its
head waits for the backend, so that slots go out in submission order and a transition wakes
one task, not all.
"""

from __future__ import annotations

import trio

from corra.processes._backend import Backend
from corra.processes._record import ProcessRecord
from corra.processes._requests import effect_key


class Admission:
    """One FIFO per backend of the processes that wait for a slot; the head's event is set."""

    def __init__(self) -> None:
        self._queues: dict[str, dict[str, trio.Event]] = {}

    def waiting(self, backend: str) -> bool:
        """Whether any process waits for a slot of ``backend`` (then a new one queues too)."""
        return bool(self._queues.get(backend))

    def enqueue(self, record: ProcessRecord) -> None:
        """Take a place in the queue for a slot (in submission order: never blocks)."""
        queue = self._queues.setdefault(record.spec.backend, {})
        if record.id not in queue:
            queue[record.id] = trio.Event()
            if len(queue) == 1:
                queue[record.id].set()

    def leave(self, record: ProcessRecord) -> None:
        """Leave the queue (admitted, paused, killed); wake the next in line."""
        queue = self._queues.get(record.spec.backend)
        if queue is None or queue.pop(record.id, None) is None:
            return
        if queue:
            next(iter(queue.values())).set()

    async def admit(self, record: ProcessRecord, backend: Backend) -> None:
        """Wait for this process's turn, then for a slot of ``backend`` (its backend); the
        process stays in the queue until it `leave`s it."""
        self.enqueue(record)
        await self._queues[record.spec.backend][record.id].wait()
        await backend.acquire_slot(effect_key(record))
