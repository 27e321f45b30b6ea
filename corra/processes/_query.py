"""What the command line and the API read: processes listed and shown, their history, and
their output, followed.

One read model, `ProcessQuery`, over either source (`corra.processes._sources`): a live
runtime's manager (the API: `ProcessQuery.of_manager`), or a state dir read without a runtime
(``corra ps``, ``show`` and ``logs`` when no service runs: `corra._readonly`). So ``corra ps``
and ``GET /v1/processes`` filter and page the same way, and a process's output has one
follower, `ProcessQuery.follow_logs`, whichever the source.

Offsets are byte offsets into one attempt's log (every attempt writes a log of its own), and
an entry's text is exactly the bytes from its ``offset`` to its ``next_offset``, decoded as
UTF-8: a character is never split across entries (the bytes of one that is not complete yet
wait for the rest), and bytes that are not UTF-8 become U+FFFD. A reader that goes on from
the ``attempt`` and ``next_offset`` of the last entry it got misses nothing and sees nothing
twice.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import attrs
import trio

from corra._errors import ConfigError
from corra.processes._listing import Selection, decode_cursor, encode_cursor
from corra.processes._manager import ProcessManager
from corra.processes._notes import Note, note_of
from corra.processes._record import ProcessRecord, Transition
from corra.processes._sources import LiveSource, RecordedReader, Source
from corra.processes._statuses import ProgramStatus, statuses_of

#: Processes in a page when the reader does not say.
DEFAULT_LIMIT = 100
#: The order of a history's cursors (`corra.processes._listing.encode_cursor`), and the
#: bytes of the sequence number they hold.
_HISTORY = "h"
_SEQUENCE_BYTES = 8
#: The most bytes one log entry carries.
CHUNK = 64 << 10
#: Between two looks at a local log that had nothing new.
LOCAL_POLL = 0.1
#: Between two looks at a remote one (each look is a round trip to the host).
REMOTE_POLL = 1.0


@attrs.frozen
class ProcessView:
    """A process as the readers see it."""

    record: ProcessRecord
    recorded: dict[str, Any] | None = None
    """What its chaperone recorded, as JSON (`corra.backends.recorded.Recorded.json`), where
    no runtime watches its program; None where one does, or there is no program."""
    history: list[Transition] | None = None
    """Its transitions, oldest first (`ProcessQuery.show` only)."""
    note: Note | None = None
    """What its backend says of where its current attempt's program is
    (`corra.processes._notes`; `ProcessQuery.show` only)."""
    status: ProgramStatus | None = None
    """What its current attempt's program said last of how far it is
    (`corra.processes._statuses`)."""


@attrs.frozen
class Page:
    """What `ProcessQuery.list` found."""

    items: list[ProcessView]
    next_cursor: str | None
    """Where the next page starts, if there are more than ``limit`` (opaque)."""
    corrupt: int
    """Records of the page that could not be read (left out)."""


@attrs.frozen
class HistoryPage:
    """What `ProcessQuery.history_page` found."""

    items: list[Transition]
    """Transitions, oldest first."""
    next_cursor: str | None
    """Where the next page starts, if there are more than ``limit`` (opaque)."""


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
        return cls(LiveSource(manager, recorded))

    @property
    def store(self) -> Any:
        """The store it reads (what the layers above read their own entries of)."""
        return self._source.store

    def get(self, id_or_name: str) -> ProcessRecord:
        """The process with this id, else this name.

        Raises:
            NoSuchProcess: there is none.
        """
        return self._source.get(id_or_name)

    async def list(
        self,
        selection: Selection | None = None,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> Page:
        """One page of the processes ``selection`` selects (None: all), after ``cursor``, at most
        ``limit`` (`corra.processes._listing`): in creation order, oldest first, or in name
        order with a name prefix or glob. Only the page's records are read.

        Raises:
            ConfigError: ``cursor`` is not one of this listing's, or ``limit`` is not >= 1.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit: got {limit!r}, expected an integer >= 1")
        if selection is None:
            selection = Selection()
        records, next_cursor, corrupt = await self._source.page(selection, cursor, limit)
        chosen = []
        for record in records:
            # (memory may be ahead of the disk: a process that has left the selection since
            # its last durable save is left out)
            record = self._source.current(record)
            if not selection.phases or record.phase in selection.phases:
                chosen.append(record)
        recorded = await self._source.recorded(chosen)
        statuses = self.statuses(chosen)
        items = [
            ProcessView(record, found, status=status)
            for record, found, status in zip(chosen, recorded, statuses, strict=True)
        ]
        return Page(items, next_cursor, corrupt)

    async def phase_counts(self) -> dict[str, int]:
        """Processes per phase, every phase (zeros too), from the counts the store keeps."""
        return await self._source.phase_counts()

    async def show(self, process: str | ProcessRecord) -> ProcessView:
        """One process (by id or name, or its record: no lookup then), with its history.

        Raises:
            NoSuchProcess: there is none.
        """
        record = process if isinstance(process, ProcessRecord) else self.get(process)
        history = self.history(record)
        [recorded] = await self._source.recorded([record])
        note = note_of(self._source.store, record)
        [status] = self.statuses([record])
        return ProcessView(record, recorded, history, note, status)

    def statuses(self, records: list[ProcessRecord]) -> list[ProgramStatus | None]:
        """The status of each record's current attempt, or None (`corra.processes.
        _statuses`): one read of the store for all of them."""
        return statuses_of(self._source.store, records, self._source.latest_status)

    def history(self, record: ProcessRecord) -> list[Transition]:
        """The transitions of a record in hand, oldest first, as durable in the store."""
        return self._source.history(record)

    def history_page(
        self, record: ProcessRecord, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> HistoryPage:
        """Up to ``limit`` transitions of a record in hand, oldest first, after ``cursor``:
        only those are read and decoded, however long the history (its entries are stored
        apart, keyed by process and sequence number). A cursor names the last entry given,
        so a page read while the process goes on misses none and repeats none.

        Raises:
            ConfigError: ``cursor`` is not one of a history's, or ``limit`` is not >= 1.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit: got {limit!r}, expected an integer >= 1")
        after = None
        if cursor is not None:
            position = decode_cursor(cursor, _HISTORY)
            if len(position) != _SEQUENCE_BYTES:
                raise ConfigError(f"cursor: got {cursor!r}, not one of a history's cursors")
            after = int.from_bytes(position, "big")
        entries, more = self._source.history_page(record, after, limit)
        following = None
        if more and entries:
            following = encode_cursor(_HISTORY, entries[-1][0].to_bytes(_SEQUENCE_BYTES, "big"))
        return HistoryPage([transition for _, transition in entries], following)

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
