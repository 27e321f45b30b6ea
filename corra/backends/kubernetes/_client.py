"""How corra reaches a cluster: a host's ``kubernetes`` table, the client, its errors.

A cluster is a host: ``[hosts.NAME]`` with ``transport = "kubernetes"`` and, optionally, a
``[hosts.NAME.kubernetes]`` table (`KubernetesHostOptions`). `open_cluster` reads the
kubeconfig's context (`corra.backends.kubernetes._credentials`), opens lightkube's async
client on it (httpx on trio) and yields a `Cluster`: the client, the namespace, a count of
every request made through it, and the token bucket API writes wait on.

Errors are mapped at the boundary (`api_errors`): a cluster that cannot be reached, or that
answers 502/503/504/429, is `HostUnavailable`; a refusal of the credentials (401/403) or any
other error answer is a `BackendError` with the server's message; ``404 Not Found``, ``409
Conflict`` and ``410 Gone`` stay lightkube's `ApiError`, which the backend handles itself.
"""

from __future__ import annotations

import collections
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import attrs
import httpx
import trio
from lightkube import AsyncClient
from lightkube.config.client_adapter import ConnectionParams
from lightkube.core import exceptions as lightkube_errors
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job

from corra._errors import BackendError, ConfigError, CorraError, HostUnavailable
from corra.backends._shared import TokenBucket, number_check, seconds_check
from corra.backends.kubernetes._credentials import Context, http, read_context

#: Answers that mean "not now": the cluster (or a proxy before it) is there but cannot serve.
UNAVAILABLE_STATUS: Final = frozenset({429, 502, 503, 504})
#: Answers the backend handles itself, left as lightkube's `ApiError`.
KEPT_STATUS: Final = frozenset({404, 409, 410})
#: The longest pause between two probes of `Cluster.wait_answering`.
MAX_PROBE_PAUSE: Final = 30.0
#: The field manager corra's writes are recorded under (``metadata.managedFields``).
FIELD_MANAGER: Final = "corra"
#: Connections to one cluster: no bound. Each running attempt's log is a request open while
#: it runs (HTTP/1.1: a connection each), beside the watches; with httpx's default (100), from
#: about 98 running pods on every other request waited, then failed with PoolTimeout.
LIMITS: Final = http.Limits(max_connections=None, max_keepalive_connections=20)

#: A namespace's name: a DNS-1123 label.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: What a request through lightkube may raise (lightkube >= 1.0 is built on ``httpx2``, whose
#: errors are not ``httpx``'s: both are named wherever one is caught).
HTTP_ERRORS: Final = tuple({httpx.HTTPError, http.HTTPError})
_TRANSPORT_ERRORS = tuple({httpx.TransportError, http.TransportError})
_STATUS_ERRORS = tuple({httpx.HTTPStatusError, http.HTTPStatusError})


