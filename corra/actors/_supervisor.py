"""Supervisors with Erlang/OTP's semantics: strategies, restart types, intensity, shutdown.

A supervisor is an actor too: its mailbox receives its children's exits and the requests of
`SupervisorRef` (start, terminate, restart, delete), and handles them one at a time, so a
request never races a restart. Children run in the supervisor's nursery, each in its own
cancel scope; they start in order (each `start_child` returns once the child runs) and stop
in reverse order.

Rules (OTP's, with the differences named):

1. A child exits *normally* when it stops itself (`Actor.stop`), *abnormally* when it raises.
   A child stopped by its supervisor (termination) is not an exit the strategy reacts to.
2. ``permanent`` children are restarted after any exit, ``transient`` ones after an abnormal
   exit only, ``temporary`` ones never; a temporary child's spec is removed when it exits or
   is terminated.
3. Each restart is recorded; if more than ``intensity`` restarts fall within the last
   ``period`` seconds (both ends included, as in OTP), the supervisor terminates all its
   children in reverse order and fails with `RestartIntensityExceeded`, an abnormal exit
   that its own parent handles by rule 2.
4. ``one_for_one`` restarts the exited child; ``one_for_all`` terminates every other running
   child (reverse order) and restarts all of them (in order); ``rest_for_one`` does the same
   for the exited child and the children after it. Temporary children terminated by the
   strategy are removed. A difference from OTP: children that were not running (stopped with
   `terminate_child`, or transient and exited normally) stay stopped, where OTP would start
   them again with the group.
5. A child that fails while being restarted counts as another exit of that child (rule 3
   bounds the retries). The retry is queued behind requests already waiting, as OTP's
   ``try_again_restart``; if one of them stops or deletes the child first, the retry is void
   and the rest of its group that had not started yet stays stopped.
6. Beyond OTP: a child with a `Backoff` waits before its restart; the supervisor keeps
   serving requests meanwhile.
7. Beyond OTP: `SupervisorRef.start_child_nowait` starts a worker without a round trip, for
   the many short-lived children of a busy supervisor (process actors). It is taken only
   while the supervisor is idle (nothing queued, nothing being handled), so it is ordered
   with everything else as a request would be; a failure of such a child while it starts is
   an abnormal exit (rule 1), handled by its restart type, instead of an error of the call.
   Likewise, an exit that needs no restart (a temporary child, a transient one that exited
   normally) is settled by the exiting child itself while the supervisor is idle.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import outcome
import trio

from corra._errors import (
    ActorStopped,
    ChildRunning,
    ChildStartFailed,
    ConfigError,
    CorraError,
    DuplicateChild,
    NoSuchChild,
    RestartIntensityExceeded,
)
from corra.actors._actor import Ref, Status, _ActorCell, _Call, _Cell, _CellRef
from corra.actors._children import ChildStatus, RestartWindow, _Child, _ChildExit, _RestartDue
from corra.actors._mailbox import Mailbox
from corra.actors._specs import ChildSpec, SupervisorSpec

logger = logging.getLogger("corra.supervisor")


@attrs.frozen
class ChildInfo:
    """One child as `SupervisorRef.which_children` sees it."""

    id: str
    ref: Ref | SupervisorRef | None
    type: Literal["worker", "supervisor"]
    restart: str
    status: ChildStatus
    restarts: int


@attrs.frozen
class ChildCounts:
    """`SupervisorRef.count_children`: specs, running children, and by type (as OTP)."""

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of one supervisor (see `SupervisorRef.statistics`)."""

    path: str
    status: Status
    children: int
    active: int
    restarts: int
    pending: int


_STOP = object()


