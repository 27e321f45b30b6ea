"""The parts of the kubernetes backend that need no cluster: names and options."""

from __future__ import annotations

import math
import re
import secrets

import pytest
import trio
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace

from corra._errors import ConfigError
from corra.backends.kubernetes._manifest import job_manifest
from corra.backends.kubernetes._naming import (
    ATTEMPT_LABEL,
    INSTANCE_LABEL,
    PROCESS_LABEL,
    adoptable,
    job_labels,
    job_name,
    label_value,
)
from corra.backends.kubernetes._options import KubernetesOptions
from corra.backends.kubernetes._watch import _lines
from corra.processes._backend import EffectKey, LaunchRequest, Limits

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    "process_id",
    ["p1abcdef01234", "P1ABC", "p_1_2", "-p-", "x" * 64, "A" * 64, "a_" * 32, "z"],
)
def test_a_job_name_is_a_dns_label_and_the_same_for_the_same_key(process_id):
    for attempt in (1, 12, 999_999_999):
        key = EffectKey(process_id, attempt)
        name = job_name(key)
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        assert job_name(EffectKey(process_id, attempt)) == name


def test_two_keys_never_share_a_job_name():
    keys = [
        EffectKey(process_id, attempt)
        for process_id in ("pA", "pa", "p_a", "p-a", "x" * 64, "x" * 63 + "y", "X" * 64)
        for attempt in (1, 2, 11)
    ]
    names = [job_name(key) for key in keys]
    assert len(set(names)) == len(keys)
    assert job_name(EffectKey("p1abc", 2)) == "corra-p1abc-2"  # (readable where it can be)


def test_labels_are_label_values_and_adoption_checks_them():
    key = EffectKey("P_" * 32, 3)
    labels = job_labels("a" * 70, key)
    assert all(LABEL_VALUE.match(value) and len(value) <= 63 for value in labels.values())
    assert labels[ATTEMPT_LABEL] == "3"
    assert label_value("p1abc") == "p1abc"
    assert adoptable({**labels, "other": "x"}, "a" * 70, key)
    assert not adoptable({**labels, ATTEMPT_LABEL: "4"}, "a" * 70, key)
    assert not adoptable({**labels, INSTANCE_LABEL: "elsewhere"}, "a" * 70, key)
    assert not adoptable({PROCESS_LABEL: labels[PROCESS_LABEL]}, "a" * 70, key)
    assert not adoptable(None, "a" * 70, key)


