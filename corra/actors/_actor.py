"""Actors, their mailboxes and refs.

An actor handles one message at a time, in the order they arrived, from a bounded FIFO
mailbox. An actor that drives itself (a step machine, a poller) defines `Actor.main` instead:
its cell runs that, and it takes its messages when it chooses (`Actor.handle_waiting`).

Each incarnation of an actor (every start or restart) is a *cell*; a `Ref` points at
one cell, like an Erlang pid: once that incarnation stops, the ref raises `ActorStopped`
instead of waiting. Look up the current incarnation by path (`Runtime.lookup`) or through the
supervisor (`SupervisorRef.which_children`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeAlias

import attrs
import outcome
import trio

from corra._errors import ActorStopped, CallFailed, ConfigError, MailboxFull
from corra.actors._mailbox import Mailbox


class _Child(Protocol):
    """What a cell reads of its supervisor's record of it (`corra.actors._supervisor`)."""

    @property
    def restarts(self) -> int: ...


Status: TypeAlias = Literal["starting", "running", "stopping", "stopped"]


class Actor:
    """Subclass this and define `handle`.

    The runtime builds a new instance for every start and restart, so state kept on ``self``
    lives exactly as long as one incarnation. Resources that must live as long as the actor
    (a connection, a nursery of helper tasks, a temp dir) belong in `lifespan`: they are
    acquired before the first message and released when the actor stops or restarts.
    """

    _cell: _ActorCell

    async def handle(self, msg: Any) -> Any:
        """Handle one message; the return value answers a `Ref.call`.

        An exception crashes the actor (its supervisor decides what happens next) and is
        reported to a waiting `call` as `CallFailed`.
        """
        raise NotImplementedError(f"{type(self).__name__}.handle is not defined")

    def lifespan(self) -> AbstractAsyncContextManager[object]:
        """An async context around the message loop; override to own resources.

        Entered before the actor counts as running (so a failure here is a start failure),
        left when it stops for any reason. A nursery opened here may run helper tasks; if one
        of them raises, the actor crashes.
        """
        return contextlib.nullcontext()

    async def main(self) -> None:
        """Optional: the actor's own loop, for an actor that drives itself.

        When a subclass defines it, the cell runs ``main`` (inside `lifespan`, once the actor
        counts as running) instead of the message loop, in the same single task. Returning
        is a normal exit, as `stop` is; raising crashes the actor. Messages wait in the
        mailbox until ``main`` takes them with `handle_waiting`, which handles them with
        `handle` exactly as the message loop would; `interrupt` tells it that one arrived
        (or that a stop was requested: ``main`` should return soon after `stopping` turns
        true; a supervisor's shutdown grace bounds how soon).
        """
        raise NotImplementedError  # never called: the cell runs the message loop instead

    def interrupt(self) -> None:
        """For an actor with `main`: called synchronously, by the sender, when a message
        arrives in the mailbox, and when a stop is requested; e.g. to cancel a wait so that
        ``main`` gets to it. Must not block; the default does nothing."""

    async def handle_waiting(self) -> int:
        """For an actor with `main`: handle the messages waiting in the mailbox now, one at
        a time in order, with `handle` (answering calls; a raising handler crashes the
        actor, as in the message loop). Returns how many; nothing waits, nothing yields
        when the mailbox is empty."""
        return await self._cell.handle_waiting(self)

    @property
    def has_mail(self) -> bool:
        """True while messages wait in the mailbox: for an actor with `main`, whether
        `handle_waiting` has anything to do (asking is cheaper than calling it)."""
        return bool(len(self._cell.mailbox))

    @property
    def stopping(self) -> bool:
        """True once this incarnation was asked to stop (`stop`, or its supervisor)."""
        return self._cell.stop_requested

    @property
    def terminating(self) -> bool:
        """True once its supervisor terminates this incarnation (a shutdown grace running,
        or a brutal kill: then its scope is cancelled)."""
        return self._cell.terminating

    @property
    def cancel_scope(self) -> trio.CancelScope:
        """For an actor with `main`: the cancel scope it runs in, which a brutal kill
        cancels; an actor may cancel it itself to cut a wait short (see `continue_in`)."""
        return self._cell.scope

    def continue_in(self, scope: trio.CancelScope) -> None:
        """For an actor with `main` whose `cancel_scope` was cancelled (by the actor itself: not
        `terminating`): ``scope``, a shielded scope the actor has entered within it, is its
        scope from now on (termination cancels it, with the same deadline).

        This is how an actor cuts its waits short without a scope of its own per wait
        (`corra.processes._actor`): a wait runs in `cancel_scope`; `interrupt` cancels it; the
        actor leaves the wait and goes on in a fresh shielded scope, handed over here.
        """
        self._cell.replace_scope(scope)

    @property
    def ref(self) -> Ref:
        """The ref of this incarnation."""
        return self._cell.ref

    def stop(self) -> None:
        """Stop this actor after the current message: a normal exit (not a crash).

        Messages still in the mailbox are dropped; waiting calls get `ActorStopped`.
        """
        self._cell.request_stop()


