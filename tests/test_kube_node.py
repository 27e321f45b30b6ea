"""corra's stand-in Kubernetes node against a real control plane (tests/_kube.py).

The apiserver, scheduler and controllers (Job, node lifecycle, taint eviction) are real; the
node (`corra.testing.kubenode`) plays the kubelet, and pod logs are read through the
apiserver, which proxies them to the node's log endpoint.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import _kube
import httpx
import pytest
import trio
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import CascadeType

from corra.testing.kubenode import BEHAVIOUR, BEHAVIOUR_AFTER, NodeOptions, open_kube_node

pytestmark = pytest.mark.kubernetes

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"


@pytest.fixture
async def api(kube: _kube.KubeCluster) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client of the apiserver (lightkube's log() has no sinceTime)."""
    config = KubeConfig.from_file(kube.kubeconfig).get()
    headers = {"Authorization": f"Bearer {config.user.token}"}
    async with httpx.AsyncClient(
        base_url=config.cluster.server, headers=headers, verify=False, timeout=30
    ) as api:
        yield api


async def start_job(
    client: AsyncClient,
    namespace: str,
    command: str,
    *,
    annotations: dict[str, str] | None = None,
    job: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
) -> str:
    """Create a Job of one pod running ``sh -c command``; its name."""
    name = f"j-{secrets.token_hex(3)}"
    spec = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": "busybox", "command": ["sh", "-c", command]}
                    | (container or {})
                ],
            }
            | (pod or {}),
        },
    } | (job or {})
    body = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    await client.create(Job.from_dict(body))
    return name


async def wait_pod(client: AsyncClient, namespace: str, job: str, check, within: float = 20):  # type: ignore[no-untyped-def]
    """Poll the Job's pod until ``check(pod)`` is true; the pod."""
    with trio.fail_after(within):
        while True:
            pods = [
                pod async for pod in client.list(Pod, namespace=namespace, labels={"job-name": job})
            ]
            if pods and check(pods[0]):
                return pods[0]
            await trio.sleep(0.1)


async def wait_job(
    client: AsyncClient, namespace: str, job: str, kind: str, within: float = 20
) -> Any:
    """Poll until the Job has the condition ``kind`` (Complete or Failed); that condition."""
    with trio.fail_after(within):
        while True:
            found = await client.get(Job, job, namespace=namespace)
            for condition in (found.status and found.status.conditions) or ():
                if condition.type == kind and condition.status == "True":
                    return condition
            await trio.sleep(0.1)


def state(pod: Any) -> Any:
    statuses = pod.status.containerStatuses
    return statuses[0].state if statuses else None


def running(pod: Any) -> bool:
    return state(pod) is not None and state(pod).running is not None


def terminated(pod: Any) -> bool:
    return state(pod) is not None and state(pod).terminated is not None


def pid_of(pod: Any) -> int:
    return int(pod.status.containerStatuses[0].containerID.removeprefix("corra-test://"))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # (its state follows its name)


async def log(api: httpx.AsyncClient, namespace: str, pod: str, **params: str) -> httpx.Response:
    return await api.get(f"/api/v1/namespaces/{namespace}/pods/{pod}/log", params=params)


