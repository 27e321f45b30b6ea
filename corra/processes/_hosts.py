"""Waiting for hosts that stop answering.

A remote backend raises `HostUnavailable` when a host stops answering. A process that needs
the host then pauses for it (``paused_by == "host"``), unless the host's policy says to fail,
or its backend cannot tell when the host answers again (its `Capabilities` lack
``waits_for_host``), or there is
no nursery to wait in. One task per unavailable host waits for it (`Backend.wait_available`)
and then resumes every process paused for it. A later runtime's recovery finds such processes
in the store's active index and waits for their hosts again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from corra._errors import ConfigError, HostUnavailable, InvalidTransition, NoSuchProcess, StoreError
from corra.processes._backend import Backend
from corra.processes._record import ProcessRecord

logger = logging.getLogger("corra.process")

#: Between two attempts to learn whether a host answers again, when asking failed.
HOST_RETRY_DELAY = 5.0


class HostWaits:
    """The processes paused for their hosts, and the tasks that wait for those hosts.

    Args:
        backends: the backends by name.
        nursery: where the waits run; None: nowhere, and no process pauses for its host.
        resume: resumes a process paused for its host, by id, once the host answers.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        nursery: trio.Nursery | None,
        resume: Callable[[str], Awaitable[None]],
    ) -> None:
        self._backends = backends
        self._nursery = nursery
        self._resume = resume
        # Per (backend, host) that is unavailable, the processes paused until it answers.
        self._paused: dict[tuple[str, str], set[str]] = {}

    def may_wait(self, record: ProcessRecord, error: HostUnavailable) -> bool:
        """Whether a process whose host is unavailable pauses until it answers (else it
        fails): the host's policy, and a backend and a manager that can wait for it."""
        backend = self._backends.get(record.spec.backend)
        return (
            getattr(error, "policy", "pause") == "pause"
            and record.spec.host is not None
            and self._nursery is not None
            and backend is not None
            and backend.capabilities.waits_for_host
        )

    def wait_for(self, record: ProcessRecord) -> None:
        """Resume ``record`` (paused for its host) once its host answers again."""
        assert record.spec.host is not None
        if self._nursery is None:
            return
        key = (record.spec.backend, record.spec.host)
        waiting = self._paused.get(key)
        if waiting is None:
            waiting = self._paused[key] = set()
            self._nursery.start_soon(self._resume_when_available, key)
        waiting.add(record.id)

    async def _resume_when_available(self, key: tuple[str, str]) -> None:
        backend_name, host = key
        backend = self._backends[backend_name]
        while True:
            try:
                await backend.wait_available(host)
                break
            except ConfigError as exc:  # the host is gone from the configuration
                waiting = self._paused.pop(key, set())
                logger.error(
                    "host %s: %s; %d process(es) stay paused until resumed by hand",
                    host,
                    exc,
                    len(waiting),
                )
                return
            except Exception as exc:  # asking failed: ask again later, never give up
                logger.warning("host %s: cannot learn whether it answers: %s", host, exc)
                await trio.sleep(HOST_RETRY_DELAY)
        waiting = self._paused.pop(key, set())
        logger.info("host %s answers again: resuming %d process(es)", host, len(waiting))
        for process_id in sorted(waiting):
            try:
                await self._resume(process_id)
            except (NoSuchProcess, InvalidTransition, StoreError) as exc:
                logger.warning("process %s: not resumed after its host: %s", process_id, exc)
