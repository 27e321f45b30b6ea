"""Workflows on the command line: ``corra run FILE --job NAME`` (a run in the foreground, with
its steps as a live tree), ``corra jobs``, ``corra runs``, and the runs' side of ``show``,
``pause``, ``resume`` and ``kill`` (a name or id that no process has is looked up among the
runs: `corra.cli._read.show`, `corra.cli._service.control`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import trio

from corra._errors import ConfigError, NoSuchProcess
from corra._readonly import open_state_query
from corra._runtime import open_runtime
from corra.api._client import Client, ConnectionLost, NotServing
from corra.cli import _service
from corra.cli._parser import EXIT_FAILED, EXIT_OK, runtime_options
from corra.cli._render import print_json
from corra.cli._service import quoted, service
from corra.workflows import shown_job
from corra.workflows._query import RunQuery

#: How a step's phase is drawn in the tree.
_MARKS = {
    "pending": " ",
    "submitted": "~",
    "created": ".",
    "launching": "~",
    "running": ">",
    "paused": "=",
    "killing": "x",
    "expanded": "*",
    "finished": "+",
    "failed": "!",
    "killed": "x",
    "skipped": "-",
}


def parse_params(texts: list[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` (repeatable), as given: the job's defaults say their types.

    Raises:
        ConfigError: one is not ``KEY=VALUE``, or a key is given twice.
    """
    params: dict[str, str] = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not key or not equals:
            raise ConfigError(f"--param: got {text!r}, expected KEY=VALUE")
        if key in params:
            raise ConfigError(f"--param: {key!r} is given twice")
        params[key] = value
    return params


