"""The HTTP API at its edges: what a careless or hostile client can send it (huge numbers,
slow or broken bodies, races) and what it holds on to (its cache, its streams)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given
from test_api import AUTH, PY, TOKEN, _certificate, serving, submit, wait_for

import corra
from corra._runtime import open_runtime
from corra.api import Listen, open_api, serve_api
from corra.api._cache import TERMINAL_CACHE_BYTES, TerminalCache
from corra.api._requests import BODY_TIMEOUT
from corra.api._server import TLS_HANDSHAKE_TIMEOUT
from corra.backends.local import log_file
from corra.processes._manager import MAX_LOG_OFFSET

# -- the cache of terminal processes -----------------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 400)), max_size=60))
def test_the_terminal_cache_never_holds_more_than_its_bound(puts):
    cache = TerminalCache(max_bytes=1000, max_entry=300)
    for key, size in puts:
        cache.put(key, b"x" * size)
        kept = {k: cache._bodies[k] for k in cache._bodies}
        assert cache.size == sum(map(len, kept.values())) <= 1000
        if size <= 300:
            assert cache.get(key) == b"x" * size  # the newest is kept


async def test_the_api_keeps_at_most_its_bytes_of_terminal_processes(tmp_path):
    # 24 finished processes whose answers are about 1.5 MB each (a long argv, which the
    # answer carries twice): 35 MB in all, above the 32 MiB bound.
    words = ["x" * 120_000] * 6
    async with serving(tmp_path) as served:
        http = served.http
        ids = [(await submit(http, ["true", *words]))["id"] for _ in range(24)]
        for process in ids:
            await wait_for(http, process, "finished")
        sizes = []
        for process in ids:
            first = await http.get(f"/v1/processes/{process}")
            again = await http.get(f"/v1/processes/{process}")  # from the cache
            assert first.status_code == again.status_code == 200
            assert first.content == again.content
            sizes.append(len(first.content))
            cache = served.api._terminal
            assert cache.size <= TERMINAL_CACHE_BYTES
        assert sum(sizes) > TERMINAL_CACHE_BYTES
        assert cache.get(ids[-1]) is not None  # still useful: the recent ones are kept
        assert len(cache) >= TERMINAL_CACHE_BYTES // max(sizes) - 1


# -- integers in the query -----------------------------------------------------------------------


async def test_huge_integers_in_the_query_are_refused_naming_the_parameter_and_limit(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["echo", "hi"], name="hi")
        await wait_for(http, "hi", "finished")
        cases = [
            ("/v1/processes/hi/logs", "offset", str(2**63), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", str(2**64 + 5), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", str(MAX_LOG_OFFSET + 1), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", "9" * 5000, str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", "-" + "9" * 30, str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "attempt", str(2**63), "<= 1"),
            ("/v1/events", "since", str(2**63), str(MAX_LOG_OFFSET)),
            ("/v1/processes", "limit", str(2**63), "<= 1000"),
        ]
        for path, name, value, limit in cases:
            response = await http.get(path, params={name: value})
            assert response.status_code == 400, (name, value, response.text)
            message = response.json()["message"]
            assert message.startswith(f"{name}: got ") and value[:20] in message, message
            assert limit in message and len(message) < 300, message
        # at the limit: an empty stream, not an error
        edge = await http.get("/v1/processes/hi/logs", params={"offset": str(MAX_LOG_OFFSET)})
        assert edge.status_code == 200 and edge.text == ""
        padded = await http.get("/v1/processes/hi/logs", params={"offset": "0" * 30 + "1"})
        assert padded.status_code == 200 and padded.json()["offset"] == 1
        # the Python API's edge too
        with pytest.raises(corra.ConfigError, match=f"offset: got {2**63}, expected at most"):
            await served.runtime.processes.read_log("hi", "stdout", 2**63, 10)


# -- slow and broken requests ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def recorded(state_dir: Path) -> AsyncIterator[tuple[int, list[int]]]:
    """A runtime and its API on a free port, and the statuses the app answered (in order)."""
    statuses: list[int] = []
    async with (
        open_runtime(state_dir=state_dir, durable=False) as runtime,
        open_api(runtime, token=TOKEN) as api,
        trio.open_nursery() as nursery,
    ):

        async def app(scope: Any, receive: Any, send: Any) -> None:
            async def recording(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                await send(message)

            await api.app(scope, receive, recording)

        listen = Listen(host="127.0.0.1", port=0)
        urls = await nursery.start(
            lambda task_status: serve_api(app, listen, task_status=task_status)
        )
        yield int(urls[0].rsplit(":", 1)[1]), statuses
        api.stop()
        nursery.cancel_scope.cancel()


async def until_closed(stream: trio.SocketStream) -> bytes:
    """What the server sends until it closes the connection (or resets it: it closed with
    bytes of ours unread)."""
    received = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(1 << 16):
            received += chunk
    return received


def request_head(length: int, token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /v1/processes HTTP/1.1\r\nHost: x\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_sent_a_byte_a_second_is_cut_off_with_a_408(tmp_path, autojump_clock):
    async with recorded(tmp_path) as (port, statuses):
        body = b'{"argv": ["true"]}' + b" " * 200
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            answer: list[bytes] = []

            async def drip() -> None:
                await stream.send_all(request_head(len(body)))
                with contextlib.suppress(trio.BrokenResourceError):  # (closed on us)
                    for byte in body:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(1)

            async def read() -> None:
                answer.append(await until_closed(stream))
                nursery.cancel_scope.cancel()

            started = trio.current_time()
            nursery.start_soon(read)
            nursery.start_soon(drip)
        closed_after = trio.current_time() - started
    assert BODY_TIMEOUT <= closed_after < BODY_TIMEOUT + 2
    assert answer[0].startswith(b"HTTP/1.1 408 ")
    assert b"the body did not come within 60 s" in answer[0]
    assert statuses == [408]


async def test_slow_unauthenticated_requests_are_cut_off(tmp_path, autojump_clock):
    async with recorded(tmp_path) as (port, statuses):
        # headers a byte a second: hypercorn's wait for a request (5 s) ends it
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            started = trio.current_time()

            async def drip() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    for byte in b"GET /v1/processes HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 99:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(1)

            nursery.start_soon(drip)
            assert await until_closed(stream) == b""
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started < 10
        # a body without a token: refused at once, the body not waited for
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            await stream.send_all(request_head(1000, token=None))  # (body bytes unread at
            # the close would make it a reset, which may overtake the answer)
            answer = await until_closed(stream)
        assert trio.current_time() - started < 1
        assert answer.startswith(b"HTTP/1.1 401 ")
    assert statuses == [401]


async def test_a_tls_handshake_that_never_comes_is_cut_off(tmp_path, autojump_clock):
    cert, key = _certificate(tmp_path)
    async with serving(tmp_path, certfile=str(cert), keyfile=str(key)) as served:
        port = int(served.urls[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello, no more
            assert await until_closed(stream) == b""
        assert trio.current_time() - started <= TLS_HANDSHAKE_TIMEOUT + 1


async def test_a_client_gone_mid_body_is_no_500(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with recorded(tmp_path) as (port, statuses):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request_head(1000) + b'{"argv": ["tr')
        await trio.sleep(0.2)
        await stream.aclose()
        with trio.fail_after(10):
            while not statuses:
                await trio.sleep(0.01)
    assert statuses == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "the client went away before its request was in" in caplog.text


# -- a pause that loses a race -----------------------------------------------------------------


async def test_a_pause_overtaken_by_a_kill_answers_409_with_the_phase(tmp_path):
    async with serving(tmp_path) as served:
        http, manager = served.http, served.runtime.processes
        process = (await submit(http, ["sleep", "30"], kill_grace=0.5))["id"]
        await wait_for(http, process, "running")
        # The pause's write is held until the kill is in the actor's mailbox: the kill comes
        # while the pause is written, and goes on after it.
        writing, release = trio.Event(), trio.Event()
        save = manager.store.save

        async def held_save(process_id: str, snapshot: bytes, **options: Any) -> None:
            if b'"pause"' in (options.get("transition") or b"") + b"".join(
                options.get("transitions", ())
            ):
                writing.set()
                await release.wait()
            await save(process_id, snapshot, **options)

        manager.store.save = held_save
        answers: dict[str, Any] = {}

        async def call(verb: str, **params: str) -> None:
            answers[verb] = await http.post(f"/v1/processes/{process}/{verb}", params=params)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "pause")
            with trio.fail_after(10):
                await writing.wait()
                nursery.start_soon(call, "kill")
                while manager._actors[process].statistics().mailbox_depth == 0:
                    await trio.sleep(0.01)
            release.set()
        assert answers["kill"].status_code == 200
        assert answers["kill"].json()["phase"] == "killed"
        pause = answers["pause"]
        assert pause.status_code == 409, pause.text
        assert pause.json()["error"] == "invalid_transition"
        assert pause.json()["phase"] == "killed"


# -- logs of a program that writes faster than its client reads ------------------------------------

#: Writes 128 KiB of lines every 10 ms (about 12 MB/s) for 20 s at most (a test that fails
#: must not leave it filling the disk: programs outlive their runtime).
FAST_WRITER = (
    "import sys, time\n"
    "block = (b'y' * 1023 + b'\\n') * 128\n"
    "end = time.monotonic() + 20\n"
    "while time.monotonic() < end:\n"
    "    sys.stdout.buffer.write(block); sys.stdout.buffer.flush(); time.sleep(0.01)\n"
)


@contextlib.asynccontextmanager
async def fast_writer(http: httpx.AsyncClient) -> AsyncIterator[str]:
    """A running `FAST_WRITER` (its id), killed at the end."""
    process = (await submit(http, [PY, "-c", FAST_WRITER], kill_grace=0.5))["id"]
    try:
        await wait_for(http, process, "running")
        yield process
    finally:
        with trio.CancelScope(shield=True):
            await http.post(f"/v1/processes/{process}/kill")


def slow_read(base_url: str, path: str, log: Path, params: dict[str, str]) -> tuple[list, int]:
    """The entries of a log stream read at about 1.3 MB/s, and the log's size as the answer
    began (an upper bound of what the service saw then); stops early past that size."""
    entries: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client,
        client.stream("GET", path, params=params) as response,
    ):
        assert response.status_code == 200
        size = log.stat().st_size
        for line in response.iter_lines():
            if line:
                entries.append(json.loads(line))
                if entries[-1]["next_offset"] > size:
                    break  # (it would never end)
                time.sleep(0.05)
    return entries, size


async def test_a_log_read_without_follow_ends_at_the_output_there_was_when_it_began(tmp_path):
    async with serving(tmp_path) as served, fast_writer(served.http) as process:
        log = log_file(tmp_path / "runs", f"{process}.1", "stdout")
        assert log is not None
        with trio.fail_after(30):
            while not log.exists() or log.stat().st_size < 1 << 20:
                await trio.sleep(0.01)
        path = f"/v1/processes/{process}/logs"
        entries, size = await trio.to_thread.run_sync(
            slow_read, served.urls[0], path, log, {"offset": "1000"}
        )
        assert entries[0]["offset"] == 1000
        assert entries[-1]["next_offset"] <= size  # it ended, at most where the log was
        assert entries[-1]["next_offset"] >= 1 << 20  # all that was there at the start
        assert all(a["next_offset"] == b["offset"] for a, b in itertools.pairwise(entries))
        assert log.stat().st_size > size  # the program wrote on meanwhile


async def test_a_followed_fast_writer_does_not_hold_up_the_stop_of_the_service(tmp_path):
    async with serving(tmp_path) as served, fast_writer(served.http) as process:
        http = served.http
        path = f"/v1/processes/{process}/logs"
        ended = trio.Event()
        got: list[dict[str, Any]] = []

        async def follow() -> None:
            async with http.stream("GET", path, params={"follow": "true"}) as response:
                async for line in response.aiter_lines():
                    if line:
                        got.append(json.loads(line))
                        await trio.sleep(0.02)  # (about 3 MB/s: slower than the program)
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            with trio.fail_after(30):
                while len(got) < 20:
                    await trio.sleep(0.01)
            served.api.stop()
            with trio.fail_after(5):
                await ended.wait()
        assert all(a["next_offset"] == b["offset"] for a, b in itertools.pairwise(got))


async def test_answers_close_their_connection_once_the_service_stops(tmp_path):
    # (a kept-alive client would send its next request on it, which hypercorn, winding
    # down, never reads: the stop would wait the graceful timeout out)
    async with serving(tmp_path) as served:
        http = served.http
        assert "connection" not in (await http.get("/v1/processes")).headers
        events = await http.get("/v1/events")
        assert events.headers["connection"] == "close"  # a stream: always
        served.api.stop()
        for path in ("/v1/processes", "/v1/health", "/v1/processes/nope"):
            assert (await http.get(path)).headers["connection"] == "close", path
