"""`open_host_pollers`: a remote backend's pollers (one per host) live in the nursery of the
block that opened them, end with it, and their errors are not lost."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

from corra.backends._pollers import HostPollers, open_host_pollers


@attrs.define
class Host:
    name: str
    polls: int = 0
    running: bool = False
    watches: dict[str, Any] = attrs.field(factory=dict)
    wake: trio.Event = attrs.field(factory=trio.Event)


class Polling(HostPollers):
    def __init__(self, *names: str, fail_after: int | None = None) -> None:
        self._hosts = {name: Host(name) for name in names}
        self.fail_after = fail_after

    async def _poller(self, host: Host) -> None:
        host.running = True
        try:
            while True:
                host.polls += 1
                if host.polls == self.fail_after:
                    raise RuntimeError(f"poll {host.polls} of {host.name} failed")
                await trio.sleep(0.01)
        finally:
            host.running = False


async def test_the_pollers_run_in_the_block_and_end_with_it() -> None:
    backend = Polling("a", "b")
    async with open_host_pollers(backend) as opened:
        assert opened is backend
        while not all(host.polls >= 2 for host in backend._hosts.values()):
            await trio.sleep(0.01)
        assert backend._poll_nursery is not None
    assert not any(host.running for host in backend._hosts.values())
    assert backend._poll_nursery is None
    async with open_host_pollers(backend):  # (and they can run again)
        await trio.lowlevel.checkpoint()


async def test_a_pollers_error_ends_the_block_and_propagates() -> None:
    backend = Polling("a", fail_after=3)
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="poll 3 of a failed")):
        async with open_host_pollers(backend):
            await trio.sleep_forever()
    assert backend._poll_nursery is None


async def test_the_pollers_of_a_backend_run_once_at_a_time() -> None:
    backend = Polling("a")
    async with open_host_pollers(backend):
        with pytest.raises(RuntimeError, match="Polling: its pollers run already"):
            async with open_host_pollers(backend):
                pass
