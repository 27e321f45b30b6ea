"""A bounded FIFO mailbox with one receiver, lighter than a trio memory channel.

An idle actor is mostly its mailbox and its task, so the mailbox allocates nothing while it
is empty: the queue and the table of blocked senders are made on first use. Semantics follow
trio's memory channels: ``send`` waits while the mailbox is full and is a checkpoint;
``send_nowait`` raises `trio.WouldBlock`; once closed, sends raise
`trio.BrokenResourceError`, including those already waiting.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
import outcome
import trio


@attrs.frozen
class MailboxStatistics:
    depth: int
    capacity: float
    senders_waiting: int


class Mailbox:
    """Bounded FIFO for one receiving task (the actor) and any number of senders."""

    __slots__ = ("_capacity", "_closed", "_items", "_receiver", "_senders", "notify")

    def __init__(self, capacity: float) -> None:
        self._capacity = capacity
        self._items: collections.deque[Any] | None = None
        self._receiver: trio.lowlevel.Task | None = None
        # Senders blocked on a full mailbox, in arrival order: task -> message.
        self._senders: dict[trio.lowlevel.Task, Any] | None = None
        self._closed = False
        #: Called (synchronously, by the sender) when a message is queued while nobody waits
        #: in `receive`: how an owner that reads with `receive_nowait` learns of it.
        self.notify: Callable[[], object] | None = None

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def idle(self) -> bool:
        """True while the receiver waits in `receive`: the mailbox is empty and the
        receiver has nothing else to do."""
        return self._receiver is not None

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def send_nowait(self, msg: Any) -> None:
        if self._closed:
            raise trio.BrokenResourceError
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Value(msg))
            return
        items = self._items
        if items is None:
            items = self._items = collections.deque()
        if len(items) >= self._capacity:
            raise trio.WouldBlock
        items.append(msg)
        if self.notify is not None:
            self.notify()

    async def send(self, msg: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(msg)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        if self._senders is None:
            self._senders = {}
        senders = self._senders
        senders[task] = msg

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            del senders[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def receive_nowait(self) -> Any:
        items = self._items
        if not items:
            raise trio.WouldBlock
        msg = items.popleft()
        senders = self._senders
        if senders:
            # The oldest blocked sender's message takes the freed place.
            task, waiting = next(iter(senders.items()))
            del senders[task]
            items.append(waiting)
            trio.lowlevel.reschedule(task, outcome.Value(None))
        return msg

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._items:
            msg = self.receive_nowait()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return msg
        self._receiver = trio.lowlevel.current_task()
        # A bound method, not a closure: an idle actor waits here, so keep it small.
        return await trio.lowlevel.wait_task_rescheduled(self._abort_receive)

    def _abort_receive(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._receiver = None
        return trio.lowlevel.Abort.SUCCEEDED

    def close(self) -> list[Any]:
        """Refuse further sends, wake blocked senders with `trio.BrokenResourceError`, and
        return what was still queued."""
        self._closed = True
        left = list(self._items or ())
        self._items = None
        senders, self._senders = self._senders or {}, None
        for task in senders:
            trio.lowlevel.reschedule(task, outcome.Error(trio.BrokenResourceError()))
        return left

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self._items or ()),
            capacity=self._capacity,
            senders_waiting=len(self._senders or ()),
        )
