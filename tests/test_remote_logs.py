"""Remote logs shipped home by the poller of `SshProgramBackend` (its ``logs_dir``), over a
real sshd: during the run, resumed from the local copy's size after a restart, whole after
`wait`, and served by `read_log` from the local copy."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any

import _sshd
import pytest
import trio
from _requests import request
from test_ssh_programs import RemoteSpec, backend_for, host_for, remote_root

from corra.backends.ssh import SshProgramBackend
from corra.backends.ssh._programs import SHIP_CHUNK
from corra.backends.ssh._shipped import COMPLETE_FILE
from corra.processes._lifecycle import Result

pytestmark = pytest.mark.slow

LINES = 'for i in $(seq 1 {n}); do echo "line $i"; echo "err $i" >&2; sleep {pause}; done'


def lines(n: int, prefix: str = "line") -> bytes:
    return b"".join(f"{prefix} {i}\n".encode() for i in range(1, n + 1))


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def remote_bytes(backend: SshProgramBackend, key: str, stream: str) -> bytes:
    """The whole remote file, read straight from the host (not through read_log)."""
    host = backend.host("remote")
    assert host.work_root is not None
    path = posixpath.join(host.work_root, key, stream)
    data = b""
    while chunk := await host.transport.read_range(path, len(data), 1 << 20):
        data += chunk
    return data


async def wait_sampling(
    backend: SshProgramBackend, handle: dict[str, Any], *paths: Path
) -> tuple[Result, list[list[int]]]:
    """Wait for the program, sampling the sizes of ``paths`` every 20 ms meanwhile."""
    samples: list[list[int]] = [[] for _ in paths]
    outcome: dict[str, Result] = {}

    async def waiter() -> None:
        outcome["result"] = await backend.wait(handle)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        while "result" not in outcome:
            for sizes, path in zip(samples, paths, strict=True):
                sizes.append(size_of(path))
            await trio.sleep(0.02)
    return outcome["result"], samples


@pytest.fixture(params=["ssh", "local"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_logs_are_shipped_during_the_run_and_whole_after_wait(
    sshd: _sshd.Sshd, transport_kind: str, tmp_path: Path
) -> None:
    local = transport_kind == "local"
    root = str(tmp_path / "runs") if local else remote_root("ship")
    logs = tmp_path / "logs"
    host = host_for(sshd, root, transport=transport_kind)
    async with backend_for(host, local=local, logs_dir=logs) as backend:
        spec = RemoteSpec(argv=("sh", "-c", LINES.format(n=20, pause=0.1)))
        handle = await backend.launch(request("s1.1", spec))
        copy = logs / "remote" / "s1.1"
        polls_before = backend.polls("remote")
        started = trio.current_time()
        result, (sizes,) = await wait_sampling(backend, handle, copy / "stdout")
        elapsed = trio.current_time() - started
        assert result.returncode == 0
        whole = lines(20)
        # shipped while it ran, in several steps, not only at the end
        during = sorted({size for size in sizes if 0 < size < len(whole)})
        assert len(during) >= 3, sizes
        # after wait: byte for byte the remote files, with no exec beyond the status polls
        assert (
            (copy / "stdout").read_bytes() == whole == await remote_bytes(backend, "s1.1", "stdout")
        )
        assert (copy / "stderr").read_bytes() == lines(20, "err")
        assert (copy / "stderr").read_bytes() == await remote_bytes(backend, "s1.1", "stderr")
        assert result.stdout_bytes == len(whole)
        assert (copy / COMPLETE_FILE).exists()
        assert backend.polls("remote") - polls_before <= elapsed / 0.2 + 2


async def test_shipping_resumes_from_the_local_copy_after_a_restart(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    host = host_for(sshd, remote_root("resume"))
    copy = logs / "remote" / "s2.1" / "stdout"
    async with backend_for(host, logs_dir=logs) as first:
        handle = await first.launch(
            request("s2.1", RemoteSpec(argv=("sh", "-c", LINES.format(n=30, pause=0.1))))
        )
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.wait, handle)
                while size_of(copy) == 0:
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()  # the runtime stops watching, then stops
    shipped = copy.read_bytes()
    assert shipped and lines(30).startswith(shipped) and len(shipped) < len(lines(30))
    await trio.sleep(0.5)  # the program writes on while no runtime watches it
    async with backend_for(host, logs_dir=logs) as second:
        result = await second.wait(handle)
        assert result.returncode == 0
        assert copy.read_bytes() == lines(30) == await remote_bytes(second, "s2.1", "stdout")
        assert copy.with_name("stderr").read_bytes() == lines(30, "err")


async def test_a_local_copy_from_a_runtime_that_died_is_finished_without_duplicates(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    """A copy left mid-way (a runtime killed between two polls) is completed after the
    program exited: the rest is fetched from the copy's size, whatever that size is."""
    logs = tmp_path / "logs"
    host = host_for(sshd, remote_root("died"))
    async with backend_for(host) as unshipped:  # no logs_dir: nothing shipped
        handle = await unshipped.launch(
            request("s3.1", RemoteSpec(argv=("sh", "-c", "seq 1 5000")))
        )
        await unshipped.wait(handle)
        whole = await remote_bytes(unshipped, "s3.1", "stdout")
    assert whole == b"".join(f"{i}\n".encode() for i in range(1, 5001))
    copy = logs / "remote" / "s3.1" / "stdout"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(whole[:12345])  # not on a line boundary
    async with backend_for(host, logs_dir=logs) as backend:
        await backend.wait(handle)
        assert copy.read_bytes() == whole


