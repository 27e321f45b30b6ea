"""LocalBackend with real programs (sh, sleep, python -c), real chaperones and real cgroups.

Tests that involve a process sleep on the real clock only as long as the process needs; the
slot queue, which involves none, runs on virtual time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from corra._errors import BackendError, ConfigError, LaunchFailed, ProgramLost
from corra.backends import _cgroups, local
from corra.backends.local import (
    CgroupSupport,
    ExitRecord,
    Handle,
    LaunchSpec,
    LocalBackend,
)

PYTHON = sys.executable


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (init reaps orphaned zombies a bit later)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as file:
        data = file.read()
    return data[data.rindex(b")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                data = file.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


async def wait_until(condition, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.01)


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def write_text(path: str | Path, text: str) -> None:
    Path(path).write_text(text)


def unlink(path: str | Path) -> None:
    Path(path).unlink()


def _cleanup(root: Path) -> None:
    """Kill whatever a failed test left running under ``root``."""
    if not root.is_dir():
        return
    for run_dir in root.iterdir():
        for name, group in (("program.pid", True), ("chaperone.pid", False)):
            try:
                recorded = json.loads((run_dir / name).read_text())
                pid, start = recorded["pid"], recorded["start"]
            except (OSError, ValueError, KeyError):
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat_fields(pid)[19]) == start:  # still that process, not a reused pid
                    (os.killpg if group else os.kill)(pid, signal.SIGKILL)
            cgroup = recorded.get("cgroup") if group else None
            if cgroup:
                with contextlib.suppress(OSError):
                    Path(cgroup, "cgroup.kill").write_text("1")
                for _ in range(100):
                    with contextlib.suppress(OSError):
                        os.rmdir(cgroup)
                    if not os.path.exists(cgroup):
                        break
                    time.sleep(0.01)


@pytest.fixture
def root(tmp_path: Path):
    path = tmp_path / "runs"
    yield path
    _cleanup(path)


@pytest.fixture
async def backend(root: Path):
    async with LocalBackend(root) as backend:
        yield backend


def sh(script: str, **options: object) -> LaunchSpec:
    return LaunchSpec(argv=("sh", "-c", script), **options)  # type: ignore[arg-type]


def py(code: str, **options: object) -> LaunchSpec:
    return LaunchSpec(argv=(PYTHON, "-c", textwrap.dedent(code)), **options)  # type: ignore[arg-type]


async def run(backend: LocalBackend, key: str, spec: LaunchSpec) -> tuple[Handle, ExitRecord]:
    handle = await backend.launch(key, spec)
    return handle, await backend.wait(handle)


# exits ----------------------------------------------------------------------------------


async def test_output_and_exit_code(backend: LocalBackend):
    handle, record = await run(backend, "p1.1", sh("echo out; echo err >&2; echo more"))
    assert record.returncode == 0 and record.signal is None and record.error is None
    assert record.ok
    assert await backend.read_log(handle, "stdout", 0, 100) == b"out\nmore\n"
    assert await backend.read_log(handle, "stdout", 4, 2) == b"mo"
    assert await backend.read_log(handle, "stderr", 0, 100) == b"err\n"
    assert await backend.read_log(handle, "stdout", 100, 10) == b""
    assert (record.stdout_size, record.stderr_size) == (9, 4)
    assert backend.log_path(handle, "stderr") == Path(handle.run_dir) / "stderr"
    assert not record.timed_out and not record.killed
    assert record.started_at <= record.ended_at <= time.time()
    assert backend.status(handle) == "exited"
    assert backend.exit_record(handle) == record


async def test_failing_exit_code(backend: LocalBackend):
    _, record = await run(backend, "p2.1", sh("exit 3"))
    assert (record.returncode, record.signal, record.ok) == (3, None, False)


async def test_signal_death(backend: LocalBackend):
    _, record = await run(backend, "p3.1", sh("kill -USR1 $$"))
    assert (record.returncode, record.signal) == (None, signal.SIGUSR1)
    assert not record.killed


async def test_environment_cwd_and_stdin(backend: LocalBackend, tmp_path: Path):
    spec = sh(
        'echo "$CORRA_TEST_VAR $(pwd)"; cat; echo "home=$HOME"',
        env={"CORRA_TEST_VAR": "hello"},
        cwd=str(tmp_path),
    )
    handle, _ = await run(backend, "p4.1", spec)
    output = await backend.read_log(handle, "stdout", 0, 4096)
    # Added on top of the runtime's environment; stdin is /dev/null (cat ends at once).
    assert output == f"hello {tmp_path}\nhome={os.environ['HOME']}\n".encode()
    handle, _ = await run(backend, "p5.1", sh("pwd"))
    assert await backend.read_log(handle, "stdout", 0, 4096) == f"{handle.run_dir}/work\n".encode()


async def test_rusage_is_recorded(backend: LocalBackend):
    _, record = await run(
        backend, "p6.1", py("x = bytearray(64 * 1024 * 1024)\nsum(range(3_000_000))")
    )
    assert record.returncode == 0
    assert record.utime > 0.01
    assert record.maxrss >= 64 * 1024 * 1024


# timeouts and kills ---------------------------------------------------------------------


async def test_timeout_terminates(backend: LocalBackend):
    handle, record = await run(backend, "t1.1", LaunchSpec(argv=("sleep", "30"), timeout=0.5))
    assert record.timed_out and not record.killed
    assert record.signal == signal.SIGTERM
    assert 0.45 <= record.ended_at - record.started_at < 3
    assert not alive(handle.pid)


async def test_timeout_escalates_to_kill_after_grace(backend: LocalBackend):
    spec = py(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring TERM", flush=True)
        time.sleep(30)
        """,
        timeout=0.5,
        kill_grace=0.5,
    )
    handle, record = await run(backend, "t2.1", spec)
    assert record.timed_out and record.signal == signal.SIGKILL
    assert 0.95 <= record.ended_at - record.started_at < 4
    assert await backend.read_log(handle, "stdout", 0, 100) == b"ignoring TERM\n"


