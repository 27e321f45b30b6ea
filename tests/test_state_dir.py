"""The state dir is its user's alone (`corra._statedir`), tried as another local user would.

The tests run as root, so "another user" is simulated: files and directories are given to
uid 65534 (nobody) with ``os.chown``, or made group/world-writable, and a fake chaperone or
API socket is served by a process that gave up root for uid 65534 before it listened (so
``SO_PEERCRED`` shows that uid). Every fake server counts what it was sent: nothing, ever.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import _sshd
import pytest
import trio

from corra._errors import ConfigError
from corra._runtime import open_runtime
from corra.api._files import load_token
from corra.cli import main

CORRA = [sys.executable, "-m", "corra.cli"]
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user needs root")


def corra(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRA, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


# -- a socket served by another user ------------------------------------------------------

_FAKE_SERVER = r"""
import os, socket, sys
directory, name, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(directory)  # (a relative address: the path may be longer than sun_path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(name)
os.chown(name, uid, uid)
os.chmod(name, 0o600)
os.setgid(uid)
os.setuid(uid)
listener.listen(8)  # SO_PEERCRED of our clients: the credentials we have now
print("ready", flush=True)
while True:
    connection, _ = listener.accept()
    print("connected", flush=True)
    connection.settimeout(5)
    try:
        while True:
            data = connection.recv(65536)
            if not data:
                break
            print(f"received {len(data)} bytes: {data[:200]!r}", flush=True)
    except OSError:
        pass
    connection.close()
"""


class FakeServer:
    """A Unix socket at ``directory/name`` served by a process of uid ``uid``."""

    def __init__(self, directory: Path, name: str, uid: int = NOBODY) -> None:
        self.path = directory / name
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FAKE_SERVER, str(directory), name, str(uid)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n"

    def stop(self) -> str:
        """Stop it; everything it said (``connected``, ``received ...``)."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        return out


@pytest.fixture
def fake_servers() -> Iterator[list[FakeServer]]:
    servers: list[FakeServer] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


# -- item 3: a state dir made or writable by another user ----------------------------------


@needs_root
async def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=r"owned by uid 65534 .*not by you.*chown -R"):
        async with open_runtime(state_dir=state):
            pass
    assert os.listdir(state) == []  # nothing was written into it


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o1777])
async def test_a_state_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(
        ConfigError, match=rf"mode {mode & 0o7777:04o} lets other users write.*chmod 700"
    ):
        async with open_runtime(state_dir=state):
            pass
    assert os.listdir(state) == []
    refused = corra("ps", "--state-dir", str(state))
    assert refused.returncode == 2 and "chmod 700" in refused.stderr, refused.stderr


