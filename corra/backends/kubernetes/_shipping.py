"""Each attempt's log brought home in the background, from its launch to its end.

One task per attempt whose log is not home yet, owned by the backend's nursery (not by
`wait`: a program's output comes home whether or not anybody waits for it, and `corra logs
-f` follows it): started by a launch, and by a find after a restart; awaited by the wait and
the kill of the attempt, which give their result once the log is home (or cannot be: its pod
is gone). The task waits on the namespace's watch until the attempt's pod has run, then
follows the pod's log (`_logs.ship_logs`) until the container ended and all it wrote is home.

The status sidecar's log (`corra.backends.kubernetes._manifest.STATUS_CONTAINER`: the lines
the program appends to ``$CORRA_STATUS``) comes home the same way, into a directory of its
own, until that container ended, or the backend stops it (`stop`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from corra._errors import BackendError
from corra.backends.kubernetes._client import Cluster, read_job
from corra.backends.kubernetes._logs import LogFiles, ship_logs
from corra.backends.kubernetes._manifest import CONTAINER, STATUS_CONTAINER
from corra.backends.kubernetes._outcomes import classify
from corra.backends.kubernetes._watch import NamespaceWatch

logger = logging.getLogger("corra.backend.kubernetes")

#: The states in which a pod has a log to bring home.
STARTED: Final = frozenset({"running", "succeeded", "failed", "out_of_memory", "deadline"})
#: Between two looks at a Job the watch has not seen yet.
UNSEEN_PAUSE: Final = 2.0


class LogShipping:
    """The attempts whose logs are on their way home.

    Args:
        nursery: where the shipping tasks run (the backend's).
        watch_of: the watch of a host (started if need be).
        cluster_of: the open cluster of a host (once its watch is).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        watch_of: Callable[[str], Awaitable[NamespaceWatch]],
        cluster_of: Callable[[str], Cluster],
    ) -> None:
        self._nursery = nursery
        self._watch_of = watch_of
        self._cluster_of = cluster_of
        self._shipping: dict[str, trio.Event] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    def ship(self, handle: Any, logs: LogFiles, container: str = CONTAINER) -> trio.Event:
        """Bring the log of ``container`` of the attempt ``handle`` (a `KubeHandle`) home
        into ``logs``, once: the event is set once it is home, or cannot come home (or its
        shipping was stopped)."""
        name = _name(handle.key, container)
        done = self._shipping.get(name)
        if done is None:
            done = self._shipping[name] = trio.Event()
            self._nursery.start_soon(self._ship, handle, logs, done, container)
        return done

    def stop(self, key: str, container: str = CONTAINER) -> None:
        """Stop bringing the log of ``container`` of the attempt ``key`` home (a pause:
        corra stops watching; a later `ship` resumes from where this one was)."""
        scope = self._scopes.get(_name(key, container))
        if scope is not None:
            scope.cancel()

    async def _ship(self, handle: Any, logs: LogFiles, done: trio.Event, container: str) -> None:
        with trio.CancelScope() as self._scopes[_name(handle.key, container)]:
            await self._ship_until_home(handle, logs, done, container)

    async def _ship_until_home(
        self, handle: Any, logs: LogFiles, done: trio.Event, container: str
    ) -> None:
        try:
            if logs.complete:
                return
            watch = await self._watch_of(handle.host)
            cluster = self._cluster_of(handle.host)
            unseen = 0
            while True:  # (until its pod has run, or its Job is gone)
                job, pods = watch.view(handle.job)
                if pods and classify(job, pods[0], deleting=True).state in STARTED:
                    break
                # (a Job just created reaches the watch within moments: asked for only when
                # the watch has not seen it for a while, or no more)
                if job is None and unseen and await read_job(cluster, handle.job) is None:
                    return
                unseen = unseen + 1 if job is None else 0
                with trio.move_on_after(UNSEEN_PAUSE if job is None else math.inf):
                    await watch.changed(handle.job)
            name = pods[0]["metadata"]["name"]

            def ended() -> bool:
                job, pods = watch.view(handle.job)
                mine = [pod for pod in pods if pod["metadata"]["name"] == name]
                if container != CONTAINER:
                    return not mine or container_ended(mine[0], container)
                return not mine or classify(job, mine[0], deleting=True).ended

            await ship_logs(
                cluster.client, handle.namespace, name, logs, container=container, ended=ended
            )
        except BackendError as exc:
            logger.warning("attempt %s: its log stopped coming home: %s", handle.key, exc)
        finally:
            done.set()
            shipping = _name(handle.key, container)
            if self._shipping.get(shipping) is done:
                del self._shipping[shipping]
                del self._scopes[shipping]


def _name(key: str, container: str) -> str:
    """What a shipping is known by: the attempt's key, and its container unless ``main``."""
    return key if container == CONTAINER else f"{key}/{container}"


def container_ended(pod: dict[str, Any], container: str = STATUS_CONTAINER) -> bool:
    """Whether ``container`` of ``pod`` (an init container or not) has terminated, or the
    pod has: all its containers have."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    entries = [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]
    for entry in entries:
        if entry.get("name") == container:
            return bool((entry.get("state") or {}).get("terminated"))
    return False
