"""Suite ``workflow``: what a workflow run adds to the processes it runs.

- ``fan_out_1000``: a job of one step with ``for_each`` over 1,000 items, each running
  ``true``, started with ``rt.workflows.start`` and waited for with ``rt.workflows.wait``;
  steps per second. Baseline: the same 1,000 processes (``true``, each named, as the run names
  its steps) submitted directly with ``rt.processes.submit`` from 1,000 concurrent tasks (as
  the run actor submits a fan-out's items, so that their writes share group commits;
  ``rt.processes.submit_many``, which creates them one after another, measured about the
  same here) and each waited for with ``rt.processes.wait``. Both sides: a durable runtime
  with ``max_running=8``, on a fresh state dir each round, warmed up by one process outside
  the figure. Goal: 0.8.
- ``chain_100``: a job of 100 steps, each ``true`` and each needing the one before, against
  one ``true`` submitted directly and waited for (the same runtime options); both in ms per
  step. Report only: the added latency per step is the difference, printed on stderr each
  round (and it is ``value - baseline`` in the JSON).

State dirs live under ``$CORRA_BENCH_DIR`` (default ``.corra/bench``), as in
``benchmarks.process`` (not on a memory file system, and kept until the interpreter exits:
see ``benchmarks.process_local`` on ext4 and deleted inodes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from benchmarks._harness import Benchmark, Options
from benchmarks.process import kept_scratch
from corra._runtime import Runtime, open_runtime
from corra.processes._spec import ProcessSpec
from corra.workflows import JobDefinition, parse_jobs

#: Programs that may run at once, on both sides (the default on 2 CPUs).
MAX_RUNNING = 8


def fan_out_job(count: int) -> JobDefinition:
    """One step, ``work``, running ``true`` once per item of a list of ``count``."""
    table = {
        "name": "fan",
        "step": [{"name": "work", "for_each": list(range(count)), "argv": ["true"]}],
    }
    return parse_jobs([table], "benchmarks/workflow.py")["fan"]


def chain_job(length: int) -> JobDefinition:
    """``length`` steps, each ``true``, each needing the one before."""
    steps: list[dict[str, Any]] = [{"name": "s0", "argv": ["true"]}]
    steps += [{"name": f"s{i}", "needs": [f"s{i - 1}"], "argv": ["true"]} for i in range(1, length)]
    return parse_jobs([{"name": "chain", "step": steps}], "benchmarks/workflow.py")["chain"]


async def _runtime_then(prefix: str, body: Callable[[Runtime], Any]) -> float:
    state_dir = await trio.to_thread.run_sync(kept_scratch, prefix)
    async with open_runtime(state_dir=state_dir, max_running=MAX_RUNNING, durable=True) as rt:
        # Warm-up outside the figure: starts the zygote, creates the cgroup parents.
        record = await (await rt.spawn_process(["true"])).wait()
        _finished("warm-up", record.phase, record.state.reason)
        figure: float = await body(rt)
        return figure


def _finished(what: str, phase: str, reason: str | None) -> None:
    if phase != "finished":
        raise RuntimeError(f"{what} did not finish: {phase} ({reason})")


async def _run(rt: Runtime, job: JobDefinition) -> float:
    """Start a run of ``job``, wait for its end; seconds."""
    started = time.perf_counter()
    run, _ = await rt.workflows.start(job)
    done = await rt.workflows.wait(run.id)
    elapsed = time.perf_counter() - started
    _finished(f"run of {job.name}", done.phase, done.reason)
    return elapsed


async def workflow_fan_out(count: int) -> float:
    """A run of `fan_out_job`; steps per second."""

    async def body(rt: Runtime) -> float:
        return count / await _run(rt, fan_out_job(count))

    return await _runtime_then("workflow-fan-", body)


async def direct_fan_out(count: int) -> float:
    """The same processes, submitted concurrently and waited for; processes per second."""

    async def body(rt: Runtime) -> float:
        specs = [ProcessSpec(argv=("true",), name=f"direct.work.{i}") for i in range(count)]
        started = time.perf_counter()

        async def one(spec: ProcessSpec) -> None:
            await rt.processes.submit(spec)
            assert spec.name is not None
            record = await rt.processes.wait(spec.name)
            _finished(spec.name, record.phase, record.state.reason)

        async with trio.open_nursery() as nursery:
            for spec in specs:
                nursery.start_soon(one, spec)
        return count / (time.perf_counter() - started)

    return await _runtime_then("direct-fan-", body)


async def workflow_chain(length: int) -> float:
    """A run of `chain_job`; milliseconds per step."""

    async def body(rt: Runtime) -> float:
        return 1000 * await _run(rt, chain_job(length)) / length

    return await _runtime_then("workflow-chain-", body)


async def direct_one(repeat: int) -> float:
    """One ``true`` submitted and waited for, ``repeat`` times one after another; ms each."""

    async def body(rt: Runtime) -> float:
        started = time.perf_counter()
        for i in range(repeat):
            name = f"direct.one.{i}"
            await rt.processes.submit(ProcessSpec(argv=("true",), name=name))
            record = await rt.processes.wait(name)
            _finished(name, record.phase, record.state.reason)
        return 1000 * (time.perf_counter() - started) / repeat

    return await _runtime_then("direct-one-", body)


def _in_trio(function: Callable[[int], Any], size: int) -> Callable[[], float]:
    return lambda: trio.run(function, size)


def _paired(
    corra: Callable[[], float], baseline: Callable[[], float], what: str
) -> tuple[Callable[[], float], Callable[[], float]]:
    """The two sides, printing on stderr, once both have a new figure (the harness runs them
    in pairs), the figures and their difference: ``what`` of that round."""
    figures: tuple[list[float], list[float]] = ([], [])

    def side(index: int, measurement: Callable[[], float]) -> Callable[[], float]:
        def measured() -> float:
            figure = measurement()
            figures[index].append(figure)
            if len(figures[0]) == len(figures[1]):
                workflow, direct = figures[0][-1], figures[1][-1]
                print(
                    f"workflow suite: {workflow:.2f} - {direct:.2f} = "
                    f"{workflow - direct:+.2f} {what}",
                    file=sys.stderr,
                )
            return figure

        return measured

    return side(0, corra), side(1, baseline)


def benchmarks(options: Options) -> list[Benchmark]:
    fan_out = options.size(1000, 200)
    chain = options.size(100, 30)
    chain_corra, chain_baseline = _paired(
        _in_trio(workflow_chain, chain),
        _in_trio(direct_one, chain),
        "ms added per step",
    )
    return [
        Benchmark(
            name=f"fan_out_{fan_out}",
            unit="steps/s",
            corra=_in_trio(workflow_fan_out, fan_out),
            baseline=_in_trio(direct_fan_out, fan_out),
            goal=0.8,
        ),
        Benchmark(
            name=f"chain_{chain}",
            unit="ms/step",
            corra=chain_corra,
            baseline=chain_baseline,
            higher_is_better=False,
        ),
    ]
