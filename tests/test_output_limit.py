"""Program output is capped per stream (``output_limit``), and a full disk does not stop the
store: real programs, real chaperones, a real tmpfs filling up."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from _local import Local
from _local import Spec as LaunchSpec
from test_api import serving, submit, wait_for
from test_chaperone import Connection, serve, start, write_spec

from corra._errors import ConfigError
from corra._jobfile import parse_job_text
from corra._runtime import open_runtime
from corra.persistence import open_store_readonly
from corra.processes._spec import MAX_OUTPUT_LIMIT, ProcessSpec

CORRA = [sys.executable, "-m", "corra.cli"]
MIB = 1 << 20


def stop_chaperones(root: Path) -> None:
    """SIGTERM the shared chaperone of ``root`` (if one serves it), so nothing is left."""
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((root / ".chaperone.pid").read_text())
        os.kill(recorded["pid"], 15)


@pytest.fixture(params=["shared", "own"])
async def backend(tmp_path: Path, request: pytest.FixtureRequest):
    async with Local(tmp_path / "runs", chaperone=request.param) as backend:
        yield backend
    stop_chaperones(tmp_path / "runs")


async def test_yes_is_cut_at_its_output_limit_by_either_chaperone(backend: Local):
    spec = LaunchSpec(argv=("yes",), timeout=1.0, kill_grace=0, output_limit=MIB)
    handle = await backend.launch("yes.1", spec)
    record = await backend.wait(handle)
    assert record.timed_out
    stdout = backend.log_path(handle, "stdout").read_bytes()
    assert stdout == b"y\n" * (MIB // 2)  # the first part, whole
    assert record.stdout_size == MIB
    assert record.stdout_dropped > 10 * MIB  # yes writes hundreds of MB a second
    assert (record.stderr_size, record.stderr_dropped) == (0, 0)


async def test_output_under_the_limit_is_all_kept(backend: Local):
    spec = LaunchSpec(argv=("head", "-c", "100000", "/dev/zero"), output_limit=100000)
    handle = await backend.launch("head.1", spec)
    record = await backend.wait(handle)
    assert (record.returncode, record.stdout_size, record.stdout_dropped) == (0, 100000, 0)


async def test_yes_with_a_1_mib_limit_ends_at_the_limit_and_the_record_says_what_was_dropped(
    tmp_path: Path,
):
    state = tmp_path / "state"
    try:
        async with open_runtime(state_dir=state) as rt:
            ref = await rt.spawn_process(
                ["yes"], name="yes", output_limit=MIB, timeout=1.0, kill_grace=0
            )
            record = await ref.wait()
            assert await ref.logs(size=2 * MIB) == b"y\n" * (MIB // 2)
    finally:
        stop_chaperones(state / "runs")
    result = record.state.result
    assert result is not None and result.timed_out
    assert result.stdout_bytes == MIB
    assert result.stdout_dropped > 10 * MIB
    show = await trio.run_process(
        [*CORRA, "--state-dir", str(state), "show", "yes"], capture_stdout=True, check=False
    )
    assert f"stdout {MIB} B (and {result.stdout_dropped} B dropped" in show.stdout.decode(), show


async def test_the_runtime_default_output_limit_applies_to_specs_without_one(tmp_path: Path):
    state = tmp_path / "state"
    # (each output one write: a check between two writes may miss the count of a few bytes)
    script = "head -c 8000 /dev/zero; head -c 300 /dev/zero >&2"
    try:
        async with open_runtime(state_dir=state, output_limit=4096) as rt:
            default = await rt.spawn_process(["sh", "-c", script], name="default")
            own = await rt.spawn_process(["sh", "-c", script], name="own", output_limit=20000)
            first, second = await default.wait(), await own.wait()
    finally:
        stop_chaperones(state / "runs")
    assert first.state.result is not None and second.state.result is not None
    assert (first.state.result.stdout_bytes, first.state.result.stdout_dropped) == (4096, 3904)
    assert (first.state.result.stderr_bytes, first.state.result.stderr_dropped) == (300, 0)
    assert (second.state.result.stdout_bytes, second.state.result.stdout_dropped) == (8000, 0)


@pytest.mark.parametrize("value", [0, -1, MAX_OUTPUT_LIMIT + 1, True, 1.5, "1G", None])
async def test_an_output_limit_out_of_range_is_refused_naming_field_value_and_limit(
    tmp_path: Path, value: object
):
    errors = []
    if value is not None:  # a spec's None is the runtime's default; the runtime has no None
        with pytest.raises(ConfigError) as spec_error:
            ProcessSpec(argv=("true",), output_limit=value)  # type: ignore[arg-type]
        errors.append(spec_error.value)
    with pytest.raises(ConfigError) as runtime_error:
        async with open_runtime(state_dir=tmp_path / "state", output_limit=value):  # type: ignore[arg-type]
            pass
    errors.append(runtime_error.value)
    for error in errors:
        assert "output_limit" in str(error) and repr(value) in str(error)
        assert str(MAX_OUTPUT_LIMIT) in str(error) and "1 TiB" in str(error)
    assert ProcessSpec(argv=("true",), output_limit=MAX_OUTPUT_LIMIT).output_limit == 1 << 40


def test_a_job_file_sets_output_limit_in_defaults_or_per_process():
    job = parse_job_text(
        """
[defaults]
output_limit = 1000000

[[process]]
name = "a"
argv = ["yes"]