async def test_kill_reaches_grandchildren(backend: LocalBackend):
    handle = await backend.launch("k1.1", sh("sleep 100 & sleep 100 & wait"))
    await wait_until(lambda: len(group_members(handle.pid)) == 3, what="three processes")
    members = group_members(handle.pid)
    record = await backend.kill(handle, grace=2)
    assert record is not None and record.killed and not record.timed_out
    assert record.signal == signal.SIGTERM
    assert [pid for pid in members if alive(pid)] == []
    assert backend.status(handle) == "exited"


async def test_kill_escalates_for_a_group_that_ignores_term(root: Path):
    async with LocalBackend(root, cgroups="off") as backend:
        handle = await backend.launch(
            "k2.1", sh("trap '' TERM; sleep 100 & sleep 100 & echo ready; wait", kill_grace=30)
        )
        await wait_until(lambda: len(group_members(handle.pid)) == 3, what="three processes")
        members = group_members(handle.pid)
        started = time.monotonic()
        record = await backend.kill(handle, grace=0.3)  # overrides the spec's kill_grace
        assert 0.25 <= time.monotonic() - started < 3
        assert record is not None and record.killed and record.signal == signal.SIGKILL
        assert [pid for pid in members if alive(pid)] == []


async def test_leftovers_are_killed_when_the_leader_exits(backend: LocalBackend):
    handle, record = await run(backend, "k3.1", sh("sleep 100 & echo $!"))
    left_behind = int(await backend.read_log(handle, "stdout", 0, 100))
    assert record.returncode == 0
    assert not alive(left_behind)  # gone by the time the record exists


