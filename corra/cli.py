"""The ``corra`` command line.

``corra run`` runs the embedded runtime in the foreground; ``ps``, ``show`` and ``logs`` read
the state dir, also while a runtime is using it (LMDB allows concurrent readers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

import corra
from corra._errors import ConfigError, CorraError
from corra._jobfile import JobFile, load_job_file
from corra._runtime import (
    HISTORY_CODEC,
    RECORD_CODEC,
    STATE_DIR_ENV,
    default_state_dir,
    open_runtime,
)
from corra.actors._lifecycle import ACTIVE, PHASES, TERMINAL
from corra.actors._process import describe, find_record, paused_for_host, sorted_records
from corra.actors._records import ProcessRecord, Transition, parse_process_spec
from corra.persistence import open_store_readonly

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corra",
        description="Run programs and keep them running: actors under OTP supervision on trio.",
    )
    parser.add_argument("--version", action="version", version=f"corra {corra.__version__}")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where state lives (default: ${STATE_DIR_ENV}, else ./.corra)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a job file, or one program, in the foreground until all are done",
        usage="corra run [options] JOBFILE | corra run [options] -- ARGV...",
        description="Run a job file (or `-- ARGV...`) until every process is terminal. "
        "Running it again on the same state dir continues what is unfinished.",
    )
    run.add_argument("jobfile", nargs="?", help="a TOML job file with [[process]] tables")
    run.add_argument("--name", help="name of the process given after --")
    run.add_argument("--max-running", type=int, default=None, help="programs at once")
    run.add_argument("--json", action="store_true", help="print the final records as JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="log every transition")

    ps = commands.add_parser("ps", help="list processes")
    ps.add_argument("--json", action="store_true")
    ps.add_argument("--phase", choices=PHASES, help="only processes in this phase")

    show = commands.add_parser("show", help="one process: spec, state, result, history")
    show.add_argument("process", help="id or name")
    show.add_argument("--json", action="store_true")

    logs = commands.add_parser("logs", help="a process's output")
    logs.add_argument("process", help="id or name")
    logs.add_argument("--stderr", action="store_true", help="standard error instead")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corra`` console script; returns the exit status."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    program: list[str] = []
    if "--" in words:  # everything after `--` is the program, never options of ours
        split = words.index("--")
        words, program = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    args.argv = program
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    state_dir = args.state_dir or default_state_dir()
    try:
        if args.command == "run":
            return _run(args, state_dir)
        if args.command == "ps":
            return _ps(args, state_dir)
        if args.command == "show":
            return _show(args, state_dir)
        if args.command == "logs":
            return _logs(args, state_dir)
    except ConfigError as exc:
        print(f"corra: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CorraError as exc:
        print(f"corra: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `corra ps | head`: the reader left; not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
        return EXIT_OK
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


# -- corra run ---------------------------------------------------------------------------


def _run(args: argparse.Namespace, state_dir: Path) -> int:
    argv = list(args.argv)
    if args.jobfile and args.name:
        raise ConfigError("run: --name names the program given after --; a job file names its own")
    if args.jobfile and argv:
        raise ConfigError("run: give a job file or `-- ARGV...`, not both")
    if args.jobfile:
        job = load_job_file(args.jobfile)
    elif argv:
        fields: dict[str, Any] = {"argv": argv}
        if args.name:
            fields["name"] = args.name
        job = JobFile(path="<command line>", processes=(parse_process_spec(fields, "argv"),))
    else:
        raise ConfigError("run: nothing to run; give a job file or `-- ARGV...`")
    if args.max_running is not None and args.max_running < 1:
        raise ConfigError(f"--max-running: got {args.max_running}, expected an integer >= 1")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return trio.run(_run_async, job, state_dir, args)


async def _run_async(job: JobFile, state_dir: Path, args: argparse.Namespace) -> int:
    # With --json, stdout carries the JSON alone; the progress goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    interrupted: list[int] = []
    async with open_runtime(
        state_dir=state_dir, max_running=args.max_running, hosts=job.hosts, logins=job.logins
    ) as rt:
        manager = rt.processes
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
        display = Progress(out)
        stops = (signal.SIGTERM, signal.SIGINT)
        with manager.subscribe() as events, trio.open_signal_receiver(*stops) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, out, interrupted)
                nursery.start_soon(display.follow, events)
                ids = []
                for spec in job.processes:
                    record = await manager.submit(spec)
                    ids.append(record.id)
                    if record.state.terminal:
                        display.line(f"{record.name}: already {record.phase}, not run again")
                await _wait_all(manager, ids)
                nursery.cancel_scope.cancel()
        records = [manager.get(process_id) for process_id in ids]
    display.summary(records)
    if args.json:
        json.dump([record_json(record) for record in records], sys.stdout, indent=2)
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
    """Until no process of this run (nor any recovered one) has work left."""

    def idle(record: ProcessRecord) -> bool:
        # (a process paused because its host stopped answering resumes by itself: wait)
        return record.phase not in ACTIVE and not paused_for_host(record.state)

    for process_id in ids:
        await manager.wait(process_id, until=idle)
    await manager.wait_idle()


async def _stop_on_signal(
    signals: Any, scope: trio.CancelScope, out: TextIO, interrupted: list[int]
) -> None:
    async for signum in signals:
        interrupted.append(signum)
        name = signal.Signals(signum).name
        print(f"{name}: stopping; programs keep running; run again to reattach", file=out)
        scope.cancel()
        return


def _happened(record: ProcessRecord, transition: Transition) -> str | None:
    """One transition in words, for the plain progress lines (None: not worth a line)."""
    event = transition.event
    result = record.state.result
    if event == "launch":
        return None
    if event == "submit":
        return "submitted"
    if event == "started":
        pid = (record.state.handle or {}).get("pid")
        return f"running (attempt {record.state.attempt}" + (f", pid {pid})" if pid else ")")
    if event == "retry":
        return f"will run again: {transition.reason}"
    if event in ("succeed", "fail", "killed") and result is not None:
        took = ""
        if result.started_at is not None and result.ended_at is not None:
            took = f" after {result.ended_at - result.started_at:.1f}s"
        verb = {"succeed": "finished", "fail": "failed", "killed": "killed"}[event]
        return f"{verb}: {describe(result)}{took}"
    if transition.reason:
        return f"{transition.target} ({transition.reason})"
    return transition.target


class Progress:
    """Counts per phase and a line per running process (a terminal), or plain lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.phases: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.since: dict[str, float] = {}
        self.drawn = 0

    def line(self, text: str) -> None:
        self._erase()
        print(text, file=self.out, flush=True)
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
        self.phases[record.id] = record.phase
        self.names[record.id] = record.name
        if record.phase == "running":
            self.since[record.id] = transition.at
        else:
            self.since.pop(record.id, None)
        what = _happened(record, transition)
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
        counts = Counter(self.phases.values())
        lines = ["  ".join(f"{phase} {counts[phase]}" for phase in PHASES if counts[phase])]
        now = time.time()
        running = sorted(self.since.items(), key=lambda item: item[1])
        for process_id, since in running[:10]:
            lines.append(f"  running {self.names[process_id]:<30} {now - since:7.1f}s")
        if len(running) > 10:
            lines.append(f"  ... and {len(running) - 10} more")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def summary(self, records: list[ProcessRecord]) -> None:
        self._erase()
        counts = Counter(record.phase for record in records)
        print(
            "done: " + ", ".join(f"{counts[p]} {p}" for p in PHASES if counts[p]),
            file=self.out,
        )


