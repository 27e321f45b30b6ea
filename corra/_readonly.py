"""A state dir read without a runtime: what ``corra ps``, ``show`` and ``logs`` read when no
service runs, also while a ``corra run`` uses the state dir (LMDB allows concurrent readers).

`open_state_query` gives a `ProcessQuery` over the store opened read-only, what the programs'
chaperones recorded (`corra.backends.recorded`), and the backends, opened on first need to
read a program's output and only for that: the local one over its run dirs; the others
through their plug-ins, over the hosts remembered in the state dir, with a kernel and pools
of their own (logs
shipped home are read with no connection at all). Nothing here writes the state dir.

This module composes, as `corra._runtime` does: it may name backends; the query may not.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from corra._errors import ConfigError
from corra._runtime import HISTORY_CODEC, open_backends, record_codec
from corra.backends.recorded import RUNS, recorded
from corra.persistence import open_store_readonly
from corra.processes._query import ProcessQuery
from corra.processes._record import ProcessRecord
from corra.processes._registry import installed
from corra.processes._sources import StateDirSource


@contextlib.asynccontextmanager
async def open_state_query(state_dir: Path) -> AsyncIterator[ProcessQuery]:
    """The processes of ``state_dir``, read-only, for the duration of the block.

    Raises:
        ConfigError: there is no corra state in ``state_dir``.
        StoreError: its store cannot be read.
    """
    if not (state_dir / "state.lmdb").exists():
        raise ConfigError(
            f"state dir {state_dir}: no corra state here (start one with `corra run` or "
            "`corra serve`)"
        )
    backends = _Backends(state_dir)
    with open_store_readonly(state_dir) as store:
        query = ProcessQuery(
            StateDirSource(
                store,
                record_codec({name: p.handle for name, p in installed.plugins.items()}),
                HISTORY_CODEC,
                recorded=functools.partial(recorded, state_dir),
                backend=backends.of,
            )
        )
        try:
            async with trio.open_nursery() as nursery:
                backends.nursery = nursery
                try:
                    yield query
                finally:
                    await backends.aclose()
        except BaseExceptionGroup as group:
            # The nursery wraps what the block raised: the reader's error, as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


class _Backends:
    """The backends of a state dir's records, opened read-only on first need; the remote
    ones in a task of their own (in ``nursery``), which holds their contexts (a kernel, the
    asyncio loop, the pools) until `aclose`, whichever task asked for them first."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._local: Any = None
        self._remote: Any = None
        self._opening = trio.Lock()
        self._closing = trio.Event()
        self.nursery: trio.Nursery | None = None

    async def aclose(self) -> None:
        """Let the remote backends go (the local one reads files only: nothing to close)."""
        self._closing.set()
        await trio.lowlevel.checkpoint()

    async def of(self, record: ProcessRecord) -> Any:
        """The backend of ``record``, to read its program's output.

        Raises:
            ConfigError: its backend is not installed, or its host is not among the hosts
                remembered in the state dir.
        """
        if record.spec.backend == "local":
            if self._local is None:
                from corra.backends.local import LocalBackend

                # (no cgroups looked for: nothing is launched)
                self._local = LocalBackend(self._state_dir / RUNS, cgroups="off")
            await trio.lowlevel.checkpoint()
            return self._local
        async with self._opening:
            if self._remote is None:
                assert self.nursery is not None
                self._remote = await self.nursery.start(self._hold_remote)
        hosts = {} if self._remote.remote is None else self._remote.remote.hosts
        if installed.get(record.spec.backend).capabilities.hosts and record.spec.host not in hosts:
            raise ConfigError(
                f"{record.name}: host {record.spec.host!r} is not among the hosts "
                f"remembered in {self._state_dir} ({sorted(hosts)})"
            )
        return self._remote.backends[record.spec.backend]

    async def _hold_remote(self, *, task_status: trio.TaskStatus[Any]) -> None:
        from corra._remote import remembered_hosts
        from corra.actors import open_runtime as open_kernel

        async with open_kernel() as kernel:
            hosts = await trio.to_thread.run_sync(remembered_hosts, self._state_dir)
            # (the installed backends, through their plug-ins: shipped logs are read from the
            # state dir with no connection at all)
            async with open_backends(kernel.root, self._state_dir, hosts) as opened:
                task_status.started(opened)
                await self._closing.wait()