def test_options_take_what_a_pod_needs():
    options = KubernetesOptions(
        image="python:3.12-slim",
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        node_selector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="runner",
        pod_template={"spec": {"priorityClassName": "low"}},
    )
    assert options.resources["limits"] == {"memory": "2Gi"}
    assert options.tolerations == ({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"image": ""}, "kubernetes.image: got ''"),
        ({"image": "a b"}, "kubernetes.image: got 'a b'"),
        ({"resources": {"limits": {"memory": "lots"}}}, "kubernetes.resources.limits.memory"),
        ({"resources": {"wants": {}}}, "kubernetes.resources.wants: unknown"),
        ({"resources": {"limits": {"cpu": 2}}}, "kubernetes.resources.limits.cpu: got 2"),
        ({"node_selector": {"disk": 1}}, "kubernetes.node_selector.disk: got 1"),
        ({"tolerations": [{"operator": "Maybe"}]}, "kubernetes.tolerations[0].operator"),
        ({"tolerations": [{"effect": "Now"}]}, "kubernetes.tolerations[0].effect"),
        ({"tolerations": [{"keys": "x"}]}, "kubernetes.tolerations[0]: unknown field"),
        ({"tolerations": [{"tolerationSeconds": -1}]}, "tolerationSeconds: got -1"),
        ({"tolerations": "all"}, "kubernetes.tolerations: got 'all'"),
        ({"service_account": "Runner"}, "kubernetes.service_account: got 'Runner'"),
        ({"pod_template": []}, "kubernetes.pod_template: got []"),
        ({"suspend_on_pause": "yes"}, "kubernetes.suspend_on_pause: got 'yes'"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field_path(fields, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        KubernetesOptions(**{"image": "busybox", **fields})


def request_of(key, argv, *, name=None, env=None, cwd=None, **limits):
    return LaunchRequest(key, argv, name=name, cwd=cwd, env=env or {}, limits=Limits(**limits))


def manifest_of(**fields):
    options = fields.pop("options", KubernetesOptions(image="busybox"))
    request = request_of(EffectKey("p1abc", 2), ("sh", "-c", "exit 0"), name="job", **fields)
    return job_manifest(request, options, instance="i1", namespace="ns")


def test_a_manifest_is_one_attempt_one_pod_with_the_specs_limits():
    manifest = manifest_of(env={"A": "1"}, cwd="/work", timeout=2.5, kill_grace=0.5)
    assert manifest["metadata"]["name"] == "corra-p1abc-2"
    assert manifest["metadata"]["annotations"] == {"corra.dev/key": "p1abc.2"}
    spec = manifest["spec"]
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (0, 1, 1)
    assert spec["activeDeadlineSeconds"] == 3  # (rounded up: never before corra would)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 1
    assert spec["template"]["metadata"]["labels"] == manifest["metadata"]["labels"]
    [container] = pod["containers"]
    assert container == {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", "exit 0"],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "CORRA_PROCESS_ID", "value": "p1abc"},
            {"name": "CORRA_PROCESS_NAME", "value": "job"},
            {"name": "CORRA_ATTEMPT", "value": "2"},
            {"name": "CORRA_RESULT", "value": "/dev/termination-log"},  # (its value)
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "workingDir": "/work",
    }
    assert "activeDeadlineSeconds" not in manifest_of()["spec"]


def test_the_pod_template_is_merged_under_corras_fields():
    options = KubernetesOptions(
        image="busybox",
        resources={"limits": {"memory": "1Gi"}},
        pod_template={
            "metadata": {"labels": {"team": "x", "corra.dev/attempt": "9"}},
            "spec": {
                "restartPolicy": "Always",
                "priorityClassName": "low",
                "containers": [
                    {"name": "sidecar", "image": "proxy"},
                    {"name": "main", "image": "other", "volumeMounts": [{"name": "v"}]},
                ],
            },
        },
    )
    manifest = manifest_of(options=options)
    template = manifest["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "x"
    assert template["metadata"]["labels"]["corra.dev/attempt"] == "2"
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never" and pod["priorityClassName"] == "low"
    sidecar, main = pod["containers"]
    assert sidecar == {"name": "sidecar", "image": "proxy"}
    assert main["image"] == "busybox" and main["volumeMounts"] == [{"name": "v"}]
    assert main["resources"] == {"limits": {"memory": "1Gi"}}
    assert options.pod_template["spec"]["containers"][1]["image"] == "other"  # (not changed)


@pytest.mark.kubernetes
async def test_a_manifest_runs_on_the_real_control_plane(kube):
    # The apiserver takes it as it is (validation, defaulting), the controller makes its one
    # pod, the node runs it: a Job that completes, under its deterministic name.
    namespace = f"t-{secrets.token_hex(4)}"
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        await client.create(Namespace.from_dict({"metadata": {"name": namespace}}))
        try:
            key = EffectKey("p1abc", 1)
            request = request_of(key, ("sh", "-c", 'test "$A" = 1'), env={"A": "1"}, timeout=30)
            body = job_manifest(
                request, KubernetesOptions(image="busybox"), instance="i1", namespace=namespace
            )
            await client.create(Job.from_dict(body))
            with pytest.raises(ApiError) as again:  # (a second create: "already exists")
                await client.create(Job.from_dict(body))
            assert again.value.status.code == 409
            with trio.fail_after(30):
                while True:
                    job = await client.get(Job, job_name(key), namespace=namespace)
                    conditions = (job.status and job.status.conditions) or []
                    if any(c.type == "Complete" and c.status == "True" for c in conditions):
                        break
                    assert not any(c.type == "Failed" for c in conditions), conditions
                    await trio.sleep(0.1)
            assert adoptable(job.metadata.labels, "i1", key)
        finally:
            await client.delete(Namespace, namespace)


def pod_with(phase, *, terminated=None, waiting=None, running=None, **status):
    state = {}
    for name, value in (("terminated", terminated), ("waiting", waiting), ("running", running)):
        if value is not None:
            state[name] = value
    containers = [{"name": "main", "state": state}] if state else []
    return {"metadata": {}, "status": {"phase": phase, "containerStatuses": containers, **status}}


@pytest.mark.parametrize(
    ("job", "pod", "expected"),
    [
        (None, None, ("waiting", None, None)),
        (
            None,
            pod_with(
                "Pending",
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 Insufficient cpu.",
                    }
                ],
            ),
            ("unschedulable", "Unschedulable", None),
        ),
        (
            None,
            pod_with("Pending", waiting={"reason": "ImagePullBackOff", "message": "no such"}),
            ("image_error", "ImagePullBackOff", None),
        ),
        (
            None,
            pod_with("Pending", waiting={"reason": "CreateContainerConfigError"}),
            ("config_error", "CreateContainerConfigError", None),
        ),
        (
            None,
            pod_with("Pending", waiting={"reason": "ContainerCreating"}),
            ("waiting", "ContainerCreating", None),
        ),
        (
            None,
            pod_with("Running", running={"startedAt": "2026-12-07T10:00:00Z"}),
            ("running", None, None),
        ),
        (
            None,
            pod_with("Failed", terminated={"exitCode": 3, "reason": "Error"}),
            ("failed", "Error", 3),
        ),
        (
            None,
            pod_with("Succeeded", terminated={"exitCode": 0, "reason": "Completed"}),
            ("succeeded", "Completed", 0),
        ),
        (
            None,
            pod_with("Succeeded", terminated={"exitCode": 0, "reason": "OOMKilled"}),
            ("out_of_memory", "OOMKilled", 0),
        ),
        (
            None,
            pod_with("Failed", reason="Evicted", message="The node was low on resource"),
            ("node_failure", "Evicted", None),
        ),
        (
            {
                "status": {
                    "conditions": [
                        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
                    ]
                }
            },
            None,
            ("deadline", "DeadlineExceeded", None),
        ),
    ],
)
def test_an_attempt_is_classified_with_the_clusters_reason(job, pod, expected):
    from corra.backends.kubernetes._outcomes import classify

    view = classify(job, pod)
    assert (view.state, view.reason, view.exit_code) == expected


def test_a_pod_deleted_by_the_cluster_is_a_node_failure_unless_corra_deleted_it():
    from corra.backends.kubernetes._outcomes import classify

    pod = pod_with("Running", running={"startedAt": "2026-12-07T10:00:00Z"})
    pod["metadata"]["deletionTimestamp"] = "2026-12-07T10:01:00Z"
    assert classify(None, pod).state == "node_failure"
    assert classify(None, pod, deleting=True).state == "running"
    ended = pod_with(
        "Failed",
        terminated={
            "exitCode": 137,
            "reason": "Error",
            "startedAt": "2026-12-07T10:00:00Z",
            "finishedAt": "2026-12-07T10:00:05Z",
        },
    )
    view = classify(None, ended, deleting=True)
    assert (view.state, view.exit_code, view.ended_at - view.started_at) == ("failed", 137, 5.0)


def test_a_terminated_containers_message_is_its_programs_value_unless_it_never_ran():
    from corra.backends.kubernetes._outcomes import attempt_result, classify

    written = '{"items": [1]}'
    ran = pod_with("Failed", terminated={"exitCode": 3, "reason": "Error", "message": written})
    view = classify(None, ran)
    assert (view.state, view.message, view.termination_message) == ("failed", None, written)
    assert attempt_result(view, 0, 0, grace=1).error is None  # (not the cluster's words)
    said = "failed to create containerd task: exec: no such file"
    never = pod_with(
        "Failed", terminated={"exitCode": 128, "reason": "StartError", "message": said}
    )
    view = classify(None, never)
    assert (view.message, view.termination_message) == (said, None)
    assert said in str(attempt_result(view, 0, 0, grace=1).error)
    oom = pod_with("Failed", terminated={"exitCode": 137, "reason": "OOMKilled", "message": "[]"})
    assert classify(None, oom).termination_message == "[]"


def test_a_value_is_kept_beside_the_attempt_and_4096_bytes_may_be_cut(tmp_path):
    from corra.backends.kubernetes._attempts import MESSAGE_LIMIT, AttemptFiles, keep_value
    from corra.processes._lifecycle import Result

    files = AttemptFiles(tmp_path, "kube", "p1.1")
    result = Result(0)
    assert keep_value(files, None, result) is result and files.read_value(0, 100) == b""
    assert keep_value(files, '{"a": "\u00e9"}', result) is result
    assert files.read_value(0, 100) == '{"a": "\u00e9"}'.encode()
    assert files.read_value(2, 1) == b"a"
    cut = AttemptFiles(tmp_path, "kube", "p1.2")
    refused = keep_value(cut, "x" * MESSAGE_LIMIT, result)
    assert "at most 4096 bytes" in str(refused.value_error) and cut.read_value(0, 10) == b""


@pytest.mark.kubernetes
async def test_what_the_real_control_plane_says_is_classified(kube):
    # Each attempt as a real Job on the real apiserver, played by the stand-in node: the
    # classifier reads the objects as the API gives them.
    from lightkube.resources.core_v1 import Pod

    from corra.backends.kubernetes._outcomes import classify
    from corra.testing.kubenode import BEHAVIOUR

    cases = {
        "exit-3": ("exit 3", {}, {}, ("failed", 3)),
        "ok": ("exit 0", {}, {}, ("succeeded", 0)),
        "oom": ("exit 0", {BEHAVIOUR: "oom-killed-real-exit-code"}, {}, ("out_of_memory", 0)),
        "pull": ("exit 0", {BEHAVIOUR: "image-pull-backoff"}, {}, ("image_error", None)),
        "evicted": ("sleep 30", {BEHAVIOUR: "evicted"}, {}, ("node_failure", None)),
        "nowhere": ("exit 0", {}, {"disk": "none-has-it"}, ("unschedulable", None)),
    }
    namespace = f"t-{secrets.token_hex(4)}"
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        await client.create(Namespace.from_dict({"metadata": {"name": namespace}}))
        try:
            keys = {}
            for number, (name, (command, annotations, selector, _)) in enumerate(cases.items()):
                keys[name] = key = EffectKey(f"p{number}", 1)
                options = KubernetesOptions(
                    image="busybox",
                    node_selector=selector,
                    pod_template={"metadata": {"annotations": annotations}},
                )
                request = request_of(key, ("sh", "-c", command), name=name)
                body = job_manifest(request, options, instance="i1", namespace=namespace)
                await client.create(Job.from_dict(body))
            seen: dict[str, tuple[str, int | None]] = {}
            with trio.fail_after(40):
                while len(seen) < len(cases):
                    for name, key in keys.items():
                        job = await client.get(Job, job_name(key), namespace=namespace)
                        pods = [
                            pod
                            async for pod in client.list(
                                Pod, namespace=namespace, labels={"job-name": job_name(key)}
                            )
                        ]
                        pod = pods[0].to_dict() if pods else None
                        view = classify(job.to_dict(), pod)
                        if (view.state, view.exit_code) == cases[name][3]:
                            seen[name] = (view.state, view.exit_code)
                    await trio.sleep(0.2)
            assert seen == {name: case[3] for name, case in cases.items()}
        finally:
            await client.delete(Namespace, namespace)


@pytest.mark.kubernetes
async def test_one_watch_follows_every_attempt_of_its_instance(kube):
    # One list+watch for the namespace: each attempt wakes at its own Job's and pod's changes
    # and reads them from the watch; another instance's Job is never seen.
    from corra.backends.kubernetes._naming import INSTANCE_LABEL
    from corra.backends.kubernetes._outcomes import classify
    from corra.backends.kubernetes._watch import NamespaceWatch

    namespace = f"t-{secrets.token_hex(4)}"
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        await client.create(Namespace.from_dict({"metadata": {"name": namespace}}))
        try:
            watch = NamespaceWatch(client, namespace, {INSTANCE_LABEL: "w1"}, resync=2.0)
            async with trio.open_nursery() as nursery:
                await nursery.start(watch.run)
                expected = {}
                attempts = [
                    ("w1", "exit 0", ("succeeded", 0)),
                    ("w1", "exit 4", ("failed", 4)),
                    ("w1", "sleep 3; exit 0", ("succeeded", 0)),
                    ("w2", "true", None),
                ]
                for number, (instance, command, outcome) in enumerate(attempts):
                    key = EffectKey(f"p{number}", 1)
                    request = request_of(key, ("sh", "-c", command))
                    options = KubernetesOptions(image="busybox")
                    body = job_manifest(request, options, instance=instance, namespace=namespace)
                    await client.create(Job.from_dict(body))
                    if outcome is not None:
                        expected[job_name(key)] = outcome
                ended = {}

                async def follow(name):
                    with trio.fail_after(40):
                        while True:
                            job, pods = watch.view(name)
                            view = classify(job, pods[-1] if pods else None)
                            if view.ended:
                                ended[name] = (view.state, view.exit_code)
                                return
                            await watch.changed(name)

                async with trio.open_nursery() as followers:
                    for name in expected:
                        followers.start_soon(follow, name)
                assert ended == expected
                assert watch.view(job_name(EffectKey("p3", 1))) == (None, [])
                assert watch.relists >= 2  # (the resyncs: a relist every 2 s)
                assert watch.last_relist_reason == "resync"
                nursery.cancel_scope.cancel()
        finally:
            await client.delete(Namespace, namespace)


@pytest.mark.kubernetes
async def test_a_watch_whose_position_is_compacted_away_lists_again(kube):
    # etcd compacted under the watch: its next request from where it was is 410 Gone; the
    # watch lists again and goes on from there.
    import json
    import subprocess

    from lightkube.resources.core_v1 import ConfigMap

    from corra.backends.kubernetes._naming import INSTANCE_LABEL
    from corra.backends.kubernetes._outcomes import classify
    from corra.backends.kubernetes._watch import NamespaceWatch

    etcd = f"http://127.0.0.1:{(kube.kubeconfig.parent / 'etcd.port').read_text().strip()}"

    def compact() -> None:
        status = subprocess.run(
            ["etcdctl", "--endpoints", etcd, "endpoint", "status", "-w", "json"],
            capture_output=True,
            check=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        revision = json.loads(status.stdout)[0]["Status"]["header"]["revision"]
        subprocess.run(
            ["etcdctl", "--endpoints", etcd, "compact", str(revision)],
            capture_output=True,
            check=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )

    async def ended(watch, key):
        with trio.fail_after(30):
            while True:
                job, pods = watch.view(job_name(key))
                if classify(job, pods[-1] if pods else None).ended:
                    return
                await watch.changed(job_name(key))

    namespace = f"t-{secrets.token_hex(4)}"
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        await client.create(Namespace.from_dict({"metadata": {"name": namespace}}))
        try:
            watch = NamespaceWatch(
                client, namespace, {INSTANCE_LABEL: "g1"}, resync=math.inf, server_timeout=1
            )
            options = KubernetesOptions(image="busybox")
            async with trio.open_nursery() as nursery:
                await nursery.start(watch.run)
                first, second = EffectKey("p1", 1), EffectKey("p2", 1)
                request = request_of(first, ("true",))
                body = job_manifest(request, options, instance="g1", namespace=namespace)
                await client.create(Job.from_dict(body))
                await ended(watch, first)
                for number in range(3):  # (etcd moves on past the watch's position)
                    await client.create(
                        ConfigMap.from_dict({"metadata": {"name": f"c{number}"}}),
                        namespace=namespace,
                    )
                await trio.to_thread.run_sync(compact)
                # (an open request goes on past a compaction: the next one, from where the
                # watch was, within a second, is refused)
                with trio.move_on_after(10):
                    while watch.last_relist_reason != "gone":
                        await trio.sleep(0.1)
                assert watch.last_relist_reason == "gone", (watch.relists, watch.last_relist_reason)
                request = request_of(second, ("true",))
                body = job_manifest(request, options, instance="g1", namespace=namespace)
                await client.create(Job.from_dict(body))
                await ended(watch, second)
                assert watch.relists >= 2
                nursery.cancel_scope.cancel()
        finally:
            await client.delete(Namespace, namespace)


async def test_a_watch_streams_lines_are_found_across_chunks():
    async def chunks():
        for chunk in (b'{"a": 1}\n{"b"', b": 2}\n\n", b'{"c": 3}'):
            yield chunk

    assert [line async for line in _lines(chunks())] == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
