"""What a kubeconfig says of one context, and exec credential plug-ins run on trio.

A kubeconfig may hold any of kubectl's credentials: a client certificate and key (files or
inline ``*-data``), a bearer token (``token`` or ``tokenFile``), a CA (file or inline) or
``insecure-skip-tls-verify``, and an exec credential plug-in. lightkube builds the TLS context
and the token auth from them; the exec plug-in is the one part corra does itself
(`ExecCredentialAuth`): lightkube's async client runs it with asyncio's subprocesses, which
do not work under trio.

Relative paths (certificates, keys, CA, ``tokenFile``, a plug-in's command with a ``/``) are
read relative to the kubeconfig's directory, as kubectl reads them.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import trio
import yaml
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.config.models import User
from lightkube.core import exceptions as lightkube_errors
from lightkube.core import generic_client

from corra._errors import BackendError, ConfigError
from corra.backends.transport import quote_argv

logger = logging.getLogger("corra.backend.kubernetes")

#: The HTTP library lightkube is built on (``httpx2`` in lightkube >= 1.0, ``httpx`` before):
#: its `Auth` is what its client takes, its errors are what its requests raise.
http: Any = generic_client.httpx

#: The ExecCredential versions corra speaks (kubectl's).
EXEC_VERSIONS: Final = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
    "client.authentication.k8s.io/v1alpha1",
)
#: Seconds an exec plug-in may take before its run fails.
PLUGIN_TIMEOUT: Final = 60.0
DEFAULT_KUBECONFIG: Final = "~/.kube/config"


@attrs.frozen
class Context:
    """One context of a kubeconfig, read (`read_context`).

    Attributes:
        path: the kubeconfig file.
        name: the context's name.
        namespace: the namespace corra uses there (the host's, else the context's, else
            ``default``).
        config: lightkube's view of the context, without its exec plug-in (`exec_auth`).
        exec_auth: the auth that runs the context's user's exec plug-in, if it has one.
    """

    path: Path
    name: str
    namespace: str
    config: SingleConfig
    exec_auth: ExecCredentialAuth | None = None


def kubeconfig_path(kubeconfig: str | None) -> tuple[Path, str]:
    """The kubeconfig to read, and where that choice came from (for errors): ``kubeconfig``
    if given, else the first file of ``$KUBECONFIG``, else ``~/.kube/config``."""
    if kubeconfig is not None:
        return Path(kubeconfig).expanduser(), "its kubeconfig"
    listed = [part for part in os.environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    if listed:
        return Path(listed[0]).expanduser(), "the first file of $KUBECONFIG"
    return Path(DEFAULT_KUBECONFIG).expanduser(), "the default kubeconfig"


def read_context(
    host: str, kubeconfig: str | None, context: str | None, namespace: str | None
) -> Context:
    """The context ``context`` (default: the current one) of the kubeconfig (see
    `kubeconfig_path`) of host ``host``. Reads files: call it in a worker thread.

    Raises:
        ConfigError: the file is missing or is not a kubeconfig, the context is unknown, or
            what it names (cluster, user, certificate, token file) is missing; each message
            names the file, the context and what was expected.
    """
    path, source = kubeconfig_path(kubeconfig)
    where = f"hosts.{host}.kubernetes"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{where}.kubeconfig: {path} ({source}) does not exist; expected a kubeconfig "
            "file (kubectl config view --raw > FILE writes one)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}.kubeconfig: {path}: cannot read it: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts"), list):
        raise ConfigError(
            f"{where}.kubeconfig: {path}: expected a kubeconfig (a mapping with contexts)"
        )
    raw_contexts = {item.get("name"): item for item in data["contexts"] if isinstance(item, dict)}
    name = context or data.get("current-context")
    if not name:
        raise ConfigError(
            f"{where}.context: {path} has no current-context; expected one of "
            f"{sorted(map(str, raw_contexts))}"
        )
    if name not in raw_contexts:
        field = "context" if context else "kubeconfig"
        raise ConfigError(
            f"{where}.{field}: {path} has no context {name!r}; expected one of "
            f"{sorted(map(str, raw_contexts))}"
        )
    try:
        config = KubeConfig.from_dict(data, fname=path).get(name)
    except KeyError as exc:
        raise ConfigError(
            f"{where}: {path}: context {name!r} names {exc}, which the file does not have"
        ) from None
    except (msgspec.ValidationError, lightkube_errors.ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {path}: context {name!r}: {exc}") from None
    assert config is not None
    user = config.user
    exec_auth = None
    if user is None:
        user = User()
    if user.auth_provider is not None and not (user.token or user.token_file or user.exec):
        raise ConfigError(
            f"{where}: {path}: context {name!r}: its user has an auth-provider, which corra "
            "does not run; expected a token, a client certificate or an exec plug-in "
            "(kubectl's auth-providers became exec plug-ins)"
        )
    if user.token_file is not None:
        token_file = Path(config.abs_file(os.path.expanduser(user.token_file)))
        if not token_file.is_file():
            raise ConfigError(
                f"{where}: {path}: context {name!r}: tokenFile {token_file} does not exist"
            )
        user = msgspec.structs.replace(user, token_file=str(token_file))
    for field, key in (("client_cert", "client-certificate"), ("client_key", "client-key")):
        file = getattr(user, field)
        if file is not None and not Path(config.abs_file(file)).is_file():
            raise ConfigError(
                f"{where}: {path}: context {name!r}: {key} {config.abs_file(file)} does not exist"
            )
    if (
        config.cluster.certificate_auth is not None
        and not Path(config.abs_file(config.cluster.certificate_auth)).is_file()
    ):
        raise ConfigError(
            f"{where}: {path}: context {name!r}: certificate-authority "
            f"{config.abs_file(config.cluster.certificate_auth)} does not exist"
        )
    if user.exec is not None and user.token is None and user.token_file is None:
        raw_user = _raw_user(data, config.context.user)
        exec_auth = ExecCredentialAuth(
            f"{where}: {path}: context {name!r}",
            raw_user.get("exec") or {},
            directory=path.parent,
            cluster=_cluster_info(data, config),
        )
    user = msgspec.structs.replace(user, exec=None)
    return Context(
        path=path,
        name=name,
        namespace=namespace or config.context.namespace or "default",
        config=config._replace(user=user),
        exec_auth=exec_auth,
    )


def _raw_user(data: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    for item in data.get("users") or ():
        if isinstance(item, dict) and item.get("name") == name:
            return dict(item.get("user") or {})
    return {}


def _cluster_info(data: Mapping[str, Any], config: SingleConfig) -> dict[str, Any]:
    """The cluster as an exec plug-in with ``provideClusterInfo`` is told of it."""
    cluster = config.cluster
    info: dict[str, Any] = {"server": cluster.server}
    if cluster.certificate_auth_data:
        info["certificate-authority-data"] = cluster.certificate_auth_data
    elif cluster.certificate_auth:
        with contextlib.suppress(OSError):
            ca = Path(config.abs_file(cluster.certificate_auth)).read_bytes()
            info["certificate-authority-data"] = base64.b64encode(ca).decode()
    if cluster.insecure:
        info["insecure-skip-tls-verify"] = True
    for item in data.get("clusters") or ():
        if isinstance(item, dict) and item.get("name") == config.context.cluster:
            extension = _exec_extension((item.get("cluster") or {}).get("extensions"))
            if extension is not None:
                info["config"] = extension
    return info


def _exec_extension(extensions: Any) -> Any:
    for item in extensions or ():
        if isinstance(item, dict) and item.get("name") == "client.authentication.k8s.io/exec":
            return item.get("extension")
    return None


class ExecCredentialAuth(http.Auth):  # type: ignore[misc,name-defined]
    """The bearer token of an exec credential plug-in, which corra runs on trio.

    The plug-in runs when a request needs a token and none is held, when the token it gave
    has passed its ``expirationTimestamp``, and when the server answers 401 to it (then the
    request is sent again once, with the new token). Concurrent requests share one run. It
    gets ``KUBERNETES_EXEC_INFO`` (an ExecCredential with ``spec.interactive`` false, and
    ``spec.cluster`` where the kubeconfig asks ``provideClusterInfo``) and the ``env`` of
    its table beside corra's environment.

    Args:
        where: names the kubeconfig and context in errors.
        table: the user's ``exec`` table as the kubeconfig has it.
        directory: the kubeconfig's directory (a relative command with a ``/`` is there).
        cluster: what ``provideClusterInfo`` gives the plug-in.
        clock: the wall clock expiry times are compared with.
    """

    def __init__(
        self,
        where: str,
        table: Mapping[str, Any],
        *,
        directory: Path,
        cluster: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.where = where
        self.api_version = table.get("apiVersion")
        if self.api_version not in EXEC_VERSIONS:
            raise ConfigError(
                f"{where}: exec apiVersion: got {self.api_version!r}, expected one of "
                f"{list(EXEC_VERSIONS)}"
            )
        command = table.get("command")
        if not isinstance(command, str) or not command:
            raise ConfigError(f"{where}: exec command: got {command!r}, expected a command")
        if "/" in command and not os.path.isabs(command):
            command = str(directory / command)
        args = table.get("args") or []
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise ConfigError(f"{where}: exec args: got {args!r}, expected a list of strings")
        self.argv = [command, *args]
        env = table.get("env") or []
        try:
            self._env = {str(item["name"]): str(item["value"]) for item in env}
        except (KeyError, TypeError):
            raise ConfigError(
                f"{where}: exec env: got {env!r}, expected a list of {{name, value}}"
            ) from None
        if table.get("interactiveMode") == "Always":
            raise ConfigError(
                f"{where}: exec interactiveMode is Always, but corra runs plug-ins without a "
                "terminal; expected IfAvailable or Never"
            )
        self._hint = table.get("installHint")
        spec: dict[str, Any] = {"interactive": False}
        if table.get("provideClusterInfo"):
            spec["cluster"] = dict(cluster)
        self._info = json.dumps(
            {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        )
        self._clock = clock
        self._token: str | None = None
        self._expires: float | None = None
        self._lock = trio.Lock()
        self.runs = 0
        """Runs of the plug-in so far."""

    def sync_auth_flow(self, request: Any) -> Any:
        raise BackendError(f"{self.where}: corra's exec plug-ins run on trio's async client")

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        token = await self._current(None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self._current(token)}"
            yield request

    async def _current(self, refused: str | None) -> str:
        """The token to send: the one held unless it expired or is ``refused`` (then the
        plug-in's next; a token another request got meanwhile is taken as it is)."""
        async with self._lock:
            held = self._token
            fresh = self._expires is None or self._clock() < self._expires
            if held is not None and held != refused and fresh:
                return held
            self._token, self._expires = await self._run()
            return self._token

    async def _run(self) -> tuple[str, float | None]:
        env = {**os.environ, **self._env, "KUBERNETES_EXEC_INFO": self._info}
        hint = f" ({self._hint})" if self._hint else ""
        self.runs += 1
        try:
            with trio.fail_after(PLUGIN_TIMEOUT):
                done = await trio.run_process(
                    self.argv, capture_stdout=True, capture_stderr=True, check=False, env=env
                )
        except OSError as exc:
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} cannot run: "
                f"{exc.strerror or exc}{hint}"
            ) from None
        except trio.TooSlowError:
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} gave no credential "
                f"within {PLUGIN_TIMEOUT:g} s"
            ) from None
        stderr = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0:
            tail = f": {stderr[-500:]}" if stderr else ""
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} failed with exit "
                f"status {done.returncode}{tail}{hint}"
            )
        if stderr:
            logger.debug("exec plug-in %s said: %s", self.argv[0], stderr[-500:])
        return self._credential(done.stdout)

    def _credential(self, stdout: bytes) -> tuple[str, float | None]:
        expected = f"expected an ExecCredential ({self.api_version}) with status.token"
        try:
            answer = json.loads(stdout)
            status = answer["status"]
            token, stamp = status.get("token"), status.get("expirationTimestamp")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} printed "
                f"{stdout[:200]!r}; {expected}"
            ) from None
        if answer.get("apiVersion") != self.api_version:
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} answered apiVersion "
                f"{answer.get('apiVersion')!r}; {expected}"
            )
        if not isinstance(token, str) or not token:
            kind = "a client certificate" if status.get("clientCertificateData") else "no token"
            raise BackendError(
                f"{self.where}: exec plug-in {quote_argv(self.argv)} gave {kind}; {expected} "
                "(corra takes tokens from exec plug-ins)"
            )
        expires = None
        if stamp is not None:
            try:
                expires = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
                if expires.tzinfo is None:
                    raise ValueError("no time zone")
            except ValueError:
                raise BackendError(
                    f"{self.where}: exec plug-in {quote_argv(self.argv)}: "
                    f"expirationTimestamp {stamp!r}; expected an RFC 3339 time"
                ) from None
            return token, expires.timestamp()
        return token, expires
