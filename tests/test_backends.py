"""The backend seam: backends are plug-ins found through entry points, opened by the runtime
through their ``open``, and handed typed `LaunchRequest` values (that the core names none of
them: tests/test_layering.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from test_api import TOKEN, serving

import corra
import corra._runtime
from corra._errors import ConfigError
from corra.backends.local import LocalBackend, _connection
from corra.processes._backend import (
    BackendBase,
    BackendContext,
    BackendPlugin,
    Capabilities,
    EffectKey,
    LaunchRequest,
    describe_plugin,
)
from corra.processes._lifecycle import Result
from corra.processes._registry import Registry, installed


def test_the_built_in_backends_register_through_entry_points() -> None:
    assert list(installed.plugins) == ["hyperqueue", "kubernetes", "local", "slurm", "ssh"]
    for plugin in installed.plugins.values():
        assert plugin.capabilities.hosts == (plugin.name != "local")


# -- corra backends and GET /v1/backends ------------------------------------------------------


def corra_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corra.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_corra_backends_lists_each_backend_with_capabilities_and_options(tmp_path: Path) -> None:
    done = corra_cli("--state-dir", str(tmp_path / "state"), "backends")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for name in ("local", "ssh", "slurm"):
        assert f"\n{name}: " in f"\n{text}"
    assert "  capabilities: slots, log_size, status\n" in text  # local's
    assert "  options ([process.slurm]):\n" in text
    assert "  host options ([hosts.NAME.slurm]):\n" in text
    lines = text.splitlines()
    header = lines.index("  options ([process.slurm]):") + 1
    assert lines[header].split() == ["FIELD", "TYPE", "DEFAULT"]
    assert any(line.split() == ["hold_on_pause", "bool", "false"] for line in lines)
    assert any(line.split() == ["poll_interval", "float", "10.0"] for line in lines)
    assert "  options ([process.ssh]): none\n" in text


def test_corra_backends_json_is_each_plugin_described(tmp_path: Path) -> None:
    done = corra_cli("--state-dir", str(tmp_path / "state"), "backends", "--json")
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described == json.loads(json.dumps(installed.describe()))
    assert described == [
        json.loads(json.dumps(describe_plugin(plugin))) for plugin in installed.plugins.values()
    ]
    slurm = next(backend for backend in described if backend["name"] == "slurm")
    assert slurm["capabilities"]["pause_hooks"] is True
    # (what follows $CORRA_STATUS: every built-in backend, a pod's through its sidecar)
    following = {backend["name"] for backend in described if backend["capabilities"]["status"]}
    assert {"local", "ssh", "slurm", "hyperqueue", "kubernetes"} <= following
    assert {"name": "partition", "type": "str | None", "default": None} in slurm["options"]


async def test_get_v1_backends_answers_what_corra_backends_json_prints(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        response = await served.http.get("/v1/backends")
        assert response.status_code == 200
        assert response.json() == json.loads(json.dumps(installed.describe()))
        async with httpx.AsyncClient(base_url=served.urls[0]) as bare:
            refused = await bare.get("/v1/backends")
            assert refused.status_code == 401
            allowed = await bare.get("/v1/backends", headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.json() == response.json()


# -- a plug-in that cannot be loaded ----------------------------------------------------------


def _broken_distribution(site: Path) -> None:
    """A distribution whose ``corra.backends`` entry point names a module that is not there."""
    info = site / "broken_backend-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[corra.backends]\nbroken = broken_backend_module:PLUGIN\n"
    )


def test_a_plugin_whose_entry_point_fails_to_load_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _broken_distribution(site)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError) as raised:
        Registry().plugins  # noqa: B018 - loading is what is tested
    message = str(raised.value)
    assert "entry point broken = 'broken_backend_module:PLUGIN'" in message
    assert "cannot be loaded: ModuleNotFoundError" in message
    # ... and so on the command line, which says it and exits 2 (a configuration error)
    for args in (["backends"], ["run", "--", "true"]):
        done = corra_cli(
            "--state-dir", str(tmp_path / "state"), *args, env={"PYTHONPATH": str(site)}
        )
        assert done.returncode == 2, done.stderr
        assert "corra: entry point broken = 'broken_backend_module:PLUGIN'" in done.stderr


# -- the runtime opens backends through their plug-ins ---------------------------------------


class RecordingBackend(BackendBase):
    """Programs that end at once; it keeps every request it got, and says when it opened."""

    capabilities = Capabilities()

    def __init__(self, context: BackendContext) -> None:
        self.context = context
        self.requests: list[LaunchRequest] = []
        self.open = True

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        self.requests.append(request)
        return {"key": str(request.key)}

    async def find(self, key: EffectKey, host: str | None = None) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return None

    async def wait(self, handle: Any) -> Result:
        await trio.lowlevel.checkpoint()
        return Result(returncode=0)

    async def kill(self, handle: Any, grace: float) -> Result | None:
        await trio.lowlevel.checkpoint()
        return None

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""


@attrs.frozen
class Opened:
    backends: list[RecordingBackend] = attrs.field(factory=list)


def recording_plugin(
    name: str, opened: Opened, *, declares: Capabilities | None = None
) -> BackendPlugin:
    @contextlib.asynccontextmanager
    async def open_recording(context: BackendContext) -> AsyncIterator[RecordingBackend]:
        backend = RecordingBackend(context)
        opened.backends.append(backend)
        try:
            yield backend
        finally:
            backend.open = False

    return BackendPlugin(
        name=name, open=open_recording, handle=None, capabilities=declares or Capabilities()
    )


def never_opened(name: str) -> BackendPlugin:
    @contextlib.asynccontextmanager
    async def open_never(context: BackendContext) -> AsyncIterator[Any]:
        raise AssertionError(f"{name} has hosts: not opened without any")
        yield

    return BackendPlugin(
        name=name, open=open_never, handle=None, capabilities=Capabilities(hosts=True)
    )


async def test_the_runtime_opens_plugins_and_hands_them_one_launch_request_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Opened()
    plugins = {"local": recording_plugin("local", opened), "ssh": never_opened("ssh")}
    monkeypatch.setattr(corra._runtime, "installed", Registry(plugins))
    state = tmp_path / "state"
    async with corra.open_runtime(state_dir=state, max_running=3, output_limit=4096) as rt:
        (backend,) = opened.backends
        assert backend.open
        assert (backend.context.state_dir, backend.context.max_running) == (state, 3)
        assert backend.context.output_limit == 4096 and backend.context.hosts == {}
        ref = await rt.spawn_process(
            ["prog", "arg"], name="named", env={"A": "1"}, timeout=5.0, kill_grace=1.5
        )
        assert (await ref.wait()).phase == "finished"
        unnamed = await rt.spawn_process(["prog"])
        assert (await unnamed.wait()).phase == "finished"
    assert not backend.open  # its block ended with the runtime's
    first, second = backend.requests
    assert first.key == EffectKey(ref.id, 1) and str(first.key) == f"{ref.id}.1"
    assert (first.argv, first.name, first.limits.timeout, first.limits.kill_grace) == (
        ("prog", "arg"),
        "named",
        5.0,
        1.5,
    )
    assert first.environment() == {
        "A": "1",
        "CORRA_PROCESS_ID": ref.id,
        "CORRA_PROCESS_NAME": "named",
        "CORRA_ATTEMPT": "1",
    }
    # A process without a name is called by its id, as the built-in backends always did.
    assert second.environment()["CORRA_PROCESS_NAME"] == unnamed.id


async def test_a_backend_whose_capabilities_are_not_its_plugins_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = recording_plugin("local", Opened(), declares=Capabilities(slots=True))
    monkeypatch.setattr(corra._runtime, "installed", Registry({"local": plugin}))
    with pytest.raises(ConfigError, match="backend 'local': its plug-in declares"):
        async with corra.open_runtime(state_dir=tmp_path / "state"):
            pass


# -- the shared chaperone's connection: tasks in the backend's nursery ------------------------


async def test_an_unexpected_error_in_the_shared_chaperone_connection_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, message: dict[str, Any]) -> None:
        raise RuntimeError("a bug in _dispatch")

    monkeypatch.setattr(_connection.Connection, "_dispatch", broken)
    with pytest.raises(BaseExceptionGroup) as raised:
        async with LocalBackend(tmp_path / "runs", cgroups="off") as backend:
            with trio.fail_after(30):
                await backend.launch(LaunchRequest(EffectKey.parse("bug.1"), ("true",)))
    bug, rest = raised.value.split(RuntimeError)
    assert bug is not None and rest is None
    assert str(bug.exceptions[0]) == "a bug in _dispatch"


async def test_the_shared_chaperone_connection_needs_the_backends_block(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "runs", cgroups="off")
    with pytest.raises(corra.BackendError, match="async with LocalBackend"):
        await backend.launch(LaunchRequest(EffectKey.parse("outside.1"), ("true",)))


def test_a_plugin_is_described_alike_before_and_after_its_types_are_resolved() -> None:
    @attrs.frozen
    class Options:
        # (strings until resolved: this module is `from __future__ import annotations`)
        size: int | None = None
        names: tuple[str, ...] = ()
        flag: bool = False

    plugin = BackendPlugin(name="described", open=None, handle=None, options=Options)  # type: ignore[arg-type]
    before = describe_plugin(plugin)
    attrs.resolve_types(Options)
    assert describe_plugin(plugin) == before
    assert [(field["name"], field["type"]) for field in before["options"]] == [
        ("size", "int | None"),
        ("names", "tuple[str, ...]"),
        ("flag", "bool"),
    ]


def test_a_table_field_shows_its_empty_default_and_a_loose_field_its_type_in_words() -> None:
    described = {backend["name"]: backend for backend in installed.describe()}
    options = {field["name"]: field for field in described["hyperqueue"]["options"]}
    assert options["resources"]["default"] == {}
    assert options["cpus"] == {
        "name": "cpus",
        "type": "number or str",
        "default": "1",
        "doc": "CPUs: 2, 0.5, 'all', '4 compact'",
    }
    kube = {field["name"]: field for field in described["kubernetes"]["options"]}
    assert kube["node_selector"]["default"] == {}
