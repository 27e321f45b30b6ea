"""What the end-to-end tests of the kubernetes backend share (tests/test_kubernetes*.py):
the test cluster seen through its API (a namespace per test, what is left in it, the
apiserver's request counts from /metrics), and corra driven through its command line (a
job file with the cluster as host ``kube``, `corra run --json`, `show`, `logs`, `serve`).

The fixtures here (``client``, ``namespace``, ``metrics``) are imported by the test modules.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import _kube
import httpx
import pytest
import trio

# (re-exported: the kubernetes tests import them from here)
from _cli import CORRA as CORRA
from _cli import corra as corra
from _cli import records_of as records_of
from _cli import run as run
from _cli import toml as toml
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod

HOST = "kube"
#: The labels of the apiserver's ``apiserver_request_total`` a count is kept by.
METRIC_LABELS = ("verb", "resource", "subresource", "scope", "contentType", "code")


# -- the cluster, seen through its API --------------------------------------------------------


async def job_names(client: AsyncClient, namespace: str) -> list[str]:
    return sorted([job.metadata.name async for job in client.list(Job, namespace=namespace)])


async def pod_names(client: AsyncClient, namespace: str) -> list[str]:
    return sorted([pod.metadata.name async for pod in client.list(Pod, namespace=namespace)])


async def eventually(check: Any, within: float = 15) -> Any:
    """``await check()`` until it is true; its value."""
    with trio.fail_after(within):
        while not (value := await check()):
            await trio.sleep(0.1)
    return value


async def nothing_left(client: AsyncClient, namespace: str, within: float = 15) -> None:
    """No Job and no pod in the namespace (within ``within`` seconds)."""

    async def empty() -> bool:
        return not await job_names(client, namespace) and not await pod_names(client, namespace)

    try:
        await eventually(empty, within)
    except trio.TooSlowError:
        jobs, pods = await job_names(client, namespace), await pod_names(client, namespace)
        raise AssertionError(f"left behind: Jobs {jobs}, pods {pods}") from None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_of(pod: Any) -> int:
    """The program the stand-in node runs for ``pod`` (its container id)."""
    return int(pod.status.containerStatuses[0].containerID.removeprefix("corra-test://"))


async def running_pod(client: AsyncClient, namespace: str, within: float = 20) -> Any:
    """A pod of the namespace whose container runs, once there is one."""

    async def found() -> Any:
        pods = [pod async for pod in client.list(Pod, namespace=namespace)]
        for pod in pods:
            statuses = pod.status.containerStatuses if pod.status else None
            if statuses and statuses[0].state.running is not None:
                return pod
        return None

    return await eventually(found, within)


@pytest.fixture
async def metrics(kube: _kube.KubeCluster) -> AsyncIterator[Any]:
    """``await metrics()``: the apiserver's ``apiserver_request_total`` counts, by
    (verb, resource, subresource, scope, content type, code)."""
    config = KubeConfig.from_file(kube.kubeconfig).get()
    headers = {"Authorization": f"Bearer {config.user.token}"}
    async with httpx.AsyncClient(
        base_url=config.cluster.server, headers=headers, verify=False, timeout=30
    ) as api:

        async def read() -> dict[tuple[str, ...], float]:
            text = (await api.get("/metrics")).text
            counts = {}
            for line in text.splitlines():
                if not line.startswith("apiserver_request_total{"):
                    continue
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
                key = tuple(labels.get(name, "") for name in METRIC_LABELS)
                counts[key] = float(line.rsplit(" ", 1)[1])
            return counts

        yield read


def requests_between(
    before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float], **match: str
) -> int:
    """The requests counted between two reads of `metrics` whose labels match ``match``
    (``verb``, ``resource``, ``subresource``, ``scope``, ``contentType``, ``code``)."""
    total = 0.0
    for key, count in after.items():
        labels = dict(zip(METRIC_LABELS, key, strict=True))
        if all(labels[name] == value for name, value in match.items()):
            total += count - before.get(key, 0.0)
    return int(total)


# -- corra through its command line ------------------------------------------------------------


def job_file(
    path: Path,
    kube: _kube.KubeCluster,
    namespace: str,
    processes: Iterable[dict[str, Any]],
    **host_options: Any,
) -> Path:
    """A job file with the test cluster as host ``kube`` (namespace ``namespace``) and
    ``processes`` (each a ``[[process]]`` table; backend and host filled in)."""
    cluster = {
        "kubeconfig": str(kube.kubeconfig),
        "namespace": namespace,
        "image": "busybox",
        **host_options,
    }
    lines = [f"[hosts.{HOST}]", 'transport = "kubernetes"', f"kubernetes = {toml(cluster)}"]
    for process in processes:
        lines.append("[[process]]")
        for field, value in {"backend": "kubernetes", "host": HOST, **process}.items():
            lines.append(f"{field} = {toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


class Beside:
    """A corra command run in the background (in ``nursery``): ``done`` once it ended."""

    def __init__(self, nursery: trio.Nursery, state: Path, *args: str, within: float = 90):
        self.done: subprocess.CompletedProcess | None = None
        self.ended = trio.Event()

        async def run() -> None:
            self.done = await corra(state, *args, within=within)
            self.ended.set()

        nursery.start_soon(run)

    def records(self) -> dict[str, dict[str, Any]]:
        """The final records it printed (``corra run --json``), by name."""
        assert self.done is not None
        return records_of(self.done)


async def show(state: Path, name: str) -> dict[str, Any]:
    shown = await corra(state, "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


async def logs(state: Path, name: str) -> str:
    read = await corra(state, "logs", name)
    assert read.returncode == 0, read.stderr
    return read.stdout.decode()


async def start_service(state: Path) -> Any:
    """``corra serve`` on ``state`` (a trio process), once it listens."""
    process = await trio.lowlevel.open_process(
        [*CORRA, "serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    said = b""
    with trio.fail_after(60):
        while b"listening on" not in said:
            chunk = await process.stdout.receive_some()
            assert chunk, f"corra serve ended: {said!r}"
            said += chunk
    return process


async def wait_ready(client: AsyncClient, within: float = 30) -> None:
    """Until the test node is Ready again with no taint (for the tests after)."""

    async def ready() -> bool:
        node = await client.get(Node, _kube.NODE)
        conditions = {c.type: c.status for c in node.status.conditions}
        return conditions.get("Ready") == "True" and not node.spec.taints

    await eventually(ready, within)


def corra_requests(before: Any, after: Any, **match: str) -> int:
    """What corra asked of the apiserver between two reads of `metrics`, as far as it can be
    told from them: requests in JSON (the controllers speak protobuf) at namespace or object
    scope (the stand-in node lists and watches its pods cluster-wide); the resource itself
    unless ``subresource`` is given."""
    match.setdefault("subresource", "")
    return sum(
        requests_between(before, after, contentType="application/json", scope=scope, **match)
        for scope in ("namespace", "resource")
    )


def compact_etcd(kube: _kube.KubeCluster) -> None:
    """Compact the cluster's etcd up to its current revision."""
    etcd = f"http://127.0.0.1:{(kube.scratch / 'etcd.port').read_text().strip()}"
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    status = subprocess.run(
        ["etcdctl", "--endpoints", etcd, "endpoint", "status", "-w", "json"],
        capture_output=True,
        check=True,
        env=env,
    )
    revision = json.loads(status.stdout)[0]["Status"]["header"]["revision"]
    subprocess.run(
        ["etcdctl", "--endpoints", etcd, "compact", str(revision)],
        capture_output=True,
        check=True,
        env=env,
    )


async def jobs_at_least(client: AsyncClient, namespace: str, count: int) -> bool:
    return len(await job_names(client, namespace)) >= count


async def pods_at_least(client: AsyncClient, namespace: str, count: int) -> bool:
    return len(await pod_names(client, namespace)) >= count
