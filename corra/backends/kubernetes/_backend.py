"""The kubernetes backend: one Job per attempt, on a cluster that is a ``[hosts.NAME]``.

Rule 1, nothing runs twice: the intent is on disk before the create (`_attempts`); the Job's
name comes from the attempt's key, so a replayed launch that is told "already exists" adopts
the Job (after checking its labels), and a launch whose handle is on disk returns it without
asking the cluster, even after the Job was deleted.

Rule 2, watch, do not poll: every attempt on a host reads one list+watch of the host's
namespace (`NamespaceWatch`, started with the first attempt that waits there); an attempt
asks the API itself only where the watch cannot tell (a Job it has not seen yet).

Rule 3, nothing is left running: a kill deletes the Job (foreground) and its pods with the
kill's grace and waits until they are gone; an attempt that timed out, failed for its image
or its configuration, or lost its node, is deleted the same way before its result is given.
A finished Job is deleted once its result and logs are home (``keep_finished`` keeps it), and
recovery deletes the Jobs of this instance whose attempts are home or gone (`sweep`).

Rule 4, outcomes say what to do (`_outcomes.classify`): an unschedulable pod waits, with the
scheduler's message as the attempt's note, never failed for being pending; an image or
configuration error fails the attempt after ``image_error_grace``; eviction and node loss are
a node failure (a transient process reruns); exit codes above 128 are signals, as container
runtimes report them.

Rule 5, statuses through the pod's own log: a status sidecar copies the lines the program
appends to ``$CORRA_STATUS`` to its log, which comes home like the program's and is read
there (`_statuses`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
import trio
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.types import PatchType

from corra._errors import (
    BackendError,
    ConfigError,
    HostUnavailable,
    LaunchFailed,
    ProgramLost,
    TransportError,
)
from corra.backends._follow import StatusFollower, following
from corra.backends.kubernetes import _statuses
from corra.backends.kubernetes._attempts import (
    AttemptFiles,
    instance_id,
    keep_value,
    undeleted,
)
from corra.backends.kubernetes._client import Cluster, open_cluster, read_job
from corra.backends.kubernetes._deletion import delete_attempt, delete_job
from corra.backends.kubernetes._logs import LogFiles
from corra.backends.kubernetes._manifest import STATUS_CONTAINER, job_manifest
from corra.backends.kubernetes._naming import (
    INSTANCE_LABEL,
    KEY_ANNOTATION,
    adoptable,
    job_name,
    label_value,
)
from corra.backends.kubernetes._options import KubernetesOptions
from corra.backends.kubernetes._outcomes import (
    AttemptView,
    attempt_result,
    classify,
    exit_status,
)
from corra.backends.kubernetes._shipping import LogShipping
from corra.backends.kubernetes._statuses import sidecar_for, sidecar_of, statuses_home
from corra.backends.kubernetes._watch import NamespaceWatch
from corra.processes._backend import (
    RESULT_STREAM,
    BackendBase,
    BackendContext,
    Capabilities,
    EffectKey,
    LaunchRequest,
    optional_field,
)
from corra.processes._lifecycle import Result

logger = logging.getLogger("corra.backend.kubernetes")

#: How long an ended attempt's logs may take to come home before its result is given.
LOG_PATIENCE: Final = 30.0
#: How long the first list of a namespace may take before the host counts as unavailable.
LIST_PATIENCE: Final = 20.0
#: How long the deletions of finished Jobs may take when the backend closes.
FINISH_PATIENCE: Final = 10.0
#: What a waiting attempt's note says of where it is.
_NOTED: Final = {
    "waiting": "waiting",
    "unschedulable": "unschedulable",
    "image_error": "image error",
    "config_error": "configuration error",
}
#: Between two looks at a Job the watch has not seen yet.
UNSEEN_PAUSE: Final = 2.0


@attrs.frozen
class KubeHandle:
    """An attempt's Job: where it is, and which Job of that name it is (its uid)."""

    key: str
    host: str
    namespace: str
    job: str
    uid: str
    suspend_on_pause: bool = optional_field(False)
    output_limit: int | None = optional_field(None)
    sidecar: str | None = optional_field(None)
    """Where its status sidecar is: ``native``, ``container``, or None (no statuses)."""


