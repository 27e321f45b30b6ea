"""How corra reaches a cluster (corra/backends/kubernetes/_client.py, _credentials.py): a
host's ``kubernetes`` table, every kind of credential a kubeconfig holds (against the real
apiserver of scripts/kube-test-cluster.sh), exec plug-ins run on trio, errors mapped to
corra's, the request counts and the write bucket."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import CascadeType

from corra._errors import BackendError, ConfigError, HostUnavailable
from corra.actors import open_runtime as open_kernel
from corra.backends.kubernetes._client import (
    KubernetesHostOptions,
    api_errors,
    open_cluster,
    request_kind,
)
from corra.backends.plugins import SLURM
from corra.backends.ssh import HostConfig, host_table, parse_host
from corra.processes._backend import BackendPlugin, Capabilities
from corra.processes._registry import Registry

KUBERNETES = BackendPlugin(
    name="kubernetes",
    open=None,  # type: ignore[arg-type]  (only its host options are used here)
    handle=None,
    host_options=KubernetesHostOptions,
    capabilities=Capabilities(hosts=True),
)
REGISTRY = Registry({"kubernetes": KUBERNETES, "slurm": SLURM})
INSECURE = {"insecure-skip-tls-verify": True}


def cluster_host(kubeconfig: Path | str | None = None, **options: Any) -> HostConfig:
    """A ``[hosts.kc]`` cluster on ``kubeconfig`` (as parse_host makes it)."""
    table = {"kubeconfig": str(kubeconfig)} if kubeconfig is not None else {}
    return parse_host(
        "kc", {"transport": "kubernetes", "kubernetes": {**table, **options}}, REGISTRY
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the host table -----------------------------------------------------------------------


def test_a_cluster_host_takes_its_kubernetes_table():
    host = parse_host(
        "kc",
        {"kubernetes": {"kubeconfig": "~/k", "context": "prod", "namespace": "ml", "resync": 60}},
        REGISTRY,
    )
    assert host.transport == "kubernetes"  # (the table alone makes the host a cluster)
    assert not host.runs_commands
    assert host.options_for("kubernetes") == KubernetesHostOptions(
        kubeconfig="~/k", context="prod", namespace="ml", resync=60.0
    )
    defaults = parse_host("kc", {"transport": "kubernetes"}, REGISTRY).options_for("kubernetes")
    assert defaults == KubernetesHostOptions()
    assert (defaults.writes_per_second, defaults.write_burst) == (10.0, 20)
    # remembered in hosts.json and read back as it was
    assert parse_host("kc", json.loads(json.dumps(host_table(host))), REGISTRY) == host
    # an ssh host keeps its transport, whatever tables it has
    assert parse_host("h", {"slurm": {}}, REGISTRY).transport == "ssh"


def test_every_kubernetes_host_option_is_documented_for_corra_backends():
    from corra.processes._backend import describe_plugin

    fields = describe_plugin(KUBERNETES)["host_options"]
    assert [field["name"] for field in fields] == [
        "kubeconfig", "context", "namespace", "image", "image_error_grace", "keep_finished",
        "resync", "writes_per_second", "write_burst",
    ]  # fmt: skip
    assert all(field.get("doc") for field in fields), fields
    assert {field["name"]: field["default"] for field in fields}["write_burst"] == 20


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"kubeconfig": ""}, "hosts.kc.kubernetes.kubeconfig: got '', expected a non-empty"),
        ({"context": 3}, "hosts.kc.kubernetes.context: got 3, expected a string"),
        ({"namespace": "ML"}, "hosts.kc.kubernetes.namespace: got 'ML', expected a namespace"),
        ({"image_error_grace": -1}, "hosts.kc.kubernetes.image_error_grace: got -1"),
        ({"image_error_grace": math.inf}, "hosts.kc.kubernetes.image_error_grace: got inf"),
        ({"keep_finished": "yes"}, "hosts.kc.kubernetes.keep_finished: got 'yes', expected true"),
        ({"resync": 0.5}, "hosts.kc.kubernetes.resync: got 0.5, expected a finite value >= 1"),
        ({"writes_per_second": 0}, "hosts.kc.kubernetes.writes_per_second: got 0"),
        ({"write_burst": 2.5}, "hosts.kc.kubernetes.write_burst: got 2.5, expected an integer"),
        ({"write_burst": 0}, "hosts.kc.kubernetes.write_burst: got 0"),
        ({"qps": 5}, "hosts.kc.kubernetes: unknown setting(s) qps; expected some of context, "),
    ],
)
def test_a_bad_kubernetes_host_option_is_refused_naming_its_field_path(table, said):
    with pytest.raises(ConfigError) as caught:
        parse_host("kc", {"transport": "kubernetes", "kubernetes": table}, REGISTRY)
    assert str(caught.value).startswith(said), caught.value


def test_a_cluster_host_refuses_what_only_a_host_reached_by_commands_has():
    for field, value in [("hostname", "h"), ("port", 22), ("user", "u"), ("env", {"A": "1"})]:
        with pytest.raises(ConfigError) as caught:
            parse_host("kc", {"transport": "kubernetes", field: value}, REGISTRY)
        message = str(caught.value)
        assert message.startswith(f"hosts.kc.{field}: got "), message
        assert "transport = 'kubernetes'" in message and "[hosts.kc.kubernetes]" in message
    with pytest.raises(ConfigError, match="expected one of 'ssh', 'local', 'kubernetes'"):
        parse_host("kc", {"transport": "k8s"}, REGISTRY)


async def test_a_cluster_gets_no_ssh_transport_and_no_host_of_the_ssh_and_slurm_backends(
    tmp_path,
):
    from corra._remote import open_hosts
    from corra.backends.plugins import _command_hosts, _transports
    from corra.processes._backend import BackendContext

    hosts = {"kc": cluster_host(), "here": HostConfig(name="here", transport="local")}
    async with open_kernel() as kernel, open_hosts(kernel.root, hosts) as links:
        assert set(links.transports) == {"here"}  # (no pool, no connection for the cluster)
        context = BackendContext(
            state_dir=tmp_path, supervisor=kernel.root, hosts=hosts,
            transport=links.transports.__getitem__,
        )  # fmt: skip
        assert set(_command_hosts(context)) == set(_transports(context)) == {"here"}


async def test_a_runtime_with_a_cluster_host_opens_no_connection_to_it(tmp_path):
    import corra

    cluster = HostConfig(name="kc", transport="kubernetes")
    async with corra.open_runtime(state_dir=tmp_path / "state", hosts={"kc": cluster}) as rt:
        assert rt.remote is not None
        assert rt.remote.transports == {} and not list(rt.remote.registry.handles())
        for name in ("ssh", "slurm"):  # (they do not take the cluster for one of theirs)
            with pytest.raises(ConfigError, match=r"^host: got 'kc', expected one of \[\]"):
                rt.remote.backends[name].host("kc")
    remembered = json.loads((tmp_path / "state" / "hosts.json").read_text())
    assert remembered["kc"]["transport"] == "kubernetes"


# -- counting, the write bucket, unreachable clusters (no cluster needed) --------------------


def test_requests_are_counted_by_method_and_resource():
    assert request_kind("POST", "/apis/batch/v1/namespaces/ns/jobs") == "POST jobs"
    assert request_kind("GET", "/apis/batch/v1/namespaces/ns/jobs", watch=True) == (
        "GET jobs?watch"
    )
    assert request_kind("DELETE", "/apis/batch/v1/namespaces/ns/jobs/j") == "DELETE jobs"
    assert request_kind("GET", "/api/v1/namespaces/ns/pods/p/log") == "GET pods/log"
    assert request_kind("GET", "/api/v1/namespaces/ns") == "GET namespaces"
    assert request_kind("GET", "/api/v1/pods") == "GET pods"
    assert request_kind("GET", "/version") == "GET version"
    assert request_kind("GET", "/apis/batch/v1") == "GET apis/batch/v1"


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], **cluster: Any) -> Path:
    """A kubeconfig with one context, ``c`` (namespace ``default``), on ``server``."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}
                ],
                "current-context": "c",
            }
        )
    )
    return path


