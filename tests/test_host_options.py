"""A host's ``[hosts.NAME.<backend>]`` tables: each is structured into the host options class
its backend's plug-in declares (`BackendPlugin.host_options`), so that a third-party backend
gets its own host table without a change to corra's core; ``hosts.json`` keeps a table per
backend with host options (a ``slurm`` table per host, as it always had)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_backends import Opened, RecordingBackend, recording_plugin

import corra
import corra._runtime
import corra.backends.ssh._config
from corra._errors import ConfigError
from corra._jobfile import parse_job_text
from corra._remote import remember_hosts, remembered_hosts
from corra.backends.hyperqueue import HyperQueueHostOptions
from corra.backends.kubernetes import KubernetesHostOptions
from corra.backends.plugins import SLURM
from corra.backends.slurm import SlurmSettings
from corra.backends.ssh import HostConfig, host_table, parse_host
from corra.processes._backend import BackendContext, BackendPlugin, Capabilities
from corra.processes._registry import Registry


def _qps(instance: Any, attribute: Any, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"kube.qps: got {value!r}, expected a number > 0")


@attrs.frozen
class KubeHostOptions:
    """A third party's ``[hosts.NAME.kube]`` table."""

    namespace: str = "default"
    qps: float = attrs.field(default=5.0, validator=_qps)
    labels: dict[str, str] = attrs.field(factory=dict)


def kube_plugin(opened: Opened | None = None) -> BackendPlugin:
    @contextlib.asynccontextmanager
    async def open_kube(context: BackendContext) -> AsyncIterator[RecordingBackend]:
        backend = RecordingBackend(context)
        backend.capabilities = Capabilities(hosts=True)
        if opened is not None:
            opened.backends.append(backend)
        yield backend

    return BackendPlugin(
        name="kube",
        open=open_kube,
        handle=None,
        host_options=KubeHostOptions,
        capabilities=Capabilities(hosts=True),
    )


@pytest.fixture
def registry() -> Registry:
    return Registry({"kube": kube_plugin(), "slurm": SLURM})


def test_a_plugins_host_table_is_structured_into_its_host_options_class(
    registry: Registry,
) -> None:
    host = parse_host("c", {"hostname": "h", "kube": {"namespace": "ml", "qps": 2}}, registry)
    assert host.options_for("kube") == KubeHostOptions(namespace="ml", qps=2.0)
    assert host.options_for("slurm") == SlurmSettings()  # (its table is absent: defaults)
    assert host.hostname == "h"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"qps": "x"}, "hosts.c.kube.qps: got 'x', expected a number"),
        ({"qps": -1}, "hosts.c.kube.qps: got -1.0, expected a number > 0"),
        ({"labels": {"a": 1}}, "hosts.c.kube.labels: got 'a' = 1, expected string keys"),
        ({"bogus": 1}, "hosts.c.kube: unknown setting(s) bogus; expected some of labels, "),
        ("ml", "hosts.c.kube: expected a table, got 'ml'"),
    ],
)
def test_a_plugins_host_table_is_refused_with_its_field_paths(
    registry: Registry, table: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_host("c", {"kube": table}, registry)
    assert str(caught.value).startswith(message), caught.value


def test_an_unknown_host_table_is_refused_naming_the_fields_and_the_backends_with_options(
    registry: Registry,
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_host("c", {"kubernetes": {}}, registry)
    assert str(caught.value) == (
        "hosts.c: unknown field(s) kubernetes; expected some of env, hostname, identity_file, "
        "known_hosts, pool, port, proxy_jump, python, transport, user, work_root, or the "
        "table of a backend with host options (kube, slurm)"
    )
    # A backend without host options has no table there either.
    with pytest.raises(
        ConfigError, match=r"unknown field\(s\) local; .* \(hyperqueue, kubernetes, slurm\)$"
    ):
        parse_host("c", {"local": {}})


def test_a_backend_with_host_options_named_like_a_host_field_is_refused() -> None:
    plugin = BackendPlugin(name="pool", open=None, handle=None, host_options=KubeHostOptions)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"backend 'pool': host_options: .*hosts\.NAME\.pool"):
        parse_host("c", {}, Registry({"pool": plugin}))


def test_a_hosts_options_are_their_defaults_where_no_table_gives_them() -> None:
    assert parse_host("c", {}).options == {
        "slurm": SlurmSettings(),
        "kubernetes": KubernetesHostOptions(),
        "hyperqueue": HyperQueueHostOptions(),
    }
    # (a host made in Python with no options: the backend's defaults, as from a table)
    assert HostConfig(name="c").options_for("slurm") == SlurmSettings()
    assert HostConfig(name="c").options_for("local") is None  # (no host options)
    with pytest.raises(ConfigError, match=r"^backend: got 'kube', expected one of"):
        HostConfig(name="c").options_for("kube")  # (not installed, none given)


def test_a_job_files_host_tables_go_to_the_installed_backends(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corra.backends.ssh._config, "installed", registry)
    text = """
[hosts.c]
transport = "local"

[hosts.c.kube]
namespace = "ml"

[hosts.d.kube]
qps = 0

[[process]]
name = "a"
argv = ["true"]
"""
    with pytest.raises(ConfigError) as caught:
        parse_job_text(text, "jobs.toml")
    assert str(caught.value) == "jobs.toml: hosts.d.kube.qps: got 0.0, expected a number > 0"
    job = parse_job_text(text.replace("qps = 0", "qps = 1"), "jobs.toml")
    assert job.hosts["c"].options_for("kube") == KubeHostOptions(namespace="ml")
    assert job.hosts["d"].options_for("kube") == KubeHostOptions(qps=1.0)


def test_the_remembered_hosts_keep_a_slurm_table_per_host(tmp_path: Path) -> None:
    hosts = {
        "a": parse_host("a", {"slurm": {"poll_interval": 30, "work_root": "/scratch"}}),
        "b": HostConfig(name="b", transport="local"),
    }
    remember_hosts(tmp_path, hosts)
    written = json.loads((tmp_path / "hosts.json").read_text())
    assert written["a"]["slurm"] == {
        "poll_interval": 30.0,
        "submit_burst": 30,
        "submit_rate": 2.0,
        "work_root": "/scratch",
    }
    assert written["b"]["slurm"] == attrs.asdict(SlurmSettings())
    assert remembered_hosts(tmp_path) == {"a": hosts["a"], "b": parse_host("b", written["b"])}
    assert remembered_hosts(tmp_path)["b"].options_for("slurm") == SlurmSettings()


def test_a_host_table_is_what_parse_host_takes_back(registry: Registry) -> None:
    host = parse_host(
        "c", {"port": 2222, "kube": {"labels": {"team": "ml"}}, "env": {"A": "1"}}, registry
    )
    table = host_table(host)
    assert table["kube"] == {"namespace": "default", "qps": 5.0, "labels": {"team": "ml"}}
    assert "hostname" not in table  # (None: left out)
    assert parse_host("c", table, registry) == host


async def test_a_plugin_reads_its_host_options_from_the_hosts_it_is_opened_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Registry
) -> None:
    opened = Opened()
    plugins = {"local": recording_plugin("local", Opened()), "kube": kube_plugin(opened)}
    monkeypatch.setattr(corra._runtime, "installed", Registry(plugins))
    hosts = {"c": parse_host("c", {"transport": "local", "kube": {"namespace": "ml"}}, registry)}
    async with corra.open_runtime(state_dir=tmp_path / "state", hosts=hosts):
        (backend,) = opened.backends
        assert backend.context.hosts["c"].options_for("kube") == KubeHostOptions("ml")
