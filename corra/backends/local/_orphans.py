"""Killing a program whose chaperone is gone (killed, or lost with its machine's reboot).

Nobody else will: the chaperone's escalation (`corra.chaperone._run.Run`: TERM to the group,
KILL once the grace is over) is driven from here, the group's members are looked at in a
worker thread, and what is left in the program's cgroups is killed and the cgroups removed.
"""

from __future__ import annotations

import math
import os

import trio

from corra.backends.local._rundirs import (
    POLL_FIRST,
    POLL_MAX,
    Handle,
    chaperone_alive,
    group_members,
    spec_of,
)
from corra.chaperone import protocol
from corra.chaperone._cgroups import CGROUP_DRAIN, Cgroups
from corra.chaperone._run import Run


def spec_grace(handle: Handle) -> float:
    """The grace the chaperone would have given: the spec's, else its default. Blocking."""
    try:
        return float(spec_of(handle).get("kill_grace", protocol.DEFAULT_GRACE))
    except (TypeError, ValueError):
        return protocol.DEFAULT_GRACE


async def kill_orphaned(handle: Handle, grace: float, cgroups: list[str]) -> None:
    """TERM the program's group, KILL it after ``grace`` seconds if it is still there, then
    kill and remove its cgroups (those its spec names, and ``cgroups``: where the backend
    would have made them, as the spec may not have been written yet)."""
    run = Run(handle.run_dir, grace)
    run.pid = handle.pid
    if await trio.to_thread.run_sync(group_members, handle):
        run.kill(trio.current_time(), grace)
        delay = POLL_FIRST
        while run.escalate_at != math.inf and await trio.to_thread.run_sync(group_members, handle):
            now = trio.current_time()
            if now >= run.escalate_at:
                run.escalate(now)  # SIGKILL: the grace is over
                break
            await trio.sleep(min(delay, run.escalate_at - now))
            delay = min(delay * 2, POLL_MAX)
        if run.escalate_at == math.inf:
            delay = POLL_FIRST
            with trio.move_on_after(CGROUP_DRAIN):
                while await trio.to_thread.run_sync(group_members, handle):
                    await trio.sleep(delay)  # SIGKILLed, but not dead yet
                    delay = min(delay * 2, POLL_MAX)
    await trio.to_thread.run_sync(_kill_cgroups, handle, cgroups)


def _kill_cgroups(handle: Handle, candidates: list[str]) -> None:
    """SIGKILL whatever is left in the program's cgroups, and remove them: those its spec
    names and the ``candidates``. Blocking."""
    paths = [entry["path"] for entry in spec_of(handle).get("cgroups") or []] + candidates
    # A live shared chaperone reuses the cgroups of programs that have ended: not those.
    if handle.cgroup is not None and not (handle.shared and chaperone_alive(handle)):
        paths.append(handle.cgroup)
    cgroups = Cgroups([])
    cgroups.entries = [(path, {}) for path in dict.fromkeys(paths) if os.path.isdir(path)]
    cgroups.kill()
    cgroups.remove()
