"""The kubernetes backend as users drive it: `corra run`, `show`, `logs`, `serve`, `submit`,
`kill`, against the real control plane of scripts/kube-test-cluster.sh, each test in a
namespace of its own (tests/_kubecli.py): what becomes of a program.

Output home while the program runs and once its Job is gone; exit codes and signals;
argv and env reaching the program as given; OOMKilled; image pull and container config
errors; timeout, kill (running or pending) leaving no pod; an unschedulable pod that waits.
tests/test_kubernetes_recovery.py has node failures, many processes, kill -9 and recovery.

The stand-in node plays its failure modes by the pod annotation ``corra.test/node-behaviour``
(set through the process's ``kubernetes.pod_template``), and runs programs on this machine
(a test may wait for a file, or look for a program's pid).
"""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path
from typing import Any

import _kube
import pytest
import trio
from _kubecli import (  # (fixtures too)
    HOST,
    Beside,
    alive,
    corra,
    eventually,
    job_file,
    job_names,
    logs,
    nothing_left,
    pid_of,
    pod_names,
    pods_at_least,
    run,
    running_pod,
    show,
    start_service,
)
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Node, Pod, Secret

from corra._runtime import open_runtime
from corra.backends.kubernetes import KubernetesHostOptions
from corra.backends.ssh import HostConfig
from corra.testing.kubenode import BEHAVIOUR, BEHAVIOUR_AFTER

pytestmark = pytest.mark.kubernetes


async def test_a_program_completes_and_its_output_stays_home_once_its_job_is_gone(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    program = {"name": "hello", "argv": ["sh", "-c", "echo one; echo two >&2; echo three"]}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 0, records
    record = records["hello"]
    assert (record["phase"], record["returncode"], record["attempt"]) == ("finished", 0, 1)
    # The Job is deleted once the result and the log are home, before `corra run` ends
    # (the run is the last chance: nothing sweeps it otherwise), its pod after it ...
    assert await job_names(client, namespace) == []
    await nothing_left(client, namespace)
    # ... and the log is read from home (stdout and stderr share the container's one log).
    assert await logs(state, "hello") == "one\ntwo\nthree\n"
    assert record["result"]["stdout_bytes"] == len("one\ntwo\nthree\n")


async def test_a_program_fails_with_its_exit_code_or_signal_and_reruns_in_new_jobs(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    processes = [
        {"name": "three", "argv": ["sh", "-c", "echo about to fail; exit 3"]},
        {"name": "termed", "argv": ["sh", "-c", "echo bye; kill -TERM $$"]},
        {
            "name": "again",
            "argv": ["sh", "-c", 'echo "attempt $CORRA_ATTEMPT"; exit 1'],
            "restart": "transient",
            "max_attempts": 2,
        },
    ]
    jobs = job_file(tmp_path / "job.toml", kube, namespace, processes)
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 1, records
    three = records["three"]
    assert (three["phase"], three["returncode"], three["signal"]) == ("failed", 3, None)
    assert three["reason"] == "exited with 3"
    assert await logs(state, "three") == "about to fail\n"
    # (a container runtime reports a signal as 128 + its number)
    termed = records["termed"]
    assert (termed["phase"], termed["returncode"], termed["signal"]) == ("failed", None, 15)
    assert termed["reason"] == "killed by signal 15", termed
    # Each attempt is a Job of its own (the first one's deleted before the second's made).
    again = records["again"]
    assert (again["phase"], again["returncode"], again["attempt"]) == ("failed", 1, 2)
    assert await logs(state, "again") == "attempt 2\n"
    await nothing_left(client, namespace)


async def test_argv_env_and_the_templates_env_reach_the_program_as_given(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # The kubelet expands $(VAR) and $$ in a container's command and env values; corra's
    # argv and env are exec's, on every backend.
    words = ["$(CORRA_ATTEMPT)", "a$$b", "$HOME", "$"]
    dollars = {
        "name": "dollars",
        "argv": ["sh", "-c", 'printf "%s\\n" "$@" "$WORD"', "sh", *words],
        "env": {"WORD": "x$(CORRA_PROCESS_NAME)$$"},
    }
    # A variable from a Secret, which the typed fields do not cover: the pod template's,
    # beside the process's env.
    await client.create(
        Secret.from_dict({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}),
        namespace=namespace,
    )
    reference = {"secretKeyRef": {"name": "creds", "key": "token"}}
    template = {
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "env": [
                        {"name": "TOKEN", "valueFrom": reference},
                        {"name": "PLAIN", "value": "from the template, overridden"},
                    ],
                }
            ]
        }
    }
    secret = {
        "name": "secret",
        "argv": ["sh", "-c", 'echo "$TOKEN $PLAIN $CORRA_PROCESS_NAME"'],
        "env": {"PLAIN": "from the spec"},
        "kubernetes": {"pod_template": template},
    }
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [dollars, secret])
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 0, records
    assert await logs(state, "dollars") == "".join(f"{word}\n" for word in words) + (
        "x$(CORRA_PROCESS_NAME)$$\n"
    )
    assert await logs(state, "secret") == "s3cret from the spec secret\n"


