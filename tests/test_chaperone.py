"""The chaperone script on its own, as a remote host would run it: no runtime, no corra."""

from __future__ import annotations

import array
import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corra.backends import chaperone

SCRIPT = chaperone.__file__
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
    """Run ``chaperone.py RUN_DIR --notify-fd 3``; (pid of the launched process, reader)."""
    read_fd, write_fd = os.pipe()
    if prelude:
        command = [
            PYTHON,
            "-I",
            "-S",
            "-c",
            f"{prelude}\nimport sys\nsys.argv = sys.argv[1:]\n"
            f"exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))",
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


def test_standard_library_only():
    tree = ast.parse(Path(SCRIPT).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "corra" not in imported


def test_old_remote_pythons_can_parse_it():
    ast.parse(Path(SCRIPT).read_text(), feature_version=(3, 6))


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
    _, notify = start(run_dir, prelude="import os\ndel os.posix_spawn")
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
        before = chaperone.process_start(process.pid)
        assert before == int(stat_fields(process.pid)[19])
        process.stdin.write(b"\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while Path(f"/proc/{process.pid}/comm").read_text() != "a) (b c\n":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert chaperone.process_start(process.pid) == before
    finally:
        process.kill()
        process.wait()
        process.stdin.close()  # type: ignore[union-attr]
    assert chaperone.process_start(process.pid) is None


def ask_zygote(server: socket.socket, request: bytes) -> list[dict]:
    """Send one request with a fresh notify pipe; every line the chaperone sends back."""
    read_fd, write_fd = os.pipe()
    fds = array.array("i", [write_fd])
    server.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as notify:
        return [json.loads(line) for line in notify.read().splitlines()]


def test_zygote_serves_requests_until_end_of_file(tmp_path: Path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    command = [PYTHON, "-I", "-S", SCRIPT, "--zygote", str(theirs.fileno())]
    zygote = subprocess.Popen(command, pass_fds=(theirs.fileno(),))
    theirs.close()
    spec = {"argv": ["sh", "-c", "exit 9"], "cwd": None, "env": dict(os.environ)}
    try:
        # A request the forked chaperone cannot read: it dies, the pipe just ends.
        assert ask_zygote(ours, b"not json") == []
        request = json.dumps({"run_dir": str(tmp_path / "run"), "spec": spec}).encode()
        started, exited = ask_zygote(ours, request)
        assert started["status"] == "started"
        assert exited["status"] == "exited" and exited["record"]["returncode"] == 9
        assert zygote.poll() is None
    finally:
        ours.close()
    assert zygote.wait(timeout=10) == 0
