"""A process's output as entries of text, from a byte offset, optionally following it.

Offsets are byte offsets into one attempt's log (every attempt writes a log of its own), and
an entry's text is exactly the bytes from its ``offset`` to its ``next_offset``, decoded as
UTF-8: a character is never split across entries (the bytes of one that is not complete yet
wait for the rest), and bytes that are not UTF-8 become U+FFFD. A client that reconnects with
the ``attempt`` and ``next_offset`` of the last entry it got misses nothing and sees nothing
twice.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from corra.processes._manager import ProcessManager
from corra.processes._record import ProcessRecord

#: The most bytes one entry carries.
CHUNK = 64 << 10
#: Between two looks at a local log that had nothing new.
LOCAL_POLL = 0.1
#: Between two looks at a remote one (each look is a round trip to the host).
REMOTE_POLL = 1.0


class Utf8Chunks:
    """Bytes in, whole characters out; counts the bytes behind the text it gave."""

    def __init__(self, offset: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.read = offset
        """Bytes fed so far (where the next read starts)."""
        self.emitted = offset
        """The end of the bytes whose text was given out."""

    def feed(self, data: bytes, *, final: bool = False) -> tuple[int, str, int]:
        """``(start, text, end)``: the text of bytes ``start`` to ``end``, whole characters
        only (``final``: the log is complete, an unfinished character becomes U+FFFD)."""
        self.read += len(data)
        text = self._decoder.decode(data, final)
        pending = 0 if final else len(self._decoder.getstate()[0])
        start, self.emitted = self.emitted, self.read - pending
        return start, text, self.emitted


async def log_end(
    manager: ProcessManager, record: ProcessRecord, stream: str, attempt: int
) -> int | None:
    """Where a read of ``stream`` of ``attempt`` without ``follow`` ends: the size of its log
    now, or None if the attempt is over (its log grows no more) or the backend cannot tell.
    Taken before the answer begins: a program that writes faster than its client reads
    would make a read to "the end" go on forever."""
    if record.state.attempt > attempt or record.state.terminal:
        await trio.lowlevel.checkpoint()
        return None
    return await manager.log_size(record, stream, attempt=attempt)


async def log_entries(
    manager: ProcessManager,
    process_id: str,
    *,
    stream: str,
    attempt: int,
    offset: int,
    follow: bool,
    stopping: trio.Event,
    end: int | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[dict[str, Any]]:
    """Entries ``{attempt, offset, next_offset, time, stream, text}`` of ``stream``, from
    ``offset`` of ``attempt``.

    Without ``follow``, the output there is (the last attempt's complete characters, unless
    the process is terminal), up to ``end`` if given (`log_end`, taken when the request
    began). With it, it goes on through the later attempts until the process is terminal
    and its log is drained, or until ``stopping`` is set (the service stops: the client
    reconnects to the next one), also while a program writes faster than the client reads.
    A checkpoint at every read.

    Raises:
        NoSuchProcess: the process is gone (never, in practice: records are kept).
    """
    chunks = Utf8Chunks(offset)
    while True:
        # Looked at before reading: if the attempt was over then, what is read next is all
        # of its output.
        record = manager.get(process_id)
        over = record.state.attempt > attempt or record.state.terminal
        while end is None or chunks.read < end:
            size = CHUNK if end is None else min(CHUNK, end - chunks.read)
            data = await manager.read_log(record, stream, chunks.read, size, attempt=attempt)
            if not data:
                break
            start, text, stop = chunks.feed(data)
            if text:
                yield _entry(attempt, start, stop, clock(), stream, text)
            if len(data) < size or (follow and stopping.is_set()):
                break
        if follow and stopping.is_set():
            return  # (the client goes on from its last entry with the next service)
        if over:
            start, text, stop = chunks.feed(b"", final=True)
            if text:
                yield _entry(attempt, start, stop, clock(), stream, text)
            if record.state.attempt > attempt and follow:
                attempt += 1
                chunks = Utf8Chunks(0)
                continue
            return
        if not follow:
            return
        with trio.move_on_after(REMOTE_POLL if record.spec.host else LOCAL_POLL):
            await stopping.wait()


def _entry(attempt: int, start: int, end: int, at: float, stream: str, text: str) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "offset": start,
        "next_offset": end,
        "time": at,
        "stream": stream,
        "text": text,
    }
