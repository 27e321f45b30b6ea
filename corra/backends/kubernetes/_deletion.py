"""Deleting an attempt's Job: at once, or until nothing of it runs.

A kill, a timeout, an image or configuration error, a node failure, and ``corra rm`` delete
the Job with foreground propagation and its pods with the grace asked for, then wait (on the
namespace's watch) until the Job and its pods are gone: nothing is left running. Where the
pods do not go (a lost node never confirms), they are deleted at once after the grace and
`KILL_PATIENCE`. A finished Job whose result and logs are home is deleted without waiting.
Every deletion takes a token of the cluster's write bucket; what is gone already is done.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any, Final

import trio
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType

from corra.backends.kubernetes._client import Cluster
from corra.backends.kubernetes._outcomes import AttemptView, classify
from corra.backends.kubernetes._watch import NamespaceWatch

logger = logging.getLogger("corra.backend.kubernetes")

#: Beyond a kill's grace, how long pods may take to go before they are deleted at once.
KILL_PATIENCE: Final = 30.0


async def delete_job(cluster: Cluster, job: str, *, wait: bool = False) -> None:
    """Delete the Job ``job`` (gone already: done); ``wait``: with foreground propagation
    (the Job stays, being deleted, until its pods are gone), else in the background."""
    cascade = CascadeType.FOREGROUND if wait else CascadeType.BACKGROUND
    await cluster.write_slot()
    with contextlib.suppress(_NotFound), _found(), cluster.errors("deleting a Job"):
        await cluster.client.delete(Job, job, namespace=cluster.namespace, cascade=cascade)


async def delete_attempt(
    cluster: Cluster, watch: NamespaceWatch, job: str, grace: float | None
) -> AttemptView | None:
    """Delete the Job ``job`` (foreground) and its pods (with ``grace`` seconds, None: their
    own), and wait until they are gone; the last view of the attempt that ended (or None).
    The caller says the deletion is its own (`classify`'s ``deleting``) meanwhile."""
    await delete_job(cluster, job, wait=True)
    last = None
    for pod in watch.view(job)[1]:
        await _delete_pod(cluster, pod, grace)
    with trio.move_on_after((grace or 0) + KILL_PATIENCE) as patience:
        while True:
            found, pods = watch.view(job)
            if pods:
                view = classify(found, pods[0], deleting=True)
                last = view if view.ended else last
            elif found is None:
                break
            await watch.changed(job)
    if patience.cancelled_caught:
        logger.warning(
            "Job %s/%s: its pods did not go within %.0f s; deleting them at once",
            cluster.namespace,
            job,
            (grace or 0) + KILL_PATIENCE,
        )
        for pod in watch.view(job)[1]:
            await _delete_pod(cluster, pod, 0)
    return last


async def _delete_pod(cluster: Cluster, pod: dict[str, Any], grace: float | None) -> None:
    name = pod["metadata"]["name"]
    await cluster.write_slot()
    seconds = None if grace is None else math.ceil(grace)
    with contextlib.suppress(_NotFound), _found(), cluster.errors("deleting a pod"):
        await cluster.client.delete(Pod, name, namespace=cluster.namespace, grace_period=seconds)


class _NotFound(Exception):
    pass


@contextlib.contextmanager
def _found() -> Iterator[None]:
    """A 404 of the API as `_NotFound` (what is gone need not be deleted)."""
    try:
        yield
    except ApiError as exc:
        if exc.status.code == 404:
            raise _NotFound from exc
        raise
