"""The conformance kit against the kubernetes backend, on the real control plane of
scripts/kube-test-cluster.sh (the stand-in node runs the pods' commands)."""

from __future__ import annotations

import secrets

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace
from lightkube.types import CascadeType

from corra.backends.kubernetes import KubernetesHostOptions
from corra.backends.ssh import HostConfig
from corra.processes._registry import Registry
from corra.testing import BackendConformance, Opener, open_plugin

pytestmark = pytest.mark.kubernetes

HOST = "kube"


@pytest.fixture(scope="module")
def namespace(kube):
    """A namespace of the module's own (made and deleted through the API)."""
    import trio

    name = f"conformance-{secrets.token_hex(4)}"

    async def make() -> None:
        async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
            await client.create(Namespace.from_dict({"metadata": {"name": name}}))

    async def delete() -> None:
        async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
            await client.delete(Namespace, name)

    trio.run(make)
    yield name
    trio.run(delete)


def cluster_host(kube, namespace: str, **options) -> HostConfig:
    """The test cluster as a ``[hosts.NAME]`` with ``transport = "kubernetes"``."""
    settings = KubernetesHostOptions(
        kubeconfig=str(kube.kubeconfig), namespace=namespace, image="busybox", **options
    )
    return HostConfig(name=HOST, transport="kubernetes", options={"kubernetes": settings})


class TestKubernetesConformance(BackendConformance):
    patience = 30.0

    @pytest.fixture
    def plugin(self):
        return Registry().get("kubernetes")

    @pytest.fixture
    def host(self) -> str:
        return HOST

    @pytest.fixture
    def open_backend(self, plugin, tmp_path, kube, namespace) -> Opener:
        hosts = {HOST: cluster_host(kube, namespace)}
        return lambda: open_plugin(plugin, tmp_path, hosts=hosts)

    @pytest.fixture
    def lose_program(self, kube):
        async def lose(backend, handle) -> None:
            # Someone deletes the Job behind corra's back, pods at once.
            async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
                await client.delete(
                    Job,
                    handle.job,
                    namespace=handle.namespace,
                    grace_period=0,
                    cascade=CascadeType.BACKGROUND,
                )

        return lose
