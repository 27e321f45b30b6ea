"""Strategies, restart types, intensity, shutdown grace, dynamic children, backoff."""

from __future__ import annotations

import math

import pytest
import trio
from conftest import Recorder, ref_of, settle, worker

import corra


def spec(strategy: str, *children: corra.ChildSpec, intensity: int = 10, period: float = 5):
    flags = corra.SupervisorFlags(strategy=strategy, intensity=intensity, period=period)  # type: ignore[arg-type]
    return corra.SupervisorSpec(flags=flags, children=children)


async def three(rt: corra.Runtime, strategy: str, log: Recorder) -> corra.SupervisorRef:
    sup = await rt.spawn_supervisor(
        spec(strategy, worker("a", log), worker("b", log), worker("c", log)), name="sup"
    )
    assert log.of("start") == ["a", "b", "c"]
    log.clear()
    return sup


@pytest.mark.parametrize(
    ("strategy", "stopped", "started"),
    [
        ("one_for_one", ["b"], ["b"]),
        ("one_for_all", ["b", "c", "a"], ["a", "b", "c"]),
        ("rest_for_one", ["b", "c"], ["b", "c"]),
    ],
)
async def test_strategy_decides_who_restarts_and_in_which_order(strategy, stopped, started):
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await three(rt, strategy, log)
        before = {info.id: info.ref for info in sup.which_children()}
        ref_of(sup, "b").send_nowait("crash")
        await settle()
        # the crashed child stops first (it crashed), then the others in reverse start order
        assert log.of("stop") == stopped
        assert log.of("start") == started
        after = {info.id: info.ref for info in sup.which_children()}
        assert sorted(i for i in after if after[i] != before[i]) == sorted(started)
        assert all(info.status == "running" for info in sup.which_children())
        assert sup.statistics().restarts == len(started)


@pytest.mark.parametrize(
    ("restart", "after_crash", "after_exit"),
    [
        ("permanent", "running", "running"),
        ("transient", "running", "stopped"),
        ("temporary", None, None),
    ],
)
async def test_restart_types(restart, after_crash, after_exit):
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(spec("one_for_one"), name="sup")
        for how, expected in [("crash", after_crash), ("exit", after_exit)]:
            ref = await sup.start_child(worker(how, log, restart=restart))
            ref.send_nowait(how)
            await settle()
            infos = {info.id: info for info in sup.which_children()}
            if expected is None:
                assert how not in infos  # a temporary child's spec is removed when it exits
            else:
                assert infos[how].status == expected
                assert infos[how].restarts == (1 if expected == "running" else 0)


async def test_one_for_all_leaves_stopped_children_stopped_and_drops_temporary_ones():
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(
            spec(
                "one_for_all",
                worker("a", log),
                worker("t", log, restart="transient"),
                worker("tmp", log, restart="temporary"),
                worker("b", log),
            ),
            name="sup",
        )
        ref_of(sup, "t").send_nowait("exit")  # transient, normal exit: stays stopped
        await settle()
        log.clear()
        ref_of(sup, "b").send_nowait("crash")
        await settle()
        assert log.of("stop") == ["b", "a", "tmp"] or log.of("stop") == ["b", "tmp", "a"]
        assert log.of("start") == ["a", "b"]
        assert [(i.id, i.status) for i in sup.which_children()] == [
            ("a", "running"),
            ("t", "stopped"),
            ("b", "running"),
        ]


async def test_intensity_counts_restarts_in_a_sliding_window(autojump_clock):
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(
            spec("one_for_one", worker("w", log), intensity=2, period=5), name="sup"
        )
        # a crash every 3 s: never more than 2 restarts within 5 s
        for _ in range(6):
            ref_of(sup, "w").send_nowait("crash")
            await settle()
            await trio.sleep(3)
        assert sup.alive
        assert sup.which_children()[0].restarts == 6


