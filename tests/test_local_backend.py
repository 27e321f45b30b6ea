"""LocalBackend with real programs (sh, sleep, python -c), real chaperones (the shared one of
a root, and own ones) and real cgroups.

Tests that involve a process sleep on the real clock only as long as the process needs; the
slot queue, which involves none, runs on virtual time. Tests marked ``kinds`` run with both
kinds of chaperone.
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
from _local import Local
from _local import Spec as LaunchSpec

from corra._errors import BackendError, ConfigError, LaunchFailed, ProgramLost
from corra.backends._exits import ExitRecord, result_of
from corra.backends.local import (
    CgroupSupport,
    Handle,
    LocalBackend,
    SlotStatistics,
    _cgroups,
    _clients,
    _rundirs,
    _shared,
)
from corra.chaperone import _rundir
from corra.processes._spec import ProcessSpec

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


def cgroup_done(path: str) -> bool:
    """Nothing is left in the cgroup: it is gone (an own chaperone's) or empty (the shared
    chaperone keeps its cgroups for the next programs)."""
    try:
        return "populated 0" in Path(path, "cgroup.events").read_text()
    except FileNotFoundError:
        return not exists(path)


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def write_text(path: str | Path, text: str) -> None:
    Path(path).write_text(text)


def unlink(path: str | Path) -> None:
    Path(path).unlink()


def _kill_recorded(recorded: dict, group: bool) -> None:
    """SIGKILL a recorded process (its group if ``group``) if it is still that process."""
    with contextlib.suppress(OSError, IndexError, ValueError, KeyError, TypeError):
        pid, start = recorded["pid"], recorded["start"]
        if int(stat_fields(pid)[19]) == start:  # still that process, not a reused pid
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def _remove_cgroup(cgroup: str | None) -> None:
    if not cgroup:
        return
    with contextlib.suppress(OSError):
        Path(cgroup, "cgroup.kill").write_text("1")
    for _ in range(100):
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
        if not os.path.exists(cgroup):
            break
        time.sleep(0.01)


def _cleanup(root: Path) -> None:
    """Kill whatever a failed test left running under ``root``: programs (from their pid
    files) and own chaperones; the shared chaperone leaves by itself once idle."""
    if not root.is_dir():
        return
    for run_dir in root.iterdir():
        try:
            claim, program = _rundir.read_claim((run_dir / "chaperone.pid").read_bytes())
        except (OSError, ValueError):
            continue
        if claim is None:
            continue
        if not claim.get("shared"):
            _kill_recorded(claim, group=False)
            with contextlib.suppress(OSError, ValueError):
                program = json.loads((run_dir / "program.pid").read_text())
        if program:
            _kill_recorded(program, group=True)
            _remove_cgroup(program.get("cgroup"))


def daemon_of(root: Path) -> dict | None:
    """The root's shared chaperone, from its pid file: {"pid", "start"}, if it is alive."""
    try:
        recorded = json.loads((root / ".chaperone.pid").read_text())
    except (OSError, ValueError):
        return None
    if not alive(recorded["pid"]) or int(stat_fields(recorded["pid"])[19]) != recorded["start"]:
        return None
    return recorded


@pytest.fixture
def root(tmp_path: Path):
    path = tmp_path / "runs"
    yield path
    _cleanup(path)


