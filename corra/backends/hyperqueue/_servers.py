"""A host of the hyperqueue backend: its server (given, or in an allocation corra makes), the
helper process that speaks to it, and what the backend keeps per server.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from corra._errors import ConfigError
from corra.backends._shared import TokenBucket
from corra.backends.hyperqueue._allocation import Allocations
from corra.backends.hyperqueue._client import HqHelper, open_helper
from corra.backends.hyperqueue._options import HyperQueueHostOptions
from corra.processes._backend import BackendContext


class Server:
    """One host: a HyperQueue server, its helper process, its watched jobs.

    Attributes:
        name: the ``[hosts.NAME]`` name.
        options: its ``hyperqueue`` table.
        run_root: where its attempts' run dirs go.
        allocations: the Slurm allocations that run its server, or None (a given server).
        helper: the helper process of the server in use, once connected.
        uid: that server's uid, once it answered.
        number: the allocation whose server ``helper`` speaks to (allocation mode).
    """

    def __init__(
        self,
        name: str,
        options: HyperQueueHostOptions,
        run_root: Path,
        allocations: Allocations | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.run_root = run_root
        self.allocations = allocations
        self.helper: HqHelper | None = None
        self.uid: str | None = None
        self.number: int | None = None
        self.bucket = TokenBucket(options.submit_rate, options.submit_burst)
        self.watches: dict[int, list] = {}  # job id -> the waits on it (`_backend._Watch`)
        self.forgotten: list[int] = []  # jobs over, to be forgotten by the server
        self.library: str | None = None  # where the task wrapper was shipped (`task_job.ship`)
        self.wake = trio.Event()
        self._lock = trio.Lock()
        self._stack = contextlib.AsyncExitStack()

    async def connect(self, *, request: bool = True) -> HqHelper | None:
        """The helper of the server to use now, its uid known. In allocation mode, the
        current allocation's server; with ``request``, a new allocation if there is no live
        one (else None then).

        Raises:
            HostUnavailable: the server does not answer.
            LaunchFailed: an allocation ended before its server was up.
        """
        async with self._lock:
            if self.allocations is None:
                assert self.options.server_dir is not None
                await self._use(0, Path(self.options.server_dir))
            elif request:
                number = self.number
                if (
                    number is None
                    or number != self.allocations.current()
                    or self.allocations.over(number) is not None
                ):
                    await self._use(*await self.allocations.server())
            else:
                number = self.allocations.current()
                if number == 0 or self.allocations.over(number) is not None:
                    return None
                await self._use(number, self.allocations.server_dir(number))
            assert self.helper is not None
            if self.uid is None:
                self.uid = str((await self.helper.call("hello"))["uid"])
            return self.helper

    async def _use(self, number: int, server_dir: Path) -> None:
        if self.helper is not None and number == self.number:
            return
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        self.helper, self.uid = None, None
        self.helper = await self._stack.enter_async_context(open_helper(self.name, server_dir))
        self.number = number

    def lost_server(self) -> None:
        """Forget the server's uid: the next call asks it again (a restarted server is
        another one)."""
        self.uid = None

    async def aclose(self) -> None:
        """Stop the helper process."""
        await self._stack.aclose()


def servers_of(context: BackendContext) -> dict[str, Server]:
    """The hosts that are HyperQueue servers (``transport = "hyperqueue"``).

    Raises:
        ConfigError: one has neither a ``server_dir`` nor an ``allocation`` (or both), or
            its allocation's Slurm host is not a host of the runtime.
    """
    servers = {}
    for name, host in context.hosts.items():
        if getattr(host, "transport", None) != "hyperqueue":
            continue
        options: HyperQueueHostOptions = host.options_for("hyperqueue")
        where = f"hosts.{name}.hyperqueue"
        if (options.server_dir is None) == (options.allocation is None):
            given = "both" if options.server_dir else "neither"
            raise ConfigError(
                f"{where}: got {given} of server_dir and allocation; expected server_dir (a "
                "server someone started) or allocation (one corra starts in Slurm)"
            )
        root = (
            Path(options.run_root) if options.run_root else context.state_dir / "hyperqueue" / name
        )
        allocations = None
        if options.allocation is not None:
            slurm_host = options.allocation.slurm_host
            if slurm_host not in context.hosts or slurm_host == name:
                raise ConfigError(
                    f"{where}.allocation.slurm_host: got {slurm_host!r}, expected a host with "
                    f"Slurm ({', '.join(sorted(set(context.hosts) - {name})) or 'none'})"
                )
            allocations = Allocations(name, options.allocation, root, context.processes)
        servers[name] = Server(name, options, root, allocations)
    return servers