@pytest.fixture
def nowhere(tmp_path) -> Path:
    """A kubeconfig of a cluster where nothing listens."""
    server = f"https://127.0.0.1:{free_port()}"
    return write_kubeconfig(tmp_path / "nowhere", server, {"token": "t"}, **INSECURE)


async def test_the_write_bucket_lets_a_burst_through_then_its_rate(nowhere, autojump_clock):
    async with open_cluster(cluster_host(nowhere, writes_per_second=2, write_burst=3)) as cluster:
        start = trio.current_time()
        times = []
        for _ in range(7):
            await cluster.write_slot()
            times.append(trio.current_time() - start)
    assert times == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0])
    assert not cluster.requests  # (a slot is no request)


async def test_an_unreachable_cluster_is_unavailable_and_waited_for(nowhere, autojump_clock):
    async with open_cluster(cluster_host(nowhere)) as cluster:
        with pytest.raises(HostUnavailable) as caught, cluster.errors("list Jobs"):
            await cluster.client.get(ConfigMap, "x")
        assert caught.value.host == "kc" and caught.value.policy == "pause"
        assert str(caught.value).startswith("kc: list Jobs: cannot reach the cluster: Connect")
        assert isinstance(caught.value.__cause__, Exception)  # (the httpx error, kept)
        with trio.move_on_after(100):
            await cluster.wait_answering()
    # probes at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5, 91.5 s: doubling up to 30 s
    assert cluster.requests["GET version"] == 9


