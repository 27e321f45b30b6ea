"""Measure, compare, report.

Every `Benchmark` pairs a corra measurement with a baseline measurement of the same work.
Each measurement is a plain function returning one figure (it runs its own ``trio.run``).
`measure` runs one discarded warm-up of each side, then ``rounds`` rounds that alternate which
side goes first (ABBA), so that machine noise falls on both sides alike, and keeps the medians.

A benchmark whose figure barely varies between rounds (memory) may ask for fewer rounds; an
explicit ``--rounds`` overrides every benchmark.

A ratio is always "higher is better": corra / baseline for throughputs, baseline / corra for
costs such as bytes per actor. ``goal`` is the least ratio we accept (None: report only);
``aim`` is an absolute bound on corra's own figure, shown for report-only metrics.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ROUNDS = 7
QUICK_ROUNDS = 3


@dataclass(frozen=True)
class Options:
    """What the command line asked of a suite."""

    quick: bool = False

    def size(self, full: int, quick: int) -> int:
        """The workload size: ``full`` normally, ``quick`` under ``--quick``."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Benchmark:
    """One comparison: corra's figure against a baseline's, for the same work."""

    name: str
    unit: str
    corra: Callable[[], float]
    baseline: Callable[[], float]
    goal: float | None = None
    higher_is_better: bool = True
    aim: float | None = None
    rounds: int | None = None
    """Fewer rounds than the default, for a figure that barely varies (None: the default)."""


@dataclass(frozen=True)
class Result:
    """The medians of one `Benchmark`, and the rounds they came from."""

    name: str
    unit: str
    value: float
    baseline: float
    goal: float | None
    higher_is_better: bool
    aim: float | None
    corra_rounds: tuple[float, ...] = field(default=())
    baseline_rounds: tuple[float, ...] = field(default=())

    @property
    def ratio(self) -> float:
        """corra relative to the baseline, higher is better."""
        numerator, denominator = (
            (self.value, self.baseline) if self.higher_is_better else (self.baseline, self.value)
        )
        return numerator / denominator if denominator else float("inf")

    @property
    def verdict(self) -> str:
        """``ok`` or ``MISS`` against the goal (or, for report-only metrics, the aim)."""
        if self.goal is not None:
            return "ok" if self.ratio >= self.goal else "MISS"
        if self.aim is not None:
            within = self.value >= self.aim if self.higher_is_better else self.value <= self.aim
            return "ok" if within else "MISS"
        return "-"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "goal": self.goal,
            "aim": self.aim,
            "higher_is_better": self.higher_is_better,
            "rounds": {"corra": list(self.corra_rounds), "baseline": list(self.baseline_rounds)},
        }


def _sample(measurement: Callable[[], float]) -> float:
    gc.collect()
    return measurement()


def measure(benchmark: Benchmark, rounds: int) -> Result:
    """Run one warm-up of each side (discarded), then ``rounds`` interleaved rounds."""
    sides = (benchmark.corra, benchmark.baseline)
    for side in sides:
        _sample(side)
    samples: tuple[list[float], list[float]] = ([], [])
    for round_number in range(rounds):
        order = (0, 1) if round_number % 2 == 0 else (1, 0)
        for index in order:
            samples[index].append(_sample(sides[index]))
    return Result(
        name=benchmark.name,
        unit=benchmark.unit,
        value=statistics.median(samples[0]),
        baseline=statistics.median(samples[1]),
        goal=benchmark.goal,
        higher_is_better=benchmark.higher_is_better,
        aim=benchmark.aim,
        corra_rounds=tuple(samples[0]),
        baseline_rounds=tuple(samples[1]),
    )


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Where the figures were taken, so that runs on different machines are not compared."""
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = None
    cpu_model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    return {
        "nproc": usable_cpus or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git_commit": _git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _figure(value: float) -> str:
    if value == float("inf"):
        return "inf"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _target(result: Result) -> str:
    if result.goal is not None:
        return f">= {result.goal:.2f}"
    if result.aim is not None:
        relation = ">=" if result.higher_is_better else "<="
        return f"aim {relation} {_figure(result.aim)} {result.unit}"
    return "-"


def format_table(results: Sequence[Result]) -> str:
    """An aligned table: name, corra, baseline, unit, ratio, goal, verdict."""
    header = ("benchmark", "corra", "baseline", "unit", "ratio", "goal", "verdict", "rounds")
    rows = [header] + [
        (
            result.name,
            _figure(result.value),
            _figure(result.baseline),
            result.unit,
            f"{result.ratio:.2f}",
            _target(result),
            result.verdict,
            str(len(result.corra_rounds)),
        )
        for result in results
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    right_aligned = {1, 2, 4, 7}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _parser(suites: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Measure corra against baselines."
    )
    parser.add_argument("--suite", required=True, help=f"one of: {', '.join(sorted(suites))}")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"measured rounds per side (default {DEFAULT_ROUNDS}, {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads, fewer rounds")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    return parser


def main(suites: Mapping[str, str], argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for usage errors)."""
    parser = _parser(suites)
    args = parser.parse_args(argv)
    if args.suite not in suites:
        parser.error(f"unknown suite {args.suite!r}; known suites: {', '.join(sorted(suites))}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    default_rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS

    module = importlib.import_module(suites[args.suite])
    benchmarks: list[Benchmark] = module.benchmarks(Options(quick=args.quick))
    if args.only:
        known = {benchmark.name for benchmark in benchmarks}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"no benchmark {unknown} in suite {args.suite}; it has {sorted(known)}")
        benchmarks = [benchmark for benchmark in benchmarks if benchmark.name in args.only]

    results = []
    for benchmark in benchmarks:
        rounds = args.rounds or min(benchmark.rounds or default_rounds, default_rounds)
        started = time.perf_counter()
        results.append(measure(benchmark, rounds))
        elapsed = time.perf_counter() - started
        print(f"{args.suite}/{benchmark.name}: {elapsed:.1f} s", file=sys.stderr, flush=True)

    print(f"\nsuite {args.suite}: medians of interleaved rounds, after one warm-up of each side")
    print(format_table(results))
    if args.json is not None:
        document = {
            "suite": args.suite,
            "quick": args.quick,
            "machine": machine_info(),
            "results": [result.to_json() for result in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