async def test_a_large_log_comes_whole_and_a_chatty_program_starves_no_one(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    async with backend_for(host_for(sshd, remote_root("large")), logs_dir=logs) as backend:
        chatty = await backend.launch(
            request(
                "s4.1",
                RemoteSpec(argv=("sh", "-c", "head -c 3000000 /dev/urandom | base64; sleep 2")),
            )
        )
        quiet = await backend.launch(
            request("s5.1", RemoteSpec(argv=("sh", "-c", "echo quiet; sleep 1")))
        )
        chatty_copy = logs / "remote" / "s4.1" / "stdout"
        quiet_copy = logs / "remote" / "s5.1" / "stdout"
        samples: list[tuple[float, int, int]] = []
        outcome: dict[str, Result] = {}

        async def waiter() -> None:
            outcome["result"] = await backend.wait(chatty)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.wait, quiet)
            nursery.start_soon(waiter)
            while "result" not in outcome:
                samples.append((trio.current_time(), size_of(chatty_copy), size_of(quiet_copy)))
                await trio.sleep(0.02)
        ended = trio.current_time()
        remote = await remote_bytes(backend, "s4.1", "stdout")
        assert len(remote) > 3 * SHIP_CHUNK and outcome["result"].stdout_bytes == len(remote)
        assert chatty_copy.read_bytes() == remote
        # At most SHIP_CHUNK per file per poll: the log came home in steps, one poll apart
        # (0.2 s), all while the program still ran (it sleeps 2 s after its output) ...
        first = next(time for time, size, _ in samples if size)
        full = next(time for time, size, _ in samples if size == len(remote))
        assert next(size for _, size, _ in samples if size) <= SHIP_CHUNK
        assert full - first >= 0.4, samples
        assert ended - full >= 0.5, samples
        # ... and the quiet program's line came home before the chatty log was whole
        quiet_seen = next(time for time, _, size in samples if size)
        assert quiet_seen < full
        assert quiet_copy.read_bytes() == b"quiet\n"