class _Call:
    """A request in a mailbox whose answer a caller awaits."""

    __slots__ = ("_result", "_task", "msg")

    def __init__(self, msg: Any) -> None:
        self.msg = msg
        self._task: trio.lowlevel.Task | None = None
        self._result: outcome.Outcome[Any] | None = None

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        """Answer the call once; later answers are ignored."""
        if self._result is not None:
            return
        self._result = result
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task, result)

    async def wait(self) -> Any:
        if self._result is not None:
            await trio.lowlevel.checkpoint()
            return self._result.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


@attrs.frozen
class ActorStatistics:
    """A snapshot of one actor incarnation (see `Ref.statistics`)."""

    path: str
    status: Status
    mailbox_depth: int
    mailbox_capacity: int
    senders_waiting: int
    messages_handled: int
    restarts: int


_WAKE = object()  # put in an idle actor's mailbox to make it notice a stop request


class _Cell:
    """What actors and supervisors share: a path, a status, and the scope that stops them.

    Cells use ``__slots__`` and create their done-event only when somebody waits for it:
    an idle actor should cost little memory.
    """

    __slots__ = ("_done", "child", "path", "scope", "started", "status", "terminating")

    def __init__(self, path: str, child: _Child | None) -> None:
        self.path = path
        self.child = child
        self.status: Status = "starting"
        self.started = False
        self.terminating = False
        self.scope = trio.CancelScope()
        self._done: trio.Event | None = None

    async def serve(self, task_status: trio.TaskStatus[None]) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask for a graceful stop; never blocks."""
        raise NotImplementedError

    def terminate(self, grace: float | Literal["brutal_kill"]) -> None:
        """Stop by the parent's order: gracefully, then cancelled once ``grace`` has passed."""
        self.terminating = True
        if grace == "brutal_kill":
            self.scope.cancel()
            return
        self.request_stop()
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + grace)

    def replace_scope(self, scope: trio.CancelScope) -> None:
        """`Actor.continue_in`: termination cancels ``scope`` from now on."""
        old, self.scope = self.scope, scope
        scope.deadline = min(scope.deadline, old.deadline)
        if self.terminating and old.cancel_called:
            scope.cancel()

    def mark_stopped(self) -> None:
        self.status = "stopped"
        if self._done is not None:
            self._done.set()

    async def wait_stopped(self) -> None:
        """Wait until this incarnation has stopped. A checkpoint."""
        if self.status == "stopped":
            await trio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    @property
    def restarts(self) -> int:
        return self.child.restarts if self.child is not None else 0


