"""What the conformance suite drives a backend with: `open_plugin` and `Kit`."""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeAlias

import attrs
import trio

from corra.actors import open_runtime
from corra.processes._backend import (
    Backend,
    BackendContext,
    BackendPlugin,
    EffectKey,
    LaunchRequest,
    Limits,
    MemoryStatuses,
)
from corra.processes._lifecycle import Result

#: Opens the backend on the test's state, anew at each call (`BackendConformance.open_backend`).
Opener: TypeAlias = Callable[[], AbstractAsyncContextManager[Backend]]
#: Makes a launched program lost (`BackendConformance.lose_program`).
Loser: TypeAlias = Callable[[Backend, Any], Awaitable[None]]


#: Where the backends that `open_plugin` opens hand their programs' statuses, unless it is
#: given ``statuses`` (the conformance suite sets one to look at it; None: a new one each).
STATUSES: contextvars.ContextVar[MemoryStatuses | None] = contextvars.ContextVar(
    "corra_testing_statuses", default=None
)


@contextlib.asynccontextmanager
async def open_plugin(
    plugin: BackendPlugin, state_dir: Path | str, *, supervisor: Any = None, **context: Any
) -> AsyncIterator[Backend]:
    """Open ``plugin`` as the runtime does: its ``open`` with a `BackendContext`.

    Args:
        plugin: the backend's plug-in.
        state_dir: the runtime's state dir the backend keeps its files in; opening again on
            the same one is what a restart after a crash does.
        supervisor: the supervisor the backend may start actors under; None: the root of an
            actor kernel opened for the block.
        **context: the other fields of `BackendContext` (``hosts``, ``transport``, ...);
            ``statuses``, unless given, is `STATUSES`'s if it is set.

    Yields:
        The open backend; leaving the block closes it (its programs keep running).
    """
    async with contextlib.AsyncExitStack() as stack:
        if supervisor is None:
            supervisor = (await stack.enter_async_context(open_runtime())).root
        if "statuses" not in context and STATUSES.get() is not None:
            context["statuses"] = STATUSES.get()
        backend = await stack.enter_async_context(
            plugin.open(BackendContext(state_dir=Path(state_dir), supervisor=supervisor, **context))
        )
        yield backend


@attrs.frozen
class Kit:
    """The fixtures of one test of `corra.testing.BackendConformance` (its ``kit`` fixture),
    with the steps the tests share."""

    plugin: BackendPlugin
    open: Opener
    host: str | None
    options: Any
    program: Callable[[str], tuple[str, ...]]
    patience: float

    def request(
        self,
        script: str,
        *,
        attempt: int = 1,
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        limits: Limits | None = None,
        argv: tuple[str, ...] | None = None,
    ) -> LaunchRequest:
        """A request for ``script`` (or ``argv`` as it is) with a key no other test uses."""
        return LaunchRequest(
            key=EffectKey(f"conformance-{uuid.uuid4().hex[:12]}", attempt),
            argv=self.program(script) if argv is None else argv,
            name=name,
            cwd=cwd,
            env=env or {},
            limits=limits or Limits(),
            host=self.host,
            options=self.options,
        )

    async def log(self, backend: Backend, key: EffectKey, stream: str = "stdout") -> bytes:
        return await backend.read_log(key, stream, 0, 1 << 16, self.host)

    async def output(self, backend: Backend, key: EffectKey, until: bytes) -> bytes:
        """The program's stdout once it holds ``until`` (polled: a real program writes it)."""
        return await self.poll(lambda: self.log(backend, key), lambda data: until in data)

    async def poll(
        self, read: Callable[[], Awaitable[bytes]], done: Callable[[bytes], bool]
    ) -> bytes:
        """``read()`` until ``done`` says yes, polling: nothing tells when a real program has
        written (an event would need the backend's co-operation, which is under test)."""
        with trio.fail_after(self.patience):
            while not done(data := await read()):  # noqa: ASYNC110
                await trio.sleep(0.05)
        return data

    async def wait(self, backend: Backend, handle: Any) -> Result:
        with trio.fail_after(self.patience):
            return await backend.wait(handle)
