"""Typed handles: a backend's handles are instances of the frozen attrs class it declares
(`Backend.handle_type`, its plug-in's ``handle``), stored as `handle_data` says and read back as
that class by the record codec the runtime builds from its backends. A backend without one
keeps JSON-value handles, stored as they are."""

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
from corra._errors import ConfigError, CorruptRecord
from corra._runtime import RECORD_CODEC, record_codec
from corra.backends.batch import JobHandle
from corra.backends.local import Handle
from corra.backends.ssh import RemoteHandle
from corra.processes._backend import (
    BackendContext,
    BackendPlugin,
    LaunchRequest,
    handle_data,
    optional_field,
)
from corra.processes._lifecycle import ProcessState
from corra.processes._record import ProcessRecord
from corra.processes._registry import Registry, installed
from corra.processes._spec import ProcessSpec

KEY = "p1.1"
LOCAL = Handle(
    key=KEY,
    run_dir=f"/state/runs/{KEY}",
    chaperone_pid=100,
    chaperone_start=5000,
    pid=101,
    cgroup="/sys/fs/cgroup/corra/p1.1",
    started_at=1796371200.25,
    shared=True,
)
#: As `SshProgramBackend.launch` makes them, with outputs and without; and as `find` does.
SSH_LAUNCHED = RemoteHandle(
    host="gpu1",
    key=KEY,
    run_dir=f"/srv/corra/runs/{KEY}",
    chaperone_pid=31337,
    chaperone_start=123456789,
    pid=31338,
    program_start=123456790,
    started_at=1796371200.25,
    outputs=("model/*.bin",),
    outputs_to="/home/corra/results",
    work_dir=f"/srv/corra/runs/{KEY}/work",
    output_limit=1 << 30,
)
SSH_PLAIN = attrs.evolve(SSH_LAUNCHED, outputs=(), outputs_to=None, work_dir=None)
SSH_FOUND = attrs.evolve(SSH_PLAIN, output_limit=None)
JOB = JobHandle(
    host="cluster",
    key=KEY,
    run_dir=f"/srv/corra/runs/{KEY}",
    job_id="4242",
    array=False,
    hold_on_pause=True,
)
HANDLES = {"local": [LOCAL], "ssh": [SSH_LAUNCHED, SSH_PLAIN, SSH_FOUND], "slurm": [JOB]}


def plugin_codec() -> Any:
    """The record codec of a runtime with the installed backends."""
    return record_codec({name: plugin.handle for name, plugin in installed.plugins.items()})


def record_of(backend: str, handle: Any) -> ProcessRecord:
    spec = ProcessSpec(argv=("true",), backend=backend, host=None if backend == "local" else "h")
    return ProcessRecord("p1", spec, ProcessState(phase="running", handle=handle), 1.0)


def stored_handle(codec: Any, record: ProcessRecord) -> Any:
    return json.loads(codec.encode(record))["data"]["state"]["handle"]


def test_the_built_in_plugins_declare_their_backends_handle_classes():
    plugins = installed.plugins
    assert (plugins["local"].handle, plugins["ssh"].handle) == (Handle, RemoteHandle)
    assert plugins["slurm"].handle is JobHandle


@pytest.mark.parametrize(
    ("backend", "handle"),
    [(backend, handle) for backend, handles in HANDLES.items() for handle in handles],
)
def test_a_handle_of_each_built_in_backend_round_trips_as_its_class(backend, handle):
    codec = plugin_codec()
    record = record_of(backend, handle)
    raw = codec.encode(record)
    assert raw == codec.encode_generic(record)
    decoded = codec.decode(raw)
    assert decoded == record and type(decoded.state.handle) is type(handle)


def test_handles_are_stored_as_the_dicts_of_before():
    codec = plugin_codec()
    ssh = stored_handle(codec, record_of("ssh", SSH_PLAIN))
    # the fields that only some handles have are stored only when they are set
    assert list(ssh) == [
        "host",
        "key",
        "run_dir",
        "chaperone_pid",
        "chaperone_start",
        "pid",
        "program_start",
        "started_at",
        "output_limit",
    ]
    assert "output_limit" not in stored_handle(codec, record_of("ssh", SSH_FOUND))
    assert list(stored_handle(codec, record_of("ssh", SSH_LAUNCHED)))[-4:] == [
        "outputs",
        "outputs_to",
        "work_dir",
        "output_limit",
    ]
    assert stored_handle(codec, record_of("slurm", JOB)) == {
        "host": "cluster",
        "key": KEY,
        "run_dir": f"/srv/corra/runs/{KEY}",
        "job_id": "4242",
        "array": False,
        "hold_on_pause": True,
    }
    assert stored_handle(codec, record_of("local", LOCAL)) == attrs.asdict(LOCAL)  # every field
    assert handle_data(SSH_PLAIN) == ssh  # (what corra show --json shows)