async def test_intensity_escalates_through_two_levels(autojump_clock):
    log = Recorder()
    root_flags = corra.SupervisorFlags(intensity=1, period=100)
    with pytest.raises(corra.RestartIntensityExceeded) as info:
        async with corra.open_runtime(flags=root_flags) as rt:
            mid = await rt.spawn_supervisor(
                spec("one_for_one", worker("w", log), intensity=2, period=5), name="mid"
            )
            # mid allows 2 restarts in 5 s: the 3rd crash at t=2 makes it give up; the root
            # restarts mid (1 restart in 100 s allowed) and mid's 3rd crash again fails it.
            for round_ in range(2):
                for _ in range(3):
                    ref_of(mid, "w").send_nowait("crash")
                    await settle()
                    await trio.sleep(1)
                if round_ == 0:
                    mid = rt.lookup("/mid")  # type: ignore[assignment]
                    assert isinstance(mid, corra.SupervisorRef)
                    assert [n.restarts for n in rt.walk() if n.path == "/mid"] == [1]
            await trio.sleep_forever()
    # the root gave up when mid failed the second time, at t=2 of the second round
    assert trio.current_time() == 5
    assert info.value.path == "/"
    mid_failure = info.value.__cause__
    assert isinstance(mid_failure, corra.RestartIntensityExceeded)
    assert mid_failure.path == "/mid"
    assert isinstance(mid_failure.__cause__, RuntimeError)
    # every child was stopped before escalating
    assert len(log.of("stop")) == len(log.of("start"))


class Stubborn(corra.Actor):
    """Its handler ignores the graceful stop; its lifespan exit takes `cleanup` seconds."""

    def __init__(self, log: Recorder, cleanup: float = 0) -> None:
        self.log = log
        self.cleanup = cleanup

    def lifespan(self):
        import contextlib

        @contextlib.asynccontextmanager
        async def life():
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(self.cleanup)
                self.log("released", f"{trio.current_time():g}")

        return life()

    async def handle(self, msg):
        if msg == "busy":
            try:
                await trio.sleep(math.inf)
            except trio.Cancelled:
                self.log("cancelled", f"{trio.current_time():g}")
                raise
        return msg


@pytest.mark.parametrize(
    ("shutdown", "busy", "cleanup", "stopped_at", "cancelled"),
    [
        (5.0, True, 0, 5, True),  # ignores the stop: cancelled after its grace, not before
        (5.0, False, 0, 0, False),  # idle: stops at once
        (5.0, False, 2, 2, False),  # slow cleanup within the grace: not cancelled
        ("brutal_kill", True, 0, 0, True),
        (math.inf, False, 0, 0, False),
    ],
)
async def test_shutdown_grace(autojump_clock, shutdown, busy, cleanup, stopped_at, cancelled):
    log = Recorder()
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(
            lambda: Stubborn(log, cleanup), name="s", shutdown=shutdown, restart="permanent"
        )
        if busy:
            ref.send_nowait("busy")
            await settle()
        await rt.root.terminate_child("s")
        assert trio.current_time() == stopped_at
        assert log.of("released") == [f"{stopped_at:g}"]
        assert log.of("cancelled") == ([f"{stopped_at:g}"] if cancelled else [])
        assert rt.root.which_children()[0].status == "stopped"


async def test_dynamic_children():
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(spec("one_for_one"), name="dyn")
        a = await sup.start_child(worker("a", log))
        b = await sup.start_child(worker("b", log, restart="temporary"))
        assert a.path == "/dyn/a" and b.path == "/dyn/b"
        assert sup.count_children() == corra.ChildCounts(
            specs=2, active=2, supervisors=0, workers=2
        )
        with pytest.raises(corra.DuplicateChild, match="/dyn: a child with id 'a' exists"):
            await sup.start_child(worker("a", log))
        with pytest.raises(corra.ChildRunning):
            await sup.delete_child("a")
        with pytest.raises(corra.ChildRunning):
            await sup.restart_child("a")
        await sup.terminate_child("a")
        assert not a.alive
        assert next((i.id, i.status, i.ref) for i in sup.which_children()) == ("a", "stopped", None)
        a2 = await sup.restart_child("a")
        assert a2.alive and a2 != a
        await sup.terminate_child("b")  # temporary: its spec goes with it
        assert [i.id for i in sup.which_children()] == ["a"]
        await sup.terminate_child("a")
        await sup.delete_child("a")
        assert sup.which_children() == []
        with pytest.raises(corra.NoSuchChild, match="no child with id 'a'"):
            await sup.terminate_child("a")
        nested = await sup.start_child(
            corra.ChildSpec(id="inner", start=spec("one_for_one", worker("x", log)))
        )
        assert isinstance(nested, corra.SupervisorRef)
        assert sup.count_children() == corra.ChildCounts(
            specs=1, active=1, supervisors=1, workers=0
        )
        assert [n.path for n in rt.walk()] == ["/", "/dyn", "/dyn/inner", "/dyn/inner/x"]


