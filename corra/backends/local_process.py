"""The local backend as a process actor sees it (`corra.processes._ports.Backend`).

`LocalBackend` speaks in its own values (`LaunchSpec`, `Handle`, `ExitRecord`); this adapter
turns a `ProcessSpec` into a launch, a handle into the JSON-able mapping kept in the process
snapshot, and an exit record into the lifecycle's `Result`.

Every program learns who it is from its environment: ``CORRA_PROCESS_ID``,
``CORRA_PROCESS_NAME`` and ``CORRA_ATTEMPT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from corra.backends.local import (
    ChaperoneKind,
    ExitRecord,
    Handle,
    LaunchSpec,
    LocalBackend,
    _pread,
)
from corra.processes._lifecycle import Result
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, ProcessSpec


def log_file(root: Path, key: str, stream: str) -> Path | None:
    """Where the program of ``key`` writes ``stream``, under the run dirs' ``root``."""
    if stream not in ("stdout", "stderr") or "/" in key or key.startswith("."):
        return None
    return root / key / stream


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def result_of(record: ExitRecord | None) -> Result | None:
    if record is None:
        return None
    error = record.error
    if error is None and record.oom_killed:
        error = "killed by the kernel's OOM killer (memory limit)"
    return Result(
        returncode=record.returncode,
        signal=record.signal,
        started_at=record.started_at,
        ended_at=record.ended_at,
        utime=record.utime,
        stime=record.stime,
        maxrss_kb=None if record.maxrss is None else record.maxrss // 1024,
        stdout_bytes=record.stdout_size,
        stderr_bytes=record.stderr_size,
        timed_out=record.timed_out,
        killed=record.killed,
        error=error,
        stdout_dropped=record.stdout_dropped,
        stderr_dropped=record.stderr_dropped,
    )


class LocalProcessBackend:
    """Local programs under chaperones, for process actors (see `LocalBackend` for the
    options)."""

    def __init__(
        self,
        root: Path,
        *,
        max_running: int | None = None,
        cgroups: Literal["auto", "off"] = "auto",
        chaperone: ChaperoneKind = "shared",
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.root = Path(root)
        self.backend = LocalBackend(
            self.root,
            max_running=max_running,
            cgroups=cgroups,
            chaperone=chaperone,
            output_limit=output_limit,
        )

    async def aclose(self) -> None:
        """Close the connection to the shared chaperone; programs keep running."""
        await self.backend.aclose()

    async def acquire_slot(self, key: str) -> None:
        await self.backend.acquire_slot(key)

    def try_acquire_slot(self, key: str) -> bool:
        return self.backend.try_acquire_slot(key)

    def release_slot(self, key: str) -> None:
        self.backend.release_slot(key)

    def adopt_slot(self, key: str) -> None:
        self.backend.adopt_slot(key)

    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        process_id, _, attempt = key.rpartition(".")
        env = {
            **spec.env,
            "CORRA_PROCESS_ID": process_id,
            "CORRA_PROCESS_NAME": spec.name or process_id,
            "CORRA_ATTEMPT": attempt,
        }
        launch = LaunchSpec(
            argv=spec.argv,
            cwd=spec.cwd,
            env=env,
            timeout=spec.timeout,
            kill_grace=spec.kill_grace,
            memory_limit=spec.memory_limit,
            pids_limit=spec.pids_limit,
            output_limit=spec.output_limit,
        )
        handle = await self.backend.launch(key, launch)
        return attrs.asdict(handle)

    async def find(self, key: str, host: str | None = None) -> dict[str, Any] | None:
        handle = await trio.to_thread.run_sync(self.backend.find, key)
        return None if handle is None else attrs.asdict(handle)

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        record = await self.backend.wait(Handle(**handle))
        result = result_of(record)
        assert result is not None
        return result

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        return result_of(await self.backend.kill(Handle(**handle), grace))

    async def read_log(
        self, key: str, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        path = log_file(self.root, key, stream)
        if path is None:
            return b""
        return await trio.to_thread.run_sync(_pread, path, offset, size)

    async def log_size(self, key: str, stream: str, host: str | None = None) -> int:
        """How many bytes of ``stream`` the program of ``key`` has written (0 before any)."""
        path = log_file(self.root, key, stream)
        if path is None:
            return 0
        return await trio.to_thread.run_sync(_file_size, path)