async def test_read_log_serves_the_local_copy(sshd: _sshd.Sshd, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    async with backend_for(host_for(sshd, remote_root("serve")), logs_dir=logs) as backend:
        handle = await backend.launch(
            request(
                "s6.1", RemoteSpec(argv=("sh", "-c", r"printf 'hello\nworld\n'; printf oops >&2"))
            )
        )
        await backend.wait(handle)
        run_dir = handle.run_dir
        transport = backend.host("remote").transport
        for stream in ("stdout", "stderr"):
            await transport.remove(posixpath.join(run_dir, stream))
        assert await backend.read_log("s6.1", "stdout", 0, 100) == b"hello\nworld\n"
        assert await backend.read_log("s6.1", "stdout", 6, 3, "remote") == b"wor"
        assert await backend.read_log("s6.1", "stdout", 100, 10) == b""
        assert await backend.read_log("s6.1", "stderr", 0, 100) == b"oops"

        # a program not watched yet has no copy: its log is read on the host
        running = await backend.launch(
            request("s7.1", RemoteSpec(argv=("sh", "-c", "echo early; sleep 60")))
        )
        with trio.fail_after(5):
            while not await backend.read_log("s7.1", "stdout", 0, 100):
                await trio.sleep(0.05)
        assert await backend.read_log("s7.1", "stdout", 0, 100) == b"early\n"
        assert not (logs / "remote" / "s7.1").exists()

        # a kill brings the rest home too
        result = await backend.kill(running, grace=0.5)
        assert result is not None and result.killed
        await transport.remove(posixpath.join(running.run_dir, "stdout"))
        assert await backend.read_log("s7.1", "stdout", 0, 100) == b"early\n"
        assert (logs / "remote" / "s7.1" / COMPLETE_FILE).exists()


async def test_a_failing_fetch_is_retried_and_never_fails_the_wait(
    sshd: _sshd.Sshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if sshd.user == "root":
        pytest.skip("a file mode does not stop root from reading")
    logs = tmp_path / "logs"
    caplog.set_level(logging.WARNING, logger="corra.ssh")
    async with backend_for(host_for(sshd, remote_root("retry")), logs_dir=logs) as backend:
        handle = await backend.launch(
            request("s8.1", RemoteSpec(argv=("sh", "-c", "echo one; sleep 1.2; echo two")))
        )
        transport = backend.host("remote").transport
        stdout = posixpath.join(handle.run_dir, "stdout")
        await transport.run(["chmod", "000", stdout], check=True)  # fetches fail meanwhile
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.wait, handle)
            await trio.sleep(0.7)
            await transport.run(["chmod", "600", stdout], check=True)
        assert (logs / "remote" / "s8.1" / "stdout").read_bytes() == b"one\ntwo\n"
    assert any("shipping the logs" in record.getMessage() for record in caplog.records)


async def test_a_logs_dir_that_cannot_be_written_leaves_logs_remote(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    logs = tmp_path / "not-a-dir"
    logs.write_text("")
    async with backend_for(host_for(sshd, remote_root("nodir")), logs_dir=logs) as backend:
        handle = await backend.launch(
            request("s9.1", RemoteSpec(argv=("sh", "-c", "echo still; exit 4")))
        )
        with trio.fail_after(10):
            result = await backend.wait(handle)
        assert result.returncode == 4
        assert await backend.read_log("s9.1", "stdout", 0, 100) == b"still\n"


async def test_shipping_adds_no_exec_per_program(sshd: _sshd.Sshd, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    async with backend_for(
        host_for(sshd, remote_root("execs")), logs_dir=logs, poll_interval=0.5
    ) as backend:
        spec = RemoteSpec(argv=("sh", "-c", LINES.format(n=12, pause=0.1)))
        handles = [await backend.launch(request(f"s10-{n}.1", spec)) for n in range(15)]
        polls_before = backend.polls("remote")
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(backend.wait, handle)
        elapsed = trio.current_time() - started
        assert backend.polls("remote") - polls_before <= elapsed / 0.5 + 2
        for n in range(15):
            assert (logs / "remote" / f"s10-{n}.1" / "stdout").read_bytes() == lines(12)


async def test_logs_shipped_home_stop_at_the_output_limit(
    sshd: _sshd.Sshd, transport_kind: str, tmp_path: Path
) -> None:
    """``yes`` on the host, limited to 1 MiB: the remote chaperone cuts its file back to the
    limit every few milliseconds, so the file is past the limit at nearly every poll; the
    local copy never is, and ends as the remote file's first MiB."""
    local = transport_kind == "local"
    root = str(tmp_path / "runs") if local else remote_root("limit")
    logs = tmp_path / "logs"
    host = host_for(sshd, root, transport=transport_kind)
    limit = 1 << 20
    async with backend_for(host, local=local, logs_dir=logs) as backend:
        spec = RemoteSpec(argv=("yes",), timeout=1.5, kill_grace=0, output_limit=limit)
        handle = await backend.launch(request("s9.1", spec))
        assert handle.output_limit == limit
        copy = logs / "remote" / "s9.1"
        with trio.fail_after(60):
            result, (sizes,) = await wait_sampling(backend, handle, copy / "stdout")
        assert result.timed_out
        assert max(sizes) <= limit, max(sizes)
        assert (copy / "stdout").read_bytes() == b"y\n" * (limit // 2)
        assert await remote_bytes(backend, "s9.1", "stdout") == b"y\n" * (limit // 2)
        assert result.stdout_bytes == limit and result.stdout_dropped > limit
