"""Suite ``scale``: what a state dir of many processes costs (issue 13): the same work on a
state dir of SMALL processes (the baseline) and of LARGE ones, in the same run.

SMALL and LARGE are 1,000 and 100,000 (``--quick``: 200 and 5,000). Each state dir is filled
once per run: a job file of that many ``[[process]]`` tables (``s0000001`` ..., labelled
``batch = "<n % 10>"``, one in ten running ``false``) whose specs are submitted through a
non-durable runtime over a backend whose programs end at once (``false`` with status 1), 100
at a time, so that every process is finished or failed as a real run would leave it. The
services are `corra serve` subprocesses of those state dirs, stopped (SIGTERM, by pid) when
the interpreter exits.

- ``list_page``: seconds per ``GET /v1/processes?limit=50`` at LARGE against SMALL; the ratio
  is the latency at SMALL over that at LARGE. Goal: >= 0.5 (a page costs what it returns,
  not what the state dir holds).
- ``list_page_filtered``: the same with ``phase=failed&label=batch=3``. Goal: >= 0.5.
- ``ps_default``: seconds of ``corra ps`` (its default view; no service running: it reads the
  state dir) at LARGE against SMALL. Goal: >= 0.5.
- ``run_again``: seconds of ``corra run`` of the job file again (every process finished or
  failed: nothing to run) at LARGE against SMALL. Aim: <= 5 s at LARGE.
- ``health_while_listing``: the longest ``GET /v1/health`` of a service while 8 clients list
  pages of it and a prune (``POST /v1/processes:prune``) removes every process that ended, at
  LARGE against SMALL (the event loop's longest stall, as a client sees it). Each round serves
  a fresh copy of the state dir (the prune empties it). Aim: <= 50 ms.

- ``queued_rss`` and ``queued_recovery``: what processes waiting for a slot cost, in
  `benchmarks.scale_queue` (their own sizes: 1,000 and 100,000; ``--quick``: 200 and 3,000).

Run it as ``python -m benchmarks --suite scale`` (the fill of 100,000 takes minutes).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import trio

from benchmarks import scale_queue
from benchmarks._harness import Benchmark, Options
from benchmarks.api import _Server
from benchmarks.process import NoopBackend, kept_scratch
from corra._jobfile import load_job_file
from corra._runtime import open_runtime
from corra.backends.local._rundirs import Handle
from corra.processes._backend import LaunchRequest
from corra.processes._lifecycle import Result

#: Clients listing at once in ``health_while_listing``; seconds they list.
LISTERS = 8
LISTING_SECONDS = 3.0


class _EndsAtOnce(NoopBackend):
    """Programs end at once: ``false`` with status 1, anything else with 0. Its handles are
    the local backend's, so that the records it leaves are those of local programs."""

    handle_type = Handle

    def __init__(self) -> None:
        self.status: dict[str, int] = {}

    async def launch(self, request: LaunchRequest) -> Handle:
        await trio.lowlevel.checkpoint()
        key = str(request.key)
        self.status[key] = int(request.argv[0] == "false")
        return Handle(key, run_dir="", chaperone_pid=0, chaperone_start=0, pid=None, shared=True)

    async def wait(self, handle: Handle) -> Result:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return Result(returncode=self.status.pop(handle.key))


def _job_text(count: int) -> str:
    tables = []
    for number in range(1, count + 1):
        program = "false" if number % 10 == 0 else "true"
        tables.append(
            f'[[process]]\nname = "s{number:07}"\nargv = ["{program}"]\n'
            f'labels = {{ batch = "{number % 10}" }}\n'
        )
    return "\n".join(tables)


