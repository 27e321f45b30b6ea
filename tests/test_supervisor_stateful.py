"""A real corra supervisor driven at random and compared with a pure model of OTP's rules.

The supervisor under test ("sut", strategy, intensity, period, 1-4 static children of mixed
restart types and its own restart type under the root all drawn per example) runs under the
runtime's root, in a trio loop hosted by a background thread with a frozen
`trio.testing.MockClock`: time moves only when the `advance` rule jumps it. Each rule does
one thing (a child crashes or stops itself; terminate_child, restart_child, delete_child,
start_child or start_child_nowait; the next starts of a child id are made to fail; a clock
jump; a burst, below),
waits until every trio task is blocked, and then compares what corra shows (the children in
order with restart type, status and incarnation; count_children; which refs are still alive;
the log of starts, failed starts and stops, event for event; whether the supervisor gave up,
and whether the root restarted or dropped it) with `Model`.

`Model` is written from the rules in the docstring of ``corra/actors/_supervisor.py`` and
OTP's ``supervisor.erl``; it calls nothing in corra. Every incarnation of a worker takes a
serial number when it starts (`Worker.lifespan`), so a restart shows as a new serial.

The `burst` rule fires two or three actions at once (messages to children and requests, each
in its own task after a few drawn yields). The supervisor handles its mailbox one item at a
time, so the outcome must be that of *some* serial order of those actions, with the retries
of failed restarts (rule 5; queued behind what is already in the mailbox, like OTP's
``try_again_restart``) anywhere in between, and a request possibly reaching an incarnation
of the supervisor that gave up meanwhile (ActorStopped): the model searches those orders.
A retry whose child was meanwhile terminated, deleted or restarted is dropped; children that
were waiting on it then stay stopped, as in OTP. A start_child_nowait in a burst may find the
supervisor busy (`trio.WouldBlock`, nothing done): the model allows that too.

Intensity window edges: times are multiples of 0.5 s and periods are not, so no restart ever
lies exactly ``period`` seconds in the past (where OTP's closed window and a half-open one
would disagree); the model does not have to pick a side.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import outcome
import trio
import trio.testing
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from corra import (
    Actor,
    ActorStopped,
    ChildRunning,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    NoSuchChild,
    Ref,
    SupervisorFlags,
    SupervisorRef,
    SupervisorSpec,
    open_runtime,
)

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES = ("permanent", "transient", "temporary")
SHUTDOWNS = (None, "brutal_kill", 0.0, 0.5)
IDS = ("a", "b", "c", "d", "e")
# Not multiples of 0.5 (see the module docstring).
PERIODS = (1.25, 2.75, 6.25)
STEPS = (0.5, 1.0, 2.0, 3.0, 7.0)
SUT = "sut"
# The root never gives up, however often the supervisor under test fails.
ROOT_FLAGS = SupervisorFlags(strategy="one_for_one", intensity=1_000_000, period=1.0)

# An action: ("crash" | "exit", serial) sends a message to one incarnation of a child;
# (request, child_id, *args) is a SupervisorRef request.
Action: TypeAlias = tuple[Any, ...]
# The result of a request: the exception type raised (None on success) and the serial of
# the incarnation it returned (None if it returned no ref).
Result: TypeAlias = tuple[type[Exception] | None, int | None]


class Crash(Exception):
    """What a worker raises when told to crash."""


class StartFailure(Exception):
    """What a poisoned worker raises while starting."""


class Hung(Exception):
    """A request did not finish although every task was blocked (a deadlock)."""


# -- the real thing, hosted in a thread ----------------------------------------------------


class Worker(Actor):
    """Logs every start, failed start and stop; crashes on "crash", stops itself on "exit"."""

    def __init__(self, host: Host, child_id: str) -> None:
        self.host = host
        self.child_id = child_id

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._life()

    @contextlib.asynccontextmanager
    async def _life(self) -> AsyncIterator[None]:
        host, cid = self.host, self.child_id
        if host.poison.get(cid, 0) > 0:
            host.poison[cid] -= 1
            host.events.append(("fail", cid))
            raise StartFailure(cid)
        serial = next(host.serials)
        host.events.append(("start", cid, serial))
        host.refs[serial] = self.ref
        host.serial_of[self.ref] = serial
        try:
            yield
        finally:
            host.events.append(("stop", cid, serial))

    async def handle(self, msg: Any) -> Any:
        if msg == "crash":
            raise Crash(self.child_id)
        if msg == "exit":
            self.stop()
        return None


@dataclass(frozen=True)
class Snapshot:
    """What corra shows after a step (or what the model says it should show)."""

    events: tuple[tuple[Any, ...], ...]
    sut_in_root: str | None  # status of the supervisor's entry under the root, None if absent
    sut_alive: bool
    sut_incarnations_alive: int  # every incarnation of the supervisor seen that still runs
    children: tuple[tuple[str, str, str, int | None], ...] | None  # id, restart, status, serial
    counts: tuple[int, int] | None  # specs, active
    live: tuple[int, ...]  # serials of every incarnation still alive

    def unordered(self) -> Snapshot:
        """The same, with only each child's own events kept in order (for bursts)."""
        return dataclasses.replace(self, events=tuple(sorted(self.events, key=lambda e: e[1])))


