"""Crash points: where the tests kill the runtime (SIGKILL, as ``kill -9``) between two of a
run's durable writes, to show that a run recovers from a crash at each of them.

``CORRA_CRASH_AT=POINT:N`` (read once) kills the process the N-th time it reaches POINT;
without it, `crash_point` costs a dictionary lookup. The points (`POINTS`) are named where the
run actor and manager call `crash_point`.
"""

from __future__ import annotations

import os
import signal
from typing import Final

VARIABLE: Final = "CORRA_CRASH_AT"
POINTS: Final = (
    "run.started",  # the run's record is durable; its actor has not started
    "steps.decided",  # a plan's entries are durable; none of its processes is submitted
    "step.submitted",  # one more step's process is submitted (and durable)
    "step.ended",  # the ending entries of steps whose processes ended are durable
    "run.ended",  # the run's outcome is durable
)


def _parse(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    point, _, count = text.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{VARIABLE}: got {text!r}, expected POINT:N, POINT one of {POINTS}")
    return point, int(count)


_target = _parse(os.environ.get(VARIABLE))
_seen: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Kill this process here if ``CORRA_CRASH_AT`` says so (see the module doc)."""
    if _target is None or _target[0] != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