async def test_kill_reaches_a_process_that_left_the_group_through_the_cgroup(
    backend: LocalBackend,
):
    if not backend.cgroups.kill:
        pytest.skip(f"no cgroup.kill here: {backend.cgroups}")
    handle = await backend.launch("k4.1", sh("setsid sleep 100 & echo $!; wait"))
    await wait_until(lambda: backend.status(handle) == "running")
    await wait_until(lambda: Path(handle.run_dir, "stdout").stat().st_size > 0)
    escaped = int(await backend.read_log(handle, "stdout", 0, 100))
    await wait_until(
        lambda: escaped not in group_members(handle.pid),  # type: ignore[arg-type]
        what="setsid to take the sleep out of the group",
    )
    await backend.kill(handle, grace=1)
    await wait_until(lambda: not alive(escaped), within=2, what="the escaped sleep to die")
    assert handle.cgroup is not None and not exists(handle.cgroup)


async def test_program_runs_in_its_cgroup_which_is_removed_afterwards(backend: LocalBackend):
    if not backend.cgroups.kill:
        pytest.skip(f"no cgroup.kill here: {backend.cgroups}")
    handle, _ = await run(backend, "c1.1", sh("cat /proc/self/cgroup"))
    assert handle.cgroup is not None and handle.cgroup_note is None
    lines = (await backend.read_log(handle, "stdout", 0, 4096)).decode().splitlines()
    v2_path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    assert handle.cgroup.endswith(v2_path)
    assert not exists(handle.cgroup)


async def test_memory_limit_kills_a_program_that_allocates_too_much(backend: LocalBackend):
    if backend.cgroups.memory is None:
        pytest.skip(f"no writable memory cgroup here: {backend.cgroups}")
    spec = py(
        """
        chunks = []
        for _ in range(60):
            chunks.append(bytearray(10 * 1024 * 1024))
        print("survived")
        """,
        memory_limit=100 * 1024 * 1024,
    )
    handle, record = await run(backend, "m1.1", spec)
    assert record.signal == signal.SIGKILL, record
    assert record.oom_killed
    assert await backend.read_log(handle, "stdout", 0, 100) == b""
    _, record = await run(
        backend, "m2.1", py("x = bytearray(20 * 1024 * 1024)", memory_limit=spec.memory_limit)
    )
    assert record.returncode == 0 and not record.oom_killed


async def test_pids_limit_stops_forks(backend: LocalBackend):
    if backend.cgroups.pids is None:
        pytest.skip(f"no writable pids cgroup here: {backend.cgroups}")
    spec = sh("for i in 1 2 3 4 5 6; do sleep 5 & done; wait", pids_limit=4, timeout=10)
    handle, _ = await run(backend, "m3.1", spec)
    stderr = await backend.read_log(handle, "stderr", 0, 4096)
    assert b"fork" in stderr.lower(), stderr


async def test_limits_without_cgroups_are_noted(root: Path):
    async with LocalBackend(root, cgroups="off") as backend:
        assert backend.cgroups.layout == "off"
        handle, record = await run(backend, "m4.1", sh("true", memory_limit=10**9, pids_limit=9))
    assert record.returncode == 0
    assert handle.cgroup is None
    assert handle.cgroup_note is not None
    assert "memory_limit not enforced" in handle.cgroup_note
    assert "pids_limit not enforced" in handle.cgroup_note


async def test_flood_of_output_is_spooled_to_the_file(backend: LocalBackend):
    size = 50_000_000
    handle, record = await run(
        backend, "f1.1", LaunchSpec(argv=("head", "-c", str(size), "/dev/zero"))
    )
    assert record.returncode == 0
    assert record.stdout_size == size == len(read_bytes(backend.log_path(handle, "stdout")))
    assert await backend.read_log(handle, "stdout", size - 3, 10) == b"\0\0\0"


# idempotence, reattach, survival --------------------------------------------------------


async def test_launch_is_idempotent_by_key(backend: LocalBackend, tmp_path: Path):
    ledger = tmp_path / "ledger"
    spec = sh(f"echo ran >> {ledger}; sleep 0.2")
    first = await backend.launch("i1.1", spec)
    again = await backend.launch("i1.1", spec)
    assert again == first
    record = await backend.wait(again)
    assert record.returncode == 0
    assert await backend.launch("i1.1", spec) == first  # also once it has ended
    assert ledger.read_text() == "ran\n"