class _SupervisorCell(_Cell):
    """One incarnation of a supervisor."""

    def __init__(self, path: str, spec: SupervisorSpec, child: _Child | None = None) -> None:
        super().__init__(path, child)
        self.spec = spec
        self.flags = spec.flags
        self.children: list[_Child] = []
        self.by_id: dict[str, _Child] = {}
        self.window = RestartWindow(self.flags.intensity, self.flags.period)
        self.restarts_total = 0
        # Exits, restarts due and requests, in order; `idle` while the loop waits for one.
        self.queue = Mailbox(math.inf)
        self.nursery: trio.Nursery | None = None

    @property
    def ref(self) -> SupervisorRef:
        """A ref on this incarnation (made when asked: see `_ActorCell.ref`)."""
        return SupervisorRef(self)

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self.status == "stopped":
            return
        if self.status != "starting":
            self.status = "stopping"
        self._post(_STOP)

    def _post(self, item: object) -> None:
        """Queue an event for the loop; dropped if the supervisor has stopped."""
        with contextlib.suppress(trio.BrokenResourceError):
            self.queue.send_nowait(item)

    async def serve(self, task_status: trio.TaskStatus[None]) -> None:
        # Errors are carried out of the nursery rather than raised in it, so that the
        # parent sees the error itself, not an exception group around it.
        error: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    for spec in self.spec.children:
                        await self._start(self._add(spec))
                except Exception as exc:
                    error = exc
                else:
                    if self.status == "starting":
                        self.status = "running"
                    self.started = True
                    task_status.started()
                    try:
                        await self._loop()
                    except Exception as exc:
                        error = exc
                if error is not None:
                    await self._terminate_all()
                # Timers of pending restarts are the only tasks left.
                nursery.cancel_scope.cancel()
        finally:
            self._close()
        if error is not None:
            raise error

    def _close(self) -> None:
        self.mark_stopped()
        stopped = outcome.Error(ActorStopped(self.path, "supervisor stopped"))
        for item in self.queue.close():
            if type(item) is _Call:
                item.resolve(stopped)

    async def _loop(self) -> None:
        receive = self.queue.receive
        while True:
            item = await receive()
            if item is _STOP:
                await self._terminate_all()
                return
            if type(item) is _ChildExit:
                await self._on_exit(item)
            elif type(item) is _RestartDue:
                await self._restart_group(item.group)
            elif type(item) is _Call:
                try:
                    result = await item.msg()
                except CorraError as exc:
                    item.resolve(outcome.Error(exc))
                else:
                    item.resolve(outcome.Value(result))

    async def request(self, operation: Any) -> Any:
        """Run ``operation`` inside the supervisor's loop and return its result."""
        call = _Call(operation)
        try:
            self.queue.send_nowait(call)
        except trio.BrokenResourceError as exc:
            await trio.lowlevel.checkpoint()
            raise ActorStopped(self.path, "supervisor not running") from exc
        return await call.wait()

    # -- children --------------------------------------------------------------------------

    def _add(self, spec: ChildSpec) -> _Child:
        if spec.id in self.by_id:
            raise DuplicateChild(self.path, f"a child with id {spec.id!r} exists already")
        child = _Child(spec)
        self.children.append(child)
        self.by_id[spec.id] = child
        return child

    def _remove(self, child: _Child) -> None:
        self.children.remove(child)
        del self.by_id[child.spec.id]

    def _child_path(self, child_id: str) -> str:
        return f"{self.path.rstrip('/')}/{child_id}"

    async def _start(self, child: _Child) -> None:
        """Start one child and return once it runs."""
        assert self.nursery is not None
        spec = child.spec
        path = self._child_path(spec.id)
        cell: _Cell
        if isinstance(spec.start, SupervisorSpec):
            cell = _SupervisorCell(path, spec.start, child)
        else:
            cell = _ActorCell(path, spec.start, spec.mailbox_capacity, child)
        child.cell = cell
        try:
            await self.nursery.start(self._run_child, child, cell)
        except Exception as exc:
            child.cell = None
            raise ChildStartFailed(
                self.path, f"child {spec.id!r} failed to start: {exc!r}"
            ) from exc
        child.wanted = True
        child.started_at = trio.current_time()

    async def _run_child(
        self, child: _Child, cell: _Cell, task_status: trio.TaskStatus[None]
    ) -> None:
        reason: BaseException | None = None
        try:
            with cell.scope:
                await cell.serve(task_status)
        except Exception as exc:
            if not cell.started:
                raise
            reason = exc
        finally:
            cell.mark_stopped()
        if cell.started and not cell.terminating:
            self._child_exited(child, cell, reason)

    async def _run_child_soon(self, child: _Child, cell: _Cell) -> None:
        """`_run_child` for `start_child_nowait`: nobody waits for the start, so a failure
        while starting is an exit like any other (rule 7)."""
        reason: BaseException | None = None
        try:
            with cell.scope:
                await cell.serve(trio.TASK_STATUS_IGNORED)
        except Exception as exc:
            reason = exc
        finally:
            cell.mark_stopped()
        if not cell.terminating:
            self._child_exited(child, cell, reason)

    def _child_exited(self, child: _Child, cell: _Cell, reason: BaseException | None) -> None:
        """Report an exit: settled here if the loop is idle and nothing is to restart (no
        wake-up of the loop for the common end of a temporary child), else queued."""
        restart = child.spec.restart
        if self.queue.idle and (
            restart == "temporary" or (restart == "transient" and reason is None)
        ):
            self._settle_exit(child, cell, reason)
        else:
            self._post(_ChildExit(child, cell, reason))

    def _settle_exit(self, child: _Child, cell: _Cell | None, reason: BaseException | None) -> bool:
        """The bookkeeping of an exit (rules 1, 2) of ``cell`` (None: a failed restart); True
        if the child is to be restarted."""
        if cell is not None and child.cell is not cell:
            return False  # an incarnation we stopped or replaced already
        child.cell = None
        restart = child.spec.restart
        if reason is None:
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: child %r (%s) exited normally", self.path, child.spec.id, restart)
        else:
            logger.warning(
                "%s: child %r (%s) exited with %r", self.path, child.spec.id, restart, reason
            )
        if restart == "temporary" or (restart == "transient" and reason is None):
            child.wanted = False
            if restart == "temporary":
                self._remove(child)
            return False
        return True

    async def _terminate(self, child: _Child) -> None:
        cell = child.cell
        if cell is None:
            return
        cell.terminate(child.spec.shutdown_grace)
        await cell.wait_stopped()
        child.cell = None

    async def _terminate_all(self) -> None:
        for child in reversed(self.children):
            child.wanted = False
            await self._terminate(child)

    async def _on_exit(self, event: _ChildExit) -> None:
        child = event.child
        if event.cell is None and (child.cell is not None or not child.wanted):
            # Started or stopped since its restart failed: the retry is void, and so is
            # the group restart it was part of; what had not started yet stays stopped.
            for other in event.waiting:
                if other.cell is None:
                    other.wanted = False
            return
        if not self._settle_exit(child, event.cell, event.reason):
            return
        self._count_restart(child, event.reason)
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.cell is not None:
                await self._terminate(other)
        group = [c for c in group if c is child or c.wanted]
        for other in group:
            if other.spec.restart == "temporary":
                other.wanted = False
                self._remove(other)
        group = [c for c in group if c.spec.restart != "temporary"]
        child.wanted = True
        delay = child.delay()
        logger.info(
            "%s: %s: restarting %s in %g s",
            self.path,
            self.flags.strategy,
            ", ".join(repr(c.spec.id) for c in group),
            delay,
        )
        if delay > 0:
            assert self.nursery is not None
            self.nursery.start_soon(self._restart_later, delay, tuple(group))
        else:
            await self._restart_group(group)

    def _count_restart(self, child: _Child, reason: BaseException | None) -> None:
        now = trio.current_time()
        if not self.window.admit(now):
            logger.error(
                "%s: more than %d restarts in %g s: stopping all children and giving up",
                self.path,
                self.flags.intensity,
                self.flags.period,
            )
            raise RestartIntensityExceeded(
                self.path,
                f"more than {self.flags.intensity} restarts in {self.flags.period:g} s; "
                f"last: child {child.spec.id!r} exited with {reason!r}",
            ) from reason
        if child.started_at and now - child.started_at >= child.reset_after:
            child.consecutive = 0
        child.consecutive += 1

    def _group(self, child: _Child) -> list[_Child]:
        strategy = self.flags.strategy
        if strategy == "one_for_one":
            return [child]
        if strategy == "one_for_all":
            return list(self.children)
        return self.children[self.children.index(child) :]

    async def _restart_later(self, delay: float, group: tuple[_Child, ...]) -> None:
        await trio.sleep(delay)
        self._post(_RestartDue(group))

    async def _restart_group(self, group: list[_Child] | tuple[_Child, ...]) -> None:
        for index, child in enumerate(group):
            if child.cell is not None or not child.wanted or child.spec.id not in self.by_id:
                continue
            child.restarts += 1
            self.restarts_total += 1
            try:
                await self._start(child)
            except ChildStartFailed as exc:
                # Rule 5: a failed restart is another exit of that child.
                self._post(_ChildExit(child, None, exc.__cause__, tuple(group[index + 1 :])))
                return

    # -- requests (run inside the loop) -----------------------------------------------------

    def _get(self, child_id: str) -> _Child:
        child = self.by_id.get(child_id)
        if child is None:
            raise NoSuchChild(self.path, f"no child with id {child_id!r}")
        return child

    async def op_start_child(self, spec: ChildSpec) -> Ref | SupervisorRef:
        child = self._add(spec)
        try:
            await self._start(child)
        except ChildStartFailed:
            self._remove(child)
            raise
        return _ref_of(child)

    def op_start_child_nowait(self, spec: ChildSpec) -> Ref:
        """Rule 7: add and start a worker now, in the caller's task, if nothing else is in
        progress; its task starts it."""
        if self.status in ("stopping", "stopped"):
            raise ActorStopped(self.path, "supervisor not running")
        if self.status != "running" or not self.queue.idle:
            raise trio.WouldBlock
        assert self.nursery is not None
        child = self._add(spec)
        cell = _ActorCell(self._child_path(spec.id), spec.start, spec.mailbox_capacity, child)  # type: ignore[arg-type]
        child.cell = cell
        child.wanted = True
        if spec.restart != "temporary":  # (only restarts read it)
            child.started_at = trio.current_time()
        self.nursery.start_soon(self._run_child_soon, child, cell)
        return cell.ref

    async def op_terminate_child(self, child_id: str) -> None:
        child = self._get(child_id)
        child.wanted = False
        await self._terminate(child)
        if child.spec.restart == "temporary":
            self._remove(child)

    async def op_restart_child(self, child_id: str) -> Ref | SupervisorRef:
        child = self._get(child_id)
        if child.cell is not None:
            raise ChildRunning(self.path, f"child {child_id!r} is running")
        await self._start(child)
        return _ref_of(child)

    async def op_delete_child(self, child_id: str) -> None:
        child = self._get(child_id)
        if child.cell is not None:
            raise ChildRunning(self.path, f"child {child_id!r} is running; terminate it first")
        child.wanted = False
        self._remove(child)


