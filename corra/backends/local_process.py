"""The local backend as a process actor sees it (`corra.processes._backend.Backend`).

`LocalBackend` speaks in its own values (`LaunchSpec`, `Handle`, `ExitRecord`); this adapter
turns a `LaunchRequest` into a launch, a handle into the JSON-able mapping kept in the process
snapshot, and an exit record into the lifecycle's `Result`.

Every program learns who it is from its environment (`LaunchRequest.environment`):
``CORRA_PROCESS_ID``, ``CORRA_PROCESS_NAME`` and ``CORRA_ATTEMPT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import trio

from corra.backends.local import (
    ChaperoneKind,
    ExitRecord,
    Handle,
    LaunchSpec,
    LocalBackend,
    _pread,
)
from corra.processes._backend import BackendBase, Capabilities, EffectKey, LaunchRequest
from corra.processes._lifecycle import Result
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT


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


class LocalProcessBackend(BackendBase):
    """Local programs under chaperones, for process actors (see `LocalBackend` for the
    options). Use it as ``async with``, as `LocalBackend`."""

    capabilities = Capabilities(slots=True, log_size=True)
    handle_type = Handle

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

    async def __aenter__(self) -> LocalProcessBackend:
        await self.backend.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.backend.__aexit__(*exc_info)

    async def acquire_slot(self, key: EffectKey) -> None:
        await self.backend.acquire_slot(str(key))

    def try_acquire_slot(self, key: EffectKey) -> bool:
        return self.backend.try_acquire_slot(str(key))

    def release_slot(self, key: EffectKey) -> None:
        self.backend.release_slot(str(key))

    def adopt_slot(self, key: EffectKey) -> None:
        self.backend.adopt_slot(str(key))

    async def launch(self, request: LaunchRequest) -> Handle:
        limits = request.limits
        launch = LaunchSpec(
            argv=request.argv,
            cwd=request.cwd,
            env=request.environment(),
            timeout=limits.timeout,
            kill_grace=limits.kill_grace,
            memory_limit=limits.memory,
            pids_limit=limits.pids,
            output_limit=limits.output,
        )
        return await self.backend.launch(str(request.key), launch)

    async def find(self, key: EffectKey, host: str | None = None) -> Handle | None:
        return await trio.to_thread.run_sync(self.backend.find, str(key))

    async def wait(self, handle: Handle) -> Result:
        record = await self.backend.wait(handle)
        result = result_of(record)
        assert result is not None
        return result

    async def kill(self, handle: Handle, grace: float) -> Result | None:
        return result_of(await self.backend.kill(handle, grace))

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        path = log_file(self.root, str(key), stream)
        if path is None:
            return b""
        return await trio.to_thread.run_sync(_pread, path, offset, size)

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int:
        """How many bytes of ``stream`` the program of ``key`` has written (0 before any)."""
        path = log_file(self.root, str(key), stream)
        if path is None:
            return 0
        return await trio.to_thread.run_sync(_file_size, path)
