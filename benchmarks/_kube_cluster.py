"""The cluster of suite ``kubernetes``: started on first use, stopped at exit; what the suite
asks of it outside corra (namespaces, clean-ups, the apiserver's request counts).

Everything here goes through a client of its own (`admin`), never through corra's, so that
nothing of it is counted as corra's requests by `corra.backends.kubernetes._client.Cluster`;
the apiserver counts it, but in series that `corra_requests` leaves out (``GET /metrics``
has no resource; the clean-ups are deletes, which corra does not make while measured).
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from lightkube import AsyncClient, KubeConfig
from lightkube.core import generic_client
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.types import CascadeType

from corra.backends.kubernetes import KubernetesHostOptions
from corra.backends.ssh import HostConfig
from tests import _kube

#: The cluster's ``[hosts.NAME]``.
HOST = "kube"
#: API writes per second (and burst) of corra's token bucket: wide open, see the suite's doc.
WIDE_OPEN = 100_000

_CLUSTER: list[_kube.KubeCluster] = []

#: One sample of ``apiserver_request_total``: its labels and count.
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
#: What lightkube asks for and gets (the controllers and the scheduler speak protobuf).
_JSON = "application/json"


def unavailable() -> str | None:
    """Why the suite cannot have a cluster here, or None."""
    reason = _kube.unbuildable()
    if reason is not None:
        return reason
    if not _kube.built():
        return "kube-apiserver not built on this machine: run scripts/kube-test-cluster.sh build"
    return None


def cluster() -> _kube.KubeCluster:
    """The suite's cluster (control plane and stand-in node), started on first use."""
    if not _CLUSTER:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(f"suite kubernetes needs a cluster: {reason}")
        scratch = Path(tempfile.mkdtemp(prefix="corra-bench-kube-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # runs after the stop
        started = time.perf_counter()
        running = _kube.KubeCluster(scratch / "cluster").start()
        atexit.register(running.stop)
        print(
            f"kubernetes suite: cluster up in {time.perf_counter() - started:.1f} s ({scratch})",
            file=sys.stderr,
        )
        _CLUSTER.append(running)
    return _CLUSTER[0]


def scratch() -> Path:
    """The suite's scratch dir (state dirs, the programs' marks)."""
    return cluster().scratch.parent


def host(namespace: str, **options: object) -> HostConfig:
    """The cluster as a ``[hosts.NAME]`` with ``transport = "kubernetes"``, its write bucket
    wide open (`WIDE_OPEN`), Jobs going to ``namespace``."""
    settings = KubernetesHostOptions(
        kubeconfig=str(cluster().kubeconfig),
        namespace=namespace,
        image="busybox",
        writes_per_second=WIDE_OPEN,
        write_burst=WIDE_OPEN,
        **options,  # type: ignore[arg-type]
    )
    return HostConfig(name=HOST, transport="kubernetes", options={"kubernetes": settings})


@contextlib.asynccontextmanager
async def admin() -> AsyncIterator[AsyncClient]:
    """A client of the suite's own (the kubeconfig's admin), not corra's."""
    # (deleting 1,000 Jobs at once takes longer than lightkube's default of 10 s)
    timeout = generic_client.httpx.Timeout(120.0)
    async with AsyncClient(KubeConfig.from_file(cluster().kubeconfig), timeout=timeout) as client:
        yield client


async def make_namespace(client: AsyncClient, name: str) -> None:
    with contextlib.suppress(ApiError):  # (exists: made by an earlier round)
        await client.create(Namespace.from_dict({"metadata": {"name": name}}))


async def count(client: AsyncClient, kind: type, namespace: str) -> int:
    return len([item async for item in client.list(kind, namespace=namespace)])


async def empty(client: AsyncClient, namespace: str, patience: float = 120.0) -> None:
    """Delete every Job and pod of ``namespace`` at once, and wait until they are gone."""
    with trio.fail_after(patience):
        while True:
            await client.deletecollection(
                Job, namespace=namespace, cascade=CascadeType.BACKGROUND, grace_period=0
            )
            await client.deletecollection(Pod, namespace=namespace, grace_period=0)
            if not await count(client, Job, namespace) and not await count(client, Pod, namespace):
                return
            await trio.sleep(0.5)


async def settled(client: AsyncClient, namespace: str, jobs: int, patience: float) -> None:
    """Wait until ``namespace`` holds ``jobs`` Jobs and as many pods (the Job controller
    makes one pod per Job, about 20 a second)."""
    with trio.fail_after(patience):
        while True:
            if await count(client, Job, namespace) == jobs == await count(client, Pod, namespace):
                return
            await trio.sleep(1.0)


async def corra_requests(client: AsyncClient) -> Counter[str]:
    """The apiserver's own count of requests (``apiserver_request_total``, from its
    ``/metrics``) that could be corra's: JSON requests for Jobs and pods, but for the pods'
    ``status`` (only the stand-in node writes it), by ``"VERB resource[/subresource]"``.

    The apiserver counts a request once it is answered, a watch once it ends. The metric has
    no label for the client: the controllers and the scheduler are left out by their content
    type (protobuf), the stand-in node by what it asks for (its pod watch is cluster-wide,
    its writes are ``pods/status``, ``nodes`` and ``leases``): see ``corra_scope``.
    """
    response = await client._client._client.get("/metrics")
    response.raise_for_status()
    counts: Counter[str] = Counter()
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if corra_scope(labels):
            what = labels["resource"] + (
                f"/{labels['subresource']}" if labels["subresource"] else ""
            )
            counts[f"{labels['verb']} {what}"] += int(float(match["value"]))
    return counts


def corra_scope(labels: dict[str, str]) -> bool:
    """Whether a series of ``apiserver_request_total`` counts requests corra may make."""
    return (
        labels.get("component") == "apiserver"
        and labels.get("contentType", "").startswith(_JSON)
        and labels.get("resource") in ("jobs", "pods")
        and labels.get("subresource") != "status"
        and labels.get("scope") != "cluster"
    )
