"""Suite ``api``: the HTTP API of a real `corra serve`, against a bare server and ``tail -F``.

The suite starts, on first use, a `corra serve` on a free port (state in a scratch dir; one
finished process to ask about) and a bare server: the same hypercorn trio worker, bound the
same way (`corra.api._server.serve_api`), serving an ASGI app that answers a constant JSON
document. Both run in their own process, so that the client (this process) and the server
each have a CPU; both are stopped (SIGTERM, by pid) when the interpreter exits.

- ``get_process_rps``: ``GET /v1/processes/{id}`` of a running process (token checked, its
  record, its history read from the store, as JSON) per second, 8 keep-alive connections for
  2 s (1 s with ``--quick``), vs ``GET /`` of the constant app on the bare server, likewise.
  A running process is what clients poll, and its answer is built anew each time (a terminal
  one's is kept: it never changes). The client is a minimal HTTP/1.1 loop on trio sockets (no
  client library in the figure). Goal: >= 0.5.
- ``log_latency_p50``, ``log_latency_p99``: seconds from a program's write (the time it
  prints) to the line's arrival at a client following ``/logs?follow=true`` (httpx), over 200
  lines written every 10 ms (100 with ``--quick``). Report; aim: p99 < 1 s. The baseline is
  ``tail -F`` of a file the same program writes: what a user without the API would run (GNU
  tail follows with inotify), so the ratio is the price of polling the log over HTTP.

Run it as ``python -m benchmarks --suite api`` (about 2 minutes; ``--quick`` about 1).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._harness import Benchmark, Options

CONCURRENCY = 8

_SERVERS: dict[str, Any] = {}

#: The program whose output is followed: ``count`` lines, each the time it was written.
_TALKER = (
    "import sys, time\n"
    "for _ in range({count}):\n"
    "    print(repr(time.time()), flush=True)\n"
    "    time.sleep({interval})\n"
)

_CONSTANT_SERVER = """
import sys, trio
from corra.api._server import Listen, serve_api

BODY = b'{"id": "p0", "phase": "finished"}'

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})

async def main():
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: serve_api(app, Listen(port=0), task_status=task_status))
        print("listening on", urls[0], flush=True)

trio.run(main)
"""


class _Server:
    """A server subprocess, ready once it printed ``listening on URL``."""

    def __init__(self, argv: list[str], *, cwd: Path) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd
        )
        atexit.register(self.stop)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.1)[0]:
                found = re.search(r"listening on (http://\S+)", self.process.stdout.readline())
                if found:
                    self.url = found.group(1)
                    return
            if self.process.poll() is not None:
                break
        raise RuntimeError(f"server did not start: {argv}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _scratch() -> Path:
    if "scratch" not in _SERVERS:
        path = Path(tempfile.mkdtemp(prefix="corra-bench-api-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _SERVERS["scratch"] = path
    path: Path = _SERVERS["scratch"]
    return path


def corra_service() -> tuple[str, dict[str, str], str]:
    """The suite's `corra serve`: its URL, the auth header, and a running process's id."""
    if "corra" not in _SERVERS:
        state = _scratch() / "state"
        server = _Server(
            [sys.executable, "-m", "corra.cli", "serve", "--state-dir", str(state), "--listen",
             "127.0.0.1:0"],
            cwd=_scratch(),
        )  # fmt: skip
        auth = {"Authorization": f"Bearer {(state / 'api-token').read_text().strip()}"}
        with httpx.Client(base_url=server.url, headers=auth) as http:
            body = {"argv": ["sleep", "3600"], "name": "asked-about", "kill_grace": 1}
            record = http.post("/v1/processes", json=body).json()
            while http.get(f"/v1/processes/{record['id']}").json()["phase"] != "running":
                time.sleep(0.05)

        def kill() -> None:  # (before the service stops: programs outlive it)
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
                http.post(f"/v1/processes/{record['id']}/kill")

        atexit.register(kill)
        _SERVERS["corra"] = (server.url, auth, record["id"])
    url, auth, process_id = _SERVERS["corra"]
    return url, auth, process_id


def constant_server() -> str:
    """The bare server's URL."""
    if "constant" not in _SERVERS:
        _SERVERS["constant"] = _Server([sys.executable, "-c", _CONSTANT_SERVER], cwd=Path.cwd()).url
    url: str = _SERVERS["constant"]
    return url


