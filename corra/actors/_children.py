"""What a supervisor keeps of its children, and its restart window (`corra.actors._supervisor`)."""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

if TYPE_CHECKING:
    from corra.actors._actor import _Cell
    from corra.actors._specs import ChildSpec

ChildStatus: TypeAlias = Literal["running", "restarting", "stopped"]


class RestartWindow:
    """Rule 3 of the supervisor: at most ``intensity`` restarts within the last ``period``
    seconds, both ends included (as OTP: a restart at R counts while R >= Now - Period)."""

    __slots__ = ("_times", "intensity", "period")

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self._times: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> bool:
        """Record a restart at ``now``; False if it is one too many."""
        times = self._times
        times.append(now)
        while times and times[0] < now - self.period:
            times.popleft()
        return len(times) <= self.intensity


class _Child:
    """A supervisor's record of one child spec and its current incarnation."""

    __slots__ = ("cell", "consecutive", "restarts", "spec", "started_at", "wanted")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.cell: _Cell | None = None
        # Whether the supervisor means the child to run (false once terminated or exited
        # for good); a wanted child with no cell is waiting for its restart.
        self.wanted = False
        self.restarts = 0
        self.consecutive = 0
        self.started_at = 0.0

    @property
    def reset_after(self) -> float:
        """Seconds a run must last for its restart to count as the first in a row again."""
        backoff = self.spec.backoff
        return backoff.reset_after if backoff is not None else math.inf

    def delay(self) -> float:
        """Seconds to wait before the next restart (its `Backoff`, after ``consecutive``)."""
        backoff = self.spec.backoff
        return backoff.delay(self.consecutive) if backoff is not None else 0.0

    @property
    def status(self) -> ChildStatus:
        if self.cell is not None:
            return "running"
        return "restarting" if self.wanted else "stopped"


@attrs.frozen
class _ChildExit:
    """A child's incarnation ended (``cell``), or its restart failed (``cell`` is None)."""

    child: _Child
    cell: _Cell | None
    reason: BaseException | None
    # With a failed restart: the rest of its group, not started yet, waiting on this retry.
    waiting: tuple[_Child, ...] = ()


@attrs.frozen
class _RestartDue:
    group: tuple[_Child, ...]
