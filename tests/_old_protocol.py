"""TEMPORARY: today's built-in backends behind the new `Backend` protocol, for the
conformance tests until the seam lands (issue 12). Delete this module, and its use in
tests/test_conformance_*.py, when the built-ins take `launch(LaunchRequest)` themselves.

Each method turns the new call into the old one (a ``<process id>.<attempt>`` string key, a
spec object with the old field names) and nothing more, so that the conformance kit
exercises the real components through today's code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from corra.processes._backend import BackendBase, EffectKey, LaunchRequest
from corra.processes._lifecycle import Result


@attrs.frozen
class _OldSpec:
    """The fields of a ProcessSpec that today's backends read."""

    argv: tuple[str, ...]
    cwd: str | None
    env: dict[str, str]
    name: str | None
    host: str | None
    timeout: float | None
    kill_grace: float
    memory_limit: int | None
    pids_limit: int | None
    output_limit: int | None
    inputs: dict[str, str]
    outputs: tuple[str, ...]
    outputs_dir: str | None
    slurm: Any


def _spec(request: LaunchRequest) -> _OldSpec:
    return _OldSpec(
        argv=request.argv,
        cwd=request.cwd,
        env=dict(request.env),
        name=request.name,
        host=request.host,
        timeout=request.limits.timeout,
        kill_grace=request.limits.kill_grace,
        memory_limit=request.limits.memory,
        pids_limit=request.limits.pids,
        output_limit=request.limits.output,
        inputs=dict(request.inputs),
        outputs=request.outputs,
        outputs_dir=request.outputs_dir,
        slurm=request.options,
    )


class OldProtocol(BackendBase):
    """TEMPORARY: a backend of today as a `Backend` of the seam."""

    def __init__(
        self,
        old: Any,
        to_handle: Callable[[Any], Any] = lambda handle: handle,
        from_handle: Callable[[Any], Any] = lambda handle: handle,
    ) -> None:
        self.old = old
        self._to, self._from = to_handle, from_handle

    def try_acquire_slot(self, key: EffectKey) -> bool:
        try_acquire = getattr(self.old, "try_acquire_slot", None)
        return True if try_acquire is None else bool(try_acquire(str(key)))

    async def acquire_slot(self, key: EffectKey) -> None:
        await self.old.acquire_slot(str(key))

    def release_slot(self, key: EffectKey) -> None:
        self.old.release_slot(str(key))

    def adopt_slot(self, key: EffectKey) -> None:
        self.old.adopt_slot(str(key))

    async def launch(self, request: LaunchRequest) -> Any:
        return self._to(await self.old.launch(str(request.key), _spec(request)))

    async def find(self, key: EffectKey, host: str | None = None) -> Any:
        found = await self.old.find(str(key), host)
        return None if found is None else self._to(found)

    async def wait(self, handle: Any) -> Result:
        result: Result = await self.old.wait(self._from(handle))
        return result

    async def kill(self, handle: Any, grace: float) -> Result | None:
        result: Result | None = await self.old.kill(self._from(handle), grace)
        return result

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        data: bytes = await self.old.read_log(str(key), stream, offset, size, host)
        return data

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        size: int | None = await self.old.log_size(str(key), stream, host)
        return size


@contextlib.asynccontextmanager
async def adapted(
    opened: AbstractAsyncContextManager[Any], **conversions: Callable[[Any], Any]
) -> AsyncIterator[OldProtocol]:
    """TEMPORARY: ``opened`` (a plug-in's ``open``, yielding a backend of today) as the seam's."""
    async with opened as old:
        yield OldProtocol(old, **conversions)
