"""(Lead's placeholder, replaced by the i14-client branch: the same names, fewer checks.)"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx2 as httpx  # (lightkube >= 1.0 speaks httpx2, whose errors are its own)
import trio
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError

from corra._errors import BackendError, HostUnavailable


@attrs.frozen
class KubernetesHostOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    image: str | None = None
    image_error_grace: float = 60.0
    keep_finished: bool = False
    resync: float = 300.0
    writes_per_second: float = 10.0
    write_burst: int = 20


class Cluster:
    def __init__(self, host: str, namespace: str, client: AsyncClient) -> None:
        self.host = host
        self.namespace = namespace
        self.client = client
        self.requests: collections.Counter[str] = collections.Counter()

    async def write_slot(self) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_answering(self) -> None:
        pause = 0.5
        while True:
            try:
                await self.client._client._client.get("/version")
                return
            except httpx.HTTPError:
                await trio.sleep(pause)
                pause = min(30.0, pause * 2)


@contextlib.asynccontextmanager
async def open_cluster(host: Any) -> AsyncIterator[Cluster]:
    options: KubernetesHostOptions = host.options_for("kubernetes")
    path = options.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    config = KubeConfig.from_file(os.path.expanduser(path.split(os.pathsep)[0])).get(  # noqa: ASYNC240
        options.context
    )
    namespace = options.namespace or "default"
    client = AsyncClient(config, namespace=namespace)
    try:
        yield Cluster(host.name, namespace, client)
    finally:
        await client.close()


@contextlib.contextmanager
def api_errors(host: str, doing: str) -> Iterator[None]:
    try:
        yield
    except ApiError as exc:
        if exc.status.code in (404, 409):
            raise
        if exc.status.code in (502, 503, 504):
            raise HostUnavailable(host, f"{doing}: {exc.status.code} {exc}") from exc
        raise BackendError(f"{doing} on {host}: {exc.status.code}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise HostUnavailable(host, f"{doing}: {type(exc).__name__}: {exc}") from exc
