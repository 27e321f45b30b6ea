"""The one kill escalation (`corra.chaperone._run.Run`), which the own chaperone, the shared
one and the local backend's kill of an orphan all drive: SIGTERM, then SIGKILL once the grace
is over; a later request may shorten the grace, never lengthen it; a timeout during a kill
changes nothing."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from corra.chaperone._run import Run


@pytest.fixture
def program() -> Iterator[subprocess.Popen]:
    """A real ``sleep``, leading its own group."""
    process = subprocess.Popen(["sleep", "60"], process_group=0)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def run(tmp_path, program: subprocess.Popen) -> Run:
    run = Run(str(tmp_path), grace=10.0)
    run.pid = program.pid
    return run


def ended_by(run: Run, program: subprocess.Popen) -> int:
    """The signal that ended the program, once reaped (as a chaperone reaps it)."""
    returncode = program.wait(timeout=10)
    run.reaped(returncode, None)
    return -returncode


def test_a_kill_terminates_then_escalates_after_the_grace(run: Run, program):
    assert run.kill(100.0, 5.0) == 105.0
    assert run.killed and not run.timed_out
    run.escalate(104.9)  # not yet
    assert run.escalate_at == 105.0
    assert ended_by(run, program) == signal.SIGTERM


def test_a_second_kill_may_shorten_the_grace_never_lengthen_it(run: Run):
    run.kill(100.0, 5.0)
    assert run.kill(101.0, 10.0) is None  # later than 105: nothing changes
    assert run.escalate_at == 105.0
    assert run.kill(101.0, 1.0) == 102.0


def test_a_timeout_during_a_kill_changes_nothing(run: Run):
    run.kill(100.0, 5.0)
    assert run.time_out(101.0) is None
    assert not run.timed_out and run.escalate_at == 105.0


def deaf_to_sigterm() -> subprocess.Popen:
    """A program group that ignores SIGTERM (once it said so)."""
    script = "trap '' TERM; echo ready; sleep 60"
    program = subprocess.Popen(["sh", "-c", script], process_group=0, stdout=subprocess.PIPE)
    assert program.stdout is not None and program.stdout.readline() == b"ready\n"
    return program


def test_a_timeout_terminates_with_the_specs_grace_then_escalates(tmp_path):
    program = deaf_to_sigterm()
    run = Run(str(tmp_path), grace=10.0)
    run.pid = program.pid
    try:
        assert run.time_out(100.0) == 110.0
        assert run.timed_out and not run.killed
        run.escalate(110.0)
        assert run.escalate_at == float("inf")
        assert program.wait(timeout=10) == -signal.SIGKILL
    finally:
        program.kill()
        program.wait()
        program.stdout.close()  # type: ignore[union-attr]


def test_a_zero_grace_is_a_sigkill(tmp_path):
    program = deaf_to_sigterm()
    run = Run(str(tmp_path), grace=0.0)
    run.pid = program.pid
    try:
        assert run.kill(100.0, 0.0) == float("inf")
        assert program.wait(timeout=10) == -signal.SIGKILL
    finally:
        program.kill()
        program.wait()
        program.stdout.close()  # type: ignore[union-attr]


def test_nothing_is_sent_once_the_program_was_reaped(run: Run, program):
    run.kill(100.0, 5.0)
    ended_by(run, program)
    assert run.kill(101.0, 0.0) is None
    run.escalate(200.0)  # its pid may be another process's now: left alone
    assert run.escalate_at == 105.0
