"""Statuses on Kubernetes: the program's ``$CORRA_STATUS`` in an ``emptyDir`` that a sidecar
copies to its log, which comes home like the program's (corra/backends/kubernetes/
_statuses.py). The manifest and the choice of the sidecar need no cluster; the rest runs on
the real control plane of scripts/kube-test-cluster.sh (1.20: the sidecar is a second
container there, deleted with the Job) through the whole runtime."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path

import _kube
import pytest
import trio
from _kubecli import Beside, corra, eventually, job_file, nothing_left, show
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace, Pod

from corra._errors import ConfigError, LaunchFailed
from corra.backends.kubernetes import KubernetesHostOptions
from corra.backends.kubernetes._client import _version
from corra.backends.kubernetes._manifest import (
    STATUS_CONTAINER,
    STATUS_DIR,
    STATUS_PATH,
    job_manifest,
    status_script,
)
from corra.backends.kubernetes._options import KubernetesOptions
from corra.backends.kubernetes._statuses import sidecar_for, sidecar_of
from corra.backends.ssh import HostConfig
from corra.processes._backend import EffectKey, LaunchRequest, MemoryStatuses
from corra.processes._registry import Registry
from corra.testing import open_plugin

MOUNT = {"name": "corra-status", "mountPath": STATUS_DIR}


def manifest(sidecar, options=None):
    request = LaunchRequest(EffectKey("p1abc", 1), ("sh", "-c", "true"))
    options = options or KubernetesOptions(image="busybox")
    return job_manifest(request, options, instance="i1", namespace="ns", sidecar=sidecar)


def env_of(container):
    return {variable["name"]: variable.get("value") for variable in container["env"]}


def test_the_status_file_is_in_an_empty_dir_that_a_sidecar_of_the_same_image_copies():
    pod = manifest("container")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "corra-status", "emptyDir": {}}]
    main, copier = pod["containers"]
    assert main["volumeMounts"] == [MOUNT] and env_of(main)["CORRA_STATUS"] == STATUS_PATH
    assert copier["name"] == STATUS_CONTAINER and copier["image"] == "busybox"
    assert copier["volumeMounts"] == [MOUNT] and env_of(copier) == {"CORRA_STATUS": STATUS_PATH}
    # (its script as given: `$` written `$$` against the kubelet's $(VAR) expansion)
    assert copier["command"] == ["/bin/sh", "-c", status_script("container").replace("$", "$$")]
    assert "sleep 0;" in status_script("container") and "sleep 1;" in status_script("native")
    assert "restartPolicy" not in copier and "initContainers" not in pod


def test_a_native_sidecar_is_an_init_container_that_restarts_always():
    pod = manifest("native")["spec"]["template"]["spec"]
    [main] = pod["containers"]
    [copier] = pod["initContainers"]
    assert copier["name"] == STATUS_CONTAINER and copier["restartPolicy"] == "Always"
    assert main["volumeMounts"] == [MOUNT] and env_of(main)["CORRA_STATUS"] == STATUS_PATH


def test_without_a_sidecar_there_is_no_status_file_and_no_volume():
    pod = manifest(None)["spec"]["template"]["spec"]
    [main] = pod["containers"]
    assert "CORRA_STATUS" not in env_of(main) and "volumes" not in pod
    assert "volumeMounts" not in main


def test_the_templates_volumes_mounts_and_init_containers_stay_beside_the_sidecars():
    template = {
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "fetch", "image": "busybox"}],
            "containers": [
                {"name": "main", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "proxy", "image": "proxy"},
            ],
        }
    }
    options = KubernetesOptions(image="busybox", pod_template=template)
    pod = manifest("native", options)["spec"]["template"]["spec"]
    assert [volume["name"] for volume in pod["volumes"]] == ["data", "corra-status"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", STATUS_CONTAINER]
    assert [c["name"] for c in pod["containers"]] == ["main", "proxy"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}, MOUNT]
    pod = manifest("container", options)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["main", "proxy", STATUS_CONTAINER]


def test_the_sidecars_script_copies_what_is_appended_until_a_second_after_its_sigterm(tmp_path):
    # The script as the sidecar runs it (here with this machine's sh and tail): what the
    # program appends right before its end (then the kubelet's SIGTERM) is copied, whole
    # lines or not; the file is made first, writable by a program of another user.
    path = tmp_path / "status.jsonl"
    env = {"CORRA_STATUS": str(path), "PATH": os.environ["PATH"]}
    copier = subprocess.Popen(
        ["/bin/sh", "-c", status_script("native")], env=env, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    with path.open("a") as status:
        status.write('{"progress": 0.5}\n{"progress": 1}\n{"mess')
    copier.send_signal(signal.SIGTERM)
    out, _ = copier.communicate(timeout=10)
    assert copier.returncode == 0
    assert out == b'{"progress": 0.5}\n{"progress": 1}\n{"mess'


def test_the_status_option_is_a_boolean():
    assert KubernetesOptions().status is True
    with pytest.raises(ConfigError, match=r"kubernetes\.status: got .no., expected true or false"):
        KubernetesOptions(status="no")


@pytest.mark.parametrize(
    ("said", "version"),
    [
        ({"major": "1", "minor": "20"}, (1, 20)),
        ({"major": "1", "minor": "29+"}, (1, 29)),
        ({"major": "1"}, (0, 0)),
        ({"major": "one", "minor": ""}, (0, 0)),
        ([], (0, 0)),
    ],
)
def test_a_servers_version_is_read_as_its_major_and_minor(said, version):
    assert _version(said) == version


class _Server:
    def __init__(self, version):
        self.host, self._version_said = "kube", version
        self.native_sidecars = True  # (False once the server dropped one)

    async def server_version(self):
        return self._version_said


@pytest.mark.parametrize(
    ("version", "status", "keep_finished", "where"),
    [
        ((1, 29), True, False, "native"),
        ((1, 30), True, True, "native"),
        ((1, 28), True, False, "container"),
        ((1, 20), True, False, "container"),
        ((1, 20), True, True, None),  # (a kept Job's pod would run its sidecar for ever)
        ((1, 30), False, False, None),
    ],
)
async def test_where_the_sidecar_goes_depends_on_the_server_and_the_options(
    version, status, keep_finished, where
):
    options = KubernetesOptions(image="busybox", status=status)
    told: set[str] = set()
    assert await sidecar_for(_Server(version), options, keep_finished, told) == where
    assert told == ({"kube"} if (status and where is None) else set())
    if where == "native" and not keep_finished:
        server = _Server(version)
        server.native_sidecars = False
        assert await sidecar_for(server, options, keep_finished, told) == "container"


def test_an_adopted_jobs_sidecar_is_read_from_its_template():
    for where in ("native", "container", None):
        assert sidecar_of(manifest(where)) == where


@pytest.mark.kubernetes
async def test_a_1_20_server_drops_an_init_containers_restart_policy(kube):
    # Why the sidecar is native only from 1.29: an older apiserver keeps the init container
    # without its restartPolicy, which would then have to end before the program starts.
    namespace = f"t-{secrets.token_hex(4)}"
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        await client.create(Namespace.from_dict({"metadata": {"name": namespace}}))
        try:
            body = manifest("native")
            body["metadata"]["namespace"] = namespace
            body["spec"]["suspend"] = True  # (nothing runs: only what is stored counts)
            created = await client.create(Job.from_dict(body))
            [copier] = created.spec.template.spec.initContainers
            assert copier.name == STATUS_CONTAINER
            stored = await client.get(Job, created.metadata.name, namespace=namespace)
            spec = stored.to_dict()["spec"]["template"]["spec"]
            assert "restartPolicy" not in spec["initContainers"][0], spec
        finally:
            await client.delete(Namespace, namespace)


@pytest.mark.kubernetes
async def test_a_pods_statuses_reach_corra_show_while_it_runs_and_the_last_stays(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # The stand-in node runs the program here: it waits for a file of the test's.
    go = tmp_path / "go"
    script = (
        'echo \'{"progress": 0.25, "message": "step 1 of 4"}\' >> "$CORRA_STATUS"; '
        f"while [ ! -e {go} ]; do sleep 0.1; done; "
        'echo \'{"progress": 0.5, "message": "step 2 of 4"}\' >> "$CORRA_STATUS"; '
        'printf \'{"progress": 1.0, "message": "done", "items": 3}\\n\' >> "$CORRA_STATUS"; '
        'echo oops >> "$CORRA_STATUS"'
    )
    jobs = job_file(
        tmp_path / "job.toml", kube, namespace, [{"name": "steps", "argv": ["sh", "-c", script]}]
    )
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        running = Beside(nursery, state, "run", "--json", str(jobs))

        async def first() -> bool:
            shown = await corra(state, "show", "steps", "--json")
            if shown.returncode != 0:  # (no state yet)
                return False
            record = json.loads(shown.stdout)
            value = (record.get("status") or {}).get("value") or {}
            return record["phase"] == "running" and value.get("message") == "step 1 of 4"

        await eventually(first, within=60)
        pods = [pod async for pod in client.list(Pod, namespace=namespace)]
        names = [c.name for c in pods[0].spec.containers]
        assert names == ["main", STATUS_CONTAINER]  # (1.20: a second container)
        go.touch()
        with trio.fail_after(60):
            await running.ended.wait()
    assert running.done is not None and running.done.returncode == 0, running.done
    shown = await show(state, "steps")
    assert shown["phase"] == "finished"
    status = shown["status"]
    assert status["value"] == {"progress": 1.0, "message": "done", "items": 3}, status
    assert status["error"] == "not JSON: 'oops'" and status["attempt"] == 1
    # The sidecar runs until the Job is deleted, which corra does once the result is home.
    await nothing_left(client, namespace)


@pytest.mark.kubernetes
async def test_a_native_sidecar_the_server_drops_fails_the_launch_and_the_next_is_a_container(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # A server that says >= 1.29 but drops the init container's restartPolicy (native
    # sidecars off): played by the 1.20 test server made to say 1.29.
    host = HostConfig(
        name="kube",
        transport="kubernetes",
        options={
            "kubernetes": KubernetesHostOptions(
                kubeconfig=str(kube.kubeconfig), namespace=namespace, image="busybox"
            )
        },
    )
    statuses = MemoryStatuses()
    plugin = Registry().get("kubernetes")
    options = KubernetesOptions(image="busybox")
    said = 'echo \'{"message": "here"}\' >> "$CORRA_STATUS"'

    def request(attempt: int) -> LaunchRequest:
        key = EffectKey("native", attempt)
        return LaunchRequest(key, ("sh", "-c", said), host="kube", options=options)

    async with open_plugin(plugin, tmp_path, hosts={"kube": host}, statuses=statuses) as backend:
        cluster = await backend.cluster("kube")
        cluster._version = (1, 29)
        with pytest.raises(LaunchFailed, match="dropped the restartPolicy of the status sidecar"):
            await backend.launch(request(1))
        # (deleted before its program could start: an init container that never ends)
        await eventually(lambda: _no_jobs(client, namespace), within=30)
        handle = await backend.launch(request(2))
        assert handle.sidecar == "container"
        with trio.fail_after(60):
            result = await backend.wait(handle)
    assert result.ok, result
    assert statuses.statuses[EffectKey("native", 2)] == ({"message": "here"}, None)


async def _no_jobs(client: AsyncClient, namespace: str) -> bool:
    return not [job async for job in client.list(Job, namespace=namespace)]
