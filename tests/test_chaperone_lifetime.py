"""How long chaperones live, with LocalBackend and real programs (issue 11, items 1 and 20):
a long timeout or grace never ends one early, a removed state dir ends it soon."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import trio
from _local import Local
from _local import Spec as LaunchSpec
from test_local_backend import _cleanup, alive, daemon_of, group_members, sh, stat_fields

from corra.chaperone import _proc

THIRTY_DAYS = 2_592_000.0
#: The most the edge lets a duration be (MAX_SECONDS, ten years).
TEN_YEARS = 315_360_000.0
#: How soon a chaperone is gone once its root is: it looks every second, and its programs
#: (here: ones that SIGTERM ends) get at most 5 s of grace.
LEAVES_WITHIN = 10.0
#: Long enough for a round or two of a chaperone's loop, which waits at most a second.
A_ROUND = 1.2


@pytest.fixture
def root(tmp_path: Path):
    path = tmp_path / "state" / "runs"
    yield path
    _cleanup(path)


async def wait_until(condition, within: float, what: str) -> None:
    with trio.move_on_after(within):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {within} s waiting for {what}")


def same_process(recorded: dict) -> bool:
    return alive(recorded["pid"]) and int(stat_fields(recorded["pid"])[19]) == recorded["start"]


def pool_cgroups(parent: str, daemon: dict) -> list[str]:
    prefix = f".pool-{daemon['pid']}.{daemon['start']}-"
    return [name for name in os.listdir(parent) if name.startswith(prefix)]


async def test_long_timeout_does_not_kill_shared_chaperone(root: Path):
    """30 days of timeout and of grace: more milliseconds than epoll takes (a C int)."""
    async with Local(root) as backend:
        other = await backend.launch("other.1", sh("sleep 1000"))
        long = await backend.launch(
            "long.1",
            LaunchSpec(argv=("sleep", "1000"), timeout=THIRTY_DAYS, kill_grace=THIRTY_DAYS),
        )
        daemon = daemon_of(root)
        assert daemon is not None
        await trio.sleep(A_ROUND)  # a round or two of its loop
        assert same_process(daemon)
        assert backend.status(long) == "running" and alive(long.pid)  # type: ignore[arg-type]
        record = await backend.kill(long)  # with the spec's 30-day grace: SIGTERM does it
        assert record is not None and record.killed and record.signal == signal.SIGTERM
        await trio.sleep(A_ROUND)  # its SIGKILL is due in 30 days
        assert same_process(daemon)
        assert backend.status(other) == "running" and alive(other.pid)  # type: ignore[arg-type]
        record = await backend.kill(other, grace=0)
        assert record is not None and record.killed and record.signal == signal.SIGKILL
        assert same_process(daemon)


async def test_long_timeout_and_huge_grace_do_not_kill_an_own_chaperone(root: Path):
    async with Local(root, chaperone="own") as backend:
        other = await backend.launch("other.1", sh("sleep 1000"))
        long = await backend.launch(
            "long.1", LaunchSpec(argv=("sleep", "1000"), timeout=THIRTY_DAYS, kill_grace=TEN_YEARS)
        )
        await trio.sleep(A_ROUND)
        assert alive(long.chaperone_pid) and alive(long.pid)  # type: ignore[arg-type]
        record = await backend.kill(long)
        assert record is not None and record.killed and record.signal == signal.SIGTERM
        assert backend.status(other) == "running" and alive(other.pid)  # type: ignore[arg-type]
        record = await backend.kill(other, grace=0)
        assert record is not None and record.killed and record.signal == signal.SIGKILL


def remove_tree(path: Path) -> None:
    """``rm -rf``, again while the chaperone still makes files in it."""
    while path.exists():
        shutil.rmtree(path, ignore_errors=True)


def kill_leftovers(recorded: list[dict]) -> None:
    """After a failure: the processes (groups) the test started, if still theirs."""
    for each in recorded:
        with contextlib.suppress(OSError):
            if same_process(each):
                (os.killpg if each.get("group") else os.kill)(each["pid"], signal.SIGKILL)


async def test_a_shared_chaperone_whose_state_dir_is_removed_kills_its_programs_and_leaves(
    root: Path,
):
    leftovers: list[dict] = []
    try:
        async with Local(root) as backend:
            handle = await backend.launch("gone.1", sh("sleep 1000 & sleep 1000 & wait"))
            daemon = daemon_of(root)
            assert daemon is not None
            leftovers += [
                daemon,
                {"pid": handle.pid, "start": _proc.process_start(handle.pid), "group": True},
            ]
            await wait_until(lambda: len(group_members(handle.pid)) == 3, 10, "the program")  # type: ignore[arg-type]
            unified = backend.cgroups.unified
            if unified is not None:
                assert pool_cgroups(unified, daemon)  # the program's, at least
            await trio.to_thread.run_sync(remove_tree, root.parent)
            await wait_until(
                lambda: not same_process(daemon), LEAVES_WITHIN, "the chaperone to leave"
            )
            assert group_members(handle.pid) == []  # type: ignore[arg-type]
            # The runtime connected is told, with the exit record nobody could write.
            record = await backend.wait(handle)
            assert record.killed and record.signal == signal.SIGTERM
            assert record.error is not None and "was removed" in record.error
    finally:
        kill_leftovers(leftovers)
    if unified is None:
        pytest.skip("no cgroup v2 hierarchy here: the chaperone's pool cgroups are not checked")
    assert pool_cgroups(unified, daemon) == []


async def test_an_own_chaperone_whose_run_dir_is_removed_kills_its_program_and_leaves(
    root: Path,
):
    leftovers: list[dict] = []
    try:
        async with Local(root, chaperone="own") as backend:
            handle = await backend.launch("gone.1", sh("sleep 1000 & sleep 1000 & wait"))
            own = {"pid": handle.chaperone_pid, "start": handle.chaperone_start}
            leftovers += [
                own,
                {"pid": handle.pid, "start": _proc.process_start(handle.pid), "group": True},
            ]
            await wait_until(lambda: len(group_members(handle.pid)) == 3, 10, "the program")  # type: ignore[arg-type]
            await trio.to_thread.run_sync(remove_tree, root.parent)
            await wait_until(lambda: not same_process(own), LEAVES_WITHIN, "the chaperone to go")
            assert group_members(handle.pid) == []  # type: ignore[arg-type]
            record = await backend.wait(handle)
            assert record.killed and record.error is not None and "was removed" in record.error
            assert handle.cgroup is None or not os.path.exists(handle.cgroup)
    finally:
        kill_leftovers(leftovers)
