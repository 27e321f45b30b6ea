"""corra-echo passes corra's conformance kit, found the way corra finds it: by entry point."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from corra_echo import EchoHandle, EchoOptions

from corra.processes._backend import Backend, BackendPlugin, EffectKey, LaunchRequest
from corra.processes._registry import Registry
from corra.testing import BackendConformance, Opener, open_plugin


class TestEchoConformance(BackendConformance):
    @pytest.fixture
    def plugin(self) -> BackendPlugin:
        return Registry().get("echo")  # the installed entry point, not an import of ours

    @pytest.fixture
    def open_backend(self, plugin: BackendPlugin, tmp_path: Path) -> Opener:
        return lambda: open_plugin(plugin, tmp_path)

    @pytest.fixture
    def lose_program(self) -> Any:
        async def lose(backend: Backend, handle: EchoHandle) -> None:
            os.kill(handle.watcher, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.pid, signal.SIGKILL)

        return lose


@pytest.mark.trio
async def test_the_options_are_echoed_before_the_output(tmp_path: Path) -> None:
    request = LaunchRequest(
        key=EffectKey("echoed", 1), argv=("echo", "world"), options=EchoOptions(prefix="hello ")
    )
    async with open_plugin(Registry().get("echo"), tmp_path) as backend:
        with trio.fail_after(10):
            result = await backend.wait(await backend.launch(request))
        assert result.ok
        assert await backend.read_log(request.key, "stdout", 0, 100) == b"hello world\n"
