"""The local backend driven by key and spec, with each end as its chaperone recorded it.

`LocalBackend` is a `corra.processes._backend.Backend`: a `LaunchRequest` in, a `Handle` out,
a `Result` at the end. Its tests say what they run as a `Spec` under a key, and look at the
`ExitRecord` (the whole of exit.json: ``oom_killed``, ``maxrss`` in bytes), which the
backend's ``wait_record`` and ``kill_record`` return (``wait`` and ``kill`` are their
`result_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from corra.backends._exits import ExitRecord
from corra.backends.local import Handle, LocalBackend, find_launch
from corra.processes._backend import EffectKey, LaunchRequest, Limits


@attrs.frozen
class Spec:
    """What to run (the fields of a `ProcessSpec` the local backend uses)."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    timeout: float | None = None
    kill_grace: float = 10.0
    memory_limit: int | None = None
    pids_limit: int | None = None
    output_limit: int | None = None

    def request(self, key: str) -> LaunchRequest:
        """The request the process actor would build for this spec under ``key``."""
        return LaunchRequest(
            key=EffectKey.parse(key),
            argv=tuple(self.argv),
            cwd=self.cwd,
            env=dict(self.env),
            limits=Limits(
                timeout=self.timeout,
                kill_grace=self.kill_grace,
                memory=self.memory_limit,
                pids=self.pids_limit,
                output=self.output_limit,
            ),
        )


class Local:
    """A `LocalBackend` (same arguments), driven by key and `Spec`; everything else is the
    backend's own."""

    def __init__(self, root: Path | str, **options: Any) -> None:
        self.backend = LocalBackend(root, **options)

    async def __aenter__(self) -> Local:
        await self.backend.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.backend.__aexit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def launch(self, key: str, spec: Spec) -> Handle:
        return await self.backend.launch(spec.request(key))

    def find(self, key: str) -> Handle | None:
        """Blocking, as `find_launch`."""
        return find_launch(self.backend.root, key)

    async def wait(self, handle: Handle) -> ExitRecord:
        return await self.backend.wait_record(handle)

    async def kill(self, handle: Handle, grace: float | None = None) -> ExitRecord | None:
        return await self.backend.kill_record(handle, grace)

    async def read_log(self, handle: Handle, stream: str, offset: int, size: int) -> bytes:
        return await self.backend.read_log(EffectKey.parse(handle.key), stream, offset, size)

    @property
    def _daemon(self) -> Any:
        """The connection to the shared chaperone, if there is one."""
        return self.backend._shared.connected

    @property
    def _links(self) -> dict[str, Any]:
        """The pipes of the own chaperones this backend launched, until waited for."""
        return self.backend._own.links
