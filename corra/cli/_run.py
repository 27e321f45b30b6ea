"""``corra run``: the embedded runtime in the foreground until this run's processes are done,
with its progress (counts and running times on a terminal, a line per transition else)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from corra._errors import ConfigError
from corra._runtime import open_runtime
from corra.api._wire import record_json
from corra.cli._parser import EXIT_FAILED, EXIT_OK, runtime_options
from corra.cli._render import happened
from corra.processes._convert import parse_process_spec
from corra.processes._lifecycle import PHASES, TERMINAL, needs_recovery
from corra.processes._record import ProcessRecord, Transition
from corra.processes._settled import Settled
from corra.processes._statuses import ProgramStatus, summary

if TYPE_CHECKING:
    from corra._jobfile import JobFile

#: What a plan of `plan_job` runs (anything else is why it does not).
_RUNS = ("submit", "rerun")


def run(args: argparse.Namespace, state_dir: Path) -> int:
    from corra._jobfile import JobFile, load_job_file

    if args.job is not None:
        from corra.cli._workflows import run_job

        return run_job(args, state_dir)
    if args.param or args.run_name:
        raise ConfigError("run: --param and --run-name go with --job NAME")
    argv = list(args.argv)
    if args.jobfile and args.name:
        raise ConfigError("run: --name names the program given after --; a job file names its own")
    if args.jobfile and argv:
        raise ConfigError("run: give a job file or `-- ARGV...`, not both")
    if args.jobfile:
        job = load_job_file(args.jobfile)
        if not job.processes:
            names = ", ".join(map(repr, job.jobs))
            raise ConfigError(
                f"run: {job.path} has no [[process]] tables, only the job(s) {names}; "
                "run one with --job NAME"
            )
    elif argv:
        fields: dict[str, Any] = {"argv": argv}
        if args.name:
            fields["name"] = args.name
        job = JobFile(path="<command line>", processes=(parse_process_spec(fields, "argv"),))
    else:
        raise ConfigError("run: nothing to run; give a job file or `-- ARGV...`")
    output_limit = runtime_options(args)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    jobs = [job]
    del job  # (`_run` lets go of its specs as it submits them)
    return trio.run(_run, jobs, state_dir, args, output_limit)


async def _run(
    jobs: list[JobFile], state_dir: Path, args: argparse.Namespace, output_limit: int
) -> int:
    """Run the job in ``jobs`` (a list of one, which it empties: a spec submitted is the
    store's, and its memory goes as it is submitted, so that a job file of 100,000 processes
    waiting for a slot holds the memory of their ids only)."""
    rerun = {kind for kinds in args.rerun for kind in kinds}
    plan: list[tuple[str, Any, Any]] = []
    runtime = {
        "max_running": args.max_running,
        "hosts": jobs[0].hosts,
        "logins": jobs[0].logins,
        "output_limit": output_limit,
    }

    def decide(manager: Any) -> None:
        plan.extend(plan_job(manager, jobs.pop(), rerun))

    async def start(manager: Any, display: Progress) -> list[str | Settled]:
        started: list[str | Settled] = []
        display.lines(f"{known.name}: {what}" for what, _, known in plan if what not in _RUNS)
        plan.reverse()  # (taken from its end: each spec is let go of as it is submitted)
        while plan:
            what, spec, known = plan.pop()
            if what == "submit":
                started.append((await manager.submit(spec)).record.id)
            elif what == "rerun":
                started.append((await manager.rerun(known.id, spec=spec)).id)
            else:
                started.append(known)
        return started

    return await foreground(state_dir, args, start, runtime=runtime, check=decide)


def plan_job(manager: Any, job: JobFile, rerun: set[str]) -> list[tuple[str, Any, Any]]:
    """What a run of ``job`` does with each of its processes, decided per name before
    anything runs: ``("submit", spec, None)`` for a new one (or one that is not terminal:
    it goes on), ``("rerun", spec, record)`` for a terminal one that runs again (``rerun``:
    ``failed``, those failed or killed; ``changed``, those whose spec changed), else
    ``(words, spec, record)``, saying why it does not run again.

    Raises:
        ConfigError: a process's spec changed and ``changed`` is not in ``rerun``, or it
            changed while it is active; naming every such process and its changed fields.
    """
    plan: list[tuple[str, Any, Any]] = []
    refused = []
    # (most names of a job file run again are over with the same spec: told without decoding
    # their records)
    for spec, over in zip(job.processes, manager.settled(job.processes), strict=True):
        if over is not None:
            if over.phase in ("failed", "killed") and "failed" in rerun:
                plan.append(("rerun", spec, over))
            else:
                plan.append((_not_again(over.phase), spec, over))
            continue
        known = manager.named(spec)
        if known is None:
            plan.append(("submit", spec, None))
            continue
        record, changed = known.record, known.changed
        terminal = record.state.terminal
        fields = ", ".join(changed)
        if changed and "changed" not in rerun:
            refused.append(
                f"{record.name}: its spec changed ({fields}); "
                "--rerun changed runs it with the new one"
            )
        elif changed and not terminal:
            refused.append(
                f"{record.name}: its spec changed ({fields}), "
                f"but it is {record.phase}; kill it first"
            )
        elif changed or (record.phase in ("failed", "killed") and "failed" in rerun):
            plan.append(("rerun", spec, record))
        elif not terminal:
            plan.append(("submit", spec, None))
        else:
            plan.append((_not_again(record.phase), spec, record))
    if refused:
        raise ConfigError("run: nothing was run:\n  " + "\n  ".join(refused))
    return plan


def _not_again(phase: str) -> str:
    if phase == "finished":
        return "already finished, not run again"
    return f"already {phase}, not run again (--rerun failed runs it again)"


async def foreground(
    state_dir: Path,
    args: argparse.Namespace,
    start: Callable[[Any, Progress], Awaitable[Sequence[str | Settled]]],
    *,
    runtime: dict[str, Any],
    check: Callable[[Any], None] | None = None,
) -> int:
    """Open a runtime on ``state_dir`` (with ``runtime``'s options), let ``start`` (given the
    manager and the progress display) start processes and return their ids (and, for those
    it had nothing to do with, what it knew of them: their records are read only for
    ``--json``), and show their progress until none has work left; then the summary, and
    the exit status (``args``: ``json``). ``check``, given the manager first, may refuse
    (raise) before anything starts. `corra run`'s way, also `corra rerun`'s without a service."""
    # With --json, stdout carries the JSON alone; the progress goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    interrupted: list[int] = []
    async with open_runtime(state_dir=state_dir, **runtime) as rt:
        manager = rt.processes
        if check is not None:
            check(manager)
        report = rt.recovery
        if report is not None and (report.resumed or report.set_aside):
            print(
                f"recovered {len(report.resumed)} active process(es) from {state_dir}"
                + (
                    f"; set aside {len(report.set_aside)} corrupt record(s)"
                    if report.set_aside
                    else ""
                ),
                file=out,
            )
        display = Progress(out, None if manager.statuses is None else manager.statuses.latest)
        stops = (signal.SIGTERM, signal.SIGINT)
        with manager.subscribe() as events, trio.open_signal_receiver(*stops) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, out, interrupted)
                nursery.start_soon(display.follow, events)
                started = await start(manager, display)
                ids = [item for item in started if isinstance(item, str)]
                await _wait_all(manager, ids)
                nursery.cancel_scope.cancel()
        records = [manager.get(item) if isinstance(item, str) else item for item in started]
        shown = [record_json(manager.get(r.id)) for r in records] if args.json else []
        leftovers = _leftovers(manager, report, ids)
    display.summary(records)
    if leftovers:
        print(
            f"{leftovers} other process(es) recovered from {state_dir} are still active; their "
            "programs keep running under their chaperones, and the next `corra run` or "
            "`corra serve` on this state dir collects them",
            file=out,
        )
    if args.json:
        json.dump(shown, sys.stdout, indent=2)
        sys.stdout.write("\n")
    failed = [r for r in records if r.phase in ("failed", "killed")]
    unfinished = [r for r in records if r.phase not in TERMINAL]
    paused = [r for r in unfinished if r.phase == "paused"]
    if len(unfinished) > len(paused):
        print(
            f"{len(unfinished) - len(paused)} process(es) interrupted; run the same command "
            "again to continue them",
            file=out,
        )
    if paused:
        print(f"{len(paused)} process(es) paused; they wait for a resume", file=out)
    if interrupted:
        return 128 + interrupted[0]  # as a shell reports a signal: 130 for SIGINT
    return EXIT_FAILED if failed or unfinished else EXIT_OK


async def _wait_all(manager: Any, ids: list[str]) -> None:
    """Until no process of this run has work left.

    Only this run's: the processes that a runtime killed earlier left active are recovered
    in the background (their actors collect what ended meanwhile), but a one-off never waits
    for them; what is left of them when this run ends keeps running under its chaperone, and
    the next runtime on the state dir collects it (`_leftovers` says how many)."""

    def idle(record: ProcessRecord) -> bool:
        # (a process paused because its host stopped answering resumes by itself: wait)
        return not needs_recovery(record.state)

    for process_id in ids:
        await manager.wait(process_id, until=idle)


def _leftovers(manager: Any, report: Any, ids: list[str]) -> int:
    """How many recovered processes, not of this run, still have work left."""
    if report is None:
        return 0
    own = set(ids)
    count = 0
    for process_id in (*report.resumed, *report.waiting_for_host):
        if process_id in own:
            continue
        record = manager.get(process_id)
        if needs_recovery(record.state):
            count += 1
    return count


async def _stop_on_signal(
    signals: Any, scope: trio.CancelScope, out: TextIO, interrupted: list[int]
) -> None:
    async for signum in signals:
        interrupted.append(signum)
        name = signal.Signals(signum).name
        print(f"{name}: stopping; programs keep running; run again to reattach", file=out)
        scope.cancel()
        return


class Progress:
    """Counts per phase and a line per running process (a terminal), with what its program
    said last of how far it is (``status``: a process id's latest status, if any), or plain
    lines.

    It keeps a phase per process and the counts per phase (moved at each transition: a
    redraw never counts 100,000 processes again), and the name and start of the running
    ones only."""

    def __init__(
        self, out: TextIO, status: Callable[[str], ProgramStatus | None] | None = None
    ) -> None:
        self.out = out
        self.status = status
        self.tty = out.isatty()
        self.phases: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.since: dict[str, tuple[float, str]] = {}  # running: since when, and its name
        self.drawn = 0

    def line(self, text: str) -> None:
        self._erase()
        print(text, file=self.out, flush=True)
        self._draw()

    def lines(self, texts: Iterable[str]) -> None:
        """Many lines at once (a job file run again says why each name does not run:
        one write, not one per name)."""
        block = "".join(f"{text}\n" for text in texts)
        if block:
            self._erase()
            self.out.write(block)
            self.out.flush()
            self._draw()

    async def follow(self, events: Any) -> None:
        """Show every transition; on a terminal, also tick the running times twice a second."""
        tick = 0.5 if self.tty else math.inf
        while True:
            with trio.move_on_after(tick):
                try:
                    record, transition = await events.receive()
                except trio.EndOfChannel:
                    return
                self.update(record, transition)
                continue
            self._redraw()

    def update(self, record: ProcessRecord, transition: Transition) -> None:
        phase = record.phase
        before = self.phases.get(record.id)
        if before != phase:
            self.phases[record.id] = phase
            self.counts[phase] += 1
            if before is not None:
                self.counts[before] -= 1
        if phase == "running":
            self.since[record.id] = (transition.at, record.name)
        else:
            self.since.pop(record.id, None)
        what = happened(record, transition)
        if what is None or (self.tty and transition.event in ("submit", "launch", "started")):
            self._redraw()
            return
        self.line(f"{time.strftime('%H:%M:%S')} {record.name}: {what}")

    def _redraw(self) -> None:
        self._erase()
        self._draw()

    def _erase(self) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        counts = self.counts
        lines = ["  ".join(f"{phase} {counts[phase]}" for phase in PHASES if counts[phase])]
        now = time.time()
        running = sorted((since, name, key) for key, (since, name) in self.since.items())
        for since, name, key in running[:10]:
            status = None if self.status is None else self.status(key)
            said = "" if status is None else f"  {summary(status.value, status.error, 40)}"
            lines.append(f"  running {name:<30} {now - since:7.1f}s{said}")
        if len(running) > 10:
            lines.append(f"  ... and {len(running) - 10} more")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def summary(self, records: list[ProcessRecord | Settled]) -> None:
        self._erase()
        counts = Counter(record.phase for record in records)
        print(
            "done: " + ", ".join(f"{counts[p]} {p}" for p in PHASES if counts[p]),
            file=self.out,
        )
