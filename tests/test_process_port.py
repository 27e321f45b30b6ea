"""`ProcessPort`: a backend's way to the runtime's processes (an allocation it needs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from corra._errors import ConfigError
from corra._runtime import open_runtime
from corra.processes._convert import parse_process_spec
from corra.processes._port import ProcessPort


async def test_a_port_submits_once_by_name_reads_waits_and_kills(tmp_path: Path) -> None:
    port = ProcessPort()
    async with open_runtime(state_dir=tmp_path / "state") as runtime, trio.open_nursery() as n:
        # (a call before the port is bound waits for it)
        submitted: list[str] = []

        async def early() -> None:
            submitted.append(await port.submit({"name": "quick", "argv": ["true"]}))

        n.start_soon(early)
        await trio.sleep(0.05)
        assert submitted == [] and port.record("nosuch") is None
        port.bind(runtime.processes, parse_process_spec)
        with trio.fail_after(10):
            while not submitted:
                await trio.sleep(0.01)
        again = await port.submit({"name": "quick", "argv": ["true"]})
        assert again == submitted[0]  # (by name: never twice)
        record = await port.wait(again)
        assert record.state.phase == "finished"
        sleeper = await port.submit({"name": "sleeper", "argv": ["sleep", "60"]})
        await port.kill(sleeper)
        assert port.record(sleeper).state.phase == "killed"
        await port.kill(sleeper)  # (over already: nothing to do)
        with pytest.raises(ConfigError, match="argv"):
            await port.submit({"name": "bad", "argv": "not a list"})