class Host:
    """A trio loop in a background thread, running a corra runtime with a frozen clock."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock(rate=0)
        self.events: list[tuple[Any, ...]] = []
        self.poison: dict[str, int] = {}
        self.serials = itertools.count(1)
        self.refs: dict[int, Ref] = {}
        self.serial_of: dict[Ref, int] = {}
        self.sut: SupervisorRef | None = None
        self.suts: list[SupervisorRef] = []
        self.token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._root: SupervisorRef | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="corra-stateful", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the trio thread did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._amain, clock=self.clock)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        self._stop = trio.Event()
        async with open_runtime(flags=ROOT_FLAGS) as runtime:
            self._root = runtime.root
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self.token is not None and self._thread.is_alive():
            assert self._stop is not None
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the trio thread did not end"
        if self._error is not None:
            raise self._error

    # -- calls into the trio thread --------------------------------------------------------

    def run(self, fn: Callable[[], Awaitable[Any]]) -> outcome.Outcome[Any]:
        """Run ``fn`` in the trio thread, then wait until every task is blocked.

        With the clock frozen and every worker idle, a call still unfinished once all tasks
        are blocked can never finish: it is reported as `Hung` (and cancelled).
        """

        async def step() -> outcome.Outcome[Any]:
            box: list[outcome.Outcome[Any]] = []

            async def runner() -> None:
                try:
                    box.append(outcome.Value(await fn()))
                except Exception as exc:
                    box.append(outcome.Error(exc))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner)
                await trio.testing.wait_all_tasks_blocked()
                if not box:
                    nursery.cancel_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            return box[0] if box else outcome.Error(Hung("never finished"))

        return trio.from_thread.run(step, trio_token=self.token)

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self.run(call).unwrap()

    def spec(self, child_id: str, restart: str, shutdown: Any) -> ChildSpec:
        return ChildSpec(
            id=child_id,
            start=functools.partial(Worker, self, child_id),
            restart=restart,  # type: ignore[arg-type]
            shutdown=shutdown,
        )

    async def spawn(self, spec: SupervisorSpec, restart: str) -> None:
        assert self._root is not None
        ref = await self._root.start_child(ChildSpec(id=SUT, start=spec, restart=restart))  # type: ignore[arg-type]
        assert isinstance(ref, SupervisorRef)
        self.sut = ref
        self.suts.append(ref)

    def _refresh_sut(self) -> None:
        """Follow the supervisor to its current incarnation (after the root restarted it)."""
        assert self._root is not None
        for info in self._root.which_children():
            if info.id == SUT and isinstance(info.ref, SupervisorRef):
                self.sut = info.ref
                if info.ref not in self.suts:
                    self.suts.append(info.ref)

    async def act(self, action: Action) -> Result:
        """Perform one action now; a message to a stopped incarnation is dropped."""
        kind = action[0]
        if kind in ("crash", "exit"):
            with contextlib.suppress(ActorStopped):
                self.refs[action[1]].send_nowait(kind)
            return None, None
        self._refresh_sut()
        assert self.sut is not None
        args = action[1:]
        if kind in ("start_child", "start_child_nowait"):
            args = (self.spec(*args),)
        try:
            if kind == "start_child_nowait":
                # Returns before the child starts: no serial yet (its start is an event).
                self.sut.start_child_nowait(*args)
                await trio.lowlevel.checkpoint()
                return None, None
            value = await getattr(self.sut, kind)(*args)
        except Exception as exc:
            return type(exc), None
        return None, self.serial_of.get(value) if isinstance(value, Ref) else None

    async def burst(self, actions: list[Action], delays: list[int]) -> list[Result]:
        """Perform several actions at once, each in its own task after ``delays`` yields."""
        results: list[Result] = [(None, None)] * len(actions)

        async def one(index: int) -> None:
            for _ in range(delays[index]):
                await trio.lowlevel.checkpoint()
            results[index] = await self.act(actions[index])

        async with trio.open_nursery() as nursery:
            for index in range(len(actions)):
                nursery.start_soon(one, index)
        return results

    def snapshot(self) -> Snapshot:
        assert self._root is not None and self.sut is not None
        self._refresh_sut()
        entry = next((c for c in self._root.which_children() if c.id == SUT), None)
        children = counts = None
        if entry is not None and entry.status == "running":
            children = tuple(
                (
                    c.id,
                    c.restart,
                    c.status,
                    self.serial_of.get(c.ref) if isinstance(c.ref, Ref) else None,
                )
                for c in self.sut.which_children()
            )
            n = self.sut.count_children()
            counts = (n.specs, n.active)
        events = tuple(self.events)
        self.events.clear()
        return Snapshot(
            events=events,
            sut_in_root=entry.status if entry is not None else None,
            sut_alive=self.sut.alive,
            sut_incarnations_alive=sum(ref.alive for ref in self.suts),
            children=children,
            counts=counts,
            live=tuple(sorted(s for s, ref in self.refs.items() if ref.alive)),
        )


# -- the model -----------------------------------------------------------------------------


@dataclass
class MChild:
    id: str
    restart: str
    serial: int | None = None  # the running incarnation, None when stopped
    # Stopped by a strategy or failed to restart, and waiting to be started again by the
    # retry of a failed restart (rule 5) that is still queued.
    due: bool = False


class Model:
    """OTP's supervisor rules, over plain lists, for one supervisor under a patient root."""

    def __init__(
        self,
        strategy: str,
        intensity: int,
        period: float,
        sut_restart: str,
        static: list[tuple[str, str]],
    ) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.sut_restart = sut_restart
        self.static = static
        self.now = 0.0
        self.serial = 0
        self.poison: dict[str, int] = {}
        self.events: list[tuple[Any, ...]] = []
        self.children: list[MChild] = []
        self.restarts: list[float] = []
        # Children whose restart failed: the supervisor retries each as another exit (rule 5),
        # after whatever is already in its mailbox, as OTP's try_again_restart does.
        self.retries: list[str] = []
        self.alive = False
        self.in_root = True
        self.incarnation = 0  # of the supervisor; the root restarts it after it gave up
        self.notes: set[str] = set()  # what happened, for Hypothesis' statistics
        self._boot()

    # -- bookkeeping --

    def find(self, child_id: str) -> MChild | None:
        return next((c for c in self.children if c.id == child_id), None)

    def running(self) -> list[MChild]:
        return [c for c in self.children if c.serial is not None]

    def _start(self, child: MChild) -> bool:
        if self.poison.get(child.id, 0) > 0:
            self.poison[child.id] -= 1
            self.events.append(("fail", child.id))
            return False
        self.serial += 1
        child.serial = self.serial
        self.events.append(("start", child.id, child.serial))
        return True

    def _stop(self, child: MChild) -> None:
        assert child.serial is not None
        self.events.append(("stop", child.id, child.serial))
        child.serial = None

    def _boot(self) -> None:
        """A new incarnation of the supervisor: its static children, started in order.

        If one fails to start, those started are stopped in reverse order and the start of
        the supervisor fails, which its parent (the root) counts as another exit and retries.
        """
        while True:
            self.children = [MChild(cid, restart) for cid, restart in self.static]
            self.restarts = []
            self.retries = []
            for child in self.children:
                if not self._start(child):
                    self.notes.add("supervisor failed to start")
                    for other in reversed(self.children):
                        if other.serial is not None:
                            self._stop(other)
                    break
            else:
                self.alive = True
                return

    def _group(self, child: MChild) -> list[MChild]:
        if self.strategy == "one_for_one":
            return [child]
        if self.strategy == "one_for_all":
            return list(self.children)
        return self.children[self.children.index(child) :]

    def _add_restart(self) -> bool:
        """Record a restart now; False when more than `intensity` fall within `period`."""
        self.restarts.append(self.now)
        self.restarts = [t for t in self.restarts if self.now - t < self.period]
        return len(self.restarts) <= self.intensity

    def _give_up(self) -> None:
        """RestartIntensityExceeded: stop every child (reverse order), fail to the root."""
        self.notes.add("gave up")
        for child in reversed(self.children):
            if child.serial is not None:
                self._stop(child)
        self.alive = False
        self.incarnation += 1
        # An abnormal exit of the supervisor: its parent restarts it unless it is temporary.
        if self.sut_restart == "temporary":
            self.in_root = False
            self.children = []
        else:
            self._boot()

    def _restart(self, exited: MChild) -> None:
        """Rules 3-5 once ``exited`` stopped (or failed to restart) and must be restarted."""
        if not self._add_restart():
            self._give_up()
            return
        group = self._group(exited)
        for other in reversed(group):
            if other is not exited and other.serial is not None:
                self.notes.add("strategy stopped a sibling")
                self._stop(other)
                if other.restart == "temporary":
                    self.children.remove(other)
                else:
                    other.due = True
        exited.due = True
        if any(c.serial is None and not c.due for c in group):
            self.notes.add("a stopped child stays stopped")
        for other in group:
            if other.due and other in self.children:
                if not self._start(other):
                    self.notes.add("restart failed (rule 5)")
                    self.retries.append(other.id)
                    return
                other.due = False

    def has_retry(self) -> bool:
        return bool(self.retries)

    def retry(self) -> None:
        """Handle the oldest queued retry of a failed restart."""
        child = self.find(self.retries.pop(0))
        if child is None or not child.due or child.serial is not None:
            # Terminated, deleted or restarted by a request in the meantime: no retry.
            self.notes.add("retry dropped")
            return
        self._restart(child)

    def settle(self) -> None:
        """What the supervisor does before it falls idle: every queued retry.

        Children still waiting for a restart then wait for nothing (their retry was dropped):
        they stay stopped, as in OTP (where they show as ``undefined``, not ``restarting``).
        """
        while self.retries:
            self.retry()
        for child in self.children:
            if child.due:
                self.notes.add("stranded by a dropped retry")
                child.due = False

    # -- actions --

    def act(self, action: Action) -> Result:
        kind = action[0]
        if kind in ("crash", "exit"):
            self.deliver(action[1], abnormal=kind == "crash")
            return None, None
        method: Callable[..., Result] = getattr(self, kind)
        return method(*action[1:])

    def deliver(self, serial: int, abnormal: bool) -> None:
        """The incarnation ``serial`` crashes or stops itself; nothing if it is not running."""
        child = next((c for c in self.children if c.serial == serial), None)
        if child is None:
            return
        self._stop(child)
        if child.restart == "temporary":
            self.children.remove(child)
        elif child.restart == "permanent" or abnormal:
            self._restart(child)
        else:
            self.notes.add("transient exited normally")

    def start_child(self, child_id: str, restart: str, shutdown: Any) -> Result:
        if not self.alive:
            return ActorStopped, None
        if self.find(child_id) is not None:
            return DuplicateChild, None
        child = MChild(child_id, restart)
        self.children.append(child)
        if not self._start(child):
            self.children.remove(child)
            return ChildStartFailed, None
        return None, child.serial

    def start_child_nowait(self, child_id: str, restart: str, shutdown: Any) -> Result:
        """Rule 7: started in its own task; a failure while it starts is an abnormal exit."""
        if not self.alive:
            return ActorStopped, None
        if self.find(child_id) is not None:
            return DuplicateChild, None
        child = MChild(child_id, restart)
        self.children.append(child)
        if not self._start(child):
            self.notes.add("a child started without waiting failed to start")
            if restart == "temporary":
                self.children.remove(child)
            else:
                self._restart(child)
        return None, None

    def terminate_child(self, child_id: str) -> Result:
        if not self.alive:
            return ActorStopped, None
        child = self.find(child_id)
        if child is None:
            return NoSuchChild, None
        if child.serial is not None:
            self._stop(child)
        child.due = False
        if child.restart == "temporary":
            self.children.remove(child)
        return None, None

    def restart_child(self, child_id: str) -> Result:
        if not self.alive:
            return ActorStopped, None
        child = self.find(child_id)
        if child is None:
            return NoSuchChild, None
        if child.serial is not None:
            return ChildRunning, None
        if not self._start(child):
            return ChildStartFailed, None  # OTP: {error, Reason}; the child stays stopped
        child.due = False
        return None, child.serial

    def delete_child(self, child_id: str) -> Result:
        if not self.alive:
            return ActorStopped, None
        child = self.find(child_id)
        if child is None:
            return NoSuchChild, None
        if child.serial is not None:
            return ChildRunning, None
        self.children.remove(child)
        return None, None

    def expected(self) -> Snapshot:
        running = self.in_root and self.alive
        events = tuple(self.events)
        self.events.clear()
        return Snapshot(
            events=events,
            sut_in_root="running" if self.in_root else None,
            sut_alive=self.alive,
            sut_incarnations_alive=int(self.alive),
            children=tuple(
                (c.id, c.restart, "running" if c.serial is not None else "stopped", c.serial)
                for c in self.children
            )
            if running
            else None,
            counts=(len(self.children), len(self.running())) if running else None,
            live=tuple(sorted(c.serial for c in self.running())),
        )


