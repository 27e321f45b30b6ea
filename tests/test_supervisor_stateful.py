"""A real corra supervisor driven at random and compared with a pure model of OTP's rules.

The supervisor under test ("sut") runs under the runtime's root, in a trio loop hosted by a
background thread with a frozen `trio.testing.MockClock`: time moves only when the `advance`
rule jumps it. Every rule performs one action (a child crashes or stops itself, a request to
the supervisor, a clock jump), waits until every trio task is blocked, and the invariant then
compares what corra shows (children, their status and incarnation, live refs, the order in
which incarnations started and stopped, whether the supervisor gave up) with `Model`.

`Model` is written from the rules in the docstring of ``corra/actors/_supervisor.py`` and
OTP's ``supervisor.erl``; it calls nothing in corra. Every incarnation of a worker gets a
serial number when it starts (in `Worker.lifespan`), so a restart shows as a new serial, and
the log of starts/stops/failed starts must match the model's event for event.

Intensity window edges: times are multiples of 0.5 s and periods are not, so no restart ever
lies exactly ``period`` seconds in the past (where OTP, whose window is closed, and a half-open
window would disagree); the model does not have to pick a side.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio
import trio.testing
from hypothesis import settings
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
    children: tuple[tuple[str, str, str, int | None], ...] | None  # id, restart, status, serial
    counts: tuple[int, int] | None  # specs, active
    live: tuple[int, ...]  # serials of every incarnation still alive


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
            return box[0] if box else outcome.Error(Hung("request never finished"))

        return trio.from_thread.run(step, trio_token=self.token)

    def run_sync(self, fn: Callable[[], Any]) -> outcome.Outcome[Any]:
        async def call() -> Any:
            return fn()

        return self.run(call)

    def spec(self, child_id: str, restart: str, shutdown: Any) -> ChildSpec:
        return ChildSpec(
            id=child_id,
            start=functools.partial(Worker, self, child_id),
            restart=restart,  # type: ignore[arg-type]
            shutdown=shutdown,
        )

    async def spawn(self, spec: SupervisorSpec, restart: str) -> SupervisorRef:
        assert self._root is not None
        ref = await self._root.start_child(ChildSpec(id=SUT, start=spec, restart=restart))  # type: ignore[arg-type]
        assert isinstance(ref, SupervisorRef)
        self.sut = ref
        return ref

    def send(self, serial: int, msg: str) -> None:
        self.refs[serial].send_nowait(msg)

    def _refresh_sut(self) -> None:
        assert self._root is not None
        for info in self._root.which_children():
            if info.id == SUT and isinstance(info.ref, SupervisorRef):
                self.sut = info.ref

    async def request(self, name: str, *args: Any) -> Any:
        """A `SupervisorRef` request on the current incarnation of the supervisor."""
        self._refresh_sut()
        assert self.sut is not None
        result = await getattr(self.sut, name)(*args)
        if isinstance(result, Ref):
            return self.serial_of.get(result)
        return result

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

    @property
    def running(self) -> bool:
        return self.serial is not None


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
        self.alive = False
        self.in_root = True
        self.gave_up = 0
        self._boot()

    # -- bookkeeping --

    def find(self, child_id: str) -> MChild | None:
        return next((c for c in self.children if c.id == child_id), None)

    def running_ids(self) -> list[str]:
        return [c.id for c in self.children if c.running]

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
            for child in self.children:
                if not self._start(child):
                    for other in reversed(self.children):
                        if other.running:
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
        for child in reversed(self.children):
            if child.running:
                self._stop(child)
        self.alive = False
        self.gave_up += 1
        # An abnormal exit of the supervisor: its parent restarts it unless it is temporary.
        if self.sut_restart == "temporary":
            self.in_root = False
            self.children = []
        else:
            self._boot()

    def _restart(self, exited: MChild) -> None:
        """Rules 3-5 after ``exited`` stopped and must be restarted."""
        due = {exited.id}  # children to start again
        failed: MChild | None = exited
        while failed is not None:
            if not self._add_restart():
                self._give_up()
                return
            group = self._group(failed)
            for other in reversed(group):
                if other is not failed and other.running:
                    self._stop(other)
                    if other.restart == "temporary":
                        self.children.remove(other)
                    else:
                        due.add(other.id)
            failed = None
            for other in group:
                if other.id in due:
                    if self._start(other):
                        due.discard(other.id)
                    else:
                        failed = other  # rule 5: another exit of that child
                        break

    # -- actions; each returns the exception type expected (None: success) --

    def child_exits(self, child_id: str, abnormal: bool) -> None:
        child = self.find(child_id)
        assert child is not None and child.running
        self._stop(child)
        if child.restart == "temporary":
            self.children.remove(child)
        elif child.restart == "permanent" or abnormal:
            self._restart(child)

    def start_child(self, child_id: str, restart: str) -> tuple[type[Exception] | None, Any]:
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

    def terminate_child(self, child_id: str) -> type[Exception] | None:
        if not self.alive:
            return ActorStopped
        child = self.find(child_id)
        if child is None:
            return NoSuchChild
        if child.running:
            self._stop(child)
        if child.restart == "temporary":
            self.children.remove(child)
        return None

    def restart_child(self, child_id: str) -> tuple[type[Exception] | None, Any]:
        if not self.alive:
            return ActorStopped, None
        child = self.find(child_id)
        if child is None:
            return NoSuchChild, None
        if child.running:
            return ChildRunning, None
        if not self._start(child):
            return ChildStartFailed, None  # OTP: {error, Reason}; the child stays stopped
        return None, child.serial

    def delete_child(self, child_id: str) -> type[Exception] | None:
        if not self.alive:
            return ActorStopped
        child = self.find(child_id)
        if child is None:
            return NoSuchChild
        if child.running:
            return ChildRunning
        self.children.remove(child)
        return None

    def expected(self) -> Snapshot:
        running = self.in_root and self.alive
        events = tuple(self.events)
        self.events.clear()
        return Snapshot(
            events=events,
            sut_in_root="running" if self.in_root else None,
            sut_alive=self.alive,
            children=tuple(
                (c.id, c.restart, "running" if c.running else "stopped", c.serial)
                for c in self.children
            )
            if running
            else None,
            counts=(len(self.children), len(self.running_ids())) if running else None,
            live=tuple(sorted(c.serial for c in self.children if c.serial is not None)),
        )


# -- the state machine ---------------------------------------------------------------------

static_children = st.lists(
    st.tuples(st.sampled_from(RESTART_TYPES), st.sampled_from(SHUTDOWNS)),
    min_size=1,
    max_size=4,
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
        self.host = host = Host()
        specs = [host.spec(IDS[i], r, shutdown) for i, (r, shutdown) in enumerate(static)]
        flags = SupervisorFlags(strategy=strategy, intensity=intensity, period=period)  # type: ignore[arg-type]
        spawned = host.run(lambda: host.spawn(SupervisorSpec(flags, specs), sut_restart))
        spawned.unwrap()
        self.model = Model(
            strategy, intensity, period, sut_restart, [(s.id, s.restart) for s in specs]
        )

    def teardown(self) -> None:
        if self.host is not None:
            self.host.close()

    # -- helpers --

    @property
    def h(self) -> Host:
        assert self.host is not None
        return self.host

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def _check_result(
        self, what: str, result: outcome.Outcome[Any], expected: type[Exception] | None
    ) -> Any:
        if expected is None:
            if isinstance(result, outcome.Error):
                raise AssertionError(f"{what}: expected success, got {result.error!r}")
            return result.unwrap()
        assert isinstance(result, outcome.Error) and type(result.error) is expected, (
            f"{what}: expected {expected.__name__}, got {result!r}"
        )
        return None

    # -- rules --

    @precondition(lambda self: self.m.running_ids())
    @rule(data=st.data(), abnormal=st.booleans())
    def child_exits(self, data: st.DataObject, abnormal: bool) -> None:
        """A running child crashes (raises) or stops itself (a normal exit)."""
        child_id = data.draw(st.sampled_from(self.m.running_ids()), label="child")
        child = self.m.find(child_id)
        assert child is not None and child.serial is not None
        serial = child.serial
        sent = self.h.run_sync(lambda: self.h.send(serial, "crash" if abnormal else "exit"))
        sent.unwrap()
        self.m.child_exits(child_id, abnormal)

    @rule(child_id=st.sampled_from(IDS))
    def terminate_child(self, child_id: str) -> None:
        result = self.h.run(lambda: self.h.request("terminate_child", child_id))
        self._check_result("terminate_child", result, self.m.terminate_child(child_id))

    @rule(child_id=st.sampled_from(IDS))
    def restart_child(self, child_id: str) -> None:
        result = self.h.run(lambda: self.h.request("restart_child", child_id))
        expected, serial = self.m.restart_child(child_id)
        got = self._check_result("restart_child", result, expected)
        if expected is None:
            assert got == serial, f"restart_child returned incarnation {got}, expected {serial}"

    @rule(child_id=st.sampled_from(IDS))
    def delete_child(self, child_id: str) -> None:
        result = self.h.run(lambda: self.h.request("delete_child", child_id))
        self._check_result("delete_child", result, self.m.delete_child(child_id))

    @rule(
        child_id=st.sampled_from(IDS),
        restart=st.sampled_from(RESTART_TYPES),
        shutdown=st.sampled_from(SHUTDOWNS),
    )
    def start_child(self, child_id: str, restart: str, shutdown: Any) -> None:
        spec = self.h.spec(child_id, restart, shutdown)
        result = self.h.run(lambda: self.h.request("start_child", spec))
        expected, serial = self.m.start_child(child_id, restart)
        got = self._check_result("start_child", result, expected)
        if expected is None:
            assert got == serial, f"start_child returned incarnation {got}, expected {serial}"

    @rule(child_id=st.sampled_from(IDS), times=st.integers(1, 3))
    def poison(self, child_id: str, times: int) -> None:
        """The next ``times`` starts of ``child_id`` (whatever starts it) fail."""

        def set_poison() -> None:
            self.h.poison[child_id] = self.h.poison.get(child_id, 0) + times

        self.h.run_sync(set_poison).unwrap()
        self.m.poison[child_id] = self.m.poison.get(child_id, 0) + times

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt: float) -> None:
        self.h.run_sync(lambda: self.h.clock.jump(dt)).unwrap()
        self.m.now += dt

    @invariant()
    def agrees_with_model(self) -> None:
        if self.host is None or self.model is None:
            return
        actual = self.h.run_sync(self.h.snapshot).unwrap()
        expected = self.m.expected()
        assert actual.events == expected.events, (
            f"events differ:\n  corra: {actual.events}\n  model: {expected.events}"
        )
        assert actual == expected, f"state differs:\n  corra: {actual}\n  model: {expected}"


SupervisorMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestSupervisorModel = SupervisorMachine.TestCase
