"""What the command line and the API read: processes listed and shown, their history, and
their output, followed.

One read model, `ProcessQuery`, over either of two sources:

- a live runtime's `ProcessManager` (`ProcessQuery.of_manager`): the API, where the records
  of active processes in memory may be ahead of the store;
- a state dir read without a runtime (`StateDirSource`, opened by `corra._readonly`): ``corra
  ps``, ``show`` and ``logs`` when no service runs. There a record may say ``running`` of a
  program that ended long ago (no runtime collected its exit): what its chaperone recorded
  says more, and says when its output is complete.

So ``corra ps`` and ``GET /v1/processes`` filter and page the same way, and a process's output
has one follower, `ProcessQuery.follow_logs`, whichever the source.

Offsets are byte offsets into one attempt's log (every attempt writes a log of its own), and
an entry's text is exactly the bytes from its ``offset`` to its ``next_offset``, decoded as
UTF-8: a character is never split across entries (the bytes of one that is not complete yet
wait for the rest), and bytes that are not UTF-8 become U+FFFD. A reader that goes on from
the ``attempt`` and ``next_offset`` of the last entry it got misses nothing and sees nothing
twice.

Nothing here names a backend: output is read through the `Backend` protocol's ``read_log``
and ``log_size``, and what a chaperone recorded through a reader the caller passes
(`corra.backends.recorded`).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from corra._errors import NoSuchProcess
from corra.processes._backend import EffectKey
from corra.processes._lifecycle import ACTIVE
from corra.processes._process import Codec, ProcessManager, find_record, sorted_records
from corra.processes._records import ProcessRecord, Transition

#: The most bytes one log entry carries.
CHUNK = 64 << 10
#: Between two looks at a local log that had nothing new.
LOCAL_POLL = 0.1
#: Between two looks at a remote one (each look is a round trip to the host).
REMOTE_POLL = 1.0


class Recorded(Protocol):
    """What the chaperone of a process's current attempt recorded
    (`corra.backends.recorded.Recorded`)."""

    @property
    def state(self) -> str: ...

    def json(self) -> dict[str, Any]: ...


#: What the chaperone of a record's program recorded, read from the state dir (blocking);
#: None if the record has no program that nobody may watch.
RecordedReader = Callable[[ProcessRecord], "Recorded | None"]


class Source(Protocol):
    """Where a `ProcessQuery` reads: a live manager, or a state dir without a runtime."""

    def get(self, id_or_name: str) -> ProcessRecord:
        """The record of the process with this id, else this name; `NoSuchProcess` if none."""

    async def scan(self) -> tuple[list[ProcessRecord], int]:
        """Every readable record, oldest first, and how many could not be read."""

    def current(self, record: ProcessRecord) -> ProcessRecord:
        """``record`` as the source knows it now (a scan may lag behind memory)."""

    def history(self, record: ProcessRecord) -> list[Transition]:
        """The record's transitions, oldest first."""

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        """Per record, what its chaperone recorded where that says more than the record."""

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        """Whether ``attempt``'s log grows no more."""

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        """Up to ``size`` bytes of ``attempt``'s ``stream`` from ``offset``."""

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        """How many bytes of ``attempt``'s ``stream`` there are now (None: cannot tell)."""


@attrs.frozen
class ProcessView:
    """A process as the readers see it."""

    record: ProcessRecord
    recorded: dict[str, Any] | None = None
    """What its chaperone recorded, as JSON (`corra.backends.recorded.Recorded.json`), where
    no runtime watches its program; None where one does, or there is no program."""
    history: list[Transition] | None = None
    """Its transitions, oldest first (`ProcessQuery.show` only)."""


@attrs.frozen
class Page:
    """What `ProcessQuery.list` found."""

    items: list[ProcessView]
    next_cursor: str | None
    """The id to go on after, if there are more than ``limit``."""
    corrupt: int
    """Records that could not be read (left out)."""


@attrs.frozen
class LogEntry:
    """Output of one attempt, from ``offset`` to ``next_offset`` (see the module doc)."""

    attempt: int
    offset: int
    next_offset: int
    time: float
    stream: str
    text: str
    data: bytes = attrs.field(repr=False)
    """The bytes behind ``text``, as the program wrote them."""

    def json(self) -> dict[str, Any]:
        """As ``GET /v1/processes/{id}/logs`` streams it (``data`` is not sent)."""
        return {
            "attempt": self.attempt,
            "offset": self.offset,
            "next_offset": self.next_offset,
            "time": self.time,
            "stream": self.stream,
            "text": self.text,
        }


