"""The run actor's own copy of its run's step entries (`corra.workflows._actor.RunActor`).

The actor is the only writer of its run's entries while it runs, so it reads them once and
keeps them here instead of reading and decoding them all again after every ended process (a
fan-out of 1,000, decoded 1,000 times). The book also tells the actor:

- whether the plan may have changed since it was last asked for (`replan`): an item that
  finished while others of its fan-out run changes nothing `corra.workflows._plan.plan`
  looks at, nor does a step that a plan started; anything else may;
- which ending entries are not durable yet (`unwritten`): the actor makes them durable with
  its next write (a chain's next decision: one transaction per step, not two), or once they
  have gathered (`FLUSH_COUNT`) or the run has been quiet (`FLUSH_AFTER`), never one
  transaction per ended process. Deferring them is safe: each says what its process's own
  durable record says, which the actor reads again after a crash; meanwhile readers see the
  step's process, ended (`corra.workflows._query.RunQuery.detail`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from corra.workflows._runs import StepEntry

#: Seconds a run may be quiet before the ending entries of its steps are written anyway, and
#: how many may gather before they are.
FLUSH_AFTER: Final = 0.25
FLUSH_COUNT: Final = 512


class StepBook:
    """A run's step entries by key, as the actor has them (see the module doc).

    Args:
        entries: the entries in the store when the actor starts.
    """

    def __init__(self, entries: Mapping[str, StepEntry]) -> None:
        self.entries: dict[str, StepEntry] = dict(entries)
        self.replan = True
        """Whether the plan may have changed since it was last asked for."""
        self.unwritten: list[StepEntry] = []
        """Ending entries taken in and not yet durable."""
        self._open: dict[str, int] = {}  # items not ended, by fan-out step
        for entry in self.entries.values():
            if entry.index is not None and not entry.ended:
                self._open[entry.step] = self._open.get(entry.step, 0) + 1

    def take(self, entries: Sequence[StepEntry], *, durable: bool) -> None:
        """Take ``entries`` in; those not ``durable`` yet are `unwritten` until
        `written`."""
        if not durable:
            self.unwritten.extend(entries)
        for entry in entries:
            before = self.entries.get(entry.key)
            self.entries[entry.key] = entry
            if entry.index is not None:
                was_open = before is not None and not before.ended
                if was_open != (not entry.ended):
                    self._open[entry.step] = self._open.get(entry.step, 0) + (-1 if was_open else 1)
                if entry.phase == "finished" and self._open.get(entry.step, 0) > 0:
                    continue  # (its step runs on, as it did)
            if entry.phase == "submitted" or (entry.phase == "expanded" and entry.count):
                continue  # (a step the plan decided now runs: nothing new is ready)
            self.replan = True

    def written(self) -> list[StepEntry]:
        """The `unwritten` entries, which the caller makes durable now."""
        taken, self.unwritten = self.unwritten, []
        return taken
