"""Remote programs under the chaperone, over a real sshd (and the same code on `local`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import _sshd
import attrs
import pytest
import trio
import trio_asyncio
from _requests import request

from corra._errors import LaunchFailed, ProgramLost
from corra.actors import SupervisorSpec, open_runtime
from corra.backends._pollers import open_host_pollers
from corra.backends.ssh import (
    HostConfig,
    PoolRegistry,
    SshProgramBackend,
    SshTransport,
    TokenBucket,
)
from corra.backends.transport import LocalTransport
from corra.processes._spec import ProcessSpec

pytestmark = pytest.mark.slow


@attrs.frozen
class RemoteSpec:
    """The fields of a ProcessSpec the backend reads, with a host."""

    argv: tuple[str, ...]
    host: str = "remote"
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    timeout: float | None = None
    kill_grace: float = 2.0
    name: str | None = None
    inputs: dict[str, str] = attrs.field(factory=dict)
    outputs: tuple[str, ...] = ()
    outputs_dir: str | None = None
    output_limit: int | None = None


def host_for(sshd: _sshd.Sshd, root: str, **options: object) -> HostConfig:
    return sshd.host_config("remote", work_root=root, **options)


@contextlib.asynccontextmanager
async def backend_for(
    host: HostConfig,
    *,
    local: bool = False,
    poll_interval: float = 0.2,
    logs_dir: Path | None = None,
) -> AsyncIterator[SshProgramBackend]:
    async with trio_asyncio.open_loop(), open_runtime() as runtime:
        if local:
            transport = LocalTransport()
        else:
            supervisor = await runtime.spawn_supervisor(SupervisorSpec(), name="ssh")
            registry = PoolRegistry(supervisor, TokenBucket(rate=100, burst=10))
            transport = SshTransport(await registry.pool(host))  # type: ignore[assignment]
        backend = SshProgramBackend(
            {host.name: host},
            {host.name: transport},
            poll_interval=poll_interval,
            logs_dir=logs_dir,
        )
        async with open_host_pollers(backend):
            yield backend


def remote_root(tag: str) -> str:
    # The remote user's own dir: sshd's user (corrassh as root) cannot write pytest's tmp.
    return f"corra-tests/{tag}-{os.getpid()}-{time.monotonic_ns()}"


@pytest.fixture(params=["ssh", "local"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_remote_program_runs_once_and_reports(
    sshd: _sshd.Sshd, transport_kind: str, tmp_path: Path
) -> None:
    local = transport_kind == "local"
    root = str(tmp_path / "runs") if local else remote_root("once")
    host = host_for(sshd, root, transport=transport_kind)
    async with backend_for(host, local=local) as backend:
        spec = RemoteSpec(argv=("sh", "-c", 'echo "out $CORRA_ATTEMPT"; echo err >&2; exit 3'))
        handle = await backend.launch(request("p1.1", spec))
        assert handle.host == "remote" and handle.pid
        again = await backend.launch(
            request("p1.1", spec)
        )  # replayed: the same program, not a second
        assert again.chaperone_pid == handle.chaperone_pid and again.pid == handle.pid
        result = await backend.wait(handle)
        assert result.returncode == 3 and result.stdout_bytes == len(b"out 1\n")
        assert await backend.read_log("p1.1", "stdout", 0, 100) == b"out 1\n"
        assert await backend.read_log("p1.1", "stdout", 4, 100) == b"1\n"
        assert await backend.read_log("p1.1", "stderr", 0, 100) == b"err\n"
        assert await backend.read_log("nosuch.1", "stdout", 0, 100) == b""
        found = await backend.find("p1.1")
        assert found is not None and found.pid == handle.pid
        assert await backend.find("never.1") is None


async def test_a_program_that_cannot_start_fails_the_launch(sshd: _sshd.Sshd) -> None:
    async with backend_for(host_for(sshd, remote_root("nosuch"))) as backend:
        with pytest.raises(LaunchFailed, match="no-such-program"):
            await backend.launch(request("p2.1", RemoteSpec(argv=("no-such-program",))))
        with pytest.raises(LaunchFailed):  # and stays failed for that key
            await backend.launch(request("p2.1", RemoteSpec(argv=("no-such-program",))))


async def test_no_python_on_the_host_is_a_clear_error(sshd: _sshd.Sshd) -> None:
    host = host_for(sshd, remote_root("nopython"), python="python9.9")
    async with backend_for(host) as backend:
        with pytest.raises(LaunchFailed, match=r"cannot run 'python9.9' there.*needs a python3"):
            await backend.launch(request("p3.1", RemoteSpec(argv=("true",))))


async def test_kill_reaches_the_remote_group(sshd: _sshd.Sshd) -> None:
    async with backend_for(host_for(sshd, remote_root("kill"))) as backend:
        handle = await backend.launch(
            request("p4.1", RemoteSpec(argv=("sh", "-c", "sleep 60 & sleep 60; wait")))
        )
        started = trio.current_time()
        result = await backend.kill(handle, grace=1.0)
        assert result is not None and result.killed and result.signal == 15
        assert trio.current_time() - started < 5
        assert not _group_alive(handle.pid)


async def test_a_program_outlives_a_dropped_connection(sshd_factory: _sshd.SshdFactory) -> None:
    server = sshd_factory.start(name="drop-under-program")
    async with backend_for(host_for(server, remote_root("drop"))) as backend:
        handle = await backend.launch(
            request("p5.1", RemoteSpec(argv=("sh", "-c", "sleep 1.5; echo survived")))
        )
        for pid in server.connection_pids():
            server.kill_connection(pid)
        result = await backend.wait(handle)
        assert result.returncode == 0
        assert await backend.read_log("p5.1", "stdout", 0, 100) == b"survived\n"


async def test_a_vanished_chaperone_is_lost(sshd: _sshd.Sshd) -> None:
    async with backend_for(host_for(sshd, remote_root("lost"))) as backend:
        handle = await backend.launch(request("p6.1", RemoteSpec(argv=("sleep", "60"))))
        os.kill(handle.chaperone_pid, 9)
        with pytest.raises(ProgramLost):
            await backend.wait(handle)
        await backend.kill(handle, grace=0.5)  # what is left of it goes
        assert not _group_alive(handle.pid)


async def test_one_poll_per_interval_for_many_programs(sshd: _sshd.Sshd) -> None:
    async with backend_for(host_for(sshd, remote_root("polls")), poll_interval=0.5) as backend:
        handles = [
            await backend.launch(request(f"p7-{n}.1", RemoteSpec(argv=("sleep", "1.2"))))
            for n in range(20)
        ]
        polls_before = backend.polls("remote")
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(backend.wait, handle)
        elapsed = trio.current_time() - started
        polls = backend.polls("remote") - polls_before
        assert polls <= elapsed / 0.5 + 2


def _group_alive(pgid: int) -> bool:
    """Whether anything of the group is left, allowing 2 s for init to reap what the kill
    left as zombies."""
    deadline = time.monotonic() + 2
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def test_process_spec_is_what_the_backend_reads() -> None:
    spec = ProcessSpec(argv=("true",))
    for field in ("argv", "cwd", "env", "timeout", "kill_grace", "name"):
        assert hasattr(spec, field)


async def test_inputs_are_uploaded_verified_and_outputs_retrieved(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("alpha\n")
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "script.sh").write_text(
        "cat in/a.txt > out/a.copy; cp in/sub/b.bin out/b.bin; echo x > skip.log\n"
    )
    spec = RemoteSpec(
        argv=("sh", "-c", "mkdir -p out && sh run.sh"),
        inputs={"in": str(tmp_path / "data"), "run.sh": str(tmp_path / "script.sh")},
        outputs=("out/*", "../escape", "/etc/passwd"),
        outputs_dir=str(tmp_path / "results"),
    )
    async with backend_for(host_for(sshd, remote_root("files"))) as backend:
        handle = await backend.launch(request("p8.1", spec))
        result = await backend.wait(handle)
        assert result.returncode == 0, await backend.read_log("p8.1", "stderr", 0, 1000)
    assert (tmp_path / "results" / "out" / "a.copy").read_text() == "alpha\n"
    assert (tmp_path / "results" / "out" / "b.bin").read_bytes() == (
        tmp_path / "data" / "sub" / "b.bin"
    ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "results").rglob("*") if p.is_file()) == [
        "a.copy",
        "b.bin",
    ]


async def test_inputs_that_leave_the_work_dir_are_refused(sshd: _sshd.Sshd, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    async with backend_for(host_for(sshd, remote_root("escape"))) as backend:
        for bad in ("../f", "/tmp/f"):
            with pytest.raises(LaunchFailed, match="inputs"):
                await backend.launch(
                    request(
                        f"p9-{len(bad)}.1",
                        RemoteSpec(argv=("true",), inputs={bad: str(tmp_path / "f")}),
                    )
                )
        with pytest.raises(LaunchFailed, match="no such local file"):
            await backend.launch(
                request("p9.1", RemoteSpec(argv=("true",), inputs={"x": str(tmp_path / "nope")}))
            )


async def test_a_remote_run_dir_and_work_dir_are_their_users_only(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    # (on transport "local": the same helper and chaperone as on a host, files at hand)
    host = host_for(sshd, str(tmp_path / "runs"), transport="local")
    async with backend_for(host, local=True) as backend:
        handle = await backend.launch(request("m1.1", RemoteSpec(argv=("true",))))
        await backend.wait(handle)
    run_dir = Path(handle.run_dir)
    for directory in (run_dir.parent, run_dir, run_dir / "work"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    for name in ("spec.json", "stdout", "stderr", "exit.json"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o600, name