def _ref_of(child: _Child) -> Ref | SupervisorRef:
    cell = child.cell
    assert cell is not None
    ref: Ref | SupervisorRef = cell.ref  # type: ignore[attr-defined]
    return ref


class SupervisorRef(_CellRef):
    """A handle on one supervisor incarnation: dynamic children and introspection."""

    __slots__ = ()
    _cell: _SupervisorCell

    async def start_child(self, spec: ChildSpec) -> Ref | SupervisorRef:
        """Add a child and start it; returns its ref once it runs. A checkpoint.

        Raises:
            DuplicateChild: a child with that id exists (running or not).
            ChildStartFailed: it raised while starting (the spec is not kept).
            ActorStopped: the supervisor is not running.
        """
        if not isinstance(spec, ChildSpec):
            raise ConfigError(f"start_child: got {spec!r}, expected a ChildSpec")
        return await self._cell.request(lambda: self._cell.op_start_child(spec))

    def start_child_nowait(self, spec: ChildSpec) -> Ref:
        """Add a worker child and start it without waiting for it to run; never blocks.

        For many short-lived children: no round trip through the supervisor's mailbox and no
        wait for the start. Taken only while the supervisor is idle (else `trio.WouldBlock`:
        use `start_child`), so it is ordered with requests and exits as `start_child` would
        be. The child starts in its own task; if it fails while starting, that is an abnormal
        exit handled by its restart type (rule 7), not an error here.

        Raises:
            trio.WouldBlock: the supervisor is busy (or still starting).
            DuplicateChild: a child with that id exists (running or not).
            ConfigError: ``spec`` is not a worker's `ChildSpec`.
            ActorStopped: the supervisor is stopping or stopped.
        """
        if not isinstance(spec, ChildSpec) or spec.type != "worker":
            raise ConfigError(f"start_child_nowait: got {spec!r}, expected a worker's ChildSpec")
        return self._cell.op_start_child_nowait(spec)

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (with its shutdown grace); its spec stays unless it is temporary."""
        await self._cell.request(lambda: self._cell.op_terminate_child(child_id))

    async def restart_child(self, child_id: str) -> Ref | SupervisorRef:
        """Start a stopped child again from its spec.

        Raises:
            ChildRunning: it is running.
        """
        return await self._cell.request(lambda: self._cell.op_restart_child(child_id))

    async def delete_child(self, child_id: str) -> None:
        """Remove a stopped child's spec.

        Raises:
            ChildRunning: it is running; terminate it first.
        """
        await self._cell.request(lambda: self._cell.op_delete_child(child_id))

    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order, with its current ref (None when not running)."""
        return [
            ChildInfo(
                id=child.spec.id,
                ref=child.cell.ref if child.cell is not None else None,  # type: ignore[attr-defined]
                type=child.spec.type,
                restart=child.spec.restart,
                status=child.status,
                restarts=child.restarts,
            )
            for child in self._cell.children
        ]

    def count_children(self) -> ChildCounts:
        """Counts of specs, running children, supervisors and workers (as OTP's)."""
        children = self._cell.children
        supervisors = sum(1 for c in children if c.spec.type == "supervisor")
        return ChildCounts(
            specs=len(children),
            active=sum(1 for c in children if c.cell is not None),
            supervisors=supervisors,
            workers=len(children) - supervisors,
        )

    def statistics(self) -> SupervisorStatistics:
        """Children, restarts and pending requests, now. Never blocks."""
        cell = self._cell
        return SupervisorStatistics(
            path=cell.path,
            status=cell.status,
            children=len(cell.children),
            active=sum(1 for c in cell.children if c.cell is not None),
            restarts=cell.restarts_total,
            pending=len(cell.queue),
        )

    def walk(self) -> Iterator[TreeNode]:
        """This supervisor and everything below it, depth first, in start order."""
        yield from _walk(self._cell, 0)


@attrs.frozen
class TreeNode:
    """One node of the supervision tree (see `Runtime.walk`)."""

    path: str
    type: Literal["worker", "supervisor"]
    depth: int
    status: ChildStatus
    restarts: int
    ref: Ref | SupervisorRef | None


def _walk(cell: _SupervisorCell, depth: int) -> Iterator[TreeNode]:
    yield TreeNode(
        path=cell.path,
        type="supervisor",
        depth=depth,
        status="running" if cell.status != "stopped" else "stopped",
        restarts=cell.restarts,
        ref=cell.ref,
    )
    for child in cell.children:
        current = child.cell
        if isinstance(current, _SupervisorCell):
            yield from _walk(current, depth + 1)
        else:
            yield TreeNode(
                path=cell._child_path(child.spec.id),
                type=child.spec.type,
                depth=depth + 1,
                status=child.status,
                restarts=child.restarts,
                ref=current.ref if isinstance(current, _ActorCell) else None,
            )