async def test_a_watch_of_an_unreachable_cluster_keeps_trying(nowhere, autojump_clock, caplog):
    from corra.backends.kubernetes._watch import NamespaceWatch

    async with open_cluster(cluster_host(nowhere)) as cluster:
        watch = NamespaceWatch(cluster.client, cluster.namespace, {"a": "b"})
        with trio.move_on_after(60):  # (lightkube's errors are httpx2's, not httpx's)
            await watch.run()
    assert watch.relists == 0
    assert cluster.requests["GET jobs"] >= 5  # (0.5 s, doubling up to 30 s)
    assert "listing namespace default failed: " in caplog.text


def answered(status: int, body: bytes = b"", content_type: str | None = None) -> None:
    """Raise what lightkube raises for an answer ``status`` (its own raise_for_status)."""
    from lightkube.core.generic_client import GenericClient

    from corra.backends.kubernetes._credentials import http

    request = http.Request("POST", "https://kc/apis/batch/v1/namespaces/default/jobs")
    headers = {"Content-Type": content_type} if content_type else {}
    GenericClient.raise_for_status(
        http.Response(status, request=request, content=body, headers=headers)
    )


def status(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
         "reason": reason, "message": message}
    ).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("code", "body", "content_type"),
    [
        (503, status(503, "ServiceUnavailable", "etcd is away"), "application/json"),
        (429, status(429, "TooManyRequests", "slow down"), "application/json"),
        (504, b"<html>gateway timeout</html>", "text/html"),
        (502, b"bad gateway", None),  # (no Content-Type: lightkube raises a KeyError)
    ],
)
def test_an_answer_that_means_not_now_is_unavailability(code, body, content_type):
    with pytest.raises(HostUnavailable) as caught, api_errors("kc", "create Job j", policy="fail"):
        answered(code, body, content_type)
    assert str(caught.value).startswith(f"kc: create Job j: the cluster answered {code} (")
    assert caught.value.policy == "fail"


def test_other_error_answers_are_backend_errors_but_not_found_and_conflicts():
    with pytest.raises(BackendError) as caught, api_errors("kc", "create Job j"):
        answered(500, status(500, "InternalError", "etcd is sad"), "application/json")
    assert str(caught.value) == "create Job j on kc: 500 InternalError: etcd is sad"
    for code in (404, 409, 410):
        with pytest.raises(ApiError) as kept, api_errors("kc", "create Job j"):
            answered(code, status(code, "x", "y"), "application/json")
        assert kept.value.status.code == code
    with pytest.raises(KeyError), api_errors("kc", "x"):
        raise KeyError("not lightkube's")
    with pytest.raises(ConfigError, match=r"^mine$"), api_errors("kc", "x"):
        raise ConfigError("mine")