async def test_exit_code_and_log(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    job = await start_job(client, namespace, "echo hi; echo to stderr >&2; exit 3")
    condition = await wait_job(client, namespace, job, "Failed")
    assert condition.reason == "BackoffLimitExceeded"
    pod = await wait_pod(client, namespace, job, terminated)
    assert pod.status.phase == "Failed"
    assert pod.spec.nodeName == _kube.NODE
    ended = state(pod).terminated
    assert (ended.exitCode, ended.reason) == (3, "Error")
    assert ended.startedAt is not None and ended.finishedAt is not None
    response = await log(api, namespace, pod.metadata.name)
    assert response.status_code == 200
    assert response.text == "hi\nto stderr\n"


async def test_success(client: AsyncClient, namespace: str) -> None:
    job = await start_job(
        client,
        namespace,
        'test "$GREETING" = hello',
        container={"env": [{"name": "GREETING", "value": "hello"}]},
    )
    await wait_job(client, namespace, job, "Complete")
    pod = await wait_pod(client, namespace, job, terminated)
    assert pod.status.phase == "Succeeded"
    assert (state(pod).terminated.exitCode, state(pod).terminated.reason) == (0, "Completed")


async def test_follow_streams_while_running(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    job = await start_job(client, namespace, "for i in 1 2 3; do echo line $i; sleep 0.5; done")
    pod = await wait_pod(client, namespace, job, running)
    url = f"/api/v1/namespaces/{namespace}/pods/{pod.metadata.name}/log"
    # (All three options at once, as corra will resume a log: from a time, stamped.)
    since = pod.status.startTime.strftime("%Y-%m-%dT%H:%M:%SZ")
    params = {"follow": "true", "timestamps": "true", "sinceTime": since}
    arrivals = []
    async with api.stream("GET", url, params=params) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            arrivals.append((time.monotonic(), line))
    assert [line.split(" ", 1)[1] for _, line in arrivals] == ["line 1", "line 2", "line 3"]
    assert all(re.match(TIMESTAMP + " ", line) for _, line in arrivals)
    # Each line came as it was written, not all at the end.
    assert arrivals[2][0] - arrivals[0][0] > 0.7


async def test_pod_active_deadline(client: AsyncClient, namespace: str) -> None:
    # The pod's own deadline (not the Job's) is the kubelet's to enforce.
    job = await start_job(client, namespace, "sleep 1000", pod={"activeDeadlineSeconds": 1})
    pod = await wait_pod(client, namespace, job, lambda pod: pod.status.phase == "Failed")
    assert pod.status.reason == "DeadlineExceeded"
    assert not alive(pid_of(pod))


async def test_timestamps_since_time_tail_and_limit(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    job = await start_job(client, namespace, "echo a; sleep 1.3; echo b")
    await wait_job(client, namespace, job, "Complete")
    pod = (await wait_pod(client, namespace, job, terminated)).metadata.name
    stamped = (await log(api, namespace, pod, timestamps="true")).text.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["a", "b"]
    assert all(re.fullmatch(TIMESTAMP + " [ab]", line) for line in stamped)
    first = datetime.datetime.fromisoformat(stamped[0].split(" ")[0])
    # The apiserver passes sinceTime on in whole seconds: the next one after "a" (b is later).
    since = first.replace(microsecond=0) + datetime.timedelta(seconds=1)
    since_text = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await log(api, namespace, pod, sinceTime=since_text)).text == "b\n"
    assert (await log(api, namespace, pod, tailLines="1")).text == "b\n"
    assert (await log(api, namespace, pod, limitBytes="3")).text == "a\nb"


async def test_oom_killed(client: AsyncClient, namespace: str) -> None:
    plain = await start_job(client, namespace, "exit 0", annotations={BEHAVIOUR: "oom-killed"})
    real = await start_job(
        client, namespace, "exit 0", annotations={BEHAVIOUR: "oom-killed-real-exit-code"}
    )
    killed = await start_job(
        client,
        namespace,
        "echo start; sleep 100",
        annotations={BEHAVIOUR: "oom-killed", BEHAVIOUR_AFTER: "0.5"},
    )
    for job, code in ((plain, 137), (real, 0), (killed, 137)):
        pod = await wait_pod(client, namespace, job, terminated)
        assert (state(pod).terminated.reason, state(pod).terminated.exitCode) == ("OOMKilled", code)
        assert pod.status.phase == ("Succeeded" if code == 0 else "Failed")
    assert not alive(pid_of(pod))


async def test_image_pull_backoff(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    job = await start_job(
        client, namespace, "echo never", annotations={BEHAVIOUR: "image-pull-backoff"}
    )

    def waiting(reason: str):  # type: ignore[no-untyped-def]
        return lambda pod: (
            state(pod) is not None
            and state(pod).waiting is not None
            and state(pod).waiting.reason == reason
        )

    await wait_pod(client, namespace, job, waiting("ErrImagePull"))
    pod = await wait_pod(client, namespace, job, waiting("ImagePullBackOff"))
    assert pod.status.phase == "Pending"
    response = await log(api, namespace, pod.metadata.name)
    assert response.status_code == 400
    assert "is waiting to start: ImagePullBackOff" in response.text
    await client.delete(Job, job, namespace=namespace, cascade=CascadeType.FOREGROUND)
    await wait_gone(client, namespace, pod.metadata.name)


async def test_create_container_config_error(client: AsyncClient, namespace: str) -> None:
    reference = {"secretKeyRef": {"name": "missing", "key": "token"}}
    job = await start_job(
        client,
        namespace,
        "echo never",
        container={"env": [{"name": "TOKEN", "valueFrom": reference}]},
    )
    pod = await wait_pod(
        client,
        namespace,
        job,
        lambda pod: (
            state(pod) is not None
            and state(pod).waiting is not None
            and state(pod).waiting.reason == "CreateContainerConfigError"
        ),
    )
    assert state(pod).waiting.message == f"couldn't find key token in Secret {namespace}/missing"


async def test_evicted(client: AsyncClient, namespace: str) -> None:
    job = await start_job(
        client, namespace, "sleep 100", annotations={BEHAVIOUR: "evicted", BEHAVIOUR_AFTER: "0.5"}
    )
    await wait_job(client, namespace, job, "Failed")
    pod = await wait_pod(client, namespace, job, lambda pod: pod.status.phase == "Failed")
    assert pod.status.reason == "Evicted"
    assert "low on resource" in pod.status.message
    assert not alive(pid_of(pod))


async def wait_gone(client: AsyncClient, namespace: str, pod: str, within: float = 20) -> None:
    with trio.fail_after(within):
        while True:
            try:
                await client.get(Pod, pod, namespace=namespace)
            except ApiError as error:
                if error.status.code == 404:
                    return
                raise
            await trio.sleep(0.1)


async def test_deletion_kills_the_program(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    # It ignores SIGTERM: the node SIGKILLs it (and its child) after the 1 s of grace.
    job = await start_job(
        client,
        namespace,
        'trap "" TERM; sleep 1000 & echo $!; wait',
        pod={"terminationGracePeriodSeconds": 1},
    )
    pod = await wait_pod(client, namespace, job, running)
    with trio.fail_after(10):
        while not (child := (await log(api, namespace, pod.metadata.name)).text):
            await trio.sleep(0.1)
    pids = [pid_of(pod), int(child)]
    assert all(alive(pid) for pid in pids)
    started = time.monotonic()
    await client.delete(Job, job, namespace=namespace, cascade=CascadeType.FOREGROUND)
    await wait_gone(client, namespace, pod.metadata.name)
    assert time.monotonic() - started >= 1
    assert not any(alive(pid) for pid in pids)


async def test_active_deadline(client: AsyncClient, namespace: str) -> None:
    job = await start_job(client, namespace, "sleep 1000", job={"activeDeadlineSeconds": 2})
    pod = await wait_pod(client, namespace, job, running)
    condition = await wait_job(client, namespace, job, "Failed")
    assert condition.reason == "DeadlineExceeded"
    await wait_gone(client, namespace, pod.metadata.name)
    assert not alive(pid_of(pod))


async def wait_node(client: AsyncClient, check, within: float) -> Any:  # type: ignore[no-untyped-def]
    with trio.fail_after(within):
        while not check(node := await client.get(Node, _kube.NODE)):
            await trio.sleep(0.2)
    return node


def ready(node: Any) -> str:
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def taints(node: Any) -> set[str]:
    return {f"{taint.key}:{taint.effect}" for taint in node.spec.taints or ()}


async def test_node_loss(kube: _kube.KubeCluster, client: AsyncClient, namespace: str) -> None:
    job = await start_job(client, namespace, "sleep 1000")
    pod = await wait_pod(client, namespace, job, running)
    assert kube.node is not None
    # With no Ready node at all, the controller would evict nothing (it would take that for
    # its own partition): a witness node stays Ready (and tainted: no pod goes there).
    witness = NodeOptions(
        name="witness", taints=({"key": "corra.test/witness", "effect": "NoSchedule"},)
    )
    async with open_kube_node(client, witness):
        await lose_the_node(kube.node, client, namespace, job, pod)
    await wait_gone(client, namespace, pod.metadata.name)
    assert not alive(pid_of(pod))
    await wait_node(client, lambda node: ready(node) == "True" and not taints(node), 30)


async def lose_the_node(
    lost: _kube.NodeProcess, client: AsyncClient, namespace: str, job: str, pod: Any
) -> None:
    lost.cut_off()
    try:
        # The node lifecycle controller: Ready Unknown after the grace (10 s), the
        # unreachable NoExecute taint; the taint manager evicts (deletes) the pod at once
        # (no default toleration). The node cannot finish the deletion while cut off.
        await wait_node(client, lambda node: ready(node) == "Unknown", 30)
        unreachable = "node.kubernetes.io/unreachable:NoExecute"
        await wait_node(client, lambda node: unreachable in taints(node), 10)
        # (By name: the Job controller makes a replacement at once, as the evicted pod no
        # longer counts as active, nor as failed. It stays Pending: no node takes it.)
        with trio.fail_after(10):
            while (
                await client.get(Pod, pod.metadata.name, namespace=namespace)
            ).metadata.deletionTimestamp is None:
                await trio.sleep(0.1)
        assert alive(pid_of(pod))
    finally:
        lost.reconnect()


async def test_containers_share_an_empty_dir_and_each_ends_on_its_own(
    client: AsyncClient, namespace: str, api: httpx.AsyncClient
) -> None:
    # `main` writes into the volume (where its env says) and exits; `reader`, mounting it
    # elsewhere, prints what it finds there and runs on. As a kubelet: main's end is
    # reported while the pod runs; the volume goes with the pod.
    main = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", 'echo "$DIR" > "$DIR/said"; exit 3'],
        "env": [{"name": "DIR", "value": "/out"}],
        "volumeMounts": [{"name": "shared", "mountPath": "/out/"}],
    }
    reader = {
        "name": "reader",
        "image": "busybox",
        "command": [
            "sh",
            "-c",
            'until [ -s "$IN/said" ]; do sleep 0.1; done; cat "$IN/said"; sleep 1000',
        ],
        "env": [{"name": "IN", "value": "/in"}],
        "volumeMounts": [{"name": "shared", "mountPath": "/in"}],
    }
    pod_spec = {"volumes": [{"name": "shared", "emptyDir": {}}], "containers": [main, reader]}
    job = await start_job(client, namespace, "unused", pod=pod_spec)

    def main_ended(pod: Any) -> bool:
        states = {status.name: status.state for status in pod.status.containerStatuses or ()}
        return bool(states) and states["main"].terminated is not None

    pod = await wait_pod(client, namespace, job, main_ended)
    assert pod.status.phase == "Running"
    states = {status.name: status.state for status in pod.status.containerStatuses}
    assert states["main"].terminated.exitCode == 3 and states["reader"].running is not None
    name = pod.metadata.name
    with trio.fail_after(10):
        while not (said := (await log(api, namespace, name, container="reader")).text):
            await trio.sleep(0.1)
    directory = said.strip()  # (the directory that stands for the volume, the same for both)
    assert Path(directory).is_dir() and not directory.startswith("/out")
    await client.delete(Job, job, namespace=namespace, cascade=CascadeType.FOREGROUND)
    await wait_gone(client, namespace, name)
    assert not Path(directory).exists()