class FailsToStart(corra.Actor):
    def lifespan(self):
        raise OSError("no such device")


async def test_a_child_that_fails_to_start_is_reported_and_not_kept():
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(spec("one_for_one"), name="sup")
        with pytest.raises(corra.ChildStartFailed, match="child 'f' failed to start") as info:
            await sup.start_child(corra.ChildSpec(id="f", start=FailsToStart))
        assert isinstance(info.value.__cause__, OSError)
        assert sup.which_children() == []
        # a static child that fails to start fails its supervisor's start
        log = Recorder()
        with pytest.raises(corra.ChildStartFailed) as info:
            await rt.spawn_supervisor(
                spec("one_for_one", worker("ok", log), corra.ChildSpec(id="f", start=FailsToStart)),
                name="bad",
            )
        assert log.of("start") == ["ok"] and log.of("stop") == ["ok"]
        assert [n.path for n in rt.walk()] == ["/", "/sup"]


async def test_backoff_delays_restarts_exponentially_up_to_a_cap(autojump_clock):
    log = Recorder()
    backoff = corra.Backoff(initial=1, factor=2, max=5, reset_after=60)
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(
            spec("one_for_one", worker("w", log, backoff=backoff), intensity=100, period=1000),
            name="sup",
        )
        log.clear()
        crashes = []
        for _ in range(5):
            crashes.append(trio.current_time())
            ref_of(sup, "w").send_nowait("crash")
            await settle()
            assert sup.which_children()[0].status == "restarting"
            while sup.which_children()[0].status != "running":
                await trio.sleep(0.25)
                await settle()
        starts = [float(e[2]) for e in log.events if e[0] == "start"]
        assert [start - crash for start, crash in zip(starts, crashes, strict=True)] == [
            1,
            2,
            4,
            5,
            5,
        ]
        # after staying up for reset_after seconds, the next crash waits the initial delay
        await trio.sleep(60)
        crash_at = trio.current_time()
        ref_of(sup, "w").send_nowait("crash")
        await settle()
        while sup.which_children()[0].status != "running":
            await trio.sleep(0.25)
            await settle()
        assert trio.current_time() - crash_at == 1


async def test_supervisor_serves_requests_while_a_restart_waits(autojump_clock):
    log = Recorder()
    backoff = corra.Backoff(initial=10, max=10)
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(
            spec("one_for_one", worker("w", log, backoff=backoff)), name="sup"
        )
        ref_of(sup, "w").send_nowait("crash")
        await settle()
        other = await sup.start_child(worker("other", log))
        assert trio.current_time() == 0 and other.alive
        # terminating a child that waits for its restart cancels the restart
        await sup.terminate_child("w")
        await trio.sleep(20)
        assert [(i.id, i.status) for i in sup.which_children()] == [
            ("w", "stopped"),
            ("other", "running"),
        ]


