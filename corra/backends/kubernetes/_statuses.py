"""An attempt's statuses: the lines its program appends to ``$CORRA_STATUS``, through the
status sidecar's log (`corra.backends.kubernetes._manifest.STATUS_CONTAINER`).

The sidecar copies the status file (an ``emptyDir`` shared with ``main``) to its log; the
backend brings that log home like the program's (`LogShipping`), into ``status/`` in the
attempt's directory, where the shared `corra.backends._follow.StatusFollower` reads it with
the one reader of status lines (`corra.chaperone._status`). No exec, no polling: one more
log stream per running attempt, and a ``GET /version`` per cluster opened.

Where the sidecar goes (`sidecar_for`): native (an init container with ``restartPolicy:
Always``, which the kubelet stops once ``main`` ended) on servers >= 1.29; a second container
on older ones, which runs until the Job is deleted: not on a host that keeps finished Jobs;
none for a process with ``status = false`` (an image without ``/bin/sh`` and ``tail``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import trio

from corra._errors import LaunchFailed
from corra.backends.kubernetes._client import Cluster
from corra.backends.kubernetes._deletion import delete_job
from corra.backends.kubernetes._logfiles import STDOUT, LogFiles
from corra.backends.kubernetes._manifest import STATUS_CONTAINER, Sidecar
from corra.backends.kubernetes._options import KubernetesOptions
from corra.backends.kubernetes._shipping import LogShipping

logger = logging.getLogger("corra.backend.kubernetes")

#: The first server version with native sidecars on by default (``SidecarContainers``).
NATIVE_SIDECARS: Final = (1, 29)
#: How long the status log of an ended attempt may take to come home (a native sidecar
#: ends within seconds of the program).
STATUS_PATIENCE: Final = 5.0
#: How long the log of a sidecar that runs on (a second container) must stay still, once
#: the program ended, to count as home (tail copies an appended line within a second).
STATUS_STILL: Final = 1.0
#: The directory of an attempt's status log, in the attempt's.
STATUS_LOGS: Final = "status"


def status_path(directory: Path) -> Path:
    """The status log at home of the attempt whose directory is ``directory``."""
    return directory / STATUS_LOGS / STDOUT


def status_logs(directory: Path) -> LogFiles:
    return LogFiles(directory / STATUS_LOGS)


async def sidecar_for(
    cluster: Cluster, options: KubernetesOptions, keep_finished: bool, told: set[str]
) -> Sidecar | None:
    """Where the status sidecar of a Job on ``cluster`` goes (see the module doc); ``told``:
    the hosts already warned of having none."""
    if not options.status:
        return None
    if cluster.native_sidecars and await cluster.server_version() >= NATIVE_SIDECARS:
        return "native"
    if not keep_finished:
        return "container"
    if cluster.host not in told:
        told.add(cluster.host)
        logger.warning(
            "host %s: statuses are not followed: its server is older than 1.29 (no native "
            "sidecars) and keeps finished Jobs (a sidecar would keep them running)",
            cluster.host,
        )
    return None


async def check_native(cluster: Cluster, created: Any, sidecar: Sidecar | None) -> None:
    """Refuse a Job just ``created`` whose native sidecar the server did not keep as one (a
    server >= 1.29 with ``SidecarContainers`` off drops its ``restartPolicy``: it would be
    an init container that never ends, and the program would never start): the Job is
    deleted (its program never ran) and the cluster's next Jobs get a second container.

    Raises:
        LaunchFailed: it was not kept (the attempt never ran).
    """
    if sidecar != "native":
        return
    spec = created.spec.template.spec
    copier = [c for c in spec.initContainers or () if c.name == STATUS_CONTAINER]
    if copier and getattr(copier[0], "restartPolicy", None) == "Always":
        return
    cluster.native_sidecars = False
    await delete_job(cluster, created.metadata.name)
    raise LaunchFailed(
        f"host {cluster.host}: the server dropped the restartPolicy of the status sidecar "
        "(native sidecars off?); the Job was deleted before its program started, and the "
        "next ones get the sidecar as a second container"
    )


def sidecar_of(job: Any) -> Sidecar | None:
    """Where the Job's status sidecar is, as its pod template says (an adopted Job)."""
    spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    if any(c.get("name") == STATUS_CONTAINER for c in spec.get("initContainers") or ()):
        return "native"
    if any(c.get("name") == STATUS_CONTAINER for c in spec.get("containers") or ()):
        return "container"
    return None


async def statuses_home(shipping: LogShipping, handle: Any, directory: Path) -> None:
    """Once the program of ``handle`` (a `KubeHandle`) ended: wait until its status log is
    home (a native sidecar's ends; a second container's counts as home once still for
    `STATUS_STILL` seconds), at most `STATUS_PATIENCE` seconds, then stop shipping it."""
    if handle.sidecar is None:
        return
    done = shipping.ship(handle, status_logs(directory), STATUS_CONTAINER)
    logs = status_logs(directory)
    with trio.move_on_after(STATUS_PATIENCE):
        if handle.sidecar == "native":
            await done.wait()
        else:
            size = -1
            while logs.size(STDOUT) != size:
                size = logs.size(STDOUT)
                await trio.sleep(STATUS_STILL)
    shipping.stop(handle.key, STATUS_CONTAINER)
