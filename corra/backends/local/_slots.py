"""The slot queue: how many local programs may run at once, granted first come first served.

It sits behind the manager's admission queue (`corra.processes._admission`), which decides
who asks next and asks for one process at a time (its dispatcher is the runtime's only
waiter here); this one counts what runs on this machine, including programs found running
at recovery (adopted, even above the limit), and keeps `Backend.acquire_slot`'s promise
(first come, first served) to any other caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import attrs
import trio


@attrs.frozen
class SlotStatistics:
    """The slot queue at one moment."""

    limit: int
    running: int
    """Keys holding a slot (adopted ones included, even above the limit)."""
    waiting: int


class Slots:
    """A FIFO bound on running programs, by key; a key holds at most one slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: set[Hashable] = set()
        self.waiting: OrderedDict[Hashable, tuple[trio.Event, list[int]]] = OrderedDict()

    async def acquire(self, key: Hashable) -> None:
        """Wait for a slot; at once if ``key`` holds one already. A checkpoint; cancelling it
        gives up the place in the queue."""
        if key in self.held:
            await trio.lowlevel.checkpoint()
            return
        if not self.waiting and len(self.held) < self.limit:
            self.held.add(key)
            await trio.lowlevel.checkpoint()
            return
        event, waiters = self.waiting.setdefault(key, (trio.Event(), [0]))
        waiters[0] += 1
        try:
            await event.wait()
        except BaseException:
            waiters[0] -= 1
            if waiters[0] == 0:
                if self.waiting.get(key, (None,))[0] is event:
                    del self.waiting[key]
                elif event.is_set():
                    self.release(key)  # granted as we were cancelled: nobody will use it
            raise

    def try_acquire(self, key: Hashable) -> bool:
        """Take a slot now if ``key`` holds one or one is free with nobody queued."""
        if key in self.held:
            return True
        if not self.waiting and len(self.held) < self.limit:
            self.held.add(key)
            return True
        return False

    def release(self, key: Hashable) -> None:
        """Give ``key``'s slot to the next in line (nothing if it holds none)."""
        self.held.discard(key)
        while self.waiting and len(self.held) < self.limit:
            next_key, (event, _) = self.waiting.popitem(last=False)
            self.held.add(next_key)
            event.set()

    def adopt(self, key: Hashable) -> None:
        """Count ``key`` as running without waiting, even above the limit."""
        entry = self.waiting.pop(key, None)
        self.held.add(key)
        if entry is not None:
            entry[0].set()

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(limit=self.limit, running=len(self.held), waiting=len(self.waiting))