# -- the state machine ---------------------------------------------------------------------

static_children = st.lists(
    st.tuples(st.sampled_from(RESTART_TYPES), st.sampled_from(SHUTDOWNS)),
    min_size=1,
    max_size=4,
)
child_ids = st.sampled_from(IDS)


def requests(ids: st.SearchStrategy[str]) -> st.SearchStrategy[Action]:
    return st.one_of(
        st.tuples(st.just("terminate_child"), ids),
        st.tuples(st.just("restart_child"), ids),
        st.tuples(st.just("delete_child"), ids),
        st.tuples(
            st.sampled_from(("start_child", "start_child_nowait")),
            child_ids,
            st.sampled_from(RESTART_TYPES),
            st.sampled_from(SHUTDOWNS),
        ),
    )


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host: Host | None = None
        self.model: Model | None = None

    @initialize(
        strategy=st.sampled_from(STRATEGIES),
        intensity=st.integers(0, 4),
        period=st.sampled_from(PERIODS),
        sut_restart=st.sampled_from(RESTART_TYPES),
        static=static_children,
    )
    def boot(
        self,
        strategy: str,
        intensity: int,
        period: float,
        sut_restart: str,
        static: list[tuple[str, Any]],
    ) -> None:
        event(f"strategy: {strategy}")
        self.host = host = Host()
        specs = [host.spec(IDS[i], r, shutdown) for i, (r, shutdown) in enumerate(static)]
        flags = SupervisorFlags(strategy=strategy, intensity=intensity, period=period)  # type: ignore[arg-type]
        host.run(lambda: host.spawn(SupervisorSpec(flags, specs), sut_restart)).unwrap()
        self.model = Model(
            strategy, intensity, period, sut_restart, [(s.id, s.restart) for s in specs]
        )

    def teardown(self) -> None:
        if self.host is not None:
            self.host.close()
        if self.model is not None:
            for note in sorted(self.model.notes):
                event(note)

    @property
    def h(self) -> Host:
        assert self.host is not None
        return self.host

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def _ids(self) -> st.SearchStrategy[str]:
        """Mostly the ids of existing children (running or stopped), sometimes any id."""
        existing = [c.id for c in self.m.children]
        return st.one_of(st.sampled_from(existing), child_ids) if existing else child_ids

    def _request(self, action: Action) -> None:
        actual = self.h.run(lambda: self.h.act(action)).unwrap()
        expected = self.m.act(action)
        self.m.settle()
        assert actual == expected, f"{action}: corra gave {actual}, the model {expected}"

    # -- rules --

    @precondition(lambda self: self.m.running())
    @rule(data=st.data(), abnormal=st.booleans())
    def child_exits(self, data: st.DataObject, abnormal: bool) -> None:
        """A running child crashes (raises) or stops itself (a normal exit)."""
        serial = data.draw(st.sampled_from([c.serial for c in self.m.running()]), label="serial")
        self._request(("crash" if abnormal else "exit", serial))

    @rule(data=st.data())
    def terminate_child(self, data: st.DataObject) -> None:
        self._request(("terminate_child", data.draw(self._ids(), label="child_id")))

    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        self._request(("restart_child", data.draw(self._ids(), label="child_id")))

    @rule(data=st.data())
    def delete_child(self, data: st.DataObject) -> None:
        self._request(("delete_child", data.draw(self._ids(), label="child_id")))

    @rule(
        child_id=child_ids,
        restart=st.sampled_from(RESTART_TYPES),
        shutdown=st.sampled_from(SHUTDOWNS),
    )
    def start_child(self, child_id: str, restart: str, shutdown: Any) -> None:
        self._request(("start_child", child_id, restart, shutdown))

    @rule(
        child_id=child_ids,
        restart=st.sampled_from(RESTART_TYPES),
        shutdown=st.sampled_from(SHUTDOWNS),
    )
    def start_child_nowait(self, child_id: str, restart: str, shutdown: Any) -> None:
        self._request(("start_child_nowait", child_id, restart, shutdown))

    @rule(data=st.data(), times=st.integers(1, 3))
    def poison(self, data: st.DataObject, times: int) -> None:
        """The next ``times`` starts of a child id (whatever starts it) fail."""
        child_id = data.draw(self._ids(), label="child_id")

        def add(poison: dict[str, int]) -> None:
            poison[child_id] = poison.get(child_id, 0) + times

        self.h.run_sync(lambda: add(self.h.poison))
        add(self.m.poison)

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt: float) -> None:
        self.h.run_sync(lambda: self.h.clock.jump(dt))
        self.m.now += dt

    @rule(data=st.data())
    def burst(self, data: st.DataObject) -> None:
        """Two or three actions at once; the outcome must be that of some serial order."""
        messages = [
            st.tuples(st.sampled_from(("crash", "exit")), st.just(c.serial))
            for c in self.m.running()
        ]
        one = st.one_of(requests(self._ids()), *messages)
        actions = data.draw(st.lists(one, min_size=2, max_size=3), label="actions")
        delays = data.draw(st.lists(st.integers(0, 4), min_size=len(actions)), label="delays")
        results = self.h.run(lambda: self.h.burst(actions, delays)).unwrap()
        actual = self.h.run_sync(self.h.snapshot)
        explained = self._explain(actions, results, actual)
        if explained is None:
            tried = self._explain(actions, results, None)
            lines = "\n".join(f"  order {o}: results {r}\n    {e}" for o, r, e in tried[:8])
            raise AssertionError(
                f"burst {actions} {delays}: no serial order explains corra's outcome\n"
                f"  corra: results {results}\n    {actual}\nmodel (first orders):\n{lines}"
            )
        order, self.model = explained
        if order != tuple(sorted(order)):
            event("burst: served out of issue order")

    def _explain(self, actions: list[Action], results: list[Result], actual: Any) -> Any:
        """A serial order of ``actions`` whose outcome is corra's, with its model, or None.

        Queued retries of failed restarts (rule 5) may run between the actions, and a request
        may reach an incarnation of the supervisor that has given up since (and fail with
        ActorStopped). With ``actual`` None, the outcomes tried are returned instead.
        """
        start = self.m.incarnation
        tried: list[tuple[tuple[Any, ...], list[Result], Snapshot]] = []
        initial: list[Result] = [(None, None)] * len(actions)
        stack: list[tuple[Model, tuple[Any, ...], list[Result]]] = [
            (copy.deepcopy(self.m), (), initial)
        ]
        while stack:
            model, order, expected_results = stack.pop()
            remaining = [i for i in range(len(actions)) if i not in order]
            if not remaining:
                model.settle()
                expected = model.expected()
                if actual is None:
                    tried.append((order, expected_results, expected))
                elif actual.unordered() == expected.unordered():
                    return order, model
                continue
            if model.has_retry():
                branch = copy.deepcopy(model)
                branch.retry()
                stack.append((branch, order, expected_results))
            for index in reversed(remaining):  # explored in issue order first
                action = actions[index]
                is_request = action[0] not in ("crash", "exit")
                if is_request and model.incarnation != start:
                    late = list(expected_results)
                    late[index] = (ActorStopped, None)
                    stack.append((copy.deepcopy(model), (*order, index), late))
                if action[0] == "start_child_nowait":
                    busy = list(expected_results)  # the supervisor was busy: nothing done
                    busy[index] = (trio.WouldBlock, None)
                    stack.append((copy.deepcopy(model), (*order, index), busy))
                branch = copy.deepcopy(model)
                got = list(expected_results)
                got[index] = branch.act(action)
                if actual is None or got[index] == results[index]:
                    stack.append((branch, (*order, index), got))
        return tried if actual is None else None

    @invariant()
    def agrees_with_model(self) -> None:
        if self.host is None or self.model is None:
            return
        actual = self.h.run_sync(self.h.snapshot)
        expected = self.m.expected()
        assert actual.events == expected.events, (
            f"events differ:\n  corra: {actual.events}\n  model: {expected.events}"
        )
        assert actual == expected, f"state differs:\n  corra: {actual}\n  model: {expected}"


SupervisorMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestSupervisorModel = SupervisorMachine.TestCase