@pytest.mark.parametrize("schema", [1, 2, 3])
def test_an_old_records_dict_handle_decodes_into_its_class(schema):
    # A find()'s ssh handle (no output fields), as the old code stored it, at each schema.
    codec = plugin_codec()
    document = json.loads(codec.encode(record_of("ssh", SSH_FOUND)))
    stored = dict(document["data"]["state"]["handle"])
    document["schema"] = schema
    if schema == 1:
        document["data"]["state"].pop("paused_by")
    if schema <= 2:
        document["data"]["spec"]["slurm"] = {}
    decoded = codec.decode(json.dumps(document).encode())
    assert decoded.state.handle == SSH_FOUND
    assert stored_handle(codec, decoded) == stored


def test_a_stored_handle_that_does_not_fit_its_class_is_a_corrupt_record():
    codec = plugin_codec()
    document = json.loads(codec.encode(record_of("slurm", JOB)))
    document["data"]["state"]["handle"]["job_id"] = 4242
    document["data"]["state"]["handle"]["colour"] = "blue"
    with pytest.raises(CorruptRecord) as caught:
        codec.decode(json.dumps(document).encode())
    assert "$.data.state.handle.job_id" in str(caught.value)
    assert "colour" in str(caught.value)


def test_a_backend_without_a_handle_class_keeps_json_handles():
    assert record_codec({"local": None}) is RECORD_CODEC  # (one codec for all such runtimes)
    handle = {"key": KEY, "anything": [1, {"nested": None}]}
    record = record_of("local", handle)
    assert RECORD_CODEC.decode(RECORD_CODEC.encode(record)) == record
    # ... also where another backend of the runtime has one
    codec = record_codec({"local": None, "ssh": RemoteHandle})
    assert codec.decode(codec.encode(record)).state.handle == handle


# -- the runtime builds its codec from its backends ------------------------------------------


@attrs.frozen
class EchoHandle:
    key: str
    note: str | None = optional_field(None)


class TypedBackend(RecordingBackend):
    handle_type = EchoHandle

    async def launch(self, request: LaunchRequest) -> EchoHandle:
        await super().launch(request)
        return EchoHandle(str(request.key))

    async def wait(self, handle: Any) -> Any:
        assert type(handle) is EchoHandle  # (also after a recovery)
        return await super().wait(handle)


def typed_plugin(opened: Opened) -> BackendPlugin:
    @contextlib.asynccontextmanager
    async def open_typed(context: BackendContext) -> AsyncIterator[TypedBackend]:
        backend = TypedBackend(context)
        opened.backends.append(backend)
        yield backend

    return BackendPlugin(name="local", open=open_typed, handle=EchoHandle)


async def test_a_plugins_handles_are_stored_and_read_back_as_its_handle_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corra._runtime, "installed", Registry({"local": typed_plugin(Opened())}))
    state = tmp_path / "state"
    async with corra.open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(["prog"])
        assert (await ref.wait()).phase == "finished"
        assert ref.state.handle == EchoHandle(f"{ref.id}.1")
    async with corra.open_runtime(state_dir=state) as rt:
        assert rt.processes.get(ref.id).state.handle == EchoHandle(f"{ref.id}.1")  # from disk


async def test_a_backend_given_to_the_runtime_declares_its_handle_class(tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = BackendContext(state_dir=state, supervisor=None)  # type: ignore[arg-type]
    typed, plain = TypedBackend(context), RecordingBackend(context)
    async with corra.open_runtime(state_dir=state, backends={"local": typed}) as rt:
        ref = await rt.spawn_process(["prog"])
        assert (await ref.wait()).phase == "finished"
    async with corra.open_runtime(state_dir=state, backends={"local": typed}) as rt:
        assert rt.processes.get(ref.id).state.handle == EchoHandle(f"{ref.id}.1")
    async with corra.open_runtime(state_dir=state, backends={"local": plain}) as rt:
        other = await rt.spawn_process(["prog"])
        assert (await other.wait()).phase == "finished"
    async with corra.open_runtime(state_dir=state, backends={"local": plain}) as rt:
        assert rt.processes.get(other.id).state.handle == {"key": f"{other.id}.1"}


async def test_a_backend_whose_handle_class_is_not_its_plugins_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = attrs.evolve(recording_plugin("local", Opened()), handle=EchoHandle)
    monkeypatch.setattr(corra._runtime, "installed", Registry({"local": plugin}))
    with pytest.raises(ConfigError, match="its plug-in declares handles of"):
        async with corra.open_runtime(state_dir=tmp_path / "state"):
            pass
