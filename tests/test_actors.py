"""Mailboxes, refs, send/send_nowait/call, lifespan, statistics."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing
from conftest import settle

import corra


class Slow(corra.Actor):
    """Takes one second per message, and records order and concurrency."""

    seen: list[object]
    active = 0
    most_active = 0

    def __init__(self) -> None:
        self.seen = []

    async def handle(self, msg):
        Slow.active += 1
        Slow.most_active = max(Slow.most_active, Slow.active)
        await trio.sleep(1)
        Slow.active -= 1
        self.seen.append(msg)
        return list(self.seen)


async def test_messages_are_handled_one_at_a_time_in_order(autojump_clock):
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Slow, name="slow", mailbox_capacity=10)
        for i in range(5):
            ref.send_nowait(i)
        assert await ref.call("last") == [0, 1, 2, 3, 4, "last"]
        assert trio.current_time() == 6
        assert Slow.most_active == 1
        stats = ref.statistics()
        assert stats.messages_handled == 6
        assert stats.mailbox_depth == 0
        assert stats.path == "/slow"


async def test_send_waits_while_the_mailbox_is_full(autojump_clock):
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Slow, name="slow", mailbox_capacity=2)
        await ref.send("a")  # taken at once by the actor
        await settle()
        await ref.send("b")
        await ref.send("c")
        assert ref.statistics().mailbox_depth == 2
        with pytest.raises(corra.MailboxFull, match="/slow: mailbox full"):
            ref.send_nowait("d")
        await ref.send("d")  # waits until "a" is done and "b" is taken
        assert trio.current_time() == 1
        assert ref.statistics().senders_waiting == 0


async def test_send_cancelled_while_waiting_sends_nothing(autojump_clock):
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Slow, name="slow", mailbox_capacity=1)
        await ref.send("a")
        await settle()
        await ref.send("b")
        with trio.move_on_after(0.5):
            await ref.send("never")
        assert await ref.call("c") == ["a", "b", "c"]


class Crashy(corra.Actor):
    async def handle(self, msg):
        if msg == "crash":
            raise ValueError("bad message")
        return msg * 2


async def test_call_on_a_crashing_actor_raises_call_failed_with_the_cause():
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Crashy, name="crashy")
        assert await ref.call(21) == 42
        with pytest.raises(corra.CallFailed, match=r"/crashy: handler raised ValueError") as info:
            await ref.call("crash")
        assert isinstance(info.value.__cause__, ValueError)
        assert info.value.path == "/crashy"
        # temporary (spawn's default): not restarted, and the ref now raises at once
        await settle()
        assert not ref.alive
        with pytest.raises(corra.ActorStopped):
            await ref.call(1)
        assert rt.lookup("/crashy") is None


async def test_ref_to_a_stopped_actor_raises_and_never_hangs():
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Crashy, name="c")
        await rt.root.terminate_child("c")
        with trio.fail_after(1):
            with pytest.raises(corra.ActorStopped, match="/c: not running"):
                await ref.call(1)
            with pytest.raises(corra.ActorStopped):
                await ref.send(1)
            with pytest.raises(corra.ActorStopped):
                ref.send_nowait(1)


async def test_calls_queued_behind_a_crash_fail_with_actor_stopped(autojump_clock):
    results: list[object] = []

    async def caller(ref: corra.Ref, msg: object) -> None:
        try:
            results.append(await ref.call(msg))
        except corra.CorraError as exc:
            results.append(type(exc).__name__)

    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Crashy, name="c", mailbox_capacity=1)
        async with trio.open_nursery() as nursery:
            for msg in ["crash", 1, 2, 3]:
                nursery.start_soon(caller, ref, msg)
                await settle()
    # "crash" fails the call; 1 sat in the mailbox; 2 and 3 waited on a full mailbox
    assert results == ["CallFailed", "ActorStopped", "ActorStopped", "ActorStopped"]


class Stopper(corra.Actor):
    async def handle(self, msg):
        self.stop()
        return "done"


async def test_stop_is_a_normal_exit_after_the_current_message():
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Stopper, name="s", restart="transient")
        assert await ref.call("x") == "done"
        await settle()
        assert not ref.alive
        [info] = rt.root.which_children()
        assert (info.id, info.status, info.restarts) == ("s", "stopped", 0)


class Holder(corra.Actor):
    """Owns a resource for its lifetime; the registry shows what is held."""

    held: list[int] = []
    incarnations = 0

    def lifespan(self):
        return self._hold()

    def _hold(self):
        import contextlib

        @contextlib.asynccontextmanager
        async def hold():
            Holder.incarnations += 1
            me = Holder.incarnations
            Holder.held.append(me)
            try:
                yield
            finally:
                Holder.held.remove(me)

        return hold()

    async def handle(self, msg):
        if msg == "crash":
            raise RuntimeError("crash")
        return list(Holder.held)


async def test_lifespan_resources_are_released_on_restart_and_stop():
    Holder.held = []
    Holder.incarnations = 0
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Holder, name="h", restart="permanent")
        assert await ref.call("what") == [1]
        with pytest.raises(corra.CallFailed):
            await ref.call("crash")
        await settle()
        new = rt.lookup("/h")
        assert isinstance(new, corra.Ref) and new != ref
        assert await new.call("what") == [2]  # the first incarnation's resource is gone
        assert new.statistics().restarts == 1
    assert Holder.held == []


class Background(corra.Actor):
    """A helper task in the lifespan's nursery; when it fails, the actor crashes."""

    def lifespan(self):
        import contextlib

        @contextlib.asynccontextmanager
        async def run():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick)
                yield
                nursery.cancel_scope.cancel()

        return run()

    async def _tick(self):
        await trio.sleep(3)
        raise RuntimeError("helper failed")

    async def handle(self, msg):
        return msg