async def test_a_state_dir_left_readable_by_an_older_corra_is_made_private(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    async with open_runtime(state_dir=state):
        pass
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


@needs_root
@pytest.mark.parametrize("planted", ["world-readable", "group-readable", "another user's"])
def test_a_planted_token_is_refused_by_the_service(tmp_path: Path, planted: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    token = state / "api-token"
    token.write_text("planted-token\n")
    if planted == "another user's":
        token.chmod(0o600)
        os.chown(token, NOBODY, NOBODY)
        expected = "chown"
    else:
        token.chmod(0o644 if planted == "world-readable" else 0o640)
        expected = "chmod 600"
    served = subprocess.run(
        [*CORRA, "serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert served.returncode == 2, served.stderr
    assert f"token file {token}" in served.stderr and expected in served.stderr
    assert "listening" not in served.stdout
    assert not (state / "api.sock").exists()
    with pytest.raises(ConfigError, match=expected):
        load_token(token)  # (the client side refuses it too)


def test_a_symlinked_token_in_the_state_dir_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("their-token\n")
    elsewhere.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "api-token").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_token(state / "api-token")
    # A token file the user names may be a link (a secrets mount): it is followed.
    assert load_token(state / "api-token", follow=True) == "their-token"


async def test_a_symlinked_runtime_lock_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "precious"
    target.write_text("do not truncate me\n")
    (state / "runtime.lock").symlink_to(target)
    with pytest.raises(ConfigError, match=r"runtime lock .*runtime\.lock: a symbolic link"):
        async with open_runtime(state_dir=state):
            pass
    assert target.read_text() == "do not truncate me\n"
    refused = corra("run", "--state-dir", str(state), "--", "true")
    assert refused.returncode == 2 and "symbolic link" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert target.read_text() == "do not truncate me\n"


@needs_root
async def test_a_chaperone_socket_of_another_user_is_sent_nothing(
    tmp_path: Path, fake_servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    runs = state / "runs"
    runs.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    fake = FakeServer(runs, ".chaperone.sock")
    fake_servers.append(fake)
    monkeypatch.setenv("CORRA_TEST_SECRET", "hunter2")
    async with open_runtime(state_dir=state) as runtime:
        ref = await runtime.spawn_process(["true"], name="victim")
        with trio.fail_after(30):
            record = await ref.wait()
    said = fake.stop()
    assert "connected" in said  # it was reached ...
    assert "received" not in said  # ... and sent nothing: no environment, no spec
    assert record.phase == "failed"
    reason = str(record.state)
    assert "served by a process of uid 65534" in reason, reason


@needs_root
def test_the_command_line_sends_its_token_to_no_api_socket_of_another_user(
    tmp_path: Path, fake_servers: list[FakeServer]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    token = state / "api-token"
    token.write_text("the-real-token\n")
    token.chmod(0o600)
    fake = FakeServer(state, "api.sock")
    fake_servers.append(fake)
    for command in (["ps"], ["pause", "x"], ["submit", "--", "true"]):
        refused = corra(*command[:1], "--state-dir", str(state), *command[1:])
        assert refused.returncode == 2, refused.stderr
        assert "owned by uid 65534" in refused.stderr
    said = fake.stop()
    assert "received" not in said and "the-real-token" not in said


# -- item 4: nothing corra writes is readable by others -------------------------------------


def open_to_others(root: Path) -> list[str]:
    """Every file and directory under ``root`` (itself included) that group or others may
    reach in any way, as ``MODE path``."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in [directory, *(os.path.join(directory, f) for f in dirs + files)]:
            status = os.lstat(name)
            if stat.S_ISLNK(status.st_mode):
                continue
            if stat.S_IMODE(status.st_mode) & 0o077:
                found.append(f"{stat.S_IMODE(status.st_mode):04o} {name}")
    return sorted(set(found))


def walk_while_serving(state: Path) -> list[str]:
    """`open_to_others` while `corra serve` runs on ``state`` (its socket, token, api.json)."""
    service = subprocess.Popen(
        [*CORRA, "serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        assert "listening" in service.stdout.readline()
        listing = corra("ps", "--state-dir", str(state))
        assert listing.returncode == 0, listing.stderr
        assert {"api.sock", "api.json", "api-token"} <= {path.name for path in state.iterdir()}
        return open_to_others(state)
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=30)


@pytest.mark.slow
async def test_nothing_in_a_state_dir_is_open_to_other_users(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    """Whatever corra writes in a state dir (the store, run dirs, hosts.json, remote-log
    copies, the service's files, and what later features add) is 0600/0700, even with a
    umask that would let everyone in."""
    state = tmp_path / "state"
    host = sshd.host_config("far", work_root=f"corra-tests/private-{os.getpid()}")
    previous = os.umask(0)
    try:
        async with open_runtime(
            state_dir=state, hosts={"far": host}, remote_poll_interval=0.2
        ) as runtime:
            local = await runtime.spawn_process(
                ["sh", "-c", "echo out; echo err >&2"], name="local", env={"SECRET": "x"}
            )
            remote = await runtime.spawn_process(
                ["sh", "-c", "echo out; echo err >&2"], name="remote", backend="ssh", host="far"
            )
            with trio.fail_after(60):
                assert (await local.wait()).phase == "finished"
                assert (await remote.wait()).phase == "finished"
            assert await remote.logs() == b"out\n"
        assert (state / "hosts.json").exists()
        assert any((state / "remote-logs" / "far").iterdir())

        found_while_serving = await trio.to_thread.run_sync(walk_while_serving, state)
    finally:
        os.umask(previous)
    assert found_while_serving == []
    assert open_to_others(state) == []


# -- item 14: a state dir that cannot be used is a message, for every command ---------------

COMMANDS = [
    ["run", "--", "true"],
    ["serve", "--listen", "127.0.0.1:0"],
    ["submit", "--", "true"],
    ["ps"],
    ["show", "x"],
    ["logs", "x"],
    ["pause", "x"],
    ["resume", "x"],
    ["kill", "x"],
]


CREATE_OR_READ = ("run", "serve", "ps")


def state_dir_case(tmp_path: Path, case: str) -> Path:
    if case == "a file":
        (tmp_path / "afile").write_text("not a dir\n")
        return tmp_path / "afile"
    if case == "under a file":
        (tmp_path / "afile").write_text("not a dir\n")
        return tmp_path / "afile" / "state"
    assert case == "cannot be created"
    return Path("/sys/corra-cannot-create/state")  # even root may not mkdir in sysfs


CASES = ["a file", "under a file", "cannot be created"]


def check_message(case: str, state: Path, command: list[str], returncode: int, err: str) -> None:
    assert "Traceback" not in err, (command, err)
    assert err.startswith("corra: ") or "\ncorra: " in err, (command, err)
    if command[0] in ("run", "serve") or case != "cannot be created":
        # the commands that create it, and every command for one that exists: exit 2
        assert (returncode, f"state dir {state}" in err) == (2, True), (command, err)
    else:  # a missing state dir, as for any other: no service (3), or no state (2)
        assert returncode in (2, 3), (command, returncode, err)


@pytest.fixture(params=CASES)
def unusable_state_dir(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    case = str(request.param)
    if case == "cannot be created" and os.path.exists("/sys/corra-cannot-create"):
        pytest.skip("sysfs lets us create directories here")
    return case, state_dir_case(tmp_path, case)


def test_an_unusable_state_dir_is_a_message_for_every_command(
    unusable_state_dir: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    case, state = unusable_state_dir
    for command in COMMANDS:
        try:
            returncode = main([command[0], "--state-dir", str(state), *command[1:]])
        except BaseException as exc:  # what a traceback would have shown
            raise AssertionError(f"corra {command[0]}: {exc!r}") from exc
        check_message(case, state, command, returncode, capsys.readouterr().err)


@pytest.mark.slow
def test_an_unusable_state_dir_is_a_message_from_the_command_line(
    unusable_state_dir: tuple[str, Path],
) -> None:
    """As users run it (a subprocess): every command for a state dir that is a file; the
    ones that create it, and one that reads, for the other cases."""
    case, state = unusable_state_dir
    commands = COMMANDS if case == "a file" else [c for c in COMMANDS if c[0] in CREATE_OR_READ]
    runs = [
        (
            command,
            subprocess.Popen(
                [*CORRA, command[0], "--state-dir", str(state), *command[1:]],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for command in commands
    ]
    for command, process in runs:
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError(f"corra {command[0]} did not stop") from None
        check_message(case, state, command, process.returncode, err)


def test_a_new_token_never_starts_with_a_dash(tmp_path, monkeypatch):
    # (on a command line, `--token -x...` would read as an option: found by CI, 1 run in 64)
    drawn = iter(["-starts-with-a-dash", "_fine"])
    monkeypatch.setattr("corra.api._files.secrets.token_urlsafe", lambda n: next(drawn))
    assert load_token(tmp_path / "api-token") == "_fine"
