"""A stand-in Kubernetes node for tests: it plays the kubelet, as the Kubernetes project's
kwok does, but runs each bound pod's command as a local program.

There is no kubelet or container runtime on the machines corra is tested on, only a real
control plane (``scripts/kube-test-cluster.sh``). `KubeNode`:

- registers a Node (capacity, InternalIP 127.0.0.1, the port of its log endpoint, a Ready
  condition) and keeps it Ready: it renews its Lease in ``kube-node-lease`` every
  ``heartbeat`` seconds and posts its status every ``status_every`` seconds;
- watches the pods bound to it (``spec.nodeName``) and runs each (`corra.testing._kubepods`:
  real exit codes, and the failure modes a pod asks for by annotation);
- on a pod's deletion, stops its programs (SIGTERM, SIGKILL after the pod's grace), reports
  them terminated and removes the pod (``gracePeriodSeconds=0``, as a kubelet does);
- serves the kubelet's ``/containerLogs`` endpoint over HTTPS (`corra.testing._kubelogs`),
  which the apiserver proxies ``pods/log`` to.

`KubeNode.cut_off` plays node loss: no heartbeats, and no API writes at all (the programs
keep running, the deletions wait) until `KubeNode.reconnect`. Run as a program
(``python -m corra.testing.kubenode``), SIGUSR1 cuts it off and SIGUSR2 reconnects it;
SIGTERM stops it and kills its programs.

lightkube's AsyncClient does every API call. Its watch is restarted here on any error: its
own retry sleeps with asyncio, which would fail under trio.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Secret
from lightkube.types import PatchType

from corra.testing._kubelogs import ContainerLog, LogError, serve_container_logs
from corra.testing._kubepods import BEHAVIOUR, BEHAVIOUR_AFTER, HOST_IP, Behaviour, PodRun, _now

__all__ = [
    "BEHAVIOUR",
    "BEHAVIOUR_AFTER",
    "Behaviour",
    "KubeNode",
    "NodeOptions",
    "main",
    "open_kube_node",
]

logger = logging.getLogger("corra.testing.kubenode")
LEASE_NAMESPACE = "kube-node-lease"


@attrs.frozen
class NodeOptions:
    """What the node says of itself, and how often it heartbeats."""

    name: str = "corra-test-node"
    cpu: str = "8"
    memory: str = "16Gi"
    pods: int = 110
    labels: dict[str, str] = attrs.field(factory=dict)
    #: the node's taints, as in ``spec.taints`` ({"key", "value", "effect"}): a witness
    #: node (see `open_kube_node`) takes ``corra.test/witness`` NoSchedule
    taints: tuple[dict[str, str], ...] = ()
    #: seconds between Lease renewals (the node lifecycle controller's grace: 40 s by
    #: default, CORRA_KUBE_NODE_GRACE in the test cluster)
    heartbeat: float = 2.0
    #: seconds between posts of the node's status (the Ready condition's heartbeat)
    status_every: float = 10.0


DEFAULTS = NodeOptions()


class KubeNode:
    """One stand-in node. Serve it with ``await nursery.start(node.serve)``."""

    def __init__(self, client: AsyncClient, options: NodeOptions | None = None) -> None:
        self.client = client
        self.options = options or NodeOptions()
        self.name = self.options.name
        self.port = 0  #: the port of the log endpoint, once serving
        #: the pods on this node by uid, from binding until they are removed
        self.runs: dict[str, PodRun] = {}
        self._online = trio.Event()
        self._online.set()
        self._posted = trio.Event()  # a status post is due (reconnected)

    # -- node loss ----------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """False while cut off."""
        return self._online.is_set()

    def cut_off(self) -> None:
        """Play node loss: stop heartbeats and every API write until `reconnect`."""
        if self._online.is_set():
            logger.info("cut off")
            self._online = trio.Event()

    def reconnect(self) -> None:
        """End `cut_off`: post the node's status at once, then catch up on the pods."""
        logger.info("reconnected")
        self._online.set()
        self._posted.set()

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[KubeNode] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register the node and play its kubelet until cancelled.

        Reports itself through ``task_status`` once registered, its log endpoint serving and
        its pod watch open. Cancelling kills every program it runs (not the pods: a stopped
        kubelet leaves them as they are). ApiError escapes if the node cannot register."""
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_container_logs, self.find_log)
            await self._register()
            nursery.start_soon(self._heartbeat)
            await nursery.start(self._watch_pods, nursery)
            task_status.started(self)

    def find_log(self, namespace: str, pod: str, container: str) -> ContainerLog:
        """The log of a container of a pod on this node (the log endpoint's lookup)."""
        for run in self.runs.values():
            if run.namespace == namespace and run.name == pod:
                return run.find_log(container)
        raise LogError(404, f'pod "{pod}" does not exist')

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        resources = {
            "cpu": self.options.cpu,
            "memory": self.options.memory,
            "pods": str(self.options.pods),
        }

        def condition(kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": kind,
                "status": str(value),
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-corra-test",
                "kubeProxyVersion": "v1.20.2-corra-test",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "corra-test://1",
                "osImage": "corra test node",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory", "enough"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "enough"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "enough"),
                condition("Ready", True, "KubeletReady", "corra's test node is posting ready"),
            ],
        }

    async def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.options.labels,
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": list(self.options.taints)},
        }
        try:
            await self.client.create(Node.from_dict(node))  # type: ignore[attr-defined]
        except ApiError as error:
            if error.status.code != 409:
                raise
            await self.client.patch(Node, self.name, {"metadata": {"labels": labels}})
        await self._post_status()
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40},
        }
        try:
            await self.client.create(Lease.from_dict(lease))  # type: ignore[attr-defined]
        except ApiError as error:
            if error.status.code != 409:
                raise
        await self._renew_lease()

    async def _post_status(self) -> None:
        await self.client.patch(Node.Status, self.name, {"status": self._node_status()})

    async def _renew_lease(self) -> None:
        # (a MicroTime: six digits of fraction, always)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        renewed = {"spec": {"renewTime": now}}
        await self.client.patch(
            Lease, self.name, renewed, namespace=LEASE_NAMESPACE, patch_type=PatchType.MERGE
        )

    async def _heartbeat(self) -> None:
        since_post = 0.0
        while True:
            with trio.move_on_after(self.options.heartbeat):
                await self._posted.wait()
            await self._online.wait()
            try:
                if self._posted.is_set() or since_post >= self.options.status_every:
                    self._posted = trio.Event()
                    since_post = 0.0
                    await self._post_status()
                await self._renew_lease()
            except Exception:  # a missed beat is retried at the next one
                logger.exception("heartbeat failed")
            since_post += self.options.heartbeat

    # -- pods -----------------------------------------------------------------------------

    async def _watch_pods(
        self,
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        fields = {"spec.nodeName": self.name}
        while True:
            try:
                # List, then watch from the list's version: a restart (or a 410) catches up.
                listed = self.client.list(Pod, namespace="*", fields=fields)
                async for pod in listed:
                    self._on_pod("ADDED", pod, nursery)
                version = listed.resourceVersion  # type: ignore[attr-defined]
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                watch = self.client.watch(
                    Pod, namespace="*", fields=fields, resource_version=version
                )
                async for kind, pod in watch:
                    await self._online.wait()
                    self._on_pod(kind, pod, nursery)
            except Exception:
                logger.exception("pod watch failed; listing again")
            await trio.sleep(0.5)

    def _on_pod(self, kind: str, pod: Any, nursery: trio.Nursery) -> None:
        uid = pod.metadata.uid
        run = self.runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.delete(0)
            return
        if pod.metadata.deletionTimestamp is not None:
            if run is None:
                nursery.start_soon(self._remove, pod.metadata.namespace, pod.metadata.name)
            else:
                run.delete(float(pod.metadata.deletionGracePeriodSeconds or 0))
            return
        if run is None and pod.status.phase not in ("Succeeded", "Failed"):
            run = self.runs[uid] = PodRun(self, pod)
            nursery.start_soon(self._run_pod, run)

    async def _run_pod(self, run: PodRun) -> None:
        # A run that failed stays known until its pod is deleted: it is never run twice.
        try:
            await run.run()
        except Exception:
            logger.exception("pod %s/%s failed on the node", run.namespace, run.name)
        await run.deleting.wait()  # a finished pod keeps its logs until deleted
        try:
            await self._remove(run.namespace, run.name)
        except Exception:
            logger.exception("pod %s/%s could not be removed", run.namespace, run.name)
        finally:
            del self.runs[run.uid]

    async def _remove(self, namespace: str, name: str) -> None:
        """Finish a pod's deletion (the kubelet's part: grace 0, the programs are gone)."""
        await self._online.wait()
        try:
            await self.client.delete(Pod, name, namespace=namespace, grace_period=0)
        except ApiError as error:
            if error.status.code != 404:
                raise

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Patch a pod's status (strategic merge); waits while cut off; a pod gone is fine."""
        await self._online.wait()
        try:
            await self.client.patch(Pod.Status, name, {"status": status}, namespace=namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise

    async def read_key(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        """A key of a Secret or ConfigMap (decoded), or None where there is none."""
        try:
            found = await self.client.get(
                Secret if kind == "Secret" else ConfigMap, name, namespace=namespace
            )
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        if kind == "Secret":
            value = (found.data or {}).get(key)
            return None if value is None else base64.b64decode(value).decode()
        return (found.data or {}).get(key)


@contextlib.asynccontextmanager
async def open_kube_node(
    client: AsyncClient, options: NodeOptions | None = None
) -> AsyncIterator[KubeNode]:
    """Serve a node in this trio run while the block runs; then stop it and delete its Node.

    For a second node in a test. One use: the node lifecycle controller evicts nothing when
    no node of the cluster (of the zone) is Ready, as it takes that for its own partition; a
    node-loss test therefore needs a witness that stays Ready, e.g.
    ``NodeOptions(name="witness", taints=({"key": "corra.test/witness", "effect":
    "NoSchedule"},))`` so that no pod lands on it.
    """
    async with trio.open_nursery() as nursery:
        node: KubeNode = await nursery.start(KubeNode(client, options).serve)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(10),
                contextlib.suppress(ApiError),
            ):
                await client.delete(Node, node.name)


# -- the program -------------------------------------------------------------------------------


async def _main(arguments: argparse.Namespace) -> None:
    config = KubeConfig.from_file(arguments.kubeconfig)
    options = NodeOptions(
        name=arguments.name,
        cpu=arguments.cpu,
        memory=arguments.memory,
        heartbeat=arguments.heartbeat,
    )
    node = KubeNode(AsyncClient(config), options)
    async with node.client, trio.open_nursery() as nursery:
        nursery.start_soon(_obey_signals, node, nursery.cancel_scope)
        await nursery.start(node.serve)
        if arguments.ready_file is not None:
            await trio.Path(arguments.ready_file).write_text(f"{node.port}\n")


async def _obey_signals(node: KubeNode, scope: trio.CancelScope) -> None:
    # (From the start: a SIGTERM while registering stops the node too.)
    catch = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
    with trio.open_signal_receiver(*catch) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                node.cut_off()
            elif signum == signal.SIGUSR2:
                node.reconnect()
            else:
                scope.cancel()
                return


def main(argv: list[str] | None = None) -> None:
    """``python -m corra.testing.kubenode --kubeconfig F [--name NODE] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m corra.testing.kubenode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--name", default=DEFAULTS.name)
    parser.add_argument("--cpu", default=DEFAULTS.cpu)
    parser.add_argument("--memory", default=DEFAULTS.memory)
    parser.add_argument("--heartbeat", type=float, default=DEFAULTS.heartbeat, help="seconds")
    parser.add_argument("--ready-file", help="written (with the log port) once the node serves")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # (a line per request)
    trio.run(_main, arguments)


if __name__ == "__main__":
    sys.exit(main())
