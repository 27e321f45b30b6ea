"""The SSH pool actor and transport against a real OpenSSH sshd on loopback (real time).

Each scenario that needs a server option gets its own sshd (`sshd_factory`); logins are counted
from sshd's own VERBOSE log, not from corra's statistics alone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import _sshd
import attrs
import pytest
import trio
import trio.testing
import trio_asyncio

from corra._errors import ConnectionFailed, HostKeyRefused, HostUnavailable, RemotePathError
from corra.actors import SupervisorSpec, open_runtime
from corra.backends.ssh import (
    HostConfig,
    PoolHandle,
    PoolRegistry,
    PoolSettings,
    SshTransport,
    TokenBucket,
    join_inside,
    parse_host,
)
from corra.backends.transport import LocalTransport

pytestmark = pytest.mark.slow


def host_for(sshd: _sshd.Sshd, **settings: object) -> HostConfig:
    return sshd.host_config("test", pool=settings)


@contextlib.asynccontextmanager
async def pool_for(
    host: HostConfig, budget: TokenBucket | None = None
) -> AsyncIterator[PoolHandle]:
    async with trio_asyncio.open_loop(), open_runtime() as runtime:
        supervisor = await runtime.spawn_supervisor(SupervisorSpec(), name="ssh")
        registry = PoolRegistry(supervisor, budget or TokenBucket(rate=100, burst=10))
        yield await registry.pool(host)


async def test_a_command_runs_with_its_argv_exactly(sshd: _sshd.Sshd) -> None:
    argv = ["printf", "%s|", "two words", "it's", "$HOME", "a;b", "*"]
    async with pool_for(host_for(sshd)) as pool:
        transport = SshTransport(pool)
        result = await transport.run(argv, check=True)
        assert result.stdout == b"two words|it's|$HOME|a;b|*|"
        local = await LocalTransport().run(argv, check=True)
        assert local.stdout == result.stdout

        failed = await transport.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert (failed.returncode, failed.stderr) == (3, b"oops\n")
        with pytest.raises(Exception, match="exit status 3: oops"):
            failed.check(transport.host)
        fed = await transport.run(["cat"], stdin=b"in\x00put")
        assert fed.stdout == b"in\x00put"


async def test_files_round_trip(sshd: _sshd.Sshd, tmp_path: Path) -> None:
    root = f"/tmp/corra-test-{os.getpid()}-{time.monotonic_ns()}"
    async with pool_for(host_for(sshd)) as pool:
        transport = SshTransport(pool)
        await transport.mkdir(f"{root}/a/b")
        await transport.write_file(f"{root}/a/b/data", b"0123456789", mode=0o600)
        info = await transport.stat(f"{root}/a/b/data")
        assert info is not None and (info.size, info.is_dir, info.mode) == (10, False, 0o600)
        assert await transport.stat(f"{root}/missing") is None
        assert await transport.read_range(f"{root}/a/b/data", 3, 4) == b"3456"
        assert await transport.read_range(f"{root}/a/b/data", 20, 4) == b""
        assert await transport.listdir(f"{root}/a") == ["b"]
        local = tmp_path / "local"
        local.write_bytes(b"x" * 100_000)
        await transport.put(str(local), f"{root}/up")
        await transport.get(f"{root}/up", str(tmp_path / "down"))
        assert (tmp_path / "down").read_bytes() == local.read_bytes()
        with pytest.raises(RemotePathError, match="missing"):
            await transport.read_range(f"{root}/missing", 0, 1)
        await transport.remove(root, recursive=True)
        assert await transport.stat(root) is None
        await transport.remove(root, recursive=True)  # a missing path is fine


def test_remote_paths_stay_inside_the_work_directory() -> None:
    assert join_inside("/w", "out/a.txt") == "/w/out/a.txt"
    for bad in ("/etc/passwd", "../x", "a/../../x", "", "a/\0"):
        with pytest.raises(RemotePathError):
            join_inside("/w", bad)


async def test_many_commands_share_the_pool(sshd: _sshd.Sshd) -> None:
    logins_before = sshd.logins()
    async with pool_for(host_for(sshd, max_connections=2, channels_per_connection=4)) as pool:
        transport = SshTransport(pool)
        async with trio.open_nursery() as nursery:
            for number in range(40):
                nursery.start_soon(transport.run, ["echo", str(number)])
        statistics = await pool.statistics()
    assert statistics.logins <= 2
    assert statistics.leases == 0 and statistics.waiting == 0
    assert sshd.logins() - logins_before == statistics.logins


async def test_idle_connections_dropped_by_the_server_are_invisible(
    sshd_factory: _sshd.SshdFactory,
) -> None:
    server = sshd_factory.start(["UnusedConnectionTimeout 2"], name="unused-timeout")
    # idle_timeout above the server's: the server closes first, the pool copes.
    async with pool_for(host_for(server, idle_timeout=30)) as pool:
        transport = SshTransport(pool)
        for _ in range(2):
            assert (await transport.run(["echo", "hi"])).stdout == b"hi\n"
            await trio.sleep(3.5)
        assert (await transport.run(["echo", "hi"])).stdout == b"hi\n"
        statistics = await pool.statistics()
    assert statistics.dropped >= 2
    assert statistics.logins == 3


async def test_a_killed_connection_process_is_retried(sshd_factory: _sshd.SshdFactory) -> None:
    server = sshd_factory.start(name="kill-connection")
    async with pool_for(host_for(server, max_connections=1)) as pool:
        transport = SshTransport(pool)
        assert (await transport.run(["true"])).ok
        (victim,) = server.connection_pids()

        async def kill_soon() -> None:
            await trio.sleep(0.5)
            server.kill_connection(victim)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            result = await transport.run(["sh", "-c", "sleep 1; echo done"])
        assert result.stdout == b"done\n"
        statistics = await pool.statistics()
        assert statistics.retries >= 1 and statistics.dropped >= 1
        # Not retry-safe: a connection broken under the command is the caller's to judge.
        (victim,) = server.connection_pids()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(ConnectionFailed, match="closed under the command"):
                await transport.run(["sleep", "2"], retry_safe=False)


async def test_the_servers_channel_limit_is_respected(sshd_factory: _sshd.SshdFactory) -> None:
    server = sshd_factory.start(["MaxSessions 2"], name="max-sessions")
    settings = {"max_connections": 1, "channels_per_connection": 8}
    async with pool_for(host_for(server, **settings)) as pool:
        transport = SshTransport(pool)
        results = []

        async def one(number: int) -> None:
            results.append((await transport.run(["sh", "-c", f"sleep 0.2; echo {number}"])).stdout)

        async with trio.open_nursery() as nursery:
            for number in range(10):
                nursery.start_soon(one, number)
        statistics = await pool.statistics()
    assert sorted(results) == sorted(f"{n}\n".encode() for n in range(10))
    assert statistics.refusals >= 1  # learnt, then kept below the server's limit
    assert statistics.logins == 1


async def test_the_login_budget_holds_under_a_low_max_startups(
    sshd_factory: _sshd.SshdFactory,
) -> None:
    server = sshd_factory.start(["MaxStartups 2:100:2"], name="max-startups")
    budget = TokenBucket(rate=2.0, burst=2)
    started = trio.current_time()
    async with pool_for(
        host_for(server, max_connections=4, channels_per_connection=8), budget
    ) as pool:
        transport = SshTransport(pool)
        async with trio.open_nursery() as nursery:
            for number in range(50):
                nursery.start_soon(transport.run, ["sh", "-c", f"sleep 0.3; echo {number}"])
        statistics = await pool.statistics()
    elapsed = trio.current_time() - started
    logins = server.logins()
    assert statistics.connect_failures == 0
    assert logins == statistics.logins <= 4
    assert logins <= budget.burst + budget.rate * elapsed + 1e-9


def home_with_config(home: Path, sshd: _sshd.Sshd, *lines: str) -> Path:
    """A HOME whose ~/.ssh/config reaches ``sshd`` as ``corra-alias``, with ``lines``."""
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        "Host corra-alias\n"
        f"  HostName {sshd.host}\n"
        f"  Port {sshd.port}\n"
        f"  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n" + "".join(f"  {line}\n" for line in lines)
    )
    return home


async def test_an_alias_of_the_users_ssh_config_works_with_nothing_else_given(
    sshd: _sshd.Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_with_config(tmp_path / "home", sshd, f"UserKnownHostsFile {sshd.known_hosts}")
    monkeypatch.setenv("HOME", str(home))
    logins_before = sshd.logins()
    async with pool_for(parse_host("corra-alias", {})) as pool:
        result = await SshTransport(pool).run(["sh", "-c", "echo $0", "via the alias"])
    assert result.stdout == b"via the alias\n"
    assert sshd.logins() == logins_before + 1


async def test_a_wrong_host_key_is_refused(sshd: _sshd.Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    await trio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    algorithm, key = (tmp_path / "other_key.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {algorithm} {key}\n")
    logins_before = sshd.logins()
    host = attrs.evolve(host_for(sshd), known_hosts=str(known_hosts))
    async with pool_for(host) as pool:
        with pytest.raises(HostKeyRefused, match="host key"):
            await SshTransport(pool).run(["true"])
    assert sshd.logins() == logins_before


async def test_a_stopped_server_makes_the_host_unavailable_then_available(
    sshd_factory: _sshd.SshdFactory,
) -> None:
    server = sshd_factory.start(name="restarted")
    settings = {"unavailable_after": 2, "backoff_initial": 0.1, "backoff_max": 0.5}
    async with pool_for(host_for(server, idle_timeout=0.5, **settings)) as pool:
        transport = SshTransport(pool)
        assert (await transport.run(["true"])).ok
        server.stop()
        await trio.sleep(1)  # the idle connection is closed
        with pytest.raises(HostUnavailable):
            with trio.fail_after(10):
                while True:
                    with contextlib.suppress(ConnectionFailed):
                        await transport.run(["true"])
        assert not (await pool.statistics()).available
        server.restart()
        with trio.fail_after(10):
            await pool.wait_available()
        assert (await transport.run(["echo", "back"])).stdout == b"back\n"


def test_host_tables_are_validated() -> None:
    host = parse_host("cluster", {"hostname": "login.example.org", "pool": {"max_connections": 3}})
    assert host.pool.max_connections == 3 and host.address == "login.example.org"
    with pytest.raises(Exception, match=r"hosts\.cluster\.pool\.max_connections: got 0"):
        parse_host("cluster", {"pool": {"max_connections": 0}})
    with pytest.raises(Exception, match=r"hosts\.cluster: unknown field\(s\) hostnme"):
        parse_host("cluster", {"hostnme": "x"})
    with pytest.raises(Exception, match=r"hosts\.cluster\.port: got 'x'"):
        parse_host("cluster", {"port": "x"})
    with pytest.raises(Exception, match=r"hosts\.cluster\.pool: unknown setting"):
        parse_host("cluster", {"pool": {"max": 1}})


async def test_old_connections_are_rotated_and_idle_ones_closed(sshd: _sshd.Sshd) -> None:
    async with pool_for(host_for(sshd, max_age=1.0, idle_timeout=30)) as pool:
        transport = SshTransport(pool)
        deadline = trio.current_time() + 3.5
        while trio.current_time() < deadline:
            assert (await transport.run(["true"])).ok
            await trio.sleep(0.1)
        statistics = await pool.statistics()
    assert statistics.rotations >= 2
    assert (
        statistics.logins == statistics.rotations + 1 or statistics.logins == statistics.rotations
    )
    assert statistics.connections <= 1

    async with pool_for(host_for(sshd, idle_timeout=0.5)) as pool:
        assert (await SshTransport(pool).run(["true"])).ok
        await trio.sleep(1.5)
        statistics = await pool.statistics()
    assert statistics.idle_closed == 1 and statistics.connections == 0


class FakeConnection:
    """Stands in for an asyncssh connection in the virtual-time policy tests below."""

    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


async def test_failed_connects_back_off_then_make_the_host_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from corra.backends.ssh import SshPool

    attempts: list[float] = []
    up = False

    async def connect(host: HostConfig) -> FakeConnection:
        attempts.append(trio.current_time())
        if not up:
            raise OSError("connection refused")
        return FakeConnection()

    settings = PoolSettings(backoff_initial=1, backoff_max=8, unavailable_after=4)
    host = HostConfig(name="fake", pool=settings)
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: SshPool(
                host,
                TokenBucket(rate=100, burst=10),
                connect=connect,
                wait_closed=lambda conn: conn.wait_closed(),
            ),
            name="pool",
        )
        pool = PoolHandle(host, lambda: ref)
        with pytest.raises(HostUnavailable, match="unavailable after 4 failed connects"):
            async with pool.lease():
                pass
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        # equal jitter: failure n waits between half and all of min(8, 2**(n-1)) seconds
        for number, gap in enumerate(gaps[:3], start=1):
            ceiling = min(8, 2 ** (number - 1))
            assert ceiling / 2 <= gap <= ceiling + 1e-9, (number, gap)
        with pytest.raises(HostUnavailable):  # at once, while unavailable
            async with pool.lease():
                pass
        up = True
        with trio.fail_after(20):
            await pool.wait_available()
        async with pool.lease() as lease:
            assert isinstance(lease.connection, FakeConnection)


async def test_the_login_budget_spaces_logins(autojump_clock: trio.testing.MockClock) -> None:
    budget = TokenBucket(rate=0.2, burst=2)
    taken = []
    for _ in range(5):
        await budget.take()
        taken.append(trio.current_time())
    assert taken == pytest.approx([0, 0, 5, 10, 15])


class _RecordingSftp:
    """An SFTP client that records what `SshTransport.write_file` asks of it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @contextlib.asynccontextmanager
    async def start_sftp_client(self) -> AsyncIterator[_RecordingSftp]:
        yield self

    @contextlib.asynccontextmanager
    async def open(self, path: str, mode: str, attrs: object = None) -> AsyncIterator[object]:
        self.calls.append(("open", path, getattr(attrs, "permissions", None)))
        calls = self.calls

        class File:
            async def chmod(self, permissions: int) -> None:
                calls.append(("fchmod", permissions))

            async def write(self, data: bytes) -> None:
                calls.append(("write", data))

        yield File()

    async def chmod(self, path: str, permissions: int) -> None:
        self.calls.append(("chmod", path, permissions))

    async def posix_rename(self, old: str, new: str) -> None:
        self.calls.append(("rename", old, new))


@pytest.mark.parametrize("mode", [0o600, 0o700, 0o644])
async def test_a_file_written_over_sftp_is_never_readable_by_others_while_written(mode: int):
    # (a job script exports the env: another user who opened it as it was written would
    # keep reading it after a chmod; and a leftover temporary keeps its old mode)
    sftp = _RecordingSftp()

    class Pool:
        host = attrs.make_class("Host", {"address": attrs.field(default="far")})()

        async def run(self, operation, *, retry_safe: bool) -> object:
            return await operation(sftp)

    await SshTransport(Pool()).write_file("/w/job.sh", b"export TOKEN=x\n", mode=mode)  # type: ignore[arg-type]
    private = mode & 0o700
    assert sftp.calls[:3] == [
        ("open", "/w/job.sh.corra-tmp", private),
        ("fchmod", private),
        ("write", b"export TOKEN=x\n"),
    ]
    assert sftp.calls[-1] == ("rename", "/w/job.sh.corra-tmp", "/w/job.sh")
    assert [call for call in sftp.calls if call[0] == "chmod"] == (
        [] if mode == private else [("chmod", "/w/job.sh.corra-tmp", mode)]
    )
