"""The runtime root: `open_runtime` owns the root supervisor and every task below it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import trio

from corra._errors import ConfigError
from corra.actors._actor import Actor, Ref
from corra.actors._specs import (
    DEFAULT_MAILBOX_CAPACITY,
    Backoff,
    ChildSpec,
    RestartType,
    Shutdown,
    SupervisorFlags,
    SupervisorSpec,
)
from corra.actors._supervisor import SupervisorRef, TreeNode, _SupervisorCell

#: The root's flags unless `open_runtime` is given others: one_for_one, and generous enough
#: that a few crashing top-level children do not bring the whole runtime down.
ROOT_FLAGS = SupervisorFlags(strategy="one_for_one", intensity=10, period=10.0)


class Runtime:
    """What `open_runtime` yields: spawn under the root, look up, walk the tree."""

    def __init__(self, root: _SupervisorCell) -> None:
        self._root = root
        self._names = itertools.count(1)

    @property
    def root(self) -> SupervisorRef:
        """The root supervisor (path ``/``)."""
        return self._root.ref

    async def spawn(
        self,
        start: Callable[[], Actor],
        *,
        name: str | None = None,
        restart: RestartType = "temporary",
        shutdown: Shutdown | None = None,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        backoff: Backoff | None = None,
    ) -> Ref:
        """Start an actor under the root supervisor; returns its ref once it runs.

        ``name`` becomes its path (``/name``); without one a unique name is made from the
        class name. ``restart`` defaults to ``temporary`` (a crash is not restarted); pass
        ``permanent`` or ``transient`` to have the root restart it. A checkpoint.

        Raises:
            ConfigError: an argument is invalid (the message names it).
            DuplicateChild: the name is taken.
            ChildStartFailed: the actor raised while starting.
        """
        spec = ChildSpec(
            id=name if name is not None else self._auto_name(start),
            start=start,
            restart=restart,
            shutdown=shutdown,
            mailbox_capacity=mailbox_capacity,
            backoff=backoff,
        )
        if spec.type != "worker":
            raise ConfigError("spawn: start is a SupervisorSpec; use spawn_supervisor")
        ref = await self._root.ref.start_child(spec)
        assert isinstance(ref, Ref)
        return ref

    async def spawn_supervisor(
        self,
        spec: SupervisorSpec,
        *,
        name: str | None = None,
        restart: RestartType = "permanent",
        shutdown: Shutdown | None = None,
    ) -> SupervisorRef:
        """Start a supervisor (and its children, in order) under the root. A checkpoint."""
        if not isinstance(spec, SupervisorSpec):
            raise ConfigError(f"spawn_supervisor: got {spec!r}, expected a SupervisorSpec")
        child = ChildSpec(
            id=name if name is not None else f"supervisor-{next(self._names)}",
            start=spec,
            restart=restart,
            shutdown=shutdown,
        )
        ref = await self._root.ref.start_child(child)
        assert isinstance(ref, SupervisorRef)
        return ref

    def lookup(self, path: str) -> Ref | SupervisorRef | None:
        """The running incarnation at ``path`` (``/a/b``), or None."""
        for node in self.walk():
            if node.path == path:
                return node.ref
        return None

    def walk(self) -> Iterator[TreeNode]:
        """Every node of the tree, depth first, children in start order. Never blocks."""
        return self._root.ref.walk()

    def _auto_name(self, start: object) -> str:
        base = getattr(start, "__name__", type(start).__name__).lower()
        return f"{base}-{next(self._names)}"


@asynccontextmanager
async def open_runtime(
    *, flags: SupervisorFlags = ROOT_FLAGS, runtime_type: type[Runtime] = Runtime
) -> AsyncIterator[Runtime]:
    """Run a corra runtime for the duration of the block.

    Leaving the block stops every actor and supervisor gracefully, in reverse start order,
    and no task outlives it. If the root supervisor fails (a restart intensity exceeded
    that escalated all the way up), the block is cancelled and ends with that error itself,
    not wrapped in an exception group.

    ``runtime_type`` lets a composing layer (`corra.open_runtime`) yield its own subclass.

    Raises:
        RestartIntensityExceeded: the root gave up.
    """
    if not isinstance(flags, SupervisorFlags):
        raise ConfigError(f"open_runtime: flags={flags!r}, expected a SupervisorFlags")
    root = _SupervisorCell("/", SupervisorSpec(flags=flags))
    failure: list[BaseException] = []

    async def run_root(task_status: trio.TaskStatus[None]) -> None:
        try:
            with root.scope:
                await root.serve(task_status)
        except Exception as exc:
            if not root.started:
                raise
            failure.append(exc)
            nursery.cancel_scope.cancel()

    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root)
            try:
                yield runtime_type(root)
            finally:
                root.request_stop()
                with trio.CancelScope(shield=not failure):
                    await root.wait_stopped()
    except BaseExceptionGroup as group:
        error = _sole(group)
    # Raised outside the except clause, so the error does not chain the group behind it.
    if error is not None:
        raise error
    if failure:
        raise failure[0]


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a nursery wrapped, so callers see it directly."""
    leaves = list(_leaves(group))
    errors = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(errors) == 1:
        return errors[0]
    return group


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
