"""The conformance kit (`corra.testing`) against the local backend: real programs under real
chaperones on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from corra.processes._backend import Backend, BackendPlugin
from corra.processes._registry import installed
from corra.testing import BackendConformance, Opener, open_plugin


class TestLocalConformance(BackendConformance):
    @pytest.fixture
    def plugin(self) -> BackendPlugin:
        return installed.get("local")

    @pytest.fixture
    def open_backend(self, plugin: BackendPlugin, tmp_path: Path) -> Opener:
        return lambda: open_plugin(plugin, tmp_path / "state")

    @pytest.fixture
    def lose_program(self) -> Any:
        async def lose(backend: Backend, handle: Any) -> None:
            # The chaperone and the program die at once (an OOM kill, a reboot): nothing is
            # left to record how the program ended.
            os.kill(_field(handle, "chaperone_pid"), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(_field(handle, "pid"), signal.SIGKILL)

        return lose


def _field(handle: Any, name: str) -> Any:
    # TEMPORARY: the seam's handles are attrs classes, today's local ones mappings outside
    # the adapter; one spelling for both until the seam lands.
    return handle[name] if isinstance(handle, Mapping) else getattr(handle, name)
