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
per container), binary or not, the last line with or without its newline. The files and
their crash safety: `corra.backends.kubernetes._logfiles`.

What this leaves to the kubelet: the container runtime's log rotation (the kubelet serves
the current file only, so a follow cut off across a rotation misses what was rotated away).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs
import lightkube
import trio
from lightkube.core import generic_client
from lightkube.resources.core_v1 import PodLog

from corra.backends.kubernetes._logfiles import POSITION_FILE, STDOUT, LogFiles, Position
from corra.backends.kubernetes._logstream import Record, RecordReader, format_second

__all__ = ["POSITION_FILE", "STDOUT", "LogFiles", "Position", "ship_logs"]

logger = logging.getLogger("corra.backend.kubernetes")

#: The longest pause between two requests after failures (doubling from `FIRST_PAUSE`).
MAX_PAUSE: Final = 10.0
FIRST_PAUSE: Final = 0.25
#: Seconds between two looks at ``ended()`` (and at the position), while a stream is open.
ENDED_POLL: Final = 1.0
#: Seconds a stream may stay silent once the container ended before it is cut and asked
#: again (a kubelet ends a follow within about a second of its container's end; this
#: guards against a connection that died without a word).
ENDED_SILENCE: Final = 5.0

# The transport errors of the HTTP library lightkube runs on (httpx or its fork httpx2).
_TRANSPORT_ERRORS: Final = (generic_client.httpx.HTTPError, OSError, trio.BrokenResourceError)


@attrs.frozen
class _Answer:
    """How one request of the log ended."""

    outcome: Literal["ended", "gone", "waiting", "failed", "silent"]
    """``ended`` as it should; ``gone`` (404); ``waiting`` to start (400); ``failed`` (a
    transport error or another error answer); ``silent`` (cut: the container ended and the
    stream said nothing for `ENDED_SILENCE` seconds)."""
    progress: bool = False
    """New records came home."""
    said: str = ""
    """What the server (or the transport) said of an error."""
    rest: Record | None = None
    """Once ``ended``: what was left after the last complete record (not written)."""


#: No final answer yet.
_NO_REST: Final = Record(-1, "", b"")


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
            stream that ends while it is False is asked for again. Once it is True, the
            log is complete when two streams asked for after it ended as they should,
            the second with nothing new (the same unfinished last entry, if any): a
            stream the apiserver ends early (its connection to the node lost) ends as
            cleanly as one at the log's end.

    A checkpoint. Cancellation leaves ``files`` as they were at some record's end (a new
    call with new `LogFiles` on the same directory goes on from there). Errors do not
    escape: a transport error or an error answer is retried after a pause that doubles up
    to `MAX_PAUSE`; a container not started yet (400) is waited for (and, once ``ended()``,
    never will: the log is complete and empty); a pod that is gone (404) ends the shipping
    with what came home, not complete.
    """
    if files.open().complete:
        return
    try:
        await _ship(client, namespace, pod, files, container, ended)
    finally:
        files.flush()  # (sync: done even when cancelled)


async def _ship(
    client: lightkube.AsyncClient,
    namespace: str,
    pod: str,
    files: LogFiles,
    container: str,
    ended: Callable[[], bool],
) -> None:
    pause = 0.0
    previous = _NO_REST  # the rest of the last final answer
    while True:
        final = ended()
        answer = await _ship_once(client, namespace, pod, container, files, ended)
        if answer.outcome == "ended" and final:
            if not answer.progress and answer.rest == previous:
                files.write([answer.rest] if answer.rest is not None else (), complete=True)
                return
            previous = answer.rest
            continue
        previous = _NO_REST
        if answer.outcome == "gone":
            logger.info("pod %s/%s: log gone (%s): shipping ends", namespace, pod, answer.said)
            return
        if answer.outcome == "waiting" and final:
            files.write((), complete=True)
            return
        if answer.outcome == "silent":
            continue  # the container ended: ask again at once, to complete the log
        first = answer.progress or not pause
        pause = FIRST_PAUSE if first else min(MAX_PAUSE, pause * 2)
        if answer.outcome == "failed":
            # (Said once per run of failures: a lost node fails every request for minutes.)
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "pod %s/%s log: %s; again in %.2f s",
                namespace,
                pod,
                answer.said,
                pause,
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
) -> _Answer:
    """One request from the position, its complete new records written as they come."""
    position = files.shipping_position()
    request = _log_request(client, namespace, pod, container, position.since)
    reader = RecordReader()
    skipping = position.skip

    def new(records: list[Record]) -> list[Record]:
        # An answer from second `since` starts with that second's records already home.
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
        return _Answer("failed", said=f"{type(exc).__name__}: {exc}")
    try:
        if response.status_code >= 400:
            said = _message(await response.aread())
            if response.status_code == 404:
                return _Answer("gone", said=said)
            if response.status_code == 400:
                return _Answer("waiting", said=said)
            return _Answer("failed", said=f"{response.status_code}: {said}")
        silent, failure = True, None
        async with trio.open_nursery() as nursery:
            last_data = [trio.current_time()]
            nursery.start_soon(_watch_stream, files, ended, last_data, nursery.cancel_scope)
            chunks = response.aiter_bytes()
            try:
                async for chunk in chunks:
                    last_data[0] = trio.current_time()
                    records = new(reader.feed(chunk))
                    if records:
                        files.write(records)
                        progress = True
            except _TRANSPORT_ERRORS as exc:
                failure = exc  # (caught here: out of the nursery it would be in a group)
            finally:
                with trio.CancelScope(shield=True):
                    await chunks.aclose()
            silent = False
            nursery.cancel_scope.cancel()
        if failure is not None:
            return _Answer("failed", progress, f"{type(failure).__name__}: {failure}")
        if silent:
            return _Answer("silent", progress)
        rest = reader.rest()
        fresh = [] if rest is None else new([rest])
        return _Answer("ended", progress, rest=fresh[0] if fresh else None)
    except _TRANSPORT_ERRORS as exc:
        return _Answer("failed", progress, f"{type(exc).__name__}: {exc}")
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _watch_stream(
    files: LogFiles, ended: Callable[[], bool], last_data: list[float], scope: trio.CancelScope
) -> None:
    """While a stream is open: write the position once it is still (so that it is on disk
    within `ENDED_POLL` seconds of the last record), and cancel ``scope`` once the container
    ended and the stream said nothing for `ENDED_SILENCE` seconds."""
    while True:
        await trio.sleep(ENDED_POLL)
        files.write_position()
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