async def _hammer(url: str, path: str, headers: dict[str, str], seconds: float) -> float:
    """Requests per second of ``GET path`` on `CONCURRENCY` keep-alive connections."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lines = [f"GET {path} HTTP/1.1", "Host: bench"] + [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        stream = await trio.open_tcp_stream(host, int(port))
        buffer = b""
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(request)
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive_some(1 << 16)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"GET {path}: {head[:80]!r}")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                while len(buffer) < length:
                    buffer += await stream.receive_some(1 << 16)
                buffer = buffer[length:]
                done += 1

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker, started + seconds)
    return done / (trio.current_time() - started)


def get_process_rps(seconds: float) -> float:
    url, auth, process_id = corra_service()
    return trio.run(_hammer, url, f"/v1/processes/{process_id}", auth, seconds)


def constant_rps(seconds: float) -> float:
    return trio.run(_hammer, constant_server(), "/", {}, seconds)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def corra_log_latency(count: int, fraction: float) -> float:
    """The ``fraction`` percentile of write-to-client seconds through the API."""
    url, auth, _ = corra_service()
    code = _TALKER.format(count=count, interval=0.01)
    delays = []
    with httpx.Client(base_url=url, headers=auth, timeout=httpx.Timeout(30, read=None)) as http:
        record = http.post("/v1/processes", json={"argv": [sys.executable, "-c", code]}).json()
        path = f"/v1/processes/{record['id']}/logs"
        with http.stream("GET", path, params={"follow": "true"}) as response:
            for line in response.iter_lines():
                if line:
                    arrived = time.time()
                    for written in json.loads(line)["text"].split():
                        delays.append(arrived - float(written))
    if len(delays) != count:
        raise RuntimeError(f"followed {len(delays)} lines of {count}")
    return _percentile(delays, fraction)


def tail_log_latency(count: int, fraction: float) -> float:
    """The same through ``tail -F`` of the file the program writes."""
    log = _scratch() / f"tail-{time.monotonic_ns()}.log"
    log.touch()
    tail = subprocess.Popen(
        ["tail", "-n", "+1", "-F", str(log)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert tail.stdout is not None
    try:
        with log.open("w") as out:
            program = subprocess.Popen(
                [sys.executable, "-c", _TALKER.format(count=count, interval=0.01)], stdout=out
            )
        delays = []
        while len(delays) < count:
            line = tail.stdout.readline()
            delays.append(time.time() - float(line))
        program.wait()
    finally:
        tail.terminate()
        tail.wait()
        os.unlink(log)
    return _percentile(delays, fraction)


def benchmarks(options: Options) -> list[Benchmark]:
    seconds = 1.0 if options.quick else 2.0
    lines = options.size(200, 100)
    return [
        Benchmark(
            name="get_process_rps",
            unit="requests/s",
            corra=lambda: get_process_rps(seconds),
            baseline=lambda: constant_rps(seconds),
            goal=0.5,
        ),
        Benchmark(
            name="log_latency_p50",
            unit="s",
            corra=lambda: corra_log_latency(lines, 0.50),
            baseline=lambda: tail_log_latency(lines, 0.50),
            higher_is_better=False,
            aim=1.0,
            rounds=5,
        ),
        Benchmark(
            name="log_latency_p99",
            unit="s",
            corra=lambda: corra_log_latency(lines, 0.99),
            baseline=lambda: tail_log_latency(lines, 0.99),
            higher_is_better=False,
            aim=1.0,
            rounds=5,
        ),
    ]