@pytest.fixture(params=["shared", "own"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def backend(root: Path, kind: str):
    """A backend with each kind of chaperone in turn."""
    async with Local(root, chaperone=kind) as backend:  # type: ignore[arg-type]
        yield backend


@pytest.fixture
def quick_idle_exit(monkeypatch: pytest.MonkeyPatch) -> float:
    """Shared chaperones started from now on leave after this many idle seconds."""
    monkeypatch.setattr(_shared, "IDLE_EXIT", 0.5)
    return 0.5


def sh(script: str, **options: object) -> LaunchSpec:
    return LaunchSpec(argv=("sh", "-c", script), **options)  # type: ignore[arg-type]


def py(code: str, **options: object) -> LaunchSpec:
    return LaunchSpec(argv=(PYTHON, "-c", textwrap.dedent(code)), **options)  # type: ignore[arg-type]


async def run(backend: Local, key: str, spec: LaunchSpec) -> tuple[Handle, ExitRecord]:
    handle = await backend.launch(key, spec)
    return handle, await backend.wait(handle)


# exits ----------------------------------------------------------------------------------


async def test_output_and_exit_code(backend: Local):
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


async def test_failing_exit_code(backend: Local):
    _, record = await run(backend, "p2.1", sh("exit 3"))
    assert (record.returncode, record.signal, record.ok) == (3, None, False)


async def test_signal_death(backend: Local):
    _, record = await run(backend, "p3.1", sh("kill -USR1 $$"))
    assert (record.returncode, record.signal) == (None, signal.SIGUSR1)
    assert not record.killed


async def test_environment_cwd_and_stdin(backend: Local, tmp_path: Path):
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


async def test_programs_see_the_environment_as_it_is_when_launched(
    backend: Local, monkeypatch: pytest.MonkeyPatch
):
    script = 'echo "${CORRA_TEST_A-unset} ${CORRA_TEST_B-unset}"'
    monkeypatch.setenv("CORRA_TEST_A", "1")
    first, _ = await run(backend, "v1.1", sh(script))
    monkeypatch.delenv("CORRA_TEST_A")
    monkeypatch.setenv("CORRA_TEST_B", "2")
    second, _ = await run(backend, "v2.1", sh(script))
    assert await backend.read_log(first, "stdout", 0, 100) == b"1 unset\n"
    assert await backend.read_log(second, "stdout", 0, 100) == b"unset 2\n"


async def test_programs_get_the_runtimes_umask(backend: Local):
    umask = os.umask(0o027)
    try:
        handle, _ = await run(backend, "u1.1", sh("umask"))
    finally:
        os.umask(umask)
    assert await backend.read_log(handle, "stdout", 0, 100) == b"0027\n"


async def test_rusage_is_recorded(backend: Local):
    _, record = await run(
        backend, "p6.1", py("x = bytearray(64 * 1024 * 1024)\nsum(range(3_000_000))")
    )
    assert record.returncode == 0
    assert record.utime > 0.01
    assert record.maxrss >= 64 * 1024 * 1024


# timeouts and kills ---------------------------------------------------------------------


async def test_timeout_terminates(backend: Local):
    handle, record = await run(backend, "t1.1", LaunchSpec(argv=("sleep", "30"), timeout=0.5))
    assert record.timed_out and not record.killed
    assert record.signal == signal.SIGTERM
    assert 0.45 <= record.ended_at - record.started_at < 3
    assert not alive(handle.pid)


async def test_timeout_escalates_to_kill_after_grace(backend: Local):
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


async def test_kill_reaches_grandchildren(backend: Local):
    handle = await backend.launch("k1.1", sh("sleep 100 & sleep 100 & wait"))
    await wait_until(lambda: len(group_members(handle.pid)) == 3, what="three processes")
    members = group_members(handle.pid)
    record = await backend.kill(handle, grace=2)
    assert record is not None and record.killed and not record.timed_out
    assert record.signal == signal.SIGTERM
    assert [pid for pid in members if alive(pid)] == []
    assert backend.status(handle) == "exited"


async def test_kill_escalates_for_a_group_that_ignores_term(root: Path):
    async with Local(root, cgroups="off") as backend:
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


async def test_leftovers_are_killed_when_the_leader_exits(backend: Local):
    handle, record = await run(backend, "k3.1", sh("sleep 100 & echo $!"))
    left_behind = int(await backend.read_log(handle, "stdout", 0, 100))
    assert record.returncode == 0
    assert not alive(left_behind)  # gone by the time the record exists


async def test_kill_reaches_a_process_that_left_the_group_through_the_cgroup(
    backend: Local,
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
    assert handle.cgroup is not None and cgroup_done(handle.cgroup)


async def test_what_escaped_the_group_dies_with_the_leader(backend: Local):
    if not backend.cgroups.kill:
        pytest.skip(f"no cgroup.kill here: {backend.cgroups}")
    handle, record = await run(backend, "k5.1", sh("setsid sleep 100 & echo $!"))
    assert record.returncode == 0
    escaped = int(await backend.read_log(handle, "stdout", 0, 100))
    assert not alive(escaped)  # gone by the time the record exists
    assert handle.cgroup is not None and cgroup_done(handle.cgroup)


async def test_program_runs_in_its_cgroup_which_is_empty_afterwards(backend: Local):
    if not backend.cgroups.kill:
        pytest.skip(f"no cgroup.kill here: {backend.cgroups}")
    handle, _ = await run(backend, "c1.1", sh("cat /proc/self/cgroup"))
    assert handle.cgroup is not None and handle.cgroup_note is None
    lines = (await backend.read_log(handle, "stdout", 0, 4096)).decode().splitlines()
    v2_path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    assert handle.cgroup.endswith(v2_path)
    assert cgroup_done(handle.cgroup)
    # Another program runs in a cgroup of its own (the shared chaperone reuses empty ones).
    again, _ = await run(backend, "c2.1", sh("cat /proc/self/cgroup"))
    assert again.cgroup is not None and cgroup_done(again.cgroup)


async def test_memory_limit_kills_a_program_that_allocates_too_much(backend: Local):
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


async def test_pids_limit_stops_forks(backend: Local):
    if backend.cgroups.pids is None:
        pytest.skip(f"no writable pids cgroup here: {backend.cgroups}")
    spec = sh("for i in 1 2 3 4 5 6; do sleep 5 & done; wait", pids_limit=4, timeout=10)
    handle, _ = await run(backend, "m3.1", spec)
    stderr = await backend.read_log(handle, "stderr", 0, 4096)
    assert b"fork" in stderr.lower(), stderr


async def test_limits_without_cgroups_are_noted(root: Path):
    async with Local(root, cgroups="off") as backend:
        assert backend.cgroups.layout == "off"
        handle, record = await run(backend, "m4.1", sh("true", memory_limit=10**9, pids_limit=9))
    assert record.returncode == 0
    assert handle.cgroup is None
    assert handle.cgroup_note is not None
    assert "memory_limit not enforced" in handle.cgroup_note
    assert "pids_limit not enforced" in handle.cgroup_note


async def test_flood_of_output_is_spooled_to_the_file(backend: Local):
    size = 50_000_000
    handle, record = await run(
        backend, "f1.1", LaunchSpec(argv=("head", "-c", str(size), "/dev/zero"))
    )
    assert record.returncode == 0
    assert record.stdout_size == size == len(read_bytes(backend.log_path(handle, "stdout")))
    assert await backend.read_log(handle, "stdout", size - 3, 10) == b"\0\0\0"


# idempotence, reattach, survival --------------------------------------------------------


async def test_launch_is_idempotent_by_key(backend: Local, tmp_path: Path):
    ledger = tmp_path / "ledger"
    spec = sh(f"echo ran >> {ledger}; sleep 0.2")
    first = await backend.launch("i1.1", spec)
    again = await backend.launch("i1.1", spec)
    assert again == first
    record = await backend.wait(again)
    assert record.returncode == 0
    assert await backend.launch("i1.1", spec) == first  # also once it has ended
    assert ledger.read_text() == "ran\n"


async def test_concurrent_launches_of_one_key_run_it_once(backend: Local, tmp_path: Path):
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
    async with Local(root) as one, Local(root, chaperone="own") as two:
        handles = []

        async def launch(backend: Local) -> None:
            handles.append(await backend.launch("i3.1", spec))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(launch, one)
            nursery.start_soon(launch, two)
        assert handles[0] == handles[1]
        await one.wait(handles[0])
    assert ledger.read_text() == "ran\n"


async def test_a_new_backend_reattaches_by_key(root: Path):
    async with Local(root) as first:
        launched = await first.launch("r1.1", sh("sleep 0.5; echo finished; exit 7"))
    async with Local(root) as second:  # as after a restart of the runtime
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
from corra.backends.local import LocalBackend
from corra.processes._backend import EffectKey, LaunchRequest

async def main():
    async with LocalBackend(sys.argv[1], chaperone=sys.argv[2]) as backend:
        handles = []
        for key, script in json.loads(sys.argv[3]).items():
            request = LaunchRequest(EffectKey.parse(key), ("sh", "-c", script))
            handle = await backend.launch(request)
            handles.append(attrs.asdict(handle))
        print(json.dumps(handles), flush=True)
        await trio.sleep(60)

trio.run(main)
"""


async def launch_and_die(root: Path, kind: str, scripts: dict[str, str]) -> list[Handle]:
    """Launch ``scripts`` by key from another process, which is then SIGKILLed (a runtime that
    crashed); their handles."""
    launcher = await trio.to_thread.run_sync(
        lambda: subprocess.Popen(
            [PYTHON, "-c", LAUNCHER, str(root), kind, json.dumps(scripts)],
            stdout=subprocess.PIPE,
            text=True,
        )
    )
    try:
        line = await trio.to_thread.run_sync(launcher.stdout.readline)  # type: ignore[union-attr]
    finally:
        launcher.kill()
        await trio.to_thread.run_sync(launcher.wait)
        launcher.stdout.close()  # type: ignore[union-attr]
    return [Handle(**handle) for handle in json.loads(line)]


async def test_the_program_survives_the_death_of_its_launcher(root: Path, kind: str):
    (launched,) = await launch_and_die(root, kind, {"s1.1": "sleep 1; echo done"})
    assert launched.shared == (kind == "shared")
    async with Local(root, chaperone=kind) as backend:  # type: ignore[arg-type]
        assert backend.status(launched) == "running"
        assert alive(launched.pid)  # type: ignore[arg-type]
        record = await backend.wait(launched)
        assert record.returncode == 0
        assert await backend.read_log(launched, "stdout", 0, 100) == b"done\n"


async def test_lost_when_chaperone_and_program_are_killed(backend: Local):
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
    async with Local(root, chaperone="own") as first:
        if not first.cgroups.kill:
            pytest.skip(f"no cgroup.kill here: {first.cgroups}")
        lost = await first.launch("l4.1", sh("sleep 100"))
        running = await first.launch("l5.1", sh("sleep 100"))
        os.kill(lost.chaperone_pid, signal.SIGKILL)
        os.killpg(lost.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await wait_until(lambda: first.status(lost) == "lost")
        await wait_until(lambda: not group_members(lost.pid))  # type: ignore[arg-type]
    assert exists(lost.cgroup)  # type: ignore[arg-type]
    async with Local(root) as second:
        await run(second, "l6.1", sh("true"))
        assert not exists(lost.cgroup)  # type: ignore[arg-type]
        assert exists(running.cgroup)  # type: ignore[arg-type]
        await second.kill(running, grace=0)


async def test_kill_without_chaperone_kills_the_group_itself(backend: Local):
    handle = await backend.launch("l2.1", sh("trap '' TERM; sleep 100 & sleep 100 & wait"))
    await wait_until(lambda: len(group_members(handle.pid)) == 3, what="three processes")
    members = group_members(handle.pid)
    os.kill(handle.chaperone_pid, signal.SIGKILL)
    await wait_until(lambda: backend.status(handle) == "lost")
    started = time.monotonic()
    assert await backend.kill(handle, grace=0.3) is None
    assert 0.25 <= time.monotonic() - started < 3
    assert [pid for pid in members if alive(pid)] == []


async def test_pid_reuse_is_not_taken_for_the_chaperone(backend: Local):
    handle, _ = await run(backend, "l3.1", sh("true"))
    impostor = attrs.evolve(handle, chaperone_pid=os.getpid())  # alive, but started elsewhen
    unlink(Path(handle.run_dir, "exit.json"))
    assert backend.status(impostor) == "lost"
    with pytest.raises(ProgramLost):
        await backend.wait(impostor)


# the shared chaperone -------------------------------------------------------------------


def stat_of(pid: int) -> tuple[int, int, int]:
    """(parent, process group, session) of ``pid``."""
    fields = stat_fields(pid)
    return int(fields[1]), int(fields[2]), int(fields[3])


async def test_one_shared_chaperone_runs_the_programs_of_a_root(root: Path):
    async with Local(root) as backend:
        one = await backend.launch("h1.1", sh("sleep 0.3"))
        two, _ = await run(backend, "h2.1", sh("echo two"))
        daemon = daemon_of(root)
        assert daemon is not None
        assert one.shared and two.shared
        assert (one.chaperone_pid, one.chaperone_start) == (daemon["pid"], daemon["start"])
        assert (two.chaperone_pid, two.chaperone_start) == (daemon["pid"], daemon["start"])
        # Its own children, in its session (not ours), each leading a group of its own.
        assert stat_of(one.pid) == (daemon["pid"], one.pid, daemon["pid"])  # type: ignore[arg-type]
        assert stat_of(daemon["pid"])[2] == daemon["pid"] != os.getsid(0)
        await backend.wait(one)
    # What a run leaves on disk: five entries, the claim naming the chaperone and the program.
    assert {path.name for path in Path(two.run_dir).iterdir()} == {
        "chaperone.pid",
        "work",
        "stdout",
        "stderr",
        "exit.json",
    }
    claim, program = _rundir.read_claim(read_bytes(Path(two.run_dir, "chaperone.pid")))
    assert claim == {"pid": daemon["pid"], "start": daemon["start"], "shared": True}
    assert program["pid"] == two.pid and program["started_at"] == two.started_at
    assert program["spec"]["argv"] == ["sh", "-c", "echo two"]
    env = json.loads(read_bytes(root / program["spec"]["env_base"]))
    assert env["PATH"] == os.environ["PATH"]


async def test_a_new_backend_reattaches_to_the_shared_chaperone_after_a_crash(root: Path):
    scripts = {"a.1": "sleep 0.8; exit 3", "b.1": "sleep 0.4; echo b", "c.1": "exit 5"}
    handles = await launch_and_die(root, "shared", scripts)
    daemon = daemon_of(root)
    assert daemon is not None
    assert {(h.chaperone_pid, h.chaperone_start) for h in handles} == {
        (daemon["pid"], daemon["start"])
    }
    async with Local(root) as backend:
        found = [await trio.to_thread.run_sync(backend.find, h.key) for h in handles]
        assert found == handles
        records = [await backend.wait(handle) for handle in handles]
        assert [record.returncode for record in records] == [3, 0, 5]
        assert await backend.read_log(handles[1], "stdout", 0, 100) == b"b\n"
        assert backend._daemon is not None and backend._daemon.pid == daemon["pid"]
        # launching again finds the first launch, also across runtimes
        assert await backend.launch("a.1", sh("exit 99")) == handles[0]


async def test_kill_of_a_program_another_runtime_launched(root: Path, kind: str):
    (handle,) = await launch_and_die(root, kind, {"o.1": "trap '' TERM; sleep 30 & wait"})
    async with Local(root, chaperone=kind) as backend:  # type: ignore[arg-type]
        await wait_until(lambda: len(group_members(handle.pid)) == 2)  # type: ignore[arg-type]
        record = await backend.kill(handle, grace=0.2)
    assert record is not None and record.killed and record.signal == signal.SIGKILL


async def test_a_killed_shared_chaperone_loses_its_programs_and_kill_ends_them(root: Path):
    async with Local(root) as backend:
        handles = [
            await backend.launch(f"x{i}.1", sh("sleep 100 & sleep 100 & wait")) for i in range(3)
        ]
        await wait_until(
            lambda: all(len(group_members(h.pid)) == 3 for h in handles),  # type: ignore[arg-type]
            what="three processes each",
        )
        members = [pid for h in handles for pid in group_members(h.pid)]  # type: ignore[arg-type]
        os.kill(handles[0].chaperone_pid, signal.SIGKILL)
        for handle in handles:
            with pytest.raises(ProgramLost, match=handle.key):
                await backend.wait(handle)
            assert backend.status(handle) == "lost"
            assert await backend.kill(handle, grace=0.2) is None
        assert [pid for pid in members if alive(pid)] == []
        for handle in handles:
            assert handle.cgroup is None or not exists(handle.cgroup)
        # A new chaperone takes the root over; the lost keys stay lost (nothing runs twice).
        handle, record = await run(backend, "x9.1", sh("exit 4"))
        assert record.returncode == 4 and handle.chaperone_pid != handles[0].chaperone_pid
        assert await backend.launch("x0.1", sh("true")) == handles[0]
        if backend.cgroups.unified is not None:  # nor are the dead one's spare cgroups left
            dead = f".pool-{handles[0].chaperone_pid}.{handles[0].chaperone_start}-"
            assert not [n for n in os.listdir(backend.cgroups.unified) if n.startswith(dead)]


RACER = """
import json, os, sys, time
import trio
from corra.backends.local import LocalBackend
from corra.processes._backend import EffectKey, LaunchRequest

root, ledger, go = sys.argv[1:4]

async def main():
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    async with LocalBackend(root) as backend:
        handles = []

        async def one(key):
            argv = ("sh", "-c", f"echo {key} >> {ledger}")
            handles.append(await backend.launch(LaunchRequest(EffectKey.parse(key), argv)))

        async with trio.open_nursery() as nursery:
            for number in range(8):
                nursery.start_soon(one, f"r{number}.1")
        for handle in handles:
            await backend.wait(handle)
    print(json.dumps(sorted({(h.chaperone_pid, h.chaperone_start) for h in handles})))

trio.run(main)
"""


async def test_backends_racing_to_start_the_shared_chaperone_start_one(root: Path, tmp_path: Path):
    ledger, go = tmp_path / "ledger", tmp_path / "go"

    def race() -> list[str]:
        racers = [
            subprocess.Popen(
                [PYTHON, "-c", RACER, str(root), str(ledger), str(go)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        try:
            for racer in racers:
                assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
            go.touch()  # all at once
            return [racer.communicate(timeout=60)[0] for racer in racers]
        finally:
            for racer in racers:
                racer.kill()
                racer.wait()

    outputs = await trio.to_thread.run_sync(race)
    chaperones = {json.dumps(json.loads(output)) for output in outputs}
    assert len(chaperones) == 1, chaperones  # every racer used the same one
    assert len(json.loads(outputs[0])) == 1
    assert sorted(ledger.read_text().split()) == sorted(f"r{n}.1" for n in range(8))


async def test_the_shared_chaperone_leaves_once_idle(root: Path, quick_idle_exit: float):
    async with Local(root) as backend:
        handle = await backend.launch("q1.1", sh("sleep 1"))
        daemon = daemon_of(root)
        assert daemon is not None
        unified = backend.cgroups.unified
    # No connection, but a program: it stays.
    await trio.sleep(quick_idle_exit + 0.2)
    assert daemon_of(root) == daemon
    await wait_until(lambda: daemon_of(root) is None, within=10, what="the chaperone to leave")
    assert exists(Path(handle.run_dir, "exit.json"))
    hidden = {path.name for path in root.iterdir() if path.name.startswith(".")}
    assert ".chaperone.pid" in hidden  # flocked by whoever serves; never removed, never raced for
    assert ".chaperone.sock" not in hidden
    assert not [name for name in hidden if name.startswith(".spares-")]
    if unified is not None:  # nor the cgroups it kept for reuse
        pool = f".pool-{daemon['pid']}.{daemon['start']}-"
        assert not [name for name in os.listdir(unified) if name.startswith(pool)]
    # The next backend starts a new one.
    async with Local(root) as backend:
        again, record = await run(backend, "q2.1", sh("true"))
    assert record.returncode == 0 and again.chaperone_pid != handle.chaperone_pid


async def test_timeouts_and_kills_hold_while_no_runtime_is_connected(root: Path):
    async with Local(root) as backend:
        timed = await backend.launch("n1.1", LaunchSpec(argv=("sleep", "30"), timeout=0.5))
        stubborn = await backend.launch(
            "n2.1", sh("trap '' TERM; echo ready; sleep 30 & wait", kill_grace=30)
        )
        await wait_until(lambda: Path(stubborn.run_dir, "stdout").stat().st_size > 0)
        with trio.move_on_after(0.2):  # asked to kill, then the runtime goes away
            await backend.kill(stubborn, grace=0.6)
    assert not exists(Path(timed.run_dir, "exit.json"))
    assert not exists(Path(stubborn.run_dir, "exit.json"))
    await wait_until(
        lambda: (
            exists(Path(timed.run_dir, "exit.json")) and exists(Path(stubborn.run_dir, "exit.json"))
        ),
        what="the exit records",
    )
    async with Local(root) as backend:
        timed_out = await backend.wait(timed)
        killed = await backend.wait(stubborn)
    assert timed_out.timed_out and timed_out.signal == signal.SIGTERM
    assert killed.killed and killed.signal == signal.SIGKILL


async def test_a_root_too_long_for_a_socket_address(tmp_path: Path):
    root = tmp_path / ("x" * 60) / ("y" * 60)
    assert len(str(root / ".chaperone.sock")) > 108
    async with Local(root) as backend:
        _, record = await run(backend, "long.1", sh("exit 6"))
    assert record.returncode == 6


# launch errors --------------------------------------------------------------------------


async def test_exec_failure_is_reported(backend: Local):
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


async def test_not_executable_is_reported(backend: Local, tmp_path: Path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(LaunchFailed, match=r"Permission denied: '.*script'"):
        await backend.launch("e2.1", LaunchSpec(argv=(str(script),)))


async def test_missing_cwd_claims_nothing(backend: Local, tmp_path: Path):
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
    # (checked once, in the spec: the backend takes what the process actor built from it)
    arguments = {"argv": ("true",), **options}
    with pytest.raises(ConfigError, match=f"^{field}"):
        ProcessSpec(**arguments)


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "x" * 201, 7])
async def test_invalid_keys_are_refused(backend: Local, key: object):
    with pytest.raises(ConfigError, match=r"^key"):
        await backend.launch(key, LaunchSpec(argv=("true",)))  # type: ignore[arg-type]


def test_invalid_backend_options(tmp_path: Path):
    with pytest.raises(ConfigError, match="max_running"):
        LocalBackend(tmp_path, max_running=0)
    with pytest.raises(ConfigError, match="cgroups"):
        LocalBackend(tmp_path, cgroups="on")  # type: ignore[arg-type]


async def test_corrupt_exit_record_is_a_backend_error(backend: Local):
    handle, _ = await run(backend, "e4.1", sh("true"))
    write_text(Path(handle.run_dir, "exit.json"), '{"returncode": 0}')
    with pytest.raises(BackendError, match=r"exit\.json"):
        backend.exit_record(handle)


# waiting --------------------------------------------------------------------------------


async def test_wait_is_cancellable_and_can_be_resumed(backend: Local):
    handle = await backend.launch("w1.1", sh("sleep 0.4; exit 5"))
    with trio.move_on_after(0.05) as scope:
        await backend.wait(handle)
    assert scope.cancelled_caught
    assert backend.status(handle) == "running"
    assert (await backend.wait(handle)).returncode == 5


async def test_wait_without_pidfd_polls(root: Path, monkeypatch: pytest.MonkeyPatch):
    async with Local(root, chaperone="own") as backend:
        handle = await backend.launch("w2.1", sh("sleep 0.2; exit 4"))
        backend._links.clear()  # as if launched by another runtime
        monkeypatch.setattr(_rundirs, "pidfd", lambda pid: None)
        assert (await backend.wait(handle)).returncode == 4


async def test_an_own_chaperone_per_program(root: Path):
    async with Local(root, chaperone="own") as backend:
        one, record = await run(backend, "d1.1", sh("echo own"))
        two, _ = await run(backend, "d2.1", sh("true"))
        assert backend._daemon is None
    assert not one.shared and one.chaperone_pid != two.chaperone_pid
    assert record.returncode == 0
    assert read_bytes(Path(one.run_dir, "stdout")) == b"own\n"
    assert json.loads(read_bytes(Path(one.run_dir, "spec.json")))["argv"][0] == "sh"
    assert {path.name for path in Path(one.run_dir).iterdir()} == {
        "chaperone.pid",
        "program.pid",
        "spec.json",
        "work",
        "stdout",
        "stderr",
        "exit.json",
    }


# slots ----------------------------------------------------------------------------------


async def test_slots_bound_real_programs_in_submission_order(root: Path):
    async with Local(root, max_running=2) as backend:
        records: dict[int, ExitRecord] = {}
        acquired: list[int] = []

        async def one(number: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            key = f"s{number}.1"
            task_status.started()
            await backend.acquire_slot(key)
            acquired.append(number)
            assert backend.slot_statistics().running <= 2
            try:
                records[number] = await backend.wait(await backend.launch(key, sh("sleep 0.4")))
            finally:
                backend.release_slot(key)

        async with trio.open_nursery() as nursery:
            for number in range(5):
                await nursery.start(one, number)
    # Granted in submission order; two slots freed in one instant are granted together and
    # trio may run their two tasks in either order (the exact FIFO is tested in virtual time).
    assert [sorted(acquired[:2]), sorted(acquired[2:4]), acquired[4:]] == [[0, 1], [2, 3], [4]]
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
    backend = Local(tmp_path, max_running=2)
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
        assert backend.slot_statistics() == SlotStatistics(limit=2, running=2, waiting=3)
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
    backend = Local(tmp_path, max_running=1)
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
    before = {name: value for name, value in attrs.asdict(handle).items() if name != "shared"}
    assert Handle(**before) == handle  # written before there were shared chaperones: own


async def test_try_acquire_slot_takes_a_free_slot_only_when_nobody_queues(tmp_path):
    async with Local(tmp_path, max_running=1) as backend:
        assert backend.try_acquire_slot("a")
        assert backend.try_acquire_slot("a")  # held already
        assert not backend.try_acquire_slot("b")  # full
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.acquire_slot, "c")
            await trio.testing.wait_all_tasks_blocked()
            backend.release_slot("a")  # goes to the queued "c"
            await trio.testing.wait_all_tasks_blocked()
        assert not backend.try_acquire_slot("b")
        backend.release_slot("c")
        assert backend.try_acquire_slot("b")


async def test_wait_and_kill_give_the_exit_records_result(backend: Local):
    # What a process actor gets (`Backend.wait`, `Backend.kill`): the record, as a Result.
    handle = await backend.launch("rs1.1", sh("echo out; exit 3"))
    result = await backend.backend.wait(handle)
    assert result == result_of(backend.exit_record(handle))
    assert (result.returncode, result.stdout_bytes) == (3, 4)
    handle = await backend.launch("rs2.1", sh("sleep 100"))
    await wait_until(lambda: backend.status(handle) == "running")
    killed = await backend.backend.kill(handle, 0.5)
    assert killed is not None and killed.killed
    assert killed == result_of(backend.exit_record(handle))


async def test_an_own_chaperones_pipe_is_a_checkpoint_even_with_a_line_waiting():
    # trio's rule: a function is always a checkpoint, or never (the review of issue 12).
    read_fd, write_fd = os.pipe()
    link = _clients._Link(read_fd)
    try:
        os.write(write_fd, b'{"status": "started"}\n')
        with trio.CancelScope() as scope:
            scope.cancel()
            await link.receive()
        assert scope.cancelled_caught
        assert await link.receive() == {"status": "started"}  # nothing was lost
    finally:
        link.close()
        os.close(write_fd)
