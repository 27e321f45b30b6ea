"""The logs of an attempt, brought home while its pod runs, and kept after the pod is gone.

`ship_logs` follows the container's log through the apiserver (``pods/{pod}/log`` with
``follow``, ``timestamps`` and ``sinceTime``, built and sent by lightkube's own client:
its ``log()`` has no ``sinceTime``) into `LogFiles`, and resumes it wherever it was cut: a
lost connection, a restarted apiserver, a restarted corra (a new call with new `LogFiles` on
the same directory). The stream's records (`corra.backends.kubernetes._logstream`) carry the
runtime's times; the API takes ``sinceTime`` in whole seconds. So the position says from
which second to ask again (the second of the latest record home), and how many records of
that second are home already: an answer from that second starts with those, in the order
of the node's log file, and they are dropped. No record is lost or written twice, however
many come within one second, and in whatever order their times are within it.

Exactly the program's bytes come home: stdout and stderr merged (Kubernetes keeps one log
per container), binary or not, the last line with or without its newline. What the
position counts as home is home: the data is written first, then the position (replaced
whole), with no checkpoint between, so a cancellation finds them agreeing; after a crash
between the two, the data file is longer than the position says and is cut back to it when
the next shipping opens it. Files are flushed, not fsynced: after a machine crash, a data
file shorter than its position makes the shipping start over from the first line (the pod
keeps its log until it is deleted, which the backend does only once the log is complete).

What this leaves to the kubelet: the container runtime's log rotation (the kubelet serves
the current file only, so a follow cut off across a rotation misses what was rotated away).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import lightkube
import trio
from lightkube.core import generic_client
from lightkube.resources.core_v1 import PodLog

from corra._statedir import make_private_dirs, open_private, read_private, write_private
from corra.backends.kubernetes._logstream import Record, RecordReader, format_second, parse_stamp

logger = logging.getLogger("corra.backend.kubernetes")

#: The container's log (both streams: the kubelet merges them).
STDOUT: Final = "stdout"
#: Where the shipping resumes, beside the data.
POSITION_FILE: Final = "log-position.json"
POSITION_FORMAT: Final = 1
#: The longest pause between two requests after failures (doubling from `FIRST_PAUSE`).
MAX_PAUSE: Final = 10.0
FIRST_PAUSE: Final = 0.25
#: Seconds between two looks at ``ended()``, while a stream is open.
ENDED_POLL: Final = 1.0
#: Seconds a stream may stay silent once the container ended before it is cut and asked
#: again (a kubelet ends a follow within about a second of its container's end; this
#: guards against a connection that died without a word).
ENDED_SILENCE: Final = 5.0

# The transport errors of the HTTP library lightkube runs on (httpx or its fork httpx2).
_TRANSPORT_ERRORS: Final = (generic_client.httpx.HTTPError, OSError, trio.BrokenResourceError)


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
        self._position = None
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)

    # -- the shipping's side ------------------------------------------------------------

    def open(self) -> Position:
        """The position to resume from, the data file made to agree with it: cut back to
        the position's size (bytes written before a crash let the position be written), or,
        shorter than it (lost in a machine crash), emptied to start over."""
        position = self.position()
        with contextlib.suppress(FileNotFoundError):
            fd = open_private(self._data, os.O_RDWR, what="pod log")
            try:
                actual = os.fstat(fd).st_size
                if actual > position.size:
                    os.ftruncate(fd, position.size)
                elif actual < position.size:
                    logger.warning(
                        "%s: %d bytes of %d there: shipping the pod's log again from its start",
                        self._data,
                        actual,
                        position.size,
                    )
                    os.ftruncate(fd, 0)
                    position = Position()
                    write_private(self.directory / POSITION_FILE, position.to_json())
            finally:
                os.close(fd)
        self._position = position
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
        make_private_dirs(self.directory)
        fd = open_private(self._data, os.O_WRONLY | os.O_CREAT, what="pod log")
        try:
            data = memoryview(b"".join(kept))
            offset = position.size
            while data:
                written = os.pwrite(fd, data, offset)
                data, offset = data[written:], offset + written
        finally:
            os.close(fd)
        write_private(self.directory / POSITION_FILE, after.to_json())
        self._position, self._latest = after, latest
        return after


_Outcome = Literal["ended", "gone", "waiting", "failed", "silent"]


async def ship_logs(
    client: lightkube.AsyncClient,
    namespace: str,
    pod: str,
    files: LogFiles,
    *,
    container: str = "main",
    ended: Callable[[], bool],
) -> None:
    """Follow the log of ``pod``'s ``container`` into ``files`` until the container ended
    and all it wrote is home (then ``files`` is complete), or the pod or its log is gone.

    Args:
        ended: whether the container has terminated (the backend's watch says it). A
            stream that ends while it is False is asked for again; once it is True, one
            stream asked for after it that ends as it should completes the log.

    A checkpoint. Cancellation leaves ``files`` as they were at some record's end (a new
    call with new `LogFiles` on the same directory goes on from there). Errors do not
    escape: a transport error or an error answer is retried after a pause that doubles up
    to `MAX_PAUSE`; a container not started yet (400) is waited for (and, once ``ended()``,
    never will: the log is complete and empty); a pod that is gone (404) ends the shipping
    with what came home, not complete.
    """
    if files.open().complete:
        return
    pause = 0.0
    while True:
        final = ended()
        outcome, progress, said = await _ship_once(
            client, namespace, pod, container, files, ended, final
        )
        if outcome == "ended" and final:
            return
        if outcome == "gone":
            logger.info("pod %s/%s: its log is gone (%s): shipping ends", namespace, pod, said)
            return
        if outcome == "waiting" and final:
            files.write((), complete=True)
            return
        if outcome == "silent":
            continue  # the container ended: ask again at once, to complete the log
        pause = FIRST_PAUSE if progress or not pause else min(MAX_PAUSE, pause * 2)
        if outcome == "failed":
            logger.warning(
                "pod %s/%s log: %s; again in %.2f s", namespace, pod, said or "failed", pause
            )
            await trio.sleep(pause)
        else:
            # The stream ended before the container did (its end is on its way), or it has
            # not started: look again after the pause, or as soon as it ended.
            with trio.move_on_after(pause):
                while not ended():  # noqa: ASYNC110 (a callable: there is nothing to wait on)
                    await trio.sleep(0.1)


async def _ship_once(
    client: lightkube.AsyncClient,
    namespace: str,
    pod: str,
    container: str,
    files: LogFiles,
    ended: Callable[[], bool],
    final: bool,
) -> tuple[_Outcome, bool, str]:
    """One request, followed to its end: how it ended, whether records came, what the
    server said."""
    position = files.shipping_position()
    request = _log_request(client, namespace, pod, container, position.since)
    reader = RecordReader()
    skipping = position.skip

    def new(records: list[Record]) -> list[Record]:
        nonlocal skipping
        if not skipping:
            return records
        fresh = []
        for record in records:
            if skipping and record.second == position.since:
                skipping -= 1
            else:
                fresh.append(record)
        return fresh

    generic = client._client
    progress = False
    try:
        response = await generic.send(request, stream=True)
    except _TRANSPORT_ERRORS as exc:
        return "failed", False, f"{type(exc).__name__}: {exc}"
    try:
        if response.status_code >= 400:
            said = _message(await response.aread())
            if response.status_code == 404:
                return "gone", False, said
            if response.status_code == 400:
                return "waiting", False, said
            return "failed", False, f"{response.status_code}: {said}"
        silent = True
        async with trio.open_nursery() as nursery:
            last_data = [trio.current_time()]
            nursery.start_soon(_cut_when_silent, ended, last_data, nursery.cancel_scope)
            chunks = response.aiter_bytes()
            try:
                async for chunk in chunks:
                    last_data[0] = trio.current_time()
                    records = new(reader.feed(chunk))
                    if records:
                        files.write(records)
                        progress = True
            finally:
                with trio.CancelScope(shield=True):
                    await chunks.aclose()
            silent = False
            nursery.cancel_scope.cancel()
        if silent:
            return "silent", progress, ""
        if final:
            # The container had ended when this was asked: its log is all here, and what
            # is left without a newline is its last entry.
            rest = reader.rest()
            files.write(new([rest]) if rest is not None else (), complete=True)
        return "ended", progress, ""
    except _TRANSPORT_ERRORS as exc:
        return "failed", progress, f"{type(exc).__name__}: {exc}"
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _cut_when_silent(
    ended: Callable[[], bool], last_data: list[float], scope: trio.CancelScope
) -> None:
    """Cancel ``scope`` once the container ended and the stream said nothing since for
    `ENDED_SILENCE` seconds."""
    while True:
        await trio.sleep(ENDED_POLL)
        if ended() and trio.current_time() - last_data[0] >= ENDED_SILENCE:
            scope.cancel()
            return


def _log_request(
    client: lightkube.AsyncClient, namespace: str, pod: str, container: str, since: int | None
) -> Any:
    """The request of the pod's log from ``since`` (a whole second, or the start), built
    as lightkube's ``log()`` builds it, with the ``sinceTime`` it lacks; no read timeout
    (a program may be silent for long)."""
    generic = client._client
    params: dict[str, Any] = {
        "container": container,
        "follow": "true",
        "timestamps": "true",
        "sinceTime": None if since is None else format_second(since),
    }
    basic = generic.prepare_request("get", PodLog, name=pod, namespace=namespace, params=params)
    return generic._client.build_request(
        basic.method, basic.url, params=basic.params, timeout=generic._watch_timeout
    )


def _message(body: bytes) -> str:
    """What an error answer says (a Status's message, or its text)."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(body)["message"])
    return body.decode(errors="replace").strip()[:300]
