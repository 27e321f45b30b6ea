"""The runtime root: ordered start and stop, no task left behind, errors as themselves."""

from __future__ import annotations

import pytest
import trio
from conftest import Recorder, worker

import corra


def tasks_below(task: trio.lowlevel.Task) -> int:
    return sum(1 + tasks_below(child) for n in task.child_nurseries for child in n.child_tasks)


async def test_leaving_the_block_stops_everything_in_reverse_order():
    log = Recorder()
    me = trio.lowlevel.current_task()
    async with corra.open_runtime() as rt:
        await rt.spawn_supervisor(
            corra.SupervisorSpec(children=[worker("a", log), worker("b", log)]), name="s1"
        )
        await rt.spawn(lambda: corra_worker("c", log), name="c")
        inner = corra.SupervisorSpec(children=[worker("d", log), worker("e", log)])
        await rt.spawn_supervisor(
            corra.SupervisorSpec(children=[corra.ChildSpec(id="inner", start=inner)]), name="s2"
        )
        assert tasks_below(me) > 5
    assert log.of("start") == ["a", "b", "c", "d", "e"]
    assert log.of("stop") == ["e", "d", "c", "b", "a"]
    assert tasks_below(me) == 0


def corra_worker(name: str, log: Recorder) -> corra.Actor:
    from conftest import Worker

    return Worker(name, log)


async def test_an_error_in_the_body_comes_out_as_itself():
    log = Recorder()
    with pytest.raises(KeyError, match="mine"):
        async with corra.open_runtime() as rt:
            await rt.root.start_child(worker("a", log))
            raise KeyError("mine")
    assert log.of("stop") == ["a"]


async def test_root_failure_cancels_the_block_and_raises_the_error_itself(autojump_clock):
    log = Recorder()
    reached_end = False
    with pytest.raises(corra.RestartIntensityExceeded) as info:
        async with corra.open_runtime(flags=corra.SupervisorFlags(intensity=0)) as rt:
            ref = await rt.root.start_child(worker("a", log))
            ref.send_nowait("crash")
            await trio.sleep(10)
            reached_end = True
    assert not reached_end
    assert trio.current_time() == 0
    assert type(info.value) is corra.RestartIntensityExceeded
    assert info.value.path == "/"


async def test_cancelling_the_runtime_from_outside_stops_everything():
    log = Recorder()
    me = trio.lowlevel.current_task()
    with trio.move_on_after(0.05):
        async with corra.open_runtime() as rt:
            await rt.root.start_child(worker("a", log))
            await trio.sleep_forever()
    assert log.of("stop") == ["a"]
    assert tasks_below(me) == 0


async def test_spawn_names_and_lookup():
    class Echo(corra.Actor):
        async def handle(self, msg):
            return msg

    async with corra.open_runtime() as rt:
        a = await rt.spawn(Echo)
        b = await rt.spawn(Echo)
        assert a.path != b.path and a.path.startswith("/echo-")
        assert rt.lookup(a.path) == a
        assert rt.lookup("/nope") is None
        assert rt.root.path == "/"
        with pytest.raises(corra.ConfigError, match="use spawn_supervisor"):
            await rt.spawn(corra.SupervisorSpec())  # type: ignore[arg-type]
        with pytest.raises(corra.ConfigError, match=r"ChildSpec.id: got 'a/b'"):
            await rt.spawn(Echo, name="a/b")


async def test_statistics_and_walk_are_sync_snapshots():
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(corra.SupervisorSpec(children=[worker("a", log)]), name="s")
        stats = sup.statistics()
        assert (stats.path, stats.status, stats.children, stats.active) == ("/s", "running", 1, 1)
        nodes = list(rt.walk())
        assert [(n.path, n.type, n.depth) for n in nodes] == [
            ("/", "supervisor", 0),
            ("/s", "supervisor", 1),
            ("/s/a", "worker", 2),
        ]