async def test_concurrent_launches_of_one_key_run_it_once(backend: LocalBackend, tmp_path: Path):
    ledger = tmp_path / "ledger"
    spec = sh(f"echo ran >> {ledger}")
    handles: list[Handle] = []

    async def launch() -> None:
        handles.append(await backend.launch("i2.1", spec))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(launch)
    assert len(set(handles)) == 1
    await backend.wait(handles[0])
    assert ledger.read_text() == "ran\n"


async def test_two_backends_on_one_root_launch_a_key_once(root: Path, tmp_path: Path):
    ledger = tmp_path / "ledger"
    spec = sh(f"echo ran >> {ledger}")
    async with LocalBackend(root) as one, LocalBackend(root, zygote=False) as two:
        handles = []

        async def launch(backend: LocalBackend) -> None:
            handles.append(await backend.launch("i3.1", spec))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(launch, one)
            nursery.start_soon(launch, two)
        assert handles[0] == handles[1]
        await one.wait(handles[0])
    assert ledger.read_text() == "ran\n"


async def test_a_new_backend_reattaches_by_key(root: Path):
    async with LocalBackend(root) as first:
        launched = await first.launch("r1.1", sh("sleep 0.5; echo finished; exit 7"))
    async with LocalBackend(root) as second:  # as after a restart of the runtime
        handle = await trio.to_thread.run_sync(second.find, "r1.1")
        assert handle == launched
        assert second.status(handle) == "running"
        assert second.exit_record(handle) is None
        record = await second.wait(handle)
        assert record.returncode == 7
        assert await second.read_log(handle, "stdout", 0, 100) == b"finished\n"
        assert second.find("never-launched.1") is None


LAUNCHER = """
import json, sys
import attrs, trio
from corra.backends.local import LaunchSpec, LocalBackend

async def main():
    backend = LocalBackend(sys.argv[1], zygote=sys.argv[2] == "zygote")
    handle = await backend.launch("s1.1", LaunchSpec(argv=("sh", "-c", "sleep 1; echo done")))
    print(json.dumps(attrs.asdict(handle)), flush=True)
    await trio.sleep(60)

trio.run(main)
"""


@pytest.mark.parametrize("how", ["zygote", "direct"])
async def test_the_program_survives_the_death_of_its_launcher(root: Path, how: str):
    launcher = await trio.to_thread.run_sync(
        lambda: subprocess.Popen(
            [PYTHON, "-c", LAUNCHER, str(root), how], stdout=subprocess.PIPE, text=True
        )
    )
    try:
        line = await trio.to_thread.run_sync(launcher.stdout.readline)  # type: ignore[union-attr]
    finally:
        launcher.kill()
        await trio.to_thread.run_sync(launcher.wait)
        launcher.stdout.close()  # type: ignore[union-attr]
    launched = Handle(**json.loads(line))
    async with LocalBackend(root) as backend:
        assert backend.status(launched) == "running"
        assert alive(launched.pid)  # type: ignore[arg-type]
        record = await backend.wait(launched)
        assert record.returncode == 0
        assert await backend.read_log(launched, "stdout", 0, 100) == b"done\n"


async def test_lost_when_chaperone_and_program_are_killed(backend: LocalBackend):
    handle = await backend.launch("l1.1", sh("sleep 100 & wait"))
    os.kill(handle.chaperone_pid, signal.SIGKILL)
    os.killpg(handle.pid, signal.SIGKILL)  # type: ignore[arg-type]
    await wait_until(lambda: backend.status(handle) == "lost")
    assert backend.exit_record(handle) is None
    with pytest.raises(ProgramLost, match=r"l1\.1"):
        await backend.wait(handle)
    assert await backend.kill(handle) is None  # nothing to kill; cleans up the cgroup
    if handle.cgroup is not None:
        assert not exists(handle.cgroup)