async def test_a_failing_helper_task_crashes_its_actor(autojump_clock):
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Background, name="b", restart="permanent")
        await trio.sleep(3.5)
        assert not ref.alive
        new = rt.lookup("/b")
        assert isinstance(new, corra.Ref) and new.alive
        assert new.statistics().restarts == 1


async def test_refs_are_hashable_cheap_and_name_their_path():
    async with corra.open_runtime() as rt:
        a = await rt.spawn(Crashy, name="a")
        b = await rt.spawn(Crashy, name="b")
        again = rt.lookup("/a")
        assert a == again and hash(a) == hash(again)
        assert len({a, b, again}) == 2
        assert (a.path, b.path) == ("/a", "/b")
        assert "/a" in repr(a)


async def test_start_returning_a_non_actor_is_a_clear_start_failure():
    async with corra.open_runtime() as rt:
        with pytest.raises(corra.ChildStartFailed, match=r"expected an instance of corra\.Actor"):
            await rt.spawn(lambda: 42, name="x")  # type: ignore[arg-type,return-value]
        assert rt.root.which_children() == []


async def test_blocked_senders_are_served_in_arrival_order_and_a_cancelled_one_is_skipped(
    autojump_clock,
):
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Slow, name="slow", mailbox_capacity=1)
        await ref.send("first")  # the actor takes it at once and works for 1 s
        await settle()
        await ref.send("queued")  # fills the mailbox

        async def send(msg: str, cancel_after: float | None = None) -> None:
            with trio.move_on_after(cancel_after if cancel_after is not None else 1000):
                await ref.send(msg)

        async with trio.open_nursery() as nursery:
            for msg in ["s1", "s2", "s3", "s4"]:
                nursery.start_soon(send, msg, 0.5 if msg == "s2" else None)
                await settle()
            assert ref.statistics().senders_waiting == 4
        assert await ref.call("end") == ["first", "queued", "s1", "s3", "s4", "end"]


# -- actors that drive themselves (Actor.main) ---------------------------------------------


class Driver(corra.Actor):
    """Counts ticks in its own loop; takes messages between ticks; a wait for the next tick
    is cut short by a message (`interrupt`)."""

    def __init__(self, log: list[object]) -> None:
        self.log = log
        self.scope: trio.CancelScope | None = None
        self.ticks = 0

    async def main(self) -> None:
        while not self.stopping:
            handled = await self.handle_waiting()
            if handled:
                self.log.append(("handled", handled))
            with trio.CancelScope() as self.scope:
                await trio.sleep(10)
                self.ticks += 1
            self.scope = None
            if self.ticks == 3:
                return  # a normal exit

    def interrupt(self) -> None:
        self.log.append("interrupt")
        if self.scope is not None:
            self.scope.cancel()

    async def handle(self, msg: object) -> object:
        if msg == "crash":
            raise RuntimeError("crashed on request")
        self.log.append(msg)
        return self.ticks