[[process]]
name = "b"
argv = ["yes"]
output_limit = 5000
""",
        "jobs.toml",
    )
    assert [spec.output_limit for spec in job.processes] == [1000000, 5000]
    with pytest.raises(ConfigError) as error:
        parse_job_text('[[process]]\nname = "a"\nargv = ["yes"]\noutput_limit = 0\n', "j.toml")
    assert str(error.value) == (
        f"j.toml: process[0] ('a').output_limit: got 0, expected bytes > 0 and <= "
        f"{MAX_OUTPUT_LIMIT} (1 TiB), or nothing"
    )


def test_corra_run_takes_an_output_limit(tmp_path: Path):
    SCRIPT = ["sh", "-c", "head -c 5000 /dev/zero"]
    state = tmp_path / "state"
    try:
        run = subprocess.run(
            [
                *CORRA,
                "--state-dir",
                str(state),
                "run",
                "--name",
                "lim",
                "--output-limit",
                "1000",
                "--",
                *SCRIPT,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        show = subprocess.run(
            [*CORRA, "--state-dir", str(state), "show", "--json", "lim"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop_chaperones(state / "runs")
    result = json.loads(show.stdout)["result"]
    assert (result["stdout_bytes"], result["stdout_dropped"]) == (1000, 4000)
    bad = subprocess.run(
        [*CORRA, "--state-dir", str(state), "run", "--output-limit", "0", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--output-limit: got 0" in bad.stderr, bad.stderr


# a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB tmpfs (as root; skipped otherwise), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        stop_chaperones(disk / "state" / "runs")
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)  # the chaperone's last fds


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


async def test_the_store_keeps_working_when_program_output_fills_the_disk(small_disk: Path):
    state = small_disk / "state"
    async with open_runtime(state_dir=state, output_limit=MAX_OUTPUT_LIMIT) as rt:
        flood = await rt.spawn_process(["yes"], name="flood")
        with trio.fail_after(60):
            ended = await flood.wait()  # yes stops at ENOSPC
        assert free_bytes(small_disk) < MIB  # the disk is full
        result = ended.state.result
        assert result is not None and result.returncode == 1, ended
        assert result.stdout_bytes > 32 * MIB
        # The store still takes submissions and transitions; the launch may fail, clearly
        # (a program that needs no disk runs: its run dir was made ahead of need).
        after = await rt.spawn_process(["true"], name="after")
        with trio.fail_after(60):
            second = await after.wait()
        assert second.phase in ("finished", "failed")
        if second.phase == "failed":
            assert "No space left on device" in (second.state.reason or ""), second
        # Space freed by hand: everything carries on, no restart.
        handle = ended.state.handle
        assert handle is not None
        os.truncate(Path(handle.run_dir) / "stdout", 0)
        again = await rt.spawn_process(["sh", "-c", "echo ok"], name="again")
        with trio.fail_after(60):
            assert (await again.wait()).phase == "finished"
        assert await again.logs() == b"ok\n"
    with open_store_readonly(state) as store:
        assert store.id_for_name("flood") == flood.id
        assert store.id_for_name("after") == after.id
        assert store.load(after.id) is not None


async def test_the_api_takes_output_limit_and_shows_what_was_dropped(tmp_path: Path):
    async with serving(tmp_path / "state") as served:
        bad = await served.http.post("/v1/processes", json={"argv": ["yes"], "output_limit": 0})
        assert bad.status_code == 422 and "output_limit: got 0" in bad.json()["message"]
        fields = {"name": "yes", "output_limit": MIB, "timeout": 1, "kill_grace": 0}
        await submit(served.http, ["yes"], **fields)
        record = await wait_for(served.http, "yes", "failed")
        assert record["spec"]["output_limit"] == MIB
        assert record["result"]["stdout_bytes"] == MIB
        assert record["result"]["stdout_dropped"] > 10 * MIB
        assert record["result"]["stderr_dropped"] == 0
    stop_chaperones(tmp_path / "state" / "runs")


# the chaperone alone, as a remote host runs it ------------------------------------------


@pytest.fixture
def shared_chaperone(tmp_path: Path):
    """A shared chaperone for ``tmp_path/root``, and a connection to it."""
    root = tmp_path / "root"
    root.mkdir()
    answer, daemon = serve(root)
    assert answer == "ready"
    connection = Connection(root)
    yield root, connection
    connection.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon["pid"], 15)


@pytest.mark.parametrize("value", [0, -5, "1G", 2.5, True])
def test_a_bad_output_limit_is_an_invalid_spec_for_either_chaperone(
    tmp_path: Path, shared_chaperone: tuple[Path, Connection], value: object
):
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["true"], output_limit=value)
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
    assert reply["status"] == "invalid" and "output_limit" in reply["error"]
    assert repr(value) in reply["error"]
    assert not (run_dir / "chaperone.pid").exists()  # nothing claimed
    root, connection = shared_chaperone
    spec = {"argv": ["true"], "cwd": None, "env": {}, "output_limit": value}
    answer = connection.request(op="launch", key="bad.1", spec=spec)
    assert answer["op"] == "invalid" and "output_limit" in answer["error"], answer
    assert not (root / "bad.1").exists()
    good = connection.request(op="launch", key="good.1", spec={**spec, "output_limit": 3})
    assert good["op"] == "started"  # the connection serves on
    record = connection.event()["record"]
    assert (record["stdout_size"], record["stdout_dropped"]) == (0, 0)