# -- read-only commands --------------------------------------------------------------------


def record_json(record: ProcessRecord) -> dict[str, Any]:
    """A record as users see it in JSON (``corra ps --json``, the API)."""
    state = record.state
    result = state.result
    return {
        "id": record.id,
        "name": record.name,
        "phase": state.phase,
        "attempt": state.attempt,
        "returncode": result.returncode if result else None,
        "signal": result.signal if result else None,
        "reason": state.reason,
        "created_at": record.created_at,
        "updated_at": state.updated_at,
        "started_at": result.started_at if result else None,
        "ended_at": result.ended_at if result else None,
        "labels": dict(record.spec.labels),
        "argv": list(record.spec.argv),
        "result": attrs.asdict(result) if result else None,
        "paused_from": state.paused_from,
    }


def _open_readonly(state_dir: Path) -> Any:
    if not (state_dir / "state.lmdb").exists():
        raise ConfigError(
            f"state dir {state_dir}: no corra state here (start one with `corra run`)"
        )
    return open_store_readonly(state_dir)


def _ps(args: argparse.Namespace, state_dir: Path) -> int:
    with _open_readonly(state_dir) as store:
        records, corrupt = sorted_records(store, RECORD_CODEC)
    if args.phase:
        records = [r for r in records if r.phase == args.phase]
    if args.json:
        json.dump([record_json(r) for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    rows = [("ID", "NAME", "PHASE", "ATTEMPT", "RC", "UPDATED", "REASON")]
    for r in records:
        result = r.state.result
        rc = (
            ""
            if result is None
            else (
                str(result.returncode) if result.returncode is not None else f"sig{result.signal}"
            )
        )
        updated = time.strftime("%H:%M:%S", time.localtime(r.state.updated_at))
        rows.append(
            (r.id, r.name, r.phase, str(r.state.attempt), rc, updated, r.state.reason or "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    if corrupt:
        print(f"({corrupt} record(s) could not be read; see corra show)", file=sys.stderr)
    return EXIT_OK


def _show(args: argparse.Namespace, state_dir: Path) -> int:
    with _open_readonly(state_dir) as store:
        record = find_record(store, RECORD_CODEC, args.process)
        history = [HISTORY_CODEC.decode(raw) for raw in store.history(record.id)]
    data = record_json(record)
    data["spec"] = attrs.asdict(record.spec)
    data["handle"] = record.state.handle
    data["history"] = [attrs.asdict(t) for t in history]
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"{record.name} ({record.id}): {record.phase}, attempt {record.state.attempt}")
    print(f"  argv:    {shlex.join(record.spec.argv)}")
    if record.state.reason:
        print(f"  reason:  {record.state.reason}")
    result = record.state.result
    if result is not None:
        print(
            f"  result:  {describe(result)}; cpu {result.utime + result.stime:.2f}s, "
            f"maxrss {result.maxrss_kb} KiB, stdout {result.stdout_bytes} B, "
            f"stderr {result.stderr_bytes} B"
        )
    print("  history:")
    for t in history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.at))
        reason = f"  ({t.reason})" if t.reason else ""
        print(f"    {stamp}  {t.event:<8} {t.source} -> {t.target}{reason}")
    return EXIT_OK


def _logs(args: argparse.Namespace, state_dir: Path) -> int:
    from corra.backends.local_process import log_file

    stream = "stderr" if args.stderr else "stdout"
    offset = 0
    key = None
    out = sys.stdout.buffer
    while True:
        with _open_readonly(state_dir) as store:
            record = find_record(store, RECORD_CODEC, args.process)
        if record.spec.host is not None:
            return trio.run(_remote_logs, args, state_dir, stream)
        if key is not None and record.key != key:
            # A new attempt writes a new log: finish the old one first.
            _copy_log(log_file(state_dir / "runs", key, stream), offset, out)
            offset = 0
        key = record.key
        offset = _copy_log(log_file(state_dir / "runs", key, stream), offset, out)
        if not args.follow or record.phase not in ACTIVE:
            return EXIT_OK
        time.sleep(0.2)


async def _remote_logs(args: argparse.Namespace, state_dir: Path, stream: str) -> int:
    """`corra logs` of a process on a remote host: read over SSH from the host (as the
    state dir remembers it), through a pool of this command's own."""
    from corra._remote import open_remote_backends, remembered_hosts
    from corra.actors import open_runtime as open_kernel

    out = sys.stdout.buffer
    offset, key = 0, None
    async with open_kernel() as kernel:
        hosts = await trio.to_thread.run_sync(remembered_hosts, state_dir)
        async with open_remote_backends(kernel.root, hosts) as remote:
            while True:
                with _open_readonly(state_dir) as store:
                    record = find_record(store, RECORD_CODEC, args.process)
                if record.spec.host not in hosts:
                    raise ConfigError(
                        f"{record.name}: host {record.spec.host!r} is not among the hosts "
                        f"remembered in {state_dir} ({sorted(hosts)})"
                    )
                backend = remote.backends[record.spec.backend]
                if key is not None and record.key != key:
                    offset = 0  # a new attempt writes a new log (the old one was read)
                key = record.key
                while chunk := await backend.read_log(
                    key, stream, offset, 1 << 20, record.spec.host
                ):
                    out.write(chunk)
                    offset += len(chunk)
                out.flush()
                if not args.follow or record.phase not in ACTIVE:
                    return EXIT_OK
                await trio.sleep(1.0)


def _copy_log(path: Path | None, offset: int, out: Any) -> int:
    """Write ``path`` from ``offset`` to ``out``; the offset reached."""
    if path is None or not path.exists():
        return offset
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 16):
            out.write(chunk)
            offset += len(chunk)
    out.flush()
    return offset


if __name__ == "__main__":
    sys.exit(main())
