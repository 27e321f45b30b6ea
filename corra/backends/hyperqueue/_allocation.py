"""HyperQueue inside a Slurm allocation that corra manages: `Allocations`.

A host whose table says ``allocation = { slurm_host = ..., cpus = ..., time_limit = ... }``
has no server of its own. corra submits, as a process of the runtime (`ProcessPort`: never
through the slurm backend's code), a Slurm job on ``slurm_host`` whose program
(`corra.backends.hyperqueue._allocation_job`) starts a HyperQueue server and a worker with
the allocation's CPUs in a server dir of the run root, and ends itself once it has run no task
for ``idle_time``. corra waits for the server's ``access.json``, then packs the host's tasks
into it.

Allocation N of host H is the process named ``hq-H-allocation-N`` (a name is never submitted
twice: a runtime killed right after a submission finds it again), its server dir
``<run root>/allocations/N/server``; ``<run root>/allocations/current`` holds N, written
(synced) before the submission. An allocation that ended, or was lost, is over: its
unfinished tasks are lost (transient processes rerun them), and the next launch requests
allocation N+1.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Final

import trio

from corra._errors import LaunchFailed
from corra._statedir import make_private_dirs, read_private, write_private
from corra.backends.hyperqueue._options import AllocationOptions
from corra.processes._port import ProcessPort

#: The server's file that says it is up (HyperQueue's own).
ACCESS: Final = Path("hq-current") / "access.json"
#: How often the server dir and the allocation's process are looked at while it starts.
STARTING_LOOK: Final = 0.25


class Allocations:
    """The allocations of one host (see the module)."""

    def __init__(
        self, host: str, options: AllocationOptions, root: Path, port: ProcessPort
    ) -> None:
        self.host = host
        self.options = options
        self.root = root / "allocations"
        self._port = port
        self._lock = trio.Lock()

    def current(self) -> int:
        """The number of the last allocation requested (0: none yet)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(read_private(self.root / "current").decode().strip())
        return 0

    def name(self, number: int) -> str:
        return f"hq-{self.host}-allocation-{number}"

    def server_dir(self, number: int) -> Path:
        return self.root / str(number) / "server"

    def over(self, number: int) -> str | None:
        """Why allocation ``number`` is over (its process ended), or None while it lasts."""
        record = self._port.record(self.name(number))
        if record is None or not record.state.terminal:
            return None
        return record.state.reason or record.state.phase

    async def server(self) -> tuple[int, Path]:
        """The current allocation's number and server dir, once its server is up; a new
        allocation if there is none, or the last one is over.

        Raises:
            LaunchFailed: the allocation ended before its server was up (why, from Slurm).
        """
        async with self._lock:
            number = self.current()
            if number == 0 or self.over(number) is not None:
                number += 1
                make_private_dirs(self.root)
                write_private(self.root / "current", str(number).encode(), sync=True)
            server_dir = self.server_dir(number)
            make_private_dirs(server_dir)
            await self._port.submit(self._spec(number, server_dir))
            while not (server_dir / ACCESS).exists():
                why = self.over(number)
                if why is not None:
                    raise LaunchFailed(
                        f"allocation {self.name(number)} of host {self.host} ended before its "
                        f"HyperQueue server was up: {why} (see `corra logs {self.name(number)}`)"
                    )
                await trio.sleep(STARTING_LOOK)
            return number, server_dir

    def _spec(self, number: int, server_dir: Path) -> dict[str, Any]:
        options = self.options
        slurm = {**options.slurm, "cpus_per_task": options.cpus}
        if options.time_limit is not None:
            slurm["time"] = options.time_limit
        return {
            "name": self.name(number),
            "backend": "slurm",
            "host": options.slurm_host,
            "argv": [
                options.python,
                "-m",
                "corra.backends.hyperqueue._allocation_job",
                str(server_dir),
                "--cpus",
                str(options.cpus),
                "--idle",
                str(options.idle_time),
            ],
            "labels": {"corra.hyperqueue/host": self.host},
            "slurm": slurm,
        }
