"""The processes with work to do: the actors of those that have one, and the admission queue
of those that wait for a slot (`corra.processes._admission`), which have none.

`ProcessManager` starts (`ActiveProcesses.start`) every process that has work to do: a
process waiting for a slot (``created``) is queued, by id; one that has its slot, or is past
waiting for one, gets an actor under ``/processes``. An actor that ends with its process
waiting for a slot again (a retry) hands it back to the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import trio

from corra.actors._actor import Ref
from corra.actors._specs import ChildSpec
from corra.actors._supervisor import SupervisorRef
from corra.processes._actor import ProcessActor, ProcessContext, retry_delay
from corra.processes._admission import Admission, Place
from corra.processes._backend import Backend, EffectKey, LaunchRequest
from corra.processes._hosts import HostWaits
from corra.processes._journal import Journal
from corra.processes._record import ProcessRecord
from corra.processes._requests import effect_key
from corra.processes._spec import ProcessSpec

logger = logging.getLogger("corra.process")


class ActiveProcesses:
    """The actors of active processes by id, and the queue of those waiting for a slot.

    Args:
        supervisor: where the actors run (``/processes``).
        journal: the processes' journal (records of processes with an actor are held there).
        backends: the backends by name; ``backend_for``: the backend of a spec.
        hosts: where an actor waits for a host that stopped answering.
        nursery: where the admission's tasks run.
        control: the manager's lock of decisions that read a record and then write it; an
            admission is one.
        ended: told of the record of each actor that ends (`StoredNotes.ended`), if given.
        results_dir: where values too large for their record are kept (`ProcessContext`).
    """

    def __init__(
        self,
        *,
        supervisor: SupervisorRef,
        journal: Journal,
        backends: Mapping[str, Backend],
        backend_for: Callable[[ProcessSpec], Backend],
        hosts: HostWaits,
        nursery: trio.Nursery,
        control: trio.Lock,
        ended: Callable[[ProcessRecord], None] | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._on_end = ended
        self._journal = journal
        self._control = control
        self._context = ProcessContext(
            backend_for=backend_for,
            journal=journal,
            hosts=hosts,
            ended=self._ended,
            results_dir=results_dir,
        )
        self._admission = Admission(backends, self._admit, self._resolve, nursery, self._check_idle)
        self._actors: dict[str, Ref] = {}
        self._idle = trio.Event()  # set when the last actor ends and nothing is queued

    def __contains__(self, process_id: str) -> bool:
        """Whether the process has an actor now."""
        return process_id in self._actors

    def __getitem__(self, process_id: str) -> Ref:
        return self._actors[process_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actors)

    def __len__(self) -> int:
        """How many processes have an actor now."""
        return len(self._actors)

    def get(self, process_id: str) -> Ref | None:
        """The process's actor, if it has one."""
        return self._actors.get(process_id)

    @property
    def queued(self) -> int:
        """How many processes wait for a slot (or a retry's backoff before that)."""
        return self._admission.waiting

    def queued_for(self, backend: str) -> bool:
        """Whether a process waits for a slot of ``backend`` (then a new one queues too)."""
        return self._admission.queued(backend)

    def recovered(self, process_ids: Sequence[str]) -> None:
        """Queue the processes that waited for a slot when the last runtime stopped, in this
        order (their submissions'), ahead of any queued later; their records are read in
        the background (`corra.processes._admission`)."""
        self._admission.recovered(process_ids)

    def leave(self, record: ProcessRecord) -> None:
        """Take the process out of the queue (it was paused or killed); nothing if it is
        not in it."""
        self._admission.leave(record.id, record.spec.backend)

    async def wait_idle(self) -> None:
        """Wait until no process has an actor and none is queued. A checkpoint."""
        while self._actors or self._admission.waiting:
            await self._idle.wait()
        await trio.lowlevel.checkpoint()

    def _check_idle(self) -> None:
        if not self._actors and not self._admission.waiting:
            self._idle.set()
            self._idle = trio.Event()

    async def start(
        self, record: ProcessRecord, request: LaunchRequest | None = None, *, admitted: bool = False
    ) -> None:
        """Start the actor of ``record``, unless it has one; ``request``: the launch request
        of its current attempt, if one was made (the actor makes it otherwise). A process
        that waits for a slot (``created``, not ``admitted``: holding none) gets no actor: it
        is queued (`_queue`). A checkpoint."""
        if record.id in self._actors:
            await trio.lowlevel.checkpoint()
            return
        if record.phase == "created" and not admitted:
            self._queue(record)
            await trio.lowlevel.checkpoint()
            return
        journal = self._journal
        journal.hold(record)
        spec = ChildSpec(
            id=record.id,
            start=lambda: ProcessActor(
                self._context, journal.latest(record.id) or record, request, admitted=admitted
            ),
            restart="temporary",
            # Its effects are idempotent and its writes shielded: stopping it at once loses
            # nothing (the next runtime goes on from its last durable record).
            shutdown="brutal_kill",
            mailbox_capacity=4,
        )
        try:
            # No round trip through the supervisor, no wait for the actor's start (it only
            # builds the actor): the common case, whenever the supervisor is idle.
            ref = self._supervisor.start_child_nowait(spec)
        except trio.WouldBlock:
            started = await self._supervisor.start_child(spec)
            assert isinstance(started, Ref)
            ref = started
        if ref.alive:  # it may have run to its end already
            self._actors[record.id] = ref

    def _queue(self, record: ProcessRecord) -> None:
        """Queue a process (with no actor) for a slot, in the order of submissions; a
        retry after its backoff. Only its key stays in memory (the journal published the
        record that made it wait: forgotten)."""
        self._journal.release(record.id)
        delay = retry_delay(record.state)
        self._admission.enqueue(effect_key(record), record.spec.backend, delay=delay)

    async def _admit(self, key: EffectKey) -> bool:
        """The admission holds a slot for ``key``: start its process's actor with it (True),
        unless it waits for it no more (False: the slot goes back)."""
        journal = self._journal
        async with self._control:  # (a pause or kill decided meanwhile is durable: read it)
            record = journal.latest(key.process_id)
            if record is None:
                raw = journal.store.load(key.process_id)
                record = None if raw is None else journal.codec.decode(raw)
            if (
                record is None
                or record.phase != "created"
                or record.state.attempt != key.attempt
                or record.id in self._actors
            ):
                return False
            await self.start(record, admitted=True)
            return True

    async def _resolve(self, process_ids: Sequence[str]) -> list[Place | None]:
        """Where each of these recovered processes waits, from its record (read in a
        thread); None for one that waits no more, or whose record cannot be decoded (set
        aside, as recovery does)."""
        store, codec = self._journal.store, self._journal.codec

        def read() -> list[ProcessRecord | tuple[bytes, str] | None]:
            found: list[ProcessRecord | tuple[bytes, str] | None] = []
            for process_id in process_ids:
                raw = store.load(process_id)
                try:
                    found.append(None if raw is None else codec.decode(raw))
                except Exception as exc:
                    assert raw is not None
                    found.append((raw, str(exc)))
            return found

        places: list[Place | None] = []
        read_records = await trio.to_thread.run_sync(read)
        for process_id, found in zip(process_ids, read_records, strict=True):
            if isinstance(found, tuple):
                raw, reason = found
                logger.error("process %s: corrupt record set aside: %s", process_id, reason)
                await store.set_aside(process_id, raw, reason)
                found = None
            if found is None or found.phase != "created":
                places.append(None)
                continue
            places.append((found.spec.backend, found.state.attempt, retry_delay(found.state)))
        return places

    def _ended(self, actor: ProcessActor) -> None:
        process_id = actor.id
        if self._actors.get(process_id) == actor.ref:
            del self._actors[process_id]
        self._journal.release(process_id)
        record = actor.record
        stopped = actor.stopping or actor.terminating
        if record.phase == "created" and not actor.admitted and not stopped:
            # A retry: it waits for its backoff and a slot in the queue, not as an actor.
            self._queue(record)
        if self._on_end is not None:
            self._on_end(record)
        self._check_idle()