def _optional_text(name: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise ConfigError(f"kubernetes.{name}: got {value!r}, expected a non-empty string")

    return check


def _namespace(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _DNS_LABEL.fullmatch(value)):
        raise ConfigError(
            f"kubernetes.namespace: got {value!r}, expected a namespace (lower-case letters, "
            "digits and '-', at most 63)"
        )


def _boolean(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"kubernetes.{attribute.name}: got {value!r}, expected true or false")


@attrs.frozen
class KubernetesHostOptions:
    """A ``[hosts.NAME.kubernetes]`` table (a cluster is a host): which cluster, and how
    corra uses it. Every field has a default; errors name ``hosts.NAME.kubernetes.FIELD``."""

    kubeconfig: str | None = attrs.field(
        default=None,
        validator=_optional_text("kubeconfig"),
        metadata={"doc": "the kubeconfig file (default: $KUBECONFIG's first, else ~/.kube/config)"},
    )
    context: str | None = attrs.field(
        default=None,
        validator=_optional_text("context"),
        metadata={"doc": "the kubeconfig's context (default: its current-context)"},
    )
    namespace: str | None = attrs.field(
        default=None,
        validator=_namespace,
        metadata={"doc": "where Jobs go (default: the context's namespace, else 'default')"},
    )
    image: str | None = attrs.field(
        default=None,
        validator=_optional_text("image"),
        metadata={"doc": "the image of processes whose kubernetes table names none"},
    )
    image_error_grace: float = attrs.field(
        default=60.0,
        validator=seconds_check("kubernetes.image_error_grace", minimum=0, allow_zero=True),
        metadata={
            "doc": "seconds an image pull or container config error may last before the "
            "attempt fails (and its Job is deleted)"
        },
    )
    keep_finished: bool = attrs.field(
        default=False,
        validator=_boolean,
        metadata={"doc": "keep Jobs once their result and logs are home (default: delete)"},
    )
    resync: float = attrs.field(
        default=300.0,
        validator=seconds_check("kubernetes.resync", minimum=1),
        metadata={"doc": "seconds between two relists of the namespace's watch"},
    )
    writes_per_second: float = attrs.field(
        default=10.0,
        validator=number_check("kubernetes.writes_per_second", minimum=0.001),
        metadata={"doc": "API writes (creates, deletes, patches) per second in the long run"},
    )
    write_burst: int = attrs.field(
        default=20,
        validator=number_check("kubernetes.write_burst", minimum=1, integer=True),
        metadata={"doc": "API writes that may go at once after a quiet period"},
    )


def request_kind(method: str, path: str, watch: bool = False) -> str:
    """How `Cluster.requests` counts a request: ``"<METHOD> <resource>[/<subresource>]"``,
    ``?watch`` for a watch (``GET jobs?watch``, ``GET pods/log``, ``POST jobs``); a path
    outside the resource API is itself (``GET version``)."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    else:
        return f"{method} {'/'.join(parts)}"
    if not parts:  # (discovery: /api/v1, /apis/batch/v1)
        return f"{method} {path.strip('/')}"
    if parts[:1] == ["namespaces"] and len(parts) >= 3:
        parts = parts[2:]
    kind = parts[0]
    if len(parts) >= 3:
        kind = f"{kind}/{parts[2]}"
    return f"{method} {kind}{'?watch' if watch else ''}"


class Cluster:
    """An open cluster (`open_cluster`): its client, namespace, write budget and counts.

    Attributes:
        host: the ``[hosts.NAME]`` name.
        namespace: the namespace corra uses there.
        client: lightkube's async client on the kubeconfig's context.
        options: the host's ``kubernetes`` table.
        context: the kubeconfig context it was opened on.
        requests: every HTTP request made through ``client`` (watches, retries after a 401
            included), by `request_kind`.
    """

    def __init__(
        self,
        host: str,
        client: AsyncClient,
        context: Context,
        options: KubernetesHostOptions,
        policy: str = "pause",
    ) -> None:
        self.host = host
        self.namespace = context.namespace
        self.client = client
        self.context = context
        self.options = options
        self.policy = policy
        self.requests: collections.Counter[str] = collections.Counter()
        self._version: tuple[int, int] | None = None
        self._version_lock = trio.Lock()
        #: False once the server dropped a native sidecar's ``restartPolicy`` (`_statuses`)
        self.native_sidecars = True
        self._writes = TokenBucket(options.writes_per_second, options.write_burst)
        self.http.event_hooks = {"request": [self._count], "response": []}

    @property
    def http(self) -> Any:
        """The httpx client under lightkube's (its base URL, auth, TLS and hooks)."""
        return self.client._client._client

    async def _count(self, request: Any) -> None:
        watch = request.url.params.get("watch") in ("true", "1")
        self.requests[request_kind(request.method, request.url.path, watch)] += 1

    async def write_slot(self) -> None:
        """Wait for a token of the host's write bucket (``writes_per_second``, ``write_burst``);
        take one before each create, delete or patch. A checkpoint; cancelling it takes
        nothing."""
        await self._writes.take()

    def errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """`api_errors` for this cluster."""
        return api_errors(self.host, doing, policy=self.policy)

    async def server_version(self) -> tuple[int, int]:
        """The apiserver's ``(major, minor)`` version (``GET /version``, asked once: a
        request per cluster opened); ``(0, 0)`` if it says none that parses.

        Raises:
            BackendError: the request failed (as `errors` maps it).
        """
        async with self._version_lock:  # (asked once, however many launches ask at once)
            if self._version is None:
                with self.errors("reading the server's version"):
                    response = await self.http.get("/version")
                if response.status_code >= 400:
                    raise BackendError(
                        f"{self.host}: reading the server's version: {response.status_code}"
                    )
                try:
                    self._version = _version(response.json())
                except ValueError:  # (not JSON)
                    self._version = (0, 0)
            return self._version

    async def wait_answering(self) -> None:
        """Return once the apiserver answers again (``GET /version``, sent without the
        credentials: any answer but 429/502/503/504 counts), probing with a pause that
        doubles from 0.5 s up to `MAX_PROBE_PAUSE`: the backend's ``wait_available``. A
        checkpoint; cancellable."""
        pause = 0.5
        while True:
            try:
                # (no credentials: whether the server answers is asked, not who may ask)
                response = await self.http.get("/version", auth=None)
            except (*_TRANSPORT_ERRORS, OSError):
                pass
            else:
                if response.status_code not in UNAVAILABLE_STATUS:
                    return
            await trio.sleep(pause)
            pause = min(MAX_PROBE_PAUSE, pause * 2)


def _version(said: Any) -> tuple[int, int]:
    """``(major, minor)`` of a ``/version`` answer (``"minor": "29+"`` on some clouds)."""
    try:
        major = int(re.sub(r"\D", "", str(said["major"])))
        minor = int(re.sub(r"\D", "", str(said["minor"])))
    except (KeyError, TypeError, ValueError):
        return (0, 0)
    return (major, minor)


@contextlib.asynccontextmanager
async def open_cluster(host: Any) -> AsyncIterator[Cluster]:
    """The cluster of ``host`` (a `corra.backends.ssh.HostConfig` whose
    ``options_for("kubernetes")`` is a `KubernetesHostOptions`), its client closed when the
    block ends. Reads the kubeconfig in a worker thread; makes no request.

    Raises:
        ConfigError: the kubeconfig, its context or a file it names is missing or wrong, or
            the TLS material in it cannot be loaded (each names the file and context).
    """
    options = host.options_for("kubernetes")
    if not isinstance(options, KubernetesHostOptions):
        options = KubernetesHostOptions()
    context = await trio.to_thread.run_sync(
        read_context, host.name, options.kubeconfig, options.context, options.namespace
    )
    client = await trio.to_thread.run_sync(_client, host.name, context)
    policy = getattr(getattr(host, "pool", None), "on_unavailable", "pause")
    try:
        yield Cluster(host.name, client, context, options, policy=policy)
    finally:
        with trio.CancelScope(shield=True):
            await client.close()


def _client(host: str, context: Context) -> AsyncClient:
    """lightkube's client on ``context`` (builds the TLS context: reads files)."""
    where = f"hosts.{host}.kubernetes: {context.path}: context {context.name!r}"
    try:
        client = AsyncClient(
            config=context.config, namespace=context.namespace, field_manager=FIELD_MANAGER
        )
    except (OSError, ssl.SSLError, ValueError, lightkube_errors.ConfigError) as exc:
        raise ConfigError(f"{where}: cannot use its TLS material or credentials: {exc}") from None
    # (lightkube takes no pool limits: its httpx client again, from its own parameters, with
    # `LIMITS`; the one it made has opened nothing yet)
    generic = client._client
    parameters = ConnectionParams(timeout=client._timeout).httpx_params(generic.config)
    generic._client = http.AsyncClient(**parameters, limits=LIMITS)
    if context.exec_auth is not None:
        client._client._client.auth = context.exec_auth
    return client


@contextlib.contextmanager
def api_errors(host: str, doing: str, *, policy: str = "pause") -> Iterator[None]:
    """Map what lightkube and httpx raise in the block to corra's errors (see the module
    doc); corra's own errors, and `ApiError` 404/409/410, pass as they are.

    Args:
        host: the cluster's ``[hosts.NAME]`` name (`HostUnavailable.host`).
        doing: what the block does, for messages ("create Job corra-p1-1").
        policy: the host's ``on_unavailable`` (`HostUnavailable.policy`).
    """
    try:
        yield
    except CorraError:
        raise
    except (*HTTP_ERRORS, lightkube_errors.ConfigError, KeyError) as exc:
        cause: BaseException = exc
        if isinstance(exc, KeyError):
            # (lightkube reads an error answer's Content-Type header without looking whether
            # it is there: a proxy's bare 502 comes out as KeyError('content-type'))
            if not isinstance(exc.__context__, _STATUS_ERRORS):
                raise
            cause = exc.__context__
        mapped = _mapped(cause, host, doing, policy)
        if mapped is None:
            raise
        raise mapped from cause


def _mapped(exc: BaseException, host: str, doing: str, policy: str) -> CorraError | None:
    """corra's error for what lightkube or httpx raised; None for what stays as it is."""
    if isinstance(exc, lightkube_errors.ConfigError):
        return ConfigError(f"{doing} on {host}: {exc}")
    if isinstance(exc, _TRANSPORT_ERRORS):
        if _certificate_refused(exc):
            return BackendError(
                f"{doing} on {host}: the server's TLS certificate was refused ({exc}); "
                "check the kubeconfig's certificate-authority"
            )
        return HostUnavailable(
            host, f"{doing}: cannot reach the cluster: {type(exc).__name__}: {exc}", policy
        )
    if not isinstance(exc, _STATUS_ERRORS):
        return BackendError(f"{doing} on {host}: {type(exc).__name__}: {exc}")
    response = getattr(exc, "response", None)
    status = response.status_code if response is not None else None
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.code:
        status = exc.status.code
    if isinstance(exc, ApiError) and status in KEPT_STATUS:
        return None
    if status in UNAVAILABLE_STATUS:
        return HostUnavailable(
            host, f"{doing}: the cluster answered {status} ({_message(exc)})", policy
        )
    detail = _message(exc)
    if status in (401, 403):
        who = "the credentials" if status == 401 else "the user's permissions (RBAC)"
        detail += f"; check {who} of the kubeconfig's context"
    return BackendError(f"{doing} on {host}: {status} {_reason(exc)}: {detail}")


def _certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _message(exc: Any) -> str:
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.message:
        return str(exc.status.message)
    try:
        text = exc.response.text.strip()
    except Exception:  # (a streamed answer not read: its status says enough)
        text = ""
    return text[:300] or str(exc)


def _reason(exc: Any) -> str:
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.reason:
        return str(exc.status.reason)
    return str(getattr(exc.response, "reason_phrase", "") or "")


async def read_job(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The Job ``name`` of the cluster's namespace as the API gives it, or None if there is
    none (one GET: for what the watch has not seen)."""
    try:
        with cluster.errors(f"reading Job {name}"):
            job = await cluster.client.get(Job, name, namespace=cluster.namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return job.to_dict()