class KubernetesBackend(BackendBase):
    """Processes as Kubernetes Jobs (see the module's docstring).

    Args:
        context: the runtime's context: its hosts (those with ``transport = "kubernetes"``
            are clusters), its state dir.
        nursery: where the watches, the log shipping of kills and the deletions run.
        stack: where clusters are opened (closed with the backend).
    """

    capabilities = Capabilities(
        hosts=True, pause_hooks=True, waits_for_host=True, log_size=True, merged_output=True,
        status=True,
    )  # fmt: skip
    handle_type = KubeHandle

    def __init__(
        self,
        context: BackendContext,
        nursery: trio.Nursery,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self._context = context
        self._hosts = {
            name: host
            for name, host in context.hosts.items()
            if getattr(host, "transport", None) == "kubernetes"
        }
        self._root = context.state_dir / "kubernetes"
        self._nursery = nursery
        self._stack = stack
        self._clusters: dict[str, Cluster] = {}
        self._watches: dict[str, NamespaceWatch] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._deleting: set[str] = set()
        self._shipping = LogShipping(nursery, self.watch, self._clusters.__getitem__)
        #: where finished Jobs are deleted, and leftovers swept: `open_kubernetes` lets these
        #: end (for a while) before it closes, so that a `corra run` that ends right after
        #: its last result leaves no finished Job behind
        self.finishing = nursery
        self.instance = instance_id(self._root)
        #: where the status logs at home are read (`open_kubernetes` sets it)
        self.follower: StatusFollower | None = None
        self._told_no_sidecar: set[str] = set()

    # -- hosts, clusters, watches -------------------------------------------------------

    def check(self, request: LaunchRequest) -> None:
        if request.host not in self._hosts:
            raise ConfigError(
                f"host: got {request.host!r}, expected a cluster: a [hosts.NAME] with "
                f'transport = "kubernetes" ({", ".join(sorted(self._hosts)) or "none"})'
            )
        if self._image(request) is None:
            raise ConfigError(
                "kubernetes.image: missing; expected the container image the program runs "
                'in, e.g. kubernetes = { image = "python:3.12-slim" }, or a default image '
                f"for the cluster: [hosts.{request.host}.kubernetes] image = ..."
            )

    def _image(self, request: LaunchRequest) -> str | None:
        options = request.options
        image = options.image if options is not None else None
        return image or getattr(self.options_of(request.host), "image", None)

    def options_of(self, host: str) -> Any:
        """The ``[hosts.NAME.kubernetes]`` options of ``host``."""
        return self._hosts[host].options_for("kubernetes")

    async def cluster(self, host: str) -> Cluster:
        """The client of ``host``, opened once."""
        if host not in self._hosts:
            raise ConfigError(f"host: got {host!r}, expected a cluster of this runtime")
        async with self._locks.setdefault(host, trio.Lock()):
            if host not in self._clusters:
                cluster = await self._stack.enter_async_context(open_cluster(self._hosts[host]))
                self._clusters[host] = cluster
        return self._clusters[host]

    async def watch(self, host: str) -> NamespaceWatch:
        """The watch of ``host``'s namespace, started (and its orphans swept) once."""
        cluster = await self.cluster(host)
        async with self._locks[host]:
            watch = self._watches.get(host)
            if watch is None:
                watch = NamespaceWatch(
                    cluster.client,
                    cluster.namespace,
                    {INSTANCE_LABEL: label_value(self.instance)},
                    resync=self.options_of(host).resync,
                )
                with trio.move_on_after(LIST_PATIENCE):
                    await self._nursery.start(watch.run)
                    self._watches[host] = watch
                    self.finishing.start_soon(self.sweep, host, watch)
                if host not in self._watches:
                    raise HostUnavailable(
                        host,
                        f"listing the Jobs of namespace {cluster.namespace} failed for "
                        f"{LIST_PATIENCE:.0f} s",
                    )
        return watch

    async def wait_available(self, host: str) -> None:
        await (await self.cluster(host)).wait_answering()

    # -- launch and find -------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> KubeHandle:
        self.check(request)
        host, key = request.host, request.key
        assert host is not None
        files = AttemptFiles(self._root, host, key)
        launched = files.handle(KubeHandle)
        if launched is not None:
            return launched  # (a replay: the Job was created, maybe ended and deleted since)
        cluster = await self.cluster(host)
        name = job_name(key)
        options = attrs.evolve(request.options or KubernetesOptions(), image=self._image(request))
        files.write_intent({"key": str(key), "job": name, "namespace": cluster.namespace})
        keep = self.options_of(host).keep_finished
        sidecar = await sidecar_for(cluster, options, keep, self._told_no_sidecar)
        manifest = job_manifest(
            request, options, instance=self.instance, namespace=cluster.namespace, sidecar=sidecar
        )
        await cluster.write_slot()
        try:
            with cluster.errors(f"creating Job {name}"):
                created = await cluster.client.create(Job.from_dict(manifest))
            uid = created.metadata.uid
            await _statuses.check_native(cluster, created, sidecar)
        except ApiError as exc:
            if exc.status.code != 409:
                raise LaunchFailed(f"creating Job {name} on {host}: {exc}") from exc
            uid = await self._adopt(cluster, key, name)
        except TransportError:
            raise
        except BackendError as exc:  # (refused: invalid, forbidden, over quota)
            raise LaunchFailed(str(exc)) from exc
        handle = KubeHandle(
            str(key),
            host,
            cluster.namespace,
            name,
            uid,
            suspend_on_pause=options.suspend_on_pause,
            output_limit=request.limits.output or self._context.output_limit,
            sidecar=sidecar,
        )
        files.write_handle(handle)
        self._ship(handle)
        return handle

    async def _adopt(self, cluster: Cluster, key: EffectKey, name: str) -> str:
        """The uid of the Job ``name`` that exists already, if it is this attempt's."""
        found = await read_job(cluster, name)
        if found is None:
            raise LaunchFailed(f"creating Job {name}: it existed, then it was gone; try again")
        labels = found.get("metadata", {}).get("labels") or {}
        if not adoptable(labels, self.instance, key):
            raise LaunchFailed(
                f"a Job named {name} exists in namespace {cluster.namespace} that is not "
                f"attempt {key} of this corra (labels {labels}): delete it or use another "
                "namespace"
            )
        return str(found["metadata"]["uid"])

    async def find(self, key: EffectKey, host: str | None = None) -> KubeHandle | None:
        if host not in self._hosts:
            return None
        files = AttemptFiles(self._root, host, key)
        handle = files.handle(KubeHandle)
        if handle is None:
            cluster = await self.cluster(host)
            name = job_name(key)
            job = await read_job(cluster, name)
            if job is None or not adoptable(job["metadata"].get("labels"), self.instance, key):
                return None
            uid, sidecar = job["metadata"]["uid"], sidecar_of(job)
            handle = KubeHandle(str(key), host, cluster.namespace, name, uid, sidecar=sidecar)
            files.write_handle(handle)
        if files.result() is None:
            self._ship(handle)
        return handle

    # -- wait --------------------------------------------------------------------------------

    async def wait(self, handle: KubeHandle) -> Result:
        files = AttemptFiles(self._root, handle.host, handle.key)
        stored = files.result()
        if stored is not None:
            return stored
        if handle.sidecar is None:
            return await self._wait(handle, files)
        path = _statuses.status_path(files.directory)
        key = EffectKey.parse(handle.key)
        return await following(self.follower, key, path, lambda: self._wait(handle, files))

    async def _wait(self, handle: KubeHandle, files: AttemptFiles) -> Result:
        watch = await self.watch(handle.host)
        cluster = self._clusters[handle.host]
        shipped = self._ship(handle)
        grace = self.options_of(handle.host).image_error_grace
        failing_since: float | None = None
        while True:
            view, _ = await self._view(cluster, watch, handle)
            self._note(handle, view)
            timeout = math.inf
            if view.state in ("image_error", "config_error"):
                now = trio.current_time()
                failing_since = now if failing_since is None else failing_since
                timeout = failing_since + grace - now
                if timeout <= 0:
                    break
            else:
                failing_since = None
            if view.ended:
                break
            with trio.move_on_after(timeout):
                await watch.changed(handle.job)
        if view.state in ("deadline", "node_failure", "image_error", "config_error"):
            # (its pod may still run: a timed-out or failed attempt leaves nothing running)
            await self._delete(cluster, watch, handle, grace=None)
        with trio.move_on_after(LOG_PATIENCE):
            await shipped.wait()
        await statuses_home(self._shipping, handle, files.directory)
        logs = LogFiles(files.directory, handle.output_limit)
        result = attempt_result(view, logs.size("stdout"), logs.dropped, grace=grace)
        result = keep_value(files, view.termination_message, result)
        files.write_result(result)
        self._note(handle, None)
        files.mark_undeleted()
        if not self.options_of(handle.host).keep_finished:
            self.finishing.start_soon(self._delete_quietly, cluster, handle)
        return result

    async def _view(
        self, cluster: Cluster, watch: NamespaceWatch, handle: KubeHandle
    ) -> tuple[AttemptView, dict[str, Any] | None]:
        """Where the attempt is, by the watch; waits while the watch has not seen its Job.

        Raises:
            ProgramLost: its Job is gone (or another stands under its name) with no result.
        """
        while True:
            job, pods = watch.view(handle.job)
            if job is not None:
                break
            found = await read_job(cluster, handle.job)
            if found is None or found["metadata"]["uid"] != handle.uid:
                raise ProgramLost(
                    f"its Job {handle.namespace}/{handle.job} is gone (deleted by someone "
                    "else?) and no result came home"
                )
            with trio.move_on_after(UNSEEN_PAUSE):
                await watch.changed(handle.job)
        if job["metadata"].get("uid") != handle.uid:
            raise ProgramLost(f"its Job {handle.namespace}/{handle.job} was replaced by another")
        pod = pods[0] if pods else None  # (a 1.20 controller may add a second: not ours)
        return classify(job, pod, deleting=handle.job in self._deleting), pod

    def _ship(self, handle: KubeHandle) -> trio.Event:
        """Bring the attempt's log home in the background (`LogShipping`), and its status
        sidecar's (Rule 5)."""
        directory = AttemptFiles(self._root, handle.host, handle.key).directory
        if handle.sidecar is not None:
            self._shipping.ship(handle, _statuses.status_logs(directory), STATUS_CONTAINER)
        return self._shipping.ship(handle, LogFiles(directory, handle.output_limit))

    def _note(self, handle: KubeHandle, view: AttemptView | None) -> None:
        """Say where a waiting attempt is (the scheduler's message, an image that cannot be
        pulled ...) as its note, shown by `corra show`; nothing once its pod runs."""
        text = None
        if view is not None and view.state in _NOTED:
            said = view.message or view.reason
            if said:
                text = f"{_NOTED[view.state]}: {said}"
                if view.state in ("image_error", "config_error"):
                    grace = self.options_of(handle.host).image_error_grace
                    text += f" (the attempt fails if this lasts {grace:g} s)"
        self._context.notes.set(EffectKey.parse(handle.key), text)

    # -- kill and delete -----------------------------------------------------------------

    async def kill(self, handle: KubeHandle, grace: float) -> Result | None:
        files = AttemptFiles(self._root, handle.host, handle.key)
        stored = files.result()
        cluster = await self.cluster(handle.host)
        watch = await self.watch(handle.host)
        if stored is not None:
            await self._delete(cluster, watch, handle, grace=grace)
            return stored
        job, _ = watch.view(handle.job)
        if job is None and await read_job(cluster, handle.job) is None:
            return None  # (gone: lost, or removed)
        shipped = self._ship(handle)
        last = await self._delete(cluster, watch, handle, grace=grace)
        with trio.move_on_after(LOG_PATIENCE):
            await shipped.wait()
        logs = LogFiles(files.directory, handle.output_limit)
        code, signal = exit_status(last)
        result = Result(
            returncode=code,
            signal=signal,
            started_at=last.started_at if last else None,
            ended_at=last.ended_at if last else None,
            stdout_bytes=logs.size("stdout"),
            stdout_dropped=logs.dropped,
            killed=True,
        )
        result = keep_value(files, last.termination_message if last else None, result)
        files.write_result(result)
        self._note(handle, None)
        return result

    async def _delete(
        self,
        cluster: Cluster,
        watch: NamespaceWatch,
        handle: KubeHandle,
        *,
        grace: float | None,
    ) -> AttemptView | None:
        """Delete the attempt's Job and pods and wait until they are gone (`_deletion`)."""
        self._deleting.add(handle.job)
        try:
            return await delete_attempt(cluster, watch, handle.job, grace)
        finally:
            self._deleting.discard(handle.job)

    async def _delete_quietly(self, cluster: Cluster, handle: KubeHandle) -> None:
        """Delete a finished Job whose result and logs are home (failures: the next
        recovery's sweep deletes it)."""
        try:
            await delete_job(cluster, handle.job)
            AttemptFiles(self._root, handle.host, handle.key).mark_undeleted(False)
        except BackendError as exc:
            logger.warning("Job %s/%s not deleted now: %s", handle.namespace, handle.job, exc)

    async def sweep(self, host: str, watch: NamespaceWatch) -> None:
        """Delete this instance's Jobs on ``host`` that nothing will collect: those whose
        attempt's result is home (unless ``keep_finished``), and orphans (their attempt has
        no directory: its process was removed)."""
        cluster = self._clusters[host]
        keep = self.options_of(host).keep_finished
        swept = []
        for name in watch.job_names():
            job, _ = watch.view(name)
            if job is None:
                continue
            key = (job["metadata"].get("annotations") or {}).get(KEY_ANNOTATION)
            if key is None:
                continue
            files = AttemptFiles(self._root, host, key)
            if not files.exists() or (files.result() is not None and not keep):
                handle = KubeHandle(key, host, cluster.namespace, name, job["metadata"]["uid"])
                await self._delete_quietly(cluster, handle)
                swept.append(name)
        if swept:
            logger.info("host %s: deleted %d Job(s) left behind: %s", host, len(swept), swept)
        listed = set()
        for name in watch.job_names():
            job, _ = watch.view(name)
            listed.add(
                ((job or {}).get("metadata", {}).get("annotations") or {}).get(KEY_ANNOTATION)
            )
        for key in undeleted(self._root, host):
            if key not in listed:  # (gone from the cluster)
                AttemptFiles(self._root, host, key).mark_undeleted(False)

    # -- logs, pause, remove -------------------------------------------------------------

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        if host is None:
            return b""
        files = AttemptFiles(self._root, host, key)
        if stream == RESULT_STREAM:  # (the value, kept once the attempt ended: `keep_value`)
            return files.read_value(offset, size)
        return LogFiles(files.directory).read(stream, offset, size)

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        if host is None:
            return 0
        return LogFiles(AttemptFiles(self._root, host, key).directory).size(stream)

    async def pause(self, handle: KubeHandle) -> None:
        self._shipping.stop(handle.key)  # (a paused process is not watched; resume ships on)
        self._shipping.stop(handle.key, STATUS_CONTAINER)
        if handle.suspend_on_pause:
            await self._suspend(handle, True)

    async def resume(self, handle: KubeHandle) -> None:
        if handle.suspend_on_pause:
            await self._suspend(handle, False)

    async def _suspend(self, handle: KubeHandle, suspend: bool) -> None:
        """Suspend (or un-suspend) the Job, and say what the server made of it."""
        cluster = await self.cluster(handle.host)
        if suspend:
            job = await read_job(cluster, handle.job)
            pods = (await self.watch(handle.host)).view(handle.job)[1]
            view = classify(job, pods[0] if pods else None)
            if job is None or view.state not in ("waiting", "unschedulable"):
                logger.info("Job %s not suspended: its container has started", handle.job)
                return
        await cluster.write_slot()
        with cluster.errors(f"suspending Job {handle.job}"):
            patched = await cluster.client.patch(
                Job,
                handle.job,
                {"spec": {"suspend": suspend}},
                namespace=handle.namespace,
                patch_type=PatchType.MERGE,
            )
        accepted = getattr(patched.spec, "suspend", None)
        if bool(accepted) != suspend:
            logger.warning(
                "Job %s: the server did not accept suspend = %s (Job suspension needs "
                "Kubernetes >= 1.21); the Job runs on while the process is paused",
                handle.job,
                suspend,
            )

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        if host not in self._hosts:
            return
        files = AttemptFiles(self._root, host, key)
        cluster = await self.cluster(host)
        name = job_name(key)
        job = await read_job(cluster, name)
        if job is not None and adoptable(job["metadata"].get("labels"), self.instance, key):
            handle = KubeHandle(str(key), host, cluster.namespace, name, job["metadata"]["uid"])
            await self._delete(cluster, await self.watch(host), handle, grace=None)
        files.remove()


@contextlib.asynccontextmanager
async def open_kubernetes(context: BackendContext) -> AsyncIterator[KubernetesBackend]:
    """The backend, its watches and clusters owned by the block; at the start, each cluster's
    leftovers are swept in the background (programs run on: only the watching stops)."""
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        backend = KubernetesBackend(context, nursery, stack)
        backend.follower = StatusFollower(context.statuses, context.status_interval)
        await nursery.start(backend.follower.run)
        async with trio.open_nursery() as finishing:
            backend.finishing = finishing
            for host in backend._hosts:
                # (a host with Jobs to delete is swept before the backend closes, however
                # little else the runtime does there: within FINISH_PATIENCE)
                sweep_first = (
                    undeleted(backend._root, host) and not backend.options_of(host).keep_finished
                )
                (finishing if sweep_first else nursery).start_soon(_recover, backend, host)
            yield backend
            # (deletions of finished Jobs end first; the next start sweeps those that do not)
            finishing.cancel_scope.deadline = trio.current_time() + FINISH_PATIENCE
        nursery.cancel_scope.cancel()


async def _recover(backend: KubernetesBackend, host: str) -> None:
    """Start ``host``'s watch (which sweeps its leftovers) once it answers."""
    pause = 1.0
    while True:
        try:
            await backend.watch(host)
            return
        except (BackendError, ConfigError) as exc:
            logger.warning("host %s: not swept now: %s; again in %.0f s", host, exc, pause)
            await trio.sleep(pause)
            pause = min(300.0, pause * 2)
