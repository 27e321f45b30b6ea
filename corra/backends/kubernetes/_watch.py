"""One list+watch per cluster and namespace: what every attempt there learns its state from.

Not one watch per process: one list, then one watch, of corra's Jobs and of their pods,
selected by the runtime's instance label, shared by every attempt in the namespace. Each
attempt waits on its Job's name (`NamespaceWatch.changed`) and reads what the watch holds
of it (`NamespaceWatch.view`): a status change reaches it without a request of its own.

The watch starts over with a new list (a *relist*, after which every attempt whose Job or
pods changed looks again):
- when the server says its position is gone (``410 Gone``: the events since were compacted
  away, so some may have been missed);
- when a stream fails (a connection lost, an error answer), after a pause that doubles up
  to `MAX_PAUSE`;
- every ``resync`` seconds, so that whatever a stream may have missed is found in time.

Objects are kept as the API gives them (plain JSON), as `corra.backends.kubernetes._outcomes`
reads them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import msgspec
import trio
from lightkube import AsyncClient
from lightkube.core import decoders
from lightkube.core.exceptions import ApiError
from lightkube.core.selector import build_selector
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from corra.backends.kubernetes._client import HTTP_ERRORS

logger = logging.getLogger("corra.backend.kubernetes")

#: The longest pause before a relist after failures.
MAX_PAUSE: Final = 30.0
#: The label the Job controller puts on a Job's pods: the Job's name.
JOB_NAME_LABEL: Final = "job-name"


class NamespaceWatch:
    """The Jobs (and their pods) of one namespace that have ``labels``, kept current.

    Args:
        client: the cluster's client.
        namespace: the namespace watched.
        labels: the label selector (corra's instance label).
        resync: seconds between two relists while nothing fails.
        server_timeout: seconds the server keeps one watch request open (lightkube opens the
            next from where it was).
    """

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        labels: Mapping[str, str],
        *,
        resync: float = 300.0,
        server_timeout: int = 290,
    ) -> None:
        self._client = client
        self.namespace = namespace
        self._labels = dict(labels)
        self._resync = resync
        self._server_timeout = server_timeout
        self._jobs: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._waiters: dict[str, trio.Event] = {}
        self.relists = 0
        """Lists made so far (the first one included)."""
        self.last_relist_reason: str | None = None

    # -- what attempts read ---------------------------------------------------------------

    def view(self, job: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The Job named ``job`` (None if unseen or deleted) and its pods, oldest first."""
        pods = sorted(
            self._pods.get(job, {}).values(),
            key=lambda pod: (pod.get("metadata") or {}).get("creationTimestamp") or "",
        )
        return self._jobs.get(job), pods

    def job_names(self) -> list[str]:
        """The names of the Jobs the watch holds now."""
        return list(self._jobs)

    async def changed(self, job: str) -> None:
        """Return at the next change of the Job named ``job`` or of one of its pods (or at
        the next relist). A checkpoint."""
        event = self._waiters.get(job)
        if event is None:
            event = self._waiters[job] = trio.Event()
        await event.wait()

    def _wake(self, job: str) -> None:
        event = self._waiters.pop(job, None)
        if event is not None:
            event.set()

    # -- keeping current --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the watch current until cancelled; started once the first list is in."""
        pause = 0.0
        versions = await self._relist_until_done()
        task_status.started()
        while True:
            reason = await self._follow(*versions)
            self.last_relist_reason = reason
            if reason == "resync" or reason == "gone":
                pause = 0.0
            else:
                pause = min(MAX_PAUSE, max(0.5, pause * 2))
                logger.warning(
                    "watch of namespace %s: %s; listing again in %.1f s",
                    self.namespace,
                    reason,
                    pause,
                )
                await trio.sleep(pause)
            versions = await self._relist_until_done()

    async def _relist_until_done(self) -> tuple[str, str]:
        pause = 0.5
        while True:
            try:
                return await self._relist()
            except (ApiError, *HTTP_ERRORS, OSError) as exc:
                logger.warning(
                    "listing namespace %s failed: %s; again in %.1f s", self.namespace, exc, pause
                )
                await trio.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)

    async def _relist(self) -> tuple[str, str]:
        """List the Jobs and pods anew, wake every attempt whose view changed, and return
        the versions to watch from."""
        jobs_listed = self._client.list(Job, namespace=self.namespace, labels=self._labels)
        jobs = {job.metadata.name: job.to_dict() async for job in jobs_listed}
        pods_listed = self._client.list(Pod, namespace=self.namespace, labels=self._labels)
        pods: dict[str, dict[str, dict[str, Any]]] = {}
        async for pod in pods_listed:
            owner = (pod.metadata.labels or {}).get(JOB_NAME_LABEL)
            if owner is not None:
                pods.setdefault(owner, {})[pod.metadata.name] = pod.to_dict()
        self.relists += 1
        before_jobs, before_pods = self._jobs, self._pods
        self._jobs, self._pods = jobs, pods
        # (only those whose view changed: an unchanged one would read the same again, and
        # waking a thousand waiters at every resync stalled the event loop)
        for name in set(before_jobs) | set(jobs) | set(before_pods) | set(pods):
            if before_jobs.get(name) != jobs.get(name) or before_pods.get(name) != pods.get(name):
                self._wake(name)
        return _version(jobs_listed), _version(pods_listed)

    async def _follow(self, job_version: str, pod_version: str) -> str:
        """Follow both streams until one fails, the server says a position is gone, or the
        resync is due; says which."""
        reason = "resync"
        async with trio.open_nursery() as nursery:

            async def follow(kind: Any, version: str) -> None:
                nonlocal reason
                try:
                    async for event, obj in self._events(kind, version):
                        self._apply(kind, event, obj)
                    reason = f"the {kind.__name__} stream ended"
                except ApiError as exc:
                    code = exc.status.code if exc.status is not None else None
                    reason = "gone" if code == 410 else f"the {kind.__name__} stream: {exc}"
                except (*HTTP_ERRORS, OSError) as exc:
                    reason = f"the {kind.__name__} stream: {type(exc).__name__}: {exc}"
                nursery.cancel_scope.cancel()

            nursery.start_soon(follow, Job, job_version)
            nursery.start_soon(follow, Pod, pod_version)
            await trio.sleep(self._resync if math.isfinite(self._resync) else math.inf)
            nursery.cancel_scope.cancel()
        return reason

    async def _events(self, kind: Any, version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The watch events of ``kind`` from ``version`` on, as the API gives them, each
        request reopened from the last event's version when the server closes it.

        lightkube's own watch, but for two things: its objects stay plain JSON, and a
        request that ends with an ERROR event (``410 Gone``) is read to its end before the
        error is raised (lightkube raises it inside its loop over the response's lines,
        which leaves httpx's line iterators unfinished, and trio warns of each as it is
        collected)."""
        generic = self._client._client  # (lightkube's request building, auth and transport)
        params: dict[str, Any] = {
            "timeoutSeconds": self._server_timeout,
            "resourceVersion": version,
            # (the server sends its position now and then, so that a quiet watch reopens
            # from a recent one, not from one compacted away since: no relist)
            "allowWatchBookmarks": "true",
            "labelSelector": build_selector(self._labels),
        }
        request = generic.prepare_request(
            "list", res=kind, namespace=self.namespace, watch=True, params=params
        )
        while True:
            response = await generic.send(
                generic._client.build_request(
                    request.method,
                    request.url,
                    params=request.params,
                    timeout=generic._watch_timeout,
                ),
                stream=True,
            )
            error = None
            try:
                response.raise_for_status()
                async for line in _lines(response.aiter_bytes()):
                    event = _decode(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        error = ApiError(status=decoders.decode_status(msgspec.json.encode(obj)))
                        continue
                    request.params["resourceVersion"] = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        yield kind, obj
            finally:
                await response.aclose()
            if error is not None:
                raise error

    def _apply(self, kind: Any, event: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if kind is Job:
            if event == "DELETED":
                self._jobs.pop(name, None)
            else:
                self._jobs[name] = obj
            self._wake(name)
            return
        owner = (metadata.get("labels") or {}).get(JOB_NAME_LABEL)
        if owner is None:
            return
        if event == "DELETED":
            pods = self._pods.get(owner, {})
            pods.pop(name, None)
            if not pods:
                self._pods.pop(owner, None)
        else:
            self._pods.setdefault(owner, {})[name] = obj
        self._wake(owner)


_decode = msgspec.json.Decoder(dict[str, Any]).decode


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The lines of a watch stream's body, as bytes (a watch event per line: no text
    decoding, which costs a busy namespace's event loop more than the JSON does)."""
    rest = b""
    async for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


def _version(listed: Any) -> str:
    """The resource version a list was made at (where its watch starts)."""
    try:
        return str(listed.resourceVersion)
    except Exception:  # (an empty list may not say: watch from now)
        return "0"
