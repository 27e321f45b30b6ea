"""Real programs through the whole stack: runtime, store, chaperones, and `corra` itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from corra._runtime import open_runtime

CORRA = [sys.executable, "-m", "corra.cli"]


def corra(state: Path, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CORRA, "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_of(state: Path) -> list[int]:
    """Pids of every live process started for ``state``: chaperones name their run dir on
    their command line, and programs (with their children) run in a directory under it."""
    found = []
    marker = str(state.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (marker in cmdline or cwd.startswith(marker)) and alive(int(entry)):
            found.append(int(entry))
    return found


def open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the fd of the listing itself
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def job_file(path: Path, count: int, ledger: Path, seconds: float) -> Path:
    lines = ["[defaults]", "timeout = 120", ""]
    for index in range(count):
        lines += [
            "[[process]]",
            f'name = "job-{index:02d}"',
            f'argv = ["sh", "-c", "echo $CORRA_PROCESS_NAME >> \\"$LEDGER\\"; sleep {seconds}"]',
            f'env = {{ LEDGER = "{ledger}" }}',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def test_kill_9_of_the_runtime_mid_run_then_restart_runs_every_program_exactly_once(tmp_path):
    state = tmp_path / "state"
    ledger = tmp_path / "ledger"
    jobs = job_file(tmp_path / "jobs.toml", 50, ledger, seconds=0.4)
    first = subprocess.Popen(
        [*CORRA, "--state-dir", str(state), "run", str(jobs), "--max-running", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger.exists() and len(ledger.read_text().split()) >= 12:
            break
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if first.stderr:
        first.stderr.close()
    started_before = len(ledger.read_text().split())
    assert 12 <= started_before < 50, "the kill should land in the middle of the run"

    again = corra(state, "run", str(jobs), "--max-running", "8", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    records = json.loads(again.stdout[again.stdout.index("[") :])
    assert len(records) == 50 and {r["phase"] for r in records} == {"finished"}
    assert all(r["attempt"] == 1 for r in records)

    names = ledger.read_text().split()
    assert sorted(names) == sorted(f"job-{i:02d}" for i in range(50)), "each ran exactly once"
    time.sleep(0.2)
    assert processes_of(state) == [], "nothing is left behind"


def test_corra_run_twice_continues_and_never_duplicates(tmp_path):
    state = tmp_path / "state"
    ledger = tmp_path / "ledger"
    jobs = job_file(tmp_path / "jobs.toml", 5, ledger, seconds=0)
    first = corra(state, "run", str(jobs))
    assert first.returncode == 0, first.stderr
    second = corra(state, "run", str(jobs))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already finished, not run again") == 5
    assert len(ledger.read_text().split()) == 5


def test_bad_job_files_are_refused_whole_and_nothing_runs(tmp_path):
    state = tmp_path / "state"
    ledger = tmp_path / "ledger"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f"""
[[process]]
name = "fine"
argv = ["sh", "-c", "echo ran >> {ledger}"]