def run_job(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra run FILE --job NAME``: one run in the foreground until it has ended."""
    from corra._jobfile import load_job_file

    if not args.jobfile:
        raise ConfigError("run: --job names a job of a job file: give the file")
    if args.argv or args.name or args.rerun:
        raise ConfigError("run: --job takes no `-- ARGV`, --name or --rerun")
    job_file = load_job_file(args.jobfile)
    if args.job not in job_file.jobs:
        known = ", ".join(sorted(job_file.jobs)) or "none"
        raise ConfigError(f"--job: {args.jobfile} has no job {args.job!r} (its jobs: {known})")
    params = parse_params(args.param)
    output_limit = runtime_options(args)
    return trio.run(_run_job, job_file, state_dir, args, params, output_limit)


async def _run_job(
    job_file: Any, state_dir: Path, args: argparse.Namespace, params: dict[str, str], limit: int
) -> int:
    out = sys.stderr if args.json else sys.stdout
    interrupted: list[int] = []
    async with open_runtime(
        state_dir=state_dir,
        max_running=args.max_running,
        hosts=job_file.hosts,
        logins=job_file.logins,
        output_limit=limit,
    ) as rt:
        runs = rt.workflows
        runs.define(job_file.jobs)
        run, created = await runs.start(args.job, params, name=args.run_name)
        if not created:
            print(f"run {run.name!r} ({run.id}) exists already: following it", file=out)
            if run.phase == "paused":
                run = await runs.resume(run.id)
        tree = RunTree(out)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, out, interrupted)
                while True:
                    record = runs.get(run.id)
                    tree.draw(runs.query.detail(record, _finder(rt.processes)))
                    if record.terminal and not runs.running(record.id):
                        break
                    with trio.move_on_after(0.5 if tree.tty else 60):
                        await runs.changed(record.id)
                nursery.cancel_scope.cancel()
        record = runs.get(run.id)
        detail = runs.query.detail(record, _finder(rt.processes))
    tree.end(detail)
    if args.json:
        print_json(detail)
    if interrupted:
        again = f" --run-name {record.name}" if record.name else ""
        print(
            f"run {record.id} interrupted; it goes on when a runtime next opens {state_dir} "
            f"(corra serve, or corra run{again})",
            file=out,
        )
        return 128 + interrupted[0]
    return EXIT_OK if record.phase == "finished" else EXIT_FAILED


def _finder(processes: Any) -> Any:
    def find(name: str) -> Any:
        try:
            return processes.get(name)
        except NoSuchProcess:
            return None

    return find


async def _stop_on_signal(
    signals: Any, scope: trio.CancelScope, out: TextIO, interrupted: list[int]
) -> None:
    async for signum in signals:
        interrupted.append(signum)
        print(f"{signal.Signals(signum).name}: stopping; steps keep running", file=out)
        scope.cancel()
        return


class RunTree:
    """A run's steps as a tree (a step, its items below it), redrawn in place on a
    terminal; else a line per step whose phase changed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.seen: dict[str, str] = {}

    def draw(self, detail: dict[str, Any]) -> None:
        if not self.tty:
            for step in detail["steps"]:
                phase = _phase(step)
                if phase != "pending" and self.seen.get(step["key"]) != phase:
                    self.seen[step["key"]] = phase
                    print(f"{time.strftime('%H:%M:%S')} {_line(step)}", file=self.out, flush=True)
            return
        lines = tree_lines(detail)
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def end(self, detail: dict[str, Any]) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.write("\n".join(tree_lines(detail)) + "\n")
        print(summary(detail), file=self.out, flush=True)


def _phase(step: dict[str, Any]) -> str:
    return step.get("process_phase") or step["phase"]


def _line(step: dict[str, Any], items: list[dict[str, Any]] | None = None) -> str:
    text = f"{step['key']}: {_phase(step)}"
    if step.get("count") is not None:
        counts: dict[str, int] = {}
        for item in items or ():
            counts[_phase(item)] = counts.get(_phase(item), 0) + 1
        said = ", ".join(f"{count} {phase}" for phase, count in sorted(counts.items()))
        text += f" ({step['count']} items{': ' + said if said else ''})"
    status = step.get("status")
    if isinstance(status, dict):
        shown = status_text(status)
        if shown:
            text += f"  {shown}"
    if step.get("reason") and step["phase"] in ("failed", "killed", "skipped"):
        text += f"  ({step['reason']})"
    return text


def status_text(status: dict[str, Any]) -> str:
    """A step's latest status in words: ``40% step 4 of 10``."""
    value = status.get("value", status)
    if not isinstance(value, dict):
        return ""
    parts = []
    progress = value.get("progress")
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        parts.append(f"{progress * 100:.0f}%")
    message = value.get("message")
    if isinstance(message, str):
        parts.append(message[:60])
    return " ".join(parts)


def tree_lines(detail: dict[str, Any], limit: int = 12) -> list[str]:
    """The run's head line, and its steps as a tree (at most ``limit`` items of a fan-out
    shown, the rest counted)."""
    name = f"{detail['name']} " if detail.get("name") else ""
    lines = [f"{detail['job']} {name}({detail['id']}): {detail['phase']}"]
    steps = detail["steps"]
    items: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if step.get("index") is not None:
            items.setdefault(step["step"], []).append(step)
    heads = [step for step in steps if step.get("index") is None]
    keys = {step["key"] for step in heads}
    for name in items:
        if name not in keys:  # (a workflow function's work[0], work[1]...: no entry of work)
            keys.add(name)
            heads.append(
                {"key": name, "step": name, "phase": "expanded", "count": len(items[name])}
            )
    for step in heads:
        children = sorted(items.get(step["key"], []), key=lambda item: item["index"])
        lines.append(f"  [{_MARKS.get(_phase(step), '?')}] {_line(step, children)}")
        for child in children[:limit]:
            lines.append(f"      [{_MARKS.get(_phase(child), '?')}] {_line(child)}")
        if len(children) > limit:
            rest = children[limit:]
            counts: dict[str, int] = {}
            for child in rest:
                counts[_phase(child)] = counts.get(_phase(child), 0) + 1
            said = ", ".join(f"{count} {phase}" for phase, count in sorted(counts.items()))
            lines.append(f"      ... and {len(rest)} more ({said})")
    return lines


def summary(detail: dict[str, Any]) -> str:
    text = f"run {detail['id']}: {detail['phase']}"
    if detail.get("reason") and detail["phase"] != "finished":
        text += f" ({detail['reason']})"
    if detail["phase"] == "finished":
        result = json.dumps(detail.get("result"), separators=(",", ":"))
        if len(result) > 200:
            result = result[:199] + "\u2026"
        text += f"; result: {result}"
    return text


# jobs and runs ---------------------------------------------------------------------------


def jobs(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra jobs [FILE]``: the job definitions a service knows (or a file has)."""
    if args.file:
        from corra._jobfile import load_job_file

        found = [shown_job(job) for _, job in sorted(load_job_file(args.file).jobs.items())]
    else:
        try:
            with service(args, state_dir) as client:
                _, data = client.call("GET", "/v1/jobs")
        except NotServing:
            raise ConfigError(
                f"jobs: no service runs on {state_dir}; `corra jobs FILE` lists a job file's"
            ) from None
        found = data["jobs"]
    if args.json:
        print_json({"jobs": found})
        return EXIT_OK
    for job in found:
        steps = ", ".join(step["name"] for step in job.get("steps", []))
        if job.get("kind") == "python":
            steps = f"python {job['module']}.{job['qualname']}"
            steps += "".join(f" {name}=(required)" for name in job.get("required", []))
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in (job.get("params") or {}).items())
        print(f"{job['name']}: {steps}" + (f"  [{params}]" if params else ""))
        if job.get("description"):
            print(f"    {job['description']}")
    return EXIT_OK


def runs(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra runs``: the workflow runs, oldest first."""
    params = {key: value for key in ("phase", "job") if (value := getattr(args, key))}
    try:
        with service(args, state_dir) as client:
            found: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
                _, data = client.call("GET", "/v1/runs", params=page)
                found += data["runs"]
                cursor = data["next_cursor"]
                if cursor is None:
                    break
    except (NotServing, ConnectionLost):
        found = trio.run(_runs_here, state_dir, params)
    if args.json:
        print_json({"runs": found})
        return EXIT_OK
    rows = [("ID", "NAME", "JOB", "PHASE", "CREATED", "REASON")]
    for run in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))
        rows.append(
            (run["id"], run["name"] or "-", run["job"], run["phase"], created, run["reason"] or "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        print("  ".join(cells) + "  " + row[-1])
    return EXIT_OK


async def _runs_here(state_dir: Path, params: dict[str, str]) -> list[dict[str, Any]]:
    async with open_state_query(state_dir) as query:
        return [run.json() for run in RunQuery(query.store).list(**params)]


def show_run_via(client: Client, run: str, as_json: bool) -> int:
    _, data = client.call("GET", f"/v1/runs/{quoted(run)}")
    print_run(data, as_json)
    return EXIT_OK


async def show_run_here(query: Any, run: str, as_json: bool) -> int:
    runs = RunQuery(query.store)

    def find(name: str) -> Any:
        try:
            return query.get(name)
        except NoSuchProcess:
            return None

    print_run(runs.detail(runs.get(run), find), as_json)
    return EXIT_OK


def print_run(detail: dict[str, Any], as_json: bool) -> None:
    """``corra show RUN``: the run, its steps as a tree, its result."""
    if as_json:
        print_json(detail)
        return
    print("\n".join(tree_lines(detail, limit=1000)))
    print(summary(detail))


def control_run(client: Client, run: str, verb: str, args: argparse.Namespace) -> int:
    """``pause``, ``resume`` or ``kill`` of a run."""
    params = {"steps": "true"} if verb == "pause" and getattr(args, "steps", False) else None
    if verb == "resume" and getattr(args, "accept", False):
        params = {"accept": "true"}
    _, data = client.call("POST", f"/v1/runs/{quoted(run)}/{verb}", params=params)
    if args.json:
        print_json(data)
        return EXIT_OK
    reason = f" ({data['reason']})" if data.get("reason") else ""
    print(f"run {data['id']}: {data['phase']}{reason}")
    if verb == "pause":
        print(
            "  no new step starts; its running steps "
            + ("are paused too" if data.get("paused_steps") else "go on (--steps pauses them)")
        )
    return EXIT_OK


def control(args: argparse.Namespace, state_dir: Path) -> int:
    """``pause``, ``resume``, ``kill`` of a process, else of a workflow run."""
    return _service.control(args, state_dir, run=control_run)