async def test_a_new_backend_sweeps_the_empty_cgroups_of_lost_runs(root: Path):
    async with LocalBackend(root) as first:
        if not first.cgroups.kill:
            pytest.skip(f"no cgroup.kill here: {first.cgroups}")
        lost = await first.launch("l4.1", sh("sleep 100"))
        running = await first.launch("l5.1", sh("sleep 100"))
        os.kill(lost.chaperone_pid, signal.SIGKILL)
        os.killpg(lost.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await wait_until(lambda: first.status(lost) == "lost")
        await wait_until(lambda: not group_members(lost.pid))  # type: ignore[arg-type]
    assert exists(lost.cgroup)  # type: ignore[arg-type]
    async with LocalBackend(root) as second:
        await run(second, "l6.1", sh("true"))
        assert not exists(lost.cgroup)  # type: ignore[arg-type]
        assert exists(running.cgroup)  # type: ignore[arg-type]
        await second.kill(running, grace=0)


async def test_kill_without_chaperone_kills_the_group_itself(backend: LocalBackend):
    handle = await backend.launch("l2.1", sh("trap '' TERM; sleep 100 & sleep 100 & wait"))
    await wait_until(lambda: len(group_members(handle.pid)) == 3, what="three processes")
    members = group_members(handle.pid)
    os.kill(handle.chaperone_pid, signal.SIGKILL)
    await wait_until(lambda: backend.status(handle) == "lost")
    started = time.monotonic()
    assert await backend.kill(handle, grace=0.3) is None
    assert 0.25 <= time.monotonic() - started < 3
    assert [pid for pid in members if alive(pid)] == []


async def test_pid_reuse_is_not_taken_for_the_chaperone(backend: LocalBackend):
    handle, _ = await run(backend, "l3.1", sh("true"))
    impostor = attrs.evolve(handle, chaperone_pid=os.getpid())  # alive, but started elsewhen
    unlink(Path(handle.run_dir, "exit.json"))
    assert backend.status(impostor) == "lost"
    with pytest.raises(ProgramLost):
        await backend.wait(impostor)


# launch errors --------------------------------------------------------------------------


async def test_exec_failure_is_reported(backend: LocalBackend):
    with pytest.raises(LaunchFailed, match=r"e1\.1: No such file or directory: 'nosuch'"):
        await backend.launch("e1.1", LaunchSpec(argv=("nosuch", "arg")))
    handle = backend.find("e1.1")
    assert handle is not None and handle.pid is None
    record = backend.exit_record(handle)
    assert record is not None and record.error == "No such file or directory: 'nosuch'"
    assert record.returncode is None and not record.ok
    assert backend.status(handle) == "exited"
    with pytest.raises(LaunchFailed, match="No such file"):  # and again, never running it
        await backend.launch("e1.1", LaunchSpec(argv=("nosuch", "arg")))


async def test_not_executable_is_reported(backend: LocalBackend, tmp_path: Path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(LaunchFailed, match=r"Permission denied: '.*script'"):
        await backend.launch("e2.1", LaunchSpec(argv=(str(script),)))


async def test_missing_cwd_claims_nothing(backend: LocalBackend, tmp_path: Path):
    missing = tmp_path / "missing"
    with pytest.raises(LaunchFailed, match=f"cwd: no such directory: '{missing}'"):
        await backend.launch("e3.1", LaunchSpec(argv=("true",), cwd=str(missing)))
    assert backend.find("e3.1") is None
    missing.mkdir()
    _, record = await run(backend, "e3.1", LaunchSpec(argv=("true",), cwd=str(missing)))
    assert record.returncode == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"argv": ()}, "argv"),
        ({"argv": "sh -c true"}, "argv"),
        ({"argv": ("a", 3)}, "argv"),
        ({"argv": ("a\0b",)}, "argv"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"A": 1}}, "env"),
        ({"cwd": ""}, "cwd"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"kill_grace": -1}, "kill_grace"),
        ({"memory_limit": 0}, "memory_limit"),
        ({"pids_limit": True}, "pids_limit"),
    ],
)
def test_invalid_specs_name_the_field(options: dict, field: str):
    arguments = {"argv": ("true",), **options}
    with pytest.raises(ConfigError, match=f"^{field}"):
        LaunchSpec(**arguments)


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "x" * 201, 7])
async def test_invalid_keys_are_refused(backend: LocalBackend, key: object):
    with pytest.raises(ConfigError, match=r"^key"):
        await backend.launch(key, LaunchSpec(argv=("true",)))  # type: ignore[arg-type]


