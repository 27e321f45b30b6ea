"""The plumpy side of ``lifecycle_vs_plumpy`` (suite ``process``), in its own module: plumpy
loads and identifies process classes by module and name, so the class must be importable, and
plumpy (with its dependencies) is imported only when this benchmark runs.

``ThreeStates`` goes ``run`` -> ``step2`` -> finished (a three-state lifecycle: created,
running, finished, with running entered twice) and saves a checkpoint to its persister on
entering every state: four checkpoints per process, as a corra process writes four snapshots
(created, launching, running, finished).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import plumpy

#: Checkpoints per process: on entering created, running (run), running (step2), finished.
CHECKPOINTS = 4


class ThreeStates(plumpy.Process):  # type: ignore[misc]
    """``run`` -> ``step2`` -> finished, a checkpoint on entering every state."""

    persister: Any = None
    checkpoints = 0

    def on_entered(self, from_state: Any) -> None:
        super().on_entered(from_state)
        ThreeStates.persister.save_checkpoint(self)
        ThreeStates.checkpoints += 1

    async def run(self) -> Any:
        return plumpy.Continue(self.step2)

    async def step2(self) -> None:
        return None


def lifecycles(count: int, workers: int, persister: Any) -> float:
    """``count`` processes, ``workers`` at a time (each worker starts the next process when its
    last one finished), on a fresh asyncio loop; processes per second."""
    ThreeStates.persister = persister

    async def main() -> float:
        loop = asyncio.get_running_loop()
        numbers = itertools.count()

        async def one() -> None:
            process = ThreeStates(loop=loop)
            await process.step_until_terminated()
            if not process.successful():
                raise RuntimeError(f"a plumpy process did not finish: {process.state}")

        async def worker() -> None:
            while next(numbers) < count:
                await one()

        await one()  # warm-up, outside the figure
        ThreeStates.checkpoints = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return count / (time.perf_counter() - started)

    figure = asyncio.run(main())
    if ThreeStates.checkpoints != CHECKPOINTS * count:
        raise RuntimeError(
            f"plumpy checkpoints: got {ThreeStates.checkpoints}, expected {CHECKPOINTS * count}"
        )
    return figure


def in_memory(count: int, workers: int) -> float:
    """Checkpoints to `plumpy.InMemoryPersister`; processes per second."""
    return lifecycles(count, workers, plumpy.InMemoryPersister())


def pickled(count: int, workers: int, directory: str) -> float:
    """Checkpoints to `plumpy.PicklePersister` (a pickle file each, not fsynced) in
    ``directory``; processes per second."""
    return lifecycles(count, workers, plumpy.PicklePersister(directory))
