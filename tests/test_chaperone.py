"""The chaperone package on its own, as a remote host would run it: no runtime, no corra."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corra import chaperone
from corra.chaperone import _proc, _rundir, protocol

SCRIPT = chaperone.PACKAGE_DIR
PYTHON = sys.executable


def stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as file:
        data = file.read()
    return data[data.rindex(b")") + 2 :].split()


def write_spec(run_dir: Path, argv: list[str], **options: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "cwd": None, "env": dict(os.environ), "timeout": None, "kill_grace": 5}
    spec.update(options)
    (run_dir / "spec.json").write_text(json.dumps(spec))


def start(run_dir: Path, *, prelude: str = "") -> tuple[int, object]:
    """Run ``chaperone RUN_DIR --notify-fd 3``; (pid of the launched process, reader)."""
    read_fd, write_fd = os.pipe()
    if prelude:
        command = [
            PYTHON,
            "-I",
            "-S",
            "-c",
            f"{prelude}\nimport runpy, sys\nsys.argv = sys.argv[1:]\n"
            f"runpy.run_path(sys.argv[0], run_name='__main__')",
            SCRIPT,
        ]
    else:
        command = [PYTHON, "-I", "-S", SCRIPT]
    launched = subprocess.Popen(
        [*command, str(run_dir), "--notify-fd", str(write_fd)], pass_fds=(write_fd,)
    )
    os.close(write_fd)
    assert launched.wait(timeout=10) == 0  # the intermediate process exits at once
    return launched.pid, os.fdopen(read_fd, "rb")


def wait_for(path: Path, within: float = 10.0) -> dict:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name}"
        time.sleep(0.01)
    return json.loads(path.read_text())


PACKAGE_FILES = sorted(Path(SCRIPT).glob("*.py"))
#: The oldest python3 a remote host may have (`corra.backends.ssh._programs` checks for it).
OLDEST_REMOTE_PYTHON = (3, 6)


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda path: path.name)
def test_standard_library_only(path: Path):
    """Every module imports the standard library, or its own package relatively: the package
    directory is uploaded as it is, and imported there under whatever name it has."""
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module is not None
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1, "within the package only"
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "corra" not in imported


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda path: path.name)
def test_old_remote_pythons_can_parse_it(path: Path):
    ast.parse(path.read_text(), feature_version=OLDEST_REMOTE_PYTHON)


def test_the_package_runs_from_a_copy_of_its_directory(tmp_path: Path):
    """As the SSH backend ships it: the files of `_library()` in a directory of their own,
    run with ``python3 -I -S DIR``, which imports nothing from where corra is installed."""
    from corra.backends.ssh._hosts import library as _library

    _, files = _library()
    for name, data in files.items():
        (tmp_path / "lib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib" / name).write_bytes(data)
    package = str(tmp_path / "lib" / "chaperone")
    run_dir = str(tmp_path / "run")
    spec = {"argv": ["sh", "-c", "echo hi"], "cwd": None, "env": {}, "timeout": None}
    helper = [PYTHON, "-I", "-S", package, "--helper"]
    launched = subprocess.run(
        [*helper, "launch", run_dir], input=json.dumps(spec).encode(), capture_output=True
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["status"] == "started"
    wait_for(tmp_path / "run" / "exit.json")
    (status,) = json.loads(subprocess.check_output([*helper, "status", run_dir]))
    assert status["state"] == "exited" and status["record"]["returncode"] == 0
    assert (tmp_path / "run" / "stdout").read_bytes() == b"hi\n"
    modules = subprocess.check_output([*helper, "probe"])
    assert json.loads(modules)["python"][:2] == list(sys.version_info[:2])


def test_the_remote_helper_takes_a_zombie_chaperone_for_gone(tmp_path: Path):
    """A chaperone SIGKILLed where nobody reaps orphans (a container's init) stays a zombie
    with its pid and start time: its program is lost, and a kill goes to the program's group
    (a zombie hears no SIGTERM), as the local backend has it."""
    zombie = subprocess.Popen(["true"])
    program = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        while stat_fields(zombie.pid)[0] != b"Z":
            time.sleep(0.01)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        claim = {"pid": zombie.pid, "start": _proc.process_start(zombie.pid)}
        (run_dir / "chaperone.pid").write_bytes(protocol.json_line(claim))
        started = {"pid": program.pid, "start": _proc.process_start(program.pid)}
        (run_dir / "program.pid").write_bytes(protocol.json_line({**started, "started_at": 1.0}))
        helper = [PYTHON, "-I", "-S", SCRIPT, "--helper"]
        (status,) = json.loads(subprocess.check_output([*helper, "status", str(run_dir)]))
        assert status["state"] == "lost"
        (sent,) = json.loads(subprocess.check_output([*helper, "kill", "5", str(run_dir)]))
        assert sent["sent"] == "group"
        assert program.wait(timeout=10) == -signal.SIGKILL
    finally:
        program.kill()
        program.wait()
        zombie.wait()


def test_runs_a_program_detached_and_records_its_exit(tmp_path: Path):
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["sh", "-c", "echo out; echo err >&2; sleep 0.2; exit 4"])
    launched_pid, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert reply["status"] == "started"
        chaperone_pid = reply["chaperone"]["pid"]
        program = reply["program"]
        # Detached: not the process we started, not our child, in a session of its own.
        assert chaperone_pid != launched_pid
        fields = stat_fields(chaperone_pid)
        assert int(fields[1]) != os.getpid()
        assert int(fields[3]) == chaperone_pid  # session id
        assert int(fields[19]) == reply["chaperone"]["start"]
        # The program leads its own group, in the chaperone's session.
        program_fields = stat_fields(program["pid"])
        assert int(program_fields[2]) == program["pid"]
        assert int(program_fields[3]) == chaperone_pid
        finished = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert notify.read() == b""  # type: ignore[attr-defined]
    record = json.loads((run_dir / "exit.json").read_text())
    assert finished == {"status": "exited", "record": record}
    assert record["returncode"] == 4 and record["signal"] is None and record["error"] is None
    assert (record["stdout_size"], record["stderr_size"]) == (4, 4)
    assert json.loads((run_dir / "chaperone.pid").read_text()) == reply["chaperone"]
    assert json.loads((run_dir / "program.pid").read_text()) == program
    assert (run_dir / "stdout").read_text() == "out\n"
    assert not list(run_dir.glob("*.tmp"))


def test_a_run_dir_is_claimed_once(tmp_path: Path):
    run_dir = tmp_path / "run"
    ledger = tmp_path / "ledger"
    write_spec(run_dir, ["sh", "-c", f"echo ran >> {ledger}; sleep 0.2"])
    _, first = start(run_dir)
    _, second = start(run_dir)
    with first, second:  # type: ignore[attr-defined]
        assert json.loads(second.readline()) == {"status": "claimed"}  # type: ignore[attr-defined]
        assert json.loads(first.readline())["status"] == "started"  # type: ignore[attr-defined]
        assert json.loads(first.readline())["status"] == "exited"  # type: ignore[attr-defined]
    assert ledger.read_text() == "ran\n"


def test_an_unreadable_spec_is_invalid(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
    assert reply["status"] == "invalid" and "spec.json" in reply["error"]
    assert not (run_dir / "chaperone.pid").exists()


def test_the_timeout_holds_with_nobody_listening(tmp_path: Path):
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["sleep", "30"], timeout=0.3)
    subprocess.run([PYTHON, "-I", "-S", SCRIPT, str(run_dir)], check=True, timeout=10)
    record = wait_for(run_dir / "exit.json")
    assert record["timed_out"] and record["signal"] == signal.SIGTERM
    assert not record["killed"]


def test_sigterm_is_a_kill_request_with_the_runtimes_grace(tmp_path: Path):
    run_dir = tmp_path / "run"
    script = "trap '' TERM; echo ready; sleep 30 & wait"
    write_spec(run_dir, ["sh", "-c", script], kill_grace=60)
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        wait_until_size(run_dir / "stdout", 6)
        (run_dir / "kill.json").write_text('{"grace": 0.3}')  # instead of the spec's 60 s
        started = time.monotonic()
        os.kill(reply["chaperone"]["pid"], signal.SIGTERM)
        record = json.loads(notify.readline())["record"]  # type: ignore[attr-defined]
    assert 0.25 < time.monotonic() - started < 5
    assert record["killed"] and record["signal"] == signal.SIGKILL


def wait_until_size(path: Path, size: int) -> None:
    deadline = time.monotonic() + 10
    while not path.exists() or path.stat().st_size < size:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_exec_failure_is_recorded_and_reported(tmp_path: Path):
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["nosuch-program", "x"])
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
    error = "No such file or directory: 'nosuch-program'"
    assert reply == {"status": "failed", "error": error}
    record = json.loads((run_dir / "exit.json").read_text())
    assert record["error"] == error and record["returncode"] is None
    assert not (run_dir / "program.pid").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sh", "-c", "exit 6"], {"status": "exited", "returncode": 6}),
        (["nosuch"], {"status": "failed", "error": "No such file or directory: 'nosuch'"}),
    ],
)
def test_fork_exec_where_posix_spawn_is_missing(tmp_path: Path, argv: list, expected: dict):
    run_dir = tmp_path / "run"
    write_spec(run_dir, argv)
    _, notify = start(run_dir, prelude="import os\ndel os.posix_spawn, os.posix_spawnp")
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        if reply["status"] == "started":
            reply = json.loads(notify.readline())  # type: ignore[attr-defined]
            reply["returncode"] = reply.pop("record")["returncode"]
    assert reply == expected


def test_process_start_survives_odd_command_names():
    script = "read line; printf 'a) (b c' > /proc/$$/comm; sleep 5"
    process = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE)
    try:
        before = _proc.process_start(process.pid)
        assert before == int(stat_fields(process.pid)[19])
        process.stdin.write(b"\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while Path(f"/proc/{process.pid}/comm").read_text() != "a) (b c\n":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _proc.process_start(process.pid) == before
    finally:
        process.kill()
        process.wait()
        process.stdin.close()  # type: ignore[union-attr]
    assert _proc.process_start(process.pid) is None


# the shared chaperone -------------------------------------------------------------------


def serve(root: Path, idle_exit: float = 10.0) -> tuple[str, dict]:
    """Start ``chaperone --serve ROOT``; what it said, and its pid file."""
    read_fd, write_fd = os.pipe()
    command = [PYTHON, "-I", "-S", SCRIPT, "--serve", str(root), "--ready-fd", str(write_fd)]
    command += ["--idle-exit", str(idle_exit)]
    subprocess.run(command, pass_fds=(write_fd,), check=True, timeout=10)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        answer = ready.read().decode().strip()
    return answer, json.loads((root / ".chaperone.pid").read_text())


class Connection:
    """A runtime's side of the protocol, by hand."""

    def __init__(self, root: Path, env: dict | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(root / ".chaperone.sock"))
        self.lines = self.sock.makefile("rb")
        self.ids = iter(range(1, 1000))
        self.events: list[dict] = []
        self.hello = self.request(op="hello", version=1, env=env or dict(os.environ))

    def send(self, **message: object) -> int:
        ident = next(self.ids)
        self.sock.sendall(json.dumps({**message, "id": ident}).encode() + b"\n")
        return ident

    def receive(self) -> dict:
        line = self.lines.readline()
        assert line, "the chaperone closed the connection"
        return json.loads(line)

    def request(self, **message: object) -> dict:
        """The reply to ``message``; events that come before it are kept in ``events``."""
        ident = self.send(**message)
        while True:
            reply = self.receive()
            if reply.get("id") == ident:
                return reply
            self.events.append(reply)

    def event(self) -> dict:
        return self.events.pop(0) if self.events else self.receive()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_gone(pid: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while alive(pid):
        assert time.monotonic() < deadline, f"{pid} is still there"
        time.sleep(0.01)


@pytest.fixture
def served(tmp_path: Path):
    """A shared chaperone for ``tmp_path/root`` and a connection to it."""
    root = tmp_path / "root"
    root.mkdir()
    answer, daemon = serve(root)
    assert answer == "ready"
    connection = Connection(root)
    yield root, daemon, connection
    connection.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon["pid"], signal.SIGTERM)  # it kills what is left, then leaves


def launch(connection: Connection, key: str, argv: list[str], **spec: object) -> dict:
    return connection.request(op="launch", key=key, spec={"argv": argv, **spec})


def test_serve_detaches_and_says_hello(served):
    _, daemon, connection = served
    assert connection.hello == {
        "id": 1,
        "op": "hello",
        "version": 1,
        "pid": daemon["pid"],
        "start": daemon["start"],
    }
    fields = stat_fields(daemon["pid"])
    assert int(fields[1]) != os.getpid() and int(fields[3]) == daemon["pid"]  # own session


def test_serve_launches_reports_the_exit_and_claims_once(served, tmp_path: Path):
    root, daemon, connection = served
    ledger = tmp_path / "ledger"
    argv = ["sh", "-c", f"echo ran >> {ledger}; echo out; echo err >&2; sleep 0.3; exit 3"]
    started = launch(connection, "a.1", argv, env={"EXTRA": "1"})
    assert started["op"] == "started"
    program = started["program"]
    assert stat_fields(program["pid"])[2:4] == [str(program["pid"]).encode(), b"%d" % daemon["pid"]]
    exited = connection.event()
    assert exited["op"] == "exited" and exited["key"] == "a.1"
    record = exited["record"]
    assert (record["returncode"], record["stdout_size"], record["stderr_size"]) == (3, 4, 4)
    run_dir = root / "a.1"
    assert json.loads((run_dir / "exit.json").read_text()) == record
    claim, recorded = _rundir.read_claim((run_dir / "chaperone.pid").read_bytes())
    assert claim == {**daemon, "shared": True}
    assert {k: recorded[k] for k in program} == program
    assert recorded["spec"]["env"] == {"EXTRA": "1"}
    assert launch(connection, "a.1", argv) == {"id": 3, "op": "claimed"}
    assert ledger.read_text() == "ran\n"


def test_serve_watch_and_kill_from_another_connection(served):
    root, _, connection = served
    script = "trap '' TERM; echo ready; sleep 30"
    started = launch(connection, "k.1", ["sh", "-c", script], kill_grace=30)
    wait_until_size(root / "k.1" / "stdout", len("ready\n"))  # SIGTERM is ignored from here on
    other = Connection(root)
    try:
        assert other.request(op="watch", key="k.1")["op"] == "watching"
        assert other.request(op="watch", key="nothing.1")["op"] == "unknown"
        assert other.request(op="kill", key="k.1", grace=0.2)["op"] == "killing"
        for each in (connection, other):
            record = each.event()["record"]
            assert record["killed"] and record["signal"] == signal.SIGKILL
    finally:
        other.close()
    assert not alive(started["program"]["pid"])


def test_serve_launch_errors(served, tmp_path: Path):
    root, _, connection = served
    failed = launch(connection, "e.1", ["nosuch-program"])
    assert failed["op"] == "failed"
    assert failed["error"] == "No such file or directory: 'nosuch-program'"
    assert json.loads((root / "e.1" / "exit.json").read_text())["error"] == failed["error"]
    missing = tmp_path / "missing"
    invalid = launch(connection, "e.2", ["true"], cwd=str(missing))
    assert invalid["op"] == "invalid" and str(missing) in invalid["error"]
    assert not (root / "e.2" / "chaperone.pid").exists()
    assert launch(connection, "../x", ["true"])["op"] == "invalid"
    # A line of nonsense is answered and dropped; the connection and the chaperone serve on.
    rogue = Connection(root)
    try:
        rogue.sock.sendall(b"nonsense\n")
        refused = rogue.receive()
        assert refused["op"] == "invalid" and refused["error"].startswith("not JSON")
        assert launch(rogue, "e.3", ["true"])["op"] == "started"
    finally:
        rogue.close()
    assert launch(connection, "e.4", ["true"])["op"] == "started"


def test_serve_replaces_its_helper(served):
    root, daemon, connection = served
    children = Path(f"/proc/{daemon['pid']}/task/{daemon['pid']}/children").read_text().split()
    assert len(children) == 1  # the helper, which makes spare run dirs and syncs
    os.kill(int(children[0]), signal.SIGKILL)
    for number in range(5):
        assert launch(connection, f"h{number}.1", ["true"])["op"] == "started"
        assert connection.event()["record"]["returncode"] == 0
    for number in range(5):
        assert (root / f"h{number}.1" / "exit.json").exists()


def test_serve_is_one_per_root(served):
    root, daemon, _ = served
    answer, again = serve(root)
    assert answer == "busy" and again == daemon


def test_serve_leaves_when_idle_and_stays_while_programs_run(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    answer, daemon = serve(root, idle_exit=0.3)
    assert answer == "ready"
    connection = Connection(root)
    launch(connection, "s.1", ["sleep", "0.8"])
    connection.close()
    time.sleep(0.6)
    assert alive(daemon["pid"])  # nobody connected, but a program runs
    wait_gone(daemon["pid"])
    assert (root / "s.1" / "exit.json").exists()
    assert not (root / ".chaperone.sock").exists()
    assert not [path for path in root.iterdir() if path.name.startswith(".spares-")]


def test_sigterm_to_the_shared_chaperone_kills_its_programs(served):
    _, daemon, connection = served
    started = launch(connection, "t.1", ["sleep", "30"], kill_grace=5)
    os.kill(daemon["pid"], signal.SIGTERM)
    record = connection.event()["record"]
    assert record["killed"] and record["signal"] == signal.SIGTERM
    assert not alive(started["program"]["pid"])
    wait_gone(daemon["pid"])


def test_serve_where_the_socket_path_is_too_long(tmp_path: Path):
    root = tmp_path / ("r" * 70) / ("s" * 70)
    root.mkdir(parents=True)
    answer, daemon = serve(root, idle_exit=0.2)
    assert answer == "ready"
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(_rundir.socket_address(str(root), fd))
        sock.close()
    finally:
        os.close(fd)
    wait_gone(daemon["pid"])


def test_a_bad_request_is_answered_once_and_nothing_runs_twice(served, tmp_path: Path):
    """A request that broke while handled (an unhashable key, a grace that is no number) used
    to stay in the connection's inbox: each later receive ran the lines before it again, then
    stopped at it again, so that nothing after it was ever answered."""
    _, _, connection = served
    ledger = tmp_path / "ledger"
    stubborn = ["sh", "-c", "trap '' TERM; sleep 30"]
    assert launch(connection, "v.1", stubborn, kill_grace=30)["op"] == "started"
    lines = [
        {"op": "launch", "key": "a.1", "spec": {"argv": ["sh", "-c", f"echo a >> {ledger}"]}},
        {"op": "watch", "key": ["unhashable"]},
        {"op": "kill", "key": "v.1", "grace": "soon"},
        {"op": "launch", "key": {"a": 1}, "spec": {"argv": ["true"]}},
    ]
    connection.sock.sendall(
        b"".join(protocol.json_line({**line, "id": 100 + n}) for n, line in enumerate(lines))
    )
    assert launch(connection, "b.1", ["sh", "-c", f"echo b >> {ledger}"])["op"] == "started"
    assert connection.request(op="kill", key="v.1", grace=0)["op"] == "killing"
    seen, connection.events = connection.events, []
    while {"a.1", "b.1", "v.1"} - {event["key"] for event in seen if "id" not in event}:
        seen.append(connection.receive())
    assert connection.request(op="watch", key="none.1")["op"] == "unknown"  # nothing else came
    replies = {}
    for event in seen + connection.events:
        if "id" in event:
            assert event["id"] not in replies, f"answered twice: {event}"
            replies[event["id"]] = event
    assert sorted(replies) == [100, 101, 102, 103]
    assert replies[100]["op"] == "started"
    assert replies[101]["op"] == "invalid" and replies[101]["error"].startswith("key: ")
    assert replies[102]["op"] == "invalid" and replies[102]["error"].startswith("grace: ")
    assert replies[103]["op"] == "invalid" and replies[103]["error"].startswith("key: ")
    assert sorted(ledger.read_text().split()) == ["a", "b"]


def test_an_own_chaperone_outwaits_durations_no_wait_call_takes(tmp_path: Path):
    """1e10 s is past what sigtimedwait takes (its nanoseconds overflow 64 bits)."""
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["sleep", "30"], timeout=1e10, kill_grace=1e12)
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert reply["status"] == "started"
        os.kill(reply["chaperone"]["pid"], signal.SIGTERM)  # a kill, with the spec's grace
        record = json.loads(notify.readline())["record"]  # type: ignore[attr-defined]
    assert record["killed"] and record["signal"] == signal.SIGTERM