def test_invalid_backend_options(tmp_path: Path):
    with pytest.raises(ConfigError, match="max_running"):
        LocalBackend(tmp_path, max_running=0)
    with pytest.raises(ConfigError, match="cgroups"):
        LocalBackend(tmp_path, cgroups="on")  # type: ignore[arg-type]


async def test_corrupt_exit_record_is_a_backend_error(backend: LocalBackend):
    handle, _ = await run(backend, "e4.1", sh("true"))
    write_text(Path(handle.run_dir, "exit.json"), '{"returncode": 0}')
    with pytest.raises(BackendError, match=r"exit\.json"):
        backend.exit_record(handle)


# waiting --------------------------------------------------------------------------------


async def test_wait_is_cancellable_and_can_be_resumed(backend: LocalBackend):
    handle = await backend.launch("w1.1", sh("sleep 0.4; exit 5"))
    with trio.move_on_after(0.05) as scope:
        await backend.wait(handle)
    assert scope.cancelled_caught
    assert backend.status(handle) == "running"
    assert (await backend.wait(handle)).returncode == 5


async def test_wait_without_pidfd_polls(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch):
    handle = await backend.launch("w2.1", sh("sleep 0.2; exit 4"))
    backend._links.clear()  # as if launched by another runtime
    monkeypatch.setattr(local, "_pidfd", lambda pid: None)
    assert (await backend.wait(handle)).returncode == 4


async def test_a_killed_zygote_is_replaced(backend: LocalBackend):
    await run(backend, "z1.1", sh("true"))
    zygote = backend._zygote
    assert zygote is not None
    os.kill(zygote.pid, signal.SIGKILL)
    _, record = await run(backend, "z2.1", sh("exit 2"))
    assert record.returncode == 2


async def test_direct_start_without_zygote(root: Path):
    async with LocalBackend(root, zygote=False) as backend:
        handle, record = await run(backend, "d1.1", sh("echo direct"))
        assert backend._zygote is None
    assert record.returncode == 0
    assert read_bytes(Path(handle.run_dir, "stdout")) == b"direct\n"
    assert json.loads(read_bytes(Path(handle.run_dir, "spec.json")))["argv"][0] == "sh"


# slots ----------------------------------------------------------------------------------