class Utf8Chunks:
    """Bytes in, whole characters out; counts the bytes behind the text it gave."""

    def __init__(self, offset: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = b""
        self.read = offset
        """Bytes fed so far (where the next read starts)."""
        self.emitted = offset
        """The end of the bytes whose text was given out."""
        self.data = b""
        """The bytes behind the text the last `feed` gave."""

    def feed(self, data: bytes, *, final: bool = False) -> tuple[int, str, int]:
        """``(start, text, end)``: the text of bytes ``start`` to ``end``, whole characters
        only (``final``: the log is complete, an unfinished character becomes U+FFFD)."""
        self.read += len(data)
        text = self._decoder.decode(data, final)
        pending = 0 if final else len(self._decoder.getstate()[0])
        start, self.emitted = self.emitted, self.read - pending
        fed = self._held + data if self._held else data
        self.data, self._held = fed[: self.emitted - start], fed[self.emitted - start :]
        return start, text, self.emitted


class ProcessQuery:
    """Lists, shows and follows processes, over a `Source`."""

    def __init__(self, source: Source) -> None:
        self._source = source

    @classmethod
    def of_manager(cls, manager: ProcessManager, recorded: RecordedReader) -> ProcessQuery:
        """The query of a live runtime; ``recorded`` reads what a chaperone recorded (of
        paused processes only: the actors of the others know better)."""
        return cls(_Live(manager, recorded))

    def get(self, id_or_name: str) -> ProcessRecord:
        """The process with this id, else this name.

        Raises:
            NoSuchProcess: there is none.
        """
        return self._source.get(id_or_name)

    async def list(
        self,
        *,
        phase: str | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page:
        """The processes in ``phase``, called ``name``, with all of ``labels``, oldest first;
        after the process ``cursor``, at most ``limit`` of them (None: all).

        Raises:
            NoSuchProcess: ``cursor`` is not the id of a process.
        """
        records, corrupt = await self._source.scan()
        start = 0
        if cursor is not None:
            for index, record in enumerate(records):
                if record.id == cursor:
                    start = index + 1
                    break
            else:
                raise NoSuchProcess(cursor, "cursor: not a process id")
        chosen: list[ProcessRecord] = []
        next_cursor = None
        for record in records[start:]:
            record = self._source.current(record)
            if phase is not None and record.phase != phase:
                continue
            if name is not None and record.name != name:
                continue
            if labels and any(record.spec.labels.get(k) != v for k, v in labels.items()):
                continue
            if len(chosen) == limit:
                next_cursor = chosen[-1].id
                break
            chosen.append(record)
        recorded = await self._source.recorded(chosen)
        items = [ProcessView(record, found) for record, found in zip(chosen, recorded, strict=True)]
        return Page(items, next_cursor, corrupt)

    async def show(self, process: str | ProcessRecord) -> ProcessView:
        """One process (by id or name, or its record: no lookup then), with its history.

        Raises:
            NoSuchProcess: there is none.
        """
        record = process if isinstance(process, ProcessRecord) else self.get(process)
        history = self.history(record)
        [recorded] = await self._source.recorded([record])
        return ProcessView(record, recorded, history)

    def history(self, record: ProcessRecord) -> list[Transition]:
        """The transitions of a record in hand, oldest first, as durable in the store."""
        return self._source.history(record)

    async def log_end(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        """Where a read of ``stream`` of ``attempt`` without ``follow`` ends: the size of its
        log now, or None if the attempt is over (its log grows no more) or the backend cannot
        tell. Taken before the answer begins: a program that writes faster than its reader
        reads would make a read to "the end" go on forever."""
        if record.state.attempt > attempt or record.state.terminal:
            await trio.lowlevel.checkpoint()
            return None
        return await self._source.log_size(record, stream, attempt)

    async def follow_logs(
        self,
        process_id: str,
        *,
        stream: str,
        attempt: int,
        offset: int,
        follow: bool,
        stopping: trio.Event | None = None,
        end: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AsyncGenerator[LogEntry, None]:
        """The entries of ``stream``, from ``offset`` of ``attempt``.

        Without ``follow``, the output there is (the attempt's complete characters, unless it
        is over), up to ``end`` if given (`log_end`, taken when the read began). With it, it
        goes on through the later attempts until the process's last attempt is over and its
        log is drained, or until ``stopping`` is set (a service stops: its client goes on
        with the next one), also while a program writes faster than its reader reads. A
        checkpoint at every read.

        Raises:
            NoSuchProcess: the process is gone (never, in practice: records are kept).
        """
        chunks = Utf8Chunks(offset)
        while True:
            # Looked at before reading: if the attempt was over then, what is read next is all
            # of its output.
            record = self._source.get(process_id)
            over = await self._source.attempt_over(record, attempt)
            while end is None or chunks.read < end:
                size = CHUNK if end is None else min(CHUNK, end - chunks.read)
                data = await self._source.read_log(record, stream, chunks.read, size, attempt)
                if not data:
                    break
                start, text, stop = chunks.feed(data)
                if text:
                    yield LogEntry(attempt, start, stop, clock(), stream, text, chunks.data)
                if len(data) < size or (follow and _is_set(stopping)):
                    break
            if follow and _is_set(stopping):
                return  # (the reader goes on from its last entry with the next service)
            if over:
                start, text, stop = chunks.feed(b"", final=True)
                if text:
                    yield LogEntry(attempt, start, stop, clock(), stream, text, chunks.data)
                if record.state.attempt > attempt and follow:
                    attempt += 1
                    chunks = Utf8Chunks(0)
                    continue
                return
            if not follow:
                return
            poll = REMOTE_POLL if record.spec.host else LOCAL_POLL
            if stopping is None:
                await trio.sleep(poll)
            else:
                with trio.move_on_after(poll):
                    await stopping.wait()


def _is_set(event: trio.Event | None) -> bool:
    return event is not None and event.is_set()


class _Live:
    """A live runtime's manager as a `Source`."""

    def __init__(self, manager: ProcessManager, recorded: RecordedReader) -> None:
        self._manager = manager
        self._recorded = recorded

    def get(self, id_or_name: str) -> ProcessRecord:
        return self._manager.get(id_or_name)

    async def scan(self) -> tuple[list[ProcessRecord], int]:
        # (corrupt records are left out, and set aside by the recovery)
        return await trio.to_thread.run_sync(self._manager.list), 0

    def current(self, record: ProcessRecord) -> ProcessRecord:
        if record.phase in ACTIVE:
            return self._manager.get(record.id)  # (memory can be ahead of the disk)
        return record

    def history(self, record: ProcessRecord) -> list[Transition]:
        return self._manager.history(record)

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        # Only a paused process's program may run unwatched (it may have ended meanwhile:
        # resume collects it); the actors of the others know better.
        if not any(record.phase == "paused" for record in records):
            await trio.lowlevel.checkpoint()
            return [None] * len(records)
        return await trio.to_thread.run_sync(
            _read_recorded, self._recorded, [r if r.phase == "paused" else None for r in records]
        )

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        await trio.lowlevel.checkpoint()
        return record.state.attempt > attempt or record.state.terminal

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        return await self._manager.read_log(record, stream, offset, size, attempt=attempt)

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        return await self._manager.log_size(record, stream, attempt=attempt)


class StateDirSource:
    """A state dir read without a runtime, as a `Source` (see `corra._readonly`).

    Args:
        store: the store, opened read-only (`corra.persistence.open_store_readonly`).
        codec: the records' codec; ``history_codec``: the transitions'.
        recorded: what a chaperone recorded of a record's program.
        backend: the backend of a record, opened read-only (for its ``read_log`` and
            ``log_size``).
    """

    def __init__(
        self,
        store: Any,
        codec: Codec,
        history_codec: Codec,
        recorded: RecordedReader,
        backend: Callable[[ProcessRecord], Awaitable[Any]],
    ) -> None:
        self._store = store
        self._codec = codec
        self._history_codec = history_codec
        self._recorded = recorded
        self._backend = backend

    def get(self, id_or_name: str) -> ProcessRecord:
        return find_record(self._store, self._codec, id_or_name)

    async def scan(self) -> tuple[list[ProcessRecord], int]:
        await trio.lowlevel.checkpoint()
        return sorted_records(self._store, self._codec)

    def current(self, record: ProcessRecord) -> ProcessRecord:
        return record

    def history(self, record: ProcessRecord) -> list[Transition]:
        return [self._history_codec.decode(raw) for raw in self._store.history(record.id)]

    async def recorded(self, records: Sequence[ProcessRecord]) -> list[dict[str, Any] | None]:
        # No runtime watches any of them (or one that does is not asked): every program of a
        # current attempt may have ended unseen.
        return await trio.to_thread.run_sync(_read_recorded, self._recorded, list(records))

    async def attempt_over(self, record: ProcessRecord, attempt: int) -> bool:
        if record.state.attempt > attempt or record.phase not in ACTIVE:
            await trio.lowlevel.checkpoint()
            return True
        # Its record may say running long after its program ended: its chaperone knows.
        found = await trio.to_thread.run_sync(self._recorded, record)
        return found is not None and found.state in ("exited", "lost")

    async def read_log(
        self, record: ProcessRecord, stream: str, offset: int, size: int, attempt: int
    ) -> bytes:
        backend = await self._backend(record)
        key = str(EffectKey(record.id, attempt))
        data: bytes = await backend.read_log(key, stream, offset, size, record.spec.host)
        return data

    async def log_size(self, record: ProcessRecord, stream: str, attempt: int) -> int | None:
        backend = await self._backend(record)
        size: int | None = await backend.log_size(
            str(EffectKey(record.id, attempt)), stream, record.spec.host
        )
        return size


def _read_recorded(
    reader: RecordedReader, records: Sequence[ProcessRecord | None]
) -> list[dict[str, Any] | None]:
    """Per record (None: not asked), what its chaperone recorded, as JSON."""
    out: list[dict[str, Any] | None] = []
    for record in records:
        found = None if record is None else reader(record)
        out.append(None if found is None else found.json())
    return out