async def test_a_missing_kubeconfig_or_context_is_refused_naming_it(tmp_path, monkeypatch, nowhere):
    missing = tmp_path / "absent"
    monkeypatch.setenv("KUBECONFIG", f"{missing}{os.pathsep}{nowhere}")
    with pytest.raises(ConfigError) as caught:
        async with open_cluster(cluster_host()):
            pass
    assert str(caught.value).startswith(
        f"hosts.kc.kubernetes.kubeconfig: {missing} (the first file of $KUBECONFIG) does not "
        "exist; expected a kubeconfig"
    )
    monkeypatch.setenv("KUBECONFIG", str(nowhere))
    async with open_cluster(cluster_host()) as cluster:
        assert (cluster.namespace, cluster.context.path) == ("default", nowhere)
    async with open_cluster(cluster_host(nowhere, namespace="ml")) as cluster:
        assert cluster.namespace == "ml"
    with pytest.raises(ConfigError) as caught:
        async with open_cluster(cluster_host(nowhere, context="prod")):
            pass
    assert str(caught.value) == (
        f"hosts.kc.kubernetes.context: {nowhere} has no context 'prod'; expected one of ['c']"
    )
    (tmp_path / "notyaml").write_text("clusters: [\n")
    with pytest.raises(ConfigError, match=r"^hosts.kc.kubernetes.kubeconfig: .*notyaml: cannot"):
        async with open_cluster(cluster_host(tmp_path / "notyaml")):
            pass
    server = "https://127.0.0.1:1"
    for user, said in [
        (
            {"client-certificate": "a.crt", "client-key": "a.key"},
            f"client-certificate {tmp_path}/a.crt does not",
        ),
        ({"tokenFile": "token"}, f"tokenFile {tmp_path}/token does not exist"),
        ({"auth-provider": {"name": "gcp"}}, "its user has an auth-provider"),
        ({"exec": {"apiVersion": "v2", "command": "x"}}, "exec apiVersion: got 'v2'"),
    ]:
        kubeconfig = write_kubeconfig(tmp_path / "k", server, user)
        with pytest.raises(ConfigError) as caught:
            async with open_cluster(cluster_host(kubeconfig)):
                pass
        assert str(caught.value).startswith(f"hosts.kc.kubernetes: {kubeconfig}: context 'c': ")
        assert said in str(caught.value), caught.value


# -- exec credential plug-ins ------------------------------------------------------------

PLUGIN = """\
import json, os, sys, pathlib
runs = pathlib.Path(sys.argv[1])
count = len(runs.read_text().splitlines()) + 1 if runs.exists() else 1
with runs.open("a") as log:
    log.write(os.environ["KUBERNETES_EXEC_INFO"] + "\\n")
tokens = sys.argv[3].split(",")
token = tokens[min(count, len(tokens)) - 1]
if token == "fail":
    sys.stderr.write("no credentials for you\\n")
    sys.exit(3)
if token == "garbage":
    print("hello")
    sys.exit(0)
status = {"token": token}
if sys.argv[2] != "none":
    status["expirationTimestamp"] = sys.argv[2]
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1",
                  "kind": "ExecCredential", "status": status}))
"""


def exec_kubeconfig(
    path: Path, server: str, tokens: list[str], expires: str = "none", **cluster: Any
) -> tuple[Path, Path]:
    """A kubeconfig whose user runs the test's plug-in: it gives ``tokens`` in turn (the
    last from then on) and logs each run's KUBERNETES_EXEC_INFO in the runs file."""
    plugin = path.parent / "plugin.py"
    plugin.write_text(PLUGIN)
    runs = path.parent / "runs"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin), str(runs), expires, ",".join(tokens)],
            "env": [{"name": "CORRA_TEST", "value": "1"}],
            "provideClusterInfo": True,
            "installHint": "install the test's plug-in",
        }
    }
    return write_kubeconfig(path, server, user, **cluster), runs


async def test_a_failing_plugin_is_a_backend_error_naming_it(tmp_path, nowhere):
    server = yaml.safe_load(nowhere.read_text())["clusters"][0]["cluster"]["server"]
    for tokens, said in [
        (["fail"], "failed with exit status 3: no credentials for you (install the test's"),
        (["garbage"], "printed b'hello\\n'; expected an ExecCredential"),
    ]:
        kubeconfig, _ = exec_kubeconfig(tmp_path / "k", server, tokens)
        async with open_cluster(cluster_host(kubeconfig)) as cluster:
            with pytest.raises(BackendError) as caught, cluster.errors("list"):
                await cluster.client.get(ConfigMap, "x")
        message = str(caught.value)
        assert message.startswith(f"hosts.kc.kubernetes: {kubeconfig}: context 'c': exec plug-in")
        assert sys.executable in message and said in message, message
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./absent"}}
    kubeconfig = write_kubeconfig(tmp_path / "k", server, user)
    async with open_cluster(cluster_host(kubeconfig)) as cluster:
        with pytest.raises(BackendError, match=rf"plug-in {tmp_path}/absent cannot run: No such"):
            await cluster.client.get(ConfigMap, "x")


# -- against the real apiserver ------------------------------------------------------------


