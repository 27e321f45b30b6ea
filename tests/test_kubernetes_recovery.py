"""The kubernetes backend when things go wrong around the program: eviction and node loss
(node failures, a transient process runs again), fifty processes on one watch, kill -9 of
`corra run` then a run again (nothing launched twice), the sweep of what a last run left
behind, a ``410 Gone`` under the watch; on the real control plane, each test in a namespace
of its own (tests/_kubecli.py).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import _kube
import pytest
import trio
from _kubecli import (  # (fixtures too)
    CORRA,
    HOST,
    Beside,
    alive,
    compact_etcd,
    corra,
    corra_requests,
    eventually,
    job_file,
    job_names,
    jobs_at_least,
    logs,
    metrics,
    nothing_left,
    pid_of,
    pod_names,
    requests_between,
    run,
    running_pod,
    show,
    start_service,
    wait_ready,
)
from lightkube import AsyncClient
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Node, Pod

from corra._runtime import open_runtime
from corra.backends.kubernetes import KubernetesHostOptions, _backend, _watch
from corra.backends.kubernetes._naming import job_name
from corra.backends.ssh import HostConfig
from corra.processes._backend import EffectKey
from corra.testing.kubenode import BEHAVIOUR, BEHAVIOUR_AFTER, NodeOptions, open_kube_node

pytestmark = pytest.mark.kubernetes

__all__ = ["metrics"]  # (a fixture)


async def test_an_evicted_pod_is_a_node_failure_and_a_transient_process_runs_again(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # (every attempt's pod is evicted here: the annotation is the template's)
    template = {"metadata": {"annotations": {BEHAVIOUR: "evicted", BEHAVIOUR_AFTER: "0.5"}}}
    program = {
        "name": "evicted",
        "argv": ["sh", "-c", 'echo "attempt $CORRA_ATTEMPT"; sleep 100'],
        "restart": "transient",
        "max_attempts": 2,
        "kubernetes": {"pod_template": template},
    }
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 1, records
    record = records["evicted"]
    assert (record["phase"], record["attempt"]) == ("failed", 2), record
    assert record["reason"].startswith("node failure: Evicted: The node was low on resource")
    history = (await show(state, "evicted"))["history"]
    (retry,) = [step for step in history if step["event"] == "retry"]
    assert retry["reason"].startswith("attempt 1: node failure: Evicted"), retry
    assert await logs(state, "evicted") == "attempt 2\n"
    await nothing_left(client, namespace)


async def test_a_lost_node_is_a_node_failure_and_a_transient_process_runs_again(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    assert kube.node is not None
    node = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    program = {
        "name": "survivor",
        "restart": "transient",
        "kill_grace": 1,
        "argv": [
            "sh",
            "-c",
            'echo "attempt $CORRA_ATTEMPT on $NODE"; [ "$CORRA_ATTEMPT" = 1 ] && sleep 300; '
            "echo done",
        ],
        # (where it runs, from the downward API)
        "kubernetes": {"pod_template": {"spec": {"containers": [{"name": "main", "env": [node]}]}}},
    }
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"

    async def evicted(name: str) -> bool:
        pod = await client.get(Pod, name, namespace=namespace)
        return pod.metadata.deletionTimestamp is not None

    # With no Ready node the controller evicts nothing (it would take that for its own
    # partition): a second node, the witness, stays Ready and takes the second attempt.
    try:
        async with trio.open_nursery() as nursery:
            running = Beside(nursery, state, "run", "--json", str(jobs), within=150)
            first = await running_pod(client, namespace)
            assert first.spec.nodeName == _kube.NODE
            pid = pid_of(first)
            witness = NodeOptions(name=f"witness-{secrets.token_hex(2)}")
            async with open_kube_node(client, witness):
                kube.node.cut_off()
                try:
                    # The node misses its heartbeats for 10 s, the controller taints it
                    # unreachable and evicts (deletes) its pod.
                    await eventually(lambda: evicted(first.metadata.name), 60)
                    # (cordoned, so that the next attempt goes to the witness)
                    await client.patch(Node, _kube.NODE, {"spec": {"unschedulable": True}})
                finally:
                    kube.node.reconnect()
                with trio.fail_after(90):
                    await running.ended.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await client.patch(Node, _kube.NODE, {"spec": {"unschedulable": None}})
    assert running.done.returncode == 0, running.done.stderr
    record = running.records()["survivor"]
    assert (record["phase"], record["returncode"], record["attempt"]) == ("finished", 0, 2)
    history = (await show(state, "survivor"))["history"]
    (retry,) = [step for step in history if step["event"] == "retry"]
    assert retry["reason"].startswith("attempt 1: node failure: "), retry
    assert await logs(state, "survivor") == f"attempt 2 on {witness.name}\ndone\n"
    assert not alive(pid)
    await nothing_left(client, namespace)
    await wait_ready(client)


async def test_fifty_processes_are_followed_by_one_watch(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path, metrics: Any
) -> None:
    count = 50
    processes = [
        {"name": f"p{number:02d}", "argv": ["sh", "-c", f"sleep 2; echo {number}"]}
        for number in range(count)
    ]
    jobs = job_file(tmp_path / "job.toml", kube, namespace, processes)
    state = tmp_path / "state"
    before = await metrics()
    status, records = await run(state, jobs, "--max-running", str(count), within=180)
    after = await metrics()
    assert status == 0, records
    assert {record["phase"] for record in records.values()} == {"finished"}
    assert all(records[f"p{n:02d}"]["result"]["stdout_bytes"] == len(f"{n}\n") for n in range(50))
    counted = {
        (verb, resource): corra_requests(before, after, verb=verb, resource=resource)
        for verb in ("LIST", "WATCH", "GET", "POST", "DELETE")
        for resource in ("jobs", "pods")
    }
    # One list and one watch of the namespace's Jobs and of its pods, for all fifty (a watch
    # request lasts 290 s; the resync is every 300 s).
    for resource in ("jobs", "pods"):
        assert counted["LIST", resource] == 1, counted
        assert counted["WATCH", resource] == 1, counted
    # One create and one delete per Job; no polling of Jobs or pods: the reads of single
    # objects are for Jobs created before the watch had seen them, at most one or two each.
    assert counted["POST", "jobs"] == count, counted
    assert counted["DELETE", "jobs"] == count, counted
    assert counted["GET", "jobs"] <= 2 * count, counted
    assert counted["GET", "pods"] == 0, counted
    # (The log requests, pods/log, are the log shipping's, not counted here.)
    print("requests of corra's for 50 processes:", counted)
    assert await logs(state, "p07") == "7\n"
    await nothing_left(client, namespace)


@pytest.mark.parametrize(
    ("created", "pace"),
    [
        # all twenty Jobs created, their programs running (they run on without corra);
        (20, {}),
        # creating them, four a second: some created, one maybe without its handle on disk
        # yet, others only meant (their intent on disk)
        (5, {"writes_per_second": 4, "write_burst": 1}),
    ],
    ids=["created", "creating"],
)
async def test_kill_9_of_corra_run_then_run_again_launches_each_job_once(
    kube: _kube.KubeCluster,
    client: AsyncClient,
    namespace: str,
    tmp_path: Path,
    metrics: Any,
    created: int,
    pace: dict[str, Any],
) -> None:
    count = 20
    processes = [
        {"name": f"p{number:02d}", "argv": ["sh", "-c", f"sleep 3; echo {number}"]}
        for number in range(count)
    ]
    jobs = job_file(tmp_path / "job.toml", kube, namespace, processes, **pace)
    state = tmp_path / "state"
    uids: dict[str, set[str]] = {}  # (every Job seen in the namespace, by name)

    async def look() -> None:
        async for job in client.list(Job, namespace=namespace):
            uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)

    looking = True

    async def record_jobs() -> None:
        # (stopped between two lists, not cancelled in one: a list cut short leaves its
        # response's connection to the garbage collector, which warns)
        while looking:
            await look()
            await trio.sleep(0.1)

    before = await metrics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(record_jobs)
        first = await trio.lowlevel.open_process(
            [*CORRA, "run", "--state-dir", str(state), "--max-running", str(count), str(jobs)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await eventually(lambda: jobs_at_least(client, namespace, created), 60)
        finally:
            first.kill()
            await first.wait()
        assert first.returncode == -signal.SIGKILL
        await look()
        in_flight = len(uids)
        assert created <= in_flight <= count
        if created < count:  # (killed while it created them)
            assert in_flight < count, in_flight
        status, records = await run(state, jobs, "--max-running", str(count), within=120)
        looking = False
    await look()
    after = await metrics()
    assert status == 0, records
    assert {record["phase"] for record in records.values()} == {"finished"}, records
    assert all(record["attempt"] == 1 for record in records.values())
    # Each Job created once (one uid per name, one successful create per process), whether
    # the first run had created it, or only meant to.
    assert len(uids) == count and all(len(seen) == 1 for seen in uids.values()), uids
    creates = requests_between(before, after, verb="POST", resource="jobs", code="201")
    assert creates == count, (creates, in_flight)
    assert all(records[f"p{n:02d}"]["result"]["stdout_bytes"] == len(f"{n}\n") for n in range(20))
    assert await logs(state, "p03") == "3\n"
    await nothing_left(client, namespace)


async def test_finished_jobs_left_behind_are_swept_at_the_next_start(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    kept = {"name": "kept", "argv": ["sh", "-c", "echo kept"]}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [kept], keep_finished=True)
    status, records = await run(state, jobs)
    assert status == 0, records
    # (its result and log are home, its Job kept)
    assert await job_names(client, namespace) == [job_name(EffectKey(records["kept"]["id"], 1))]
    # A later run (of something quick) with Jobs no longer kept deletes it at its start,
    # before it ends.
    later = {"name": "later", "argv": ["true"]}
    jobs = job_file(tmp_path / "later.toml", kube, namespace, [later])
    status, records = await run(state, jobs)
    assert status == 0, records
    assert await job_names(client, namespace) == []
    await nothing_left(client, namespace)
    assert await logs(state, "kept") == "kept\n"


async def test_a_run_with_nothing_left_to_do_sweeps_too(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    kept = {"name": "kept", "argv": ["true"]}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [kept], keep_finished=True)
    status, _ = await run(state, jobs)
    assert status == 0 and len(await job_names(client, namespace)) == 1
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [kept])
    status, records = await run(state, jobs)  # ("kept: already finished, not run again")
    assert status == 0, records
    await nothing_left(client, namespace, within=5)


async def test_a_410_gone_under_the_watch_while_processes_run(
    kube: _kube.KubeCluster,
    client: AsyncClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through the runtime's API: the backend's watch requests last a second here (not 290 s),
    # so that etcd's compaction makes the next one's position gone while the programs run.
    watches: list[ShortWatch] = []

    class ShortWatch(_watch.NamespaceWatch):
        def __init__(self, *args: Any, **options: Any) -> None:
            super().__init__(*args, **{**options, "server_timeout": 1})
            self.reasons: list[str] = []
            watches.append(self)

        async def _follow(self, *versions: str) -> str:
            reason = await super()._follow(*versions)
            self.reasons.append(reason)
            return reason

    monkeypatch.setattr(_backend, "NamespaceWatch", ShortWatch)
    settings = KubernetesHostOptions(
        kubeconfig=str(kube.kubeconfig), namespace=namespace, image="busybox"
    )
    hosts = {HOST: HostConfig(name=HOST, transport="kubernetes", options={"kubernetes": settings})}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        refs = [
            await runtime.spawn_process(
                ["sh", "-c", f"echo {number}; sleep 8; echo {number} again"],
                name=f"p{number}",
                backend="kubernetes",
                host=HOST,
            )
            for number in range(3)
        ]
        await running_pod(client, namespace)
        (watch,) = watches

        async def compacted_under_the_watch() -> bool:
            # etcd moves on past the watch's position, then forgets it (a program's status
            # event may move the watch past the compaction first: again, then)
            for _ in range(3):
                await client.create(
                    ConfigMap.from_dict({"metadata": {"generateName": "c-"}}), namespace=namespace
                )
            await trio.to_thread.run_sync(compact_etcd, kube)
            with trio.move_on_after(3):
                while not await _said(watch, "gone"):
                    await trio.sleep(0.1)
            return await _said(watch, "gone")

        await eventually(compacted_under_the_watch, 45)
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert [record.phase for record in records] == ["finished"] * 3, records
        for number, ref in enumerate(refs):
            assert await ref.logs() == f"{number}\n{number} again\n".encode()
    assert "gone" in watch.reasons, watch.reasons
    await nothing_left(client, namespace)


async def _said(watch: Any, reason: str) -> bool:
    return reason in watch.reasons


async def test_a_job_corra_lost_sight_of_is_killed_through_the_next_runtime(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # corra run dies (kill -9) with its program running; the service started next on the
    # state dir finds the Job again, and a kill through it leaves nothing running.
    nap = {"name": "nap", "argv": ["sh", "-c", "echo napping; sleep 300"], "kill_grace": 1}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [nap])
    state = tmp_path / "state"
    first = await trio.lowlevel.open_process(
        [*CORRA, "run", "--state-dir", str(state), str(jobs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pod = await running_pod(client, namespace, within=60)
    finally:
        first.kill()
        await first.wait()
    pid = pid_of(pod)
    assert alive(pid)
    service = await start_service(state)
    try:
        record = await show(state, "nap")
        assert record["phase"] == "running", record
        killed = await corra(state, "kill", "nap")
        assert killed.returncode == 0, killed.stderr
        assert await job_names(client, namespace) == []
        assert await pod_names(client, namespace) == []
        assert not alive(pid)
        assert (await show(state, "nap"))["phase"] == "killed"
        assert await logs(state, "nap") == "napping\n"
    finally:
        service.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await service.wait()