async def test_an_actor_with_main_runs_it_in_one_task_and_takes_messages_between_steps(
    autojump_clock,
):
    log: list[object] = []
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(lambda: Driver(log), name="driver", restart="transient")
        await trio.sleep(15)  # one tick
        assert await ref.call("hello") == 1  # interrupted the wait, answered between steps
        assert trio.current_time() == 15
        assert log == ["interrupt", "hello", ("handled", 1)]
        ref.send_nowait("a")
        ref.send_nowait("b")
        await settle()
        assert ref.statistics().messages_handled == 3
        await trio.sleep(25)  # two more ticks: main returns, a normal exit
        assert not ref.alive
        assert rt.root.which_children()[0].status == "stopped"  # transient: not restarted
        with pytest.raises(corra.ActorStopped):
            await ref.call("late")


async def test_a_crash_in_main_or_its_handler_crashes_the_actor_and_stop_interrupts_it(
    autojump_clock,
):
    log: list[object] = []
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(lambda: Driver(log), name="driver", restart="permanent")
        with pytest.raises(corra.CallFailed, match="crashed on request"):
            await ref.call("crash")
        await settle()
        assert not ref.alive
        info = rt.root.which_children()[0]
        assert (info.status, info.restarts) == ("running", 1)  # restarted, as any crash
        again = info.ref
        assert isinstance(again, corra.Ref)
        log.clear()
        started = trio.current_time()
        await rt.root.terminate_child("driver")  # a graceful stop: interrupt, then return
        assert log == ["interrupt"]
        assert trio.current_time() == started and not again.alive


async def test_messages_left_when_main_returns_fail_with_actor_stopped(autojump_clock):
    class Quick(corra.Actor):
        async def main(self) -> None:
            await trio.sleep(1)

        async def handle(self, msg: object) -> object:
            raise AssertionError("never handled")

    async with corra.open_runtime() as rt:
        ref = await rt.spawn(Quick, name="quick")
        with pytest.raises(corra.ActorStopped):
            await ref.call("never")
        assert trio.current_time() == 1


class Driven(corra.Actor):
    """Drives itself (`main`) until stopped."""

    async def main(self):
        while not self.stopping:
            await self.handle_waiting()
            await trio.sleep(1)

    def interrupt(self):
        pass


@pytest.mark.parametrize("kind", [Slow, Driven])
async def test_an_ended_incarnation_is_freed_without_the_cycle_collector(autojump_clock, kind):
    # (thousands of processes end every second: left in reference cycles, each one's actor,
    # cell, ref, mailbox and scope waited for a garbage collection)
    gc.collect()
    gc.disable()
    try:
        async with corra.open_runtime() as rt:
            ref = await rt.spawn(kind, name="once")
            await rt.root.terminate_child("once")
            await settle()
            assert not ref.alive and rt.root.which_children() == []
            del ref
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [type(o).__qualname__ for o in gc.garbage if "corra" in type(o).__module__]
            assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


class Resumer(corra.Actor):
    """Waits in its own cancel scope; a message cuts the wait short, and it goes on in a fresh
    shielded scope (`continue_in`), as the process actor does."""

    def __init__(self, log: list[object]) -> None:
        self.log = log
        self.waiting = False

    async def main(self) -> None:
        try:
            await self.wait_for_mail()
        except trio.Cancelled:
            if self.terminating:
                raise
        while not self.terminating:
            with trio.CancelScope(shield=True) as scope:
                self.continue_in(scope)
                await self.handle_waiting()
                await self.wait_for_mail()

    async def wait_for_mail(self) -> None:
        self.waiting = True
        try:
            await trio.sleep_forever()
        finally:
            self.waiting = False

    def interrupt(self) -> None:
        if self.waiting and not self.terminating:
            self.cancel_scope.cancel()

    async def handle(self, msg: object) -> None:
        self.log.append(msg)


@pytest.mark.parametrize("shutdown", ["brutal_kill", 5.0])
async def test_an_actor_goes_on_in_a_scope_of_its_own_and_termination_cancels_that(
    autojump_clock, shutdown
):
    log: list[object] = []
    async with corra.open_runtime() as rt:
        ref = await rt.spawn(lambda: Resumer(log), name="resumer", shutdown=shutdown)
        for msg in ("a", "b"):  # (each one cancels the scope it waits in)
            ref.send_nowait(msg)
            await settle()
        assert log == ["a", "b"] and ref.alive
        started = trio.current_time()
        await rt.root.terminate_child("resumer")
        assert not ref.alive
        # Brutal: the scope it went on in is cancelled at once; else once the grace is over
        # (it ignores the stop: a shielded scope that nobody handed over would never end).
        assert trio.current_time() - started == (0 if shutdown == "brutal_kill" else 5.0)