async def test_slots_bound_real_programs_in_submission_order(root: Path):
    async with LocalBackend(root, max_running=2) as backend:
        records: dict[int, ExitRecord] = {}
        acquired: list[int] = []

        async def one(number: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            key = f"s{number}.1"
            task_status.started()
            await backend.acquire_slot(key)
            acquired.append(number)
            assert backend.slot_statistics().running <= 2
            try:
                records[number] = await backend.wait(await backend.launch(key, sh("sleep 0.2")))
            finally:
                backend.release_slot(key)

        async with trio.open_nursery() as nursery:
            for number in range(5):
                await nursery.start(one, number)
    assert acquired == [0, 1, 2, 3, 4]
    events = sorted(
        [(record.started_at, 1) for record in records.values()]
        + [(record.ended_at, -1) for record in records.values()]
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2


async def test_slot_queue_is_fifo_idempotent_and_adopts(tmp_path: Path, autojump_clock):
    backend = LocalBackend(tmp_path, max_running=2)
    order: list[str] = []

    async def take(key: str, hold: float) -> None:
        await backend.acquire_slot(key)
        order.append(key)
        await trio.sleep(hold)
        backend.release_slot(key)

    async with trio.open_nursery() as nursery:
        for key, hold in [("a", 3), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]:
            nursery.start_soon(take, key, hold)
            await trio.testing.wait_all_tasks_blocked()
        assert backend.slot_statistics() == local.SlotStatistics(limit=2, running=2, waiting=3)
        await backend.acquire_slot("a")  # held already: at once
        backend.adopt_slot("recovered")  # above the limit
        assert backend.slot_statistics().running == 3
        await trio.sleep(1.5)
        # b gave its slot back at 1, but the adopted key counts: a and recovered hold two.
        assert order == ["a", "b"]
        backend.release_slot("recovered")
    assert order == ["a", "b", "c", "d", "e"]
    assert trio.current_time() == 4  # c 1.5 -> 2.5, d 2.5 -> 3.5, e 3 (a done) -> 4


async def test_cancelled_slot_waiter_leaves_the_queue(tmp_path: Path, autojump_clock):
    backend = LocalBackend(tmp_path, max_running=1)
    await backend.acquire_slot("a")
    with trio.move_on_after(1):
        await backend.acquire_slot("b")
    assert backend.slot_statistics().waiting == 0
    backend.adopt_slot("c")  # adopting a key that waits lets it through at once
    got: list[str] = []

    async def take(key: str) -> None:
        await backend.acquire_slot(key)
        got.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "d")
        await trio.testing.wait_all_tasks_blocked()
        backend.adopt_slot("d")
    assert got == ["d"]
    backend.release_slot("a")
    assert backend.slot_statistics().running == 2  # c and d


# cgroup detection -----------------------------------------------------------------------

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
HYBRID_SELF = "4:memory:/sandbox/abc\n8:pids:/\n1:cpu:/\n0::/\n"


def test_detect_hybrid_puts_limits_under_our_own_cgroup():
    support = _cgroups.detect(HYBRID_MOUNTS, HYBRID_SELF, writable=lambda path: True)
    assert support == CgroupSupport(
        layout="hybrid",
        unified="/sys/fs/cgroup/unified/corra",
        memory="/sys/fs/cgroup/memory/sandbox/abc/corra",
        pids="/sys/fs/cgroup/pids/corra",
        note=None,
    )
    assert support.kill


def test_detect_pure_v2_and_unwritable_and_none():
    mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    support = _cgroups.detect(mounts, "0::/user.slice\n", writable=lambda path: False)
    assert support.layout == "v2" and not support.kill
    assert support.memory is None and "not writable" in (support.note or "")
    none = _cgroups.detect("proc /proc proc rw 0 0\n", "", writable=lambda path: True)
    assert none.layout == "none" and not none.kill


def test_entries_for_a_program():
    support = _cgroups.detect(HYBRID_MOUNTS, HYBRID_SELF, writable=lambda path: True)
    entries, notes = support.entries("k@1", memory_limit=100, pids_limit=5)
    assert notes == []
    assert entries == [
        {"path": "/sys/fs/cgroup/unified/corra/k@1", "before": {}, "after": {}},
        {
            "path": "/sys/fs/cgroup/memory/sandbox/abc/corra/k@1",
            "before": {"memory.limit_in_bytes": "100"},
            "after": {},
        },
        {
            "path": "/sys/fs/cgroup/pids/corra/k@1",
            "before": {"pids.max": "6"},  # one more while the chaperone is inside
            "after": {"pids.max": "5"},
        },
    ]
    v2 = CgroupSupport(layout="v2", unified="/cg/corra", memory="/cg/corra", pids="/cg/corra")
    entries, _ = v2.entries("k@1", memory_limit=100, pids_limit=5)
    assert entries == [
        {
            "path": "/cg/corra/k@1",
            "before": {"memory.max": "100", "memory.swap.max": "0", "pids.max": "6"},
            "after": {"pids.max": "5"},
        }
    ]


def test_handle_round_trips_through_json(tmp_path: Path):
    handle = Handle(
        key="x.1",
        run_dir=str(tmp_path),
        chaperone_pid=1,
        chaperone_start=2,
        pid=3,
        cgroup=None,
        cgroup_note="no cgroup",
        started_at=4.5,
    )
    assert Handle(**json.loads(json.dumps(attrs.asdict(handle)))) == handle