async def test_a_failing_restart_counts_toward_intensity():
    attempts: list[int] = []

    class FailsAfterFirst(corra.Actor):
        def lifespan(self):
            attempts.append(1)
            if len(attempts) > 1:
                raise OSError("cannot restart")
            return super().lifespan()

        async def handle(self, msg):
            raise RuntimeError("crash")

    with pytest.raises(corra.RestartIntensityExceeded):
        async with corra.open_runtime(flags=corra.SupervisorFlags(intensity=0)) as rt:
            sup = await rt.spawn_supervisor(
                spec("one_for_one", corra.ChildSpec(id="f", start=FailsAfterFirst), intensity=3),
                name="sup",
            )
            ref_of(sup, "f").send_nowait("go")
            await trio.sleep_forever()
    # the first start, then a restart and 3 failing retries: the 4th restart exceeds 3
    assert len(attempts) == 4


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_a_void_restart_retry_leaves_its_group_stopped_not_restarting(strategy):
    failures = [1]
    started: list[str] = []

    class A(corra.Actor):
        def lifespan(self):
            if started and failures:
                failures.pop()
                raise OSError("cannot start")
            started.append("a")
            return super().lifespan()

        async def handle(self, msg):
            raise RuntimeError("crash")

    class B(corra.Actor):
        async def handle(self, msg):
            return msg

    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(
            spec(strategy, corra.ChildSpec(id="a", start=A), corra.ChildSpec(id="b", start=B)),
            name="s",
        )

        async def terminate_a() -> None:
            await trio.lowlevel.checkpoint()
            await sup.terminate_child("a")  # lands between the failed restart and its retry

        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate_a)
            ref_of(sup, "a").send_nowait("crash")
        await settle()
        assert [(c.id, c.status) for c in sup.which_children()] == [
            ("a", "stopped"),
            ("b", "stopped"),
        ]


# -- start_child_nowait (rule 7) ------------------------------------------------------------


async def test_start_child_nowait_starts_without_a_round_trip_and_is_supervised():
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(spec("one_for_one"), name="sup")
        ref = sup.start_child_nowait(worker("a", log, restart="permanent"))
        assert log.of("start") == []  # it starts in its own task
        await settle()
        assert log.of("start") == ["a"] and ref.alive and ref_of(sup, "a") == ref
        ref.send_nowait("crash")
        await settle()
        assert log.of("start") == ["a", "a"] and sup.statistics().restarts == 1
        with pytest.raises(corra.DuplicateChild):
            sup.start_child_nowait(worker("a", log))
        with pytest.raises(corra.ConfigError, match="worker's ChildSpec"):
            sup.start_child_nowait(corra.ChildSpec(id="s", start=spec("one_for_one")))
        temp = sup.start_child_nowait(worker("t", log, restart="temporary"))
        await settle()
        temp.send_nowait("exit")  # a temporary child's exit is settled by the child itself
        await settle()
        assert [info.id for info in sup.which_children()] == ["a"]
        await rt.root.terminate_child("sup")
        with pytest.raises(corra.ActorStopped):
            sup.start_child_nowait(worker("b", log))


class Sleepy(corra.Actor):
    async def handle(self, msg: object) -> None:
        await trio.sleep(100)


async def test_start_child_nowait_refuses_while_the_supervisor_is_busy(autojump_clock):
    log = Recorder()
    async with corra.open_runtime() as rt:
        slow = corra.ChildSpec(id="slow", start=Sleepy, shutdown=5.0)
        sup = await rt.spawn_supervisor(spec("one_for_one", slow), name="sup")
        ref_of(sup, "slow").send_nowait("sleep")  # busy in a message for a while
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.terminate_child, "slow")  # waits for the grace
            await settle()
            with pytest.raises(trio.WouldBlock):
                sup.start_child_nowait(worker("b", log))
        assert trio.current_time() == 5
        ref = sup.start_child_nowait(worker("b", log))  # idle again
        await settle()
        assert ref.alive and log.of("start") == ["b"]


class CannotStart(corra.Actor):
    def __init__(self, log: Recorder) -> None:
        log("tried", "x")
        raise RuntimeError("cannot start")


@pytest.mark.parametrize("restart", ["temporary", "transient", "permanent"])
async def test_a_child_started_without_waiting_that_fails_to_start_exits_abnormally(restart):
    log = Recorder()
    async with corra.open_runtime() as rt:
        sup = await rt.spawn_supervisor(spec("one_for_one", intensity=2, period=60), name="sup")
        sup.start_child_nowait(
            corra.ChildSpec(id="x", start=lambda: CannotStart(log), restart=restart)  # type: ignore[arg-type]
        )
        await settle()
        if restart == "temporary":
            assert log.of("tried") == ["x"]  # removed, as at any exit of a temporary child
            assert sup.which_children() == [] and sup.alive
        else:
            # an abnormal exit: restarted (each failed restart is another exit, rule 5) until
            # the intensity is exceeded, and the supervisor gives up
            assert log.of("tried") == ["x"] * 3
            assert not sup.alive
