"""The stand-in node's log endpoint (corra.testing._kubelogs) without a cluster: the kubelet's
options over in-memory logs, and the HTTPS endpoint itself."""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from corra.testing._kubelogs import (
    MAX_LINE,
    ContainerLog,
    LogError,
    LogLine,
    LogQuery,
    format_log_time,
    format_time,
    parse_time,
    serve_container_logs,
)

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND  # 2023-11-14T22:13:20Z


def test_format_time_is_go_rfc3339nano() -> None:
    assert format_time(T0) == "2023-11-14T22:13:20Z"
    assert format_time(T0 + 120_000_000) == "2023-11-14T22:13:20.12Z"
    assert format_time(T0 + 1) == "2023-11-14T22:13:20.000000001Z"


def test_log_lines_are_stamped_with_nine_digits_as_the_kubelet_does() -> None:
    assert format_log_time(T0) == "2023-11-14T22:13:20.000000000Z"
    assert format_log_time(T0 + 120_000_000) == "2023-11-14T22:13:20.120000000Z"
    assert parse_time(format_log_time(T0 + 1)) == T0 + 1


def test_parse_time() -> None:
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14T22:13:20.000000001Z") == T0 + 1
    assert parse_time("2023-11-14T23:13:20.5+01:00") == T0 + SECOND // 2
    with pytest.raises(ValueError):
        parse_time("yesterday")


def log_of(*lines: tuple[int, bytes], ended: bool = True) -> ContainerLog:
    log = ContainerLog(lines=[LogLine(time, data) for time, data in lines])
    log.ended = ended
    return log


async def text(query: str, log: ContainerLog) -> bytes:
    return b"".join([chunk async for chunk in LogQuery.from_query(query).lines(log)])


async def test_options_as_the_kubelet_reads_them() -> None:
    log = log_of((T0, b"a\n"), (T0 + SECOND // 2, b"b\n"), (T0 + SECOND, b"c\n"))
    assert await text("", log) == b"a\nb\nc\n"
    assert await text("tailLines=2", log) == b"b\nc\n"
    assert await text("tailLines=0", log) == b""
    # sinceTime: lines at or after it; tailLines first, then sinceTime.
    assert await text("sinceTime=2023-11-14T22:13:21Z", log) == b"c\n"
    assert await text("sinceTime=2023-11-14T22:13:20.5Z", log) == b"b\nc\n"
    assert await text("tailLines=1&sinceTime=2023-11-14T22:13:20Z", log) == b"c\n"
    assert await text("timestamps=true&tailLines=1", log) == b"2023-11-14T22:13:21.000000000Z c\n"
    # limitBytes counts the prefixes and cuts the last line.
    assert await text("limitBytes=3", log) == b"a\nb"
    assert await text("timestamps=true&limitBytes=32", log) == b"2023-11-14T22:13:20.000000000Z a"
    with pytest.raises(ValueError):
        LogQuery.from_query("sinceTime=soon")


async def test_follow_until_the_container_ends(autojump_clock: trio.abc.Clock) -> None:
    log = ContainerLog()
    received: list[tuple[float, bytes]] = []

    async def follow() -> None:
        async for chunk in LogQuery(follow=True).lines(log):
            received.append((trio.current_time(), chunk))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        log.feed(b"one\ntw")
        await trio.sleep(1)
        log.feed(b"o\n")
        await trio.sleep(1)
        log.feed(b"unfinished")
        log.end()
    assert [chunk for _, chunk in received] == [b"one\n", b"two\n", b"unfinished"]
    assert [time for time, _ in received] == [0, 1, 2]


def test_long_lines_are_split() -> None:
    log = ContainerLog()
    log.feed(b"x" * (MAX_LINE + 10) + b"\n")
    assert [len(line.data) for line in log.lines] == [MAX_LINE, 11]


async def test_split_lines_are_sent_as_the_kubelet_sends_partial_entries() -> None:
    # Each piece with its own time, the partial ones without a newline: the kubelet does not
    # join a container runtime's partial entries (pkg/kubelet/kuberuntime/logs).
    log = ContainerLog()
    log.feed(b"x" * (MAX_LINE + 2) + b"\nlast, unfinished")
    log.end()
    parts = re.split(
        rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) ", await text("timestamps=true", log)
    )
    assert parts[0::2] == [b"", b"x" * MAX_LINE, b"xx\n", b"last, unfinished"]


async def test_the_https_endpoint() -> None:
    log = log_of((T0, b"hello\n"))

    def find(namespace: str, pod: str, container: str) -> ContainerLog:
        if (namespace, pod, container) == ("ns", "p", "c"):
            return log
        if container == "waiting":
            raise LogError(400, 'container "waiting" in pod "p" is waiting to start: x')
        raise LogError(404, f'pod "{pod}" does not exist')

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_container_logs, find)
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=False) as http:
            response = await http.get("/containerLogs/ns/p/c?timestamps=true")
            assert (response.status_code, response.text) == (
                200,
                "2023-11-14T22:13:20.000000000Z hello\n",
            )
            response = await http.get("/containerLogs/ns/p/waiting")
            assert response.status_code == 400
            assert "is waiting to start" in response.text
            assert (await http.get("/containerLogs/ns/q/c")).status_code == 404
            assert (await http.get("/pods")).status_code == 404
            assert (await http.get("/containerLogs/ns/p/c?sinceTime=x")).status_code == 400
        nursery.cancel_scope.cancel()
