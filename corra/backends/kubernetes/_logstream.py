"""The records of a pod's log as the kubelet serves it with ``timestamps=true``: no I/O.

What a kubelet sends (``pkg/kubelet/kuberuntime/logs``, 1.20 and since, which this relies
on): one *record* per entry of the container runtime's log file, in the file's order, each
``<time> <content>``. The time is the runtime's, in Go's ``RFC3339NanoFixed`` (UTC, always
nine digits: ``2006-01-02T15:04:05.000000000Z``). The content is the program's bytes, stdout
and stderr in one stream, as it wrote them:

- a *full* entry (CRI tag ``F``) is a line, its newline included;
- a *partial* entry (tag ``P``) has no newline: the runtime split a line longer than its
  limit (16 KiB in containerd and Docker), or it is the program's last, unfinished line.
  The kubelet does not join partial entries: it writes each with its own time, so the next
  record's time follows a partial content directly, in the middle of a line of the stream.

`RecordReader` splits a stream into records, so that what comes home is exactly the bytes
the program wrote. A record ends at its newline, or where the next record's time starts
inside it: a time in the kubelet's fixed form followed by a space, not at the start of the
content (a partial content is never empty; a program's own log lines often start with a
time), and not earlier than the record's own time (the runtime reads what the program wrote
after the program wrote it, so a time the program printed of itself is older). So a line of
its own output is cut only if it carries, after its first byte, a nine-digit UTC time not
older than the moment the runtime read it, followed by a space. A server that writes its
times in another form gets its records split at newlines only. A line that does not start
with a time (no kubelet writes one) is kept as content, under the time of the record before.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from typing import Final

import attrs

logger = logging.getLogger("corra.backend.kubernetes")

NANOSECONDS: Final = 1_000_000_000

#: A record's time and the space after it, in any RFC 3339 form (what parses).
_PREFIX: Final = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) ")
_STAMP: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
#: The kubelet's own form (RFC3339NanoFixed in UTC) and the space after it.
_FIXED: Final = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
_FIXED_LENGTH: Final = len("2006-01-02T15:04:05.000000000Z ")
#: The longest prefix `_PREFIX` matches (nine digits and an offset, then the space).
_LONGEST_PREFIX: Final = len("2006-01-02T15:04:05.000000000+00:00 ")


@attrs.frozen
class Record:
    """One entry of the container's log."""

    time: int
    """Nanoseconds since the epoch."""
    stamp: str
    """The time as the server wrote it."""
    data: bytes
    """The program's bytes (a full entry's newline included)."""

    @property
    def second(self) -> int:
        """The whole second of its time: what a ``sinceTime`` can ask from."""
        return self.time // NANOSECONDS


def parse_stamp(stamp: str) -> int:
    """An RFC 3339 time (as `_PREFIX` matches it) in nanoseconds since the epoch.

    Raises:
        ValueError: it is not one.
    """
    match = _STAMP.fullmatch(stamp)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {stamp!r}")
    whole, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * NANOSECONDS + int((fraction or "").ljust(9, "0"))


def format_second(second: int) -> str:
    """A whole second since the epoch as RFC 3339 (UTC): a ``sinceTime``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


class RecordReader:
    """Splits the bytes of one log response into `Record` s, as they arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # where the search for the next record's time goes on
        self._seconds: dict[bytes, int] = {}  # (a cache: few distinct seconds per stream)
        self._last: Record | None = None  # the last record made (a malformed line's time)

    def feed(self, data: bytes) -> list[Record]:
        """The records ``data`` completes (a record is complete at its newline, or once the
        next one's time has come)."""
        self._buffer += data
        records = []
        while self._buffer:
            record = self._next(at_end=False)
            if record is None:
                break
            records.append(record)
        return records

    def rest(self) -> Record | None:
        """At the end of a response that ended as it should: what is left, the container's
        last entry (a partial one, or a line cut at the runtime's limit)."""
        if not self._buffer:
            return None
        return self._next(at_end=True)

    def _next(self, *, at_end: bool) -> Record | None:
        buffer = self._buffer
        newline = buffer.find(b"\n")
        head = _PREFIX.match(buffer)
        if head is None:
            if newline < 0 and not at_end:
                return None  # the start of a time, or a malformed line not ended yet
            end = len(buffer) if newline < 0 else newline + 1
            return self._take(self._malformed(bytes(buffer[:end])), end)
        stamp, start = head.group(1), head.end()
        when = self._time(stamp)
        if len(stamp) + 1 == _FIXED_LENGTH and stamp.endswith(b"Z"):
            # The kubelet's form: the content may end where the next record's time starts.
            end = newline if newline >= 0 else len(buffer)
            position = max(start + 1, self._scanned)
            while (found := _FIXED.search(buffer, position, end)) is not None:
                if self._time(found.group()[:-1]) >= when:
                    record = Record(when, stamp.decode(), bytes(buffer[start : found.start()]))
                    return self._take(record, found.start())
                position = found.start() + 1
            if newline < 0 and not at_end:
                # A time may be arriving across the end: look at its start again.
                self._scanned = max(start + 1, len(buffer) - _FIXED_LENGTH + 1)
                return None
        elif newline < 0 and not at_end:
            return None
        end = len(buffer) if newline < 0 else newline + 1
        return self._take(Record(when, stamp.decode(), bytes(buffer[start:end])), end)

    def _take(self, record: Record, end: int) -> Record:
        del self._buffer[:end]
        self._scanned = 0
        self._last = record
        return record

    def _time(self, stamp: bytes) -> int:
        if not stamp.endswith(b"Z"):
            return parse_stamp(stamp.decode())
        whole = stamp[:19]
        seconds = self._seconds.get(whole)
        if seconds is None:
            if len(self._seconds) >= 64:
                self._seconds.clear()
            seconds = parse_stamp(whole.decode() + "Z") // NANOSECONDS
            self._seconds[whole] = seconds
        return seconds * NANOSECONDS + int(stamp[20:-1].ljust(9, b"0"))

    def _malformed(self, line: bytes) -> Record:
        logger.warning("a pod log line without its time, kept as it is: %r", line[:80])
        last = self._last
        return Record(last.time if last else 0, last.stamp if last else "", line)
