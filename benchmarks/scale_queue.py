"""Suite ``scale``, queued processes (issue 13): what processes waiting for a slot cost.

- ``queued_rss``: MB of peak RSS (``VmHWM``) that LARGE queued programs add to `corra run`
  beyond its peak with none queued: a job file of LARGE + 1 ``sleep`` programs run with
  ``--max-running 1`` (one runs, the rest wait for its slot), read once every one of them is
  submitted (``corra run`` prints a line per submission), then the run is stopped (SIGTERM) and
  its one running program killed (by pid: the chaperone keeps programs running). Baseline:
  the same at SMALL. Aim: <= 100 MB at LARGE (queued processes are their snapshots only).
- ``queued_recovery``: seconds to open a runtime on a state dir holding LARGE processes
  waiting for a slot (``created``, filled once through a runtime over a backend whose slot is
  never free), until its recovery has queued them all again (`open_runtime` returns: their
  ids are queued, their records are read in the background as the admission sorts them), and
  to close it. Baseline: the same at SMALL. Aim: <= 5 s at LARGE.

SMALL and LARGE are 1,000 and 100,000 (``--quick``: 200 and 3,000).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from benchmarks._harness import Benchmark, Options
from benchmarks.process import NoopBackend, kept_scratch
from corra._runtime import open_runtime
from corra.processes._backend import EffectKey


def _job_file(directory: Path, count: int, token: str) -> Path:
    """A job file of ``count`` programs that sleep a minute (``token`` makes them ours)."""
    path = directory / "jobs.toml"
    path.write_text(
        "\n".join(
            f'[[process]]\nname = "q{number:07}"\nargv = ["sleep", "{token}"]\n'
            for number in range(count)
        )
    )
    os.chmod(path, 0o600)
    return path


def _kill_ours(token: str) -> None:
    """Kill (by pid) the programs started with ``token`` as their argument."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", token.encode()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _peak_rss_mb(pid: int, queued: int) -> float:
    """VmHWM of ``pid`` in MB; says its RssAnon / RssFile split now on stderr (the file part
    is the store's memory map, pages the kernel may take back)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    print(
        f"queued_rss: {queued:,} queued: peak {fields['VmHWM']:.1f} MB; now "
        f"{fields['RssAnon']:.1f} MB anonymous, {fields['RssFile']:.1f} MB file",
        file=sys.stderr,
    )
    return fields["VmHWM"]


def run_peak_rss(queued: int) -> float:
    """Peak RSS (MB) of `corra run` with one program running and ``queued`` waiting."""
    directory = kept_scratch("queued-rss-").resolve()
    token = f"{60 + (os.getpid() % 1000) / 1000:.3f}"
    job_file = _job_file(directory, queued + 1, token)
    run = subprocess.Popen(
        [sys.executable, "-m", "corra.cli", "run", str(job_file), "--max-running", "1",
         "--state-dir", str(directory / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=directory,
    )  # fmt: skip
    try:
        assert run.stdout is not None
        submitted = 0
        for line in run.stdout:
            if line.rstrip().endswith(b": submitted"):
                submitted += 1
                if submitted == queued + 1:
                    break
        if submitted != queued + 1:
            raise RuntimeError(f"corra run ended after {submitted} submissions")
        time.sleep(0.5)  # (the last one queued)
        return _peak_rss_mb(run.pid, queued)
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        _kill_ours(token)


def queued_rss_mb(count: int) -> float:
    """MB of peak RSS that ``count`` queued programs add to `corra run`."""
    return run_peak_rss(count) - run_peak_rss(0)


class _NoSlot(NoopBackend):
    """A backend whose one slot is never free: every process waits for it (``created``)."""

    async def acquire_slot(self, key: EffectKey) -> None:
        await trio.sleep_forever()

    def try_acquire_slot(self, key: EffectKey) -> bool:
        return False


@functools.cache
def waiting_state(count: int) -> Path:
    """A state dir holding ``count`` processes that wait for a slot (written once per run)."""
    state = kept_scratch(f"queued-{count}-") / "state"

    async def fill() -> None:
        backends = {"local": _NoSlot()}
        async with open_runtime(state_dir=state, backends=backends, durable=False) as runtime:
            specs = [{"argv": ["sleep", "60"], "name": f"w{n:07}"} for n in range(count)]
            for start in range(0, count, 1000):
                for spec in specs[start : start + 1000]:
                    await runtime.spawn_process(spec["argv"], name=spec["name"])

    trio.run(fill)
    return state


def recovery_seconds(count: int) -> float:
    """Seconds to open a runtime on `waiting_state` (recovery included) and close it."""
    state = waiting_state(count)

    async def reopen() -> float:
        started = time.perf_counter()
        async with open_runtime(state_dir=state, backends={"local": _NoSlot()}) as runtime:
            assert runtime.recovery is not None
            recovered = len(runtime.recovery.resumed)
        elapsed = time.perf_counter() - started
        if recovered != count:
            raise RuntimeError(f"recovered {recovered} of {count} waiting processes")
        return elapsed

    return trio.run(reopen)


def benchmarks(options: Options) -> list[Benchmark]:
    small, large = options.size(1_000, 200), options.size(100_000, 3_000)
    return [
        Benchmark(
            name="queued_rss",
            unit="MB",
            corra=functools.partial(queued_rss_mb, large),
            baseline=functools.partial(queued_rss_mb, small),
            higher_is_better=False,
            aim=100.0,
            rounds=1,
        ),
        Benchmark(
            name="queued_recovery",
            unit="s",
            corra=functools.partial(recovery_seconds, large),
            baseline=functools.partial(recovery_seconds, small),
            higher_is_better=False,
            aim=5.0,
            rounds=3,
        ),
    ]