[[process]]
name = "broken"
argv = ["true"]
timeout = "ten minutes"
"""
    )
    done = corra(state, "run", str(jobs))
    assert done.returncode == 2
    assert f"{jobs}: process[1] ('broken').timeout: got 'ten minutes', expected a number" in (
        done.stderr
    )
    assert not ledger.exists()
    assert not state.exists(), "nothing is written before the whole file is valid"

    jobs.write_text("[[process]\nname = 'x'")
    done = corra(state, "run", str(jobs))
    assert done.returncode == 2 and "not valid TOML" in done.stderr
    done = corra(state, "run", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "no such job file" in done.stderr


def test_failures_set_the_exit_status_and_read_only_commands_show_them(tmp_path):
    state = tmp_path / "state"
    done = corra(state, "run", "--name", "boom", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 1
    assert "boom: failed: exited with 7" in done.stdout

    listing = json.loads(corra(state, "ps", "-a", "--json").stdout)["items"]
    assert [(r["name"], r["phase"], r["returncode"]) for r in listing] == [("boom", "failed", 7)]
    assert {"id", "name", "phase", "returncode"} <= set(listing[0])
    shown = json.loads(corra(state, "show", "boom", "--json").stdout)
    assert shown["reason"] == "exited with 7"
    assert [t["event"] for t in shown["history"]] == ["submit", "launch", "started", "fail"]
    assert corra(state, "logs", "boom").stdout == "out\n"
    assert corra(state, "logs", "boom", "--stderr").stdout == "err\n"
    assert corra(state, "ps", "-a").stdout.splitlines()[1].split()[1:4] == ["boom", "failed", "1"]
    # (the default is the active processes: none, and the counts per phase)
    assert corra(state, "ps").stdout.splitlines()[1:] == ["", "1 process: 1 failed"]
    missing = corra(state, "show", "nope")
    assert missing.returncode == 1 and "process nope: no process with this id or name" in (
        missing.stderr
    )
    empty = corra(tmp_path / "elsewhere", "ps")
    assert empty.returncode == 2 and "no corra state here" in empty.stderr


def test_read_only_commands_work_while_a_runtime_runs(tmp_path):
    state = tmp_path / "state"
    runner = subprocess.Popen(
        [
            *CORRA,
            "--state-dir",
            str(state),
            "run",
            "--name",
            "slow",
            "--",
            "sh",
            "-c",
            # long enough that a loaded machine still sees it running
            "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        phase = None
        while time.monotonic() < deadline and phase != "running":
            time.sleep(0.05)
            listing = corra(state, "ps", "--json")
            if listing.returncode == 0:
                items = json.loads(listing.stdout)["items"]
                phase = {r["name"]: r["phase"] for r in items}.get("slow")
        assert phase == "running"
        follow = corra(state, "logs", "-f", "slow", timeout=30)
        assert follow.stdout.splitlines() == [f"line {i}" for i in range(1, 7)]
    finally:
        assert runner.wait(timeout=30) == 0


async def test_pause_leaves_no_task_fd_or_child_and_resume_collects_the_exit(tmp_path):
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(["sh", "-c", "sleep 0.6; echo done"], name="nap")
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        tasks_before = len(rt.root.which_children())
        paused = await ref.pause()
        assert (paused.phase, paused.state.paused_from) == ("paused", "running")
        # no actor, no task, no open file under the state dir, no child of ours
        processes = rt.lookup("/processes")
        assert processes is not None and processes.which_children() == []  # type: ignore[union-attr]
        assert len(rt.root.which_children()) == tasks_before
        run_dir = str((state / "runs").resolve())
        assert not [path for path in open_files() if path.startswith(run_dir)]
        handle = paused.state.handle
        assert handle is not None
        chaperone_parent = Path(f"/proc/{handle.chaperone_pid}/stat").read_text()
        assert int(chaperone_parent.split(") ")[1].split()[1]) != os.getpid()
        await trio.sleep(0.8)  # the program ends while nobody watches
        await ref.resume()
        record = await ref.wait()
        assert record.phase == "finished"
        assert await ref.logs() == b"done\n"


async def test_kill_reaches_grandchildren(tmp_path):
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(
            ["sh", "-c", "sleep 100 & sleep 100 & echo started; wait"], kill_grace=1.0
        )
        await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
        while b"started" not in await ref.logs():
            await trio.sleep(0.02)
        assert len(processes_of(state)) >= 3
        record = await ref.kill()
        assert record.phase == "killed"
        assert record.state.result is not None and record.state.result.killed
    await trio.sleep(0.2)
    assert processes_of(state) == []


@pytest.mark.parametrize("megabytes", [30])
async def test_a_program_flooding_stdout(tmp_path, megabytes):
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(
            ["python3", "-c", f"import sys; sys.stdout.write('x' * {megabytes << 20})"]
        )
        with trio.fail_after(60):
            record = await ref.wait()
    assert record.phase == "finished"
    assert record.state.result is not None
    assert record.state.result.stdout_bytes == megabytes << 20


async def test_timeouts_and_missing_programs_fail_with_a_reason(tmp_path):
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        slow = await rt.spawn_process(["sleep", "30"], timeout=0.3, kill_grace=0.5)
        missing = await rt.spawn_process(["no-such-program-here"])
        slow_record = await slow.wait()
        missing_record = await missing.wait()
    assert (slow_record.phase, slow_record.state.reason) == ("failed", "timed out")
    assert missing_record.phase == "failed"
    assert "no-such-program-here" in (missing_record.state.reason or "")


async def test_a_program_whose_chaperone_vanished_is_failed_as_lost(tmp_path):
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(["sleep", "30"], name="doomed")
        record = await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
    handle = record.state.handle
    assert handle is not None
    # While no runtime watches, something kills the chaperone and the program outright.
    os.kill(handle.chaperone_pid, signal.SIGKILL)
    os.killpg(handle.pid, signal.SIGKILL)
    await trio.sleep(0.2)
    async with open_runtime(state_dir=state) as rt:
        assert rt.recovery is not None and rt.recovery.resumed == (ref.id,)
        record = await rt.processes.wait(ref.id)
    assert record.phase == "failed"
    assert (record.state.reason or "").startswith("lost: ")


async def test_a_runtime_restart_reattaches_a_running_program_without_relaunching(tmp_path):
    state = tmp_path / "state"
    ledger = tmp_path / "ledger"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(
            ["sh", "-c", f"echo start >> {ledger}; sleep 0.8; echo end >> {ledger}"]
        )
        first = await rt.processes.wait(ref.id, until=lambda r: r.phase == "running")
    async with open_runtime(state_dir=state) as rt:
        record = await rt.processes.wait(ref.id)
    assert record.phase == "finished"
    assert record.state.handle == first.state.handle  # the same program, reattached
    assert ledger.read_text().split() == ["start", "end"]