@functools.cache
def filled(count: int) -> tuple[Path, Path]:
    """A state dir holding ``count`` ended processes, and the job file they came from."""
    directory = kept_scratch(f"scale-{count}-").resolve()
    job_file = directory / "jobs.toml"
    job_file.write_text(_job_text(count))
    os.chmod(job_file, 0o600)
    state = directory / "state"
    specs = load_job_file(job_file).processes
    started = time.perf_counter()

    async def fill() -> None:
        backends = {"local": _EndsAtOnce()}
        async with open_runtime(state_dir=state, backends=backends, durable=False) as runtime:
            queue = iter(specs)

            async def worker() -> None:
                for spec in queue:
                    await (await runtime.spawn_process(spec)).wait()

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(worker)

    trio.run(fill)
    shutil.copytree(state, directory / "unserved", ignore=shutil.ignore_patterns("*.lock"))
    print(
        f"scale suite: {count:,} processes filled in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return state, job_file


@functools.cache
def service(count: int) -> tuple[str, dict[str, str]]:
    """A `corra serve` of the filled state dir of ``count``: its URL and auth header."""
    state, job_file = filled(count)
    server = _Server(
        [sys.executable, "-m", "corra.cli", "serve", "--state-dir", str(state), "--listen",
         "127.0.0.1:0"],
        cwd=job_file.parent,
    )  # fmt: skip
    token = (state / "api-token").read_text().strip()
    return server.url, {"Authorization": f"Bearer {token}"}


def page_seconds(count: int, query: str, pages: int) -> float:
    """Seconds per ``GET /v1/processes?<query>``, the median of ``pages`` requests."""
    url, auth = service(count)
    samples = []
    with httpx.Client(base_url=url, headers=auth, timeout=600) as http:
        for _ in range(pages):
            started = time.perf_counter()
            response = http.get(f"/v1/processes?{query}")
            samples.append(time.perf_counter() - started)
            response.raise_for_status()
            if not response.json()["items"]:
                raise RuntimeError(f"GET /v1/processes?{query}: no items at {count}")
    return sorted(samples)[len(samples) // 2]


def unserved(count: int) -> tuple[Path, Path]:
    """The copy of the filled state dir of ``count`` that no service opens (a second runtime
    on the same state dir is refused), and its job file."""
    state, job_file = filled(count)
    return state.parent / "unserved", job_file


def _cli_seconds(count: int, *args: str) -> float:
    state, job_file = unserved(count)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "corra.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
        cwd=job_file.parent,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode not in (0, 1):  # (1: a failed process is reported, as it should)
        raise RuntimeError(f"corra {' '.join(args)}: {completed.returncode}\n{completed.stderr}")
    return elapsed


def ps_seconds(count: int) -> float:
    """Seconds of ``corra ps`` (its default view) of the state dir, no service running."""
    return _cli_seconds(count, "ps")


def run_again_seconds(count: int) -> float:
    """Seconds of ``corra run JOBFILE`` when every process in it has ended already."""
    _, job_file = filled(count)
    return _cli_seconds(count, "run", str(job_file))


#: The listing clients of ``health_while_listing``, in a process of their own (in the
#: measuring one, their parsing would delay the health request on the client's side).
_LISTERS = """
import sys, httpx, trio
url, token, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

async def lister(deadline):
    auth = {"Authorization": "Bearer " + token}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=600) as http:
        cursor = None
        while trio.current_time() < deadline:
            query = "limit=50" + ("&cursor=" + cursor if cursor else "")
            cursor = (await http.get("/v1/processes?" + query)).json().get("next_cursor")

async def main():
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(lister, deadline)

trio.run(main)
"""


def _longest_health(url: str, auth: dict[str, str]) -> float:
    token = auth["Authorization"].removeprefix("Bearer ")
    listers = subprocess.Popen(
        [sys.executable, "-c", _LISTERS, url, token, str(LISTERS), str(LISTING_SECONDS)]
    )
    longest = 0.0
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=600) as http:
            time.sleep(0.2)  # (the listers connected)
            deadline = time.monotonic() + LISTING_SECONDS - 0.4
            while time.monotonic() < deadline:
                started = time.perf_counter()
                http.get("/v1/health").raise_for_status()
                longest = max(longest, time.perf_counter() - started)
                time.sleep(0.01)
    finally:
        if listers.wait(timeout=600) != 0:
            raise RuntimeError("the listing clients failed")
    return longest


def health_seconds(count: int) -> float:
    """The longest ``GET /v1/health`` while `LISTERS` clients list pages and a prune removes
    every process that ended, of a service of a fresh copy of the filled state dir."""
    state, job_file = unserved(count)
    scratch = kept_scratch(f"scale-prune-{count}-").resolve()
    copy = scratch / "state"
    shutil.copytree(state, copy)
    server = _Server(
        [sys.executable, "-m", "corra.cli", "serve", "--state-dir", str(copy), "--listen",
         "127.0.0.1:0"],
        cwd=job_file.parent,
    )  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {(copy / 'api-token').read_text().strip()}"}
        pruning = threading.Thread(target=_prune, args=(server.url, auth), daemon=True)
        pruning.start()
        return _longest_health(server.url, auth)
    finally:
        server.stop()  # (a prune still under way ends with the service)
        shutil.rmtree(scratch, ignore_errors=True)


def _prune(url: str, auth: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError), httpx.Client(headers=auth, timeout=600) as http:
        http.post(f"{url}/v1/processes:prune", params={"ended_before": time.time()})


def benchmarks(options: Options) -> list[Benchmark]:
    small, large = options.size(1_000, 200), options.size(100_000, 5_000)
    pages = options.size(20, 5)
    filtered = "limit=50&phase=failed&label=batch%3D0"
    page, filtered_page = (
        functools.partial(page_seconds, query=query, pages=pages)
        for query in ("limit=50", filtered)
    )
    per_n = [
        ("list_page", page, 0.5, None),
        ("list_page_filtered", filtered_page, 0.5, None),
        ("ps_default", ps_seconds, 0.5, None),
        ("run_again", run_again_seconds, None, 5.0),
        ("health_while_listing", health_seconds, None, 0.05),
    ]  # fmt: skip
    return scale_queue.benchmarks(options) + [
        Benchmark(
            name=name,
            unit="s",
            corra=functools.partial(measure, large),
            baseline=functools.partial(measure, small),
            goal=goal,
            higher_is_better=False,
            aim=aim,
            rounds=3,
        )
        for name, measure, goal, aim in per_n
    ]