def cluster_files(kube) -> tuple[str, str, str, Path]:
    """The test cluster's server, admin token, unprivileged token, and its pki dir."""
    config = yaml.safe_load(kube.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    tokens = dict(
        reversed(line.split(",")[:2])
        for line in (kube.scratch / "tokens.csv").read_text().splitlines()
    )
    return server, tokens["admin"], tokens["nobody"], kube.scratch / "pki"


def config_map(name: str) -> ConfigMap:
    return ConfigMap(metadata=ObjectMeta(name=name), data={"a": "b"})


@pytest.mark.kubernetes
async def test_every_kind_of_credential_of_a_kubeconfig_works(kube, tmp_path):
    server, token, _, pki = cluster_files(kube)
    (tmp_path / "token").write_text(token + "\n")
    inline = {
        "client-certificate-data": base64.b64encode((pki / "admin.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((pki / "admin.key").read_bytes()).decode(),
    }
    ca_inline = {
        "certificate-authority-data": base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    }
    ca_file = {"certificate-authority": str(pki / "ca.crt")}
    hosts = {
        "the test cluster's (a token)": cluster_host(kube.kubeconfig),
        "a client certificate, CA checked": cluster_host(
            kube.kubeconfig, context="corra-test-cert"
        ),
        "inline certificate and CA": cluster_host(
            write_kubeconfig(tmp_path / "inline", server, inline, **ca_inline)
        ),
        "a token file (relative)": cluster_host(
            write_kubeconfig(tmp_path / "file", server, {"tokenFile": "token"}, **ca_file)
        ),
    }
    for index, (what, host) in enumerate(hosts.items()):
        async with open_cluster(host) as cluster:
            with cluster.errors(what):
                await cluster.write_slot()
                await cluster.client.create(config_map(f"credential-{index}"))
                await cluster.client.get(ConfigMap, f"credential-{index}")
                await cluster.write_slot()
                await cluster.client.delete(ConfigMap, f"credential-{index}")
            assert dict(cluster.requests) == {
                "POST configmaps": 1,
                "GET configmaps": 1,
                "DELETE configmaps": 1,
            }, what


@pytest.mark.kubernetes
async def test_an_exec_plugin_runs_on_trio_once_while_its_token_is_valid(kube, tmp_path):
    server, token, _, pki = cluster_files(kube)
    ca = {"certificate-authority": str(pki / "ca.crt")}
    kubeconfig, runs = exec_kubeconfig(
        tmp_path / "k", server, [token], expires="2999-01-01T00:00:00Z", **ca
    )
    async with open_cluster(cluster_host(kubeconfig)) as cluster, trio.open_nursery() as nursery:
        for _ in range(4):  # (four requests at once: one run)
            nursery.start_soon(cluster.client.get, Namespace, "default")
        for _ in range(3):
            await cluster.client.get(Namespace, "default")
    info = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(info) == 1
    assert info[0]["kind"] == "ExecCredential"
    assert info[0]["spec"]["interactive"] is False
    assert info[0]["spec"]["cluster"]["server"] == server  # (provideClusterInfo)
    assert base64.b64decode(info[0]["spec"]["cluster"]["certificate-authority-data"]) == (
        (pki / "ca.crt").read_bytes()
    )


@pytest.mark.kubernetes
async def test_an_exec_plugin_runs_again_once_its_token_expired_or_was_refused(kube, tmp_path):
    server, token, _, _ = cluster_files(kube)
    # expired as soon as given: each request needs a run
    kubeconfig, runs = exec_kubeconfig(
        tmp_path / "k", server, [token], expires="2000-01-01T00:00:00Z", **INSECURE
    )
    async with open_cluster(cluster_host(kubeconfig)) as cluster:
        for _ in range(3):
            await cluster.client.get(Namespace, "default")
    assert len(runs.read_text().splitlines()) == 3
    runs.unlink()
    # a token the server refuses (401): the plug-in runs again, the request is sent again
    kubeconfig, runs = exec_kubeconfig(tmp_path / "k", server, ["stale", token], **INSECURE)
    async with open_cluster(cluster_host(kubeconfig)) as cluster:
        await cluster.client.get(Namespace, "default")
        await cluster.client.get(Namespace, "default")
        assert cluster.requests["GET namespaces"] == 3  # (the refused one, its retry, one)
    assert len(runs.read_text().splitlines()) == 2
    runs.unlink()
    # a plug-in whose every token is refused: the 401 comes out, as a BackendError
    kubeconfig, runs = exec_kubeconfig(tmp_path / "k", server, ["stale"], **INSECURE)
    async with open_cluster(cluster_host(kubeconfig)) as cluster:
        with pytest.raises(BackendError) as caught, cluster.errors("read a ConfigMap"):
            await cluster.client.get(Namespace, "default")
    assert str(caught.value).startswith("read a ConfigMap on kc: 401 Unauthorized: ")
    assert "check the credentials of the kubeconfig's context" in str(caught.value)
    assert len(runs.read_text().splitlines()) == 2


@pytest.mark.kubernetes
async def test_refusals_are_backend_errors_and_not_found_stays_the_backends(kube, tmp_path):
    server, _, nobody, pki = cluster_files(kube)
    ca = {"certificate-authority": str(pki / "ca.crt")}
    kubeconfig = write_kubeconfig(tmp_path / "k", server, {"token": nobody}, **ca)
    async with open_cluster(cluster_host(kubeconfig)) as cluster:
        with pytest.raises(BackendError) as caught, cluster.errors("create Job corra-x-1"):
            await cluster.client.create(config_map("refused"))
    message = str(caught.value)
    assert message.startswith("create Job corra-x-1 on kc: 403 Forbidden: configmaps is ")
    assert 'User "nobody" cannot create resource "configmaps"' in message
    assert "permissions (RBAC)" in message
    async with open_cluster(cluster_host(kube.kubeconfig)) as cluster:
        with pytest.raises(ApiError) as kept, cluster.errors("read"):
            await cluster.client.get(Job, "no-such-job")
        assert kept.value.status.code == 404
        # a server whose certificate the kubeconfig's CA did not sign
        other = {"certificate-authority": str(pki / "admin.crt")}
        wrong = write_kubeconfig(tmp_path / "wrong", server, {"token": "t"}, **other)
    mismatched = {"client-certificate": "pki/admin.crt", "client-key": "pki/server.key"}
    (tmp_path / "pki").symlink_to(pki)
    with pytest.raises(ConfigError, match=r"context 'c': cannot use its TLS material .*KEY"):
        async with open_cluster(cluster_host(write_kubeconfig(tmp_path / "m", server, mismatched))):
            pass
    async with open_cluster(cluster_host(wrong)) as cluster:
        refused = r"^list on kc: the server's TLS certificate was refused"
        with pytest.raises(BackendError, match=refused), cluster.errors("list"):
            await cluster.client.get(Job, "x")


@pytest.mark.kubernetes
async def test_the_count_has_every_request_watches_included(kube):
    from corra.backends.kubernetes._watch import NamespaceWatch

    labels = {"corra.test/count": "yes"}
    async with open_cluster(cluster_host(kube.kubeconfig)) as cluster:
        await cluster.wait_answering()
        assert cluster.requests == {"GET version": 1}
        watch = NamespaceWatch(cluster.client, cluster.namespace, labels)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            job = Job.from_dict(
                {
                    "metadata": {"name": "counted", "labels": labels},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "x", "command": ["true"]}],
                            },
                        },
                    },
                }
            )
            with cluster.errors("create Job counted"):
                await cluster.write_slot()
                await cluster.client.create(job)
            with trio.fail_after(30):
                while watch.view("counted")[0] is None:
                    await watch.changed("counted")
            nursery.cancel_scope.cancel()
        with cluster.errors("delete Job counted"):
            await cluster.client.delete(Job, "counted", cascade=CascadeType.BACKGROUND)
    assert cluster.requests["POST jobs"] == 1
    assert cluster.requests["GET jobs"] == cluster.requests["GET pods"] == 1  # (the list)
    assert cluster.requests["GET jobs?watch"] >= 1 and cluster.requests["GET pods?watch"] >= 1
    assert cluster.requests["DELETE jobs"] == 1


@pytest.mark.kubernetes
async def test_requests_go_through_while_more_than_a_hundred_streams_are_open(kube):
    """Each running attempt's log is one request open while it runs (one connection each,
    HTTP/1.1): beyond httpx's default pool of 100 connections, every other request (creates,
    deletes, relists) waited, then failed with PoolTimeout. Found by benchmarks/kubernetes.py
    with 104 running pods."""
    streams = 120
    async with open_cluster(cluster_host(kube.kubeconfig)) as cluster:
        http, timeout = cluster.http, cluster.client._client._watch_timeout

        async def hold(task_status: trio.TaskStatus[None]) -> None:
            params = {"watch": "true", "timeoutSeconds": "60"}
            request = http.build_request(
                "GET", "/api/v1/namespaces/default/configmaps", params=params, timeout=timeout
            )
            response = await http.send(request, stream=True)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                await response.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    await nursery.start(hold)
                with trio.fail_after(5):
                    await cluster.client.get(Namespace, "default")
                nursery.cancel_scope.cancel()
        assert cluster.requests["GET configmaps?watch"] == streams
        assert cluster.requests["GET namespaces"] == 1
