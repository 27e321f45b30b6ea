"""The batch job wrapper, run as a job script runs it (``python3 -I -S -c SOURCE``), here:
the escalation it shares with the chaperones (`corra.chaperone._escalation`), travelling in
its source."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corra.chaperone import batch_job

IGNORES_TERM = ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done']
READY = ["sh", "-c", "echo ready; exec sleep 60"]


@pytest.fixture
def start():
    started: list[subprocess.Popen[bytes]] = []

    def start(run_dir: Path, grace: float, program: list[str]) -> subprocess.Popen[bytes]:
        wrapper = _start(run_dir, grace, program)
        started.append(wrapper)
        return wrapper

    yield start
    for wrapper in started:
        wrapper.kill()
        wrapper.wait()
        assert wrapper.stdout is not None
        wrapper.stdout.close()


def _start(run_dir: Path, grace: float, program: list[str]) -> subprocess.Popen[bytes]:
    arguments = [str(run_dir), "", repr(grace), "untimed", *program]
    source = batch_job.source()
    wrapper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", source, *arguments], stdout=subprocess.PIPE
    )
    assert wrapper.stdout is not None
    if program in (IGNORES_TERM, READY):
        assert wrapper.stdout.readline() == b"ready\n"
    return wrapper


def exit_record(run_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((run_dir / "exit.json").read_text())
    assert (run_dir / "exit.json").stat().st_mode & 0o777 == 0o600
    return record


def test_the_source_is_self_contained():
    # (what a node's python runs: _escalation's text first, no import of the package)
    source = batch_job.source()
    assert "from ._escalation" in source and "class Escalation" in source
    compile(source, "job", "exec")


def test_a_kill_from_corra_terminates_then_kills_after_its_grace(start, tmp_path: Path):
    (tmp_path / "kill.json").write_text(json.dumps({"grace": 0.5}))
    wrapper = start(tmp_path, 60.0, IGNORES_TERM)
    sent = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=10) == 128 + signal.SIGKILL
    assert time.monotonic() - sent >= 0.5  # the grace of kill.json, not the spec's 60 s
    record = exit_record(tmp_path)
    assert record["signal"] == signal.SIGKILL and record["returncode"] is None
    assert record["killed"] is True and record["timed_out"] is False


def test_a_second_request_may_shorten_the_grace(start, tmp_path: Path):
    (tmp_path / "kill.json").write_text(json.dumps({"grace": 30.0}))
    wrapper = start(tmp_path, 60.0, IGNORES_TERM)
    wrapper.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    (tmp_path / "kill.json").write_text(json.dumps({"grace": 0}))
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=10) == 128 + signal.SIGKILL
    assert exit_record(tmp_path)["killed"] is True


def test_a_term_that_is_not_corras_is_not_a_kill(start, tmp_path: Path):
    # (the scheduler's own, for a time limit say, or someone's scancel: no kill.json)
    wrapper = start(tmp_path, 60.0, READY)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=10) == 128 + signal.SIGTERM
    record = exit_record(tmp_path)
    assert record["signal"] == signal.SIGTERM and record["killed"] is False


@pytest.mark.parametrize(
    ("program", "status"),
    [
        (["sh", "-c", "exit 3"], 3),
        (["no-such-program-corra"], 127),
        (["/dev/null"], 126),
    ],
)
def test_the_program_s_status_is_the_job_s(start, tmp_path: Path, program: list[str], status: int):
    wrapper = start(tmp_path, 1.0, program)
    assert wrapper.wait(timeout=10) == status
    record = exit_record(tmp_path)
    assert record["returncode"] == status and record["killed"] is False
