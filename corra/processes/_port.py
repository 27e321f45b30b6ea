"""What a backend may do with the runtime's processes: `ProcessPort`.

A backend that needs a program of another backend to serve its own (the hyperqueue backend's
Slurm allocation, which runs a HyperQueue server and worker) submits it as a process of the
runtime, through the port `BackendContext.processes` gives it: then it is supervised,
durable, recovered, listed by ``corra ps`` and killed like any other, and the backend never
imports the other backend (backends know the process domain, not each other).

The runtime opens its backends before its process manager, so the port is bound late
(`ProcessPort.bind`); a call made before then waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio

from corra._errors import NoSuchProcess


class _Manager(Protocol):
    """What the port uses of `corra.processes._manager.ProcessManager` (not imported: the
    manager's modules import the backend seam, which holds the port)."""

    async def submit(self, spec: Any) -> Any: ...

    def get(self, id_or_name: str) -> Any: ...

    async def wait(self, id_or_name: str) -> Any: ...

    async def kill(self, id_or_name: str) -> Any: ...


class ProcessPort:
    """Submit, read and kill processes of the runtime (see the module)."""

    def __init__(self) -> None:
        self._manager: _Manager | None = None
        self._parse: Callable[[dict[str, Any]], Any] | None = None
        self._bound = trio.Event()

    def bind(self, manager: _Manager, parse: Callable[[dict[str, Any]], Any]) -> None:
        """Hand the port the runtime's manager (once it is open) and its spec parser
        (`corra.processes._convert.parse_process_spec`)."""
        self._manager, self._parse = manager, parse
        self._bound.set()

    async def _opened(self) -> _Manager:
        await self._bound.wait()
        assert self._manager is not None
        return self._manager

    async def submit(self, spec: Mapping[str, Any]) -> str:
        """Submit a process (spec fields, as a job file's ``[[process]]`` gives them) and
        return its id once the submission is durable. A spec whose ``name`` exists already
        returns that process: a backend that names what it submits never submits it twice,
        even across a crash.

        Raises:
            ConfigError: the spec is refused (naming the field).
        """
        manager = await self._opened()
        assert self._parse is not None
        submitted = await manager.submit(self._parse(dict(spec)))
        return str(submitted.record.id)

    def record(self, process_id: str) -> Any | None:
        """The process's record now, or None if there is none (or the port is not bound)."""
        if self._manager is None:
            return None
        try:
            return self._manager.get(process_id)
        except NoSuchProcess:
            return None

    async def wait(self, process_id: str) -> Any:
        """Wait until the process is terminal. A checkpoint."""
        return await (await self._opened()).wait(process_id)

    async def kill(self, process_id: str) -> None:
        """Kill the process unless it is over; returns once it is."""
        manager = await self._opened()
        record = self.record(process_id)
        if record is not None and not record.state.terminal:
            await manager.kill(process_id)
