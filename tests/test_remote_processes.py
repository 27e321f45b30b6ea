"""Remote processes through the whole runtime (``backend = "ssh"``), against a real sshd.

The programs run as the sshd's test user on this machine, so a ledger file that every program
appends its name to (in a scratch dir that user may write) shows how often each one ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _sshd
import pytest
import trio

from corra._runtime import open_runtime
from corra.backends.ssh import HostConfig, LoginSettings

pytestmark = pytest.mark.slow

CORRA = [sys.executable, "-m", "corra.cli"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir that the sshd's test user can write in (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corra-remote-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def far(server: _sshd.Sshd, root: str, **pool: object) -> HostConfig:
    return server.host_config("far", work_root=root, pool=pool)


def ledger_program(seconds: float) -> list[str]:
    return ["sh", "-c", f'echo "$CORRA_PROCESS_NAME" >> "$LEDGER"; sleep {seconds}; echo done']


async def test_fifty_remote_programs_within_the_login_budget_under_a_low_max_startups(
    sshd_factory: _sshd.SshdFactory, tmp_path: Path, shared_dir: Path
) -> None:
    server = sshd_factory.start(["MaxStartups 2:100:2"], name="runtime-max-startups")
    ledger = shared_dir / "ledger"
    logins = LoginSettings(rate=1.0, burst=2)
    host = far(server, f"corra-tests/fifty-{os.getpid()}", max_connections=2)
    started = time.monotonic()
    async with open_runtime(
        state_dir=tmp_path / "state", hosts={"far": host}, logins=logins, remote_poll_interval=0.3
    ) as runtime:
        refs = [
            await runtime.spawn_process(
                ledger_program(0.3),
                name=f"r{number:02d}",
                backend="ssh",
                host="far",
                env={"LEDGER": str(ledger)},
            )
            for number in range(50)
        ]
        with trio.fail_after(120):
            records = [await ref.wait() for ref in refs]
        assert {record.phase for record in records} == {"finished"}, [
            (record.name, record.state.reason) for record in records
        ]
        assert all(record.state.attempt == 1 for record in records)
        for ref in refs[:5]:
            assert await ref.logs() == b"done\n"
        (pool,) = runtime.remote.registry.handles()
        statistics = await pool.statistics()
    elapsed = time.monotonic() - started
    assert sorted(ledger.read_text().split()) == [f"r{n:02d}" for n in range(50)]
    assert statistics.connect_failures == 0
    assert server.logins() == statistics.logins
    assert server.logins() <= host.pool.max_connections + statistics.rotations
    assert server.logins() <= logins.burst + logins.rate * elapsed


async def test_a_stopped_sshd_pauses_remote_processes_which_resume_when_it_is_back(
    sshd_factory: _sshd.SshdFactory, tmp_path: Path, shared_dir: Path
) -> None:
    server = sshd_factory.start(name="runtime-stopped")
    ledger = shared_dir / "ledger"
    host = far(
        server,
        f"corra-tests/stopped-{os.getpid()}",
        unavailable_after=2,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    async with open_runtime(
        state_dir=tmp_path / "state", hosts={"far": host}, remote_poll_interval=0.3
    ) as runtime:
        manager = runtime.processes
        refs = [
            await runtime.spawn_process(
                ledger_program(4),
                name=f"s{number}",
                backend="ssh",
                host="far",
                env={"LEDGER": str(ledger)},
            )
            for number in range(3)
        ]
        with trio.fail_after(30):
            for ref in refs:
                await manager.wait(ref.id, until=lambda r: r.phase == "running")
        server.stop()
        stopped = trio.current_time()
        with trio.fail_after(30):
            for ref in refs:
                record = await manager.wait(ref.id, until=lambda r: r.phase == "paused")
                assert record.state.paused_by == "host", record.state.reason
                assert record.state.reason.startswith("host unavailable: far: ")
        assert manager.active == 0  # a paused process holds nothing, not even an actor
        await trio.sleep_until(stopped + 10)
        server.restart()
        with trio.fail_after(60):
            records = [await ref.wait() for ref in refs]
        assert [record.phase for record in records] == ["finished"] * 3
        for ref, record in zip(refs, records, strict=True):
            assert record.state.attempt == 1
            assert await ref.logs() == b"done\n"
            events = [t.event for t in manager.history(ref.id)]
            assert events.count("started") == 1 and events.count("pause") == 1, events
    assert sorted(ledger.read_text().split()) == ["s0", "s1", "s2"], "each ran exactly once"


def test_a_remote_program_survives_a_kill_9_of_the_runtime_and_is_reattached(
    sshd: _sshd.Sshd, tmp_path: Path, shared_dir: Path
) -> None:
    state = tmp_path / "state"
    ledger = shared_dir / "ledger"
    jobs = tmp_path / "jobs.toml"
    lines = [
        "[hosts.far]",
        f'hostname = "{sshd.host}"',
        f"port = {sshd.port}",
        f'user = "{sshd.user}"',
        f'identity_file = "{sshd.client_key}"',
        f'known_hosts = "{sshd.known_hosts}"',
        f'work_root = "corra-tests/kill9-{os.getpid()}"',
        "",
    ]
    for number in range(3):
        lines += [
            "[[process]]",
            f'name = "k{number}"',
            'backend = "ssh"',
            'host = "far"',
            f"argv = {json.dumps(ledger_program(3))}",
            f'env = {{ LEDGER = "{ledger}" }}',
            "",
        ]
    jobs.write_text("\n".join(lines))
    command = [*CORRA, "--state-dir", str(state), "run", str(jobs)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (ledger.exists() and len(ledger.read_text().split()) == 3):
        assert time.monotonic() < deadline, "the programs did not start"
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if first.stderr:
        first.stderr.close()

    again = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recovered 3 active process(es)" in again.stderr
    records = json.loads(again.stdout[again.stdout.index("[") :])
    assert [(r["name"], r["phase"], r["attempt"]) for r in records] == [
        ("k0", "finished", 1),
        ("k1", "finished", 1),
        ("k2", "finished", 1),
    ]
    assert sorted(ledger.read_text().split()) == ["k0", "k1", "k2"], "each ran exactly once"
    logs = subprocess.run(
        [*CORRA, "--state-dir", str(state), "logs", "k1"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (logs.returncode, logs.stdout) == (0, b"done\n"), logs.stderr


def test_corra_logs_of_a_remote_writer_ends_at_the_output_there_was_when_it_began(
    sshd: _sshd.Sshd, tmp_path: Path, shared_dir: Path
) -> None:
    """`corra logs` (no -f, no service) of a remote program that writes faster than its
    reader takes the output: the copy ends where the log was when it began (it went on for
    as long as the program wrote)."""
    state = tmp_path / "state"
    marker = f"corra-fast-writer-{os.getpid()}"
    started, finished = shared_dir / "started", shared_dir / "finished"
    writer = (
        "import sys, time\n"
        f"open({str(started)!r}, 'w').close()\n"
        "end = time.monotonic() + 60\n"
        "while time.monotonic() < end:\n"
        "    sys.stdout.write('y' * 65535 + '\\n'); sys.stdout.flush(); time.sleep(0.005)\n"
        f"open({str(finished)!r}, 'w').close()\n"
    )
    jobs = tmp_path / "jobs.toml"
    host = [
        "[hosts.far]",
        f'hostname = "{sshd.host}"',
        f"port = {sshd.port}",
        f'user = "{sshd.user}"',
        f'identity_file = "{sshd.client_key}"',
        f'known_hosts = "{sshd.known_hosts}"',
        f'work_root = "corra-tests/fast-writer-{os.getpid()}"',
    ]
    program = ["python3", "-c", writer, marker]
    process = ["[[process]]", 'name = "writer"', 'backend = "ssh"', 'host = "far"']
    process.append(f"argv = {json.dumps(program)}")
    jobs.write_text("\n".join([*host, "", *process, ""]))
    runner = subprocess.Popen(
        [*CORRA, "--state-dir", str(state), "run", str(jobs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and runner.poll() is None, "it did not start"
            time.sleep(0.05)
        time.sleep(2)  # (some MB written)
        logs = subprocess.Popen(
            [*CORRA, "--state-dir", str(state), "logs", "writer"], stdout=subprocess.PIPE
        )
        assert logs.stdout is not None
        copied = 0
        deadline = time.monotonic() + 40
        while chunk := logs.stdout.read(65536):  # about 1.3 MB/s: slower than the program
            assert time.monotonic() < deadline, "corra logs never ends"
            copied += len(chunk)
            time.sleep(0.05)
        assert logs.wait(timeout=30) == 0
        logs.stdout.close()
        assert not finished.exists(), "the program should still be writing"
        assert copied > 0 and copied % 65536 == 0  # whole lines: what was there, no more
    finally:
        runner.kill()
        runner.wait()
        subprocess.run(["pkill", "-f", marker], check=False)
