"""The logs of one attempt at home, and where their shipping stands (`LogFiles`).

What the position counts as home is home: the data is written first, then the position
(replaced whole, at most every `POSITION_EVERY` seconds while the log grows, and at once when
the shipping stops, cancelled or not: `LogFiles.flush`). So the data file may be longer than
the position says, never shorter; the next shipping cuts it back to the position when it
opens it (`LogFiles.open`) and fetches those bytes again: the same bytes, so a reader that
saw them saw the truth. Nothing is fsynced: after a machine crash, a data file shorter than
its position makes the shipping start over from the first line (the pod keeps its log until
it is deleted, which the backend does only once the log is complete).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from corra._statedir import make_private_dirs, open_private, read_private, write_private
from corra.backends.kubernetes._logstream import Record, format_second, parse_stamp

logger = logging.getLogger("corra.backend.kubernetes")

#: The container's log (both streams: the kubelet merges them).
STDOUT: Final = "stdout"
#: Where the shipping resumes, beside the data.
POSITION_FILE: Final = "log-position.json"
POSITION_FORMAT: Final = 1
#: The most seconds between two writes of the position while the log grows (a write of it
#: costs a file made and renamed: per line of a chatty program, it would be most of the
#: shipping's time).
POSITION_EVERY: Final = 0.25


@attrs.frozen
class Position:
    """Where one attempt's log stands at home (``log-position.json``)."""

    size: int = 0
    """Bytes in the data file."""
    dropped: int = 0
    """Bytes past the limit, not kept."""
    since: int | None = None
    """The whole second (since the epoch) of the latest record home: where to ask again."""
    skip: int = 0
    """Records of second `since` home already (an answer from `since` starts with them)."""
    last: str | None = None
    """The latest record's time, as the server wrote it."""
    complete: bool = False
    """The container ended and everything it wrote is home."""

    def to_json(self) -> bytes:
        document = attrs.asdict(self)
        document["since"] = None if self.since is None else format_second(self.since)
        return json.dumps({"format": POSITION_FORMAT, **document}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Position:
        document = json.loads(data)
        if document.pop("format", None) != POSITION_FORMAT:
            raise ValueError(f"unknown log position format: {data[:80]!r}")
        since = document.pop("since")
        since = None if since is None else parse_stamp(since) // 1_000_000_000
        return cls(since=since, **document)


class LogFiles:
    """The logs of one attempt at home: ``<directory>/stdout`` (the container's log: stdout
    and stderr merged, as Kubernetes keeps them; there is no stderr) and
    ``<directory>/log-position.json`` (`Position`). The directory is 0700, the files 0600,
    made at the first write; files are opened without following links (`corra._statedir`).

    Readers (`read`, `size`, `complete`, `dropped`) look at the files each time, so another
    process reads what the shipping one writes. One shipping at a time per directory.

    Args:
        directory: the attempt's own directory.
        limit: bytes kept (the spec's output limit; None: all): the first ``limit`` bytes
            stay, the rest is counted in `dropped`.
    """

    def __init__(self, directory: Path, limit: int | None = None) -> None:
        self.directory = Path(directory)
        self.limit = limit
        self._position: Position | None = None  # the shipping's, once `open` read it
        self._latest: int | None = None  # the time of `Position.last`, in nanoseconds
        self._on_disk: Position | None = None  # the position in the file
        self._written_at = 0.0  # (monotonic) when it was written
        self._fd: int | None = None  # the data file, open for the shipping

    @property
    def _data(self) -> Path:
        return self.directory / STDOUT

    def read(self, stream: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``stream`` from ``offset``: b"" past the end, for
        ``stderr``, and before anything came home."""
        if stream != STDOUT or size <= 0:
            return b""
        try:
            fd = open_private(self._data, what="pod log")
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def size(self, stream: str) -> int:
        """The bytes of ``stream`` at home now."""
        if stream != STDOUT:
            return 0
        try:
            return self._data.stat().st_size
        except FileNotFoundError:
            return 0

    def position(self) -> Position:
        """The position as the files say it now (`Position()` before anything came home, or
        if its file cannot be read)."""
        path = self.directory / POSITION_FILE
        try:
            return Position.from_json(read_private(path, what="pod log position"))
        except FileNotFoundError:
            return Position()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not written by this corra (nor half-written: it is replaced whole): the
            # shipping starts over, as if nothing had come home.
            logger.warning("%s: unreadable (%s): taken as empty", path, exc)
            return Position()

    @property
    def complete(self) -> bool:
        """The container ended and everything it wrote is home."""
        return self.position().complete

    @property
    def dropped(self) -> int:
        """Bytes past the limit, not kept."""
        return self.position().dropped

    def remove(self) -> None:
        """Remove the directory and what is in it (nothing there is fine)."""
        self._close()
        self._position = self._on_disk = None
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)

    # -- the shipping's side ------------------------------------------------------------

    def open(self) -> Position:
        """The position to resume from, the data file made to agree with it: cut back to
        the position's size (bytes written before a crash let the position be written), or,
        shorter than it (lost in a machine crash), emptied to start over."""
        position = self.position()
        try:
            fd = open_private(self._data, os.O_RDWR, what="pod log")
        except FileNotFoundError:
            fd = None
        try:
            actual = 0 if fd is None else os.fstat(fd).st_size
            if actual > position.size and fd is not None:
                os.ftruncate(fd, position.size)
            elif actual < position.size:
                logger.warning(
                    "%s: %d bytes of %d there: shipping the pod's log again from its start",
                    self._data,
                    actual,
                    position.size,
                )
                if fd is not None:
                    os.ftruncate(fd, 0)
                position = Position()
                write_private(self.directory / POSITION_FILE, position.to_json())
        finally:
            if fd is not None:
                os.close(fd)
        self._close()
        self._position = self._on_disk = position
        self._latest = None
        with contextlib.suppress(ValueError):
            self._latest = None if position.last is None else parse_stamp(position.last)
        return position

    def shipping_position(self) -> Position:
        """The position the shipping stands at (`open` read it, `write` moved it)."""
        return self._position if self._position is not None else self.open()

    def write(self, records: Iterable[Record], *, complete: bool = False) -> Position:
        """Append ``records`` (what the limit leaves of them), then the position after them
        (marked complete with ``complete``). Never a checkpoint."""
        position = self.shipping_position()
        size, dropped, since, skip = position.size, position.dropped, position.since, position.skip
        last, latest = position.last, self._latest
        kept = []
        for record in records:
            room = len(record.data) if self.limit is None else max(0, self.limit - size)
            data = record.data[:room]
            kept.append(data)
            size += len(data)
            dropped += len(record.data) - len(data)
            if since is None or record.second > since:
                since, skip = record.second, 1
            elif record.second == since:
                skip += 1
            if latest is None or record.time >= latest:
                last, latest = record.stamp, record.time
        after = Position(size, dropped, since, skip, last, complete or position.complete)
        if after == position:
            return position
        data = memoryview(b"".join(kept))
        if data or self._fd is None:
            if self._fd is None:
                make_private_dirs(self.directory)
                self._fd = open_private(self._data, os.O_WRONLY | os.O_CREAT, what="pod log")
            offset = position.size
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written
        self._position, self._latest = after, latest
        if after.complete:
            self.flush()
        elif time.monotonic() - self._written_at >= POSITION_EVERY:
            self.write_position()
        return after

    def write_position(self) -> None:
        """Write the position, if it moved since it was last written. Never a checkpoint."""
        if self._position is not None and self._position != self._on_disk:
            write_private(self.directory / POSITION_FILE, self._position.to_json())
            self._on_disk, self._written_at = self._position, time.monotonic()

    def flush(self) -> None:
        """`write_position`, and close the data file: the shipping stops. Never a
        checkpoint."""
        self.write_position()
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
