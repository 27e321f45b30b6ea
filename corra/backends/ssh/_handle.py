"""The handle of a program on a host (`SshProgramBackend`), kept in the process snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from corra.processes._backend import optional_field


@attrs.frozen
class RemoteHandle:
    """Where a program launched on a host is: the remote helper's view of its run dir, and
    what its wait needs (kept in the process snapshot, its stored form unchanged from the
    JSON objects of before: `find` gives no output fields, and neither did older launches).
    """

    host: str
    key: str
    run_dir: str
    chaperone_pid: int | None
    chaperone_start: int | None
    """Field 22 of the chaperone's /proc/<pid>/stat: tells it from a later process."""
    pid: int | None
    """The program's pid (None while it is being started, or if it never started)."""
    program_start: int | None
    started_at: float | None
    """When the program started (epoch seconds, the host's clock)."""
    outputs: tuple[str, ...] = optional_field(())
    """Globs of the files fetched home after the exit (`corra.backends._staging`)."""
    outputs_to: str | None = optional_field(None)
    work_dir: str | None = optional_field(None)
    output_limit: int | None = optional_field(None)
    """Bytes kept of each stream; None: the backend's (a found handle, an older launch)."""

    @classmethod
    def of(cls, host: str, key: str, remote: Mapping[str, Any], **more: Any) -> RemoteHandle:
        """The handle of ``key`` on ``host`` from what the remote helper says of its run dir
        (`corra.chaperone.remote_helper`), with ``more`` of its fields."""
        return cls(
            host=host,
            key=key,
            run_dir=remote["run_dir"],
            chaperone_pid=remote.get("chaperone_pid"),
            chaperone_start=remote.get("chaperone_start"),
            pid=remote.get("pid"),
            program_start=remote.get("program_start"),
            started_at=remote.get("started_at"),
            **more,
        )
