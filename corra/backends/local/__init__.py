"""The local backend: programs on this machine, each under a detached chaperone.

By default one chaperone serves the whole root (``chaperone="shared"``, `_shared`); with
``chaperone="own"`` every program gets its own (`_clients.OwnClient`). Either way everything
about a program is also in files in its run dir ``root/<key>`` (`corra.chaperone._rundir`),
so any runtime, this one or the next after a crash, can find it by key, wait for it, read its
logs and kill it (`_rundirs`). Handles say which kind of chaperone watches the program.

- `_backend.LocalBackend`: launch, find, wait, kill, read_log (`corra.processes._backend.
  Backend`), and its rules;
- `_clients`, `_shared`: the two kinds of chaperone, behind one `ChaperoneClient` protocol;
- `_rundirs`: the `Handle`, and what a run dir says without any chaperone's help;
- `_orphans`: killing a program whose chaperone is gone;
- `_slots`: how many programs run at once;
- `_cgroups`: which cgroups this machine offers, and where ours go.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from corra.backends.local._backend import ChaperoneKind, LocalBackend
from corra.backends.local._cgroups import CgroupSupport
from corra.backends.local._rundirs import Handle, find_launch, log_file, read_status
from corra.backends.local._slots import SlotStatistics
from corra.processes._backend import BackendContext

__all__ = [
    "RUNS",
    "CgroupSupport",
    "ChaperoneKind",
    "Handle",
    "LocalBackend",
    "SlotStatistics",
    "find_launch",
    "log_file",
    "open_local",
    "read_status",
]

#: Under the state dir: the run dirs of local programs (one per attempt).
RUNS = "runs"


@contextlib.asynccontextmanager
async def open_local(context: BackendContext) -> AsyncIterator[LocalBackend]:
    """Local programs under chaperones, run dirs in ``<state dir>/runs``: the plug-in's
    ``open`` (`corra.backends.plugins.LOCAL`)."""
    async with LocalBackend(
        context.state_dir / RUNS,
        max_running=context.max_running,
        output_limit=context.output_limit,
        statuses=context.statuses,
        status_interval=context.status_interval,
    ) as backend:
        yield backend
