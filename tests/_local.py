"""The local backend driven by key and spec, with each end as its chaperone recorded it.

`LocalBackend` is a `corra.processes._backend.Backend`: a `LaunchRequest` in, a `Handle` out,
a `Result` at the end. Its tests say what they run as a `Spec` under a key, and look at the
`ExitRecord` (the whole of exit.json: ``oom_killed``, ``maxrss`` in bytes), which `Local`
reads once the backend's ``wait`` or ``kill`` has returned, checking that the backend's
`Result` is the record's (`result_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from corra.backends._exits import ExitRecord, result_of
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
        result = await self.backend.wait(handle)
        return self._record(handle, result)

    async def kill(self, handle: Handle, grace: float | None = None) -> ExitRecord | None:
        result = await self.backend.kill(handle, grace)
        return None if result is None else self._record(handle, result)

    async def read_log(self, handle: Handle, stream: str, offset: int, size: int) -> bytes:
        return await self.backend.read_log(EffectKey.parse(handle.key), stream, offset, size)

    def _record(self, handle: Handle, result: Any) -> ExitRecord:
        record = self.backend.exit_record(handle)
        assert record is not None, f"{handle.key}: a result without an exit record"
        assert result == result_of(record), (result, record)
        return record

    @property
    def _daemon(self) -> Any:
        """The connection to the shared chaperone, if there is one."""
        return self.backend._shared.connected

    @property
    def _links(self) -> dict[str, Any]:
        """The pipes of the own chaperones this backend launched, until waited for."""
        return self.backend._own.links