async def test_oom_killed_is_out_of_memory_whatever_the_exit_code(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    def oom(name: str, behaviour: str, command: str, **annotations: str) -> dict[str, Any]:
        template = {"metadata": {"annotations": {BEHAVIOUR: behaviour, **annotations}}}
        return {
            "name": name,
            "argv": ["sh", "-c", command],
            "kubernetes": {"pod_template": template},
        }

    processes = [
        # killed by the node while it runs (exit code 137) ...
        oom("killed", "oom-killed", "echo eating; sleep 100", **{BEHAVIOUR_AFTER: "0.5"}),
        # ... and a container whose child was OOM-killed, itself exiting 0
        oom("zero", "oom-killed-real-exit-code", "echo child died; exit 0"),
    ]
    jobs = job_file(tmp_path / "job.toml", kube, namespace, processes)
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 1, records
    for record in records.values():
        assert record["phase"] == "failed", record
        assert record["reason"] == "out of memory (OOMKilled)", record
    assert (records["zero"]["returncode"], records["zero"]["signal"]) == (0, None)
    assert (records["killed"]["returncode"], records["killed"]["signal"]) == (None, 9)
    assert await logs(state, "zero") == "child died\n"
    await nothing_left(client, namespace)


async def test_an_image_or_config_error_fails_after_the_grace_and_its_job_is_deleted(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    template = {"metadata": {"annotations": {BEHAVIOUR: "image-pull-backoff"}}}
    pull = {
        "name": "pull",
        "argv": ["echo", "never"],
        "kubernetes": {"image": "registry.invalid/none:1", "pod_template": template},
    }
    # A variable from a Secret that does not exist: CreateContainerConfigError.
    reference = {"secretKeyRef": {"name": "missing", "key": "token"}}
    variable = {"name": "TOKEN", "valueFrom": reference}
    template = {"spec": {"containers": [{"name": "main", "env": [variable]}]}}
    secret = {"name": "secret", "argv": ["echo", "never"], "kubernetes": {"pod_template": template}}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [pull, secret], image_error_grace=2)
    state = tmp_path / "state"
    started = time.monotonic()
    status, records = await run(state, jobs)
    assert status == 1, records
    assert time.monotonic() - started >= 2
    for record in records.values():
        assert record["phase"] == "failed"
        assert (record["returncode"], record["signal"]) == (None, None)
    error = records["pull"]["result"]["error"]
    assert error.startswith("image error for 2 s, Job deleted: "), error
    assert "ImagePullBackOff" in error or "ErrImagePull" in error
    assert records["secret"]["result"]["error"] == (
        "configuration error for 2 s, Job deleted: CreateContainerConfigError: couldn't find "
        f"key token in Secret {namespace}/missing"
    )
    await nothing_left(client, namespace)


async def test_a_timeout_is_the_jobs_deadline_and_leaves_no_pod(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    program = {"name": "slow", "argv": ["sh", "-c", "echo started; sleep 100"], "timeout": 2}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        running = Beside(nursery, state, "run", "--json", str(jobs))
        pid = pid_of(await running_pod(client, namespace))
        await running.ended.wait()
        # (its pod was gone before the result was given)
        assert await pod_names(client, namespace) == []
    assert running.done.returncode == 1
    record = running.records()["slow"]
    assert record["phase"] == "failed", record
    assert record["result"]["timed_out"] is True
    assert record["reason"].startswith("timed out"), record
    assert not alive(pid)
    assert await logs(state, "slow") == "started\n"
    await nothing_left(client, namespace)


async def test_logs_come_home_while_the_program_runs_and_follow_to_its_end(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"  # (the node runs programs on this machine: it waits for the file)
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.1; done; echo second"
    program = {"name": "talker", "argv": ["sh", "-c", command]}
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        running = Beside(nursery, state, "run", "--json", str(jobs))
        await eventually(lambda: _logs_are(state, "talker", "first\n"), 60)
        assert not running.ended.is_set()
        following = Beside(nursery, state, "logs", "-f", "talker")
        go.touch()
        with trio.fail_after(60):
            await following.ended.wait()
            await running.ended.wait()
    assert following.done.returncode == 0, following.done.stderr
    assert following.done.stdout == b"first\nsecond\n"
    assert running.records()["talker"]["phase"] == "finished"
    await nothing_left(client, namespace)
    assert await logs(state, "talker") == "first\nsecond\n"


async def _logs_are(state: Path, name: str, text: str) -> bool:
    read = await corra(state, "logs", name)
    return read.returncode == 0 and read.stdout.decode() == text


async def test_an_unschedulable_process_waits_until_a_node_fits(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    label = f"corra.test/pool-{secrets.token_hex(3)}"
    program = {
        "name": "picky",
        "argv": ["sh", "-c", "echo placed"],
        "kubernetes": {"node_selector": {label: "yes"}},
    }
    jobs = job_file(tmp_path / "job.toml", kube, namespace, [program])
    state = tmp_path / "state"

    async def unschedulable() -> bool:
        for pod in [pod async for pod in client.list(Pod, namespace=namespace)]:
            for condition in (pod.status and pod.status.conditions) or ():
                if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                    return True
        return False

    try:
        async with trio.open_nursery() as nursery:
            running = Beside(nursery, state, "run", "--json", str(jobs))
            await eventually(unschedulable, 30)

            # Pending is not failed: it waits (as long as it takes), as a running process,
            # with the scheduler's message as its note in `corra show`.
            async def noted() -> bool:
                note = (await show(state, "picky"))["note"]
                return note is not None and note["text"].startswith("unschedulable: 0/")

            await eventually(noted, 30)
            record = await show(state, "picky")
            assert record["phase"] == "running", record
            assert "didn't match" in record["note"]["text"], record["note"]
            assert not running.ended.is_set()
            await client.patch(Node, _kube.NODE, {"metadata": {"labels": {label: "yes"}}})
            with trio.fail_after(60):
                await running.ended.wait()
    finally:
        with trio.CancelScope(shield=True):
            await client.patch(Node, _kube.NODE, {"metadata": {"labels": {label: None}}})
    assert running.done.returncode == 0, running.done.stderr
    record = running.records()["picky"]
    assert (record["phase"], record["returncode"], record["attempt"]) == ("finished", 0, 1)
    assert await logs(state, "picky") == "placed\n"
    assert (await show(state, "picky"))["note"] is None  # (gone with the attempt's end)
    await nothing_left(client, namespace)


async def test_kill_while_running_or_pending_leaves_no_pod_and_no_job(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    # A first run on the state dir makes the cluster one of its hosts (hosts.json), as the
    # service knows only the hosts it was started with.
    first = {"name": "first", "argv": ["true"]}
    status, _ = await run(state, job_file(tmp_path / "first.toml", kube, namespace, [first]))
    assert status == 0
    nap = {
        "name": "nap",
        # (it ignores SIGTERM: the pod's grace, the kill's, is over before it ends)
        "argv": ["sh", "-c", "trap '' TERM; echo napping; sleep 300 & wait"],
        "kill_grace": 1,
    }
    # ... and one that no node takes: its pod pending, waiting for a node.
    stuck = {
        "name": "stuck",
        "argv": ["echo", "never"],
        "kubernetes": {"node_selector": {"corra.test/nowhere": "true"}},
    }
    jobs = job_file(tmp_path / "nap.toml", kube, namespace, [nap, stuck])
    service = await start_service(state)
    try:
        submitted = await corra(state, "submit", str(jobs))
        assert submitted.returncode == 0, submitted.stderr
        pod = await running_pod(client, namespace)
        pid = pid_of(pod)
        await eventually(lambda: pods_at_least(client, namespace, 2), 30)
        killed = await corra(state, "kill", "nap")
        assert killed.returncode == 0, killed.stderr
        # The kill returns once the Job and its pod are gone, the program with them.
        nap_job = pod.metadata.labels["job-name"]
        assert nap_job not in await job_names(client, namespace)
        assert pod.metadata.name not in await pod_names(client, namespace)
        assert not alive(pid)
        killed = await corra(state, "kill", "stuck")
        assert killed.returncode == 0, killed.stderr
        assert await job_names(client, namespace) == []
        assert await pod_names(client, namespace) == []
        record = await show(state, "nap")
        assert record["phase"] == "killed", record
        assert record["result"]["killed"] is True
        assert await logs(state, "nap") == "napping\n"
        assert (await show(state, "stuck"))["phase"] == "killed"
    finally:
        service.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await service.wait()


async def test_a_runtime_that_closes_right_after_a_result_deletes_its_job_first(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # (through the runtime's API: it closes the moment the result is in, as `corra run`
    # does after its last process; the deletion waits for its turn to write, 2 s after
    # the create)
    settings = KubernetesHostOptions(
        kubeconfig=str(kube.kubeconfig),
        namespace=namespace,
        image="busybox",
        writes_per_second=0.5,
        write_burst=1,
    )
    hosts = {HOST: HostConfig(name=HOST, transport="kubernetes", options={"kubernetes": settings})}
    async with open_runtime(state_dir=tmp_path / "state", hosts=hosts) as runtime:
        ref = await runtime.spawn_process(["true"], name="quick", backend="kubernetes", host=HOST)
        assert (await ref.wait()).phase == "finished"
    assert await job_names(client, namespace) == []


async def test_a_programs_value_is_its_termination_message_and_4096_bytes_is_too_long(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    writes = 'printf \'{"items": [1, 2], "pod": true}\' > "$CORRA_RESULT"'
    processes = [
        {"name": "valued", "argv": ["sh", "-c", writes]},
        {
            "name": "long",
            "argv": ["sh", "-c", 'head -c 5000 /dev/zero | tr "\\0" x > "$CORRA_RESULT"'],
        },
        {"name": "silent", "argv": ["true"]},
    ]
    jobs = job_file(tmp_path / "job.toml", kube, namespace, processes)
    state = tmp_path / "state"
    status, records = await run(state, jobs)
    assert status == 0, records
    valued = (await show(state, "valued"))["result"]
    assert (valued["value"], valued["has_value"]) == ({"items": [1, 2], "pod": True}, True)
    long = (await show(state, "long"))["result"]
    assert long["has_value"] is False and long["returncode"] == 0
    assert "Kubernetes keeps at most 4096 bytes" in long["value_error"], long
    silent = (await show(state, "silent"))["result"]
    assert (silent["has_value"], silent["value_error"]) == (False, None)