class _ActorCell(_Cell):
    """One incarnation of an actor: mailbox, message loop, counters."""

    __slots__ = (
        "busy",
        "current_call",
        "driven",
        "factory",
        "mailbox",
        "messages_handled",
        "stop_requested",
    )

    def __init__(
        self,
        path: str,
        factory: Callable[[], Actor],
        capacity: int,
        child: _Child | None = None,
    ) -> None:
        super().__init__(path, child)
        self.factory = factory
        self.mailbox = Mailbox(capacity)
        self.messages_handled = 0
        self.stop_requested = False
        self.busy = False
        self.current_call: _Call | None = None
        # The actor, once built, if it has a `main` (it drives itself); else None.
        self.driven: Actor | None = None

    @property
    def ref(self) -> Ref:
        """A ref on this incarnation (refs are equal by cell: made when asked, so that the
        cell and its ref are no reference cycle)."""
        return Ref(self)

    def request_stop(self) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.status != "stopped":
            self.status = "stopping"
        if self.driven is not None:
            self.driven.interrupt()
        elif not self.busy:
            # Idle: its mailbox is empty and it waits in receive, so this cannot block.
            # (Still starting: the loop checks the flag before its first receive.)
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                self.mailbox.send_nowait(_WAKE)

    async def serve(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            actor = self.factory()
            if not isinstance(actor, Actor):
                raise ConfigError(
                    f"{self.path}: start returned {actor!r}, expected an instance of corra.Actor"
                )
            actor._cell = self
            driven = type(actor).main is not Actor.main
            if driven:
                self.driven = actor
                self.mailbox.notify = actor.interrupt
            async with actor.lifespan():
                if not self.stop_requested:
                    self.status = "running"
                self.started = True
                task_status.started()
                if driven:
                    if not self.stop_requested:
                        await actor.main()
                    return
                # The message loop, inline: one frame less per idle actor.
                receive = self.mailbox.receive
                handle = actor.handle
                while not self.stop_requested:
                    item = await receive()
                    if item is _WAKE:
                        continue
                    self.busy = True
                    if type(item) is _Call:
                        self.current_call = item
                        try:
                            result = await handle(item.msg)
                        except Exception as exc:
                            failure = CallFailed(self.path, f"handler raised {exc!r}")
                            failure.__cause__ = exc
                            item.resolve(outcome.Error(failure))
                            raise
                        item.resolve(outcome.Value(result))
                        self.current_call = None
                    else:
                        await handle(item)
                    self.messages_handled += 1
                    self.busy = False
        finally:
            self._close()

    async def handle_waiting(self, actor: Actor) -> int:
        """`Actor.handle_waiting`: the message loop's body, for what is in the mailbox now."""
        mailbox = self.mailbox
        handled = 0
        while len(mailbox) and not self.stop_requested:
            item = mailbox.receive_nowait()
            if item is _WAKE:
                continue
            self.busy = True
            if type(item) is _Call:
                self.current_call = item
                try:
                    result = await actor.handle(item.msg)
                except Exception as exc:
                    failure = CallFailed(self.path, f"handler raised {exc!r}")
                    failure.__cause__ = exc
                    item.resolve(outcome.Error(failure))
                    raise
                item.resolve(outcome.Value(result))
                self.current_call = None
            else:
                await actor.handle(item)
            self.messages_handled += 1
            self.busy = False
            handled += 1
        return handled

    def _close(self) -> None:
        """Stopped: fail whatever still waits on this incarnation, refuse what comes next,
        and let go of the actor (which refers to its cell): an ended incarnation is freed by
        reference counting, not left to the cyclic garbage collector."""
        self.stop_requested = True
        self.mark_stopped()
        self.driven = None
        self.mailbox.notify = None
        stopped = outcome.Error(ActorStopped(self.path, "stopped before answering the call"))
        if self.current_call is not None:
            self.current_call.resolve(stopped)
            self.current_call = None
        # Senders blocked on a full mailbox wake with BrokenResourceError -> ActorStopped.
        for item in self.mailbox.close():
            if type(item) is _Call:
                item.resolve(stopped)


class _CellRef:
    """What every ref shares: it names one incarnation (a cell), by identity."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Any) -> None:
        self._cell = cell

    @property
    def path(self) -> str:
        """The path in the supervision tree, e.g. ``/workers/counter`` (``/``: the root)."""
        path: str = self._cell.path
        return path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._cell.path} {self._cell.status}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._cell is self._cell  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return id(self._cell)

    @property
    def alive(self) -> bool:
        """True until this incarnation has stopped."""
        return self._cell.status != "stopped"


class Ref(_CellRef):
    """A cheap, hashable handle on one actor incarnation; names its path in the tree."""

    __slots__ = ()
    _cell: _ActorCell

    async def send(self, msg: Any) -> None:
        """Put ``msg`` in the mailbox, waiting while it is full (backpressure).

        A checkpoint. Cancelled while waiting, nothing was sent.

        Raises:
            ActorStopped: the incarnation has stopped (also if it stops while we wait).
        """
        cell = self._cell
        if cell.stop_requested:
            await trio.lowlevel.checkpoint()
            raise ActorStopped(cell.path, "not running")
        try:
            await cell.mailbox.send(msg)
        except trio.BrokenResourceError as exc:
            raise ActorStopped(cell.path, "stopped while the message waited") from exc

    def send_nowait(self, msg: Any) -> None:
        """Put ``msg`` in the mailbox or raise at once; never blocks.

        Raises:
            MailboxFull: the mailbox is at capacity.
            ActorStopped: the incarnation has stopped.
        """
        cell = self._cell
        if cell.stop_requested:
            raise ActorStopped(cell.path, "not running")
        try:
            cell.mailbox.send_nowait(msg)
        except trio.WouldBlock:
            full = f"mailbox full ({cell.mailbox.capacity} messages)"
            raise MailboxFull(cell.path, full) from None
        except trio.BrokenResourceError as exc:
            raise ActorStopped(cell.path, "not running") from exc

    async def call(self, msg: Any) -> Any:
        """Send ``msg`` and wait for the handler's return value.

        A checkpoint. If cancelled after the message was queued, the handler still runs it
        and its answer is dropped.

        Raises:
            CallFailed: the handler raised (the original exception is ``__cause__``); the
                actor crashed and its supervisor decides what happens next.
            ActorStopped: the actor stopped before answering, or was not running.
        """
        request = _Call(msg)
        await self.send(request)
        return await request.wait()

    def statistics(self) -> ActorStatistics:
        """Mailbox depth, messages handled and restarts, now. Never blocks."""
        cell = self._cell
        mailbox = cell.mailbox.statistics()
        return ActorStatistics(
            path=cell.path,
            status=cell.status,
            mailbox_depth=mailbox.depth,
            mailbox_capacity=int(mailbox.capacity),
            senders_waiting=mailbox.senders_waiting,
            messages_handled=cell.messages_handled,
            restarts=cell.restarts,
        )
