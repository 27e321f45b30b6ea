"""The process actor: one program driven through its lifecycle, every transition durable first.

One actor per process that has work to do now, under the ``/processes`` supervisor: a process
that waits for a slot has none (it is its id in the admission queue, `corra.processes._admission`,
until it has its slot). The actor runs a loop of steps, one per phase (``created``, started
with its slot held, makes its intent to launch durable; ``launching`` launches, ``running``
waits for the exit, ``killing`` kills); each step ends with a transition that is durable in the
store before the next step starts (write-ahead, `Journal`), and every effect carries the
idempotency key ``<process id>.<attempt>``, so a step replayed after a crash finds the effect
it already had instead of repeating it. Two writes are spared: a process submitted while its
backend has a slot free is durable as ``launching`` at once (`ProcessManager.submit`), and
``running`` is written in the background (a crash that loses it leaves the process
``launching``, which recovery settles by the idempotent launch).

Pause and kill are requests to the actor. They take effect between steps: a wait (for the
program's exit, a retry of a step) is interrupted, an effect in progress (a launch, a kill, a
write) is not. A wait runs in the scope the actor runs in (`Actor.cancel_scope`, which the kernel
makes for every actor anyway: a scope per wait cost a tenth of a lifecycle); a request (or a
stop) that came since the actor took its requests cancels it, whether it came before the wait
began or during it, and only while the actor waits. A wait whose scope was cancelled raises
`_Interrupted` as it ends, before any effect: the drive goes back to its requests in a fresh
shielded scope (`Actor.continue_in`), as it would after a step. A paused process is its
snapshot and nothing else: its actor ends, and a resume starts a fresh one at the step that
was next (or queues it for a slot). So does a process whose attempt ended with a retry: its
actor ends, and the process queues for a slot after the retry's backoff (`retry_delay`).

A host that stops answering (`HostUnavailable` from a remote backend) pauses the process for
its host (`corra.processes._hosts`), or fails it, as the host's policy says.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from corra._errors import (
    BackendError,
    ConfigError,
    HostUnavailable,
    LaunchFailed,
    ProgramLost,
    StoreError,
)
from corra.actors._actor import Actor
from corra.actors._specs import Backoff
from corra.processes._backend import Backend, EffectKey, LaunchRequest
from corra.processes._hosts import HOST_RETRY_DELAY, HostWaits
from corra.processes._journal import Journal
from corra.processes._lifecycle import (
    PAUSABLE,
    Event,
    ProcessState,
    Result,
    after_exit,
    allowed,
    backs_off,
)
from corra.processes._record import ProcessRecord
from corra.processes._requests import effect_key, launch_request
from corra.processes._spec import ProcessSpec
from corra.processes._values import with_value

logger = logging.getLogger("corra.process")

#: Delay before attempt n+1 of a transient or permanent process.
RETRY_BACKOFF = Backoff(initial=1.0, factor=2.0, max=60.0)
#: Transient trouble in a step (the store, the backend) is retried this often, then the
#: process fails with the reason.
STEP_RETRIES = 5


@attrs.frozen
class ProcessContext:
    """What a process actor uses of the rest of the domain; `ProcessManager` makes one."""

    backend_for: Callable[[ProcessSpec], Backend]
    """The backend of a spec (raises `ConfigError` for one this runtime lacks)."""
    journal: Journal
    """Where its transitions go."""
    hosts: HostWaits
    """Where it waits for a host that stopped answering."""
    ended: Callable[[ProcessActor], None]
    """Called when the actor ends, for whatever reason."""
    results_dir: Path | None = None
    """Where values too large for their record are kept (`corra.processes._values`); None:
    such values are refused."""


class ProcessActor(Actor):
    """Drives one process through its steps until it is terminal or paused.

    It drives itself (`Actor.main`): one task per process, which takes its requests (pause,
    kill) between steps, and whose waits a request interrupts (see the module's docstring).
    """

    def __init__(
        self,
        context: ProcessContext,
        record: ProcessRecord,
        request: LaunchRequest | None = None,
        *,
        admitted: bool = False,
    ) -> None:
        """``request``: the launch request of ``record``'s current attempt, if one was made
        already (at submission, for `Backend.check`). ``admitted``: the process holds its
        slot (the admission's dispatcher took it for its current attempt); a ``created``
        process without one has no actor (the actor ends at once)."""
        self.context = context
        self.record = record
        self.admitted = admitted
        self.request: Literal["pause", "kill"] | None = None
        # A request (or a stop) came since the actor last took its requests: the next wait
        # is cut short as it begins (`interrupt`).
        self._interrupted = False
        # In a wait: a request cancels the actor's scope now (`interrupt`).
        self._waiting = False
        # The key and the launch request of the current attempt, made once per attempt.
        self._key = effect_key(record) if request is None else request.key
        self._request = request

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def key(self) -> EffectKey:
        """The key of the current attempt's effects (and of the slot it holds); made once
        per attempt."""
        key = self._key
        if key.attempt != self.record.state.attempt:
            key = self._key = effect_key(self.record)
        return key

    async def main(self) -> None:
        try:
            try:
                await self._drive()
                return
            except _Interrupted:
                pass  # (the scope the kernel made for the actor is cancelled: leave it)
            while not self.terminating:
                scope = trio.CancelScope(shield=True)
                with scope:
                    self.continue_in(scope)
                    try:
                        await self._drive()
                        return
                    except _Interrupted:
                        pass
        finally:
            self.context.ended(self)

    def interrupt(self) -> None:
        # A request arrived (or a stop): cut the current or next wait short.
        self._interrupted = True
        if self._waiting:
            self.cancel_scope.cancel()

    async def handle(self, msg: Any) -> str:
        if msg not in ("pause", "kill"):
            raise ConfigError(f"process {self.id}: unknown request {msg!r}")
        if self.request != "kill":
            self.request = msg
        return self.record.phase

    @property
    def launch_request(self) -> LaunchRequest:
        """What the backend gets to launch the current attempt."""
        request = self._request
        if request is None or request.key.attempt != self.record.state.attempt:
            request = self._request = launch_request(self.record)
        return request

    def _interruptible(self) -> _Wait:
        """A wait that a request cuts short: then it raises `_Interrupted` as it ends (a
        request that came before or during the wait, or as it ended), and the drive takes
        the request first."""
        return _Wait(self)

    async def _drive(self) -> None:
        failures = 0
        while True:
            # From here on, a request cancels the next wait: taken below, or there.
            self._interrupted = False
            if self.has_mail:
                await self.handle_waiting()
            if self.stopping:
                break
            state = self.record.state
            if state.terminal:
                break
            if state.phase == "paused" and self.request != "kill":
                break  # (a kill that arrived while the pause was being written goes on)
            if state.phase == "created" and not self.admitted and self.request is None:
                break  # it waits for a slot as its id in the queue, not as an actor
            try:
                if self.request == "kill" and state.phase != "killing":
                    await self._advance("kill")
                elif self.request == "pause" and state.phase in PAUSABLE:
                    await self._advance("pause")
                else:
                    await self._step(state)
                failures = 0
            except HostUnavailable as exc:
                hosts, spec = self.context.hosts, self.record.spec
                if state.phase in PAUSABLE and hosts.may_wait(self.record, exc):
                    reason = f"host unavailable: {spec.host}: {exc}"
                    await self._advance("pause", by="host", reason=reason)
                    hosts.wait_for(self.record)
                elif "fail" in allowed(state.phase):
                    await self._give_up(f"{state.phase}: {exc}")
                else:  # (killing: the kill waits for the host)
                    await self._retry_later(HOST_RETRY_DELAY)
            except (BackendError, StoreError) as exc:
                # Transient trouble (a full disk, a refused fork): retry the step, which is
                # idempotent, a few times; then give up with the reason.
                failures += 1
                logger.warning("process %s: %s step failed: %s", self.id, state.phase, exc)
                if failures >= STEP_RETRIES and "fail" in allowed(state.phase):
                    await self._give_up(f"{state.phase}: {exc}")
                else:
                    await self._retry_later(min(2**failures * 0.1, 10))
            except Exception as exc:
                # A bug or an input the edge let through: never leave the process active
                # without an actor (nobody would ever move it on).
                logger.exception("process %s: %s step crashed", self.id, state.phase)
                if "fail" not in allowed(state.phase):
                    raise
                await self._give_up(f"internal error in {state.phase}: {exc!r}")

    async def _retry_later(self, seconds: float) -> None:
        """Wait before a step is tried again; a request (pause, kill) cuts the wait short."""
        with self._interruptible():
            await trio.sleep(seconds)

    async def _give_up(self, reason: str) -> None:
        """Fail the process, leaving nothing behind: its slot, and any program its key
        launched."""
        backend = self.context.backend_for(self.record.spec)
        backend.release_slot(self.key)
        with contextlib.suppress(Exception):
            handle = self.record.state.handle or await backend.find(self.key, self.record.spec.host)
            if handle is not None:
                await backend.kill(handle, self.record.spec.kill_grace)
        await self._advance("fail", reason=reason)

    async def _step(self, state: ProcessState) -> None:
        phase = state.phase
        if phase == "launching":
            await self._launch()
        elif phase == "running":
            await self._wait_for_exit(state)
        elif phase == "created":  # (admitted: its slot is held)
            await self._advance("launch")
            self.admitted = False  # (a retry queues for a slot again)
        elif phase == "killing":
            await self._kill(state)

    async def _launch(self) -> None:
        backend = self.context.backend_for(self.record.spec)
        backend.adopt_slot(self.key)
        try:
            handle = await backend.launch(self.launch_request)
        except LaunchFailed as exc:
            backend.release_slot(self.key)
            await self._end_attempt(Result(error=str(exc)))
            return
        # Not awaited: a crash that loses this record leaves the process launching, and
        # recovery finds the program by its key (`_launch` again, which is idempotent).
        await self._advance("started", handle=handle, background=True)

    async def _wait_for_exit(self, state: ProcessState) -> None:
        backend = self.context.backend_for(self.record.spec)
        assert state.handle is not None
        backend.adopt_slot(self.key)
        lost = None
        try:
            # (cut short, the result, or the loss, is found again after the request)
            with self._interruptible():
                result = await backend.wait(state.handle)
        except ProgramLost as exc:
            lost = exc
        if lost is not None:
            # The program may outlive its chaperone: kill what is left of it, so a rerun
            # never runs beside it.
            with trio.CancelScope(shield=True):
                await backend.kill(state.handle, self.record.spec.kill_grace)
            backend.release_slot(self.key)
            await self._end_attempt(None, lost=f"lost: {lost}")
            return
        backend.release_slot(self.key)
        await self._end_attempt(await self._with_value(backend, result))

    async def _kill(self, state: ProcessState) -> None:
        # Reached from every phase; a launch whose record was not written yet is found by
        # its key, so a program launched just before a crash is killed too.
        backend = self.context.backend_for(self.record.spec)
        spec = self.record.spec
        handle = state.handle or await backend.find(self.key, spec.host)
        result = None
        if handle is not None:
            result = await backend.kill(handle, self.record.spec.kill_grace)
        backend.release_slot(self.key)
        if result is not None:
            result = await self._with_value(backend, result)
        await self._advance("killed", result=result)

    async def _with_value(self, backend: Backend, result: Result) -> Result:
        """``result`` with the value its program wrote to ``$CORRA_RESULT``, read before
        its exit is recorded (`corra.processes._values`: the same after a crash)."""
        return await with_value(
            result, backend, self.key, self.record.spec.host, self.context.results_dir
        )

    async def _end_attempt(self, result: Result | None, *, lost: str | None = None) -> None:
        spec = self.record.spec
        attempt = self.record.state.attempt
        event, reason = after_exit(spec.restart, spec.max_attempts, attempt, result, lost=lost)
        await self._advance(event, reason=reason, result=result)

    async def _advance(self, event: Event, *, background: bool = False, **changes: Any) -> None:
        if event == "pause":
            # A paused process holds nothing, not even a slot; resume adopts one again.
            self.context.backend_for(self.record.spec).release_slot(self.key)
        record = await self.context.journal.transition(
            self.record, event, background=background, **changes
        )
        self.record = record
        if event == "pause" and record.state.paused_by == "user":  # (not for the host)
            await tell_backend(self.context.backend_for(record.spec), record, "pause")


def retry_delay(state: ProcessState) -> float:
    """Seconds a process waiting for a slot waits before it queues for one: a retry's
    backoff (`backs_off`), else none."""
    return RETRY_BACKOFF.delay(state.attempt - 1) if backs_off(state) else 0.0


class _Interrupted(BaseException):
    """A wait was cut short by a request (or a stop): back to the requests, in a fresh scope
    (`ProcessActor.main`). Not an `Exception`: no step's error handling takes it."""


class _Wait:
    """One interruptible wait of a `ProcessActor`, as a context manager (a plain class: every
    process waits at least once, and a generator-based one adds a generator and its frames to
    each wait).

    While it waits, a request cancels the actor's scope (`ProcessActor.interrupt`); one that
    came since the actor took its requests cancels it as the wait begins. As the wait ends
    with the scope cancelled (and the actor not terminated), it raises `_Interrupted`
    instead of whatever the wait ended with.
    """

    __slots__ = ("_actor",)

    def __init__(self, actor: ProcessActor) -> None:
        self._actor = actor

    def __enter__(self) -> None:
        actor = self._actor
        actor._waiting = True
        if actor._interrupted:
            actor.cancel_scope.cancel()

    def __exit__(self, *exc_info: Any) -> bool:
        actor = self._actor
        actor._waiting = False
        if actor.cancel_scope.cancel_called and not actor.terminating:
            raise _Interrupted from None
        return False


async def tell_backend(
    backend: Backend, record: ProcessRecord, hook: Literal["pause", "resume"]
) -> None:
    """Tell the backend of a pause or resume of the program (a no-op by default); a failure
    is logged, never fails the process."""
    handle = record.state.handle
    if handle is None:
        return
    try:
        await (backend.pause(handle) if hook == "pause" else backend.resume(handle))
    except (BackendError, ConfigError) as exc:
        logger.warning("process %s: the backend's %s failed: %s", record.id, hook, exc)
